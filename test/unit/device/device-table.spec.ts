import { randomBytes } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { DeviceFlag, DeviceTable, hashUuid } from '../../../lib/device/device-table.js';

const NOW = 1_700_000_000_000;

/** `n` distinct random 16-byte uuids, packed into one buffer (uuid i at offset 16 * i). */
function randomUuids(n: number): Buffer {
  const buf = randomBytes(16 * n);
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    let hex = buf.toString('hex', 16 * i, 16 * i + 16);
    while (seen.has(hex)) {
      randomBytes(16).copy(buf, 16 * i);
      hex = buf.toString('hex', 16 * i, 16 * i + 16);
    }
    seen.add(hex);
  }
  return buf;
}

/** Random uuids whose home slot in an index of `slots` entries is `home` (hashUuid is seeded per process, so search). */
function uuidWithHome(home: number, slots: number, avoid: Set<string>): Buffer {
  for (;;) {
    const u = randomBytes(16);
    if ((hashUuid(u, 0) & (slots - 1)) === home && !avoid.has(u.toString('hex'))) {
      avoid.add(u.toString('hex'));
      return u;
    }
  }
}

describe('DeviceTable', () => {
  it('inserts, finds and removes a record, reading the uuid at an offset', () => {
    const t = new DeviceTable(100);
    const frame = Buffer.alloc(40, 0xee);
    const uuid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    uuid.copy(frame, 3);

    expect(t.find(frame, 3)).toBe(-1);
    const id = t.insert(frame, 3, NOW);
    expect(id).toBe(0);
    expect(t.size).toBe(1);
    expect(t.idBound).toBe(1);
    expect(t.isUsed(id)).toBe(true);
    expect(t.lastSeen[id]).toBe(NOW);
    expect(t.find(uuid, 0)).toBe(id);
    expect(t.find(frame, 3)).toBe(id);
    expect(t.uuidHex(id)).toBe('00112233445566778899aabbccddeeff');
    expect(t.uuidBytes(id).equals(uuid)).toBe(true);
    // The key is copied: reusing the frame buffer must not change the record.
    frame.fill(0);
    expect(t.uuidHex(id)).toBe('00112233445566778899aabbccddeeff');
    expect(t.find(frame, 3)).toBe(-1);
    // A one-byte difference anywhere is a different key.
    for (let i = 0; i < 16; i++) {
      const other = Buffer.from(uuid);
      other[i]! ^= 0x01;
      expect(t.find(other, 0)).toBe(-1);
    }

    const gen = t.gen[id];
    t.remove(id);
    expect(t.size).toBe(0);
    expect(t.isUsed(id)).toBe(false);
    // Freeing bumps the generation: a reused id (even for the same uuid) is a new record.
    expect(t.gen[id]).toBe(gen! + 1);
    expect(t.insert(uuid, 0, NOW)).toBe(id);
    expect(t.gen[id]).toBe(gen! + 1);
    t.remove(id);
    expect(t.gen[id]).toBe(gen! + 2);
    expect(t.find(uuid, 0)).toBe(-1);
    // Removing twice is harmless.
    t.remove(id);
    expect(t.size).toBe(0);
  });

  it('clears every column of a reused id on insert', () => {
    const t = new DeviceTable(10);
    const a = randomBytes(16);
    const id = t.insert(a, 0, NOW);
    t.flags[id] = DeviceFlag.Online | DeviceFlag.PendingMessage;
    t.credit[id] = 999;
    t.port[id] = 1234;
    t.ipv4[id] = 0x7f000001;
    t.appId[id] = 7;
    t.txMessageVersion[id] = 42;
    t.txMessageCount[id] = 3;
    t.txMessageOlder[id] = 2;
    t.txNoticeVersion[id] = 43;
    t.txNoticeCount[id] = 4;
    t.txNoticeOlder[id] = 1;
    t.remove(id);
    const b = randomBytes(16);
    const id2 = t.insert(b, 0, NOW + 1);
    expect(id2).toBe(id);
    expect(t.uuidHex(id2)).toBe(b.toString('hex'));
    expect([t.flags[id2], t.credit[id2], t.port[id2], t.ipv4[id2], t.appId[id2]]).toEqual([0, 0, 0, 0, 0]);
    expect([t.txMessageVersion[id2], t.txMessageCount[id2], t.txMessageOlder[id2]]).toEqual([0, 0, 0]);
    expect([t.txNoticeVersion[id2], t.txNoticeCount[id2], t.txNoticeOlder[id2]]).toEqual([0, 0, 0]);
    expect(t.lastSeen[id2]).toBe(NOW + 1);
    expect(t.find(a, 0)).toBe(-1);
    expect(t.find(b, 0)).toBe(id2);
  });

  it('keeps ids stable while columns and index grow (50k records), then removes half and reuses their ids', () => {
    const n = 50_000;
    const t = new DeviceTable(1_000_000);
    const initialBytes = t.byteSize;
    const uuids = randomUuids(n);
    const ids = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      ids[i] = t.insert(uuids, 16 * i, NOW + i);
      // Every earlier record must still be findable under its original id after
      // each doubling (sample a few: a full check per insert would be O(n^2)).
      if ((i & (i + 1)) === 0) {
        for (let j = 0; j <= i; j += Math.max(1, i >> 6)) expect(t.find(uuids, 16 * j)).toBe(ids[j]);
      }
    }
    expect(t.size).toBe(n);
    expect(t.idBound).toBe(n);
    // Fresh ids are dense 0..n-1, assigned in insert order.
    expect(Array.from(ids)).toEqual(Array.from({ length: n }, (_, i) => i));
    // Columns and index grew well beyond the initial 1024 records.
    expect(t.byteSize).toBeGreaterThan(initialBytes * 32);
    for (let i = 0; i < n; i++) {
      if (t.find(uuids, 16 * i) !== ids[i]) throw new Error(`uuid ${i} lost after growth`);
      if (t.uuidHex(ids[i]!) !== uuids.toString('hex', 16 * i, 16 * i + 16)) throw new Error(`key of id ${ids[i]} corrupted`);
      if (t.lastSeen[ids[i]!] !== NOW + i) throw new Error(`lastSeen of id ${ids[i]} corrupted`);
    }

    // Remove a random half, in random order: backward-shift deletion must keep
    // every remaining probe chain intact.
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const removed = new Set(order.slice(0, n / 2));
    for (const i of order.slice(0, n / 2)) t.remove(ids[i]!);
    expect(t.size).toBe(n / 2);
    let lost = 0;
    let ghosts = 0;
    for (let i = 0; i < n; i++) {
      const found = t.find(uuids, 16 * i);
      if (removed.has(i)) {
        if (found !== -1) ghosts++;
      } else if (found !== ids[i]) lost++;
    }
    expect({ lost, ghosts }).toEqual({ lost: 0, ghosts: 0 });

    // New records take the freed ids: the id space does not grow.
    const freedIds = new Set([...removed].map((i) => ids[i]!));
    const fresh = randomUuids(n / 2);
    const freshIds = new Set<number>();
    for (let i = 0; i < n / 2; i++) {
      const id = t.insert(fresh, 16 * i, NOW);
      expect(freedIds.has(id)).toBe(true);
      freshIds.add(id);
    }
    expect(freshIds.size).toBe(n / 2);
    expect(t.idBound).toBe(n);
    expect(t.size).toBe(n);
    for (let i = 0; i < n / 2; i++) expect(t.find(fresh, 16 * i)).toBeGreaterThanOrEqual(0);
    for (let i = 0; i < n; i++) if (!removed.has(i) && t.find(uuids, 16 * i) !== ids[i]) throw new Error(`uuid ${i} lost after reuse`);
  });

  it('backward-shift deletion repairs a probe chain that wraps around the end of the index', () => {
    // maxRecords 4 -> index of 8 slots that never grows. Chain: a(home 7) at 7,
    // b(home 7) wraps to 0, c(home 0) at 1, d(home 1) at 2. Removing a must
    // shift b, c and d back one slot each, across the wrap.
    const slots = 8;
    const t = new DeviceTable(4);
    const used = new Set<string>();
    const a = uuidWithHome(7, slots, used);
    const b = uuidWithHome(7, slots, used);
    const c = uuidWithHome(0, slots, used);
    const d = uuidWithHome(1, slots, used);
    const ia = t.insert(a, 0, NOW);
    const ib = t.insert(b, 0, NOW);
    const ic = t.insert(c, 0, NOW);
    const id = t.insert(d, 0, NOW);
    expect([ia, ib, ic, id]).toEqual([0, 1, 2, 3]);
    expect(t.insert(randomBytes(16), 0, NOW)).toBe(-1);

    t.remove(ia);
    expect([t.find(a, 0), t.find(b, 0), t.find(c, 0), t.find(d, 0)]).toEqual([-1, ib, ic, id]);
    // Removing from the middle of the shifted chain keeps the rest reachable.
    t.remove(ic);
    expect([t.find(b, 0), t.find(c, 0), t.find(d, 0)]).toEqual([ib, -1, id]);
    // A key whose home is inside the chain but which is absent ends at an empty slot.
    expect(t.find(uuidWithHome(0, slots, used), 0)).toBe(-1);
    // Reinsert both: ids come back from the free list (last freed first).
    const e = uuidWithHome(7, slots, used);
    const f = uuidWithHome(0, slots, used);
    expect(t.insert(e, 0, NOW)).toBe(ic);
    expect(t.insert(f, 0, NOW)).toBe(ia);
    expect([t.find(b, 0), t.find(d, 0), t.find(e, 0), t.find(f, 0)]).toEqual([ib, id, ic, ia]);
    expect(t.size).toBe(4);
  });

  it('refuses inserts beyond maxRecords with -1 and accepts again after a removal', () => {
    const t = new DeviceTable(3);
    const ids = [0, 1, 2].map(() => t.insert(randomBytes(16), 0, NOW));
    expect(ids).toEqual([0, 1, 2]);
    const extra = randomBytes(16);
    expect(t.insert(extra, 0, NOW)).toBe(-1);
    expect(t.size).toBe(3);
    expect(t.find(extra, 0)).toBe(-1);
    t.remove(1);
    expect(t.insert(extra, 0, NOW)).toBe(1);
    expect(t.find(extra, 0)).toBe(1);
    expect(t.insert(randomBytes(16), 0, NOW)).toBe(-1);
    expect(() => new DeviceTable(0)).toThrow(RangeError);
    expect(() => new DeviceTable(1.5)).toThrow(RangeError);
  });

  it('caps column growth at maxRecords (a 1500-record table does not double to 2048)', () => {
    const small = new DeviceTable(1500);
    const big = new DeviceTable(1_000_000);
    const uuids = randomUuids(1500);
    for (let i = 0; i < 1500; i++) {
      expect(small.insert(uuids, 16 * i, NOW)).toBe(i);
      big.insert(uuids, 16 * i, NOW);
    }
    expect(small.insert(randomBytes(16), 0, NOW)).toBe(-1);
    expect(small.byteSize).toBeLessThan(big.byteSize);
  });

  it('costs under 150 bytes per record at 100k records', () => {
    const n = 100_000;
    const t = new DeviceTable(10_000_000);
    const uuids = randomUuids(n);
    for (let i = 0; i < n; i++) t.insert(uuids, 16 * i, NOW);
    expect(t.size).toBe(n);
    const perRecord = t.byteSize / t.size;
    // The columns alone are ~60 B/record; the figure must be real, not zero.
    expect(perRecord).toBeGreaterThan(50);
    expect(perRecord).toBeLessThan(150);
  });

  describe('hashUuid', () => {
    it('mixes every byte: uuids differing only in bytes 4..11 (or any 4-byte word) do not collide', () => {
      for (const start of [0, 4, 8, 12, 2, 6]) {
        const base = randomBytes(16);
        const hashes = new Set<number>();
        const low16 = new Set<number>();
        for (let i = 0; i < 10_000; i++) {
          const u = Buffer.from(base);
          u.writeUInt32BE(i * 2654435761 >>> 0, start);
          const h = hashUuid(u, 0);
          hashes.add(h);
          low16.add(h & 0xffff);
        }
        // 10k keys into 2^32 values: a handful of collisions at most.
        expect(hashes.size, `word at byte ${start}`).toBeGreaterThanOrEqual(9_990);
        // The index uses the low bits: they must spread too (expected ~9265 of 65536).
        expect(low16.size, `low bits, word at byte ${start}`).toBeGreaterThan(9_000);
      }
      // The 8 middle bytes alone, varied as two independent words.
      const base = randomBytes(16);
      const hashes = new Set<number>();
      for (let i = 0; i < 100; i++) {
        for (let j = 0; j < 100; j++) {
          const u = Buffer.from(base);
          u.writeUInt32BE(i, 4);
          u.writeUInt32BE(j, 8);
          hashes.add(hashUuid(u, 0));
        }
      }
      expect(hashes.size).toBeGreaterThanOrEqual(9_990);
    });

    it('reads the 16 bytes at the given offset only', () => {
      const u = randomBytes(16);
      const framed = Buffer.concat([randomBytes(3), u, randomBytes(10)]);
      expect(hashUuid(framed, 3)).toBe(hashUuid(u, 0));
      const h = hashUuid(u, 0);
      expect(h).toBe(h >>> 0);
    });

    it('is seeded per process: a fresh module instance hashes the same uuids differently', async () => {
      const uuids = Array.from({ length: 8 }, () => randomBytes(16));
      const before = uuids.map((u) => hashUuid(u, 0));
      vi.resetModules();
      const fresh = (await import('../../../lib/device/device-table.js')) as typeof import('../../../lib/device/device-table.js');
      expect(fresh.hashUuid).not.toBe(hashUuid);
      const after = uuids.map((u) => fresh.hashUuid(u, 0));
      // Same seed twice has probability 2^-32; then all eight would match.
      expect(after.filter((h, i) => h !== before[i]).length).toBeGreaterThanOrEqual(7);
      // Deterministic within one instance.
      expect(uuids.map((u) => fresh.hashUuid(u, 0))).toEqual(after);
    });
  });
});
