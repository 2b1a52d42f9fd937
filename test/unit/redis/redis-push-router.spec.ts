import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createRedisClient } from '../../../lib/redis/redis-connection.js';
import { RedisPushRouter } from '../../../lib/redis/redis-push-router.js';
import type { DeviceRoute } from '../../../lib/router/push-router.js';
import { startRedis, type TestRedis } from '../../helpers/redis-server.js';

let redis: TestRedis;
const clients: Redis[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.dispose();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});

async function routers(prefix: string, ...nodes: string[]): Promise<RedisPushRouter[]> {
  return Promise.all(
    nodes.map(async (nodeId) => {
      const c = createRedisClient(redis.url);
      clients.push(c);
      await c.connect();
      return new RedisPushRouter({ redis: c, nodeId, keyPrefix: prefix, routeTtlMs: 60_000 });
    }),
  );
}

function route(uuid: string, node: string, lastSeen: number, transport: 'udp' | 'tcp' = 'udp'): DeviceRoute {
  return { uuid, node, transport, address: '10.0.0.7', port: 40_000, lastSeen };
}

const until = async (check: () => Promise<boolean>, ms = 2000) => {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe('RedisPushRouter', () => {
  it('stores a route in a hash-tagged key with a TTL and looks it up', async () => {
    const prefix = `r${randomBytes(3).toString('hex')}:`;
    const [b] = await routers(prefix, 'B');
    const u = randomBytes(16).toString('hex');
    expect(await b!.lookup(u)).toBeNull();
    b!.update(u, route(u, 'B', 1234, 'tcp'));
    await until(async () => (await b!.lookup(u)) !== null);
    expect(await b!.lookup(u)).toEqual({ uuid: u, node: 'B', transport: 'tcp', address: '10.0.0.7', port: 40_000, lastSeen: 1234 });
    const pttl = await clients[0]!.pttl(`${prefix}{${u}}:r`);
    expect(pttl).toBeGreaterThan(50_000);
    expect(pttl).toBeLessThanOrEqual(60_000);
  });

  it("offline is a compare-and-delete: the old node's offline does not clobber the device's new node", async () => {
    const prefix = `r${randomBytes(3).toString('hex')}:`;
    const [b, c] = await routers(prefix, 'B', 'C');
    const u = randomBytes(16).toString('hex');
    await b!.set(u, route(u, 'B', 1000));
    // The device moves to C before B notices it is gone.
    await c!.set(u, route(u, 'C', 2000));
    expect(await b!.set(u, null)).toBe(false);
    expect((await c!.lookup(u))?.node).toBe('C');
    // C's own offline deletes it.
    expect(await c!.set(u, null)).toBe(true);
    expect(await b!.lookup(u)).toBeNull();
  });

  it('fire-and-forget updates apply in call order (online then offline leaves nothing)', async () => {
    const prefix = `r${randomBytes(3).toString('hex')}:`;
    const [b] = await routers(prefix, 'B');
    const u = randomBytes(16).toString('hex');
    b!.update(u, route(u, 'B', 1));
    b!.update(u, null);
    b!.update(u, route(u, 'B', 2));
    b!.update(u, null);
    await until(async () => b!.counters.deletes === 2);
    expect(await b!.lookup(u)).toBeNull();
    expect(b!.counters).toMatchObject({ writes: 2, deletes: 2, errors: 0 });
  });

  it('refresh re-writes its own and missing routes, never a newer route of another node', async () => {
    const prefix = `r${randomBytes(3).toString('hex')}:`;
    const [b, c] = await routers(prefix, 'B', 'C');
    const mine = randomBytes(16).toString('hex');
    const missing = randomBytes(16).toString('hex');
    const moved = randomBytes(16).toString('hex');
    const stale = randomBytes(16).toString('hex');
    await b!.set(mine, route(mine, 'B', 1000));
    await c!.set(moved, route(moved, 'C', 5000));
    await c!.set(stale, route(stale, 'C', 100));
    const written = await b!.refresh([route(mine, 'B', 1500), route(missing, 'B', 1500), route(moved, 'B', 1500), route(stale, 'B', 1500)]);
    expect(written).toBe(3);
    expect((await b!.lookup(mine))?.lastSeen).toBe(1500);
    expect((await b!.lookup(missing))?.node).toBe('B');
    expect((await b!.lookup(moved))?.node).toBe('C');
    expect((await b!.lookup(stale))?.node).toBe('B');
  });

  it('counts failed writes instead of throwing when Redis is unreachable', async () => {
    const c = createRedisClient('redis://127.0.0.1:1');
    c.on('error', () => {});
    const r = new RedisPushRouter({ redis: c, nodeId: 'B' });
    const u = randomBytes(16).toString('hex');
    r.update(u, route(u, 'B', 1));
    await until(async () => r.counters.errors === 1);
    c.disconnect();
  });
});
