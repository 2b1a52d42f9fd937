#!/usr/bin/env node
// Cluster benchmark on one local redis-server (from dist/, like users run it):
//
// 1. Acked pushes/s with 1 node vs 2 nodes. Each node is its own process
//    (test/fixtures/cluster-node/main.mjs); simulated TCP devices (auto-ack)
//    live in another process. Each node runs a closed-loop load in-process:
//    `--window` concurrent PushService.push() calls of 100-byte 0x20 messages,
//    each waiting for its outcome before the next. "Acked" = the nodes'
//    `success` outcomes (the device acked). Two 2-node runs: "random" (each
//    node pushes to any device: about half are held by the other node and go
//    through the gateway, shared store + pub/sub) and "local" (each node
//    pushes to its own devices: shared store and registry, no gateway hop).
// 2. Cross-node latency: sequential PushService.push() on A for devices on B,
//    from send() to the acked outcome (store write, route lookup, PUBLISH, B's
//    store read + transmit, device ack, B's store ack, PUBLISH back), p50/p99;
//    and the same for devices on A itself, for comparison.
//    Baseline of the same run: the same hops with bare ioredis and a TCP echo
//    "device", each party its own process (see rawChain), and the ratio.
// 3. Redis commands per push: INFO commandstats delta over the 2-node run,
//    divided by the acked pushes (registry ticks included: ~1/s per node).
//
// Usage: npm run build && node bench/cluster.bench.mjs [--duration 5000] [--devices 1000] [--window 64] [--json file]
// Bounded: about 60 s with the defaults (hard stop at 90 s).
import { fork, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const NODE_MAIN = join(root, 'test/fixtures/cluster-node/main.mjs');
/** Commands a client sends (each one round trip); everything else in INFO commandstats is called from inside a script. */
const CLIENT_COMMANDS = new Set(['evalsha', 'eval', 'publish', 'hgetall', 'del', 'zrem', 'dbsize', 'ping', 'subscribe', 'unsubscribe', 'quit', 'client', 'select', 'hello', 'script']);

if (process.argv[2] === '--device-sim') await deviceSim();
else if (process.argv[2] === '--raw-device') rawDevice();
else if (process.argv[2] === '--raw-holder') await rawHolder(process.argv[3], process.argv[4], Number(process.argv[5]));
else if (process.argv[2] === '--raw-origin') await rawOrigin(process.argv[3], process.argv[4]);
else await main();

// ------------------------------------------------------------------ main

async function main() {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '5000' },
      devices: { type: 'string', default: '1000' },
      window: { type: 'string', default: '64' },
      json: { type: 'string' },
    },
  });
  const durationMs = Number(values.duration);
  const devicesPerNode = Number(values.devices);
  const windowPerNode = Number(values.window);
  const hardStop = setTimeout(() => {
    console.error('cluster bench: hard stop at 90 s');
    process.exit(2);
  }, 90_000);
  hardStop.unref();

  const { Redis } = await import('ioredis');
  const redis = await startRedis();
  const admin = new Redis(redis.url);
  const results = { machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version }, durationMs, devicesPerNode };
  const children = [];
  const stopAll = async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    admin.disconnect();
    await redis.stop();
  };
  process.on('SIGINT', async () => {
    await stopAll();
    process.exit(130);
  });

  try {
    // ---------------------------------------------------------- throughput
    const throughput = {};
    for (const [nodeCount, targets] of [[1, 'local'], [2, 'random'], [2, 'local']]) {
      const name = `${nodeCount}node${nodeCount > 1 ? `-${targets}` : ''}`;
      const prefix = `bench${nodeCount}${targets}:`;
      const nodes = await Promise.all(['A', 'B'].slice(0, nodeCount).map((id) => startNode(id, redis.url, prefix, children)));
      const sim = await startDeviceSim(children, nodes.map((n) => ({ node: n.id, port: n.devicePort, count: devicesPerNode })));
      await waitRoutes(nodes, sim);
      const all = sim.devices.flatMap((d) => d.uuids);
      // random: every node pushes to any device (half go through the gateway with 2 nodes);
      // local: each node pushes only to its own devices (an app that sends each push to the device's node).
      const lists = nodes.map((n) => (targets === 'local' ? sim.devices.find((d) => d.node === n.id).uuids : all));
      const load = (ms) =>
        Promise.all(nodes.map((n, i) => n.call('load', { ms, window: windowPerNode, uuids: lists[i], offset: Math.floor((i * lists[i].length) / nodes.length) })));
      await load(1000); // warm-up
      await settle(nodes);
      const before = await Promise.all(nodes.map((n) => n.call('stats')));
      const cmdBefore = await commandStats(admin);
      await load(durationMs);
      await settle(nodes);
      const after = await Promise.all(nodes.map((n) => n.call('stats')));
      const cmdAfter = await commandStats(admin);
      const delta = (k) => after.reduce((s, a, i) => s + a.outcomes[k] - before[i].outcomes[k], 0);
      const acked = delta('success');
      const commands = diffStats(cmdBefore, cmdAfter);
      // Commands sent by clients (one round trip each) vs. calls made inside the Lua scripts.
      const sent = Object.entries(commands).filter(([k]) => CLIENT_COMMANDS.has(k));
      const clientCommands = sent.reduce((a, [, v]) => a + v, 0);
      const totalCommands = Object.values(commands).reduce((a, b) => a + b, 0);
      const accepted = after.reduce((a, x, i) => a + x.engine.pushes - before[i].engine.pushes, 0);
      throughput[name] = {
        pushes: accepted,
        ackedPerSec: Math.round(acked / (durationMs / 1000)),
        outcomes: { success: acked, replaced: delta('replaced'), timeout: delta('timeout'), offline: delta('offline'), failure: delta('failure') },
        redisCommandsPerAcceptedPush: +(clientCommands / Math.max(1, accepted)).toFixed(2),
        redisCallsPerAcceptedPushInclScripts: +(totalCommands / Math.max(1, accepted)).toFixed(2),
        redisCommands: Object.fromEntries(sent),
        redisScriptCalls: Object.fromEntries(Object.entries(commands).filter(([k]) => !CLIENT_COMMANDS.has(k))),
        cluster: after.map((a) => ({ node: a.node, ...a.cluster })),
      };
      const t = throughput[name];
      console.log(
        `${name}: ${t.ackedPerSec} acked pushes/s (${JSON.stringify(t.outcomes)}), ` +
          `${t.redisCommandsPerAcceptedPush} Redis commands per push (${JSON.stringify(t.redisCommands)}; ${t.redisCallsPerAcceptedPushInclScripts} counting calls inside scripts)`,
      );

      if (nodeCount === 2 && targets === 'random') {
        // ------------------------------------------------------- latency
        const onB = sim.devices.find((d) => d.node === 'B').uuids.slice(0, 200);
        const onA = sim.devices.find((d) => d.node === 'A').uuids.slice(0, 200);
        await nodes[0].call('latency', { n: 100, uuids: onB }); // warm-up
        const cross = await nodes[0].call('latency', { n: 1000, uuids: onB });
        const local = await nodes[0].call('latency', { n: 1000, uuids: onA });
        results.latency = { crossNode: summary(cross.ms, cross.statuses), local: summary(local.ms, local.statuses) };
        console.log(`cross-node push -> acked outcome: p50 ${results.latency.crossNode.p50} ms, p99 ${results.latency.crossNode.p99} ms (${JSON.stringify(cross.statuses)})`);
        console.log(`same-node push  -> acked outcome: p50 ${results.latency.local.p50} ms, p99 ${results.latency.local.p99} ms`);
        // Baseline of the same run: the cross-node path's hops without nest-push.
        const raw = await rawChain(redis.url, children, 1000);
        results.latency.rawChain = summary(raw, {});
        const x = results.latency.crossNode;
        const r = results.latency.rawChain;
        console.log(
          `raw chain (same hops, bare ioredis + a TCP echo device): p50 ${r.p50} ms, p99 ${r.p99} ms; ` +
            `cross-node / raw: p50 ${(x.p50 / r.p50).toFixed(2)}x, p99 ${(x.p99 / r.p99).toFixed(2)}x`,
        );
      }
      sim.child.kill('SIGKILL');
      await Promise.all(nodes.map((n) => n.close()));
    }
    results.throughput = throughput;
    const one = Math.max(1, throughput['1node'].ackedPerSec);
    results.scaling = { random: +(throughput['2node-random'].ackedPerSec / one).toFixed(2), local: +(throughput['2node-local'].ackedPerSec / one).toFixed(2) };
    console.log(
      `scaling 2 nodes / 1 node: ${results.scaling.random}x with random targets, ${results.scaling.local}x with node-local targets ` +
        `(target >= 1.7x; ${cpus().length} CPU(s) shared by Redis, the nodes (which also generate the load) and the devices)`,
    );
    if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2));
  } finally {
    await stopAll();
  }
  process.exit(0);
}

/** Waits until no node has pushes awaiting their outcome (or 3 s). */
async function settle(nodes) {
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    const stats = await Promise.all(nodes.map((n) => n.call('stats')));
    if (stats.every((s) => s.inFlight === 0)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function waitRoutes(nodes, sim) {
  const deadline = Date.now() + 10_000;
  for (const group of sim.devices) {
    for (const uuid of [group.uuids[0], group.uuids[group.uuids.length - 1]]) {
      while ((await nodes[0].call('route', { uuid }))?.node !== group.node) {
        if (Date.now() > deadline) throw new Error(`device ${uuid} not routed to ${group.node}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  while ((await nodes[0].call('live')).length !== nodes.length) await new Promise((r) => setTimeout(r, 50));
}

function summary(ms, statuses) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p) => +s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(3);
  return { n: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: +s[s.length - 1].toFixed(3), statuses };
}

async function commandStats(admin) {
  const info = await admin.info('commandstats');
  const out = {};
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2]);
  return out;
}

function diffStats(a, b) {
  const out = {};
  for (const [k, v] of Object.entries(b)) {
    const d = v - (a[k] ?? 0);
    // INFO itself (this bench's reads) is not part of the push path.
    if (d > 0 && k !== 'info') out[k] = d;
  }
  return out;
}

// ------------------------------------------------------ raw chain baseline
//
// The hops of a cross-node push with nothing of nest-push in them, each party
// in its own process like the nodes and the devices: the origin writes the
// device's hash (HSET) and PUBLISHes to the holder; the holder reads it back
// (HGETALL), writes it to a TCP "device" that echoes it at once, writes the
// ack (HDEL) and PUBLISHes back to the origin. What this machine's loopback,
// Redis and process wake-ups cost for that path, measured in the same run.

async function rawChain(url, children, n) {
  const spawnRaw = (args) => {
    const child = fork(fileURLToPath(import.meta.url), args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(child);
    return new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`raw ${args[0]} exited (${code})`)));
      child.once('message', (m) => resolve({ child, m }));
    });
  };
  const tag = `raw${process.pid}`;
  const device = await spawnRaw(['--raw-device']);
  const holder = await spawnRaw(['--raw-holder', url, tag, String(device.m.port)]);
  const origin = fork(fileURLToPath(import.meta.url), ['--raw-origin', url, tag], { cwd: root, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(origin);
  const ms = await new Promise((resolve, reject) => {
    origin.once('exit', (code) => reject(new Error(`raw origin exited (${code})`)));
    origin.once('message', (m) => (m.ready ? origin.send({ n }) : null));
    origin.on('message', (m) => m.ms && resolve(m.ms));
  });
  for (const c of [origin, holder.child, device.child]) c.kill('SIGKILL');
  return ms;
}

function rawDevice() {
  const server = createServer((sock) => {
    sock.setNoDelay(true);
    sock.on('data', (chunk) => sock.write(chunk));
  });
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
  process.on('disconnect', () => process.exit(0));
}

async function rawHolder(url, tag, devicePort) {
  const { Redis } = await import('ioredis');
  const cmd = new Redis(url);
  const sub = new Redis(url);
  const { connect } = await import('node:net');
  const dev = connect({ port: devicePort, host: '127.0.0.1', noDelay: true });
  await new Promise((r) => dev.once('connect', r));
  dev.on('data', async (chunk) => {
    const id = chunk.toString();
    await cmd.hdel(`${tag}:{${id}}`, 'm');
    cmd.publish(`${tag}:A`, id);
  });
  sub.on('message', async (_channel, id) => {
    await cmd.hgetall(`${tag}:{${id}}`);
    dev.write(id);
  });
  await sub.subscribe(`${tag}:B`);
  process.send({ ready: true });
  process.on('disconnect', () => process.exit(0));
}

async function rawOrigin(url, tag) {
  const { Redis } = await import('ioredis');
  const cmd = new Redis(url);
  const sub = new Redis(url);
  let wake = () => {};
  sub.on('message', () => wake());
  await sub.subscribe(`${tag}:A`);
  process.once('message', async ({ n }) => {
    const payload = Buffer.alloc(100, 7);
    const ms = [];
    for (let i = 0; i < n + 100; i++) {
      const id = `d${i % 200}`;
      const t = performance.now();
      await cmd.hset(`${tag}:{${id}}`, 'm', payload);
      const back = new Promise((r) => (wake = r));
      cmd.publish(`${tag}:B`, id);
      await back;
      if (i >= 100) ms.push(performance.now() - t); // the first 100 warm up, as for the nodes
    }
    process.send({ ms });
  });
  process.send({ ready: true });
  process.on('disconnect', () => process.exit(0));
}

// ------------------------------------------------------------ processes

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'nest-push-bench-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning'], {
    stdio: 'ignore',
  });
  const exited = new Promise((r) => child.once('exit', r));
  const { Redis } = await import('ioredis');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const c = new Redis(port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    c.on('error', () => {});
    try {
      await c.connect();
      await c.ping();
      c.disconnect();
      break;
    } catch {
      c.disconnect();
      if (Date.now() > deadline) throw new Error('redis-server did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function rpc(child) {
  let seq = 0;
  const pending = new Map();
  child.on('message', (m) => {
    if (m?.id === undefined) return;
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.error) p?.reject(new Error(m.error));
    else p?.resolve(m.result);
  });
  return (op, extra = {}) =>
    new Promise((resolve, reject) => {
      const id = ++seq;
      pending.set(id, { resolve, reject });
      child.send({ id, op, ...extra });
    });
}

function startNode(id, url, prefix, children) {
  // BENCH_NODE_PROF=<dir>: a V8 CPU profile of each cluster node (for finding hot spots).
  const prof = process.env.BENCH_NODE_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_NODE_PROF] : [];
  const child = fork(NODE_MAIN, [], {
    cwd: root,
    execArgv: prof,
    env: { ...process.env, NODE_ID: id, REDIS_URL: url, KEY_PREFIX: prefix, TIMEOUT_MS: '3000', COLLECT_OUTCOMES: '0' },
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.push(child);
  const call = rpc(child);
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`node ${id} exited (${code})`)));
    child.on('message', (m) => {
      if (m?.type !== 'ready') return;
      resolve({
        id,
        devicePort: m.devicePort,
        pusherPort: m.pusherPort,
        call,
        async close() {
          // The node exits by itself after answering (writing its CPU profile, if asked): give it the time.
          const exited = new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
          await Promise.race([call('close').catch(() => {}).then(() => exited), new Promise((r) => setTimeout(r, prof.length ? 15_000 : 3000))]);
          if (child.exitCode === null) child.kill('SIGKILL');
        },
      });
    });
  });
}

function startDeviceSim(children, groups) {
  const child = fork(fileURLToPath(import.meta.url), ['--device-sim'], { cwd: root, serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`device simulator exited (${code})`)));
    child.once('message', (m) => resolve({ child, devices: m.devices }));
    child.send({ groups });
  });
}

// ------------------------------------------------------ device simulator

async function deviceSim() {
  const { DeviceClient } = await import('../dist/index.js');
  const clients = [];
  process.once('message', async ({ groups }) => {
    const devices = [];
    for (const g of groups) {
      const uuids = [];
      for (let i = 0; i < g.count; i += 100) {
        const batch = [];
        for (let j = i; j < Math.min(g.count, i + 100); j++) {
          const d = new DeviceClient({ port: g.port, key: `bench-${g.node}-${j}`, transport: 'tcp', heartbeatIntervalMs: 0 });
          clients.push(d);
          uuids.push(d.uuid);
          batch.push(d.connect());
        }
        await Promise.all(batch);
      }
      devices.push({ node: g.node, uuids });
    }
    process.send({ devices });
  });
  process.on('disconnect', () => process.exit(0));
}
