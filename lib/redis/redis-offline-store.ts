import type { Redis } from 'ioredis';
import { Subject, type Observable } from 'rxjs';
import { PushConfigError } from '../errors/push-config.error.js';
import type { PushKind } from '../interfaces/push-kind.interface.js';
import {
  OfflineStore,
  OfflineStoreFullError,
  type AckResult,
  type OfflineStoreStats,
  type PendingState,
  type PendingWrite,
  type StoreDrop,
  type WriteResult,
} from '../store/offline-store.js';
import { VersionCounter } from '../store/version-counter.js';
import { closeClient, DEFAULT_KEY_PREFIX, deviceKey, ensureConnected, isOutOfMemory } from './redis-connection.js';
import { defineScripts, type ScriptedRedis } from './redis-scripts.js';

/** How pending 0x20 messages are kept: the latest only (DDPush), or a bounded queue with a per-message TTL. */
export type MessageRetention = 'latest' | { queue: number; ttlMs: number };

/** Options of `RedisOfflineStore`. */
export interface RedisOfflineStoreOptions {
  /** An ioredis client (its scripts are defined on it). */
  redis: Redis;
  /** Quit the client on `close()` (the `redisCluster` plugin gives the store its connection). Default false. */
  ownsClient?: boolean;
  /**
   * This node's id, recorded with each pending message so that a node
   * replacing it can tell the node that wrote it (`replacedElsewhere`). Default ''.
   */
  nodeId?: string;
  /** Prefix of every key. Default `'np:'`. */
  keyPrefix?: string;
  /** Default `'latest'`. */
  messageRetention?: MessageRetention;
  /**
   * A device's pending state expires this long after its last write (PEXPIRE
   * on the device's keys, no sweep). Default 50 h (DDPush's record expiry).
   */
  ttlMs?: number;
  /** How often `stats()`'s figures are refreshed from Redis (INFO). Default 5 s. */
  statsIntervalMs?: number;
  /**
   * Read the device's route (`<prefix>{<uuid>}:r`, as `RedisPushRouter`
   * writes it) in each write's script and report its node as
   * `WriteResult.route`, so the dispatcher needs no separate route lookup for
   * a device held elsewhere. Only correct when the node's router is a
   * `RedisPushRouter` on the same Redis and key prefix: the `redisCluster`
   * plugin turns it on. Default false.
   */
  readRoutes?: boolean;
}

const KIND_CODE = { notice: 'n', category: 'c', message: 'm' } as const;
const U32 = 0x1_0000_0000n;
/** Queue entry: version (10 digits), deadline (15), origin length (3), origin, content. */
const QUEUE_HEADER = 28;

/** A message this node's write replaced, that another node wrote (and may be waiting on). */
export interface RemoteReplacement {
  uuid: string;
  version: number;
  /** Node that wrote the replaced message. */
  origin: string;
}

/**
 * Pending pushes in Redis, shared by every node of a cluster, with the same
 * semantics and version rules as `MemoryOfflineStore`: notice flag + version,
 * category masks OR-ed in and cleared bit by bit, latest-only messages (each
 * write reports the version it replaced) or a bounded queue (`messageRetention:
 * { queue, ttlMs }`: `read` shows the head, acking the head answers
 * `remaining: true` while more wait, a full queue drops its oldest as
 * `replaced`, an expired message is reported on `drops` as `expired`).
 *
 * Every operation is ONE Lua script (one round trip, atomic in Redis). A
 * device's keys are hash-tagged `<prefix>{<uuid>}:p|q`, so the layout works on
 * Redis Cluster. Message content is stored as raw bytes. Versions come from a
 * randomly seeded `VersionCounter` per node (two nodes collide on one device
 * only by a 1 in 2^32 chance per pair of writes). Each write refreshes a
 * PEXPIRE of `ttlMs` on the device's keys: expiry costs no sweep.
 *
 * Queue expiry is lazy: an expired message is removed (and reported on
 * `drops`, by the node that noticed) the next time its device's queue is
 * written, read or acked, typically at the device's next heartbeat.
 *
 * Redis down: commands fail at once (the connection's offline queue is off),
 * so `write` rejects and the push is refused (pusher reply 0xff, outcome
 * `failure` / `store-error`) — nothing is acknowledged that was not stored.
 * Redis out of memory (`maxmemory` with `noeviction`) rejects writes with
 * `OfflineStoreFullError('maxBytes')`.
 *
 * `stats()` is approximate and never touches Redis on the call: `bytes` and
 * `maxBytes` are Redis' `used_memory` / `maxmemory` (0 = unlimited is reported
 * as `Number.MAX_SAFE_INTEGER`), `devices` is the number of keys in the Redis
 * database (an upper bound: routes and other applications' keys count too),
 * refreshed every `statsIntervalMs`.
 *
 * With `readRoutes`, a write also reads the device's route in the same script
 * and reports its node as `WriteResult.route` (null when none is stored).
 */
export class RedisOfflineStore extends OfflineStore {
  readonly keyPrefix: string;
  /**
   * Writes report the device's route (see the `readRoutes` option). The
   * `redisCluster` plugin turns it off again when the node's router turns out
   * not to be a `RedisPushRouter` on this key prefix.
   */
  readRoutes: boolean;
  readonly retention: MessageRetention;
  readonly ttlMs: number;
  readonly nodeId: string;
  private readonly redis: ScriptedRedis;
  private readonly replacedElsewhere$ = new Subject<RemoteReplacement>();
  private readonly owns: boolean;
  private readonly versions = new VersionCounter();
  private readonly statsIntervalMs: number;
  private statsTimer: NodeJS.Timeout | undefined;
  private cached: OfflineStoreStats = { devices: 0, bytes: 0, maxDevices: Number.MAX_SAFE_INTEGER, maxBytes: Number.MAX_SAFE_INTEGER };

  constructor(options: RedisOfflineStoreOptions) {
    super();
    this.redis = defineScripts(options.redis);
    this.owns = options.ownsClient ?? false;
    this.nodeId = options.nodeId ?? '';
    if (this.nodeId.length > 999) throw new PushConfigError('nodeId', 'expected at most 999 characters');
    this.keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.retention = options.messageRetention ?? 'latest';
    this.ttlMs = options.ttlMs ?? 50 * 3600_000;
    this.statsIntervalMs = options.statsIntervalMs ?? 5000;
    this.readRoutes = options.readRoutes ?? false;
    validateRetention(this.retention, 'messageRetention');
    if (!Number.isInteger(this.ttlMs) || this.ttlMs < 1) throw new PushConfigError('ttlMs', `expected an integer >= 1 (ms), got ${String(this.ttlMs)}`);
  }

  override async open(): Promise<void> {
    await ensureConnected(this.redis, 'Redis (offline store)');
    await this.refreshStats();
    this.statsTimer = setInterval(() => void this.refreshStats(), this.statsIntervalMs);
    this.statsTimer.unref();
  }

  override async close(): Promise<void> {
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = undefined;
    this.replacedElsewhere$.complete();
    if (this.owns) await closeClient(this.redis);
  }

  async write(uuid: string, push: PendingWrite): Promise<WriteResult> {
    const version = this.versions.next();
    const now = Date.now();
    const args: (string | Buffer | number)[] = [];
    let code: string = KIND_CODE[push.kind];
    if (push.kind === 'category') {
      const mask = BigInt.asUintN(64, push.mask);
      args.push(String(mask / U32), String(mask % U32));
    } else if (push.kind === 'message') {
      const r = this.retention;
      if (r === 'latest') args.push(push.content, this.nodeId);
      else {
        code = 'q';
        const origin = Buffer.from(this.nodeId, 'utf8');
        const header = Buffer.from(String(version).padStart(10, '0') + String(now + r.ttlMs).padStart(15, '0') + String(origin.length).padStart(3, '0'), 'latin1');
        args.push(Buffer.concat([header, origin, push.content]), r.queue);
      }
    }
    const readRoute = this.readRoutes;
    let reply: (Buffer | string | number | null)[];
    try {
      reply = readRoute
        ? await this.redis.npStoreWriteRoutedBuffer(this.key(uuid, 'p'), this.key(uuid, 'q'), deviceKey(this.keyPrefix, uuid, 'r'), code, version, now, this.ttlMs, ...args)
        : await this.redis.npStoreWriteBuffer(this.key(uuid, 'p'), this.key(uuid, 'q'), code, version, now, this.ttlMs, ...args);
    } catch (err) {
      if (isOutOfMemory(err)) throw new OfflineStoreFullError('maxBytes', this.cached.maxBytes);
      throw err;
    }
    const replaced = num(reply[0]);
    const head = num(reply[1]) === 1;
    const expiredCount = num(reply[6]);
    this.emitDrops(uuid, reply, 7, 7 + expiredCount, 'expired');
    this.emitDrops(uuid, reply, 7 + expiredCount, reply.length, 'replaced');
    if (replaced !== 0 && this.replacedElsewhere$.observed) {
      const origin = reply[4] == null ? '' : reply[4].toString();
      if (origin !== '' && origin !== this.nodeId) this.replacedElsewhere$.next({ uuid, version: replaced, origin });
    }
    const result: WriteResult = { kind: push.kind, version, replaced, head };
    if (push.kind === 'category') result.mask = (BigInt(num(reply[2])) << 32n) | BigInt(num(reply[3]));
    if (readRoute) result.route = reply[5] == null ? null : reply[5].toString();
    return result;
  }

  async read(uuid: string): Promise<PendingState | null> {
    const r = await this.redis.npStoreReadBuffer(this.key(uuid, 'p'), this.key(uuid, 'q'), Date.now());
    this.emitDrops(uuid, r, 8, r.length, 'expired');
    const notice = num(r[0]);
    const category = r[1] == null ? 0n : (BigInt(num(r[1])) << 32n) | BigInt(num(r[2]));
    const categoryVersion = category ? num(r[3]) : 0;
    let message: Buffer | null = null;
    let messageVersion = 0;
    const head = r[6];
    if (Buffer.isBuffer(head)) {
      messageVersion = Number(head.toString('latin1', 0, 10));
      message = Buffer.from(head.subarray(QUEUE_HEADER + Number(head.toString('latin1', 25, QUEUE_HEADER))));
    } else if (r[5] != null) {
      messageVersion = num(r[5]);
      message = Buffer.isBuffer(r[4]) ? r[4] : Buffer.from(String(r[4] ?? ''));
    }
    if (!notice && !category && !messageVersion) return null;
    return { notice, category, categoryVersion, message, messageVersion };
  }

  async ackNotice(uuid: string, version: number): Promise<AckResult> {
    const r = await this.redis.npStoreAckNotice(this.key(uuid, 'p'), version);
    return { cleared: r[0] === 1, remaining: r[1] === 1 };
  }

  async ackCategory(uuid: string, mask: bigint): Promise<bigint> {
    const m = BigInt.asUintN(64, mask);
    const r = await this.redis.npStoreAckCategory(this.key(uuid, 'p'), String(m / U32), String(m % U32));
    return (BigInt(r[0]!) << 32n) | BigInt(r[1]!);
  }

  async ackMessage(uuid: string, version: number): Promise<AckResult> {
    const r = await this.redis.npStoreAckMessage(this.key(uuid, 'p'), this.key(uuid, 'q'), version, Date.now());
    this.emitDrops(uuid, r, 3, r.length, 'expired');
    return { cleared: r[0] === 1, remaining: r[1] === 1 };
  }

  async remove(uuid: string): Promise<void> {
    await this.redis.del(this.key(uuid, 'p'), this.key(uuid, 'q'));
  }

  stats(): OfflineStoreStats {
    return { ...this.cached };
  }

  /**
   * Messages written by another node that a write of this node replaced
   * (the cluster tells that node, whose push is then `replaced`, not `timeout`).
   */
  get replacedElsewhere(): Observable<RemoteReplacement> {
    return this.replacedElsewhere$.asObservable();
  }

  /** Reports a drop this node learned from a peer (a message of ours another node replaced). */
  reportDrop(drop: StoreDrop): void {
    this.drops$.next(drop);
  }

  /** Re-reads the approximate figures of `stats()` (INFO memory + DBSIZE); errors keep the last figures. */
  async refreshStats(): Promise<OfflineStoreStats> {
    try {
      const [info, size] = await Promise.all([this.redis.info('memory'), this.redis.dbsize()]);
      const used = /used_memory:(\d+)/.exec(info);
      const max = /maxmemory:(\d+)/.exec(info);
      const maxBytes = max && Number(max[1]) > 0 ? Number(max[1]) : Number.MAX_SAFE_INTEGER;
      this.cached = { devices: size, bytes: used ? Number(used[1]) : 0, maxDevices: Number.MAX_SAFE_INTEGER, maxBytes };
    } catch {
      // Redis unreachable: keep the last figures.
    }
    return this.stats();
  }

  private key(uuid: string, suffix: 'p' | 'q'): string {
    return deviceKey(this.keyPrefix, uuid, suffix);
  }

  private emitDrops(uuid: string, reply: unknown[], from: number, to: number, reason: 'expired' | 'replaced'): void {
    const kind: PushKind = 'message';
    for (let i = from; i < to; i++) this.drops$.next({ uuid, kind, version: num(reply[i]), reason });
  }
}

function num(v: unknown): number {
  if (v == null) return 0;
  if (typeof v === 'number') return v;
  return Number(Buffer.isBuffer(v) ? v.toString('latin1') : v);
}

/** Throws `PushConfigError` unless `r` is `'latest'` or `{ queue: int >= 1, ttlMs: int >= 1 }`. */
export function validateRetention(r: unknown, name: string): asserts r is MessageRetention {
  if (r === 'latest') return;
  if (r && typeof r === 'object') {
    const { queue, ttlMs, ...rest } = r as { queue?: unknown; ttlMs?: unknown };
    const extra = Object.keys(rest);
    if (extra.length) throw new PushConfigError(`${name}.${extra[0]}`, 'unknown option; expected { queue, ttlMs }');
    if (typeof queue !== 'number' || !Number.isInteger(queue) || queue < 1 || queue > 1_000_000) {
      throw new PushConfigError(`${name}.queue`, `expected an integer in 1..1000000, got ${String(queue)}`);
    }
    if (typeof ttlMs !== 'number' || !Number.isInteger(ttlMs) || ttlMs < 1) {
      throw new PushConfigError(`${name}.ttlMs`, `expected an integer >= 1 (ms), got ${String(ttlMs)}`);
    }
    return;
  }
  throw new PushConfigError(name, `expected 'latest' or { queue: number, ttlMs: number }, got ${String(r)}`);
}
