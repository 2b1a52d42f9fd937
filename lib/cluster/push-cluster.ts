import type { Observable } from 'rxjs';
import type { DeviceAckEvent, DeviceSentEvent } from '../device/device-event.interface.js';
import type { PushKind } from '../interfaces/push-kind.interface.js';

/** A push another node must transmit now: it is already in the shared store. */
export interface ClusterDelivery {
  uuid: string;
  kind: PushKind;
  version: number;
  /** Node whose dispatcher waits for the outcome. */
  origin: string;
}

/**
 * What a node needs from its peers (mpush's gateway idea, on a shared store).
 * A DI token: the Redis cluster wiring provides it; single-node apps have none.
 *
 * The dispatcher on the origin node stores a push in the shared store, asks
 * `locate` which live node holds the device (`locateKnown` when the store
 * already read the device's route with the write), and `deliver`s to it.
 * That node transmits the pending push and forwards the device's `sent`/`ack`
 * events for it back to the origin, where they arrive on `events` and settle
 * the outcome exactly like local events. A node that dies mid-push simply never
 * answers: the origin reports `timeout`, and the push stays pending in the
 * shared store for the device's next heartbeat on any node.
 */
export abstract class PushCluster {
  /** The live node holding the device, when it is another node; null when local, unknown, or held by a dead node. */
  abstract locate(uuid: string): Promise<string | null>;
  /**
   * `locate` for a route already read: `node` is what the device's route
   * names (`null`: no route), as the store read it with the write
   * (`WriteResult.route`). The same liveness rules apply (this node, a dead
   * node or no route: null), without looking the route up again. This
   * default, for implementations written before it, ignores `node` and calls
   * `locate(uuid)`.
   */
  locateKnown(uuid: string, _node: string | null): Promise<string | null> {
    return this.locate(uuid);
  }
  /** Asks `node` to transmit a stored push now. Fire and forget: the answer comes on `events`. */
  abstract deliver(node: string, delivery: ClusterDelivery): void;
  /** `sent`/`ack` events from other nodes for pushes this node delivered there. */
  abstract readonly events: Observable<DeviceSentEvent | DeviceAckEvent>;
  /**
   * Uuids of devices online on every other live node, for broadcasts; the
   * origin filters and paces them and dispatches each through `deliver`.
   */
  abstract remoteOnline(signal: { aborted: boolean }): AsyncIterable<string>;
  /** Checks the shared backend is reachable (health checks); rejects when it is not. */
  async ping(): Promise<void> {}
  /** Leaves the cluster (stops announcing, unsubscribes). */
  async close(): Promise<void> {}
}

/** What a cluster plugin gets to build its parts. */
export interface PushClusterContext {
  nodeId: string;
  engine: import('../device/device-engine.js').DeviceEngine;
  store: import('../store/offline-store.js').OfflineStore;
  router: import('../router/push-router.js').PushRouter;
}

/**
 * The one option block that puts a node in a cluster (e.g. `redisCluster({...})`
 * from `nest-push/redis`): it supplies the shared store, the shared router and
 * the peer link, so the core never imports a Redis client.
 */
export interface PushClusterPlugin {
  createStore(nodeId: string): import('../store/offline-store.js').OfflineStore | Promise<import('../store/offline-store.js').OfflineStore>;
  createRouter(nodeId: string): import('../router/push-router.js').PushRouter | Promise<import('../router/push-router.js').PushRouter>;
  createCluster(context: PushClusterContext): PushCluster | Promise<PushCluster>;
  /** Tags shared by the cluster's nodes. Without it, each node keeps its own (`MemoryPushTags`). */
  createTags?(nodeId: string): import('../tags/push-tags.js').PushTags | Promise<import('../tags/push-tags.js').PushTags>;
}
