/**
 * A UDP flood generator that runs in a worker thread (its own event loop, so
 * the server under test is not slowed by the generator sharing its loop).
 *
 * It binds one socket per source address (any 127.0.0.0/8 address on Linux),
 * sends `total` datagrams round-robin over them, and classifies each datagram
 * as it builds it with an independent reading of protocol.md section 3 plus
 * the engine's rules (unknown uuid, ack from a foreign address), so the test
 * can compare the server's per-reason drop counters with what was sent.
 *
 * Flow control: the worker keeps at most `window` datagrams unread by the
 * server (the server's read count is published in `sab[0]`), so nothing is
 * lost in the kernel and the counts can be compared exactly, while the server
 * still runs flat out.
 */
import { Worker } from 'node:worker_threads';

export type FloodMode = 'garbage' | 'heartbeats';

export interface FloodOptions {
  port: number;
  addresses: string[];
  total: number;
  mode: FloodMode;
  /** Acks for this uuid (hex) come from the flood's addresses: the engine must call them foreign. */
  knownUuid?: string;
  window?: number;
  seed?: number;
}

export interface FloodResult {
  sent: number;
  bytes: number;
  ms: number;
  /** Expected outcome per datagram: a drop reason, or 'heartbeat' for a well-formed heartbeat. */
  counts: Record<string, number>;
  /** Bytes the flood's sockets received back from the server. */
  received: number;
}

const CODE = String.raw`
const { workerData, parentPort } = require('node:worker_threads');
const dgram = require('node:dgram');
const { port, addresses, total, mode, knownUuid, window, seed } = workerData;
const read = new Int32Array(workerData.sab);
let x = seed | 1;
const rnd = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 4294967296; };
const int = (n) => Math.floor(rnd() * n);
const bytes = (n) => { const b = Buffer.allocUnsafe(n); for (let i = 0; i < n; i++) b[i] = int(256); return b; };
const NEED = { 0x00: 0, 0x10: 0, 0x11: 8, 0x20: 0, 0xff: 0 };
const CMDS = [0x00, 0x10, 0x11, 0x20, 0xff];
const ACKS = [0x10, 0x11, 0x20, 0xff];
const known = knownUuid ? Buffer.from(knownUuid, 'hex') : null;
function frame(cmd, uuid) {
  const need = NEED[cmd];
  const b = Buffer.alloc(21 + need);
  b[0] = 1; b[1] = 1; b[2] = cmd; uuid.copy(b, 3); b.writeUInt16BE(need, 19);
  if (need) bytes(8).copy(b, 21);
  return b;
}
function classify(d) {
  if (d.length < 21) return 'too-short';
  if (d[0] !== 1) return 'bad-version';
  const need = NEED[d[2]];
  if (need === undefined) return 'unknown-cmd';
  if (d.readUInt16BE(19) !== need) return 'bad-data-length';
  if (d.length !== 21 + need) return 'bad-length';
  if (d[2] === 0x00) return 'heartbeat';
  if (known && d.subarray(3, 19).equals(known)) return 'ack-foreign-address';
  return 'unknown-device';
}
function garbage() {
  const r = rnd();
  if (r < 0.3) return bytes(int(81));
  if (r < 0.6) {
    const d = frame(CMDS[int(5)], bytes(16));
    for (let k = 1 + int(2); k > 0; k--) {
      const m = rnd();
      if (m < 0.4) d[int(d.length)] = int(256);
      else if (m < 0.7) d[int(21)] ^= 1 << int(8);
      else d.writeUInt16BE(int(0x10000), 19);
    }
    return rnd() < 0.2 ? d.subarray(0, int(d.length)) : d;
  }
  if (r < 0.75) return frame(ACKS[int(4)], bytes(16));
  if (r < 0.9 && known) return frame(ACKS[int(4)], known);
  // A well-formed header with a payload glued on: large and wrong.
  return Buffer.concat([frame(0x00, bytes(16)), bytes(100 + int(1300))]);
}
let received = 0;
(async () => {
  const socks = await Promise.all(addresses.map((a) => new Promise((res, rej) => {
    const s = dgram.createSocket('udp4');
    s.once('error', rej);
    s.bind({ address: a, port: 0 }, () => { s.off('error', rej); s.on('error', () => {}); s.on('message', (m) => { received += m.length; }); res(s); });
  })));
  const counts = {};
  let sent = 0, sentBytes = 0;
  const t0 = performance.now();
  while (sent < total) {
    while (sent - Atomics.load(read, 0) > window) await new Promise((r) => setTimeout(r, 1));
    const n = Math.min(64, total - sent);
    for (let i = 0; i < n; i++) {
      const d = mode === 'heartbeats' ? frame(0x00, bytes(16)) : garbage();
      const c = classify(d);
      counts[c] = (counts[c] || 0) + 1;
      socks[sent % socks.length].send(d, port, '127.0.0.1');
      sent++;
      sentBytes += d.length;
    }
    await new Promise((r) => setImmediate(r));
  }
  const ms = performance.now() - t0;
  // Anything the server sends back arrives within a few ms on loopback.
  await new Promise((r) => setTimeout(r, 50));
  await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
  parentPort.postMessage({ sent, bytes: sentBytes, ms, counts, received });
})().catch((e) => { throw e; });
`;

/**
 * Starts a flood. `serverRead()` must return how many flood datagrams the
 * server has read so far (it is polled every millisecond for flow control).
 */
export function startFlood(options: FloodOptions, serverRead: () => number): { done: Promise<FloodResult>; stop(): Promise<void> } {
  const sab = new SharedArrayBuffer(4);
  const read = new Int32Array(sab);
  const poll = setInterval(() => Atomics.store(read, 0, serverRead()), 1);
  const worker = new Worker(CODE, {
    eval: true,
    workerData: { window: 600, seed: 0x5eed, knownUuid: undefined, ...options, sab },
  });
  const done = new Promise<FloodResult>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`flood worker exited (${code}) before reporting`)));
  }).finally(() => clearInterval(poll));
  return {
    done,
    async stop() {
      clearInterval(poll);
      await worker.terminate();
    },
  };
}

/** `n` distinct loopback addresses in 127.<block>.x.y (never 127.0.0.1). */
export function loopbackAddresses(block: number, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `127.${block}.${Math.floor(i / 250)}.${(i % 250) + 1}`);
}
