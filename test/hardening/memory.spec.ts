/**
 * Hardening: memory held by pending messages, measured in a process of its
 * own (this file) so that nothing else's garbage moves the figure.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { startDeviceServer } from '../helpers/device-server.js';
import { RawPusherConnection, startPusherServer } from '../helpers/pusher-server.js';
import { messageTask, newUuid } from './net.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
async function fullGc(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
function defer<T extends { close(): unknown } | { destroy(): unknown }>(x: T): T {
  cleanups.push(() => ('close' in x ? x.close() : x.destroy()));
  return x;
}

describe('offline store memory (memory store)', () => {
  it('maxBytes bounds the memory really held: pending messages do not pin shared buffer-pool slabs', async () => {
    const s = defer(await startPusherServer({ maxPipelined: 4_096 }));
    const c = defer(await RawPusherConnection.open(s.pusherPort));
    // 40,000 pushes of 100-byte messages to 2,000 offline devices in random
    // order: latest-only, so each device keeps its last message, and those
    // last messages were copied out of the read buffers at scattered times.
    const N = 2_000;
    const PUSHES = 40_000;
    const uuids = Array.from({ length: N }, newUuid);
    let x = 12345;
    const pick = () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return uuids[(x >>> 0) % N]!;
    };
    await fullGc();
    const before = process.memoryUsage().arrayBuffers;
    for (let i = 0; i < PUSHES; i += 1_000) {
      await c.write(Buffer.concat(Array.from({ length: 1_000 }, (_, k) => messageTask(pick(), Buffer.alloc(100, 0x30 + ((i + k) % 10))))));
      await c.waitReplies(i + 1_000);
    }
    expect(c.replies.every((r) => r === 0x00)).toBe(true);
    const { devices, bytes: counted } = s.store.stats();
    // The memory store keeps a message as a view of its read chunk for up to 100 ms (pushes acked
    // sooner are never copied), then copies what is still pending: what is held for long is measured after that.
    await new Promise((r) => setTimeout(r, 250));
    await fullGc();
    const held = process.memoryUsage().arrayBuffers - before;
    console.log(`[store memory] ${devices} pending messages, ${counted} content bytes counted by the store, ${(held / 1e6).toFixed(2)} MB of buffers held (${(held / counted).toFixed(1)}x)`);
    expect(devices).toBe(N);
    expect(counted).toBe(N * 100);
    // A message kept as a view into Node's 8 KiB allocation pool keeps the whole slab alive:
    // what maxBytes counts would then be a fraction of the memory held (12.3x measured here
    // while tasks' content was still a pool view).
    expect(held).toBeLessThan(2 * counted);
  });

  it('the same through PushService/engine.push with pooled content (a Buffer.from(string) slice): the engine keeps an exact-size copy', async () => {
    const s = defer(await startDeviceServer());
    const N = 2_000;
    const PUSHES = 40_000;
    const uuids = Array.from({ length: N }, () => newUuid().toString('hex'));
    let x = 987654;
    const pick = () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return uuids[(x >>> 0) % N]!;
    };
    await fullGc();
    const before = process.memoryUsage().arrayBuffers;
    let scratch = 0;
    for (let i = 0; i < PUSHES; i++) {
      // Buffer.from(string) of 100 bytes is a view into Node's shared 8 KiB
      // pool, shared with whatever else the app allocates around it (here a
      // short-lived 300-byte buffer, as a request parser or JSON encoder would).
      const content = Buffer.from(`${i}`.padEnd(100, '.'));
      scratch += Buffer.from('x'.repeat(300)).length;
      await s.engine.push(pick(), { kind: 'message', content });
    }
    expect(scratch).toBe(PUSHES * 300);
    const { devices, bytes: counted } = s.store.stats();
    await fullGc();
    const held = process.memoryUsage().arrayBuffers - before;
    console.log(`[store memory, engine.push] ${devices} pending messages, ${counted} content bytes counted, ${(held / 1e6).toFixed(2)} MB of buffers held (${(held / counted).toFixed(1)}x)`);
    expect(devices).toBe(N);
    expect(counted).toBe(N * 100);
    // Kept as pool views, these would hold ~14x what is counted (the same load written to the store directly).
    expect(held).toBeLessThan(2 * counted);
  });
});
