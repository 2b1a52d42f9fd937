import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisClient } from '../../../lib/redis/redis-connection.js';
import { RedisOfflineStore } from '../../../lib/redis/redis-offline-store.js';
import { startRedis, type TestRedis } from '../../helpers/redis-server.js';

let redis: TestRedis;

beforeAll(async () => {
  redis = await startRedis({ appendonly: true });
});
afterAll(async () => {
  await redis?.dispose();
});

async function eventually<T>(fn: () => Promise<T>, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

describe('RedisOfflineStore when Redis goes away', () => {
  it('write rejects fast while Redis is down, recovers by itself when it returns, and what was stored survives (AOF)', async () => {
    const s = new RedisOfflineStore({ redis: createRedisClient(redis.url), ownsClient: true, keyPrefix: `o${randomBytes(3).toString('hex')}:` });
    await s.open();
    try {
      const u = randomBytes(16).toString('hex');
      const before = await s.write(u, { kind: 'message', content: Buffer.from('kept') });
      await redis.stop();
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        await expect(s.write(u, { kind: 'message', content: Buffer.from('lost') })).rejects.toThrow();
        expect(performance.now() - t0).toBeLessThan(1000);
        await new Promise((r) => setTimeout(r, 100));
      }
      await expect(s.read(u)).rejects.toThrow();
      await redis.restart();
      // Nothing refused was stored; what was accepted before the outage is still there.
      const st = await eventually(() => s.read(u));
      expect(st?.messageVersion).toBe(before.version);
      expect(st?.message?.toString()).toBe('kept');
      const after = await eventually(() => s.write(u, { kind: 'message', content: Buffer.from('new') }));
      expect(after.replaced).toBe(before.version);
    } finally {
      await s.close();
    }
  });

  it('open() fails with a clear error when Redis is unreachable (and does not retry in the background)', async () => {
    const client = createRedisClient('redis://127.0.0.1:1');
    const s = new RedisOfflineStore({ redis: client, ownsClient: true });
    await expect(s.open()).rejects.toThrow(/cannot connect to Redis/);
    let attempts = 0;
    client.on('connecting', () => attempts++);
    await new Promise((r) => setTimeout(r, 500));
    expect(attempts).toBe(0);
  });
});
