import { randomBytes } from 'node:crypto';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../../lib/client/device.client.js';
import { DeviceEngine } from '../../../lib/device/device-engine.js';
import { PushDispatcher } from '../../../lib/dispatch/push-dispatcher.js';
import { createRedisClient, SUBSCRIBER_CONNECTION_OVERRIDES } from '../../../lib/redis/redis-connection.js';
import { RedisOfflineStore } from '../../../lib/redis/redis-offline-store.js';
import { type ClusterMembershipEvent, RedisPushCluster, type RedisPushClusterOptions } from '../../../lib/redis/redis-push-cluster.js';
import { RedisPushRouter } from '../../../lib/redis/redis-push-router.js';
import { DeviceTransportStrategy } from '../../../lib/server/device-transport.strategy.js';
import { useRedisServer } from '../../helpers/redis-server.js';

const server = useRedisServer({ beforeAll, afterAll, afterEach });
const cleanup = server.cleanup;

type NodeOptions = Partial<Omit<RedisPushClusterOptions, 'redis' | 'subscriber' | 'nodeId' | 'engine' | 'router' | 'store' | 'keyPrefix'>> & {
  /** The store reads routes with its writes (as the `redisCluster` plugin wires it). Default true. */
  readRoutes?: boolean;
};

/** One in-process node: store, router, engine with a real device port, cluster link, dispatcher. */
async function node(prefix: string, nodeId: string, { readRoutes = true, ...options }: NodeOptions = {}) {
  const client = createRedisClient(server.redis.url);
  const subscriber = client.duplicate(SUBSCRIBER_CONNECTION_OVERRIDES);
  subscriber.on('error', () => {});
  const store = new RedisOfflineStore({ redis: client, ownsClient: true, keyPrefix: prefix, nodeId, readRoutes });
  await store.open();
  const router = new RedisPushRouter({ redis: client, nodeId, keyPrefix: prefix });
  const engine = new DeviceEngine(store, router, { nodeId });
  const transport = new DeviceTransportStrategy(engine, { host: '127.0.0.1', port: 0 });
  await transport.start();
  const cluster = new RedisPushCluster({ redis: client, subscriber, nodeId, engine, router, store, keyPrefix: prefix, heartbeatMs: 100, nodeTimeoutMs: 1000, ...options });
  await cluster.start();
  const dispatcher = new PushDispatcher(engine, store, { timeoutMs: 1500 }, cluster);
  let closed = false;
  const n = {
    nodeId,
    client,
    subscriber,
    store,
    router,
    engine,
    cluster,
    dispatcher,
    port: transport.port,
    /** Clean shutdown (leaves the registry). */
    async close() {
      if (closed) return;
      closed = true;
      dispatcher.close();
      await transport.close();
      engine.close();
      await cluster.close();
      await store.close();
    },
    /** Like a SIGKILL as far as Redis can tell: both connections drop, nothing is said. */
    async crash() {
      closed = true;
      client.disconnect();
      subscriber.disconnect();
      dispatcher.close();
      await transport.close();
      engine.close();
    },
  };
  cleanup.push(() => n.close());
  return n;
}

async function device(port: number, key: string, transport: 'udp' | 'tcp' = 'udp') {
  const d = new DeviceClient({ port, key, transport, heartbeatIntervalMs: 0 });
  cleanup.push(() => d.close());
  return d;
}

/** Connects a device to a node and waits until its route is in Redis. */
async function online(n: { engine: DeviceEngine; router: RedisPushRouter; nodeId: string }, d: DeviceClient) {
  const seen = firstValueFrom(n.engine.events.pipe(filter((e) => e.type === 'online' && e.uuid === d.uuid), timeout(2000)));
  await d.connect();
  await seen;
  const deadline = Date.now() + 2000;
  while ((await n.router.lookup(d.uuid))?.node !== n.nodeId) {
    if (Date.now() > deadline) throw new Error(`route of ${d.uuid} not written`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits until every node sees every other one. */
async function meshed(...nodes: { cluster: RedisPushCluster }[]) {
  const ids = nodes.map((n) => n.cluster.nodeId).sort();
  const deadline = Date.now() + 2000;
  while (!nodes.every((n) => [...n.cluster.liveNodes].sort().join() === ids.join())) {
    if (Date.now() > deadline) throw new Error('nodes did not see each other within 2 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const prefix = () => `c${randomBytes(3).toString('hex')}:`;
/** `node`, for the gateway suite that shadows it to pin `readRoutes`. */
const nodeOf = node;

describe('RedisPushCluster registry', () => {
  it('nodes learn joins and clean leaves within a few heartbeats', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    expect([...a.cluster.liveNodes]).toEqual(['A']);
    const events: ClusterMembershipEvent[] = [];
    a.cluster.membership.subscribe((e) => events.push(e));
    const t0 = Date.now();
    const joined = firstValueFrom(a.cluster.membership.pipe(filter((e) => e.type === 'join' && e.node === 'B'), timeout(1000)));
    const b = await node(p, 'B');
    await joined;
    expect(Date.now() - t0).toBeLessThan(1000);
    expect([...b.cluster.liveNodes].sort()).toEqual(['A', 'B']);
    expect([...a.cluster.liveNodes].sort()).toEqual(['A', 'B']);
    const left = firstValueFrom(a.cluster.membership.pipe(filter((e) => e.type === 'leave' && e.node === 'B'), timeout(1000)));
    const t1 = Date.now();
    await b.close();
    await left;
    // A clean leave removes the node from the registry: learned at the next heartbeat, not after the node timeout.
    expect(Date.now() - t1).toBeLessThan(600);
    expect([...a.cluster.liveNodes]).toEqual(['A']);
    expect(events.map((e) => `${e.type}:${e.node}`)).toEqual(['join:B', 'leave:B']);
  });

  it('ping() answers while Redis and the gateway subscription are up, and rejects fast when they are not', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    await expect(a.cluster.ping()).resolves.toBeUndefined();
    const ended = new Promise((r) => a.subscriber.once('end', r));
    a.subscriber.disconnect();
    await ended;
    await expect(a.cluster.ping()).rejects.toThrow(/subscriber/);
    const closed = new Promise((r) => a.client.once('end', r));
    a.client.disconnect();
    await closed;
    const t0 = Date.now();
    await expect(a.cluster.ping()).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(500);
  });

  it('a node that dies without a word is dropped once it stops announcing (heartbeat + node timeout)', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    await new Promise((r) => setTimeout(r, 150));
    expect(a.cluster.liveNodes.has('B')).toBe(true);
    const t0 = Date.now();
    const left = firstValueFrom(a.cluster.membership.pipe(filter((e) => e.type === 'leave' && e.node === 'B'), timeout(3000)));
    await b.crash();
    await left;
    // Not before its last announcement is nodeTimeoutMs old, and within a heartbeat or two after.
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(800);
    expect(took).toBeLessThan(2000);
  });

  it('a dead peer found by a delivery nobody received is dropped at once, not after the node timeout', async () => {
    const p = prefix();
    const a = await node(p, 'A', { nodeTimeoutMs: 10_000 });
    const b = await node(p, 'B', { nodeTimeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 150));
    await b.crash();
    // Let Redis see the subscriber's socket close.
    await new Promise((r) => setTimeout(r, 50));
    const left = firstValueFrom(a.cluster.membership.pipe(filter((e) => e.type === 'leave' && e.node === 'B'), timeout(500)));
    a.cluster.deliver('B', { uuid: randomBytes(16).toString('hex'), kind: 'notice', version: 1, origin: 'A' });
    await left;
    expect(a.cluster.liveNodes.has('B')).toBe(false);
    // It stays out while its registry entry is stale.
    await new Promise((r) => setTimeout(r, 300));
    expect(a.cluster.liveNodes.has('B')).toBe(false);
  });
});

// Both ways of finding the holder: the route read by the store's write (`locateKnown`), or looked up (`locate`).
describe.each([
  { readRoutes: true, how: 'route read with the write' },
  { readRoutes: false, how: 'route looked up' },
])('RedisPushCluster gateway ($how)', ({ readRoutes }) => {
  const node = (p: string, id: string, options: NodeOptions = {}) => nodeOf(p, id, { readRoutes, ...options });

  it('a push dispatched on A for a device on B is transmitted by B and its ack settles A: success, node B', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    const d = await device(b.port, 'gw-1');
    await online(b, d);
    const got = firstValueFrom(d.messages.pipe(filter((m) => m.kind === 'message'), timeout(2000)));
    expect(await a.cluster.locate(d.uuid)).toBe('B');
    expect(await b.cluster.locate(d.uuid)).toBeNull();
    expect(await a.cluster.locateKnown(d.uuid, 'B')).toBe('B');
    expect(await b.cluster.locateKnown(d.uuid, 'B')).toBeNull();
    expect(await a.cluster.locateKnown(d.uuid, null)).toBeNull();
    const o = await a.dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.from('hello from A') }, { source: 'service' });
    expect(o).toMatchObject({ status: 'success', node: 'B', transport: 'udp', uuid: d.uuid });
    expect(o.timeline.acked).toBeGreaterThanOrEqual(o.timeline.sent!);
    expect((await got).content.toString()).toBe('hello from A');
    expect(await b.store.read(d.uuid)).toBeNull();
    // Category acks carry the masks across.
    const c = await a.dispatcher.dispatch(d.uuid, { kind: 'category', mask: (1n << 63n) | 1n }, { source: 'service' });
    expect(c).toMatchObject({ status: 'success', node: 'B', kind: 'category' });
  });

  it('garbage published on a gateway channel is counted and dropped; the node keeps working', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    await meshed(a, b);
    for (const junk of ['not json', '{}', '["a","u","c",1,2,"zz","qq"]']) await a.client.publish(`${p}gw:B`, junk);
    const deadline = Date.now() + 1000;
    while (b.cluster.counters.malformed < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(b.cluster.counters.malformed).toBe(3);
    const d = await device(b.port, 'after-junk');
    await online(b, d);
    expect(await a.dispatcher.dispatch(d.uuid, { kind: 'notice' }, { source: 'service' })).toMatchObject({ status: 'success', node: 'B' });
  });

  it('ack "none": success once B wrote it to the socket', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    const d = new DeviceClient({ port: b.port, key: 'gw-none', heartbeatIntervalMs: 0, autoAck: false });
    cleanup.push(() => d.close());
    await online(b, d);
    const o = await a.dispatcher.dispatch(d.uuid, { kind: 'notice' }, { source: 'service', ack: 'none' });
    expect(o).toMatchObject({ status: 'success', node: 'B' });
    expect(o.timeline.acked).toBeUndefined();
  });

  it('a device held by no live node is offline at once (the push stays pending for its next heartbeat)', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const u = randomBytes(16).toString('hex');
    const o = await a.dispatcher.dispatch(u, { kind: 'notice' }, { source: 'service' });
    expect(o).toMatchObject({ status: 'offline', node: 'A' });
    expect((await a.store.read(u))?.notice).toBe(o.version);
  });

  it('a route naming a node A has not heard of yet: A reads the registry again and delivers through it', async () => {
    const p = prefix();
    // A's own registry reads are an hour apart: only the recheck can tell it about B.
    const a = await node(p, 'A', { heartbeatMs: 3_600_000, nodeTimeoutMs: 7_200_000 });
    const b = await node(p, 'B');
    expect(a.cluster.liveNodes.has('B')).toBe(false);
    const d = await device(b.port, 'gw-new-node');
    await online(b, d);
    expect(await a.dispatcher.dispatch(d.uuid, { kind: 'notice' }, { source: 'service' })).toMatchObject({ status: 'success', node: 'B' });
    expect(a.cluster.liveNodes.has('B')).toBe(true);
  });

  it('a route left by a node that is not in the registry: offline at once, the push stays pending', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const u = randomBytes(16).toString('hex');
    await new RedisPushRouter({ redis: a.client, nodeId: 'gone', keyPrefix: p }).set(u, { uuid: u, node: 'gone', transport: 'udp', address: '127.0.0.1', port: 1, lastSeen: Date.now() });
    expect(await a.cluster.locateKnown(u, 'gone')).toBeNull();
    const o = await a.dispatcher.dispatch(u, { kind: 'notice' }, { source: 'service' });
    expect(o).toMatchObject({ status: 'offline', node: 'A' });
    expect((await a.store.read(u))?.notice).toBe(o.version);
  });

  it('a holder that died before its registry entry went stale: timeout with reason node-unresponsive, not a hang', async () => {
    const p = prefix();
    const a = await node(p, 'A', { nodeTimeoutMs: 10_000 });
    const b = await node(p, 'B', { nodeTimeoutMs: 10_000 });
    const d = await device(b.port, 'gw-dead');
    await online(b, d);
    await meshed(a, b);
    // Keep B "live" in A's eyes but gone: its subscriber drops, its process says nothing.
    b.subscriber.disconnect();
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    const o = await a.dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.from('x') }, { source: 'service', timeoutMs: 400 });
    expect(o).toMatchObject({ status: 'timeout', reason: 'node-unresponsive', node: 'B' });
    expect(Date.now() - t0).toBeLessThan(1500);
    expect((await a.store.read(d.uuid))?.message?.toString()).toBe('x');
  });

  it('remoteOnline pages through the devices reachable on every other live node', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B', { onlineBatch: 2 });
    const c = await node(p, 'C');
    const onB = await Promise.all(['r1', 'r2', 'r3'].map((k) => device(b.port, k)));
    const onC = await device(c.port, 'r4');
    const onA = await device(a.port, 'r5');
    for (const d of onB) await online(b, d);
    await online(c, onC);
    await online(a, onA);
    await meshed(a, b, c);
    const seen: string[] = [];
    for await (const u of a.cluster.remoteOnline({ aborted: false })) seen.push(u);
    expect(seen.sort()).toEqual([...onB, onC].map((d) => d.uuid).sort());
    // Aborting stops the enumeration.
    const signal = { aborted: false };
    const some: string[] = [];
    for await (const u of a.cluster.remoteOnline(signal)) {
      some.push(u);
      signal.aborted = true;
    }
    expect(some).toHaveLength(1);
  });

  it('routes lost while Redis was unreachable are re-announced when the connection comes back', async () => {
    const p = prefix();
    const b = await node(p, 'B');
    const d = await device(b.port, 'refresh-1', 'tcp');
    await online(b, d);
    await new Promise((r) => setTimeout(r, 50));
    const key = `${p}{${d.uuid}}:r`;
    expect(await b.client.exists(key)).toBe(1);
    await b.client.del(key);
    const ready = new Promise<void>((resolve) => b.client.once('ready', () => resolve()));
    b.client.disconnect(true);
    await ready;
    const deadline = Date.now() + 2000;
    while ((await b.client.exists(key)) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(await b.router.lookup(d.uuid)).toMatchObject({ node: 'B', transport: 'tcp' });
  });

  it("a message replaced by another node's push settles as replaced on its origin (not timeout)", async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    const c = await node(p, 'C');
    await meshed(a, b, c);
    const d = new DeviceClient({ port: b.port, key: 'replaced-remote', heartbeatIntervalMs: 0, autoAck: false });
    cleanup.push(() => d.close());
    const got: string[] = [];
    d.messages.subscribe((m) => got.push(m.content.toString()));
    await online(b, d);
    const first = a.dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.from('old') }, { source: 'service', timeoutMs: 5000 });
    await firstValueFrom(d.messages.pipe(filter((m) => m.kind === 'message'), timeout(2000)));
    const t0 = Date.now();
    const second = c.dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.from('new') }, { source: 'service', timeoutMs: 5000 });
    const o1 = await first;
    expect(o1).toMatchObject({ status: 'replaced', node: 'B' });
    expect(Date.now() - t0).toBeLessThan(1000);
    // The device got both frames and acks each (the first ack pays off the old one).
    const deadline = Date.now() + 2000;
    while (!got.includes('new') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(got).toEqual(['old', 'new']);
    d.ack('message');
    d.ack('message');
    expect(await second).toMatchObject({ status: 'success', node: 'B' });
  });

  it("the holder's own waiting push is replaced by a peer's push: replaced on the holder too", async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    await meshed(a, b);
    const d = new DeviceClient({ port: b.port, key: 'replaced-local', heartbeatIntervalMs: 0, autoAck: false });
    cleanup.push(() => d.close());
    await online(b, d);
    const local = b.dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.from('from B') }, { source: 'service', timeoutMs: 5000 });
    await firstValueFrom(d.messages.pipe(filter((m) => m.kind === 'message'), timeout(2000)));
    const t0 = Date.now();
    void a.dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.from('from A') }, { source: 'service', timeoutMs: 1000 });
    expect(await local).toMatchObject({ status: 'replaced', node: 'B' });
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('concurrent pushes from two origins to one device each settle on their own node', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    const c = await node(p, 'C');
    const d = await device(b.port, 'two-origins', 'tcp');
    await online(b, d);
    // A generous timeout: the whole unit suite runs in parallel on 2 cores, and this checks routing, not speed.
    const outcomes = await Promise.all([
      a.dispatcher.dispatch(d.uuid, { kind: 'notice' }, { source: 'service', timeoutMs: 5000 }),
      c.dispatcher.dispatch(d.uuid, { kind: 'category', mask: 2n }, { source: 'service', timeoutMs: 5000 }),
    ]);
    expect(outcomes.map((o) => `${o.status}@${o.node}`)).toEqual(['success@B', 'success@B']);
  });
});
