import { Controller, Get, type INestApplication, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';
import { afterEach, describe, expect, it } from 'vitest';
import { redisCluster } from '../../lib/redis/index.js';
import { startRedis } from '../helpers/redis-server.js';
import { connectPushTransports } from '../../lib/push-transports.js';
import { PushModule } from '../../lib/push.module.js';
import type { PushModuleOptions } from '../../lib/interfaces/push-module-options.interface.js';
import { DeviceTransportStrategy } from '../../lib/server/device-transport.strategy.js';
import { MemoryOfflineStore } from '../../lib/store/memory-offline-store.js';
import { OfflineStore, type PendingWrite, type WriteCallback } from '../../lib/store/offline-store.js';
import { HEALTH_PROBE_UUID, PushHealthIndicator, PushHealthModule } from '../../lib/terminus/index.js';

@Controller()
class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly push: PushHealthIndicator,
  ) {}

  @Get('health')
  @HealthCheck()
  check() {
    return this.health.check([() => this.push.isHealthy('push')]);
  }

  @Get('health/store-stats')
  @HealthCheck()
  storeStats() {
    return this.health.check([() => this.push.store('store', { store: 'stats' })]);
  }
}

async function startApp(options: PushModuleOptions = {}): Promise<{ app: INestApplication; url: string }> {
  @Module({
    imports: [
      PushModule.forRoot({ device: { host: '127.0.0.1', port: 0 }, pusher: { host: '127.0.0.1', port: 0 }, ...(options.cluster ? {} : { store: 'memory' as const }), ...options }),
      PushHealthModule,
    ],
    controllers: [HealthController],
  })
  class HealthAppModule {}
  const app = await NestFactory.create(HealthAppModule, { logger: false });
  await connectPushTransports(app);
  await app.startAllMicroservices();
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as { port: number };
  return { app, url: `http://127.0.0.1:${port}` };
}

interface HealthBody {
  status: string;
  details: Record<string, { status: string; [k: string]: unknown }>;
  error?: Record<string, unknown>;
}

async function get(url: string): Promise<{ status: number; body: HealthBody }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as HealthBody };
}

/** A store that refuses every write (a full disk, a read-only replica). */
class ReadOnlyStore extends MemoryOfflineStore {
  override write(): never {
    throw new Error('store is read-only');
  }
  override writeThen(_uuid: string, _push: PendingWrite, done: WriteCallback): void {
    done(new Error('store is read-only'), null);
  }
}

describe('PushHealthIndicator (terminus) on a real app over HTTP', () => {
  const apps: INestApplication[] = [];
  afterEach(async () => {
    for (const app of apps.splice(0)) await app.close();
  });

  it('healthy app: status ok, both transports up, store writable, probe leaves nothing behind', async () => {
    const { app, url } = await startApp();
    apps.push(app);
    const { status, body } = await get(`${url}/health`);
    expect(status).toBe(200);
    expect(body.status).toBe('ok');
    const push = body.details.push!;
    expect(push.status).toBe('up');
    expect(push.device).toMatchObject({ status: 'up', listening: true, port: app.get(DeviceTransportStrategy).port });
    expect(push.pusher).toMatchObject({ status: 'up', listening: true });
    expect(push.store).toMatchObject({ status: 'up', writable: true });
    expect(push.cluster).toEqual({ status: 'disabled' });
    const store = app.get(OfflineStore);
    expect(await store.read(HEALTH_PROBE_UUID)).toBeNull();
    expect(store.stats().devices).toBe(0);
  });

  it('after the device transport closes: 503, push down, device down, pusher still up', async () => {
    const { app, url } = await startApp();
    apps.push(app);
    await app.get(DeviceTransportStrategy).close();
    const { status, body } = await get(`${url}/health`);
    expect(status).toBe(503);
    expect(body.status).toBe('error');
    expect(body.details.push).toMatchObject({ status: 'down', device: { status: 'down', listening: false }, pusher: { status: 'up' } });
    expect(body.error).toHaveProperty('push');
  });

  it('a disabled transport is reported as disabled, not down', async () => {
    const { app, url } = await startApp({ pusher: { enabled: false } });
    apps.push(app);
    const { status, body } = await get(`${url}/health`);
    expect(status).toBe(200);
    expect(body.details.push).toMatchObject({ status: 'up', device: { status: 'up' }, pusher: { status: 'disabled' } });
  });

  it('a store that cannot be written: down with the store error; the stats-only check stays up', async () => {
    const { app, url } = await startApp({ store: new ReadOnlyStore() });
    apps.push(app);
    const { status, body } = await get(`${url}/health`);
    expect(status).toBe(503);
    expect(body.details.push).toMatchObject({ status: 'down', store: { status: 'down', writable: false, message: 'store is read-only' } });
    const stats = await get(`${url}/health/store-stats`);
    expect(stats.status).toBe(200);
    expect(stats.body.details.store).toMatchObject({ status: 'up', writable: 'unchecked' });
  });

  it('cluster mode: Redis reachable through the cluster ping(), down when Redis dies', async () => {
    const redis = await startRedis();
    try {
      const { app, url } = await startApp({ cluster: redisCluster({ url: redis.url, keyPrefix: `health${Date.now()}:` }), nodeId: 'n1' });
      apps.push(app);
      let r = await get(`${url}/health`);
      expect(r.status).toBe(200);
      expect(r.body.details.push!.cluster).toMatchObject({ status: 'up', reachable: true });
      await redis.kill();
      r = await get(`${url}/health`);
      expect(r.status).toBe(503);
      expect(r.body.details.push!.cluster).toMatchObject({ status: 'down', reachable: false });
      await redis.restart();
      // ioredis reconnects by itself (within ~1 s): the node is healthy again.
      const deadline = Date.now() + 5000;
      do {
        r = await get(`${url}/health`);
        if (r.status === 200) break;
        await new Promise((res) => setTimeout(res, 100));
      } while (Date.now() < deadline);
      expect(r.status).toBe(200);
    } finally {
      for (const app of apps.splice(0)) await app.close();
      await redis.dispose();
    }
  });

});
