import { Controller, Get, Res } from '@nestjs/common';
import { PushMetrics } from 'nest-push/metrics';

/** `GET /metrics`: Prometheus text exposition (nest-push series plus Node's default ones). */
@Controller()
export class MetricsController {
  constructor(private readonly metrics: PushMetrics) {}

  @Get('metrics')
  async scrape(@Res({ passthrough: true }) res: { setHeader(name: string, value: string): void }): Promise<string> {
    res.setHeader('Content-Type', this.metrics.contentType);
    return this.metrics.metrics();
  }
}
