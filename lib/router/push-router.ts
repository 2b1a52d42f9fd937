import type { DeviceTransportKind } from '../interfaces/push-kind.interface.js';

/** Where a device can be reached. */
export interface DeviceRoute {
  uuid: string;
  /** Node holding the device's socket or last UDP address. */
  node: string;
  transport: DeviceTransportKind;
  /** Remote address and port (UDP source, or TCP peer). */
  address: string;
  port: number;
  /** Epoch ms of the last heartbeat. */
  lastSeen: number;
}

/** What the local device engine can answer about its own devices. */
export interface LocalRouteSource {
  localRoute(uuid: string): DeviceRoute | null;
}

/**
 * Where is a device reachable: which node, which transport, which address.
 * A DI token: provide another implementation with
 * `{ provide: PushRouter, useClass: ... }`.
 *
 * The device engine calls `update` only when a route changes (a device comes
 * online, switches transport, or goes offline), never per heartbeat, so a
 * remote implementation costs a write per change, not per device per minute.
 */
export abstract class PushRouter {
  /** Called once by the engine that feeds this router. */
  attach(_local: LocalRouteSource): void {}
  /** A device's route changed; `null` when it is no longer reachable here. */
  abstract update(uuid: string, route: DeviceRoute | null): void;
  abstract lookup(uuid: string): Promise<DeviceRoute | null>;
}
