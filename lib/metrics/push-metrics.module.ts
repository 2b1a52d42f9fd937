import { type DynamicModule, Module } from '@nestjs/common';
import { PUSH_METRICS_OPTIONS, PushMetrics, type PushMetricsOptions } from './push-metrics.js';

/**
 * Prometheus series for a `PushModule` app (`nest-push/metrics`, needs the
 * optional peer `prom-client`). Import it next to `PushModule`; it finds the
 * push providers wherever `PushModule` is imported. Exposes `PushMetrics`
 * (`metrics()`, `contentType`) for your own `GET /metrics` route.
 *
 * ```ts
 * @Module({ imports: [PushModule.forRoot({...}), PushMetricsModule.forRoot({ prefix: 'push_' })] })
 * ```
 */
@Module({
  providers: [{ provide: PUSH_METRICS_OPTIONS, useValue: {} }, PushMetrics],
  exports: [PushMetrics],
})
export class PushMetricsModule {
  static forRoot(options: PushMetricsOptions & { isGlobal?: boolean } = {}): DynamicModule {
    const { isGlobal, ...rest } = options;
    return {
      module: PushMetricsModule,
      global: isGlobal ?? false,
      providers: [{ provide: PUSH_METRICS_OPTIONS, useValue: rest }, PushMetrics],
      exports: [PushMetrics],
    };
  }
}
