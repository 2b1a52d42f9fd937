// DDPush v1 bytes the bench needs, written by hand so the load side and the
// raw baseline depend on nothing from dist (protocol.md sections 3-5).
//
// Device i has a fixed uuid; a pushed payload starts with the target's index
// (u32) and its send time (f64, epoch ms with sub-ms precision), so a device
// socket shared by many simulated devices can ack as the right one and time it.

export const CLIENT_HEADER = 21;
export const SERVER_HEADER = 5;
export const PAYLOAD_BYTES = 100;

/** 16-byte uuid of simulated device `i`. */
export function uuidOf(i, out = Buffer.alloc(16), offset = 0) {
  out.writeUInt32BE(0x6e707368, offset); // 'npsh'
  out.writeUInt32BE(i >>> 0, offset + 4);
  out.writeUInt32BE(Math.imul(i, 0x9e3779b1) >>> 0, offset + 8);
  out.writeUInt32BE(Math.imul(i ^ 0x5bd1e995, 0x85ebca6b) >>> 0, offset + 12);
  return out;
}

export function uuidHexOf(i) {
  return uuidOf(i).toString('hex');
}

/** A 21-byte client frame (heartbeat 0x00, ack-message 0x20, ...). */
export function clientFrame(i, cmd, appId = 1) {
  const b = Buffer.alloc(CLIENT_HEADER);
  b[0] = 1;
  b[1] = appId;
  b[2] = cmd;
  uuidOf(i, b, 3);
  return b;
}

/** The frames for `cmd` of devices first .. first + count - 1, back to back (device first + k at k * 21). */
export function clientFrames(count, cmd, first = 0) {
  const all = Buffer.alloc(CLIENT_HEADER * count);
  for (let i = 0; i < count; i++) {
    const o = i * CLIENT_HEADER;
    all[o] = 1;
    all[o + 1] = 1;
    all[o + 2] = cmd;
    uuidOf(first + i, all, o + 3);
  }
  return all;
}

export const now = () => performance.timeOrigin + performance.now();

/** Writes a 0x20 pusher task for device `i` at `offset`; returns its length. */
export function writeTask(buf, offset, i, sentAt) {
  buf[offset] = 1;
  buf[offset + 1] = 1;
  buf[offset + 2] = 0x20;
  uuidOf(i, buf, offset + 3);
  buf.writeUInt16BE(PAYLOAD_BYTES, offset + 19);
  const c = offset + CLIENT_HEADER;
  buf.writeUInt32BE(i >>> 0, c);
  buf.writeDoubleBE(sentAt, c + 4);
  buf.fill(0x61 + (i % 26), c + 12, c + PAYLOAD_BYTES);
  return CLIENT_HEADER + PAYLOAD_BYTES;
}

export const TASK_BYTES = CLIENT_HEADER + PAYLOAD_BYTES;

/** `count` 0x20 pusher tasks for devices 0 .. count - 1, back to back (device i at i * TASK_BYTES). */
export function taskRing(count) {
  const ring = Buffer.alloc(count * TASK_BYTES);
  for (let i = 0; i < count; i++) writeTask(ring, i * TASK_BYTES, i, 0);
  return ring;
}

/**
 * Reads a task ring from `start`, wrapping at its end: each call `(n)` returns
 * the next n tasks as one buffer (one socket write).
 */
export function ringReader(ring, start = 0) {
  const count = ring.length / TASK_BYTES;
  let cursor = start % count;
  return (n) => {
    const out = Buffer.allocUnsafe(n * TASK_BYTES);
    let filled = 0;
    while (filled < n) {
      const take = Math.min(n - filled, count - cursor);
      ring.copy(out, filled * TASK_BYTES, cursor * TASK_BYTES, (cursor + take) * TASK_BYTES);
      filled += take;
      cursor = (cursor + take) % count;
    }
    return out;
  };
}
