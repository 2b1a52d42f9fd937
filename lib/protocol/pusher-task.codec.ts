import { readMask, writeMask } from './client-frame.codec.js';
import {
  CLIENT_HEADER_LENGTH,
  DEFAULT_MAX_CONTENT_LENGTH,
  MASK_LENGTH,
  MAX_U16,
  PROTOCOL_VERSION,
  PusherCmd,
  type PusherTaskError,
  UUID_LENGTH,
  UUID_OFFSET,
} from './protocol.constants.js';
import { uuidToHex } from './uuid.util.js';

/** A decoded pusher task (protocol.md section 5). Owns its data (unless read as a view: see `readPusherTask`). */
export interface PusherTask {
  appId: number;
  cmd: PusherCmd;
  /** Device uuid, 32 lowercase hex characters. */
  uuid: string;
  /** 0x11: the categories to add; `0n` otherwise. */
  mask: bigint;
  /** 0x20: the message (a copy, or a view when read with `view`); empty otherwise. */
  content: Buffer;
}

/** A pusher task to encode (what `PusherClient` and the CLI send). */
export interface PusherTaskInput {
  appId?: number;
  cmd: PusherCmd;
  uuid: Uint8Array;
  mask?: bigint;
  content?: Uint8Array;
}

/**
 * Checks a task header at `offset` and returns its content length, or the
 * reason it is refused. Lengths are checked against the command first so a
 * wrong-length 0x10/0x11 reads as `bad-data-length`, not as too long.
 */
export function inspectPusherHeader(buf: Uint8Array, offset: number, maxContent: number): number | PusherTaskError {
  if (buf[offset] !== PROTOCOL_VERSION) return 'bad-version';
  const len = (buf[offset + 19]! << 8) | buf[offset + 20]!;
  switch (buf[offset + 2]) {
    case PusherCmd.Notice:
      return len === 0 ? 0 : 'bad-data-length';
    case PusherCmd.Category:
      return len === MASK_LENGTH ? len : 'bad-data-length';
    case PusherCmd.Message:
      if (len === 0) return 'bad-data-length';
      return len <= maxContent ? len : 'content-too-long';
    default:
      return 'unknown-cmd';
  }
}

/**
 * Builds a task from a header accepted by `inspectPusherHeader`, copying what
 * it keeps. With `view`, a 0x20 content is a view of `buf` instead, for a
 * caller whose `buf` is never changed afterwards: the pusher port hands such
 * views to the store, which makes the one copy it keeps (the LMDB store's is
 * the log value it writes anyway), so a push costs no buffer allocation of
 * its own. A view pins all of `buf` while it is held.
 */
export function readPusherTask(buf: Uint8Array, offset: number, len: number, view = false): PusherTask {
  const cmd = buf[offset + 2]! as PusherCmd;
  const start = offset + CLIENT_HEADER_LENGTH;
  return {
    appId: buf[offset + 1]!,
    cmd,
    uuid: uuidToHex(buf, offset + UUID_OFFSET),
    mask: cmd === PusherCmd.Category ? readMask(buf, start) : 0n,
    content: cmd !== PusherCmd.Message ? EMPTY : view ? Buffer.from(buf.buffer, buf.byteOffset + start, len) : ownCopy(buf, start, len),
  };
}
const EMPTY = Buffer.alloc(0);

/**
 * Task content is kept as a pending message, possibly for hours: an exact-size
 * buffer of its own, rather than a slice of Node's shared 8 KiB pool (which
 * would pin the whole pool slab and make the engine copy it again).
 */
function ownCopy(buf: Uint8Array, start: number, len: number): Buffer {
  const out = Buffer.allocUnsafeSlow(len);
  out.set(buf.subarray(start, start + len));
  return out;
}

/** Decodes exactly one task from `buf` (must be the whole task). Never throws. */
export function decodePusherTask(
  buf: Uint8Array,
  maxContent = DEFAULT_MAX_CONTENT_LENGTH,
): PusherTask | PusherTaskError | 'too-short' | 'bad-length' {
  if (buf.length < CLIENT_HEADER_LENGTH) return 'too-short';
  const len = inspectPusherHeader(buf, 0, maxContent);
  if (typeof len === 'string') return len;
  if (buf.length !== CLIENT_HEADER_LENGTH + len) return 'bad-length';
  return readPusherTask(buf, 0, len);
}

/** Size of the encoded task. */
export function pusherTaskLength(task: PusherTaskInput): number {
  return CLIENT_HEADER_LENGTH + contentLength(task);
}

function contentLength(task: PusherTaskInput): number {
  switch (task.cmd) {
    case PusherCmd.Notice:
      return 0;
    case PusherCmd.Category:
      return MASK_LENGTH;
    case PusherCmd.Message:
      return task.content?.length ?? 0;
    default:
      throw new RangeError(`unknown pusher cmd 0x${Number(task.cmd).toString(16)}`);
  }
}

/**
 * Writes a task into `target` at `offset` (so a client can batch many tasks in
 * one buffer) and returns the offset after it. Content limits are the server's
 * policy; only the u16 field bound and the uuid size are checked here.
 */
export function writePusherTask(target: Uint8Array, offset: number, task: PusherTaskInput): number {
  if (task.uuid.length !== UUID_LENGTH) throw new RangeError(`uuid must be ${UUID_LENGTH} bytes, got ${task.uuid.length}`);
  const len = contentLength(task);
  if (len > MAX_U16) throw new RangeError(`content ${len} bytes exceeds the u16 length field`);
  target[offset] = PROTOCOL_VERSION;
  target[offset + 1] = (task.appId ?? 0) & 0xff;
  target[offset + 2] = task.cmd;
  target.set(task.uuid, offset + UUID_OFFSET);
  target[offset + 19] = len >> 8;
  target[offset + 20] = len & 0xff;
  const start = offset + CLIENT_HEADER_LENGTH;
  if (task.cmd === PusherCmd.Category) writeMask(target, start, task.mask ?? 0n);
  else if (task.cmd === PusherCmd.Message && task.content) target.set(task.content, start);
  return start + len;
}

/** Encodes one task into a new buffer. */
export function encodePusherTask(task: PusherTaskInput): Buffer {
  const buf = Buffer.allocUnsafe(pusherTaskLength(task));
  writePusherTask(buf, 0, task);
  return buf;
}
