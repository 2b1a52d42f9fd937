import { TagLimitError } from '../errors/tag-limit.error.js';
import { checkTags, PushTags } from './push-tags.js';

/**
 * Tags kept in this process: tag -> devices, plus device -> tags for
 * untagging. Bounded by the total number of memberships (`maxEntries`); an
 * `add` that would pass it rejects with `TagLimitError` and adds nothing.
 * The default outside a cluster (`send.maxTagEntries`, default 1,000,000).
 */
export class MemoryPushTags extends PushTags {
  private readonly byTag = new Map<string, Set<string>>();
  private readonly byDevice = new Map<string, Set<string>>();
  private entries = 0;

  constructor(readonly maxEntries = 1_000_000) {
    super();
  }

  get size(): number {
    return this.entries;
  }

  async add(uuid: string, tags: readonly string[]): Promise<void> {
    checkTags(tags);
    const mine = this.byDevice.get(uuid);
    const distinct = [...new Set(tags)].filter((t) => !mine?.has(t));
    if (distinct.length === 0) return;
    if (this.entries + distinct.length > this.maxEntries) throw new TagLimitError(this.maxEntries);
    let set = mine;
    if (!set) this.byDevice.set(uuid, (set = new Set()));
    for (const t of distinct) {
      set.add(t);
      let members = this.byTag.get(t);
      if (!members) this.byTag.set(t, (members = new Set()));
      members.add(uuid);
      this.entries++;
    }
  }

  async remove(uuid: string, tags?: readonly string[]): Promise<void> {
    if (tags) checkTags(tags);
    const mine = this.byDevice.get(uuid);
    if (!mine) return;
    for (const t of tags ?? [...mine]) {
      if (!mine.delete(t)) continue;
      const members = this.byTag.get(t)!;
      members.delete(uuid);
      if (members.size === 0) this.byTag.delete(t);
      this.entries--;
    }
    if (mine.size === 0) this.byDevice.delete(uuid);
  }

  async tagsOf(uuid: string): Promise<string[]> {
    return [...(this.byDevice.get(uuid) ?? [])];
  }

  /** Devices carrying any of `tags`, each once. A device tagged or untagged meanwhile may or may not be seen. */
  async *members(tags: readonly string[]): AsyncIterable<string> {
    checkTags(tags);
    for (let i = 0; i < tags.length; i++) {
      // A Set iterates well-defined while it changes between yields.
      for (const uuid of this.byTag.get(tags[i]!) ?? []) {
        // Each device once without a `seen` set as large as the tags: skip it under the tag that came first.
        if (this.inEarlier(uuid, tags, i)) continue;
        yield uuid;
      }
    }
  }

  private inEarlier(uuid: string, tags: readonly string[], i: number): boolean {
    const mine = this.byDevice.get(uuid);
    if (!mine) return false;
    for (let j = 0; j < i; j++) if (mine.has(tags[j]!)) return true;
    return false;
  }
}
