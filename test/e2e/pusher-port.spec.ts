import { connect, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PayloadTooLargeError } from '../../lib/errors/payload-too-large.error.js';
import { PushConfigError } from '../../lib/errors/push-config.error.js';
import type { PushSubmitter, SubmitCallback } from '../../lib/interfaces/push-submitter.interface.js';
import { encodePusherTask, PusherCmd, uuidFromKey, uuidToHex } from '../../lib/protocol/index.js';
import { PusherTransportStrategy } from '../../lib/server/pusher-transport.strategy.js';
import { RawPusherConnection, ScriptedSubmitter, startPusherOnly, startPusherServer, until } from '../helpers/pusher-server.js';
import { countPerTurn } from '../helpers/turns.js';

const uuidOf = (i: number) => uuidFromKey(`user-${i}`);
const hexOf = (i: number) => uuidToHex(uuidOf(i));
const notice = (i: number) => encodePusherTask({ cmd: PusherCmd.Notice, uuid: uuidOf(i) });
const message = (i: number, text: string | Buffer) => encodePusherTask({ cmd: PusherCmd.Message, uuid: uuidOf(i), content: Buffer.from(text) });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


describe('pusher port (TCP 9999): protocol.md section 5', () => {
  const cleanup: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  async function server(...args: Parameters<typeof startPusherServer>) {
    const s = await startPusherServer(...args);
    cleanup.push(() => s.close());
    return s;
  }
  async function raw(port: number) {
    const c = await RawPusherConnection.open(port);
    cleanup.push(() => c.destroy());
    return c;
  }

  it('accepts and stores each task kind, replying 0x00 only once stored', async () => {
    const s = await server();
    const c = await raw(s.pusherPort);
    await c.write(
      Buffer.concat([
        notice(1),
        encodePusherTask({ cmd: PusherCmd.Category, uuid: uuidOf(1), mask: 0b0101n, appId: 3 }),
        encodePusherTask({ cmd: PusherCmd.Category, uuid: uuidOf(1), mask: 0x8000000000000000n }),
        message(1, 'hello device'),
      ]),
    );
    expect(await c.waitReplies(4)).toEqual([0, 0, 0, 0]);
    const state = await s.store.read(hexOf(1));
    expect(state).not.toBeNull();
    expect(state!.notice).toBeGreaterThan(0);
    expect(state!.category).toBe(0x8000000000000005n);
    expect(state!.message?.toString()).toBe('hello device');
    expect(s.pusher.counters.accepted).toBe(4);
    expect(s.engine.counters.pushes).toBe(4);
    expect(await s.store.read(hexOf(2))).toBeNull();
  });

  it('1,000 pipelined tasks in one write: exactly 1,000 reply bytes, all 0x00, all stored', async () => {
    const s = await server();
    const c = await raw(s.pusherPort);
    const tasks = Buffer.concat(Array.from({ length: 1000 }, (_, i) => message(i, `msg ${i}`)));
    await c.write(tasks);
    const replies = await c.waitReplies(1000);
    expect(replies).toEqual(new Array(1000).fill(0));
    await sleep(30);
    expect(c.replies.length).toBe(1000);
    expect(c.closed).toBe(false);
    for (const i of [0, 1, 499, 998, 999]) expect((await s.store.read(hexOf(i)))?.message?.toString()).toBe(`msg ${i}`);
    expect(s.pusher.counters.accepted).toBe(1000);
  });

  it('keeps replies in task order when submits settle out of order; a rejected submit gets 0xff at its position', async () => {
    const N = 60;
    const K = 17;
    const sub = new ScriptedSubmitter((i) => ({ delayMs: (i * 7) % 13, fail: i === K ? new Error('store down') : undefined }));
    const pusher = await startPusherOnly(sub);
    cleanup.push(() => pusher.close());
    const c = await raw(pusher.port);
    const parts: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      parts.push(message(i, `t${i}`));
      // A malformed task (unknown cmd 0x42) after task #30: 0x01 right there, and the stream goes on.
      if (i === 30) parts.push(Buffer.from([1, 0, 0x42, ...uuidOf(0), 0, 0]));
    }
    await c.write(Buffer.concat(parts));
    const replies = await c.waitReplies(N + 1);
    const expected: number[] = [];
    for (let i = 0; i < N; i++) {
      expected.push(i === K ? 0xff : 0x00);
      if (i === 30) expected.push(0x01);
    }
    expect(replies).toEqual(expected);
    // The submits really did settle out of order, and were made in task order.
    expect(sub.settled).not.toEqual([...sub.settled].sort((a, b) => a - b));
    expect(sub.calls.map((x) => (x.write as { content: Buffer }).content.toString())).toEqual(Array.from({ length: N }, (_, i) => `t${i}`));
    expect(sub.calls.every((x) => x.source === 'pusher')).toBe(true);
    expect(pusher.counters).toMatchObject({ accepted: N - 1, errors: 1 });
    expect(pusher.counters.malformed['unknown-cmd']).toBe(1);
  });

  it('a task split across writes byte by byte is answered once, after its last byte', async () => {
    const s = await server();
    const c = await raw(s.pusherPort);
    const task = message(5, 'split into 35 single-byte writes!!');
    for (let i = 0; i < task.length - 1; i++) {
      await c.write(task.subarray(i, i + 1));
      await new Promise((r) => setImmediate(r));
    }
    await sleep(20);
    expect(c.replies).toEqual([]);
    await c.write(task.subarray(task.length - 1));
    expect(await c.waitReplies(1)).toEqual([0]);
    expect((await s.store.read(hexOf(5)))?.message?.toString()).toBe('split into 35 single-byte writes!!');
  });

  it('a client that half-closes after its tasks still gets every reply, then the server closes', async () => {
    const sub = new ScriptedSubmitter((i) => ({ delayMs: 30 - i }));
    const pusher = await startPusherOnly(sub);
    cleanup.push(() => pusher.close());
    const c = await raw(pusher.port);
    c.socket.end(Buffer.concat([notice(1), notice(2), Buffer.from([1, 0, 0x10, ...uuidOf(3), 0, 1, 0])]));
    await c.waitClosed();
    expect(c.replies).toEqual([0x00, 0x00, 0x01]);
    await until(() => pusher.openConnections === 0, 2000, 'server side closed');
  });

  it('content too long (and other bad lengths / commands) get 0x01 and the connection stays usable', async () => {
    const s = await server();
    const c = await raw(s.pusherPort);
    await c.write(message(1, 'x'.repeat(501)));
    expect(await c.waitReplies(1)).toEqual([0x01]);
    await c.write(message(1, 'x'.repeat(500)));
    expect(await c.waitReplies(2)).toEqual([0x01, 0x00]);
    // 0x10 with content, 0x11 with 4 bytes, 0x20 empty, unknown cmd with a body: each skipped whole.
    const u = [...uuidOf(2)];
    await c.write(
      Buffer.from([
        ...[1, 0, 0x10, ...u, 0, 2, 0xaa, 0xbb],
        ...[1, 0, 0x11, ...u, 0, 4, 1, 2, 3, 4],
        ...[1, 0, 0x20, ...u, 0, 0],
        ...[1, 0, 0x33, ...u, 0, 3, 9, 9, 9],
        ...notice(2),
      ]),
    );
    expect(await c.waitReplies(7)).toEqual([0x01, 0x00, 0x01, 0x01, 0x01, 0x01, 0x00]);
    expect(c.closed).toBe(false);
    expect((await s.store.read(hexOf(1)))?.message?.length).toBe(500);
    expect(await s.store.read(hexOf(2))).toMatchObject({ category: 0n, message: null });
    expect(s.pusher.counters.malformed).toEqual({ 'bad-version': 0, 'unknown-cmd': 1, 'bad-data-length': 3, 'content-too-long': 1 });
  });

  it('maps PayloadTooLargeError from the submitter to 0x01 (engine limit below the port limit)', async () => {
    const s = await server({ maxContentLength: 500 }, { maxContentLength: 100 });
    const c = await raw(s.pusherPort);
    await c.write(Buffer.concat([message(1, 'y'.repeat(101)), message(1, 'y'.repeat(100))]));
    expect(await c.waitReplies(2)).toEqual([0x01, 0x00]);
    expect(s.pusher.counters.malformed['content-too-long']).toBe(1);
    expect(s.pusher.counters.errors).toBe(0);
  });

  it('a submitter error that is not a refusal gets 0xff', async () => {
    const failing: PushSubmitter = { submit: (_u, _w, _s, done) => setImmediate(() => done(new Error('disk full'))) };
    const throwing: PushSubmitter = {
      submit: () => {
        throw new Error('sync failure');
      },
    };
    for (const sub of [failing, throwing]) {
      const p = await startPusherOnly(sub);
      cleanup.push(() => p.close());
      const c = await raw(p.port);
      await c.write(Buffer.concat([notice(1), notice(2)]));
      expect(await c.waitReplies(2)).toEqual([0xff, 0xff]);
      expect(p.counters.errors).toBe(2);
    }
    const tooLarge: PushSubmitter = { submit: (_u, _w, _s, done) => done(new PayloadTooLargeError(600, 500)) };
    const p = await startPusherOnly(tooLarge);
    cleanup.push(() => p.close());
    const c = await raw(p.port);
    await c.write(notice(1));
    expect(await c.waitReplies(1)).toEqual([0x01]);
  });

  it('a bad version byte gets 0x01 after the earlier replies, then the connection closes; other connections are unaffected', async () => {
    const s = await server();
    const a = await raw(s.pusherPort);
    const b = await raw(s.pusherPort);
    const garbage = Buffer.alloc(21, 0x47); // "GGG...": version 0x47
    await a.write(Buffer.concat([message(1, 'before'), garbage, message(1, 'after')]));
    await a.waitClosed();
    expect(a.replies).toEqual([0x00, 0x01]);
    expect((await s.store.read(hexOf(1)))?.message?.toString()).toBe('before');
    expect(s.pusher.counters).toMatchObject({ protocolClosed: 1 });
    expect(s.pusher.counters.malformed['bad-version']).toBe(1);
    await b.write(message(2, 'still fine'));
    expect(await b.waitReplies(1)).toEqual([0x00]);
    expect(b.closed).toBe(false);
    expect((await s.store.read(hexOf(2)))?.message?.toString()).toBe('still fine');
  });

  it('allow-list: a 127.0.0.1 client is refused when only 10.0.0.0/8 is allowed, and accepted when loopback is', async () => {
    const s = await server({ allow: ['10.0.0.0/8'] });
    const c = await raw(s.pusherPort);
    await c.write(notice(1)).catch(() => {});
    await c.waitClosed();
    expect(c.replies).toEqual([]);
    expect(s.pusher.counters.refusedAllowList).toBe(1);
    expect(s.pusher.counters.connections).toBe(0);
    expect(await s.store.read(hexOf(1))).toBeNull();

    const ok = await startPusherOnly(s.engine, { allow: ['10.0.0.0/8', '127.0.0.0/8', '::1/128'] });
    cleanup.push(() => ok.close());
    const d = await raw(ok.port);
    await d.write(notice(1));
    expect(await d.waitReplies(1)).toEqual([0]);
    expect(ok.counters.refusedAllowList).toBe(0);
  });

  it('cuts at most 64 idle connections per event-loop turn, the rest on the turns after', async () => {
    const s = await server({ idleTimeoutMs: 60_000 });
    const n = 150;
    const conns = await Promise.all(Array.from({ length: n }, () => raw(s.pusherPort)));
    await until(() => s.pusher.openConnections === n, 2000, 'every connection accepted');
    const cutIdle = (cutoff: number) => (s.pusher as unknown as { cutIdle(cutoff: number): void }).cutIdle(cutoff);
    expect(await countPerTurn(() => cutIdle(Date.now() + 1), () => s.pusher.counters.idleClosed, n)).toEqual([64, 128, 150]);
    await Promise.all(conns.map((c) => c.waitClosed()));
  });

  it('connection limit: connections beyond maxConnections are destroyed and counted', async () => {
    const s = await server({ maxConnections: 2 });
    const a = await raw(s.pusherPort);
    const b = await raw(s.pusherPort);
    await until(() => s.pusher.openConnections === 2, 2000, 'two connections');
    // Refused by Node before a Socket is built for it (its 'drop'): the cheap path for a client that reconnects as fast as it is refused.
    let dropped = 0;
    (s.pusher as unknown as { server: Server }).server.on('drop', () => dropped++);
    const c = await raw(s.pusherPort);
    await c.waitClosed();
    expect(s.pusher.counters.refusedLimit).toBe(1);
    expect(dropped).toBe(1);
    await a.write(notice(1));
    await b.write(notice(2));
    expect(await a.waitReplies(1)).toEqual([0]);
    expect(await b.waitReplies(1)).toEqual([0]);
    a.destroy();
    await until(() => s.pusher.openConnections === 1, 2000, 'a closed');
    const d = await raw(s.pusherPort);
    await d.write(notice(3));
    expect(await d.waitReplies(1)).toEqual([0]);
    expect(s.pusher.counters).toMatchObject({ connections: 3, refusedLimit: 1 });
  });

  /** Counts event-loop turns in this process (the server under test runs here too), until the test ends. */
  function countTurns(): { readonly now: number } {
    const t = { now: 0 };
    let ticking = true;
    const tick = () => {
      t.now++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    cleanup.push(() => {
      ticking = false;
    });
    return t;
  }

  it('intake: while the device port is busy, at most tasksPerTurn submits per event-loop turn, connections served round-robin, replies in order', async () => {
    const turns = countTurns();
    const perTurn = new Map<number, number>();
    const order: string[] = [];
    const sub: PushSubmitter = {
      submit: (uuid, _w, _s, done) => {
        perTurn.set(turns.now, (perTurn.get(turns.now) ?? 0) + 1);
        order.push(uuid);
        done(null);
      },
    };
    const pusher = await startPusherOnly(sub, { tasksPerTurn: 10, maxPipelined: 10_000 });
    cleanup.push(() => pusher.close());
    // A device port that receives datagrams every turn (what PushModule wires to the real one).
    pusher.paceWith(() => turns.now);
    const [a, b] = await Promise.all([raw(pusher.port), raw(pusher.port)]);
    const N = 500;
    await Promise.all([a.write(Buffer.concat(Array.from({ length: N }, () => notice(1)))), b.write(Buffer.concat(Array.from({ length: N }, () => notice(2))))]);
    expect(await a.waitReplies(N)).toEqual(Array(N).fill(0));
    expect(await b.waitReplies(N)).toEqual(Array(N).fill(0));
    expect(order).toHaveLength(2 * N);
    expect(Math.max(...perTurn.values())).toBeLessThanOrEqual(10);
    // Only a turn's budget (per connection's first read at most) went through at once; the rest waited.
    expect(pusher.counters.deferred).toBeGreaterThanOrEqual(2 * N - 20);
    expect(pusher.counters.deferred).toBeLessThan(2 * N);
    // 1000 tasks at 10 per turn take at least 100 turns.
    expect(perTurn.size).toBeGreaterThanOrEqual(100);
    // Round-robin: once both connections have tasks queued (well inside the run), they alternate, so the
    // lead of one over the other moves by at most one between submits and stays within a turn's budget.
    const leads: number[] = [];
    let lead = 0;
    for (const u of order) leads.push((lead += u === hexOf(1) ? 1 : -1));
    const middle = leads.slice(200, 700);
    expect(Math.max(...middle) - Math.min(...middle)).toBeLessThanOrEqual(10);
  });

  it('intake: replies to tasks paced over many turns go out together once the queue drains, and at least every 64', async () => {
    const turns = countTurns();
    let lastSubmitTurn = 0;
    const sub: PushSubmitter = {
      submit: (_u, _w, _s, done) => {
        lastSubmitTurn = turns.now;
        done(null);
      },
    };
    const pusher = await startPusherOnly(sub, { tasksPerTurn: 4, maxPipelined: 10_000 });
    cleanup.push(() => pusher.close());
    pusher.paceWith(() => turns.now); // a busy device port: 4 tasks per turn
    const c = await raw(pusher.port);
    // 32 tasks over 8 turns: one write of 32 replies, not one per turn.
    await c.write(Buffer.concat(Array.from({ length: 32 }, () => notice(1))));
    expect(await c.waitReplies(32)).toEqual(Array(32).fill(0));
    expect(c.chunks).toBe(1);
    // 200 tasks over 50 turns: replies are not held until the last one; a write at least every 64.
    let firstReplyTurn = 0;
    c.socket.once('data', () => (firstReplyTurn = turns.now));
    await c.write(Buffer.concat(Array.from({ length: 200 }, () => notice(2))));
    expect(await c.waitReplies(232)).toEqual(Array(232).fill(0));
    expect(firstReplyTurn).toBeGreaterThan(0);
    expect(firstReplyTurn).toBeLessThan(lastSubmitTurn);
    expect(c.chunks - 1).toBeGreaterThanOrEqual(3);
    expect(c.chunks - 1).toBeLessThanOrEqual(5);
  });

  it('intake: after a poll phase that read a full batch of datagrams (the device port is behind), a turn takes an eighth of tasksPerTurn', async () => {
    const turns = countTurns();
    // The device port's running count of datagrams: 40 more per turn (libuv reads at most 32 per poll
    // phase, so more are waiting) until 60 tasks have gone through, then 1 per turn (caught up).
    let count = 0;
    let lastTurn = turns.now;
    let submitted = 0;
    const datagrams = () => {
      count += (turns.now - lastTurn) * (submitted < 60 ? 40 : 1);
      lastTurn = turns.now;
      return count;
    };
    const perTurn = new Map<number, number>();
    const turnOf: number[] = [];
    const sub: PushSubmitter = {
      submit: (_u, _w, _s, done) => {
        submitted++;
        turnOf.push(turns.now);
        perTurn.set(turns.now, (perTurn.get(turns.now) ?? 0) + 1);
        done(null);
      },
    };
    const pusher = await startPusherOnly(sub, { tasksPerTurn: 16, maxPipelined: 10_000 });
    cleanup.push(() => pusher.close());
    pusher.paceWith(datagrams);
    const c = await raw(pusher.port);
    const N = 400;
    await c.write(Buffer.concat(Array.from({ length: N }, (_, i) => notice(i))));
    expect(await c.waitReplies(N)).toEqual(Array(N).fill(0));
    // Behind: after the read's first turn, 16 / 8 = 2 per turn. Caught up: tasksPerTurn again.
    const behind = new Set(turnOf.slice(16, 56));
    expect(Math.max(...[...behind].map((t) => perTurn.get(t)!))).toBeLessThanOrEqual(2);
    const later = new Set(turnOf.slice(100));
    expect(Math.max(...[...later].map((t) => perTurn.get(t)!))).toBe(16);
  });

  it('intake: with a quiet device port (or none), a whole read is submitted in one turn', async () => {
    const turns = countTurns();
    const seen = new Set<number>();
    const sub: PushSubmitter = {
      submit: (_u, _w, _s, done) => {
        seen.add(turns.now);
        done(null);
      },
    };
    const pusher = await startPusherOnly(sub, { tasksPerTurn: 10 });
    cleanup.push(() => pusher.close());
    pusher.paceWith(() => 0); // wired, but no datagram ever arrives
    const c = await raw(pusher.port);
    await c.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => notice(i))));
    expect(await c.waitReplies(200)).toEqual(Array(200).fill(0));
    expect(pusher.counters.deferred).toBe(0);
    expect(seen.size).toBeLessThanOrEqual(2); // one read chunk (4.2 KB), maybe split in two by TCP
  });

  it('pipelining limit: with submits held, the server stops reading at maxPipelined (+ at most one chunk) and resumes when they settle', async () => {
    const sub = new ScriptedSubmitter();
    sub.holding = true;
    const maxPipelined = 8;
    const pusher = await startPusherOnly(sub, { maxPipelined });
    cleanup.push(() => pusher.close());
    const c = await raw(pusher.port);
    const N = 8_000; // 168 KB of 0x10 tasks: more than one read chunk (64 KiB)
    const all = Buffer.concat(Array.from({ length: N }, (_, i) => notice(i % 100)));
    c.socket.write(all);
    await until(() => pusher.counters.pauses >= 1, 2000, 'a pause');
    await sleep(100);
    const oneChunk = Math.ceil(65536 / 21);
    const [info] = pusher.connectionsInfo();
    expect(info!.paused).toBe(true);
    expect(info!.pipelined).toBeGreaterThanOrEqual(maxPipelined);
    expect(info!.pipelined).toBeLessThanOrEqual(maxPipelined + oneChunk);
    expect(pusher.counters.peakPipelined).toBeLessThanOrEqual(maxPipelined + oneChunk);
    expect(sub.calls.length).toBe(info!.pipelined);
    expect(sub.calls.length).toBeLessThan(N);
    expect(c.replies).toEqual([]);
    // Stays paused: nothing more is read while the submits are held.
    await sleep(50);
    expect(sub.calls.length).toBe(info!.pipelined);

    sub.release();
    const replies = await c.waitReplies(N, 10_000);
    expect(replies.every((r) => r === 0)).toBe(true);
    expect(sub.calls.length).toBe(N);
    expect(pusher.counters.peakPipelined).toBeLessThanOrEqual(maxPipelined + oneChunk);
    expect(pusher.counters.pauses).toBeGreaterThan(1);
    expect(pusher.connectionsInfo()[0]!.paused).toBe(false);
  });

  it('port-wide limit: at maxPipelinedTotal unanswered tasks every connection stops being read; answers let them read again, oldest held first, nothing lost', async () => {
    const sub = new ScriptedSubmitter();
    sub.holding = true;
    const pusher = await startPusherOnly(sub, { maxPipelined: 100, maxPipelinedTotal: 30 });
    cleanup.push(() => pusher.close());
    const [a, b, c] = await Promise.all([raw(pusher.port), raw(pusher.port), raw(pusher.port)]);
    const N = 50; // 1,050 bytes: one read chunk, over the port-wide limit on its own
    const batch = (from: number) => Buffer.concat(Array.from({ length: N }, (_, i) => notice(from + i)));
    a.socket.write(batch(0));
    await until(() => sub.calls.length === N, 2000, "a's tasks");
    expect(pusher.counters.heldAtTotal).toBe(1);
    // b and c send while the budget is full: neither is read.
    b.socket.write(batch(1000));
    c.socket.write(batch(2000));
    await sleep(100);
    expect(sub.calls.length).toBe(N);
    expect(pusher.pipelined).toBe(N);
    expect(pusher.connectionsInfo().map((i) => i.paused)).toEqual([true, true, true]);

    sub.release();
    for (const conn of [a, b, c]) expect(await conn.waitReplies(N, 5000)).toEqual(Array(N).fill(0));
    expect(sub.calls.length).toBe(3 * N);
    // Soft like maxPipelined: a connection is let go while the count is under the limit, and its read
    // (one chunk here) may take it past, but never further than that one chunk.
    expect(pusher.counters.peakPipelinedTotal).toBeGreaterThanOrEqual(N);
    expect(pusher.counters.peakPipelinedTotal).toBeLessThan(30 + N);
    // b was held before c (in connection order when the budget filled), so it was let go first.
    const firstOf = (from: number) => sub.calls.findIndex((x) => x.uuid === hexOf(from));
    const lastOf = (from: number) => sub.calls.map((x) => x.uuid).lastIndexOf(hexOf(from + N - 1));
    expect(lastOf(1000)).toBeLessThan(firstOf(2000));
    await until(() => pusher.pipelined === 0 && pusher.connectionsInfo().every((i) => !i.paused), 2000, 'every connection reading again');
  });

  it('port-wide limit: when one pass lets several connections go, the first read that reaches the limit again holds the others before they read', async () => {
    // Submits are answered only when released by count: the test decides when room appears.
    const held: SubmitCallback[] = [];
    let calls = 0;
    const sub: PushSubmitter = {
      submit: (_u, _w, _s, done) => {
        calls++;
        held.push(done);
      },
    };
    const answer = (n: number) => held.splice(0, n).forEach((done) => done(null));
    // Each connection may have 5 unanswered tasks of its own, so a pass with 20 of room lets 4 go at once.
    const pusher = await startPusherOnly(sub, { maxPipelined: 5, maxPipelinedTotal: 20 });
    cleanup.push(() => pusher.close());
    const conns = [];
    for (let i = 0; i < 5; i++) conns.push(await raw(pusher.port));
    const N = 40; // one write, one read chunk: far past both limits
    conns[0]!.socket.write(Buffer.concat(Array.from({ length: N }, (_, i) => notice(i))));
    await until(() => calls === N, 2000, "the first connection's tasks");
    for (let c = 1; c < 5; c++) conns[c]!.socket.write(Buffer.concat(Array.from({ length: N }, (_, i) => notice(c * 100 + i))));
    await sleep(50);
    expect(calls).toBe(N);
    answer(N); // room for all: one pass lets the four others go
    await until(() => calls >= 2 * N, 2000, 'a second connection read');
    await sleep(100);
    // One of them read its chunk and reached the limit; the three others were held before reading theirs.
    expect(calls).toBe(2 * N);
    expect(pusher.counters.peakPipelinedTotal).toBe(N);
    while (calls < 5 * N || held.length > 0) {
      answer(held.length);
      await sleep(10);
    }
    for (const c of conns) expect(await c.waitReplies(N, 5000)).toEqual(Array(N).fill(0));
  });

  it('port-wide limit: held connections that have nothing to send when let go do not keep a later one waiting', async () => {
    const sub = new ScriptedSubmitter();
    sub.holding = true;
    const pusher = await startPusherOnly(sub, { maxPipelined: 100, maxPipelinedTotal: 30 });
    cleanup.push(() => pusher.close());
    // Held in this order when the budget fills: a (which filled it), then the idle ones, then c.
    const a = await raw(pusher.port);
    const idle = await Promise.all([raw(pusher.port), raw(pusher.port), raw(pusher.port)]);
    const c = await raw(pusher.port);
    a.socket.write(Buffer.concat(Array.from({ length: 50 }, (_, i) => notice(i))));
    await until(() => sub.calls.length === 50, 2000, "a's tasks");
    c.socket.write(Buffer.concat(Array.from({ length: 50 }, (_, i) => notice(500 + i))));
    await sleep(50);
    expect(sub.calls.length).toBe(50);
    // Each pass lets go as many as the room allows (one here: a room of 100 exceeds the budget of 30).
    // a and the idle connections read nothing once let go, and no answer comes to start another pass:
    // c is reached only because passes go on turn by turn while connections still wait.
    sub.release();
    expect(await a.waitReplies(50, 5000)).toEqual(Array(50).fill(0));
    expect(await c.waitReplies(50, 5000)).toEqual(Array(50).fill(0));
    for (const i of idle) expect(i.replies).toEqual([]);
    await until(() => pusher.connectionsInfo().every((info) => !info.paused), 2000, 'every connection reading again');
  });

  it('port-wide limit: a held connection that closes gives its unanswered tasks back, and the others go on', async () => {
    const sub = new ScriptedSubmitter();
    sub.holding = true;
    const pusher = await startPusherOnly(sub, { maxPipelinedTotal: 10 });
    cleanup.push(() => pusher.close());
    const [a, b] = await Promise.all([raw(pusher.port), raw(pusher.port)]);
    a.socket.write(Buffer.concat(Array.from({ length: 20 }, (_, i) => notice(i))));
    await until(() => sub.calls.length === 20, 2000, "a's tasks");
    b.socket.write(Buffer.concat(Array.from({ length: 20 }, (_, i) => notice(100 + i))));
    await sleep(50);
    expect(sub.calls.length).toBe(20);
    // a is reset with 20 tasks unanswered (its socket closes at once): they leave the port-wide count,
    // so b is read while a's tasks are still being stored.
    a.socket.resetAndDestroy();
    await until(() => sub.calls.length === 40, 2000, "b's tasks after a closed");
    sub.release();
    expect(await b.waitReplies(20, 5000)).toEqual(Array(20).fill(0));
    await until(() => pusher.counters.unreplied === 20, 2000, "a's settled submits counted as unreplied");
    expect(pusher.pipelined).toBe(0);
  });

  it('closes idle connections and counts them', async () => {
    const s = await server({ idleTimeoutMs: 80 });
    const c = await raw(s.pusherPort);
    await c.write(notice(1));
    expect(await c.waitReplies(1)).toEqual([0]);
    await c.waitClosed(2000);
    expect(s.pusher.counters.idleClosed).toBe(1);
  });

  it('graceful close(): stops accepting, answers in-flight tasks, then closes the connections', async () => {
    const sub = new ScriptedSubmitter(() => ({ delayMs: 150 }));
    const pusher = await startPusherOnly(sub);
    const port = pusher.port;
    const c = await raw(port);
    await c.write(Buffer.concat(Array.from({ length: 10 }, (_, i) => notice(i))));
    await until(() => sub.calls.length === 10, 2000, 'ten submits');
    const t0 = Date.now();
    const closing = pusher.close();
    // New connections are refused at once.
    await expect(
      new Promise((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port });
        s.on('connect', () => resolve(s.destroy()));
        s.on('error', reject);
      }),
    ).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await closing;
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(c.replies).toEqual(new Array(10).fill(0));
    await c.waitClosed(1000);
    expect(pusher.listening).toBe(false);
    expect(pusher.counters.unreplied).toBe(0);
  });

  it('graceful close() with tasks still queued by the intake: every task read is submitted and answered', async () => {
    const turns = countTurns();
    const N = 400;
    let closing: Promise<void> | undefined;
    let atClose = { submitted: 0, pipelined: 0 };
    const sub = new ScriptedSubmitter(() => ({ delayMs: 5 }));
    const submit = sub.submit.bind(sub);
    // The fifth submit (the second turn's first) closes the port: the whole read is decoded by then, most of it still queued.
    sub.submit = (...args) => {
      submit(...args);
      if (!closing && sub.calls.length === 5) {
        atClose = { submitted: sub.calls.length, pipelined: pusher.pipelined };
        closing = pusher.close();
      }
    };
    const pusher = await startPusherOnly(sub, { tasksPerTurn: 4, maxPipelined: 10_000 });
    pusher.paceWith(() => turns.now); // a busy device port: 4 tasks per turn
    const c = await raw(pusher.port);
    await c.write(Buffer.concat(Array.from({ length: N }, (_, i) => notice(i))));
    await until(() => closing !== undefined, 2000, 'the fifth submit');
    await closing;
    expect(atClose).toEqual({ submitted: 5, pipelined: N });
    expect(sub.calls.length).toBe(N);
    expect(c.replies).toEqual(new Array(N).fill(0));
    await c.waitClosed(1000);
    expect(pusher.counters.unreplied).toBe(0);
  });

  it('close() gives up on submits that never settle after closeTimeoutMs', async () => {
    const sub = new ScriptedSubmitter();
    sub.holding = true;
    const pusher = await startPusherOnly(sub, { closeTimeoutMs: 200 });
    const c = await raw(pusher.port);
    await c.write(notice(1));
    await until(() => sub.calls.length === 1, 2000, 'a submit');
    const t0 = Date.now();
    await pusher.close();
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(190);
    expect(took).toBeLessThan(1000);
    await c.waitClosed(1000);
    expect(c.replies).toEqual([]);
  });

  it('validates every option with a PushConfigError naming it', () => {
    const sub: PushSubmitter = { submit: (_u, _w, _s, done) => done(null) };
    const bad: [Record<string, unknown>, string][] = [
      [{ port: -1 }, 'pusher.port'],
      [{ port: 70000 }, 'pusher.port'],
      [{ host: '' }, 'pusher.host'],
      [{ maxContentLength: 0 }, 'pusher.maxContentLength'],
      [{ maxContentLength: 70000 }, 'pusher.maxContentLength'],
      [{ idleTimeoutMs: 0 }, 'pusher.idleTimeoutMs'],
      [{ maxConnections: 1.5 }, 'pusher.maxConnections'],
      [{ maxPipelined: 0 }, 'pusher.maxPipelined'],
      [{ tasksPerTurn: 0 }, 'pusher.tasksPerTurn'],
      [{ closeTimeoutMs: -5 }, 'pusher.closeTimeoutMs'],
      [{ allow: [] }, 'pusher.allow'],
      [{ allow: ['nonsense'] }, 'pusher.allow'],
      [{ allow: ['10.0.0.0/33'] }, 'pusher.allow'],
      [{ allow: ['::1/129'] }, 'pusher.allow'],
      [{ allow: ['10.0.0.0/-1'] }, 'pusher.allow'],
    ];
    for (const [options, option] of bad) {
      let err: unknown;
      try {
        new PusherTransportStrategy(sub, options);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(options)).toBeInstanceOf(PushConfigError);
      expect((err as PushConfigError).option).toBe(option);
      expect((err as Error).message).toContain(option);
    }
    const ok = new PusherTransportStrategy(sub, { allow: ['10.0.0.0/8', '192.168.1.7', '::1/128', 'fd00::/8'] });
    expect(ok.options).toMatchObject({ host: '127.0.0.1', port: 9999, maxContentLength: 500, idleTimeoutMs: 600_000, maxConnections: 1024, maxPipelined: 256 });
    expect(() => new PusherTransportStrategy(undefined as unknown as PushSubmitter)).toThrow(PushConfigError);
  });

  it('Nest transport surface: status events, unwrap, listen callback', async () => {
    const sub: PushSubmitter = { submit: (_u, _w, _s, done) => done(null) };
    const p = new PusherTransportStrategy(sub, { port: 0 });
    const statuses: string[] = [];
    p.status.subscribe((st) => statuses.push(st));
    expect(() => p.unwrap()).toThrow(/not listening/);
    let listened: number | undefined;
    p.on('listening', (port) => (listened = port));
    await new Promise<void>((resolve, reject) => p.listen((err?: unknown) => (err ? reject(err) : resolve())));
    expect(listened).toBe(p.port);
    expect(p.port).toBeGreaterThan(0);
    expect(typeof p.unwrap<{ address(): unknown }>().address).toBe('function');
    await p.close();
    expect(statuses).toEqual(['listening', 'closed']);
  });
});
