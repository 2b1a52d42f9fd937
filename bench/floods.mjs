#!/usr/bin/env node
// Flood benchmark (issue 9): the attacks of test/hardening/floods.spec.ts at a
// larger scale, each for --seconds, with figures:
//
//   idle        a UDP device and a TCP device get a push every 10 ms (baseline)
//   garbage     UDP garbage from 32 source addresses, as fast as two threads can send
//   heartbeats  heartbeats of fresh uuids from 256 addresses against maxDevices
//   slowloris   thousands of TCP connections to both ports that stall or drip a byte
//   amplify     64 addresses claiming 200 uuids that hold 500-byte messages
//
// For each: the legitimate devices' push latency (pusher port -> device, p50 /
// p99 / max, and p99 against idle: target within 10x), pushes lost, what the
// server counted, and its memory. The server runs from dist in a child
// process; the attackers run in worker threads of this process; the legit
// devices and their pusher connection on its main thread. Loopback only.
//
// Usage: npm run build && node bench/floods.mjs [--seconds 10] [--scenarios idle,garbage,...]
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { setPriority } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { startServer, startServerChild } from './lib/server-child.mjs';
import { machine, sleep, mb, delta, fmtInt } from './lib/format.mjs';

const SELF = fileURLToPath(import.meta.url);

/** Limits of the server under attack (see SECURITY.md for the defaults). */
const SERVER = {
  engine: { maxDevices: 20_000 },
  device: { maxTcpConnections: 2_000, tcpIdleTimeoutMs: 2_000 },
  pusher: { maxConnections: 256, idleTimeoutMs: 2_000 },
};

if (process.argv[2] === '--serve') await serve(JSON.parse(process.argv[3] ?? '{}'));
else if (!isMainThread) await attacker(workerData);
else await main();

// ------------------------------------------------------------ server child

async function serve(opts) {
  const { lib, store, engine, dispatcher, device, pusher } = await startServer(opts);
  // How long the server's own event loop was blocked: tells server stalls from scheduling delay elsewhere on the box.
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const stats = (gc, resetLoop) => {
    if (gc) globalThis.gc?.();
    const m = process.memoryUsage();
    const loopDelay = { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
    if (resetLoop) loop.reset();
    return {
      loopDelay,
      rss: m.rss,
      heapUsed: m.heapUsed,
      devices: engine.deviceCount,
      tableBytes: engine.table.byteSize,
      store: store.stats(),
      engine: structuredClone(engine.counters),
      device: { ...device.counters },
      // Internal gauge (TS-private, read for the benchmark only): open device TCP sockets.
      tcpOpen: device.sockets.size,
      pusher: structuredClone(pusher.counters),
      pusherOpen: pusher.openConnections,
    };
  };
  process.on('message', (m) => {
    if (m.type === 'stats') process.send({ type: 'stats', id: m.id, stats: stats(m.gc, m.resetLoop) });
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ type: 'ready', devicePort: device.port, pusherPort: pusher.port });
}


// ------------------------------------------------------------------- main

async function main() {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '10' },
      // heartbeats last: the device table it fills stays full (records expire after expiryMs, 50 h by default).
      scenarios: { type: 'string', default: 'idle,garbage,slowloris,amplify,heartbeats' },
    },
  });
  const seconds = Number(values.seconds);
  const lib = await import('../dist/index.js');
  const server = startServerChild(SELF, SERVER);
  const { devicePort, pusherPort } = await server.ready;
  let crashed = null;
  let stopping = false;
  server.exited.then((e) => {
    if (!stopping) crashed = e;
  });
  const legit = await startLegit(lib, devicePort, pusherPort);
  await legit.measure(2); // warm-up
  const base = await server.stats(true);
  console.log(`floods: ${seconds} s per scenario; server pid ${server.child.pid} (limits ${JSON.stringify(SERVER)}); ${machine()}`);
  console.log(`server at start: RSS ${mb(base.rss)}, heap ${mb(base.heapUsed)} (after GC)`);

  const results = [];
  let idleP99 = NaN;
  for (const name of values.scenarios.split(',')) {
    const s0 = await server.stats(false, true);
    const attack = name === 'idle' ? null : startAttack(name, { devicePort, pusherPort, seconds, victims: name === 'amplify' ? await makeVictims(lib, legit, server) : [] });
    const peak = { rss: s0.rss, tcpOpen: 0, pusherOpen: 0, devices: 0 };
    const sampler = setInterval(() => {
      server.stats().then((s) => {
        peak.rss = Math.max(peak.rss, s.rss);
        peak.tcpOpen = Math.max(peak.tcpOpen, s.tcpOpen);
        peak.pusherOpen = Math.max(peak.pusherOpen, s.pusherOpen);
        peak.devices = Math.max(peak.devices, s.devices);
      }, () => {});
    }, 250);
    await sleep(name === 'idle' ? 0 : 300);
    const lat = await legit.measure(seconds - (name === 'idle' ? 0 : 0.3));
    const a = attack ? await attack : null;
    clearInterval(sampler);
    await sleep(500);
    const s1 = crashed ? s0 : await server.stats();
    if (name === 'idle') idleP99 = lat.p99;
    const row = { name, lat, a, s0, s1, peak, ratio: lat.p99 / idleP99 };
    results.push(row);
    print(row);
    if (crashed) break;
    // Let slow connections and idle timers drain before the next scenario.
    if (name === 'slowloris') await sleep(SERVER.device.tcpIdleTimeoutMs + 1_000);
  }

  const end = crashed ? null : await server.stats(true);
  await legit.stop();
  stopping = true;
  await server.stop();
  console.log('');
  console.log(`crashes: ${crashed ? `1 (${crashed.code ?? crashed.signal}) ${crashed.stderr}` : 0}`);
  if (end) console.log(`server at end: RSS ${mb(end.rss)} (${delta(end.rss - base.rss)} since start), heap ${mb(end.heapUsed)} (${delta(end.heapUsed - base.heapUsed)}), ${fmtInt(end.devices)} device records, table ${mb(end.tableBytes)} (after GC)`);
  console.log('');
  console.log('| scenario | attack | legit p50 / p99 / max (ms) | p99 vs idle | lost | server loop delay p99 / max (ms) | server peak RSS |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of results) {
    console.log(
      `| ${r.name} | ${r.a ? r.a.summary : '-'} | ${r.lat.p50.toFixed(2)} / ${r.lat.p99.toFixed(2)} / ${r.lat.max.toFixed(1)} | ${r.name === 'idle' ? '1x' : `${r.ratio.toFixed(1)}x`} | ${r.lat.lost}/${r.lat.sent} | ${r.s1.loopDelay.p99.toFixed(1)} / ${r.s1.loopDelay.max.toFixed(1)} | ${mb(r.peak.rss)} |`,
    );
  }
  process.exitCode = crashed ? 1 : 0;
}

function print({ name, lat, a, s0, s1, peak, ratio }) {
  const d = (f) => f(s1) - f(s0);
  console.log('');
  console.log(`[${name}] ${a ? a.summary : 'no attack'}`);
  console.log(`  legit pushes: ${lat.sent} sent, ${lat.lost} lost; latency p50 ${lat.p50.toFixed(2)} ms, p99 ${lat.p99.toFixed(2)} ms, max ${lat.max.toFixed(1)} ms${name === 'idle' ? '' : ` (p99 ${ratio.toFixed(1)}x idle)`}`);
  console.log(`  server event-loop delay: p99 ${s1.loopDelay.p99.toFixed(1)} ms, max ${s1.loopDelay.max.toFixed(1)} ms`);
  if (name === 'garbage' || name === 'heartbeats') {
    const read = d((s) => s.device.datagrams);
    const drops = Object.entries(s1.engine.drops)
      .map(([k, v]) => [k, v - s0.engine.drops[k]])
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k} ${fmtInt(v)}`)
      .join(', ');
    console.log(`  server read ${fmtInt(read)} datagrams (${fmtInt(Math.round(read / a.seconds))}/s; the kernel dropped ${fmtInt(Math.max(0, a.sent - read))} of ${fmtInt(a.sent)} sent); drops: ${drops}`);
    console.log(`  device records ${fmtInt(s1.devices)} (peak ${fmtInt(peak.devices)}, max ${fmtInt(SERVER.engine.maxDevices)}), table ${mb(s1.tableBytes)}`);
  }
  if (name === 'slowloris') {
    console.log(
      `  device port: ${fmtInt(d((s) => s.device.tcpConnections))} accepted, ${fmtInt(d((s) => s.device.tcpRefused))} refused at the cap (${SERVER.device.maxTcpConnections}), ` +
        `${fmtInt(d((s) => s.device.tcpIdleClosed))} cut by the idle timeout (${SERVER.device.tcpIdleTimeoutMs} ms); peak open on the server ${fmtInt(peak.tcpOpen)}`,
    );
    console.log(
      `  pusher port: ${fmtInt(d((s) => s.pusher.connections))} accepted, ${fmtInt(d((s) => s.pusher.refusedLimit))} refused at the cap (${SERVER.pusher.maxConnections}), ` +
        `${fmtInt(d((s) => s.pusher.idleClosed))} cut by the idle timeout (${SERVER.pusher.idleTimeoutMs} ms); peak open ${fmtInt(peak.pusherOpen)}`,
    );
    console.log(`  a new TCP device during the attack: ${a.newcomer}`);
  }
  if (name === 'amplify') {
    console.log(`  ${a.addresses} addresses sent ${fmtInt(a.in)} B, received ${fmtInt(a.out)} B (${(a.out / a.in).toFixed(1)}x overall); worst address ${a.worst.toFixed(1)}x (limit udpReplyFactor 32); reply-budget drops ${fmtInt(d((s) => s.engine.drops['reply-budget']))}`);
  }
  console.log(`  server RSS ${mb(s0.rss)} -> ${mb(s1.rss)} (peak ${mb(peak.rss)}), heap ${mb(s0.heapUsed)} -> ${mb(s1.heapUsed)}`);
}

// ------------------------------------------------------------- legit load

async function startLegit(lib, devicePort, pusherPort) {
  const mk = (transport, i = 0) => new lib.DeviceClient({ port: devicePort, uuid: lib.uuidFromKey(`legit-${transport}-${i}-${process.pid}`), transport, heartbeatIntervalMs: 1_000 });
  const devs = [mk('udp'), mk('tcp')];
  const sentAt = new Map();
  let lat = [];
  for (const d of devs) {
    d.messages.subscribe((m) => {
      if (m.kind !== 'message') return;
      const t0 = sentAt.get(m.content.toString());
      if (t0 === undefined) return;
      sentAt.delete(m.content.toString());
      lat.push(m.receivedAt - t0);
    });
    await d.connect();
  }
  // An app server's pusher connection; the port closes idle connections, so it reconnects like PusherClient does.
  let sock;
  let stopped = false;
  const open = () =>
    new Promise((resolve) => {
      sock = connect({ host: '127.0.0.1', port: pusherPort, noDelay: true });
      sock.on('data', () => {});
      sock.on('error', () => {});
      sock.once('connect', resolve);
      sock.once('close', () => !stopped && setTimeout(open, 10));
    });
  await open();
  let seq = 0;
  const push = (uuid, content) => sock.write(lib.encodePusherTask({ cmd: lib.PusherCmd.Message, uuid: Buffer.from(uuid, 'hex'), content }));
  return {
    push,
    /** Pushes to the two devices in turn every 10 ms for `secs`; latency = task written -> message received. */
    async measure(secs) {
      lat = [];
      sentAt.clear();
      let sent = 0;
      const end = performance.now() + secs * 1000;
      while (performance.now() < end) {
        const text = `legit ${seq++}`;
        sentAt.set(text, performance.now());
        push(devs[seq % 2].uuid, Buffer.from(text));
        sent++;
        await sleep(10);
      }
      await sleep(1_000);
      const s = [...lat].sort((a, b) => a - b);
      const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)] : NaN);
      return { sent, lost: sent - s.length, p50: q(0.5), p99: q(0.99), max: s.at(-1) ?? NaN };
    },
    async stop() {
      stopped = true;
      sock.destroy();
      await Promise.all(devs.map((d) => d.close()));
    },
  };
}

/** 200 uuids that each hold a 500-byte message (stored through the pusher port while they are offline). */
async function makeVictims(lib, legit, server) {
  const victims = Array.from({ length: 200 }, (_, i) => lib.uuidFromKey(`victim-${i}-${process.pid}`).toString('hex'));
  const before = (await server.stats()).pusher.accepted;
  for (let attempt = 1; attempt <= 5; attempt++) {
    for (const v of victims) legit.push(v, Buffer.alloc(500, 0x76));
    await sleep(300);
    const accepted = (await server.stats()).pusher.accepted - before;
    if (accepted >= victims.length * attempt) return victims;
    console.log(`  (victims: ${accepted} of ${victims.length * attempt} pushes accepted; pushing again)`);
  }
  throw new Error('could not store the victims\' messages');
}

// ------------------------------------------------------------------ attacks

function startAttack(name, opts) {
  const run = (extra) =>
    new Promise((resolve, reject) => {
      const w = new Worker(SELF, { workerData: { name, ...opts, ...extra } });
      w.once('message', resolve);
      w.once('error', reject);
    });
  const t0 = performance.now();
  if (name === 'garbage' || name === 'heartbeats') {
    const per = name === 'garbage' ? 16 : 128;
    return Promise.all([0, 1].map((k) => run({ addresses: Array.from({ length: per }, (_, i) => `127.${30 + k}.${Math.floor(i / 250)}.${(i % 250) + 1}`), seed: k + 1 }))).then((rs) => {
      const sent = rs.reduce((n, r) => n + r.sent, 0);
      const secs = (performance.now() - t0) / 1000;
      return { sent, seconds: secs, summary: `${fmtInt(sent)} ${name === 'garbage' ? 'garbage datagrams' : 'fresh-uuid heartbeats'} from ${per * 2} addresses (${fmtInt(Math.round(sent / secs))}/s), ${fmtInt(rs.reduce((n, r) => n + r.received, 0))} B sent back` };
    });
  }
  if (name === 'slowloris') {
    return run({ deviceConns: 3_000, pusherConns: 400 }).then((r) => ({
      ...r,
      summary: `${fmtInt(r.deviceOpened)} connections to the device port, ${fmtInt(r.pusherOpened)} to the pusher port (half stall after 1 byte, half drip 1 byte / 500 ms; reopened when closed)`,
    }));
  }
  if (name === 'amplify') {
    return run({ addresses: Array.from({ length: 64 }, (_, i) => `127.33.0.${i + 1}`) }).then((r) => {
      const inB = r.rows.reduce((n, x) => n + x.sent, 0);
      const outB = r.rows.reduce((n, x) => n + x.received, 0);
      return {
        addresses: r.rows.length,
        in: inB,
        out: outB,
        worst: Math.max(...r.rows.map((x) => x.received / x.sent)),
        summary: `${r.rows.length} addresses, ${fmtInt(inB)} B of heartbeats in, ${fmtInt(outB)} B out`,
      };
    });
  }
  throw new Error(`unknown scenario ${name}`);
}

async function attacker(o) {
  // On Linux this lowers this thread only. The attackers share a small box with
  // the server and the measuring thread; at normal priority they would mostly
  // measure CPU starvation of the measurer (an attacker elsewhere costs us no CPU).
  try {
    setPriority(10);
  } catch {}
  const end = performance.now() + o.seconds * 1000;
  let x = (o.seed ?? 7) * 2654435761;
  const rnd = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
  const int = (n) => Math.floor(rnd() * n);
  const bytes = (n) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = int(256);
    return b;
  };
  const frame = (cmd, uuid) => {
    const b = Buffer.alloc(21);
    b[0] = 1;
    b[1] = 1;
    b[2] = cmd;
    uuid.copy(b, 3);
    return b;
  };
  const bindAll = (addresses) =>
    Promise.all(
      addresses.map(
        (a) =>
          new Promise((res) => {
            // A large receive buffer: bytes out are measured here, and must not be lost here.
            const s = createSocket({ type: 'udp4', recvBufferSize: 8 * 1024 * 1024 });
            s.on('error', () => {});
            s.stat = { address: a, sent: 0, received: 0 };
            s.on('message', (m) => (s.stat.received += m.length));
            s.bind({ address: a, port: 0 }, () => res(s));
          }),
      ),
    );

  if (o.name === 'garbage' || o.name === 'heartbeats') {
    const socks = await bindAll(o.addresses);
    let sent = 0;
    while (performance.now() < end) {
      for (let i = 0; i < 256; i++, sent++) {
        let d;
        if (o.name === 'heartbeats') d = frame(0x00, bytes(16));
        else {
          const r = rnd();
          d = r < 0.4 ? bytes(int(100)) : r < 0.8 ? frame([0x10, 0x20, 0xff, 0x42][int(4)], bytes(16)) : Buffer.concat([frame(0x00, bytes(16)), bytes(int(64))]);
          if (r >= 0.4 && r < 0.6) d[int(21)] = int(256);
        }
        socks[sent % socks.length].send(d, o.devicePort, '127.0.0.1');
      }
      await new Promise((r) => setImmediate(r));
    }
    await sleep(200);
    const received = socks.reduce((n, s) => n + s.stat.received, 0);
    await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
    parentPort.postMessage({ sent, received });
    return;
  }

  if (o.name === 'slowloris') {
    const stat = { deviceOpened: 0, pusherOpened: 0, deviceOpen: 0, peakDeviceOpen: 0, newcomer: 'not tried' };
    const hb = frame(0x00, bytes(16));
    const task = frame(0x10, bytes(16));
    const live = new Set();
    let n = 0;
    let over = false;
    const open = (port, kind, bytesOf) => {
      if (over) return;
      const k = n++;
      const s = connect({ host: '127.0.0.1', port, localAddress: `127.${40 + (k % 8)}.${Math.floor(k / 250) % 250}.${(k % 250) + 1}` });
      live.add(s);
      let drip;
      let openedAt = 0;
      s.on('error', () => {});
      s.on('connect', () => {
        openedAt = performance.now();
        stat[`${kind}Opened`]++;
        if (kind === 'device') stat.peakDeviceOpen = Math.max(stat.peakDeviceOpen, ++stat.deviceOpen);
        s.write(bytesOf.subarray(0, 1));
        if (k % 2) {
          let i = 1;
          drip = setInterval(() => s.write(bytesOf.subarray(i, ++i)), 500);
        }
      });
      s.on('close', () => {
        live.delete(s);
        clearInterval(drip);
        if (kind === 'device' && openedAt) stat.deviceOpen--;
        // Refused at once: back off a little; cut after holding a slot: come straight back.
        const refused = !openedAt || performance.now() - openedAt < 100;
        setTimeout(() => open(port, kind, bytesOf), refused ? 500 : 20);
      });
    };
    setTimeout(() => {
      over = true;
      for (const s of live) s.destroy();
    }, o.seconds * 1000);
    for (let i = 0; i < o.deviceConns; i++) open(o.devicePort, 'device', hb);
    for (let i = 0; i < o.pusherConns; i++) open(o.pusherPort, 'pusher', task);
    // Halfway through, a well-behaved TCP device tries to connect and register.
    await sleep((o.seconds * 1000) / 2);
    const t0 = performance.now();
    stat.newcomer = await new Promise((resolve) => {
      const tryOnce = (attempt) => {
        const s = connect({ host: '127.0.0.1', port: o.devicePort });
        s.on('error', () => {});
        s.on('connect', () => s.write(frame(0x00, bytes(16))));
        const kept = setTimeout(() => {
          s.destroy();
          resolve(`connected and kept its connection after ${attempt} attempt(s), ${(performance.now() - t0).toFixed(0)} ms`);
        }, 300);
        s.on('close', () => {
          clearTimeout(kept);
          if (performance.now() < end) setTimeout(() => tryOnce(attempt + 1), 50);
          else resolve(`refused on all ${attempt} attempts until the attack ended`);
        });
      };
      tryOnce(1);
    });
    await sleep(Math.max(0, end - performance.now()) + 300);
    parentPort.postMessage(stat);
    return;
  }

  if (o.name === 'amplify') {
    const socks = await bindAll(o.addresses);
    const victims = o.victims.map((v) => Buffer.from(v, 'hex'));
    let k = 0;
    while (performance.now() < end) {
      for (const s of socks) {
        const d = frame(0x00, victims[k++ % victims.length]);
        s.stat.sent += d.length;
        s.send(d, o.devicePort, '127.0.0.1');
      }
      await sleep(5);
    }
    await sleep(300);
    await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
    parentPort.postMessage({ rows: socks.map((s) => s.stat) });
  }
}

// -------------------------------------------------------------------- misc

