/** The sample's settings, from the environment (names are stable: scripts and docs rely on them). */
export interface SampleConfig {
  deviceHost: string;
  devicePort: number;
  pusherHost: string;
  pusherPort: number;
  httpPort: number;
  dataDir: string;
  store: 'memory' | 'lmdb';
  redisUrl: string | undefined;
  nodeId: string | undefined;
}

function port(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`${name}=${raw} is not a port number (0..65535)`);
  return n;
}

export function loadSampleConfig(): SampleConfig {
  const store = process.env.PUSH_STORE ?? 'lmdb';
  if (store !== 'memory' && store !== 'lmdb') throw new Error(`PUSH_STORE=${store}: expected "memory" or "lmdb" (the durable default)`);
  return {
    deviceHost: process.env.PUSH_DEVICE_HOST || '0.0.0.0',
    devicePort: port('PUSH_DEVICE_PORT', 9966),
    pusherHost: process.env.PUSH_PUSHER_HOST || '127.0.0.1',
    pusherPort: port('PUSH_PUSHER_PORT', 9999),
    httpPort: port('HTTP_PORT', 3000),
    dataDir: process.env.PUSH_DATA_DIR || './.nest-push',
    store,
    redisUrl: process.env.REDIS_URL || undefined,
    nodeId: process.env.PUSH_NODE_ID || undefined,
  };
}
