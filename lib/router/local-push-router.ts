import { PushRouter, type DeviceRoute, type LocalRouteSource } from './push-router.js';

/**
 * The single-node, in-memory router. It keeps no state of its own: the device
 * engine's table already knows every local device, and copying routes into a
 * map would more than double the memory per idle device.
 */
export class LocalPushRouter extends PushRouter {
  private local: LocalRouteSource | undefined;

  override attach(local: LocalRouteSource): void {
    this.local = local;
  }

  update(_uuid: string, _route: DeviceRoute | null): void {}

  lookup(uuid: string): Promise<DeviceRoute | null> {
    return Promise.resolve(this.local?.localRoute(uuid) ?? null);
  }
}
