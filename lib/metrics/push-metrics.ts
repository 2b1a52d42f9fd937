import { Inject, Injectable, Logger, type OnModuleDestroy, type OnModuleInit, Optional, type Type } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { collectDefaultMetrics, Counter, Gauge, type Metric, Registry, type DefaultMetricsCollectorConfiguration, type RegistryContentType } from 'prom-client';
import { isObservable, type Observable, type Subscription } from 'rxjs';
import { PushCluster } from '../cluster/push-cluster.js';
import { DeviceEngine } from '../device/device-engine.js';
import { PushDispatcher } from '../dispatch/push-dispatcher.js';
import type { PushKind } from '../interfaces/push-kind.interface.js';
import type { PushOutcome, PushStatus } from '../interfaces/push-outcome.interface.js';
import { DeviceTransportStrategy } from '../server/device-transport.strategy.js';
import { PusherTransportStrategy } from '../server/pusher-transport.strategy.js';
import { OfflineStore } from '../store/offline-store.js';
import { BucketHistogram } from './bucket-histogram.js';

/** Options of `PushMetricsModule.forRoot()`. */
export interface PushMetricsOptions {
  /**
   * Registry the series are registered in. Default: a registry of its own
   * (so two apps in one process never clash); pass prom-client's global
   * `register` to serve them with your other metrics.
   */
  registry?: Registry;
  /** Prefix of every nest-push series. Default `'nest_push_'`. */
  prefix?: string;
  /**
   * prom-client's default process metrics, including event-loop lag
   * (`nodejs_eventloop_lag_seconds`, `..._p99_seconds`), heap and GC.
   * Default true; pass a config object to set their prefix or labels.
   */
  defaultMetrics?: boolean | Omit<DefaultMetricsCollectorConfiguration<RegistryContentType>, 'register'>;
  /** Buckets of the latency histograms, in seconds. Default 0.25 ms .. 10 s. */
  latencyBuckets?: readonly number[];
}

/** DI token of the options given to `PushMetricsModule.forRoot()`. */
export const PUSH_METRICS_OPTIONS = Symbol.for('nest-push:metrics-options');

/** Names (after the prefix) of the series this module registers. */
export const PUSH_METRIC_NAMES = {
  devicesRegistered: 'devices_registered',
  devicesOnline: 'devices_online',
  tcpLinks: 'tcp_links',
  inFlight: 'in_flight',
  queued: 'queued',
  storeDevices: 'store_pending_devices',
  storeBytes: 'store_pending_bytes',
  transportListening: 'transport_listening',
  pusherConnections: 'pusher_connections',
  pushes: 'pushes_total',
  pushFailures: 'push_failures_total',
  acks: 'acks_total',
  resends: 'resends_total',
  heartbeats: 'heartbeats_total',
  framesSent: 'frames_sent_total',
  expired: 'devices_expired_total',
  drops: 'drops_total',
  pusherTasks: 'pusher_tasks_total',
  pusherDeferred: 'pusher_tasks_deferred_total',
  pusherPipelined: 'pusher_pipelined',
  pusherHeld: 'pusher_held_total',
  deliveryLatency: 'delivery_latency_seconds',
  storeCommit: 'store_commit_seconds',
  gatewayLatency: 'gateway_latency_seconds',
} as const;

export const DEFAULT_LATENCY_BUCKETS: readonly number[] = [
  0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

const KINDS: readonly PushKind[] = ['notice', 'category', 'message'];
const STATUSES: readonly PushStatus[] = ['success', 'offline', 'timeout', 'failure', 'replaced'];
const MAX_FAILURE_REASONS = 64;

function kindIndex(k: PushKind): number {
  return k === 'notice' ? 0 : k === 'category' ? 1 : 2;
}

function statusIndex(s: PushStatus): number {
  switch (s) {
    case 'success':
      return 0;
    case 'offline':
      return 1;
    case 'timeout':
      return 2;
    case 'failure':
      return 3;
    default:
      return 4;
  }
}

/** What a cluster plugin may expose for `gateway_latency_seconds` (duck-typed). */
interface GatewayLatencySource {
  /** Seconds from a push's acceptance on the origin node to its transmission by the holding node. */
  gatewayLatency?: Observable<number>;
}

/**
 * nest-push's Prometheus series. Counters and gauges are read from the
 * engine, dispatcher, transports and store when the registry is scraped;
 * the only per-push work is one increment in a preallocated table (and a
 * bucket increment for delivery latency) in an `outcomes` subscription.
 *
 * No controller: expose it yourself,
 * ```ts
 * @Get('metrics') async metrics(@Res() res: Response) {
 *   res.type(this.pushMetrics.contentType).send(await this.pushMetrics.metrics());
 * }
 * ```
 */
@Injectable()
export class PushMetrics implements OnModuleInit, OnModuleDestroy {
  readonly registry: Registry;
  private readonly logger = new Logger('PushMetrics');
  private readonly ownRegistry: boolean;
  private readonly prefix: string;
  private readonly options: PushMetricsOptions;
  private readonly registered: string[] = [];
  /** Outcomes per kind x status, from the `outcomes` subscription. */
  private readonly outcomeCounts = new Float64Array(KINDS.length * STATUSES.length);
  private readonly failureReasons = new Map<string, number>();
  private readonly delivery: BucketHistogram;
  private readonly storeCommit: BucketHistogram;
  private readonly gateway: BucketHistogram;
  private sub: Subscription | undefined;
  private gatewayFromCluster = false;
  private engine: DeviceEngine | null = null;
  private dispatcher: PushDispatcher | null = null;
  private store: OfflineStore | null = null;
  private device: DeviceTransportStrategy | null = null;
  private pusher: PusherTransportStrategy | null = null;
  private unwrapStore: (() => void) | undefined;

  constructor(
    private readonly moduleRef: ModuleRef,
    @Optional() @Inject(PUSH_METRICS_OPTIONS) options: PushMetricsOptions | null,
  ) {
    this.options = options ?? {};
    this.ownRegistry = !this.options.registry;
    this.registry = this.options.registry ?? new Registry();
    this.prefix = this.options.prefix ?? 'nest_push_';
    const buckets = this.options.latencyBuckets ?? DEFAULT_LATENCY_BUCKETS;
    const n = PUSH_METRIC_NAMES;
    this.delivery = new BucketHistogram(
      this.prefix + n.deliveryLatency,
      'Acked pushes: time from acceptance (stored) to the device ack, in seconds (millisecond clock).',
      buckets,
    );
    this.storeCommit = new BucketHistogram(
      this.prefix + n.storeCommit,
      'Offline store write latency (a push is accepted once its write resolves), sampled, in seconds.',
      buckets,
    );
    this.gateway = new BucketHistogram(
      this.prefix + n.gatewayLatency,
      'Cluster: time from acceptance on the origin node to transmission by the node holding the device, in seconds.',
      buckets,
    );
  }

  /** Text exposition of every series in the registry (this module's and any others in it). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** `Content-Type` of `metrics()`. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Records a store commit latency measured elsewhere (e.g. by a store that times itself). */
  observeStoreCommit(seconds: number): void {
    this.storeCommit.observe(seconds);
  }

  /** Records a cluster gateway latency (for a cluster plugin that measures it itself). */
  observeGatewayLatency(seconds: number): void {
    this.gateway.observe(seconds);
  }

  onModuleInit(): void {
    this.engine = this.find(DeviceEngine);
    this.dispatcher = this.find(PushDispatcher);
    this.store = this.find(OfflineStore);
    this.device = this.find(DeviceTransportStrategy);
    this.pusher = this.find(PusherTransportStrategy);
    const cluster = this.find(PushCluster) as (PushCluster & GatewayLatencySource) | null;
    if (!this.engine || !this.dispatcher) {
      throw new Error('PushMetricsModule needs PushModule in the same application (DeviceEngine/PushDispatcher not found)');
    }
    this.registerSeries();
    if (this.options.defaultMetrics !== false) {
      const config = typeof this.options.defaultMetrics === 'object' ? this.options.defaultMetrics : {};
      // The global registry may already carry them (an app that called it itself).
      if (this.ownRegistry || !this.registry.getSingleMetric(`${config.prefix ?? ''}nodejs_eventloop_lag_seconds`)) {
        collectDefaultMetrics({ ...config, register: this.registry });
      }
    }
    const nodeId = this.engine.nodeId;
    this.sub = this.dispatcher.outcomes.subscribe((o) => this.onOutcome(o, nodeId));
    if (cluster && isObservable(cluster.gatewayLatency)) {
      this.gatewayFromCluster = true;
      this.sub.add(cluster.gatewayLatency.subscribe((s) => this.gateway.observe(s)));
    }
    this.wrapStore();
  }

  onModuleDestroy(): void {
    this.sub?.unsubscribe();
    this.sub = undefined;
    this.unwrapStore?.();
    this.unwrapStore = undefined;
    if (this.ownRegistry) this.registry.clear();
    else for (const name of this.registered) this.registry.removeSingleMetric(name);
    this.registered.length = 0;
  }

  private find<T>(token: Type<T> | (abstract new (...args: never[]) => T)): T | null {
    try {
      return (this.moduleRef.get(token as Type<T>, { strict: false }) as T | undefined) ?? null;
    } catch {
      return null;
    }
  }

  private onOutcome(o: PushOutcome, nodeId: string): void {
    this.outcomeCounts[kindIndex(o.kind) * STATUSES.length + statusIndex(o.status)]!++;
    const t = o.timeline;
    if (o.status === 'failure') {
      const reason = o.reason ?? 'unknown';
      const seen = this.failureReasons.get(reason);
      if (seen !== undefined) this.failureReasons.set(reason, seen + 1);
      else if (this.failureReasons.size < MAX_FAILURE_REASONS) this.failureReasons.set(reason, 1);
      else this.failureReasons.set('other', (this.failureReasons.get('other') ?? 0) + 1);
    } else if (o.status === 'success' && t.acked !== undefined && t.accepted !== undefined) {
      this.delivery.observe((t.acked - t.accepted) / 1000);
    }
    if (!this.gatewayFromCluster && o.node !== undefined && o.node !== nodeId && t.sent !== undefined && t.accepted !== undefined) {
      this.gateway.observe((t.sent - t.accepted) / 1000);
    }
  }

  /** Feeds `store_commit_seconds` from the engine's store-write hook (every push, no allocation). */
  private wrapStore(): void {
    const engine = this.engine;
    if (!engine) return;
    const histogram = this.storeCommit;
    const observer = (seconds: number): void => histogram.observe(seconds);
    engine.storeWriteObserver = observer;
    this.unwrapStore = () => {
      if (engine.storeWriteObserver === observer) engine.storeWriteObserver = undefined;
    };
  }

  private registerSeries(): void {
    const p = this.prefix;
    const n = PUSH_METRIC_NAMES;
    const engine = this.engine!;
    const dispatcher = this.dispatcher!;
    const store = this.store;
    const device = this.device;
    const pusher = this.pusher;
    const registers = [this.registry];
    const gauge = (name: string, help: string, read: () => number) =>
      this.track(
        new Gauge({
          name: p + name,
          help,
          registers,
          collect() {
            this.set(read());
          },
        }),
      );
    const counter = (name: string, help: string, read: () => number) =>
      this.track(
        new Counter({
          name: p + name,
          help,
          registers,
          collect() {
            this.reset();
            this.inc(read());
          },
        }),
      );

    gauge(n.devicesRegistered, 'Devices in the device table (heartbeat seen, not expired).', () => engine.deviceCount);
    // Every online transition is counted once and every offline one follows an online one.
    gauge(n.devicesOnline, 'Devices online (reachable over UDP or holding a TCP link).', () => engine.counters.online - engine.counters.offline);
    gauge(n.tcpLinks, 'TCP device connections bound to a device.', () => engine.tcpLinkCount);
    gauge(n.inFlight, 'Pushes awaiting their outcome.', () => dispatcher.inFlight);
    gauge(n.queued, 'Pushes waiting for an in-flight slot.', () => dispatcher.queued);
    if (store) {
      gauge(n.storeDevices, 'Devices with something pending in the offline store.', () => store.stats().devices);
      gauge(n.storeBytes, 'Bytes of pending message content in the offline store.', () => store.stats().bytes);
    }
    this.track(
      new Gauge({
        name: p + n.transportListening,
        help: 'Transport listening (1) or not (0); disabled transports are absent.',
        labelNames: ['transport'],
        registers,
        collect() {
          if (device) this.set({ transport: 'device' }, device.listening ? 1 : 0);
          if (pusher) this.set({ transport: 'pusher' }, pusher.listening ? 1 : 0);
        },
      }),
    );
    if (pusher) {
      gauge(n.pusherConnections, 'Open pusher port connections.', () => pusher.openConnections);
      gauge(n.pusherPipelined, 'Pusher tasks read and not yet answered, all connections together (limit: pusher.maxPipelinedTotal).', () => pusher.pipelined);
      counter(n.pusherHeld, 'Times the pusher port held every connection at pusher.maxPipelinedTotal unanswered tasks.', () => pusher.counters.heldAtTotal);
    }

    const outcomes = this.outcomeCounts;
    this.track(
      new Counter({
        name: p + n.pushes,
        help: 'Push outcomes per device, by kind and outcome (success, offline, timeout, failure, replaced).',
        labelNames: ['kind', 'outcome'],
        registers,
        collect() {
          this.reset();
          for (let k = 0; k < KINDS.length; k++) {
            for (let s = 0; s < STATUSES.length; s++) this.inc({ kind: KINDS[k]!, outcome: STATUSES[s]! }, outcomes[k * STATUSES.length + s]!);
          }
        },
      }),
    );
    const reasons = this.failureReasons;
    this.track(
      new Counter({
        name: p + n.pushFailures,
        help: 'Pushes not accepted, by reason (payload-too-large, store-full, overloaded, invalid-uuid, ...).',
        labelNames: ['reason'],
        registers,
        collect() {
          this.reset();
          for (const [reason, count] of reasons) this.inc({ reason }, count);
        },
      }),
    );
    counter(n.acks, 'Acks received from devices.', () => engine.counters.acks);
    counter(n.resends, 'Pending pushes re-sent (on heartbeat or reconnect).', () => engine.counters.resends);
    counter(n.heartbeats, 'Device heartbeats handled.', () => engine.counters.heartbeats);
    counter(n.framesSent, 'Frames handed to device sockets (pushes, re-sends and heartbeat echoes).', () => engine.counters.sends);
    counter(n.expired, 'Device records expired.', () => engine.counters.expired);
    this.track(
      new Counter({
        name: p + n.drops,
        help: 'Frames, devices and sends dropped, by source (device port, pusher port) and reason.',
        labelNames: ['source', 'reason'],
        registers,
        collect() {
          this.reset();
          for (const [reason, count] of Object.entries(engine.counters.drops)) this.inc({ source: 'device', reason }, count);
          if (pusher) for (const [reason, count] of Object.entries(pusher.counters.malformed)) this.inc({ source: 'pusher', reason }, count);
        },
      }),
    );
    if (pusher) {
      this.track(
        new Counter({
          name: p + n.pusherTasks,
          help: 'Pusher port tasks by reply: accepted (0x00), malformed (0x01), error (0xff).',
          labelNames: ['result'],
          registers,
          collect() {
            const c = pusher.counters;
            let malformed = 0;
            for (const v of Object.values(c.malformed)) malformed += v;
            this.reset();
            this.inc({ result: 'accepted' }, c.accepted);
            this.inc({ result: 'malformed' }, malformed);
            this.inc({ result: 'error' }, c.errors);
          },
        }),
      );
      this.track(
        new Counter({
          name: p + n.pusherDeferred,
          help: 'Pusher tasks that waited for a later event-loop turn while the device port was busy (pusher.tasksPerTurn).',
          registers,
          collect() {
            this.reset();
            this.inc(pusher.counters.deferred);
          },
        }),
      );
    }
    for (const h of [this.delivery, this.storeCommit, this.gateway]) {
      this.registry.registerMetric(h as unknown as Metric);
      this.registered.push(h.name);
    }
  }

  private track<M extends object>(metric: M): M {
    // prom-client metrics keep their name on the instance.
    this.registered.push((metric as unknown as { name: string }).name);
    return metric;
  }
}
