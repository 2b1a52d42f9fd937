/** The longest tag accepted, in UTF-16 code units: tags are labels, and each is kept once per device. */
export const MAX_TAG_LENGTH = 256;

/**
 * Server-side device tags, for tag-filtered broadcasts
 * (`send({ broadcast: { tags } })`). A DI token: the default keeps them in
 * this process (`MemoryPushTags`); in a cluster the `redisCluster()` plugin
 * keeps them in Redis (`RedisPushTags`), so a device tagged through any node
 * is found by a broadcast from any node. Apps may provide their own:
 * `PushModule.forRoot({ tags: MyTags })`.
 *
 * Operations are idempotent (adding a tag a device has, or removing one it
 * has not, changes nothing), so a caller may retry one that failed.
 */
export abstract class PushTags {
  /** Connects whatever the tags need; `PushModule` calls it at startup and a failure fails the startup. */
  async open(): Promise<void> {}
  /** Adds tags to a device. Rejects with `TagLimitError` (adding none of them) when a limit would be passed. */
  abstract add(uuid: string, tags: readonly string[]): Promise<void>;
  /** Removes tags from a device; all of its tags when `tags` is omitted. */
  abstract remove(uuid: string, tags?: readonly string[]): Promise<void>;
  /** The device's tags (no particular order). */
  abstract tagsOf(uuid: string): Promise<string[]>;
  /**
   * Devices carrying at least one of `tags`, each once per call (see the
   * implementation for exceptions), read a page at a time so that a large
   * tag is never held in memory whole.
   */
  abstract members(tags: readonly string[]): AsyncIterable<string>;
  /** Memberships (device x tag) held, or -1 when they are not counted here (kept in a shared server). */
  abstract get size(): number;
}

/** Throws a `TypeError` naming the first tag that is not a non-empty string of at most `MAX_TAG_LENGTH`. */
export function checkTags(tags: readonly unknown[]): asserts tags is readonly string[] {
  if (!Array.isArray(tags)) throw new TypeError(`tags must be an array of strings, got ${String(tags)}`);
  for (const t of tags) {
    if (typeof t !== 'string' || t.length === 0 || t.length > MAX_TAG_LENGTH) {
      throw new TypeError(`tags must be non-empty strings of at most ${MAX_TAG_LENGTH} characters, got ${typeof t === 'string' ? JSON.stringify(t.slice(0, 40)) : String(t)}`);
    }
  }
}
