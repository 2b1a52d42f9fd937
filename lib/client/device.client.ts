import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import { BehaviorSubject, type Observable, Subject } from 'rxjs';
import type { DeviceTransportKind } from '../interfaces/push-kind.interface.js';
import { encodeClientFrame } from '../protocol/client-frame.codec.js';
import { ClientCmd, MAX_U16, ServerCmd } from '../protocol/protocol.constants.js';
import { decodeServerFrame, type ServerFrame } from '../protocol/server-frame.codec.js';
import { ServerFrameStreamDecoder } from '../protocol/server-frame.decoder.js';
import { normalizeUuid, uuidFromHex, uuidFromKey } from '../protocol/uuid.util.js';

/** Options of a simulated (or real Node) DDPush v1 device. */
export interface DeviceClientOptions {
  host?: string;
  port?: number;
  transport?: DeviceTransportKind;
  /** Device uuid (32 hex chars or 16 bytes). Give this or `key`. */
  uuid?: string | Uint8Array;
  /** User key; the uuid is its MD5 (DDPush convention). */
  key?: string;
  /** Default 1. */
  appId?: number;
  /** Heartbeat period. Default 50 s (DDPush devices); milliseconds work for tests. 0 disables the timer. */
  heartbeatIntervalMs?: number;
  /** Ack every 0x10/0x11/0x20 as a DDPush device does. Default true. */
  autoAck?: boolean;
  /** TCP reconnect backoff. Default 200 ms doubling to 30 s. */
  reconnectInitialDelayMs?: number;
  reconnectMaxDelayMs?: number;
}

/** Something the server sent. */
export interface DeviceMessage {
  kind: 'echo' | 'notice' | 'category' | 'message';
  appId: number;
  /** category: the mask. */
  mask: bigint;
  /** message: the content. */
  content: Buffer;
  receivedAt: number;
}

export type DeviceClientStatus = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

const KIND: Record<number, DeviceMessage['kind']> = {
  [ServerCmd.HeartbeatEcho]: 'echo',
  [ServerCmd.Notice]: 'notice',
  [ServerCmd.Category]: 'category',
  [ServerCmd.Message]: 'message',
};

/**
 * A DDPush v1 device for Node: heartbeats, receives pushes over UDP or TCP,
 * acks them (automatically or by hand), reconnects TCP with backoff.
 * The device simulator, the tests and the benchmarks are built on it.
 */
export class DeviceClient {
  readonly uuid: string;
  readonly transport: DeviceTransportKind;
  readonly counters = { heartbeats: 0, received: 0, acked: 0, malformed: 0, reconnects: 0, sendErrors: 0 };
  private readonly uuidBytes: Buffer;
  private readonly heartbeatFrame: Buffer;
  private readonly opts: Required<Omit<DeviceClientOptions, 'uuid' | 'key'>>;
  private readonly messages$ = new Subject<DeviceMessage>();
  private readonly status$ = new BehaviorSubject<DeviceClientStatus>('idle');
  private udp: UdpSocket | undefined;
  private tcp: Socket | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoff: number;
  private closed = false;

  constructor(options: DeviceClientOptions) {
    if (options.uuid !== undefined) this.uuid = normalizeUuid(options.uuid);
    else if (options.key !== undefined) this.uuid = uuidFromKey(options.key).toString('hex');
    else throw new TypeError('DeviceClient needs a uuid or a key');
    this.uuidBytes = uuidFromHex(this.uuid);
    this.opts = {
      host: options.host ?? '127.0.0.1',
      port: options.port ?? 9966,
      transport: options.transport ?? 'udp',
      appId: options.appId ?? 1,
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 50_000,
      autoAck: options.autoAck ?? true,
      reconnectInitialDelayMs: options.reconnectInitialDelayMs ?? 200,
      reconnectMaxDelayMs: options.reconnectMaxDelayMs ?? 30_000,
    };
    this.transport = this.opts.transport;
    this.backoff = this.opts.reconnectInitialDelayMs;
    this.heartbeatFrame = this.frame(ClientCmd.Heartbeat);
  }

  /** Everything the server sends, in arrival order (heartbeat echoes included). */
  get messages(): Observable<DeviceMessage> {
    return this.messages$.asObservable();
  }

  get status(): Observable<DeviceClientStatus> {
    return this.status$.asObservable();
  }

  /** Opens the socket, sends the first heartbeat and starts the heartbeat timer. */
  async connect(): Promise<void> {
    this.closed = false;
    if (this.transport === 'udp') await this.openUdp();
    else await this.openTcp();
    this.heartbeat();
    if (this.opts.heartbeatIntervalMs > 0) {
      this.timer = setInterval(() => this.heartbeat(), this.opts.heartbeatIntervalMs);
      this.timer.unref();
    }
  }

  /** Sends a heartbeat now. */
  heartbeat(): void {
    if (this.write(this.heartbeatFrame)) this.counters.heartbeats++;
  }

  /** Acks a push by hand (with `autoAck: false`). For a category ack, pass the mask received. */
  ack(kind: 'notice' | 'category' | 'message', mask = 0n): void {
    const cmd = kind === 'notice' ? ClientCmd.AckNotice : kind === 'category' ? ClientCmd.AckCategory : ClientCmd.AckMessage;
    if (this.write(this.frame(cmd, mask))) this.counters.acked++;
  }

  /** Sends raw bytes on the device's socket (tests of malformed input). */
  sendRaw(bytes: Uint8Array): boolean {
    return this.write(bytes);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.timer = undefined;
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = undefined;
    this.tcp = undefined;
    if (udp) await new Promise<void>((r) => udp.close(() => r()));
    if (tcp) tcp.destroy();
    this.status$.next('closed');
    this.messages$.complete();
  }

  private frame(cmd: ClientCmd, mask = 0n): Buffer {
    return encodeClientFrame({ appId: this.opts.appId, cmd, uuid: this.uuidBytes, mask });
  }

  private write(bytes: Uint8Array): boolean {
    if (this.udp) {
      this.udp.send(bytes, (err) => {
        if (err) this.counters.sendErrors++;
      });
      return true;
    }
    if (this.tcp && !this.tcp.destroyed && this.status$.value === 'connected') {
      this.tcp.write(bytes);
      return true;
    }
    return false;
  }

  private openUdp(): Promise<void> {
    this.status$.next('connecting');
    const socket = createSocket(this.opts.host.includes(':') ? 'udp6' : 'udp4');
    this.udp = socket;
    socket.on('message', (msg) => {
      const f = decodeServerFrame(msg);
      if (typeof f === 'string') this.counters.malformed++;
      else this.receive(f);
    });
    // ICMP port unreachable (server down) surfaces here; a device keeps trying.
    socket.on('error', () => {});
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(this.opts.port, this.opts.host, () => {
        socket.off('error', reject);
        this.status$.next('connected');
        resolve();
      });
    });
  }

  private openTcp(): Promise<void> {
    this.status$.next('connecting');
    return new Promise((resolve, reject) => {
      const socket = connect({ host: this.opts.host, port: this.opts.port, noDelay: true });
      this.tcp = socket;
      const decoder = new ServerFrameStreamDecoder(
        (f) => this.receive(f),
        () => {
          this.counters.malformed++;
          socket.destroy();
        },
        MAX_U16,
      );
      let settled = false;
      let connected = false;
      socket.on('connect', () => {
        settled = true;
        connected = true;
        this.backoff = this.opts.reconnectInitialDelayMs;
        this.status$.next('connected');
        resolve();
      });
      socket.on('data', (chunk) => decoder.write(chunk));
      socket.on('error', (err) => {
        if (!settled) {
          settled = true;
          reject(err);
        }
      });
      socket.on('close', () => {
        if (this.tcp === socket) this.tcp = undefined;
        if (this.closed) return;
        this.status$.next('disconnected');
        // A socket that never connected is a failed connect(): its caller (or
        // the reconnect loop) has the error and decides whether to retry.
        if (connected) this.scheduleReconnect();
      });
    });
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer) return;
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.opts.reconnectMaxDelayMs);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.closed) return;
      this.counters.reconnects++;
      this.openTcp().then(
        () => this.heartbeat(),
        () => this.scheduleReconnect(),
      );
    }, delay);
    this.reconnectTimer.unref();
  }

  private receive(f: ServerFrame): void {
    const kind = KIND[f.cmd]!;
    if (kind !== 'echo') this.counters.received++;
    this.messages$.next({ kind, appId: f.appId, mask: f.mask, content: f.content, receivedAt: performance.now() });
    if (!this.opts.autoAck || kind === 'echo') return;
    this.ack(kind, f.mask);
  }
}
