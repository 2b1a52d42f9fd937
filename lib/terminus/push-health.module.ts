import { Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { PushHealthIndicator } from './push-health.indicator.js';

/**
 * Provides `PushHealthIndicator` (`nest-push/terminus`, needs the optional
 * peer `@nestjs/terminus`). Import it next to `PushModule` and `TerminusModule`;
 * it finds the push providers wherever `PushModule` is imported.
 */
@Module({
  imports: [TerminusModule],
  providers: [PushHealthIndicator],
  exports: [PushHealthIndicator, TerminusModule],
})
export class PushHealthModule {}
