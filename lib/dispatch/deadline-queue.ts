/** An entry with a deadline; `settled` entries are skipped if they surface. */
export interface Deadline {
  deadline: number;
  settled: boolean;
  /** Its position in the queue's heap, -1 when not queued. Kept by the queue: start it at -1. */
  slot: number;
}

/**
 * A binary min-heap of deadlines served by one timer, instead of a
 * `setTimeout` per in-flight push: at 100k pushes/s with a 3 s timeout that
 * would be 300k live timers. An entry settled before its deadline is taken
 * out at once (`remove`, O(log n)) rather than when it reaches the top: most
 * pushes are acked within milliseconds, and leaving them in the heap for the
 * whole timeout would keep every one of them (and what it references) alive
 * that long, past the young generation, at the collector's expense. So the
 * heap holds only what is still waiting; the caller bounds that (in-flight
 * permits).
 */
export class DeadlineQueue<T extends Deadline> {
  private readonly heap: T[] = [];
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Infinity;

  constructor(private readonly onExpire: (entry: T) => void) {}

  get size(): number {
    return this.heap.length;
  }

  add(entry: T): void {
    const h = this.heap;
    h.push(entry);
    this.up(entry, h.length - 1);
    if (entry.deadline < this.armedFor) this.arm(entry.deadline);
  }

  /** Takes an entry out before its deadline (no-op when it is not queued). The timer stays armed; a run that finds nothing due just re-arms. */
  remove(entry: T): void {
    const i = entry.slot;
    if (i < 0) return;
    const h = this.heap;
    entry.slot = -1;
    const last = h.pop()!;
    if (last === entry) return;
    // The last entry fills the hole, then moves whichever way restores the order.
    if (i > 0 && last.deadline < h[(i - 1) >> 1]!.deadline) this.up(last, i);
    else this.down(last, i);
  }

  /** Expires everything due at `now` (also called by the timer). */
  drain(now = Date.now()): void {
    const h = this.heap;
    while (h.length > 0 && (h[0]!.settled || h[0]!.deadline <= now)) {
      const top = this.pop();
      if (!top.settled) this.onExpire(top);
    }
    this.armedFor = Infinity;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (h.length > 0) this.arm(h[0]!.deadline);
  }

  clear(): void {
    for (const e of this.heap) e.slot = -1;
    this.heap.length = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Infinity;
  }

  private arm(deadline: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.armedFor = deadline;
    this.timer = setTimeout(() => this.drain(), Math.max(0, deadline - Date.now()));
    this.timer.unref();
  }

  private pop(): T {
    const h = this.heap;
    const top = h[0]!;
    top.slot = -1;
    const last = h.pop()!;
    if (h.length > 0) this.down(last, 0);
    return top;
  }

  /** Places `entry` at hole `i` or above it. */
  private up(entry: T, i: number): void {
    const h = this.heap;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = h[p]!;
      if (parent.deadline <= entry.deadline) break;
      h[i] = parent;
      parent.slot = i;
      i = p;
    }
    h[i] = entry;
    entry.slot = i;
  }

  /** Places `entry` at hole `i` or below it. */
  private down(entry: T, i: number): void {
    const h = this.heap;
    const n = h.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && h[r]!.deadline < h[l]!.deadline ? r : l;
      const child = h[c]!;
      if (child.deadline >= entry.deadline) break;
      h[i] = child;
      child.slot = i;
      i = c;
    }
    h[i] = entry;
    entry.slot = i;
  }
}
