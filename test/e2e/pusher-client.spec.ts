import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { type ClientProxy, ClientsModule } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import { filter, firstValueFrom, lastValueFrom, timeout, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';
import { PusherClient, type PusherClientStatus } from '../../lib/client/pusher.client.js';
import { PusherClientError } from '../../lib/errors/pusher-client.error.js';
import { PusherRejectedError } from '../../lib/errors/pusher-rejected.error.js';
import { uuidFromKey } from '../../lib/protocol/index.js';
import { PusherTransportStrategy } from '../../lib/server/pusher-transport.strategy.js';
import { ScriptedSubmitter, startPusherOnly, startPusherServer, until } from '../helpers/pusher-server.js';

const hexKey = (k: string) => uuidFromKey(k).toString('hex');

/** A real submitter that holds every submit until `release()` (or resolves at once when not holding). */

/** A submitter that stores nothing until released (the pusher port then replies 0x00). */
function holdingSubmitter(): ScriptedSubmitter {
  const sub = new ScriptedSubmitter();
  sub.holding = true;
  return sub;
}

describe('PusherClient', () => {
  const cleanup: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  async function server(...args: Parameters<typeof startPusherServer>) {
    const s = await startPusherServer(...args);
    cleanup.push(() => s.close());
    return s;
  }
  function client(port: number, options: ConstructorParameters<typeof PusherClient>[0] = {}) {
    const c = new PusherClient({ port, ...options });
    cleanup.push(() => c.close());
    return c;
  }

  it('emit() completes on 0x00 once the push is stored; send() emits the reply code', async () => {
    const s = await server();
    const c = client(s.pusherPort);
    const values = await lastValueFrom(c.emit('push', { key: 'alice', kind: 'message', content: 'hi alice' }).pipe(toArray()));
    expect(values.length).toBeLessThanOrEqual(1);
    expect((await s.store.read(hexKey('alice')))?.message?.toString()).toBe('hi alice');
    expect(await lastValueFrom(c.send('push', { key: 'bob', kind: 'category', mask: 0x30n }))).toBe(0);
    expect((await s.store.read(hexKey('bob')))?.category).toBe(0x30n);
    expect(c.counters).toMatchObject({ sent: 2, accepted: 2, rejected: 0 });
  });

  it('emit() errors with PusherRejectedError 0x01 for a too-long message, and 0xff when the server cannot store', async () => {
    const s = await server();
    const c = client(s.pusherPort);
    const err = await lastValueFrom(c.emit('push', { key: 'alice', kind: 'message', content: Buffer.alloc(501, 0x61) })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PusherRejectedError);
    expect(err).toMatchObject({ code: 0x01, retryable: false });
    expect((err as Error).message).toMatch(/malformed.*maxContentLength/);
    expect(await s.store.read(hexKey('alice'))).toBeNull();
    // The connection is still good.
    await lastValueFrom(c.emit('push', { key: 'alice', kind: 'notice' }), { defaultValue: undefined });
    expect((await s.store.read(hexKey('alice')))?.notice).toBeGreaterThan(0);

    const failing = await startPusherOnly({ submit: (_u, _w, _s, done) => done(new Error('store offline')) });
    cleanup.push(() => failing.close());
    const f = client(failing.port);
    const err2 = await lastValueFrom(f.emit('push', { key: 'alice', kind: 'notice' })).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(PusherRejectedError);
    expect(err2).toMatchObject({ code: 0xff, retryable: true });
    const err3 = await lastValueFrom(f.send('push', { key: 'alice', kind: 'notice' })).catch((e: unknown) => e);
    expect(err3).toMatchObject({ code: 0xff });
  });

  it('push() promise API: every kind, uuid or key, JSON content; bad input fails before anything is sent', async () => {
    const s = await server();
    const c = client(s.pusherPort);
    const uuid = hexKey('carol');
    await c.push({ uuid, kind: 'notice' });
    await c.push({ uuid: uuidFromKey('carol'), kind: 'category', mask: 5 });
    await c.push({ key: 'carol', kind: 'message', content: { hello: 'world', n: 1 } });
    const state = await s.store.read(uuid);
    expect(state).toMatchObject({ category: 5n });
    expect(state!.notice).toBeGreaterThan(0);
    expect(JSON.parse(state!.message!.toString())).toEqual({ hello: 'world', n: 1 });

    const bad = [
      { kind: 'notice' },
      { uuid: 'xyz', kind: 'notice' },
      { uuid, key: 'carol', kind: 'notice' },
      { uuid, kind: 'shout' },
      { uuid, kind: 'category' },
      { uuid, kind: 'category', mask: 1n << 64n },
      { uuid, kind: 'message' },
      { uuid, kind: 'message', content: '' },
      { uuid, kind: 'notice', appId: 256 },
    ];
    for (const input of bad) {
      const e = await c.push(input as never).catch((x: unknown) => x);
      expect(e, JSON.stringify(input, (_, v) => (typeof v === 'bigint' ? String(v) : v))).toBeInstanceOf(PusherClientError);
      expect(e).toMatchObject({ reason: 'invalid-input', maybeStored: false });
    }
    await expect(lastValueFrom(c.emit('push', { kind: 'notice' }))).rejects.toMatchObject({ reason: 'invalid-input' });
    expect(c.counters.sent).toBe(3);
    expect(s.engine.counters.pushes).toBe(3);
  });

  it('pools connections and pipelines up to maxInFlight per connection, spreading load', async () => {
    const s = await server();
    const c = client(s.pusherPort, { connections: 4, maxInFlight: 8 });
    await c.connect();
    await until(() => c.connected === 4, 2000, 'four connections');
    const N = 2000;
    await Promise.all(Array.from({ length: N }, (_, i) => c.push({ key: `u${i % 300}`, kind: 'message', content: `m${i}` })));
    expect(s.pusher.counters.accepted).toBe(N);
    expect(s.pusher.counters.connections).toBe(4);
    // The server never saw more than maxInFlight unanswered tasks on one connection.
    expect(s.pusher.counters.peakPipelined).toBeLessThanOrEqual(8);
    expect(s.pusher.counters.peakPipelined).toBeGreaterThan(1);
    // Every connection of the pool carried tasks.
    const sockets = c.unwrap<import('node:net').Socket[]>();
    expect(sockets).toHaveLength(4);
    for (const sock of sockets) expect(sock.bytesWritten).toBeGreaterThan(21 * 20);
    expect((await s.store.read(hexKey('u0')))?.message?.toString()).toBe('m1800');
  });

  it('bounds the client-side queue: beyond maxQueued a push fails at once with queue-full', async () => {
    const sub = holdingSubmitter();
    const p = await startPusherOnly(sub);
    cleanup.push(() => p.close());
    const c = client(p.port, { maxInFlight: 2, maxQueued: 3 });
    await c.connect();
    const pending = Array.from({ length: 5 }, (_, i) => c.push({ key: `q${i}`, kind: 'notice' }));
    expect(c.inFlight).toBe(2);
    expect(c.queued).toBe(3);
    const e = await c.push({ key: 'q6', kind: 'notice' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(PusherClientError);
    expect(e).toMatchObject({ reason: 'queue-full', maybeStored: false });
    expect((e as Error).message).toMatch(/maxQueued/);
    await until(() => sub.calls.length === 2, 2000, 'two submits');
    sub.release();
    await Promise.all(pending);
    expect(sub.calls.length).toBe(5);
    expect(c.counters.queueFull).toBe(1);
  });

  it('fails in-flight pushes with connection-lost (maybe stored) when the connection dies, without resending them', async () => {
    const sub = holdingSubmitter();
    const p = await startPusherOnly(sub, { closeTimeoutMs: 50 });
    const c = client(p.port, { reconnectInitialDelayMs: 20 });
    await c.connect();
    const port = p.port;
    const pushes = Array.from({ length: 3 }, (_, i) => c.push({ key: `l${i}`, kind: 'notice' }).catch((x: unknown) => x));
    await until(() => sub.calls.length === 3, 2000, 'three submits');
    await p.close(); // the held submits never settle: cut after 50 ms
    const errs = await Promise.all(pushes);
    for (const e of errs) {
      expect(e).toBeInstanceOf(PusherClientError);
      expect(e).toMatchObject({ reason: 'connection-lost', maybeStored: true });
      expect((e as Error).message).toMatch(/not resent/);
    }
    // A new server on the same port: the client reconnects by itself and sends nothing old.
    const p2 = new PusherTransportStrategy(sub, { host: '127.0.0.1', port });
    await p2.start();
    cleanup.push(() => p2.close());
    await firstValueFrom(c.status.pipe(filter((st) => st === 'connected'), timeout(3000)));
    await until(() => p2.counters.connections === 1, 2000, 'reconnected');
    expect(sub.calls.length).toBe(3);
    expect(c.counters.lost).toBe(3);
  });

  it('reconnects after the server restarts on the same port, reporting status changes', async () => {
    const s = await server();
    const c = client(s.pusherPort, { reconnectInitialDelayMs: 20, reconnectMaxDelayMs: 100 });
    const statuses: PusherClientStatus[] = [];
    c.status.subscribe((st) => statuses.push(st));
    await c.push({ key: 'dave', kind: 'message', content: 'one' });
    const port = s.pusherPort;
    await s.pusher.close();
    await firstValueFrom(c.status.pipe(filter((st) => st === 'reconnecting'), timeout(2000)));
    await new Promise((r) => setTimeout(r, 150)); // a few refused attempts
    const again = new PusherTransportStrategy(s.engine, { host: '127.0.0.1', port });
    await again.start();
    cleanup.push(() => again.close());
    await c.push({ key: 'dave', kind: 'message', content: 'two' });
    expect((await s.store.read(hexKey('dave')))?.message?.toString()).toBe('two');
    expect(again.counters.accepted).toBe(1);
    expect(statuses[0]).toBe('disconnected');
    expect(statuses).toContain('reconnecting');
    expect(statuses.at(-1)).toBe('connected');
    expect(statuses.filter((x) => x === 'connected').length).toBe(2);
    await c.close();
    expect(statuses.at(-1)).toBe('closed');
  });

  it('push() while the server is down fails with a clear connection error; timeoutMs bounds a push that gets no reply', async () => {
    const s = await server();
    const port = s.pusherPort;
    await s.pusher.close();
    const c = client(port);
    await expect(c.push({ key: 'x', kind: 'notice' })).rejects.toThrow(/refused; is the push server running/);

    const sub = holdingSubmitter();
    const p = await startPusherOnly(sub);
    cleanup.push(() => p.close());
    const t = client(p.port, { timeoutMs: 100 });
    const e = await t.push({ key: 'x', kind: 'notice' }).catch((x: unknown) => x);
    expect(e).toMatchObject({ reason: 'timeout', maybeStored: true });
  });

  it('ClientsModule.register with customClass: PusherClient, next to PusherTransportStrategy as a Nest microservice', async () => {
    const s = await server();
    const strategy = new PusherTransportStrategy(s.engine, { host: '127.0.0.1', port: 0 });
    @Module({})
    class EmptyModule {}
    const serverRef = await Test.createTestingModule({ imports: [EmptyModule] }).compile();
    const micro = serverRef.createNestMicroservice({ strategy, logger: false });
    await micro.listen();
    cleanup.push(() => micro.close());
    expect(strategy.port).toBeGreaterThan(0);

    const moduleRef = await Test.createTestingModule({
      imports: [ClientsModule.register([{ name: 'PUSHER', customClass: PusherClient, options: { host: '127.0.0.1', port: strategy.port, connections: 2 } }])],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    cleanup.push(() => app.close());
    const proxy = app.get<ClientProxy>('PUSHER');
    expect(proxy).toBeInstanceOf(PusherClient);
    await lastValueFrom(proxy.emit('push', { key: 'erin', kind: 'message', content: 'via nest' }), { defaultValue: undefined });
    expect((await s.store.read(hexKey('erin')))?.message?.toString()).toBe('via nest');
    expect(strategy.counters.accepted).toBe(1);
    expect((proxy as PusherClient).options.connections).toBe(2);
  });

  it('end to end: a push sent with PusherClient reaches a UDP device, which acks it', async () => {
    const s = await server();
    const device = new DeviceClient({ port: s.devicePort, transport: 'udp', key: 'frank', heartbeatIntervalMs: 0 });
    cleanup.push(() => device.close());
    const online = firstValueFrom(s.engine.events.pipe(filter((e) => e.type === 'online'), timeout(2000)));
    await device.connect();
    await online;
    const got = firstValueFrom(device.messages.pipe(filter((m) => m.kind === 'message'), timeout(2000)));
    const acked = firstValueFrom(s.engine.events.pipe(filter((e) => e.type === 'ack'), timeout(2000)));
    const c = client(s.pusherPort);
    await c.push({ key: 'frank', kind: 'message', content: 'ping from the app server' });
    expect((await got).content.toString()).toBe('ping from the app server');
    expect(await acked).toMatchObject({ type: 'ack', kind: 'message', uuid: device.uuid });
    await until(() => device.counters.acked === 1, 2000, 'device ack');
    expect(await s.store.read(device.uuid)).toBeNull();
  });
});
