import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { type INestApplicationContext, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceEngine } from '../../lib/device/device-engine.js';
import { connectPushTransports } from '../../lib/push-transports.js';
import { PushModule } from '../../lib/push.module.js';
import { PushService } from '../../lib/push.service.js';
import { DeviceTransportStrategy } from '../../lib/server/device-transport.strategy.js';
import { DeviceSimulator, sentAtOf } from '../../sample-app/src/devices.js';

const root = resolve(import.meta.dirname, '../..');
/** The sample, built where no other spec writes (sample-app.spec builds sample-app/dist). */
const build = resolve(root, 'test-results/sample-simulator-build');

interface Line {
  type: string;
  connected: number;
  received: number;
  acked: number;
  heartbeats: number;
  latencyMs: { p50: number; p99: number; max: number } | null;
}

/** A spawned process whose stdout lines are collected; `waitFor` resolves on the first line matching. */
function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(process.execPath, args, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: { test: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  createInterface({ input: child.stdout! }).on('line', (l) => {
    lines.push(l);
    for (const w of [...waiters]) if (w.test(l)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(l));
  });
  return {
    child,
    lines,
    waitFor(test: (l: string) => boolean, ms = 10_000): Promise<string> {
      const hit = lines.find(test);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolveLine, reject) => {
        const t = setTimeout(() => reject(new Error(`no matching line in ${ms} ms; stdout:\n${lines.join('\n')}\nstderr:\n${stderr}`)), ms);
        waiters.push({ test, resolve: (l) => (clearTimeout(t), resolveLine(l)) });
        child.once('exit', (code) => {
          clearTimeout(t);
          reject(new Error(`exited with ${code}; stdout:\n${lines.join('\n')}\nstderr:\n${stderr}`));
        });
      });
    },
    async stop(): Promise<number | null> {
      if (child.exitCode !== null) return child.exitCode;
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      return exited;
    },
  };
}

const json = (l: string) => JSON.parse(l) as Line;

async function startApp(): Promise<INestApplicationContext> {
  @Module({ imports: [PushModule.forRoot({ device: { host: '127.0.0.1', port: 0 }, pusher: { enabled: false }, store: 'memory' })] })
  class SimAppModule {}
  const app = await NestFactory.createApplicationContext(SimAppModule, { logger: false });
  await connectPushTransports(app);
  return app;
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(() => {
  execFileSync('npx', ['tsc', '-p', 'sample-app/tsconfig.json', '--outDir', build], { cwd: root, stdio: 'pipe' });
}, 60_000);

describe('device simulator (built CLI) against a PushModule app', () => {
  let app: INestApplicationContext;
  beforeAll(async () => {
    app = await startApp();
  });
  afterAll(async () => {
    await app?.close();
  });

  it('connects 50 devices, receives a push sent with PushService, reports counts and latency', async () => {
    const port = app.get(DeviceTransportStrategy).port;
    const sim = run([`${build}/devices.js`, '--count', '50', '--port', String(port), '--quiet', '--json', '--interval', '200', '--heartbeat', '0']);
    try {
      const ready = json(await sim.waitFor((l) => l.includes('"ready"')));
      expect(ready).toMatchObject({ connected: 50, heartbeats: 50 });
      const engine = app.get(DeviceEngine);
      await until(() => engine.deviceCount === 50);
      const [outcome] = await app.get(PushService).push({ key: 'user-1', kind: 'message', content: { t: performance.timeOrigin + performance.now(), text: 'hi' } });
      expect(outcome).toMatchObject({ status: 'success', transport: 'udp' });
      const summary = json(await sim.waitFor((l) => l.includes('"summary"') && json(l).received >= 1));
      expect(summary.received).toBe(1);
      expect(summary.acked).toBe(1);
      expect(summary.latencyMs!.p50).toBeGreaterThanOrEqual(0);
      expect(summary.latencyMs!.p50).toBeLessThan(1000);
      expect(await sim.stop()).toBe(0);
      const final = json(sim.lines.find((l) => l.includes('"final"'))!);
      expect(final).toMatchObject({ connected: 50, received: 1, acked: 1 });
    } finally {
      await sim.stop();
    }
  });

  it('prints what devices receive unless --quiet, and connects over TCP with --tcp', async () => {
    const port = app.get(DeviceTransportStrategy).port;
    const sim = run([`${build}/devices.js`, '--count', '5', '--port', String(port), '--tcp', '--prefix', 'tcp-', '--interval', '200', '--heartbeat', '0']);
    try {
      await sim.waitFor((l) => l.startsWith('5 TCP devices connected'));
      const engine = app.get(DeviceEngine);
      await until(() => engine.tcpLinkCount === 5);
      const [o] = await app.get(PushService).push({ key: 'tcp-5', kind: 'message', content: 't=' + Date.now() + ' over tcp' });
      expect(o).toMatchObject({ status: 'success', transport: 'tcp' });
      const line = await sim.waitFor((l) => l.startsWith('tcp-5 ('));
      expect(line).toMatch(/got message "t=\d+ over tcp" after \d+\.\d\d ms/);
      await sim.waitFor((l) => l.startsWith('[summary]') && l.includes('received 1 acked 1'));
    } finally {
      await sim.stop();
    }
  });
});

describe('DeviceSimulator in-process', () => {
  it('sentAtOf reads JSON {t} and a t= prefix, and nothing else', () => {
    expect(sentAtOf(Buffer.from('{"t":1700000000000.5,"x":1}'))).toBe(1700000000000.5);
    expect(sentAtOf(Buffer.from('t=1700000000000;hello'))).toBe(1700000000000);
    expect(sentAtOf(Buffer.from('t=1700000000000'))).toBe(1700000000000);
    expect(sentAtOf(Buffer.from('{"t":"soon"}'))).toBeUndefined();
    expect(sentAtOf(Buffer.from('t=12abc'))).toBeUndefined();
    expect(sentAtOf(Buffer.from('hello'))).toBeUndefined();
  });

  it('counts received and acked per device set and times stamped payloads', async () => {
    const app = await startApp();
    const sim = new DeviceSimulator({ count: 20, port: app.get(DeviceTransportStrategy).port, heartbeatMs: 0, prefix: 'inproc-' });
    try {
      await sim.start();
      const engine = app.get(DeviceEngine);
      await until(() => engine.deviceCount === 20);
      const push = app.get(PushService);
      const outcomes = await push.push({ keys: ['inproc-3', 'inproc-20'], kind: 'message', content: { t: Date.now() } });
      expect(outcomes.map((o) => o.status)).toEqual(['success', 'success']);
      await push.push({ key: 'inproc-7', kind: 'notice' });
      await until(() => sim.stats().acked === 3);
      const s = sim.stats();
      expect(s).toMatchObject({ devices: 20, connected: 20, failed: 0, received: 3, acked: 3, heartbeats: 20, timed: 2 });
      expect(s.latencyMs!.max).toBeLessThan(1000);
    } finally {
      await sim.close();
      await app.close();
    }
  });
});

describe('the built sample app: GET /health, GET /metrics, with the simulator attached', () => {
  let sample: ReturnType<typeof run>;
  let ports: { device: number; http: number };

  beforeAll(async () => {
    sample = run([`${build}/main.js`], { PUSH_DEVICE_HOST: '127.0.0.1', PUSH_DEVICE_PORT: '0', PUSH_PUSHER_PORT: '0', HTTP_PORT: '0', PUSH_STORE: 'memory' });
    const line = await sample.waitFor((l) => l.includes('nest-push sample ready'), 15_000);
    const m = /udp\+tcp :(\d+), pusher :\d+, http :(\d+)/.exec(line)!;
    ports = { device: Number(m[1]), http: Number(m[2]) };
  }, 20_000);

  afterAll(async () => {
    await sample?.stop();
  });

  it('serves health and Prometheus metrics that follow the simulated devices', async () => {
    const health = await fetch(`http://127.0.0.1:${ports.http}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok', details: { push: { status: 'up', device: { status: 'up' }, pusher: { status: 'up' } } } });

    const sim = run([`${build}/devices.js`, '--count', '50', '--port', String(ports.device), '--quiet', '--json', '--interval', '200']);
    try {
      await sim.waitFor((l) => l.includes('"ready"'));
      let text = '';
      for (let i = 0; i < 100; i++) {
        const res = await fetch(`http://127.0.0.1:${ports.http}/metrics`);
        expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
        text = await res.text();
        if (/^nest_push_devices_online 50$/m.test(text)) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(text).toMatch(/^nest_push_devices_registered 50$/m);
      expect(text).toMatch(/^nest_push_devices_online 50$/m);
      expect(text).toMatch(/^nodejs_eventloop_lag_seconds /m);
      const res = await fetch(`http://127.0.0.1:${ports.http}/push`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ key: 'user-1', payload: { t: Date.now(), text: 'from curl' } }),
      });
      expect(((await res.json()) as { outcomes: { status: string }[] }).outcomes[0]!.status).toBe('success');
      const summary = json(await sim.waitFor((l) => l.includes('"summary"') && json(l).acked >= 1));
      expect(summary.received).toBe(1);
      const after = await (await fetch(`http://127.0.0.1:${ports.http}/metrics`)).text();
      expect(after).toMatch(/^nest_push_pushes_total\{kind="message",outcome="success"\} 1$/m);
      expect(after).toMatch(/^nest_push_acks_total 1$/m);
    } finally {
      await sim.stop();
    }
  });
});
