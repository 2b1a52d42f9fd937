import { Inject, Injectable } from '@nestjs/common';
import { Observable, lastValueFrom, toArray } from 'rxjs';
import { PushCluster } from './cluster/push-cluster.js';
import { DeviceEngine, type DeviceInspection } from './device/device-engine.js';
import type { DeviceEvent } from './device/device-event.interface.js';
import { PushDispatcher } from './dispatch/push-dispatcher.js';
import { RateLimiter } from './dispatch/rate-limiter.js';
import { PushRequestError } from './errors/push-request.error.js';
import type { PushModuleOptions } from './interfaces/push-module-options.interface.js';
import type { PushOutcome } from './interfaces/push-outcome.interface.js';
import type { PushPayload, PushRequest } from './interfaces/push-request.interface.js';
import { normalizeUuid, uuidFromKey } from './protocol/uuid.util.js';
import { PUSH_MODULE_OPTIONS } from './push.module-definition.js';
import { OfflineStore, type OfflineStoreStats, type PendingWrite } from './store/offline-store.js';
import { PushTags } from './tags/push-tags.js';

/** `PushService.stats()`. */
export interface PushStats {
  node: string;
  devices: number;
  tcpLinks: number;
  inFlight: number;
  queued: number;
  outcomes: PushDispatcher['counters'];
  engine: DeviceEngine['counters'];
  store: OfflineStoreStats;
  /** Tag memberships held (-1: kept in a shared server, not counted here). */
  tags: number;
}

const U64_MAX = (1n << 64n) - 1n;
/** Longest timer Node can arm (2^31 - 1 ms, ~24.8 days). */
const MAX_TIMEOUT_MS = 2_147_483_647;
const BROADCAST_BATCH = 1024;
/**
 * Tagged devices not held here that a tag-filtered broadcast locates at once
 * (on a cluster, one Redis read each). One at a time, a tag's walk would wait
 * a round trip per member: with Redis 1 ms away, 1,000 devices a second, below
 * the default `broadcastRate`. Bounded so a large tag holds at most this many
 * lookups and uuids in flight.
 */
const LOCATE_BATCH = 256;

/**
 * Sends pushes from Nest code and reports per-device outcomes.
 *
 * `send()` is **cold**, like `HttpClient`: nothing is stored or sent until you
 * subscribe, and each subscription sends again. It emits one `PushOutcome`
 * per target device, then completes. Unsubscribing stops waiting for outcomes
 * and stops a broadcast from reaching further devices; pushes already accepted
 * are not un-sent (their outcomes still reach `@OnPushOutcome` handlers).
 *
 * Backpressure: at most `send.maxInFlight` pushes await outcomes per node; a
 * subscription feeding many targets waits for a free slot before storing the
 * next one, so memory does not grow with the size of a broadcast.
 */
@Injectable()
export class PushService {
  private readonly limiter: RateLimiter;
  private readonly maxContentLength: number;

  constructor(
    private readonly engine: DeviceEngine,
    private readonly dispatcher: PushDispatcher,
    private readonly store: OfflineStore,
    @Inject(PUSH_MODULE_OPTIONS) options: PushModuleOptions,
    @Inject(PushCluster) private readonly cluster: PushCluster | null,
    private readonly tags: PushTags,
  ) {
    this.limiter = new RateLimiter(options.send?.broadcastRate ?? 3000);
    this.maxContentLength = engine.options.maxContentLength;
  }

  /** Sends a push; emits one outcome per target device, then completes. Cold: see the class doc. */
  send(request: PushRequest): Observable<PushOutcome> {
    return new Observable<PushOutcome>((subscriber) => {
      const signal = { aborted: false };
      let targets: Iterable<string> | AsyncIterable<string>;
      let write: PendingWrite | string;
      try {
        targets = this.targetsOf(request, signal);
        write = this.encode(request);
        checkSendOptions(request);
      } catch (err) {
        subscriber.error(err);
        return;
      }
      const source = 'service' as const;
      const options = { timeoutMs: request.timeout, ack: request.ack, source, slotHeld: true };
      let open = 1;
      const done = () => {
        if (--open === 0 && !signal.aborted) subscriber.complete();
      };
      const emit = (o: PushOutcome) => {
        if (!signal.aborted) subscriber.next(o);
        done();
      };
      const broadcast = request.broadcast !== undefined;
      (async () => {
        for await (const target of targets) {
          if (signal.aborted) break;
          open++;
          if (target.startsWith('!')) {
            emit(this.dispatcher.reject(target.slice(1), request.kind, source, 'invalid-uuid'));
            continue;
          }
          if (typeof write === 'string') {
            emit(this.dispatcher.reject(target, request.kind, source, write));
            continue;
          }
          if (broadcast && !(await this.limiter.take(signal))) {
            done();
            break;
          }
          try {
            await this.dispatcher.acquireSlot();
          } catch {
            emit(this.dispatcher.reject(target, request.kind, source, 'overloaded'));
            continue;
          }
          if (signal.aborted) {
            this.dispatcher.releaseSlot();
            done();
            break;
          }
          this.dispatcher.dispatchThen(target, write, options, undefined, emit);
        }
      })().then(done, (err) => subscriber.error(err));
      return () => {
        signal.aborted = true;
      };
    });
  }

  /** `send()` collected: resolves with every outcome once all targets are settled. */
  push(request: PushRequest): Promise<PushOutcome[]> {
    return lastValueFrom(this.send(request).pipe(toArray()));
  }

  /**
   * Adds server-side tags to a device, for tag-filtered broadcasts. In a
   * cluster they are shared (Redis), so a broadcast from any node finds them.
   * Rejects with `TagLimitError` (adding none) when a limit would be passed,
   * or with the store's error when Redis is unreachable; safe to retry.
   */
  async tag(uuid: string | Uint8Array, tags: readonly string[]): Promise<void> {
    await this.tags.add(normalizeUuid(uuid), tags);
  }

  /** Removes tags from a device (all of them when `tags` is omitted). Safe to retry. */
  async untag(uuid: string | Uint8Array, tags?: readonly string[]): Promise<void> {
    await this.tags.remove(normalizeUuid(uuid), tags);
  }

  /** The device's tags. */
  tagsOf(uuid: string | Uint8Array): Promise<string[]> {
    return this.tags.tagsOf(normalizeUuid(uuid));
  }

  /** The DDPush console's per-device status: last heartbeat, address, transport, pending kinds. */
  inspect(uuid: string | Uint8Array): Promise<DeviceInspection | null> {
    return this.engine.inspect(normalizeUuid(uuid));
  }

  stats(): PushStats {
    return {
      node: this.engine.nodeId,
      devices: this.engine.deviceCount,
      tcpLinks: this.engine.tcpLinkCount,
      inFlight: this.dispatcher.inFlight,
      queued: this.dispatcher.queued,
      outcomes: { ...this.dispatcher.counters },
      engine: { ...this.engine.counters, drops: { ...this.engine.counters.drops } },
      store: this.store.stats(),
      tags: this.tags.size,
    };
  }

  /** Every outcome of every push (service and pusher port). */
  get outcomes(): Observable<PushOutcome> {
    return this.dispatcher.outcomes;
  }

  /** Device online/offline/ack/sent events. */
  get deviceEvents(): Observable<DeviceEvent> {
    return this.engine.events;
  }

  /** The payload as a store write, or the failure reason for every target. */
  private encode(request: PushPayload): PendingWrite | string {
    switch (request.kind) {
      case 'notice':
        return { kind: 'notice' };
      case 'category': {
        const mask = request.mask;
        if (typeof mask !== 'bigint' || mask <= 0n || mask > U64_MAX) return 'invalid-mask';
        return { kind: 'category', mask };
      }
      case 'message': {
        const c = request.content;
        let content: Buffer;
        if (Buffer.isBuffer(c)) content = c;
        else if (c instanceof Uint8Array) content = Buffer.from(c);
        else if (typeof c === 'string') content = Buffer.from(c, 'utf8');
        else if (c !== null && typeof c === 'object') {
          try {
            content = Buffer.from(JSON.stringify(c), 'utf8');
          } catch {
            return 'invalid-payload';
          }
        } else return 'invalid-payload';
        if (content.length === 0) return 'empty-payload';
        if (content.length > this.maxContentLength) return 'payload-too-large';
        return { kind: 'message', content };
      }
      default:
        throw new PushRequestError(`unknown kind ${String((request as { kind: unknown }).kind)}; expected 'notice', 'category' or 'message'`);
    }
  }

  /**
   * The target uuids. A uuid that cannot be parsed is yielded as `!<input>`
   * so it becomes a failure outcome without stopping the others.
   */
  private targetsOf(r: PushRequest, signal: { aborted: boolean }): Iterable<string> | AsyncIterable<string> {
    const given = (['uuid', 'uuids', 'key', 'keys', 'broadcast'] as const).filter((k) => r[k] !== undefined);
    if (given.length !== 1) {
      throw new PushRequestError(`give exactly one target among uuid, uuids, key, keys, broadcast (got ${given.length ? given.join(', ') : 'none'})`);
    }
    if (r.uuid !== undefined) return [safeUuid(r.uuid)];
    if (r.uuids !== undefined) return r.uuids.map(safeUuid);
    if (r.key !== undefined) return [keyUuid(r.key)];
    if (r.keys !== undefined) return r.keys.map(keyUuid);
    const b = r.broadcast === true ? {} : r.broadcast!;
    return this.broadcastTargets(b.tags, b.filter, signal);
  }

  private async *broadcastTargets(
    tags: readonly string[] | undefined,
    predicate: ((uuid: string) => boolean) | undefined,
    signal: { aborted: boolean },
  ): AsyncIterable<string> {
    const keep = (uuid: string) => !predicate || predicate(uuid);
    if (tags && tags.length > 0) {
      // Walk the tags' members (read a page at a time) instead of the whole table.
      const elsewhere: string[] = [];
      for await (const uuid of this.tags.members(tags)) {
        if (signal.aborted) return;
        if (!keep(uuid)) continue;
        if (this.engine.localRoute(uuid)) yield uuid;
        else if (this.cluster) {
          elsewhere.push(uuid);
          if (elsewhere.length >= LOCATE_BATCH) yield* this.heldByPeers(elsewhere.splice(0), signal);
        }
      }
      if (elsewhere.length > 0) yield* this.heldByPeers(elsewhere, signal);
      return;
    }
    let cursor = 0;
    const batch: string[] = [];
    while (cursor >= 0 && !signal.aborted) {
      batch.length = 0;
      cursor = this.engine.scanReachable(cursor, BROADCAST_BATCH, (uuid) => {
        if (keep(uuid)) batch.push(uuid);
      });
      for (const uuid of batch) yield uuid;
    }
    // In a cluster, devices online on other nodes too; each goes through the
    // normal path (shared store, then the holder node transmits it).
    if (this.cluster && !signal.aborted) {
      for await (const uuid of this.cluster.remoteOnline(signal)) {
        if (signal.aborted) return;
        if (keep(uuid)) yield uuid;
      }
    }
  }

  /** The uuids that a live peer holds, located concurrently (see `LOCATE_BATCH`); a failed lookup skips its device. */
  private async *heldByPeers(uuids: readonly string[], signal: { aborted: boolean }): AsyncIterable<string> {
    const cluster = this.cluster!;
    const holders = await Promise.all(uuids.map((uuid) => cluster.locate(uuid).catch(() => null)));
    for (let i = 0; i < uuids.length; i++) {
      if (signal.aborted) return;
      if (holders[i]) yield uuids[i]!;
    }
  }
}

/** `timeout` and `ack` must make sense, or the push would never settle (a NaN deadline never expires). */
function checkSendOptions(r: PushRequest): void {
  const t = r.timeout;
  if (t !== undefined && (typeof t !== 'number' || !Number.isFinite(t) || t <= 0 || t > MAX_TIMEOUT_MS)) {
    throw new PushRequestError(`timeout must be a number of ms in (0, ${MAX_TIMEOUT_MS}], got ${String(t)}`);
  }
  if (r.ack !== undefined && r.ack !== 'device' && r.ack !== 'none') {
    throw new PushRequestError(`ack must be 'device' or 'none', got ${String(r.ack)}`);
  }
}

function safeUuid(u: string | Uint8Array): string {
  try {
    return normalizeUuid(u);
  } catch {
    return '!' + (typeof u === 'string' ? u : Buffer.from(u).toString('hex'));
  }
}

function keyUuid(key: string): string {
  try {
    return uuidFromKey(key).toString('hex');
  } catch {
    return '!' + String(key);
  }
}

