/**
 * Hardening: property-based fuzzing of every decoder that reads bytes from the
 * network (issue 9). Each property runs tens of thousands of cases built from
 * valid frames that are then damaged the way a hostile or broken peer would:
 * bit flips, overwritten bytes, forged length fields, truncations, inserted
 * and deleted runs, duplicated and moved slices (splices of one frame into
 * another), and random chunkings down to one byte per read.
 *
 * For every case:
 * - the decoder never throws;
 * - `decoder.buffered` never exceeds one header plus the largest acceptable
 *   body, after every single write (bounded memory per connection);
 * - every frame it yields re-encodes to exactly the bytes it was read from
 *   (tracked by stream offset, independently of the decoder's own framing);
 * - the events do not depend on how the stream was chunked.
 *
 * Cases are deterministic (fixed seeds), so a failure reproduces; fast-check
 * prints the shrunk counterexample.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { reencodePusher, reencodeServer } from '../unit/protocol/fixtures.js';
import {
  CLIENT_HEADER_LENGTH,
  type ClientCmd,
  ClientFrameStreamDecoder,
  type ClientFrame,
  PusherCmd,
  PusherTaskStreamDecoder,
  SERVER_HEADER_LENGTH,
  ServerFrameStreamDecoder,
  createClientFrame,
  decodeClientFrame,
  encodeCategory,
  encodeClientFrame,
  encodeHeartbeatEcho,
  encodeMessage,
  encodeNotice,
  encodePusherTask,
} from '../../lib/protocol/index.js';

/** Cases per property. Four properties of 20,000: 80,000 fuzz cases in all. */
const CASES = 20_000;

// ---------------------------------------------------------------- valid input

const appId = fc.integer({ min: 0, max: 255 });
const uuid = fc.uint8Array({ minLength: 16, maxLength: 16 });
const mask = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
// Contents straddle the 500-byte default limit so oversized frames appear too.
// Content is opaque to the decoders: it is filled from a seed rather than drawn
// byte by byte (which would make fast-check spend most of the time on it).
const content = fc
  .tuple(fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 480, max: 620 })), fc.integer())
  .map(([len, seed]) => {
    const b = Buffer.allocUnsafe(len);
    let x = seed | 1;
    for (let i = 0; i < len; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i] = x & 0xff;
    }
    return b;
  });

const clientFrame = fc
  .record({ appId, cmd: fc.constantFrom<ClientCmd>(0x00, 0x10, 0x11, 0x20, 0xff), uuid, mask })
  .map((f) => encodeClientFrame(f));

const serverFrame = fc.oneof(
  appId.map((a) => encodeHeartbeatEcho(a)),
  appId.map((a) => encodeNotice(a)),
  fc.tuple(appId, mask).map(([a, m]) => encodeCategory(a, m)),
  fc.tuple(appId, content).map(([a, c]) => encodeMessage(a, c)),
);

const pusherTask = fc.oneof(
  fc.tuple(appId, uuid).map(([a, u]) => encodePusherTask({ appId: a, cmd: PusherCmd.Notice, uuid: u })),
  fc.tuple(appId, uuid, mask).map(([a, u, m]) => encodePusherTask({ appId: a, cmd: PusherCmd.Category, uuid: u, mask: m })),
  fc.tuple(appId, uuid, content).map(([a, u, c]) => encodePusherTask({ appId: a, cmd: PusherCmd.Message, uuid: u, content: c })),
);

// ------------------------------------------------------------------ mutations

type Mutation =
  | { t: 'flip'; pos: number; bit: number }
  | { t: 'set'; pos: number; val: number }
  | { t: 'len'; pos: number; val: number }
  | { t: 'truncate'; pos: number }
  | { t: 'insert'; pos: number; bytes: Uint8Array }
  | { t: 'delete'; pos: number; len: number }
  | { t: 'duplicate'; pos: number; len: number }
  | { t: 'move'; from: number; len: number; to: number };

const pos = fc.nat({ max: 1 << 20 });
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant('flip' as const), pos, bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('set' as const), pos, val: fc.integer({ min: 0, max: 255 }) }) },
  {
    weight: 3,
    // A forged u16 length field: small, around the limits, or huge.
    arbitrary: fc.record({
      t: fc.constant('len' as const),
      pos,
      val: fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 490, max: 630 }), fc.integer({ min: 0, max: 0xffff }), fc.constant(0xffff)),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('truncate' as const), pos }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('insert' as const), pos, bytes: fc.uint8Array({ maxLength: 30 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('delete' as const), pos, len: fc.integer({ min: 1, max: 30 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('duplicate' as const), pos, len: fc.integer({ min: 1, max: 64 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('move' as const), from: pos, len: fc.integer({ min: 1, max: 64 }), to: pos }) },
);

/**
 * Applies the mutations in order. `lenAt` is where the u16 length field sits
 * in a header (19 for client frames and pusher tasks, 3 for server frames);
 * a 'len' mutation forges the field of the header starting at a frame boundary.
 */
function mutate(stream: Buffer, boundaries: number[], muts: readonly Mutation[], lenAt: number): Buffer {
  let s = Buffer.from(stream);
  for (const m of muts) {
    const n = s.length;
    switch (m.t) {
      case 'flip':
        if (n) s[m.pos % n] ^= 1 << m.bit;
        break;
      case 'set':
        if (n) s[m.pos % n] = m.val;
        break;
      case 'len': {
        const b = boundaries[m.pos % boundaries.length]! + lenAt;
        if (b + 2 <= n) s.writeUInt16BE(m.val, b);
        break;
      }
      case 'truncate':
        s = s.subarray(0, m.pos % (n + 1));
        break;
      case 'insert': {
        const p = m.pos % (n + 1);
        s = Buffer.concat([s.subarray(0, p), m.bytes, s.subarray(p)]);
        break;
      }
      case 'delete': {
        const p = m.pos % (n + 1);
        s = Buffer.concat([s.subarray(0, p), s.subarray(p + m.len)]);
        break;
      }
      case 'duplicate': {
        const p = m.pos % (n + 1);
        s = Buffer.concat([s.subarray(0, p + m.len), s.subarray(p)]);
        break;
      }
      case 'move': {
        const from = m.from % (n + 1);
        const piece = s.subarray(from, from + m.len);
        const rest = Buffer.concat([s.subarray(0, from), s.subarray(from + piece.length)]);
        const to = m.to % (rest.length + 1);
        s = Buffer.concat([rest.subarray(0, to), piece, rest.subarray(to)]);
        break;
      }
    }
  }
  return s;
}

/** Frames back to back, and the offset each one starts at. */
function concat(frames: readonly Buffer[]): { stream: Buffer; boundaries: number[] } {
  const boundaries: number[] = [];
  let off = 0;
  for (const f of frames) {
    boundaries.push(off);
    off += f.length;
  }
  if (boundaries.length === 0) boundaries.push(0);
  return { stream: Buffer.concat(frames), boundaries };
}

/** How a stream is cut into reads: at random points, or one byte at a time. */
const chunking = fc.oneof(
  { weight: 5, arbitrary: fc.array(fc.nat({ max: 1 << 20 }), { maxLength: 16 }).map((cuts) => ({ bytewise: false, cuts })) },
  { weight: 1, arbitrary: fc.constant({ bytewise: true, cuts: [] as number[] }) },
);

/**
 * The reads: views into one private copy of the stream. Each is overwritten
 * after its write, so a decoder that kept a reference would see garbage.
 */
function chunks(stream: Buffer, c: { bytewise: boolean; cuts: number[] }): Buffer[] {
  const copy = Buffer.from(stream);
  if (c.bytewise) return Array.from({ length: copy.length }, (_, i) => copy.subarray(i, i + 1));
  const points = [...new Set(c.cuts.map((x) => x % (copy.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(copy.subarray(prev, p));
    prev = p;
  }
  out.push(copy.subarray(prev));
  return out;
}

/** Case generator: 1..6 valid frames, 0..5 mutations, a chunking. */
function fuzzCase(frame: fc.Arbitrary<Buffer>) {
  return fc.record({
    frames: fc.array(frame, { minLength: 1, maxLength: 6 }),
    muts: fc.array(mutation, { maxLength: 5 }),
    chunking,
  });
}

// ------------------------------------------------------------------ re-encoders

function reencodeClient(f: ClientFrame): Buffer {
  return encodeClientFrame({ appId: f.appId, cmd: f.cmd, uuid: f.source.subarray(f.uuidOffset, f.uuidOffset + 16), mask: f.mask });
}

// Server frames and pusher tasks: the protocol tests' re-encoders (test/unit/protocol/fixtures.ts).

/** Collected in a plain array and compared once per case: cheaper than an expect() per frame. */
function fail(msg: string): never {
  throw new Error(msg);
}

// ------------------------------------------------------------------ properties

describe('fuzz: streaming decoders (random mutations, random chunkings)', () => {
  it(`ClientFrameStreamDecoder (TCP 9966): ${CASES} cases`, () => {
    const bound = CLIENT_HEADER_LENGTH + 8;
    let yielded = 0;
    let refused = 0;
    const run = (stream: Buffer, parts: Buffer[]) => {
      const events: string[] = [];
      let off = 0;
      const d = new ClientFrameStreamDecoder(
        (f) => {
          const raw = stream.subarray(off, off + f.byteLength);
          if (!reencodeClient(f).equals(raw)) fail(`frame at ${off} re-encodes differently`);
          events.push(raw.toString('hex'));
          off += f.byteLength;
        },
        (reason) => events.push(`!${reason}`),
      );
      for (const p of parts) {
        d.write(p);
        p.fill(0xee);
        if (d.buffered > bound) fail(`buffered ${d.buffered} > ${bound}`);
      }
      if (events.filter((e) => e.startsWith('!')).length > 1) fail('more than one refusal on one stream');
      return events;
    };
    fc.assert(
      fc.property(fuzzCase(clientFrame), ({ frames, muts, chunking: c }) => {
        const { stream: clean, boundaries } = concat(frames);
        const stream = mutate(clean, boundaries, muts, 19);
        const whole = run(stream, [Buffer.from(stream)]);
        const split = run(stream, chunks(stream, c));
        if (whole.join() !== split.join()) fail('chunking changed the events');
        yielded += whole.filter((e) => !e.startsWith('!')).length;
        refused += whole.length > 0 && whole.at(-1)!.startsWith('!') ? 1 : 0;
      }),
      { numRuns: CASES, seed: 0x9e11 },
    );
    // The generator reaches both sides: plenty of frames decoded and plenty of streams refused.
    expect(yielded).toBeGreaterThan(CASES);
    expect(refused).toBeGreaterThan(CASES / 5);
  });

  it(`ServerFrameStreamDecoder (device SDK over TCP): ${CASES} cases`, () => {
    let yielded = 0;
    let refused = 0;
    const run = (stream: Buffer, parts: Buffer[], maxContent: number) => {
      const bound = SERVER_HEADER_LENGTH + Math.max(maxContent, 8);
      const events: string[] = [];
      let off = 0;
      const d = new ServerFrameStreamDecoder(
        (f) => {
          const bytes = reencodeServer(f);
          if (f.cmd === 0x20 && f.content.length > maxContent) fail(`content ${f.content.length} > max ${maxContent}`);
          if (!bytes.equals(stream.subarray(off, off + bytes.length))) fail(`frame at ${off} re-encodes differently`);
          events.push(bytes.toString('hex'));
          off += bytes.length;
        },
        (reason) => events.push(`!${reason}`),
        maxContent,
      );
      for (const p of parts) {
        d.write(p);
        p.fill(0xee);
        if (d.buffered > bound) fail(`buffered ${d.buffered} > ${bound}`);
      }
      if (events.filter((e) => e.startsWith('!')).length > 1) fail('more than one refusal on one stream');
      return events;
    };
    fc.assert(
      fc.property(fuzzCase(serverFrame), fc.oneof(fc.constant(500), fc.integer({ min: 1, max: 700 }), fc.constant(0xffff)), ({ frames, muts, chunking: c }, max) => {
        const { stream: clean, boundaries } = concat(frames);
        const stream = mutate(clean, boundaries, muts, 3);
        const whole = run(stream, [Buffer.from(stream)], max);
        const split = run(stream, chunks(stream, c), max);
        if (whole.join() !== split.join()) fail('chunking changed the events');
        yielded += whole.filter((e) => !e.startsWith('!')).length;
        refused += whole.length > 0 && whole.at(-1)!.startsWith('!') ? 1 : 0;
      }),
      { numRuns: CASES, seed: 0x5e4 },
    );
    expect(yielded).toBeGreaterThan(CASES);
    expect(refused).toBeGreaterThan(CASES / 5);
  });

  it(`PusherTaskStreamDecoder (TCP 9999): ${CASES} cases, resynchronising after non-fatal refusals`, () => {
    let yielded = 0;
    let skipped = 0;
    const run = (stream: Buffer, parts: Buffer[], maxContent: number) => {
      const bound = CLIENT_HEADER_LENGTH + Math.max(maxContent, 8);
      const events: string[] = [];
      let off = 0;
      let fatal = false;
      const d = new PusherTaskStreamDecoder(
        {
          task: (t) => {
            if (fatal) fail('task after a fatal refusal');
            if (t.cmd === PusherCmd.Message && t.content.length > maxContent) fail(`content ${t.content.length} > max ${maxContent}`);
            const bytes = reencodePusher(t);
            if (!bytes.equals(stream.subarray(off, off + bytes.length))) fail(`task at ${off} re-encodes differently`);
            events.push(bytes.toString('hex'));
            off += bytes.length;
          },
          malformed: (reason, isFatal) => {
            if (fatal) fail('refusal after a fatal refusal');
            if (isFatal !== (reason === 'bad-version')) fail(`${reason} reported fatal=${isFatal}`);
            fatal = isFatal;
            events.push(`!${reason}`);
            // A non-fatal refusal skips exactly the body its header announced.
            if (!isFatal) off += CLIENT_HEADER_LENGTH + stream.readUInt16BE(off + 19);
          },
        },
        maxContent,
      );
      for (const p of parts) {
        d.write(p);
        p.fill(0xee);
        if (d.buffered > bound) fail(`buffered ${d.buffered} > ${bound}`);
      }
      return events;
    };
    fc.assert(
      fc.property(fuzzCase(pusherTask), fc.oneof(fc.constant(500), fc.integer({ min: 1, max: 700 }), fc.constant(0xffff)), ({ frames, muts, chunking: c }, max) => {
        const { stream: clean, boundaries } = concat(frames);
        const stream = mutate(clean, boundaries, muts, 19);
        const whole = run(stream, [Buffer.from(stream)], max);
        const split = run(stream, chunks(stream, c), max);
        if (whole.join() !== split.join()) fail('chunking changed the events');
        yielded += whole.filter((e) => !e.startsWith('!')).length;
        skipped += whole.filter((e) => e.startsWith('!') && e !== '!bad-version').length;
      }),
      { numRuns: CASES, seed: 0x9999 },
    );
    expect(yielded).toBeGreaterThan(CASES);
    expect(skipped).toBeGreaterThan(CASES / 5);
  });
});

describe('fuzz: UDP datagram decoder', () => {
  /** protocol.md section 3, as a table: the reason a datagram must be refused, or null. */
  function expected(d: Buffer): string | null {
    if (d.length < 21) return 'too-short';
    if (d[0] !== 1) return 'bad-version';
    const need = ({ 0x00: 0, 0x10: 0, 0x11: 8, 0x20: 0, 0xff: 0 } as Record<number, number>)[d[2]!];
    if (need === undefined) return 'unknown-cmd';
    if (d.readUInt16BE(19) !== need) return 'bad-data-length';
    if (d.length !== 21 + need) return 'bad-length';
    return null;
  }

  it(`decodeClientFrame (UDP 9966): ${CASES} mutated and random datagrams`, () => {
    const into = createClientFrame();
    const seen = new Map<string, number>();
    const datagram = fc.oneof(
      { weight: 6, arbitrary: fc.tuple(clientFrame, fc.array(mutation, { maxLength: 3 })).map(([f, m]) => mutate(f, [0], m, 19)) },
      // A heartbeat with extra bytes spliced on (two frames in one datagram, or trailing garbage).
      { weight: 1, arbitrary: fc.tuple(clientFrame, clientFrame).map(([a, b]) => Buffer.concat([a, b])) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)) },
    );
    fc.assert(
      fc.property(datagram, fc.boolean(), (d, reuse) => {
        const want = expected(d);
        const r = reuse ? decodeClientFrame(d, into) : decodeClientFrame(d);
        const got = typeof r === 'string' ? r : null;
        if (got !== want) fail(`decoded as ${got ?? 'frame'}, protocol.md says ${want ?? 'frame'}`);
        seen.set(got ?? 'frame', (seen.get(got ?? 'frame') ?? 0) + 1);
        if (typeof r !== 'string' && !reencodeClient(r).equals(d)) fail('accepted datagram re-encodes differently');
      }),
      { numRuns: CASES, seed: 0xd6 },
    );
    // Every outcome was reached, valid frames included.
    for (const k of ['frame', 'too-short', 'bad-version', 'unknown-cmd', 'bad-data-length', 'bad-length']) {
      expect(seen.get(k) ?? 0, k).toBeGreaterThan(50);
    }
  });
});
