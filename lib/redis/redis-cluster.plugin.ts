import type { Redis, RedisOptions } from 'ioredis';
import type { PushClusterContext, PushClusterPlugin } from '../cluster/push-cluster.js';
import { PushConfigError } from '../errors/push-config.error.js';
import { createRedisClient, DEFAULT_KEY_PREFIX } from './redis-connection.js';
import { type MessageRetention, RedisOfflineStore, validateRetention } from './redis-offline-store.js';
import { RedisPushCluster } from './redis-push-cluster.js';
import { RedisPushRouter } from './redis-push-router.js';
import { RedisPushTags } from './redis-push-tags.js';

/** Options of `redisCluster()`: the one block that puts a node in a Redis cluster. */
export interface RedisClusterOptions {
  /** `redis://[user:password@]host:port[/db]` (or `rediss://`). Default: ioredis' default (127.0.0.1:6379) or `redis.host`/`redis.port`. */
  url?: string;
  /**
   * ioredis options, merged over nest-push's fail-fast defaults (offline
   * queue off, no re-send of in-flight commands, 2 s command timeout,
   * reconnect every 100 ms..1 s). Do not set `keyPrefix` here: use ours.
   */
  redis?: RedisOptions;
  /** Prefix of every key and channel, so several clusters can share one Redis. Default `'np:'`. */
  keyPrefix?: string;
  /** 0x20 messages: `'latest'` (DDPush, default) or a bounded queue `{ queue, ttlMs }`. */
  messageRetention?: MessageRetention;
  /** Pending state of a device expires this long after its last write. Default 50 h. */
  ttlMs?: number;
  /** Routes expire this long after their last write (refreshed every 12 h while the device stays online). Default 50 h. */
  routeTtlMs?: number;
  /** Registry period: how often a node announces itself. Default 1000 ms. */
  heartbeatMs?: number;
  /** A node silent for this long is dead. Default 3000 ms. */
  nodeTimeoutMs?: number;
  /** How long a holder forwards sent/ack events to a push's origin. Default 60 s (keep it above your push timeouts). */
  forwardTtlMs?: number;
  /** Tags one device may carry (`PushService.tag`; the tags are shared by every node). Default 256. */
  maxTagsPerDevice?: number;
}

const KNOWN: Record<keyof RedisClusterOptions, true> = {
  url: true,
  redis: true,
  keyPrefix: true,
  messageRetention: true,
  ttlMs: true,
  routeTtlMs: true,
  heartbeatMs: true,
  nodeTimeoutMs: true,
  forwardTtlMs: true,
  maxTagsPerDevice: true,
};

/** The `redisCluster()` plugin, with the parts it created (for tests and metrics). */
export interface RedisClusterPlugin extends PushClusterPlugin {
  readonly options: Readonly<RedisClusterOptions>;
  /** The command connection of the node built last (undefined before `createStore`). */
  readonly client: Redis | undefined;
}

function positive(name: string, v: unknown): void {
  if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < 1)) {
    throw new PushConfigError(`cluster.${name}`, `expected an integer >= 1 (ms), got ${String(v)}`);
  }
}

/**
 * Puts a node in a cluster sharing one Redis:
 *
 * ```ts
 * import { redisCluster } from 'nest-push/redis';
 * PushModule.forRoot({ nodeId: process.env.PUSH_NODE_ID, cluster: redisCluster({ url: process.env.REDIS_URL }) })
 * ```
 *
 * Pending pushes go to a `RedisOfflineStore`, routes to a `RedisPushRouter`,
 * device tags to `RedisPushTags`, and a `RedisPushCluster` links the node to
 * its peers. One connection carries the commands of all four; a second one (a duplicate) subscribes to
 * this node's gateway channel. Sharing the keys lets the store read the
 * device's route in each write (`readRoutes`): a push costs one script, plus
 * one PUBLISH when another node holds the device. ioredis is an optional peer
 * dependency: install it (`npm i ioredis`) to use this entry point.
 */
export function redisCluster(options: RedisClusterOptions = {}): RedisClusterPlugin {
  if (options === null || typeof options !== 'object') throw new PushConfigError('cluster', 'redisCluster() options must be an object');
  for (const k of Object.keys(options)) {
    if (!Object.hasOwn(KNOWN, k)) throw new PushConfigError(`cluster.${k}`, `unknown option; known redisCluster options are: ${Object.keys(KNOWN).join(', ')}`);
  }
  if (options.url !== undefined && typeof options.url !== 'string') throw new PushConfigError('cluster.url', `expected a redis:// URL, got ${String(options.url)}`);
  if (options.keyPrefix !== undefined && typeof options.keyPrefix !== 'string') throw new PushConfigError('cluster.keyPrefix', 'expected a string');
  if (options.keyPrefix !== undefined && /[{}]/.test(options.keyPrefix)) throw new PushConfigError('cluster.keyPrefix', 'must not contain { or } (the keys hash-tag the device uuid)');
  if (options.messageRetention !== undefined) validateRetention(options.messageRetention, 'cluster.messageRetention');
  for (const k of ['ttlMs', 'routeTtlMs', 'heartbeatMs', 'nodeTimeoutMs', 'forwardTtlMs'] as const) positive(k, options[k]);
  if (options.maxTagsPerDevice !== undefined && (!Number.isInteger(options.maxTagsPerDevice) || options.maxTagsPerDevice < 1)) {
    throw new PushConfigError('cluster.maxTagsPerDevice', `expected an integer >= 1, got ${String(options.maxTagsPerDevice)}`);
  }
  if ((options.redis as { keyPrefix?: unknown } | undefined)?.keyPrefix !== undefined) {
    throw new PushConfigError('cluster.redis.keyPrefix', "use redisCluster({ keyPrefix }) instead: it also names the pub/sub channels, which ioredis' keyPrefix does not prefix");
  }
  const keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
  let client: Redis | undefined;
  // One command connection per node: created with the store (which owns it and
  // quits it last), shared by the router and the cluster. A plugin object used
  // again after its app closed gets a fresh connection.
  const connection = (): Redis => {
    if (!client || client.status === 'end') client = createRedisClient(options.url, options.redis);
    return client;
  };
  return {
    options,
    get client() {
      return client;
    },
    createStore(nodeId: string) {
      // Store and router share the connection and prefix: each write reads the route too.
      return new RedisOfflineStore({ redis: connection(), ownsClient: true, nodeId, keyPrefix, messageRetention: options.messageRetention, ttlMs: options.ttlMs, readRoutes: true });
    },
    createRouter(nodeId: string) {
      return new RedisPushRouter({ redis: connection(), nodeId, keyPrefix, routeTtlMs: options.routeTtlMs });
    },
    createTags() {
      return new RedisPushTags({ redis: connection(), keyPrefix, maxTagsPerDevice: options.maxTagsPerDevice });
    },
    async createCluster(ctx: PushClusterContext) {
      // A wrapping plugin may pair this store with another router: its routes are not in our keys then.
      if (ctx.store instanceof RedisOfflineStore && !(ctx.router instanceof RedisPushRouter && ctx.router.keyPrefix === ctx.store.keyPrefix)) {
        ctx.store.readRoutes = false;
      }
      const cluster = new RedisPushCluster({
        redis: connection(),
        nodeId: ctx.nodeId,
        engine: ctx.engine,
        router: ctx.router,
        store: ctx.store,
        keyPrefix,
        heartbeatMs: options.heartbeatMs,
        nodeTimeoutMs: options.nodeTimeoutMs,
        forwardTtlMs: options.forwardTtlMs,
      });
      await cluster.start();
      return cluster;
    },
  };
}
