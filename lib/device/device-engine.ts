import { Subject, type Observable } from 'rxjs';
import { PayloadTooLargeError } from '../errors/payload-too-large.error.js';
import type { DeviceTransportKind, PushKind } from '../interfaces/push-kind.interface.js';
import type { PushSource, PushSubmitter, SubmitCallback } from '../interfaces/push-submitter.interface.js';
import { type ClientFrame } from '../protocol/client-frame.codec.js';
import { ClientCmd, type ClientFrameError } from '../protocol/protocol.constants.js';
import { encodeCategory, encodeHeartbeatEcho, encodeMessage, encodeNotice } from '../protocol/server-frame.codec.js';
import { HEX_VALUE, normalizeUuid, uuidToHex } from '../protocol/uuid.util.js';
import type { DeviceRoute, LocalRouteSource, PushRouter } from '../router/push-router.js';
import { type AckResult, asError, type OfflineStore, type PendingState, type PendingWrite, type WriteResult } from '../store/offline-store.js';
import type { DeviceDropReason, DeviceEvent, OfflineReason } from './device-event.interface.js';
import { type DeviceEngineOptions, type ResolvedDeviceEngineOptions, resolveDeviceEngineOptions } from './device-engine.options.js';
import { DeviceFlag, DeviceTable, PENDING_ANY } from './device-table.js';
import { Ipv4TextCache, parseIpv4 } from './ipv4.util.js';

/** A device's TCP connection as the engine sees it (the transport implements it). */
export interface DeviceLink {
  readonly address: string;
  readonly port: number;
  /** Record bound to this link by its heartbeat; -1 until then. Managed by the engine. */
  deviceId: number;
  /** Queues a frame. False when the link is over its write limit and is being closed. */
  send(frame: Buffer): boolean;
  close(): void;
}

/** Sends UDP datagrams for the engine (the transport's bound socket). */
export interface UdpSink {
  send(frame: Buffer, port: number, address: string): void;
}

/** What `push` did. */
export interface PushDispatch extends WriteResult {
  /** The device uuid, normalised (lowercase hex). */
  uuid: string;
  /** Transport the frame went out on at once, or null (device offline, or its UDP reply budget spent). */
  sentVia: DeviceTransportKind | null;
  /** The device is registered here and reachable. */
  reachable: boolean;
}

/** How `pushThen` reports: `err` set when nothing was stored. */
export type PushCallback = (err: Error | null, d: PushDispatch | null) => void;

/** A device's state as the DDPush console would show it. */
export interface DeviceInspection {
  uuid: string;
  node: string;
  online: boolean;
  reachable: boolean;
  transport: DeviceTransportKind | null;
  address: string | null;
  port: number | null;
  appId: number;
  lastSeen: number;
  pending: PendingState | null;
}

/** Engine counters (monotonic). */
export interface DeviceEngineCounters {
  heartbeats: number;
  acks: number;
  resets: number;
  pushes: number;
  sends: number;
  resends: number;
  echoes: number;
  online: number;
  offline: number;
  expired: number;
  drops: Record<DeviceDropReason | ClientFrameError, number>;
}

const KIND_FLAG: Record<PushKind, number> = {
  notice: DeviceFlag.PendingNotice,
  category: DeviceFlag.PendingCategory,
  message: DeviceFlag.PendingMessage,
};

/**
 * The per-device state machine of protocol.md section 6, free of Nest and of
 * sockets: transports feed it decoded frames and give it a way to send; it
 * keeps device records in a compact `DeviceTable`, pending pushes in an
 * `OfflineStore`, and tells a `PushRouter` when routes change.
 *
 * At-least-once acks. A v1 ack names no version, so per device and kind
 * (notice, message) the engine counts transmissions since the last ack:
 * `txVersion` (latest version sent), `txCount` (its sends), `txOlder` (sends of
 * earlier versions still unanswered). An ack first pays off an older send, and
 * only clears the pending version when no older send is outstanding, so the
 * race "send A, push B, send B, ack" leaves B pending (it is re-sent) instead
 * of losing it. A device may see a message twice; it never silently loses the
 * newest one.
 */
export class DeviceEngine implements LocalRouteSource, PushSubmitter {
  readonly options: ResolvedDeviceEngineOptions;
  readonly table: DeviceTable;
  readonly counters: DeviceEngineCounters;
  private readonly events$ = new Subject<DeviceEvent>();
  private readonly listeners: ((e: DeviceEvent) => void)[] = [];
  private readonly links = new Map<number, DeviceLink>();
  /** IPv6 (and IPv4-mapped) addresses, for the few records that have one. */
  private readonly ipv6 = new Map<number, string>();
  /**
   * Records whose store read was asked for again while one was in flight,
   * with the kinds (`KIND_FLAG` bits) sent meanwhile. Holds only records
   * with a read in flight.
   */
  private readonly reload = new Map<number, number>();
  private udp: UdpSink | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweepCursor = 0;
  private readonly keyScratch = Buffer.allocUnsafe(16);
  private readonly ipv4Text = new Ipv4TextCache();
  /**
   * Called with the latency of every store write behind a push, in seconds
   * (the metrics module's store commit histogram). Unset: not measured.
   */
  storeWriteObserver: ((seconds: number) => void) | undefined;

  constructor(
    private readonly store: OfflineStore,
    private readonly router: PushRouter,
    options: DeviceEngineOptions = {},
  ) {
    this.options = resolveDeviceEngineOptions(options);
    this.table = new DeviceTable(this.options.maxDevices);
    this.counters = {
      heartbeats: 0,
      acks: 0,
      resets: 0,
      pushes: 0,
      sends: 0,
      resends: 0,
      echoes: 0,
      online: 0,
      offline: 0,
      expired: 0,
      drops: {
        'unknown-device': 0,
        'ack-foreign-address': 0,
        'ack-unmatched': 0,
        'admission-refused': 0,
        'device-limit': 0,
        'reply-budget': 0,
        'tcp-backpressure': 0,
        'tcp-connection-limit': 0,
        'store-error': 0,
        'too-short': 0,
        'bad-version': 0,
        'unknown-cmd': 0,
        'bad-data-length': 0,
        'bad-length': 0,
      },
    };
    router.attach(this);
  }

  /** Online, offline, ack and sent events. Hot: subscribe before devices connect. */
  get events(): Observable<DeviceEvent> {
    return this.events$.asObservable();
  }

  /**
   * Registers an in-process listener called synchronously with every event,
   * before `events` subscribers: the dispatcher, the transports and the
   * cluster follow every push this way, without an rxjs subscriber chain per
   * event. Returns the function that removes it.
   */
  listen(listener: (e: DeviceEvent) => void): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  private emit(e: DeviceEvent): void {
    const l = this.listeners;
    for (let i = 0; i < l.length; i++) {
      // A throwing listener must not stop the engine mid-frame, nor the other listeners.
      try {
        l[i]!(e);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
    if (this.events$.observed) this.events$.next(e);
  }

  get nodeId(): string {
    return this.options.nodeId;
  }

  /** Starts the periodic expiry/reachability sweep. */
  start(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => this.sweep(Date.now()), this.options.sweepIntervalMs);
    this.sweepTimer.unref();
  }

  stop(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
  }

  /** Stops timers and completes the event stream. */
  close(): void {
    this.stop();
    this.listeners.length = 0;
    this.events$.complete();
  }

  attachUdp(sink: UdpSink | undefined): void {
    this.udp = sink;
  }

  countDrop(reason: DeviceDropReason | ClientFrameError): void {
    this.counters.drops[reason]++;
  }

  // ---------------------------------------------------------------- frames in

  /** A well-formed frame from a UDP datagram. `frame` is only read during the call. */
  handleUdp(frame: ClientFrame, address: string, port: number): void {
    const t = this.table;
    let id = t.find(frame.source, frame.uuidOffset);
    if (frame.cmd !== ClientCmd.Heartbeat) {
      if (id < 0) return this.countDrop('unknown-device');
      // A v1 ack carries no secret: accepting it from anywhere would let a
      // spoofed datagram clear a device's pending message. Only the address
      // of the device's last heartbeat may ack; a device whose NAT mapping
      // moved re-acks after its next heartbeat's re-send.
      if (this.links.has(id) || !this.isUdpAddress(id, address, port)) return this.countDrop('ack-foreign-address');
      this.recharge(id, frame.byteLength);
      return this.handleAck(id, frame);
    }
    this.counters.heartbeats++;
    const now = Date.now();
    let isNew = false;
    if (id < 0) {
      if (!this.admit(frame, 'udp', address, port)) return;
      id = t.insert(frame.source, frame.uuidOffset, now);
      if (id < 0) return this.countDrop('device-limit');
      isNew = true;
    }
    const wasOnline = this.checkStillOnline(id, now);
    const changed = this.setUdpAddress(id, address, port);
    // Credit earned at one address must not pay for replies to another.
    if (changed) t.credit[id] = 0;
    this.recharge(id, frame.byteLength);
    t.lastSeen[id] = now;
    t.appId[id] = frame.appId;
    this.afterHeartbeat(id, now, wasOnline, changed && !isNew, 'udp');
  }

  /** A well-formed frame from a device's TCP connection. */
  handleTcp(frame: ClientFrame, link: DeviceLink): void {
    const t = this.table;
    let id = t.find(frame.source, frame.uuidOffset);
    if (frame.cmd !== ClientCmd.Heartbeat) {
      if (id < 0) return this.countDrop('unknown-device');
      if (this.links.get(id) !== link) return this.countDrop('ack-foreign-address');
      return this.handleAck(id, frame);
    }
    this.counters.heartbeats++;
    const now = Date.now();
    if (id < 0) {
      // A refused TCP device must not keep its connection slot by heartbeating on.
      if (!this.admit(frame, 'tcp', link.address, link.port)) return link.close();
      id = t.insert(frame.source, frame.uuidOffset, now);
      if (id < 0) {
        this.countDrop('device-limit');
        return link.close();
      }
    }
    let wasOnline = this.checkStillOnline(id, now);
    const previous = this.links.get(id);
    if (previous !== link) {
      // One device per link and one link per device: a reconnect replaces the
      // old socket (almost always dead already), and a link that switches uuid
      // releases the device it held.
      if (link.deviceId >= 0 && link.deviceId !== id) this.unbindLink(link, 'tcp-closed');
      if (previous) {
        previous.deviceId = -1;
        previous.close();
      }
      this.links.set(id, link);
      link.deviceId = id;
      // A TCP (re)connect is a new session for the app: announce it.
      if (wasOnline) this.markOffline(id, 'tcp-closed', now);
      wasOnline = false;
    }
    // lastSeen now dates a TCP heartbeat: the UDP address (if any) is only as
    // fresh as a UDP heartbeat after this one, so it must not look reachable
    // once the link closes (protocol.md 6.1: "its last UDP heartbeat is recent").
    t.flags[id]! &= ~DeviceFlag.HasUdp;
    t.lastSeen[id] = now;
    t.appId[id] = frame.appId;
    this.afterHeartbeat(id, now, wasOnline, false, 'tcp');
  }

  /** The transport closed a device's TCP connection. */
  tcpClosed(link: DeviceLink): void {
    if (link.deviceId >= 0) this.unbindLink(link, 'tcp-closed');
  }

  private unbindLink(link: DeviceLink, reason: OfflineReason): void {
    const id = link.deviceId;
    link.deviceId = -1;
    if (this.links.get(id) !== link) return;
    this.links.delete(id);
    const now = Date.now();
    if (this.udpReachable(id, now)) this.router.update(this.table.uuidHex(id), this.routeOf(id, now));
    else if (this.table.flags[id]! & DeviceFlag.Online) this.markOffline(id, reason, now);
  }

  private admit(frame: ClientFrame, transport: DeviceTransportKind, address: string, port: number): boolean {
    const hook = this.options.admission;
    if (!hook) return true;
    let ok = false;
    try {
      ok = hook({ uuid: uuidToHex(frame.source, frame.uuidOffset), appId: frame.appId, transport, address, port }) === true;
    } catch {
      ok = false;
    }
    if (!ok) this.countDrop('admission-refused');
    return ok;
  }

  /**
   * True when the record is marked online and still reachable. A record whose
   * window lapsed before the sweep noticed is marked offline here, so its
   * heartbeat announces `online` again.
   */
  private checkStillOnline(id: number, now: number): boolean {
    if (!(this.table.flags[id]! & DeviceFlag.Online)) return false;
    if (this.links.has(id) || this.udpReachable(id, now)) return true;
    this.markOffline(id, 'unreachable', now);
    return false;
  }

  private afterHeartbeat(id: number, now: number, wasOnline: boolean, addressChanged: boolean, transport: DeviceTransportKind): void {
    const t = this.table;
    if (!wasOnline) {
      t.flags[id]! |= DeviceFlag.Online;
      this.counters.online++;
      const uuid = t.uuidHex(id);
      const route = this.routeOf(id, now);
      this.router.update(uuid, route);
      if (route) this.emit({ type: 'online', uuid, transport, address: route.address, port: route.port, at: now });
      // Always consult the store on coming online: pushes may have been stored
      // while the device was away (or by another node).
      this.load(id, uuid, addressChanged);
      return;
    }
    if (t.flags[id]! & PENDING_ANY) this.load(id, t.uuidHex(id), addressChanged);
    else this.echo(id, addressChanged);
  }

  private echo(id: number, addressChanged: boolean): void {
    const policy = this.options.echo;
    if (policy === 'never' || (policy === 'sa_changed' && !addressChanged)) return;
    if (this.transmit(id, encodeHeartbeatEcho(this.table.appId[id]!), Date.now())) this.counters.echoes++;
  }

  /**
   * Reads the store and (re)sends everything pending. One read per device at
   * a time; a `deliver` or ack asking (`again`) while one is in flight gets one
   * more read after it, since the read in flight may predate the write it was
   * asked for.
   */
  private load(id: number, uuid: string, addressChanged: boolean, again = false, skip = 0): void {
    const t = this.table;
    if (t.flags[id]! & DeviceFlag.Loading) {
      if (again && !this.reload.has(id)) this.reload.set(id, 0);
      return;
    }
    t.flags[id]! |= DeviceFlag.Loading;
    const gen = t.gen[id]!;
    this.store.read(uuid).then(
      (state) => {
        const sentMeanwhile = this.reload.get(id);
        this.reload.delete(id);
        if (!this.sameRecord(id, gen)) return;
        t.flags[id]! &= ~DeviceFlag.Loading;
        // A write landed while this read was in flight: the state read may
        // predate it, and applying it would forget the push (and the ack
        // tracking of a push sent meanwhile). Read again instead; what was
        // sent after this read began is out already and is not sent twice.
        if (sentMeanwhile !== undefined) return this.load(id, uuid, addressChanged, false, skip | sentMeanwhile);
        this.applyPending(id, state);
        if (!state || !this.sendPending(id, uuid, state, true, skip)) this.echo(id, addressChanged);
      },
      () => {
        this.reload.delete(id);
        if (this.sameRecord(id, gen)) t.flags[id]! &= ~DeviceFlag.Loading;
        this.countDrop('store-error');
      },
    );
  }

  /** Ids are reused after expiry: after an await, the record is the one read before it only if its generation is unchanged. */
  private sameRecord(id: number, gen: number): boolean {
    return this.table.gen[id] === gen;
  }

  private applyPending(id: number, state: PendingState | null): void {
    const t = this.table;
    let f = t.flags[id]! & ~PENDING_ANY;
    if (state) {
      if (state.notice) f |= DeviceFlag.PendingNotice;
      if (state.category) f |= DeviceFlag.PendingCategory;
      if (state.messageVersion) f |= DeviceFlag.PendingMessage;
    }
    t.flags[id] = f;
    if (!(f & DeviceFlag.PendingNotice)) this.resetTx(id, 'notice');
    if (!(f & DeviceFlag.PendingMessage)) this.resetTx(id, 'message');
  }

  /**
   * Sends every pending kind; false when nothing went out. `skip` (`KIND_FLAG`
   * bits): a notice or message of those kinds already out at the pending
   * version and awaiting its ack is not sent again.
   */
  private sendPending(id: number, uuid: string, state: PendingState, resend: boolean, skip = 0): boolean {
    const appId = this.table.appId[id]!;
    let sent = false;
    if (state.notice && !this.isOut(id, 'notice', state.notice, skip)) sent = this.sendKind(id, uuid, 'notice', state.notice, encodeNotice(appId), resend) || sent;
    if (state.category) sent = this.sendKind(id, uuid, 'category', state.categoryVersion, encodeCategory(appId, state.category), resend) || sent;
    if (state.message && !this.isOut(id, 'message', state.messageVersion, skip)) {
      sent = this.sendKind(id, uuid, 'message', state.messageVersion, encodeMessage(appId, state.message), resend) || sent;
    }
    return sent;
  }

  /** `version` of `kind` is among the `skip` kinds and already out, awaiting its ack. */
  private isOut(id: number, kind: 'notice' | 'message', version: number, skip: number): boolean {
    if ((skip & KIND_FLAG[kind]) === 0) return false;
    const t = this.table;
    return kind === 'notice' ? t.txNoticeVersion[id] === version && t.txNoticeCount[id]! > 0 : t.txMessageVersion[id] === version && t.txMessageCount[id]! > 0;
  }

  private sendKind(id: number, uuid: string, kind: PushKind, version: number, frame: Buffer, resend: boolean, now = Date.now()): boolean {
    const via = this.transmit(id, frame, now);
    if (!via) return false;
    this.trackTx(id, kind, version);
    if (resend) this.counters.resends++;
    this.emit({ type: 'sent', uuid, kind, version, transport: via, resend, at: now });
    return true;
  }

  /** Hands a frame to the device's link or UDP address. Returns the transport used, or null. */
  private transmit(id: number, frame: Buffer, now: number): DeviceTransportKind | null {
    const link = this.links.get(id);
    if (link) {
      if (!link.send(frame)) {
        this.countDrop('tcp-backpressure');
        return null;
      }
      this.counters.sends++;
      return 'tcp';
    }
    if (!this.udp || !this.udpReachable(id, now)) return null;
    const t = this.table;
    if (this.options.udpReplyFactor > 0) {
      if (t.credit[id]! < frame.length) {
        this.countDrop('reply-budget');
        return null;
      }
      t.credit[id]! -= frame.length;
    }
    this.udp.send(frame, t.port[id]!, this.addressOf(id));
    this.counters.sends++;
    return 'udp';
  }

  private trackTx(id: number, kind: PushKind, version: number): void {
    const t = this.table;
    if (kind === 'notice') {
      if (t.txNoticeVersion[id] === version) t.txNoticeCount[id] = sat(t.txNoticeCount[id]! + 1);
      else {
        t.txNoticeOlder[id] = sat(t.txNoticeOlder[id]! + t.txNoticeCount[id]!);
        t.txNoticeVersion[id] = version;
        t.txNoticeCount[id] = 1;
      }
    } else if (kind === 'message') {
      if (t.txMessageVersion[id] === version) t.txMessageCount[id] = sat(t.txMessageCount[id]! + 1);
      else {
        t.txMessageOlder[id] = sat(t.txMessageOlder[id]! + t.txMessageCount[id]!);
        t.txMessageVersion[id] = version;
        t.txMessageCount[id] = 1;
      }
    }
  }

  private resetTx(id: number, kind: 'notice' | 'message'): void {
    const t = this.table;
    if (kind === 'notice') {
      t.txNoticeVersion[id] = 0;
      t.txNoticeCount[id] = 0;
      t.txNoticeOlder[id] = 0;
    } else {
      t.txMessageVersion[id] = 0;
      t.txMessageCount[id] = 0;
      t.txMessageOlder[id] = 0;
    }
  }

  /**
   * The version an ack may clear, or 0 when it must be taken as the ack of an
   * older transmission (or of nothing we remember sending).
   */
  private ackedVersion(id: number, kind: 'notice' | 'message'): number {
    const t = this.table;
    const older = kind === 'notice' ? t.txNoticeOlder : t.txMessageOlder;
    const count = kind === 'notice' ? t.txNoticeCount : t.txMessageCount;
    if (older[id]! > 0) {
      older[id]!--;
      return 0;
    }
    if (count[id]! > 0) {
      count[id]!--;
      return kind === 'notice' ? t.txNoticeVersion[id]! : t.txMessageVersion[id]!;
    }
    return 0;
  }

  private handleAck(id: number, frame: ClientFrame): void {
    const t = this.table;
    switch (frame.cmd) {
      case ClientCmd.Reset:
        this.counters.resets++;
        return;
      case ClientCmd.AckCategory: {
        this.counters.acks++;
        const uuid = t.uuidHex(id);
        const gen = t.gen[id]!;
        const acked = frame.mask;
        this.store.ackCategory(uuid, acked).then((remaining) => {
          if (!this.sameRecord(id, gen)) return;
          if (remaining === 0n) t.flags[id]! &= ~DeviceFlag.PendingCategory;
          this.emit({ type: 'ack', uuid, kind: 'category', version: 0, mask: acked, remaining, at: Date.now() });
        }, this.storeFailed);
        return;
      }
      case ClientCmd.AckNotice:
      case ClientCmd.AckMessage: {
        this.counters.acks++;
        const kind = frame.cmd === ClientCmd.AckNotice ? 'notice' : 'message';
        const version = this.ackedVersion(id, kind);
        if (version === 0) return this.countDrop('ack-unmatched');
        const uuid = t.uuidHex(id);
        const gen = t.gen[id]!;
        // A store that answers at once (memory) costs no closure per ack.
        const now = this.store.ackNow(uuid, kind, version);
        if (now !== undefined) return this.acked(id, gen, uuid, kind, version, now);
        this.store.ackThen(uuid, kind, version, (err, r) => (err ? this.storeFailed() : this.acked(id, gen, uuid, kind, version, r!)));
        return;
      }
    }
  }

  /** The store applied an ack of `version` (read from record `id` of generation `gen`). */
  private acked(id: number, gen: number, uuid: string, kind: 'notice' | 'message', version: number, r: AckResult): void {
    if (!this.sameRecord(id, gen)) return;
    if (!r.remaining) {
      this.table.flags[id]! &= ~KIND_FLAG[kind];
      this.resetTx(id, kind);
    }
    if (r.cleared) this.emit({ type: 'ack', uuid, kind, version, at: Date.now() });
    // Queue mode: the next message goes out as soon as the previous is acked.
    // An ack that cleared nothing while something is pending acked a
    // version the store no longer holds (another node replaced it, or a
    // full queue dropped it): send what is pending now.
    if (r.remaining) this.load(id, uuid, false, true);
  }

  private readonly storeFailed = (): void => this.countDrop('store-error');

  // ------------------------------------------------------------------ pushes

  /**
   * Stores a push for a device and, if the device is registered here and
   * reachable, sends it at once. Resolves once the store has accepted the
   * push; rejects (storing nothing) on an oversized message or a store error.
   */
  push(uuid: string, write: PendingWrite): Promise<PushDispatch> {
    return new Promise((resolve, reject) => this.pushThen(uuid, write, (err, d) => (err ? reject(err) : resolve(d!))));
  }

  /**
   * `push` with a callback: the same steps, reported through `done` (exactly
   * once, possibly before this returns) rather than a chain of promises.
   */
  pushThen(uuid: string, write: PendingWrite, done: PushCallback): void {
    let key: string;
    try {
      key = this.preparePush(uuid, write);
    } catch (err) {
      done(asError(err), null);
      return;
    }
    const t0 = this.storeWriteObserver ? performance.now() : 0;
    this.writePush(key, write, (err, r) => (err ? done(err, null) : done(null, this.pushStored(key, write, r!, t0))));
  }

  /**
   * `pushThen` in three steps, for a caller that goes on in its own store
   * callback (the dispatcher: a push waiting for a group commit then keeps
   * one closure alive, not two, which young-generation GC copies less).
   * `preparePush` checks and counts the push and returns its store key
   * (throws, storing nothing, on a bad uuid or write); `writePush` stores it;
   * `pushStored` sends it if the device is reachable here and returns the
   * dispatch. `t0`: `performance.now()` before the write when
   * `storeWriteObserver` is set, else 0.
   * @internal
   */
  preparePush(uuid: string, write: PendingWrite): string {
    // Store keys are lowercase hex: an upper-case or malformed uuid must not be
    // stored under a key the device's heartbeat never reads.
    const key = normalizeUuid(uuid);
    this.checkWrite(write);
    this.counters.pushes++;
    return key;
  }

  /** @internal See `preparePush`. */
  writePush(key: string, write: PendingWrite, done: (err: Error | null, r: WriteResult | null) => void): void {
    this.store.writeThen(key, write, done);
  }

  /**
   * @internal `writePush` answered at once by a store that can (`OfflineStore.writeNow`):
   * the result, or `undefined` to call `writePush`. Throws, storing nothing, on a store error.
   */
  writePushNow(key: string, write: PendingWrite): WriteResult | undefined {
    return this.store.writeNow(key, write);
  }

  /** @internal See `preparePush`. */
  pushStored(key: string, write: PendingWrite, r: WriteResult, t0: number): PushDispatch {
    const observe = this.storeWriteObserver;
    if (observe && t0 > 0) observe((performance.now() - t0) / 1000);
    try {
      return this.afterWrite(key, write, r as PushDispatch);
    } catch {
      // Stored, but the send threw (a transport closing under us): the push
      // is accepted and stays pending for the device's next heartbeat.
      const d = r as PushDispatch;
      d.uuid = key;
      d.sentVia = null;
      d.reachable = false;
      return d;
    }
  }

  private checkWrite(write: PendingWrite): void {
    if (write.kind === 'message' && write.content.length === 0) {
      throw new RangeError('Message content is empty: a 0x20 message carries 1..maxContentLength bytes');
    }
    if (write.kind === 'message' && write.content.length > this.options.maxContentLength) {
      throw new PayloadTooLargeError(write.content.length, this.options.maxContentLength);
    }
    // A zero mask would be stored and sent for nothing, and never acked away.
    if (write.kind === 'category' && (write.mask <= 0n || write.mask >= 1n << 64n)) {
      throw new RangeError(`Category mask must be a non-zero 64-bit value, got ${write.mask}`);
    }
  }

  /** The store holds the push: send it if the device is reachable here. The store's result object is ours: extended, not copied. */
  private afterWrite(uuid: string, write: PendingWrite, d: PushDispatch): PushDispatch {
    d.uuid = uuid;
    d.sentVia = null;
    d.reachable = false;
    const id = this.findHex(uuid);
    if (id < 0) return d;
    // A store read in flight may predate this write: have it read again.
    const loading = (this.table.flags[id]! & DeviceFlag.Loading) !== 0;
    if (loading && !this.reload.has(id)) this.reload.set(id, 0);
    this.table.flags[id]! |= KIND_FLAG[write.kind];
    const now = Date.now();
    d.reachable = this.links.has(id) || this.udpReachable(id, now);
    // A queued message behind an unacked one waits for that ack (see handleAck).
    if (!d.reachable || !d.head) return d;
    const appId = this.table.appId[id]!;
    const frame =
      write.kind === 'notice'
        ? encodeNotice(appId)
        : write.kind === 'category'
          ? encodeCategory(appId, d.mask ?? write.mask)
          : encodeMessage(appId, write.content);
    if (this.sendKind(id, uuid, write.kind, d.version, frame, false, now)) {
      d.sentVia = this.links.has(id) ? 'tcp' : 'udp';
      if (loading) this.reload.set(id, this.reload.get(id)! | KIND_FLAG[write.kind]);
    }
    return d;
  }

  /** Record id for a normalised hex uuid, decoded into a scratch buffer (no allocation). */
  private findHex(uuid: string): number {
    // Decoded here rather than by Buffer.write (a native call that costs twice as much per push).
    const k = this.keyScratch;
    for (let i = 0; i < 16; i++) k[i] = (HEX_VALUE[uuid.charCodeAt(2 * i)]! << 4) | HEX_VALUE[uuid.charCodeAt(2 * i + 1)]!;
    return this.table.find(k, 0);
  }

  /** `PushSubmitter`: the engine alone (no outcome tracking) accepts a push by storing and sending it. */
  submit(uuid: string, write: PendingWrite, _source: PushSource, done: SubmitCallback): void {
    this.pushThen(uuid, write, done);
  }

  /**
   * Transmits whatever is pending for a device held here, now (a cluster peer
   * stored a push for it). False when the device is not reachable here.
   */
  deliver(uuid: string): boolean {
    const id = this.findHex(normalizeUuid(uuid));
    if (id < 0 || !(this.links.has(id) || this.udpReachable(id, Date.now()))) return false;
    this.load(id, uuid, false, true);
    return true;
  }

  // ------------------------------------------------------------------ queries

  localRoute(uuid: string): DeviceRoute | null {
    const id = this.findHex(normalizeUuid(uuid));
    return id < 0 ? null : this.routeOf(id, Date.now());
  }

  /** Route of a record if it is reachable now. */
  private routeOf(id: number, now: number): DeviceRoute | null {
    const t = this.table;
    const link = this.links.get(id);
    if (link) return { uuid: t.uuidHex(id), node: this.nodeId, transport: 'tcp', address: link.address, port: link.port, lastSeen: t.lastSeen[id]! };
    if (!this.udpReachable(id, now)) return null;
    return { uuid: t.uuidHex(id), node: this.nodeId, transport: 'udp', address: this.addressOf(id), port: t.port[id]!, lastSeen: t.lastSeen[id]! };
  }

  /** The DDPush console's per-device status. */
  async inspect(uuid: string): Promise<DeviceInspection | null> {
    uuid = normalizeUuid(uuid);
    const pending = await this.store.read(uuid);
    const id = this.findHex(normalizeUuid(uuid));
    if (id < 0) {
      if (!pending) return null;
      return { uuid, node: this.nodeId, online: false, reachable: false, transport: null, address: null, port: null, appId: 0, lastSeen: 0, pending };
    }
    const t = this.table;
    const now = Date.now();
    const link = this.links.get(id);
    const hasUdp = (t.flags[id]! & DeviceFlag.HasUdp) !== 0;
    return {
      uuid,
      node: this.nodeId,
      online: (t.flags[id]! & DeviceFlag.Online) !== 0,
      reachable: !!link || this.udpReachable(id, now),
      transport: link ? 'tcp' : hasUdp ? 'udp' : null,
      address: link ? link.address : hasUdp ? this.addressOf(id) : null,
      port: link ? link.port : hasUdp ? t.port[id]! : null,
      appId: t.appId[id]!,
      lastSeen: t.lastSeen[id]!,
      pending,
    };
  }

  /** Calls `fn` with the uuid of every reachable device, `batch` records at a time from `cursor`; returns the next cursor or -1 at the end. */
  scanReachable(cursor: number, batch: number, fn: (uuid: string) => void): number {
    const t = this.table;
    const now = Date.now();
    const end = Math.min(t.idBound, cursor + batch);
    for (let id = cursor; id < end; id++) {
      if (t.isUsed(id) && (this.links.has(id) || this.udpReachable(id, now))) fn(t.uuidHex(id));
    }
    return end >= t.idBound ? -1 : end;
  }

  get deviceCount(): number {
    return this.table.size;
  }

  get tcpLinkCount(): number {
    return this.links.size;
  }

  // ------------------------------------------------------------------- sweep

  /**
   * One incremental step of the sweep: visits enough records that the whole
   * table is covered once per reachability window, so offline detection lags
   * by at most one window and no step scans millions of records at once.
   */
  sweep(now: number): void {
    const t = this.table;
    const bound = t.idBound;
    if (bound === 0) return;
    const perWindow = Math.max(1, Math.floor(this.options.reachableWindowMs / this.options.sweepIntervalMs));
    const batch = Math.min(bound, Math.max(1024, Math.ceil(bound / perWindow)));
    const { expiryMs, reachableWindowMs } = this.options;
    for (let k = 0; k < batch; k++) {
      const id = this.sweepCursor;
      this.sweepCursor = id + 1 >= bound ? 0 : id + 1;
      const seen = t.lastSeen[id]!;
      if (seen === 0 || this.links.has(id)) continue;
      const age = now - seen;
      if (age > expiryMs) {
        if (t.flags[id]! & DeviceFlag.Online) this.markOffline(id, 'expired', now);
        this.ipv6.delete(id);
        t.remove(id);
        this.counters.expired++;
      } else if (age > reachableWindowMs && t.flags[id]! & DeviceFlag.Online) {
        this.markOffline(id, 'unreachable', now);
      }
    }
  }

  private markOffline(id: number, reason: OfflineReason, now: number): void {
    const t = this.table;
    t.flags[id]! &= ~DeviceFlag.Online;
    this.counters.offline++;
    const uuid = t.uuidHex(id);
    this.router.update(uuid, null);
    this.emit({ type: 'offline', uuid, reason, at: now });
  }

  // --------------------------------------------------------------- addresses

  private udpReachable(id: number, now: number): boolean {
    const t = this.table;
    return (t.flags[id]! & DeviceFlag.HasUdp) !== 0 && now - t.lastSeen[id]! <= this.options.reachableWindowMs;
  }

  private recharge(id: number, bytes: number): void {
    const factor = this.options.udpReplyFactor;
    if (factor === 0) return;
    const t = this.table;
    t.credit[id] = Math.min(this.options.udpReplyCreditMax, t.credit[id]! + factor * bytes);
  }

  /** Stores the UDP source of a heartbeat; true when it differs from the last one. */
  private setUdpAddress(id: number, address: string, port: number): boolean {
    const t = this.table;
    const f = t.flags[id]!;
    const v4 = parseIpv4(address);
    let changed: boolean;
    if (v4 >= 0) {
      changed = !(f & DeviceFlag.HasUdp) || !(f & DeviceFlag.Ipv4) || t.ipv4[id] !== v4 || t.port[id] !== port;
      if (changed) {
        t.ipv4[id] = v4;
        t.flags[id] = f | DeviceFlag.HasUdp | DeviceFlag.Ipv4;
        this.ipv6.delete(id);
      }
    } else {
      changed = !(f & DeviceFlag.HasUdp) || (f & DeviceFlag.Ipv4) !== 0 || this.ipv6.get(id) !== address || t.port[id] !== port;
      if (changed) {
        this.ipv6.set(id, address);
        t.flags[id] = (f | DeviceFlag.HasUdp) & ~DeviceFlag.Ipv4;
      }
    }
    t.port[id] = port;
    return changed;
  }

  private isUdpAddress(id: number, address: string, port: number): boolean {
    const t = this.table;
    const f = t.flags[id]!;
    if (!(f & DeviceFlag.HasUdp) || t.port[id] !== port) return false;
    if (f & DeviceFlag.Ipv4) return t.ipv4[id] === parseIpv4(address);
    return this.ipv6.get(id) === address;
  }

  private addressOf(id: number): string {
    return this.table.flags[id]! & DeviceFlag.Ipv4 ? this.ipv4Text.format(this.table.ipv4[id]!) : (this.ipv6.get(id) ?? '');
  }
}

function sat(n: number): number {
  return n > 255 ? 255 : n;
}
