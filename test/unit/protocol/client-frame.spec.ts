import { describe, expect, it } from 'vitest';
import {
  CLIENT_FRAME_ERRORS,
  CLIENT_HEADER_LENGTH,
  ClientCmd,
  type ClientFrame,
  type ClientFrameError,
  clientDataLength,
  createClientFrame,
  decodeClientFrame,
  encodeClientFrame,
  readMask,
  uuidFromKey,
  uuidToHex,
  writeMask,
} from '../../../lib/protocol/index.js';
import { UUID, UUID_HEX, hex, rng } from './fixtures.js';

/** protocol.md section 3, one row per command, appId 0x07, uuid 00112233..eeff. */
const VECTORS: { name: string; cmd: ClientCmd; mask?: bigint; hex: string }[] = [
  { name: '0x00 heartbeat', cmd: 0x00, hex: `01 07 00 ${UUID_HEX} 0000` },
  { name: '0x10 ack general notice', cmd: 0x10, hex: `01 07 10 ${UUID_HEX} 0000` },
  { name: '0x11 ack category (mask 0x8000000000000001)', cmd: 0x11, mask: 0x8000000000000001n, hex: `01 07 11 ${UUID_HEX} 0008 8000000000000001` },
  { name: '0x11 ack category (mask 0x0123456789abcdef)', cmd: 0x11, mask: 0x0123456789abcdefn, hex: `01 07 11 ${UUID_HEX} 0008 0123456789abcdef` },
  { name: '0x11 ack category (all 64 bits)', cmd: 0x11, mask: 0xffffffffffffffffn, hex: `01 07 11 ${UUID_HEX} 0008 ffffffffffffffff` },
  { name: '0x20 ack custom message', cmd: 0x20, hex: `01 07 20 ${UUID_HEX} 0000` },
  { name: '0xff reset', cmd: 0xff, hex: `01 07 ff ${UUID_HEX} 0000` },
];

describe('client frame vectors (protocol.md section 3)', () => {
  it.each(VECTORS)('encodes $name byte-exactly', (v) => {
    const bytes = encodeClientFrame({ appId: 0x07, cmd: v.cmd, uuid: UUID, mask: v.mask });
    expect(bytes.toString('hex')).toBe(hex(v.hex).toString('hex'));
    expect(bytes.length === 21 || bytes.length === 29).toBe(true);
  });

  it.each(VECTORS)('decodes $name', (v) => {
    const f = decodeClientFrame(hex(v.hex));
    if (typeof f === 'string') throw new Error(`refused: ${f}`);
    expect(f.appId).toBe(0x07);
    expect(f.cmd).toBe(v.cmd);
    expect(f.mask).toBe(v.mask ?? 0n);
    expect(f.byteLength).toBe(v.mask === undefined ? 21 : 29);
    expect(f.uuidOffset).toBe(3);
    expect(uuidToHex(f.source, f.uuidOffset)).toBe(UUID_HEX);
  });

  it('heartbeat for uuidFromKey("100001"), appId 255', () => {
    const uuid = uuidFromKey('100001');
    const bytes = encodeClientFrame({ appId: 0xff, cmd: ClientCmd.Heartbeat, uuid });
    expect(bytes.toString('hex')).toBe('01ff00e2a6a1ace352668000aed191a817d1430000');
  });

  it('encodes appId modulo 256 and a missing 0x11 mask as zero', () => {
    expect(encodeClientFrame({ appId: 0x107, cmd: 0x00, uuid: UUID }).toString('hex')).toBe(hex(`010700${UUID_HEX}0000`).toString('hex'));
    expect(encodeClientFrame({ appId: 1, cmd: 0x11, uuid: UUID }).toString('hex')).toBe(
      hex(`010111${UUID_HEX}0008 0000000000000000`).toString('hex'),
    );
  });

  it('ignores a mask on commands that carry no data', () => {
    expect(encodeClientFrame({ appId: 1, cmd: 0x10, uuid: UUID, mask: 5n }).toString('hex')).toBe(
      hex(`010110${UUID_HEX}0000`).toString('hex'),
    );
  });

  it('refuses to encode a bad uuid or an unknown command', () => {
    expect(() => encodeClientFrame({ appId: 1, cmd: 0x00, uuid: new Uint8Array(15) })).toThrow(RangeError);
    expect(() => encodeClientFrame({ appId: 1, cmd: 0x01 as ClientCmd, uuid: UUID })).toThrow(RangeError);
  });

  it('decodes a frame given as a plain Uint8Array view at a non-zero byteOffset', () => {
    const backing = new Uint8Array(64).fill(0xaa);
    backing.set(hex(`01 2a 11 ${UUID_HEX} 0008 8000000000000001`), 7);
    const view = backing.subarray(7, 7 + 29);
    const f = decodeClientFrame(view);
    if (typeof f === 'string') throw new Error(f);
    expect(f.appId).toBe(0x2a);
    expect(f.mask).toBe(0x8000000000000001n);
    expect(uuidToHex(f.source, f.uuidOffset)).toBe(UUID_HEX);
  });

  it('clientDataLength follows the section 3 table', () => {
    expect(clientDataLength(0x00)).toBe(0);
    expect(clientDataLength(0x10)).toBe(0);
    expect(clientDataLength(0x11)).toBe(8);
    expect(clientDataLength(0x20)).toBe(0);
    expect(clientDataLength(0xff)).toBe(0);
    for (let c = 0; c < 256; c++) {
      if (![0x00, 0x10, 0x11, 0x20, 0xff].includes(c)) expect(clientDataLength(c)).toBe(-1);
    }
  });

  it('readMask/writeMask are big-endian u64 and wrap modulo 2^64', () => {
    const b = new Uint8Array(10);
    writeMask(b, 1, 0x8000000000000001n);
    expect(Buffer.from(b).toString('hex')).toBe('00800000000000000100');
    expect(readMask(b, 1)).toBe(0x8000000000000001n);
    writeMask(b, 0, -1n);
    expect(readMask(b, 0)).toBe(0xffffffffffffffffn);
    writeMask(b, 0, (1n << 64n) + 3n);
    expect(readMask(b, 0)).toBe(3n);
  });
});

/** A heartbeat with one byte patched. */
function patched(base: string, at: number, ...bytes: number[]): Buffer {
  const b = hex(base);
  bytes.forEach((v, k) => (b[at + k] = v));
  return b;
}
const HB = `01 07 00 ${UUID_HEX} 0000`;
const ACK11 = `01 07 11 ${UUID_HEX} 0008 8000000000000001`;

describe('decodeClientFrame refusals', () => {
  const cases: [string, Uint8Array, ClientFrameError][] = [
    ['empty datagram', new Uint8Array(0), 'too-short'],
    ['1 byte', hex('01'), 'too-short'],
    ['20 bytes (header minus one)', hex(HB).subarray(0, 20), 'too-short'],
    ['20 bytes of garbage (length checked first)', Buffer.alloc(20, 0xff), 'too-short'],
    ['version 0', patched(HB, 0, 0x00), 'bad-version'],
    ['version 2', patched(HB, 0, 0x02), 'bad-version'],
    ['version 0xff', patched(HB, 0, 0xff), 'bad-version'],
    ['bad version wins over unknown cmd', patched(HB, 0, 0x02, 0x07, 0x42), 'bad-version'],
    ['cmd 0x01', patched(HB, 2, 0x01), 'unknown-cmd'],
    ['cmd 0x12', patched(HB, 2, 0x12), 'unknown-cmd'],
    ['cmd 0x21', patched(HB, 2, 0x21), 'unknown-cmd'],
    ['cmd 0xfe', patched(HB, 2, 0xfe), 'unknown-cmd'],
    ['unknown cmd wins over a bad dataLen', patched(HB, 2, 0x30, ...new Array(16).fill(0), 0x12, 0x34), 'unknown-cmd'],
    ['heartbeat with dataLen 8 (and 8 data bytes)', Buffer.concat([patched(HB, 20, 8), Buffer.alloc(8)]), 'bad-data-length'],
    ['heartbeat with dataLen 1', Buffer.concat([patched(HB, 20, 1), Buffer.alloc(1)]), 'bad-data-length'],
    ['0x10 with dataLen 8', Buffer.concat([patched(HB, 2, 0x10, ...UUID, 0, 8), Buffer.alloc(8)]), 'bad-data-length'],
    ['0x20 with dataLen 8', Buffer.concat([patched(HB, 2, 0x20, ...UUID, 0, 8), Buffer.alloc(8)]), 'bad-data-length'],
    ['0xff with dataLen 8', Buffer.concat([patched(HB, 2, 0xff, ...UUID, 0, 8), Buffer.alloc(8)]), 'bad-data-length'],
    ['0x11 with dataLen 0', patched(ACK11, 20, 0).subarray(0, 21), 'bad-data-length'],
    ['0x11 with dataLen 7', patched(ACK11, 20, 7).subarray(0, 28), 'bad-data-length'],
    ['0x11 with dataLen 9', Buffer.concat([patched(ACK11, 20, 9), Buffer.alloc(1)]), 'bad-data-length'],
    ['0x11 with dataLen 0x0108 (high byte)', patched(ACK11, 19, 0x01, 0x08), 'bad-data-length'],
    ['heartbeat with dataLen 0xffff', patched(HB, 19, 0xff, 0xff), 'bad-data-length'],
    ['heartbeat with a trailing byte', Buffer.concat([hex(HB), hex('00')]), 'bad-length'],
    ['heartbeat padded to 29 bytes', Buffer.concat([hex(HB), Buffer.alloc(8)]), 'bad-length'],
    ['0x11 truncated to 28 bytes', hex(ACK11).subarray(0, 28), 'bad-length'],
    ['0x11 header only (21 bytes)', hex(ACK11).subarray(0, 21), 'bad-length'],
    ['0x11 with a trailing byte', Buffer.concat([hex(ACK11), hex('ff')]), 'bad-length'],
  ];

  it.each(cases)('%s -> %s', (_label, bytes, reason) => {
    expect(decodeClientFrame(bytes)).toBe(reason);
    const into = createClientFrame();
    expect(decodeClientFrame(bytes, into)).toBe(reason);
  });

  it('covers every ClientFrameError reason', () => {
    const seen = new Set(cases.map((c) => c[2]));
    expect([...seen].sort()).toEqual([...CLIENT_FRAME_ERRORS].sort());
  });

  it('accepts exactly the 5 valid commands with every other header byte fixed', () => {
    const accepted: number[] = [];
    for (let cmd = 0; cmd < 256; cmd++) {
      const len = cmd === 0x11 ? 8 : 0;
      const b = Buffer.concat([patched(HB, 2, cmd, ...UUID, 0, len), Buffer.alloc(len)]);
      if (typeof decodeClientFrame(b) !== 'string') accepted.push(cmd);
    }
    expect(accepted).toEqual([0x00, 0x10, 0x11, 0x20, 0xff]);
  });

  it('only version 1 is accepted', () => {
    for (let v = 0; v < 256; v++) {
      const r = decodeClientFrame(patched(HB, 0, v));
      expect(r === 'bad-version').toBe(v !== 1);
    }
  });
});

describe('decodeClientFrame with `into`', () => {
  it('returns the very object passed in and overwrites every field', () => {
    const into = createClientFrame();
    const a = decodeClientFrame(hex(ACK11), into);
    expect(a).toBe(into);
    expect(into.mask).toBe(0x8000000000000001n);
    expect(into.byteLength).toBe(29);

    const hb = hex(`01 09 00 ${'ab'.repeat(16)} 0000`);
    const b = decodeClientFrame(hb, into);
    expect(b).toBe(into);
    expect(into).toEqual<ClientFrame>({ appId: 9, cmd: 0x00, source: hb, uuidOffset: 3, mask: 0n, byteLength: 21 });
  });

  it('creates a fresh object when no `into` is given', () => {
    const a = decodeClientFrame(hex(HB));
    const b = decodeClientFrame(hex(HB));
    expect(typeof a).toBe('object');
    expect(a).not.toBe(b);
  });

  it('the uuid is not copied: it is read in place from the datagram', () => {
    const dg = hex(HB);
    const f = decodeClientFrame(dg, createClientFrame()) as ClientFrame;
    expect(f.source).toBe(dg);
    dg[3] = 0xde;
    expect(uuidToHex(f.source, f.uuidOffset).slice(0, 2)).toBe('de');
  });

  it('never throws, and a refusal leaves `into` usable', () => {
    const next = rng(1234);
    const into = createClientFrame();
    const valid = [hex(HB), hex(ACK11)];
    for (let n = 0; n < 20_000; n++) {
      const len = Math.floor(next() * 40);
      const b = Buffer.alloc(len);
      for (let i = 0; i < len; i++) b[i] = Math.floor(next() * 256);
      // Bias towards near-valid headers so the later checks are reached too.
      if (len >= 3 && next() < 0.7) {
        b[0] = 1;
        b[2] = [0x00, 0x10, 0x11, 0x20, 0xff, 0x42][Math.floor(next() * 6)]!;
        if (len >= CLIENT_HEADER_LENGTH && next() < 0.7) {
          b[19] = 0;
          b[20] = next() < 0.5 ? 0 : 8;
        }
      }
      const r = decodeClientFrame(b, into);
      if (typeof r !== 'string') {
        expect(r).toBe(into);
        expect(r.byteLength).toBe(len);
      }
    }
    // And it still decodes a good frame afterwards.
    expect(decodeClientFrame(valid[1]!, into)).toBe(into);
    expect(into.mask).toBe(0x8000000000000001n);
  });
});
