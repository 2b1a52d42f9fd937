import { describe, expect, it } from 'vitest';
import { encodeLogValue, LogValueBuilder, readLogValue } from '../../../lib/store/lmdb-log.codec.js';
import { decodeRecord, type DeviceRecord } from '../../../lib/store/lmdb-record.codec.js';

function key(i: number): Buffer {
  const k = Buffer.alloc(16);
  k.writeUInt32BE(i, 12);
  return k;
}

function record(i: number): DeviceRecord | null {
  if (i % 7 === 3) return null;
  const messages = Array.from({ length: i % 3 }, (_, m) => ({ version: i * 10 + m + 1, expiresAt: m ? 1_700_000_000_000 + m : 0, content: Buffer.alloc(1 + ((i * 37 + m) % 300), i & 0xff) }));
  return { notice: i % 2 ? i : 0, category: BigInt(i) << 40n, categoryVersion: i % 5 ? i + 1 : 0, messages, touched: 1_700_000_000_000 + i };
}

describe('LogValueBuilder', () => {
  it('holds every state added, in order, whatever its starting size (it grows), removed devices included', () => {
    const items = Array.from({ length: 200 }, (_, i) => ({ key: key(i), rec: record(i) }));
    const exact = 1 + items.reduce((n, it) => n + 20 + (it.rec ? 28 + it.rec.messages.reduce((m, x) => m + 14 + x.content.length, 0) : 0), 0);
    const values: Buffer[] = [];
    for (const hint of [0, 100, exact, 1 << 20]) {
      const b = new LogValueBuilder(hint);
      for (const it of items) b.add(it.key, it.rec);
      expect(b.count).toBe(items.length);
      const value = b.finish();
      expect(value.length).toBe(exact);
      const back: { key: Buffer; rec: DeviceRecord | null }[] = [];
      readLogValue(value, (k, r) => back.push({ key: Buffer.from(k), rec: r ? decodeRecord(r) : null }));
      expect(back).toEqual(items);
      values.push(value);
    }
    for (const v of values) expect(v.equals(values[0]!)).toBe(true);
    expect(encodeLogValue(items).equals(values[0]!)).toBe(true);
  });

  it('an empty builder is a valid log value with no device; a later item for a key follows the earlier one', () => {
    const empty = new LogValueBuilder(0).finish();
    const none: unknown[] = [];
    readLogValue(empty, (k) => none.push(k));
    expect(none).toEqual([]);

    const b = new LogValueBuilder(0);
    b.add(key(1), record(1));
    b.add(key(1), record(2));
    b.add(key(1), null);
    const seen: [string, DeviceRecord | null][] = [];
    readLogValue(b.finish(), (k, r) => seen.push([Buffer.from(k).toString('hex'), r ? decodeRecord(r) : null]));
    expect(seen.map(([k]) => k)).toEqual([key(1).toString('hex'), key(1).toString('hex'), key(1).toString('hex')]);
    expect(seen[1]![1]).toEqual(record(2));
    expect(seen[2]![1]).toBeNull();
  });
});
