/** A reader that the budget may hold (stop reading) and let go again: a pusher connection. */
export interface BudgetReader {
  /** Held by the budget: it must not read while set. Set and cleared by the budget, which then calls `updateFlow`. */
  held: boolean;
  /** Whether it can still read at all (open, not draining); a reader that cannot is dropped from the wait list. */
  readonly active: boolean;
  /** Tasks it may read before its own per-connection limit stops it (`maxPipelined` minus its unanswered tasks). */
  readonly room: number;
  /** Pauses or resumes reading to match `held` (and whatever else stops it). */
  updateFlow(): void;
}

/** Where the budget reports (the pusher port's counters). */
export interface BudgetStats {
  /** Times the budget filled up and held every connection. */
  heldAtTotal: number;
  /** Highest number of unanswered tasks seen. */
  peakPipelinedTotal: number;
}

/**
 * The pusher port's budget of unanswered tasks over all connections
 * (`maxPipelinedTotal`).
 *
 * Why a port-wide limit on top of `maxPipelined`: with a durable store every
 * task waits in the heap for its group commit, and many pipelining
 * connections multiply that wait (64 connections x 256 tasks: 16k tasks and
 * their pending callbacks). Objects that live that long are copied by V8's
 * young-generation collections, so beyond a few thousand waiting tasks a
 * bigger backlog buys no throughput (a group commit is already large) and
 * costs collector time. Tasks the budget does not admit stay unread in the
 * kernel's socket buffers, where they cost no heap, and TCP flow control
 * slows the senders.
 *
 * Once the count reaches the limit, every connection is held. When answers
 * bring it back below, a pass on the next turn lets held connections read
 * again, oldest held first, while their room fits what is left of the budget
 * (at least one per pass); passes repeat turn by turn while room is left, so
 * a released connection with nothing to send does not keep the others
 * waiting. The limit is soft: a read chunk is decoded whole, so a connection
 * may overshoot by what one read delivered (a 64 KiB chunk).
 */
export class PipelineBudget {
  /** Tasks read and not yet answered, over all connections. */
  private count = 0;
  /** Held readers, oldest first from `head` (each at most once: bounded by the open connections). */
  private waiting: BudgetReader[] = [];
  private head = 0;
  private full = false;
  private passScheduled = false;
  /**
   * Readers let go by passes since the budget last reached the limit: while it
   * stays full, these are the only ones that may be reading (every other one
   * was held when it filled, or on arrival), so reaching the limit again holds
   * these, not every connection. Bounded by the open connections per fill.
   */
  private loose: BudgetReader[] = [];

  constructor(
    readonly max: number,
    private readonly readers: () => Iterable<BudgetReader>,
    private readonly stats: BudgetStats,
  ) {}

  /** Unanswered tasks over all connections (gauge). */
  get unanswered(): number {
    return this.count;
  }

  /** `reader` read `n` tasks; call before it decides whether to read on. */
  read(reader: BudgetReader, n: number): void {
    this.count += n;
    if (this.count > this.stats.peakPipelinedTotal) this.stats.peakPipelinedTotal = this.count;
    if (this.count < this.max) return;
    this.holdReader(reader);
    if (!this.full) {
      this.full = true;
      this.stats.heldAtTotal++;
      for (const r of this.readers()) this.holdReader(r);
      return;
    }
    // Every reader let go by the last passes stops too, not just this one: they may be reading in
    // this same poll phase, and each would overshoot by a whole chunk.
    const loose = this.loose;
    this.loose = [];
    for (let i = 0; i < loose.length; i++) this.holdReader(loose[i]!);
  }

  /** A reader that starts while the budget is full waits its turn like the others. */
  admitNew(reader: BudgetReader): void {
    if (this.full) this.holdReader(reader);
  }

  /** `n` tasks were answered (or dropped with their connection). */
  answered(n: number): void {
    this.count -= n;
    if (this.full && this.count < this.max && !this.passScheduled) {
      this.passScheduled = true;
      // After the current turn's answers are all counted: one pass sees the whole room.
      setImmediate(this.pass);
    }
  }

  private holdReader(r: BudgetReader): void {
    if (r.held || !r.active) return;
    r.held = true;
    this.waiting.push(r);
    r.updateFlow();
  }

  private readonly pass = (): void => {
    this.passScheduled = false;
    let budget = this.max - this.count;
    // Still full: the answers on their way schedule the next pass.
    if (budget <= 0) return;
    while (this.head < this.waiting.length && budget > 0) {
      const r = this.waiting[this.head]!;
      this.waiting[this.head++] = undefined as never;
      if (!r.held) continue;
      r.held = false;
      if (!r.active) continue;
      budget -= Math.max(1, r.room);
      this.loose.push(r);
      r.updateFlow();
    }
    if (this.head === this.waiting.length) {
      this.waiting = [];
      this.head = 0;
      this.loose = [];
      this.full = false;
      return;
    }
    if (this.head >= 64 && this.head * 2 >= this.waiting.length) {
      this.waiting = this.waiting.slice(this.head);
      this.head = 0;
    }
    // Others wait: look again once the released ones have had a poll phase to read in. Each pass
    // releases at least one reader, so this ends when the list is empty or the reads fill the budget.
    this.passScheduled = true;
    setImmediate(this.pass);
  };
}
