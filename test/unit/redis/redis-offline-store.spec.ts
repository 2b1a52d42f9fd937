import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PushConfigError } from '../../../lib/errors/push-config.error.js';
import { createRedisClient } from '../../../lib/redis/redis-connection.js';
import { RedisOfflineStore, type RedisOfflineStoreOptions } from '../../../lib/redis/redis-offline-store.js';
import { RedisPushRouter } from '../../../lib/redis/redis-push-router.js';
import { OfflineStoreFullError, type StoreDrop } from '../../../lib/store/offline-store.js';
import { startRedis, type TestRedis } from '../../helpers/redis-server.js';
import { describeOfflineStoreContract } from '../store/offline-store.contract.js';

let redis: TestRedis;
const clients: Redis[] = [];
const stores: RedisOfflineStore[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.dispose();
});
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const c of clients.splice(0)) c.disconnect();
});

/** A store on its own connection (a "node"), with a fresh key prefix per test unless given. */
async function store(options: Partial<RedisOfflineStoreOptions> = {}, prefix = `t${randomBytes(3).toString('hex')}:`): Promise<RedisOfflineStore> {
  const client = createRedisClient(redis.url);
  clients.push(client);
  const s = new RedisOfflineStore({ redis: client, keyPrefix: prefix, ...options });
  stores.push(s);
  await s.open();
  return s;
}

function client(): Redis {
  const c = new Redis(redis.url);
  clients.push(c);
  return c;
}

const uuid = () => randomBytes(16).toString('hex');

// The semantics every store shares, as the memory and LMDB stores run them. Limits and
// stats are Redis's own (maxmemory, INFO), so the suite's limit cases are not part of it.
const contractStore = (retention?: RedisOfflineStoreOptions['messageRetention']) =>
  new RedisOfflineStore({ redis: createRedisClient(redis.url), ownsClient: true, keyPrefix: `c${randomBytes(3).toString('hex')}:`, messageRetention: retention });
describeOfflineStoreContract('RedisOfflineStore', () => contractStore(), { localAccounting: false });
describeOfflineStoreContract('RedisOfflineStore (queue of 1)', () => contractStore({ queue: 1, ttlMs: 3_600_000 }), { localAccounting: false });

describe('RedisOfflineStore on a real Redis: its own cases', () => {
  it('notice: a flag with a version; an ack of an older version keeps the newer one', async () => {
    const s = await store();
    const u = uuid();
    const a = await s.write(u, { kind: 'notice' });
    expect(a).toMatchObject({ kind: 'notice', replaced: 0, head: true });
    expect(a.version).toBeGreaterThan(0);
    expect(a.version).toBeLessThanOrEqual(0xffffffff);
    const b = await s.write(u, { kind: 'notice' });
    expect(b.version).not.toBe(a.version);
    expect((await s.read(u))?.notice).toBe(b.version);
    expect(await s.ackNotice(u, a.version)).toEqual({ cleared: false, remaining: true });
    expect(await s.ackNotice(u, b.version)).toEqual({ cleared: true, remaining: false });
    expect(await s.read(u)).toBeNull();
    expect(await s.ackNotice(u, b.version)).toEqual({ cleared: false, remaining: false });
  });

  it('category: masks OR in (all 64 bits), an ack clears exactly its bits', async () => {
    const s = await store();
    const u = uuid();
    const high = 1n << 63n;
    const w1 = await s.write(u, { kind: 'category', mask: 0b0101n });
    expect(w1.mask).toBe(0b0101n);
    const w2 = await s.write(u, { kind: 'category', mask: high | (1n << 32n) | 0b0010n });
    expect(w2).toMatchObject({ kind: 'category', replaced: 0, head: true });
    expect(w2.mask).toBe(high | (1n << 32n) | 0b0111n);
    const st = await s.read(u);
    expect(st).toMatchObject({ category: high | (1n << 32n) | 0b0111n, categoryVersion: w2.version, notice: 0, messageVersion: 0, message: null });
    expect(await s.ackCategory(u, 0b0001n | high)).toBe((1n << 32n) | 0b0110n);
    expect(await s.ackCategory(u, 0xffff_ffff_ffff_ffffn)).toBe(0n);
    expect(await s.read(u)).toBeNull();
    expect(await s.ackCategory(u, 1n)).toBe(0n);
  });

  it('message (latest-only): each write replaces the pending one and reports its version; content is binary-safe', async () => {
    const s = await store();
    const u = uuid();
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const a = await s.write(u, { kind: 'message', content: Buffer.from('first') });
    expect(a).toMatchObject({ kind: 'message', replaced: 0, head: true });
    const b = await s.write(u, { kind: 'message', content: bytes });
    expect(b).toMatchObject({ replaced: a.version, head: true });
    const st = await s.read(u);
    expect(st?.messageVersion).toBe(b.version);
    expect(Buffer.compare(st!.message!, bytes)).toBe(0);
    expect(await s.ackMessage(u, a.version)).toEqual({ cleared: false, remaining: true });
    expect(await s.ackMessage(u, b.version)).toEqual({ cleared: true, remaining: false });
    expect(await s.read(u)).toBeNull();
  });

  it('kinds are independent: acking one leaves the others pending', async () => {
    const s = await store();
    const u = uuid();
    const n = await s.write(u, { kind: 'notice' });
    await s.write(u, { kind: 'category', mask: 4n });
    const m = await s.write(u, { kind: 'message', content: Buffer.from([0, 0xff, 0]) });
    expect(await s.ackMessage(u, m.version)).toEqual({ cleared: true, remaining: false });
    expect(await s.read(u)).toMatchObject({ notice: n.version, category: 4n, message: null, messageVersion: 0 });
    await s.ackNotice(u, n.version);
    expect(await s.read(u)).toMatchObject({ notice: 0, category: 4n });
    await s.ackCategory(u, 4n);
    expect(await s.read(u)).toBeNull();
  });

  it('queue mode: FIFO, read shows the head, acking the head reports what remains, a full queue drops its oldest', async () => {
    const s = await store({ messageRetention: { queue: 3, ttlMs: 60_000 } });
    const u = uuid();
    const w = [];
    for (const text of ['m1', 'm2', 'm3']) w.push(await s.write(u, { kind: 'message', content: Buffer.from(text) }));
    expect(w.map((r) => r.head)).toEqual([true, false, false]);
    expect(w.map((r) => r.replaced)).toEqual([0, 0, 0]);
    expect((await s.read(u))?.message?.toString()).toBe('m1');
    expect((await s.read(u))?.messageVersion).toBe(w[0]!.version);
    // Only the head can be acked.
    expect(await s.ackMessage(u, w[1]!.version)).toEqual({ cleared: false, remaining: true });
    expect(await s.ackMessage(u, w[0]!.version)).toEqual({ cleared: true, remaining: true });
    expect((await s.read(u))?.message?.toString()).toBe('m2');
    const m4 = await s.write(u, { kind: 'message', content: Buffer.from('m4') });
    expect(m4).toMatchObject({ replaced: 0, head: false });
    const m5 = await s.write(u, { kind: 'message', content: Buffer.from('m5') });
    expect(m5).toMatchObject({ replaced: w[1]!.version, head: false });
    expect((await s.read(u))?.message?.toString()).toBe('m3');
    for (const [v, text, remaining] of [[w[2]!.version, 'm4', true], [m4.version, 'm5', true], [m5.version, null, false]] as const) {
      expect(await s.ackMessage(u, v)).toEqual({ cleared: true, remaining });
      expect((await s.read(u))?.message?.toString() ?? null).toBe(text);
    }
  });

  it('queue mode: a queue of one behaves like latest-only (the new message is the head)', async () => {
    const s = await store({ messageRetention: { queue: 1, ttlMs: 60_000 } });
    const u = uuid();
    const a = await s.write(u, { kind: 'message', content: Buffer.from('a') });
    const b = await s.write(u, { kind: 'message', content: Buffer.from('b') });
    expect(b).toMatchObject({ replaced: a.version, head: true });
  });

  it('queue mode: expired messages are dropped and reported on drops as expired', async () => {
    const s = await store({ messageRetention: { queue: 10, ttlMs: 60 } });
    const drops: StoreDrop[] = [];
    s.drops.subscribe((d) => drops.push(d));
    const u = uuid();
    const a = await s.write(u, { kind: 'message', content: Buffer.from('a') });
    const b = await s.write(u, { kind: 'message', content: Buffer.from('b') });
    await new Promise((r) => setTimeout(r, 100));
    const c = await s.write(u, { kind: 'message', content: Buffer.from('c') });
    // The expired ones went first, so the new message is the head.
    expect(c.head).toBe(true);
    expect(drops).toEqual([
      { uuid: u, kind: 'message', version: a.version, reason: 'expired' },
      { uuid: u, kind: 'message', version: b.version, reason: 'expired' },
    ]);
    await new Promise((r) => setTimeout(r, 100));
    expect(await s.read(u)).toBeNull();
    expect(drops.map((d) => d.version)).toEqual([a.version, b.version, c.version]);
  });

  it('versions from two nodes interleave on one device and either node acks by version', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s1 = await store({}, prefix);
    const s2 = await store({}, prefix);
    const u = uuid();
    const a = await s1.write(u, { kind: 'message', content: Buffer.from('from 1') });
    const b = await s2.write(u, { kind: 'message', content: Buffer.from('from 2') });
    expect(b.replaced).toBe(a.version);
    expect((await s1.read(u))?.message?.toString()).toBe('from 2');
    expect(await s1.ackMessage(u, b.version)).toEqual({ cleared: true, remaining: false });
    expect(await s2.read(u)).toBeNull();
  });

  it('a write that replaces a message written by another node names that node (latest-only and queue)', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    for (const messageRetention of ['latest', { queue: 1, ttlMs: 60_000 }] as const) {
      const a = await store({ nodeId: 'A', messageRetention }, prefix);
      const b = await store({ nodeId: 'B', messageRetention }, prefix);
      const seen: unknown[] = [];
      a.replacedElsewhere.subscribe((r) => seen.push({ by: 'A', ...r }));
      b.replacedElsewhere.subscribe((r) => seen.push({ by: 'B', ...r }));
      const u = uuid();
      const v1 = await a.write(u, { kind: 'message', content: Buffer.from('a1') });
      const v2 = await a.write(u, { kind: 'message', content: Buffer.from('a2') });
      const v3 = await b.write(u, { kind: 'message', content: Buffer.from('b1') });
      expect([v2.replaced, v3.replaced]).toEqual([v1.version, v2.version]);
      expect(seen).toEqual([{ by: 'B', uuid: u, version: v2.version, origin: 'A' }]);
      expect((await a.read(u))?.message?.toString()).toBe('b1');
    }
  });

  it('remove drops everything (both keys)', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s = await store({ messageRetention: { queue: 4, ttlMs: 60_000 } }, prefix);
    const u = uuid();
    await s.write(u, { kind: 'notice' });
    await s.write(u, { kind: 'category', mask: 1n });
    await s.write(u, { kind: 'message', content: Buffer.from('x') });
    const c = client();
    expect((await c.keys(`${prefix}*`)).sort()).toEqual([`${prefix}{${u}}:p`, `${prefix}{${u}}:q`]);
    await s.remove(u);
    expect(await s.read(u)).toBeNull();
    expect(await c.keys(`${prefix}*`)).toEqual([]);
  });

  it('keys are hash-tagged by device and drained devices leave no keys', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s = await store({}, prefix);
    const u = uuid();
    const m = await s.write(u, { kind: 'message', content: Buffer.from('x') });
    const c = client();
    expect(await c.keys(`${prefix}*`)).toEqual([`${prefix}{${u}}:p`]);
    await s.ackMessage(u, m.version);
    expect(await c.keys(`${prefix}*`)).toEqual([]);
  });

  it('ttlMs: every write sets a PEXPIRE on the device keys; the state is gone after it', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s = await store({ ttlMs: 150 }, prefix);
    const u = uuid();
    await s.write(u, { kind: 'notice' });
    const pttl = await client().pttl(`${prefix}{${u}}:p`);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(150);
    await new Promise((r) => setTimeout(r, 250));
    expect(await s.read(u)).toBeNull();
  });

  it('limits: Redis at maxmemory (noeviction) refuses writes with OfflineStoreFullError, reads still work', async () => {
    const s = await store();
    const u = uuid();
    await s.write(u, { kind: 'notice' });
    const admin = client();
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
    await admin.config('SET', 'maxmemory', '1');
    try {
      await expect(s.write(u, { kind: 'message', content: Buffer.from('x') })).rejects.toBeInstanceOf(OfflineStoreFullError);
      expect((await s.read(u))?.notice).toBeGreaterThan(0);
    } finally {
      await admin.config('SET', 'maxmemory', '0');
    }
    await expect(s.write(u, { kind: 'message', content: Buffer.from('x') })).resolves.toMatchObject({ kind: 'message' });
  });

  it('stats are approximate figures read from Redis', async () => {
    const s = await store();
    await s.write(uuid(), { kind: 'notice' });
    const st = await s.refreshStats();
    expect(st.devices).toBeGreaterThanOrEqual(1);
    expect(st.bytes).toBeGreaterThan(0);
    expect(st.maxBytes).toBeGreaterThan(0);
    expect(s.stats()).toEqual(st);
  });

  it('rejects bad options at construction', () => {
    const c = client();
    expect(() => new RedisOfflineStore({ redis: c, messageRetention: { queue: 0, ttlMs: 1 } })).toThrow(PushConfigError);
    expect(() => new RedisOfflineStore({ redis: c, messageRetention: 'all' as never })).toThrow(PushConfigError);
    expect(() => new RedisOfflineStore({ redis: c, ttlMs: 0 })).toThrow(PushConfigError);
  });
});

describe('RedisOfflineStore: readRoutes', () => {
  const route = (u: string) => ({ uuid: u, node: 'node-B', transport: 'udp' as const, address: '127.0.0.1', port: 4000, lastSeen: Date.now() });

  it('each write reports the node of the route RedisPushRouter wrote under the same prefix; null when none', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s = await store({ readRoutes: true, ttlMs: 60_000 }, prefix);
    const router = new RedisPushRouter({ redis: client(), nodeId: 'node-B', keyPrefix: prefix });
    const u = uuid();
    expect(await s.write(u, { kind: 'notice' })).toMatchObject({ kind: 'notice', route: null });
    // Reading the route creates no key.
    expect(await client().exists(`${prefix}{${u}}:r`)).toBe(0);
    expect(await router.set(u, route(u))).toBe(true);
    expect((await s.write(u, { kind: 'notice' })).route).toBe('node-B');
    const c = await s.write(u, { kind: 'category', mask: 6n });
    expect(c).toMatchObject({ route: 'node-B', mask: 6n });
    const m1 = await s.write(u, { kind: 'message', content: Buffer.from('a') });
    const m2 = await s.write(u, { kind: 'message', content: Buffer.from('b') });
    expect(m2).toMatchObject({ route: 'node-B', replaced: m1.version, head: true });
    // The route is only read: its TTL is the router's, not the store's.
    expect(await client().pttl(`${prefix}{${u}}:r`)).toBeGreaterThan(s.ttlMs);
    // Gone once the holder's offline deletes it.
    expect(await router.set(u, null)).toBe(true);
    expect((await s.write(u, { kind: 'notice' })).route).toBeNull();
    // A route under another prefix is another cluster's.
    await new RedisPushRouter({ redis: client(), nodeId: 'node-C', keyPrefix: `x${prefix}` }).set(u, route(u));
    expect((await s.write(u, { kind: 'notice' })).route).toBeNull();
  });

  it('queue mode: the route is reported and replaced/expired entries still come out right', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s = await store({ readRoutes: true, messageRetention: { queue: 1, ttlMs: 60 } }, prefix);
    const drops: StoreDrop[] = [];
    s.drops.subscribe((d) => drops.push(d));
    const u = uuid();
    await new RedisPushRouter({ redis: client(), nodeId: 'node-B', keyPrefix: prefix }).set(u, route(u));
    const m1 = await s.write(u, { kind: 'message', content: Buffer.from('a') });
    expect(m1).toMatchObject({ route: 'node-B', replaced: 0, head: true });
    const m2 = await s.write(u, { kind: 'message', content: Buffer.from('b') });
    expect(m2).toMatchObject({ route: 'node-B', replaced: m1.version, head: true });
    await new Promise((r) => setTimeout(r, 80));
    const m3 = await s.write(u, { kind: 'message', content: Buffer.from('c') });
    expect(m3).toMatchObject({ route: 'node-B', replaced: 0, head: true });
    expect(drops).toEqual([{ uuid: u, kind: 'message', version: m2.version, reason: 'expired' }]);
  });

  it('off by default: writes leave route undefined even when a route is stored', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const s = await store({}, prefix);
    expect(s.readRoutes).toBe(false);
    const u = uuid();
    await new RedisPushRouter({ redis: client(), nodeId: 'node-B', keyPrefix: prefix }).set(u, route(u));
    const w = await s.write(u, { kind: 'notice' });
    expect(w.route).toBeUndefined();
    expect('route' in w).toBe(false);
  });
});

describe('RedisOfflineStore: atomicity under concurrency', () => {
  it('1000 interleaved writes and acks for one device from two connections leave a consistent state', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const a = await store({}, prefix);
    const b = await store({}, prefix);
    const u = uuid();
    const writes: { version: number; replaced: number }[] = [];
    const cleared: number[] = [];
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 1000; i++) {
      const s = i % 2 === 0 ? a : b;
      if (i % 3 === 2 && writes.length > 0) {
        // Ack a version seen recently (often the pending one, sometimes an older one).
        const v = writes[writes.length - 1 - (i % 2)]?.version ?? writes[writes.length - 1]!.version;
        ops.push(s.ackMessage(u, v).then((r) => r.cleared && cleared.push(v)));
      } else {
        ops.push(s.write(u, { kind: 'message', content: Buffer.from(`m${i}`) }).then((r) => writes.push(r)));
      }
    }
    await Promise.all(ops);
    const versions = new Set(writes.map((w) => w.version));
    expect(versions.size).toBe(writes.length);
    const replaced = writes.map((w) => w.replaced).filter((v) => v !== 0);
    // Every version left the store at most once: replaced by exactly one write, or cleared by one ack, never both.
    expect(new Set(replaced).size).toBe(replaced.length);
    expect(new Set(cleared).size).toBe(cleared.length);
    for (const v of cleared) expect(replaced).not.toContain(v);
    for (const v of [...replaced, ...cleared]) expect(versions.has(v)).toBe(true);
    // Exactly one version is left (or none, if the last operation was a clearing ack) and it is what read shows.
    const gone = new Set([...replaced, ...cleared]);
    const left = [...versions].filter((v) => !gone.has(v));
    const st = await a.read(u);
    expect(left.length).toBeLessThanOrEqual(1);
    expect(st?.messageVersion ?? 0).toBe(left[0] ?? 0);
    // Each write that found nothing pending started a chain that ended with an ack or is the one left.
    expect(writes.filter((w) => w.replaced === 0).length).toBe(cleared.length + left.length);
  });

  it('concurrent category writes from two connections lose no bit', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`;
    const a = await store({}, prefix);
    const b = await store({}, prefix);
    const u = uuid();
    await Promise.all(Array.from({ length: 64 }, (_, i) => (i % 2 ? a : b).write(u, { kind: 'category', mask: 1n << BigInt(i) })));
    expect((await a.read(u))?.category).toBe(0xffff_ffff_ffff_ffffn);
    // Concurrent acks of disjoint halves clear everything.
    await Promise.all(Array.from({ length: 64 }, (_, i) => (i % 2 ? b : a).ackCategory(u, 1n << BigInt(i))));
    expect(await a.read(u)).toBeNull();
  });
});
