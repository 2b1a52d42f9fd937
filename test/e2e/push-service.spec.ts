import { Injectable } from '@nestjs/common';
import { lastValueFrom, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { OnPushOutcome } from '../../lib/decorators/push-handler.decorator.js';
import { PushDispatcher } from '../../lib/dispatch/push-dispatcher.js';
import { PushRequestError } from '../../lib/errors/push-request.error.js';
import type { PushOutcome } from '../../lib/interfaces/push-outcome.interface.js';
import type { PushRequest } from '../../lib/interfaces/push-request.interface.js';
import { PushService } from '../../lib/push.service.js';
import { OfflineStore } from '../../lib/store/offline-store.js';
import { delay, Harness, md5hex, PushEvents, pushAppModule, texts, uid, until } from '../fixtures/push-app.js';

const h = new Harness();
afterEach(() => h.close());

const byUuid = (outcomes: PushOutcome[]) => Object.fromEntries(outcomes.map((o) => [o.uuid, o]));

describe('PushService.send(): outcomes', () => {
  it.each(['udp', 'tcp'] as const)('success after the device acks over %s, with an ordered timeline', async (transport) => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const events = t.app.get(PushEvents);
    const d = await h.device(t, { uuid: uid(), transport });
    const before = Date.now();

    const outcomes = await t.push.push({ uuid: d.uuid, kind: 'message', content: { hello: 'world' } });
    const after = Date.now();

    expect(outcomes).toHaveLength(1);
    const o = outcomes[0]!;
    expect(o).toMatchObject({ uuid: d.uuid, status: 'success', kind: 'message', transport, node: 'local', source: 'service' });
    expect(o.reason).toBeUndefined();
    expect(o.version).toBeGreaterThan(0);
    const { accepted, sent, acked } = o.timeline;
    expect(accepted).toBeGreaterThanOrEqual(before);
    expect(sent).toBeGreaterThanOrEqual(accepted!);
    expect(acked).toBeGreaterThanOrEqual(sent!);
    expect(acked).toBeLessThanOrEqual(after);
    // objects are JSON-encoded; the device acked exactly once and the store is clear
    expect(texts(d)).toEqual(['{"hello":"world"}']);
    expect(d.client.counters.acked).toBe(1);
    expect((await t.push.inspect(d.uuid))?.pending).toBeNull();
    expect(events.acks).toEqual([expect.objectContaining({ uuid: d.uuid, kind: 'message', version: o.version })]);
    expect(events.outcomes).toEqual([o]);
    // Settled before its deadline: out of the deadline queue at once, so an acked push is not kept alive for its timeout.
    expect((t.app.get(PushDispatcher) as unknown as { deadlines: { size: number } }).deadlines.size).toBe(0);
  });

  it('offline when the device is away, then delivered on its heartbeat and acked (ack handler gets the version)', async () => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const events = t.app.get(PushEvents);
    const uuid = uid();

    const [o] = await t.push.push({ uuid, kind: 'message', content: 'while you were away' });
    expect(o).toMatchObject({ uuid, status: 'offline', kind: 'message' });
    expect(o!.version).toBeGreaterThan(0);
    expect(o!.transport).toBeUndefined();
    expect(o!.timeline.accepted).toBeGreaterThan(0);
    expect(o!.timeline.sent).toBeUndefined();
    const stored = await t.push.inspect(uuid);
    expect(stored).toMatchObject({ uuid, online: false, reachable: false, pending: { messageVersion: o!.version } });
    expect(stored!.pending!.message!.toString()).toBe('while you were away');
    expect(events.acks).toEqual([]);

    const d = await h.device(t, { uuid });
    await until(() => events.acks.length > 0, 3_000, 'the ack of the stored message');
    expect(events.acks).toEqual([expect.objectContaining({ uuid, kind: 'message', version: o!.version })]);
    expect(texts(d)).toEqual(['while you were away']);
    expect((await t.push.inspect(uuid))?.pending).toBeNull();
  });

  it('timeout when the device never acks; still pending; a late ack still fires the ack handler', async () => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const events = t.app.get(PushEvents);
    const d = await h.device(t, { uuid: uid(), autoAck: false });

    const started = Date.now();
    const [o] = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'ack me later', timeout: 200 });
    const elapsed = Date.now() - started;

    expect(o).toMatchObject({ uuid: d.uuid, status: 'timeout', transport: 'udp', kind: 'message' });
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(2_000);
    expect(o!.timeline.sent).toBeGreaterThanOrEqual(o!.timeline.accepted!);
    expect(o!.timeline.acked).toBeUndefined();
    expect(texts(d)).toEqual(['ack me later']);
    const pending = await t.push.inspect(d.uuid);
    expect(pending).toMatchObject({ online: true, reachable: true, pending: { messageVersion: o!.version } });
    expect(events.acks).toEqual([]);

    d.client.ack('message');
    await until(() => events.acks.length > 0, 3_000, 'the late ack');
    expect(events.acks).toEqual([expect.objectContaining({ uuid: d.uuid, kind: 'message', version: o!.version })]);
    expect((await t.push.inspect(d.uuid))?.pending).toBeNull();
  });

  it("replaced: a newer message takes the place of an unacked one before its timeout", async () => {
    const t = await h.start(pushAppModule());
    const d = await h.device(t, { uuid: uid(), autoAck: false });

    const first = lastValueFrom(t.push.send({ uuid: d.uuid, kind: 'message', content: 'A', timeout: 10_000 }));
    await until(() => texts(d).length === 1, 3_000, 'A to reach the device');
    const started = Date.now();
    const second = lastValueFrom(t.push.send({ uuid: d.uuid, kind: 'message', content: 'B', timeout: 5_000 }));

    const a = await first;
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(a).toMatchObject({ uuid: d.uuid, status: 'replaced', kind: 'message', transport: 'udp' });
    expect(a.timeline.sent).toBeDefined();
    expect(a.timeline.acked).toBeUndefined();

    await until(() => texts(d).length === 2, 3_000, 'B to reach the device');
    expect(texts(d)).toEqual(['A', 'B']);
    expect((await t.push.inspect(d.uuid))?.pending?.message?.toString()).toBe('B');
    // A v1 ack names no version: the first one pays off A's transmission, the second clears B.
    d.client.ack('message');
    d.client.ack('message');
    const b = await second;
    expect(b).toMatchObject({ status: 'success', kind: 'message' });
    expect(b.version).toBeGreaterThan(a.version!);
  });

  it('multi-target: one outcome per target with mixed statuses, then completes', async () => {
    const t = await h.start(pushAppModule());
    const d = await h.device(t, { uuid: uid() });
    const ghost = uid();

    const outcomes = await t.push.push({ uuids: [d.uuid.toUpperCase(), ghost, 'not-a-uuid'], kind: 'message', content: 'hi all' });

    expect(outcomes).toHaveLength(3);
    const by = byUuid(outcomes);
    expect(by[d.uuid]).toMatchObject({ status: 'success', transport: 'udp' });
    expect(by[ghost]).toMatchObject({ status: 'offline', kind: 'message' });
    expect(by[ghost]!.version).toBeGreaterThan(0);
    expect(by['not-a-uuid']).toMatchObject({ status: 'failure', reason: 'invalid-uuid', kind: 'message', timeline: {} });
    expect(by['not-a-uuid']!.version).toBeUndefined();
    expect(texts(d)).toEqual(['hi all']);
    expect((await t.push.inspect(ghost))?.pending?.message?.toString()).toBe('hi all');
  });

  it('key and keys targets reach the device whose uuid is MD5(key)', async () => {
    const t = await h.start(pushAppModule());
    const alice = await h.device(t, { key: 'alice' });
    const bob = await h.device(t, { key: 'bob', transport: 'tcp' });
    expect(alice.uuid).toBe(md5hex('alice'));

    const [one] = await t.push.push({ key: 'alice', kind: 'message', content: 'for alice' });
    expect(one).toMatchObject({ uuid: md5hex('alice'), status: 'success' });

    const both = await t.push.push({ keys: ['alice', 'bob', ''], kind: 'message', content: 'for everyone' });
    const by = byUuid(both);
    expect(both).toHaveLength(3);
    expect(by[md5hex('alice')]).toMatchObject({ status: 'success', transport: 'udp' });
    expect(by[md5hex('bob')]).toMatchObject({ status: 'success', transport: 'tcp' });
    expect(by['']).toMatchObject({ status: 'failure', reason: 'invalid-uuid' });
    expect(texts(alice)).toEqual(['for alice', 'for everyone']);
    expect(texts(bob)).toEqual(['for everyone']);
  });

  it("ack: 'none' is a success once written, without waiting for an ack", async () => {
    const t = await h.start(pushAppModule());
    const d = await h.device(t, { uuid: uid(), autoAck: false });

    const [o] = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'fire and forget', ack: 'none', timeout: 10_000 });
    expect(o).toMatchObject({ status: 'success', transport: 'udp' });
    expect(o!.timeline.sent).toBeGreaterThanOrEqual(o!.timeline.accepted!);
    expect(o!.timeline.acked).toBeUndefined();
    await until(() => texts(d).length === 1, 3_000, 'the message');
    expect(d.client.counters.acked).toBe(0);
    expect(t.push.stats().inFlight).toBe(0);

    // ack: 'none' to an unreachable device is still 'offline'
    const [away] = await t.push.push({ uuid: uid(), kind: 'notice', ack: 'none' });
    expect(away).toMatchObject({ status: 'offline' });
  });

  it('notice kind: delivered and acked', async () => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const d = await h.device(t, { uuid: uid(), transport: 'tcp' });
    const [o] = await t.push.push({ uuid: d.uuid, kind: 'notice' });
    expect(o).toMatchObject({ status: 'success', kind: 'notice', transport: 'tcp' });
    expect(d.inbox.map((m) => m.kind)).toEqual(['notice']);
    expect(t.app.get(PushEvents).acks).toEqual([expect.objectContaining({ kind: 'notice', version: o!.version })]);
  });

  it('category kind: 64-bit bigint masks go out intact, pending bits are OR-ed, an ack of the union settles both pushes', async () => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const events = t.app.get(PushEvents);
    const acking = await h.device(t, { uuid: uid() });
    const high = (1n << 63n) | (1n << 40n) | 1n;

    const [o] = await t.push.push({ uuid: acking.uuid, kind: 'category', mask: high });
    expect(o).toMatchObject({ status: 'success', kind: 'category' });
    expect(acking.inbox.filter((m) => m.kind === 'category').map((m) => m.mask)).toEqual([high]);
    expect(events.acks).toEqual([expect.objectContaining({ kind: 'category', mask: high, remaining: 0n })]);

    const manual = await h.device(t, { uuid: uid(), autoAck: false });
    const first = lastValueFrom(t.push.send({ uuid: manual.uuid, kind: 'category', mask: 1n, timeout: 5_000 }));
    await until(() => manual.inbox.length === 1, 3_000, 'the first category frame');
    const second = lastValueFrom(t.push.send({ uuid: manual.uuid, kind: 'category', mask: 1n << 62n, timeout: 5_000 }));
    await until(() => manual.inbox.length === 2, 3_000, 'the second category frame');
    expect(manual.inbox.map((m) => m.mask)).toEqual([1n, 1n | (1n << 62n)]);
    expect((await t.push.inspect(manual.uuid))?.pending?.category).toBe(1n | (1n << 62n));

    manual.client.ack('category', 1n | (1n << 62n));
    expect([(await first).status, (await second).status]).toEqual(['success', 'success']);
    expect((await t.push.inspect(manual.uuid))?.pending).toBeNull();
  });
});

describe('PushService.send(): Observable semantics', () => {
  it('is cold: nothing is stored or sent before subscribe, and each subscription sends again', async () => {
    const t = await h.start(pushAppModule());
    const store = t.app.get(OfflineStore);
    const d = await h.device(t, { uuid: uid() });
    const ghost = uid();

    const toDevice = t.push.send({ uuid: d.uuid, kind: 'message', content: 'cold' });
    const toGhost = t.push.send({ uuid: ghost, kind: 'notice' });
    // Nothing signals "nothing happened": give a lazy implementation time to misbehave.
    await delay(50);
    expect(t.push.stats().engine.pushes).toBe(0);
    expect(t.push.stats().engine.sends).toBe(0);
    expect(store.stats().devices).toBe(0);
    expect(await t.push.inspect(ghost)).toBeNull();
    expect(d.inbox).toEqual([]);

    const a = await lastValueFrom(toDevice);
    const b = await lastValueFrom(toDevice);
    expect([a.status, b.status]).toEqual(['success', 'success']);
    expect(b.version).toBeGreaterThan(a.version!);
    expect(texts(d)).toEqual(['cold', 'cold']);

    const g1 = await lastValueFrom(toGhost);
    expect(g1.status).toBe('offline');
    expect(store.stats().devices).toBe(1);
    const g2 = await lastValueFrom(toGhost);
    expect(g2.version).toBeGreaterThan(g1.version!);
    expect(t.push.stats().engine.pushes).toBe(4);
  });

  it('unsubscribing stops waiting; the push is not un-sent and its outcome still reaches @OnPushOutcome', async () => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const events = t.app.get(PushEvents);
    const d = await h.device(t, { uuid: uid(), autoAck: false });

    const seen: PushOutcome[] = [];
    let completed = false;
    const sub = t.push
      .send({ uuid: d.uuid, kind: 'message', content: 'x', timeout: 150 })
      .subscribe({ next: (o) => seen.push(o), complete: () => (completed = true) });
    await until(() => texts(d).length === 1, 3_000, 'the message');
    sub.unsubscribe();

    await until(() => events.outcomes.length === 1, 3_000, 'the outcome handler');
    expect(events.outcomes[0]).toMatchObject({ uuid: d.uuid, status: 'timeout' });
    expect(seen).toEqual([]);
    expect(completed).toBe(false);
    expect((await t.push.inspect(d.uuid))?.pending?.message?.toString()).toBe('x');
  });

  it('invalid payloads become failure outcomes and never touch the store', async () => {
    const t = await h.start(pushAppModule({}, { providers: [PushEvents] }));
    const store = t.app.get(OfflineStore);
    const d = await h.device(t, { uuid: uid() });
    const ghost = uid();
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const storeBefore = store.stats();
    const engineBefore = t.push.stats().engine;

    const cases: [Partial<PushRequest>, string][] = [
      [{ kind: 'message', content: Buffer.alloc(501, 0x61) }, 'payload-too-large'],
      [{ kind: 'message', content: 'é'.repeat(251) }, 'payload-too-large'], // 502 UTF-8 bytes
      [{ kind: 'message', content: { text: 'x'.repeat(600) } }, 'payload-too-large'],
      [{ kind: 'message', content: '' }, 'empty-payload'],
      [{ kind: 'message', content: Buffer.alloc(0) }, 'empty-payload'],
      [{ kind: 'message', content: circular }, 'invalid-payload'],
      [{ kind: 'category', mask: 0n }, 'invalid-mask'],
      [{ kind: 'category', mask: -1n }, 'invalid-mask'],
      [{ kind: 'category', mask: 1n << 64n }, 'invalid-mask'],
    ];
    for (const [payload, reason] of cases) {
      const outcomes = await t.push.push({ uuids: [d.uuid, ghost], ...payload } as PushRequest);
      expect(outcomes, reason).toEqual([
        expect.objectContaining({ uuid: d.uuid, status: 'failure', reason, timeline: {} }),
        expect.objectContaining({ uuid: ghost, status: 'failure', reason, timeline: {} }),
      ]);
      expect(outcomes.every((o) => o.version === undefined)).toBe(true);
    }

    expect(store.stats()).toEqual(storeBefore);
    expect(await t.push.inspect(ghost)).toBeNull();
    expect((await t.push.inspect(d.uuid))?.pending).toBeNull();
    expect(t.push.stats().engine.pushes).toBe(engineBefore.pushes);
    expect(t.push.stats().engine.sends).toBe(engineBefore.sends);
    expect(t.push.stats().outcomes.failure).toBe(cases.length * 2);
    expect(t.app.get(PushEvents).outcomes).toHaveLength(cases.length * 2);

    // the limit itself is allowed
    const [ok] = await t.push.push({ uuid: d.uuid, kind: 'message', content: Buffer.alloc(500, 0x62) });
    expect(ok).toMatchObject({ status: 'success' });
  });

  it('an invalid request errors the Observable with PushRequestError (on subscribe, storing nothing)', async () => {
    const t = await h.start(pushAppModule());
    const store = t.app.get(OfflineStore);
    const u = uid();
    const bad: [unknown, RegExp][] = [
      [{ kind: 'notice' }, /exactly one target.*got none/],
      [{ uuid: u, key: 'alice', kind: 'notice' }, /exactly one target.*\(got uuid, key\)/],
      [{ uuids: [u], broadcast: true, kind: 'notice' }, /exactly one target.*\(got uuids, broadcast\)/],
      [{ uuid: u, kind: 'sms' }, /unknown kind sms/],
      [{ uuid: u, kind: 'notice', timeout: -1 }, /timeout/],
      [{ uuid: u, kind: 'notice', timeout: Number.NaN }, /timeout/],
      [{ uuid: u, kind: 'notice', timeout: Number.POSITIVE_INFINITY }, /timeout/],
      [{ uuid: u, kind: 'notice', timeout: 2 ** 31 }, /timeout/],
      [{ uuid: u, kind: 'notice', timeout: '100' }, /timeout/],
      [{ uuid: u, kind: 'notice', ack: 'maybe' }, /ack/],
    ];
    for (const [request, message] of bad) {
      const obs = t.push.send(request as PushRequest); // does not throw here: errors are delivered on subscribe
      const err = await lastValueFrom(obs.pipe(toArray())).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, JSON.stringify(request, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v))).toBeInstanceOf(PushRequestError);
      expect((err as Error).message).toMatch(message);
    }
    expect(store.stats().devices).toBe(0);
    expect(t.push.stats().engine.pushes).toBe(0);
  });
});

@Injectable()
class InFlightProbe {
  max = 0;
  samples = 0;
  constructor(private readonly push: PushService) {}

  @OnPushOutcome()
  sample(): void {
    this.samples++;
    this.max = Math.max(this.max, this.push.stats().inFlight);
  }
}

describe('PushService.send(): backpressure', () => {
  it('send.maxInFlight bounds pushes awaiting outcomes; a larger send waits for slots and still reports every target', async () => {
    const t = await h.start(pushAppModule({ send: { maxInFlight: 2 } }, { providers: [InFlightProbe] }));
    const probe = t.app.get(InFlightProbe);
    const devices = await Promise.all(Array.from({ length: 6 }, () => h.device(t, { uuid: uid(), autoAck: false })));

    let polled = 0;
    const timer = setInterval(() => (polled = Math.max(polled, t.push.stats().inFlight)), 1);
    h.defer(() => clearInterval(timer));

    const started = Date.now();
    const outcomes = await t.push.push({ uuids: devices.map((d) => d.uuid), kind: 'message', content: 'slow', timeout: 150 });
    const elapsed = Date.now() - started;
    clearInterval(timer);

    expect(outcomes.map((o) => o.status)).toEqual(Array(6).fill('timeout'));
    expect(new Set(outcomes.map((o) => o.uuid))).toEqual(new Set(devices.map((d) => d.uuid)));
    expect(probe.samples).toBe(6);
    expect(Math.max(probe.max, polled)).toBeLessThanOrEqual(2);
    expect(probe.max).toBe(2); // the limit was reached, so the bound above means something
    // three waves of two: the third pair cannot be accepted before two timeouts have passed
    expect(elapsed).toBeGreaterThanOrEqual(2 * 150);
    const accepted = outcomes.map((o) => o.timeline.accepted!).sort((x, y) => x - y);
    expect(accepted[5]! - accepted[0]!).toBeGreaterThanOrEqual(2 * 150 - 5);
    expect(t.push.stats()).toMatchObject({ inFlight: 0, queued: 0 });
  });

  it('beyond send.maxQueued waiting callers, a push fails fast as overloaded instead of queueing', async () => {
    const t = await h.start(pushAppModule({ send: { maxInFlight: 1, maxQueued: 0 } }));
    const d = await h.device(t, { uuid: uid(), autoAck: false });
    const holder = lastValueFrom(t.push.send({ uuid: d.uuid, kind: 'notice', timeout: 300 }));
    await until(() => t.push.stats().inFlight === 1, 2_000, 'the slot to be taken');

    const [refused] = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'no room' });
    expect(refused).toMatchObject({ status: 'failure', reason: 'overloaded', timeline: {} });
    expect((await t.push.inspect(d.uuid))?.pending?.message).toBeNull(); // nothing stored
    expect((await holder).status).toBe('timeout');

    // once the slot is free, the same push goes through
    const [later] = await t.push.push({ uuid: d.uuid, kind: 'message', content: 'room now', ack: 'none' });
    expect(later).toMatchObject({ status: 'success' });
  });
});

describe('PushService.inspect() and stats()', () => {
  it('reports per-device status and node-wide counters', async () => {
    const t = await h.start(pushAppModule({ nodeId: 'node-a' }));
    const before = Date.now();
    const u = await h.device(t, { uuid: uid(), appId: 7 });
    const tc = await h.device(t, { uuid: uid(), transport: 'tcp', autoAck: false });
    const ghost = uid();

    const iu = await t.push.inspect(u.uuid.toUpperCase());
    expect(iu).toMatchObject({ uuid: u.uuid, node: 'node-a', online: true, reachable: true, transport: 'udp', address: '127.0.0.1', appId: 7, pending: null });
    expect(iu!.port).toBeGreaterThan(0);
    expect(iu!.lastSeen).toBeGreaterThanOrEqual(before);
    expect(iu!.lastSeen).toBeLessThanOrEqual(Date.now());
    expect(await t.push.inspect(Buffer.from(u.uuid, 'hex'))).toMatchObject({ uuid: u.uuid });
    expect(await t.push.inspect(uid())).toBeNull();

    // a push waiting for its ack is in flight
    const notice = lastValueFrom(t.push.send({ uuid: tc.uuid, kind: 'notice', timeout: 5_000 }));
    await until(() => tc.inbox.length === 1, 3_000, 'the notice');
    expect(t.push.stats()).toMatchObject({ inFlight: 1, queued: 0 });
    tc.client.ack('notice');
    expect(await notice).toMatchObject({ status: 'success', transport: 'tcp' });

    await t.push.push({ uuid: tc.uuid, kind: 'message', content: 'held', ack: 'none' });
    await t.push.push({ uuid: ghost, kind: 'category', mask: 6n });
    const itc = await t.push.inspect(tc.uuid);
    expect(itc).toMatchObject({ online: true, reachable: true, transport: 'tcp', address: '127.0.0.1', pending: { notice: 0, category: 0n } });
    expect(itc!.pending!.message!.toString()).toBe('held');
    expect(itc!.pending!.messageVersion).toBeGreaterThan(0);
    expect(await t.push.inspect(ghost)).toMatchObject({ online: false, reachable: false, transport: null, address: null, port: null, pending: { category: 6n } });

    await t.push.tag(u.uuid, ['news', 'sport']);
    await t.push.tag(tc.uuid, ['news']);
    expect((await t.push.tagsOf(u.uuid)).sort()).toEqual(['news', 'sport']);

    const s = t.push.stats();
    expect(s).toMatchObject({
      node: 'node-a',
      devices: 2,
      tcpLinks: 1,
      inFlight: 0,
      queued: 0,
      tags: 3,
      outcomes: { success: 2, offline: 1, timeout: 0, failure: 0, replaced: 0 },
      store: { devices: 2 },
    });
    expect(s.engine.heartbeats).toBeGreaterThanOrEqual(2);
    expect(s.engine.pushes).toBe(3);
    expect(s.engine.online).toBe(2);
    expect(s.store.bytes).toBe(4);

    await t.push.untag(u.uuid);
    expect(t.push.stats().tags).toBe(1);
  });
});
