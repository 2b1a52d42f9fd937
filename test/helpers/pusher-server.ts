import { connect, type Socket } from 'node:net';
import type { DeviceEngineOptions } from '../../lib/device/device-engine.options.js';
import type { PushSource, PushSubmitter, SubmitCallback } from '../../lib/interfaces/push-submitter.interface.js';
import { PusherTransportStrategy, type PusherTransportOptions } from '../../lib/server/pusher-transport.strategy.js';
import type { DeviceTransportOptions } from '../../lib/server/device-transport.strategy.js';
import type { OfflineStore, PendingWrite } from '../../lib/store/offline-store.js';
import { startDeviceServer } from './device-server.js';

/** A device server plus a pusher port on the same engine, both on 127.0.0.1 port 0. */
export async function startPusherServer(
  pusherOptions: PusherTransportOptions = {},
  engineOptions: DeviceEngineOptions = {},
  transportOptions: DeviceTransportOptions = {},
  store?: OfflineStore,
) {
  const device = await startDeviceServer(engineOptions, transportOptions, store);
  const pusher = new PusherTransportStrategy(device.engine, { host: '127.0.0.1', port: 0, closeTimeoutMs: 1_000, ...pusherOptions });
  await pusher.start();
  return {
    ...device,
    device,
    pusher,
    devicePort: device.port,
    pusherPort: pusher.port,
    async close() {
      await pusher.close();
      await device.close();
    },
  };
}

/** A pusher port on its own, over any submitter (for tests that control when submits settle). */
export async function startPusherOnly(submitter: PushSubmitter, options: PusherTransportOptions = {}) {
  const pusher = new PusherTransportStrategy(submitter, { host: '127.0.0.1', port: 0, closeTimeoutMs: 1_000, ...options });
  await pusher.start();
  return pusher;
}

/**
 * A raw TCP connection to a pusher port that collects every reply byte and
 * records whether (and when) the server closed it.
 */
export class RawPusherConnection {
  readonly replies: number[] = [];
  /** Reads that brought reply bytes (a server write usually arrives as one). */
  chunks = 0;
  closed = false;
  private waiters: (() => void)[] = [];

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const b of chunk) this.replies.push(b);
      this.chunks++;
      this.wake();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static open(port: number, host = '127.0.0.1'): Promise<RawPusherConnection> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port, noDelay: true });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawPusherConnection(s));
      });
    });
  }

  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(bytes, (err) => (err ? reject(err) : resolve())));
  }

  /** Resolves once `n` reply bytes arrived (or rejects on close / timeout with what arrived). */
  waitReplies(n: number, timeoutMs = 5_000): Promise<number[]> {
    return this.waitFor(() => this.replies.length >= n, timeoutMs, () => `expected ${n} reply bytes, got ${this.replies.length} (closed=${this.closed})`).then(() =>
      this.replies.slice(0, n),
    );
  }

  /** Resolves once the server closed the connection. */
  waitClosed(timeoutMs = 5_000): Promise<void> {
    return this.waitFor(() => this.closed, timeoutMs, () => 'connection still open');
  }

  private waitFor(cond: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check);
        reject(new Error(what()));
      }, timeoutMs);
      const check = () => {
        if (cond()) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== check);
          resolve();
        } else if (this.closed) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== check);
          reject(new Error(what()));
        }
      };
      this.waiters.push(check);
    });
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Polls `cond` until true (or fails after `timeoutMs`). */
export async function until(cond: () => boolean, timeoutMs = 3_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A real PushSubmitter whose outcome and timing each test chooses per call (call index = task order). */
export class ScriptedSubmitter implements PushSubmitter {
  readonly calls: { uuid: string; write: PendingWrite; source: PushSource }[] = [];
  readonly settled: number[] = [];
  private held: (() => void)[] = [];
  holding = false;

  constructor(private readonly plan: (index: number) => { delayMs: number; fail?: Error } = () => ({ delayMs: 0 })) {}

  submit(uuid: string, write: PendingWrite, source: PushSource, done: SubmitCallback): void {
    const index = this.calls.length;
    this.calls.push({ uuid, write, source });
    const run = () => {
      const { delayMs, fail } = this.plan(index);
      setTimeout(() => {
        this.settled.push(index);
        done(fail ?? null);
      }, delayMs);
    };
    if (this.holding) this.held.push(run);
    else run();
  }

  /** Lets every held submit (and every later one) proceed. */
  release(): void {
    this.holding = false;
    for (const run of this.held.splice(0)) run();
  }
}
