import {
  MASK_LENGTH,
  MAX_U16,
  PROTOCOL_VERSION,
  SERVER_HEADER_LENGTH,
  ServerCmd,
  type ServerFrameError,
} from './protocol.constants.js';
import { readMask, writeMask } from './client-frame.codec.js';

/** A server -> device frame as a device sees it. */
export interface ServerFrame {
  appId: number;
  cmd: ServerCmd;
  /** 0x11: the pushed categories; `0n` otherwise. */
  mask: bigint;
  /** 0x20: the message bytes (a copy, safe to keep); empty otherwise. */
  content: Buffer;
}

// 0x00 and 0x10 frames are five constant bytes per appId: build them once so
// the heartbeat echo and notice paths allocate nothing.
const ECHO_FRAMES: Buffer[] = [];
const NOTICE_FRAMES: Buffer[] = [];
for (let appId = 0; appId < 256; appId++) {
  ECHO_FRAMES.push(Buffer.from([PROTOCOL_VERSION, appId, ServerCmd.HeartbeatEcho, 0, 0]));
  NOTICE_FRAMES.push(Buffer.from([PROTOCOL_VERSION, appId, ServerCmd.Notice, 0, 0]));
}

/** 0x00 heartbeat echo. The returned buffer is shared: do not modify it. */
export function encodeHeartbeatEcho(appId: number): Buffer {
  return ECHO_FRAMES[appId & 0xff]!;
}

/** 0x10 general notice. The returned buffer is shared: do not modify it. */
export function encodeNotice(appId: number): Buffer {
  return NOTICE_FRAMES[appId & 0xff]!;
}

/** 0x11 category notice carrying a 64-bit mask. */
export function encodeCategory(appId: number, mask: bigint): Buffer {
  const buf = Buffer.allocUnsafe(SERVER_HEADER_LENGTH + MASK_LENGTH);
  buf[0] = PROTOCOL_VERSION;
  buf[1] = appId & 0xff;
  buf[2] = ServerCmd.Category;
  buf[3] = 0;
  buf[4] = MASK_LENGTH;
  writeMask(buf, SERVER_HEADER_LENGTH, mask);
  return buf;
}

/** 0x20 custom message. Length limits are the caller's policy; only the u16 field bound is enforced here. */
export function encodeMessage(appId: number, content: Uint8Array): Buffer {
  if (content.length > MAX_U16) throw new RangeError(`message content ${content.length} bytes exceeds the u16 length field`);
  const buf = Buffer.allocUnsafe(SERVER_HEADER_LENGTH + content.length);
  buf[0] = PROTOCOL_VERSION;
  buf[1] = appId & 0xff;
  buf[2] = ServerCmd.Message;
  buf[3] = content.length >> 8;
  buf[4] = content.length & 0xff;
  buf.set(content, SERVER_HEADER_LENGTH);
  return buf;
}

/**
 * Checks a server frame header at `offset` and returns its content length or
 * the reason it is refused. `maxContent` bounds 0x20 content.
 */
export function inspectServerHeader(buf: Uint8Array, offset: number, maxContent: number): number | ServerFrameError {
  if (buf[offset] !== PROTOCOL_VERSION) return 'bad-version';
  const len = (buf[offset + 3]! << 8) | buf[offset + 4]!;
  switch (buf[offset + 2]) {
    case ServerCmd.HeartbeatEcho:
    case ServerCmd.Notice:
      return len === 0 ? 0 : 'bad-data-length';
    case ServerCmd.Category:
      return len === MASK_LENGTH ? len : 'bad-data-length';
    case ServerCmd.Message:
      return len >= 1 && len <= maxContent ? len : 'bad-data-length';
    default:
      return 'unknown-cmd';
  }
}

/** Builds a frame from a header accepted by `inspectServerHeader`; copies the content. */
export function readServerFrame(buf: Uint8Array, offset: number, len: number): ServerFrame {
  const cmd = buf[offset + 2]! as ServerCmd;
  const start = offset + SERVER_HEADER_LENGTH;
  return {
    appId: buf[offset + 1]!,
    cmd,
    mask: cmd === ServerCmd.Category ? readMask(buf, start) : 0n,
    content: cmd === ServerCmd.Message ? Buffer.from(buf.subarray(start, start + len)) : EMPTY_BUFFER,
  };
}
const EMPTY_BUFFER = Buffer.alloc(0);

/** Decodes one server datagram strictly (what a UDP device does). Never throws. */
export function decodeServerFrame(datagram: Uint8Array, maxContent = MAX_U16): ServerFrame | ServerFrameError {
  if (datagram.length < SERVER_HEADER_LENGTH) return 'too-short';
  const len = inspectServerHeader(datagram, 0, maxContent);
  if (typeof len === 'string') return len;
  if (datagram.length !== SERVER_HEADER_LENGTH + len) return 'bad-length';
  return readServerFrame(datagram, 0, len);
}
