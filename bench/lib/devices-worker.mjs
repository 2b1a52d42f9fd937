// Simulated devices, in a worker thread: UDP devices share a few sockets
// (the payload names the target device, so a shared socket acks as the right
// one), TCP devices have one connection each. Every 0x20 push is acked at
// once and, when asked, its delivery latency recorded.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { CLIENT_HEADER, clientFrames, now } from './wire.mjs';
import { serve, sleep } from './rpc.mjs';

let heartbeats; // all heartbeat frames, device i at i * 21
let acks; // all ack-message frames
let count = 0;
let base = 0; // this worker simulates devices base .. base + count - 1
let transport = 'udp';
let udpSockets = [];
let tcpSockets = [];
let received = 0;
let recording = null; // Float64Array of latencies while recording
let recorded = 0;
let distinct = null; // Uint8Array: device i received since resetDistinct
let distinctCount = 0;
let lastStamp = new Float64Array(0); // per device: send time of the newest push received
let duplicates = 0;
let keepaliveTimer;

const frameOf = (all, i) => all.subarray(i * CLIENT_HEADER, (i + 1) * CLIENT_HEADER);

function onPush(device, sentAt, send) {
  const idx = device - base;
  received++;
  // A re-send (or an older push overtaken by a newer one) is not timed: latency counts first receipts.
  const fresh = idx >= 0 && idx < count && sentAt > lastStamp[idx];
  if (fresh) lastStamp[idx] = sentAt;
  else duplicates++;
  if (fresh && recording && recorded < recording.length) recording[recorded++] = now() - sentAt;
  if (distinct && idx >= 0 && idx < count && distinct[idx] === 0) {
    distinct[idx] = 1;
    distinctCount++;
  }
  if (idx >= 0 && idx < count) send(frameOf(acks, idx));
}

function openUdp(port, host, n) {
  return Promise.all(
    Array.from({ length: n }, () =>
      new Promise((resolve, reject) => {
        const s = createSocket({ type: 'udp4', recvBufferSize: 1 << 20, sendBufferSize: 1 << 20 });
        const send = (f) => s.send(f);
        s.on('message', (msg) => {
          if (msg.length >= 17 && msg[2] === 0x20) onPush(msg.readUInt32BE(5), msg.readDoubleBE(9), send);
        });
        s.on('error', () => {});
        s.once('error', reject);
        s.bind(0, '127.0.0.1', () => s.connect(port, host, () => resolve(s)));
      }),
    ),
  );
}

function openTcp(port, host, i) {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host, noDelay: true });
    let buf = Buffer.alloc(0);
    const send = (f) => s.write(f);
    s.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let o = 0;
      while (buf.length - o >= 5) {
        const len = 5 + ((buf[o + 3] << 8) | buf[o + 4]);
        if (buf.length - o < len) break;
        if (buf[o + 2] === 0x20 && len >= 17) onPush(buf.readUInt32BE(o + 5), buf.readDoubleBE(o + 9), send);
        o += len;
      }
      buf = o === buf.length ? Buffer.alloc(0) : buf.subarray(o);
    });
    s.on('error', reject);
    s.on('connect', () => {
      s.removeListener('error', reject);
      s.on('error', () => {});
      resolve(s);
    });
    s.index = i;
  });
}

/** Sends the heartbeats of devices `ids` (or all), `batch` per event-loop turn, optionally paced to `rate`/s. */
async function sendHeartbeats(ids, { batch = 512, rate = 0 } = {}) {
  const n = ids ? ids.length : count;
  const t0 = performance.now();
  for (let k = 0; k < n; ) {
    const end = Math.min(n, k + batch);
    for (; k < end; k++) {
      const i = ids ? ids[k] : k;
      const f = frameOf(heartbeats, i);
      if (transport === 'udp') udpSockets[i % udpSockets.length].send(f);
      else tcpSockets[i].write(f);
    }
    if (rate > 0) {
      const due = t0 + (k / rate) * 1000 - performance.now();
      if (due > 1) await sleep(due);
      else await new Promise(setImmediate);
    } else await new Promise(setImmediate);
  }
}

serve({
  async setup({ port, host = '127.0.0.1', devices, first = 0, kind = 'udp', sockets = 64 }) {
    count = devices;
    base = first;
    transport = kind;
    heartbeats = clientFrames(count, 0x00, base);
    lastStamp = new Float64Array(count);
    duplicates = 0;
    acks = clientFrames(count, 0x20, base);
    received = 0;
    if (kind === 'udp') udpSockets = await openUdp(port, host, Math.min(sockets, count));
    else {
      tcpSockets = [];
      for (let i = 0; i < count; i += 100) {
        const chunk = await Promise.all(Array.from({ length: Math.min(100, count - i) }, (_, k) => openTcp(port, host, i + k)));
        tcpSockets.push(...chunk);
      }
    }
    return { sockets: kind === 'udp' ? udpSockets.length : tcpSockets.length };
  },
  async heartbeat({ ids, from, to, rate = 0, batch }) {
    if (from !== undefined) ids = Array.from({ length: Math.min(to, count) - from }, (_, k) => from + k);
    await sendHeartbeats(ids, { rate, batch });
    return {};
  },
  keepalive({ everyMs = 20_000 }) {
    clearInterval(keepaliveTimer);
    keepaliveTimer = setInterval(() => void sendHeartbeats(null, { rate: 200_000 }), everyMs);
    return {};
  },
  mark() {
    return { received, duplicates, at: performance.timeOrigin + performance.now() };
  },
  record({ max = 1 << 21 }) {
    recording = new Float64Array(max);
    recorded = 0;
    return {};
  },
  stopRecording() {
    const r = recording ? recording.subarray(0, recorded) : new Float64Array(0);
    recording = null;
    return { latencies: Float64Array.from(r), duplicates };
  },
  /** Forget which devices received; `deliverAll` then waits for every device to get at least one push. */
  resetDistinct() {
    distinct = new Uint8Array(count);
    distinctCount = 0;
    return {};
  },
  /**
   * Offline-then-online: every device heartbeats now (they come online) and
   * again every `retryMs` while it has received nothing (as a real device
   * would); resolves when each has received a push, or at the timeout.
   */
  async deliverAll({ timeoutMs = 30_000, retryMs = 1000, rate = 0 }) {
    const t0 = performance.now();
    await sendHeartbeats(null, { rate });
    while (distinctCount < count && performance.now() - t0 < timeoutMs) {
      const wait = Date.now() + retryMs;
      while (distinctCount < count && Date.now() < wait) await sleep(2);
      if (distinctCount >= count) break;
      const missing = [];
      for (let i = 0; i < count; i++) if (!distinct[i]) missing.push(i);
      await sendHeartbeats(missing, { rate });
    }
    return { ms: performance.now() - t0, delivered: distinctCount, complete: distinctCount >= count };
  },
  /** Heartbeats as fast as this thread can send them, for `durationMs`. */
  async blast({ durationMs, batch = 256 }) {
    let sent = 0;
    let i = 0;
    const end = performance.now() + durationMs;
    while (performance.now() < end) {
      for (let k = 0; k < batch; k++) {
        udpSockets[i % udpSockets.length].send(frameOf(heartbeats, i));
        if (++i >= count) i = 0;
      }
      sent += batch;
      await new Promise(setImmediate);
    }
    return { sent };
  },
  async close() {
    clearInterval(keepaliveTimer);
    for (const s of udpSockets) s.close();
    for (const s of tcpSockets) s.destroy();
    udpSockets = [];
    tcpSockets = [];
    return {};
  },
});
