/**
 * Property tests (fast-check): round trips for every valid frame, and
 * robustness of every decoder against arbitrary bytes and arbitrary chunking,
 * checked against the reference models in fixtures.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ClientCmd,
  type ClientFrameError,
  ClientFrameStreamDecoder,
  type ClientFrameInput,
  PusherCmd,
  type PusherTaskError,
  type PusherTaskInput,
  PusherTaskStreamDecoder,
  type ServerFrame,
  type ServerFrameError,
  ServerFrameStreamDecoder,
  createClientFrame,
  decodeClientFrame,
  decodePusherTask,
  decodeServerFrame,
  encodeCategory,
  encodeClientFrame,
  encodeHeartbeatEcho,
  encodeMessage,
  encodeNotice,
  encodePusherTask,
  uuidToHex,
} from '../../../lib/protocol/index.js';
import {
  type RefResult,
  chunkAt,
  feed,
  reencodeClient,
  reencodePusher,
  reencodeServer,
  refClientStream,
  refPusherStream,
  refServerStream,
  snapshotClientFrame,
  toHex,
} from './fixtures.js';

const RUNS = 3000;
const STREAM_RUNS = 2000;

// ---------------------------------------------------------------------------
// Arbitraries.

const appIdArb = fc.integer({ min: 0, max: 255 });
const uuidArb = fc.uint8Array({ minLength: 16, maxLength: 16 });
// fast-check 4 dropped fc.bigUint; fc.bigInt with min 0n is its replacement.
const maskArb = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const contentArb = fc.uint8Array({ minLength: 1, maxLength: 500 });

const clientInputArb: fc.Arbitrary<ClientFrameInput> = fc.record({
  appId: appIdArb,
  cmd: fc.constantFrom<ClientCmd>(0x00, 0x10, 0x11, 0x20, 0xff),
  uuid: uuidArb,
  mask: maskArb,
});

type ServerInput =
  | { cmd: 0x00 | 0x10; appId: number }
  | { cmd: 0x11; appId: number; mask: bigint }
  | { cmd: 0x20; appId: number; content: Uint8Array };
const serverInputArb: fc.Arbitrary<ServerInput> = fc.oneof(
  fc.record({ cmd: fc.constantFrom<0x00 | 0x10>(0x00, 0x10), appId: appIdArb }),
  fc.record({ cmd: fc.constant<0x11>(0x11), appId: appIdArb, mask: maskArb }),
  fc.record({ cmd: fc.constant<0x20>(0x20), appId: appIdArb, content: contentArb }),
);
function encodeServer(s: ServerInput): Buffer {
  switch (s.cmd) {
    case 0x00:
      return encodeHeartbeatEcho(s.appId);
    case 0x10:
      return encodeNotice(s.appId);
    case 0x11:
      return encodeCategory(s.appId, s.mask);
    case 0x20:
      return encodeMessage(s.appId, s.content);
  }
}

const pusherInputArb: fc.Arbitrary<PusherTaskInput & { appId: number }> = fc.record({
  appId: appIdArb,
  cmd: fc.constantFrom<PusherCmd>(0x10, 0x11, 0x20),
  uuid: uuidArb,
  mask: maskArb,
  content: contentArb,
});

/** A valid encoding with a few bytes overwritten and its length nudged: reaches the deeper checks. */
function mutated(valid: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  return fc
    .tuple(
      valid,
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 }),
      fc.integer({ min: -4, max: 4 }),
    )
    .map(([b, muts, delta]) => {
      const out = Buffer.from(b);
      for (const [pos, val] of muts) out[pos % out.length] = val;
      return delta < 0 ? out.subarray(0, Math.max(0, out.length + delta)) : Buffer.concat([out, Buffer.alloc(delta, 0x01)]);
    });
}

/** A version-1 header with an arbitrary command and length field, followed by that many bytes. */
function header(size: number, cmdOffset: number, lenOffset: number, cmds: number[], maxLen: number): fc.Arbitrary<Buffer> {
  return fc
    .record({
      cmd: fc.oneof(fc.constantFrom(...cmds), fc.integer({ min: 0, max: 255 })),
      len: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: maxLen })),
      appId: appIdArb,
    })
    .map(({ cmd, len, appId }) => {
      const b = Buffer.alloc(size + len, 0x01); // body bytes that look like a version byte
      b[0] = 1;
      b[1] = appId;
      b[cmdOffset] = cmd;
      b.writeUInt16BE(len, lenOffset);
      return b;
    });
}

const randomBytesArb = fc.uint8Array({ maxLength: 48 }).map((u) => Buffer.from(u));
const cutsArb = fc.array(fc.nat({ max: 1_000_000 }), { maxLength: 24 });

type Segment = { valid: boolean; bytes: Buffer };
function segments(valid: fc.Arbitrary<Buffer>, invalid: fc.Arbitrary<Buffer>): fc.Arbitrary<Segment[]> {
  return fc.array(
    fc.oneof(
      { weight: 6, arbitrary: valid.map((bytes) => ({ valid: true, bytes })) },
      { weight: 1, arbitrary: invalid.map((bytes) => ({ valid: false, bytes })) },
    ),
    { maxLength: 12 },
  );
}

/** Encoded valid segments that precede the first invalid one: these must come out first, unchanged. */
function leadingValid(segs: Segment[]): string[] {
  const out: string[] = [];
  for (const s of segs) {
    if (!s.valid) break;
    out.push(s.bytes.toString('hex'));
  }
  return out;
}

type Ev<E> = { kind: 'frame'; raw: string } | { kind: 'error'; reason: E };
function refEvents<E>(stream: Buffer, ref: RefResult<E>): Ev<E>[] {
  return ref.events.map((e) =>
    e.kind === 'frame' ? { kind: 'frame', raw: stream.subarray(e.offset, e.offset + e.length).toString('hex') } : { kind: 'error', reason: e.reason },
  );
}
/** Bytes the decoder should still be holding after the whole stream (no fatal error). */
function restAfter<E>(stream: Buffer, ref: RefResult<E>, header: number, bodyLen: (off: number) => number): number {
  let off = 0;
  for (const e of ref.events) off = e.offset + (e.kind === 'frame' ? e.length : header + bodyLen(e.offset));
  return off >= stream.length ? 0 : stream.length - off;
}

// ---------------------------------------------------------------------------
// (a) Round trips.

describe('round trips (encode -> decode)', () => {
  it('client frames', () => {
    const into = createClientFrame();
    fc.assert(
      fc.property(clientInputArb, (input) => {
        const bytes = encodeClientFrame(input);
        expect(bytes.length).toBe(input.cmd === 0x11 ? 29 : 21);
        for (const f of [decodeClientFrame(bytes), decodeClientFrame(bytes, into)]) {
          if (typeof f === 'string') throw new Error(`refused: ${f}`);
          expect(f.appId).toBe(input.appId);
          expect(f.cmd).toBe(input.cmd);
          expect(uuidToHex(f.source, f.uuidOffset)).toBe(toHex(input.uuid));
          expect(f.mask).toBe(input.cmd === 0x11 ? input.mask : 0n);
          expect(f.byteLength).toBe(bytes.length);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('server frames', () => {
    fc.assert(
      fc.property(serverInputArb, (input) => {
        const bytes = encodeServer(input);
        const f = decodeServerFrame(bytes, 500);
        if (typeof f === 'string') throw new Error(`refused: ${f}`);
        expect(f).toEqual<ServerFrame>({
          appId: input.appId,
          cmd: input.cmd,
          mask: input.cmd === 0x11 ? input.mask : 0n,
          content: input.cmd === 0x20 ? Buffer.from(input.content) : Buffer.alloc(0),
        });
        expect(reencodeServer(f).equals(bytes)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });

  it('pusher tasks', () => {
    fc.assert(
      fc.property(pusherInputArb, (input) => {
        const bytes = encodePusherTask(input);
        const t = decodePusherTask(bytes);
        if (typeof t === 'string') throw new Error(`refused: ${t}`);
        expect(t).toEqual({
          appId: input.appId,
          cmd: input.cmd,
          uuid: toHex(input.uuid),
          mask: input.cmd === 0x11 ? input.mask : 0n,
          content: input.cmd === 0x20 ? Buffer.from(input.content!) : Buffer.alloc(0),
        });
        expect(reencodePusher(t).equals(bytes)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });
});

// ---------------------------------------------------------------------------
// (b) Arbitrary bytes into the one-shot decoders.

describe('one-shot decoders on arbitrary bytes', () => {
  const clientish = fc.oneof(randomBytesArb, mutated(clientInputArb.map(encodeClientFrame)));
  const serverish = fc.oneof(randomBytesArb, mutated(serverInputArb.map(encodeServer)));
  const pusherish = fc.oneof(randomBytesArb, mutated(pusherInputArb.map(encodePusherTask)));

  it('decodeClientFrame never throws; what it accepts re-encodes to the same bytes', () => {
    const into = createClientFrame();
    fc.assert(
      fc.property(clientish, fc.boolean(), (bytes, reuse) => {
        const f = reuse ? decodeClientFrame(bytes, into) : decodeClientFrame(bytes);
        if (typeof f === 'string') return;
        if (reuse) expect(f).toBe(into);
        expect(reencodeClient(snapshotClientFrame(f)).equals(bytes)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeServerFrame never throws; what it accepts re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(serverish, fc.integer({ min: 1, max: 600 }), (bytes, max) => {
        const f = decodeServerFrame(bytes, max);
        if (typeof f === 'string') return;
        expect(f.content.length).toBeLessThanOrEqual(max);
        expect(reencodeServer(f).equals(bytes)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });

  it('decodePusherTask never throws; what it accepts re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(pusherish, fc.integer({ min: 1, max: 600 }), (bytes, max) => {
        const t = decodePusherTask(bytes, max);
        if (typeof t === 'string') return;
        expect(t.content.length).toBeLessThanOrEqual(max);
        expect(reencodePusher(t).equals(bytes)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });
});

// ---------------------------------------------------------------------------
// (b) Arbitrary streams, arbitrarily chunked, into the streaming decoders.

describe('streaming decoders on arbitrary streams and chunkings', () => {
  it('ClientFrameStreamDecoder: matches the reference, re-encodes exactly, stops at the first refusal', () => {
    const valid = clientInputArb.map(encodeClientFrame);
    const invalid = fc.oneof(randomBytesArb, mutated(valid), header(21, 2, 19, [0x00, 0x10, 0x11, 0x20, 0xff], 16));
    fc.assert(
      fc.property(segments(valid, invalid), cutsArb, (segs, cuts) => {
        const stream = Buffer.concat(segs.map((s) => s.bytes));
        const events: Ev<ClientFrameError>[] = [];
        const decoder = new ClientFrameStreamDecoder(
          (f) => {
            const snap = snapshotClientFrame(f);
            // Each frame re-encodes to exactly the bytes it was read from.
            expect(reencodeClient(snap).toString('hex')).toBe(snap.raw);
            events.push({ kind: 'frame', raw: snap.raw });
          },
          (reason) => events.push({ kind: 'error', reason }),
        );
        const results = feed(decoder, chunkAt(stream, cuts));
        const ref = refClientStream(stream);

        expect(events).toEqual(refEvents(stream, ref));
        const frames = events.flatMap((e) => (e.kind === 'frame' ? [e.raw] : []));
        // Fatal framing: the frames are contiguous from the start of the stream...
        expect(frames.join('')).toBe(stream.subarray(0, frames.join('').length / 2).toString('hex'));
        // ...and begin with the valid input frames that precede any garbage.
        const lead = leadingValid(segs);
        expect(frames.slice(0, lead.length)).toEqual(lead);

        expect(decoder.error).toBe(ref.fatal);
        if (ref.fatal !== undefined) {
          expect(results.at(-1)).toBe(false);
          expect(results.indexOf(false)).toBeGreaterThanOrEqual(0);
          expect(results.slice(results.indexOf(false)).every((r) => !r)).toBe(true);
        } else {
          expect(results.every(Boolean)).toBe(true);
          expect(decoder.buffered).toBe(restAfter(stream, ref, 21, () => 0));
        }
      }),
      { numRuns: STREAM_RUNS },
    );
  });

  it('ServerFrameStreamDecoder: matches the reference, re-encodes exactly, stops at the first refusal', () => {
    const valid = serverInputArb.map(encodeServer);
    const invalid = fc.oneof(randomBytesArb, mutated(valid), header(5, 2, 3, [0x00, 0x10, 0x11, 0x20], 700));
    fc.assert(
      fc.property(segments(valid, invalid), cutsArb, fc.integer({ min: 1, max: 600 }), (segs, cuts, max) => {
        const stream = Buffer.concat(segs.map((s) => s.bytes));
        const events: Ev<ServerFrameError>[] = [];
        const decoder = new ServerFrameStreamDecoder(
          (f) => events.push({ kind: 'frame', raw: reencodeServer(f).toString('hex') }),
          (reason) => events.push({ kind: 'error', reason }),
          max,
        );
        const results = feed(decoder, chunkAt(stream, cuts));
        const ref = refServerStream(stream, max);

        expect(events).toEqual(refEvents(stream, ref));
        const frames = events.flatMap((e) => (e.kind === 'frame' ? [e.raw] : []));
        expect(frames.join('')).toBe(stream.subarray(0, frames.join('').length / 2).toString('hex'));
        const lead: string[] = [];
        for (const s of segs) {
          // A valid frame above the configured max is a refusal too.
          if (!s.valid || (s.bytes[2] === 0x20 && s.bytes.length - 5 > max)) break;
          lead.push(s.bytes.toString('hex'));
        }
        expect(frames.slice(0, lead.length)).toEqual(lead);

        expect(decoder.error).toBe(ref.fatal);
        if (ref.fatal !== undefined) expect(results.at(-1)).toBe(false);
        else {
          expect(results.every(Boolean)).toBe(true);
          expect(decoder.buffered).toBe(restAfter(stream, ref, 5, () => 0));
        }
      }),
      { numRuns: STREAM_RUNS },
    );
  });

  it('PusherTaskStreamDecoder: matches the reference, re-encodes exactly, resynchronises after non-fatal refusals', () => {
    const valid = pusherInputArb.map(encodePusherTask);
    const invalid = fc.oneof(randomBytesArb, mutated(valid), header(21, 2, 19, [0x10, 0x11, 0x20, 0x00, 0x30], 2000));
    fc.assert(
      fc.property(segments(valid, invalid), cutsArb, fc.integer({ min: 1, max: 600 }), (segs, cuts, max) => {
        const stream = Buffer.concat(segs.map((s) => s.bytes));
        const events: (Ev<PusherTaskError> & { fatal?: boolean })[] = [];
        const decoder = new PusherTaskStreamDecoder(
          {
            task: (t) => events.push({ kind: 'frame', raw: reencodePusher(t).toString('hex') }),
            malformed: (reason, fatal) => events.push({ kind: 'error', reason, fatal }),
          },
          max,
        );
        const results = feed(decoder, chunkAt(stream, cuts));
        const ref = refPusherStream(stream, max);

        expect(events).toEqual(
          refEvents(stream, ref).map((e) => (e.kind === 'error' ? { ...e, fatal: e.reason === 'bad-version' } : e)),
        );
        // Valid tasks before any garbage come out first and unchanged (oversized ones as refusals).
        const lead: Ev<PusherTaskError>[] = [];
        for (const s of segs) {
          if (!s.valid) break;
          const tooLong = s.bytes[2] === 0x20 && s.bytes.length - 21 > max;
          lead.push(tooLong ? { kind: 'error', reason: 'content-too-long' } : { kind: 'frame', raw: s.bytes.toString('hex') });
        }
        expect(events.slice(0, lead.length).map(({ fatal: _f, ...e }) => e)).toEqual(lead);

        expect(decoder.error).toBe(ref.fatal);
        if (ref.fatal !== undefined) expect(results.at(-1)).toBe(false);
        else {
          expect(results.every(Boolean)).toBe(true);
          expect(decoder.buffered).toBe(restAfter(stream, ref, 21, (off) => stream.readUInt16BE(off + 19)));
          // Bounded memory: never more than one header plus the largest acceptable body (0x11's 8 bytes included).
          expect(decoder.buffered).toBeLessThanOrEqual(21 + Math.max(max, 8));
        }
      }),
      { numRuns: STREAM_RUNS },
    );
  });

  it('chunking never changes the outcome (same stream, two chunkings)', () => {
    const valid = pusherInputArb.map(encodePusherTask);
    const invalid = header(21, 2, 19, [0x10, 0x11, 0x20, 0x30], 1000);
    fc.assert(
      fc.property(segments(valid, invalid), cutsArb, cutsArb, (segs, cutsA, cutsB) => {
        const stream = Buffer.concat(segs.map((s) => s.bytes));
        const run = (cuts: number[]) => {
          const out: string[] = [];
          const d = new PusherTaskStreamDecoder({
            task: (t) => out.push(reencodePusher(t).toString('hex')),
            malformed: (r, f) => out.push(`${r}:${f}`),
          });
          feed(d, chunkAt(stream, cuts));
          return out;
        };
        expect(run(cutsA)).toEqual(run(cutsB));
      }),
      { numRuns: 500 },
    );
  });
});
