import { afterEach, describe, expect, it } from 'vitest';
import { type Deadline, DeadlineQueue } from '../../../lib/dispatch/deadline-queue.js';

interface Entry extends Deadline {
  id: number;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('DeadlineQueue', () => {
  const queues: DeadlineQueue<Entry>[] = [];
  afterEach(() => {
    for (const q of queues.splice(0)) q.clear();
  });
  function queue(): { q: DeadlineQueue<Entry>; expired: Entry[] } {
    const expired: Entry[] = [];
    const q = new DeadlineQueue<Entry>((e) => expired.push(e));
    queues.push(q);
    return { q, expired };
  }
  const entry = (id: number, deadline: number): Entry => ({ id, deadline, settled: false, slot: -1 });

  it('randomised: entries removed before their deadline leave at once and never expire; the rest expire in deadline order', () => {
    const next = rng(7);
    for (let round = 0; round < 50; round++) {
      const { q, expired } = queue();
      const far = Date.now() + 3_600_000;
      const live = new Set<Entry>();
      let id = 0;
      for (let step = 0; step < 400; step++) {
        if (live.size > 0 && next() < 0.45) {
          // Remove a random live entry (as a settle does).
          const victims = [...live];
          const v = victims[Math.floor(next() * victims.length)]!;
          v.settled = true;
          q.remove(v);
          live.delete(v);
          expect(v.slot).toBe(-1);
          q.remove(v); // twice: a no-op
        } else {
          const e = entry(id++, far + Math.floor(next() * 50));
          q.add(e);
          live.add(e);
        }
        expect(q.size).toBe(live.size);
      }
      q.drain(far + 1000);
      expect(q.size).toBe(0);
      expect(new Set(expired)).toEqual(live);
      for (let i = 1; i < expired.length; i++) expect(expired[i]!.deadline).toBeGreaterThanOrEqual(expired[i - 1]!.deadline);
      for (const e of expired) expect(e.slot).toBe(-1);
    }
  });

  it('drain expires only what is due and keeps the rest in order', () => {
    const { q, expired } = queue();
    const t = Date.now() + 3_600_000;
    const entries = [5, 1, 4, 2, 3].map((d, i) => entry(i, t + d));
    for (const e of entries) q.add(e);
    q.drain(t + 2);
    expect(expired.map((e) => e.deadline - t)).toEqual([1, 2]);
    expect(q.size).toBe(3);
    q.remove(entries[2]!); // deadline 4
    q.drain(t + 10);
    expect(expired.map((e) => e.deadline - t)).toEqual([1, 2, 3, 5]);
  });

  it('its timer expires an entry at its deadline, and a removed entry never', async () => {
    const { q, expired } = queue();
    const kept = entry(1, Date.now() + 30);
    const removed = entry(2, Date.now() + 10);
    q.add(kept);
    q.add(removed);
    q.remove(removed);
    await new Promise((r) => setTimeout(r, 80));
    expect(expired).toEqual([kept]);
    expect(q.size).toBe(0);
  });
});
