import { CLEARED, NOT_PENDING, OTHER_PENDING } from './ack-results.js';
import { ownBuffer } from './own-buffer.util.js';
import { VersionCounter } from './version-counter.js';
import { InvalidUuidError } from '../protocol/uuid.util.js';
import { addFillers, FILLER_KEYS } from '../util/map-fillers.util.js';
import { ACK_PROMISE_FORM, asError, OfflineStore, OfflineStoreFullError, onlyReplaced, type AckCallback, type AckResult, type WriteCallback, type OfflineStoreStats, type PendingState, type PendingWrite, type WriteResult } from './offline-store.js';

/** Options of the in-memory store. */
export interface MemoryOfflineStoreOptions {
  /** Devices with something pending. Writes for new devices fail beyond it. Default 1,000,000. */
  maxDevices?: number;
  /** Total bytes of pending message content. Writes that would exceed it fail. Default 256 MiB. */
  maxBytes?: number;
  /** Pending state untouched for this long is dropped by `sweep`. Default 50 h (DDPush's record expiry). */
  ttlMs?: number;
}

interface Entry {
  notice: number;
  category: bigint;
  categoryVersion: number;
  message: Buffer | null;
  messageVersion: number;
  touched: number;
  /**
   * Index in `borrowed` (its message may be a view of a larger buffer, not
   * yet copied), or -1.
   */
  borrowSlot: number;
}

/** The value of the entries Map's fillers (never a device's). */
const FILLER: Entry = Object.freeze({ notice: 0, category: 0n, categoryVersion: 0, message: null, messageVersion: 0, touched: Infinity, borrowSlot: -1 }) as Entry;

const NO_REPLACE = 0;
/**
 * A message handed over as a view of a larger buffer (a pusher connection's
 * read chunk) is kept as that view for this long, then copied to a buffer of
 * its own if still pending: most pushes to online devices are acked sooner,
 * so they are never copied, and a view pins its chunk for no longer than this.
 */
const BORROW_MS = 100;
/** Views kept at once, at most; the write that reaches it copies them all. */
const MAX_BORROWED = 16_384;
/**
 * Bytes the kept views may pin, at most, counting a view's whole underlying
 * buffer unless the previous view shares it (a pusher connection's tasks
 * arrive chunk by chunk, so that counts each chunk about once; otherwise it
 * over-counts, never under): the write that reaches it copies them all.
 * Without it, views of 16,384 different 64 KiB chunks could pin 1 GiB.
 */
const MAX_BORROWED_BYTES = 64 * 1024 * 1024;

/**
 * Pending messages in a Map: fast, bounded, and gone with the process. For
 * tests and ephemeral setups; the durable default is the LMDB store.
 *
 * Entries are kept in touch order (re-inserted on every write), so `sweep`
 * only looks at the oldest entries and stops at the first fresh one: expiry
 * costs O(expired), never a scan of the whole map.
 *
 * A message handed over as a view of a larger buffer (what the pusher port
 * passes: a view of its read chunk) is copied only if it is still pending
 * 100 ms later: pushes acked sooner cost no copy.
 */
export class MemoryOfflineStore extends OfflineStore {
  /** Pending state per device, in touch order, behind `FILLER_KEYS` fillers (see `addFillers`). */
  private readonly entries = new Map<string, Entry>();
  /** Entries whose message may be a borrowed view (see `BORROW_MS`). */
  private borrowed: Entry[] = [];
  /** Sum of the kept views' underlying buffer sizes (see `MAX_BORROWED_BYTES`). */
  private borrowedBytes = 0;
  private lastBorrowedBuffer: ArrayBufferLike | null = null;
  private borrowTimer: NodeJS.Timeout | undefined;
  private bytes = 0;
  private readonly versions = new VersionCounter();
  readonly maxDevices: number;
  readonly maxBytes: number;
  readonly ttlMs: number;
  private readonly touchGranularityMs: number;

  constructor(options: MemoryOfflineStoreOptions = {}) {
    super();
    this.maxDevices = options.maxDevices ?? 1_000_000;
    this.maxBytes = options.maxBytes ?? 256 * 1024 * 1024;
    this.ttlMs = options.ttlMs ?? 50 * 3600_000;
    this.touchGranularityMs = Math.min(60_000, Math.max(1, Math.floor(this.ttlMs / 100)));
    addFillers(this.entries, FILLER);
  }

  /** Devices with something pending. */
  private get deviceCount(): number {
    return this.entries.size - FILLER_KEYS;
  }

  private sweepTimer: NodeJS.Timeout | undefined;

  /** Starts the expiry sweep (unref'd: it never keeps the process alive). */
  override async open(): Promise<void> {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => this.sweep(), Math.min(60_000, Math.max(10, this.touchGranularityMs)));
    this.sweepTimer.unref();
  }

  override async close(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    if (this.borrowTimer) clearTimeout(this.borrowTimer);
    this.borrowTimer = undefined;
  }

  /**
   * Stores at once. A subclass may override this or `writeThen` (what pushes
   * go through): either way both reach the override (see `onlyReplaced`).
   */
  write(uuid: string, push: PendingWrite): Promise<WriteResult> {
    if (onlyReplaced(this, MemoryOfflineStore, 'writeThen', 'write')) {
      return new Promise((resolve, reject) => this.writeThen(uuid, push, (err, r) => (err ? reject(err) : resolve(r!))));
    }
    try {
      return Promise.resolve(this.writeSync(uuid, push));
    } catch (err) {
      return Promise.reject(asError(err));
    }
  }

  override writeThen(uuid: string, push: PendingWrite, done: WriteCallback): void {
    // Only `write` overridden: the base class's adapter calls it.
    if (onlyReplaced(this, MemoryOfflineStore, 'write', 'writeThen')) return super.writeThen(uuid, push, done);
    let r: WriteResult;
    try {
      r = this.writeSync(uuid, push);
    } catch (err) {
      done(asError(err), null);
      return;
    }
    done(null, r);
  }

  private writeSync(uuid: string, push: PendingWrite): WriteResult {
    let e = this.entries.get(uuid);
    // Keys come normalised from the engine; a caller of the store itself passing a filler's key gets what any non-uuid gets.
    if (e === FILLER) throw new InvalidUuidError(uuid);
    if (push.kind === 'message') {
      const delta = push.content.length - (e?.message?.length ?? 0);
      if (this.bytes + delta > this.maxBytes) throw new OfflineStoreFullError('maxBytes', this.maxBytes);
    }
    const now = Date.now();
    if (!e) {
      if (this.deviceCount >= this.maxDevices) throw new OfflineStoreFullError('maxDevices', this.maxDevices);
      e = { notice: 0, category: 0n, categoryVersion: 0, message: null, messageVersion: 0, touched: now, borrowSlot: -1 };
      this.entries.set(uuid, e);
    } else if (now - e.touched >= this.touchGranularityMs) {
      // Re-inserting moves an entry to the end of the Map (touch order, which
      // keeps the sweep O(expired)); doing it on every write would dominate the
      // write cost, so an entry is moved at most once per `touchGranularityMs`.
      // The sweep may then see entries out of order by at most that much.
      this.entries.delete(uuid);
      e.touched = now;
      this.entries.set(uuid, e);
    }
    const version = this.versions.next();
    switch (push.kind) {
      case 'notice':
        e.notice = version;
        return { kind: 'notice', version, replaced: NO_REPLACE, head: true };
      case 'category':
        e.category |= BigInt.asUintN(64, push.mask);
        e.categoryVersion = version;
        return { kind: 'category', version, replaced: NO_REPLACE, mask: e.category, head: true };
      case 'message': {
        const replaced = e.messageVersion;
        this.bytes += push.content.length - (e.message?.length ?? 0);
        this.keep(e, push.content);
        e.messageVersion = version;
        return { kind: 'message', version, replaced, head: true };
      }
    }
  }

  read(uuid: string): Promise<PendingState | null> {
    const e = this.entries.get(uuid);
    if (!e || e === FILLER) return Promise.resolve(null);
    return Promise.resolve({
      notice: e.notice,
      category: e.category,
      categoryVersion: e.categoryVersion,
      message: e.message,
      messageVersion: e.messageVersion,
    });
  }

  ackNotice(uuid: string, version: number): Promise<AckResult> {
    return this.ackPromise(uuid, 'notice', version);
  }

  /** Acks at once. A subclass may override this or `ackNotice`/`ackMessage`: either way both reach the override. */
  override ackThen(uuid: string, kind: 'notice' | 'message', version: number, done: AckCallback): void {
    // Only the promise form overridden: the base class's adapter calls it.
    if (onlyReplaced(this, MemoryOfflineStore, ACK_PROMISE_FORM[kind], 'ackThen')) return super.ackThen(uuid, kind, version, done);
    done(null, this.ackSync(uuid, kind, version));
  }

  private ackPromise(uuid: string, kind: 'notice' | 'message', version: number): Promise<AckResult> {
    if (onlyReplaced(this, MemoryOfflineStore, 'ackThen', ACK_PROMISE_FORM[kind])) {
      return new Promise((resolve, reject) => this.ackThen(uuid, kind, version, (err, r) => (err ? reject(err) : resolve(r!))));
    }
    return Promise.resolve(this.ackSync(uuid, kind, version));
  }

  /** A subclass that overrides `ackThen`, `ackNotice` or `ackMessage` is asked through them: then `undefined`. */
  override ackNow(uuid: string, kind: 'notice' | 'message', version: number): AckResult | undefined {
    const own = MemoryOfflineStore.prototype;
    if (this.ackThen !== own.ackThen || this.ackNotice !== own.ackNotice || this.ackMessage !== own.ackMessage) return undefined;
    return this.ackSync(uuid, kind, version);
  }

  /** A subclass that overrides `writeThen` or `write` (a slower or failing store in tests, an audit) is asked through them: then `undefined`. */
  override writeNow(uuid: string, push: PendingWrite): WriteResult | undefined {
    const own = MemoryOfflineStore.prototype;
    if (this.writeThen !== own.writeThen || this.write !== own.write) return undefined;
    return this.writeSync(uuid, push);
  }

  private ackSync(uuid: string, kind: 'notice' | 'message', version: number): AckResult {
    return kind === 'notice' ? this.ackNoticeSync(uuid, version) : this.ackMessageSync(uuid, version);
  }

  private ackNoticeSync(uuid: string, version: number): AckResult {
    const e = this.entries.get(uuid);
    if (!e || e.notice === 0) return NOT_PENDING;
    if (e.notice !== version) return OTHER_PENDING;
    e.notice = 0;
    this.dropIfEmpty(uuid, e);
    return CLEARED;
  }

  ackCategory(uuid: string, mask: bigint): Promise<bigint> {
    const e = this.entries.get(uuid);
    if (!e || e === FILLER) return Promise.resolve(0n);
    e.category &= ~BigInt.asUintN(64, mask);
    e.category = BigInt.asUintN(64, e.category);
    if (e.category === 0n) e.categoryVersion = 0;
    this.dropIfEmpty(uuid, e);
    return Promise.resolve(e.category);
  }

  ackMessage(uuid: string, version: number): Promise<AckResult> {
    return this.ackPromise(uuid, 'message', version);
  }

  private ackMessageSync(uuid: string, version: number): AckResult {
    const e = this.entries.get(uuid);
    if (!e || e.messageVersion === 0) return NOT_PENDING;
    if (e.messageVersion !== version) return OTHER_PENDING;
    this.bytes -= e.message?.length ?? 0;
    e.message = null;
    this.unborrow(e);
    e.messageVersion = 0;
    this.dropIfEmpty(uuid, e);
    return CLEARED;
  }

  remove(uuid: string): Promise<void> {
    const e = this.entries.get(uuid);
    if (e && e !== FILLER) {
      this.bytes -= e.message?.length ?? 0;
      e.message = null;
      this.unborrow(e);
      this.entries.delete(uuid);
    }
    return Promise.resolve();
  }

  /**
   * Drops entries untouched for `ttlMs`, at most `budget` of them, oldest
   * first. Returns how many were dropped.
   */
  sweep(now = Date.now(), budget = 10_000): number {
    let dropped = 0;
    for (const [uuid, e] of this.entries) {
      if (e === FILLER) continue;
      if (dropped >= budget || now - e.touched < this.ttlMs) break;
      this.bytes -= e.message?.length ?? 0;
      e.message = null;
      this.unborrow(e);
      this.entries.delete(uuid);
      dropped++;
    }
    return dropped;
  }

  stats(): OfflineStoreStats {
    return { devices: this.deviceCount, bytes: this.bytes, maxDevices: this.maxDevices, maxBytes: this.maxBytes };
  }

  /**
   * Keeps a message's content: an exact-size buffer as it is; a view of a
   * larger buffer as that view for up to `BORROW_MS`, then (if still
   * pending) as a copy of its own, so a message kept for hours never pins
   * the buffer it arrived in.
   */
  private keep(e: Entry, content: Buffer): void {
    e.message = content;
    if (content.byteLength === content.buffer.byteLength) return;
    if (e.borrowSlot < 0) e.borrowSlot = this.borrowed.push(e) - 1;
    if (content.buffer !== this.lastBorrowedBuffer) {
      this.lastBorrowedBuffer = content.buffer;
      this.borrowedBytes += content.buffer.byteLength;
    }
    if (this.borrowed.length >= MAX_BORROWED || this.borrowedBytes >= MAX_BORROWED_BYTES) this.ownBorrowed();
    else if (!this.borrowTimer) {
      this.borrowTimer = setTimeout(this.onBorrowTimer, BORROW_MS);
      this.borrowTimer.unref();
    }
  }

  private readonly onBorrowTimer = (): void => {
    this.borrowTimer = undefined;
    this.ownBorrowed();
  };

  /** Copies every still-pending borrowed view to a buffer of its own. */
  private ownBorrowed(): void {
    const list = this.borrowed;
    this.borrowed = [];
    this.borrowedBytes = 0;
    this.lastBorrowedBuffer = null;
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!;
      e.borrowSlot = -1;
      if (e.message) e.message = ownBuffer(e.message);
    }
  }

  /**
   * Takes an entry whose message is gone (acked, removed, expired) out of
   * `borrowed` at once (swapping the last one into its place). Why: held
   * there until the copy timer, every acked push's entry would outlive the
   * young generation, and the collector would copy and then mark it.
   */
  private unborrow(e: Entry): void {
    const i = e.borrowSlot;
    if (i < 0) return;
    e.borrowSlot = -1;
    const list = this.borrowed;
    const last = list.pop()!;
    if (last !== e) {
      list[i] = last;
      last.borrowSlot = i;
    }
  }

  private dropIfEmpty(uuid: string, e: Entry): void {
    if (e.notice === 0 && e.category === 0n && e.messageVersion === 0) this.entries.delete(uuid);
  }
}

