import { Controller, Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';
import { OnPushAck } from '../../lib/decorators/push-handler.decorator.js';
import type { DeviceAckEvent } from '../../lib/device/device-event.interface.js';
import { connectPushTransports } from '../../lib/push-transports.js';
import { PushModule } from '../../lib/push.module.js';
import { PushService } from '../../lib/push.service.js';
import { DeviceTransportStrategy } from '../../lib/server/device-transport.strategy.js';

@Injectable()
class Acks {
  seen: DeviceAckEvent[] = [];
  @OnPushAck()
  onAck(e: DeviceAckEvent) {
    this.seen.push(e);
  }
}

@Controller()
class Nothing {}

@Module({
  imports: [PushModule.forRoot({ device: { host: '127.0.0.1', port: 0 }, pusher: { port: 0 }, store: 'memory' })],
  controllers: [Nothing],
  providers: [Acks],
})
class AppModule {}

describe('PushModule sanity', () => {
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  it('boots, sends, reports success, calls the ack handler', async () => {
    const app = await NestFactory.create(AppModule, { logger: false });
    await connectPushTransports(app);
    await app.startAllMicroservices();
    await app.init();
    cleanup.push(() => app.close());
    const port = app.get(DeviceTransportStrategy).port;
    const d = new DeviceClient({ port, key: 'alice', heartbeatIntervalMs: 0 });
    cleanup.push(() => d.close());
    await d.connect();
    const push = app.get(PushService);
    await new Promise((r) => setTimeout(r, 50));
    const outcomes = await push.push({ key: 'alice', kind: 'message', content: { hello: 'world' } });
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toMatchObject({ status: 'success', transport: 'udp', uuid: d.uuid });
    expect(app.get(Acks).seen.map((e) => e.kind)).toEqual(['message']);
  });
});
