import { describe, expect, it } from 'vitest';
import { TagLimitError } from '../../../lib/errors/tag-limit.error.js';
import { MemoryPushTags } from '../../../lib/tags/memory-push-tags.js';
import { describePushTagsContract } from './push-tags.contract.js';

describePushTagsContract('MemoryPushTags', () => new MemoryPushTags());

describe('MemoryPushTags limits', () => {
  it('maxEntries bounds the memberships: an add that would pass it adds none of its tags; removals make room', async () => {
    const t = new MemoryPushTags(3);
    await t.add('a', ['x', 'y']);
    const err = await t.add('b', ['x', 'y']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TagLimitError);
    expect(err).toMatchObject({ max: 3, limit: 'send.maxTagEntries' });
    expect(await t.tagsOf('b')).toEqual([]);
    expect(t.size).toBe(2);
    await t.add('a', ['x', 'y']); // already there: costs nothing
    await t.add('b', ['x']);
    expect(t.size).toBe(3);
    await t.remove('a');
    expect(t.size).toBe(1);
    await t.add('b', ['y', 'z']);
    expect(t.size).toBe(3);
  });
});
