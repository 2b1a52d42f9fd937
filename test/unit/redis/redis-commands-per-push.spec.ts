import { randomBytes } from 'node:crypto';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../../lib/client/device.client.js';
import { DeviceEngine } from '../../../lib/device/device-engine.js';
import { PushDispatcher } from '../../../lib/dispatch/push-dispatcher.js';
import { redisCluster } from '../../../lib/redis/redis-cluster.plugin.js';
import { RedisOfflineStore } from '../../../lib/redis/redis-offline-store.js';
import type { RedisPushCluster } from '../../../lib/redis/redis-push-cluster.js';
import { RedisPushRouter } from '../../../lib/redis/redis-push-router.js';
import { LocalPushRouter } from '../../../lib/router/local-push-router.js';
import { DeviceTransportStrategy } from '../../../lib/server/device-transport.strategy.js';
import { useRedisServer } from '../../helpers/redis-server.js';

/**
 * Counts the Redis commands a push costs, server side (INFO commandstats of a
 * redis-server of this file's own), on nodes wired by the `redisCluster`
 * plugin as an app would be. Every periodic command is pushed out of the
 * way (registry heartbeat and route refresh an hour apart) and the store's
 * stats refresh (INFO, DBSIZE) is not counted, so the deltas are the push's.
 * Commands a script runs count under their own names (HSET, HGET...): only
 * the ones clients send (EVALSHA, HGETALL, PUBLISH) are looked at.
 */
const server = useRedisServer({ beforeAll, afterAll, afterEach });
const cleanup = server.cleanup;

async function node(prefix: string, nodeId: string) {
  const plugin = redisCluster({ url: server.redis.url, keyPrefix: prefix, heartbeatMs: 3_600_000, nodeTimeoutMs: 7_200_000 });
  const store = await plugin.createStore(nodeId);
  await store.open();
  const router = await plugin.createRouter(nodeId);
  const engine = new DeviceEngine(store, router, { nodeId });
  const transport = new DeviceTransportStrategy(engine, { host: '127.0.0.1', port: 0 });
  await transport.start();
  const cluster = (await plugin.createCluster({ nodeId, engine, store, router })) as RedisPushCluster;
  const dispatcher = new PushDispatcher(engine, store, { timeoutMs: 2000 }, cluster);
  cleanup.push(async () => {
    dispatcher.close();
    await transport.close();
    engine.close();
    await cluster.close();
    await store.close();
  });
  return { nodeId, store: store as RedisOfflineStore, router: router as RedisPushRouter, engine, cluster, dispatcher, port: transport.port };
}

/** Calls per command name, as the server counts them. */
async function commandCalls(): Promise<Map<string, number>> {
  const info = await server.redis.command('INFO', 'commandstats');
  const calls = new Map<string, number>();
  for (const m of info.matchAll(/cmdstat_([\w|-]+):calls=(\d+)/g)) calls.set(m[1]!, Number(m[2]));
  return calls;
}

/** Client-sent commands (EVALSHA/EVAL, HGETALL, PUBLISH) issued while `fn` ran. */
async function counted(fn: () => Promise<unknown>): Promise<{ scripts: number; hgetall: number; publish: number }> {
  const before = await commandCalls();
  await fn();
  // Trailing commands of the holder (its store ack, its event forwards) land within a few ms.
  await new Promise((r) => setTimeout(r, 100));
  const after = await commandCalls();
  const d = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
  return { scripts: d('evalsha') + d('eval'), hgetall: d('hgetall'), publish: d('publish') };
}

const prefix = () => `k${randomBytes(3).toString('hex')}:`;

describe('Redis commands per push (redisCluster wiring)', () => {
  it('the plugin turns readRoutes on for its store, and off when the node routes elsewhere', async () => {
    const a = await node(prefix(), 'A');
    expect(a.store.readRoutes).toBe(true);
    // A wrapping plugin that pairs the Redis store with another router.
    const plugin = redisCluster({ url: server.redis.url, keyPrefix: prefix(), heartbeatMs: 3_600_000 });
    const store = (await plugin.createStore('L')) as RedisOfflineStore;
    await store.open();
    const router = new LocalPushRouter();
    const engine = new DeviceEngine(store, router, { nodeId: 'L' });
    const cluster = await plugin.createCluster({ nodeId: 'L', engine, store, router });
    cleanup.push(async () => {
      engine.close();
      await cluster.close();
      await store.close();
    });
    expect(store.readRoutes).toBe(false);
    expect((await store.write(randomBytes(16).toString('hex'), { kind: 'notice' })).route).toBeUndefined();
  });

  it('a cross-node push: one script on the origin (the write reads the route), then the gateway PUBLISH; no route HGETALL', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    const b = await node(p, 'B');
    // The registry is read once per hour here: have A learn B now.
    await a.cluster.tick();
    expect(a.cluster.liveNodes.has('B')).toBe(true);
    const d = new DeviceClient({ port: b.port, key: 'count-1', heartbeatIntervalMs: 0 });
    cleanup.push(() => d.close());
    const seen = firstValueFrom(b.engine.events.pipe(filter((e) => e.type === 'online' && e.uuid === d.uuid), timeout(2000)));
    await d.connect();
    await seen;
    const deadline = Date.now() + 2000;
    while ((await b.router.lookup(d.uuid))?.node !== 'B') {
      if (Date.now() > deadline) throw new Error('route not written');
      await new Promise((r) => setTimeout(r, 5));
    }
    // Warm-up: the first use of each script on this server is a NOSCRIPT + EVAL.
    expect(await a.dispatcher.dispatch(d.uuid, { kind: 'notice' }, { source: 'service' })).toMatchObject({ status: 'success', node: 'B' });

    const c = await counted(async () => {
      expect(await a.dispatcher.dispatch(d.uuid, { kind: 'notice' }, { source: 'service' })).toMatchObject({ status: 'success', node: 'B' });
    });
    // A: the write script; B: the read of what is pending and the ack.
    // PUBLISHes: A's delivery to B, B's sent and ack events back to A.
    expect(c).toEqual({ scripts: 3, hgetall: 0, publish: 3 });
  });

  it('a push to a device with no route anywhere costs exactly one command: the write script', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    // Warm-up (script loading).
    await a.dispatcher.dispatch(randomBytes(16).toString('hex'), { kind: 'notice' }, { source: 'service' });
    const c = await counted(async () => {
      expect(await a.dispatcher.dispatch(randomBytes(16).toString('hex'), { kind: 'notice' }, { source: 'service' })).toMatchObject({ status: 'offline', node: 'A' });
    });
    expect(c).toEqual({ scripts: 1, hgetall: 0, publish: 0 });
  });

  it('without readRoutes (a store that does not know the route), the cluster looks the route up as before', async () => {
    const p = prefix();
    const a = await node(p, 'A');
    a.store.readRoutes = false;
    await a.dispatcher.dispatch(randomBytes(16).toString('hex'), { kind: 'notice' }, { source: 'service' });
    const c = await counted(async () => {
      expect(await a.dispatcher.dispatch(randomBytes(16).toString('hex'), { kind: 'notice' }, { source: 'service' })).toMatchObject({ status: 'offline', node: 'A' });
    });
    expect(c).toEqual({ scripts: 1, hgetall: 1, publish: 0 });
  });
});
