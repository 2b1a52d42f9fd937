import { createHash } from 'node:crypto';
import { UUID_LENGTH } from './protocol.constants.js';

/** Thrown by the uuid helpers for input that cannot be a DDPush uuid. */
export class InvalidUuidError extends TypeError {
  constructor(value: unknown) {
    const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 40)) : typeof value;
    super(`Invalid device uuid ${shown}: expected 32 hex characters or 16 bytes (use uuidFromKey() for a user key)`);
    this.name = 'InvalidUuidError';
  }
}

/**
 * The 16 bytes at `offset` of `source` as 32 lowercase hex characters.
 * Works on a frame's source buffer directly, so no 16-byte copy is made.
 */
export function uuidToHex(source: Uint8Array, offset = 0): string {
  if (offset < 0 || offset + UUID_LENGTH > source.length) throw new InvalidUuidError(source);
  // Buffer's native hex encoder builds one flat string; concatenating 16 pairs would allocate 16 strings.
  const b = Buffer.isBuffer(source) ? source : Buffer.from(source.buffer, source.byteOffset, source.byteLength);
  return b.toString('hex', offset, offset + UUID_LENGTH);
}

const HEX_RE = /^[0-9a-fA-F]{32}$/;

/** True when `value` is 32 hex characters (either case). */
export function isUuidHex(value: unknown): value is string {
  return typeof value === 'string' && HEX_RE.test(value);
}

/** 32 hex characters (either case) to 16 bytes. */
export function uuidFromHex(hex: string): Buffer {
  if (!isUuidHex(hex)) throw new InvalidUuidError(hex);
  return Buffer.from(hex, 'hex');
}

/**
 * The DDPush convention for turning a user key (an account id such as `100001`)
 * into a device uuid: the MD5 digest of the key's UTF-8 bytes.
 */
export function uuidFromKey(key: string): Buffer {
  if (typeof key !== 'string' || key.length === 0) {
    throw new TypeError('uuidFromKey(key): key must be a non-empty string');
  }
  return createHash('md5').update(key, 'utf8').digest();
}

/** 0 for the char codes of lowercase hex digits, 1 for every other code below 128. */
const NOT_LOWER_HEX = new Uint8Array(128).fill(1);
for (const c of '0123456789abcdef') NOT_LOWER_HEX[c.charCodeAt(0)] = 0;

/** Value of each lowercase hex digit, by char code. */
export const HEX_VALUE = new Uint8Array(128);
for (let i = 0; i < 16; i++) HEX_VALUE['0123456789abcdef'.charCodeAt(i)] = i;

/**
 * True when `s` is already 32 lowercase hex characters (what decoders
 * produce). Checked per push: a table lookup per character with no branch,
 * because random digits and letters make a per-character range test
 * mispredict about every other character (2.3x slower), and the regex is slower still.
 */
export function isLowerUuidHex(s: string): boolean {
  if (s.length !== 32) return false;
  let bad = 0;
  for (let i = 0; i < 32; i++) {
    const c = s.charCodeAt(i);
    bad |= NOT_LOWER_HEX[c & 127]! | (c >> 7);
  }
  return bad === 0;
}

/** Normalises a uuid given as hex (any case) or 16 bytes to lowercase hex. */
export function normalizeUuid(uuid: string | Uint8Array): string {
  if (typeof uuid === 'string') {
    if (isLowerUuidHex(uuid)) return uuid;
    if (!isUuidHex(uuid)) throw new InvalidUuidError(uuid);
    return uuid.toLowerCase();
  }
  if (!(uuid instanceof Uint8Array) || uuid.length !== UUID_LENGTH) throw new InvalidUuidError(uuid);
  return uuidToHex(uuid, 0);
}
