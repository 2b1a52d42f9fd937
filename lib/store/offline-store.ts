import { type Observable, Subject } from 'rxjs';
import type { PushKind } from '../interfaces/push-kind.interface.js';

/**
 * A push to record as pending for a device. A message's `content` is handed
 * over: the store may keep that very Buffer, so the caller must not change it
 * afterwards. It may be a view into a larger buffer; a store that keeps it in
 * memory for long should keep an exact-size copy instead (see the memory store).
 */
export type PendingWrite =
  | { kind: 'notice' }
  | { kind: 'category'; mask: bigint }
  | { kind: 'message'; content: Buffer };

/** What a write did. */
export interface WriteResult {
  kind: PushKind;
  /** Version now pending for this kind (per device, increasing, 1..2^32-1, wraps). */
  version: number;
  /**
   * Version of an unacked message this write pushed out: the previous latest
   * (latest-only retention) or the oldest of a full queue. 0 when none.
   */
  replaced: number;
  /** Category writes: the whole mask now pending (what the device is sent). */
  mask?: bigint;
  /**
   * This push is now what the device should be sent. Always true for notice,
   * category and latest-only messages; in queue mode only when the queue was
   * empty (queued messages go one at a time, each after the previous ack).
   */
  head: boolean;
  /**
   * The node the device's route names, read in the same atomic operation as
   * the write. Set only by stores that share the cluster router's keys (the
   * Redis store with `readRoutes`): `null` = no route stored (no node holds
   * the device); `undefined` = the store does not know, and the dispatcher
   * asks `PushCluster.locate` instead. Saves a cross-node push its route lookup.
   */
  route?: string | null;
}

/** Everything pending for one device. Versions are 0 when nothing of that kind is pending. */
export interface PendingState {
  notice: number;
  category: bigint;
  categoryVersion: number;
  /** The head message's content: the store's own bytes, possibly a view of a larger buffer it holds; read it, do not change it, copy it to keep it. */
  message: Buffer | null;
  messageVersion: number;
}

/**
 * How `writeThen` reports: `err` set when nothing was stored, else the result.
 * Called exactly once, possibly before `writeThen` returns.
 */
export type WriteCallback = (err: Error | null, result: WriteResult | null) => void;

/** How `ackThen` reports: `err` set when the ack could not be applied, else the result. Called exactly once. */
export type AckCallback = (err: Error | null, result: AckResult | null) => void;

/** Result of acking a notice or a message. */
export interface AckResult {
  /** The acked version was the pending one and is gone. */
  cleared: boolean;
  /** Something of this kind is still pending (a newer version, or the next queued message). */
  remaining: boolean;
}

/** A pending message the store dropped on its own. */
export interface StoreDrop {
  uuid: string;
  kind: PushKind;
  version: number;
  /** `replaced`: pushed out of a full queue; `expired`: its queue TTL passed. */
  reason: 'replaced' | 'expired';
}

/** Store limits and occupancy, for `stats()` and metrics. */
export interface OfflineStoreStats {
  devices: number;
  bytes: number;
  maxDevices: number;
  maxBytes: number;
}

/** Thrown by `write` when the store is at a configured limit; the push is refused, nothing is stored. */
export class OfflineStoreFullError extends Error {
  constructor(readonly limit: 'maxDevices' | 'maxBytes', value: number) {
    super(`Offline store is full (${limit}=${value}); raise the store's ${limit} option or let devices drain their pending messages`);
    this.name = 'OfflineStoreFullError';
  }
}

/**
 * Where pending pushes live until their device acks them. This is a DI token:
 * provide another implementation with `{ provide: OfflineStore, useClass: ... }`.
 *
 * Contract, shared by every implementation (memory, LMDB, Redis):
 * - each operation is atomic per device: a write and an ack racing for the
 *   same device never lose an update;
 * - `write` resolves only once the push is as durable as the store promises
 *   (the pusher port's 0x00 reply and `PushService` acceptance wait for it);
 * - notice: a flag with a version; category: a 64-bit mask OR-ed in; message:
 *   latest-only (each write replacing the pending one and reporting it in
 *   `replaced`), or a bounded queue where `read` shows the head and an ack of
 *   the head answers `remaining: true` while more wait;
 * - acks clear by version (notice, message) or by bits (category), so an ack
 *   for an older transmission never clears a newer push.
 */
export abstract class OfflineStore {
  /** Implementations report drops made outside a `write`'s own `replaced` (queue TTL expiry, ...). */
  protected readonly drops$ = new Subject<StoreDrop>();

  /** Messages dropped by the store itself; the dispatcher turns them into outcomes. */
  get drops(): Observable<StoreDrop> {
    return this.drops$.asObservable();
  }

  /** Opens files/connections. Called once before use. */
  async open(): Promise<void> {}
  /** Flushes in-flight writes and releases resources. */
  async close(): Promise<void> {}

  abstract write(uuid: string, push: PendingWrite): Promise<WriteResult>;

  /**
   * `write` for the push hot path: the same contract, reported through a
   * callback instead of a promise. Every accepted push goes through here, and
   * a store that settles many writes at once (a group commit) can wake all
   * their callbacks in one loop instead of allocating and resolving a promise
   * chain per push. Override it when the store can do better than this
   * default, which adapts `write`.
   */
  writeThen(uuid: string, push: PendingWrite, done: WriteCallback): void {
    this.write(uuid, push).then(
      (r) => done(null, r),
      (err: unknown) => done(asError(err), null),
    );
  }
  /**
   * `ackNotice` / `ackMessage` for the ack hot path (one per delivered push),
   * reported through a callback like `writeThen`. Override it when the store
   * can answer without a promise; this default adapts the promise methods.
   */
  ackThen(uuid: string, kind: 'notice' | 'message', version: number, done: AckCallback): void {
    (kind === 'notice' ? this.ackNotice(uuid, version) : this.ackMessage(uuid, version)).then(
      (r) => done(null, r),
      (err: unknown) => done(asError(err), null),
    );
  }

  /**
   * `writeThen` answered at once, for a store that never waits (the memory
   * store): the result, or `undefined` when the caller must use `writeThen`
   * (the default). Throws, storing nothing, where `writeThen` would report
   * an error. The engine tries this first: a push then costs no callback and
   * no closure holding its state until the store answers.
   */
  writeNow(_uuid: string, _push: PendingWrite): WriteResult | undefined {
    return undefined;
  }

  /** `ackThen` answered at once, like `writeNow`: the result, or `undefined` (the default) to use `ackThen`. */
  ackNow(_uuid: string, _kind: 'notice' | 'message', _version: number): AckResult | undefined {
    return undefined;
  }

  /** Pending state, or null when nothing is pending for the device. */
  abstract read(uuid: string): Promise<PendingState | null>;
  abstract ackNotice(uuid: string, version: number): Promise<AckResult>;
  /** Clears exactly the acked bits; resolves to the mask still pending. */
  abstract ackCategory(uuid: string, mask: bigint): Promise<bigint>;
  abstract ackMessage(uuid: string, version: number): Promise<AckResult>;
  /** Drops everything pending for a device. */
  abstract remove(uuid: string): Promise<void>;
  abstract stats(): OfflineStoreStats;
}

/** Callback errors are Errors, whatever a store implementation threw. */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** The operations a built-in store implements in both forms: each callback form with its promise forms. */
type DualForm = 'write' | 'writeThen' | 'ackNotice' | 'ackMessage' | 'ackThen';

/** The promise form of `ackThen` for each kind. @internal */
export const ACK_PROMISE_FORM = { notice: 'ackNotice', message: 'ackMessage' } as const;

/**
 * For a built-in store that implements an operation in both forms (`write`
 * and `writeThen`; `ackNotice`/`ackMessage` and `ackThen`): true when a
 * subclass of `own` replaced `replaced` but not `kept`. Why: whichever form
 * a subclass overrides, every caller must reach it. Pushes and device acks
 * use the callback forms, direct callers the promise forms; a subclass that
 * audits writes by overriding `write` (the documented abstract method) would
 * otherwise never see a push. So `kept`, running as itself, hands the call to
 * `replaced`; running as `super.kept` (both replaced), it does the work.
 * @internal
 */
export function onlyReplaced(store: OfflineStore, own: { prototype: OfflineStore }, replaced: DualForm, kept: DualForm): boolean {
  return store[replaced] !== own.prototype[replaced] && store[kept] === own.prototype[kept];
}
