import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';
import { encodePusherTask } from '../../lib/protocol/pusher-task.codec.js';
import { PusherCmd } from '../../lib/protocol/protocol.constants.js';
import { DurableApp, ensureBuilt } from '../fixtures/durable-app/durable-app.js';

/*
 * The kill -9 test (issue 6): an app process with the LMDB store takes
 * thousands of pipelined 0x20 tasks on its pusher port, is SIGKILLed at a
 * random moment mid-stream, is started again on the same data directory,
 * and every device registers. Every task that got its 0x00 reply must reach
 * its device: with latest-only retention, the device gets that message or a
 * newer one (never an older one instead); with a queue, every acknowledged
 * message arrives, in order. A task stored but not yet answered may arrive too.
 */

const UUIDS = 500;
const PER_UUID = 8;
const CONNECTIONS = 8;
const WINDOW = 64;

const base = mkdtempSync(join(tmpdir(), 'nest-push-durability-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

const uuids = Array.from({ length: UUIDS }, (_, i) => {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(0xd0ab1e00, 0);
  b.writeUInt32BE(i, 4);
  b.writeUInt32BE((i * 2654435761) >>> 0, 8);
  b.writeUInt32BE(0x5eed, 12);
  return b;
});

interface Task {
  device: number;
  seq: number;
  bytes: Buffer;
}

/** Tasks for one connection: its devices (device % CONNECTIONS), seq 0..PER_UUID-1 each, rounds interleaved. */
function tasksFor(conn: number): Task[] {
  const out: Task[] = [];
  for (let seq = 0; seq < PER_UUID; seq++) {
    for (let d = conn; d < UUIDS; d += CONNECTIONS) {
      out.push({ device: d, seq, bytes: encodePusherTask({ appId: 1, cmd: PusherCmd.Message, uuid: uuids[d]!, content: Buffer.from(`${d}:${seq}`) }) });
    }
  }
  return out;
}

/**
 * Streams every connection's tasks (pipelined, WINDOW in flight), records
 * which got 0x00, and calls `kill` once `killAfter` replies are in. Resolves
 * when every connection is closed (by the kill).
 */
async function streamUntilKilled(port: number, killAfter: number, kill: () => Promise<void>): Promise<{ acked: number[]; replies: number }> {
  const highestAcked = new Array<number>(UUIDS).fill(-1);
  let replies = 0;
  let killing: Promise<void> | undefined;
  await Promise.all(
    Array.from({ length: CONNECTIONS }, (_, c) => {
      const tasks = tasksFor(c);
      return new Promise<void>((resolve) => {
        const s = connect({ host: '127.0.0.1', port, noDelay: true });
        let sent = 0;
        let answered = 0;
        const fill = () => {
          const n = Math.min(tasks.length - sent, WINDOW - (sent - answered));
          if (n <= 0) return;
          s.write(Buffer.concat(tasks.slice(sent, sent + n).map((t) => t.bytes)));
          sent += n;
        };
        s.on('connect', fill);
        s.on('data', (chunk: Buffer) => {
          for (const code of chunk) {
            const t = tasks[answered++]!;
            replies++;
            if (code === 0x00) highestAcked[t.device] = Math.max(highestAcked[t.device]!, t.seq);
          }
          if (!killing && replies >= killAfter) killing = kill();
          fill();
        });
        s.on('error', () => {});
        s.on('close', () => resolve());
      });
    }),
  );
  await killing;
  return { acked: highestAcked, replies };
}

interface Delivery {
  /** Message seqs each device received, in arrival order. */
  received: number[][];
  devices: DeviceClient[];
}

async function registerDevices(port: number): Promise<Delivery> {
  const received = uuids.map(() => [] as number[]);
  const devices = await Promise.all(
    uuids.map(async (u, d) => {
      const dev = new DeviceClient({ port, uuid: u, heartbeatIntervalMs: 700, autoAck: true });
      dev.messages.subscribe((m) => {
        if (m.kind !== 'message') return;
        const [who, seq] = m.content.toString().split(':').map(Number);
        // A message for another device would show up as a foreign seq; -1 fails every check below.
        received[d]!.push(who === d ? seq! : -1);
      });
      await dev.connect();
      return dev;
    }),
  );
  return { received, devices };
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 12_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const cases = [
  { name: 'latest-only retention, sync durability', retention: 'latest', durability: 'sync' as const },
  { name: 'queue retention, sync durability', retention: `${PER_UUID * 2}:600000`, durability: 'sync' as const },
  { name: 'latest-only retention, async durability (kill -9 is not a power loss)', retention: 'latest', durability: 'async' as const },
];

describe('durability: kill -9 mid-stream loses no accepted push', () => {
  const cleanup: (() => Promise<unknown>)[] = [];
  beforeAll(() => ensureBuilt(), 120_000);
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c().catch(() => undefined);
  });

  it.each(cases)('$name', async ({ retention, durability }) => {
    const dir = join(base, `${durability}-${retention.replace(':', '-')}`);
    const env = { DATA_DIR: dir, RETENTION: retention, DURABILITY: durability };
    const t0 = Date.now();
    const mark = (what: string) => process.env.DURABILITY_TIMING && console.log(`${what}: ${Date.now() - t0} ms`);
    const first = await DurableApp.start(env);
    mark('first app up');
    cleanup.push(() => first.kill());
    const total = UUIDS * PER_UUID;
    const killAfter = Math.floor(total * (0.25 + Math.random() * 0.5));
    const { acked, replies } = await streamUntilKilled(first.pusherPort, killAfter, () => first.kill());
    expect(await first.exited).toBe('SIGKILL');
    mark(`killed after ${replies} replies`);
    const ackedDevices = acked.filter((s) => s >= 0).length;
    expect(replies).toBeGreaterThanOrEqual(killAfter);
    expect(replies).toBeLessThan(total); // it really died mid-stream
    expect(ackedDevices).toBeGreaterThan(UUIDS / 2);

    const second = await DurableApp.start(env);
    cleanup.push(() => second.close());
    mark('second app up');
    const before = await second.stats();
    expect(before.store.devices).toBeGreaterThanOrEqual(ackedDevices);
    const { received, devices } = await registerDevices(second.devicePort);
    cleanup.push(() => Promise.all(devices.map((d) => d.close())));

    if (retention === 'latest') {
      // Every device with an acknowledged task gets that one or a newer one.
      await waitFor('every acknowledged task to be delivered', () => acked.every((s, d) => s < 0 || received[d]!.some((r) => r >= s)));
      for (const [d, s] of acked.entries()) {
        // Latest only: the store held one message per device, so nothing older ever arrives instead.
        for (const r of received[d]!) expect(r, `device ${d}: got ${r}, acknowledged ${s}`).toBeGreaterThanOrEqual(s);
      }
    } else {
      // Every acknowledged message arrives, in order; none is lost.
      await waitFor('every acknowledged message to be delivered', () =>
        acked.every((s, d) => {
          const got = new Set(received[d]);
          for (let q = 0; q <= s; q++) if (!got.has(q)) return false;
          return true;
        }),
      );
      for (const [d, s] of acked.entries()) {
        const distinct = received[d]!.filter((r, i, all) => i === 0 || r !== all[i - 1]);
        for (let i = 1; i < distinct.length; i++) expect(distinct[i], `device ${d} order: ${distinct.join(',')}`).toBeGreaterThan(distinct[i - 1]!);
        if (s >= 0) expect(distinct.slice(0, s + 1)).toEqual(Array.from({ length: s + 1 }, (_, q) => q));
      }
    }
    mark('delivered');
    // Devices ack everything: the store drains completely, so the counters reloaded after the crash were exact.
    await waitFor('the store to drain', async () => {
      const st = await second.stats();
      return st.store.devices === 0 && st.store.bytes === 0;
    });
    mark('drained');
  }, 60_000);
});
