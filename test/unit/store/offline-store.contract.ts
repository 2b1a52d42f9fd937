import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { type OfflineStore, OfflineStoreFullError, type StoreDrop, type WriteResult } from '../../../lib/store/offline-store.js';

/** Limits a contract case needs; the factory passes them to its store. */
export interface ContractLimits {
  maxDevices?: number;
  maxBytes?: number;
}

/** Makes a fresh, not yet opened store (the suite opens and closes it). */
export type OfflineStoreFactory = (limits: ContractLimits) => OfflineStore | Promise<OfflineStore>;

/** What a store keeps itself, beyond the semantics every store shares. */
export interface ContractCapabilities {
  /**
   * The store enforces `maxDevices` / `maxBytes` and its `stats()` count
   * devices and bytes exactly. Default true. False for a store whose limits
   * and figures are its server's (Redis: `maxmemory`, INFO): the limit cases
   * are not part of its suite and no case checks its `stats()`.
   */
  localAccounting?: boolean;
}

export function uuid(): string {
  return randomBytes(16).toString('hex');
}

const msg = (s: string) => ({ kind: 'message' as const, content: Buffer.from(s) });

/**
 * The semantics every `OfflineStore` shares (lib/store/offline-store.ts),
 * run against each implementation: versions, the three kinds, ack rules,
 * limits, and per-device atomicity under concurrent operations.
 */
export function describeOfflineStoreContract(name: string, factory: OfflineStoreFactory, capabilities: ContractCapabilities = {}): void {
  const accounting = capabilities.localAccounting ?? true;
  /** Checks `stats()` where the store counts exactly. */
  const expectStats = (s: OfflineStore, figures: Partial<ReturnType<OfflineStore['stats']>>) => {
    if (accounting) expect(s.stats()).toMatchObject(figures);
  };
  /** A case only for stores that enforce their own limits. */
  const itWithLimits = (title: string, fn: () => Promise<void>) => {
    if (accounting) it(title, fn);
  };
  describe(`OfflineStore contract: ${name}`, () => {
    const open: OfflineStore[] = [];
    async function make(limits: ContractLimits = {}): Promise<OfflineStore> {
      const s = await factory(limits);
      await s.open();
      open.push(s);
      return s;
    }
    afterEach(async () => {
      for (const s of open.splice(0)) await s.close();
    });

    it('hands out u32 versions, never 0, different for every push', async () => {
      const s = await make();
      const u = uuid();
      const seen = new Set<number>();
      for (let i = 0; i < 50; i++) {
        const r = await s.write(i % 2 ? u : uuid(), i % 3 === 0 ? { kind: 'notice' } : msg(`m${i}`));
        expect(Number.isInteger(r.version)).toBe(true);
        expect(r.version).toBeGreaterThan(0);
        expect(r.version).toBeLessThanOrEqual(0xffffffff);
        seen.add(r.version);
      }
      expect(seen.size).toBe(50);
    });

    it('notice: a flag with a version; an ack of another version clears nothing', async () => {
      const s = await make();
      const u = uuid();
      expect(await s.read(u)).toBeNull();
      const a = await s.write(u, { kind: 'notice' });
      expect(a).toMatchObject({ kind: 'notice', replaced: 0, head: true });
      const b = await s.write(u, { kind: 'notice' });
      expect(b.version).not.toBe(a.version);
      expect(await s.read(u)).toEqual({ notice: b.version, category: 0n, categoryVersion: 0, message: null, messageVersion: 0 });
      expect(await s.ackNotice(u, a.version)).toEqual({ cleared: false, remaining: true });
      expect((await s.read(u))?.notice).toBe(b.version);
      expect(await s.ackNotice(u, b.version)).toEqual({ cleared: true, remaining: false });
      expect(await s.read(u)).toBeNull();
      expect(await s.ackNotice(u, b.version)).toEqual({ cleared: false, remaining: false });
      expectStats(s, { devices: 0 });
    });

    it('category: masks OR together (all 64 bits), acks clear exactly their bits', async () => {
      const s = await make();
      const u = uuid();
      const a = await s.write(u, { kind: 'category', mask: 0b0101n });
      expect(a).toMatchObject({ kind: 'category', mask: 0b0101n, head: true, replaced: 0 });
      const b = await s.write(u, { kind: 'category', mask: (1n << 63n) | 0b0010n });
      expect(b.mask).toBe((1n << 63n) | 0b0111n);
      expect(await s.read(u)).toMatchObject({ category: (1n << 63n) | 0b0111n, categoryVersion: b.version });
      expect(await s.ackCategory(u, 0b0001n)).toBe((1n << 63n) | 0b0110n);
      // A mask pushed after the device's copy was sent stays pending.
      expect(await s.ackCategory(u, 0b1000n)).toBe((1n << 63n) | 0b0110n);
      expect(await s.ackCategory(u, (1n << 63n) | 0b0110n)).toBe(0n);
      expect(await s.read(u)).toBeNull();
      expect(await s.ackCategory(u, 1n)).toBe(0n);
      // Negative / wide masks are taken as their low 64 bits.
      const c = await s.write(u, { kind: 'category', mask: -1n });
      expect(c.mask).toBe(0xffffffffffffffffn);
    });

    it('message (latest only): a push replaces the pending one and reports its version', async () => {
      const s = await make();
      const u = uuid();
      const a = await s.write(u, msg('first'));
      expect(a).toMatchObject({ kind: 'message', replaced: 0, head: true });
      const b = await s.write(u, msg('second'));
      expect(b).toMatchObject({ kind: 'message', replaced: a.version, head: true });
      const state = await s.read(u);
      expect(state?.message?.toString()).toBe('second');
      expect(state?.messageVersion).toBe(b.version);
      expectStats(s, { devices: 1, bytes: 6 });
      expect(await s.ackMessage(u, a.version)).toEqual({ cleared: false, remaining: true });
      expect(await s.ackMessage(u, b.version)).toEqual({ cleared: true, remaining: false });
      expect(await s.read(u)).toBeNull();
      expect(await s.ackMessage(u, b.version)).toEqual({ cleared: false, remaining: false });
      expectStats(s, { devices: 0, bytes: 0 });
    });

    it('keeps the kinds of one device independent', async () => {
      const s = await make();
      const u = uuid();
      const n = await s.write(u, { kind: 'notice' });
      const c = await s.write(u, { kind: 'category', mask: 4n });
      const m = await s.write(u, msg('hello'));
      expect(await s.read(u)).toEqual({ notice: n.version, category: 4n, categoryVersion: c.version, message: Buffer.from('hello'), messageVersion: m.version });
      expect(await s.ackMessage(u, m.version)).toEqual({ cleared: true, remaining: false });
      expect(await s.read(u)).toMatchObject({ notice: n.version, category: 4n, message: null, messageVersion: 0 });
      expect(await s.ackNotice(u, n.version)).toEqual({ cleared: true, remaining: false });
      expect(await s.ackCategory(u, 4n)).toBe(0n);
      expect(await s.read(u)).toBeNull();
    });

    it('remove drops everything pending for the device', async () => {
      const s = await make();
      const u = uuid();
      const other = uuid();
      await s.write(u, { kind: 'notice' });
      await s.write(u, { kind: 'category', mask: 1n });
      await s.write(u, msg('abc'));
      await s.write(other, msg('keep'));
      await s.remove(u);
      expect(await s.read(u)).toBeNull();
      expect((await s.read(other))?.message?.toString()).toBe('keep');
      expectStats(s, { devices: 1, bytes: 4 });
      await s.remove(u); // nothing to remove: no error
    });

    itWithLimits('maxDevices: a write for one more device fails with nothing stored; known devices still take writes', async () => {
      const s = await make({ maxDevices: 2 });
      const [a, b, c] = [uuid(), uuid(), uuid()];
      await s.write(a, { kind: 'notice' });
      await s.write(b, msg('x'));
      const err = await s.write(c, msg('y')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OfflineStoreFullError);
      expect(err).toMatchObject({ limit: 'maxDevices' });
      expect(await s.read(c)).toBeNull();
      expectStats(s, { devices: 2, bytes: 1, maxDevices: 2 });
      await expect(s.write(a, msg('more'))).resolves.toMatchObject({ kind: 'message' });
      await s.ackNotice(a, (await s.read(a))!.notice);
      await s.ackMessage(a, (await s.read(a))!.messageVersion);
      await expect(s.write(c, msg('now'))).resolves.toMatchObject({ head: true });
    });

    itWithLimits('maxBytes: a message that would exceed it fails with nothing stored; replacing counts the difference', async () => {
      const s = await make({ maxBytes: 10 });
      const [a, b] = [uuid(), uuid()];
      await s.write(a, msg('123456'));
      const err = await s.write(b, msg('123456')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OfflineStoreFullError);
      expect(err).toMatchObject({ limit: 'maxBytes' });
      expect(await s.read(b)).toBeNull();
      expectStats(s, { devices: 1, bytes: 6, maxBytes: 10 });
      // Replacing a's 6 bytes with 10 fits (the old content goes).
      await expect(s.write(a, msg('0123456789'))).resolves.toMatchObject({ kind: 'message' });
      expect(s.stats().bytes).toBe(10);
      // Notices carry no content: still accepted.
      await expect(s.write(b, { kind: 'notice' })).resolves.toMatchObject({ kind: 'notice' });
      expect((await s.read(a))?.message?.toString()).toBe('0123456789');
    });

    itWithLimits('stats follow writes, acks and removals over many devices', async () => {
      const s = await make();
      const ids = Array.from({ length: 40 }, uuid);
      await Promise.all(ids.map((u, i) => s.write(u, msg('x'.repeat(i + 1)))));
      expectStats(s, { devices: 40, bytes: (40 * 41) / 2 });
      for (const u of ids.slice(0, 10)) await s.ackMessage(u, (await s.read(u))!.messageVersion);
      for (const u of ids.slice(10, 20)) await s.remove(u);
      expectStats(s, { devices: 20, bytes: (40 * 41) / 2 - (20 * 21) / 2 });
    });

    it('a write and an ack racing for one device never lose an update (1000 interleaved operations)', async () => {
      const s = await make();
      const u = uuid();
      const ops: Promise<unknown>[] = [];
      const messages: Promise<WriteResult>[] = [];
      let lastContent = '';
      for (let i = 0; i < 250; i++) {
        // Category bits 0..31 are acked once their write is in; 32..63 never are.
        const bit = 1n << BigInt(i % 64);
        const w = s.write(u, { kind: 'category', mask: bit });
        ops.push(w);
        if (i % 64 < 32) ops.push(w.then(() => s.ackCategory(u, bit)));
        // Notices: each acked by its own version once stored.
        ops.push(s.write(u, { kind: 'notice' }).then((r) => s.ackNotice(u, r.version)));
        // Messages: every one but the last is replaced exactly once.
        lastContent = `message-${i}`;
        const m = s.write(u, msg(lastContent));
        messages.push(m);
        ops.push(m);
        ops.push(s.read(u));
      }
      expect(ops.length).toBeGreaterThanOrEqual(1000);
      await Promise.all(ops);
      const results = await Promise.all(messages);
      const versions = results.map((r) => r.version);
      const replaced = results.map((r) => r.replaced).filter((v) => v !== 0);
      expect(new Set(replaced).size).toBe(replaced.length);
      expect([...replaced].sort()).toEqual(versions.slice(0, -1).sort());
      const final = await s.read(u);
      expect(final?.message?.toString()).toBe(lastContent);
      expect(final?.messageVersion).toBe(versions.at(-1));
      expect(final?.notice).toBe(0);
      expect(final?.category).toBe(0xffffffff00000000n);
      expectStats(s, { devices: 1, bytes: lastContent.length });
    });

    itWithLimits('interleaved operations over many devices keep stats equal to what reads show', async () => {
      const s = await make();
      const ids = Array.from({ length: 50 }, uuid);
      const ops: Promise<unknown>[] = [];
      for (let round = 0; round < 10; round++) {
        for (const [i, u] of ids.entries()) {
          const w = s.write(u, msg(`${round}:${'y'.repeat(i % 7)}`));
          ops.push(w);
          if ((i + round) % 3 === 0) ops.push(w.then((r) => s.ackMessage(u, r.version)));
          if ((i + round) % 11 === 0) ops.push(s.remove(u));
        }
      }
      await Promise.all(ops);
      let devices = 0;
      let bytes = 0;
      for (const u of ids) {
        const st = await s.read(u);
        if (st) {
          devices++;
          bytes += st.message?.length ?? 0;
        }
      }
      expectStats(s, { devices, bytes });
    });

    it('read shows copies: changing a returned state does not change the store', async () => {
      const s = await make();
      const u = uuid();
      await s.write(u, msg('abc'));
      const st = (await s.read(u))!;
      st.messageVersion = 0;
      st.category = 99n;
      expect(await s.read(u)).toMatchObject({ messageVersion: expect.any(Number), category: 0n });
      expect((await s.read(u))!.messageVersion).not.toBe(0);
    });

    it('writeThen (the push hot path): one callback per write, with the result once stored or the error when not', async () => {
      // A third device is refused where the store enforces maxDevices; elsewhere every write is stored.
      const s = await make(accounting ? { maxDevices: 2 } : {});
      const calls: { err: Error | null; r: WriteResult | null }[] = [];
      const a = uuid();
      const b = uuid();
      const writes = [a, b, uuid(), a].map(
        (u, i) =>
          new Promise<void>((resolve) =>
            s.writeThen(u, msg(`w${i}`), (err, r) => {
              calls.push({ err, r });
              resolve();
            }),
          ),
      );
      await Promise.all(writes);
      // Exactly one callback per write, never both an error and a result.
      expect(calls).toHaveLength(4);
      for (const c of calls) expect((c.err === null) !== (c.r === null)).toBe(true);
      const failed = calls.filter((c) => c.err);
      expect(failed).toHaveLength(accounting ? 1 : 0);
      if (accounting) expect(failed[0]!.err).toBeInstanceOf(OfflineStoreFullError);
      // What the callbacks reported is what the store holds.
      const state = await s.read(a);
      expect(state?.message?.toString()).toBe('w3');
      expect(calls.some((c) => c.r?.version === state?.messageVersion)).toBe(true);
      // Settling more callbacks later (a second call, a late commit) would show here.
      await new Promise((r) => setTimeout(r, 20));
      expect(calls).toHaveLength(4);
    });

    it('ackThen (the ack hot path): one callback per ack, with what ackNotice/ackMessage would answer', async () => {
      const s = await make();
      const u = uuid();
      const n = await s.write(u, { kind: 'notice' });
      const m = await s.write(u, msg('m'));
      // Every callback of one ack: waits for the first (a durable store answers after its commit,
      // which can take a while on a busy machine), then 20 ms more for a second that must not come.
      const ack = async (kind: 'notice' | 'message', version: number) => {
        const calls: unknown[] = [];
        s.ackThen(u, kind, version, (err, r) => calls.push(err ?? { ...r }));
        for (let waited = 0; calls.length === 0 && waited < 5_000; waited += 5) await new Promise((r) => setTimeout(r, 5));
        await new Promise((r) => setTimeout(r, 20));
        return calls;
      };
      expect(await ack('notice', n.version + 1)).toEqual([{ cleared: false, remaining: true }]);
      expect(await ack('message', m.version)).toEqual([{ cleared: true, remaining: false }]);
      expect(await ack('message', m.version)).toEqual([{ cleared: false, remaining: false }]);
      expect(await ack('notice', n.version)).toEqual([{ cleared: true, remaining: false }]);
      expect(await s.read(u)).toBeNull();
    });

    it('exposes drops as an Observable', async () => {
      const s = await make();
      const seen: StoreDrop[] = [];
      const sub = s.drops.subscribe((d) => seen.push(d));
      await s.write(uuid(), msg('x'));
      sub.unsubscribe();
      expect(seen).toEqual([]);
    });
  });
}
