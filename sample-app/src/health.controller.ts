import { Controller, Get } from '@nestjs/common';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';
import { PushHealthIndicator } from 'nest-push/terminus';

/** `GET /health`: 200 `{ status: 'ok', ... }` while both transports listen and the store takes writes, 503 otherwise. */
@Controller()
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly push: PushHealthIndicator,
  ) {}

  @Get('health')
  @HealthCheck()
  check() {
    return this.health.check([() => this.push.isHealthy('push')]);
  }
}
