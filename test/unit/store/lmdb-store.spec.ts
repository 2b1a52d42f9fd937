import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { PushConfigError } from '../../../lib/errors/push-config.error.js';
import { InvalidUuidError } from '../../../lib/protocol/uuid.util.js';
import { OfflineStoreOpenError, OfflineStoreUnavailableError } from '../../../lib/store/lmdb-errors.js';
import { LmdbOfflineStore, type LmdbOfflineStoreOptions } from '../../../lib/store/lmdb-offline-store.js';
import type { StoreDrop, WriteResult } from '../../../lib/store/offline-store.js';
import { describeOfflineStoreContract, uuid } from './offline-store.contract.js';

const base = mkdtempSync(join(tmpdir(), 'nest-push-lmdb-'));
let dirs = 0;
const newDir = () => join(base, `db${dirs++}`);
afterAll(() => rmSync(base, { recursive: true, force: true }));

const msg = (s: string) => ({ kind: 'message' as const, content: Buffer.from(s) });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeOfflineStoreContract('LmdbOfflineStore (sync)', (limits) => new LmdbOfflineStore({ path: newDir(), ...limits }));
describeOfflineStoreContract('LmdbOfflineStore (async)', (limits) => new LmdbOfflineStore({ path: newDir(), durability: 'async', ...limits }));
describeOfflineStoreContract('LmdbOfflineStore (no cache: every read from LMDB)', (limits) => new LmdbOfflineStore({ path: newDir(), cacheSize: 0, ...limits }));
describeOfflineStoreContract(
  'LmdbOfflineStore (queue of 1)',
  (limits) => new LmdbOfflineStore({ path: newDir(), messageRetention: { queue: 1, ttlMs: 3_600_000 }, ...limits }),
);

describe('LmdbOfflineStore', () => {
  const stores: LmdbOfflineStore[] = [];
  async function open(options: LmdbOfflineStoreOptions = {}): Promise<LmdbOfflineStore> {
    const s = new LmdbOfflineStore({ path: newDir(), ...options });
    await s.open();
    stores.push(s);
    return s;
  }
  async function reopen(s: LmdbOfflineStore, options: LmdbOfflineStoreOptions = {}): Promise<LmdbOfflineStore> {
    await s.close();
    const again = new LmdbOfflineStore({ path: s.path, ...options });
    await again.open();
    stores.push(again);
    return again;
  }
  function dropsOf(s: LmdbOfflineStore): StoreDrop[] {
    const seen: StoreDrop[] = [];
    s.drops.subscribe((d) => seen.push(d));
    return seen;
  }
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
  });

  describe('restart recovery', () => {
    it('reloads pending state, versions and stats; new versions never equal stored ones', async () => {
      const s = await open();
      const [a, b] = [uuid(), uuid()];
      const written: WriteResult[] = [];
      written.push(await s.write(a, { kind: 'notice' }));
      written.push(await s.write(a, { kind: 'category', mask: (1n << 63n) | 5n }));
      written.push(await s.write(a, msg('for a')));
      written.push(await s.write(b, msg('first b')));
      written.push(await s.write(b, msg('second b')));
      await s.ackCategory(a, 1n);
      const before = { a: await s.read(a), b: await s.read(b), stats: s.stats() };
      const again = await reopen(s);
      expect(await again.read(a)).toEqual(before.a);
      expect(await again.read(b)).toEqual(before.b);
      expect(again.stats()).toEqual(before.stats);
      expect(before.stats).toMatchObject({ devices: 2, bytes: 5 + 8 });
      // Acks by the stored versions still work after the restart.
      expect(await again.ackMessage(b, written[3]!.version)).toEqual({ cleared: false, remaining: true });
      expect(await again.ackMessage(b, written[4]!.version)).toEqual({ cleared: true, remaining: false });
      const stored = new Set(written.map((w) => w.version));
      const last = Math.max(...stored);
      for (let i = 0; i < 20; i++) {
        const r = await again.write(uuid(), { kind: 'notice' });
        expect(stored.has(r.version)).toBe(false);
        // The counter resumes after the last version stored (u32, so unless it wrapped).
        if (last < 0xffffff00) expect(r.version).toBeGreaterThan(last);
      }
    });

    it('keeps everything a close() waited for, even writes never awaited', async () => {
      const s = await open({ durability: 'async' });
      const ids = Array.from({ length: 200 }, uuid);
      const pending = ids.map((u, i) => s.write(u, msg(`m${i}`)));
      await s.close();
      await Promise.all(pending);
      const again = await reopen(s);
      expect(again.stats()).toMatchObject({ devices: 200 });
      for (const [i, u] of ids.entries()) expect((await again.read(u))?.message?.toString()).toBe(`m${i}`);
    });

    it('survives a switch between durability modes and retention modes', async () => {
      const s = await open({ messageRetention: { queue: 3, ttlMs: 60_000 } });
      const u = uuid();
      const v1 = await s.write(u, msg('q1'));
      await s.write(u, msg('q2'));
      const latest = await reopen(s, { durability: 'async' });
      expect((await latest.read(u))?.message?.toString()).toBe('q1');
      // Latest-only now: a push replaces what is queued (the head in `replaced`).
      const r = await latest.write(u, msg('latest'));
      expect(r.replaced).toBe(v1.version);
      expect((await latest.read(u))?.message?.toString()).toBe('latest');
      expect(latest.stats().bytes).toBe(6);
    });
  });

  describe('queue mode', () => {
    it('keeps up to N messages in order and shows one at a time; an ack of the head pops it', async () => {
      const s = await open({ messageRetention: { queue: 3, ttlMs: 60_000 } });
      const u = uuid();
      const m1 = await s.write(u, msg('m1'));
      const m2 = await s.write(u, msg('m2'));
      const m3 = await s.write(u, msg('m3'));
      expect([m1.head, m2.head, m3.head]).toEqual([true, false, false]);
      expect([m1.replaced, m2.replaced, m3.replaced]).toEqual([0, 0, 0]);
      expect(await s.read(u)).toMatchObject({ message: Buffer.from('m1'), messageVersion: m1.version });
      // Only the head can be acked.
      expect(await s.ackMessage(u, m2.version)).toEqual({ cleared: false, remaining: true });
      expect(await s.ackMessage(u, m1.version)).toEqual({ cleared: true, remaining: true });
      expect(await s.read(u)).toMatchObject({ message: Buffer.from('m2'), messageVersion: m2.version });
      expect(s.stats()).toMatchObject({ devices: 1, bytes: 4 });
      // Full (m2 m3 m4): m5 pushes the oldest out, reported as `replaced`.
      const m4 = await s.write(u, msg('m4'));
      expect(m4).toMatchObject({ head: false, replaced: 0 });
      const m5 = await s.write(u, msg('m5'));
      expect(m5).toMatchObject({ head: false, replaced: m2.version });
      expect(await s.read(u)).toMatchObject({ message: Buffer.from('m3'), messageVersion: m3.version });
      const order: string[] = [];
      for (;;) {
        const st = await s.read(u);
        if (!st) break;
        order.push(st.message!.toString());
        const r = await s.ackMessage(u, st.messageVersion);
        expect(r.cleared).toBe(true);
        expect(r.remaining).toBe(order.length < 3);
      }
      expect(order).toEqual(['m3', 'm4', 'm5']);
      expect(s.stats()).toMatchObject({ devices: 0, bytes: 0 });
    });

    it('a push into an empty queue is the head again; notices and categories are unaffected', async () => {
      const s = await open({ messageRetention: { queue: 2, ttlMs: 60_000 } });
      const u = uuid();
      await s.write(u, { kind: 'notice' });
      const a = await s.write(u, msg('a'));
      expect(a.head).toBe(true);
      await s.ackMessage(u, a.version);
      const b = await s.write(u, msg('b'));
      expect(b.head).toBe(true);
      expect((await s.read(u))?.notice).not.toBe(0);
    });

    it('restores the queue in order after a restart', async () => {
      const s = await open({ messageRetention: { queue: 10, ttlMs: 60_000 } });
      const u = uuid();
      for (let i = 0; i < 5; i++) await s.write(u, msg(`q${i}`));
      const again = await reopen(s, { messageRetention: { queue: 10, ttlMs: 60_000 } });
      const order: string[] = [];
      for (let st = await again.read(u); st; st = await again.read(u)) {
        order.push(st.message!.toString());
        await again.ackMessage(u, st.messageVersion);
      }
      expect(order).toEqual(['q0', 'q1', 'q2', 'q3', 'q4']);
    });

    it('drops messages whose TTL passed, lazily on read and write, reporting them as expired', async () => {
      const s = await open({ messageRetention: { queue: 5, ttlMs: 60 } });
      const seen = dropsOf(s);
      const [u, w] = [uuid(), uuid()];
      const a = await s.write(u, msg('a'));
      const b = await s.write(u, msg('b'));
      const c = await s.write(w, msg('c'));
      await sleep(90);
      const fresh = await s.write(u, msg('fresh'));
      // The expired ones are gone: the new message is the head again.
      expect(fresh.head).toBe(true);
      expect(await s.read(u)).toMatchObject({ message: Buffer.from('fresh') });
      expect(await s.read(w)).toBeNull();
      await s.write(uuid(), { kind: 'notice' }); // one more commit: drops are published after theirs
      expect(seen).toEqual(
        expect.arrayContaining([
          { uuid: u, kind: 'message', version: a.version, reason: 'expired' },
          { uuid: u, kind: 'message', version: b.version, reason: 'expired' },
          { uuid: w, kind: 'message', version: c.version, reason: 'expired' },
        ]),
      );
      expect(seen).toHaveLength(3);
      expect(s.stats()).toMatchObject({ devices: 2, bytes: 5 });
    });

    it('an ack of the head still clears it after its TTL passed (it was delivered)', async () => {
      const s = await open({ messageRetention: { queue: 5, ttlMs: 50 } });
      const seen = dropsOf(s);
      const u = uuid();
      const a = await s.write(u, msg('a'));
      const b = await s.write(u, msg('b'));
      await sleep(80);
      expect(await s.ackMessage(u, a.version)).toEqual({ cleared: true, remaining: false });
      await s.write(uuid(), { kind: 'notice' });
      expect(seen).toEqual([{ uuid: u, kind: 'message', version: b.version, reason: 'expired' }]);
    });

    it('the sweep expires queued messages of devices nobody reads', async () => {
      const s = await open({ messageRetention: { queue: 5, ttlMs: 40 }, sweepIntervalMs: 3_600_000 });
      const seen = dropsOf(s);
      const u = uuid();
      await s.write(u, { kind: 'notice' });
      const a = await s.write(u, msg('a'));
      expect(s.sweep()).toBe(0);
      await sleep(70);
      expect(s.sweep()).toBe(0); // the device keeps its notice
      await s.write(uuid(), { kind: 'notice' });
      expect(seen).toEqual([{ uuid: u, kind: 'message', version: a.version, reason: 'expired' }]);
      expect(await s.read(u)).toMatchObject({ message: null, messageVersion: 0 });
      expect(s.stats().bytes).toBe(0);
    });
  });

  describe('expiry sweep', () => {
    it('removes devices untouched for ttlMs, a bounded number of records per step', async () => {
      const ttlMs = 10_000;
      const s = await open({ ttlMs, sweepIntervalMs: 3_600_000 });
      const seen = dropsOf(s);
      const ids = Array.from({ length: 25 }, uuid);
      for (const u of ids) await s.write(u, msg('x'));
      const lastOld = Date.now();
      expect(s.sweep(lastOld, 10)).toBe(0); // nothing is old yet
      await sleep(30);
      // As seen ttlMs later: the 25 are old, devices written from now on are not.
      const later = lastOld + ttlMs + 5;
      const removed: number[] = [];
      for (let i = 0; i < 6; i++) {
        await s.write(uuid(), { kind: 'notice' }); // fresh devices are never swept
        removed.push(s.sweep(later, 10));
      }
      // 25 old records among fresh ones: at most 10 examined per step, so it takes several steps.
      expect(Math.max(...removed)).toBeLessThanOrEqual(10);
      expect(removed.filter((n) => n > 0).length).toBeGreaterThanOrEqual(3);
      expect(removed.reduce((x, y) => x + y, 0)).toBe(25);
      for (const u of ids) expect(await s.read(u)).toBeNull();
      expect(s.stats()).toMatchObject({ devices: 6, bytes: 0 });
      expect(seen.filter((d) => d.reason === 'expired')).toHaveLength(25);
    });

    it('reads checkpointed records it does not hold in memory from their bytes: due ones expire, others stay', async () => {
      // cacheSize 1: after the checkpoint the records live only in LMDB, so the sweep's stored-bytes path decides.
      const s = await open({ messageRetention: { queue: 3, ttlMs: 40 }, cacheSize: 1, sweepIntervalMs: 3_600_000 });
      const seen = dropsOf(s);
      const queued = Array.from({ length: 6 }, uuid);
      const versions = new Map<string, number>();
      for (const u of queued) versions.set(u, (await s.write(u, msg(`m-${u.slice(0, 4)}`))).version);
      const kept = uuid();
      await s.write(kept, { kind: 'notice' }); // no TTL: not due for ttlMs (days)
      await s.checkpoint();
      expect(s.sweep()).toBe(0); // nothing due yet
      await sleep(70);
      expect(s.sweep()).toBe(6);
      await s.write(uuid(), { kind: 'notice' }); // a commit, so the drops are published
      expect(seen.map((d) => [d.uuid, d.version, d.reason]).sort()).toEqual(queued.map((u) => [u, versions.get(u), 'expired']).sort());
      for (const u of queued) expect(await s.read(u)).toBeNull();
      expect((await s.read(kept))?.notice).toBeGreaterThan(0);
      expect(s.stats()).toMatchObject({ devices: 2, bytes: 0 });
    });

    it('runs on its own timer', async () => {
      const s = await open({ ttlMs: 30, sweepIntervalMs: 20 });
      const u = uuid();
      await s.write(u, msg('x'));
      await sleep(150);
      expect(await s.read(u)).toBeNull();
      expect(s.stats().devices).toBe(0);
    });
  });

  describe('startup errors', () => {
    it('a directory that cannot be created (below a regular file) fails with a clear error', async () => {
      const file = join(newDir() + '-file.txt');
      writeFileSync(file, 'not a directory');
      const s = new LmdbOfflineStore({ path: join(file, 'sub') });
      const err = (await s.open().catch((e: unknown) => e)) as OfflineStoreOpenError;
      expect(err).toBeInstanceOf(OfflineStoreOpenError);
      expect(err.reason).toBe('not-writable');
      expect(err.path).toBe(join(file, 'sub'));
      expect(err.message).toContain(join(file, 'sub'));
      expect(err.message).toMatch(/store\.path/);
      await expect(s.write(uuid(), { kind: 'notice' })).rejects.toBeInstanceOf(OfflineStoreUnavailableError);
    });

    it('a directory on a file system that refuses writes (even to root) fails with a clear error', async () => {
      const s = new LmdbOfflineStore({ path: '/proc/nest-push-store' });
      const err = (await s.open().catch((e: unknown) => e)) as OfflineStoreOpenError;
      expect(err).toBeInstanceOf(OfflineStoreOpenError);
      expect(err.reason).toBe('not-writable');
      expect(err.message).toContain('/proc/nest-push-store');
    });

    it('a data file full of garbage fails with a clear error (not a crash)', async () => {
      const dir = newDir();
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'data.mdb'), Buffer.alloc(64 * 1024, 0x5a));
      const err = (await new LmdbOfflineStore({ path: dir }).open().catch((e: unknown) => e)) as OfflineStoreOpenError;
      expect(err).toBeInstanceOf(OfflineStoreOpenError);
      expect(err.reason).toBe('corrupt');
      expect(err.message).toContain(dir);
      expect(err.message).toMatch(/data\.mdb/);
    });

    it('a truncated data file fails with a clear error (not a crash)', async () => {
      const s = await open();
      for (let i = 0; i < 3000; i++) void s.write(uuid(), msg('x'.repeat(100)));
      await s.close();
      const file = join(s.path, 'data.mdb');
      const pageSize = readFileSync(file).readUInt32LE(48);
      truncateSync(file, 2 * pageSize + 100);
      const err = (await new LmdbOfflineStore({ path: s.path }).open().catch((e: unknown) => e)) as OfflineStoreOpenError;
      expect(err).toBeInstanceOf(OfflineStoreOpenError);
      expect(err.reason).toBe('corrupt');
      expect(err.message).toMatch(/truncated/);
    });

    it('an empty data file (created, never written) opens as a new store', async () => {
      const dir = newDir();
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'data.mdb'), Buffer.alloc(0));
      const s = new LmdbOfflineStore({ path: dir });
      await s.open();
      stores.push(s);
      expect(s.stats().devices).toBe(0);
    });

    it('refuses a directory another store of this process has open', async () => {
      const s = await open();
      const err = (await new LmdbOfflineStore({ path: s.path }).open().catch((e: unknown) => e)) as OfflineStoreOpenError;
      expect(err).toBeInstanceOf(OfflineStoreOpenError);
      expect(err.reason).toBe('in-use');
      expect(err.message).toMatch(/store\.path/);
      await s.close();
      const again = new LmdbOfflineStore({ path: s.path });
      await again.open();
      stores.push(again);
    });

    it('refuses bad options by name', () => {
      expect(() => new LmdbOfflineStore({ durability: 'fast' as never })).toThrow(PushConfigError);
      expect(() => new LmdbOfflineStore({ durability: 'fast' as never })).toThrow(/store\.durability/);
      expect(() => new LmdbOfflineStore({ messageRetention: { queue: 0, ttlMs: 10 } })).toThrow(/store\.messageRetention\.queue/);
      expect(() => new LmdbOfflineStore({ messageRetention: { queue: 2 } as never })).toThrow(/store\.messageRetention\.ttlMs/);
      expect(() => new LmdbOfflineStore({ messageRetention: 'all' as never })).toThrow(/store\.messageRetention/);
      expect(() => new LmdbOfflineStore({ maxBytes: -1 })).toThrow(/store\.maxBytes/);
      expect(() => new LmdbOfflineStore({ path: '' })).toThrow(/store\.path/);
      expect(new LmdbOfflineStore().path).toBe(join(process.cwd(), '.nest-push'));
    });

    it('refuses a malformed uuid', async () => {
      const s = await open();
      await expect(s.write('not-a-uuid', { kind: 'notice' })).rejects.toBeInstanceOf(InvalidUuidError);
      await expect(s.read('zz'.repeat(16))).rejects.toBeInstanceOf(InvalidUuidError);
      // Upper-case hex is the same device.
      const u = uuid();
      await s.write(u.toUpperCase(), msg('x'));
      expect((await s.read(u))?.message?.toString()).toBe('x');
    });
  });

  describe('group commit', () => {
    it('64 concurrent writes share far fewer commits than writes', async () => {
      const s = await open();
      await s.write(uuid(), { kind: 'notice' });
      const before = s.commits;
      await Promise.all(Array.from({ length: 64 }, (_, i) => s.write(uuid(), msg(`m${i}`))));
      const commits = s.commits - before;
      expect(commits).toBeGreaterThanOrEqual(1);
      expect(commits).toBeLessThanOrEqual(4);
    });

    it('sequential writes commit one by one (the counter counts transactions)', async () => {
      const s = await open();
      const before = s.commits;
      for (let i = 0; i < 5; i++) await s.write(uuid(), { kind: 'notice' });
      expect(s.commits - before).toBeGreaterThanOrEqual(5);
    });
  });

  describe('record cache', () => {
    it('keeps at most cacheSize checkpointed records in memory; the rest is read from LMDB', async () => {
      const s = await open({ cacheSize: 10 });
      const ids = Array.from({ length: 100 }, uuid);
      await Promise.all(ids.map((u, i) => s.write(u, msg(`m${i}`))));
      const entries = (s as unknown as { entries: Map<string, unknown> }).entries;
      // Changed since the last checkpoint: in memory (the log holds them, not the device records).
      expect(entries.size).toBe(100);
      await s.checkpoint();
      expect(entries.size).toBeLessThanOrEqual(10);
      for (const [i, u] of ids.entries()) expect((await s.read(u))?.message?.toString()).toBe(`m${i}`);
      expect(entries.size).toBeLessThanOrEqual(10 + 1024);
    });
    it('records cached by reads alone are trimmed to cacheSize by the checkpoint timer, with no write', async () => {
      const first = await open({ cacheSize: 1000 });
      const ids = Array.from({ length: 40 }, uuid);
      await Promise.all(ids.map((u, i) => first.write(u, msg(`m${i}`))));
      const s = await reopen(first, { cacheSize: 5, checkpointIntervalMs: 20 });
      const entries = (s as unknown as { entries: Map<string, unknown> }).entries;
      for (const u of ids) await s.read(u);
      expect(entries.size).toBe(40);
      await sleep(80);
      expect(entries.size).toBeLessThanOrEqual(5);
      expect(s.checkpoints).toBe(0);
      for (const [i, u] of ids.entries()) expect((await s.read(u))?.message?.toString()).toBe(`m${i}`);
    });
  });

  describe('log and checkpoints', () => {
    type Internals = {
      devices: { put: (key: Buffer, value: Buffer) => Promise<boolean>; getBinary: (key: Buffer) => Buffer | undefined };
      log: { put: (key: number, value: Buffer) => Promise<boolean>; getKeys: (o: object) => Iterable<number> };
    };
    const internals = (s: LmdbOfflineStore) => s as unknown as Internals;

    it('a turn appends one log value, however many devices it changed; a checkpoint writes each device once and empties the log', async () => {
      const s = await open({ checkpointIntervalMs: 3_600_000 });
      const { devices, log } = internals(s);
      const put = devices.put.bind(devices);
      const logPut = log.put.bind(log);
      const puts: string[] = [];
      let logPuts = 0;
      devices.put = (key, value) => {
        puts.push(key.toString('hex'));
        return put(key, value);
      };
      log.put = (key, value) => {
        logPuts++;
        return logPut(key, value);
      };
      const u = uuid();
      const others = Array.from({ length: 20 }, uuid);
      const results = await Promise.all([...Array.from({ length: 50 }, (_, i) => s.write(u, msg(`v${i}`))), ...others.map((o) => s.write(o, { kind: 'notice' }))]);
      expect(logPuts).toBe(1);
      expect(puts).toEqual([]);
      expect(results[49]!.replaced).toBe(results[48]!.version);
      for (let i = 0; i < 3; i++) await s.write(u, msg(`w${i}`));
      expect(logPuts).toBe(4);
      expect([...log.getKeys({})]).toHaveLength(4);
      await s.checkpoint();
      devices.put = put;
      log.put = logPut;
      // The device written 53 times over four turns gets one record write.
      expect(puts.filter((k) => k === u)).toHaveLength(1);
      expect(puts).toHaveLength(21);
      expect([...log.getKeys({})]).toHaveLength(0);
      expect(s.checkpoints).toBeGreaterThanOrEqual(1);
      const again = await reopen(s);
      expect((await again.read(u))?.message?.toString()).toBe('w2');
    });

    it("kept messages are the store's own bytes: the caller's buffer is let go within the turn, one log value holds the turn's, a checkpoint re-homes each device's in its record", async () => {
      const s = await open({ checkpointIntervalMs: 3_600_000 });
      // A pusher connection's read chunk: every content is a view of it.
      const chunk = Buffer.alloc(64 * 1024);
      for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 7) & 0xff;
      const ids = Array.from({ length: 30 }, uuid);
      const views = ids.map((_, i) => chunk.subarray(i * 1000, i * 1000 + 10 + i));
      const expected = views.map((v) => Buffer.from(v));
      await Promise.all(ids.map((u, i) => s.write(u, { kind: 'message', content: views[i]! })));
      chunk.fill(0);
      const kept = await Promise.all(ids.map(async (u) => (await s.read(u))!.message!));
      for (const [i, m] of kept.entries()) {
        expect(m).toEqual(expected[i]);
        expect(m.buffer).not.toBe(chunk.buffer);
      }
      // No buffer per push: the turn's messages are views of its log value (and of the few
      // smaller buffers it outgrew: it doubles from its first size).
      expect(new Set(kept.map((m) => m.buffer)).size).toBeLessThanOrEqual(6);
      // Under load a turn's log value starts at the previous one's size: the next alike turn needs one.
      await Promise.all(ids.map((u, i) => s.write(u, { kind: 'message', content: Buffer.from(expected[i]!) })));
      const next = await Promise.all(ids.map(async (u) => (await s.read(u))!.message!));
      expect(new Set(next.map((m) => m.buffer)).size).toBe(1);

      await s.checkpoint();
      const homed = await Promise.all(ids.map(async (u) => (await s.read(u))!.message!));
      for (const [i, m] of homed.entries()) {
        expect(m).toEqual(expected[i]);
        // Its device's record value (28-byte header, 14 bytes per message), not the log value.
        expect(m.buffer.byteLength).toBe(28 + 14 + m.length);
      }
      expect(new Set(homed.map((m) => m.buffer)).size).toBe(ids.length);

      // Read back from LMDB: one exact-size copy of the record, not a slab of Node's shared pool.
      const again = await reopen(s);
      for (const [i, u] of ids.entries()) {
        const m = (await again.read(u))!.message!;
        expect(m).toEqual(expected[i]);
        expect(m.buffer.byteLength).toBe(28 + 14 + m.length);
      }
    });

    it('queue mode: every queued message of a device is re-homed in its one record value at a checkpoint', async () => {
      const s = await open({ checkpointIntervalMs: 3_600_000, messageRetention: { queue: 3, ttlMs: 3_600_000 } });
      const u = uuid();
      const caller = Buffer.from('aaaa-bbbbbb-cccccccc');
      await s.write(u, { kind: 'message', content: caller.subarray(0, 4) });
      await s.write(u, { kind: 'message', content: caller.subarray(5, 11) });
      await s.write(u, { kind: 'message', content: caller.subarray(12) });
      caller.fill(0x2e);
      await s.checkpoint();
      type Kept = { entries: Map<string, { rec: { messages: { content: Buffer }[] } }> };
      const messages = (s as unknown as Kept).entries.get(u)!.rec.messages.map((m) => m.content);
      expect(messages.map((m) => m.toString())).toEqual(['aaaa', 'bbbbbb', 'cccccccc']);
      expect(new Set(messages.map((m) => m.buffer)).size).toBe(1);
      expect(messages[0]!.buffer.byteLength).toBe(28 + 3 * 14 + 4 + 6 + 8);
    });

    it('checkpoints on its own timer and after checkpointDevices changed devices', async () => {
      const timed = await open({ checkpointIntervalMs: 30 });
      await timed.write(uuid(), { kind: 'notice' });
      await sleep(120);
      expect(timed.checkpoints).toBeGreaterThanOrEqual(1);
      expect([...internals(timed).log.getKeys({})]).toHaveLength(0);

      const sized = await open({ checkpointIntervalMs: 3_600_000, checkpointDevices: 10 });
      for (let i = 0; i < 9; i++) await sized.write(uuid(), { kind: 'notice' });
      expect(sized.checkpoints).toBe(0);
      await sized.write(uuid(), { kind: 'notice' });
      await sized.write(uuid(), { kind: 'notice' });
      expect(sized.checkpoints).toBe(1);
    });

    it('startup replays the log of a process that never checkpointed (state, removals, acks, versions)', async () => {
      const dir = newDir();
      const first = new LmdbOfflineStore({ path: dir, checkpointIntervalMs: 3_600_000 });
      await first.open();
      const [a, b, c] = [uuid(), uuid(), uuid()];
      await first.write(a, msg('a1'));
      await first.checkpoint(); // a's record exists; what follows is only in the log
      const a2 = await first.write(a, msg('a2'));
      await first.write(b, { kind: 'category', mask: 5n });
      const cn = await first.write(c, { kind: 'notice' });
      await first.ackNotice(c, cn.version);
      await first.remove(b);
      const logKeys = [...internals(first).log.getKeys({})];
      expect(logKeys.length).toBeGreaterThanOrEqual(4);
      // As after kill -9: the files as they are now (every commit done, no final checkpoint), opened elsewhere.
      const copy = newDir();
      cpSync(dir, copy, { recursive: true });
      await first.close();

      const second = new LmdbOfflineStore({ path: copy });
      await second.open();
      stores.push(second);
      expect(await second.read(a)).toMatchObject({ messageVersion: a2.version });
      expect((await second.read(a))?.message?.toString()).toBe('a2');
      expect(await second.read(b)).toBeNull();
      expect(await second.read(c)).toBeNull();
      expect(second.stats()).toMatchObject({ devices: 1, bytes: 2 });
      expect([...internals(second).log.getKeys({})]).toHaveLength(0);
      expect((await second.write(a, msg('a3'))).version).toBeGreaterThan(a2.version);
    });

    it('a device changed again later in the turn of its first change is logged with its final state', async () => {
      const live = await open({ checkpointIntervalMs: 3_600_000 });
      const [u, other] = [uuid(), uuid()];
      const first = await live.write(u, msg('base'));
      await live.write(u, { kind: 'notice' });
      const n = (await live.read(u))!.notice;
      // One turn: u is logged when it first changes (the ack), then changes three more times.
      await Promise.all([
        live.ackMessage(u, first.version),
        live.write(other, msg('o')),
        live.write(u, msg('x')),
        live.write(u, { kind: 'category', mask: 6n }),
        live.ackNotice(u, n),
        live.write(u, msg('y')),
      ]);
      const copy = newDir();
      cpSync(live.path, copy, { recursive: true });
      const recovered = new LmdbOfflineStore({ path: copy });
      await recovered.open();
      stores.push(recovered);
      const state = await recovered.read(u);
      expect(state).toEqual(await live.read(u));
      expect(state).toMatchObject({ notice: 0, category: 6n });
      expect(state?.message?.toString()).toBe('y');
      expect((await recovered.read(other))?.message?.toString()).toBe('o');
      expect(recovered.stats()).toEqual(live.stats());
    });

    it('randomised: after any mix of operations, checkpoints and cache evictions, a crash image reopens to exactly the live state', async () => {
      let seed = 0x5eed1234;
      const rnd = (n: number) => {
        seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
        return (seed >>> 8) % n;
      };
      for (const retention of ['latest', { queue: 3, ttlMs: 3_600_000 }] as const) {
        const live = await open({ cacheSize: 3, checkpointIntervalMs: 3_600_000, messageRetention: retention });
        const ids = Array.from({ length: 12 }, uuid);
        let images = 0;
        for (let step = 0; step < 400; step++) {
          const u = ids[rnd(ids.length)]!;
          const state = await live.read(u);
          const op = rnd(10);
          const pending: Promise<unknown>[] = [];
          if (op <= 2) pending.push(live.write(u, msg(`s${step}`)));
          else if (op === 3) pending.push(live.write(u, { kind: 'notice' }));
          else if (op === 4) pending.push(live.write(u, { kind: 'category', mask: BigInt(1 + rnd(255)) }));
          else if (op === 5 && state) pending.push(live.ackMessage(u, state.messageVersion));
          else if (op === 6 && state) pending.push(live.ackNotice(u, state.notice));
          else if (op === 7 && state) pending.push(live.ackCategory(u, BigInt(1 + rnd(255))));
          else if (op === 8) pending.push(live.remove(u));
          else pending.push(live.checkpoint());
          // Several devices in one turn now and then: one log value for all of them.
          if (rnd(4) === 0) for (let k = 0; k < 3; k++) pending.push(live.write(ids[rnd(ids.length)]!, msg(`t${step}.${k}`)));
          await Promise.all(pending);
          if (rnd(25) !== 0) continue;
          // The files as they are after these commits, reopened elsewhere: what a kill -9 here leaves.
          const copy = newDir();
          cpSync(live.path, copy, { recursive: true });
          const recovered = new LmdbOfflineStore({ path: copy, messageRetention: retention });
          await recovered.open();
          stores.push(recovered);
          for (const id of ids) expect(await recovered.read(id), `step ${step}, device ${id}`).toEqual(await live.read(id));
          expect(recovered.stats()).toEqual(live.stats());
          const v = await recovered.write(ids[0]!, { kind: 'notice' });
          expect(v.version).toBeGreaterThan(0);
          images++;
        }
        expect(images).toBeGreaterThanOrEqual(8);
        expect(live.checkpoints).toBeGreaterThanOrEqual(10);
      }
    });

    it('a damaged log value fails startup with a clear error (not a crash, nothing silently dropped)', async () => {
      const s = await open({ checkpointIntervalMs: 3_600_000 });
      await s.write(uuid(), msg('x'));
      const log = internals(s).log as unknown as { putSync: (k: number, v: Buffer) => boolean };
      log.putSync(1_000_000, Buffer.from([1, 0, 0]));
      const dir = s.path;
      await s.close(); // the final checkpoint removes only the keys this store wrote
      stores.splice(stores.indexOf(s), 1);
      const again = new LmdbOfflineStore({ path: dir });
      const err = await again.open().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OfflineStoreOpenError);
      expect((err as Error).message).toMatch(/truncated/);
    });
  });

  describe('failures', () => {
    it('refuses operations before open and after close', async () => {
      const s = new LmdbOfflineStore({ path: newDir() });
      await expect(s.write(uuid(), { kind: 'notice' })).rejects.toBeInstanceOf(OfflineStoreUnavailableError);
      await expect(s.read(uuid())).rejects.toBeInstanceOf(OfflineStoreUnavailableError);
      await s.open();
      await s.close();
      await expect(s.write(uuid(), { kind: 'notice' })).rejects.toBeInstanceOf(OfflineStoreUnavailableError);
      await s.close(); // twice is fine
    });

    it('a failed commit rejects its operations, then the store resynchronises and accepts writes again', async () => {
      const s = await open();
      const u = uuid();
      await s.write(u, msg('kept'));
      const meta = (s as unknown as { meta: { put: (...a: unknown[]) => Promise<boolean> } }).meta;
      const put = meta.put.bind(meta);
      // LMDB still commits (the batch must reach its commit hook), but the store is told the commit failed.
      meta.put = (...args: unknown[]) =>
        put(...args).then(() => {
          throw new Error('simulated disk full');
        });
      const failed = await s.write(uuid(), msg('lost?')).catch((e: unknown) => e);
      meta.put = put;
      expect(failed).toBeInstanceOf(OfflineStoreUnavailableError);
      expect((failed as Error).message).toMatch(/simulated disk full/);
      await expect(s.write(u, msg('after'))).resolves.toMatchObject({ kind: 'message' });
      expect((await s.read(u))?.message?.toString()).toBe('after');
      // The numbers were re-read from LMDB: what it holds (the 'lost?' write did commit here).
      expect(s.stats()).toMatchObject({ devices: 2, bytes: 5 + 5 });
    });
  });
});
