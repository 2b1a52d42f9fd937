/** A source of pusher tasks waiting for their turn (a pusher connection). */
export interface IntakeQueue {
  /** In the intake's wait list (managed by the intake). */
  waiting: boolean;
  /** Tasks wait in this queue. */
  readonly hasQueued: boolean;
  /** Submits the oldest queued task. */
  submitQueued(): void;
}

/** The device port counts as busy this long (ms) after it last received a datagram. */
const DEVICE_BUSY_MS = 20;

/**
 * libuv reads at most this many datagrams from a UDP socket per poll phase.
 * A turn that saw this many arrive most likely left more waiting in the
 * kernel buffer: the device port is behind.
 */
const UV_DATAGRAMS_PER_POLL = 32;

/**
 * Paces the pusher port's task intake against the device port, turn by turn
 * of the event loop.
 *
 * libuv reads at most 32 UDP datagrams per turn, while one pusher read can
 * carry thousands of tasks: submitted all at once, their device acks (and
 * every heartbeat) pile up in the kernel's UDP buffer, which holds a few
 * hundred, and are dropped. So while the device port is busy (a datagram in
 * the last 20 ms), at most `tasksPerTurn` tasks are submitted per turn,
 * round-robin over the waiting connections, and the rest wait for the next
 * turn. With a quiet device port, or none, a turn takes everything queued
 * (bounded by each connection's `maxPipelined`).
 *
 * Keeping pace is not enough once the port is behind: a turn that submits as
 * many pushes as the poll phase before it read acks keeps whatever backlog
 * the kernel buffer holds, and a 4 MiB buffer holds thousands of acks, each
 * then handled ~100 ms late (outcomes come late, and a newer push to the same
 * device finds the older one unacked and reports it `replaced`). So a turn
 * after a poll phase that read a full libuv batch (32 datagrams) submits an
 * eighth of `tasksPerTurn` (at least one, so pushes still move under a
 * heartbeat flood) until the backlog is gone.
 */
export class PusherIntake {
  /** Tasks left in this turn's budget; a turn is open while its closing immediate is pending. */
  private budget = 0;
  private turnOpen = false;
  /** Queues with tasks waiting, each once (bounded by the pusher port's `maxConnections`). */
  private readonly waitList: IntakeQueue[] = [];
  private deviceDatagrams: (() => number) | undefined;
  private lastDatagrams = 0;
  private deviceBusyAt = -Infinity;

  constructor(private readonly tasksPerTurn: number) {}

  /** Watches the device port: `datagrams` reads its running count of received datagrams. */
  paceWith(datagrams: () => number): void {
    this.deviceDatagrams = datagrams;
    this.lastDatagrams = datagrams();
  }

  /** A task may be submitted now (takes one from this turn's budget). */
  admit(): boolean {
    this.openTurn();
    if (this.budget === 0) return false;
    this.budget--;
    return true;
  }

  /** `queue` holds tasks: serve it in the coming turns. */
  wait(queue: IntakeQueue): void {
    if (!queue.waiting) {
      queue.waiting = true;
      this.waitList.push(queue);
    }
    this.openTurn();
  }

  private turnBudget(): number {
    const read = this.deviceDatagrams;
    if (!read) return Number.MAX_SAFE_INTEGER;
    const n = read();
    const now = Date.now();
    const arrived = n - this.lastDatagrams;
    if (arrived !== 0) {
      this.lastDatagrams = n;
      this.deviceBusyAt = now;
    }
    if (arrived >= UV_DATAGRAMS_PER_POLL) return Math.max(1, this.tasksPerTurn >> 3);
    // Busy for a while after the last datagram, not just "since the previous turn": a turn can open
    // and close within one poll phase, and a flapping verdict would let whole queues through in bursts.
    return now - this.deviceBusyAt <= DEVICE_BUSY_MS ? this.tasksPerTurn : Number.MAX_SAFE_INTEGER;
  }

  private openTurn(): void {
    if (this.turnOpen) return;
    this.turnOpen = true;
    this.budget = this.turnBudget();
    // setImmediate runs after the poll phase: the device port's reads come between two turns.
    setImmediate(this.nextTurn);
  }

  private readonly nextTurn = (): void => {
    this.turnOpen = false;
    const list = this.waitList;
    if (list.length === 0) return;
    this.openTurn();
    // Round-robin, one task per queue per pass, so one busy connection cannot starve the others.
    while (this.budget > 0 && list.length > 0) {
      let kept = 0;
      for (let i = 0; i < list.length; i++) {
        const q = list[i]!;
        if (this.budget > 0 && q.hasQueued) {
          this.budget--;
          q.submitQueued();
        }
        if (q.hasQueued) list[kept++] = q;
        else q.waiting = false;
      }
      list.length = kept;
    }
  };
}
