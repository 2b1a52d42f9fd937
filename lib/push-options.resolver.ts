import { type DeviceEngineOptions, resolveDeviceEngineOptions } from './device/device-engine.options.js';
import { PushConfigError } from './errors/push-config.error.js';
import type { PushModuleOptions } from './interfaces/push-module-options.interface.js';

const KNOWN = new Set([
  'nodeId',
  'reachableWindowMs',
  'expiryMs',
  'sweepIntervalMs',
  'echo',
  'admission',
  'maxDevices',
  'maxContentLength',
  'udpReplyFactor',
  'udpReplyCreditMax',
  'device',
  'pusher',
  'send',
  'store',
  'router',
  'tags',
  'cluster',
]);

// Records over every key of the option types: adding an option to the interface without listing it here fails the typecheck.
const SEND_KEYS: Record<keyof NonNullable<PushModuleOptions['send']>, true> = {
  timeoutMs: true,
  maxInFlight: true,
  maxQueued: true,
  broadcastRate: true,
  maxTagEntries: true,
};
const DEVICE_KEYS: Record<keyof NonNullable<PushModuleOptions['device']>, true> = {
  enabled: true,
  host: true,
  port: true,
  udp: true,
  tcp: true,
  tcpIdleTimeoutMs: true,
  tcpWriteLimitBytes: true,
  maxTcpConnections: true,
  udpRecvBufferSize: true,
  udpSendBufferSize: true,
};
const PUSHER_KEYS: Record<keyof NonNullable<PushModuleOptions['pusher']>, true> = {
  enabled: true,
  host: true,
  port: true,
  idleTimeoutMs: true,
  maxConnections: true,
  maxPipelined: true,
  maxPipelinedTotal: true,
  tasksPerTurn: true,
  allow: true,
  closeTimeoutMs: true,
};

function int(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)) {
    throw new PushConfigError(name, max === Number.MAX_SAFE_INTEGER ? `expected an integer >= ${min}, got ${String(v)}` : `expected an integer in ${min}..${max}, got ${String(v)}`);
  }
}

/** A typo inside a nested group is as silent as one at the top: refuse unknown keys there too. */
function knownKeys(group: string, value: unknown, known: Record<string, true>): void {
  if (value === undefined) return;
  if (value === null || typeof value !== 'object') throw new PushConfigError(group, `expected an object, got ${String(value)}`);
  for (const k of Object.keys(value)) {
    if (!Object.hasOwn(known, k)) throw new PushConfigError(`${group}.${k}`, `unknown option; known ${group} options are: ${Object.keys(known).join(', ')}`);
  }
}

/**
 * Validates `PushModule` options at startup. Throws `PushConfigError` naming
 * the offending option (typos included), so a bad config never half-starts.
 */
export function validatePushModuleOptions(options: PushModuleOptions): PushModuleOptions {
  if (options === null || typeof options !== 'object') throw new PushConfigError('(root)', 'PushModule options must be an object');
  for (const k of Object.keys(options)) {
    if (!KNOWN.has(k)) throw new PushConfigError(k, `unknown option; known options are: ${[...KNOWN].join(', ')}`);
  }
  resolveDeviceEngineOptions(options as DeviceEngineOptions);
  knownKeys('send', options.send, SEND_KEYS);
  knownKeys('device', options.device, DEVICE_KEYS);
  knownKeys('pusher', options.pusher, PUSHER_KEYS);
  const send = options.send ?? {};
  // Node timers cannot be armed for longer (a longer one fires after 1 ms).
  int('send.timeoutMs', send.timeoutMs, 1, 2_147_483_647);
  int('send.maxInFlight', send.maxInFlight, 1);
  int('send.maxQueued', send.maxQueued, 0);
  int('send.broadcastRate', send.broadcastRate, 1);
  int('send.maxTagEntries', send.maxTagEntries, 0);
  const store = options.store;
  if (store !== undefined && store !== 'memory' && store !== 'lmdb' && typeof store !== 'function' && (typeof store !== 'object' || store === null)) {
    throw new PushConfigError('store', `expected 'lmdb' (the default), 'memory', { type: 'lmdb' | 'memory', options }, an OfflineStore class or instance; got ${String(store)}`);
  }
  if (store && typeof store === 'object' && 'type' in store && store.type !== 'memory' && store.type !== 'lmdb') {
    throw new PushConfigError('store.type', `unknown store type ${String((store as { type: unknown }).type)}; expected 'lmdb' or 'memory'`);
  }
  const router = options.router;
  if (router !== undefined && typeof router !== 'function' && typeof router !== 'object') {
    throw new PushConfigError('router', 'expected a PushRouter class or instance');
  }
  const tags = options.tags;
  if (tags !== undefined && (tags === null || (typeof tags !== 'function' && typeof tags !== 'object'))) {
    throw new PushConfigError('tags', 'expected a PushTags class or instance');
  }
  const cluster = options.cluster;
  if (cluster !== undefined) {
    if (!cluster || typeof cluster.createStore !== 'function' || typeof cluster.createRouter !== 'function' || typeof cluster.createCluster !== 'function') {
      throw new PushConfigError('cluster', 'expected a cluster plugin such as redisCluster({ url }) from nest-push/redis');
    }
    if (options.store !== undefined || options.router !== undefined) {
      throw new PushConfigError(options.store !== undefined ? 'store' : 'router', 'leave it unset in cluster mode: the cluster plugin supplies the shared store and router');
    }
    if (!options.nodeId) throw new PushConfigError('nodeId', 'set a unique node id for each node of a cluster (e.g. from PUSH_NODE_ID)');
  }
  return options;
}
