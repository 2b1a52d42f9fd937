import {
  CLIENT_HEADER_LENGTH,
  ClientCmd,
  type ClientFrameError,
  MASK_LENGTH,
  MAX_CLIENT_DATA_LENGTH,
  PROTOCOL_VERSION,
  UUID_LENGTH,
  UUID_OFFSET,
} from './protocol.constants.js';

/**
 * A decoded device -> server frame. To keep the heartbeat path free of
 * allocations the uuid is not copied: it is the 16 bytes at `uuidOffset` of
 * `source`. Decoders may reuse both the object and `source` for the next
 * frame, so copy what must outlive the call (see `uuidToHex`).
 */
export interface ClientFrame {
  appId: number;
  cmd: ClientCmd;
  source: Uint8Array;
  uuidOffset: number;
  /** The acknowledged categories of a 0x11 ack; `0n` for every other command. */
  mask: bigint;
  /** Encoded size: 21 or 29 bytes. */
  byteLength: number;
}

/** A client frame to encode: what the device SDK and tests send. */
export interface ClientFrameInput {
  appId: number;
  cmd: ClientCmd;
  uuid: Uint8Array;
  /** Required for 0x11 acks. */
  mask?: bigint;
}

/** The data length a command requires, or -1 for an unknown command. */
export function clientDataLength(cmd: number): number {
  switch (cmd) {
    case ClientCmd.Heartbeat:
    case ClientCmd.AckNotice:
    case ClientCmd.AckMessage:
    case ClientCmd.Reset:
      return 0;
    case ClientCmd.AckCategory:
      return MASK_LENGTH;
    default:
      return -1;
  }
}

/**
 * Checks the 21-byte header at `offset` (which must be in bounds) and returns
 * the data length that follows it, or the reason the header is refused.
 */
export function inspectClientHeader(buf: Uint8Array, offset: number): number | ClientFrameError {
  if (buf[offset] !== PROTOCOL_VERSION) return 'bad-version';
  const expected = clientDataLength(buf[offset + 2]!);
  if (expected < 0) return 'unknown-cmd';
  const dataLen = (buf[offset + 19]! << 8) | buf[offset + 20]!;
  if (dataLen !== expected || dataLen > MAX_CLIENT_DATA_LENGTH) return 'bad-data-length';
  return dataLen;
}

/** Reads a big-endian u64 without a DataView or Buffer wrapper (works on any Uint8Array). */
export function readMask(buf: Uint8Array, offset: number): bigint {
  const hi = ((buf[offset]! << 24) | (buf[offset + 1]! << 16) | (buf[offset + 2]! << 8) | buf[offset + 3]!) >>> 0;
  const lo = ((buf[offset + 4]! << 24) | (buf[offset + 5]! << 16) | (buf[offset + 6]! << 8) | buf[offset + 7]!) >>> 0;
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** Writes `mask` (taken modulo 2^64) big-endian at `offset`. */
export function writeMask(buf: Uint8Array, offset: number, mask: bigint): void {
  const m = BigInt.asUintN(64, mask);
  const hi = Number(m >> 32n);
  const lo = Number(m & 0xffffffffn);
  buf[offset] = hi >>> 24;
  buf[offset + 1] = (hi >>> 16) & 0xff;
  buf[offset + 2] = (hi >>> 8) & 0xff;
  buf[offset + 3] = hi & 0xff;
  buf[offset + 4] = lo >>> 24;
  buf[offset + 5] = (lo >>> 16) & 0xff;
  buf[offset + 6] = (lo >>> 8) & 0xff;
  buf[offset + 7] = lo & 0xff;
}

/** Fills `out` from a header already accepted by `inspectClientHeader`. */
export function fillClientFrame(out: ClientFrame, buf: Uint8Array, offset: number, dataLen: number): ClientFrame {
  out.appId = buf[offset + 1]!;
  out.cmd = buf[offset + 2]! as ClientCmd;
  out.source = buf;
  out.uuidOffset = offset + UUID_OFFSET;
  out.mask = dataLen === MASK_LENGTH ? readMask(buf, offset + CLIENT_HEADER_LENGTH) : 0n;
  out.byteLength = CLIENT_HEADER_LENGTH + dataLen;
  return out;
}

/** A fresh frame object to pass as `into` when a caller wants zero allocations per decode. */
export function createClientFrame(): ClientFrame {
  return { appId: 0, cmd: ClientCmd.Heartbeat, source: EMPTY, uuidOffset: 0, mask: 0n, byteLength: 0 };
}
const EMPTY = new Uint8Array(0);

/**
 * Decodes one UDP datagram strictly: version 1, a known command, the command's
 * exact data length, and a datagram exactly 21 + dataLen long. Never throws;
 * a refused datagram yields the reason as a string. Pass `into` to reuse one
 * frame object (the heartbeat path then allocates nothing).
 */
export function decodeClientFrame(datagram: Uint8Array, into?: ClientFrame): ClientFrame | ClientFrameError {
  if (datagram.length < CLIENT_HEADER_LENGTH) return 'too-short';
  const dataLen = inspectClientHeader(datagram, 0);
  if (typeof dataLen === 'string') return dataLen;
  if (datagram.length !== CLIENT_HEADER_LENGTH + dataLen) return 'bad-length';
  return fillClientFrame(into ?? createClientFrame(), datagram, 0, dataLen);
}

/** Encodes a device -> server frame (used by the device SDK and by tests). */
export function encodeClientFrame(frame: ClientFrameInput): Buffer {
  if (frame.uuid.length !== UUID_LENGTH) throw new RangeError(`uuid must be ${UUID_LENGTH} bytes, got ${frame.uuid.length}`);
  const dataLen = clientDataLength(frame.cmd);
  if (dataLen < 0) throw new RangeError(`unknown client cmd 0x${Number(frame.cmd).toString(16)}`);
  const buf = Buffer.allocUnsafe(CLIENT_HEADER_LENGTH + dataLen);
  buf[0] = PROTOCOL_VERSION;
  buf[1] = frame.appId & 0xff;
  buf[2] = frame.cmd;
  buf.set(frame.uuid, UUID_OFFSET);
  buf[19] = dataLen >> 8;
  buf[20] = dataLen & 0xff;
  if (dataLen === MASK_LENGTH) writeMask(buf, CLIENT_HEADER_LENGTH, frame.mask ?? 0n);
  return buf;
}
