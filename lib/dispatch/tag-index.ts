/** Thrown by `PushService.tag` when the tag index is full. */
export class TagLimitError extends RangeError {
  constructor(readonly max: number) {
    super(`Tag index is full (${max} memberships, option send.maxTagEntries); untag devices or raise the limit`);
    this.name = 'TagLimitError';
  }
}

/**
 * Server-side tags for filtered broadcasts: tag -> devices, plus device -> tags
 * for untagging. Bounded by the total number of memberships.
 */
export class TagIndex {
  private readonly byTag = new Map<string, Set<string>>();
  private readonly byDevice = new Map<string, Set<string>>();
  private entries = 0;

  constructor(readonly maxEntries: number) {}

  get size(): number {
    return this.entries;
  }

  add(uuid: string, tags: readonly string[]): void {
    for (const t of tags) if (typeof t !== 'string' || t.length === 0) throw new TypeError(`tags must be non-empty strings, got ${String(t)}`);
    const fresh = tags.filter((t) => !this.byDevice.get(uuid)?.has(t));
    const distinct = [...new Set(fresh)];
    if (this.entries + distinct.length > this.maxEntries) throw new TagLimitError(this.maxEntries);
    let mine = this.byDevice.get(uuid);
    if (!mine && distinct.length) this.byDevice.set(uuid, (mine = new Set()));
    for (const t of distinct) {
      mine!.add(t);
      let set = this.byTag.get(t);
      if (!set) this.byTag.set(t, (set = new Set()));
      set.add(uuid);
      this.entries++;
    }
  }

  remove(uuid: string, tags?: readonly string[]): void {
    const mine = this.byDevice.get(uuid);
    if (!mine) return;
    for (const t of tags ?? [...mine]) {
      if (!mine.delete(t)) continue;
      const set = this.byTag.get(t)!;
      set.delete(uuid);
      if (set.size === 0) this.byTag.delete(t);
      this.entries--;
    }
    if (mine.size === 0) this.byDevice.delete(uuid);
  }

  tagsOf(uuid: string): string[] {
    return [...(this.byDevice.get(uuid) ?? [])];
  }

  /** Devices carrying any of `tags`, each once. */
  *members(tags: readonly string[]): Iterable<string> {
    if (tags.length === 1) {
      yield* this.byTag.get(tags[0]!) ?? [];
      return;
    }
    const seen = new Set<string>();
    for (const t of tags) {
      for (const uuid of this.byTag.get(t) ?? []) {
        if (seen.has(uuid)) continue;
        seen.add(uuid);
        yield uuid;
      }
    }
  }
}
