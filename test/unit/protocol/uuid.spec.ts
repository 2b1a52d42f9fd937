import { describe, expect, it } from 'vitest';
import {
  InvalidUuidError,
  UUID_LENGTH,
  isUuidHex,
  isLowerUuidHex,
  normalizeUuid,
  uuidFromHex,
  uuidFromKey,
  uuidToHex,
} from '../../../lib/protocol/index.js';
import { UUID, UUID_HEX, hex } from './fixtures.js';

describe('uuid helpers (protocol.md section 2)', () => {
  it('uuidFromKey is the MD5 of the key (DDPush convention)', () => {
    // Expected value computed once, independently: `printf 100001 | md5sum`.
    const u = uuidFromKey('100001');
    expect(u).toBeInstanceOf(Buffer);
    expect(u.length).toBe(UUID_LENGTH);
    expect(u.toString('hex')).toBe('e2a6a1ace352668000aed191a817d143');
  });

  it('uuidFromKey hashes the UTF-8 bytes of the key', () => {
    // Literals from `printf abc | md5sum` and `printf '\xc3\xa9' | md5sum` ("é" is c3 a9 in UTF-8).
    expect(uuidFromKey('abc').toString('hex')).toBe('900150983cd24fb0d6963f7d28e17f72');
    expect(uuidFromKey('\u00e9').toString('hex')).toBe('66ddcd97cfdeabb2f6fb8a999b4bc76f');
  });

  it('uuidFromKey refuses an empty or non-string key', () => {
    expect(() => uuidFromKey('')).toThrow(TypeError);
    expect(() => uuidFromKey(123 as unknown as string)).toThrow(TypeError);
  });

  it('uuidToHex renders 16 bytes as 32 lowercase hex characters', () => {
    expect(uuidToHex(UUID)).toBe(UUID_HEX);
    expect(uuidToHex(hex('ffffffffffffffffffffffffffffffff'))).toBe('ffffffffffffffffffffffffffffffff');
    expect(uuidToHex(new Uint8Array(16))).toBe('00000000000000000000000000000000');
  });

  it('uuidToHex reads at an offset inside a larger buffer (no copy needed)', () => {
    const frame = hex(`010700 ${UUID_HEX} 0000`);
    expect(uuidToHex(frame, 3)).toBe(UUID_HEX);
    // The very last 16 bytes are in bounds.
    expect(uuidToHex(frame, frame.length - 16)).toBe(toHexSlice(frame, frame.length - 16));
  });

  it('uuidToHex refuses a window that does not fit', () => {
    expect(() => uuidToHex(new Uint8Array(15))).toThrow(InvalidUuidError);
    expect(() => uuidToHex(UUID, 1)).toThrow(InvalidUuidError);
    expect(() => uuidToHex(UUID, -1)).toThrow(InvalidUuidError);
  });

  it('uuidFromHex accepts either case and returns the 16 bytes', () => {
    expect(uuidFromHex(UUID_HEX).equals(UUID)).toBe(true);
    expect(uuidFromHex(UUID_HEX.toUpperCase()).equals(UUID)).toBe(true);
    expect(uuidFromHex('E2A6A1ACE352668000AED191A817D143').toString('hex')).toBe('e2a6a1ace352668000aed191a817d143');
  });

  it.each([
    ['too short', UUID_HEX.slice(2)],
    ['too long', UUID_HEX + '00'],
    ['non-hex', 'g' + UUID_HEX.slice(1)],
    ['trailing newline', UUID_HEX + '\n'],
    ['dashed', '00112233-4455-6677-8899-aabbccddeeff'],
    ['empty', ''],
  ])('uuidFromHex refuses %s input', (_label, value) => {
    expect(isUuidHex(value)).toBe(false);
    expect(() => uuidFromHex(value)).toThrow(InvalidUuidError);
  });

  it('InvalidUuidError is a TypeError with a helpful message', () => {
    try {
      uuidFromHex('nope');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(TypeError);
      expect((e as Error).name).toBe('InvalidUuidError');
      expect((e as Error).message).toContain('"nope"');
    }
  });

  it('normalizeUuid lowercases hex and renders bytes', () => {
    expect(normalizeUuid(UUID_HEX.toUpperCase())).toBe(UUID_HEX);
    expect(normalizeUuid(UUID_HEX)).toBe(UUID_HEX);
    expect(normalizeUuid(UUID)).toBe(UUID_HEX);
    expect(normalizeUuid(new Uint8Array(UUID))).toBe(UUID_HEX);
    expect(normalizeUuid(uuidFromKey('100001'))).toBe('e2a6a1ace352668000aed191a817d143');
  });

  it('isLowerUuidHex accepts exactly 32 lowercase hex digits, whatever character is wrong and wherever', () => {
    expect(isLowerUuidHex(UUID_HEX)).toBe(true);
    expect(isLowerUuidHex('0123456789abcdef0123456789abcdef')).toBe(true);
    expect(isLowerUuidHex(UUID_HEX.slice(1))).toBe(false);
    expect(isLowerUuidHex(UUID_HEX + '0')).toBe(false);
    // Every code unit that is not a lowercase hex digit, at every position; codes above 127 include
    // ones that equal a hex digit in their low 7 bits ('\u00b0' & 127 is '0', '\u0161' & 127 is 'a').
    const others: number[] = [];
    for (let c = 0; c < 0x400; c++) if (!/[0-9a-f]/.test(String.fromCharCode(c))) others.push(c);
    others.push(0xff10, 0xff41, 0xd800);
    for (let pos = 0; pos < 32; pos++) {
      for (const c of others) {
        const s = UUID_HEX.slice(0, pos) + String.fromCharCode(c) + UUID_HEX.slice(pos + 1);
        if (isLowerUuidHex(s)) throw new Error(`accepted code ${c} at ${pos}`);
      }
    }
  });

  it('normalizeUuid refuses wrong sizes and types', () => {
    expect(() => normalizeUuid(new Uint8Array(15))).toThrow(InvalidUuidError);
    expect(() => normalizeUuid(new Uint8Array(17))).toThrow(InvalidUuidError);
    expect(() => normalizeUuid('xyz')).toThrow(InvalidUuidError);
    expect(() => normalizeUuid(42 as unknown as string)).toThrow(InvalidUuidError);
    expect(() => normalizeUuid(null as unknown as string)).toThrow(InvalidUuidError);
  });

  it('hex round trip for every byte value', () => {
    const all = Buffer.alloc(256);
    for (let i = 0; i < 256; i++) all[i] = i;
    for (let off = 0; off + 16 <= 256; off += 16) {
      const h = uuidToHex(all, off);
      expect(h).toBe(all.subarray(off, off + 16).toString('hex'));
      expect(uuidFromHex(h).equals(all.subarray(off, off + 16))).toBe(true);
    }
  });
});

function toHexSlice(b: Buffer, off: number): string {
  return b.subarray(off, off + 16).toString('hex');
}
