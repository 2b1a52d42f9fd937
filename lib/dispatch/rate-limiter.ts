/**
 * Token bucket shared by every broadcast on a node (mpush limits broadcast to
 * 3000 pushes/s per node by default). `take` resolves when a token is free;
 * callers await it one at a time, so nothing queues up behind it.
 */
export class RateLimiter {
  private tokens: number;
  private last = performance.now();

  constructor(
    readonly perSecond: number,
    private readonly burst = Math.max(1, Math.ceil(perSecond / 10)),
  ) {
    this.tokens = this.burst;
  }

  async take(signal?: { aborted: boolean }): Promise<boolean> {
    for (;;) {
      if (signal?.aborted) return false;
      const now = performance.now();
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.perSecond) / 1000);
      this.last = now;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return true;
      }
      const waitMs = Math.max(1, ((1 - this.tokens) * 1000) / this.perSecond);
      await new Promise((r) => setTimeout(r, waitMs));
    }
  }
}
