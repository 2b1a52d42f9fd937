import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type INestApplicationContext, Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { PusherCmd, PusherReply } from '../../lib/protocol/protocol.constants.js';
import { encodePusherTask } from '../../lib/protocol/pusher-task.codec.js';
import { connectPushTransports } from '../../lib/push-transports.js';
import { PushService } from '../../lib/push.service.js';
import { DeviceTransportStrategy } from '../../lib/server/device-transport.strategy.js';
import { PusherTransportStrategy } from '../../lib/server/pusher-transport.strategy.js';
import { MemoryOfflineStore } from '../../lib/store/memory-offline-store.js';
import type { PendingWrite, WriteCallback } from '../../lib/store/offline-store.js';
import { CaptureLogger, delay, Harness, md5hex, pushAppModule, RawSocket, tcpProbe, texts, uid, until } from '../fixtures/push-app.js';

const h = new Harness();
afterEach(() => h.close());

/** A memory store whose writes take a while, as a disk or network store's can: makes "in flight" observable. */
class SlowStore extends MemoryOfflineStore {
  started = 0;
  finished = 0;
  finishedAtClose = -1;
  private closed = false;
  // The built-in stores take pushes through writeThen (write wraps it).
  override writeThen(uuid: string, push: PendingWrite, done: WriteCallback): void {
    this.started++;
    setTimeout(() => {
      if (this.closed) return done(new Error('store closed'), null);
      super.writeThen(uuid, push, (err, r) => {
        if (!err) this.finished++;
        done(err, r);
      });
    }, 150);
  }
  override async close(): Promise<void> {
    this.closed = true;
    this.finishedAtClose = this.finished;
  }
}

describe('lifecycle', () => {
  it('works in an app with no HTTP server (createApplicationContext), and app.close() closes the ports', async () => {
    const ctx = h.track(await NestFactory.createApplicationContext(pushAppModule({ echo: 'always' }), { logger: false, abortOnError: false }));
    await connectPushTransports(ctx);
    const push = ctx.get(PushService);
    const devicePort = ctx.get(DeviceTransportStrategy).port;
    const pusherPort = ctx.get(PusherTransportStrategy).port;
    expect(devicePort).toBeGreaterThan(0);
    expect(pusherPort).toBeGreaterThan(0);
    const t = { push, devicePort };

    const udp = await h.device(t, { uuid: uid() });
    const tcp = await h.device(t, { uuid: uid(), transport: 'tcp' });
    const outcomes = await push.push({ uuids: [udp.uuid, tcp.uuid], kind: 'message', content: 'no http here' });
    expect(outcomes.map((o) => [o.transport, o.status]).sort()).toEqual([
      ['tcp', 'success'],
      ['udp', 'success'],
    ]);
    expect([texts(udp), texts(tcp)]).toEqual([['no http here'], ['no http here']]);
    // positive controls for what is checked after close: a fresh heartbeat is answered, TCP ports accept
    const before = h.client({ port: devicePort, uuid: uid() });
    await before.client.connect();
    await until(() => before.inbox.some((m) => m.kind === 'echo'), 2_000, 'a heartbeat echo');
    await tcpProbe(devicePort);
    await tcpProbe(pusherPort);

    await ctx.close();

    expect(ctx.get(DeviceTransportStrategy).listening).toBe(false);
    expect(ctx.get(PusherTransportStrategy).listening).toBe(false);
    await expect(tcpProbe(devicePort)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(tcpProbe(pusherPort)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    // the connected TCP device was cut off
    await firstValueFrom(tcp.client.status.pipe(filter((s) => s === 'disconnected'), timeout(2_000)));
    const after = h.client({ port: devicePort, uuid: uid() });
    await after.client.connect();
    after.client.heartbeat();
    // No event can announce silence: wait several loopback round trips.
    await delay(300);
    expect(after.inbox).toEqual([]);
  });

  it.each(['hybrid app', 'application context'] as const)(
    'graceful shutdown (%s): app.close() while pusher tasks are being stored still answers each of them 0x00',
    async (kind) => {
      const store = new SlowStore();
      const module = pushAppModule({ store });
      let app: INestApplicationContext;
      if (kind === 'hybrid app') app = (await h.start(module)).app;
      else {
        app = h.track(await NestFactory.createApplicationContext(module, { logger: false, abortOnError: false }));
        await connectPushTransports(app);
      }
      const pusher = app.get(PusherTransportStrategy);
      const port = pusher.port;
      const raw = await RawSocket.open(port);
      h.defer(() => raw.socket.destroy());
      const uuids = Array.from({ length: 5 }, () => uid());

      raw.socket.write(Buffer.concat(uuids.map((u) => encodePusherTask({ cmd: PusherCmd.Message, uuid: Buffer.from(u, 'hex'), content: Buffer.from('bye') }))));
      await until(() => store.started === 5, 2_000, 'the tasks to reach the store');
      expect(pusher.pipelined).toBe(5);
      expect(raw.bytes).toEqual([]);
      expect(store.finished).toBe(0);

      await app.close();

      expect(store.finishedAtClose).toBe(5); // every in-flight write completed before the store was closed
      await until(() => raw.bytes.length === 5 || raw.closed, 2_000, 'the replies');
      expect(raw.bytes).toEqual(Array(5).fill(PusherReply.Accepted));
      await until(() => raw.closed, 2_000, 'the server to close the connection');
      for (const u of uuids) expect((await store.read(u))?.message?.toString()).toBe('bye');
      await expect(tcpProbe(port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    },
  );
});

describe("the README's main.ts", () => {
  it('boots verbatim, serves HTTP, pushes to devices, and takes pusher tasks', async () => {
    const logger = new CaptureLogger();
    Logger.overrideLogger(logger);
    h.defer(() => Logger.overrideLogger(false));
    process.env.PUSH_DEVICE_PORT = '0';
    process.env.PUSH_PUSHER_PORT = '0';
    h.defer(() => {
      delete process.env.PUSH_DEVICE_PORT;
      delete process.env.PUSH_PUSHER_PORT;
    });
    // The sample uses the durable default store (./.nest-push): give it a fresh working directory.
    const cwd = process.cwd();
    const dir = mkdtempSync(join(tmpdir(), 'nest-push-readme-'));
    process.chdir(dir);
    h.defer(() => {
      process.chdir(cwd);
      rmSync(dir, { recursive: true, force: true });
    });
    const { bootstrap, Notifications } = await import('../fixtures/readme-main.js');

    const app = h.track(await bootstrap(0));
    const httpPort = (app.getHttpServer().address() as { port: number }).port;
    const push = app.get(PushService);
    const t = { push, devicePort: app.get(DeviceTransportStrategy).port };
    const alice = await h.device(t, { key: 'alice' });
    const bob = await h.device(t, { key: 'bob', transport: 'tcp' });

    const res = await fetch(`http://127.0.0.1:${httpPort}/notify/alice`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: 'hello from HTTP' }),
    });
    expect(res.status).toBe(201);
    const outcomes = (await res.json()) as { uuid: string; status: string }[];
    expect(outcomes).toEqual([expect.objectContaining({ uuid: md5hex('alice'), status: 'success', transport: 'udp' })]);
    expect(texts(alice)).toEqual(['{"text":"hello from HTTP"}']);
    expect(app.get(Notifications).acked).toEqual([expect.objectContaining({ uuid: md5hex('alice'), kind: 'message' })]);
    expect(logger.logs.some((l) => l.includes(`device ${md5hex('alice')} acked message`))).toBe(true);

    // the pusher port of the same app (DDPush app servers)
    const raw = await RawSocket.open(app.get(PusherTransportStrategy).port);
    h.defer(() => raw.socket.destroy());
    raw.socket.write(encodePusherTask({ cmd: PusherCmd.Message, uuid: Buffer.from(md5hex('bob'), 'hex'), content: Buffer.from('from a pusher') }));
    await until(() => raw.bytes.length === 1, 2_000, 'the pusher reply');
    expect(raw.bytes).toEqual([PusherReply.Accepted]);
    await until(() => texts(bob).length === 1, 2_000, 'the pushed message');
    expect(texts(bob)).toEqual(['from a pusher']);
  });
});

describe("the README's store subclass (AuditedStore)", () => {
  it('an app store overriding only write sees every push, from PushService and from the pusher port, and they are delivered', async () => {
    const seen: string[] = [];
    class AuditedStore extends MemoryOfflineStore {
      override write(uuid: string, push: PendingWrite) {
        seen.push(`${uuid}:${push.kind}`);
        return super.write(uuid, push);
      }
    }
    const t = await h.start(pushAppModule({ store: new AuditedStore() }));
    const d = await h.device(t, { uuid: uid() });
    expect(await t.push.push({ uuid: d.uuid, kind: 'message', content: 'via the service' })).toEqual([expect.objectContaining({ status: 'success' })]);
    const raw = await RawSocket.open(t.pusherPort);
    h.defer(() => raw.socket.destroy());
    raw.socket.write(encodePusherTask({ cmd: PusherCmd.Notice, uuid: Buffer.from(d.uuid, 'hex') }));
    await until(() => raw.bytes.length === 1, 2_000, 'the pusher reply');
    expect(raw.bytes).toEqual([PusherReply.Accepted]);
    await until(() => d.inbox.some((m) => m.kind === 'notice'), 2_000, 'the notice');
    expect(texts(d)).toEqual(['via the service']);
    expect(seen).toEqual([`${d.uuid}:message`, `${d.uuid}:notice`]);
  });
});
