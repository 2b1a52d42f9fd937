// The pusher-port load generator, in a worker thread: K connections sending
// pre-encoded 100-byte 0x20 tasks (stamped with their send time) round-robin
// over the devices, either with W tasks in flight per connection, at a fixed
// rate, or as a one-off burst. Replies are counted; anything but 0x00 is "bad".
import { connect } from 'node:net';
import { TASK_BYTES, now, writeTask } from './wire.mjs';
import { serve, sleep } from './rpc.mjs';

let ring; // tasks for every device, device i at i * TASK_BYTES
let devices = 0;

/** k connections; with an array of ports, connection c goes to ports[c % ports.length]. */
function openConnections(port, k, onReply) {
  const ports = Array.isArray(port) ? port : [port];
  return Promise.all(
    Array.from({ length: k }, (_, c) =>
      new Promise((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: ports[c % ports.length], noDelay: true });
        s.on('data', (chunk) => onReply(s, chunk));
        s.once('error', reject);
        s.on('connect', () => {
          s.removeListener('error', reject);
          s.on('error', () => {});
          s.conn = c;
          resolve(s);
        });
      }),
    ),
  );
}

/** Copies n tasks starting at device `cursor` (wrapping from `hi` back to `lo`) into one buffer, stamping each with now. */
function take(n, cursor, hi = devices, lo = 0) {
  const out = Buffer.allocUnsafe(n * TASK_BYTES);
  const t = now();
  let c = cursor;
  for (let k = 0; k < n; k++) {
    ring.copy(out, k * TASK_BYTES, c * TASK_BYTES, (c + 1) * TASK_BYTES);
    out.writeDoubleBE(t, k * TASK_BYTES + 25);
    if (++c >= hi) c = lo;
  }
  return { out, cursor: c };
}

serve({
  setup({ devices: n }) {
    devices = n;
    ring = Buffer.alloc(n * TASK_BYTES);
    for (let i = 0; i < n; i++) writeTask(ring, i * TASK_BYTES, i, 0);
    return {};
  },

  /** W tasks in flight per connection for `durationMs`; returns replies counted after `warmupMs`. */
  async window({ port, connections, window, durationMs, warmupMs = 0 }) {
    let replies = 0;
    let bad = 0;
    let stop = false;
    // Each connection cycles over its own slice of the devices, so a device
    // gets its next push only after a whole slice (not 4 times as often).
    const cursors = [];
    const lo = (c) => Math.floor((c * devices) / connections);
    const hi = (c) => Math.floor(((c + 1) * devices) / connections);
    const socks = await openConnections(port, connections, (s, chunk) => {
      for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) bad++;
      replies += chunk.length;
      if (stop) return;
      const r = take(chunk.length, cursors[s.conn], hi(s.conn), lo(s.conn));
      cursors[s.conn] = r.cursor;
      s.write(r.out);
    });
    for (const s of socks) {
      const r = take(window, lo(s.conn), hi(s.conn), lo(s.conn));
      cursors[s.conn] = r.cursor;
      s.write(r.out);
    }
    await sleep(warmupMs);
    const r0 = replies;
    const t0 = performance.now();
    await sleep(durationMs);
    const seconds = (performance.now() - t0) / 1000;
    const counted = replies - r0;
    stop = true;
    for (const s of socks) s.destroy();
    return { replyRate: counted / seconds, replies: counted, bad };
  },

  /** `rate` tasks/s spread over the connections for `durationMs` (catch-up pacing on a 1 ms timer). */
  async paced({ port, connections = 1, rate, durationMs }) {
    let replies = 0;
    let bad = 0;
    const socks = await openConnections(port, connections, (_s, chunk) => {
      for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) bad++;
      replies += chunk.length;
    });
    let sent = 0;
    let cursor = 0;
    let c = 0;
    const t0 = performance.now();
    await new Promise((resolve) => {
      const tick = () => {
        const elapsed = performance.now() - t0;
        const due = Math.min(Math.floor((elapsed / 1000) * rate), Math.floor((durationMs / 1000) * rate)) - sent;
        if (due > 0) {
          const r = take(due, cursor);
          cursor = r.cursor;
          socks[c].write(r.out);
          c = (c + 1) % socks.length;
          sent += due;
        }
        if (elapsed >= durationMs) resolve();
        else setTimeout(tick, 1);
      };
      tick();
    });
    const until = performance.now() + 5000;
    while (replies < sent && performance.now() < until) await sleep(5);
    for (const s of socks) s.destroy();
    return { sent, replies, bad, seconds: durationMs / 1000 };
  },

  /** One task per device 0..total-1, `window` in flight on one connection; resolves when all are answered. */
  async burst({ port, total, window = 256 }) {
    let replies = 0;
    let bad = 0;
    let cursor = 0;
    let done;
    const finished = new Promise((r) => (done = r));
    const t0 = performance.now();
    const [s] = await openConnections(port, 1, (sock, chunk) => {
      for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) bad++;
      replies += chunk.length;
      const n = Math.min(chunk.length, total - cursor);
      if (n > 0) {
        sock.write(take(n, cursor, total).out);
        cursor += n;
      }
      if (replies >= total) done();
    });
    const first = Math.min(window, total);
    s.write(take(first, 0, total).out);
    cursor = first;
    await finished;
    s.destroy();
    return { ms: performance.now() - t0, replies, bad };
  },
});
