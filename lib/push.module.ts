import { Inject, Logger, Module, type OnApplicationShutdown, type Provider, Injectable } from '@nestjs/common';
import { DiscoveryModule, ModuleRef } from '@nestjs/core';
import { PushCluster } from './cluster/push-cluster.js';
import { DeviceEngine } from './device/device-engine.js';
import { PushDispatcher } from './dispatch/push-dispatcher.js';
import type { PushModuleOptions } from './interfaces/push-module-options.interface.js';
import { validatePushModuleOptions } from './push-options.resolver.js';
import { PushExplorer } from './push.explorer.js';
import { PUSH_MODULE_OPTIONS, PushConfigurableModule } from './push.module-definition.js';
import { PushService } from './push.service.js';
import { LocalPushRouter } from './router/local-push-router.js';
import { PushRouter } from './router/push-router.js';
import { DeviceTransportStrategy } from './server/device-transport.strategy.js';
import { PusherTransportStrategy } from './server/pusher-transport.strategy.js';
import { LmdbOfflineStore } from './store/lmdb-offline-store.js';
import { MemoryOfflineStore } from './store/memory-offline-store.js';
import { OfflineStore } from './store/offline-store.js';
import { MemoryPushTags } from './tags/memory-push-tags.js';
import { PushTags } from './tags/push-tags.js';

/** Resolved, validated options (the raw ones come from forRoot/forRootAsync). */
export const PUSH_OPTIONS = Symbol.for('nest-push:options');

async function createStore(options: PushModuleOptions, moduleRef: ModuleRef): Promise<OfflineStore> {
  const s = options.store;
  let store: OfflineStore;
  if (options.cluster) store = await options.cluster.createStore(nodeIdOf(options));
  else if (s instanceof OfflineStore) store = s;
  else if (typeof s === 'function') store = await moduleRef.create(s);
  else if (s === 'memory') store = new MemoryOfflineStore();
  else if (s && typeof s === 'object' && 'type' in s && s.type === 'memory') store = new MemoryOfflineStore(s.options);
  else if (s && typeof s === 'object' && 'type' in s && s.type === 'lmdb') store = new LmdbOfflineStore(s.options);
  // The default is durable: a push server that loses accepted pushes on a crash is DDPush's flaw.
  else store = new LmdbOfflineStore();
  // Opened here, in an async provider, so the store is ready before any
  // transport or service can touch it, and a bad data directory fails startup.
  await store.open();
  return store;
}

async function createRouter(options: PushModuleOptions, moduleRef: ModuleRef): Promise<PushRouter> {
  if (options.cluster) return options.cluster.createRouter(nodeIdOf(options));
  const r = options.router;
  if (r instanceof PushRouter) return r;
  if (typeof r === 'function') return moduleRef.create(r);
  return new LocalPushRouter();
}

async function createTags(options: PushModuleOptions, moduleRef: ModuleRef): Promise<PushTags> {
  const t = options.tags;
  let tags: PushTags;
  if (t instanceof PushTags) tags = t;
  else if (typeof t === 'function') tags = await moduleRef.create(t);
  // In a cluster the tags are shared, or a tag set through one node would be missed by a broadcast from another.
  else tags = (await options.cluster?.createTags?.(nodeIdOf(options))) ?? new MemoryPushTags(options.send?.maxTagEntries ?? 1_000_000);
  await tags.open();
  return tags;
}

function nodeIdOf(options: PushModuleOptions): string {
  return options.nodeId ?? 'local';
}

/**
 * Closes everything in the order that loses nothing: stop accepting (pusher
 * port waits for in-flight tasks to be stored and answered), stop devices,
 * settle waiting outcomes, then flush and close the store.
 */
@Injectable()
export class PushLifecycle implements OnApplicationShutdown {
  private readonly logger = new Logger('PushModule');

  constructor(
    private readonly engine: DeviceEngine,
    private readonly dispatcher: PushDispatcher,
    private readonly store: OfflineStore,
    @Inject(DeviceTransportStrategy) private readonly device: DeviceTransportStrategy | null,
    @Inject(PusherTransportStrategy) private readonly pusher: PusherTransportStrategy | null,
    @Inject(PushCluster) private readonly cluster: PushCluster | null,
  ) {}

  async onApplicationShutdown(): Promise<void> {
    try {
      await this.pusher?.close();
      await this.device?.close();
      this.dispatcher.close();
      this.engine.close();
      await this.cluster?.close();
    } finally {
      await this.store.close();
      this.logger.log('push transports closed, store flushed');
    }
  }
}

const providers: Provider[] = [
  {
    provide: PUSH_OPTIONS,
    useFactory: (raw: PushModuleOptions) => validatePushModuleOptions(raw ?? {}),
    inject: [PUSH_MODULE_OPTIONS],
  },
  { provide: OfflineStore, useFactory: createStore, inject: [PUSH_OPTIONS, ModuleRef] },
  { provide: PushRouter, useFactory: createRouter, inject: [PUSH_OPTIONS, ModuleRef] },
  // After the store: the cluster plugin's tags share the store's connection.
  { provide: PushTags, useFactory: createTags, inject: [PUSH_OPTIONS, ModuleRef, OfflineStore] },
  {
    provide: DeviceEngine,
    useFactory: (options: PushModuleOptions, store: OfflineStore, router: PushRouter) => {
      const { device: _d, pusher: _p, send: _s, store: _st, router: _r, ...engine } = options;
      return new DeviceEngine(store, router, engine);
    },
    inject: [PUSH_OPTIONS, OfflineStore, PushRouter],
  },
  {
    provide: PushCluster,
    useFactory: async (options: PushModuleOptions, engine: DeviceEngine, store: OfflineStore, router: PushRouter) =>
      options.cluster ? options.cluster.createCluster({ nodeId: engine.nodeId, engine, store, router }) : null,
    inject: [PUSH_OPTIONS, DeviceEngine, OfflineStore, PushRouter],
  },
  {
    provide: PushDispatcher,
    useFactory: (options: PushModuleOptions, engine: DeviceEngine, store: OfflineStore, cluster: PushCluster | null) =>
      new PushDispatcher(engine, store, options.send, cluster),
    inject: [PUSH_OPTIONS, DeviceEngine, OfflineStore, PushCluster],
  },
  {
    provide: DeviceTransportStrategy,
    useFactory: (options: PushModuleOptions, engine: DeviceEngine) => {
      const { enabled, ...device } = options.device ?? {};
      return enabled === false ? null : new DeviceTransportStrategy(engine, device);
    },
    inject: [PUSH_OPTIONS, DeviceEngine],
  },
  {
    provide: PusherTransportStrategy,
    useFactory: (options: PushModuleOptions, dispatcher: PushDispatcher, engine: DeviceEngine, device: DeviceTransportStrategy | null) => {
      const { enabled, ...pusher } = options.pusher ?? {};
      if (enabled === false) return null;
      const strategy = new PusherTransportStrategy(dispatcher, { ...pusher, maxContentLength: engine.options.maxContentLength });
      // Pusher intake yields to the device port while it is busy (see `pusher.tasksPerTurn`).
      if (device) strategy.paceWith(() => device.counters.datagrams);
      return strategy;
    },
    inject: [PUSH_OPTIONS, PushDispatcher, DeviceEngine, DeviceTransportStrategy],
  },
  PushService,
  PushExplorer,
  PushLifecycle,
];

/**
 * Turns a Nest app into a DDPush v1 push server.
 *
 * ```ts
 * @Module({ imports: [PushModule.forRoot({ device: { port: 9966 }, pusher: { port: 9999 } })] })
 * export class AppModule {}
 * ```
 * then in `main.ts`: `await connectPushTransports(app); await app.startAllMicroservices();`.
 */
@Module({
  imports: [DiscoveryModule],
  providers,
  exports: [PushService, OfflineStore, PushRouter, PushTags, PushCluster, DeviceEngine, PushDispatcher, DeviceTransportStrategy, PusherTransportStrategy, PUSH_OPTIONS],
})
export class PushModule extends PushConfigurableModule {}
