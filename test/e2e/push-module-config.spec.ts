import { Injectable, Module, type Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { afterEach, describe, expect, it } from 'vitest';
import { PushConfigError } from '../../lib/errors/push-config.error.js';
import type { PushModuleOptions } from '../../lib/interfaces/push-module-options.interface.js';
import { PushModule } from '../../lib/push.module.js';
import { PushService } from '../../lib/push.service.js';
import { Harness, localOptions, LOCAL_PORTS, uid } from '../fixtures/push-app.js';

const h = new Harness();
afterEach(() => h.close());

/** A ConfigModule of our own (@nestjs/config is not a dependency): a provider holding settings. */
@Injectable()
class AppConfig {
  readonly nodeId = 'cfg-node';
  readonly ackTimeoutMs = 120;
}

@Module({ providers: [AppConfig], exports: [AppConfig] })
class TinyConfigModule {}

/** `useClass` / `useExisting`: an options factory that itself injects the config. */
@Injectable()
class PushOptionsFromConfig {
  constructor(private readonly config: AppConfig) {}
  createPushOptions(): PushModuleOptions {
    return localOptions({ nodeId: `${this.config.nodeId}-class`, send: { timeoutMs: this.config.ackTimeoutMs } });
  }
}

@Module({ imports: [TinyConfigModule], providers: [PushOptionsFromConfig], exports: [PushOptionsFromConfig] })
class PushOptionsModule {}

/** A feature module that injects PushService without importing PushModule. */
@Injectable()
class Notifier {
  constructor(readonly push: PushService) {}
}

@Module({ providers: [Notifier], exports: [Notifier] })
class FeatureModule {}

function rootModule(...imports: unknown[]): Type {
  @Module({ imports: imports as Type[] })
  class Root {}
  return Root;
}

/** Checks the default ack timeout came from the config: a silent device times out fast, on the configured node. */
async function expectConfigured(module: Type, nodeId: string): Promise<void> {
  const t = await h.start(module);
  expect(t.push.stats().node).toBe(nodeId);
  const d = await h.device(t, { uuid: uid(), autoAck: false });
  const started = Date.now();
  const [o] = await t.push.push({ uuid: d.uuid, kind: 'notice' }); // no per-push timeout: the module default applies
  expect(o).toMatchObject({ status: 'timeout', node: nodeId });
  expect(Date.now() - started).toBeGreaterThanOrEqual(110);
  expect(Date.now() - started).toBeLessThan(1_500); // the built-in default is 3000 ms
}

describe('PushModule.forRootAsync', () => {
  it('useFactory with imports and inject (async factory)', async () => {
    const module = rootModule(
      PushModule.forRootAsync({
        imports: [TinyConfigModule],
        inject: [AppConfig],
        useFactory: async (config: AppConfig) => localOptions({ nodeId: config.nodeId, send: { timeoutMs: config.ackTimeoutMs } }),
      }),
    );
    await expectConfigured(module, 'cfg-node');
  });

  it('useClass: a class implementing createPushOptions(), instantiated with DI', async () => {
    const module = rootModule(PushModule.forRootAsync({ imports: [TinyConfigModule], useClass: PushOptionsFromConfig }));
    await expectConfigured(module, 'cfg-node-class');
  });

  it('useExisting: an options factory exported by an imported module', async () => {
    const module = rootModule(PushModule.forRootAsync({ imports: [PushOptionsModule], useExisting: PushOptionsFromConfig }));
    await expectConfigured(module, 'cfg-node-class');
  });

  it('a factory returning invalid options fails startup naming the option', async () => {
    const module = rootModule(PushModule.forRootAsync({ useFactory: () => ({ ...LOCAL_PORTS, send: { timeoutMs: 0 } }) }));
    const err = await NestFactory.create(module, { logger: false, abortOnError: false }).then(
      (app) => {
        h.track(app);
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PushConfigError);
    expect((err as PushConfigError).option).toBe('send.timeoutMs');
  });
});

describe('isGlobal', () => {
  it('isGlobal: true makes PushService injectable in a module that does not import PushModule', async () => {
    const t = await h.start(rootModule(PushModule.forRoot({ ...localOptions(), isGlobal: true }), FeatureModule));
    const notifier = t.app.get(Notifier);
    expect(notifier.push).toBe(t.push);
    const d = await h.device(t, { uuid: uid() });
    expect((await notifier.push.push({ uuid: d.uuid, kind: 'notice' }))[0]).toMatchObject({ status: 'success' });
  });

  it('isGlobal also works with forRootAsync', async () => {
    const t = await h.start(rootModule(PushModule.forRootAsync({ isGlobal: true, useFactory: () => localOptions() }), FeatureModule));
    expect(t.app.get(Notifier).push).toBe(t.push);
  });

  it('without isGlobal the feature module cannot resolve PushService (the control case)', async () => {
    const err = await NestFactory.create(rootModule(PushModule.forRoot(localOptions()), FeatureModule), { logger: false, abortOnError: false }).then(
      (app) => {
        h.track(app);
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(String((err as Error).message)).toContain('PushService');
  });
});

describe('invalid options fail at startup with a PushConfigError naming the option', () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ['a bad echo policy', { echo: 'sometimes' }, 'echo'],
    ['maxDevices 0', { maxDevices: 0 }, 'maxDevices'],
    ['a typo at the top level', { reachableWindow: 1 }, 'reachableWindow'],
    ['udpReplyFactor too small for maxContentLength', { maxContentLength: 1000 }, 'udpReplyFactor'],
    ['expiry shorter than the reachability window', { reachableWindowMs: 100, expiryMs: 10 }, 'expiryMs'],
    ['send.maxInFlight 0', { send: { maxInFlight: 0 } }, 'send.maxInFlight'],
    ['send.broadcastRate not an integer', { send: { broadcastRate: 2.5 } }, 'send.broadcastRate'],
    ['send.timeoutMs beyond what a timer can wait', { send: { timeoutMs: 2 ** 31 } }, 'send.timeoutMs'],
    ['a typo inside send', { send: { maxInflight: 2 } }, 'send.maxInflight'],
    ['a typo inside device', { device: { prot: 9966 } }, 'device.prot'],
    ['a typo inside pusher', { pusher: { prot: 9999 } }, 'pusher.prot'],
    ['a pipelining limit of 0', { pusher: { maxPipelined: 0 } }, 'pusher.maxPipelined'],
    ['a port-wide pipelining limit of 0', { pusher: { maxPipelinedTotal: 0 } }, 'pusher.maxPipelinedTotal'],
    ['a device port out of range', { device: { port: 70_000 } }, 'device.port'],
    ['an unknown store type', { store: { type: 'redis' } }, 'store.type'],
    ['tags that are not a PushTags class or instance', { tags: 42 }, 'tags'],
  ];

  it.each(cases)('%s', async (_label, bad, option) => {
    const options = { ...localOptions(), ...bad } as PushModuleOptions;
    if (!('device' in bad)) options.device = LOCAL_PORTS.device;
    else options.device = { ...LOCAL_PORTS.device, ...(bad.device as object) };
    const err = await NestFactory.create(rootModule(PushModule.forRoot(options)), { logger: false, abortOnError: false }).then(
      (app) => {
        h.track(app);
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PushConfigError);
    expect((err as PushConfigError).option).toBe(option);
    expect((err as Error).message).toContain(`"${option}"`);
  });
});
