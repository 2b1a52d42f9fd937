import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { measureWindow, openSession, register, sleep, spawnServer, spawnWorker } from '../lib/harness.mjs';
import { row, unavailable } from './common.mjs';

const REDIS = new URL('../../dist/redis/index.js', import.meta.url);

function redisInstalled() {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true)); // port taken: redis is listening
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (ok) return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error('redis-server did not start');
}

export default {
  id: 'h',
  title: '1 vs 2 cluster nodes (Redis), acked push rate',
  available: () => {
    if (!existsSync(REDIS)) return 'not available: dist/redis is not built';
    if (!redisInstalled()) return 'not available: redis-server is not installed';
    return null;
  },
  steps: (cfg) => 3 + cfg.runs * 3,
  async run({ cfg, progress }) {
    const devices = cfg.count(10_000, 2_000);
    const redis = await startRedis();
    const closers = [];
    try {
      const raw = await openSession('raw', { devices });
      closers.push(() => raw.close());
      progress.step('h: raw forwarder ready');
      const one = await openSession('nest', { devices, serverOpts: { cluster: { url: redis.url, keyPrefix: 'b1:' }, nodeId: 'solo' } });
      closers.push(() => one.close());
      progress.step('h: 1-node cluster ready');
      // Two nodes, half of the devices on each; pushes enter both pusher ports, so half cross the gateway.
      const half = Math.floor(devices / 2);
      const nodes = [];
      const devs = [];
      for (const [k, first, count] of [
        [0, 0, half],
        [1, half, devices - half],
      ]) {
        const server = await spawnServer('nest', { cluster: { url: redis.url, keyPrefix: 'b2:' }, nodeId: `n${k + 1}` });
        closers.push(() => server.stop());
        const dev = spawnWorker('devices-worker.mjs');
        closers.push(async () => {
          await dev.call('close').catch(() => {});
          await dev.terminate();
        });
        await dev.call('setup', { port: server.ports.device, devices: count, first, sockets: 32 });
        await register(server, dev, count);
        await dev.call('keepalive', { everyMs: 20_000 });
        nodes.push(server);
        devs.push(dev);
      }
      const load = spawnWorker('loadgen-worker.mjs');
      closers.push(() => load.terminate());
      await load.call('setup', { devices });
      progress.step('h: 2-node cluster ready');
      const rate = { raw: [], one: [], two: [] };
      for (let r = 0; r < cfg.runs; r++) {
        rate.raw.push((await measureWindow(raw, { connections: 4, window: 32, warmupMs: cfg.warmupMs, durationMs: cfg.windowMs })).rate);
        progress.step(`h: raw run ${r + 1}`);
        rate.one.push((await measureWindow(one, { connections: 4, window: 32, warmupMs: cfg.warmupMs, durationMs: cfg.windowMs })).rate);
        progress.step(`h: 1 node run ${r + 1}`);
        const run = load.call('window', { port: nodes.map((n) => n.ports.pusher), connections: 4, window: 32, warmupMs: cfg.warmupMs, durationMs: cfg.windowMs });
        await sleep(cfg.warmupMs);
        const m0 = await Promise.all(devs.map((d) => d.call('mark')));
        await sleep(cfg.windowMs);
        const m1 = await Promise.all(devs.map((d) => d.call('mark')));
        await run;
        await sleep(200);
        const got = m1.reduce((s, m, i) => s + m.received - m0[i].received, 0);
        rate.two.push(got / ((m1[0].at - m0[0].at) / 1000));
        progress.step(`h: 2 nodes run ${r + 1}`);
      }
      const scenario = `${devices} UDP devices, 4 pusher conns x 32, Redis cluster`;
      const a = row({ id: 'h1', scenario: `${scenario}, 1 node`, metric: 'acked pushes/s', unit: '/s', nest: rate.one, raw: rate.raw });
      const b = row({ id: 'h2', scenario: `${scenario}, 2 nodes (half the pushes via the gateway)`, metric: 'acked pushes/s', unit: '/s', nest: rate.two, raw: rate.raw });
      b.notes.push(`2 nodes / 1 node: ${(b.nest / a.nest).toFixed(2)}x (both nodes and Redis share this machine's 2 cores)`);
      return [a, b];
    } catch (err) {
      return [unavailable('h', this.title, `failed: ${err instanceof Error ? err.message.split('\n')[0] : err}`)];
    } finally {
      for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => {});
      redis.stop();
    }
  },
};
