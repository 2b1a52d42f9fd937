import { accessSync, constants as fsConstants, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { type Database, open as openLmdb, type RootDatabase } from 'lmdb';
import { PushConfigError } from '../errors/push-config.error.js';
import { InvalidUuidError, isLowerUuidHex } from '../protocol/uuid.util.js';
import { checkLmdbDataFile } from './lmdb-file.check.js';
import { OfflineStoreOpenError, OfflineStoreUnavailableError } from './lmdb-errors.js';
import {
  cloneRecord,
  decodeRecord,
  decodeState,
  type DeviceRecord,
  emptyRecord,
  encodeRecord,
  encodeState,
  isEmptyRecord,
  recordContentBytes,
  type StoredMessage,
} from './lmdb-record.codec.js';
import {
  type AckResult,
  OfflineStore,
  OfflineStoreFullError,
  type OfflineStoreStats,
  type PendingState,
  type PendingWrite,
  type StoreDrop,
  type AckCallback,
  type WriteCallback,
  type WriteResult,
  asError,
} from './offline-store.js';
import { CLEARED, CLEARED_MORE, NOT_PENDING, OTHER_PENDING } from './ack-results.js';
import { ownBuffer } from './own-buffer.util.js';
import { VersionCounter } from './version-counter.js';

/**
 * How pending 0x20 messages are kept per device.
 * - `'latest'` (default, DDPush): one message; a new push replaces the unacked one (reported as `replaced`).
 * - `{ queue: N, ttlMs }`: up to N messages, delivered oldest first, one at a time (the next after
 *   the previous is acked). A push into a full queue drops the oldest (reported as `replaced`);
 *   a message still queued `ttlMs` after its push is dropped and reported as `failure` / `expired`.
 */
export type MessageRetention = 'latest' | { queue: number; ttlMs: number };

/** Options of the LMDB offline store (the durable default). */
export interface LmdbOfflineStoreOptions {
  /** Data directory, created (recursively) on open. Relative paths resolve against the working directory. Default `'./.nest-push'`. */
  path?: string;
  /**
   * When `write` resolves (and so when the pusher port answers 0x00 / `PushService` accepts):
   * - `'sync'` (default): after the commit holding the push is flushed to disk (fsync). Survives
   *   a process crash (kill -9), an OS crash and a power loss.
   * - `'async'`: after the commit is written to the OS, before its fsync. Survives a process crash
   *   (kill -9: the OS page cache holds the written pages, and LMDB reopens at the latest commit
   *   when the machine did not reboot). An OS crash or power loss can lose the pushes accepted
   *   since the last completed fsync (the last few ms); LMDB then reopens at the last flushed
   *   commit, so the store is not corrupted.
   *
   * Either way all writes of an event turn share one commit (group commit), and its fsync runs on
   * lmdb-js's writer thread, never on the event loop.
   */
  durability?: 'sync' | 'async';
  /** Devices with something pending, at most; writes for new devices fail beyond it. Default 1,000,000. */
  maxDevices?: number;
  /** Total bytes of pending message content, at most; writes that would exceed it fail. Default 1 GiB. */
  maxBytes?: number;
  /**
   * A device's pending state not written for this long is removed by the sweep (its messages are
   * reported on `drops` as `expired`). Default 50 h (DDPush's record expiry).
   */
  ttlMs?: number;
  /** Retention of 0x20 messages. Default `'latest'`. */
  messageRetention?: MessageRetention;
  /** Period of the expiry sweep (a timer started by `open()`, unref'd, stopped by `close()`). Default 1 s. */
  sweepIntervalMs?: number;
  /** Device records the sweep examines per period, at most (it walks the keys with a cursor). Default 1,000. */
  sweepBatch?: number;
  /**
   * Device records kept decoded in memory after their commit (most recently written first), so the
   * push -> ack cycle of a device does not read LMDB. 0 keeps only records whose commit is in flight.
   * Default 100,000.
   */
  cacheSize?: number;
}

type CommitPromise = Promise<boolean> & { flushed?: PromiseLike<unknown> };

/** A device's newest state as this process knows it. */
interface Entry {
  /** The state; null: no record. */
  rec: DeviceRecord | null;
  key: Buffer;
  /** The batch that carries `rec` to LMDB (0: read from LMDB). Dirty while above the last committed batch. */
  gen: number;
}

/**
 * The writes of one event turn. lmdb-js commits every write queued in one
 * event turn in a single transaction; a batch follows it exactly: opened by
 * the turn's first write, closed by lmdb-js's `beforecommit` hook.
 */
interface Batch {
  gen: number;
  /** Entries changed in this batch, each once (its newest state is written at the end of the turn). */
  dirty: [string, Entry][];
  drops: StoreDrop[];
  /** Resolves when the batch's transaction is committed. */
  committed: Promise<void>;
  /** Resolves when it is as durable as `durability` promises. */
  durable: Promise<void>;
  settle: (err?: unknown) => void;
  settleDurable: (err?: unknown) => void;
  /** `writeThen` callbacks and their results, in pairs: woken once (at `durability`), by `wake`. */
  writers: (WriteCallback | WriteResult)[];
  /** `ackThen` callbacks and their results, in pairs: woken once, at the commit. */
  ackers: (AckCallback | AckResult)[];
}

const STATE_KEY = 'state';
const NO_DROPS: readonly StoreDrop[] = [];
/** Data directories opened by a store of this process. */
const OPEN_PATHS = new Set<string>();
const ANY_HEX = /^[0-9a-fA-F]{32}$/;

function positiveInt(option: string, v: unknown, fallback: number, min = 1): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new PushConfigError(option, `expected an integer >= ${min}, got ${String(v)}`);
  return v;
}

/**
 * Pending pushes in an embedded LMDB database: durable before acceptance, with
 * group commit, and reloaded on restart. The durable default of `PushModule`.
 *
 * Consistency. Every operation computes the device's new state synchronously
 * on the event loop (so operations on one device are serialised in call
 * order) and makes it the device's in-memory entry, which later operations
 * and reads consult first. lmdb-js commits every write queued in one event
 * turn in one transaction; at the end of the turn (its `beforecommit` hook)
 * the store writes each device changed in the turn once, with its newest
 * state, plus the store-wide state record (last version, bytes). So all
 * writes of a turn share one commit (group commit), however many writers
 * there are, and a crash always leaves the state record consistent with the
 * device records. A dirty entry (its commit in flight) is the truth until
 * that commit; committed entries stay as a cache of the most recently
 * written devices (`cacheSize`).
 *
 * `write` resolves once its transaction is committed and, with
 * `durability: 'sync'`, flushed; acks and removals resolve at commit (a lost
 * ack only means a redelivery).
 *
 * Restart. The state record holds the last version handed out and the
 * content bytes held. The `VersionCounter` resumes after that version, so a
 * new version never equals a stored one until the u32 wraps (random seeding
 * would give every restart a small chance of colliding with a stored
 * version, and an ack of the old one could clear the new one); the device
 * count is LMDB's own entry count (O(1)), so `stats()` needs no scan.
 *
 * One process per data directory: the in-memory entries assume this process is the only writer.
 */
export class LmdbOfflineStore extends OfflineStore {
  readonly path: string;
  readonly durability: 'sync' | 'async';
  readonly maxDevices: number;
  readonly maxBytes: number;
  readonly ttlMs: number;
  readonly messageRetention: MessageRetention;
  readonly sweepIntervalMs: number;
  readonly sweepBatch: number;
  readonly cacheSize: number;
  /** Messages kept per device: 1 for `latest`. */
  private readonly queueSize: number;
  /** Queue TTL in ms, 0 for `latest`. */
  private readonly queueTtlMs: number;

  private root: RootDatabase | undefined;
  private devices: Database<Buffer, Buffer> | undefined;
  private meta: Database<Buffer, string> | undefined;
  /** Newest known state per device, most recently written last (Map order). */
  private readonly entries = new Map<string, Entry>();
  private versions = new VersionCounter();
  private lastVersion = 0;
  private deviceCount = 0;
  private bytes = 0;
  /** This event turn's batch, if anything was written in it. */
  private batch: Batch | undefined;
  private gen = 0;
  /** Highest batch whose transaction is committed (batches commit in order). */
  private committedGen = 0;
  /** Batches opened and not settled yet. */
  private inflight = 0;
  /** Set after a failed commit until in-flight batches settle and the store re-reads its numbers. */
  private failure: Error | null = null;
  private closing = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweepCursor: Buffer | undefined;
  private idleWaiters: (() => void)[] = [];
  /** LMDB transactions committed since open (group commit keeps it far below the number of writes). */
  commits = 0;

  constructor(options: LmdbOfflineStoreOptions = {}) {
    super();
    if (options === null || typeof options !== 'object') throw new PushConfigError('store', 'LmdbOfflineStore options must be an object');
    const path = options.path ?? './.nest-push';
    if (typeof path !== 'string' || path.length === 0) throw new PushConfigError('store.path', `expected a directory path, got ${String(path)}`);
    this.path = resolvePath(path);
    const durability = options.durability ?? 'sync';
    if (durability !== 'sync' && durability !== 'async') throw new PushConfigError('store.durability', `expected 'sync' or 'async', got ${String(durability)}`);
    this.durability = durability;
    this.maxDevices = positiveInt('store.maxDevices', options.maxDevices, 1_000_000);
    this.maxBytes = positiveInt('store.maxBytes', options.maxBytes, 1024 * 1024 * 1024);
    this.ttlMs = positiveInt('store.ttlMs', options.ttlMs, 50 * 3600_000);
    this.sweepIntervalMs = positiveInt('store.sweepIntervalMs', options.sweepIntervalMs, 1_000);
    this.sweepBatch = positiveInt('store.sweepBatch', options.sweepBatch, 1_000);
    this.cacheSize = positiveInt('store.cacheSize', options.cacheSize, 100_000, 0);
    const retention = options.messageRetention ?? 'latest';
    if (retention === 'latest') {
      this.queueSize = 1;
      this.queueTtlMs = 0;
    } else if (retention && typeof retention === 'object') {
      this.queueSize = positiveInt('store.messageRetention.queue', retention.queue ?? NaN, 0);
      if (this.queueSize > 65535) throw new PushConfigError('store.messageRetention.queue', `at most 65535 messages per device, got ${this.queueSize}`);
      this.queueTtlMs = positiveInt('store.messageRetention.ttlMs', retention.ttlMs ?? NaN, 0);
    } else {
      throw new PushConfigError('store.messageRetention', `expected 'latest' or { queue: N, ttlMs }, got ${String(retention)}`);
    }
    this.messageRetention = retention;
  }

  private get queueMode(): boolean {
    return this.queueTtlMs > 0;
  }

  // -------------------------------------------------------------- lifecycle

  /**
   * Creates the directory, checks the data file, opens LMDB, reloads the
   * store-wide numbers and starts the expiry sweep. Throws
   * `OfflineStoreOpenError` (naming the directory) when it cannot.
   */
  override async open(): Promise<void> {
    if (this.root) return;
    const dir = this.path;
    // The in-memory entries assume one writer: a second store on the same directory would corrupt both views.
    if (OPEN_PATHS.has(dir)) throw new OfflineStoreOpenError(dir, 'in-use', 'another LmdbOfflineStore of this process has it open');
    try {
      ensureDirectory(dir);
      accessSync(dir, fsConstants.R_OK | fsConstants.W_OK | fsConstants.X_OK);
    } catch (err) {
      throw new OfflineStoreOpenError(dir, 'not-writable', (err as Error).message, { cause: err });
    }
    const bad = checkLmdbDataFile(join(dir, 'data.mdb'));
    if (bad) throw new OfflineStoreOpenError(dir, 'corrupt', bad);
    let root: RootDatabase;
    try {
      // Overlapping sync (lmdb-js's default off Windows) in both modes: a commit is written and visible
      // at once and its fsync follows on the writer thread; after a crash LMDB reopens at the latest
      // commit when the OS did not restart (kill -9), else at the latest flushed one. `sync` waits for
      // the flush, `async` does not. Same file layout in both modes, so switching modes is safe.
      root = openLmdb({ path: dir, noSubdir: false, maxDbs: 4, separateFlushed: true });
    } catch (err) {
      throw classifyOpenError(dir, err);
    }
    try {
      const devices = root.openDB<Buffer, Buffer>({ name: 'devices', keyEncoding: 'binary', encoding: 'binary' });
      const meta = root.openDB<Buffer, string>({ name: 'meta', encoding: 'binary' });
      const stateBuf = meta.getBinary(STATE_KEY);
      const records = (devices.getStats() as { entryCount: number }).entryCount;
      if (stateBuf) {
        const state = decodeState(stateBuf);
        this.bytes = state.bytes;
        this.lastVersion = state.lastVersion;
        this.versions = new VersionCounter(state.lastVersion);
      } else {
        // A new store. (Device records without a state record are not written by this code: recount them.)
        this.bytes = 0;
        if (records > 0) for (const { value } of devices.getRange({})) this.bytes += recordContentBytes(decodeRecord(value));
        this.versions = new VersionCounter();
        this.lastVersion = 0;
      }
      // A bounded probe: the first record must decode.
      for (const { value } of devices.getRange({ limit: 1 })) decodeRecord(value);
      this.deviceCount = records;
      this.devices = devices;
      this.meta = meta;
    } catch (err) {
      await root.close().catch(noop);
      throw classifyOpenError(dir, err);
    }
    this.root = root;
    OPEN_PATHS.add(dir);
    root.on('aftercommit', () => this.commits++);
    root.on('beforecommit', () => this.closeBatch());
    this.closing = false;
    this.failure = null;
    this.sweepTimer = setInterval(() => this.sweepTick(), this.sweepIntervalMs);
    this.sweepTimer.unref();
  }

  /** Stops the sweep, waits for every queued write to be committed and flushed, and closes LMDB. */
  override async close(): Promise<void> {
    const root = this.root;
    if (!root || this.closing) return;
    this.closing = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    if (this.inflight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    await root.flushed;
    await root.close();
    OPEN_PATHS.delete(this.path);
    this.root = undefined;
    this.devices = undefined;
    this.meta = undefined;
    this.entries.clear();
  }

  // ------------------------------------------------------------ operations

  /** Wraps `writeThen`, which is what pushes go through: a subclass changes both by overriding `writeThen`. */
  write(uuid: string, push: PendingWrite): Promise<WriteResult> {
    return new Promise((resolve, reject) => this.writeThen(uuid, push, (err, r) => (err ? reject(err) : resolve(r!))));
  }

  /** Writers wait for their batch's commit (and, with `sync`, its flush); one loop wakes them all. */
  override writeThen(uuid: string, push: PendingWrite, done: WriteCallback): void {
    try {
      const id = this.idOf(uuid);
      this.checkWritable();
      const now = Date.now();
      const [before, key] = this.current(id);
      const rec = before ? cloneRecord(before) : emptyRecord(now);
      const drops = this.purgeExpired(id, rec, now);
      let replaced = 0;
      if (push.kind === 'message') {
        const excess = rec.messages.length - (this.queueSize - 1);
        if (excess > 0) {
          // Latest-only, or a full queue: the oldest go; the first is this write's `replaced`.
          const out = rec.messages.splice(0, excess);
          replaced = out[0]!.version;
          for (let i = 1; i < out.length; i++) drops.push(drop(id, out[i]!.version, 'replaced'));
        }
        const delta = recordContentBytes(rec) + push.content.length - (before ? recordContentBytes(before) : 0);
        if (this.bytes + delta > this.maxBytes) throw new OfflineStoreFullError('maxBytes', this.maxBytes);
      }
      if (!before && this.deviceCount >= this.maxDevices) throw new OfflineStoreFullError('maxDevices', this.maxDevices);
      const version = this.nextVersion();
      rec.touched = now;
      let result: WriteResult;
      switch (push.kind) {
        case 'notice':
          rec.notice = version;
          result = { kind: 'notice', version, replaced: 0, head: true };
          break;
        case 'category':
          rec.category = BigInt.asUintN(64, rec.category | BigInt.asUintN(64, push.mask));
          rec.categoryVersion = version;
          result = { kind: 'category', version, replaced: 0, mask: rec.category, head: true };
          break;
        case 'message':
          // Kept decoded in the entry cache after the commit: a buffer of its own.
          rec.messages.push({ version, expiresAt: this.queueMode ? now + this.queueTtlMs : 0, content: ownBuffer(push.content) });
          result = { kind: 'message', version, replaced, head: rec.messages.length === 1 };
          break;
      }
      this.apply(id, key, before, rec, drops).writers.push(done, result);
    } catch (err) {
      done(asError(err), null);
    }
  }

  read(uuid: string): Promise<PendingState | null> {
    try {
      const id = this.idOf(uuid);
      const [before, key] = this.current(id);
      if (!before) return Promise.resolve(null);
      const now = Date.now();
      if (!this.hasExpired(before, now) || !this.canWrite()) return Promise.resolve(stateOf(before));
      // Lazy expiry: a message whose queue TTL passed is dropped, never sent.
      const rec = cloneRecord(before);
      const drops = this.purgeExpired(id, rec, now);
      const after = orNull(rec);
      this.apply(id, key, before, after, drops);
      return Promise.resolve(after ? stateOf(after) : null);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  ackNotice(uuid: string, version: number): Promise<AckResult> {
    return new Promise((resolve, reject) => this.ackThen(uuid, 'notice', version, (err, r) => (err ? reject(err) : resolve(r!))));
  }

  /** Acks that change a record wait for their batch's commit; one loop wakes them all. */
  override ackThen(uuid: string, kind: 'notice' | 'message', version: number, done: AckCallback): void {
    try {
      const id = this.idOf(uuid);
      const [before, key] = this.current(id);
      if (kind === 'notice') {
        if (!before || before.notice === 0) return done(null, NOT_PENDING);
        if (before.notice !== version) return done(null, OTHER_PENDING);
        this.checkWritable();
        const rec = cloneRecord(before);
        rec.notice = 0;
        this.apply(id, key, before, orNull(rec), NO_DROPS).ackers.push(done, CLEARED);
        return;
      }
      if (!before || before.messages.length === 0) return done(null, NOT_PENDING);
      // An acked head was delivered, even if its TTL passed meanwhile: match it before expiring anything.
      if (before.messages[0]!.version !== version) {
        this.read(id).then(
          (s) => done(null, s !== null && s.messageVersion !== 0 ? OTHER_PENDING : NOT_PENDING),
          (err: unknown) => done(asError(err), null),
        );
        return;
      }
      this.checkWritable();
      const rec = cloneRecord(before);
      rec.messages.shift();
      const drops = this.purgeExpired(id, rec, Date.now());
      this.apply(id, key, before, orNull(rec), drops).ackers.push(done, rec.messages.length > 0 ? CLEARED_MORE : CLEARED);
    } catch (err) {
      done(asError(err), null);
    }
  }

  ackCategory(uuid: string, mask: bigint): Promise<bigint> {
    try {
      const id = this.idOf(uuid);
      const [before, key] = this.current(id);
      if (!before) return Promise.resolve(0n);
      const remaining = BigInt.asUintN(64, before.category & ~BigInt.asUintN(64, mask));
      if (remaining === before.category) return Promise.resolve(remaining);
      this.checkWritable();
      const rec = cloneRecord(before);
      rec.category = remaining;
      if (remaining === 0n) rec.categoryVersion = 0;
      return this.apply(id, key, before, orNull(rec), NO_DROPS).committed.then(() => remaining);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  ackMessage(uuid: string, version: number): Promise<AckResult> {
    return new Promise((resolve, reject) => this.ackThen(uuid, 'message', version, (err, r) => (err ? reject(err) : resolve(r!))));
  }

  remove(uuid: string): Promise<void> {
    try {
      const id = this.idOf(uuid);
      const [before, key] = this.current(id);
      if (!before) return Promise.resolve();
      this.checkWritable();
      return this.apply(id, key, before, null, NO_DROPS).committed;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  stats(): OfflineStoreStats {
    return { devices: this.deviceCount, bytes: this.bytes, maxDevices: this.maxDevices, maxBytes: this.maxBytes };
  }

  // ----------------------------------------------------------------- sweep

  /**
   * One step of the expiry sweep: examines at most `budget` device records
   * from the sweep cursor (an LMDB key range; it wraps at the end of the
   * keys), removes those not written for `ttlMs` and, in queue mode, the
   * queued messages whose TTL passed. Every message removed is reported on
   * `drops` as `expired`. Returns how many device records were removed.
   */
  sweep(now = Date.now(), budget = this.sweepBatch): number {
    const devices = this.devices;
    if (!devices || !this.canWrite()) return 0;
    const start = this.sweepCursor;
    let seen = 0;
    let last: Buffer | undefined;
    const due: string[] = [];
    for (const { key, value } of devices.getRange(start ? { start, exclusiveStart: true, limit: budget } : { limit: budget })) {
      seen++;
      last = Buffer.from(key);
      const id = last.toString('hex');
      const e = this.entries.get(id);
      let rec: DeviceRecord | null;
      try {
        rec = e ? e.rec : decodeRecord(value);
      } catch {
        continue; // left alone: operations on it report the damage
      }
      if (rec && (now - rec.touched >= this.ttlMs || this.hasExpired(rec, now))) due.push(id);
    }
    this.sweepCursor = seen < budget ? undefined : last;
    let removed = 0;
    for (const id of due) {
      const [before, key] = this.current(id, false);
      if (!before) continue;
      if (now - before.touched >= this.ttlMs) {
        this.apply(id, key, before, null, before.messages.map((m) => drop(id, m.version, 'expired')));
        removed++;
        continue;
      }
      const rec = cloneRecord(before);
      const drops = this.purgeExpired(id, rec, now);
      if (drops.length === 0) continue;
      const after = orNull(rec);
      if (!after) removed++;
      this.apply(id, key, before, after, drops);
    }
    return removed;
  }

  private sweepTick(): void {
    try {
      this.sweep(Date.now(), this.sweepBatch);
    } catch {
      // A read error is retried next tick; operations report their own errors.
    }
  }

  // -------------------------------------------------------------- internals

  private idOf(uuid: string): string {
    if (typeof uuid === 'string' && isLowerUuidHex(uuid)) return uuid;
    if (typeof uuid === 'string' && ANY_HEX.test(uuid)) return uuid.toLowerCase();
    throw new InvalidUuidError(uuid);
  }

  private canWrite(): boolean {
    return this.devices !== undefined && !this.closing && this.failure === null;
  }

  private checkWritable(): void {
    if (!this.devices) throw new OfflineStoreUnavailableError('LmdbOfflineStore is not open: call open() first (PushModule does it at startup)');
    if (this.closing) throw new OfflineStoreUnavailableError('LmdbOfflineStore is closing; nothing was stored');
    if (this.failure) {
      throw new OfflineStoreUnavailableError(`LmdbOfflineStore is recovering from a failed commit (${this.failure.message}); nothing was stored, retry`, {
        cause: this.failure,
      });
    }
  }

  /**
   * The device's newest state (its entry, else LMDB) and its key. Never
   * mutate the record. A record read from LMDB is cached unless `cache` is false.
   */
  private current(id: string, cache = true): [DeviceRecord | null, Buffer] {
    const e = this.entries.get(id);
    if (e) return [e.rec, e.key];
    const devices = this.devices;
    if (!devices) throw new OfflineStoreUnavailableError('LmdbOfflineStore is not open: call open() first (PushModule does it at startup)');
    const key = Buffer.from(id, 'hex');
    const b = devices.getBinaryFast(key);
    const rec = b ? decodeRecord(b) : null;
    if (cache && this.cacheSize > 0) {
      this.entries.set(id, { rec, key, gen: 0 });
      this.evict();
    }
    return [rec, key];
  }

  /** Drops the least recently written clean entries beyond `cacheSize` (dirty ones are the truth: they stay). */
  private evict(): void {
    let over = this.entries.size - this.cacheSize;
    if (over <= 0) return;
    for (const [id, e] of this.entries) {
      if (over <= 0 || e.gen > this.committedGen) break;
      this.entries.delete(id);
      over--;
    }
  }

  private nextVersion(): number {
    const v = this.versions.next();
    this.lastVersion = v;
    return v;
  }

  private hasExpired(rec: DeviceRecord, now: number): boolean {
    for (const m of rec.messages) if (m.expiresAt > 0 && m.expiresAt <= now) return true;
    return false;
  }

  /** Removes the messages whose queue TTL passed from `rec` (a copy); returns their drops. */
  private purgeExpired(id: string, rec: DeviceRecord, now: number): StoreDrop[] {
    if (!this.hasExpired(rec, now)) return [];
    const drops: StoreDrop[] = [];
    const kept: StoredMessage[] = [];
    for (const m of rec.messages) {
      if (m.expiresAt > 0 && m.expiresAt <= now) drops.push(drop(id, m.version, 'expired'));
      else kept.push(m);
    }
    rec.messages = kept;
    return drops;
  }

  /**
   * Makes `after` the device's state (null: no record): its dirty entry in
   * this turn's batch (written to LMDB once at the end of the turn, however
   * often the device changed), and accounts for it. Returns the batch, whose
   * promises say when it is committed / durable.
   */
  private apply(id: string, key: Buffer, before: DeviceRecord | null, after: DeviceRecord | null, drops: readonly StoreDrop[]): Batch {
    const b = this.batch ?? this.openBatch();
    this.deviceCount += (after ? 1 : 0) - (before ? 1 : 0);
    this.bytes += (after ? recordContentBytes(after) : 0) - (before ? recordContentBytes(before) : 0);
    const old = this.entries.get(id);
    if (old && old.gen === b.gen) {
      old.rec = after;
    } else {
      const e: Entry = { rec: after, key, gen: b.gen };
      b.dirty.push([id, e]);
      // Most recently written last (eviction order): delete, then set.
      if (old) this.entries.delete(id);
      this.entries.set(id, e);
    }
    for (const d of drops) b.drops.push(d);
    return b;
  }

  private openBatch(): Batch {
    const meta = this.meta;
    if (!meta) throw new OfflineStoreUnavailableError('LmdbOfflineStore is not open: call open() first (PushModule does it at startup)');
    // Opens lmdb-js's batch for this event turn (its content is rewritten at the end of the turn).
    meta.put(STATE_KEY, encodeState({ lastVersion: this.lastVersion, bytes: this.bytes })).catch(noop);
    let settle!: (err?: unknown) => void;
    let settleDurable!: (err?: unknown) => void;
    const committed = new Promise<void>((resolve, reject) => (settle = (err) => (err === undefined ? resolve() : reject(err))));
    const durable = new Promise<void>((resolve, reject) => (settleDurable = (err) => (err === undefined ? resolve() : reject(err))));
    // Operations attach to one or the other; neither may surface as an unhandled rejection.
    committed.catch(noop);
    durable.catch(noop);
    const b: Batch = { gen: ++this.gen, dirty: [], drops: [], committed, durable, settle, settleDurable, writers: [], ackers: [] };
    this.batch = b;
    this.inflight++;
    return b;
  }

  /**
   * lmdb-js `beforecommit` hook: the turn's writes are about to be committed
   * as one transaction. Every device changed in the turn is written with its
   * newest state, then the store-wide state record, all in that transaction
   * (so the state record always matches the device records); the batch then
   * follows its commit.
   */
  private closeBatch(): void {
    const b = this.batch;
    const devices = this.devices;
    const meta = this.meta;
    if (!b || !devices || !meta) return;
    this.batch = undefined;
    let p: CommitPromise;
    try {
      for (const [, e] of b.dirty) {
        if (e.rec) void devices.put(e.key, encodeRecord(e.rec));
        else devices.remove(e.key).catch(noop);
      }
      // An unconditional put: it returns the commit promise of the whole transaction.
      p = meta.put(STATE_KEY, encodeState({ lastVersion: this.lastVersion, bytes: this.bytes })) as CommitPromise;
    } catch (err) {
      this.committedBatch(b, err);
      this.settled(b, err);
      return;
    }
    p.then(
      () => {
        this.committedBatch(b);
        const flushed = this.durability === 'sync' ? p.flushed : undefined;
        if (!flushed || flushed === p) return this.settled(b);
        Promise.resolve(flushed).then(
          () => this.settled(b),
          (err: unknown) => this.settled(b, err),
        );
      },
      (err: unknown) => {
        this.committedBatch(b, err);
        this.settled(b, err);
      },
    );
  }

  /** The batch's transaction committed (or failed): its entries become clean cache, waiters hear of it, drops are published. */
  private committedBatch(b: Batch, err?: unknown): void {
    if (err === undefined) {
      if (b.gen > this.committedGen) this.committedGen = b.gen;
      this.evict();
      b.settle();
      this.wakeAckers(b, null);
      if (this.durability === 'async') this.wake(b, null);
      for (const d of b.drops) this.drops$.next(d);
      return;
    }
    if (!this.failure) this.failure = err instanceof Error ? err : new Error(String(err));
    const wrapped = new OfflineStoreUnavailableError(`LmdbOfflineStore: the commit failed (${(err as Error)?.message ?? String(err)}); nothing of this operation was stored`, {
      cause: err,
    });
    b.settle(wrapped);
    b.settleDurable(wrapped);
    this.wakeAckers(b, wrapped);
    this.wake(b, wrapped);
  }

  /** Calls the batch's writers back (each once: the list is emptied first). */
  private wake(b: Batch, err: Error | null): void {
    const w = b.writers;
    if (w.length === 0) return;
    b.writers = [];
    callBack(w, err);
  }

  /** Calls the batch's ackers back (each once). */
  private wakeAckers(b: Batch, err: Error | null): void {
    const a = b.ackers;
    if (a.length === 0) return;
    b.ackers = [];
    callBack(a, err);
  }

  /** The batch is durable (or failed); once nothing is in flight, wake `close()` and recover from a failure. */
  private settled(b: Batch, err?: unknown): void {
    if (err === undefined) b.settleDurable();
    else b.settleDurable(err);
    this.wake(b, err === undefined ? null : asError(err));
    if (--this.inflight > 0) return;
    if (this.failure) this.resync();
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * After a failed commit, once nothing is in flight: LMDB is the truth
   * again, so the in-memory entries are dropped, the numbers re-read, and
   * writes accepted again.
   */
  private resync(): void {
    const devices = this.devices;
    const meta = this.meta;
    if (!devices || !meta) return;
    try {
      this.entries.clear();
      this.committedGen = this.gen;
      this.deviceCount = (devices.getStats() as { entryCount: number }).entryCount;
      const s = meta.getBinary(STATE_KEY);
      this.bytes = s ? decodeState(s).bytes : 0;
      this.failure = null;
    } catch (err) {
      this.failure = err instanceof Error ? err : new Error(String(err));
    }
  }
}

function noop(): void {}

function drop(uuid: string, version: number, reason: StoreDrop['reason']): StoreDrop {
  return { uuid, kind: 'message', version, reason };
}

function orNull(rec: DeviceRecord): DeviceRecord | null {
  return isEmptyRecord(rec) ? null : rec;
}

/** Calls `(callback, result)` pairs back, with `err` instead of the results when set. */
function callBack<R>(pairs: (((err: Error | null, r: R | null) => void) | R)[], err: Error | null): void {
  for (let i = 0; i < pairs.length; i += 2) {
    const done = pairs[i] as (err: Error | null, r: R | null) => void;
    // One faulty callback must not leave the rest of the batch unanswered.
    try {
      if (err) done(err, null);
      else done(null, pairs[i + 1] as R);
    } catch (thrown) {
      queueMicrotask(() => {
        throw thrown;
      });
    }
  }
}

function stateOf(rec: DeviceRecord): PendingState {
  const head = rec.messages[0];
  return {
    notice: rec.notice,
    category: rec.category,
    categoryVersion: rec.categoryVersion,
    message: head ? head.content : null,
    messageVersion: head ? head.version : 0,
  };
}

/**
 * `mkdir -p`, one level at a time. (`mkdirSync(dir, { recursive: true })`
 * loops forever where mkdir answers ENOENT under an existing parent, as
 * /proc does.)
 */
function ensureDirectory(dir: string): void {
  try {
    if (statSync(dir).isDirectory()) return;
    throw new Error(`${dir} exists and is not a directory`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const parent = dirname(dir);
  if (parent !== dir) ensureDirectory(parent);
  try {
    mkdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST' && statSync(dir).isDirectory()) return;
    throw err;
  }
}

function classifyOpenError(dir: string, err: unknown): OfflineStoreOpenError {
  const e = err as NodeJS.ErrnoException | undefined;
  const msg = e?.message ?? String(err);
  if (e?.code === 'EACCES' || e?.code === 'EPERM' || e?.code === 'EROFS' || /permission denied|read-only file system/i.test(msg)) {
    return new OfflineStoreOpenError(dir, 'not-writable', msg, { cause: err });
  }
  if (e?.name === 'RecordFormatError' || /MDB_INVALID|MDB_VERSION_MISMATCH|MDB_CORRUPTED|MDB_PAGE_NOTFOUND|not an LMDB file/i.test(msg)) {
    return new OfflineStoreOpenError(dir, 'corrupt', msg, { cause: err });
  }
  return new OfflineStoreOpenError(dir, 'failed', msg, { cause: err });
}
