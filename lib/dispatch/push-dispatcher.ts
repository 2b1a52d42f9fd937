import { Subject, Subscription, type Observable } from 'rxjs';
import type { DeviceEngine, PushDispatch } from '../device/device-engine.js';
import type { DeviceAckEvent, DeviceEvent, DeviceSentEvent } from '../device/device-event.interface.js';
import { PayloadTooLargeError } from '../errors/payload-too-large.error.js';
import { PushFailedError } from '../errors/push-failed.error.js';
import type { DeviceTransportKind, PushKind } from '../interfaces/push-kind.interface.js';
import type { PushOutcome, PushStatus } from '../interfaces/push-outcome.interface.js';
import type { PushSource, PushSubmitter, SubmitCallback } from '../interfaces/push-submitter.interface.js';
import { InvalidUuidError } from '../protocol/uuid.util.js';
import { asError, type OfflineStore, OfflineStoreFullError, type PendingWrite, type StoreDrop, type WriteResult } from '../store/offline-store.js';
import type { PushCluster } from '../cluster/push-cluster.js';
import { type Deadline, DeadlineQueue } from './deadline-queue.js';
import { PermitPool, PermitQueueFullError } from './permit-pool.js';
import { addFillers, FILLER_KEYS } from '../util/map-fillers.util.js';

/** Limits of the dispatcher. */
export interface PushDispatcherOptions {
  /** Default ack timeout in ms. Default 3000 (mpush). */
  timeoutMs?: number;
  /**
   * Pushes awaiting their outcome at most (one per target device). Beyond it,
   * new pushes wait for a slot before anything is stored (backpressure: a
   * `send()` subscription slows down, a pusher connection stops being read).
   * Default 100,000.
   */
  maxInFlight?: number;
  /** Pushes waiting for a slot at most; beyond it they fail with reason `overloaded`. Default 10,000. */
  maxQueued?: number;
}

export interface DispatchOptions {
  timeoutMs?: number;
  ack?: 'device' | 'none';
  source: PushSource;
  /** The caller already holds an in-flight slot from `acquireSlot()`. */
  slotHeld?: boolean;
}

interface Waiter extends Deadline {
  uuid: string;
  kind: PushKind;
  version: number;
  mask: bigint;
  ackMode: 'device' | 'none';
  source: PushSource;
  accepted: number;
  sent: number | undefined;
  transport: DeviceTransportKind | undefined;
  /** Another node transmits it (cluster gateway). */
  node: string;
  remote: boolean;
  resolve: OutcomeCallback | undefined;
  /**
   * The device's waiters form a list, oldest first, whose head is in
   * `waiters`: `next` is the following waiter; `prev` the preceding one, or
   * for the head the tail (so appending is O(1)). Null once settled.
   */
  prev: Waiter | null;
  next: Waiter | null;
  /** Order of creation (over all devices): a walk of a list skips waiters created after it began. */
  seq: number;
}

/** How `dispatchThen` reports acceptance: the dispatch once stored, or why it was not. */
export type AcceptCallback = (err: Error | null, d: PushDispatch | null) => void;
/** How `dispatchThen` reports the outcome. */
export type OutcomeCallback = (o: PushOutcome) => void;

const SUBMIT_OPTIONS: Record<PushSource, DispatchOptions> = { pusher: Object.freeze({ source: 'pusher' }), service: Object.freeze({ source: 'service' }) };

/**
 * The one acceptance path for pushes (`PushService.send()` and the pusher port
 * alike): takes an in-flight slot, stores the push through the engine (which
 * sends it at once when the device is reachable), then follows it to its
 * outcome from the engine's sent/ack events, a replacing push, or its
 * deadline. Every outcome is also published on `outcomes`.
 */
export class PushDispatcher implements PushSubmitter {
  readonly timeoutMs: number;
  private readonly permits: PermitPool;
  /**
   * Per device, the head of its list of waiting pushes (see `Waiter.prev`).
   * Links in the waiters rather than an array per device: a push to an
   * online device then costs no array, and settling one is O(1). Bounded by
   * the in-flight slots (`maxInFlight`): every waiter holds one. Behind
   * `FILLER_KEYS` fillers holding `null` (see `addFillers`).
   */
  private readonly waiters = new Map<string, Waiter | null>();
  private readonly deadlines = new DeadlineQueue<Waiter>((w) => this.expire(w));
  /** `seq` of the last waiter created. */
  private lastSeq = 0;
  /** Version and device of the message being sent for the first time by `stored` (0: none); see `onSent`. */
  private ownMessage = 0;
  private ownKey = '';
  private readonly outcomes$ = new Subject<PushOutcome>();
  private sub: Subscription | undefined;
  readonly counters: Record<PushStatus, number> = { success: 0, offline: 0, timeout: 0, failure: 0, replaced: 0 };

  constructor(
    readonly engine: DeviceEngine,
    store: OfflineStore,
    options: PushDispatcherOptions = {},
    private readonly cluster?: PushCluster | null,
  ) {
    this.timeoutMs = options.timeoutMs ?? 3000;
    this.permits = new PermitPool(options.maxInFlight ?? 100_000, options.maxQueued ?? 10_000);
    addFillers(this.waiters, null);
    const unlisten = engine.listen((e) => this.onEvent(e));
    this.sub = new Subscription(unlisten);
    this.sub.add(store.drops.subscribe((d) => this.onStoreDrop(d)));
    // Peers forward the sent/ack events of pushes we delivered through them.
    if (cluster) this.sub.add(cluster.events.subscribe((e) => this.onEvent(e)));
  }

  /** Every outcome, of every push from every source. */
  get outcomes(): Observable<PushOutcome> {
    return this.outcomes$.asObservable();
  }

  get inFlight(): number {
    return this.permits.inUse;
  }

  get queued(): number {
    return this.permits.queued;
  }

  /** Devices with at least one push waiting for its outcome. */
  get waitingDevices(): number {
    return this.waiters.size - FILLER_KEYS;
  }

  /**
   * Accepts one push for one device and resolves with its outcome (never
   * rejects). `onAccepted` runs once the store holds the push.
   */
  dispatch(uuid: string, write: PendingWrite, options: DispatchOptions, onAccepted?: (d: PushDispatch) => void): Promise<PushOutcome> {
    const accepted: AcceptCallback | undefined = onAccepted && ((err, d) => d && onAccepted(d));
    return new Promise((resolve) => this.dispatchThen(uuid, write, options, accepted, resolve));
  }

  /**
   * `dispatch` for the hot path, with callbacks instead of promises (each may
   * run before this returns): `onAccepted` exactly once, with the dispatch
   * once the store holds the push or with the error when it was not stored;
   * `onOutcome` exactly once, with the outcome (also published on `outcomes`).
   */
  dispatchThen(uuid: string, write: PendingWrite, options: DispatchOptions, onAccepted: AcceptCallback | undefined, onOutcome: OutcomeCallback | undefined): void {
    // A free slot is taken synchronously: nothing is deferred on the common path.
    if (options.slotHeld || this.permits.tryAcquire()) {
      this.store(uuid, write, options, onAccepted, onOutcome);
      return;
    }
    this.permits.acquire().then(
      () => this.store(uuid, write, options, onAccepted, onOutcome),
      (err: unknown) => this.refuse(uuid, write.kind, options.source, err, onAccepted, onOutcome),
    );
  }

  private store(uuid: string, write: PendingWrite, options: DispatchOptions, onAccepted: AcceptCallback | undefined, onOutcome: OutcomeCallback | undefined): void {
    const engine = this.engine;
    let key: string;
    let t0 = 0;
    let now: WriteResult | undefined;
    try {
      key = engine.preparePush(uuid, write);
      if (engine.storeWriteObserver) t0 = performance.now();
      // A store that answers at once (memory) costs no callback; otherwise the
      // engine's steps go on in the one callback below: a push waiting for its
      // commit keeps a single closure alive.
      now = engine.writePushNow(key, write);
    } catch (err) {
      this.notStored(uuid, write, options, asError(err), onAccepted, onOutcome);
      return;
    }
    if (now !== undefined) return this.stored(key, write, options, onAccepted, onOutcome, t0, now);
    engine.writePush(key, write, (err, r) =>
      err ? this.notStored(uuid, write, options, err, onAccepted, onOutcome) : this.stored(key, write, options, onAccepted, onOutcome, t0, r!),
    );
  }

  private notStored(uuid: string, write: PendingWrite, options: DispatchOptions, err: Error, onAccepted: AcceptCallback | undefined, onOutcome: OutcomeCallback | undefined): void {
    this.permits.release();
    this.refuse(uuid, write.kind, options.source, err, onAccepted, onOutcome);
  }

  /** The store holds the push: the engine sends it if it can, then the push is followed to its outcome. */
  private stored(
    key: string,
    write: PendingWrite,
    options: DispatchOptions,
    onAccepted: AcceptCallback | undefined,
    onOutcome: OutcomeCallback | undefined,
    t0: number,
    r: WriteResult,
  ): void {
    // The message's own first send (inside pushStored) can match no waiter: its own is made below.
    this.ownMessage = write.kind === 'message' ? r.version : 0;
    this.ownKey = key;
    let d: PushDispatch;
    try {
      d = this.engine.pushStored(key, write, r, t0);
    } finally {
      this.ownMessage = 0;
    }
    const now = Date.now();
    onAccepted?.(null, d);
    if (d.replaced) this.settleVersion(d.uuid, 'message', d.replaced, 'replaced', now);
    if (d.reachable || !this.cluster) {
      this.follow(d, write, options, now, this.engine.nodeId, false, onOutcome);
      return;
    }
    // Not held here: if a live peer holds it, that peer transmits it now.
    const route = d.route;
    // The store read the route with the write: no route, or ours, is offline here without another look.
    if (route === null || route === this.engine.nodeId) {
      this.follow(d, write, options, now, this.engine.nodeId, false, onOutcome);
      return;
    }
    const cluster = this.cluster;
    (route === undefined ? cluster.locate(d.uuid) : cluster.locateKnown(d.uuid, route)).then(
      (holder) => {
        if (holder) cluster.deliver(holder, { uuid: d.uuid, kind: write.kind, version: d.version, origin: this.engine.nodeId });
        this.follow(d, write, options, now, holder ?? this.engine.nodeId, !!holder, onOutcome);
      },
      () => this.follow(d, write, options, now, this.engine.nodeId, false, onOutcome),
    );
  }

  /** Not stored: a `failure` outcome, and the acceptance callback hears why. */
  private refuse(uuid: string, kind: PushKind, source: PushSource, err: unknown, onAccepted: AcceptCallback | undefined, onOutcome: OutcomeCallback | undefined): void {
    const o = this.publish(failure(uuid, kind, source, err));
    onAccepted?.(new PushFailedError(o.uuid, o.reason ?? 'unknown'), null);
    onOutcome?.(o);
  }

  /** Stored: settles at once (offline, or sent without ack tracking) or waits for the device's ack. */
  private follow(d: PushDispatch, write: PendingWrite, options: DispatchOptions, now: number, node: string, remote: boolean, onOutcome: OutcomeCallback | undefined): void {
    const ackMode = options.ack ?? 'device';
    if ((!d.reachable && !remote) || (d.sentVia && ackMode === 'none')) {
      this.permits.release();
      const sent = d.reachable && !remote;
      // Outcome objects are built only for someone: most pusher-port pushes have no listener.
      if (!onOutcome && !this.outcomes$.observed) {
        this.counters[sent ? 'success' : 'offline']++;
        return;
      }
      const o: PushOutcome = {
        uuid: d.uuid,
        status: sent ? 'success' : 'offline',
        kind: write.kind,
        version: d.version,
        source: options.source,
        node,
        timeline: sent ? { accepted: now, sent: now } : { accepted: now },
      };
      if (sent) o.transport = d.sentVia!;
      this.publish(o);
      onOutcome?.(o);
      return;
    }
    const w: Waiter = {
      uuid: d.uuid,
      kind: write.kind,
      version: d.version,
      mask: write.kind === 'category' ? write.mask : 0n,
      ackMode,
      source: options.source,
      accepted: now,
      sent: d.sentVia ? now : undefined,
      transport: d.sentVia ?? undefined,
      node,
      remote,
      deadline: now + (options.timeoutMs ?? this.timeoutMs),
      settled: false,
      slot: -1,
      resolve: onOutcome,
      prev: null,
      next: null,
      seq: ++this.lastSeq,
    };
    const head = this.waiters.get(d.uuid);
    if (head) {
      const tail = head.prev!;
      tail.next = w;
      w.prev = tail;
      head.prev = w;
    } else {
      w.prev = w;
      this.waiters.set(d.uuid, w);
    }
    this.deadlines.add(w);
  }

  /** Takes a waiter out of its device's list. */
  private unlink(w: Waiter): void {
    const prev = w.prev;
    if (!prev) return;
    const next = w.next;
    if (prev.next !== w) {
      // `w` is the head (its `prev` is the tail, whose `next` is null).
      if (next) {
        next.prev = prev;
        this.waiters.set(w.uuid, next);
      } else this.waiters.delete(w.uuid);
    } else {
      prev.next = next;
      if (next) next.prev = prev;
      else this.waiters.get(w.uuid)!.prev = prev;
    }
    w.prev = null;
    w.next = null;
  }

  /**
   * Calls `fn` on each push of a device that was waiting when the walk began,
   * oldest first. `fn` may settle it, and outcome callbacks run inside may
   * push to or settle other waiters of the device: a push made meanwhile is
   * not visited (the event being handled is not about it), and if the next
   * waiter is settled meanwhile the walk starts over from the head (waiters
   * already seen did not match, and are seen again at no harm).
   */
  private eachWaiter(uuid: string, fn: (w: Waiter) => void): void {
    const limit = this.lastSeq;
    let w = this.waiters.get(uuid);
    while (w && w.seq <= limit) {
      const next = w.next;
      fn(w);
      w = next && next.settled ? this.waiters.get(uuid) : (next ?? undefined);
    }
  }

  /**
   * Waits for an in-flight slot (backpressure), for callers that feed many
   * targets and must not queue them all. Rejects with `PermitQueueFullError`
   * when too many callers already wait. Pass `slotHeld: true` to `dispatch`.
   */
  acquireSlot(): Promise<void> {
    return this.permits.acquire();
  }

  /** Returns a slot taken with `acquireSlot` that will not be dispatched. */
  releaseSlot(): void {
    this.permits.release();
  }

  /** Publishes a failure for a push refused before reaching the store (bad payload, bad uuid). */
  reject(uuid: string, kind: PushKind, source: PushSource, reason: string): PushOutcome {
    return this.publish({ uuid, status: 'failure', kind, reason, source, timeline: {} });
  }

  /** `PushSubmitter` for the pusher port: calls back once stored (or with why not); the outcome is published. */
  submit(uuid: string, write: PendingWrite, source: PushSource, done: SubmitCallback): void {
    this.dispatchThen(uuid, write, SUBMIT_OPTIONS[source], done, undefined);
  }

  /** Settles every waiting push as `timeout` and stops listening. */
  close(): void {
    this.sub?.unsubscribe();
    this.sub = undefined;
    const now = Date.now();
    for (const uuid of [...this.waiters.keys()]) {
      for (let w = this.waiters.get(uuid); w; w = this.waiters.get(uuid)) this.settle(w, w.sent ? 'timeout' : 'offline', now);
    }
    this.deadlines.clear();
    this.outcomes$.complete();
  }

  private onEvent(e: DeviceEvent): void {
    if (e.type === 'sent') this.onSent(e);
    else if (e.type === 'ack') this.onAck(e);
  }

  private onSent(e: DeviceSentEvent): void {
    // A message frame carries one version, and this one's waiter does not exist yet: no lookup.
    if (e.version === this.ownMessage && e.kind === 'message' && e.uuid === this.ownKey) return;
    const head = this.waiters.get(e.uuid);
    if (!head) return;
    // One notice or category frame carries every earlier push of its kind
    // (the flag, the OR-ed mask); a message frame carries one version.
    if (head.next === null) return this.sentOne(head, e);
    this.eachWaiter(e.uuid, (w) => this.sentOne(w, e));
  }

  private sentOne(w: Waiter, e: DeviceSentEvent): void {
    if (w.kind !== e.kind || (w.kind === 'message' && w.version !== e.version)) return;
    if (w.sent === undefined) {
      w.sent = e.at;
      w.transport = e.transport;
    }
    if (w.ackMode === 'none') this.settle(w, 'success', e.at);
  }

  private onAck(e: DeviceAckEvent): void {
    const head = this.waiters.get(e.uuid);
    if (!head) return;
    // The common case, one push waiting, without the walk's closure.
    if (head.next === null) return this.ackOne(head, e);
    this.eachWaiter(e.uuid, (w) => this.ackOne(w, e));
  }

  private ackOne(w: Waiter, e: DeviceAckEvent): void {
    const acked =
      w.kind === e.kind &&
      (w.kind !== 'message' || w.version === e.version) &&
      (w.kind !== 'category' || ((e.remaining ?? 0n) & w.mask) === 0n);
    if (acked) this.settle(w, 'success', e.at, e.at);
  }

  /**
   * A message the store dropped by itself. If its push is still waiting, that
   * is its outcome; if the push already settled (e.g. `offline`), a second
   * outcome tells outcome handlers the message will never be delivered.
   */
  private onStoreDrop(d: StoreDrop): void {
    const status: PushStatus = d.reason === 'replaced' ? 'replaced' : 'failure';
    const now = Date.now();
    let w = this.waiters.get(d.uuid);
    while (w && !(w.kind === d.kind && w.version === d.version)) w = w.next ?? undefined;
    if (w) {
      this.settle(w, status, now, undefined, d.reason === 'expired' ? 'expired' : undefined);
      return;
    }
    this.publish({
      uuid: d.uuid,
      status,
      kind: d.kind,
      version: d.version,
      source: 'service',
      node: this.engine.nodeId,
      timeline: {},
      ...(d.reason === 'expired' ? { reason: 'expired' } : {}),
    });
  }

  private settleVersion(uuid: string, kind: PushKind, version: number, status: PushStatus, now: number): void {
    this.eachWaiter(uuid, (w) => {
      if (w.kind === kind && w.version === version) this.settle(w, status, now);
    });
  }

  private expire(w: Waiter): void {
    // Sent but unacked is a timeout (still pending); never sent (reply budget
    // spent, or the link dropped) means it waits for the next heartbeat. A
    // peer that never answered (it may have died mid-push) is a timeout too:
    // the push is in the shared store for the device's next heartbeat anywhere.
    if (w.remote && w.sent === undefined) this.settle(w, 'timeout', Date.now(), undefined, 'node-unresponsive');
    else this.settle(w, w.sent !== undefined ? 'timeout' : 'offline', Date.now());
  }

  private settle(w: Waiter, status: PushStatus, now: number, acked?: number, reason?: string): void {
    if (w.settled) return;
    w.settled = true;
    this.deadlines.remove(w);
    this.unlink(w);
    this.permits.release();
    if (!w.resolve && !this.outcomes$.observed) {
      this.counters[status]++;
      return;
    }
    const outcome: PushOutcome = {
      uuid: w.uuid,
      status,
      kind: w.kind,
      version: w.version,
      source: w.source,
      node: w.node,
      timeline: { accepted: w.accepted },
    };
    if (reason) outcome.reason = reason;
    else if (status === 'offline' && w.sent === undefined) outcome.reason = 'not-sent';
    if (w.transport) outcome.transport = w.transport;
    if (w.sent !== undefined) outcome.timeline.sent = w.sent;
    if (acked !== undefined) outcome.timeline.acked = acked;
    this.publish(outcome);
    w.resolve?.(outcome);
  }

  private publish(o: PushOutcome): PushOutcome {
    this.counters[o.status]++;
    this.outcomes$.next(o);
    return o;
  }
}

/** Maps why a push was not accepted to the outcome's `reason`. */
export function failureReason(err: unknown): string {
  if (err instanceof PayloadTooLargeError) return 'payload-too-large';
  if (err instanceof OfflineStoreFullError) return 'store-full';
  if (err instanceof PermitQueueFullError) return 'overloaded';
  if (err instanceof InvalidUuidError) return 'invalid-uuid';
  // The engine's own checks (empty message, zero mask) throw RangeError.
  if (err instanceof RangeError) return 'invalid-payload';
  return 'store-error';
}

function failure(uuid: string, kind: PushKind, source: PushSource, err: unknown): PushOutcome {
  return { uuid, status: 'failure', kind, reason: failureReason(err), source, timeline: {} };
}
