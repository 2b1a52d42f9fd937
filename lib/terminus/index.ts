/**
 * `nest-push/terminus`: a health indicator for PushModule apps. Requires the
 * optional peer dependency `@nestjs/terminus`; the core entry point never loads it.
 */
export { PushHealthModule } from './push-health.module.js';
export { PushHealthIndicator, HEALTH_PROBE_UUID, type PushHealthCheckOptions, type PushHealthPart } from './push-health.indicator.js';
