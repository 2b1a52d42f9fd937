import { describe, expect, it } from 'vitest';
import {
  ClientFrameStreamDecoder,
  type ClientFrameError,
  MAX_U16,
  PusherCmd,
  type PusherTask,
  type PusherTaskError,
  PusherTaskStreamDecoder,
  type ServerFrame,
  type ServerFrameError,
  ServerFrameStreamDecoder,
  encodeCategory,
  encodeClientFrame,
  encodeHeartbeatEcho,
  encodeMessage,
  encodeNotice,
  encodePusherTask,
} from '../../../lib/protocol/index.js';
import {
  type ClientFrameSnapshot,
  UUID,
  UUID_HEX,
  feed,
  hex,
  randomChunks,
  rng,
  snapshotClientFrame,
} from './fixtures.js';

// ---------------------------------------------------------------------------
// Client frames on a device TCP connection (port 9966).

function clientHarness() {
  const frames: ClientFrameSnapshot[] = [];
  const errors: ClientFrameError[] = [];
  // The frame object is reused and may point into scratch: copy inside the callback.
  const decoder = new ClientFrameStreamDecoder(
    (f) => frames.push(snapshotClientFrame(f)),
    (e) => errors.push(e),
  );
  return { decoder, frames, errors };
}

const C_HB = encodeClientFrame({ appId: 7, cmd: 0x00, uuid: UUID });
const C_ACK10 = encodeClientFrame({ appId: 7, cmd: 0x10, uuid: UUID });
const C_ACK11 = encodeClientFrame({ appId: 7, cmd: 0x11, uuid: UUID, mask: 0x8000000000000001n });
const C_ACK20 = encodeClientFrame({ appId: 7, cmd: 0x20, uuid: UUID });
const C_RESET = encodeClientFrame({ appId: 7, cmd: 0xff, uuid: UUID });
const C_ALL = [C_HB, C_ACK11, C_ACK10, C_ACK11, C_ACK20, C_RESET, C_HB];

function expectClientFrames(frames: ClientFrameSnapshot[], sent: Buffer[]): void {
  expect(frames.map((f) => f.raw)).toEqual(sent.map((b) => b.toString('hex')));
  for (const [k, f] of frames.entries()) {
    expect(f.uuid).toBe(UUID_HEX);
    expect(f.appId).toBe(7);
    expect(f.cmd).toBe(sent[k]![2]);
    expect(f.mask).toBe(sent[k]![2] === 0x11 ? 0x8000000000000001n : 0n);
  }
}

describe('ClientFrameStreamDecoder', () => {
  it('decodes several frames in one chunk', () => {
    const h = clientHarness();
    expect(h.decoder.write(Buffer.concat(C_ALL))).toBe(true);
    expectClientFrames(h.frames, C_ALL);
    expect(h.errors).toEqual([]);
    expect(h.decoder.buffered).toBe(0);
    expect(h.decoder.error).toBeUndefined();
  });

  it('decodes frames fed one byte at a time', () => {
    const h = clientHarness();
    const stream = Buffer.concat(C_ALL);
    for (let i = 0; i < stream.length; i++) {
      expect(h.decoder.write(stream.subarray(i, i + 1))).toBe(true);
      expect(h.decoder.buffered).toBeLessThanOrEqual(29);
    }
    expectClientFrames(h.frames, C_ALL);
  });

  it('handles every split position of a frame pair, for each frame type', () => {
    for (const a of [C_HB, C_ACK11, C_RESET]) {
      for (const b of [C_HB, C_ACK11, C_ACK20]) {
        const stream = Buffer.concat([a, b]);
        for (let cut = 0; cut <= stream.length; cut++) {
          const h = clientHarness();
          // Copies, scribbled over after writing: a decoder that kept a reference would fail.
          feed(h.decoder, [Buffer.from(stream.subarray(0, cut)), Buffer.from(stream.subarray(cut))]);
          expectClientFrames(h.frames, [a, b]);
          expect(h.decoder.buffered).toBe(0);
        }
      }
    }
  });

  it('handles a header split at two positions at once', () => {
    for (let c1 = 1; c1 < 29; c1++) {
      for (let c2 = c1; c2 < 29; c2++) {
        const h = clientHarness();
        feed(h.decoder, [C_ACK11.subarray(0, c1), C_ACK11.subarray(c1, c2), C_ACK11.subarray(c2)].map((b) => Buffer.from(b)));
        expectClientFrames(h.frames, [C_ACK11]);
      }
    }
  });

  it('reports a partial frame as buffered until it completes', () => {
    const h = clientHarness();
    h.decoder.write(C_ACK11.subarray(0, 10));
    expect(h.decoder.buffered).toBe(10);
    h.decoder.write(C_ACK11.subarray(10, 25));
    expect(h.decoder.buffered).toBe(25);
    expect(h.frames).toEqual([]);
    h.decoder.write(C_ACK11.subarray(25));
    expect(h.decoder.buffered).toBe(0);
    expect(h.frames).toHaveLength(1);
  });

  const badDataLen = (len: number) => {
    const b = Buffer.from(C_HB);
    b[2] = 0x20;
    b.writeUInt16BE(len, 19);
    return b;
  };

  it.each([9, 0x100, 0xffff])('a dataLen of %d is fatal', (len) => {
    const h = clientHarness();
    const stream = Buffer.concat([C_HB, C_ACK11, badDataLen(len), C_HB]);
    expect(h.decoder.write(stream)).toBe(false);
    expectClientFrames(h.frames, [C_HB, C_ACK11]);
    expect(h.errors).toEqual(['bad-data-length']);
    expect(h.decoder.error).toBe('bad-data-length');
    // Everything after is ignored, and nothing is reported twice.
    expect(h.decoder.write(Buffer.concat([C_HB, C_HB]))).toBe(false);
    expect(h.frames).toHaveLength(2);
    expect(h.errors).toHaveLength(1);
  });

  it('a fatal header split across chunks is detected once the header completes', () => {
    const bad = badDataLen(9);
    for (let cut = 1; cut < 21; cut++) {
      const h = clientHarness();
      expect(h.decoder.write(Buffer.concat([C_HB, bad.subarray(0, cut)]))).toBe(true);
      expect(h.errors).toEqual([]);
      expect(h.decoder.write(Buffer.concat([bad.subarray(cut), C_HB]))).toBe(false);
      expect(h.errors).toEqual(['bad-data-length']);
      expectClientFrames(h.frames, [C_HB]);
      expect(h.decoder.write(C_HB)).toBe(false);
      expect(h.frames).toHaveLength(1);
    }
  });

  it.each([
    ['bad-version', (b: Buffer): void => void (b[0] = 2)],
    ['unknown-cmd', (b: Buffer): void => void (b[2] = 0x42)],
    ['bad-data-length', (b: Buffer): void => void (b[20] = 8)],
  ] as const)('%s is fatal', (reason, corrupt) => {
    const bad = Buffer.from(C_HB);
    corrupt(bad);
    const h = clientHarness();
    expect(h.decoder.write(Buffer.concat([C_ACK20, bad, C_HB]))).toBe(false);
    expect(h.errors).toEqual([reason]);
    expectClientFrames(h.frames, [C_ACK20]);
  });

  it('a 0x11 ack with dataLen 0 is fatal (bad-data-length)', () => {
    const bad = Buffer.from(C_ACK11.subarray(0, 21));
    bad[20] = 0;
    const h = clientHarness();
    expect(h.decoder.write(bad)).toBe(false);
    expect(h.errors).toEqual(['bad-data-length']);
  });

  it('the callback frame is reused: copying inside the callback is required', () => {
    const seen: unknown[] = [];
    const d = new ClientFrameStreamDecoder((f) => seen.push(f));
    d.write(Buffer.concat([C_HB, C_ACK11]));
    expect(seen).toHaveLength(2);
    expect(seen[0]).toBe(seen[1]);
  });

  it('random chunkings of a long stream give the same frames', () => {
    const sent: Buffer[] = [];
    const next = rng(7);
    for (let i = 0; i < 500; i++) sent.push(C_ALL[Math.floor(next() * C_ALL.length)]!);
    const stream = Buffer.concat(sent);
    for (const maxChunk of [1, 3, 20, 21, 29, 64, 1000]) {
      const h = clientHarness();
      feed(h.decoder, randomChunks(stream, next, maxChunk));
      expectClientFrames(h.frames, sent);
    }
  });
});

// ---------------------------------------------------------------------------
// Pusher tasks on port 9999.

type PusherEvent = { task: PusherTask } | { malformed: PusherTaskError; fatal: boolean };

function pusherHarness(maxContent?: number, stableChunks?: boolean) {
  const events: PusherEvent[] = [];
  const decoder = new PusherTaskStreamDecoder(
    {
      task: (task) => events.push({ task }),
      malformed: (reason, fatal) => events.push({ malformed: reason, fatal }),
    },
    maxContent,
    stableChunks,
  );
  return { decoder, events, tasks: () => events.flatMap((e) => ('task' in e ? [e.task] : [])) };
}

function uuidN(n: number): Buffer {
  const u = Buffer.alloc(16);
  u.writeUInt32BE(n, 12);
  u[0] = 0x80 | (n & 0x7f);
  return u;
}

function makeTasks(count: number, seed: number): { bytes: Buffer[]; expected: PusherTask[] } {
  const next = rng(seed);
  const bytes: Buffer[] = [];
  const expected: PusherTask[] = [];
  for (let i = 0; i < count; i++) {
    const appId = i & 0xff;
    const uuid = uuidN(i);
    const kind = Math.floor(next() * 3);
    if (kind === 0) {
      bytes.push(encodePusherTask({ appId, cmd: PusherCmd.Notice, uuid }));
      expected.push({ appId, cmd: 0x10, uuid: uuid.toString('hex'), mask: 0n, content: Buffer.alloc(0) });
    } else if (kind === 1) {
      const mask = (BigInt(i) << 40n) | 0x8000000000000000n | BigInt(i);
      bytes.push(encodePusherTask({ appId, cmd: PusherCmd.Category, uuid, mask }));
      expected.push({ appId, cmd: 0x11, uuid: uuid.toString('hex'), mask, content: Buffer.alloc(0) });
    } else {
      const content = Buffer.alloc(1 + Math.floor(next() * 500));
      for (let k = 0; k < content.length; k++) content[k] = (i + k) & 0xff;
      bytes.push(encodePusherTask({ appId, cmd: PusherCmd.Message, uuid, content }));
      expected.push({ appId, cmd: 0x20, uuid: uuid.toString('hex'), mask: 0n, content });
    }
  }
  return { bytes, expected };
}

/** A cheap exact fingerprint of a task, for comparing long lists quickly. */
const key = (t: PusherTask) => `${t.appId}|${t.cmd}|${t.uuid}|${t.mask}|${t.content.toString('hex')}`;

function rawTask(cmd: number, len: number, fill = 0x61, version = 1): Buffer {
  return Buffer.concat([Buffer.from([version, 9, cmd]), UUID, Buffer.from([len >> 8, len & 0xff]), Buffer.alloc(len, fill)]);
}

describe('PusherTaskStreamDecoder', () => {
  const { bytes, expected } = makeTasks(1000, 99);
  const stream = Buffer.concat(bytes);

  it('decodes 1000 pipelined tasks in one chunk, in order', () => {
    const h = pusherHarness();
    expect(h.decoder.write(stream)).toBe(true);
    expect(h.events.every((e) => 'task' in e)).toBe(true);
    expect(h.tasks()).toEqual(expected);
    expect(h.decoder.buffered).toBe(0);
  });

  it('decodes the same 1000 tasks under random chunkings', () => {
    const next = rng(2024);
    for (const maxChunk of [1, 7, 21, 22, 100, 521, 4096]) {
      const h = pusherHarness();
      const chunks = randomChunks(stream, next, maxChunk);
      expect(feed(h.decoder, chunks).every(Boolean)).toBe(true);
      expect(h.events.every((e) => 'task' in e)).toBe(true);
      expect(h.tasks().map(key)).toEqual(expected.map(key));
      expect(h.decoder.buffered).toBeLessThanOrEqual(21 + 500);
    }
  });

  it('tasks own their data (content and uuid survive the chunk being reused)', () => {
    const h = pusherHarness();
    const copy = Buffer.from(stream);
    h.decoder.write(copy);
    copy.fill(0);
    expect(h.tasks()).toEqual(expected);
  });

  it('stableChunks: a task whole in a chunk gets a view of it, a split task a copy the next split task cannot overwrite', () => {
    const h = pusherHarness(undefined, true);
    // Every message task of the stream, alone in its own chunk, then cut in two chunks.
    const messages = bytes.filter((b) => b[2] === PusherCmd.Message).slice(0, 20);
    const chunks = messages.map((b) => Buffer.from(b));
    for (const c of chunks) h.decoder.write(c);
    for (const b of messages) feed(h.decoder, [Buffer.from(b.subarray(0, 10)), Buffer.from(b.subarray(10))]);
    const tasks = h.tasks();
    expect(tasks).toHaveLength(40);
    for (const [i, t] of tasks.slice(0, 20).entries()) {
      // No copy: the content is the chunk's own bytes.
      expect(t.content.buffer).toBe(chunks[i]!.buffer);
      expect(t.content).toEqual(messages[i]!.subarray(21));
    }
    // Assembled in the decoder's scratch, which every split task reuses: each content must be its own.
    for (const [i, t] of tasks.slice(20).entries()) {
      expect(t.content.byteLength).toBe(t.content.buffer.byteLength);
      expect(t.content).toEqual(messages[i]!.subarray(21));
    }
    // Without the option (the default) every task owns its content.
    const d = pusherHarness();
    const c = Buffer.from(messages[0]!);
    d.decoder.write(c);
    c.fill(0);
    expect(d.tasks()[0]!.content).toEqual(messages[0]!.subarray(21));
  });

  it('content-too-long is reported (non-fatal) and the next task still decodes', () => {
    const h = pusherHarness();
    const over = rawTask(0x20, 501, 0x01); // body bytes look like version 1: must not be parsed
    expect(h.decoder.write(Buffer.concat([bytes[0]!, over, bytes[1]!]))).toBe(true);
    expect(h.events).toEqual([{ task: expected[0] }, { malformed: 'content-too-long', fatal: false }, { task: expected[1] }]);
    expect(h.decoder.error).toBeUndefined();
  });

  it('an oversized body is skipped even when split across chunks (every cut point)', () => {
    const over = rawTask(0x20, 600, 0x01);
    const s = Buffer.concat([over, bytes[2]!]);
    for (let cut = 0; cut <= s.length; cut++) {
      const h = pusherHarness();
      feed(h.decoder, [Buffer.from(s.subarray(0, cut)), Buffer.from(s.subarray(cut))]);
      expect(h.events).toEqual([{ malformed: 'content-too-long', fatal: false }, { task: expected[2] }]);
    }
  });

  it('an oversized body fed byte by byte is never buffered', () => {
    const h = pusherHarness(10);
    const s = Buffer.concat([rawTask(0x20, 60_000, 0x01), rawTask(0x20, 10, 0x33)]);
    let maxBuffered = 0;
    for (let i = 0; i < s.length; i += 1 + (i % 97)) {
      h.decoder.write(s.subarray(i, i + 1 + (i % 97)));
      maxBuffered = Math.max(maxBuffered, h.decoder.buffered);
    }
    expect(maxBuffered).toBeLessThanOrEqual(21 + 10);
    expect(h.events).toHaveLength(2);
    expect(h.events[0]).toEqual({ malformed: 'content-too-long', fatal: false });
    expect((h.events[1] as { task: PusherTask }).task.content).toEqual(Buffer.alloc(10, 0x33));
  });

  it('content exactly at the max is accepted, max+1 refused, for a configured max', () => {
    const h = pusherHarness(32);
    h.decoder.write(Buffer.concat([rawTask(0x20, 32), rawTask(0x20, 33), rawTask(0x20, 1)]));
    expect(h.events.map((e) => ('task' in e ? e.task.content.length : e.malformed))).toEqual([32, 'content-too-long', 1]);
  });

  it('accepts 65535-byte content when configured, assembled across chunks', () => {
    const h = pusherHarness(MAX_U16);
    const big = rawTask(0x20, MAX_U16, 0x5a);
    feed(h.decoder, randomChunks(Buffer.concat([big, bytes[0]!]), rng(5), 8192));
    expect(h.tasks().map((t) => t.content.length)).toEqual([MAX_U16, expected[0]!.content.length]);
  });

  it('a bad version is fatal', () => {
    const h = pusherHarness();
    const bad = rawTask(0x10, 0, 0, 2);
    expect(h.decoder.write(Buffer.concat([bytes[0]!, bad, bytes[1]!]))).toBe(false);
    expect(h.events).toEqual([{ task: expected[0] }, { malformed: 'bad-version', fatal: true }]);
    expect(h.decoder.error).toBe('bad-version');
    expect(h.decoder.write(bytes[1]!)).toBe(false);
    expect(h.events).toHaveLength(2);
  });

  it('a bad version split across chunks is fatal too', () => {
    for (let cut = 1; cut < 21; cut++) {
      const h = pusherHarness();
      const bad = rawTask(0x11, 8, 0, 0);
      expect(h.decoder.write(bad.subarray(0, cut))).toBe(true);
      expect(h.decoder.write(Buffer.concat([bad.subarray(cut), bytes[0]!]))).toBe(false);
      expect(h.events).toEqual([{ malformed: 'bad-version', fatal: true }]);
    }
  });

  it('an unknown cmd is non-fatal and its body is skipped', () => {
    const h = pusherHarness();
    const unknown = rawTask(0x30, 5, 0x01);
    expect(h.decoder.write(Buffer.concat([unknown, bytes[3]!, rawTask(0x00, 0), bytes[4]!]))).toBe(true);
    expect(h.events).toEqual([
      { malformed: 'unknown-cmd', fatal: false },
      { task: expected[3] },
      { malformed: 'unknown-cmd', fatal: false },
      { task: expected[4] },
    ]);
  });

  it('bad-data-length is non-fatal: 0x10 with content, 0x11 without 8 bytes, 0x20 empty', () => {
    const h = pusherHarness();
    const s = Buffer.concat([rawTask(0x10, 3, 0x01), rawTask(0x11, 4, 0x01), rawTask(0x20, 0), rawTask(0x11, 9, 0x01), bytes[5]!]);
    feed(h.decoder, randomChunks(s, rng(3), 5));
    expect(h.events).toEqual([
      { malformed: 'bad-data-length', fatal: false },
      { malformed: 'bad-data-length', fatal: false },
      { malformed: 'bad-data-length', fatal: false },
      { malformed: 'bad-data-length', fatal: false },
      { task: expected[5] },
    ]);
  });

  it('a 0x11 task split across chunks keeps its whole mask even when maxContent < 8 (regression)', () => {
    const t = encodePusherTask({ appId: 1, cmd: PusherCmd.Category, uuid: UUID, mask: 0x0123456789abcdefn });
    for (const max of [1, 4, 7, 8]) {
      for (let cut = 1; cut < t.length; cut++) {
        const h = pusherHarness(max);
        feed(h.decoder, [Buffer.from(t.subarray(0, cut)), Buffer.from(t.subarray(cut))]);
        expect(h.tasks().map((x) => x.mask)).toEqual([0x0123456789abcdefn]);
      }
    }
  });

  it.each([0, -1, 65536, 1.5, Number.NaN])('constructor rejects maxContent %s', (max) => {
    expect(() => new PusherTaskStreamDecoder({ task() {}, malformed() {} }, max)).toThrow(RangeError);
  });

  it.each([1, 500, 65535])('constructor accepts maxContent %s', (max) => {
    expect(() => new PusherTaskStreamDecoder({ task() {}, malformed() {} }, max)).not.toThrow();
  });
});

// ---------------------------------------------------------------------------
// Server frames on a device's TCP connection (device SDK side).

function serverHarness(maxContent?: number) {
  const frames: ServerFrame[] = [];
  const errors: ServerFrameError[] = [];
  const decoder = new ServerFrameStreamDecoder(
    (f) => frames.push(f),
    (e) => errors.push(e),
    maxContent,
  );
  return { decoder, frames, errors };
}

const S_FRAMES = [
  encodeHeartbeatEcho(7),
  encodeNotice(7),
  encodeCategory(7, 0x8000000000000001n),
  encodeMessage(7, Buffer.from('hello')),
  encodeCategory(7, 0xffffffffffffffffn),
  encodeMessage(7, Buffer.alloc(500, 0x77)),
];
const S_EXPECTED: ServerFrame[] = [
  { appId: 7, cmd: 0x00, mask: 0n, content: Buffer.alloc(0) },
  { appId: 7, cmd: 0x10, mask: 0n, content: Buffer.alloc(0) },
  { appId: 7, cmd: 0x11, mask: 0x8000000000000001n, content: Buffer.alloc(0) },
  { appId: 7, cmd: 0x20, mask: 0n, content: Buffer.from('hello') },
  { appId: 7, cmd: 0x11, mask: 0xffffffffffffffffn, content: Buffer.alloc(0) },
  { appId: 7, cmd: 0x20, mask: 0n, content: Buffer.alloc(500, 0x77) },
];

describe('ServerFrameStreamDecoder', () => {
  const stream = Buffer.concat(S_FRAMES);

  it('decodes several frames in one chunk', () => {
    const h = serverHarness();
    expect(h.decoder.write(Buffer.from(stream))).toBe(true);
    expect(h.frames).toEqual(S_EXPECTED);
    expect(h.errors).toEqual([]);
  });

  it('decodes frames fed byte by byte', () => {
    const h = serverHarness();
    for (let i = 0; i < stream.length; i++) h.decoder.write(Buffer.from(stream.subarray(i, i + 1)));
    expect(h.frames).toEqual(S_EXPECTED);
  });

  it('handles every split position', () => {
    const small = Buffer.concat(S_FRAMES.slice(0, 5));
    for (let cut = 0; cut <= small.length; cut++) {
      const h = serverHarness();
      feed(h.decoder, [Buffer.from(small.subarray(0, cut)), Buffer.from(small.subarray(cut))]);
      expect(h.frames).toEqual(S_EXPECTED.slice(0, 5));
    }
  });

  it('random chunkings', () => {
    const next = rng(11);
    for (const maxChunk of [2, 5, 13, 600]) {
      const h = serverHarness();
      feed(h.decoder, randomChunks(stream, next, maxChunk));
      expect(h.frames).toEqual(S_EXPECTED);
    }
  });

  it.each([
    ['bad-version', hex('02 07 00 0000')],
    ['unknown-cmd', hex('01 07 ff 0000')],
    ['bad-data-length', hex('01 07 20 0000')],
    ['bad-data-length', hex('01 07 11 0009')],
    ['bad-data-length', hex('01 07 00 0001')],
  ] as const)('%s is fatal', (reason, bad) => {
    const h = serverHarness();
    expect(h.decoder.write(Buffer.concat([S_FRAMES[1]!, bad, S_FRAMES[0]!]))).toBe(false);
    expect(h.errors).toEqual([reason]);
    expect(h.frames).toEqual([S_EXPECTED[1]]);
    expect(h.decoder.error).toBe(reason);
    expect(h.decoder.write(S_FRAMES[0]!)).toBe(false);
    expect(h.frames).toHaveLength(1);
  });

  it('a 0x11 frame split across chunks keeps its whole mask even when maxContent < 8 (regression)', () => {
    const f = encodeCategory(1, 0x0123456789abcdefn);
    for (const max of [1, 4, 7]) {
      for (let cut = 1; cut < f.length; cut++) {
        const h = serverHarness(max);
        feed(h.decoder, [Buffer.from(f.subarray(0, cut)), Buffer.from(f.subarray(cut))]);
        expect(h.frames.map((x) => x.mask)).toEqual([0x0123456789abcdefn]);
      }
    }
  });

  it('a configured maxContent bounds 0x20 (at max accepted, max+1 fatal)', () => {
    const h = serverHarness(500);
    expect(h.decoder.write(encodeMessage(1, Buffer.alloc(500)))).toBe(true);
    expect(h.decoder.write(encodeMessage(1, Buffer.alloc(501)))).toBe(false);
    expect(h.frames).toHaveLength(1);
    expect(h.errors).toEqual(['bad-data-length']);
  });
});
