#!/usr/bin/env node
// Port fuzzer (issue 9): throws N random and mutated frames at each port of a
// running server — UDP 9966, TCP 9966, TCP 9999 — and reports crashes (must
// be 0), the server's memory before/after, what it counted, and whether a
// well-behaved UDP device and TCP device kept getting their pushes during and
// after the fuzzing.
//
// The server is the real stack from dist (DeviceEngine + MemoryOfflineStore +
// LocalPushRouter + PushDispatcher + both transports, wired as PushModule
// wires them) in a child process of its own, on 127.0.0.1 with OS-chosen
// ports (the device port number is shared by UDP and TCP, like 9966). A crash
// is the child exiting; its RSS is read over IPC, after a forced GC.
//
// Usage: npm run build && node bench/fuzz-ports.mjs [--frames 1000000] [--rounds 2]
//        [--seed 1] [--ports udp,tcp,pusher]
// The frames per port are thrown in --rounds rounds over all ports; the
// server's memory after each round (after GC) tells a leak (growing every
// round) from a high-water mark (growing once).
// Loopback only; bounded (stops after the frames are sent); exits non-zero on a crash.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startServer, startServerChild } from './lib/server-child.mjs';
import { machine, sleep, mb, delta, fmtInt } from './lib/format.mjs';

const SELF = fileURLToPath(import.meta.url);

if (process.argv[2] === '--serve') await serve(JSON.parse(process.argv[3] ?? '{}'));
else await main();

// ------------------------------------------------------------ server child

async function serve(opts) {
  // Socket errors (ICMP unreachable for a closed fuzz socket, ...) are counted, not logged.
  let socketErrors = 0;
  const { lib, store, engine, dispatcher, device, pusher } = await startServer(opts, () => socketErrors++);
  const stats = (gc) => {
    if (gc) globalThis.gc?.();
    const m = process.memoryUsage();
    return {
      rss: m.rss,
      heapUsed: m.heapUsed,
      external: m.external,
      devices: engine.deviceCount,
      tcpLinks: engine.tcpLinkCount,
      tableBytes: engine.table.byteSize,
      store: store.stats(),
      engine: structuredClone(engine.counters),
      device: { ...device.counters },
      pusher: structuredClone(pusher.counters),
      pusherOpen: pusher.openConnections,
      inFlight: dispatcher.inFlight,
      queued: dispatcher.queued,
      socketErrors,
    };
  };
  process.on('message', (m) => {
    if (m.type === 'stats') process.send({ type: 'stats', id: m.id, stats: stats(m.gc) });
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ type: 'ready', devicePort: device.port, pusherPort: pusher.port });
}


// ------------------------------------------------------------------- main

async function main() {
  const { values } = parseArgs({
    options: {
      frames: { type: 'string', default: '1000000' },
      seed: { type: 'string', default: '1' },
      ports: { type: 'string', default: 'udp,tcp,pusher' },
      rounds: { type: 'string', default: '2' },
    },
  });
  const N = Number(values.frames);
  const R = Number(values.rounds);
  const rnd = prng(Number(values.seed));
  const lib = await import('../dist/index.js');

  const server = startServerChild(SELF, { engine: { maxDevices: 200_000 } });
  const { devicePort, pusherPort } = await server.ready;
  let crash = null;
  let stopping = false;
  server.exited.then((e) => {
    if (!stopping) crash = e;
  });

  // Well-behaved devices, and a pusher connection that sends them a message every 50 ms.
  const legit = await startLegit(lib, devicePort, pusherPort);
  await sleep(500);
  const before = await server.stats(true);
  console.log(
    `fuzz-ports: ${fmtInt(N)} frames per port in ${R} round(s), seed ${values.seed}; server pid ${server.child.pid}, ` +
      `device port ${devicePort} (UDP+TCP), pusher port ${pusherPort}; ${machine()}`,
  );
  console.log(`server before: ${memLine(before)}`);

  const gen = generators(lib, rnd);
  const per = Math.ceil(N / R);
  const phases = { udp: () => fuzzUdp(gen, devicePort, per, server), tcp: () => fuzzTcp(gen, devicePort, per), pusher: () => fuzzPusher(gen, pusherPort, per) };
  const totals = {};
  for (let round = 1; round <= R && !crash; round++) {
    console.log(`\n--- round ${round}/${R}: ${fmtInt(per)} frames per port`);
    for (const name of values.ports.split(',')) {
      const s0 = await server.stats();
      legit.mark();
      const t0 = performance.now();
      const r = await phases[name]();
      const ms = performance.now() - t0;
      await sleep(300);
      const s1 = crash ? s0 : await server.stats();
      totals[name] = (totals[name] ?? 0) + r.frames;
      report({ name, ms, r, s0, s1, legit: legit.window() });
      if (crash) break;
    }
    if (!crash) console.log(`server after round ${round}: ${memLine(await server.stats(true))}`);
  }

  // After: a quiet period, then the legit devices must still get everything.
  legit.mark();
  await sleep(3_000);
  const afterLegit = legit.window();
  const after = crash ? null : await server.stats(true);
  await legit.stop();
  stopping = true;
  await server.stop();

  console.log('');
  console.log(`frames thrown: ${Object.entries(totals).map(([k, v]) => `${k} ${fmtInt(v)}`).join(', ')}`);
  console.log(`crashes: ${crash ? 1 : 0}${crash ? ` (exit ${crash.code ?? crash.signal}): ${crash.stderr}` : ''}`);
  if (after) {
    console.log(`server after:  ${memLine(after)}; since before: RSS ${delta(after.rss - before.rss)}, heap ${delta(after.heapUsed - before.heapUsed)}`);
    console.log(`  held state: ${fmtInt(after.devices)} device records (table ${mb(after.tableBytes)}), store ${fmtInt(after.store.devices)} devices / ${mb(after.store.bytes)} — registered by the well-formed frames among the fuzz`);
  }
  console.log(`legit after fuzzing (3 s): UDP ${afterLegit.udp}, TCP ${afterLegit.tcp} (received/sent)`);
  process.exitCode = crash ? 1 : 0;
}

function report({ name, ms, r, s0, s1, legit }) {
  const label = { udp: 'UDP 9966', tcp: 'TCP 9966', pusher: 'TCP 9999' }[name];
  const d = (a, b) => b - a;
  console.log('');
  console.log(`${label}: ${fmtInt(r.frames)} frames (${mb(r.bytes)}) in ${(ms / 1000).toFixed(1)} s = ${fmtInt(Math.round(r.frames / (ms / 1000)))}/s${r.connections ? ` over ${fmtInt(r.connections)} connections` : ''}`);
  if (name === 'udp') {
    const drops = Object.entries(s1.engine.drops)
      .map(([k, v]) => [k, v - s0.engine.drops[k]])
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k} ${fmtInt(v)}`)
      .join(', ');
    console.log(`  server read ${fmtInt(d(s0.device.datagrams, s1.device.datagrams))} datagrams; heartbeats ${fmtInt(d(s0.engine.heartbeats, s1.engine.heartbeats))}; drops: ${drops}`);
  } else if (name === 'tcp') {
    console.log(
      `  server: ${fmtInt(d(s0.device.tcpConnections, s1.device.tcpConnections))} connections, ${fmtInt(d(s0.device.tcpProtocolClosed, s1.device.tcpProtocolClosed))} closed for a malformed frame, ` +
        `${fmtInt(d(s0.engine.heartbeats, s1.engine.heartbeats))} heartbeats, ${fmtInt(d(s0.engine.acks, s1.engine.acks))} acks`,
    );
  } else {
    const mal = Object.entries(s1.pusher.malformed)
      .map(([k, v]) => `${k} ${fmtInt(v - s0.pusher.malformed[k])}`)
      .join(', ');
    console.log(
      `  server: ${fmtInt(d(s0.pusher.connections, s1.pusher.connections))} connections, ${fmtInt(d(s0.pusher.accepted, s1.pusher.accepted))} tasks stored (0x00), ` +
        `malformed (0x01): ${mal}; 0xff ${fmtInt(d(s0.pusher.errors, s1.pusher.errors))}; ${fmtInt(d(s0.pusher.protocolClosed, s1.pusher.protocolClosed))} closed for a bad version`,
    );
  }
  console.log(
    `  server RSS ${mb(s0.rss)} -> ${mb(s1.rss)}; legit during: UDP ${legit.udp}, TCP ${legit.tcp} (received/sent), ` +
      `p99 ${legit.p99.toFixed(1)} ms (timed in this process, which is busy generating the fuzz)`,
  );
}

// ------------------------------------------------------------- legit load

async function startLegit(lib, devicePort, pusherPort) {
  const mk = (transport) => new lib.DeviceClient({ port: devicePort, uuid: lib.uuidFromKey(`legit-${transport}-${process.pid}`), transport, heartbeatIntervalMs: 1_000 });
  const devs = { udp: mk('udp'), tcp: mk('tcp') };
  const sentAt = new Map();
  const got = { udp: [], tcp: [] };
  let sent = { udp: 0, tcp: 0 };
  let recv = { udp: 0, tcp: 0 };
  let markAt = 0;
  for (const [k, d] of Object.entries(devs)) {
    d.messages.subscribe((m) => {
      if (m.kind !== 'message') return;
      const t0 = sentAt.get(m.content.toString());
      if (t0 === undefined) return;
      sentAt.delete(m.content.toString());
      if (t0 < markAt) return;
      recv[k]++;
      got[k].push(m.receivedAt - t0);
    });
    await d.connect();
  }
  const sock = connect({ host: '127.0.0.1', port: pusherPort, noDelay: true });
  sock.on('data', () => {});
  sock.on('error', () => {});
  await new Promise((r) => sock.once('connect', r));
  let seq = 0;
  const timer = setInterval(() => {
    for (const [k, d] of Object.entries(devs)) {
      const text = `legit ${k} ${seq++}`;
      sentAt.set(text, performance.now());
      sent[k]++;
      sock.write(lib.encodePusherTask({ cmd: lib.PusherCmd.Message, uuid: Buffer.from(d.uuid, 'hex'), content: Buffer.from(text) }));
    }
  }, 50);
  return {
    mark() {
      markAt = performance.now();
      sent = { udp: 0, tcp: 0 };
      recv = { udp: 0, tcp: 0 };
      got.udp = [];
      got.tcp = [];
    },
    window() {
      const all = [...got.udp, ...got.tcp].sort((a, b) => a - b);
      return { udp: `${recv.udp}/${sent.udp}`, tcp: `${recv.tcp}/${sent.tcp}`, p99: all.length ? all[Math.ceil(all.length * 0.99) - 1] : NaN };
    },
    async stop() {
      clearInterval(timer);
      sock.destroy();
      await Promise.all(Object.values(devs).map((d) => d.close()));
    },
  };
}

// -------------------------------------------------------------- generators

function generators(lib, rnd) {
  const int = (n) => Math.floor(rnd() * n);
  const bytes = (n) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = int(256);
    return b;
  };
  // A pool of uuids, so well-formed frames among the fuzz touch a bounded set of records.
  const pool = Array.from({ length: 1024 }, () => bytes(16));
  const uuid = () => pool[int(pool.length)];
  const CLIENT_CMDS = [0x00, 0x10, 0x11, 0x20, 0xff];
  const PUSHER_CMDS = [0x10, 0x11, 0x20];
  const client = () => lib.encodeClientFrame({ appId: int(256), cmd: CLIENT_CMDS[int(5)], uuid: uuid(), mask: BigInt(int(2 ** 31)) });
  const task = () => {
    const cmd = PUSHER_CMDS[int(3)];
    return lib.encodePusherTask({ appId: int(256), cmd, uuid: uuid(), mask: BigInt(1 + int(2 ** 31)), content: cmd === 0x20 ? bytes(1 + (rnd() < 0.1 ? 480 + int(60) : int(40))) : undefined });
  };
  /** Bit flips, overwrites, forged length fields, truncation, insertion, deletion, duplication. */
  function mutate(f, lenAt) {
    let s = Buffer.from(f);
    for (let k = int(4); k >= 0; k--) {
      const r = rnd();
      const n = s.length;
      if (n === 0) break;
      if (r < 0.25) s[int(n)] ^= 1 << int(8);
      else if (r < 0.45) s[int(n)] = int(256);
      else if (r < 0.65) {
        if (n >= lenAt + 2) s.writeUInt16BE(rnd() < 0.5 ? int(16) : int(0x10000), lenAt);
      } else if (r < 0.75) s = s.subarray(0, int(n + 1));
      else if (r < 0.85) {
        const p = int(n + 1);
        s = Buffer.concat([s.subarray(0, p), bytes(int(30)), s.subarray(p)]);
      } else if (r < 0.95) {
        const p = int(n + 1);
        s = Buffer.concat([s.subarray(0, p), s.subarray(p + 1 + int(30))]);
      } else {
        const p = int(n + 1);
        s = Buffer.concat([s.subarray(0, p + 1 + int(64)), s.subarray(p)]);
      }
    }
    return s;
  }
  return {
    int,
    datagram: () => (rnd() < 0.7 ? mutate(client(), 19) : bytes(rnd() < 0.02 ? int(1400) : int(100))),
    /** A TCP stream: valid frames with a mutated one now and then (the server stops at the first bad one). */
    clientStream: (k) => Buffer.concat(Array.from({ length: k }, () => (rnd() < 0.05 ? mutate(client(), 19) : client()))),
    taskStream: (k) => Buffer.concat(Array.from({ length: k }, () => (rnd() < 0.05 ? mutate(task(), 19) : rnd() < 0.01 ? bytes(int(40)) : task()))),
  };
}

// ------------------------------------------------------------------ fuzzers

async function fuzzUdp(gen, port, n, server) {
  const socks = await Promise.all(
    Array.from({ length: 16 }, (_, i) => {
      const s = createSocket('udp4');
      s.on('error', () => {});
      return new Promise((r) => s.bind({ address: `127.10.0.${i + 1}`, port: 0 }, () => r(s)));
    }),
  );
  let frames = 0;
  let bytes = 0;
  const s0 = (await server.stats()).device.datagrams;
  while (frames < n) {
    for (let i = 0; i < 512 && frames < n; i++, frames++) {
      const d = gen.datagram();
      bytes += d.length;
      socks[frames & 15].send(d, port, '127.0.0.1');
    }
    await new Promise((r) => setImmediate(r));
    // Flow control: keep the server's socket buffer from overflowing (a lost datagram fuzzes nothing).
    if (frames % 4096 === 0) {
      while (frames - ((await server.stats()).device.datagrams - s0) > 16_384) await sleep(1);
    }
  }
  await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
  return { frames, bytes };
}

async function fuzzStreams(port, n, makeStream, gen, localBlock) {
  let frames = 0;
  let bytes = 0;
  let connections = 0;
  const worker = async (w) => {
    while (frames < n) {
      const k = 1 + gen.int(200);
      frames += k;
      connections++;
      const stream = makeStream(k);
      bytes += stream.length;
      await new Promise((resolve) => {
        const s = connect({ host: '127.0.0.1', port, localAddress: `127.${localBlock}.${w}.${1 + (connections % 250)}` });
        s.on('data', () => {});
        s.on('error', () => {});
        s.on('close', resolve);
        s.once('connect', () => {
          // Random chunking: up to 4 writes at random cut points.
          let off = 0;
          for (let c = gen.int(4); c > 0 && off < stream.length; c--) {
            const cut = off + gen.int(stream.length - off + 1);
            s.write(stream.subarray(off, cut));
            off = cut;
          }
          s.end(stream.subarray(off));
          setTimeout(() => s.destroy(), 200).unref();
        });
      });
    }
  };
  await Promise.all(Array.from({ length: 32 }, (_, w) => worker(w)));
  return { frames, bytes, connections };
}

function fuzzTcp(gen, port, n) {
  return fuzzStreams(port, n, gen.clientStream, gen, 11);
}
function fuzzPusher(gen, port, n) {
  return fuzzStreams(port, n, gen.taskStream, gen, 12);
}

// -------------------------------------------------------------------- misc

function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}
function memLine(s) {
  return `RSS ${mb(s.rss)}, heap ${mb(s.heapUsed)}, external ${mb(s.external)} (after GC)`;
}
