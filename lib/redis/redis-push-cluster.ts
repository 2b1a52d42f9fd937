import type { Redis } from 'ioredis';
import { Subject, Subscription, type Observable } from 'rxjs';
import { PushCluster, type ClusterDelivery } from '../cluster/push-cluster.js';
import type { DeviceEngine } from '../device/device-engine.js';
import type { DeviceAckEvent, DeviceEvent, DeviceSentEvent } from '../device/device-event.interface.js';
import type { PushKind } from '../interfaces/push-kind.interface.js';
import type { DeviceRoute, PushRouter } from '../router/push-router.js';
import type { OfflineStore } from '../store/offline-store.js';
import { closeClient, DEFAULT_KEY_PREFIX, ensureConnected, SUBSCRIBER_CONNECTION_OVERRIDES } from './redis-connection.js';
import { RedisOfflineStore } from './redis-offline-store.js';
import { RedisPushRouter } from './redis-push-router.js';
import { defineScripts, type ScriptedRedis } from './redis-scripts.js';

/** Options of `RedisPushCluster`. */
export interface RedisPushClusterOptions {
  /** Command connection (shared with the store and router). */
  redis: Redis;
  /** Subscriber connection. Default: `redis.duplicate()`, owned (quit on `close`). */
  subscriber?: Redis;
  nodeId: string;
  engine: DeviceEngine;
  router: PushRouter;
  /**
   * The node's store. When it is a `RedisOfflineStore`, messages it replaces
   * that another node wrote are reported to that node, whose waiting push
   * then settles as `replaced` instead of timing out.
   */
  store?: OfflineStore;
  /** Default `'np:'`. */
  keyPrefix?: string;
  /** How often this node announces itself and re-reads the registry. Default 1000 ms. */
  heartbeatMs?: number;
  /** A node not announced for this long is dead. Default 3000 ms. */
  nodeTimeoutMs?: number;
  /** How long this node forwards a device's sent/ack events to the node that delivered a push through it. Default 60 s. */
  forwardTtlMs?: number;
  /** Forwarding entries (device x kind) kept at most; the oldest go first. Default 100,000. */
  maxForwards?: number;
  /** Device records scanned per `remoteOnline` request to a peer. Default 4096. */
  onlineBatch?: number;
  /** A peer that does not answer a `remoteOnline` request within this is skipped. Default 2000 ms. */
  requestTimeoutMs?: number;
  /** Routes of devices online here are re-written this often (and after Redis comes back). Default 12 h. */
  routeRefreshMs?: number;
  /**
   * Treat a peer whose gateway channel has no subscriber (PUBLISH answered 0)
   * as gone until it announces itself again. Default true. Turn it off where
   * PUBLISH does not count every subscriber (Redis Cluster counts one shard's).
   */
  suspectOnNoSubscriber?: boolean;
}

/** A node joined or left the cluster (as this node learned it). */
export interface ClusterMembershipEvent {
  type: 'join' | 'leave';
  node: string;
  at: number;
}

/** Cluster counters (monotonic). */
export interface RedisPushClusterCounters {
  delivered: number;
  deliveriesReceived: number;
  deliveriesMissed: number;
  replacedReported: number;
  forwarded: number;
  eventsReceived: number;
  publishErrors: number;
  registryErrors: number;
  malformed: number;
}

type Wire =
  | ['d', string, string, string, number]
  | ['s', string, string, number, string, number, number]
  | ['a', string, string, number, number, string, string]
  | ['q', string, number, number, number]
  | ['r', number, number, string]
  | ['x', string, number];

const KIND_CODE: Record<PushKind, string> = { notice: 'n', category: 'c', message: 'm' };
const CODE_KIND: Record<string, PushKind> = { n: 'notice', c: 'category', m: 'message' };
const UUID_HEX = 32;

/**
 * Nodes that delivered a push for one device and kind through this node. For
 * messages each delivered version is kept (events of other versions, e.g. this
 * node's own pushes, are not forwarded); notice and category frames carry
 * every earlier push of their kind, so any of their events is forwarded.
 */
interface Forward {
  targets: { origin: string; version: number }[];
  expires: number;
}

const MAX_FORWARD_TARGETS = 16;

/**
 * The peer link of a Redis cluster of nest-push nodes.
 *
 * - Registry: every `heartbeatMs` each node ZADDs itself (score = Redis server
 *   time) into `<prefix>nodes` and reads the nodes seen within
 *   `nodeTimeoutMs`, in one script; joins and leaves are learned within
 *   `heartbeatMs + nodeTimeoutMs`. A peer whose gateway channel has no
 *   subscriber (PUBLISH answered 0: its process is gone) is dropped at once,
 *   until it announces itself again.
 * - Gateway: `deliver` PUBLISHes a compact message on `<prefix>gw:<node>`. The
 *   holder calls `engine.deliver(uuid)` (the push is already in the shared
 *   store) and, for `forwardTtlMs`, forwards its engine's `sent`/`ack` events
 *   for that device and kind to the origin's channel; they come out of the
 *   origin's `events`.
 * - `remoteOnline`: asks each live peer, one batch at a time over pub/sub, for
 *   the devices reachable there (each answers from `engine.scanReachable`);
 *   the next batch is requested only when the caller has consumed the last.
 * - Locating: a `RedisOfflineStore` with `readRoutes` reads the device's route
 *   in its write script, so a push's `locateKnown` checks only the in-memory
 *   registry; `locate` (one HGETALL) remains for stores that do not.
 * - Routes: re-announced every `routeRefreshMs` and whenever the command
 *   connection comes back after an outage (route changes that happened while
 *   Redis was down would otherwise be lost).
 *
 * The delivery does not carry the push: the holder reads it back from the
 * store. Versions come from each node's own counter, so they do not order
 * pushes from different nodes, and a holder sending what a delivery carried
 * could not tell a late delivery from a newer one (a device would be sent an
 * older message after a newer one). The store read always finds the latest.
 *
 * Pub/sub is at-most-once: a delivery lost with a dying node or a Redis
 * outage surfaces as the origin's `timeout` (`node-unresponsive`), and the
 * push stays pending in the store for the device's next heartbeat.
 */
export class RedisPushCluster extends PushCluster {
  readonly nodeId: string;
  readonly keyPrefix: string;
  readonly counters: RedisPushClusterCounters = {
    delivered: 0,
    deliveriesReceived: 0,
    deliveriesMissed: 0,
    replacedReported: 0,
    forwarded: 0,
    eventsReceived: 0,
    publishErrors: 0,
    registryErrors: 0,
    malformed: 0,
  };
  private readonly redis: ScriptedRedis;
  private readonly sub: Redis;
  private readonly ownsSubscriber: boolean;
  private readonly engine: DeviceEngine;
  private readonly router: PushRouter;
  private readonly store: RedisOfflineStore | undefined;
  private readonly heartbeatMs: number;
  private readonly nodeTimeoutMs: number;
  private readonly forwardTtlMs: number;
  private readonly maxForwards: number;
  private readonly onlineBatch: number;
  private readonly requestTimeoutMs: number;
  private readonly routeRefreshMs: number;
  private readonly suspectOnNoSubscriber: boolean;
  private readonly channel: string;
  private readonly registryKey: string;
  private readonly events$ = new Subject<DeviceSentEvent | DeviceAckEvent>();
  private readonly membership$ = new Subject<ClusterMembershipEvent>();
  private readonly live = new Map<string, number>();
  /** Peers found without a subscriber, with when (Redis time) that was found. */
  private readonly suspects = new Map<string, number>();
  /** Redis server time minus local time, from the last registry read. */
  private clockOffset = 0;
  private readonly forwards = new Map<string, Forward>();
  /**
   * Messages this node's dispatcher may be waiting on (delivered through a
   * peer, or sent at once to a device held here): `uuid:version` -> expiry.
   * When another node's write replaces one, that node tells this one.
   */
  private readonly waitedMessages = new Map<string, number>();
  private readonly requests = new Map<number, { resolve: (r: { next: number; uuids: string[] } | null) => void; timer: NodeJS.Timeout }>();
  private nextRequest = 1;
  private engineSub: Subscription | undefined;
  private storeSub: Subscription | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  /** When each unknown node named by a route was last looked up in the registry. */
  private readonly rechecked = new Map<string, number>();
  private refreshing = false;
  private lostConnection = false;
  private closed = false;
  private started = false;

  constructor(options: RedisPushClusterOptions) {
    super();
    this.redis = defineScripts(options.redis);
    this.ownsSubscriber = !options.subscriber;
    this.sub = options.subscriber ?? options.redis.duplicate(SUBSCRIBER_CONNECTION_OVERRIDES);
    this.sub.on('error', () => {});
    this.nodeId = options.nodeId;
    this.engine = options.engine;
    this.router = options.router;
    this.store = options.store instanceof RedisOfflineStore ? options.store : undefined;
    this.keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.heartbeatMs = options.heartbeatMs ?? 1000;
    this.nodeTimeoutMs = options.nodeTimeoutMs ?? 3000;
    this.forwardTtlMs = options.forwardTtlMs ?? 60_000;
    this.maxForwards = options.maxForwards ?? 100_000;
    this.onlineBatch = options.onlineBatch ?? 4096;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 2000;
    this.routeRefreshMs = options.routeRefreshMs ?? 12 * 3600_000;
    this.suspectOnNoSubscriber = options.suspectOnNoSubscriber ?? true;
    this.channel = this.gatewayChannel(this.nodeId);
    this.registryKey = `${this.keyPrefix}nodes`;
  }

  /** Subscribes to this node's gateway channel, announces the node and learns its peers. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await ensureConnected(this.redis, 'Redis (cluster)');
    await ensureConnected(this.sub, 'Redis (cluster subscriber)');
    this.sub.on('message', (_channel: string, message: string) => {
      // A malformed message on the channel (anyone with Redis access can publish) is dropped, never thrown.
      try {
        this.onMessage(message);
      } catch {
        this.counters.malformed++;
      }
    });
    await this.sub.subscribe(this.channel);
    await this.tick();
    this.tickTimer = setInterval(() => void this.tick(), this.heartbeatMs);
    this.tickTimer.unref();
    this.refreshTimer = setInterval(() => void this.refreshRoutes(), this.routeRefreshMs);
    this.refreshTimer.unref();
    this.redis.on('close', this.onRedisClose);
    this.redis.on('ready', this.onRedisReady);
    this.engineSub = new Subscription(this.engine.listen((e) => this.onEngineEvent(e)));
    this.storeSub = this.store?.replacedElsewhere.subscribe((r) => this.publish(r.origin, ['x', r.uuid, r.version]));
  }

  /** Live nodes (this one included), as of the last registry read. */
  get liveNodes(): ReadonlySet<string> {
    return new Set(this.live.keys());
  }

  /** Nodes joining and leaving, as this node learns it. */
  get membership(): Observable<ClusterMembershipEvent> {
    return this.membership$.asObservable();
  }

  get events(): Observable<DeviceSentEvent | DeviceAckEvent> {
    return this.events$.asObservable();
  }

  async locate(uuid: string): Promise<string | null> {
    const route = await this.router.lookup(uuid);
    return this.locateKnown(uuid, route ? route.node : null);
  }

  /** Costs Redis nothing unless `node` is not in the registry as last read (see `recheck`). */
  override async locateKnown(_uuid: string, node: string | null): Promise<string | null> {
    if (node === null || node === this.nodeId) return null;
    if (!this.live.has(node) && !this.suspects.has(node)) await this.recheck(node);
    return this.live.has(node) ? node : null;
  }

  /**
   * A route names a node this node does not know: it may have joined since
   * the last registry read. Reads the registry now, at most every 250 ms per
   * such node, so routes left by dead nodes cost little.
   */
  private async recheck(node: string): Promise<void> {
    const now = Date.now();
    if (now - (this.rechecked.get(node) ?? 0) < 250) return;
    if (this.rechecked.size >= 1024) this.rechecked.clear();
    this.rechecked.set(node, now);
    await this.registryTick(false);
  }

  deliver(node: string, d: ClusterDelivery): void {
    this.counters.delivered++;
    if (d.kind === 'message' && this.store) this.rememberWaited(`${d.uuid}:${d.version}`);
    this.publish(node, ['d', d.origin, d.uuid, KIND_CODE[d.kind], d.version]);
  }

  async *remoteOnline(signal: { aborted: boolean }): AsyncIterable<string> {
    const peers = [...this.live.keys()].filter((n) => n !== this.nodeId);
    for (const node of peers) {
      let cursor = 0;
      while (cursor >= 0 && !signal.aborted && !this.closed) {
        const page = await this.request(node, cursor);
        if (!page) break;
        cursor = page.next;
        for (const uuid of page.uuids) {
          if (signal.aborted) return;
          yield uuid;
        }
      }
    }
  }

  /**
   * Re-announces the routes of every device reachable here (conditionally: a
   * device that moved to another node keeps its newer route), 1000 per
   * pipeline. Resolves to the number written, or -1 when Redis failed.
   */
  async refreshRoutes(): Promise<number> {
    if (!(this.router instanceof RedisPushRouter) || this.refreshing || this.closed) return 0;
    this.refreshing = true;
    try {
      let cursor = 0;
      let total = 0;
      while (cursor >= 0 && !this.closed) {
        const routes: DeviceRoute[] = [];
        cursor = this.engine.scanReachable(cursor, 1000, (uuid) => {
          const r = this.engine.localRoute(uuid);
          if (r) routes.push(r);
        });
        total += await this.router.refresh(routes);
        await new Promise((r) => setImmediate(r));
      }
      return total;
    } catch {
      return -1;
    } finally {
      this.refreshing = false;
    }
  }

  /** Health check: PING on the command connection, and the gateway subscription is up. Rejects otherwise. */
  override async ping(): Promise<void> {
    await this.redis.ping();
    if (this.sub.status !== 'ready') throw new Error(`nest-push/redis: gateway subscriber is ${this.sub.status}`);
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    this.engineSub?.unsubscribe();
    this.storeSub?.unsubscribe();
    this.redis.off('close', this.onRedisClose);
    this.redis.off('ready', this.onRedisReady);
    for (const [, r] of this.requests) {
      clearTimeout(r.timer);
      r.resolve(null);
    }
    this.requests.clear();
    if (this.started) {
      await this.redis.zrem(this.registryKey, this.nodeId).catch(() => undefined);
      await this.sub.unsubscribe(this.channel).catch(() => undefined);
    }
    if (this.ownsSubscriber) await closeClient(this.sub);
    this.events$.complete();
    this.membership$.complete();
  }

  // ---------------------------------------------------------------- registry

  /** One registry round trip: announce, forget long-dead nodes, read the live ones. Concurrent calls share one. */
  tick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.purge();
    this.ticking ??= this.registryTick(true).finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async registryTick(announce: boolean): Promise<void> {
    try {
      const reply = await this.redis.npRegistryTick(this.registryKey, announce ? this.nodeId : '', this.nodeTimeoutMs, 3600_000);
      this.clockOffset = Number(reply[0]) - Date.now();
      const seen = new Map<string, number>();
      for (let i = 1; i + 1 < reply.length; i += 2) seen.set(String(reply[i]), Number(reply[i + 1]));
      // A suspect is back only once it announces itself after it was found gone.
      for (const [node, since] of this.suspects) {
        const score = seen.get(node);
        if (score === undefined || score > since) this.suspects.delete(node);
        else seen.delete(node);
      }
      if (!this.closed) this.setLive(seen);
    } catch {
      this.counters.registryErrors++;
    }
  }

  private setLive(seen: Map<string, number>): void {
    const at = Date.now();
    for (const node of this.live.keys()) {
      if (!seen.has(node)) {
        this.live.delete(node);
        this.membership$.next({ type: 'leave', node, at });
      }
    }
    for (const [node, score] of seen) {
      const had = this.live.has(node);
      this.live.set(node, score);
      if (!had) this.membership$.next({ type: 'join', node, at });
    }
  }

  private suspect(node: string): void {
    if (!this.live.has(node) || node === this.nodeId) return;
    this.suspects.set(node, Date.now() + this.clockOffset);
    this.live.delete(node);
    this.membership$.next({ type: 'leave', node, at: Date.now() });
  }

  private readonly onRedisClose = (): void => {
    this.lostConnection = true;
  };

  private readonly onRedisReady = (): void => {
    if (!this.lostConnection) return;
    this.lostConnection = false;
    void this.tick();
    void this.refreshRoutes();
  };

  // ------------------------------------------------------------------ wire

  private gatewayChannel(node: string): string {
    return `${this.keyPrefix}gw:${node}`;
  }

  private publish(node: string, message: Wire): void {
    this.redis.publish(this.gatewayChannel(node), JSON.stringify(message)).then(
      (receivers) => {
        if (receivers === 0 && this.suspectOnNoSubscriber) this.suspect(node);
      },
      () => void this.counters.publishErrors++,
    );
  }

  private onMessage(raw: string): void {
    const m = JSON.parse(raw) as Wire;
    if (!Array.isArray(m)) throw new TypeError('not a gateway message');
    switch (m[0]) {
      case 'd':
        return this.onDelivery(m[1], m[2], m[3], m[4]);
      case 's': {
        const kind = CODE_KIND[m[2]];
        if (!kind) return;
        this.counters.eventsReceived++;
        this.events$.next({ type: 'sent', uuid: m[1], kind, version: m[3], transport: m[4] === 't' ? 'tcp' : 'udp', resend: m[5] === 1, at: m[6] });
        return;
      }
      case 'a': {
        const kind = CODE_KIND[m[2]];
        if (!kind) return;
        this.counters.eventsReceived++;
        const e: DeviceAckEvent = { type: 'ack', uuid: m[1], kind, version: m[3], at: m[4] };
        if (kind === 'message') this.waitedMessages.delete(`${m[1]}:${m[3]}`);
        if (kind === 'category') {
          e.mask = BigInt('0x' + (m[5] || '0'));
          e.remaining = BigInt('0x' + (m[6] || '0'));
        }
        this.events$.next(e);
        return;
      }
      case 'q':
        return this.onOnlineRequest(m[1], m[2], m[3], m[4]);
      case 'x': {
        // Another node's write replaced a message this node wrote and may be waiting on.
        const key = `${m[1]}:${m[2]}`;
        const expires = this.waitedMessages.get(key);
        if (expires === undefined) return;
        this.waitedMessages.delete(key);
        if (expires < Date.now()) return;
        this.counters.replacedReported++;
        this.store?.reportDrop({ uuid: m[1], kind: 'message', version: m[2], reason: 'replaced' });
        return;
      }
      case 'r': {
        const r = this.requests.get(m[1]);
        if (!r) return;
        this.requests.delete(m[1]);
        clearTimeout(r.timer);
        const s = m[3];
        const uuids: string[] = [];
        for (let i = 0; i + UUID_HEX <= s.length; i += UUID_HEX) uuids.push(s.slice(i, i + UUID_HEX));
        r.resolve({ next: m[2], uuids });
        return;
      }
    }
  }

  // --------------------------------------------------------------- gateway

  private onDelivery(origin: string, uuid: string, code: string, version: number): void {
    if (!CODE_KIND[code] || typeof uuid !== 'string') return;
    this.counters.deliveriesReceived++;
    // Remember first: the engine's sent event follows its (async) store read.
    if (origin !== this.nodeId) this.remember(uuid + code, origin, code === 'm' ? version : 0);
    let delivered = false;
    try {
      delivered = this.engine.deliver(uuid);
    } catch {
      delivered = false;
    }
    if (!delivered) this.counters.deliveriesMissed++;
  }

  /** Drops expired bookkeeping, oldest first (both maps are in expiry order). */
  private purge(): void {
    const now = Date.now();
    for (const [k, expires] of this.waitedMessages) {
      if (expires >= now) break;
      this.waitedMessages.delete(k);
    }
    for (const [k, f] of this.forwards) {
      if (f.expires >= now) break;
      this.forwards.delete(k);
    }
  }

  private rememberWaited(key: string): void {
    if (this.waitedMessages.size >= this.maxForwards) {
      // Oldest first (insertion order); expired ones go at no cost.
      const oldest = this.waitedMessages.keys().next();
      if (!oldest.done) this.waitedMessages.delete(oldest.value);
    }
    this.waitedMessages.set(key, Date.now() + this.forwardTtlMs);
  }

  private remember(key: string, origin: string, version: number): void {
    const expires = Date.now() + this.forwardTtlMs;
    let f = this.forwards.get(key);
    if (f) {
      // Re-inserted: the map stays in expiry order.
      this.forwards.delete(key);
      if (!f.targets.some((t) => t.origin === origin && t.version === version)) {
        f.targets.push({ origin, version });
        if (f.targets.length > MAX_FORWARD_TARGETS) f.targets.shift();
      }
      f.expires = expires;
    } else {
      if (this.forwards.size >= this.maxForwards) {
        const oldest = this.forwards.keys().next();
        if (!oldest.done) this.forwards.delete(oldest.value);
      }
      f = { targets: [{ origin, version }], expires };
    }
    this.forwards.set(key, f);
  }

  private onEngineEvent(e: DeviceEvent): void {
    if (e.type !== 'sent' && e.type !== 'ack') return;
    if (e.kind === 'message' && this.store) {
      // A first send is a push this node's dispatcher now waits on.
      if (e.type === 'sent' && !e.resend) this.rememberWaited(`${e.uuid}:${e.version}`);
      else if (e.type === 'ack') this.waitedMessages.delete(`${e.uuid}:${e.version}`);
    }
    if (this.forwards.size === 0) return;
    const key = e.uuid + KIND_CODE[e.kind];
    const f = this.forwards.get(key);
    if (!f) return;
    if (f.expires < Date.now()) {
      this.forwards.delete(key);
      return;
    }
    const message: Wire =
      e.type === 'sent'
        ? ['s', e.uuid, KIND_CODE[e.kind], e.version, e.transport === 'tcp' ? 't' : 'u', e.resend ? 1 : 0, e.at]
        : ['a', e.uuid, KIND_CODE[e.kind], e.version, e.at, e.mask !== undefined ? e.mask.toString(16) : '', e.remaining !== undefined ? e.remaining.toString(16) : ''];
    const sentTo = new Set<string>();
    for (const t of f.targets) {
      if (e.kind === 'message' && t.version !== e.version) continue;
      if (sentTo.has(t.origin)) continue;
      sentTo.add(t.origin);
      this.counters.forwarded++;
      this.publish(t.origin, message);
    }
    // An acked message version is done: stop forwarding for it.
    if (e.type === 'ack' && e.kind === 'message') {
      f.targets = f.targets.filter((t) => t.version !== e.version);
      if (f.targets.length === 0) this.forwards.delete(key);
    }
  }

  // ---------------------------------------------------------- remote online

  private request(node: string, cursor: number): Promise<{ next: number; uuids: string[] } | null> {
    return new Promise((resolve) => {
      const id = this.nextRequest++;
      const timer = setTimeout(() => {
        this.requests.delete(id);
        resolve(null);
      }, this.requestTimeoutMs);
      timer.unref();
      this.requests.set(id, { resolve, timer });
      this.publish(node, ['q', this.nodeId, id, cursor, this.onlineBatch]);
    });
  }

  private onOnlineRequest(origin: string, id: number, cursor: number, batch: number): void {
    if (typeof origin !== 'string' || !Number.isInteger(cursor) || cursor < 0) return;
    const size = Math.max(1, Math.min(Number(batch) || this.onlineBatch, 65_536));
    let uuids = '';
    const next = this.engine.scanReachable(cursor, size, (uuid) => {
      uuids += uuid;
    });
    this.publish(origin, ['r', id, next, uuids]);
  }
}
