// Orchestration helpers: the server child process, the worker threads, and
// the measurements shared by several scenarios.
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { client, sleep } from './rpc.mjs';

export { sleep };

const here = (f) => new URL(f, import.meta.url);

/** Starts the server under test in its own process. */
export async function spawnServer(impl, opts = {}) {
  // BENCH_SERVER_PROF=<dir>: write a V8 CPU profile of each server process there (for finding hot spots).
  const prof = process.env.BENCH_SERVER_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_SERVER_PROF] : [];
  // BENCH_SERVER_ARGS='--trace-gc ...': extra Node flags for the server process (diagnosis).
  const extra = process.env.BENCH_SERVER_ARGS ? process.env.BENCH_SERVER_ARGS.split(' ').filter(Boolean) : [];
  const child = fork(here('server.mjs'), [], { execArgv: ['--expose-gc', ...prof, ...extra], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const call = client(child, (m) => child.send(m));
  const started = await call('start', { impl, opts }).catch((err) => {
    child.kill();
    throw err;
  });
  if (started.impl !== impl) throw new Error(`asked for a ${impl} server, got ${started.impl}`);
  const { ports } = started;
  return {
    impl,
    ports,
    stats: () => call('stats'),
    mem: async () => (await call('mem')).mem,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      await Promise.race([call('stop').catch(() => {}).then(() => exited), sleep(10_000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

export function spawnWorker(name) {
  const w = new Worker(here(name));
  const call = client(w);
  return { call, terminate: () => w.terminate() };
}

/**
 * Heartbeats every device until the server counts at least `count` of them:
 * a chunk at a time, each resent until the server's count has taken it, so a
 * slow (or CPU-starved) server is never flooded past its socket buffer.
 */
export async function register(server, dev, count, { chunk = 5000, timeoutMs = 60_000 } = {}) {
  const end = Date.now() + timeoutMs;
  for (let from = 0; from < count; from += chunk) {
    const to = Math.min(count, from + chunk);
    for (;;) {
      await dev.call('heartbeat', { from, to });
      let seen = -1;
      // Wait while the count still grows.
      for (;;) {
        await sleep(20);
        const { stats } = await server.stats();
        if (stats.devices >= to) break;
        if (stats.devices === seen) break;
        seen = stats.devices;
      }
      const { stats } = await server.stats();
      if (stats.devices >= to) break;
      if (Date.now() > end) throw new Error(`${server.impl}: only ${stats.devices}/${count} devices registered in ${timeoutMs} ms`);
    }
  }
  return count;
}

/**
 * A server with `devices` registered simulated devices and a load generator
 * ready to push to them. `close()` tears everything down.
 */
export async function openSession(impl, { serverOpts = {}, devices, kind = 'udp', sockets = 64 } = {}) {
  const server = await spawnServer(impl, serverOpts);
  const dev = spawnWorker('devices-worker.mjs');
  const load = spawnWorker('loadgen-worker.mjs');
  try {
    await dev.call('setup', { port: server.ports.device, devices, kind, sockets });
    await register(server, dev, devices);
    await dev.call('keepalive', { everyMs: 20_000 });
    await load.call('setup', { devices });
  } catch (err) {
    await Promise.allSettled([dev.terminate(), load.terminate(), server.stop()]);
    throw err;
  }
  return {
    impl,
    server,
    dev,
    load,
    async close() {
      await dev.call('close').catch(() => {});
      await Promise.allSettled([dev.terminate(), load.terminate()]);
      await server.stop();
    },
  };
}

/**
 * Pushes with `connections` x `window` tasks in flight; returns the rate of
 * pushes received and acked by the devices over the measured window, the
 * pusher reply rate, and the server's CPU use in that window.
 */
export async function measureWindow(s, { connections, window, warmupMs, durationMs }) {
  const run = s.load.call('window', { port: s.server.ports.pusher, connections, window, warmupMs, durationMs });
  await sleep(warmupMs);
  const [m0, c0] = await Promise.all([s.dev.call('mark'), s.server.stats()]);
  const k0 = kernelUdpDrops();
  await sleep(durationMs);
  const [m1, c1] = await Promise.all([s.dev.call('mark'), s.server.stats()]);
  const k1 = kernelUdpDrops();
  const r = await run;
  await sleep(200); // let acks in flight land before the next run
  const seconds = (m1.at - m0.at) / 1000;
  const delivered = m1.received - m0.received;
  return {
    rate: delivered / seconds,
    // Device acks the server read, per push its devices received: a server that falls behind on its
    // UDP socket lets the kernel drop acks (counted in kernelUdpDrops) and so reads fewer.
    acksRead: (c1.stats.acks - c0.stats.acks) / Math.max(1, delivered),
    // Datagrams per second the kernel dropped for a full receive buffer in the window (whole machine; Linux only, else NaN).
    kernelUdpDropRate: (k1 - k0) / seconds,
    replyRate: r.replyRate,
    bad: r.bad,
    serverCpu: (c1.cpuMs - c0.cpuMs) / (c1.at - c0.at),
    server: c1.stats,
    before: c0.stats,
  };
}

/** UDP datagrams the kernel has dropped for a full receive buffer (RcvbufErrors, /proc/net/snmp); NaN where unavailable. */
export function kernelUdpDrops() {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const names = lines[0].trim().split(/\s+/);
    const values = lines[1].trim().split(/\s+/);
    const i = names.indexOf('RcvbufErrors');
    return i < 0 ? NaN : Number(values[i]);
  } catch {
    return NaN;
  }
}

/** Delivery latency (ms) of pushes sent at a fixed rate. */
export async function measureLatency(s, { rate, durationMs, warmupMs, connections = 1 }) {
  if (warmupMs > 0) await s.load.call('paced', { port: s.server.ports.pusher, rate, durationMs: warmupMs, connections });
  await sleep(100);
  await s.dev.call('record', { max: Math.ceil((rate * durationMs) / 1000) * 2 + 1024 });
  const c0 = await s.server.stats();
  const r = await s.load.call('paced', { port: s.server.ports.pusher, rate, durationMs, connections });
  await sleep(300);
  const c1 = await s.server.stats();
  const { latencies, duplicates } = await s.dev.call('stopRecording');
  const sorted = Float64Array.from(latencies).sort();
  return {
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    p999: quantile(sorted, 0.999),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
    sent: r.sent,
    delivered: sorted.length,
    duplicates,
    bad: r.bad,
    serverCpu: (c1.cpuMs - c0.cpuMs) / (c1.at - c0.at),
  };
}

export function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export function median(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}
