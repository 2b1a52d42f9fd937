#!/usr/bin/env node
// Offline store throughput through the pusher port: accepted pushes/s of a
// whole PushModule app (pusher port -> dispatcher -> engine -> store) with
// LmdbOfflineStore durability 'sync' and 'async' against MemoryOfflineStore,
// measured in the same run and reported as a ratio to the memory store.
//
// Load: 64 pusher connections, each pipelining up to WINDOW tasks, 100-byte
// 0x20 messages over 10,000 uuids (no device online: every push is stored
// and answered 0x00). The load generator runs in a worker thread, so it has
// its own event loop. Scenarios are interleaved round-robin (memory, sync,
// async, memory, ...) and the median of the rounds is reported, so drift on a
// shared machine hits every scenario alike.
//
// Usage: npm run build && node bench/store.bench.mjs [--rounds 3] [--duration ms] [--strict] [--diagnose]
//        [--max-pipelined N] [--max-pipelined-total N] (the pusher port's limits, for every scenario) [--only "lmdb sync"]
// BENCH_WINDOW=N changes the tasks each connection keeps pipelined (default 256).
// --strict exits 1 when the sync ratio is under the target. --diagnose adds
// "memory, deferred": the memory store with every write of an event-loop turn
// resolved together at its end (setImmediate), like a group commit that costs
// nothing: what the rest of the pipeline costs with any store that commits
// asynchronously, i.e. a ceiling for the LMDB ratios. Well under 60 s by
// default. Data directories go under os.tmpdir() and are removed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { connect } from 'node:net';
import { PAYLOAD_BYTES, ringReader, taskRing } from './lib/wire.mjs';

const CONNECTIONS = 64;
const WINDOW = Number(process.env.BENCH_WINDOW ?? 256);
const CONTENT = PAYLOAD_BYTES;
const UUIDS = 10_000;
const TARGET_RATIO = 0.8;

if (isMainThread) await runMain();
else runWorker();

async function runMain() {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      duration: { type: 'string', default: '2500' },
      warmup: { type: 'string', default: '700' },
      strict: { type: 'boolean', default: false },
      only: { type: 'string' },
      diagnose: { type: 'boolean', default: false },
      'max-pipelined': { type: 'string' },
      'max-pipelined-total': { type: 'string' },
    },
  });
  const rounds = Number(values.rounds);
  const durationMs = Number(values.duration);
  const warmupMs = Number(values.warmup);
  const { NestFactory } = await import('@nestjs/core');
  const lib = await import('../dist/index.js');
  const { LmdbOfflineStore } = await import('../dist/store/index.js');
  const { PushModule, connectPushTransports, MemoryOfflineStore, PusherTransportStrategy } = lib;

  const base = mkdtempSync(join(tmpdir(), 'nest-push-store-bench-'));
  let dirs = 0;
  const worker = new Worker(new URL(import.meta.url));
  const waiting = [];
  worker.on('message', (m) => waiting.shift()?.(m));
  worker.on('error', (e) => {
    console.error(e);
    process.exit(1);
  });
  const ask = (msg) =>
    new Promise((resolve) => {
      waiting.push(resolve);
      worker.postMessage(msg);
    });

  const scenarios = {
    memory: () => new MemoryOfflineStore({ maxBytes: 1 << 30 }),
    'lmdb sync': () => new LmdbOfflineStore({ path: join(base, `s${dirs++}`), durability: 'sync' }),
    'lmdb async': () => new LmdbOfflineStore({ path: join(base, `a${dirs++}`), durability: 'async' }),
  };
  if (values.diagnose) {
    // The ceiling of any store that commits asynchronously: the memory store with every write of a
    // turn resolved together at its end (one gate per turn, like a group commit that costs nothing).
    scenarios['memory, deferred'] = () => {
      const m = new MemoryOfflineStore({ maxBytes: 1 << 30 });
      const writeThen = m.writeThen.bind(m);
      let waiting = null;
      m.writeThen = (u, w, done) => {
        if (!waiting) {
          const batch = (waiting = []);
          setImmediate(() => {
            waiting = null;
            for (let i = 0; i < batch.length; i += 3) batch[i](batch[i + 1], batch[i + 2]);
          });
        }
        const batch = waiting;
        writeThen(u, w, (err, r) => batch.push(done, err, r));
      };
      return m;
    };
  }
  if (values.only) for (const k of Object.keys(scenarios)) if (k !== values.only && k !== 'memory') delete scenarios[k];
  const rates = Object.fromEntries(Object.keys(scenarios).map((k) => [k, []]));
  // CPU per answered task, all threads of the process (the app, lmdb-js's writer, V8's GC helpers, and
  // the load generator, the same in every scenario): steadier than the rate on a shared machine, and
  // what decides the rate when the threads share a few cores.
  const cpuPerTask = Object.fromEntries(Object.keys(scenarios).map((k) => [k, []]));
  const notes = {};
  const started = Date.now();
  console.log(
    `store bench: accepted pushes/s through the pusher port of a PushModule app; ${CONNECTIONS} connections x ${WINDOW} pipelined, ` +
      `${CONTENT}-byte 0x20 messages over ${UUIDS} uuids, devices offline`,
  );
  console.log(`node ${process.version}, ${cpus().length} CPUs, ${rounds} rounds of ${durationMs} ms (+${warmupMs} ms warm-up), median reported\n`);
  try {
    for (let r = 0; r < rounds; r++) {
      for (const [name, make] of Object.entries(scenarios)) {
        const store = make();
        const app = await NestFactory.createApplicationContext(
          PushModule.forRoot({
            store,
            device: { enabled: false },
            pusher: { host: '127.0.0.1', port: 0, maxConnections: 256, ...(values['max-pipelined'] ? { maxPipelined: Number(values['max-pipelined']) } : {}),
              ...(values['max-pipelined-total'] ? { maxPipelinedTotal: Number(values['max-pipelined-total']) } : {}),
            },
          }),
          { logger: false },
        );
        await connectPushTransports(app);
        const port = app.get(PusherTransportStrategy).port;
        const commits0 = store.commits ?? 0;
        const cpu0 = process.cpuUsage();
        const res = await ask({ port, durationMs, warmupMs });
        const cpu = process.cpuUsage(cpu0);
        cpuPerTask[name].push((cpu.user + cpu.system) / Math.max(1, res.total));
        if (res.bad > 0) throw new Error(`${name}: ${res.bad} replies were not 0x00`);
        rates[name].push(res.rate);
        if (store.commits !== undefined) {
          const commits = store.commits - commits0;
          notes[name] = `~${Math.round(res.total / Math.max(1, commits))} pushes per commit (${commits} commits)`;
        }
        await app.close();
      }
    }
  } finally {
    await worker.terminate();
    rmSync(base, { recursive: true, force: true });
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const mem = median(rates.memory);
  for (const name of Object.keys(scenarios)) {
    const m = median(rates[name]);
    const ratio = m / mem;
    const cpu = median(cpuPerTask[name]);
    console.log(
      `${name.padEnd(11)} ${fmt(m).padStart(9)} pushes/s  ratio ${ratio.toFixed(2)}  rounds [${rates[name].map(fmt).join(', ')}]` +
        `  CPU ${cpu.toFixed(2)} us/push${notes[name] ? '  ' + notes[name] : ''}`,
    );
  }
  if (!rates['lmdb sync']) return;
  const syncRatio = median(rates['lmdb sync']) / mem;
  const met = syncRatio >= TARGET_RATIO;
  console.log(`\ntarget "lmdb sync >= ${TARGET_RATIO} x memory": ${met ? 'MET' : 'NOT MET'} (${syncRatio.toFixed(2)})`);
  console.log(`total ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (values.strict && !met) process.exitCode = 1;
}

function fmt(n) {
  return Math.round(n).toLocaleString('en-US');
}

// ----------------------------------------------------------------- worker

function runWorker() {
  // Pre-encoded 0x20 tasks, one per uuid (bench/lib/wire.mjs: the same bytes as encodePusherTask).
  const tasks = taskRing(UUIDS);

  parentPort.on('message', async ({ port, durationMs, warmupMs }) => {
    let counting = false;
    let accepted = 0;
    let total = 0;
    let bad = 0;
    let stop = false;
    const socks = [];
    const drained = [];
    const idleChecks = [];
    await Promise.all(
      Array.from(
        { length: CONNECTIONS },
        (_, c) =>
          new Promise((resolve, reject) => {
            const s = connect({ host: '127.0.0.1', port, noDelay: true });
            socks.push(s);
            const next = ringReader(tasks, c * 157);
            let outstanding = 0;
            const send = (n) => {
              outstanding += n;
              s.write(next(n));
            };
            let done;
            drained.push(new Promise((r) => (done = r)));
            idleChecks.push(() => outstanding === 0 && done());
            s.on('connect', () => {
              send(WINDOW);
              resolve();
            });
            s.on('data', (chunk) => {
              for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) bad++;
              outstanding -= chunk.length;
              total += chunk.length;
              if (counting) accepted += chunk.length;
              if (!stop) send(chunk.length);
              else if (outstanding === 0) done();
            });
            s.on('error', reject);
          }),
      ),
    );
    await sleep(warmupMs);
    counting = true;
    const t0 = process.hrtime.bigint();
    await sleep(durationMs);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    counting = false;
    stop = true;
    for (const check of idleChecks) check();
    const rate = accepted / seconds;
    // Let every written task be answered before the app closes (nothing is cut mid-commit).
    await Promise.race([Promise.all(drained), sleep(5_000)]);
    for (const s of socks) s.destroy();
    parentPort.postMessage({ rate, bad, total });
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
