#!/usr/bin/env node
// Soak (issue 9): steady pushes + heartbeats + device churn against the real
// stack from dist (server in a child process, loopback only) for --minutes
// (30 by default). The server's RSS and heap are sampled every --sample-ms
// (10 s) into a CSV and plotted in a self-contained HTML page (inline SVG, no
// CDN); a least-squares slope of RSS over the samples after the warm-up tells
// whether memory grows. PASS when, after the warm-up, the RSS slope is below
// --max-slope MiB/hour (10) and the heap's below 2 MiB/hour, no push was lost
// and the server did not crash. The hourly thresholds need at least 20
// minutes of samples after the warm-up: RSS moves in steps of tens of MiB as
// the allocator returns memory, so a shorter run is judged on the heap alone
// (its fitted line must rise less than 1 MiB across the window) and says so. Each sample is taken right after a full GC in the
// server (--no-gc to sample as is): without it RSS and heap follow V8's GC
// sawtooth, and a 30-minute regression over a sawtooth says little.
//
// Load: 300 UDP + 50 TCP devices heartbeating every 5 s (DeviceClient), 200
// pushes/s through the pusher port to random live devices (mostly 100-byte
// messages, some notices and category pushes; the devices ack), and churn:
// every 2 s, 5 devices leave and 5 new ones (new uuids) arrive. Device records
// of departed devices expire (expiryMs: 120 s, or an eighth of a shorter run;
// the warm-up, a third of the run up to 10 min, covers the time the table
// takes to reach its steady size), so a table that stops growing is part of
// what is checked.
//
// Usage: npm run build && node bench/soak.mjs [--minutes 30] [--sample-ms 10000]
//        [--rate 200] [--max-slope 10] [--no-gc] [--out bench/results]
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startServer, startServerChild } from './lib/server-child.mjs';
import { machine, sleep } from './lib/format.mjs';

const SELF = fileURLToPath(import.meta.url);

// ------------------------------------------------------------ server child

async function serve(opts) {
  const { lib, store, engine, dispatcher, device, pusher } = await startServer(opts);
  process.on('message', (m) => {
    if (m.type !== 'stats') return;
    if (m.gc) globalThis.gc?.();
    const mem = process.memoryUsage();
    process.send({
      type: 'stats',
      id: m.id,
      stats: {
        rss: mem.rss,
        heapUsed: mem.heapUsed,
        external: mem.external,
        devices: engine.deviceCount,
        tcpLinks: engine.tcpLinkCount,
        tableBytes: engine.table.byteSize,
        store: store.stats(),
        heartbeats: engine.counters.heartbeats,
        expired: engine.counters.expired,
        outcomes: { ...dispatcher.counters },
        inFlight: dispatcher.inFlight,
      },
    });
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ type: 'ready', devicePort: device.port, pusherPort: pusher.port });
}


// ------------------------------------------------------------------- main

async function main() {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '30' },
      'sample-ms': { type: 'string', default: '10000' },
      rate: { type: 'string', default: '200' },
      'max-slope': { type: 'string', default: '10' },
      out: { type: 'string', default: join(fileURLToPath(new URL('.', import.meta.url)), 'results') },
      'no-gc': { type: 'boolean', default: false },
    },
  });
  const durationMs = Number(values.minutes) * 60_000;
  const sampleMs = Number(values['sample-ms']);
  const rate = Number(values.rate);
  const maxSlope = Number(values['max-slope']);
  const warmupMs = Math.min(600_000, durationMs / 3);
  const expiryMs = Math.max(15_000, Math.min(120_000, Math.round(durationMs / 8)));
  const SERVER = { engine: { reachableWindowMs: Math.min(30_000, expiryMs), expiryMs } };
  const lib = await import('../dist/index.js');

  const server = startServerChild(SELF, SERVER);
  const { devicePort, pusherPort } = await server.ready;
  let crashed = null;
  let stopping = false;
  server.exited.then((e) => {
    if (!stopping) crashed = e;
  });

  const fleet = new Fleet(lib, devicePort);
  await fleet.grow('udp', 300);
  await fleet.grow('tcp', 50);
  const pusher = await openPusher(lib, pusherPort);

  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  mkdirSync(values.out, { recursive: true });
  const csvPath = join(values.out, `soak-${stamp}.csv`);
  const htmlPath = join(values.out, `soak-${stamp}.html`);
  const rows = [];
  const t0 = performance.now();
  console.log(
    `soak: ${values.minutes} min, sample every ${sampleMs / 1000} s${values['no-gc'] ? '' : ' (after a full GC)'}, warm-up ${(warmupMs / 1000).toFixed(0)} s; ${rate} pushes/s, ` +
      `${fleet.size} devices (churn 5 per 2 s, records expire after ${expiryMs / 1000} s); server pid ${server.child.pid}; ${machine()}`,
  );
  console.log(`writing ${csvPath}`);

  // Steady pushes: `rate` per second in 20 ms ticks, to random live devices; each must arrive.
  let seq = 0;
  const inFlight = new Map();
  let sent = 0;
  let received = 0;
  let lost = 0;
  fleet.onMessage = (text) => {
    if (inFlight.delete(text)) received++;
  };
  const perTick = rate / 50;
  let carry = 0;
  const pushTimer = setInterval(() => {
    carry += perTick;
    for (; carry >= 1; carry--) {
      const d = fleet.random();
      if (!d) break;
      const r = seq % 20;
      const text = `soak ${seq++}`;
      if (r === 0) pusher.send(lib.encodePusherTask({ cmd: lib.PusherCmd.Notice, uuid: d.bytes }));
      else if (r === 1) pusher.send(lib.encodePusherTask({ cmd: lib.PusherCmd.Category, uuid: d.bytes, mask: 1n << BigInt(seq % 64) }));
      else {
        const content = Buffer.alloc(100, 0x20);
        content.write(text);
        inFlight.set(content.toString(), { at: performance.now(), device: d });
        pusher.send(lib.encodePusherTask({ cmd: lib.PusherCmd.Message, uuid: d.bytes, content }));
        sent++;
      }
    }
    // A message not received within 10 s is lost, unless its device left meanwhile.
    const now = performance.now();
    for (const [k, v] of inFlight) {
      if (now - v.at < 10_000) break;
      inFlight.delete(k);
      if (!v.device.gone) lost++;
      else sent--;
    }
  }, 20);

  // Churn: 5 devices leave, 5 new ones arrive, every 2 s (a mix of UDP and TCP).
  const churnTimer = setInterval(() => void fleet.churn(5).catch(() => {}), 2_000);

  const gcSamples = !values['no-gc'];
  const sample = async () => {
    const s = await server.stats(gcSamples);
    const t = (performance.now() - t0) / 1000;
    rows.push({
      t,
      rss: s.rss / 1048576,
      heap: s.heapUsed / 1048576,
      external: s.external / 1048576,
      devices: s.devices,
      tcpLinks: s.tcpLinks,
      storeDevices: s.store.devices,
      storeBytes: s.store.bytes,
      heartbeats: s.heartbeats,
      expired: s.expired,
      sent,
      received,
      lost,
    });
    const r = rows.at(-1);
    console.log(
      `${fmtTime(t)}  RSS ${r.rss.toFixed(1)} MiB  heap ${r.heap.toFixed(1)} MiB  devices ${r.devices} (tcp ${r.tcpLinks}, expired ${r.expired})  ` +
        `store ${r.storeDevices}/${r.storeBytes} B  pushes ${sent} sent ${received} received ${lost} lost`,
    );
    writeFileSync(csvPath, toCsv(rows));
  };
  await sample();
  await new Promise((resolve) => {
    const timer = setInterval(async () => {
      if (crashed) {
        clearInterval(timer);
        return resolve();
      }
      await sample().catch(() => {});
      if (performance.now() - t0 >= durationMs) {
        clearInterval(timer);
        resolve();
      }
    }, sampleMs);
  });

  clearInterval(pushTimer);
  clearInterval(churnTimer);
  await fleet.closeAll();
  pusher.close();
  stopping = true;
  await server.stop();

  const after = rows.filter((r) => r.t * 1000 >= warmupMs);
  const rssFit = fit(after.map((r) => [r.t, r.rss]));
  const heapFit = fit(after.map((r) => [r.t, r.heap]));
  const perHour = (f) => f.slope * 3600;
  const windowS = after.length ? after.at(-1).t - after[0].t : 0;
  const long = windowS >= 20 * 60;
  const rise = rssFit.slope * windowS;
  const heapRise = heapFit.slope * windowS;
  const flat = long ? perHour(rssFit) < maxSlope && perHour(heapFit) < 2 : heapRise < 1;
  const pass = !crashed && lost === 0 && after.length >= 3 && flat;
  const verdict = {
    minutes: Number(values.minutes),
    samples: rows.length,
    samplesAfterWarmup: after.length,
    warmupSeconds: warmupMs / 1000,
    rssSlopeMiBPerHour: perHour(rssFit),
    heapSlopeMiBPerHour: perHour(heapFit),
    rssMin: Math.min(...after.map((r) => r.rss)),
    rssMax: Math.max(...after.map((r) => r.rss)),
    pushesSent: sent,
    pushesReceived: received,
    pushesLost: lost,
    crashed: crashed ? `${crashed.code ?? crashed.signal}` : null,
    expirySeconds: expiryMs / 1000,
    samplesAfterFullGc: gcSamples,
    windowSeconds: windowS,
    rssRiseOverWindowMiB: rise,
    heapRiseOverWindowMiB: heapRise,
    threshold: long
      ? `RSS slope < ${maxSlope} MiB/hour and heap slope < 2 MiB/hour over the ${(windowS / 60).toFixed(0)} min after warm-up, no push lost, no crash`
      : `short run (${(windowS / 60).toFixed(1)} min after warm-up; the MiB/hour thresholds need 20 min): fitted heap rise < 1 MiB across the window, no push lost, no crash`,
    pass,
  };
  writeFileSync(htmlPath, html(rows, warmupMs / 1000, rssFit, heapFit, verdict));
  console.log('');
  console.log(
    `RSS after warm-up: ${verdict.rssMin.toFixed(1)}..${verdict.rssMax.toFixed(1)} MiB, slope ${verdict.rssSlopeMiBPerHour.toFixed(2)} MiB/hour ` +
      `(heap ${verdict.heapSlopeMiBPerHour.toFixed(2)} MiB/hour) over ${after.length} samples; fitted rise over ${(windowS / 60).toFixed(1)} min: RSS ${rise.toFixed(2)} MiB, heap ${heapRise.toFixed(2)} MiB`,
  );
  console.log(`pushes: ${sent} sent, ${received} received, ${lost} lost; crashes: ${crashed ? 1 : 0}`);
  console.log(`${pass ? 'PASS' : 'FAIL'}: ${verdict.threshold}`);
  console.log(`csv: ${csvPath}\nplot: ${htmlPath}`);
  process.exitCode = pass ? 0 : 1;
}

// ------------------------------------------------------------------ fleet

class Fleet {
  devices = [];
  n = 0;
  onMessage = () => {};
  constructor(lib, port) {
    this.lib = lib;
    this.port = port;
  }
  get size() {
    return this.devices.length;
  }
  async add(transport) {
    const uuid = this.lib.uuidFromKey(`soak-${process.pid}-${this.n++}`);
    const client = new this.lib.DeviceClient({ port: this.port, uuid, transport, heartbeatIntervalMs: 5_000, reconnectMaxDelayMs: 2_000 });
    const d = { client, bytes: uuid, gone: false, transport };
    client.messages.subscribe((m) => {
      if (m.kind === 'message') this.onMessage(m.content.toString());
    });
    await client.connect();
    this.devices.push(d);
    return d;
  }
  async grow(transport, k) {
    for (let i = 0; i < k; i++) {
      await this.add(transport);
      // Spread the heartbeats over the interval.
      if (i % 25 === 24) await sleep(100);
    }
  }
  random() {
    return this.devices[Math.floor(Math.random() * this.devices.length)];
  }
  async churn(k) {
    for (let i = 0; i < k; i++) {
      const idx = Math.floor(Math.random() * this.devices.length);
      const [d] = this.devices.splice(idx, 1);
      d.gone = true;
      await d.client.close();
      await this.add(d.transport);
    }
  }
  async closeAll() {
    for (const d of this.devices) {
      d.gone = true;
      await d.client.close();
    }
  }
}

/** A pusher connection that reconnects (the port closes idle ones) and queues while down. */
async function openPusher(lib, port) {
  let sock;
  let up = false;
  let closed = false;
  const queue = [];
  const open = () =>
    new Promise((resolve) => {
      sock = connect({ host: '127.0.0.1', port, noDelay: true });
      sock.on('data', () => {});
      sock.on('error', () => {});
      sock.once('connect', () => {
        up = true;
        for (const b of queue.splice(0)) sock.write(b);
        resolve();
      });
      sock.once('close', () => {
        up = false;
        if (!closed) setTimeout(open, 50);
      });
    });
  await open();
  return {
    send(b) {
      if (up) sock.write(b);
      else queue.push(b);
    },
    close() {
      closed = true;
      sock.destroy();
    },
  };
}

// ------------------------------------------------------------ stats & plot

/** Least-squares line through [x, y] points. */
function fit(points) {
  const n = points.length;
  if (n < 2) return { slope: NaN, intercept: NaN };
  let sx = 0;
  let sy = 0;
  let sxx = 0;
  let sxy = 0;
  for (const [x, y] of points) {
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  return { slope, intercept: (sy - slope * sx) / n };
}

function toCsv(rows) {
  const cols = ['t', 'rss', 'heap', 'external', 'devices', 'tcpLinks', 'storeDevices', 'storeBytes', 'heartbeats', 'expired', 'sent', 'received', 'lost'];
  const head = ['t_s', 'rss_mib', 'heap_mib', 'external_mib', 'devices', 'tcp_links', 'store_devices', 'store_bytes', 'heartbeats', 'expired', 'pushes_sent', 'pushes_received', 'pushes_lost'];
  return [head.join(','), ...rows.map((r) => cols.map((c) => (typeof r[c] === 'number' && !Number.isInteger(r[c]) ? r[c].toFixed(3) : r[c])).join(','))].join('\n') + '\n';
}

function html(rows, warmup, rssFit, heapFit, verdict) {
  const W = 900;
  const H = 360;
  const L = 60;
  const B = 40;
  const tMax = Math.max(1, ...rows.map((r) => r.t));
  const yMax = Math.ceil((Math.max(...rows.map((r) => r.rss)) * 1.15) / 10) * 10;
  const X = (t) => L + (t / tMax) * (W - L - 20);
  const Y = (v) => H - B - (v / yMax) * (H - B - 20);
  const line = (key) => rows.map((r, i) => `${i ? 'L' : 'M'}${X(r.t).toFixed(1)},${Y(r[key]).toFixed(1)}`).join(' ');
  const reg = (f) => `M${X(warmup).toFixed(1)},${Y(f.intercept + f.slope * warmup).toFixed(1)} L${X(tMax).toFixed(1)},${Y(f.intercept + f.slope * tMax).toFixed(1)}`;
  const yTicks = Array.from({ length: 6 }, (_, i) => (yMax * i) / 5);
  const xTicks = Array.from({ length: 7 }, (_, i) => (tMax * i) / 6);
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
  <rect x="${L}" y="20" width="${(X(warmup) - L).toFixed(1)}" height="${H - B - 20}" fill="#eee"/>
  <text x="${L + 4}" y="32" fill="#888">warm-up</text>
  ${yTicks.map((v) => `<line x1="${L}" x2="${W - 20}" y1="${Y(v)}" y2="${Y(v)}" stroke="#ddd"/><text x="${L - 6}" y="${Y(v) + 4}" text-anchor="end">${v.toFixed(0)}</text>`).join('\n  ')}
  ${xTicks.map((t) => `<text x="${X(t)}" y="${H - B + 16}" text-anchor="middle">${fmtTime(t)}</text>`).join('\n  ')}
  <text x="14" y="${H / 2}" transform="rotate(-90 14 ${H / 2})" text-anchor="middle">MiB</text>
  <path d="${line('rss')}" fill="none" stroke="#1f77b4" stroke-width="2"/>
  <path d="${line('heap')}" fill="none" stroke="#2ca02c" stroke-width="2"/>
  ${Number.isFinite(rssFit.slope) ? `<path d="${reg(rssFit)}" stroke="#d62728" stroke-dasharray="6 4" stroke-width="2"/>` : ''}
  ${Number.isFinite(heapFit.slope) ? `<path d="${reg(heapFit)}" stroke="#ff7f0e" stroke-dasharray="6 4" stroke-width="1.5"/>` : ''}
  <g transform="translate(${W - 300},30)">
    <line x1="0" x2="20" y1="0" y2="0" stroke="#1f77b4" stroke-width="2"/><text x="26" y="4">server RSS</text>
    <line x1="0" x2="20" y1="16" y2="16" stroke="#2ca02c" stroke-width="2"/><text x="26" y="20">V8 heap used</text>
    <line x1="140" x2="160" y1="0" y2="0" stroke="#d62728" stroke-dasharray="6 4" stroke-width="2"/><text x="166" y="4">RSS trend</text>
    <line x1="140" x2="160" y1="16" y2="16" stroke="#ff7f0e" stroke-dasharray="6 4" stroke-width="1.5"/><text x="166" y="20">heap trend</text>
  </g>
</svg>`;
  const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>nest-push soak</title>
<style>body{font-family:sans-serif;margin:24px;color:#222} td,th{padding:2px 10px;text-align:left} .pass{color:#2ca02c} .fail{color:#d62728}</style>
</head><body>
<h1>nest-push soak: <span class="${verdict.pass ? 'pass' : 'fail'}">${verdict.pass ? 'PASS' : 'FAIL'}</span></h1>
<p>${esc(verdict.threshold)}</p>
${svg}
<table>
${Object.entries(verdict)
  .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(3) : v)}</td></tr>`)
  .join('\n')}
</table>
<p>Samples: ${rows.length}; the CSV next to this file has every column.</p>
</body></html>
`;
}

function fmtTime(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
}

// Last, so the classes above are initialised before main runs.
if (process.argv[2] === '--serve') await serve(JSON.parse(process.argv[3] ?? '{}'));
else await main();
