import { Injectable, type Type } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
import { PushCluster } from '../cluster/push-cluster.js';
import { uuidFromKey } from '../protocol/uuid.util.js';
import { DeviceTransportStrategy } from '../server/device-transport.strategy.js';
import { PusherTransportStrategy } from '../server/pusher-transport.strategy.js';
import { OfflineStore } from '../store/offline-store.js';

/** Options of `PushHealthIndicator.isHealthy()`. */
export interface PushHealthCheckOptions {
  /**
   * How the store is checked: `'write'` (default) writes and removes a
   * pending notice for a probe uuid no device uses, so a full, read-only or
   * unreachable store reports down; `'stats'` only reads `store.stats()`.
   */
  store?: 'write' | 'stats';
  /** Each probe (store write, cluster ping) is down after this long. Default 2000 ms. */
  timeoutMs?: number;
}

/** One part of the report. */
export interface PushHealthPart {
  status: 'up' | 'down' | 'disabled';
  [detail: string]: unknown;
}

/** What a cluster plugin may offer for a reachability check (duck-typed until `PushCluster` declares it). */
interface Pingable {
  ping?: () => Promise<unknown>;
}

/** The probe uuid: MD5 of a key no device is given. */
export const HEALTH_PROBE_UUID = uuidFromKey('nest-push:health-probe').toString('hex');

/**
 * A `@nestjs/terminus` health indicator for a `PushModule` app
 * (`nest-push/terminus`): transports listening, store writable, Redis
 * reachable in cluster mode.
 *
 * ```ts
 * @Get('health') @HealthCheck()
 * check() { return this.health.check([() => this.push.isHealthy('push')]); }
 * ```
 */
@Injectable()
export class PushHealthIndicator {
  constructor(
    private readonly indicators: HealthIndicatorService,
    private readonly moduleRef: ModuleRef,
  ) {}

  /** Everything: `{ [key]: { status, device, pusher, store, cluster } }`; down when any part is down. */
  async isHealthy<const Key extends string = 'push'>(key: Key = 'push' as Key, options: PushHealthCheckOptions = {}): Promise<HealthIndicatorResult<Key>> {
    const session = this.indicators.check(key);
    const [device, pusher] = this.transportParts();
    const [store, cluster] = await Promise.all([this.storePart(options), this.clusterPart(options)]);
    const data = { device, pusher, store, cluster };
    const down = Object.values(data).some((p) => p.status === 'down');
    return down ? session.down(data) : session.up(data);
  }

  /** Only the transports: `{ [key]: { status, device, pusher } }`. */
  async transports<const Key extends string = 'push-transports'>(key: Key = 'push-transports' as Key): Promise<HealthIndicatorResult<Key>> {
    const session = this.indicators.check(key);
    const [device, pusher] = this.transportParts();
    return device.status === 'down' || pusher.status === 'down' ? session.down({ device, pusher }) : session.up({ device, pusher });
  }

  /** Only the store. */
  async store<const Key extends string = 'push-store'>(key: Key = 'push-store' as Key, options: PushHealthCheckOptions = {}): Promise<HealthIndicatorResult<Key>> {
    const session = this.indicators.check(key);
    const { status, ...data } = await this.storePart(options);
    return status === 'down' ? session.down(data) : session.up(data);
  }

  /** Only the cluster link (up with `status: 'disabled'` detail on a single node). */
  async cluster<const Key extends string = 'push-cluster'>(key: Key = 'push-cluster' as Key, options: PushHealthCheckOptions = {}): Promise<HealthIndicatorResult<Key>> {
    const session = this.indicators.check(key);
    const { status, ...data } = await this.clusterPart(options);
    return status === 'down' ? session.down(data) : session.up({ ...data, mode: status === 'disabled' ? 'single-node' : 'cluster' });
  }

  private transportParts(): [PushHealthPart, PushHealthPart] {
    const device = this.find(DeviceTransportStrategy);
    const pusher = this.find(PusherTransportStrategy);
    return [
      device ? { status: device.listening ? 'up' : 'down', listening: device.listening, port: device.port } : { status: 'disabled' },
      pusher
        ? { status: pusher.listening ? 'up' : 'down', listening: pusher.listening, port: pusher.port, connections: pusher.openConnections }
        : { status: 'disabled' },
    ];
  }

  private async storePart(options: PushHealthCheckOptions): Promise<PushHealthPart> {
    const store = this.find(OfflineStore);
    if (!store) return { status: 'down', message: 'no OfflineStore: is PushModule imported?' };
    let stats: ReturnType<OfflineStore['stats']>;
    try {
      stats = store.stats();
    } catch (err) {
      return { status: 'down', message: messageOf(err) };
    }
    const part = { pendingDevices: stats.devices, pendingBytes: stats.bytes };
    if ((options.store ?? 'write') === 'stats') return { status: 'up', writable: 'unchecked', ...part };
    try {
      await withTimeout(
        (async () => {
          await store.write(HEALTH_PROBE_UUID, { kind: 'notice' });
          await store.remove(HEALTH_PROBE_UUID);
        })(),
        options.timeoutMs ?? 2000,
        'store write',
      );
      return { status: 'up', writable: true, ...part };
    } catch (err) {
      return { status: 'down', writable: false, message: messageOf(err), ...part };
    }
  }

  private async clusterPart(options: PushHealthCheckOptions): Promise<PushHealthPart> {
    const cluster = this.find(PushCluster) as (PushCluster & Pingable) | null;
    if (!cluster) return { status: 'disabled' };
    if (typeof cluster.ping !== 'function') return { status: 'up', reachable: 'unchecked', message: 'the cluster plugin has no ping()' };
    const t0 = performance.now();
    try {
      await withTimeout(cluster.ping(), options.timeoutMs ?? 2000, 'cluster ping');
      return { status: 'up', reachable: true, latencyMs: Math.round((performance.now() - t0) * 100) / 100 };
    } catch (err) {
      return { status: 'down', reachable: false, message: messageOf(err) };
    }
  }

  private find<T>(token: Type<T> | (abstract new (...args: never[]) => T)): T | null {
    try {
      return (this.moduleRef.get(token as Type<T>, { strict: false }) as T | undefined) ?? null;
    } catch {
      return null;
    }
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
      timer.unref();
    }),
  ]).finally(() => clearTimeout(timer));
}
