/**
 * Shared helpers for the protocol specs: hex helpers, chunking, re-encoders and
 * small reference models of the three framings written straight from
 * /work/shared/protocol.md sections 3-5 (deliberately not reusing the codec's
 * own header inspectors, so the streaming decoders are checked against an
 * independent reading of the contract).
 */
import {
  type ClientFrame,
  type ClientFrameError,
  type PusherTask,
  type PusherTaskError,
  type ServerFrame,
  type ServerFrameError,
  encodeCategory,
  encodeClientFrame,
  encodeHeartbeatEcho,
  encodeMessage,
  encodeNotice,
  encodePusherTask,
  uuidFromHex,
  uuidToHex,
} from '../../../lib/protocol/index.js';

/** A fixed uuid whose bytes are easy to spot in a hex dump. */
export const UUID_HEX = '00112233445566778899aabbccddeeff';
export const UUID = Buffer.from(UUID_HEX, 'hex');

/** Hex literal (whitespace allowed for readability) to bytes. */
export function hex(s: string): Buffer {
  const clean = s.replace(/\s+/g, '');
  if (!/^(?:[0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex literal ${s}`);
  return Buffer.from(clean, 'hex');
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** A copy of everything a client frame says, taken inside a decoder callback. */
export interface ClientFrameSnapshot {
  appId: number;
  cmd: number;
  uuid: string;
  mask: bigint;
  byteLength: number;
  /** The exact bytes the frame was decoded from. */
  raw: string;
}

export function snapshotClientFrame(f: ClientFrame): ClientFrameSnapshot {
  const start = f.uuidOffset - 3;
  return {
    appId: f.appId,
    cmd: f.cmd,
    uuid: uuidToHex(f.source, f.uuidOffset),
    mask: f.mask,
    byteLength: f.byteLength,
    raw: toHex(f.source.subarray(start, start + f.byteLength)),
  };
}

export function reencodeClient(s: ClientFrameSnapshot): Buffer {
  return encodeClientFrame({ appId: s.appId, cmd: s.cmd as ClientFrame['cmd'], uuid: uuidFromHex(s.uuid), mask: s.mask });
}

export function reencodeServer(f: ServerFrame): Buffer {
  switch (f.cmd) {
    case 0x00:
      return encodeHeartbeatEcho(f.appId);
    case 0x10:
      return encodeNotice(f.appId);
    case 0x11:
      return encodeCategory(f.appId, f.mask);
    case 0x20:
      return encodeMessage(f.appId, f.content);
    default:
      throw new Error(`decoder yielded an unknown server cmd ${String(f.cmd)}`);
  }
}

export function reencodePusher(t: PusherTask): Buffer {
  return encodePusherTask({ appId: t.appId, cmd: t.cmd, uuid: uuidFromHex(t.uuid), mask: t.mask, content: t.content });
}

/**
 * Splits `stream` at the given cut points (taken modulo length + 1, so empty
 * chunks happen too) into independent copies: the caller may scribble over a
 * chunk after writing it, which catches a decoder that keeps references.
 */
export function chunkAt(stream: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(Buffer.from(stream.subarray(prev, p)));
    prev = p;
  }
  out.push(Buffer.from(stream.subarray(prev)));
  return out;
}

/** Writes each chunk, then overwrites it so a decoder that retained it would see garbage. */
export function feed(decoder: { write(chunk: Buffer): boolean }, chunks: readonly Buffer[]): boolean[] {
  const results: boolean[] = [];
  for (const c of chunks) {
    results.push(decoder.write(c));
    c.fill(0xee);
  }
  return results;
}

/** Deterministic PRNG (mulberry32) for the example-based random chunkings. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomChunks(stream: Buffer, next: () => number, maxChunk: number): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  while (i < stream.length) {
    const size = Math.min(stream.length - i, Math.floor(next() * (maxChunk + 1)));
    out.push(Buffer.from(stream.subarray(i, i + size)));
    i += size;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Reference models (protocol.md as a table, one frame at a time).

export type RefEvent<E> = { kind: 'frame'; offset: number; length: number } | { kind: 'error'; reason: E; offset: number };

export interface RefResult<E> {
  events: RefEvent<E>[];
  /** The fatal reason, if the stream was refused. */
  fatal?: E;
}

/** Section 3: heartbeat/0x10/0x20/0xff carry 0 data bytes, 0x11 exactly 8. Every refusal on TCP is fatal. */
export function refClientStream(stream: Uint8Array): RefResult<ClientFrameError> {
  const need: Record<number, number> = { 0x00: 0, 0x10: 0, 0x11: 8, 0x20: 0, 0xff: 0 };
  const events: RefEvent<ClientFrameError>[] = [];
  let off = 0;
  while (stream.length - off >= 21) {
    if (stream[off] !== 1) return { events: [...events, { kind: 'error', reason: 'bad-version', offset: off }], fatal: 'bad-version' };
    const want = need[stream[off + 2]!];
    if (want === undefined) return { events: [...events, { kind: 'error', reason: 'unknown-cmd', offset: off }], fatal: 'unknown-cmd' };
    const dataLen = stream[off + 19]! * 256 + stream[off + 20]!;
    if (dataLen !== want) {
      return { events: [...events, { kind: 'error', reason: 'bad-data-length', offset: off }], fatal: 'bad-data-length' };
    }
    if (stream.length - off < 21 + dataLen) break;
    events.push({ kind: 'frame', offset: off, length: 21 + dataLen });
    off += 21 + dataLen;
  }
  return { events };
}

/** Section 4: 0x00/0x10 empty, 0x11 exactly 8, 0x20 1..max. Every refusal on TCP is fatal. */
export function refServerStream(stream: Uint8Array, maxContent: number): RefResult<ServerFrameError> {
  const events: RefEvent<ServerFrameError>[] = [];
  let off = 0;
  while (stream.length - off >= 5) {
    const fail = (reason: ServerFrameError): RefResult<ServerFrameError> => ({
      events: [...events, { kind: 'error', reason, offset: off }],
      fatal: reason,
    });
    if (stream[off] !== 1) return fail('bad-version');
    const cmd = stream[off + 2]!;
    const len = stream[off + 3]! * 256 + stream[off + 4]!;
    if (cmd === 0x00 || cmd === 0x10) {
      if (len !== 0) return fail('bad-data-length');
    } else if (cmd === 0x11) {
      if (len !== 8) return fail('bad-data-length');
    } else if (cmd === 0x20) {
      if (len < 1 || len > maxContent) return fail('bad-data-length');
    } else {
      return fail('unknown-cmd');
    }
    if (stream.length - off < 5 + len) break;
    events.push({ kind: 'frame', offset: off, length: 5 + len });
    off += 5 + len;
  }
  return { events };
}

/**
 * Section 5: a bad version is fatal (the length cannot be trusted); any other
 * malformed task is reported and its `len` body bytes are skipped.
 */
export function refPusherStream(stream: Uint8Array, maxContent: number): RefResult<PusherTaskError> {
  const events: RefEvent<PusherTaskError>[] = [];
  let off = 0;
  while (stream.length - off >= 21) {
    if (stream[off] !== 1) return { events: [...events, { kind: 'error', reason: 'bad-version', offset: off }], fatal: 'bad-version' };
    const cmd = stream[off + 2]!;
    const len = stream[off + 19]! * 256 + stream[off + 20]!;
    let reason: PusherTaskError | undefined;
    if (cmd === 0x10) reason = len === 0 ? undefined : 'bad-data-length';
    else if (cmd === 0x11) reason = len === 8 ? undefined : 'bad-data-length';
    else if (cmd === 0x20) reason = len === 0 ? 'bad-data-length' : len > maxContent ? 'content-too-long' : undefined;
    else reason = 'unknown-cmd';
    if (reason !== undefined) {
      events.push({ kind: 'error', reason, offset: off });
      off += 21 + len;
      continue;
    }
    if (stream.length - off < 21 + len) break;
    events.push({ kind: 'frame', offset: off, length: 21 + len });
    off += 21 + len;
  }
  return { events };
}
