// The server under test, in its own process (so its CPU is its own): either
// nest-push (a real PushModule app from dist, as a user would run it) or the
// raw forwarder. Driven over IPC by bench/run.mjs:
//   start -> { ports }, stats -> counters + cpu, mem -> memoryUsage after GC, stop.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRawForwarder } from './raw-forwarder.mjs';

const dist = new URL('../../dist/', import.meta.url);
let server;

async function startNest(opts) {
  await import('reflect-metadata');
  const { NestFactory } = await import('@nestjs/core');
  const lib = await import(new URL('index.js', dist).href);
  const { PushModule, connectPushTransports, DeviceEngine, PushDispatcher, DeviceTransportStrategy, PusherTransportStrategy } = lib;
  let store = 'memory';
  let dataDir;
  if (opts.store === 'lmdb') {
    const file = new URL('store/lmdb-offline-store.js', dist);
    if (!existsSync(file)) throw new Error('dist/store/lmdb-offline-store.js not found');
    const mod = await import(file.href);
    const Store = Object.values(mod).find((v) => typeof v === 'function' && /lmdb/i.test(v.name));
    if (!Store) throw new Error('no LMDB store class exported by dist/store/lmdb-offline-store.js');
    dataDir = mkdtempSync(join(tmpdir(), 'nest-push-bench-'));
    store = new Store({ path: dataDir, ...(opts.durability ? { durability: opts.durability } : {}) });
  }
  const options = {
    device: { host: '127.0.0.1', port: 0 },
    pusher: { host: '127.0.0.1', port: 0 },
    nodeId: opts.nodeId,
    ...(opts.cluster ? {} : { store }),
  };
  if (opts.cluster) {
    const redis = await import(new URL('redis/index.js', dist).href);
    const make = redis.redisCluster;
    if (typeof make !== 'function') throw new Error('dist/redis exports no redisCluster()');
    options.cluster = make({ url: opts.cluster.url, keyPrefix: opts.cluster.keyPrefix });
  }
  const app = await NestFactory.createApplicationContext(PushModule.forRoot(options), { logger: ['error'] });
  await connectPushTransports(app);
  const engine = app.get(DeviceEngine);
  const dispatcher = app.get(PushDispatcher);
  const pusher = app.get(PusherTransportStrategy);
  return {
    ports: { device: app.get(DeviceTransportStrategy).port, pusher: pusher.port },
    stats: () => ({
      devices: engine.deviceCount,
      heartbeats: engine.counters.heartbeats,
      acks: engine.counters.acks,
      tasks: pusher.counters.accepted,
      outcomes: { ...dispatcher.counters },
      drops: Object.fromEntries(Object.entries(engine.counters.drops).filter(([, v]) => v > 0)),
      inFlight: dispatcher.inFlight,
    }),
    async close() {
      await app.close();
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

function memory() {
  for (let i = 0; i < 4; i++) globalThis.gc?.();
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, gc: typeof globalThis.gc };
}

process.on('message', async (msg) => {
  const reply = (body) => process.send({ id: msg.id, ...body });
  try {
    switch (msg.cmd) {
      case 'start':
        if (msg.args.impl !== 'raw' && msg.args.impl !== 'nest') throw new Error(`unknown server ${msg.args.impl}`);
        server = msg.args.impl === 'raw' ? await startRawForwarder(msg.args.opts) : await startNest(msg.args.opts ?? {});
        reply({ ports: server.ports, impl: msg.args.impl });
        break;
      case 'stats': {
        const cpu = process.cpuUsage();
        reply({ stats: server.stats(), cpuMs: (cpu.user + cpu.system) / 1000, at: performance.now() });
        break;
      }
      case 'mem':
        reply({ mem: memory() });
        break;
      case 'stop':
        await server?.close();
        reply({});
        process.exit(0);
    }
  } catch (err) {
    reply({ error: err instanceof Error ? err.stack : String(err) });
  }
});
process.send({ ready: true });
// The benchmark process died without stopping us (a crash, a closed pipe): do not linger as an orphan.
process.on('disconnect', () => process.exit(0));
