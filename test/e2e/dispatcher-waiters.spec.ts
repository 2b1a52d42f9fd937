import type { Subscription } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { PushDispatcher } from '../../lib/dispatch/push-dispatcher.js';
import type { PushOutcome } from '../../lib/interfaces/push-outcome.interface.js';
import type { PushPayload, PushRequest } from '../../lib/interfaces/push-request.interface.js';
import type { PendingWrite } from '../../lib/store/offline-store.js';
import { Harness, pushAppModule, uid, until } from '../fixtures/push-app.js';

// The dispatcher keeps each device's waiting pushes in a linked list (head in a
// Map): these exercise its removals from the head, the middle and the tail, and
// outcome callbacks that change the list while an ack walks it.

const h = new Harness();
afterEach(() => h.close());

interface Internals {
  waitingDevices: number;
  deadlines: { size: number };
}

describe('PushDispatcher: waiting pushes of one device', () => {
  it('settles waiters from the head, the middle and the tail of one device list, and leaves nothing behind', async () => {
    const t = await h.start(pushAppModule({}));
    const d = await h.device(t, { uuid: uid(), autoAck: false });
    const outcomes: PushOutcome[] = [];
    const subs: Subscription[] = [];
    const send = (req: PushPayload) => subs.push(t.push.send({ uuid: d.uuid, timeout: 5_000, ...req } as PushRequest).subscribe((o) => outcomes.push(o)));

    // List: notice, message A, category 1, notice, category 2, message B (replaces A: a middle removal).
    send({ kind: 'notice' });
    send({ kind: 'message', content: 'A' });
    send({ kind: 'category', mask: 1n });
    send({ kind: 'notice' });
    send({ kind: 'category', mask: 2n });
    await until(() => outcomes.length === 0 && d.inbox.length === 5, 3_000, 'five frames');
    send({ kind: 'message', content: 'B' });
    await until(() => outcomes.length === 1, 3_000, 'the replaced outcome');
    expect(outcomes[0]).toMatchObject({ kind: 'message', status: 'replaced' });

    const internals = t.app.get(PushDispatcher) as unknown as Internals;
    expect(internals.waitingDevices).toBe(1);

    // Both notices (head and middle) settle on one notice ack.
    // A real device acks each frame: the first notice ack answers the older notice frame (it proves
    // nothing about the newer one), the second settles both notice pushes (head and middle) at once.
    d.client.ack('notice');
    d.client.ack('notice');
    await until(() => outcomes.length === 3, 3_000, 'the notice outcomes');
    expect(outcomes.slice(1).map((o) => `${o.kind}:${o.status}`)).toEqual(['notice:success', 'notice:success']);

    // Message B is now the tail (the first message ack answers A's frame).
    d.client.ack('message');
    d.client.ack('message');
    await until(() => outcomes.length === 4, 3_000, 'the message outcome');
    expect(outcomes[3]).toMatchObject({ kind: 'message', status: 'success' });

    // Appending after a tail removal links behind the new tail: this notice is found by its ack.
    send({ kind: 'notice' });
    await until(() => d.inbox.length === 7, 3_000, 'the third notice frame');
    d.client.ack('notice');
    await until(() => outcomes.length === 5, 3_000, 'the third notice outcome');
    expect(outcomes[4]).toMatchObject({ kind: 'notice', status: 'success' });

    // An ack of bit 2 only settles the second category push; bit 1 is still pending.
    d.client.ack('category', 2n);
    await until(() => outcomes.length === 6, 3_000, 'the second category outcome');
    expect(outcomes[5]).toMatchObject({ kind: 'category', status: 'success' });
    expect(internals.waitingDevices).toBe(1);

    d.client.ack('category', 1n);
    await until(() => outcomes.length === 7, 3_000, 'the first category outcome');
    expect(internals.waitingDevices).toBe(0);
    expect(internals.deadlines.size).toBe(0);
    for (const s of subs) s.unsubscribe();
  });

  it('an outcome callback that settles the next waiter mid-walk does not cut the walk short', async () => {
    const t = await h.start(pushAppModule({}));
    const d = await h.device(t, { uuid: uid(), autoAck: false });
    const dispatcher = t.app.get(PushDispatcher);
    const seen: string[] = [];
    // The dispatcher itself: with the memory store a dispatch is stored (and replaces) synchronously,
    // so the replacement below happens inside the ack's walk of the list.
    const watch = (label: string, write: PendingWrite, then?: () => void) =>
      dispatcher.dispatchThen(d.uuid, write, { source: 'service', timeoutMs: 5_000 }, undefined, (o) => {
        seen.push(`${label}:${o.status}`);
        then?.();
      });

    // List: notice 1, message A, notice 2. When notice 1 settles, its callback
    // pushes message B, which replaces A (the waiter after notice 1) at once.
    watch('n1', { kind: 'notice' }, () => watch('B', { kind: 'message', content: Buffer.from('B') }));
    watch('A', { kind: 'message', content: Buffer.from('A') });
    watch('n2', { kind: 'notice' });
    await until(() => d.inbox.length === 3, 3_000, 'three frames');

    // Two notice frames, two acks: the second settles both notices in one walk of the list.
    d.client.ack('notice');
    d.client.ack('notice');
    await until(() => seen.length === 3, 3_000, 'three outcomes');
    // Notice 2 is reached although the waiter after notice 1 left the list during the walk.
    expect(seen).toEqual(['n1:success', 'A:replaced', 'n2:success']);

    await until(() => d.inbox.length === 4, 3_000, 'the frame of B');
    d.client.ack('message');
    d.client.ack('message');
    await until(() => seen.length === 4, 3_000, 'the outcome of B');
    expect(seen[3]).toBe('B:success');
    const internals = dispatcher as unknown as Internals;
    expect(internals.waitingDevices).toBe(0);
    expect(internals.deadlines.size).toBe(0);
  });

  it('a push made by an outcome callback during an ack is not settled by that ack', async () => {
    const t = await h.start(pushAppModule({}));
    const d = await h.device(t, { uuid: uid(), autoAck: false });
    const dispatcher = t.app.get(PushDispatcher);
    const seen: string[] = [];
    const watch = (label: string, then?: () => void) =>
      dispatcher.dispatchThen(d.uuid, { kind: 'notice' }, { source: 'service', timeoutMs: 5_000 }, undefined, (o) => {
        seen.push(`${label}:${o.status}`);
        then?.();
      });
    // Two notices waiting; when the first settles, its callback pushes a third notice (sent at once).
    watch('n1', () => watch('n3'));
    watch('n2');
    await until(() => d.inbox.length === 2, 3_000, 'two notice frames');
    d.client.ack('notice');
    d.client.ack('notice');
    await until(() => seen.length >= 2 && d.inbox.length === 3, 3_000, 'two outcomes and the third frame');
    await new Promise((r) => setTimeout(r, 50));
    // The ack answered the second frame: it settles n1 and n2, not n3, whose frame it never saw.
    expect(seen).toEqual(['n1:success', 'n2:success']);
    d.client.ack('notice');
    await until(() => seen.length === 3, 3_000, 'the outcome of n3');
    expect(seen[2]).toBe('n3:success');
  });

  it('app close settles every waiter of every device, in order, and empties the lists', async () => {
    const t = await h.start(pushAppModule({}));
    const a = await h.device(t, { uuid: uid(), autoAck: false });
    const b = await h.device(t, { uuid: uid(), autoAck: false });
    const seen: string[] = [];
    for (const [name, d] of [['a', a], ['b', b]] as const) {
      for (let i = 0; i < 3; i++) {
        t.push.send({ uuid: d.uuid, kind: 'category', mask: 1n << BigInt(i), timeout: 60_000 }).subscribe((o) => seen.push(`${name}${i}:${o.status}`));
      }
    }
    await until(() => a.inbox.length === 3 && b.inbox.length === 3, 3_000, 'six frames');
    const internals = t.app.get(PushDispatcher) as unknown as Internals;
    expect(internals.waitingDevices).toBe(2);
    await t.app.close();
    expect(seen).toEqual(['a0:timeout', 'a1:timeout', 'a2:timeout', 'b0:timeout', 'b1:timeout', 'b2:timeout']);
    expect(internals.waitingDevices).toBe(0);
  });
});
