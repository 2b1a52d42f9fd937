import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { connectPushTransports, DeviceTransportStrategy, PusherTransportStrategy } from 'nest-push';
import { AppModule } from './app.module.js';
import { loadSampleConfig } from './sample.config.js';

async function bootstrap() {
  const config = loadSampleConfig();
  const app = await NestFactory.create(AppModule);
  app.enableShutdownHooks();
  await connectPushTransports(app);
  await app.startAllMicroservices();
  await app.listen(config.httpPort);
  const device = app.get(DeviceTransportStrategy).port;
  const pusher = app.get(PusherTransportStrategy).port;
  const http = (app.getHttpServer().address() as { port: number }).port;
  // Scripts and tests wait for this exact line.
  console.log(`nest-push sample ready (devices udp+tcp :${device}, pusher :${pusher}, http :${http})`);
}

bootstrap().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
