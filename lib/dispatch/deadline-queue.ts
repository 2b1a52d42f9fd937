/** An entry with a deadline; `settled` entries are skipped when they surface. */
export interface Deadline {
  deadline: number;
  settled: boolean;
}

/**
 * A binary min-heap of deadlines served by one timer, instead of a
 * `setTimeout` per in-flight push: at 100k pushes/s with a 3 s timeout that
 * would be 300k live timers. Settled entries are dropped lazily when they
 * reach the top. The caller bounds the size (in-flight permits).
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
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p]!.deadline <= entry.deadline) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = entry;
    if (entry.deadline < this.armedFor) this.arm(entry.deadline);
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
    const last = h.pop()!;
    if (h.length > 0) {
      let i = 0;
      const n = h.length;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && h[r]!.deadline < h[l]!.deadline ? r : l;
        if (h[c]!.deadline >= last.deadline) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}
