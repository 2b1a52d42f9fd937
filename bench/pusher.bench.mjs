#!/usr/bin/env node
// Pusher port throughput: accepted tasks/s over K connections, pipelined vs
// one-at-a-time, against the real PusherTransportStrategy -> DeviceEngine ->
// MemoryOfflineStore + LocalPushRouter (from dist), and against a raw
// baseline measured in the same run: a trivial TCP server that parses the
// same 21-byte headers and answers 0x00 per task without storing anything.
//
// The servers run on the main thread; the load generator runs in a worker
// thread (its own event loop, so it does not steal the server's), over raw
// sockets with pre-encoded tasks: 100-byte 0x20 messages over 10,000 uuids.
//
// Usage: npm run build && node bench/pusher.bench.mjs [--duration ms]
// Runs 8 scenarios of ~(duration + warm-up) each: well under 60 s by default.
import { createServer, connect } from 'node:net';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { parseArgs } from 'node:util';
import { PAYLOAD_BYTES, ringReader, taskRing } from './lib/wire.mjs';

const TASK_CONTENT = PAYLOAD_BYTES;
const DISTINCT_UUIDS = 10_000;
const PIPELINE_WINDOW = 256;
const TARGET = 100_000;

if (isMainThread) await runMain();
else runWorker();

// ------------------------------------------------------------------- main

async function runMain() {
  const { values } = parseArgs({ options: { duration: { type: 'string', default: '2500' }, warmup: { type: 'string', default: '500' } } });
  const durationMs = Number(values.duration);
  const warmupMs = Number(values.warmup);
  const lib = await import('../dist/index.js');
  const { DeviceEngine, MemoryOfflineStore, LocalPushRouter, PusherTransportStrategy } = lib;

  const worker = new Worker(new URL(import.meta.url));
  const pending = [];
  worker.on('message', (m) => pending.shift()?.(m));
  worker.on('error', (e) => {
    console.error(e);
    process.exit(1);
  });
  const ask = (msg) => new Promise((resolve) => {
    pending.push(resolve);
    worker.postMessage(msg);
  });

  const targets = {
    baseline: async () => {
      const server = await startBaseline();
      return { port: server.address().port, close: () => new Promise((r) => server.close(() => r())) };
    },
    engine: async () => {
      const store = new MemoryOfflineStore();
      const engine = new DeviceEngine(store, new LocalPushRouter());
      const pusher = new PusherTransportStrategy(engine, { host: '127.0.0.1', port: 0 });
      await pusher.start();
      return {
        port: pusher.port,
        close: async () => {
          await pusher.close();
          engine.close();
        },
        counters: pusher.counters,
      };
    },
  };

  console.log(`pusher port bench: ${TASK_CONTENT}-byte 0x20 tasks (${21 + TASK_CONTENT} bytes on the wire) over ${DISTINCT_UUIDS} uuids; load generator in a worker thread`);
  console.log(`node ${process.version}, ${durationMs} ms per scenario after ${warmupMs} ms warm-up\n`);
  const rows = [];
  const started = Date.now();
  for (const mode of ['pipelined', 'one-at-a-time']) {
    for (const k of [1, 4]) {
      const results = {};
      for (const name of ['baseline', 'engine']) {
        const t = await targets[name]();
        const r = await ask({ port: t.port, connections: k, window: mode === 'pipelined' ? PIPELINE_WINDOW : 1, durationMs, warmupMs });
        const extra = name === 'engine' ? ` accepted=${t.counters.accepted} pauses=${t.counters.pauses} peakPipelined=${t.counters.peakPipelined}` : '';
        await t.close();
        if (r.bad > 0) throw new Error(`${name}: ${r.bad} replies were not 0x00`);
        results[name] = r.rate;
        rows.push({ mode, k, name, rate: r.rate, extra });
      }
      const ratio = results.engine / results.baseline;
      print(mode, k, 'baseline', results.baseline, '');
      print(mode, k, 'engine', results.engine, `${(ratio * 100).toFixed(0)}% of baseline${rows.at(-1).extra}`);
    }
  }
  await worker.terminate();
  const best = rows.filter((r) => r.mode === 'pipelined' && r.name === 'engine').sort((a, b) => b.rate - a.rate)[0];
  console.log(`\ntarget "pipelined >= ${fmt(TARGET)} tasks/s with the in-memory store": ${best.rate >= TARGET ? 'MET' : 'NOT MET'} (best: ${fmt(best.rate)} tasks/s with K=${best.k})`);
  console.log(`total ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function fmt(n) {
  return Math.round(n).toLocaleString('en-US');
}

function print(mode, k, name, rate, note) {
  console.log(`${mode.padEnd(14)} K=${k}  ${name.padEnd(9)} ${fmt(rate).padStart(10)} tasks/s  ${note}`);
}

/** The raw baseline: parse headers, skip content, one 0x00 per task, one write per chunk. */
function startBaseline() {
  const server = createServer({ noDelay: true }, (socket) => {
    const header = Buffer.alloc(21);
    let have = 0; // header bytes held
    let skip = 0; // content bytes still to skip
    socket.on('data', (chunk) => {
      let tasks = 0;
      let i = 0;
      while (i < chunk.length) {
        if (skip > 0) {
          const take = Math.min(skip, chunk.length - i);
          skip -= take;
          i += take;
          if (skip === 0) tasks++;
          continue;
        }
        const take = Math.min(21 - have, chunk.length - i);
        chunk.copy(header, have, i, i + take);
        have += take;
        i += take;
        if (have === 21) {
          have = 0;
          skip = (header[19] << 8) | header[20];
          if (skip === 0) tasks++;
        }
      }
      if (tasks > 0) socket.write(Buffer.alloc(tasks));
    });
    socket.on('error', () => {});
  });
  return new Promise((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve(server)));
}

// ----------------------------------------------------------------- worker

function runWorker() {
  // Pre-encoded tasks (bench/lib/wire.mjs: the same bytes as encodePusherTask, nothing from dist).
  const tasks = taskRing(DISTINCT_UUIDS);

  parentPort.on('message', async ({ port, connections, window, durationMs, warmupMs }) => {
    let counting = false;
    let accepted = 0;
    let bad = 0;
    let stop = false;
    const socks = [];
    await Promise.all(
      Array.from({ length: connections }, (_, c) =>
        new Promise((resolve, reject) => {
          const s = connect({ host: '127.0.0.1', port, noDelay: true });
          socks.push(s);
          const next = ringReader(tasks, c * 2503); // each connection starts elsewhere in the uuid ring
          const send = (n) => s.write(next(n));
          s.on('connect', () => {
            send(window);
            resolve();
          });
          s.on('data', (chunk) => {
            for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) bad++;
            if (counting) accepted += chunk.length;
            if (!stop) send(chunk.length);
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
    const rate = accepted / seconds;
    for (const s of socks) s.destroy();
    parentPort.postMessage({ rate, accepted, bad, seconds });
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
