import type { Redis } from 'ioredis';
import type { DeviceTransportKind } from '../interfaces/push-kind.interface.js';
import { PushRouter, type DeviceRoute, type LocalRouteSource } from '../router/push-router.js';
import { DEFAULT_KEY_PREFIX, deviceKey } from './redis-connection.js';
import { defineScripts, type ScriptedRedis } from './redis-scripts.js';

/** Options of `RedisPushRouter`. */
export interface RedisPushRouterOptions {
  redis: Redis;
  /** This node's id (the engine's `nodeId`). */
  nodeId: string;
  /** Default `'np:'`. */
  keyPrefix?: string;
  /**
   * A route expires this long after it was last written. Routes of live
   * devices are re-written by the cluster's route refresh well before that.
   * Default 50 h (DDPush's record expiry).
   */
  routeTtlMs?: number;
}

/** Route writes that failed (Redis down); the cluster's refresh re-announces the routes when Redis returns. */
export interface RedisPushRouterCounters {
  writes: number;
  deletes: number;
  refreshes: number;
  errors: number;
}

/**
 * Device routes in Redis: `<prefix>{<uuid>}:r` is a hash { n: node,
 * t: transport, a: address, p: port, s: lastSeen } with a PEXPIRE.
 *
 * Write rate: the engine calls `update` only when a route changes, so a
 * device costs about 2 writes per online session (one when it comes online or
 * changes transport, one compare-and-delete when it goes offline) and **0 per
 * heartbeat**, plus one conditional re-write per `routeRefreshMs` of the
 * cluster (default 12 h) while it stays online. `lastSeen` is therefore the
 * time of the route change (or refresh), not of the last heartbeat.
 *
 * Going offline is a compare-and-delete: the route is deleted only while it
 * still names this node, so a device that moved to another node is never
 * clobbered by the old node's late `offline`. Routes of a node that died are
 * not deleted; the cluster ignores them because that node is not live.
 * `update` is fire-and-forget (the engine calls it synchronously); failures
 * are counted in `counters.errors`.
 */
export class RedisPushRouter extends PushRouter {
  readonly nodeId: string;
  readonly keyPrefix: string;
  readonly routeTtlMs: number;
  readonly counters: RedisPushRouterCounters = { writes: 0, deletes: 0, refreshes: 0, errors: 0 };
  private readonly redis: ScriptedRedis;
  private local: LocalRouteSource | undefined;

  constructor(options: RedisPushRouterOptions) {
    super();
    this.redis = defineScripts(options.redis);
    this.nodeId = options.nodeId;
    this.keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.routeTtlMs = options.routeTtlMs ?? 50 * 3600_000;
  }

  override attach(local: LocalRouteSource): void {
    this.local = local;
  }

  /** The engine that feeds this router, if attached. */
  get localSource(): LocalRouteSource | undefined {
    return this.local;
  }

  update(uuid: string, route: DeviceRoute | null): void {
    const key = deviceKey(this.keyPrefix, uuid, 'r');
    const op = route
      ? this.redis.npRouteSet(key, ...this.routeArgs(route)).then(() => void this.counters.writes++)
      : this.redis.npRouteDelete(key, this.nodeId).then(() => void this.counters.deletes++);
    op.catch(() => void this.counters.errors++);
  }

  /** Awaitable `update`, for tests and for callers that need to know the write landed. */
  async set(uuid: string, route: DeviceRoute | null): Promise<boolean> {
    const key = deviceKey(this.keyPrefix, uuid, 'r');
    return (route ? await this.redis.npRouteSet(key, ...this.routeArgs(route)) : await this.redis.npRouteDelete(key, this.nodeId)) === 1;
  }

  async lookup(uuid: string): Promise<DeviceRoute | null> {
    const h = await this.redis.hgetall(deviceKey(this.keyPrefix, uuid, 'r'));
    if (!h || h.n === undefined) return null;
    return {
      uuid,
      node: h.n,
      transport: h.t as DeviceTransportKind,
      address: h.a ?? '',
      port: Number(h.p ?? 0),
      lastSeen: Number(h.s ?? 0),
    };
  }

  /**
   * Re-announces routes of devices held here, in one pipeline: each is
   * written only when no route is stored, the stored one is this node's, or it
   * is older than ours (so a device that moved away is not pulled back).
   * Resolves to the number of routes written.
   */
  async refresh(routes: readonly DeviceRoute[]): Promise<number> {
    if (routes.length === 0) return 0;
    const p = this.redis.pipeline() as unknown as { npRouteRefresh(key: string, ...a: (string | number)[]): void; exec(): Promise<[Error | null, unknown][] | null> };
    for (const r of routes) p.npRouteRefresh(deviceKey(this.keyPrefix, r.uuid, 'r'), ...this.routeArgs(r));
    const res = (await p.exec()) ?? [];
    let written = 0;
    for (const [err, v] of res) {
      if (err) this.counters.errors++;
      else if (v === 1) written++;
    }
    this.counters.refreshes += written;
    return written;
  }

  private routeArgs(r: DeviceRoute): (string | number)[] {
    return [this.nodeId, r.transport, r.address, r.port, r.lastSeen, this.routeTtlMs];
  }
}
