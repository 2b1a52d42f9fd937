import { isIPv4 } from 'node:net';
import { describe, expect, it } from 'vitest';
import { Ipv4TextCache, formatIpv4, parseIpv4 } from '../../../lib/device/ipv4.util.js';

describe('parseIpv4 / formatIpv4', () => {
  it.each([
    ['0.0.0.0', 0],
    ['127.0.0.1', 0x7f000001],
    ['1.2.3.4', 0x01020304],
    ['10.0.255.1', 0x0a00ff01],
    ['192.168.1.254', 0xc0a801fe],
    ['255.255.255.255', 0xffffffff],
  ])('parses %s', (text, value) => {
    expect(parseIpv4(text)).toBe(value);
    expect(formatIpv4(value)).toBe(text);
  });

  it.each([
    [''],
    ['1.2.3'],
    ['1.2.3.'],
    ['.1.2.3'],
    ['1..2.3'],
    ['1.2.3.4.5'],
    ['1.2.3.4.'],
    ['256.1.1.1'],
    ['1.2.3.256'],
    ['999.1.1.1'],
    ['1000.1.1.1'],
    ['0001.2.3.4'],
    ['::1'],
    ['::ffff:127.0.0.1'],
    ['fe80::1%eth0'],
    ['1.2.3.4 '],
    [' 1.2.3.4'],
    ['1.2.3.-4'],
    ['1.2.3.4a'],
    ['a.b.c.d'],
    ['1,2,3,4'],
    ['1.2.3.4/24'],
    ['1.2.3.4:80'],
    ['localhost'],
  ])('rejects %j with -1', (text) => {
    expect(parseIpv4(text)).toBe(-1);
  });

  it('accepts leading zeros as decimal (never produced by Node; harmless, same address)', () => {
    // Node's rinfo.address is always canonical; the parser does not insist on it.
    expect(parseIpv4('01.2.3.4')).toBe(0x01020304);
    expect(parseIpv4('127.000.000.001')).toBe(0x7f000001);
  });

  it('round-trips random addresses and agrees with node:net on what is IPv4', () => {
    for (let i = 0; i < 5000; i++) {
      const v = Math.floor(Math.random() * 0x100000000);
      const text = formatIpv4(v);
      expect(isIPv4(text)).toBe(true);
      expect(parseIpv4(text)).toBe(v);
    }
  });

  it('formats the Uint32 column values it is given', () => {
    const col = new Uint32Array(1);
    col[0] = parseIpv4('200.100.50.25');
    expect(formatIpv4(col[0]!)).toBe('200.100.50.25');
  });

  it('Ipv4TextCache: always the right text, whatever collides or repeats', () => {
    const cache = new Ipv4TextCache();
    const values: number[] = [];
    for (let i = 0; i < 3000; i++) values.push(Math.floor(Math.random() * 0x100000000));
    // Addresses that share a slot (same xor of their bytes) evict each other.
    values.push(0x01020304, 0x04030201, 0x02010403, 0, 0xffffffff);
    for (let pass = 0; pass < 3; pass++) for (const v of values) expect(cache.format(v)).toBe(formatIpv4(v));
    const loopback = parseIpv4('127.0.0.1');
    for (let i = 0; i < 3; i++) expect(cache.format(loopback)).toBe('127.0.0.1');
  });
});
