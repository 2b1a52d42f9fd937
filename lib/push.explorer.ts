import { Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { type Observable, type Subscription, filter } from 'rxjs';
import { DeviceEngine } from './device/device-engine.js';
import { PushDispatcher } from './dispatch/push-dispatcher.js';
import type { PushHandlerMetadata } from './decorators/push-handler.decorator.js';
import { PUSH_HANDLER_METADATA } from './push.constants.js';

/**
 * Finds methods decorated with `@OnPushAck`, `@OnPushOutcome`,
 * `@OnDeviceOnline`, `@OnDeviceOffline` on every provider and controller at
 * bootstrap (as `@nestjs/schedule` finds `@Cron`) and subscribes them. A
 * handler that throws or rejects is logged; delivery goes on.
 */
@Injectable()
export class PushExplorer implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('PushModule');
  private readonly subscriptions: Subscription[] = [];

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
    private readonly engine: DeviceEngine,
    private readonly dispatcher: PushDispatcher,
  ) {}

  onApplicationBootstrap(): void {
    const wrappers = [...this.discovery.getProviders(), ...this.discovery.getControllers()];
    for (const wrapper of wrappers) {
      const instance = wrapper.instance as Record<string, unknown> | undefined;
      if (!instance || typeof instance !== 'object' || !wrapper.isDependencyTreeStatic()) continue;
      const proto = Object.getPrototypeOf(instance);
      for (const name of this.scanner.getAllMethodNames(proto)) {
        const method = instance[name];
        if (typeof method !== 'function') continue;
        const meta = this.reflector.get<PushHandlerMetadata | undefined>(PUSH_HANDLER_METADATA, method);
        if (meta) this.bind(meta, instance, name, wrapper.name);
      }
    }
  }

  onApplicationShutdown(): void {
    for (const s of this.subscriptions.splice(0)) s.unsubscribe();
  }

  private bind(meta: PushHandlerMetadata, instance: Record<string, unknown>, name: string, owner: string): void {
    let source: Observable<unknown>;
    if (meta.event === 'outcome') {
      const statuses = meta.statuses;
      source = statuses ? this.dispatcher.outcomes.pipe(filter((o) => statuses.includes(o.status))) : this.dispatcher.outcomes;
    } else {
      const type = meta.event;
      source = this.engine.events.pipe(filter((e) => e.type === type));
    }
    const label = `${owner}.${name}`;
    this.subscriptions.push(
      source.subscribe((event) => {
        try {
          const r = (instance[name] as (e: unknown) => unknown).call(instance, event);
          if (r && typeof (r as Promise<unknown>).then === 'function') {
            (r as Promise<unknown>).then(undefined, (err) => this.failed(label, err));
          }
        } catch (err) {
          this.failed(label, err);
        }
      }),
    );
  }

  private failed(label: string, err: unknown): void {
    this.logger.error(`Push handler ${label} failed: ${err instanceof Error ? err.message : String(err)}`, err instanceof Error ? err.stack : undefined);
  }
}
