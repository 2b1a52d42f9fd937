import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';
import { type INestApplicationContext, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { register as globalRegister } from 'prom-client';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';
import { DeviceEngine } from '../../lib/device/device-engine.js';
import { PushMetrics, PushMetricsModule } from '../../lib/metrics/index.js';
import { connectPushTransports } from '../../lib/push-transports.js';
import { PushModule } from '../../lib/push.module.js';
import { PushService } from '../../lib/push.service.js';
import { DeviceTransportStrategy } from '../../lib/server/device-transport.strategy.js';
import { PusherTransportStrategy } from '../../lib/server/pusher-transport.strategy.js';

const root = resolve(import.meta.dirname, '../..');

/** `name{labels} value` lines of a Prometheus text exposition, keyed by `name{labels}` as printed. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function startApp(metricsOptions: Parameters<typeof PushMetricsModule.forRoot>[0] = {}, deviceTcp = true) {
  @Module({
    imports: [
      PushModule.forRoot({
        device: { host: '127.0.0.1', port: 0, tcp: deviceTcp },
        pusher: { host: '127.0.0.1', port: 0 },
        maxContentLength: 64,
        store: 'memory',
      }),
      PushMetricsModule.forRoot({ ...metricsOptions }),
    ],
  })
  class MetricsAppModule {}
  const app = await NestFactory.createApplicationContext(MetricsAppModule, { logger: false });
  await connectPushTransports(app);
  return app;
}

async function waitFor(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('PushMetricsModule (prom-client series of a real PushModule app)', () => {
  let app: INestApplicationContext;
  let metrics: PushMetrics;
  let push: PushService;
  let engine: DeviceEngine;
  let devicePort: number;
  let pusherPort: number;
  const devices: DeviceClient[] = [];

  beforeAll(async () => {
    app = await startApp();
    metrics = app.get(PushMetrics);
    push = app.get(PushService);
    engine = app.get(DeviceEngine);
    devicePort = app.get(DeviceTransportStrategy).port;
    pusherPort = app.get(PusherTransportStrategy).port;
  });

  afterEach(async () => {
    await Promise.all(devices.splice(0).map((d) => d.close()));
  });

  afterAll(async () => {
    await app?.close();
  });

  const scrape = async () => parse(await metrics.metrics());

  it('starts with every series at zero and the transports listening', async () => {
    const m = await scrape();
    expect(metrics.contentType).toMatch(/^text\/plain/);
    expect(m.get('nest_push_devices_registered')).toBe(0);
    expect(m.get('nest_push_devices_online')).toBe(0);
    expect(m.get('nest_push_pushes_total{kind="message",outcome="success"}')).toBe(0);
    expect(m.get('nest_push_transport_listening{transport="device"}')).toBe(1);
    expect(m.get('nest_push_transport_listening{transport="pusher"}')).toBe(1);
    expect(m.get('nest_push_delivery_latency_seconds_count')).toBe(0);
    // Event-loop lag comes with prom-client's default metrics.
    expect(m.has('nodejs_eventloop_lag_seconds')).toBe(true);
    expect(m.has('nodejs_eventloop_lag_p99_seconds')).toBe(true);
  });

  it('a push acked by a device moves the outcome, ack, device and latency series', async () => {
    const device = new DeviceClient({ port: devicePort, uuid: 'aa'.repeat(16), heartbeatIntervalMs: 0 });
    devices.push(device);
    await device.connect();
    await waitFor(() => engine.localRoute(device.uuid) !== null, 'device registration');
    const got = firstValueFrom(device.messages.pipe(filter((m) => m.kind === 'message'), timeout(3000)));
    const [outcome] = await push.push({ uuid: device.uuid, kind: 'message', content: 'hello' });
    expect(outcome).toMatchObject({ status: 'success' });
    expect((await got).content.toString()).toBe('hello');

    const m = await scrape();
    expect(m.get('nest_push_pushes_total{kind="message",outcome="success"}')).toBe(1);
    expect(m.get('nest_push_pushes_total{kind="notice",outcome="success"}')).toBe(0);
    expect(m.get('nest_push_acks_total')).toBe(1);
    expect(m.get('nest_push_heartbeats_total')).toBe(1);
    expect(m.get('nest_push_devices_registered')).toBe(1);
    expect(m.get('nest_push_devices_online')).toBe(1);
    expect(m.get('nest_push_frames_sent_total')).toBeGreaterThanOrEqual(1);
    expect(m.get('nest_push_delivery_latency_seconds_count')).toBe(1);
    expect(m.get('nest_push_delivery_latency_seconds_bucket{le="+Inf"}')).toBe(1);
    expect(m.get('nest_push_store_commit_seconds_count')).toBe(1);
    expect(m.get('nest_push_in_flight')).toBe(0);
    expect(m.get('nest_push_resends_total')).toBe(0);
  });

  it('offline and failed pushes are counted by outcome and failure reason; the store gauges follow', async () => {
    const offline = 'bb'.repeat(16);
    const [o1] = await push.push({ uuid: offline, kind: 'notice' });
    expect(o1!.status).toBe('offline');
    const [o2] = await push.push({ uuid: offline, kind: 'message', content: 'x'.repeat(65) });
    expect(o2).toMatchObject({ status: 'failure', reason: 'payload-too-large' });
    const m = await scrape();
    expect(m.get('nest_push_pushes_total{kind="notice",outcome="offline"}')).toBe(1);
    expect(m.get('nest_push_pushes_total{kind="message",outcome="failure"}')).toBe(1);
    expect(m.get('nest_push_push_failures_total{reason="payload-too-large"}')).toBe(1);
    expect(m.get('nest_push_store_pending_devices')).toBeGreaterThanOrEqual(1);
  });

  it('a device re-sent a pending push on its next heartbeat counts a re-push', async () => {
    const uuid = 'cc'.repeat(16);
    const [o] = await push.push({ uuid, kind: 'message', content: 'later' });
    expect(o!.status).toBe('offline');
    const device = new DeviceClient({ port: devicePort, uuid, heartbeatIntervalMs: 0 });
    devices.push(device);
    const got = firstValueFrom(device.messages.pipe(filter((m) => m.kind === 'message'), timeout(3000)));
    await device.connect();
    expect((await got).content.toString()).toBe('later');
    await waitFor(() => engine.counters.acks >= 2, 'the ack');
    const m = await scrape();
    expect(m.get('nest_push_resends_total')).toBe(1);
    expect(m.get('nest_push_acks_total')).toBe(2);
  });

  it('drops by reason: a malformed datagram, an ack from an unknown device, a malformed pusher task', async () => {
    const udp = createSocket('udp4');
    await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
    try {
      const send = (b: Buffer) => new Promise<void>((r) => udp.send(b, devicePort, '127.0.0.1', () => r()));
      await send(Buffer.from([1, 1, 0]));
      // An ack from a uuid that never sent a heartbeat.
      const ack = Buffer.alloc(21);
      ack[0] = 1;
      ack[1] = 1;
      ack[2] = 0x20; // ack message
      Buffer.from('ee'.repeat(16), 'hex').copy(ack, 3);
      await send(ack);
    } finally {
      udp.close();
    }
    // A task whose version byte is wrong: the pusher port answers 0x01 and closes.
    const reply = await new Promise<Buffer>((resolveReply, reject) => {
      const s = connect({ host: '127.0.0.1', port: pusherPort }, () => {
        const task = Buffer.alloc(21);
        task[0] = 9;
        s.write(task);
      });
      const chunks: Buffer[] = [];
      s.on('data', (c) => chunks.push(c));
      s.on('close', () => resolveReply(Buffer.concat(chunks)));
      s.on('error', reject);
    });
    expect([...reply]).toEqual([1]);
    await waitFor(() => engine.counters.drops['too-short'] >= 1 && engine.counters.drops['unknown-device'] >= 1, 'drops');
    const m = await scrape();
    expect(m.get('nest_push_drops_total{source="device",reason="too-short"}')).toBe(1);
    expect(m.get('nest_push_drops_total{source="device",reason="unknown-device"}')).toBe(1);
    expect(m.get('nest_push_drops_total{source="device",reason="bad-version"}')).toBe(0);
    expect(m.get('nest_push_drops_total{source="pusher",reason="bad-version"}')).toBe(1);
    expect(m.get('nest_push_pusher_tasks_total{result="malformed"}')).toBe(1);
    expect(m.get('nest_push_pusher_tasks_total{result="accepted"}')).toBe(0);
    expect(m.get('nest_push_pusher_tasks_deferred_total')).toBe(0);
    expect(m.get('nest_push_pusher_pipelined')).toBe(0);
    expect(m.get('nest_push_pusher_held_total')).toBe(0);
  });

  it('counts TCP links, and devices go offline when their link closes', async () => {
    const device = new DeviceClient({ port: devicePort, uuid: 'ff'.repeat(16), transport: 'tcp', heartbeatIntervalMs: 0 });
    await device.connect();
    await waitFor(() => engine.tcpLinkCount === 1, 'the TCP link');
    let m = await scrape();
    expect(m.get('nest_push_tcp_links')).toBe(1);
    const onlineBefore = m.get('nest_push_devices_online')!;
    await device.close();
    await waitFor(() => engine.tcpLinkCount === 0, 'the link to close');
    m = await scrape();
    expect(m.get('nest_push_tcp_links')).toBe(0);
    expect(m.get('nest_push_devices_online')).toBe(onlineBefore - 1);
  });

  it('transport_listening drops to 0 once a transport is closed', async () => {
    const other = await startApp({ defaultMetrics: false }, false);
    try {
      const om = other.get(PushMetrics);
      expect(om).not.toBe(metrics);
      await other.get(PusherTransportStrategy).close();
      const m = parse(await om.metrics());
      expect(m.get('nest_push_transport_listening{transport="pusher"}')).toBe(0);
      expect(m.get('nest_push_transport_listening{transport="device"}')).toBe(1);
      // Its own registry: no default metrics asked for, none there; this app's series untouched.
      expect(m.has('nodejs_eventloop_lag_seconds')).toBe(false);
      expect((await scrape()).get('nest_push_transport_listening{transport="pusher"}')).toBe(1);
    } finally {
      await other.close();
    }
  });
});

describe('PushMetricsModule registry handling', () => {
  it('registers in a given registry with a prefix, and removes only its own series on close', async () => {
    const mine = 'test_mine_' + process.pid;
    const { Gauge } = await import('prom-client');
    new Gauge({ name: mine, help: 'not ours', registers: [globalRegister] }).set(7);
    const app = await startApp({ registry: globalRegister, prefix: 'p1_', defaultMetrics: false });
    try {
      const text = await globalRegister.metrics();
      expect(parse(text).get('p1_devices_registered')).toBe(0);
      expect(parse(text).get(mine)).toBe(7);
      expect(text).not.toMatch(/^nest_push_/m);
    } finally {
      await app.close();
    }
    const after = parse(await globalRegister.metrics());
    expect(after.has('p1_devices_registered')).toBe(false);
    expect(after.get(mine)).toBe(7);
    globalRegister.removeSingleMetric(mine);
  });

  it('times store writes through the engine hook, and unhooks on close', async () => {
    const app = await startApp();
    const { DeviceEngine } = await import('../../lib/device/device-engine.js');
    const engine = app.get(DeviceEngine);
    expect(typeof engine.storeWriteObserver).toBe('function');
    await app.close();
    expect(engine.storeWriteObserver).toBeUndefined();
  });
});

describe('optional peers stay optional', () => {
  /** Every module reachable from `entry` through relative imports, with its bare imports. */
  function bareImports(entry: string): Set<string> {
    const seen = new Set<string>();
    const bare = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const src = readFileSync(file, 'utf8');
      for (const m of src.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)) {
        const spec = m[1]!;
        if (spec.startsWith('.')) visit(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
        else bare.add(spec);
      }
    };
    visit(entry);
    return bare;
  }

  it('the core entry point imports neither prom-client nor @nestjs/terminus; the subpaths do', () => {
    const core = bareImports(resolve(root, 'lib/index.ts'));
    expect(core.has('@nestjs/common')).toBe(true);
    expect(core.has('prom-client')).toBe(false);
    expect(core.has('@nestjs/terminus')).toBe(false);
    expect(bareImports(resolve(root, 'lib/metrics/index.ts')).has('prom-client')).toBe(true);
    expect(bareImports(resolve(root, 'lib/terminus/index.ts')).has('@nestjs/terminus')).toBe(true);
  });

  it('package.json exports ./metrics and ./terminus and marks both peers optional', () => {
    const pkg = JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8'));
    expect(pkg.exports['./metrics'].default).toBe('./dist/metrics/index.js');
    expect(pkg.exports['./terminus'].default).toBe('./dist/terminus/index.js');
    expect(pkg.peerDependenciesMeta['prom-client'].optional).toBe(true);
    expect(pkg.peerDependenciesMeta['@nestjs/terminus'].optional).toBe(true);
  });
});
