// `nest-push/redis`: cluster mode on Redis. Needs the optional peer dependency `ioredis`.
export { redisCluster, type RedisClusterOptions, type RedisClusterPlugin } from './redis-cluster.plugin.js';
export { RedisOfflineStore, type RedisOfflineStoreOptions, type MessageRetention } from './redis-offline-store.js';
export { RedisPushRouter, type RedisPushRouterOptions, type RedisPushRouterCounters } from './redis-push-router.js';
export { RedisPushTags, type RedisPushTagsOptions } from './redis-push-tags.js';
export { RedisPushCluster, type RedisPushClusterOptions, type ClusterMembershipEvent, type RedisPushClusterCounters } from './redis-push-cluster.js';
export { createRedisClient, COMMAND_CONNECTION_DEFAULTS, DEFAULT_KEY_PREFIX } from './redis-connection.js';
