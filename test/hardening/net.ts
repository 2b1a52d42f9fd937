/**
 * Small real-socket helpers for the hardening specs: UDP peers bound to any
 * 127.0.0.0/8 address (Linux routes the whole block to loopback, so each peer
 * is a distinct source address to the server), raw TCP clients, frames.
 */
import { randomBytes } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import { ClientCmd, encodeClientFrame, encodePusherTask, PusherCmd } from '../../lib/protocol/index.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` until true, or fails naming `what` after `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 3_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

export function newUuid(): Buffer {
  return randomBytes(16);
}

export function heartbeat(uuid: Uint8Array, appId = 1): Buffer {
  return encodeClientFrame({ appId, cmd: ClientCmd.Heartbeat, uuid });
}

export function ack(uuid: Uint8Array, cmd: ClientCmd = ClientCmd.AckMessage, appId = 1): Buffer {
  return encodeClientFrame({ appId, cmd, uuid, mask: 1n });
}

export function noticeTask(uuid: Uint8Array): Buffer {
  return encodePusherTask({ cmd: PusherCmd.Notice, uuid });
}

export function messageTask(uuid: Uint8Array, content: Uint8Array): Buffer {
  return encodePusherTask({ cmd: PusherCmd.Message, uuid, content });
}

/**
 * A UDP socket bound to one loopback address, counting every byte it sends
 * and receives (the amplification figures are measured here, on the wire).
 */
export class UdpPeer {
  bytesSent = 0;
  bytesReceived = 0;
  readonly received: Buffer[] = [];
  private constructor(
    readonly socket: UdpSocket,
    readonly address: string,
  ) {
    socket.on('message', (m) => {
      this.bytesReceived += m.length;
      this.received.push(m);
    });
    socket.on('error', () => {});
  }

  static bind(address: string): Promise<UdpPeer> {
    const s = createSocket('udp4');
    return new Promise((resolve, reject) => {
      s.once('error', reject);
      s.bind({ address, port: 0 }, () => {
        s.off('error', reject);
        resolve(new UdpPeer(s, address));
      });
    });
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(bytes: Uint8Array, port: number, host = '127.0.0.1'): Promise<void> {
    this.bytesSent += bytes.length;
    return new Promise((resolve, reject) => this.socket.send(bytes, port, host, (err) => (err ? reject(err) : resolve())));
  }

  close(): Promise<void> {
    return new Promise((r) => this.socket.close(() => r()));
  }
}

/** A raw TCP client that records what it receives and when the server closed it. */
export class RawTcp {
  readonly data: Buffer[] = [];
  closed = false;
  closedAt = 0;
  readonly closedP: Promise<void>;
  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => this.data.push(c));
    socket.on('error', () => {});
    this.closedP = new Promise((r) =>
      socket.on('close', () => {
        this.closed = true;
        this.closedAt = Date.now();
        r();
      }),
    );
  }

  static open(port: number, opts: { host?: string; localAddress?: string } = {}): Promise<RawTcp> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: opts.host ?? '127.0.0.1', port, localAddress: opts.localAddress, noDelay: true });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawTcp(s));
      });
    });
  }

  get bytes(): Buffer {
    return Buffer.concat(this.data);
  }

  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Resolves `p`, or fails naming `what` after `ms`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

/** The p-th percentile (0..100) of `xs`, nearest-rank. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}
