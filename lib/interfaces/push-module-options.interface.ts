import type { Type } from '@nestjs/common';
import type { PushClusterPlugin } from '../cluster/push-cluster.js';
import type { DeviceEngineOptions } from '../device/device-engine.options.js';
import type { PushDispatcherOptions } from '../dispatch/push-dispatcher.js';
import type { PushRouter } from '../router/push-router.js';
import type { DeviceTransportOptions } from '../server/device-transport.strategy.js';
import type { PusherTransportOptions } from '../server/pusher-transport.strategy.js';
import type { LmdbOfflineStoreOptions } from '../store/lmdb-offline-store.js';
import type { MemoryOfflineStoreOptions } from '../store/memory-offline-store.js';
import type { OfflineStore } from '../store/offline-store.js';
import type { PushTags } from '../tags/push-tags.js';

/** Which offline store to use. */
export type PushStoreOption =
  /** LMDB under `./.nest-push` (the default): accepted pushes survive a crash. */
  | 'lmdb'
  | { type: 'lmdb'; options?: LmdbOfflineStoreOptions }
  /** In-memory (tests, ephemeral setups): pending pushes are lost with the process. */
  | 'memory'
  | { type: 'memory'; options?: MemoryOfflineStoreOptions }
  /** Your own store: a class instantiated with DI, or a ready instance. */
  | Type<OfflineStore>
  | OfflineStore;

/** Options of `PushModule.forRoot()` / `forRootAsync()`. */
export interface PushModuleOptions extends DeviceEngineOptions {
  /** The device port (UDP and TCP 9966). `enabled: false` runs without it. */
  device?: DeviceTransportOptions & { enabled?: boolean };
  /** The pusher port (TCP 9999, loopback by default). `enabled: false` runs without it. */
  pusher?: Omit<PusherTransportOptions, 'maxContentLength'> & { enabled?: boolean };
  /** `PushService.send()` limits and defaults. */
  send?: PushDispatcherOptions & {
    /** Broadcast pushes per second on this node (mpush's default). Default 3000. */
    broadcastRate?: number;
    /** Tag memberships held at most by the default in-process tags (`MemoryPushTags`). Default 1,000,000. */
    maxTagEntries?: number;
  };
  /** Offline store. Default: LMDB under `./.nest-push`, durable (`'lmdb'`). */
  store?: PushStoreOption;
  /** Router. Default: `LocalPushRouter` (single node). A class is instantiated with DI. */
  router?: Type<PushRouter> | PushRouter;
  /**
   * Device tags for tag-filtered broadcasts. Default: the cluster plugin's
   * shared tags (`RedisPushTags` with `redisCluster()`), else `MemoryPushTags`
   * bounded by `send.maxTagEntries`. A class is instantiated with DI.
   */
  tags?: Type<PushTags> | PushTags;
  /**
   * Cluster mode: e.g. `redisCluster({ url, keyPrefix })` from `nest-push/redis`.
   * It supplies the shared store and router (so `store`/`router` must be unset)
   * and the link to peer nodes. `nodeId` names this node (must be unique).
   */
  cluster?: PushClusterPlugin;
}
