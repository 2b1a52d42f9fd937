import { Module } from '@nestjs/common';
import { hostname } from 'node:os';
import { PushModule } from 'nest-push';
import { redisCluster } from 'nest-push/redis';
import { PushMetricsModule } from 'nest-push/metrics';
import { PushHealthModule } from 'nest-push/terminus';
import { HealthController } from './health.controller.js';
import { MetricsController } from './metrics.controller.js';
import { PushController } from './push.controller.js';
import { PushHandlers } from './push.handlers.js';
import { SAMPLE_CONFIG, SampleConfigModule } from './sample-config.module.js';
import type { SampleConfig } from './sample.config.js';

@Module({
  imports: [
    PushModule.forRootAsync({
      imports: [SampleConfigModule],
      inject: [SAMPLE_CONFIG],
      useFactory: (c: SampleConfig) => ({
        device: { host: c.deviceHost, port: c.devicePort },
        pusher: { host: c.pusherHost, port: c.pusherPort },
        ...(c.redisUrl
          ? // REDIS_URL set: a cluster node (shared store and router in Redis).
            { nodeId: c.nodeId ?? `${hostname()}-${process.pid}`, cluster: redisCluster({ url: c.redisUrl }) }
          : {
              nodeId: c.nodeId,
              // PUSH_STORE=memory for throwaway runs; otherwise the durable LMDB store in PUSH_DATA_DIR.
              store: c.store === 'memory' ? ('memory' as const) : { type: 'lmdb' as const, options: { path: c.dataDir } },
            }),
      }),
    }),
    PushMetricsModule,
    PushHealthModule,
  ],
  controllers: [PushController, HealthController, MetricsController],
  providers: [PushHandlers],
})
export class AppModule {}
