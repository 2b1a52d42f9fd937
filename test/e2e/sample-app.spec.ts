import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';

const root = resolve(import.meta.dirname, '../..');

/** Starts the sample as a user would (built JS, settings from the environment) and drives it over HTTP. */
describe('sample-app', () => {
  let child: ChildProcess;
  let ports: { device: number; pusher: number; http: number };
  let output = '';

  beforeAll(async () => {
    execFileSync('npx', ['tsc', '-p', 'sample-app/tsconfig.json'], { cwd: root, stdio: 'pipe' });
    child = spawn(process.execPath, ['sample-app/dist/main.js'], {
      cwd: root,
      env: { ...process.env, PUSH_DEVICE_HOST: '127.0.0.1', PUSH_DEVICE_PORT: '0', PUSH_PUSHER_PORT: '0', HTTP_PORT: '0', PUSH_STORE: 'memory' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    ports = await new Promise((resolvePorts, reject) => {
      const t = setTimeout(() => reject(new Error(`sample did not get ready:\n${output}`)), 15_000);
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        const m = /nest-push sample ready \(devices udp\+tcp :(\d+), pusher :(\d+), http :(\d+)\)/.exec(output);
        if (m) {
          clearTimeout(t);
          resolvePorts({ device: Number(m[1]), pusher: Number(m[2]), http: Number(m[3]) });
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', (code) => reject(new Error(`sample exited with ${code}:\n${output}`)));
    });
  }, 60_000);

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('POST /push reaches a simulated device by user key, and GET /devices/:uuid shows it', async () => {
    const device = new DeviceClient({ port: ports.device, key: 'user-1', heartbeatIntervalMs: 0 });
    try {
      await device.connect();
      const received = firstValueFrom(device.messages.pipe(filter((m) => m.kind === 'message'), timeout(5000)));
      // Wait until the server has registered the device before pushing.
      for (let i = 0; i < 50; i++) {
        const r = await fetch(`http://127.0.0.1:${ports.http}/devices/${device.uuid}`);
        if (r.status === 200 && ((await r.json()) as { reachable: boolean }).reachable) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const res = await fetch(`http://127.0.0.1:${ports.http}/push`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ key: 'user-1', kind: 'message', payload: 'hello from curl' }),
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { outcomes: unknown[] };
      expect(body.outcomes).toHaveLength(1);
      expect(body.outcomes[0]).toMatchObject({ uuid: device.uuid, status: 'success', transport: 'udp' });
      expect((await received).content.toString()).toBe('hello from curl');
      const info = await (await fetch(`http://127.0.0.1:${ports.http}/devices/${device.uuid}`)).json();
      expect(info).toMatchObject({ uuid: device.uuid, online: true, transport: 'udp', pending: null });
    } finally {
      await device.close();
    }
  });

  it('rejects a bad request with 400', async () => {
    const res = await fetch(`http://127.0.0.1:${ports.http}/push`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'message', payload: 'x' }),
    });
    expect(res.status).toBe(400);
  });
});
