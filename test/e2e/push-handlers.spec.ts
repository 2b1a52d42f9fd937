import { type CallHandler, Controller, type ExecutionContext, Injectable, type NestInterceptor, UseInterceptors } from '@nestjs/common';
import { Ctx, EventPattern, Payload } from '@nestjs/microservices';
import { tap } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { OnDeviceOnline, OnPushAck, OnPushOutcome } from '../../lib/decorators/push-handler.decorator.js';
import type { DeviceAckEvent, DeviceEvent, DeviceOfflineEvent, DeviceOnlineEvent } from '../../lib/device/device-event.interface.js';
import type { PushOutcome } from '../../lib/interfaces/push-outcome.interface.js';
import { DEVICE_TRANSPORT } from '../../lib/push.constants.js';
import { DeviceEventContext } from '../../lib/server/device-transport.strategy.js';
import { PusherCmd, PusherReply } from '../../lib/protocol/protocol.constants.js';
import { encodePusherTask } from '../../lib/protocol/pusher-task.codec.js';
import { CaptureLogger, Harness, PushEvents, pushAppModule, RawSocket, uid, until } from '../fixtures/push-app.js';

const h = new Harness();
afterEach(() => h.close());

@Injectable()
class TimeoutsOnly {
  readonly seen: PushOutcome[] = [];
  @OnPushOutcome('timeout')
  onTimeout(o: PushOutcome): void {
    this.seen.push(o);
  }
}

/** Handlers are discovered on controllers too. */
@Controller()
class SuccessOrOfflineController {
  readonly seen: PushOutcome[] = [];
  readonly acks: DeviceAckEvent[] = [];
  @OnPushOutcome('success', 'offline')
  onSome(o: PushOutcome): void {
    this.seen.push(o);
  }
  @OnPushAck()
  onAck(e: DeviceAckEvent): void {
    this.acks.push(e);
  }
}

@Injectable()
class Throwers {
  acks = 0;
  outcomes = 0;
  online = 0;
  @OnPushAck()
  onAck(): void {
    this.acks++;
    throw new Error('thrown sync');
  }
  @OnPushOutcome()
  async onOutcome(): Promise<void> {
    this.outcomes++;
    throw new Error('rejected async');
  }
  @OnDeviceOnline()
  onOnline(): Promise<void> {
    this.online++;
    return Promise.reject(new Error('rejected online'));
  }
}

@Injectable()
class CountingInterceptor implements NestInterceptor {
  calls: string[] = [];
  intercept(context: ExecutionContext, next: CallHandler) {
    const data = context.switchToRpc().getData<DeviceEvent>();
    return next.handle().pipe(tap(() => this.calls.push(data.type)));
  }
}

@Controller()
@UseInterceptors(CountingInterceptor)
class DevicePatterns {
  readonly acks: { event: DeviceAckEvent; uuid: string; fromContext: DeviceEvent }[] = [];
  readonly online: DeviceOnlineEvent[] = [];
  readonly offline: DeviceOfflineEvent[] = [];

  @EventPattern<string>('push.ack', DEVICE_TRANSPORT)
  onAck(@Payload() event: DeviceAckEvent, @Ctx() ctx: DeviceEventContext): void {
    this.acks.push({ event, uuid: ctx.getUuid(), fromContext: ctx.getEvent() });
  }

  @EventPattern<string>('device.online', DEVICE_TRANSPORT)
  onOnline(@Payload() event: DeviceOnlineEvent): void {
    this.online.push(event);
  }

  @EventPattern<string>('device.offline', DEVICE_TRANSPORT)
  onOffline(@Payload() event: DeviceOfflineEvent): void {
    this.offline.push(event);
  }
}

describe('push handler decorators', () => {
  it('@OnPushOutcome(status...) receives only those statuses; @OnPushOutcome() receives all', async () => {
    const t = await h.start(pushAppModule({}, { providers: [TimeoutsOnly, PushEvents], controllers: [SuccessOrOfflineController] }));
    const acking = await h.device(t, { uuid: uid() });
    const silent = await h.device(t, { uuid: uid(), autoAck: false });
    const ghost = uid();

    const outcomes = await t.push.push({ uuids: [acking.uuid, silent.uuid, ghost, 'bad'], kind: 'notice', timeout: 100 });
    const statusOf = (u: string) => outcomes.find((o) => o.uuid === u)?.status;
    expect([statusOf(acking.uuid), statusOf(silent.uuid), statusOf(ghost), statusOf('bad')]).toEqual(['success', 'timeout', 'offline', 'failure']);

    const timeouts = t.app.get(TimeoutsOnly).seen;
    expect(timeouts).toEqual([expect.objectContaining({ uuid: silent.uuid, status: 'timeout' })]);
    const ctrl = t.app.get(SuccessOrOfflineController);
    expect(ctrl.seen.map((o) => o.status).sort()).toEqual(['offline', 'success']);
    expect(ctrl.acks).toEqual([expect.objectContaining({ uuid: acking.uuid, kind: 'notice' })]);
    expect(t.app.get(PushEvents).outcomes).toHaveLength(4);

    // pushes from the pusher port (DDPush app servers) reach the same handlers
    const raw = await RawSocket.open(t.pusherPort);
    h.defer(() => raw.socket.destroy());
    raw.socket.write(encodePusherTask({ cmd: PusherCmd.Notice, uuid: Buffer.from(acking.uuid, 'hex') }));
    await until(() => ctrl.seen.length === 3, 2_000, 'the pusher-port outcome');
    expect(ctrl.seen[2]).toMatchObject({ uuid: acking.uuid, status: 'success', source: 'pusher', kind: 'notice' });
    expect(raw.bytes).toEqual([PusherReply.Accepted]);
    expect(timeouts).toHaveLength(1);
  });

  it('@OnDeviceOnline / @OnDeviceOffline: TCP connect and close, UDP reachability window', async () => {
    const t = await h.start(pushAppModule({ reachableWindowMs: 200, sweepIntervalMs: 50 }, { providers: [PushEvents] }));
    const events = t.app.get(PushEvents);

    const tcp = await h.device(t, { uuid: uid(), transport: 'tcp' });
    expect(events.online).toEqual([expect.objectContaining({ type: 'online', uuid: tcp.uuid, transport: 'tcp', address: '127.0.0.1' })]);
    const udp = await h.device(t, { uuid: uid() });
    expect(events.online[1]).toMatchObject({ uuid: udp.uuid, transport: 'udp', address: '127.0.0.1' });
    expect(events.online[1]!.port).toBeGreaterThan(0);

    // UDP: no heartbeat within reachableWindowMs -> offline (the TCP link keeps the other one online)
    await until(() => events.offline.length > 0, 2_000, 'the UDP device to go offline');
    expect(events.offline).toEqual([expect.objectContaining({ uuid: udp.uuid, reason: 'unreachable' })]);
    expect(Date.now() - events.online[1]!.at).toBeGreaterThanOrEqual(200);

    await tcp.client.close();
    await until(() => events.offline.length > 1, 2_000, 'the TCP device to go offline');
    expect(events.offline[1]).toMatchObject({ uuid: tcp.uuid, reason: 'tcp-closed' });

    // a heartbeat after going offline announces the device again
    udp.client.heartbeat();
    await until(() => events.online.length > 2, 2_000, 'the UDP device to come back');
    expect(events.online[2]).toMatchObject({ uuid: udp.uuid, transport: 'udp' });
  });

  it('a throwing handler (sync throw, rejected promise) is logged and delivery goes on', async () => {
    const logger = new CaptureLogger();
    const t = await h.start(pushAppModule({}, { providers: [Throwers, PushEvents] }), logger);
    const throwers = t.app.get(Throwers);
    const good = t.app.get(PushEvents);
    const d = await h.device(t, { uuid: uid() });

    const first = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'one' });
    const second = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'two' });
    expect([first[0]!.status, second[0]!.status]).toEqual(['success', 'success']);

    // the throwers were called every time (their subscriptions survived the throws)
    expect(throwers.acks).toBe(2);
    expect(throwers.outcomes).toBe(2);
    expect(throwers.online).toBe(1);
    // other handlers were not disturbed
    expect(good.acks.map((a) => a.version)).toEqual([first[0]!.version, second[0]!.version]);
    expect(good.outcomes.map((o) => o.status)).toEqual(['success', 'success']);
    expect(good.online).toHaveLength(1);

    await until(() => logger.errors.filter((e) => e.includes('rejected async')).length === 2, 2_000, 'the rejected handlers to be logged');
    const lines = (needle: string) => logger.errors.filter((e) => e.includes(needle));
    expect(lines('thrown sync')).toHaveLength(2);
    expect(lines('thrown sync').every((e) => e.includes('Throwers.onAck'))).toBe(true);
    expect(lines('rejected async').every((e) => e.includes('Throwers.onOutcome'))).toBe(true);
    expect(lines('rejected online')).toHaveLength(1);
    expect(lines('rejected online')[0]).toContain('Throwers.onOnline');
  });

  it("@EventPattern('push.ack' | 'device.online' | 'device.offline', DEVICE_TRANSPORT) handlers run in a hybrid app, through interceptors", async () => {
    const t = await h.start(pushAppModule({}, { controllers: [DevicePatterns], providers: [CountingInterceptor] }));
    const ctrl = t.app.get(DevicePatterns);
    const d = await h.device(t, { uuid: uid(), transport: 'tcp' });
    await until(() => ctrl.online.length === 1, 2_000, 'the device.online pattern');
    expect(ctrl.online[0]).toMatchObject({ type: 'online', uuid: d.uuid, transport: 'tcp' });

    const [o] = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'via pattern' });
    expect(o!.status).toBe('success');
    await until(() => ctrl.acks.length === 1, 2_000, 'the push.ack pattern');
    expect(ctrl.acks[0]!.event).toMatchObject({ type: 'ack', uuid: d.uuid, kind: 'message', version: o!.version });
    expect(ctrl.acks[0]!.uuid).toBe(d.uuid);
    expect(ctrl.acks[0]!.fromContext).toBe(ctrl.acks[0]!.event);

    await d.client.close();
    await until(() => ctrl.offline.length === 1, 2_000, 'the device.offline pattern');
    expect(ctrl.offline[0]).toMatchObject({ uuid: d.uuid, reason: 'tcp-closed' });

    const interceptor = t.app.get(CountingInterceptor);
    await until(() => interceptor.calls.length === 3, 2_000, 'the interceptor');
    expect(interceptor.calls).toEqual(['online', 'ack', 'offline']);
  });
});
