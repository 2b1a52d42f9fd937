import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { lookup as dnsLookup } from 'node:dns';
import { EventEmitter } from 'node:events';
import { createServer, isIP, type Server as NetServer, type Socket } from 'node:net';
import { BaseRpcContext } from '@nestjs/microservices';
import { Subscription } from 'rxjs';
import { IDLE_CUTS_PER_TURN, PushTransportServer } from './push-transport.server.js';
import { UdpOutbox } from './udp-outbox.js';
import type { DeviceEngine, DeviceLink } from '../device/device-engine.js';
import type { DeviceEvent } from '../device/device-event.interface.js';
import { PushConfigError } from '../errors/push-config.error.js';
import { createClientFrame, decodeClientFrame } from '../protocol/client-frame.codec.js';
import { ClientFrameStreamDecoder } from '../protocol/client-frame.decoder.js';
import { DEVICE_EVENT_PATTERNS, DEVICE_TRANSPORT } from '../push.constants.js';

/** Options of the device port (UDP and TCP on one port number). */
export interface DeviceTransportOptions {
  /** Default `'0.0.0.0'`. */
  host?: string;
  /** Default 9966. 0 picks a free port (the same number for UDP and TCP). */
  port?: number;
  /** Listen for UDP devices. Default true. */
  udp?: boolean;
  /** Listen for TCP devices. Default true. */
  tcp?: boolean;
  /**
   * A TCP device that completes no frame for this long is disconnected.
   * Only whole frames count: a connection dripping one byte at a time
   * (slowloris) is cut like a silent one. Default 300 s.
   */
  tcpIdleTimeoutMs?: number;
  /**
   * Bytes queued for one TCP device before it is disconnected: a device that
   * stops reading is cut off instead of buffered forever. Default 64 KiB.
   */
  tcpWriteLimitBytes?: number;
  /** Open TCP device connections at most; further ones are refused and counted. Default 100,000. */
  maxTcpConnections?: number;
  /** UDP socket receive/send buffer sizes in bytes (the OS may cap them). Default 4 MiB / 1 MiB. */
  udpRecvBufferSize?: number;
  udpSendBufferSize?: number;
}

export type DeviceTransportStatus = 'listening' | 'closed';

/** Context handed to `@EventPattern` handlers bound to the device transport: `[uuid, event]`. */
export class DeviceEventContext extends BaseRpcContext<[string, DeviceEvent]> {
  getUuid(): string {
    return this.args[0];
  }
  getEvent(): DeviceEvent {
    return this.args[1];
  }
}

/** Transport counters beyond the engine's. */
export interface DeviceTransportCounters {
  datagrams: number;
  tcpConnections: number;
  tcpRefused: number;
  tcpIdleClosed: number;
  tcpProtocolClosed: number;
  /**
   * UDP sends that failed, among those checked: one send in 16 is checked
   * (see `UdpOutbox`), plus every send tried while the socket is closed. A
   * sample: any rise means sends are failing; `sendErrors / sendsChecked` is
   * about the share that fail.
   */
  sendErrors: number;
  /** UDP sends whose result was checked (the denominator of `sendErrors`). */
  sendsChecked: number;
}

type ResolvedOptions = Required<DeviceTransportOptions>;

function resolve(o: DeviceTransportOptions): ResolvedOptions {
  const r: ResolvedOptions = {
    host: o.host ?? '0.0.0.0',
    port: o.port ?? 9966,
    udp: o.udp ?? true,
    tcp: o.tcp ?? true,
    tcpIdleTimeoutMs: o.tcpIdleTimeoutMs ?? 300_000,
    tcpWriteLimitBytes: o.tcpWriteLimitBytes ?? 64 * 1024,
    maxTcpConnections: o.maxTcpConnections ?? 100_000,
    udpRecvBufferSize: o.udpRecvBufferSize ?? 4 * 1024 * 1024,
    udpSendBufferSize: o.udpSendBufferSize ?? 1024 * 1024,
  };
  if (!Number.isInteger(r.port) || r.port < 0 || r.port > 65535) throw new PushConfigError('device.port', `expected 0..65535, got ${r.port}`);
  if (!r.udp && !r.tcp) throw new PushConfigError('device', 'udp and tcp are both disabled; enable one, or set device.enabled=false');
  for (const k of ['tcpIdleTimeoutMs', 'tcpWriteLimitBytes', 'maxTcpConnections', 'udpRecvBufferSize', 'udpSendBufferSize'] as const) {
    if (!Number.isInteger(r[k]) || r[k] < 1) throw new PushConfigError(`device.${k}`, `expected a positive integer, got ${r[k]}`);
  }
  return r;
}

/**
 * The device port as a Nest custom transport: one UDP socket and one TCP
 * server on the same host/port, feeding a `DeviceEngine`.
 *
 * Engine events are also dispatched to `@EventPattern('push.ack' |
 * 'device.online' | 'device.offline')` handlers registered on this transport,
 * for apps that want guards and interceptors around them.
 */
/** Events of the device transport (`strategy.on(...)`). */
export type DeviceTransportEvents = {
  error: (err: Error) => void;
  listening: (port: number) => void;
};

export class DeviceTransportStrategy extends PushTransportServer<DeviceTransportEvents, DeviceTransportStatus> {
  override transportId = DEVICE_TRANSPORT;
  readonly options: ResolvedOptions;
  readonly counters: DeviceTransportCounters = { datagrams: 0, tcpConnections: 0, tcpRefused: 0, tcpIdleClosed: 0, tcpProtocolClosed: 0, sendErrors: 0, sendsChecked: 0 };
  private udp: UdpSocket | undefined;
  private tcp: NetServer | undefined;
  /** Open device connections and when each last completed a frame (ms; the connect time until then). */
  private readonly sockets = new Map<Socket, number>();
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly emitter = new EventEmitter();
  private eventsSub: Subscription | undefined;
  private boundPort = 0;
  // Decoding a datagram reuses one frame object: the engine reads it synchronously.
  private readonly frame = createClientFrame();

  constructor(
    readonly engine: DeviceEngine,
    options: DeviceTransportOptions = {},
  ) {
    super();
    this.options = resolve(options);
  }

  /** The bound port (useful with port 0). */
  get port(): number {
    return this.boundPort;
  }

  get listening(): boolean {
    return this.boundPort !== 0;
  }

  /** Binds the sockets (also usable without Nest). */
  async start(): Promise<void> {
    if (this.listening) return;
    const { host, port } = this.options;
    // With port 0 the OS picks the TCP port and UDP binds the same number;
    // retry in the rare case that number is taken for UDP.
    for (let attempt = 0; ; attempt++) {
      try {
        let p = port;
        if (this.options.tcp) p = await this.startTcp(host, port);
        if (this.options.udp) p = await this.startUdp(host, p);
        this.boundPort = p;
        break;
      } catch (err) {
        await this.closeSockets();
        if (port !== 0 || attempt >= 5) throw err;
      }
    }
    // Sends go through the outbox: a sampled completion callback is what reports failed sends (Node emits no 'error' for them).
    this.engine.attachUdp(this.udp ? this.outbox : undefined);
    this.engine.start();
    // Idleness is judged on the frames the device sends (heartbeats), not on
    // what we write to it (socket.setTimeout would count our pushes as
    // activity and keep a silent device's connection forever), nor on stray
    // bytes (a peer dripping one byte a minute would hold its slot forever).
    // One timer for all sockets.
    const idle = this.options.tcpIdleTimeoutMs;
    this.idleTimer = setInterval(() => this.closeIdle(Date.now() - idle), Math.max(10, Math.min(idle / 4, 30_000)));
    this.idleTimer.unref();
    this.eventsSub = new Subscription(this.engine.listen((e) => this.dispatch(e)));
    this._status$.next('listening');
    this.emitter.emit('listening', this.boundPort);
  }

  // EventEmitter throws an 'error' event nobody listens to: with no listener,
  // log it instead, so a socket error never takes the server down.
  private readonly onSocketError = (err: Error): void => {
    if (this.emitter.listenerCount('error') > 0) this.emitter.emit('error', err);
    else this.logger.error(`Device transport socket error: ${err.message}`, err.stack);
  };

  private readonly onSendDone = (err: Error | null): void => {
    this.counters.sendsChecked++;
    if (err) this.counters.sendErrors++;
  };
  /** Pushes leave in bursts, at the end of the callback that produced them (see `UdpOutbox`). */
  private readonly outbox = new UdpOutbox(() => this.udp, this.onSendDone);

  private startTcp(host: string, port: number): Promise<number> {
    const server = createServer({ noDelay: true, pauseOnConnect: false }, (socket) => this.onConnection(socket));
    this.tcp = server;
    server.on('error', this.onSocketError);
    // At the cap, Node closes a new connection's handle before building a
    // Socket for it: several times cheaper per refusal than destroying one in
    // onConnection, which matters when a slowloris reconnects as fast as it is
    // refused. onConnection still checks, for the sockets cut but not yet closed.
    server.maxConnections = this.options.maxTcpConnections;
    server.on('drop', this.onRefused);
    return new Promise((resolvePort, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 4096 }, () => {
        server.off('error', reject);
        resolvePort((server.address() as { port: number }).port);
      });
    });
  }

  private startUdp(host: string, port: number): Promise<number> {
    const socket = createSocket({
      type: host.includes(':') ? 'udp6' : 'udp4',
      recvBufferSize: this.options.udpRecvBufferSize,
      sendBufferSize: this.options.udpSendBufferSize,
      lookup: ipLookup,
    });
    this.udp = socket;
    socket.on('message', (msg, rinfo) => {
      this.counters.datagrams++;
      const r = decodeClientFrame(msg, this.frame);
      if (typeof r === 'string') {
        this.engine.countDrop(r);
        return;
      }
      const outbox = this.outbox;
      outbox.direct = true;
      try {
        this.engine.handleUdp(r, rinfo.address, rinfo.port);
      } finally {
        outbox.direct = false;
      }
    });
    // An ICMP-unreachable or a send error must never take the server down.
    socket.on('error', this.onSocketError);
    return new Promise((resolvePort, reject) => {
      socket.once('error', reject);
      socket.bind({ address: host, port, exclusive: true }, () => {
        socket.off('error', reject);
        resolvePort(socket.address().port);
      });
    });
  }

  private readonly onRefused = (): void => {
    this.counters.tcpRefused++;
    this.engine.countDrop('tcp-connection-limit');
  };

  private onConnection(socket: Socket): void {
    if (this.sockets.size >= this.options.maxTcpConnections) {
      this.onRefused();
      socket.destroy();
      return;
    }
    this.counters.tcpConnections++;
    this.sockets.set(socket, Date.now());
    const limit = this.options.tcpWriteLimitBytes;
    const link: DeviceLink = {
      address: socket.remoteAddress ?? '',
      port: socket.remotePort ?? 0,
      deviceId: -1,
      send(frame: Buffer): boolean {
        if (socket.destroyed) return false;
        if (socket.writableLength + frame.length > limit) {
          socket.destroy();
          return false;
        }
        socket.write(frame);
        return true;
      },
      close(): void {
        socket.destroy();
      },
    };
    // Set by a completed frame; the read that completed it stamps the socket.
    let framed = false;
    const decoder = new ClientFrameStreamDecoder(
      (frame) => {
        framed = true;
        this.engine.handleTcp(frame, link);
      },
      (reason) => {
        this.engine.countDrop(reason);
        this.counters.tcpProtocolClosed++;
        socket.destroy();
      },
    );
    socket.on('data', (chunk) => {
      decoder.write(chunk);
      if (framed && !socket.destroyed) {
        framed = false;
        this.sockets.set(socket, Date.now());
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.engine.tcpClosed(link);
    });
  }

  /**
   * Cuts connections silent since `cutoff`, `IDLE_CUTS_PER_TURN` per
   * event-loop turn; the next turn goes on with the same iterator (a Map's
   * survives deletions), so thousands of idle connections cost one pass.
   */
  private closeIdle(cutoff: number, it = this.sockets.entries()): void {
    let cuts = 0;
    for (let r = it.next(); !r.done; r = it.next()) {
      const [socket, lastData] = r.value;
      if (lastData >= cutoff) continue;
      this.counters.tcpIdleClosed++;
      this.sockets.delete(socket);
      socket.destroy();
      if (++cuts === IDLE_CUTS_PER_TURN) {
        setImmediate(() => this.idleTimer && this.closeIdle(cutoff, it));
        return;
      }
    }
  }

  private dispatch(event: DeviceEvent): void {
    const pattern = DEVICE_EVENT_PATTERNS[event.type];
    if (!pattern || !this.messageHandlers.has(pattern)) return;
    const ctx = new DeviceEventContext([event.uuid, event]);
    this.handleEvent(pattern, { pattern, data: event }, ctx).catch((err) => this.logger.error?.(err));
  }

  async close(): Promise<void> {
    this.eventsSub?.unsubscribe();
    this.eventsSub = undefined;
    this.engine.stop();
    this.engine.attachUdp(undefined);
    await this.closeSockets();
    if (this.boundPort !== 0) {
      this.boundPort = 0;
      this._status$.next('closed');
    }
  }

  private async closeSockets(): Promise<void> {
    // What this callback queued still leaves (a push accepted just before close is sent, not lost in the queue).
    this.outbox.flush();
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = undefined;
    this.tcp = undefined;
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = undefined;
    for (const s of this.sockets.keys()) s.destroy();
    this.sockets.clear();
    await Promise.all([
      udp && new Promise<void>((r) => udp.close(() => r())),
      tcp && new Promise<void>((r) => tcp.close(() => r())),
    ]);
  }

  on<K extends keyof DeviceTransportEvents>(event: K, callback: DeviceTransportEvents[K]): this {
    this.emitter.on(event, callback as (...args: any[]) => void);
    return this;
  }

  unwrap<T>(): T {
    if (!this.udp && !this.tcp) throw new Error('Device transport is not listening: call listen() (or app.startAllMicroservices()) first');
    return { udp: this.udp, tcp: this.tcp } as T;
  }
}

/**
 * The UDP socket's address lookup. Replies go to the address a datagram came
 * from, always an IP literal: answering synchronously spares Node's default
 * (`dns.lookup`), which defers every send by one tick. Host names (the bind
 * address) still go through `dns.lookup`.
 */
function ipLookup(address: string, family: unknown, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void {
  const v = isIP(address);
  if (v !== 0) callback(null, address, v);
  else dnsLookup(address, family as number, callback);
}
