import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PushConfigError } from '../../../lib/errors/push-config.error.js';
import { TagLimitError } from '../../../lib/errors/tag-limit.error.js';
import { redisCluster } from '../../../lib/redis/redis-cluster.plugin.js';
import { createRedisClient } from '../../../lib/redis/redis-connection.js';
import { RedisPushTags, type RedisPushTagsOptions } from '../../../lib/redis/redis-push-tags.js';
import { useRedisServer } from '../../helpers/redis-server.js';
import { describePushTagsContract } from '../tags/push-tags.contract.js';

const server = useRedisServer({ beforeAll, afterAll, afterEach });

/** Tags on a connection of their own (a "node"); nodes given the same prefix share them. */
async function tags(options: Partial<RedisPushTagsOptions> = {}, keyPrefix = `g${randomBytes(3).toString('hex')}:`) {
  const client = createRedisClient(server.redis.url);
  server.cleanup.push(() => client.disconnect());
  const t = new RedisPushTags({ redis: client, keyPrefix, ...options });
  await t.open();
  return Object.assign(t, { client });
}

describePushTagsContract('RedisPushTags', ({ pageSize }) => tags({ pageSize }));

const uuid = () => randomBytes(16).toString('hex');
async function all(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const u of it) out.push(u);
  return out;
}

describe('RedisPushTags', () => {
  it('redisCluster() supplies them (maxTagsPerDevice passed on) and refuses a bad maxTagsPerDevice at once', async () => {
    const plugin = redisCluster({ url: server.redis.url, keyPrefix: 'p:', maxTagsPerDevice: 7 });
    const made = await plugin.createTags!('n1');
    expect(made).toBeInstanceOf(RedisPushTags);
    expect((made as RedisPushTags).maxTagsPerDevice).toBe(7);
    expect((made as RedisPushTags).keyPrefix).toBe('p:');
    plugin.client?.disconnect();
    for (const bad of [0, 1.5, -1]) {
      expect(() => redisCluster({ maxTagsPerDevice: bad })).toThrow(PushConfigError);
      expect(() => redisCluster({ maxTagsPerDevice: bad })).toThrow(/cluster\.maxTagsPerDevice/);
    }
  });

  it('is shared: a device tagged through one node is a member on another, and untagged from a third', async () => {
    const prefix = `s${randomBytes(3).toString('hex')}:`;
    const [a, b, c] = await Promise.all([tags({}, prefix), tags({}, prefix), tags({}, prefix)]);
    const u = uuid();
    await a.add(u, ['vip', 'beta']);
    expect(await all(b.members(['vip']))).toEqual([u]);
    expect((await b.tagsOf(u)).sort()).toEqual(['beta', 'vip']);
    await c.remove(u, ['vip']);
    expect(await all(a.members(['vip']))).toEqual([]);
    expect(await all(a.members(['beta']))).toEqual([u]);
    expect(a.size).toBe(-1);
  });

  it('maxTagsPerDevice: an add that would pass it adds none of its tags, even when two nodes race', async () => {
    const prefix = `l${randomBytes(3).toString('hex')}:`;
    const [a, b] = await Promise.all([tags({ maxTagsPerDevice: 3 }, prefix), tags({ maxTagsPerDevice: 3 }, prefix)]);
    const u = uuid();
    await a.add(u, ['t1', 't2']);
    const err = await b.add(u, ['t3', 't4']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TagLimitError);
    expect(err).toMatchObject({ max: 3, limit: 'maxTagsPerDevice' });
    expect((await a.tagsOf(u)).sort()).toEqual(['t1', 't2']);
    expect(await all(a.members(['t3', 't4']))).toEqual([]);
    // Racing adds for one device: the limit holds (one script per add), and whatever was added is a member.
    const v = uuid();
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).add(v, [`r${i}`])));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    const kept = (await a.tagsOf(v)).sort();
    expect(kept).toHaveLength(3);
    for (const t of kept) expect(await all(b.members([t]))).toEqual([v]);
  });

  it('calls on a connection that is down reject at once (nothing is claimed done); other nodes go on', async () => {
    const prefix = `d${randomBytes(3).toString('hex')}:`;
    const t = await tags({}, prefix);
    const u = uuid();
    const lost = await tags({}, prefix);
    lost.client.disconnect();
    await expect(lost.add(u, ['x'])).rejects.toThrow();
    await expect(lost.remove(u)).rejects.toThrow();
    await t.add(u, ['x']);
    expect(await all(t.members(['x']))).toEqual([u]);
  });
});
