import { describe, expect, it } from 'vitest';
import {
  MAX_U16,
  SERVER_HEADER_LENGTH,
  ServerCmd,
  type ServerFrame,
  type ServerFrameError,
  decodeServerFrame,
  encodeCategory,
  encodeHeartbeatEcho,
  encodeMessage,
  encodeNotice,
} from '../../../lib/protocol/index.js';
import { hex } from './fixtures.js';

describe('server frame vectors (protocol.md section 4)', () => {
  it('0x00 heartbeat echo', () => {
    expect(encodeHeartbeatEcho(0x07).toString('hex')).toBe(hex('01 07 00 0000').toString('hex'));
    expect(encodeHeartbeatEcho(0).toString('hex')).toBe(hex('01 00 00 0000').toString('hex'));
    expect(encodeHeartbeatEcho(0xff).toString('hex')).toBe(hex('01 ff 00 0000').toString('hex'));
  });

  it('0x10 general notice', () => {
    expect(encodeNotice(0x07).toString('hex')).toBe(hex('01 07 10 0000').toString('hex'));
    expect(encodeNotice(0).toString('hex')).toBe(hex('01 00 10 0000').toString('hex'));
  });

  it('0x00 / 0x10 take appId modulo 256 and are shared constant buffers', () => {
    expect(encodeHeartbeatEcho(0x107).toString('hex')).toBe('0107000000');
    expect(encodeNotice(-1).toString('hex')).toBe('01ff100000');
    expect(encodeHeartbeatEcho(5)).toBe(encodeHeartbeatEcho(5));
    expect(encodeNotice(5)).toBe(encodeNotice(5));
  });

  it.each([
    [0x8000000000000001n, '01 07 11 0008 8000000000000001'],
    [0xffffffffffffffffn, '01 07 11 0008 ffffffffffffffff'],
    [0x0123456789abcdefn, '01 07 11 0008 0123456789abcdef'],
    [0n, '01 07 11 0008 0000000000000000'],
    [1n, '01 07 11 0008 0000000000000001'],
  ])('0x11 category notice, mask %s', (mask, expected) => {
    expect(encodeCategory(0x07, mask).toString('hex')).toBe(hex(expected).toString('hex'));
  });

  it('0x11 mask is taken modulo 2^64', () => {
    expect(encodeCategory(7, -1n).toString('hex')).toBe(hex('01 07 11 0008 ffffffffffffffff').toString('hex'));
    expect(encodeCategory(7, (1n << 64n) | 2n).toString('hex')).toBe(hex('01 07 11 0008 0000000000000002').toString('hex'));
  });

  it('0x20 custom message with content', () => {
    expect(encodeMessage(0x07, Buffer.from('hello')).toString('hex')).toBe(hex('01 07 20 0005 68656c6c6f').toString('hex'));
    expect(encodeMessage(0x07, hex('00')).toString('hex')).toBe(hex('01 07 20 0001 00').toString('hex'));
    const big = Buffer.alloc(500, 0x41);
    expect(encodeMessage(1, big).subarray(0, 5).toString('hex')).toBe('01012001f4');
    const max = encodeMessage(1, new Uint8Array(MAX_U16));
    expect(max.subarray(0, 5).toString('hex')).toBe('010120ffff');
    expect(max.length).toBe(5 + MAX_U16);
  });

  it('0x20 refuses content that does not fit the u16 length', () => {
    expect(() => encodeMessage(1, new Uint8Array(MAX_U16 + 1))).toThrow(RangeError);
  });

  const decoded: [string, string, ServerFrame][] = [
    ['0x00', '01 07 00 0000', { appId: 7, cmd: 0x00, mask: 0n, content: Buffer.alloc(0) }],
    ['0x10', '01 07 10 0000', { appId: 7, cmd: 0x10, mask: 0n, content: Buffer.alloc(0) }],
    ['0x11 top bit', '01 07 11 0008 8000000000000001', { appId: 7, cmd: 0x11, mask: 0x8000000000000001n, content: Buffer.alloc(0) }],
    ['0x11 all bits', '01 07 11 0008 ffffffffffffffff', { appId: 7, cmd: 0x11, mask: 0xffffffffffffffffn, content: Buffer.alloc(0) }],
    ['0x20', '01 07 20 0005 68656c6c6f', { appId: 7, cmd: 0x20, mask: 0n, content: Buffer.from('hello') }],
  ];
  it.each(decoded)('decodes %s', (_l, h, expected) => {
    const f = decodeServerFrame(hex(h));
    expect(f).toEqual(expected);
  });

  it('decoded 0x20 content is a copy (safe to keep)', () => {
    const dg = hex('01 07 20 0003 616263');
    const f = decodeServerFrame(dg) as ServerFrame;
    dg.fill(0);
    expect(f.content.toString()).toBe('abc');
  });
});

function frame(h: string, patch: Record<number, number> = {}): Buffer {
  const b = hex(h);
  for (const [k, v] of Object.entries(patch)) b[Number(k)] = v;
  return b;
}

describe('decodeServerFrame refusals', () => {
  const cases: [string, Uint8Array, ServerFrameError, number?][] = [
    ['empty', new Uint8Array(0), 'too-short'],
    ['4 bytes', hex('01070000'), 'too-short'],
    ['version 0', frame('00 07 00 0000'), 'bad-version'],
    ['version 2', frame('02 07 10 0000'), 'bad-version'],
    ['cmd 0x01', frame('01 07 01 0000'), 'unknown-cmd'],
    ['cmd 0x12', frame('01 07 12 0000'), 'unknown-cmd'],
    ['cmd 0xff (a client-only command)', frame('01 07 ff 0000'), 'unknown-cmd'],
    ['0x00 with len 1', frame('01 07 00 0001 00'), 'bad-data-length'],
    ['0x10 with len 1', frame('01 07 10 0001 00'), 'bad-data-length'],
    ['0x10 with len 8', frame('01 07 10 0008 0000000000000000'), 'bad-data-length'],
    ['0x11 with len 0', frame('01 07 11 0000'), 'bad-data-length'],
    ['0x11 with len 7', frame('01 07 11 0007 00000000000000'), 'bad-data-length'],
    ['0x11 with len 9', frame('01 07 11 0009 000000000000000000'), 'bad-data-length'],
    ['0x20 with len 0', frame('01 07 20 0000'), 'bad-data-length'],
    ['0x20 above a configured max of 4', frame('01 07 20 0005 68656c6c6f'), 'bad-data-length', 4],
    ['0x00 with a trailing byte', frame('01 07 00 0000 00'), 'bad-length'],
    ['0x11 truncated', frame('01 07 11 0008 80000000000000'), 'bad-length'],
    ['0x20 shorter than len', frame('01 07 20 0005 68656c6c'), 'bad-length'],
    ['0x20 longer than len', frame('01 07 20 0005 68656c6c6f21'), 'bad-length'],
  ];
  it.each(cases)('%s -> %s', (_l, bytes, reason, max) => {
    expect(decodeServerFrame(bytes, max)).toBe(reason);
  });

  it('0x20 at exactly the configured max is accepted, max+1 refused', () => {
    for (const max of [1, 10, 500]) {
      const at = encodeMessage(3, Buffer.alloc(max, 0x5a));
      const over = encodeMessage(3, Buffer.alloc(max + 1, 0x5a));
      const f = decodeServerFrame(at, max);
      expect(typeof f).toBe('object');
      expect((f as ServerFrame).content.length).toBe(max);
      expect(decodeServerFrame(over, max)).toBe('bad-data-length');
    }
  });

  it('default max is the u16 bound: 65535 bytes accepted', () => {
    const f = decodeServerFrame(encodeMessage(1, Buffer.alloc(MAX_U16, 1)));
    expect(typeof f).toBe('object');
    expect((f as ServerFrame).content.length).toBe(MAX_U16);
  });

  it('accepts exactly 0x00, 0x10, 0x11, 0x20', () => {
    const accepted: number[] = [];
    for (let cmd = 0; cmd < 256; cmd++) {
      const len = cmd === 0x11 ? 8 : cmd === 0x20 ? 1 : 0;
      const b = Buffer.concat([Buffer.from([1, 0, cmd, 0, len]), Buffer.alloc(len)]);
      if (typeof decodeServerFrame(b) !== 'string') accepted.push(cmd);
    }
    expect(accepted).toEqual([ServerCmd.HeartbeatEcho, ServerCmd.Notice, ServerCmd.Category, ServerCmd.Message]);
    expect(SERVER_HEADER_LENGTH).toBe(5);
  });
});
