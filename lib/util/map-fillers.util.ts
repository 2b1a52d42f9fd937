/** Filler entries added by `addFillers`. */
export const FILLER_KEYS = 256;

/**
 * Adds `FILLER_KEYS` permanent entries, all holding `value`, to a Map keyed
 * by device uuids, so that its hash table keeps its working size.
 *
 * Why: V8 halves a Map's table once fewer than a quarter of its slots are
 * used and doubles it when it is full. A Map holding the pushes in flight
 * swings between a handful and a few hundred entries every few milliseconds,
 * so it reallocated and rehashed its table several times per burst: about a
 * tenth of the bytes the server allocated per push, and ~3% of the acked
 * push rate. With the fillers it never shrinks below them.
 *
 * The keys start with `~`, which no uuid key (32 lowercase hex characters)
 * can; the Map's owner subtracts `FILLER_KEYS` from its size and skips
 * entries holding `value` when it iterates. Add them first, to an empty
 * Map: they then lead its iteration order, and stay there (never removed).
 */
export function addFillers<V>(map: Map<string, V>, value: V): void {
  for (let i = 0; i < FILLER_KEYS; i++) map.set(`~${i}`, value);
}
