import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { DeviceEngine, type DeviceLink, type UdpSink } from '../../../lib/device/device-engine.js';
import { type DeviceEngineOptions, resolveDeviceEngineOptions } from '../../../lib/device/device-engine.options.js';
import type { DeviceEvent } from '../../../lib/device/device-event.interface.js';
import { PayloadTooLargeError } from '../../../lib/errors/payload-too-large.error.js';
import { PushConfigError } from '../../../lib/errors/push-config.error.js';
import { decodeClientFrame, encodeClientFrame } from '../../../lib/protocol/client-frame.codec.js';
import { ClientCmd, ServerCmd } from '../../../lib/protocol/protocol.constants.js';
import { decodeServerFrame, type ServerFrame } from '../../../lib/protocol/server-frame.codec.js';
import { PushDispatcher } from '../../../lib/dispatch/push-dispatcher.js';
import type { PushOutcome } from '../../../lib/interfaces/push-outcome.interface.js';
import { LocalPushRouter } from '../../../lib/router/local-push-router.js';
import { MemoryOfflineStore } from '../../../lib/store/memory-offline-store.js';
import { LmdbOfflineStore } from '../../../lib/store/lmdb-offline-store.js';

/** The engine's own UDP port: records every datagram it is asked to send. */
class RecordingUdpSink implements UdpSink {
  readonly sent: { frame: Buffer; port: number; address: string }[] = [];
  send(frame: Buffer, port: number, address: string): void {
    this.sent.push({ frame: Buffer.from(frame), port, address });
  }
  /** Decoded frames sent to one endpoint, in order. */
  to(address: string, port: number): ServerFrame[] {
    return this.sent
      .filter((s) => s.address === address && s.port === port)
      .map((s) => {
        const f = decodeServerFrame(s.frame);
        if (typeof f === 'string') throw new Error(`engine sent a malformed frame: ${f}`);
        return f;
      });
  }
  bytesTo(address: string): number {
    return this.sent.filter((s) => s.address === address).reduce((n, s) => n + s.frame.length, 0);
  }
  clear(): void {
    this.sent.length = 0;
  }
}

/** The engine's own TCP link port, as the transport implements it, minus the socket. */
class RecordingLink implements DeviceLink {
  deviceId = -1;
  closed = false;
  readonly frames: Buffer[] = [];
  constructor(
    readonly address = '127.0.0.1',
    readonly port = 50_000,
  ) {}
  send(frame: Buffer): boolean {
    if (this.closed) return false;
    this.frames.push(Buffer.from(frame));
    return true;
  }
  close(): void {
    this.closed = true;
  }
}

const ADDR = '127.0.0.1';
const PORT = 40_001;

/** Lets the memory store's promise callbacks (load, ack) run. */
const flush = () => new Promise<void>((r) => setImmediate(r));

function setup(options: DeviceEngineOptions = {}, store = new MemoryOfflineStore()) {
  const engine = new DeviceEngine(store, new LocalPushRouter(), options);
  const sink = new RecordingUdpSink();
  engine.attachUdp(sink);
  const events: DeviceEvent[] = [];
  engine.events.subscribe((e) => events.push(e));
  engines.push(engine);
  return { engine, store, sink, events };
}
const engines: DeviceEngine[] = [];
afterEach(() => {
  for (const e of engines.splice(0)) e.close();
  vi.useRealTimers();
});

/** A simulated device feeding the engine through the real codec. */
class Dev {
  readonly bytes = randomBytes(16);
  readonly uuid = this.bytes.toString('hex');
  inBytes = 0;
  constructor(
    private readonly engine: DeviceEngine,
    public address = ADDR,
    public port = PORT,
    readonly appId = 7,
  ) {}
  private feed(cmd: ClientCmd, mask = 0n, from?: { address: string; port: number }): void {
    const datagram = encodeClientFrame({ appId: this.appId, cmd, uuid: this.bytes, mask });
    const frame = decodeClientFrame(datagram);
    if (typeof frame === 'string') throw new Error(frame);
    this.inBytes += datagram.length;
    this.engine.handleUdp(frame, from?.address ?? this.address, from?.port ?? this.port);
  }
  heartbeat(from?: { address: string; port: number }) {
    this.feed(ClientCmd.Heartbeat, 0n, from);
  }
  ackMessage(from?: { address: string; port: number }) {
    this.feed(ClientCmd.AckMessage, 0n, from);
  }
  ackNotice() {
    this.feed(ClientCmd.AckNotice);
  }
  ackCategory(mask: bigint, from?: { address: string; port: number }) {
    this.feed(ClientCmd.AckCategory, mask, from);
  }
  reset() {
    this.feed(ClientCmd.Reset);
  }
}

const msg = (s: string) => ({ kind: 'message' as const, content: Buffer.from(s) });
const contents = (frames: ServerFrame[]) => frames.filter((f) => f.cmd === ServerCmd.Message).map((f) => f.content.toString());

describe('DeviceEngine (no sockets)', () => {
  describe('registration and delivery', () => {
    it('registers on heartbeat, announces online once, sends pushes at once and clears them on ack', async () => {
      const { engine, store, sink, events } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      expect(engine.deviceCount).toBe(1);
      expect(events).toEqual([{ type: 'online', uuid: d.uuid, transport: 'udp', address: ADDR, port: PORT, at: expect.any(Number) }]);
      expect(sink.sent).toEqual([]); // echo 'never', nothing pending
      const info = await engine.inspect(d.uuid);
      expect(info).toMatchObject({ online: true, reachable: true, transport: 'udp', address: ADDR, port: PORT, appId: 7, pending: null });

      const r = await engine.push(d.uuid, msg('hello'));
      expect(r).toMatchObject({ kind: 'message', sentVia: 'udp', reachable: true, replaced: 0 });
      const frames = sink.to(ADDR, PORT);
      expect(frames).toHaveLength(1);
      expect(frames[0]).toMatchObject({ cmd: ServerCmd.Message, appId: 7 });
      expect(frames[0]!.content.toString()).toBe('hello');

      d.ackMessage();
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
      expect(events.filter((e) => e.type === 'ack')).toEqual([{ type: 'ack', uuid: d.uuid, kind: 'message', version: r.version, at: expect.any(Number) }]);

      sink.clear();
      d.heartbeat();
      d.heartbeat();
      await flush();
      expect(sink.sent).toEqual([]);
      expect(events.filter((e) => e.type === 'online')).toHaveLength(1);
      expect(engine.counters).toMatchObject({ heartbeats: 3, acks: 1, pushes: 1, sends: 1, online: 1 });
    });

    it('stores a push for an unknown device and delivers it on its first heartbeat', async () => {
      const { engine, store, sink, events } = setup();
      const d = new Dev(engine);
      const r = await engine.push(d.uuid, msg('waiting'));
      expect(r).toMatchObject({ sentVia: null, reachable: false });
      expect((await store.read(d.uuid))?.message?.toString()).toBe('waiting');
      expect(await engine.inspect(d.uuid)).toMatchObject({ online: false, reachable: false, transport: null, pending: { messageVersion: r.version } });

      d.heartbeat();
      await flush();
      expect(contents(sink.to(ADDR, PORT))).toEqual(['waiting']);
      expect(events.find((e) => e.type === 'sent')).toMatchObject({ kind: 'message', version: r.version, resend: true, transport: 'udp' });
      d.ackMessage();
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
    });

    it('refuses a message above maxContentLength before storing anything', async () => {
      const { engine, store } = setup({ maxContentLength: 100, udpReplyFactor: 32 });
      const d = new Dev(engine);
      await expect(engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(101) })).rejects.toBeInstanceOf(PayloadTooLargeError);
      expect(await store.read(d.uuid)).toBeNull();
      expect(engine.counters.pushes).toBe(0);
      await expect(engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(100) })).resolves.toMatchObject({ kind: 'message' });
    });

    it('normalises the uuid of a push: an upper-case uuid reaches the same device and its ack clears the store', async () => {
      const { engine, store, sink, events } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      const r = await engine.push(d.uuid.toUpperCase(), msg('shout'));
      expect(r.sentVia).toBe('udp');
      expect(contents(sink.to(ADDR, PORT))).toEqual(['shout']);
      expect((await store.read(d.uuid))?.messageVersion).toBe(r.version);
      d.ackMessage();
      await flush();
      expect(events.filter((e) => e.type === 'ack')).toEqual([expect.objectContaining({ uuid: d.uuid, version: r.version })]);
      expect(store.stats().devices).toBe(0);
      expect(await engine.inspect(d.uuid.toUpperCase())).toMatchObject({ uuid: d.uuid, pending: null });
    });

    it('refuses an invalid uuid or an empty message before storing anything', async () => {
      const { engine, store } = setup();
      await expect(engine.push('not-a-uuid', msg('x'))).rejects.toThrow(/uuid/i);
      await expect(engine.push('00'.repeat(15), { kind: 'notice' })).rejects.toThrow(/uuid/i);
      // A 0x20 frame carries 1..max bytes: an empty one is malformed for every device.
      await expect(engine.push('00'.repeat(16), { kind: 'message', content: Buffer.alloc(0) })).rejects.toThrow(RangeError);
      expect(store.stats()).toMatchObject({ devices: 0, bytes: 0 });
      expect(engine.counters.pushes).toBe(0);
    });

    it('sends notice, category and message pending together on one heartbeat', async () => {
      const { engine, sink } = setup();
      const d = new Dev(engine);
      await engine.push(d.uuid, { kind: 'notice' });
      await engine.push(d.uuid, { kind: 'category', mask: 0b100n });
      await engine.push(d.uuid, msg('m'));
      d.heartbeat();
      await flush();
      const frames = sink.to(ADDR, PORT);
      expect(frames.map((f) => f.cmd)).toEqual([ServerCmd.Notice, ServerCmd.Category, ServerCmd.Message]);
      expect(frames[1]!.mask).toBe(0b100n);
      expect(frames.every((f) => f.appId === 7)).toBe(true);
    });
  });

  describe('at-least-once acks (a v1 ack names no version)', () => {
    it('push A, send A, push B, send B, ack -> B stays pending; B re-sent on heartbeat and acked -> cleared', async () => {
      const { engine, store, sink, events } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();

      const a = await engine.push(d.uuid, msg('A'));
      expect(a.sentVia).toBe('udp');
      const b = await engine.push(d.uuid, msg('B'));
      expect(b.sentVia).toBe('udp');
      expect(b.replaced).toBe(a.version);
      expect(contents(sink.to(ADDR, PORT))).toEqual(['A', 'B']);

      // This ack may be A's: it must not clear B.
      d.ackMessage();
      await flush();
      const pending = await store.read(d.uuid);
      expect(pending?.message?.toString()).toBe('B');
      expect(pending?.messageVersion).toBe(b.version);
      expect(engine.counters.drops['ack-unmatched']).toBe(1);
      expect(events.some((e) => e.type === 'ack')).toBe(false);

      // Next heartbeat re-sends B; its ack clears it.
      sink.clear();
      d.heartbeat();
      await flush();
      expect(contents(sink.to(ADDR, PORT))).toEqual(['B']);
      d.ackMessage();
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
      expect(events.filter((e) => e.type === 'ack')).toEqual([expect.objectContaining({ kind: 'message', version: b.version })]);

      // And nothing more goes out.
      sink.clear();
      d.heartbeat();
      await flush();
      expect(sink.sent).toEqual([]);
    });

    it('A sent twice, then B sent: the first two acks pay for A, the third clears B', async () => {
      const { engine, store, sink } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      await engine.push(d.uuid, msg('A'));
      d.heartbeat(); // re-sends A
      await flush();
      const b = await engine.push(d.uuid, msg('B'));
      expect(contents(sink.to(ADDR, PORT))).toEqual(['A', 'A', 'B']);

      d.ackMessage();
      await flush();
      expect((await store.read(d.uuid))?.messageVersion).toBe(b.version);
      d.ackMessage();
      await flush();
      expect((await store.read(d.uuid))?.messageVersion).toBe(b.version);
      expect(engine.counters.drops['ack-unmatched']).toBe(2);
      d.ackMessage();
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
      expect(engine.counters.acks).toBe(3);
    });

    it('applies the same rule to notices', async () => {
      const { engine, store } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      await engine.push(d.uuid, { kind: 'notice' });
      const n2 = await engine.push(d.uuid, { kind: 'notice' });
      d.ackNotice();
      await flush();
      expect((await store.read(d.uuid))?.notice).toBe(n2.version);
      d.ackNotice();
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
    });

    it('ignores an ack for something this engine never sent (fresh engine on the same store)', async () => {
      const store = new MemoryOfflineStore();
      const { engine: fresh, sink } = setup({}, store);
      const d = new Dev(fresh);
      d.heartbeat(); // registered here with nothing pending: nothing sent
      await flush();
      expect(sink.sent).toEqual([]);
      // Another engine (another node) stores a message for the device.
      const { engine: other } = setup({}, store);
      const r = await other.push(d.uuid, msg('from elsewhere'));
      expect(r.sentVia).toBeNull();

      d.ackMessage();
      d.ackNotice();
      await flush();
      expect(fresh.counters.drops['ack-unmatched']).toBe(2);
      expect((await store.read(d.uuid))?.message?.toString()).toBe('from elsewhere');
    });

    it('category masks accumulate (OR) and an ack clears only its bits', async () => {
      const { engine, store, sink, events } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      const r1 = await engine.push(d.uuid, { kind: 'category', mask: 0b0001n });
      const r2 = await engine.push(d.uuid, { kind: 'category', mask: 0b0110n });
      expect(r1.mask).toBe(0b0001n);
      expect(r2.mask).toBe(0b0111n);
      expect(sink.to(ADDR, PORT).map((f) => f.mask)).toEqual([0b0001n, 0b0111n]);

      // The device acks the first copy only: bits 1 and 2 stay pending.
      d.ackCategory(0b0001n);
      await flush();
      expect((await store.read(d.uuid))?.category).toBe(0b0110n);
      expect(events.filter((e) => e.type === 'ack')).toEqual([
        expect.objectContaining({ kind: 'category', mask: 0b0001n, remaining: 0b0110n }),
      ]);
      sink.clear();
      d.heartbeat();
      await flush();
      expect(sink.to(ADDR, PORT).map((f) => f.mask)).toEqual([0b0110n]);

      // A high bit: the full 64-bit mask survives the round trip.
      const high = 1n << 63n;
      await engine.push(d.uuid, { kind: 'category', mask: high });
      d.ackCategory(0b0110n);
      await flush();
      expect((await store.read(d.uuid))?.category).toBe(high);
      d.ackCategory(high);
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
      sink.clear();
      d.heartbeat();
      await flush();
      expect(sink.sent).toEqual([]);
    });

    it('counts a reset (0xff) and does nothing else', async () => {
      const { engine, store, sink } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      await engine.push(d.uuid, msg('keep'));
      sink.clear();
      d.reset();
      await flush();
      expect(engine.counters.resets).toBe(1);
      expect(engine.counters.acks).toBe(0);
      expect(sink.sent).toEqual([]);
      expect((await store.read(d.uuid))?.message?.toString()).toBe('keep');
    });

    it('ignores acks from an address other than the last heartbeat, and from unknown devices', async () => {
      const { engine, store } = setup();
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      await engine.push(d.uuid, msg('mine'));
      await engine.push(d.uuid, { kind: 'category', mask: 1n });
      d.ackMessage({ address: '127.0.0.2', port: PORT }); // other host
      d.ackMessage({ address: ADDR, port: PORT + 1 }); // other port
      d.ackCategory(1n, { address: '10.9.8.7', port: PORT });
      await flush();
      expect(engine.counters.drops['ack-foreign-address']).toBe(3);
      expect(engine.counters.acks).toBe(0);
      const pending = await store.read(d.uuid);
      expect(pending?.message?.toString()).toBe('mine');
      expect(pending?.category).toBe(1n);

      const stranger = new Dev(engine);
      stranger.ackMessage();
      stranger.ackCategory(1n);
      expect(engine.counters.drops['unknown-device']).toBe(2);
      expect(engine.deviceCount).toBe(1);

      // The right address still acks.
      d.ackMessage();
      d.ackCategory(1n);
      await flush();
      expect(await store.read(d.uuid)).toBeNull();
    });
  });

  describe('a push racing a store read', () => {
    /** A memory store whose reads can be held (a slow disk, Redis round trip) while writes go through. */
    class HeldReadStore extends MemoryOfflineStore {
      held: (() => void)[] = [];
      holding = false;
      override read(uuid: string) {
        if (!this.holding) return super.read(uuid);
        return new Promise<Awaited<ReturnType<MemoryOfflineStore['read']>>>((resolve) => this.held.push(() => resolve(super.read(uuid))));
      }
      release(): void {
        this.holding = false;
        for (const r of this.held.splice(0)) r();
      }
    }

    it('a read that began before the push does not undo it: the push goes out once, its ack clears it', async () => {
      const store = new HeldReadStore();
      const { engine, sink, events } = setup({}, store);
      const d = new Dev(engine);
      store.holding = true;
      d.heartbeat(); // comes online: its store read (nothing pending yet) is held
      const p = await engine.push(d.uuid, msg('during the read'));
      expect(p.sentVia).toBe('udp');
      store.release();
      await flush();
      await flush();
      expect(contents(sink.to(ADDR, PORT))).toEqual(['during the read']);
      d.ackMessage();
      await flush();
      expect(engine.counters.drops['ack-unmatched']).toBe(0);
      expect(await store.read(d.uuid)).toBeNull();
      expect(events.filter((e) => e.type === 'ack')).toEqual([expect.objectContaining({ kind: 'message', version: p.version })]);
    });

    it('the heartbeat still re-sends what was pending before it, when a push raced its read', async () => {
      const store = new HeldReadStore();
      const { engine, sink } = setup({}, store);
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      const n = await engine.push(d.uuid, { kind: 'notice' }); // sent, never acked (lost on the way)
      expect(n.sentVia).toBe('udp');
      sink.clear();
      store.holding = true;
      d.heartbeat(); // must re-send the notice
      await engine.push(d.uuid, msg('M'));
      store.release();
      await flush();
      await flush();
      const frames = sink.to(ADDR, PORT);
      expect(frames.filter((f) => f.cmd === ServerCmd.Notice)).toHaveLength(1);
      expect(contents(frames)).toEqual(['M']);
    });

    it('a read that lands after its device expired and its record id went to another device is not applied to that device', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const t0 = Date.now();
      const store = new HeldReadStore();
      const { engine, sink } = setup({ reachableWindowMs: 100, expiryMs: 1000 }, store);
      const a = new Dev(engine, ADDR, 43_001);
      const b = new Dev(engine, ADDR, 43_002);
      await store.write(a.uuid, msg('for A only'));
      store.holding = true;
      a.heartbeat(); // A's read (its message) is held
      vi.setSystemTime(t0 + 1001);
      engine.sweep(Date.now()); // A expires: its record id is free
      expect(engine.deviceCount).toBe(0);
      b.heartbeat(); // B takes the freed id; its read is held too
      expect(engine.deviceCount).toBe(1);
      store.release();
      await flush();
      await flush();
      // A's read named A's record, not B's: nothing of A's goes to B's address.
      expect(contents(sink.to(ADDR, 43_002))).toEqual([]);
      expect(contents(sink.to(ADDR, 43_001))).toEqual([]);
      // B's own read completed and cleared its loading state: a push to B goes out at once.
      expect((await engine.push(b.uuid, msg('for B'))).sentVia).toBe('udp');
      expect(contents(sink.to(ADDR, 43_002))).toEqual(['for B']);
    });
  });

  describe('stores answered at once or through callbacks', () => {
    // Whichever form of write and ack a subclass of a built-in store overrides, pushes, device acks and
    // direct callers all reach it, and a `super` call does the work (it does not loop back to the override).
    // A memory store that overrides nothing answers at once: the push is out before dispatch returns.
    type Style = 'nothing' | 'only the promise forms' | 'only the callback forms' | 'both forms';
    function audited(Base: typeof MemoryOfflineStore | typeof LmdbOfflineStore, style: Style, calls: string[]) {
      const promise = style === 'only the promise forms' || style === 'both forms';
      const callback = style === 'only the callback forms' || style === 'both forms';
      const Audited = class extends (Base as typeof MemoryOfflineStore) {};
      const proto = Audited.prototype as unknown as Record<string, unknown>;
      const baseProto = Base.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
      const names = [...(promise ? ['write', 'ackNotice', 'ackMessage'] : []), ...(callback ? ['writeThen', 'ackThen'] : [])];
      for (const name of names) {
        proto[name] = function (this: unknown, ...args: unknown[]) {
          calls.push(name);
          return baseProto[name]!.apply(this, args);
        };
      }
      return Audited;
    }
    const lmdbDirs = mkdtempSync(join(tmpdir(), 'nest-push-overrides-'));
    afterAll(() => rmSync(lmdbDirs, { recursive: true, force: true }));
    let lmdbDir = 0;
    const until = async (what: string, cond: () => boolean) => {
      for (let i = 0; i < 400 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
      if (!cond()) throw new Error(`timed out waiting for ${what}`);
    };

    for (const [name, Base] of [['MemoryOfflineStore', MemoryOfflineStore], ['LmdbOfflineStore', LmdbOfflineStore]] as const) {
      for (const style of ['nothing', 'only the promise forms', 'only the callback forms', 'both forms'] as const) {
        const title =
          style === 'nothing'
            ? `a ${name} subclass overriding nothing takes pushes, device acks and direct calls itself${name === 'MemoryOfflineStore' ? ', at once' : ''}`
            : `a ${name} subclass overriding ${style} of write and ack: every push, device ack and direct call reaches the override`;
        it(title, async () => {
          const calls: string[] = [];
          const Audited = audited(Base, style, calls);
          const store = Base === LmdbOfflineStore ? new Audited({ path: join(lmdbDirs, `db${lmdbDir++}`) } as never) : new Audited();
          await store.open();
          try {
            const { engine, sink } = setup({}, store);
            const dispatcher = new PushDispatcher(engine, store);
            const d = new Dev(engine);
            d.heartbeat();
            await flush();
            const outcome = dispatcher.dispatch(d.uuid, msg('audited'), { source: 'service' });
            if (Base === MemoryOfflineStore && style === 'nothing') expect(contents(sink.to(ADDR, PORT))).toEqual(['audited']);
            await until('the push to go out', () => contents(sink.to(ADDR, PORT)).length === 1);
            expect(contents(sink.to(ADDR, PORT))).toEqual(['audited']);
            d.ackMessage();
            expect(await outcome).toMatchObject({ status: 'success' });
            expect(await store.read(d.uuid)).toBeNull();
            // The engine uses the callback forms: an override of only the promise forms is reached through them.
            expect(calls).toEqual(style === 'nothing' ? [] : style === 'only the promise forms' ? ['write', 'ackMessage'] : ['writeThen', 'ackThen']);
            dispatcher.close();

            // Direct callers use the promise forms: an override of only the callback forms is reached through them.
            calls.length = 0;
            const other = 'ab'.repeat(16);
            const w = await store.write(other, { kind: 'notice' });
            expect(await store.ackNotice(other, w.version)).toMatchObject({ cleared: true, remaining: false });
            expect(await store.read(other)).toBeNull();
            expect(calls).toEqual(style === 'nothing' ? [] : style === 'only the callback forms' ? ['writeThen', 'ackThen'] : ['write', 'ackNotice']);
          } finally {
            await store.close();
          }
        });
      }
    }
  });

  describe('admission and limits', () => {
    it('asks the admission hook about new devices only; refused ones get no record', async () => {
      const seen: unknown[] = [];
      const refused = new Set<string>();
      const { engine, events, sink } = setup({
        admission: (r) => {
          seen.push(r);
          return !refused.has(r.uuid);
        },
      });
      const bad = new Dev(engine, ADDR, 40_100, 3);
      const good = new Dev(engine, ADDR, 40_101);
      refused.add(bad.uuid);
      bad.heartbeat();
      bad.heartbeat();
      good.heartbeat();
      good.heartbeat();
      await flush();
      expect(seen).toEqual([
        { uuid: bad.uuid, appId: 3, transport: 'udp', address: ADDR, port: 40_100 },
        { uuid: bad.uuid, appId: 3, transport: 'udp', address: ADDR, port: 40_100 },
        { uuid: good.uuid, appId: 7, transport: 'udp', address: ADDR, port: 40_101 },
      ]);
      expect(engine.counters.drops['admission-refused']).toBe(2);
      expect(engine.deviceCount).toBe(1);
      expect(await engine.inspect(bad.uuid)).toBeNull();
      expect(events.filter((e) => e.type === 'online').map((e) => e.uuid)).toEqual([good.uuid]);
      const r = await engine.push(bad.uuid, msg('x'));
      expect(r.sentVia).toBeNull();
      expect(sink.sent).toEqual([]);
    });

    it('treats a throwing or non-boolean admission hook as a refusal', async () => {
      const { engine } = setup({
        admission: () => {
          throw new Error('db down');
        },
      });
      new Dev(engine).heartbeat();
      expect(engine.counters.drops['admission-refused']).toBe(1);
      expect(engine.deviceCount).toBe(0);

      const { engine: e2 } = setup({ admission: (() => 'yes') as never });
      new Dev(e2).heartbeat();
      expect(e2.counters.drops['admission-refused']).toBe(1);
      expect(e2.deviceCount).toBe(0);
    });

    it('refuses new devices beyond maxDevices and counts them', async () => {
      const { engine, events } = setup({ maxDevices: 2 });
      const devs = [0, 1, 2, 3].map((i) => new Dev(engine, ADDR, 41_000 + i));
      for (const d of devs) d.heartbeat();
      await flush();
      expect(engine.deviceCount).toBe(2);
      expect(engine.counters.drops['device-limit']).toBe(2);
      expect(events.filter((e) => e.type === 'online').map((e) => e.uuid)).toEqual([devs[0]!.uuid, devs[1]!.uuid]);
      // Known devices keep heartbeating at the limit.
      devs[0]!.heartbeat();
      expect(engine.counters.drops['device-limit']).toBe(2);
      // Expiring one frees a place.
      engine.sweep(Date.now() + engine.options.expiryMs + 1);
      expect(engine.deviceCount).toBe(0);
      devs[3]!.heartbeat();
      expect(engine.deviceCount).toBe(1);
    });
  });

  describe('anti-amplification', () => {
    it('a spoofed heartbeat from a new address gets at most factor x 21 bytes, whatever is pending', async () => {
      const { engine, sink } = setup({ udpReplyFactor: 32 });
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      await engine.push(d.uuid, { kind: 'notice' });
      await engine.push(d.uuid, { kind: 'category', mask: 5n });
      await engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(500, 0x41) });
      sink.clear();

      const victim = { address: '203.0.113.9', port: 53 };
      d.heartbeat(victim);
      await flush();
      const out = sink.bytesTo(victim.address);
      expect(out).toBeGreaterThan(0); // the path works for a real rebinding...
      expect(out).toBeLessThanOrEqual(32 * 21); // ...but never pays more than the datagram earned
      expect(sink.bytesTo(ADDR)).toBe(0); // nothing to the old address either

      // Credit from the old address does not carry over: with a 500-byte
      // message pending, a push right after the spoofed heartbeat finds the
      // budget spent and waits.
      const r = await engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(500, 0x42) });
      expect(r).toMatchObject({ sentVia: null, reachable: true });
      expect(sink.bytesTo(victim.address)).toBe(out);
      expect(engine.counters.drops['reply-budget']).toBeGreaterThan(0);
    });

    it('never sends an address more than factor x the bytes it received from it (randomised loop)', async () => {
      const factor = 32;
      const { engine, sink } = setup({ udpReplyFactor: factor, echo: 'always' });
      const addrs = [
        { address: '127.0.0.1', port: 40_001 },
        { address: '127.0.0.2', port: 40_002 },
        { address: '198.51.100.7', port: 9 },
      ];
      const inBytes = new Map<string, number>();
      const devs = [new Dev(engine), new Dev(engine)];
      let seed = 12345;
      const rnd = (n: number) => {
        seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
        return (seed >>> 8) % n;
      };
      const key = (a: { address: string; port: number }) => `${a.address}:${a.port}`;
      const outBytes = () => {
        const m = new Map<string, number>();
        for (const s of sink.sent) m.set(`${s.address}:${s.port}`, (m.get(`${s.address}:${s.port}`) ?? 0) + s.frame.length);
        return m;
      };
      for (let step = 0; step < 600; step++) {
        const d = devs[rnd(devs.length)]!;
        const from = addrs[rnd(addrs.length)]!;
        switch (rnd(6)) {
          case 0:
          case 1:
            d.heartbeat(from);
            inBytes.set(key(from), (inBytes.get(key(from)) ?? 0) + 21);
            break;
          case 2:
            d.ackMessage(from);
            inBytes.set(key(from), (inBytes.get(key(from)) ?? 0) + 21);
            break;
          case 3:
            await engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(1 + rnd(500)) });
            break;
          case 4:
            await engine.push(d.uuid, { kind: 'category', mask: BigInt(1 + rnd(1000)) });
            break;
          case 5:
            await engine.push(d.uuid, { kind: 'notice' });
            break;
        }
        if (rnd(3) === 0) await flush();
        for (const [k, out] of outBytes()) {
          expect(out, `step ${step}: ${k}`).toBeLessThanOrEqual(factor * (inBytes.get(k) ?? 0));
        }
      }
      await flush();
      // The loop exercised both sides of the budget.
      expect(engine.counters.sends).toBeGreaterThan(50);
      expect(engine.counters.drops['reply-budget']).toBeGreaterThan(10);
      for (const [k, out] of outBytes()) expect(out, k).toBeLessThanOrEqual(factor * (inBytes.get(k) ?? 0));
    });

    it('a push that finds the budget spent is sent on the next heartbeat', async () => {
      const { engine, sink, events } = setup({ udpReplyFactor: 32 });
      const d = new Dev(engine);
      d.heartbeat(); // 672 bytes of credit
      await flush();
      const first = await engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(500, 1) }); // 505 out
      expect(first.sentVia).toBe('udp');
      const second = await engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(500, 2) }); // 167 left
      expect(second).toMatchObject({ sentVia: null, reachable: true });
      expect(engine.counters.drops['reply-budget']).toBe(1);
      expect(sink.sent).toHaveLength(1);
      expect(events.filter((e) => e.type === 'sent')).toHaveLength(1);

      d.heartbeat();
      await flush();
      const frames = sink.to(ADDR, PORT);
      expect(frames).toHaveLength(2);
      expect(frames[1]!.content.equals(Buffer.alloc(500, 2))).toBe(true);
      expect(events.filter((e) => e.type === 'sent').at(-1)).toMatchObject({ version: second.version, resend: true });
    });

    it("through the dispatcher: a message not sent at once (budget spent) settles when the heartbeat sends it (ack: 'none'), with its send time", async () => {
      const { engine, store } = setup({ udpReplyFactor: 32 });
      const dispatcher = new PushDispatcher(engine, store);
      const d = new Dev(engine);
      d.heartbeat(); // 672 bytes of credit
      await flush();
      const first = await dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.alloc(500, 1) }, { source: 'service', ack: 'none' });
      expect(first).toMatchObject({ status: 'success', transport: 'udp' });
      let second: PushOutcome | undefined;
      void dispatcher.dispatch(d.uuid, { kind: 'message', content: Buffer.alloc(500, 2) }, { source: 'service', ack: 'none', timeoutMs: 2_000 }).then((o) => (second = o));
      await flush();
      expect(second).toBeUndefined(); // budget spent: not sent yet, waiting
      d.heartbeat();
      await flush();
      await flush();
      expect(second).toMatchObject({ status: 'success', transport: 'udp' });
      expect(second!.timeline.sent).toBeGreaterThan(0);
      dispatcher.close();
    });

    it('udpReplyFactor 0 disables the budget', async () => {
      const { engine, sink } = setup({ udpReplyFactor: 0 });
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      for (let i = 0; i < 20; i++) await engine.push(d.uuid, { kind: 'message', content: Buffer.alloc(500) });
      expect(sink.sent).toHaveLength(20);
      expect(engine.counters.drops['reply-budget']).toBe(0);
    });
  });

  describe('heartbeat echo', () => {
    it.each([
      ['never', [false, false, false]],
      ['always', [true, true, true]],
      ['sa_changed', [false, false, true]],
    ] as const)('policy %s: first heartbeat, same address, new address', async (echo, expected) => {
      const { engine, sink } = setup({ echo });
      const d = new Dev(engine);
      const got: boolean[] = [];
      for (const from of [undefined, undefined, { address: ADDR, port: PORT + 5 }]) {
        sink.clear();
        d.heartbeat(from);
        await flush();
        const frames = sink.sent.map((s) => decodeServerFrame(s.frame));
        got.push(frames.some((f) => typeof f !== 'string' && f.cmd === ServerCmd.HeartbeatEcho));
      }
      expect(got).toEqual(expected);
      expect(engine.counters.echoes).toBe(expected.filter(Boolean).length);
    });

    it('does not echo when the heartbeat delivered something', async () => {
      const { engine, sink } = setup({ echo: 'always' });
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      await engine.push(d.uuid, msg('x'));
      sink.clear();
      d.heartbeat();
      await flush();
      expect(sink.to(ADDR, PORT).map((f) => f.cmd)).toEqual([ServerCmd.Message]);
    });
  });

  describe('options', () => {
    const optionOf = (fn: () => unknown): string => {
      try {
        fn();
      } catch (err) {
        expect(err).toBeInstanceOf(PushConfigError);
        expect((err as Error).message).toContain((err as PushConfigError).option);
        return (err as PushConfigError).option;
      }
      throw new Error('expected a PushConfigError');
    };

    it('names the bad option', () => {
      expect(optionOf(() => resolveDeviceEngineOptions({ echo: 'sometimes' as never }))).toBe('echo');
      expect(optionOf(() => resolveDeviceEngineOptions({ udpReplyFactor: 10 }))).toBe('udpReplyFactor');
      expect(optionOf(() => resolveDeviceEngineOptions({ udpReplyFactor: 40, maxContentLength: 2000 }))).toBe('udpReplyFactor');
      expect(optionOf(() => resolveDeviceEngineOptions({ udpReplyFactor: -1 }))).toBe('udpReplyFactor');
      expect(optionOf(() => resolveDeviceEngineOptions({ udpReplyCreditMax: 100 }))).toBe('udpReplyFactor');
      expect(optionOf(() => resolveDeviceEngineOptions({ reachableWindowMs: -5 }))).toBe('reachableWindowMs');
      expect(optionOf(() => resolveDeviceEngineOptions({ reachableWindowMs: 1.5 }))).toBe('reachableWindowMs');
      expect(optionOf(() => resolveDeviceEngineOptions({ expiryMs: 0 }))).toBe('expiryMs');
      expect(optionOf(() => resolveDeviceEngineOptions({ expiryMs: 1000, reachableWindowMs: 2000 }))).toBe('expiryMs');
      expect(optionOf(() => resolveDeviceEngineOptions({ sweepIntervalMs: 0 }))).toBe('sweepIntervalMs');
      expect(optionOf(() => resolveDeviceEngineOptions({ maxDevices: 0 }))).toBe('maxDevices');
      expect(optionOf(() => resolveDeviceEngineOptions({ maxContentLength: 70_000 }))).toBe('maxContentLength');
      expect(optionOf(() => resolveDeviceEngineOptions({ nodeId: '' }))).toBe('nodeId');
      expect(optionOf(() => resolveDeviceEngineOptions({ admission: 'yes' as never }))).toBe('admission');
      expect(optionOf(() => resolveDeviceEngineOptions({ echo: 'x' as never }, 'device.'))).toBe('device.echo');
      expect(() => new DeviceEngine(new MemoryOfflineStore(), new LocalPushRouter(), { udpReplyFactor: 1 })).toThrow(PushConfigError);
    });

    it('fills the DDPush defaults and accepts a consistent smaller setup', () => {
      expect(resolveDeviceEngineOptions()).toMatchObject({
        nodeId: 'local',
        reachableWindowMs: 60_000,
        expiryMs: 50 * 3600_000,
        echo: 'never',
        maxContentLength: 500,
        udpReplyFactor: 32,
      });
      expect(resolveDeviceEngineOptions({ maxContentLength: 100, udpReplyFactor: 8 }).udpReplyFactor).toBe(8);
      expect(resolveDeviceEngineOptions({ udpReplyFactor: 0, maxContentLength: 60_000 }).udpReplyFactor).toBe(0);
    });
  });

  describe('sweep', () => {
    it('marks a silent device offline after the window, then expires and removes it', async () => {
      // Only the clock is simulated (setImmediate stays real for the store's promises).
      vi.useFakeTimers({ toFake: ['Date'] });
      const t0 = Date.now();
      const { engine, events } = setup({ reachableWindowMs: 100, expiryMs: 1000 });
      const a = new Dev(engine, ADDR, 42_001);
      const b = new Dev(engine, ADDR, 42_002);
      a.heartbeat();
      b.heartbeat();
      await flush();
      await engine.push(b.uuid, msg('still stored'));
      expect(engine.deviceCount).toBe(2);

      vi.setSystemTime(t0 + 100);
      engine.sweep(Date.now());
      expect(events.filter((e) => e.type === 'offline')).toEqual([]);
      expect(engine.localRoute(a.uuid)).toMatchObject({ transport: 'udp', port: 42_001 });

      vi.setSystemTime(t0 + 500);
      engine.sweep(Date.now());
      expect(events.filter((e) => e.type === 'offline')).toEqual([
        { type: 'offline', uuid: a.uuid, reason: 'unreachable', at: t0 + 500 },
        { type: 'offline', uuid: b.uuid, reason: 'unreachable', at: t0 + 500 },
      ]);
      expect(engine.deviceCount).toBe(2);
      expect(await engine.inspect(a.uuid)).toMatchObject({ online: false, reachable: false });
      expect(engine.localRoute(a.uuid)).toBeNull();
      // Unreachable: a push is stored, not sent.
      expect(await engine.push(a.uuid, { kind: 'notice' })).toMatchObject({ sentVia: null, reachable: false });

      vi.setSystemTime(t0 + 1001);
      engine.sweep(Date.now());
      expect(engine.deviceCount).toBe(0);
      expect(engine.counters.expired).toBe(2);
      // Already offline: no second offline event for the expiry.
      expect(events.filter((e) => e.type === 'offline')).toHaveLength(2);
      // Expiry drops the record, not the pending messages.
      expect(await engine.inspect(a.uuid)).toMatchObject({ online: false, transport: null, pending: { notice: expect.any(Number) } });
      expect(await engine.inspect(b.uuid)).toMatchObject({ online: false, transport: null, pending: { message: Buffer.from('still stored') } });
      expect(engine.localRoute(b.uuid)).toBeNull();

      // Coming back is a new registration: online again, pending delivered.
      events.length = 0;
      b.heartbeat();
      await flush();
      expect(events.map((e) => e.type)).toEqual(['online', 'sent']);
      expect(engine.deviceCount).toBe(1);
    });

    it("reports 'expired' for a device that was still marked online", async () => {
      const { engine, events } = setup({ reachableWindowMs: 100, expiryMs: 1000 });
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      engine.sweep(Date.now() + 5000);
      expect(events.filter((e) => e.type === 'offline')).toEqual([expect.objectContaining({ uuid: d.uuid, reason: 'expired' })]);
      expect(engine.deviceCount).toBe(0);
    });

    it('a heartbeat after the window announces online again even before the sweep ran', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const t0 = Date.now();
      const { engine, events } = setup({ reachableWindowMs: 30, expiryMs: 100_000 });
      const d = new Dev(engine);
      d.heartbeat();
      await flush();
      vi.setSystemTime(t0 + 30);
      d.heartbeat(); // still inside the window
      await flush();
      vi.setSystemTime(t0 + 61);
      d.heartbeat();
      await flush();
      expect(events.map((e) => (e.type === 'offline' ? `offline:${e.reason}` : e.type))).toEqual(['online', 'offline:unreachable', 'online']);
    });

    it('never expires a device with an open TCP link', async () => {
      const { engine, events } = setup({ reachableWindowMs: 100, expiryMs: 1000 });
      const link = new RecordingLink();
      const uuid = randomBytes(16);
      const f = decodeClientFrame(encodeClientFrame({ appId: 1, cmd: ClientCmd.Heartbeat, uuid }));
      if (typeof f === 'string') throw new Error(f);
      engine.handleTcp(f, link);
      await flush();
      expect(link.deviceId).toBeGreaterThanOrEqual(0);
      engine.sweep(Date.now() + 10_000);
      expect(engine.deviceCount).toBe(1);
      expect(events.map((e) => e.type)).toEqual(['online']);
      engine.tcpClosed(link);
      expect(events.at(-1)).toMatchObject({ type: 'offline', reason: 'tcp-closed' });
      engine.sweep(Date.now() + 10_000);
      expect(engine.deviceCount).toBe(0);
    });

    it('is incremental: one step visits at most its batch of records', async () => {
      const options = { reachableWindowMs: 60_000, expiryMs: 60_000, sweepIntervalMs: 1000 };
      const { engine } = setup(options);
      const n = 5000;
      for (let i = 0; i < n; i++) new Dev(engine, ADDR, 10_000 + i).heartbeat();
      await flush();
      expect(engine.deviceCount).toBe(n);
      // batch = max(1024, ceil(records / (window / interval))) = max(1024, ceil(5000 / 60)) = 1024
      const perWindow = Math.floor(options.reachableWindowMs / options.sweepIntervalMs);
      const batch = Math.min(n, Math.max(1024, Math.ceil(n / perWindow)));
      expect(batch).toBe(1024);
      const later = Date.now() + options.expiryMs + 1;
      engine.sweep(later);
      expect(engine.deviceCount).toBe(n - batch);
      engine.sweep(later);
      expect(engine.deviceCount).toBe(n - 2 * batch);
      // The cursor wraps: enough steps cover the whole table.
      for (let i = 0; i < Math.ceil(n / batch); i++) engine.sweep(later);
      expect(engine.deviceCount).toBe(0);
      expect(engine.counters.expired).toBe(n);
    });

    it('takes bigger steps when the window holds few intervals, covering the table once per window', async () => {
      // window / interval = 2 steps per window -> each step visits half of 5000 records.
      const { engine } = setup({ reachableWindowMs: 2000, expiryMs: 2000, sweepIntervalMs: 1000 });
      for (let i = 0; i < 5000; i++) new Dev(engine, ADDR, 10_000 + i).heartbeat();
      await flush();
      const later = Date.now() + 5000;
      engine.sweep(later);
      expect(engine.deviceCount).toBe(2500);
      engine.sweep(later);
      expect(engine.deviceCount).toBe(0);
    });
  });

  describe('TCP links (engine side)', () => {
    const heartbeatFrame = (uuid: Buffer) => {
      const f = decodeClientFrame(encodeClientFrame({ appId: 2, cmd: ClientCmd.Heartbeat, uuid }));
      if (typeof f === 'string') throw new Error(f);
      return f;
    };

    it('a reconnect replaces the old link (closed) and announces offline then online', async () => {
      const { engine, events } = setup();
      const uuid = randomBytes(16);
      const l1 = new RecordingLink('127.0.0.1', 50_001);
      const l2 = new RecordingLink('127.0.0.1', 50_002);
      engine.handleTcp(heartbeatFrame(uuid), l1);
      await flush();
      engine.handleTcp(heartbeatFrame(uuid), l2);
      await flush();
      expect(l1.closed).toBe(true);
      expect(l1.deviceId).toBe(-1);
      expect(l2.closed).toBe(false);
      expect(engine.tcpLinkCount).toBe(1);
      expect(events.map((e) => (e.type === 'online' ? `online:${(e as { port: number }).port}` : `${e.type}`))).toEqual([
        'online:50001',
        'offline',
        'online:50002',
      ]);
      // The old link's close arriving late changes nothing.
      engine.tcpClosed(l1);
      expect(engine.tcpLinkCount).toBe(1);
      const r = await engine.push(uuid.toString('hex'), msg('to l2'));
      expect(r.sentVia).toBe('tcp');
      expect(l1.frames).toHaveLength(0);
      expect(l2.frames).toHaveLength(1);
    });

    it('acks over TCP count only on the link bound to the device', async () => {
      const { engine, store } = setup();
      const uuid = randomBytes(16);
      const own = new RecordingLink();
      const other = new RecordingLink('127.0.0.1', 50_100);
      engine.handleTcp(heartbeatFrame(uuid), own);
      await flush();
      await engine.push(uuid.toString('hex'), msg('x'));
      const ack = decodeClientFrame(encodeClientFrame({ appId: 2, cmd: ClientCmd.AckMessage, uuid }));
      if (typeof ack === 'string') throw new Error(ack);
      engine.handleTcp(ack, other);
      // A UDP ack for a TCP device is foreign too.
      engine.handleUdp(ack, '127.0.0.1', 50_000);
      await flush();
      expect(engine.counters.drops['ack-foreign-address']).toBe(2);
      expect(await store.read(uuid.toString('hex'))).not.toBeNull();
      engine.handleTcp(ack, own);
      await flush();
      expect(await store.read(uuid.toString('hex'))).toBeNull();
    });

    it('counts tcp-backpressure when the link refuses a frame', async () => {
      const { engine } = setup();
      const uuid = randomBytes(16);
      const link = new RecordingLink();
      engine.handleTcp(heartbeatFrame(uuid), link);
      await flush();
      link.closed = true;
      const r = await engine.push(uuid.toString('hex'), msg('x'));
      expect(r.sentVia).toBeNull();
      expect(engine.counters.drops['tcp-backpressure']).toBe(1);
    });
  });
});
