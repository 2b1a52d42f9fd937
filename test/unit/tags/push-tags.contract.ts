import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_TAG_LENGTH, type PushTags } from '../../../lib/tags/push-tags.js';

/** Makes a fresh, empty tag store (`pageSize`: members per page where the store reads in pages). */
export type PushTagsFactory = (options: { pageSize?: number }) => PushTags | Promise<PushTags>;

const uuid = () => randomBytes(16).toString('hex');

async function all(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const u of it) out.push(u);
  return out;
}

/** What every `PushTags` does (lib/tags/push-tags.ts), run against each implementation. */
export function describePushTagsContract(name: string, factory: PushTagsFactory, cleanup: () => Promise<void> = async () => {}): void {
  describe(`PushTags contract: ${name}`, () => {
    afterEach(cleanup);

    it('add, tagsOf and remove (one tag, or all), each idempotent', async () => {
      const t = await factory({});
      const u = uuid();
      expect(await t.tagsOf(u)).toEqual([]);
      await t.add(u, ['news', 'sport', 'news']);
      await t.add(u, ['news']);
      expect((await t.tagsOf(u)).sort()).toEqual(['news', 'sport']);
      await t.remove(u, ['sport', 'never-had']);
      expect(await t.tagsOf(u)).toEqual(['news']);
      await t.add(u, ['a', 'b']);
      await t.remove(u);
      expect(await t.tagsOf(u)).toEqual([]);
      expect(await all(t.members(['news', 'a', 'b']))).toEqual([]);
      await t.remove(u); // nothing left: no error
    });

    it('members: devices carrying any of the tags, each once, however many tags they share', async () => {
      const t = await factory({});
      const [a, b, c, d] = [uuid(), uuid(), uuid(), uuid()];
      await t.add(a, ['vip']);
      await t.add(b, ['vip', 'beta']);
      await t.add(c, ['beta']);
      await t.add(d, ['other']);
      expect((await all(t.members(['vip']))).sort()).toEqual([a, b].sort());
      expect((await all(t.members(['vip', 'beta']))).sort()).toEqual([a, b, c].sort());
      expect((await all(t.members(['beta', 'vip', 'beta']))).sort()).toEqual([a, b, c].sort());
      expect(await all(t.members(['nobody']))).toEqual([]);
      await t.remove(b, ['vip']);
      expect(await all(t.members(['vip']))).toEqual([a]);
    });

    it('members over more devices than one page: every one exactly once', async () => {
      const t = await factory({ pageSize: 50 });
      const ids = Array.from({ length: 700 }, uuid);
      for (const [i, u] of ids.entries()) await t.add(u, i % 2 ? ['odd', 'any'] : ['any']);
      const got = await all(t.members(['odd', 'any']));
      expect(got.length).toBe(ids.length);
      expect(new Set(got).size).toBe(ids.length);
      expect((await all(t.members(['odd']))).length).toBe(350);
    });

    it('refuses tags that are not non-empty strings of at most MAX_TAG_LENGTH, adding none of the call', async () => {
      const t = await factory({});
      const u = uuid();
      for (const bad of [[''], ['ok', 'x'.repeat(MAX_TAG_LENGTH + 1)], [7 as unknown as string], [null as unknown as string]]) {
        await expect(t.add(u, bad)).rejects.toBeInstanceOf(TypeError);
      }
      expect(await t.tagsOf(u)).toEqual([]);
      await t.add(u, ['x'.repeat(MAX_TAG_LENGTH)]);
      expect((await t.tagsOf(u))[0]!.length).toBe(MAX_TAG_LENGTH);
      await expect(t.remove(u, [''])).rejects.toBeInstanceOf(TypeError);
    });
  });
}
