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
