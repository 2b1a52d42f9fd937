import { randomBytes } from 'node:crypto';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient, type DeviceMessage } from '../../lib/client/device.client.js';
import { PusherClient } from '../../lib/client/pusher.client.js';
import type { PushOutcome } from '../../lib/interfaces/push-outcome.interface.js';
import { ClusterNode, ensureBuilt } from '../fixtures/cluster-node/cluster-node.js';
import { startRedis, type TestRedis } from '../helpers/redis-server.js';

/**
 * Three nest-push nodes in separate processes (the built package) on one
 * real redis-server with AOF (appendfsync always). Messages are kept in queue
 * mode so "every accepted push is delivered" can be checked push by push.
 */
let redis: TestRedis;
const nodes: Record<'A' | 'B' | 'C', ClusterNode> = {} as never;
const cleanup: (() => unknown)[] = [];
const TIMEOUT_MS = 1500;

async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    let v: T | undefined;
    try {
      v = await fn();
      if (ok(v)) return v;
    } catch {
      // retry
    }
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function startNode(id: 'A' | 'B' | 'C', prefix: string): Promise<ClusterNode> {
  return ClusterNode.start(id, {
    REDIS_URL: redis.url,
    KEY_PREFIX: prefix,
    RETENTION: '1000:120000',
    TIMEOUT_MS: String(TIMEOUT_MS),
    HEARTBEAT_MS: '250',
    NODE_TIMEOUT_MS: '1000',
  });
}

const prefix = `e2e${randomBytes(3).toString('hex')}:`;

beforeAll(async () => {
  ensureBuilt();
  redis = await startRedis({ appendonly: true });
  const [a, b, c] = await Promise.all((['A', 'B', 'C'] as const).map((id) => startNode(id, prefix)));
  Object.assign(nodes, { A: a, B: b, C: c });
  for (const n of [a!, b!, c!]) await eventually(() => n.live(), (l) => l.join() === 'A,B,C', 5000, `${n.id} sees A,B,C`);
}, 40_000);

afterAll(async () => {
  await Promise.all(Object.values(nodes).map((n) => n?.close()));
  await redis?.dispose();
}, 20_000);

afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function device(node: ClusterNode, key: string, transport: 'udp' | 'tcp' = 'tcp'): DeviceClient {
  const d = new DeviceClient({ port: node.devicePort, key, transport, heartbeatIntervalMs: 0, reconnectInitialDelayMs: 60_000 });
  cleanup.push(() => d.close());
  return d;
}

/** Connects the device and waits until the cluster routes it to `node`. */
async function register(d: DeviceClient, node: ClusterNode, via: ClusterNode = nodes.A) {
  await d.connect();
  await eventually(() => via.route(d.uuid), (r) => r?.node === node.id, 3000, `route of ${d.uuid} on ${node.id}`);
}

function received(d: DeviceClient, kind: DeviceMessage['kind']): DeviceMessage[] {
  const got: DeviceMessage[] = [];
  d.messages.pipe(filter((m) => m.kind === kind)).subscribe((m) => got.push(m));
  return got;
}

describe('cluster: three node processes on one Redis', () => {
  it('push from A to a device registered on B: B transmits, the ack comes back to A (success, node B)', async () => {
    const d = device(nodes.B, 'e2e-b1');
    const got = received(d, 'message');
    await register(d, nodes.B);
    const [o] = await nodes.A.push({ uuid: d.uuid, kind: 'message', content: 'hello via B' });
    expect(o).toMatchObject({ status: 'success', node: 'B', transport: 'tcp', uuid: d.uuid, source: 'service' });
    expect(got.map((m) => m.content.toString())).toEqual(['hello via B']);
  });

  it('the pusher port works on every node: a task submitted on C for a device on B is delivered', async () => {
    const d = device(nodes.B, 'e2e-pusher');
    const got = received(d, 'message');
    await register(d, nodes.B);
    await nodes.C.outcomes();
    const pusher = new PusherClient({ port: nodes.C.pusherPort });
    cleanup.push(() => pusher.close());
    await pusher.push({ uuid: d.uuid, kind: 'message', content: 'task on C' });
    await eventually(async () => got.length, (n) => n === 1, 3000, 'device on B received the task');
    expect(got[0]!.content.toString()).toBe('task on C');
    const outcomes = await eventually(() => nodes.C.outcomes(), (l) => l.length > 0, 3000, 'outcome on C');
    expect(outcomes[0]).toMatchObject({ status: 'success', node: 'B', source: 'pusher' });
  });

  it('a device that moves from B to C: the next push from A follows the new route (success, node C)', async () => {
    const onB = device(nodes.B, 'e2e-mover');
    const gotB = received(onB, 'message');
    await register(onB, nodes.B);
    expect((await nodes.A.push({ uuid: onB.uuid, kind: 'message', content: 'on B' }))[0]).toMatchObject({ status: 'success', node: 'B' });
    await onB.close();
    const onC = device(nodes.C, 'e2e-mover');
    const gotC = received(onC, 'message');
    await register(onC, nodes.C);
    // B's late offline must not have clobbered C's route.
    await new Promise((r) => setTimeout(r, 100));
    expect((await nodes.A.route(onC.uuid))?.node).toBe('C');
    const [o] = await nodes.A.push({ uuid: onC.uuid, kind: 'message', content: 'on C' });
    expect(o).toMatchObject({ status: 'success', node: 'C' });
    expect(gotB.map((m) => m.content.toString())).toEqual(['on B']);
    expect(gotC.map((m) => m.content.toString())).toEqual(['on C']);
  });

  it('broadcast from A reaches the devices online on A, B and C', async () => {
    const ds = [device(nodes.A, 'e2e-bc-a'), device(nodes.B, 'e2e-bc-b', 'udp'), device(nodes.C, 'e2e-bc-c')];
    const gots = ds.map((d) => received(d, 'notice'));
    await register(ds[0]!, nodes.A);
    await register(ds[1]!, nodes.B);
    await register(ds[2]!, nodes.C);
    const outcomes = await nodes.A.push({ broadcast: true, kind: 'notice' });
    const mine = outcomes.filter((o) => ds.some((d) => d.uuid === o.uuid));
    expect(mine.map((o) => `${o.uuid}@${o.node}:${o.status}`).sort()).toEqual(
      [`${ds[0]!.uuid}@A:success`, `${ds[1]!.uuid}@B:success`, `${ds[2]!.uuid}@C:success`].sort(),
    );
    expect(gots.map((g) => g.length)).toEqual([1, 1, 1]);
  });

  it('tags are shared: tagged through B, a tag-filtered broadcast from A reaches the tagged devices on every node', async () => {
    const ds = [device(nodes.A, 'e2e-tag-a'), device(nodes.B, 'e2e-tag-b', 'udp'), device(nodes.C, 'e2e-tag-c'), device(nodes.C, 'e2e-tag-plain')];
    const gots = ds.map((d) => received(d, 'message'));
    for (const [i, d] of ds.entries()) await register(d, [nodes.A, nodes.B, nodes.C, nodes.C][i]!);
    const [a, b, c] = ds;
    await nodes.B.tag(a!.uuid, ['e2e-vip']);
    await nodes.B.tag(c!.uuid, ['e2e-vip', 'e2e-beta']);
    await nodes.C.tag(b!.uuid, ['e2e-beta']);
    expect((await nodes.A.tagsOf(c!.uuid)).sort()).toEqual(['e2e-beta', 'e2e-vip']);
    const vip = await nodes.A.push({ broadcast: { tags: ['e2e-vip'] }, kind: 'message', content: 'vip' });
    expect(vip.map((o) => `${o.uuid}@${o.node}:${o.status}`).sort()).toEqual([`${a!.uuid}@A:success`, `${c!.uuid}@C:success`].sort());
    const either = await nodes.A.push({ broadcast: { tags: ['e2e-vip', 'e2e-beta'] }, kind: 'message', content: 'either' });
    expect(either.map((o) => o.uuid).sort()).toEqual([a!.uuid, b!.uuid, c!.uuid].sort());
    await nodes.C.untag(c!.uuid, ['e2e-vip']);
    const after = await nodes.B.push({ broadcast: { tags: ['e2e-vip'] }, kind: 'message', content: 'after' });
    expect(after.map((o) => o.uuid)).toEqual([a!.uuid]);
    expect(gots.map((g) => g.map((m) => m.content.toString()))).toEqual([['vip', 'either', 'after'], ['either'], ['vip', 'either'], []]);
  });

  it('a tag-filtered broadcast over more devices held elsewhere than one lookup batch (256) reaches each once', async () => {
    const n = 300;
    const ds = Array.from({ length: n }, (_, i) => device(nodes.B, `e2e-many-${i}`, 'udp'));
    const counts = ds.map(() => 0);
    ds.forEach((d, i) => d.messages.pipe(filter((m) => m.kind === 'message')).subscribe(() => counts[i]!++));
    await Promise.all(ds.map((d) => d.connect()));
    await Promise.all(ds.map((d) => eventually(() => nodes.A.route(d.uuid), (r) => r?.node === 'B', 5000, `route of ${d.uuid}`)));
    await Promise.all(ds.map((d) => nodes.C.tag(d.uuid, ['e2e-many'])));
    const outcomes = await nodes.A.push({ broadcast: { tags: ['e2e-many'] }, kind: 'message', content: 'many' });
    expect(outcomes.map((o) => o.uuid).sort()).toEqual(ds.map((d) => d.uuid).sort());
    expect(outcomes.every((o) => o.status === 'success' && o.node === 'B')).toBe(true);
    await eventually(async () => counts.every((c) => c === 1), (ok) => ok, 3000, 'every device received it');
    expect(counts.every((c) => c === 1)).toBe(true);
  }, 30_000);

  it('Redis restarted (AOF, appendfsync always): a pending push survives and is delivered', async () => {
    const u = randomBytes(16).toString('hex');
    const [o] = await nodes.A.push({ uuid: u, kind: 'message', content: 'survives a Redis restart' });
    expect(o).toMatchObject({ status: 'offline' });
    await redis.kill();
    // While Redis is down, pushes are refused (nothing acknowledged that was not stored).
    const [refused] = await nodes.A.push({ uuid: u, kind: 'message', content: 'refused' });
    expect(refused).toMatchObject({ status: 'failure', reason: 'store-error' });
    const pusher = new PusherClient({ port: nodes.C.pusherPort });
    cleanup.push(() => pusher.close());
    const t0 = Date.now();
    await expect(pusher.push({ uuid: u, kind: 'message', content: 'refused too' })).rejects.toMatchObject({ name: 'PusherRejectedError', code: 0xff });
    expect(Date.now() - t0).toBeLessThan(1000);
    await redis.restart();
    const back = new DeviceClient({ port: nodes.B.devicePort, uuid: u, transport: 'tcp', heartbeatIntervalMs: 0, reconnectInitialDelayMs: 60_000 });
    cleanup.push(() => back.close());
    const got = firstValueFrom(back.messages.pipe(filter((m) => m.kind === 'message'), timeout(5000)));
    // The nodes reconnect by themselves (B accepts pushes again); the device's heartbeat loads its pending push.
    const probe = randomBytes(16).toString('hex');
    await eventually(() => nodes.B.push({ uuid: probe, kind: 'notice' }), (r) => r[0]?.status === 'offline', 5000, 'B stores again');
    await back.connect();
    expect((await got).content.toString()).toBe('survives a Redis restart');
    await eventually(() => nodes.A.push({ uuid: u, kind: 'notice' }), (r) => r[0]?.status === 'success' && r[0].node === 'B', 5000, 'pushes work again');
  });

  // Last: it kills B.
  it('SIGKILL B during a stream of pushes from A: in-flight pushes time out (no hang), every accepted push reaches the device on C', async () => {
    const onB = device(nodes.B, 'e2e-victim');
    const messages: string[] = [];
    onB.messages.pipe(filter((m) => m.kind === 'message')).subscribe((m) => messages.push(m.content.toString()));
    await register(onB, nodes.B);
    const pushes: Promise<PushOutcome>[] = [];
    const t0 = Date.now();
    for (let i = 0; i < 60; i++) {
      if (i === 20) void nodes.B.kill();
      pushes.push(nodes.A.push({ uuid: onB.uuid, kind: 'message', content: `m${i}` }).then((r) => r[0]!));
      await new Promise((r) => setTimeout(r, 15));
    }
    const outcomes = await Promise.all(pushes);
    // Nothing hangs: every outcome is back within the timeout (plus scheduling slack).
    expect(Date.now() - t0).toBeLessThan(60 * 15 + TIMEOUT_MS + 3000);
    expect(outcomes.slice(0, 15).every((o) => o.status === 'success' && o.node === 'B')).toBe(true);
    expect(outcomes.some((o) => o.status === 'timeout' && o.reason === 'node-unresponsive')).toBe(true);
    for (const o of outcomes) expect(['success', 'timeout', 'offline']).toContain(o.status);
    // Once A has found B gone (its gateway channel has no subscriber), pushes are offline at once.
    expect(outcomes.slice(40).map((o) => `${o.status}@${o.node}`)).toEqual(Array(20).fill('offline@A'));
    const accepted = outcomes.flatMap((o, i) => (o.status === 'failure' ? [] : [`m${i}`]));
    expect(accepted).toHaveLength(60);
    // The device re-registers on C and gets everything it had not acked yet.
    await onB.close();
    const onC = new DeviceClient({ port: nodes.C.devicePort, key: 'e2e-victim', transport: 'tcp', heartbeatIntervalMs: 0, reconnectInitialDelayMs: 60_000 });
    cleanup.push(() => onC.close());
    onC.messages.pipe(filter((m) => m.kind === 'message')).subscribe((m) => messages.push(m.content.toString()));
    await onC.connect();
    await eventually(async () => new Set(messages).size, (n) => n === 60, 8000, 'all 60 messages received');
    expect([...new Set(messages)].sort()).toEqual(accepted.sort());
    const live = await eventually(() => nodes.A.live(), (l) => !l.includes('B'), 3000, 'B left');
    expect(live).toEqual(['A', 'C']);
  });
});
