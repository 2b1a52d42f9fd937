import type { INestApplication, INestApplicationContext } from '@nestjs/common';
import { DeviceTransportStrategy } from './server/device-transport.strategy.js';
import { PusherTransportStrategy } from './server/pusher-transport.strategy.js';

/**
 * Connects the device port and the pusher port to the app, in one line.
 *
 * - On an HTTP app (`NestFactory.create`), both are connected as hybrid
 *   microservices: call `app.startAllMicroservices()` next, and
 *   `@EventPattern` handlers bound to `DEVICE_TRANSPORT` work.
 * - On an application context with no HTTP server
 *   (`NestFactory.createApplicationContext`), the ports start listening at
 *   once, and `app.close()` stops them.
 *
 * Transports disabled in the options are skipped.
 */
export async function connectPushTransports(app: INestApplication | INestApplicationContext): Promise<void> {
  const strategies = [app.get(DeviceTransportStrategy, { strict: false }), app.get(PusherTransportStrategy, { strict: false })].filter(
    (s): s is DeviceTransportStrategy | PusherTransportStrategy => s !== null && s !== undefined,
  );
  const hybrid = app as Partial<INestApplication>;
  if (typeof hybrid.connectMicroservice === 'function') {
    for (const strategy of strategies) hybrid.connectMicroservice({ strategy }, { inheritAppConfig: true });
    return;
  }
  await app.init();
  for (const strategy of strategies) await strategy.start();
}
