import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { createSocket, Socket as DgramSocket } from 'node:dgram';
import { connect, Server as NetServer } from 'node:net';
import { ConsoleLogger, Controller, Logger, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Ctx, EventPattern, Payload } from '@nestjs/microservices';
import { filter, firstValueFrom, type Observable, timeout } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceClient, type DeviceClientOptions, type DeviceMessage } from '../../lib/client/device.client.js';
import { DeviceEngine } from '../../lib/device/device-engine.js';
import type { DeviceEngineOptions } from '../../lib/device/device-engine.options.js';
import type { DeviceAckEvent, DeviceEvent, DeviceOnlineEvent } from '../../lib/device/device-event.interface.js';
import { encodeClientFrame } from '../../lib/protocol/client-frame.codec.js';
import { ClientCmd, type ClientFrameError } from '../../lib/protocol/protocol.constants.js';
import { DEVICE_TRANSPORT } from '../../lib/push.constants.js';
import { LocalPushRouter } from '../../lib/router/local-push-router.js';
import { DeviceEventContext, DeviceTransportStrategy, type DeviceTransportOptions } from '../../lib/server/device-transport.strategy.js';
import { MemoryOfflineStore } from '../../lib/store/memory-offline-store.js';
import { startDeviceServer } from '../helpers/device-server.js';
import { countPerTurn } from '../helpers/turns.js';

type Transport = 'udp' | 'tcp';
type Server = Awaited<ReturnType<typeof startDeviceServer>> & { events: DeviceEvent[] };

const HOST = '127.0.0.1';
/** How long "nothing more arrives" is watched for, after a heartbeat round trip proved the path is live. */
const QUIET_MS = 200;

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function next<T>(source: Observable<T>, pred: (v: T) => boolean, what: string, ms = 3000): Promise<T> {
  return firstValueFrom(
    source.pipe(
      filter(pred),
      timeout({ first: ms, with: () => Promise.reject(new Error(`timed out after ${ms} ms waiting for ${what}`)) }),
    ),
  );
}

async function waitFor(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

function within<T>(p: Promise<T>, what: string, ms = 3000): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

async function server(engine: DeviceEngineOptions = {}, transport: DeviceTransportOptions = {}): Promise<Server> {
  const s = await startDeviceServer(engine, transport);
  cleanup.push(() => s.close());
  const events: DeviceEvent[] = [];
  s.engine.events.subscribe((e) => events.push(e));
  return Object.assign(s, { events });
}

function newUuid(): string {
  return randomBytes(16).toString('hex');
}

/** A DeviceClient with manual heartbeats (tests send them when they need one), recording what it receives. */
function device(s: { port: number }, transport: Transport, opts: Partial<DeviceClientOptions> = {}) {
  const d = new DeviceClient({ host: HOST, port: s.port, transport, uuid: newUuid(), heartbeatIntervalMs: 0, ...opts });
  const got: DeviceMessage[] = [];
  d.messages.subscribe((m) => got.push(m));
  cleanup.push(() => d.close());
  return Object.assign(d, { got });
}
type Device = ReturnType<typeof device>;

const nextMessage = (d: DeviceClient, kind: DeviceMessage['kind'], what: string = kind) => next(d.messages, (m) => m.kind === kind, `${what} on device`);
const pushes = (d: Device) => d.got.filter((m) => m.kind !== 'echo');
const texts = (d: Device) => d.got.filter((m) => m.kind === 'message').map((m) => m.content.toString());

async function connectOnline(s: Server, d: DeviceClient): Promise<DeviceOnlineEvent> {
  const online = next(s.engine.events, (e) => e.type === 'online' && e.uuid === d.uuid, `online of ${d.uuid}`);
  await d.connect();
  return (await online) as DeviceOnlineEvent;
}

function ackEvent(s: Server, uuid: string, pred: (e: DeviceAckEvent) => boolean = () => true): Promise<DeviceAckEvent> {
  return next(s.engine.events, (e) => e.type === 'ack' && e.uuid === uuid && pred(e), `ack of ${uuid}`) as Promise<DeviceAckEvent>;
}

/** Sends a heartbeat and waits until the server has processed it. */
async function heartbeatRoundTrip(s: Server, d: DeviceClient): Promise<void> {
  const n = s.engine.counters.heartbeats;
  d.heartbeat();
  await waitFor(() => s.engine.counters.heartbeats > n, 'the server to process a heartbeat');
}

function frame(cmd: ClientCmd, uuid: string | Buffer, mask = 0n, appId = 1): Buffer {
  return encodeClientFrame({ appId, cmd, uuid: typeof uuid === 'string' ? Buffer.from(uuid, 'hex') : uuid, mask });
}

async function rawUdp() {
  const sock = createSocket('udp4');
  const got: Buffer[] = [];
  sock.on('message', (m) => got.push(m));
  await new Promise<void>((r) => sock.bind(0, HOST, () => r()));
  cleanup.push(() => new Promise<void>((r) => sock.close(() => r())));
  return {
    sock,
    got,
    send: (s: Server, bytes: Uint8Array) =>
      new Promise<void>((resolve, reject) => sock.send(bytes, s.port, HOST, (err) => (err ? reject(err) : resolve()))),
  };
}

async function rawTcp(s: { port: number }) {
  const sock = connect({ host: HOST, port: s.port });
  const data: Buffer[] = [];
  let isClosed = false;
  const closed = new Promise<void>((r) =>
    sock.on('close', () => {
      isClosed = true;
      r();
    }),
  );
  sock.on('error', () => {});
  sock.on('data', (c) => data.push(c));
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  cleanup.push(() => sock.destroy());
  return { sock, data, closed, isClosed: () => isClosed };
}

describe.each(['udp', 'tcp'] as const)('device transport over %s', (transport) => {
  it('registers, gets an immediate push, acks it, and gets nothing more on later heartbeats', async () => {
    const s = await server({ echo: 'always' });
    const d = device(s, transport);
    const online = await connectOnline(s, d);
    expect(online).toMatchObject({ type: 'online', uuid: d.uuid, transport, address: HOST });
    expect(s.engine.deviceCount).toBe(1);
    await nextMessage(d, 'echo', 'echo of the first heartbeat');

    const got = nextMessage(d, 'message');
    const acked = ackEvent(s, d.uuid);
    const r = await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('hello') });
    expect(r).toMatchObject({ sentVia: transport, reachable: true });
    expect(await got).toMatchObject({ kind: 'message', appId: 1, content: Buffer.from('hello') });
    expect(await acked).toMatchObject({ kind: 'message', version: r.version });
    expect(await s.store.read(d.uuid)).toBeNull();

    // Two more heartbeats: each is answered by an echo only.
    for (let i = 0; i < 2; i++) {
      const echo = nextMessage(d, 'echo');
      d.heartbeat();
      await echo;
    }
    await sleep(QUIET_MS);
    expect(pushes(d).map((m) => m.kind)).toEqual(['message']);
    expect(d.got.filter((m) => m.kind === 'echo')).toHaveLength(3);
    expect(s.events.filter((e) => e.type === 'online')).toHaveLength(1);
    expect(s.engine.counters.resends).toBe(0);
  });

  it('re-sends an unacked message on the next heartbeat, until it is acked', async () => {
    const s = await server();
    const d = device(s, transport, { autoAck: false });
    await connectOnline(s, d);

    const first = nextMessage(d, 'message');
    const r = await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('again') });
    expect((await first).content.toString()).toBe('again');

    for (let i = 0; i < 2; i++) {
      const resent = nextMessage(d, 'message', `re-send ${i + 1}`);
      d.heartbeat();
      expect((await resent).content.toString()).toBe('again');
    }
    expect(s.events.filter((e) => e.type === 'sent').map((e) => (e as { resend: boolean }).resend)).toEqual([false, true, true]);
    expect((await s.store.read(d.uuid))?.messageVersion).toBe(r.version);

    const acked = ackEvent(s, d.uuid);
    d.ack('message');
    expect(await acked).toMatchObject({ kind: 'message', version: r.version });
    expect(await s.store.read(d.uuid)).toBeNull();
    await heartbeatRoundTrip(s, d);
    await sleep(QUIET_MS);
    expect(texts(d)).toEqual(['again', 'again', 'again']);
  });

  it('delivers a message pushed while the device was offline on its first heartbeat', async () => {
    const s = await server();
    const d = device(s, transport);
    const r = await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('while you were away') });
    expect(r).toMatchObject({ sentVia: null, reachable: false });
    const n = await s.engine.push(d.uuid, { kind: 'notice' });
    expect(n.sentVia).toBeNull();

    const got = nextMessage(d, 'message');
    const notice = nextMessage(d, 'notice');
    const acked = ackEvent(s, d.uuid, (e) => e.kind === 'message');
    await d.connect();
    expect((await got).content.toString()).toBe('while you were away');
    await notice;
    expect(await acked).toMatchObject({ version: r.version });
    await waitFor(() => s.events.some((e) => e.type === 'ack' && e.kind === 'notice'), 'notice ack');
    expect(await s.store.read(d.uuid)).toBeNull();
  });

  it('accumulates category masks and clears only the bits a partial ack names', async () => {
    const s = await server();
    const d = device(s, transport, { autoAck: false });
    await connectOnline(s, d);

    let got = nextMessage(d, 'category');
    await s.engine.push(d.uuid, { kind: 'category', mask: 0b01n });
    expect((await got).mask).toBe(0b01n);
    got = nextMessage(d, 'category');
    const r = await s.engine.push(d.uuid, { kind: 'category', mask: 0b10n });
    expect(r.mask).toBe(0b11n);
    expect((await got).mask).toBe(0b11n);

    // The next heartbeat delivers the whole pending mask.
    got = nextMessage(d, 'category');
    d.heartbeat();
    expect((await got).mask).toBe(0b11n);

    // The device acks only the first copy it saw.
    let acked = ackEvent(s, d.uuid);
    d.ack('category', 0b01n);
    expect(await acked).toMatchObject({ kind: 'category', mask: 0b01n, remaining: 0b10n });
    expect((await s.store.read(d.uuid))?.category).toBe(0b10n);

    got = nextMessage(d, 'category');
    d.heartbeat();
    expect((await got).mask).toBe(0b10n);

    acked = ackEvent(s, d.uuid);
    d.ack('category', 0b10n);
    expect(await acked).toMatchObject({ mask: 0b10n, remaining: 0n });
    expect(await s.store.read(d.uuid)).toBeNull();
    await heartbeatRoundTrip(s, d);
    await sleep(QUIET_MS);
    expect(d.got.map((m) => m.mask)).toEqual([0b01n, 0b11n, 0b11n, 0b10n]);
  });

  it('keeps only the latest custom message for an offline device', async () => {
    const s = await server({ echo: 'always' });
    const d = device(s, transport);
    const a = await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('A') });
    const b = await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('B') });
    expect(b.replaced).toBe(a.version);

    const got = nextMessage(d, 'message');
    const acked = ackEvent(s, d.uuid);
    await d.connect();
    expect((await got).content.toString()).toBe('B');
    expect(await acked).toMatchObject({ version: b.version });
    const echo = nextMessage(d, 'echo');
    d.heartbeat();
    await echo;
    await sleep(QUIET_MS);
    expect(texts(d)).toEqual(['B']);
  });

  it("echoes every heartbeat under 'always'", async () => {
    const s = await server({ echo: 'always' });
    const d = device(s, transport, { appId: 9 });
    await connectOnline(s, d);
    d.heartbeat();
    d.heartbeat();
    await waitFor(() => d.got.length === 3, 'three echoes');
    expect(d.got.map((m) => [m.kind, m.appId])).toEqual([
      ['echo', 9],
      ['echo', 9],
      ['echo', 9],
    ]);
    expect(s.engine.counters.echoes).toBe(3);
  });

  it("never echoes under 'never'", async () => {
    const s = await server({ echo: 'never' });
    const d = device(s, transport);
    await connectOnline(s, d);
    await heartbeatRoundTrip(s, d);
    await heartbeatRoundTrip(s, d);
    await sleep(QUIET_MS);
    expect(d.got).toEqual([]);
    expect(s.engine.counters).toMatchObject({ heartbeats: 3, echoes: 0 });
  });

  it('runs the admission hook on first contact and refuses what it rejects', async () => {
    const requests: { uuid: string; transport: string; address: string; port: number; appId: number }[] = [];
    let blocked = '';
    const s = await server({ admission: (r) => (requests.push(r), r.uuid !== blocked) });
    const bad = device(s, transport, { appId: 4 });
    blocked = bad.uuid;
    const good = device(s, transport);

    await bad.connect();
    await waitFor(() => s.engine.counters.drops['admission-refused'] === 1, 'the refusal');
    await connectOnline(s, good);
    expect(requests.map((r) => [r.uuid, r.transport, r.address, r.appId])).toEqual([
      [bad.uuid, transport, HOST, 4],
      [good.uuid, transport, HOST, 1],
    ]);
    expect(requests.every((r) => r.port > 0)).toBe(true);
    expect(s.engine.deviceCount).toBe(1);
    expect(await s.engine.inspect(bad.uuid)).toBeNull();
    expect(s.events.filter((e) => e.type === 'online').map((e) => e.uuid)).toEqual([good.uuid]);

    // A push for the refused device is stored, never sent; it asks again on every heartbeat.
    const r = await s.engine.push(bad.uuid, { kind: 'message', content: Buffer.from('no') });
    expect(r.sentVia).toBeNull();
    bad.heartbeat();
    await waitFor(() => s.engine.counters.drops['admission-refused'] === 2, 'the second refusal');
    await sleep(QUIET_MS);
    expect(bad.got).toEqual([]);
    const ok = nextMessage(good, 'message');
    await s.engine.push(good.uuid, { kind: 'message', content: Buffer.from('yes') });
    expect((await ok).content.toString()).toBe('yes');
  });

  it('closes a TCP connection whose device is refused, so it cannot hold a connection slot', async () => {
    const s = await server({ admission: () => false });
    if (transport !== 'tcp') {
      // UDP has no connection to close: the datagram is dropped and counted.
      const d = device(s, transport);
      await d.connect();
      await waitFor(() => s.engine.counters.drops['admission-refused'] === 1, 'the refusal');
      return;
    }
    const raw = await rawTcp(s);
    raw.sock.write(frame(ClientCmd.Heartbeat, newUuid()));
    await within(raw.closed, 'the refused connection to be closed');
    expect(s.engine.counters.drops['admission-refused']).toBe(1);
    expect(s.engine.tcpLinkCount).toBe(0);
  });

  it('expires a record that stops heartbeating (offline first, then gone)', async () => {
    const s = await server({ reachableWindowMs: 150, expiryMs: 300, sweepIntervalMs: 20 });
    const d = device(s, transport);
    await connectOnline(s, d);
    expect(await s.engine.inspect(d.uuid)).toMatchObject({ online: true, transport });

    if (transport === 'tcp') {
      // An open TCP link is reachable whatever the window: it is neither offline nor expired.
      await sleep(450);
      expect(s.events.filter((e) => e.type === 'offline')).toEqual([]);
      expect(await s.engine.inspect(d.uuid)).toMatchObject({ online: true, reachable: true });
    }
    const offline = next(s.engine.events, (e) => e.type === 'offline' && e.uuid === d.uuid, 'offline');
    if (transport === 'tcp') await d.close();
    expect(await offline).toMatchObject({ reason: transport === 'tcp' ? 'tcp-closed' : 'unreachable' });
    expect(s.engine.localRoute(d.uuid)).toBeNull();

    await waitFor(() => s.engine.deviceCount === 0, 'the record to expire');
    expect(s.engine.counters.expired).toBe(1);
    expect(await s.engine.inspect(d.uuid)).toBeNull();
    expect(s.events.filter((e) => e.type === 'offline')).toHaveLength(1);
  });
});

describe('device transport: UDP specifics', () => {
  it("'sa_changed' echoes only when a heartbeat comes from a new source address", async () => {
    const s = await server({ echo: 'sa_changed' });
    const uuid = newUuid();
    const d1 = device(s, 'udp', { uuid });
    await connectOnline(s, d1);
    await heartbeatRoundTrip(s, d1);
    // Same uuid, new socket: the NAT-rebinding case.
    const d2 = device(s, 'udp', { uuid });
    const echo2 = nextMessage(d2, 'echo', 'echo to the new address');
    await d2.connect();
    await echo2;
    await heartbeatRoundTrip(s, d2);
    // Back to the first address: changed again.
    const echo1 = nextMessage(d1, 'echo', 'echo back at the first address');
    d1.heartbeat();
    await echo1;
    await heartbeatRoundTrip(s, d1);
    await sleep(QUIET_MS);
    expect(d1.got.map((m) => m.kind)).toEqual(['echo']);
    expect(d2.got.map((m) => m.kind)).toEqual(['echo']);
    expect(s.engine.counters).toMatchObject({ heartbeats: 6, echoes: 2, online: 1 });
  });

  it('follows a device to its new address (pushes go to the latest heartbeat source)', async () => {
    const s = await server();
    const uuid = newUuid();
    const d1 = device(s, 'udp', { uuid });
    await connectOnline(s, d1);
    const d2 = device(s, 'udp', { uuid });
    await d2.connect();
    await waitFor(() => s.engine.counters.heartbeats === 2, 'second heartbeat');
    const got = nextMessage(d2, 'message');
    await s.engine.push(uuid, { kind: 'message', content: Buffer.from('here') });
    expect((await got).content.toString()).toBe('here');
    await waitFor(() => s.events.some((e) => e.type === 'ack'), 'ack from the new address');
    await sleep(QUIET_MS);
    expect(d1.got).toEqual([]);
  });

  it('drops malformed datagrams, counts each reason, never replies to them, and keeps serving devices', async () => {
    const s = await server({ echo: 'always' });
    const good = device(s, 'udp');
    await connectOnline(s, good);
    await nextMessage(good, 'echo');
    const before = await s.engine.inspect(good.uuid);

    const raw = await rawUdp();
    const hb = frame(ClientCmd.Heartbeat, good.uuid);
    const badVersion = Buffer.from(hb);
    badVersion[0] = 2;
    const unknownCmd = Buffer.from(hb);
    unknownCmd[2] = 0x05;
    const badDataLen = Buffer.concat([hb, Buffer.alloc(8)]);
    badDataLen[20] = 8; // heartbeat claiming an 8-byte body
    const ackMaskNoBody = frame(ClientCmd.AckCategory, good.uuid, 1n).subarray(0, 21); // says 8, carries 0
    const trailing = Buffer.concat([hb, Buffer.from([0])]);
    const cases: [ClientFrameError, Buffer][] = [
      ['too-short', Buffer.alloc(0)],
      ['too-short', hb.subarray(0, 20)],
      ['bad-version', badVersion],
      ['unknown-cmd', unknownCmd],
      ['bad-data-length', badDataLen],
      ['bad-length', ackMaskNoBody],
      ['bad-length', trailing],
    ];
    const datagrams = s.transport.counters.datagrams;
    for (const [, bytes] of cases) await raw.send(s, bytes);
    await waitFor(() => s.transport.counters.datagrams === datagrams + cases.length, 'all malformed datagrams to arrive');

    const expected: Record<string, number> = {};
    for (const [reason] of cases) expected[reason] = (expected[reason] ?? 0) + 1;
    for (const reason of ['too-short', 'bad-version', 'unknown-cmd', 'bad-data-length', 'bad-length'] as const) {
      expect(s.engine.counters.drops[reason], reason).toBe(expected[reason]);
    }
    // None of them moved the device to the sender's address or counted as a heartbeat.
    expect(s.engine.counters.heartbeats).toBe(1);
    expect(await s.engine.inspect(good.uuid)).toMatchObject({ address: before!.address, port: before!.port });

    const got = nextMessage(good, 'message');
    await s.engine.push(good.uuid, { kind: 'message', content: Buffer.from('still here') });
    expect((await got).content.toString()).toBe('still here');
    await sleep(QUIET_MS);
    expect(raw.got).toEqual([]);
  });

  it('accepts acks only from the address of the last heartbeat', async () => {
    const s = await server();
    const d = device(s, 'udp', { autoAck: false });
    await connectOnline(s, d);
    const got = nextMessage(d, 'message');
    await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('x') });
    await got;
    const spoof = await rawUdp();
    await spoof.send(s, frame(ClientCmd.AckMessage, d.uuid));
    await waitFor(() => s.engine.counters.drops['ack-foreign-address'] === 1, 'the foreign ack');
    expect((await s.store.read(d.uuid))?.message?.toString()).toBe('x');
    const acked = ackEvent(s, d.uuid);
    d.ack('message');
    await acked;
    expect(await s.store.read(d.uuid)).toBeNull();
  });
});

describe('device transport: socket errors', () => {
  it('an error on the UDP socket or TCP server never throws out of the transport, with or without a listener', async () => {
    const s = await server();
    const d = device(s, 'udp');
    await connectOnline(s, d);
    const { udp, tcp } = s.transport.unwrap<{ udp: DgramSocket; tcp: NetServer }>();
    // No 'error' listener registered on the strategy: must be logged, not thrown.
    const logged: string[] = [];
    const record = (m: unknown) => void logged.push(String(m));
    Logger.overrideLogger({ log: () => {}, warn: () => {}, error: record });
    try {
      expect(() => udp.emit('error', Object.assign(new Error('recv failed'), { code: 'ECONNREFUSED' }))).not.toThrow();
      expect(() => tcp.emit('error', Object.assign(new Error('accept failed'), { code: 'EMFILE' }))).not.toThrow();
    } finally {
      Logger.overrideLogger(new ConsoleLogger());
    }
    expect(logged).toEqual([expect.stringContaining('recv failed'), expect.stringContaining('accept failed')]);
    // With a listener, errors are handed to it.
    const errors: string[] = [];
    s.transport.on('error', (e) => errors.push(e.message));
    udp.emit('error', new Error('udp 2'));
    tcp.emit('error', new Error('tcp 2'));
    expect(errors).toEqual(['udp 2', 'tcp 2']);
    // And the server is still serving.
    const got = nextMessage(d, 'message');
    await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('up') });
    expect((await got).content.toString()).toBe('up');
  });
});

describe('device transport: TCP specifics', () => {
  it('closes only the connection that sends garbage; other TCP and UDP devices are unaffected', async () => {
    const s = await server();
    const tcpDev = device(s, 'tcp');
    const udpDev = device(s, 'udp');
    await connectOnline(s, tcpDev);
    await connectOnline(s, udpDev);
    const statuses: string[] = [];
    tcpDev.status.subscribe((st) => statuses.push(st));

    // A registered raw connection turns bad: the device it held goes offline.
    const uuid = newUuid();
    const a = await rawTcp(s);
    const online = next(s.engine.events, (e) => e.type === 'online' && e.uuid === uuid, 'raw online');
    a.sock.write(frame(ClientCmd.Heartbeat, uuid));
    await online;
    const offline = next(s.engine.events, (e) => e.type === 'offline' && e.uuid === uuid, 'raw offline');
    const badVersion = frame(ClientCmd.Heartbeat, uuid);
    badVersion[0] = 0x7f;
    a.sock.write(badVersion);
    await within(a.closed, 'the bad-version connection to be closed');
    expect(await offline).toMatchObject({ reason: 'tcp-closed' });

    // Unknown command, and a length above 8 (the stream cannot be resynchronised).
    const b = await rawTcp(s);
    const unknownCmd = frame(ClientCmd.Heartbeat, uuid);
    unknownCmd[2] = 0x42;
    b.sock.write(unknownCmd);
    const c = await rawTcp(s);
    const hugeLen = frame(ClientCmd.Heartbeat, uuid);
    hugeLen[19] = 0xff;
    hugeLen[20] = 0xff;
    c.sock.write(hugeLen);
    // A valid frame, then the start of a bad header: nothing happens until the header is complete.
    const dConn = await rawTcp(s);
    dConn.sock.write(Buffer.concat([frame(ClientCmd.Heartbeat, newUuid()), Buffer.from([0x00, 0xde, 0xad, 0xbe, 0xef])]));
    await within(Promise.all([b.closed, c.closed]), 'the other garbage connections to be closed');
    // The last one's garbage is a partial header: it waits for more bytes (no framing error yet).
    await sleep(50);
    expect(dConn.isClosed()).toBe(false);
    dConn.sock.write(randomBytes(40).fill(0x09, 0, 1));
    await within(dConn.closed, 'the trailing-garbage connection to be closed');

    expect(s.engine.counters.drops).toMatchObject({ 'bad-version': 2, 'unknown-cmd': 1, 'bad-data-length': 1 });
    expect(s.transport.counters.tcpProtocolClosed).toBe(4);

    const t = nextMessage(tcpDev, 'message');
    const u = nextMessage(udpDev, 'message');
    await s.engine.push(tcpDev.uuid, { kind: 'message', content: Buffer.from('tcp ok') });
    await s.engine.push(udpDev.uuid, { kind: 'message', content: Buffer.from('udp ok') });
    expect((await t).content.toString()).toBe('tcp ok');
    expect((await u).content.toString()).toBe('udp ok');
    expect(statuses).toEqual(['connected']);
    expect(tcpDev.counters.reconnects).toBe(0);
  });

  it('a device that moved from UDP to TCP is offline when its link closes, not reachable at its stale UDP address', async () => {
    const s = await server({ reachableWindowMs: 200, expiryMs: 60_000 });
    const uuid = newUuid();
    const viaUdp = device(s, 'udp', { uuid });
    await connectOnline(s, viaUdp);
    const viaTcp = device(s, 'tcp', { uuid });
    await connectOnline(s, viaTcp);
    // The UDP heartbeat ages past the window while TCP heartbeats keep the record fresh.
    await sleep(250);
    await heartbeatRoundTrip(s, viaTcp);
    const offline = next(s.engine.events, (e) => e.type === 'offline' && e.uuid === uuid, 'offline after the link closed');
    await viaTcp.close();
    await waitFor(() => s.engine.tcpLinkCount === 0, 'the link to close');
    const r = await s.engine.push(uuid, { kind: 'message', content: Buffer.from('where are you') });
    expect(r).toMatchObject({ sentVia: null, reachable: false });
    expect(await offline).toMatchObject({ reason: 'tcp-closed' });
    expect(s.engine.localRoute(uuid)).toBeNull();
    await sleep(QUIET_MS);
    expect(viaUdp.got).toEqual([]);
    // Its next UDP heartbeat brings it back, with the pending message.
    const got = nextMessage(viaUdp, 'message');
    viaUdp.heartbeat();
    expect((await got).content.toString()).toBe('where are you');
  });

  it('a device using UDP and TCP stays reachable over UDP after the link closes when its UDP heartbeat is the latest', async () => {
    const s = await server({ reachableWindowMs: 5000 });
    const uuid = newUuid();
    const viaTcp = device(s, 'tcp', { uuid });
    await connectOnline(s, viaTcp);
    const viaUdp = device(s, 'udp', { uuid });
    await viaUdp.connect();
    await waitFor(() => s.engine.counters.heartbeats === 2, 'the UDP heartbeat');
    await viaTcp.close();
    await waitFor(() => s.engine.tcpLinkCount === 0, 'the link to close');
    expect(s.engine.localRoute(uuid)).toMatchObject({ transport: 'udp' });
    const got = nextMessage(viaUdp, 'message');
    const r = await s.engine.push(uuid, { kind: 'message', content: Buffer.from('udp still') });
    expect(r.sentVia).toBe('udp');
    expect((await got).content.toString()).toBe('udp still');
    expect(s.events.filter((e) => e.type === 'offline')).toEqual([]);
  });

  it('keeps retrying with backoff while the server is down and comes back online when it returns', async () => {
    const s1 = await startDeviceServer();
    cleanup.push(() => s1.close()); // idempotent
    const port = s1.port;
    const d = device(s1, 'tcp', { reconnectInitialDelayMs: 20, reconnectMaxDelayMs: 80 });
    await d.connect();
    await waitFor(() => s1.engine.deviceCount === 1, 'registration on the first server');
    await s1.close();
    // Several refused attempts while nothing listens.
    await waitFor(() => d.counters.reconnects >= 3, 'refused reconnect attempts');
    const s2 = await server({}, { port });
    const online = next(s2.engine.events, (e) => e.type === 'online' && e.uuid === d.uuid, 'online on the restarted server');
    await online;
    const got = nextMessage(d, 'message');
    await s2.engine.push(d.uuid, { kind: 'message', content: Buffer.from('restarted') });
    expect((await got).content.toString()).toBe('restarted');
    expect(s2.transport.counters.tcpConnections).toBe(1);
  });

  it('a failed connect() rejects and leaves no background reconnect running', async () => {
    const probe = new NetServer();
    const port = await new Promise<number>((r) => probe.listen(0, HOST, () => r((probe.address() as { port: number }).port)));
    await new Promise<void>((r) => probe.close(() => r()));
    const d = device({ port }, 'tcp', { reconnectInitialDelayMs: 10 });
    await expect(d.connect()).rejects.toThrow(/ECONNREFUSED/);
    await sleep(150);
    expect(d.counters.reconnects).toBe(0);
  });

  it('reads frames split across TCP segments and many frames per segment', async () => {
    const s = await server({ echo: 'always' });
    const uuid = newUuid();
    const raw = await rawTcp(s);
    const hb = frame(ClientCmd.Heartbeat, uuid);
    for (const byte of hb) {
      raw.sock.write(Buffer.from([byte]));
      await sleep(1);
    }
    await waitFor(() => s.engine.counters.heartbeats === 1, 'the byte-by-byte heartbeat');
    raw.sock.write(Buffer.concat([hb, hb, hb]));
    await waitFor(() => s.engine.counters.heartbeats === 4, 'three heartbeats in one segment');
    await waitFor(() => Buffer.concat(raw.data).length === 20, 'four 5-byte echoes');
    expect(Buffer.concat(raw.data).toString('hex')).toBe('0101000000'.repeat(4));
  });

  it('cuts off a device that never reads at its write limit; others are unaffected', async () => {
    const s = await server({}, { tcpWriteLimitBytes: 1024 });
    const tcpDev = device(s, 'tcp');
    const udpDev = device(s, 'udp');
    await connectOnline(s, tcpDev);
    await connectOnline(s, udpDev);

    const uuid = newUuid();
    const stuck = await rawTcp(s);
    const online = next(s.engine.events, (e) => e.type === 'online' && e.uuid === uuid, 'stuck device online');
    stuck.sock.write(frame(ClientCmd.Heartbeat, uuid));
    await online;
    stuck.sock.pause(); // never reads from here on
    const offline = next(s.engine.events, (e) => e.type === 'offline' && e.uuid === uuid, 'stuck device offline', 15_000);

    // Only the latest message is kept, so keep pushing (each push sends at
    // once) and heartbeating (each heartbeat re-sends) until the kernel
    // buffers are full and the server's own queue passes 1 KiB.
    const content = Buffer.alloc(500, 0x61);
    let pushesDone = 0;
    const deadline = Date.now() + 12_000;
    while (s.engine.counters.drops['tcp-backpressure'] === 0) {
      if (Date.now() > deadline) throw new Error(`no backpressure drop after ${pushesDone} pushes`);
      for (let i = 0; i < 200; i++) {
        await s.engine.push(uuid, { kind: 'message', content });
        pushesDone++;
      }
      stuck.sock.write(frame(ClientCmd.Heartbeat, uuid));
      await new Promise((r) => setImmediate(r));
    }
    expect(s.engine.counters.drops['tcp-backpressure']).toBeGreaterThan(0);
    expect(await offline).toMatchObject({ reason: 'tcp-closed' });
    expect(s.engine.tcpLinkCount).toBe(1); // tcpDev only
    const r = await s.engine.push(uuid, { kind: 'message', content });
    expect(r).toMatchObject({ sentVia: null, reachable: false });

    // The client side sees the close once it drains what the kernel held.
    stuck.sock.resume();
    await within(stuck.closed, 'the stuck socket to close', 10_000);
    const received = Buffer.concat(stuck.data).length;
    expect(received).toBeLessThan(pushesDone * 505);

    const t = nextMessage(tcpDev, 'message');
    const u = nextMessage(udpDev, 'message');
    await s.engine.push(tcpDev.uuid, { kind: 'message', content });
    await s.engine.push(udpDev.uuid, { kind: 'message', content });
    expect((await t).content.length).toBe(500);
    expect((await u).content.length).toBe(500);
  });

  it('closes a silent connection after the idle timeout, not an active one', async () => {
    const s = await server({}, { tcpIdleTimeoutMs: 200 });
    const active = device(s, 'tcp', { heartbeatIntervalMs: 40 });
    await connectOnline(s, active);
    const statuses: string[] = [];
    active.status.subscribe((st) => statuses.push(st));

    const uuid = newUuid();
    const silent = await rawTcp(s);
    const offline = next(s.engine.events, (e) => e.type === 'offline' && e.uuid === uuid, 'silent device offline');
    silent.sock.write(frame(ClientCmd.Heartbeat, uuid));
    const t0 = Date.now();
    await within(silent.closed, 'the idle connection to be closed');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(await offline).toMatchObject({ reason: 'tcp-closed' });
    expect(s.transport.counters.tcpIdleClosed).toBe(1);

    // The heartbeating device outlived the timeout several times over.
    await sleep(300);
    expect(statuses).toEqual(['connected']);
    const got = nextMessage(active, 'message');
    await s.engine.push(active.uuid, { kind: 'message', content: Buffer.from('alive') });
    expect((await got).content.toString()).toBe('alive');
  });

  it('cuts at most 64 idle connections per event-loop turn, the rest on the turns after (a slowloris going idle at once)', async () => {
    const s = await server({}, { tcpIdleTimeoutMs: 60_000 });
    const n = 150;
    const socks = await Promise.all(Array.from({ length: n }, () => rawTcp(s)));
    await waitFor(() => s.transport.counters.tcpConnections === n, 'every connection accepted');
    const closeIdle = (cutoff: number) => (s.transport as unknown as { closeIdle(cutoff: number): void }).closeIdle(cutoff);
    expect(await countPerTurn(() => closeIdle(Date.now() + 1), () => s.transport.counters.tcpIdleClosed, n)).toEqual([64, 128, 150]);
    await Promise.all(socks.map((c) => within(c.closed, 'an idle connection to be closed')));
  });

  it('our own writes do not keep a silent device connected: idleness counts only what the device sends', async () => {
    const s = await server({}, { tcpIdleTimeoutMs: 200 });
    const uuid = newUuid();
    const silent = await rawTcp(s);
    silent.sock.write(frame(ClientCmd.Heartbeat, uuid));
    await waitFor(() => s.engine.tcpLinkCount === 1, 'the silent device to register');
    const t0 = Date.now();
    // Push to it every 30 ms: each push writes to the socket, but the device never answers.
    const pusher = setInterval(() => void s.engine.push(uuid, { kind: 'notice' }).catch(() => {}), 30);
    try {
      await within(silent.closed, 'the silent connection to be closed despite our writes');
    } finally {
      clearInterval(pusher);
    }
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(s.transport.counters.tcpIdleClosed).toBe(1);
  });

  it('refuses connections beyond maxTcpConnections and counts them', async () => {
    const s = await server({}, { maxTcpConnections: 1 });
    const first = device(s, 'tcp');
    await connectOnline(s, first);

    // Refused by Node before a Socket is built for it (its 'drop'), the cheap path for a client that reconnects as fast as it is refused.
    let dropped = 0;
    (s.transport as unknown as { tcp: NetServer }).tcp.on('drop', () => dropped++);
    const extra = await rawTcp(s);
    await within(extra.closed, 'the extra connection to be refused');
    expect(s.engine.counters.drops['tcp-connection-limit']).toBe(1);
    expect(s.transport.counters).toMatchObject({ tcpRefused: 1, tcpConnections: 1 });
    expect(dropped).toBe(1);

    const got = nextMessage(first, 'message');
    await s.engine.push(first.uuid, { kind: 'message', content: Buffer.from('first') });
    expect((await got).content.toString()).toBe('first');

    // UDP is not limited by the TCP cap.
    const udpDev = device(s, 'udp');
    await connectOnline(s, udpDev);

    // A freed slot is usable again.
    await first.close();
    await waitFor(() => s.engine.tcpLinkCount === 0, 'the first link to close');
    const second = device(s, 'tcp');
    await connectOnline(s, second);
    expect(s.transport.counters.tcpConnections).toBe(2);
  });

  it('a reconnect of the same uuid replaces the old link and announces online again', async () => {
    const s = await server();
    const uuid = newUuid();
    const oldDev = device(s, 'tcp', { uuid, reconnectInitialDelayMs: 60_000 });
    await connectOnline(s, oldDev);
    const oldDisconnected = next(oldDev.status, (st) => st === 'disconnected', 'old link closed');

    const newDev = device(s, 'tcp', { uuid });
    const mark = s.events.length;
    const online = await connectOnline(s, newDev);
    expect(online.transport).toBe('tcp');
    await oldDisconnected;
    expect(s.events.slice(mark).map((e) => (e.type === 'offline' ? `offline:${e.reason}` : e.type))).toEqual(['offline:tcp-closed', 'online']);
    expect(s.engine.tcpLinkCount).toBe(1);
    expect(s.engine.deviceCount).toBe(1);

    const got = nextMessage(newDev, 'message');
    await s.engine.push(uuid, { kind: 'message', content: Buffer.from('new link') });
    expect((await got).content.toString()).toBe('new link');
    await waitFor(() => s.events.some((e) => e.type === 'ack'), 'ack over the new link');
    await sleep(QUIET_MS);
    expect(oldDev.got).toEqual([]);
  });

  it('reconnects with the SDK after the server drops the link, and is online again', async () => {
    const s = await server({}, { tcpIdleTimeoutMs: 150 });
    const d = device(s, 'tcp', { reconnectInitialDelayMs: 20 });
    await connectOnline(s, d);
    const offline = next(s.engine.events, (e) => e.type === 'offline' && e.uuid === d.uuid, 'offline by idle timeout');
    const again = next(s.engine.events, (e) => e.type === 'online' && e.uuid === d.uuid, 'online after reconnect');
    await offline;
    await again;
    expect(d.counters.reconnects).toBeGreaterThanOrEqual(1);
    const got = nextMessage(d, 'message');
    await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('back') });
    expect((await got).content.toString()).toBe('back');
  });
});

// ------------------------------------------------------------------ Nest

const seen: { pattern: string; data: DeviceEvent; uuid: string; ctxType: string }[] = [];

@Controller()
class DeviceEventsController {
  @EventPattern<string>('device.online')
  online(@Payload() data: DeviceEvent, @Ctx() ctx: DeviceEventContext): void {
    seen.push({ pattern: 'device.online', data, uuid: ctx.getUuid(), ctxType: ctx.getEvent().type });
  }

  @EventPattern<string>('push.ack')
  ack(@Payload() data: DeviceEvent, @Ctx() ctx: DeviceEventContext): void {
    seen.push({ pattern: 'push.ack', data, uuid: ctx.getUuid(), ctxType: ctx.getEvent().type });
  }

  @EventPattern<string>('device.offline', DEVICE_TRANSPORT)
  offline(@Payload() data: DeviceEvent, @Ctx() ctx: DeviceEventContext): void {
    seen.push({ pattern: 'device.offline', data, uuid: ctx.getUuid(), ctxType: ctx.getEvent().type });
  }
}

@Module({ controllers: [DeviceEventsController] })
class AppModule {}

describe('DeviceTransportStrategy as a Nest microservice', () => {
  it('dispatches device events to @EventPattern handlers, reports status and unwraps its sockets', async () => {
    seen.length = 0;
    const engine = new DeviceEngine(new MemoryOfflineStore(), new LocalPushRouter());
    cleanup.push(() => engine.close());
    const strategy = new DeviceTransportStrategy(engine, { host: HOST, port: 0 });
    expect(strategy.transportId).toBe(DEVICE_TRANSPORT);
    const statuses: string[] = [];
    strategy.status.subscribe((st) => statuses.push(st));
    const listeningPort = new Promise<number>((r) => strategy.on('listening', r));
    expect(() => strategy.unwrap()).toThrow(/not listening/);

    const app = await NestFactory.createMicroservice(AppModule, { strategy, logger: false });
    let closed = false;
    cleanup.push(() => (closed ? undefined : app.close()));
    await app.listen();
    expect(statuses).toEqual(['listening']);
    expect(strategy.port).toBeGreaterThan(0);
    expect(await listeningPort).toBe(strategy.port);

    const { udp, tcp } = strategy.unwrap<{ udp: DgramSocket; tcp: NetServer }>();
    expect(udp).toBeInstanceOf(DgramSocket);
    expect(tcp).toBeInstanceOf(NetServer);
    expect(udp.address().port).toBe(strategy.port);
    expect((tcp.address() as { port: number }).port).toBe(strategy.port);

    const d = device({ port: strategy.port }, 'udp');
    await d.connect();
    await waitFor(() => seen.some((c) => c.pattern === 'device.online'), 'the device.online handler');
    expect(seen[0]).toMatchObject({ pattern: 'device.online', uuid: d.uuid, ctxType: 'online', data: { type: 'online', uuid: d.uuid, transport: 'udp' } });

    const r = await engine.push(d.uuid, { kind: 'message', content: Buffer.from('via nest') });
    await waitFor(() => seen.some((c) => c.pattern === 'push.ack'), 'the push.ack handler');
    expect(seen.find((c) => c.pattern === 'push.ack')).toMatchObject({ uuid: d.uuid, data: { type: 'ack', kind: 'message', version: r.version } });

    const t = device({ port: strategy.port }, 'tcp');
    await t.connect();
    await waitFor(() => seen.filter((c) => c.pattern === 'device.online').length === 2, 'online of the tcp device');
    await t.close();
    await waitFor(() => seen.some((c) => c.pattern === 'device.offline'), 'the device.offline handler');
    expect(seen.find((c) => c.pattern === 'device.offline')).toMatchObject({ uuid: t.uuid, data: { reason: 'tcp-closed' } });

    const port = strategy.port;
    await app.close();
    closed = true;
    expect(statuses).toEqual(['listening', 'closed']);
    expect(strategy.listening).toBe(false);
    expect(() => strategy.unwrap()).toThrow(/not listening/);
    // Both sockets are really released: the port number can be bound again.
    const probeUdp = createSocket('udp4');
    await within(new Promise<void>((resolve, reject) => {
      probeUdp.once('error', reject);
      probeUdp.bind({ port, address: HOST, exclusive: true }, () => resolve());
    }), 'rebinding the UDP port');
    await new Promise<void>((res) => probeUdp.close(() => res()));
    const probeTcp = new NetServer();
    await within(new Promise<void>((resolve, reject) => {
      probeTcp.once('error', reject);
      probeTcp.listen(port, HOST, () => resolve());
    }), 'rebinding the TCP port');
    await new Promise<void>((res) => probeTcp.close(() => res()));
  });
});
