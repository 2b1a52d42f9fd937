/** Thrown when more callers wait for a permit than the pool allows. */
export class PermitQueueFullError extends Error {
  constructor(readonly maxWaiting: number) {
    super(`Too many pushes waiting for an in-flight slot (${maxWaiting} queued); raise send.maxInFlight / send.maxQueued or slow the producer`);
    this.name = 'PermitQueueFullError';
  }
}

/**
 * A counting semaphore with a bounded wait queue: the in-flight limit of
 * pushes awaiting their outcome. When every permit is out, `acquire` waits
 * (backpressure); when the wait queue is full too, it rejects at once.
 */
export class PermitPool {
  private available: number;
  private readonly waiting: Array<() => void> = [];
  private head = 0;

  constructor(
    readonly size: number,
    readonly maxWaiting: number,
  ) {
    this.available = size;
  }

  get inUse(): number {
    return this.size - this.available;
  }

  get queued(): number {
    return this.waiting.length - this.head;
  }

  /** Takes a permit now if one is free. */
  tryAcquire(): boolean {
    if (this.available > 0 && this.queued === 0) {
      this.available--;
      return true;
    }
    return false;
  }

  acquire(): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve();
    if (this.queued >= this.maxWaiting) return Promise.reject(new PermitQueueFullError(this.maxWaiting));
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(): void {
    if (this.head < this.waiting.length) {
      const next = this.waiting[this.head]!;
      this.waiting[this.head++] = undefined as never;
      if (this.head > 1024 && this.head * 2 > this.waiting.length) {
        this.waiting.splice(0, this.head);
        this.head = 0;
      }
      next();
      return;
    }
    this.available++;
  }
}
