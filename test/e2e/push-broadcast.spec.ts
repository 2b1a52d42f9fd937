import { lastValueFrom, take, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { delay, Harness, PushEvents, pushAppModule, type TestApp, type TestDevice, texts, uid, until } from '../fixtures/push-app.js';

const h = new Harness();
afterEach(() => h.close());

const devicesOf = (t: TestApp, n: number, transport: 'udp' | 'tcp' = 'udp') =>
  Promise.all(Array.from({ length: n }, () => h.device(t, { uuid: uid(), transport })));
const uuidsOf = (outcomes: { uuid: string }[]) => outcomes.map((o) => o.uuid).sort();
const sorted = (...ds: TestDevice[]) => ds.map((d) => d.uuid).sort();

describe('PushService.send({ broadcast })', () => {
  it('reaches only online devices carrying one of the tags, each once', async () => {
    const t = await h.start(pushAppModule());
    const [a, b, c, plain] = await devicesOf(t, 4);
    const away = uid(); // tagged, never connected
    await t.push.tag(a!.uuid, ['vip']);
    await t.push.tag(b!.uuid, ['vip', 'beta']);
    await t.push.tag(c!.uuid, ['beta']);
    await t.push.tag(away, ['vip']);

    const vip = await t.push.push({ broadcast: { tags: ['vip'] }, kind: 'message', content: 'vip only' });
    expect(uuidsOf(vip)).toEqual(sorted(a!, b!));
    expect(vip.every((o) => o.status === 'success')).toBe(true);
    expect(texts(c!)).toEqual([]);
    expect(texts(plain!)).toEqual([]);
    expect(await t.push.inspect(away)).toBeNull(); // offline tagged devices are not targets (nothing stored for them)

    const either = await t.push.push({ broadcast: { tags: ['vip', 'beta'] }, kind: 'notice' });
    expect(uuidsOf(either)).toEqual(sorted(a!, b!, c!)); // b carries both tags, gets it once

    await t.push.untag(b!.uuid, ['vip']);
    const after = await t.push.push({ broadcast: { tags: ['vip'] }, kind: 'notice' });
    expect(uuidsOf(after)).toEqual(sorted(a!));

    expect(await t.push.push({ broadcast: { tags: ['nobody'] }, kind: 'notice' })).toEqual([]);
  });

  it('with a filter predicate (alone, or combined with tags), and to everyone online', async () => {
    const t = await h.start(pushAppModule());
    const [a, b, c, d] = await devicesOf(t, 4);
    const offline = uid();
    await t.push.push({ uuid: offline, kind: 'notice' }); // known to the store only: not online, not a broadcast target

    const picked = await t.push.push({ broadcast: { filter: (u) => u === a!.uuid || u === d!.uuid }, kind: 'message', content: 'picked' });
    expect(uuidsOf(picked)).toEqual(sorted(a!, d!));
    expect(texts(b!)).toEqual([]);

    await t.push.tag(b!.uuid, ['beta']);
    await t.push.tag(c!.uuid, ['beta']);
    const both = await t.push.push({ broadcast: { tags: ['beta'], filter: (u) => u !== b!.uuid }, kind: 'notice' });
    expect(uuidsOf(both)).toEqual(sorted(c!));

    const all = await t.push.push({ broadcast: true, kind: 'notice' });
    expect(uuidsOf(all)).toEqual(sorted(a!, b!, c!, d!));
    expect(all.every((o) => o.status === 'success')).toBe(true);
  });

  it('is paced by send.broadcastRate: outcomes are accepted over time, not at once', async () => {
    const rate = 20; // per second; the limiter's burst is rate / 10 = 2
    const n = 30;
    const t = await h.start(pushAppModule({ send: { broadcastRate: rate } }));
    await devicesOf(t, n);

    const outcomes = await t.push.push({ broadcast: true, kind: 'notice', ack: 'none' });

    expect(outcomes).toHaveLength(n);
    expect(outcomes.every((o) => o.status === 'success')).toBe(true);
    const accepted = outcomes.map((o) => o.timeline.accepted!).sort((x, y) => x - y);
    const spread = accepted[n - 1]! - accepted[0]!;
    const ideal = ((n - 2) / rate) * 1000; // 1400 ms
    expect(spread).toBeGreaterThanOrEqual(ideal * 0.7);
    expect(spread).toBeLessThan(ideal * 2.5);
  });

  it('unsubscribing mid-broadcast stops it: later devices never get it, already accepted pushes stand', async () => {
    const n = 12;
    const t = await h.start(pushAppModule({ send: { broadcastRate: 10 } }, { providers: [PushEvents] })); // burst 1, then one per 100 ms
    const events = t.app.get(PushEvents);
    const devices = await devicesOf(t, n);
    let sends = 0;
    const counting = t.push.deviceEvents.subscribe((e) => {
      if (e.type === 'sent') sends++;
    });
    h.defer(() => counting.unsubscribe());

    const firstThree = await lastValueFrom(t.push.send({ broadcast: true, kind: 'message', content: 'flash', ack: 'none' }).pipe(take(3), toArray()));
    const sentAtCancel = sends;
    expect(firstThree).toHaveLength(3);
    expect(sentAtCancel).toBeGreaterThanOrEqual(3);
    expect(sentAtCancel).toBeLessThanOrEqual(4);

    // At 10/s another 5 would go out in this window if the broadcast kept running.
    await delay(500);
    expect(sends).toBe(sentAtCancel);
    await until(() => devices.reduce((k, d) => k + texts(d).length, 0) === sentAtCancel, 2_000, 'the accepted pushes to arrive');
    const reached = devices.filter((d) => texts(d).length > 0).length;
    expect(reached).toBe(sentAtCancel);
    expect(reached).toBeLessThan(n);
    // the accepted ones still produced outcomes for the handlers
    expect(events.outcomes.length).toBe(sentAtCancel);
  });
});
