import { Redis, type RedisOptions } from 'ioredis';
import { PushConfigError } from '../errors/push-config.error.js';

/** Default key prefix of every key and channel. */
export const DEFAULT_KEY_PREFIX = 'np:';

/**
 * ioredis options for the command connection, chosen so that a Redis outage
 * fails pushes fast instead of queueing them in memory: commands issued while
 * disconnected reject at once (`enableOfflineQueue: false`), commands in
 * flight when the connection drops reject instead of being re-sent later
 * (`maxRetriesPerRequest: 0`, `autoResendUnfulfilledCommands: false`: a push
 * reported as failed is never stored behind the caller's back by a re-send),
 * a hung server fails commands after `commandTimeout`, and the client keeps
 * reconnecting (100 ms doubling to 1 s) so the node recovers by itself.
 * Anything given in `redis` overrides these.
 */
export const COMMAND_CONNECTION_DEFAULTS: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  commandTimeout: 2000,
  connectTimeout: 2000,
  retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times - 1, 4), 1000),
  lazyConnect: true,
  enableAutoPipelining: true,
};

/** The subscriber connection waits for Redis instead of failing (nothing is lost by waiting there). */
export const SUBSCRIBER_CONNECTION_OVERRIDES: RedisOptions = {
  enableOfflineQueue: true,
  maxRetriesPerRequest: null,
  autoResubscribe: true,
  commandTimeout: undefined,
  lazyConnect: true,
};

/** Creates the command connection (not connected yet: `lazyConnect`). */
export function createRedisClient(url: string | undefined, options: RedisOptions = {}): Redis {
  if ((options as { keyPrefix?: unknown }).keyPrefix !== undefined) {
    throw new PushConfigError('cluster.redis.keyPrefix', "use redisCluster({ keyPrefix }) instead: it also names the pub/sub channels, which ioredis' keyPrefix does not prefix");
  }
  const merged = { ...COMMAND_CONNECTION_DEFAULTS, ...options };
  const client = url ? new Redis(url, merged) : new Redis(merged);
  // Without a listener ioredis prints every connection error; outages surface as failed commands instead.
  client.on('error', () => {});
  return client;
}

/**
 * Resolves once the client is ready: connects a lazy client, or waits (at
 * most `waitMs`) for one that is connecting. When `failFast`, a failure also
 * stops the client's reconnect loop, so a wrong URL fails application startup
 * with a clear error instead of retrying in the background forever.
 */
export async function ensureConnected(client: Redis, what = 'Redis', waitMs = 5000, failFast = true): Promise<void> {
  if (client.status === 'ready') return;
  try {
    if (client.status === 'wait' || client.status === 'end') {
      await client.connect();
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        client.off('ready', onReady);
        client.off('end', onEnd);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => done();
      const onEnd = () => done(new Error('connection ended'));
      const timer = setTimeout(() => done(new Error(`not ready after ${waitMs} ms`)), waitMs);
      client.once('ready', onReady);
      client.once('end', onEnd);
    });
  } catch (err) {
    if (failFast) client.disconnect();
    const opts = client.options;
    throw new Error(`nest-push/redis: cannot connect to ${what} at ${opts.host}:${opts.port}: ${(err as Error).message}`, { cause: err });
  }
}

/** QUIT, or a hard disconnect when Redis does not answer within a second. */
export async function closeClient(client: Redis): Promise<void> {
  if (client.status === 'end') return;
  if (client.status !== 'ready') {
    client.disconnect();
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    client.quit().catch(() => client.disconnect()),
    new Promise<void>((r) => {
      timer = setTimeout(() => {
        client.disconnect();
        r();
      }, 1000);
    }),
  ]);
  clearTimeout(timer);
}

/** Key of one device's pending hash / queue / route / tag set: hash-tagged by uuid so they share a cluster slot. */
export function deviceKey(prefix: string, uuid: string, suffix: 'p' | 'q' | 'r' | 't'): string {
  return `${prefix}{${uuid}}:${suffix}`;
}

/** Is this a Redis "OOM command not allowed" reply (maxmemory reached with a noeviction policy)? */
export function isOutOfMemory(err: unknown): boolean {
  return err instanceof Error && /^OOM\b/.test(err.message);
}
