import { accessSync, constants as fsConstants, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { type Database, open as openLmdb, type RootDatabase } from 'lmdb';
import { PushConfigError } from '../errors/push-config.error.js';
import { InvalidUuidError, isLowerUuidHex } from '../protocol/uuid.util.js';
import { checkLmdbDataFile } from './lmdb-file.check.js';
import { OfflineStoreOpenError, OfflineStoreUnavailableError } from './lmdb-errors.js';
import { LogValueBuilder, readLogValue } from './lmdb-log.codec.js';
import {
  decodeRecord,
  decodeState,
  type DeviceRecord,
  emptyRecord,
  encodeRecord,
  encodeState,
  isEmptyRecord,
  recordContentBytes,
  recordDueAt,
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
  ACK_PROMISE_FORM,
  onlyReplaced,
} from './offline-store.js';
import { CLEARED, CLEARED_MORE, NOT_PENDING, OTHER_PENDING } from './ack-results.js';
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
   * Device records kept decoded in memory once their state is checkpointed (oldest cached dropped
   * first), so the push -> ack cycle of a device does not read LMDB. Devices changed since the last
   * checkpoint are always in memory, on top of this. 0 keeps only those. Default 100,000.
   */
  cacheSize?: number;
  /**
   * Every turn that changes devices appends one log value (the newest state of each device it
   * changed) instead of rewriting one device record per device; a checkpoint writes the states of
   * the devices changed since the previous one into their records and removes the log, in one
   * transaction. Period of the checkpoint, in ms. A crash loses nothing either way: startup replays
   * the log. Default 1,000.
   *
   * Memory: a message is kept in memory as a view of the bytes the store wrote for it, the log
   * value of its turn until the next checkpoint, then its device's record value (no buffer is
   * allocated per push). So between checkpoints the log values written since the previous one
   * stay in memory (at most about the log's size, which a checkpoint bounds at 64 MiB).
   */
  checkpointIntervalMs?: number;
  /**
   * A checkpoint also runs as soon as this many devices changed since the previous one, or the log
   * holds 64 MiB. It bounds the devices kept in memory beyond `cacheSize` and the log's size. Default 100,000.
   */
  checkpointDevices?: number;
}

type CommitPromise = Promise<boolean> & { flushed?: PromiseLike<unknown> };

/** A device's newest state as this process knows it. */
interface Entry {
  id: string;
  /** The 16 uuid bytes: the device record's key. */
  key: Buffer;
  /** The state, changed in place by operations; null: no record. */
  rec: DeviceRecord | null;
  /** The last batch that changed it (0: read from LMDB). Pinned in memory while above the last checkpointed batch. */
  gen: number;
  /** The checkpoint epoch whose list holds it. */
  ck: number;
  /** The last batch in which it changed again after its first change (it is logged once more at the end of that turn). */
  relog: number;
  /** In `entries` (a record read without caching is not, until an operation changes it). */
  live: boolean;
}

/**
 * The writes of one event turn. lmdb-js commits every write queued in one
 * event turn in a single transaction; a batch follows it exactly: opened by
 * the turn's first write, closed by lmdb-js's `beforecommit` hook.
 */
interface Batch {
  gen: number;
  /**
   * This turn's log value: each device is encoded when it first changes in
   * the turn, while it is hot in the CPU cache.
   */
  log: LogValueBuilder;
  /** Entries that changed again after their first change in this turn: logged once more, with their final state, when it ends. */
  again: Entry[];
  /** This batch's transaction is a checkpoint (it writes device records and removes the log). */
  checkpoint: boolean;
  drops: StoreDrop[];
  /** Resolves when the batch's transaction is committed. */
  committed: Promise<void>;
  settle: (err?: unknown) => void;
  /** `writeThen` callbacks and their results, in pairs: woken once (at `durability`), by `wake`. */
  writers: (WriteCallback | WriteResult)[];
  /** `ackThen` callbacks and their results, in pairs: woken once, at the commit. */
  ackers: (AckCallback | AckResult)[];
}

const STATE_KEY = 'state';
const NO_DROPS: readonly StoreDrop[] = [];
/** Log bytes that start a checkpoint early: bounds the log between checkpoints under heavy load. */
const CHECKPOINT_LOG_BYTES = 64 * 1024 * 1024;
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
 * order), in the device's in-memory entry, which later operations and reads
 * consult first. lmdb-js commits every write queued in one event turn in one
 * transaction; at the end of the turn (its `beforecommit` hook) the store
 * appends one log value with the newest state of each device changed in the
 * turn (encoded when the device first changes, while it is hot in the CPU
 * cache, and once more at the end if it changed again), plus the store-wide
 * state record (last version, bytes). So all writes
 * of a turn share one commit (group commit) and one LMDB put, however many
 * writers and devices there are, and a crash always leaves the state record
 * consistent with the log.
 *
 * Checkpoints. Rewriting a B-tree record per device per turn is what made the
 * commit slow (and the callbacks waiting for it live long enough to tax the
 * garbage collector), so device records are written only by a checkpoint:
 * every `checkpointIntervalMs` (or after `checkpointDevices` changed devices)
 * a turn's transaction writes the state of every device changed since the
 * previous checkpoint into its record and removes the log instead of
 * appending to it. A device changed many times between checkpoints is written
 * once. Until its checkpoint commits, a changed device's entry is the truth
 * and stays in memory; after it, entries are a cache (`cacheSize`).
 *
 * Restart. Startup (and recovery from a failed commit) first replays the log
 * into the device records, in order, in one transaction. The state record
 * holds the last version handed out and the content bytes held. The
 * `VersionCounter` resumes after that version, so a new version never equals
 * a stored one until the u32 wraps (random seeding would give every restart a
 * small chance of colliding with a stored version, and an ack of the old one
 * could clear the new one); the device count is LMDB's own entry count after
 * the replay (O(1)), so `stats()` needs no scan.
 *
 * `write` resolves once its transaction is committed and, with
 * `durability: 'sync'`, flushed; acks and removals resolve at commit (a lost
 * ack only means a redelivery).
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
  readonly checkpointIntervalMs: number;
  readonly checkpointDevices: number;
  /** Messages kept per device: 1 for `latest`. */
  private readonly queueSize: number;
  /** Queue TTL in ms, 0 for `latest`. */
  private readonly queueTtlMs: number;

  private root: RootDatabase | undefined;
  private devices: Database<Buffer, Buffer> | undefined;
  private meta: Database<Buffer, string> | undefined;
  private log: Database<Buffer, number> | undefined;
  /** Newest known state per device: every device changed since the last checkpoint, plus a cache. */
  private readonly entries = new Map<string, Entry>();
  private versions = new VersionCounter();
  private lastVersion = 0;
  private deviceCount = 0;
  private bytes = 0;
  /** This event turn's batch, if anything was written in it. */
  private batch: Batch | undefined;
  private gen = 0;
  /** Highest batch whose checkpoint is committed: entries changed at or below it are clean cache. */
  private checkpointedGen = 0;
  /** Devices changed since the last checkpoint (each once per epoch), and that epoch. */
  private ckList: Entry[] = [];
  private ckEpoch = 1;
  /** Log keys written since the last checkpoint, and their bytes. */
  private logKeys: number[] = [];
  private logBytes = 0;
  /** Size of the last log value: the next turn's buffer starts a quarter above it (turns under load are alike; growing copies). */
  private lastLogBytes = 0;
  private lastCheckpoint = 0;
  /** The next batch is a checkpoint whatever its size. */
  private checkpointWanted = false;
  /** Batches opened and not settled yet. */
  private inflight = 0;
  /** Set after a failed commit until in-flight batches settle and the store re-reads its numbers. */
  private failure: Error | null = null;
  private closing = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  private checkpointTimer: NodeJS.Timeout | undefined;
  private sweepCursor: Buffer | undefined;
  /** The key the sweep examined last (copied: lmdb-js reuses its key buffer between rows). */
  private readonly sweepKey = Buffer.alloc(16);
  /** Position of the sweep in `ckList` (devices not in a device record yet), and its epoch. */
  private sweepCk = 0;
  private sweepCkEpoch = 0;
  private idleWaiters: (() => void)[] = [];
  /** LMDB transactions committed since open (group commit keeps it far below the number of writes). */
  commits = 0;
  /** Checkpoints committed since open. */
  checkpoints = 0;

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
    this.checkpointIntervalMs = positiveInt('store.checkpointIntervalMs', options.checkpointIntervalMs, 1_000);
    this.checkpointDevices = positiveInt('store.checkpointDevices', options.checkpointDevices, 100_000);
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
   * Creates the directory, checks the data file, opens LMDB, replays the log
   * of an unclean stop, reloads the store-wide numbers and starts the expiry
   * sweep and the checkpoints. Throws `OfflineStoreOpenError` (naming the
   * directory) when it cannot.
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
      const log = root.openDB<Buffer, number>({ name: 'log', encoding: 'binary' });
      replayLog(root, devices, log);
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
      this.log = log;
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
    this.lastCheckpoint = Date.now();
    this.sweepTimer = setInterval(() => this.sweepTick(), this.sweepIntervalMs);
    this.sweepTimer.unref();
    this.checkpointTimer = setInterval(() => this.checkpointTick(), Math.max(1, Math.floor(this.checkpointIntervalMs / 2)));
    this.checkpointTimer.unref();
  }

  /** Stops the timers, checkpoints, waits for every queued write to be committed and flushed, and closes LMDB. */
  override async close(): Promise<void> {
    const root = this.root;
    if (!root || this.closing) return;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    if (this.checkpointTimer) clearInterval(this.checkpointTimer);
    this.sweepTimer = undefined;
    this.checkpointTimer = undefined;
    // A clean stop leaves no log to replay.
    if (this.failure === null && (this.ckList.length > 0 || this.logKeys.length > 0)) this.requestCheckpoint();
    this.closing = true;
    if (this.inflight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    await root.flushed;
    await root.close();
    OPEN_PATHS.delete(this.path);
    this.root = undefined;
    this.devices = undefined;
    this.meta = undefined;
    this.log = undefined;
    this.entries.clear();
    this.ckList = [];
    this.logKeys = [];
  }

  // ------------------------------------------------------------ operations

  /** A subclass may override this or `writeThen` (what pushes go through): either way both reach the override (see `onlyReplaced`). */
  write(uuid: string, push: PendingWrite): Promise<WriteResult> {
    return new Promise((resolve, reject) => {
      const done: WriteCallback = (err, r) => (err ? reject(err) : resolve(r!));
      if (onlyReplaced(this, LmdbOfflineStore, 'writeThen', 'write')) this.writeThen(uuid, push, done);
      else this.writeCore(uuid, push, done);
    });
  }

  override writeThen(uuid: string, push: PendingWrite, done: WriteCallback): void {
    // Only `write` overridden: the base class's adapter calls it.
    if (onlyReplaced(this, LmdbOfflineStore, 'write', 'writeThen')) return super.writeThen(uuid, push, done);
    this.writeCore(uuid, push, done);
  }

  /** Writers wait for their batch's commit (and, with `sync`, its flush); one loop wakes them all. */
  private writeCore(uuid: string, push: PendingWrite, done: WriteCallback): void {
    try {
      this.checkWritable();
      const e = this.lookup(uuid, true);
      const id = e.id;
      const now = Date.now();
      const before = e.rec;
      const bytesBefore = before ? recordContentBytes(before) : 0;
      if (!before && this.deviceCount >= this.maxDevices) throw new OfflineStoreFullError('maxDevices', this.maxDevices);
      // Every check comes before the first change: a refused write changes nothing.
      let messages = before ? before.messages : EMPTY_MESSAGES;
      let drops: StoreDrop[] | readonly StoreDrop[] = NO_DROPS;
      if (this.queueMode && messages.length > 0) {
        messages = messages.slice();
        drops = this.purgeExpired(id, messages, now);
      }
      let replaced = 0;
      let bytesAfter = -1;
      /** Latest-only: the pending message object, updated in place to the new one. */
      let head: StoredMessage | undefined;
      if (push.kind === 'message') {
        const excess = messages.length - (this.queueSize - 1);
        let kept = 0;
        for (let i = excess > 0 ? excess : 0; i < messages.length; i++) kept += messages[i]!.content.length;
        bytesAfter = kept + push.content.length;
        if (this.bytes - bytesBefore + bytesAfter > this.maxBytes) throw new OfflineStoreFullError('maxBytes', this.maxBytes);
        if (excess > 0) {
          // Latest-only, or a full queue: the oldest go; the first is this write's `replaced`.
          replaced = messages[0]!.version;
          if (excess === 1 && messages.length === 1) {
            head = messages[0];
          } else {
            // Queue mode (or a queue left by a restart in queue mode): the oldest go, from a copy.
            if (messages === before?.messages) messages = messages.slice();
            const out = messages.splice(0, excess);
            for (let i = 1; i < out.length; i++) (drops === NO_DROPS ? (drops = []) : (drops as StoredDropList)).push(drop(id, out[i]!.version, 'replaced'));
          }
        }
      }
      const rec = before ?? emptyRecord(now);
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
        case 'message': {
          // Not copied here: logging the device, below or at the end of this turn, moves the
          // content into the log value (a checkpoint, into the device's record value), and
          // the kept message is a view of those bytes: no buffer is allocated per push, and
          // nothing keeps the caller's buffer (a pusher connection's read chunk) past this turn.
          const content = push.content;
          const expiresAt = this.queueMode ? now + this.queueTtlMs : 0;
          if (head) {
            head.version = version;
            head.expiresAt = expiresAt;
            head.content = content;
          } else {
            if (messages === EMPTY_MESSAGES) messages = [];
            messages.push({ version, expiresAt, content });
            rec.messages = messages;
          }
          result = { kind: 'message', version, replaced, head: rec.messages.length === 1 };
          break;
        }
      }
      if (messages !== EMPTY_MESSAGES && messages !== rec.messages) rec.messages = messages;
      e.rec = rec;
      this.changed(e, before !== null, bytesBefore, drops, bytesAfter).writers.push(done, result);
    } catch (err) {
      done(asError(err), null);
    }
  }

  read(uuid: string): Promise<PendingState | null> {
    try {
      const e = this.lookup(uuid, this.cacheSize > 0);
      const rec = e.rec;
      if (!rec) return Promise.resolve(null);
      const now = Date.now();
      if (!this.hasExpired(rec, now) || !this.canWrite()) return Promise.resolve(stateOf(rec));
      // Lazy expiry: a message whose queue TTL passed is dropped, never sent.
      this.expire(e, now);
      return Promise.resolve(e.rec ? stateOf(e.rec) : null);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  ackNotice(uuid: string, version: number): Promise<AckResult> {
    return this.ackPromise(uuid, 'notice', version);
  }

  /** A subclass may override this or `ackNotice`/`ackMessage`: either way both reach the override. */
  override ackThen(uuid: string, kind: 'notice' | 'message', version: number, done: AckCallback): void {
    // Only the promise form overridden: the base class's adapter calls it.
    if (onlyReplaced(this, LmdbOfflineStore, ACK_PROMISE_FORM[kind], 'ackThen')) return super.ackThen(uuid, kind, version, done);
    this.ackCore(uuid, kind, version, done);
  }

  private ackPromise(uuid: string, kind: 'notice' | 'message', version: number): Promise<AckResult> {
    return new Promise((resolve, reject) => {
      const done: AckCallback = (err, r) => (err ? reject(err) : resolve(r!));
      if (onlyReplaced(this, LmdbOfflineStore, 'ackThen', ACK_PROMISE_FORM[kind])) this.ackThen(uuid, kind, version, done);
      else this.ackCore(uuid, kind, version, done);
    });
  }

  /** Acks that change a record wait for their batch's commit; one loop wakes them all. */
  private ackCore(uuid: string, kind: 'notice' | 'message', version: number, done: AckCallback): void {
    try {
      const e = this.lookup(uuid, this.cacheSize > 0);
      const rec = e.rec;
      if (kind === 'notice') {
        if (!rec || rec.notice === 0) return done(null, NOT_PENDING);
        if (rec.notice !== version) return done(null, OTHER_PENDING);
        this.checkWritable();
        const bytesBefore = recordContentBytes(rec);
        rec.notice = 0;
        this.settleRecord(e);
        this.changed(e, true, bytesBefore, NO_DROPS).ackers.push(done, CLEARED);
        return;
      }
      if (!rec || rec.messages.length === 0) return done(null, NOT_PENDING);
      // An acked head was delivered, even if its TTL passed meanwhile: match it before expiring anything.
      if (rec.messages[0]!.version !== version) {
        this.read(e.id).then(
          (s) => done(null, s !== null && s.messageVersion !== 0 ? OTHER_PENDING : NOT_PENDING),
          (err: unknown) => done(asError(err), null),
        );
        return;
      }
      this.checkWritable();
      const bytesBefore = recordContentBytes(rec);
      const messages = rec.messages.slice(1);
      const drops = this.queueMode ? this.purgeExpired(e.id, messages, Date.now()) : NO_DROPS;
      rec.messages = messages;
      this.settleRecord(e);
      this.changed(e, true, bytesBefore, drops).ackers.push(done, messages.length > 0 ? CLEARED_MORE : CLEARED);
    } catch (err) {
      done(asError(err), null);
    }
  }

  ackCategory(uuid: string, mask: bigint): Promise<bigint> {
    try {
      const e = this.lookup(uuid, this.cacheSize > 0);
      const rec = e.rec;
      if (!rec) return Promise.resolve(0n);
      const remaining = BigInt.asUintN(64, rec.category & ~BigInt.asUintN(64, mask));
      if (remaining === rec.category) return Promise.resolve(remaining);
      this.checkWritable();
      const bytesBefore = recordContentBytes(rec);
      rec.category = remaining;
      if (remaining === 0n) rec.categoryVersion = 0;
      this.settleRecord(e);
      return this.changed(e, true, bytesBefore, NO_DROPS).committed.then(() => remaining);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  ackMessage(uuid: string, version: number): Promise<AckResult> {
    return this.ackPromise(uuid, 'message', version);
  }

  remove(uuid: string): Promise<void> {
    try {
      const e = this.lookup(uuid, this.cacheSize > 0);
      const rec = e.rec;
      if (!rec) return Promise.resolve();
      this.checkWritable();
      const bytesBefore = recordContentBytes(rec);
      e.rec = null;
      return this.changed(e, true, bytesBefore, NO_DROPS).committed;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  stats(): OfflineStoreStats {
    return { devices: this.deviceCount, bytes: this.bytes, maxDevices: this.maxDevices, maxBytes: this.maxBytes };
  }

  /**
   * Writes every device changed since the last checkpoint into its record and
   * removes the log, in this turn's transaction; resolves when it is
   * committed. Runs on its own every `checkpointIntervalMs`.
   */
  checkpoint(): Promise<void> {
    try {
      this.checkWritable();
      return this.requestCheckpoint().committed;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  // ----------------------------------------------------------------- sweep

  /**
   * One step of the expiry sweep: examines at most `budget` device records
   * from the sweep cursor (an LMDB key range; it wraps at the end of the
   * keys), and at most `budget` devices changed since the last checkpoint
   * (not all in a record yet); removes those not written for `ttlMs` and, in
   * queue mode, the queued messages whose TTL passed. Every message removed
   * is reported on `drops` as `expired`. Returns how many devices were removed.
   */
  sweep(now = Date.now(), budget = this.sweepBatch): number {
    const devices = this.devices;
    if (!devices || !this.canWrite()) return 0;
    const start = this.sweepCursor;
    let seen = 0;
    const last = this.sweepKey;
    const due: Entry[] = [];
    for (const { key, value } of devices.getRange(start ? { start, exclusiveStart: true, limit: budget } : { limit: budget })) {
      seen++;
      // Every key is a 16-byte uuid (the store writes no other); one that is not is left alone.
      if (key.length !== 16) continue;
      last.set(key);
      // Read from the stored bytes: a record not due is passed over without decoding it. A device
      // changed since the last checkpoint has a newer state in memory, examined in the list below;
      // any other cached entry holds exactly what is stored, so its stored bytes decide for it too.
      const at = recordDueAt(value, this.ttlMs);
      if (at < 0 || at > now) continue;
      const id = last.toString('hex');
      const e = this.entries.get(id);
      if (e) {
        if (e.ck !== this.ckEpoch && this.isDue(e.rec, now)) due.push(e);
        continue;
      }
      let rec: DeviceRecord;
      try {
        rec = decodeRecord(value);
      } catch {
        continue; // left alone: operations on it report the damage
      }
      if (this.isDue(rec, now)) due.push({ id, key: Buffer.from(last), rec, gen: 0, ck: 0, relog: 0, live: false });
    }
    this.sweepCursor = seen < budget ? undefined : Buffer.from(last);
    if (this.sweepCkEpoch !== this.ckEpoch) {
      this.sweepCkEpoch = this.ckEpoch;
      this.sweepCk = 0;
    }
    const list = this.ckList;
    const end = Math.min(list.length, this.sweepCk + budget);
    for (let i = this.sweepCk; i < end; i++) if (this.isDue(list[i]!.rec, now)) due.push(list[i]!);
    this.sweepCk = end >= list.length ? 0 : end;
    let removed = 0;
    for (const e of due) {
      const rec = e.rec;
      if (!rec || !this.isDue(rec, now)) continue; // already handled (listed twice)
      if (now - rec.touched >= this.ttlMs) {
        const drops = rec.messages.map((m) => drop(e.id, m.version, 'expired'));
        const bytesBefore = recordContentBytes(rec);
        e.rec = null;
        this.changed(e, true, bytesBefore, drops);
        removed++;
        continue;
      }
      if (this.expire(e, now) && !e.rec) removed++;
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

  private checkpointTick(): void {
    if (!this.canWrite() || this.batch) return; // an open batch checks for itself when it closes
    // Records cached by reads alone are clean: a read-only load trims them here, with no checkpoint.
    if (this.entries.size > this.cacheSize + this.ckList.length) this.evict();
    if (this.ckList.length === 0 && this.logKeys.length === 0) return;
    if (Date.now() - this.lastCheckpoint < this.checkpointIntervalMs) return;
    try {
      this.requestCheckpoint();
    } catch {
      // Retried next tick.
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

  /** The device's entry by a caller's uuid: a hit needs no validation (only valid ids are in memory). */
  private lookup(uuid: string, cache: boolean): Entry {
    return this.entries.get(uuid) ?? this.entry(this.idOf(uuid), cache);
  }

  /**
   * The device's entry: from memory, else read from LMDB (kept in memory
   * when `cache`; an operation that changes it keeps it anyway).
   */
  private entry(id: string, cache: boolean): Entry {
    const e = this.entries.get(id);
    if (e) return e;
    const devices = this.devices;
    if (!devices) throw new OfflineStoreUnavailableError('LmdbOfflineStore is not open: call open() first (PushModule does it at startup)');
    const key = Buffer.from(id, 'hex');
    const b = devices.getBinaryFast(key);
    const fresh: Entry = { id, key, rec: b ? decodeRecord(b) : null, gen: 0, ck: 0, relog: 0, live: cache };
    if (cache) {
      this.entries.set(id, fresh);
      // Past the cache and the pinned entries: have the next checkpoint trim it.
      if (this.entries.size > this.cacheSize + this.ckList.length + 1024) this.checkpointWanted = true;
    }
    return fresh;
  }

  /** Drops the oldest cached clean entries beyond `cacheSize` (entries changed since the checkpoint are the truth: they stay). */
  private evict(): void {
    let over = this.entries.size - this.cacheSize;
    if (over <= 0) return;
    for (const [id, e] of this.entries) {
      if (over <= 0) break;
      if (e.gen > this.checkpointedGen) continue;
      e.live = false;
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

  private isDue(rec: DeviceRecord | null, now: number): boolean {
    return rec !== null && (now - rec.touched >= this.ttlMs || this.hasExpired(rec, now));
  }

  /** Removes the messages whose queue TTL passed from `messages` (in place); returns their drops. */
  private purgeExpired(id: string, messages: StoredMessage[], now: number): StoreDrop[] {
    let drops: StoreDrop[] | undefined;
    let w = 0;
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      if (m.expiresAt > 0 && m.expiresAt <= now) (drops ??= []).push(drop(id, m.version, 'expired'));
      else messages[w++] = m;
    }
    messages.length = w;
    return drops ?? (NO_DROPS as StoreDrop[]);
  }

  /** Drops the device's expired queued messages; true when some were. */
  private expire(e: Entry, now: number): boolean {
    const rec = e.rec;
    if (!rec || !this.hasExpired(rec, now)) return false;
    const bytesBefore = recordContentBytes(rec);
    const messages = rec.messages.slice();
    const drops = this.purgeExpired(e.id, messages, now);
    rec.messages = messages;
    this.settleRecord(e);
    this.changed(e, true, bytesBefore, drops);
    return true;
  }

  /** A record with nothing pending is no record. */
  private settleRecord(e: Entry): void {
    if (e.rec && isEmptyRecord(e.rec)) e.rec = null;
  }

  /**
   * The entry's state changed (in place): accounts for it and puts it in
   * this turn's batch (logged once at the end of the turn, however often the
   * device changed) and in the checkpoint list. Returns the batch, whose
   * promise says when it is committed.
   */
  private changed(e: Entry, had: boolean, bytesBefore: number, drops: readonly StoreDrop[], bytesAfter = -1): Batch {
    const b = this.batch ?? this.openBatch();
    const rec = e.rec;
    this.deviceCount += (rec ? 1 : 0) - (had ? 1 : 0);
    this.bytes += (bytesAfter >= 0 ? bytesAfter : rec ? recordContentBytes(rec) : 0) - bytesBefore;
    if (!e.live) {
      e.live = true;
      this.entries.set(e.id, e);
    }
    if (e.gen !== b.gen) {
      e.gen = b.gen;
      b.log.add(e.key, rec);
    } else if (e.relog !== b.gen) {
      // Changed again in this turn: its final state is logged at the end, once, however often it changes.
      e.relog = b.gen;
      b.again.push(e);
    }
    if (e.ck !== this.ckEpoch) {
      e.ck = this.ckEpoch;
      this.ckList.push(e);
    }
    for (let i = 0; i < drops.length; i++) b.drops.push(drops[i]!);
    return b;
  }

  private openBatch(): Batch {
    const meta = this.meta;
    if (!meta) throw new OfflineStoreUnavailableError('LmdbOfflineStore is not open: call open() first (PushModule does it at startup)');
    // Opens lmdb-js's batch for this event turn (its content is rewritten at the end of the turn).
    meta.put(STATE_KEY, encodeState({ lastVersion: this.lastVersion, bytes: this.bytes })).catch(noop);
    let settle!: (err?: unknown) => void;
    const committed = new Promise<void>((resolve, reject) => (settle = (err) => (err === undefined ? resolve() : reject(err))));
    // Operations may attach to it or not; it must never surface as an unhandled rejection.
    committed.catch(noop);
    const b: Batch = { gen: ++this.gen, log: new LogValueBuilder(this.lastLogBytes + (this.lastLogBytes >> 2)), again: [], checkpoint: false, drops: [], committed, settle, writers: [], ackers: [] };
    this.batch = b;
    this.inflight++;
    return b;
  }

  /** Makes this turn's batch (opened if need be) a checkpoint. */
  private requestCheckpoint(): Batch {
    this.checkpointWanted = true;
    return this.batch ?? this.openBatch();
  }

  /**
   * lmdb-js `beforecommit` hook: the turn's writes are about to be committed
   * as one transaction. Appends one log value with the newest state of every
   * device changed in the turn, or, when a checkpoint is due, writes every
   * device changed since the last checkpoint into its record and removes the
   * log; then the store-wide state record, all in that transaction (so the
   * state record always matches the log and the records). The batch then
   * follows its commit.
   */
  private closeBatch(): void {
    const b = this.batch;
    const devices = this.devices;
    const meta = this.meta;
    const log = this.log;
    if (!b || !devices || !meta || !log) return;
    this.batch = undefined;
    let p: CommitPromise;
    try {
      const due =
        this.checkpointWanted ||
        this.ckList.length >= this.checkpointDevices ||
        this.logBytes >= CHECKPOINT_LOG_BYTES ||
        Date.now() - this.lastCheckpoint >= this.checkpointIntervalMs;
      if (due) {
        // The device records take the state of every device changed since the last checkpoint,
        // this turn included, so the log (this turn's part too) is not needed any more.
        for (const e of this.ckList) {
          // Adopting: the device's kept messages move from log values into its own record value,
          // so the log values of the turns since the previous checkpoint can be freed.
          if (e.rec) void devices.put(e.key, encodeRecord(e.rec, true));
          else devices.remove(e.key).catch(noop);
        }
        for (const k of this.logKeys) log.remove(k).catch(noop);
        b.checkpoint = true;
        this.ckList = [];
        this.ckEpoch++;
        this.logKeys = [];
        this.logBytes = 0;
        this.checkpointWanted = false;
        this.lastCheckpoint = Date.now();
      } else if (b.log.count > 0) {
        for (const e of b.again) b.log.add(e.key, e.rec);
        const value = b.log.finish();
        this.lastLogBytes = value.length;
        void log.put(b.gen, value);
        this.logKeys.push(b.gen);
        this.logBytes += value.length;
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

  /** The batch's transaction committed (or failed): waiters hear of it, drops are published, a checkpoint frees the cache. */
  private committedBatch(b: Batch, err?: unknown): void {
    if (err === undefined) {
      if (b.checkpoint) {
        this.checkpoints++;
        if (b.gen > this.checkpointedGen) this.checkpointedGen = b.gen;
        this.evict();
      }
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
    this.wake(b, err === undefined ? null : asError(err));
    if (--this.inflight > 0) return;
    if (this.failure) this.resync();
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * After a failed commit, once nothing is in flight: LMDB is the truth
   * again, so the log is replayed into the device records, the in-memory
   * entries are dropped, the numbers re-read, and writes accepted again.
   */
  private resync(): void {
    const root = this.root;
    const devices = this.devices;
    const meta = this.meta;
    const log = this.log;
    if (!root || !devices || !meta || !log) return;
    try {
      for (const e of this.entries.values()) e.live = false;
      this.entries.clear();
      this.ckList = [];
      this.ckEpoch++;
      this.logKeys = [];
      this.logBytes = 0;
      this.checkpointedGen = this.gen;
      replayLog(root, devices, log);
      this.deviceCount = (devices.getStats() as { entryCount: number }).entryCount;
      const s = meta.getBinary(STATE_KEY);
      this.bytes = s ? decodeState(s).bytes : 0;
      this.failure = null;
    } catch (err) {
      this.failure = err instanceof Error ? err : new Error(String(err));
    }
  }
}

/** Shared and never changed: every change site replaces it with an array of its own. */
const EMPTY_MESSAGES: StoredMessage[] = [];
type StoredDropList = StoreDrop[];

/**
 * Moves the states held by the log into the device records, oldest log value
 * first, and removes the log: one synchronous transaction, so a crash during
 * the replay leaves the log to replay again.
 */
function replayLog(root: RootDatabase, devices: Database<Buffer, Buffer>, log: Database<Buffer, number>): void {
  const keys: number[] = [];
  for (const k of log.getKeys({})) keys.push(k as number);
  if (keys.length === 0) return;
  root.transactionSync(() => {
    for (const k of keys) {
      const value = log.getBinary(k);
      if (value) {
        readLogValue(value, (key, record) => {
          if (record) devices.putSync(Buffer.from(key), Buffer.from(record));
          else devices.removeSync(Buffer.from(key));
        });
      }
      log.removeSync(k);
    }
  });
}

function noop(): void {}

function drop(uuid: string, version: number, reason: StoreDrop['reason']): StoreDrop {
  return { uuid, kind: 'message', version, reason };
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
