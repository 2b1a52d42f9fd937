/**
 * `nest-push/metrics`: Prometheus series for a PushModule app. Requires the
 * optional peer dependency `prom-client`; the core entry point never loads it.
 */
export { PushMetricsModule } from './push-metrics.module.js';
export { PushMetrics, PUSH_METRICS_OPTIONS, PUSH_METRIC_NAMES, DEFAULT_LATENCY_BUCKETS, type PushMetricsOptions } from './push-metrics.js';
export { BucketHistogram } from './bucket-histogram.js';
