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
]);

function int(name: string, v: unknown, min: number): void {
  if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < min)) {
    throw new PushConfigError(name, `expected an integer >= ${min}, got ${String(v)}`);
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
  const send = options.send ?? {};
  int('send.timeoutMs', send.timeoutMs, 1);
  int('send.maxInFlight', send.maxInFlight, 1);
  int('send.maxQueued', send.maxQueued, 0);
  int('send.broadcastRate', send.broadcastRate, 1);
  int('send.maxTagEntries', send.maxTagEntries, 0);
  const store = options.store;
  if (store !== undefined && store !== 'memory' && typeof store !== 'function' && typeof store !== 'object') {
    throw new PushConfigError('store', `expected 'memory', { type: 'memory' }, an OfflineStore class or instance; got ${String(store)}`);
  }
  if (store && typeof store === 'object' && 'type' in store && store.type !== 'memory') {
    throw new PushConfigError('store.type', `unknown store type ${String((store as { type: unknown }).type)}; expected 'memory'`);
  }
  const router = options.router;
  if (router !== undefined && typeof router !== 'function' && typeof router !== 'object') {
    throw new PushConfigError('router', 'expected a PushRouter class or instance');
  }
  return options;
}
