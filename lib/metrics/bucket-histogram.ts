/**
 * A Prometheus histogram over fixed buckets whose `observe` allocates nothing
 * (prom-client's `Histogram.observe` builds a closure and a label hash per
 * call). It registers in a prom-client `Registry` like any metric: the
 * registry only reads `name`, `help`, `type` and `get()`.
 */
export class BucketHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  /** Upper bounds in seconds, ascending (`+Inf` is implicit). */
  readonly upperBounds: readonly number[];
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
  ) {
    const sorted = [...new Set(buckets)].filter((b) => Number.isFinite(b)).sort((a, b) => a - b);
    if (sorted.length === 0) throw new RangeError(`${name}: give at least one finite bucket bound`);
    this.upperBounds = sorted;
    this.counts = new Float64Array(sorted.length + 1);
  }

  /** Records one value (seconds). Non-finite and negative values are clamped to 0. */
  observe(value: number): void {
    const v = value >= 0 && Number.isFinite(value) ? value : 0;
    const b = this.upperBounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.count++;
  }

  get observations(): number {
    return this.count;
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }

  /** The shape prom-client's registry serialises (cumulative `_bucket` series, then `_sum` and `_count`). */
  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: { value: number; labels: Record<string, string | number>; metricName: string }[] }> {
    const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
    let cumulative = 0;
    for (let i = 0; i < this.upperBounds.length; i++) {
      cumulative += this.counts[i]!;
      values.push({ value: cumulative, labels: { le: this.upperBounds[i]! }, metricName: `${this.name}_bucket` });
    }
    cumulative += this.counts[this.upperBounds.length]!;
    values.push({ value: cumulative, labels: { le: '+Inf' }, metricName: `${this.name}_bucket` });
    values.push({ value: this.sum, labels: {}, metricName: `${this.name}_sum` });
    values.push({ value: this.count, labels: {}, metricName: `${this.name}_count` });
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }
}
