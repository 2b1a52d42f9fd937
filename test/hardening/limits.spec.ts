/**
 * Hardening: every documented limit at its edge, over real sockets on
 * 127.0.0.1 (issue 9): exactly the limit is admitted, one more is refused the
 * documented way and counted, memory does not grow past it, and what was
 * admitted keeps working.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { lastValueFrom, toArray } from 'rxjs';
import type { PushOutcome } from '../../lib/interfaces/push-outcome.interface.js';
import { PusherTransportStrategy } from '../../lib/server/pusher-transport.strategy.js';
import { Harness, pushAppModule, uid } from '../fixtures/push-app.js';
import { startDeviceServer } from '../helpers/device-server.js';
import { RawPusherConnection, startPusherServer } from '../helpers/pusher-server.js';
import { heartbeat, messageTask, newUuid, noticeTask, RawTcp, sleep, UdpPeer, until, within } from './net.js';

const cleanups: (() => unknown)[] = [];
const h = new Harness();
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await h.close();
});
function defer<T extends { close(): unknown } | { destroy(): unknown }>(x: T): T {
  cleanups.push(() => ('close' in x ? x.close() : x.destroy()));
  return x;
}
const hex = (u: Buffer) => u.toString('hex');

describe('device table: maxDevices', () => {
  it('exactly maxDevices register; every further uuid (UDP or TCP) is refused and counted; the table does not grow', async () => {
    const N = 64;
    const s = defer(await startDeviceServer({ maxDevices: N }));
    const peer = defer(await UdpPeer.bind('127.0.0.1'));
    const admitted = Array.from({ length: N }, newUuid);
    for (const u of admitted) await peer.send(heartbeat(u), s.port);
    await until(() => s.engine.counters.heartbeats === N, `${N} heartbeats`);
    expect(s.engine.deviceCount).toBe(N);
    expect(s.engine.counters.drops['device-limit']).toBe(0);
    for (const u of admitted) expect(s.engine.localRoute(hex(u))).toMatchObject({ transport: 'udp', address: '127.0.0.1', port: peer.port });
    const bytesAtLimit = s.engine.table.byteSize;

    // The N+1th is refused...
    const extra = newUuid();
    await peer.send(heartbeat(extra), s.port);
    await until(() => s.engine.counters.drops['device-limit'] === 1, 'the N+1th refusal');
    expect(s.engine.deviceCount).toBe(N);
    expect(s.engine.localRoute(hex(extra))).toBeNull();

    // ...and so are 2,000 more, one by one, without the table growing a byte.
    for (let i = 0; i < 2_000; i++) {
      const p = peer.send(heartbeat(newUuid()), s.port);
      if (i % 200 === 199) await p;
    }
    await until(() => s.engine.counters.drops['device-limit'] === 2_001, '2,001 refusals', 5_000);
    expect(s.engine.deviceCount).toBe(N);
    expect(s.engine.table.byteSize).toBe(bytesAtLimit);

    // The limit is the same over TCP.
    const tcp = defer(await RawTcp.open(s.port));
    tcp.write(heartbeat(newUuid()));
    await until(() => s.engine.counters.drops['device-limit'] === 2_002, 'the TCP refusal');
    expect(s.engine.tcpLinkCount).toBe(0);
    expect(s.engine.deviceCount).toBe(N);

    // A refused device's push is stored, not sent: it is not reachable here.
    expect(await s.engine.push(hex(extra), { kind: 'notice' })).toMatchObject({ reachable: false, sentVia: null });
    // An admitted device is still served.
    const before = peer.bytesReceived;
    expect(await s.engine.push(hex(admitted[N - 1]!), { kind: 'message', content: Buffer.from('still served') })).toMatchObject({ sentVia: 'udp' });
    await until(() => peer.bytesReceived === before + 5 + 12, 'the push to an admitted device');
    expect(peer.received.at(-1)!.subarray(5).toString()).toBe('still served');
  });

  it('slots freed by expiry are reusable: the table holds maxDevices again, never more', async () => {
    const N = 8;
    const s = defer(await startDeviceServer({ maxDevices: N, reachableWindowMs: 100, expiryMs: 150, sweepIntervalMs: 20 }));
    const peer = defer(await UdpPeer.bind('127.0.0.2'));
    for (let i = 0; i < N + 1; i++) await peer.send(heartbeat(newUuid()), s.port);
    await until(() => s.engine.counters.heartbeats === N + 1, 'heartbeats');
    expect(s.engine.deviceCount).toBe(N);
    expect(s.engine.counters.drops['device-limit']).toBe(1);

    await until(() => s.engine.counters.expired === N, 'every record to expire', 3_000);
    expect(s.engine.deviceCount).toBe(0);
    const fresh = Array.from({ length: N + 1 }, newUuid);
    for (const u of fresh) await peer.send(heartbeat(u), s.port);
    await until(() => s.engine.counters.heartbeats === 2 * N + 2, 'the second round');
    expect(s.engine.deviceCount).toBe(N);
    expect(s.engine.counters.drops['device-limit']).toBe(2);
    expect(fresh.filter((u) => s.engine.localRoute(hex(u)) !== null)).toHaveLength(N);
  });
});

describe('connection limits', () => {
  it('device port maxTcpConnections: N open, every further connection is closed at once and counted, the N keep working', async () => {
    const N = 4;
    const s = defer(await startDeviceServer({}, { maxTcpConnections: N }));
    const uuids = Array.from({ length: N }, newUuid);
    const conns = await Promise.all(uuids.map(() => RawTcp.open(s.port)));
    conns.forEach((c, i) => {
      defer(c);
      c.write(heartbeat(uuids[i]!));
    });
    await until(() => s.engine.tcpLinkCount === N, `${N} TCP links`);

    const extras = await Promise.all(Array.from({ length: 20 }, () => RawTcp.open(s.port).then(defer)));
    await within(Promise.all(extras.map((c) => c.closedP)), 2_000, 'the 20 extra connections to be closed');
    for (const c of extras) expect(c.bytes.length).toBe(0);
    expect(s.transport.counters).toMatchObject({ tcpConnections: N, tcpRefused: 20 });
    expect(s.engine.counters.drops['tcp-connection-limit']).toBe(20);

    for (const [i, u] of uuids.entries()) {
      await s.engine.push(hex(u), { kind: 'message', content: Buffer.from(`to ${i}`) });
    }
    await until(() => conns.every((c, i) => c.bytes.subarray(5).toString() === `to ${i}`), 'a push on each admitted link');

    // A freed slot is usable again, and only one.
    conns[0]!.destroy();
    await until(() => s.engine.tcpLinkCount === N - 1, 'the freed slot');
    const again = defer(await RawTcp.open(s.port));
    const refused = defer(await RawTcp.open(s.port));
    await within(refused.closedP, 2_000, 'the connection beyond the limit to be closed');
    again.write(heartbeat(newUuid()));
    await until(() => s.engine.tcpLinkCount === N, 'the new link');
    expect(again.closed).toBe(false);
    expect(s.transport.counters.tcpRefused).toBe(21);
  });

  it('pusher port maxConnections: N open, every further connection is closed at once and counted, the N keep working', async () => {
    const N = 3;
    const s = defer(await startPusherServer({ maxConnections: N }));
    const conns = await Promise.all(Array.from({ length: N }, () => RawPusherConnection.open(s.pusherPort).then(defer)));
    await until(() => s.pusher.openConnections === N, `${N} pusher connections`);
    const extras = await Promise.all(Array.from({ length: 10 }, () => RawPusherConnection.open(s.pusherPort).then(defer)));
    await Promise.all(extras.map((c) => c.waitClosed(2_000)));
    expect(s.pusher.counters).toMatchObject({ connections: N, refusedLimit: 10 });

    for (const c of conns) await c.write(noticeTask(newUuid()));
    for (const c of conns) expect(await c.waitReplies(1)).toEqual([0x00]);

    conns[0]!.destroy();
    await until(() => s.pusher.openConnections === N - 1, 'the freed slot');
    const again = defer(await RawPusherConnection.open(s.pusherPort));
    await again.write(noticeTask(newUuid()));
    expect(await again.waitReplies(1)).toEqual([0x00]);
    expect(s.pusher.counters.refusedLimit).toBe(10);
  });
});

describe('in-flight limits (PushModule app, real engine and store)', () => {
  it('pusher maxPipelined: a connection whose tasks cannot be stored stops being read; nothing is lost once they can', async () => {
    const MAX_PIPELINED = 64;
    const t = await h.start(pushAppModule({ send: { maxInFlight: 1, maxQueued: 100_000 }, pusher: { maxPipelined: MAX_PIPELINED } }));
    const pusher = t.app.get(PusherTransportStrategy);
    // The only in-flight slot is held by a push waiting for an ack that has not come yet.
    const held = await h.device(t, { uuid: uid(), autoAck: false });
    const holding = t.push.push({ uuid: held.uuid, kind: 'message', content: 'hold the slot', timeout: 15_000 });
    await until(() => t.push.stats().inFlight === 1 && held.inbox.length === 1, 'the slot to be held');

    const TASKS = 20_000;
    const c = await RawPusherConnection.open(t.pusherPort);
    h.defer(() => c.destroy());
    await c.write(Buffer.concat(Array.from({ length: TASKS }, () => noticeTask(newUuid()))));
    await until(() => pusher.connectionsInfo()[0]?.paused === true, 'the connection to be paused');
    await sleep(150);

    // One read chunk (64 KiB, ~3,120 tasks) may overshoot the limit; the rest of the 420 KB stays unread.
    const bound = MAX_PIPELINED + Math.ceil(65_536 / 21);
    expect(pusher.pipelined).toBeGreaterThanOrEqual(MAX_PIPELINED);
    expect(pusher.pipelined).toBeLessThanOrEqual(bound);
    expect(pusher.pipelined).toBeLessThan(TASKS);
    expect(t.push.stats().queued).toBe(pusher.pipelined);
    expect(c.replies).toEqual([]);
    expect(t.push.stats().store.devices).toBe(1);

    held.client.ack('message');
    const replies = await c.waitReplies(TASKS, 20_000);
    expect(replies.every((r) => r === 0x00)).toBe(true);
    expect((await holding)[0]).toMatchObject({ status: 'success' });
    expect(pusher.counters.peakPipelined).toBeLessThanOrEqual(bound);
    expect(pusher.counters.pauses).toBeGreaterThanOrEqual(1);
    expect(t.push.stats().store.devices).toBe(TASKS + 0);
  });

  it('send.maxInFlight / maxQueued: beyond both, pushes fail as "overloaded" (pusher: 0xff) and nothing is stored', async () => {
    const t = await h.start(pushAppModule({ send: { maxInFlight: 2, maxQueued: 3 } }));
    const a = await h.device(t, { uuid: uid(), autoAck: false });
    const b = await h.device(t, { uuid: uid(), autoAck: false });
    const holds = [a, b].map((d) => t.push.push({ uuid: d.uuid, kind: 'notice', timeout: 15_000 }));
    await until(() => t.push.stats().inFlight === 2, 'both slots held');

    const targets = Array.from({ length: 5 }, uid);
    const settled: (PushOutcome | undefined)[] = [];
    const pushes = targets.map((uuid, i) =>
      lastValueFrom(t.push.send({ uuid, kind: 'notice' }).pipe(toArray())).then((o) => (settled[i] = o[0])),
    );
    await until(() => settled[3] !== undefined && settled[4] !== undefined, 'the two pushes beyond the queue to fail');
    expect(settled[3]).toMatchObject({ status: 'failure', reason: 'overloaded' });
    expect(settled[4]).toMatchObject({ status: 'failure', reason: 'overloaded' });
    expect(settled.slice(0, 3)).toEqual([undefined, undefined, undefined]);
    expect(t.push.stats()).toMatchObject({ inFlight: 2, queued: 3 });

    // The pusher port shares the limit: a server-side refusal, 0xff.
    const c = await RawPusherConnection.open(t.pusherPort);
    h.defer(() => c.destroy());
    const refusedOnPort = newUuid();
    await c.write(noticeTask(refusedOnPort));
    expect(await c.waitReplies(1)).toEqual([0xff]);
    for (const u of [targets[3]!, targets[4]!, hex(refusedOnPort)]) expect(await t.push.inspect(u)).toBeNull();

    // One ack frees one slot: the queue drains in order, every queued push is stored.
    a.client.ack('notice');
    await Promise.all(pushes);
    expect(settled.slice(0, 3).map((o) => o?.status)).toEqual(['offline', 'offline', 'offline']);
    for (const u of targets.slice(0, 3)) expect((await t.push.inspect(u))?.pending?.notice).toBeGreaterThan(0);
    b.client.ack('notice');
    expect((await Promise.all(holds)).map((o) => o[0]!.status)).toEqual(['success', 'success']);
    expect(t.push.stats()).toMatchObject({ inFlight: 0, queued: 0 });
  });
});

describe('offline store limits (memory store)', () => {
  it('maxBytes / maxDevices: a push past either is a failure "store-full" (pusher: 0xff), nothing is stored or sent', async () => {
    const t = await h.start(pushAppModule({ store: { type: 'memory', options: { maxBytes: 1_000, maxDevices: 4 } } }));
    const [A, B, C, E, F] = Array.from({ length: 5 }, uid);
    const bytes = (n: number) => Buffer.alloc(n, 0x61);
    const one = async (req: Parameters<typeof t.push.push>[0]) => (await t.push.push(req))[0]!;

    expect(await one({ uuid: A, kind: 'message', content: bytes(500) })).toMatchObject({ status: 'offline' });
    expect(await one({ uuid: B, kind: 'message', content: bytes(500) })).toMatchObject({ status: 'offline' });
    expect(t.push.stats().store).toMatchObject({ bytes: 1_000, devices: 2 });
    // Exactly at maxBytes: one byte more is refused.
    expect(await one({ uuid: C, kind: 'message', content: bytes(1) })).toMatchObject({ status: 'failure', reason: 'store-full' });
    expect(await t.push.inspect(C)).toBeNull();

    // A reachable device is not sent what could not be stored.
    const d = await h.device(t, { uuid: uid() });
    const sendsBefore = t.push.stats().engine.sends;
    expect(await one({ uuid: d.uuid, kind: 'message', content: 'x' })).toMatchObject({ status: 'failure', reason: 'store-full' });
    await sleep(100);
    expect(d.inbox).toEqual([]);
    expect(t.push.stats().engine.sends).toBe(sendsBefore);

    // The pusher port: 0xff, nothing stored; a notice (no content bytes) still fits.
    const c = await RawPusherConnection.open(t.pusherPort);
    h.defer(() => c.destroy());
    await c.write(messageTask(Buffer.from(C, 'hex'), bytes(1)));
    await c.write(noticeTask(Buffer.from(C, 'hex')));
    expect(await c.waitReplies(2)).toEqual([0xff, 0x00]);
    expect((await t.push.inspect(C))?.pending).toMatchObject({ message: null, notice: expect.any(Number) });
    expect(t.push.stats().store).toMatchObject({ bytes: 1_000, devices: 3 });

    // Replacing a pending message frees its bytes.
    expect(await one({ uuid: A, kind: 'message', content: bytes(400) })).toMatchObject({ status: 'offline' });
    expect(await one({ uuid: C, kind: 'message', content: bytes(100) })).toMatchObject({ status: 'offline' });
    expect(t.push.stats().store.bytes).toBe(1_000);

    // maxDevices: the 4th device fits, the 5th does not (service and port alike).
    expect(await one({ uuid: E, kind: 'notice' })).toMatchObject({ status: 'offline' });
    expect(await one({ uuid: F, kind: 'notice' })).toMatchObject({ status: 'failure', reason: 'store-full' });
    await c.write(noticeTask(Buffer.from(F, 'hex')));
    expect(await c.waitReplies(3)).toEqual([0xff, 0x00, 0xff]);
    expect(await t.push.inspect(F)).toBeNull();
    expect(t.push.stats().store).toMatchObject({ bytes: 1_000, devices: 4 });
    expect(t.app.get(PusherTransportStrategy).counters).toMatchObject({ errors: 2, accepted: 1 });
  });
});
