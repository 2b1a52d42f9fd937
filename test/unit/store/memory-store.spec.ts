import { describe, expect, it } from 'vitest';
import { MemoryOfflineStore } from '../../../lib/store/memory-offline-store.js';
import { describeOfflineStoreContract } from './offline-store.contract.js';

describeOfflineStoreContract('MemoryOfflineStore', (limits) => new MemoryOfflineStore(limits));

describe('MemoryOfflineStore expiry', () => {
  it('runs its own sweep once opened: pending state untouched for ttlMs goes away; close() stops it', async () => {
    const store = new MemoryOfflineStore({ ttlMs: 100 });
    await store.open();
    try {
      await store.write('0123456789abcdef0123456789abcdef', { kind: 'message', content: Buffer.from('old') });
      expect(store.stats()).toMatchObject({ devices: 1, bytes: 3 });
      const deadline = Date.now() + 3000;
      while (store.stats().devices !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(store.stats()).toMatchObject({ devices: 0, bytes: 0 });
      expect(await store.read('0123456789abcdef0123456789abcdef')).toBeNull();
    } finally {
      await store.close();
    }
  });
});

describe('MemoryOfflineStore message buffers', () => {
  const uuidN = (n: number) => n.toString(16).padStart(32, '0');

  it('keeps a view as it is for a while (no copy for pushes acked soon), then copies what is still pending to a buffer of its own', async () => {
    const store = new MemoryOfflineStore();
    try {
      // A pusher connection's read chunk: the contents are views of it.
      const chunk = Buffer.from('....first....second....');
      const r1 = await store.write(uuidN(1), { kind: 'message', content: chunk.subarray(4, 9) });
      await store.write(uuidN(2), { kind: 'message', content: chunk.subarray(13, 19) });
      expect((await store.read(uuidN(1)))!.message!.buffer).toBe(chunk.buffer);
      await store.ackMessage(uuidN(1), r1.version);
      await new Promise((r) => setTimeout(r, 250));
      const kept = (await store.read(uuidN(2)))!.message!;
      expect(kept.toString()).toBe('second');
      expect(kept.buffer).not.toBe(chunk.buffer);
      expect(kept.byteLength).toBe(kept.buffer.byteLength);
      chunk.fill(0);
      expect((await store.read(uuidN(2)))!.message!.toString()).toBe('second');
      expect(await store.read(uuidN(1))).toBeNull();
      // An exact-size buffer is kept as it is.
      const own = Buffer.from('own');
      await store.write(uuidN(3), { kind: 'message', content: own });
      expect((await store.read(uuidN(3)))!.message).toBe(own);
    } finally {
      await store.close();
    }
  });

  it('lets go of an entry whose message is acked or removed at once, not when the copy timer runs', async () => {
    const store = new MemoryOfflineStore();
    const held = () => (store as unknown as { borrowed: unknown[] }).borrowed.length;
    try {
      const chunk = Buffer.alloc(4000, 1);
      const versions: number[] = [];
      for (let i = 0; i < 5; i++) versions.push((await store.write(uuidN(i), { kind: 'message', content: chunk.subarray(i * 100, i * 100 + 50) })).version);
      expect(held()).toBe(5);
      // From the middle, the end and the front of the list; a replaced message stays held once.
      await store.ackMessage(uuidN(2), versions[2]!);
      await store.ackMessage(uuidN(4), versions[4]!);
      await store.remove(uuidN(0));
      expect(held()).toBe(2);
      await store.write(uuidN(1), { kind: 'message', content: chunk.subarray(1000, 1050) });
      expect(held()).toBe(2);
      // The ones still pending are still copied by the timer.
      await new Promise((r) => setTimeout(r, 250));
      expect(held()).toBe(0);
      for (const i of [1, 3]) {
        const m = (await store.read(uuidN(i)))!.message!;
        expect(m.byteLength).toBe(m.buffer.byteLength);
      }
    } finally {
      await store.close();
    }
  });

  it('holds at most 16,384 views: the write that reaches the bound copies them all at once', async () => {
    const store = new MemoryOfflineStore();
    try {
      const chunk = Buffer.alloc(16_384 * 4);
      for (let i = 0; i < 16_384; i++) chunk.writeUInt32BE(i, i * 4);
      for (let i = 0; i < 16_383; i++) store.writeThen(uuidN(i), { kind: 'message', content: chunk.subarray(i * 4, i * 4 + 4) }, () => {});
      expect((await store.read(uuidN(0)))!.message!.buffer).toBe(chunk.buffer);
      store.writeThen(uuidN(16_383), { kind: 'message', content: chunk.subarray(16_383 * 4) }, () => {});
      for (const i of [0, 8191, 16_383]) {
        const m = (await store.read(uuidN(i)))!.message!;
        expect(m.buffer).not.toBe(chunk.buffer);
        expect(m.readUInt32BE(0)).toBe(i);
      }
    } finally {
      await store.close();
    }
  });

  it('holds views pinning at most 64 MiB of buffers: the write that reaches it copies them all at once', async () => {
    const store = new MemoryOfflineStore();
    try {
      // Each message a view of a different 1 MiB buffer (the worst case: one view per large chunk).
      const chunks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(1024 * 1024, i));
      for (let i = 0; i < 63; i++) store.writeThen(uuidN(i), { kind: 'message', content: chunks[i]!.subarray(0, 8) }, () => {});
      expect((await store.read(uuidN(0)))!.message!.buffer).toBe(chunks[0]!.buffer);
      store.writeThen(uuidN(63), { kind: 'message', content: chunks[63]!.subarray(0, 8) }, () => {});
      for (const i of [0, 31, 63]) {
        const m = (await store.read(uuidN(i)))!.message!;
        expect(m.buffer).not.toBe(chunks[i]!.buffer);
        expect(m.byteLength).toBe(m.buffer.byteLength);
        expect(m[0]).toBe(i);
      }
    } finally {
      await store.close();
    }
  });
});

describe('MemoryOfflineStore answered at once (writeNow, ackNow)', () => {
  const uuid = 'fedcba9876543210fedcba9876543210';

  it('writeNow and ackNow answer what writeThen and ackThen would, and change the same state', async () => {
    const store = new MemoryOfflineStore({ maxDevices: 1 });
    const w = store.writeNow(uuid, { kind: 'message', content: Buffer.from('now') })!;
    expect(w).toMatchObject({ kind: 'message', replaced: 0, head: true });
    expect(await store.read(uuid)).toMatchObject({ messageVersion: w.version, message: Buffer.from('now') });
    const n = store.writeNow(uuid, { kind: 'notice' })!;
    expect(store.ackNow(uuid, 'message', w.version + 1)).toMatchObject({ cleared: false });
    expect(store.ackNow(uuid, 'message', w.version)).toMatchObject({ cleared: true, remaining: false });
    expect(store.ackNow(uuid, 'notice', n.version)).toMatchObject({ cleared: true });
    expect(await store.read(uuid)).toBeNull();
    // Errors are thrown, nothing stored: the second device is over maxDevices.
    store.writeNow(uuid, { kind: 'notice' });
    expect(() => store.writeNow('00000000000000000000000000000001', { kind: 'notice' })).toThrow(/maxDevices/);
    expect(store.stats().devices).toBe(1);
  });

  it('a subclass that overrides a form of write or ack is asked through it: writeNow and ackNow step aside', async () => {
    class Wrapped extends MemoryOfflineStore {
      override writeThen(...args: Parameters<MemoryOfflineStore['writeThen']>): void {
        super.writeThen(...args);
      }
      override ackThen(...args: Parameters<MemoryOfflineStore['ackThen']>): void {
        super.ackThen(...args);
      }
    }
    const store = new Wrapped();
    expect(store.writeNow(uuid, { kind: 'notice' })).toBeUndefined();
    expect(store.ackNow(uuid, 'notice', 1)).toBeUndefined();
    expect(await store.read(uuid)).toBeNull();
    // Likewise for a subclass that overrides only a promise form.
    class PromiseForms extends MemoryOfflineStore {
      override write(...args: Parameters<MemoryOfflineStore['write']>) {
        return super.write(...args);
      }
      override ackMessage(...args: Parameters<MemoryOfflineStore['ackMessage']>) {
        return super.ackMessage(...args);
      }
    }
    const promiseForms = new PromiseForms();
    expect(promiseForms.writeNow(uuid, { kind: 'notice' })).toBeUndefined();
    expect(promiseForms.ackNow(uuid, 'notice', 1)).toBeUndefined();
    expect(await promiseForms.read(uuid)).toBeNull();
    expect(new MemoryOfflineStore().writeNow(uuid, { kind: 'notice' })).toBeDefined();
  });
});

describe('MemoryOfflineStore table fillers', () => {
  it('its Map fillers are invisible: not counted, not swept, not readable, writable or removable through their keys', async () => {
    const store = new MemoryOfflineStore({ maxDevices: 2, ttlMs: 1 });
    expect(store.stats().devices).toBe(0);
    for (const key of ['~0', '~255']) {
      expect(() => store.writeNow(key, { kind: 'notice' })).toThrow(/Invalid device uuid/);
      await expect(store.write(key, { kind: 'notice' })).rejects.toThrow(/Invalid device uuid/);
      expect(await store.read(key)).toBeNull();
      expect(await store.ackCategory(key, 1n)).toBe(0n);
      expect(await store.ackNotice(key, 1)).toMatchObject({ cleared: false });
      await store.remove(key);
    }
    // Two real devices fit under maxDevices 2, and sweeping skips the fillers to reach them.
    await store.write('00000000000000000000000000000001', { kind: 'notice' });
    await store.write('00000000000000000000000000000002', { kind: 'notice' });
    expect(store.stats().devices).toBe(2);
    await expect(store.write('00000000000000000000000000000003', { kind: 'notice' })).rejects.toThrow(/maxDevices/);
    expect(store.sweep(Date.now() + 10)).toBe(2);
    expect(store.stats().devices).toBe(0);
  });
});
