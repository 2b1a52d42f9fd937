import { EventEmitter } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { ClientProxy, type ReadPacket, type WritePacket } from '@nestjs/microservices';
import type { Observable } from 'rxjs';
import { PusherClientError } from '../errors/pusher-client.error.js';
import { PusherRejectedError } from '../errors/pusher-rejected.error.js';
import type { PushKind } from '../interfaces/push-kind.interface.js';
import { MAX_U16, PusherCmd, PusherReply, UUID_LENGTH } from '../protocol/protocol.constants.js';
import { type PusherTaskInput, pusherTaskLength, writePusherTask } from '../protocol/pusher-task.codec.js';
import { normalizeUuid, uuidFromHex, uuidFromKey } from '../protocol/uuid.util.js';

/** Options of `PusherClient` (also the `options` of a `ClientsModule` entry with `customClass: PusherClient`). */
export interface PusherClientOptions {
  /** Default `'127.0.0.1'`. */
  host?: string;
  /** Default 9999. */
  port?: number;
  /** Persistent connections in the pool. Default 1. */
  connections?: number;
  /** Tasks written on one connection and awaiting their reply byte, at most. Default 64. */
  maxInFlight?: number;
  /** Tasks waiting client-side for a free connection slot; beyond, pushes fail with `queue-full`. Default 10,000. */
  maxQueued?: number;
  /** A connection attempt that takes longer fails. Default 5 s. */
  connectTimeoutMs?: number;
  /**
   * A task without its reply byte this long after `push()` fails with
   * `timeout`. A written task that times out also closes its connection (the
   * server is not answering it), failing the tasks behind it with
   * `connection-lost`. 0 disables. Default 30 s.
   */
  timeoutMs?: number;
  /** Reconnect backoff: first delay, doubling up to the max. Default 100 ms and 5 s. */
  reconnectInitialDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** appId of tasks that do not give one. Default 1. */
  appId?: number;
}

/** One push, as `push()`, `emit()` and `send()` take it. */
export interface PusherPush {
  /** Device uuid: 32 hex characters or 16 bytes. Give this or `key`. */
  uuid?: string | Uint8Array;
  /** A user key; the uuid is its MD5 (DDPush convention). */
  key?: string;
  kind: PushKind;
  /** `category`: the categories to add, one bit each (64 bits). */
  mask?: bigint | number;
  /** `message`: bytes as is, a string as UTF-8, anything else as JSON. */
  content?: Buffer | Uint8Array | string | object;
  /** 0..255. Default: the client's `appId` option. */
  appId?: number;
}

export type PusherClientStatus = 'connected' | 'disconnected' | 'reconnecting' | 'closed';

/** Events of `PusherClient` (`client.on(...)`). */
export type PusherClientEvents = {
  /** A socket error (the connection is then closed and retried). */
  error: (err: Error) => void;
  /** Connection `index` of the pool is up. */
  connect: (index: number) => void;
  /** Connection `index` went down; `lost` tasks were in flight on it and failed. */
  disconnect: (index: number, lost: number) => void;
};

/** Client counters (monotonic). */
export interface PusherClientCounters {
  sent: number;
  accepted: number;
  rejected: number;
  lost: number;
  timedOut: number;
  queueFull: number;
  connects: number;
  disconnects: number;
}

interface Task {
  bytes: Buffer;
  deadline: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Conn {
  index: number;
  socket: Socket | undefined;
  open: boolean;
  /** Written tasks awaiting their reply, oldest first (`inflight[head]`). */
  inflight: Task[];
  head: number;
  corked: boolean;
  /** Reply bytes received on the current socket (0 at close hints at a refusal by the server). */
  replies: number;
  attempt: Promise<void> | undefined;
  reconnectTimer: NodeJS.Timeout | undefined;
  backoff: number;
}

const KIND_CMD: Record<PushKind, PusherCmd> = { notice: PusherCmd.Notice, category: PusherCmd.Category, message: PusherCmd.Message };

type Resolved = Required<PusherClientOptions>;

function resolveOptions(o: PusherClientOptions = {}): Resolved {
  const r: Resolved = {
    host: o.host ?? '127.0.0.1',
    port: o.port ?? 9999,
    connections: o.connections ?? 1,
    maxInFlight: o.maxInFlight ?? 64,
    maxQueued: o.maxQueued ?? 10_000,
    connectTimeoutMs: o.connectTimeoutMs ?? 5_000,
    timeoutMs: o.timeoutMs ?? 30_000,
    reconnectInitialDelayMs: o.reconnectInitialDelayMs ?? 100,
    reconnectMaxDelayMs: o.reconnectMaxDelayMs ?? 5_000,
    appId: o.appId ?? 1,
  };
  const int = (k: keyof Resolved, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const v = r[k];
    if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) throw new TypeError(`PusherClient: option "${k}" must be an integer in ${min}..${max}, got ${String(v)}`);
  };
  if (typeof r.host !== 'string' || !r.host) throw new TypeError(`PusherClient: option "host" must be a host name or address, got ${String(r.host)}`);
  int('port', 1, 65535);
  int('connections', 1, 1024);
  int('maxInFlight', 1);
  int('maxQueued', 0);
  int('connectTimeoutMs', 1);
  int('timeoutMs', 0);
  int('reconnectInitialDelayMs', 1);
  int('reconnectMaxDelayMs', 1);
  int('appId', 0, 255);
  return r;
}

/**
 * Client of the pusher port (TCP 9999) for app servers: a pool of persistent
 * connections with pipelining, a bounded client-side queue and reconnects.
 *
 * As a Nest client: `ClientsModule.register([{ name: 'PUSHER', customClass:
 * PusherClient, options: { host, port } }])`, then `client.emit('push', push)`
 * (completes on 0x00, errors with `PusherRejectedError` on 0x01/0xff) or
 * `client.send('push', push)` (emits the reply code 0 then completes). Without
 * Nest: `await new PusherClient({ port }).push(push)`.
 *
 * A task whose connection dies before its reply is failed with
 * `PusherClientError('connection-lost', maybeStored: true)` and never resent
 * by the client: the server may have stored it already.
 */
// Status is `string` for the base class on purpose: `ReplaySubject<Status>` is
// invariant, and `ClientsModule.register([{ customClass: PusherClient }])`
// needs `Type<ClientProxy>` (Status = string). `status` is narrowed below.
export class PusherClient extends ClientProxy<PusherClientEvents, string> {
  readonly options: Resolved;
  readonly counters: PusherClientCounters = { sent: 0, accepted: 0, rejected: 0, lost: 0, timedOut: 0, queueFull: 0, connects: 0, disconnects: 0 };
  private readonly conns: Conn[] = [];
  private readonly emitter = new EventEmitter();
  private queue: Task[] = [];
  private queueHead = 0;
  private openCount = 0;
  /** A connection succeeded since the last `close()`: lost connections are retried in the background. */
  private active = false;
  private closed = false;
  private connecting: Promise<void> | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastStatus: PusherClientStatus | undefined;

  constructor(options: PusherClientOptions = {}) {
    super();
    this.options = resolveOptions(options);
    for (let i = 0; i < this.options.connections; i++) {
      this.conns.push({ index: i, socket: undefined, open: false, inflight: [], head: 0, corked: false, replies: 0, attempt: undefined, reconnectTimer: undefined, backoff: this.options.reconnectInitialDelayMs });
    }
    this.setStatus('disconnected');
  }

  /** 'connected' | 'disconnected' | 'reconnecting' | 'closed' (replays the latest to new subscribers). */
  override get status(): Observable<PusherClientStatus> {
    return super.status as Observable<PusherClientStatus>;
  }

  /** Tasks waiting client-side for a connection slot. */
  get queued(): number {
    return this.queue.length - this.queueHead;
  }

  /** Tasks written and awaiting their reply, over all connections. */
  get inFlight(): number {
    let n = 0;
    for (const c of this.conns) n += c.inflight.length - c.head;
    return n;
  }

  /** Open connections of the pool. */
  get connected(): number {
    return this.openCount;
  }

  /**
   * Resolves once at least one connection of the pool is up (at once when one
   * is). With none up, every idle connection tries now (skipping its backoff);
   * rejects with the connection error when all attempts fail.
   */
  connect(): Promise<void> {
    if (this.openCount > 0) return Promise.resolve();
    if (this.connecting) return this.connecting;
    this.closed = false;
    this.startSweep();
    const attempts = this.conns.map((c) => {
      if (c.reconnectTimer) clearTimeout(c.reconnectTimer);
      c.reconnectTimer = undefined;
      return this.open(c);
    });
    const p = Promise.any(attempts).catch((agg: AggregateError) => {
      const err = (agg.errors?.[0] as Error | undefined) ?? new Error('connection failed');
      if (!this.closed) this.setStatus(this.active ? 'reconnecting' : 'disconnected');
      throw err;
    });
    const done = () => {
      if (this.connecting === p) this.connecting = undefined;
    };
    p.then(done, done);
    this.connecting = p;
    return p;
  }

  /** Sends one push; resolves once the server answered 0x00 (stored). */
  async push(input: PusherPush): Promise<void> {
    const bytes = this.encode(input);
    if (this.openCount === 0) await this.connect();
    return this.submit(bytes);
  }

  /** Closes every connection. Queued tasks fail (`closed`, not sent); in-flight tasks fail (`closed`, maybe stored). */
  async close(): Promise<void> {
    this.closed = true;
    this.active = false;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    const queued = this.queue.slice(this.queueHead);
    this.queue = [];
    this.queueHead = 0;
    for (const t of queued) t.reject(new PusherClientError('closed', false, 'PusherClient was closed before this push was sent; nothing was sent'));
    const closing: Promise<void>[] = [];
    for (const c of this.conns) {
      if (c.reconnectTimer) clearTimeout(c.reconnectTimer);
      c.reconnectTimer = undefined;
      const s = c.socket;
      if (s) {
        closing.push(new Promise((r) => (s.destroyed ? r() : s.once('close', () => r()))));
        this.failInflight(c, () => new PusherClientError('closed', true, 'PusherClient was closed before the reply arrived; the server may have stored this push (do not resend blindly)'));
        s.destroy();
      }
    }
    await Promise.all(closing);
    this.setStatus('closed');
  }

  override on<EventKey extends keyof PusherClientEvents = keyof PusherClientEvents, EventCallback extends PusherClientEvents[EventKey] = PusherClientEvents[EventKey]>(
    event: EventKey,
    callback: EventCallback,
  ): void {
    this.emitter.on(event, callback as (...args: any[]) => void);
  }

  /** The open sockets of the pool. */
  unwrap<T>(): T {
    const sockets = this.conns.filter((c) => c.open).map((c) => c.socket!);
    if (sockets.length === 0) throw new Error('PusherClient is not connected: call connect() (or emit/push, which connect) first');
    return sockets as T;
  }

  // ------------------------------------------------------------- Nest hooks

  protected publish(packet: ReadPacket, callback: (packet: WritePacket) => void): () => void {
    let live = true;
    let bytes: Buffer;
    try {
      bytes = this.encode(packet.data as PusherPush);
    } catch (err) {
      callback({ err });
      return () => {};
    }
    this.submit(bytes).then(
      () => live && callback({ response: PusherReply.Accepted, isDisposed: true }),
      (err: unknown) => live && callback({ err }),
    );
    // A written task cannot be taken back: unsubscribing only stops the callback.
    return () => {
      live = false;
    };
  }

  protected dispatchEvent<T = any>(packet: ReadPacket): Promise<T> {
    try {
      return this.submit(this.encode(packet.data as PusherPush)) as Promise<T>;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  // -------------------------------------------------------------- encoding

  /** Builds the task bytes, or throws `PusherClientError('invalid-input')`. */
  encode(input: PusherPush): Buffer {
    const fail = (msg: string, cause?: unknown) => new PusherClientError('invalid-input', false, `Invalid push: ${msg}`, cause === undefined ? undefined : { cause });
    if (!input || typeof input !== 'object') throw fail('expected an object { uuid | key, kind, mask?, content?, appId? }');
    let uuid: Uint8Array;
    try {
      if (input.uuid !== undefined && input.key !== undefined) throw new TypeError('give uuid or key, not both');
      if (input.uuid !== undefined) uuid = typeof input.uuid === 'string' ? uuidFromHex(normalizeUuid(input.uuid)) : input.uuid;
      else if (input.key !== undefined) uuid = uuidFromKey(input.key);
      else throw new TypeError('uuid (32 hex chars or 16 bytes) or key (a user key) is required');
      if (!(uuid instanceof Uint8Array) || uuid.length !== UUID_LENGTH) throw new TypeError(`uuid must be 16 bytes`);
    } catch (err) {
      throw fail((err as Error).message, err);
    }
    const cmd = KIND_CMD[input.kind];
    if (cmd === undefined) throw fail(`kind must be 'notice', 'category' or 'message', got ${JSON.stringify(input.kind)}`);
    const appId = input.appId ?? this.options.appId;
    if (!Number.isInteger(appId) || appId < 0 || appId > 255) throw fail(`appId must be an integer in 0..255, got ${String(appId)}`);
    const task: PusherTaskInput = { cmd, uuid, appId };
    if (cmd === PusherCmd.Category) {
      const m = input.mask;
      let mask: bigint;
      if (typeof m === 'bigint') mask = m;
      else if (typeof m === 'number' && Number.isSafeInteger(m)) mask = BigInt(m);
      else throw fail('a category push needs mask: a bigint (or safe integer) with one bit per category');
      if (mask < 0n || BigInt.asUintN(64, mask) !== mask) throw fail(`mask must fit in 64 unsigned bits, got ${mask}`);
      task.mask = mask;
    } else if (cmd === PusherCmd.Message) {
      const c = input.content;
      let content: Uint8Array;
      if (c instanceof Uint8Array) content = c;
      else if (typeof c === 'string') content = Buffer.from(c, 'utf8');
      else if (c !== undefined && c !== null) content = Buffer.from(JSON.stringify(c), 'utf8');
      else throw fail('a message push needs content (bytes, a string, or a JSON-serialisable object)');
      if (content.length === 0) throw fail('message content is empty; send at least 1 byte');
      if (content.length > MAX_U16) throw fail(`message content is ${content.length} bytes; the protocol's u16 length field allows ${MAX_U16}; servers allow 500 by default`);
      task.content = content;
    }
    const bytes = Buffer.allocUnsafe(pusherTaskLength(task));
    writePusherTask(bytes, 0, task);
    return bytes;
  }

  // ------------------------------------------------------------- dispatch

  /** Sends pre-encoded task bytes (one whole task). Resolves on 0x00. */
  private submit(bytes: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.closed) {
        reject(new PusherClientError('closed', false, 'PusherClient is closed; call connect() again to reuse it. Nothing was sent'));
        return;
      }
      const task: Task = { bytes, deadline: this.options.timeoutMs > 0 ? Date.now() + this.options.timeoutMs : Infinity, resolve, reject };
      if (this.queued === 0) {
        const c = this.pick();
        if (c) return this.write(c, task);
      }
      if (this.queued >= this.options.maxQueued) {
        this.counters.queueFull++;
        reject(
          new PusherClientError(
            'queue-full',
            false,
            `PusherClient queue is full (${this.options.maxQueued} pushes waiting, option maxQueued); nothing was sent. Wait for pending pushes, or raise connections/maxInFlight/maxQueued`,
          ),
        );
        return;
      }
      this.queue.push(task);
    });
  }

  /** The least-loaded open connection with a free in-flight slot. */
  private pick(): Conn | undefined {
    let best: Conn | undefined;
    let load = this.options.maxInFlight;
    for (const c of this.conns) {
      if (!c.open) continue;
      const n = c.inflight.length - c.head;
      if (n < load) {
        best = c;
        load = n;
        if (n === 0) break;
      }
    }
    return best;
  }

  private write(c: Conn, task: Task): void {
    c.inflight.push(task);
    this.counters.sent++;
    const s = c.socket!;
    if (!c.corked) {
      // Tasks pushed in one tick go out in one writev.
      c.corked = true;
      s.cork();
      process.nextTick(() => {
        c.corked = false;
        s.uncork();
      });
    }
    s.write(task.bytes);
  }

  private pump(): void {
    while (this.queued > 0) {
      const c = this.pick();
      if (!c) return;
      const task = this.queue[this.queueHead]!;
      this.queue[this.queueHead++] = undefined as unknown as Task;
      this.write(c, task);
    }
    if (this.queueHead > 0) {
      this.queue = [];
      this.queueHead = 0;
    }
  }

  private onReplies(c: Conn, chunk: Buffer): void {
    c.replies += chunk.length;
    for (let i = 0; i < chunk.length; i++) {
      if (c.head >= c.inflight.length) {
        // A reply for a task we never sent: not a pusher port. Drop the connection.
        this.emitError(new Error(`PusherClient: unexpected reply byte from ${this.options.host}:${this.options.port}; is this a DDPush pusher port?`));
        c.socket?.destroy();
        return;
      }
      const task = c.inflight[c.head]!;
      c.inflight[c.head++] = undefined as unknown as Task;
      const code = chunk[i]!;
      if (code === PusherReply.Accepted) {
        this.counters.accepted++;
        task.resolve();
      } else {
        this.counters.rejected++;
        task.reject(new PusherRejectedError(code));
      }
    }
    if (c.head === c.inflight.length) {
      c.inflight = [];
      c.head = 0;
    } else if (c.head > 1024) {
      c.inflight = c.inflight.slice(c.head);
      c.head = 0;
    }
    this.pump();
  }

  private failInflight(c: Conn, error: () => Error): number {
    const lost = c.inflight.slice(c.head);
    c.inflight = [];
    c.head = 0;
    for (const t of lost) t.reject(error());
    return lost.length;
  }

  // ------------------------------------------------------------ connections

  /** Opens one connection; resolves when it is up. */
  private open(c: Conn): Promise<void> {
    if (c.open) return Promise.resolve();
    if (c.attempt) return c.attempt;
    const { host, port, connectTimeoutMs } = this.options;
    const attempt = new Promise<void>((resolve, reject) => {
      const socket = netConnect({ host, port, noDelay: true });
      c.socket = socket;
      let up = false;
      const timer = setTimeout(() => socket.destroy(new Error(`PusherClient: connecting to ${host}:${port} timed out after ${connectTimeoutMs} ms`)), connectTimeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        if (this.closed) {
          socket.destroy();
          reject(new PusherClientError('closed', false, 'PusherClient was closed while connecting'));
          return;
        }
        up = true;
        c.open = true;
        c.replies = 0;
        c.backoff = this.options.reconnectInitialDelayMs;
        this.openCount++;
        this.active = true;
        this.counters.connects++;
        this.setStatus('connected');
        this.emitter.emit('connect', c.index);
        resolve();
        this.pump();
      });
      socket.on('data', (chunk: Buffer) => this.onReplies(c, chunk));
      socket.on('error', (err) => {
        if (up) this.emitError(err);
        else reject(describeConnectError(err, host, port));
      });
      socket.on('close', () => {
        clearTimeout(timer);
        if (c.socket === socket) c.socket = undefined;
        if (!up) {
          reject(new Error(`PusherClient: connection to ${host}:${port} closed while connecting`));
          this.afterDown(c);
          return;
        }
        c.open = false;
        this.openCount--;
        this.counters.disconnects++;
        const hint =
          c.replies === 0
            ? ' The server closed the connection without answering anything: this client address may be refused by its allow-list, or it is at its connection limit.'
            : '';
        const lost = this.failInflight(
          c,
          () =>
            new PusherClientError(
              'connection-lost',
              true,
              `PusherClient: the connection to ${host}:${port} closed before the reply arrived; the server may have stored this push, so it was not resent (resend only if a duplicate is acceptable).${hint}`,
            ),
        );
        this.counters.lost += lost;
        this.emitter.emit('disconnect', c.index, lost);
        this.afterDown(c);
      });
    });
    c.attempt = attempt;
    const clear = () => {
      if (c.attempt === attempt) c.attempt = undefined;
    };
    attempt.then(clear, clear);
    return attempt;
  }

  /** A connection is down (or failed to open): update status and schedule its retry. */
  private afterDown(c: Conn): void {
    if (this.closed) return;
    if (this.openCount === 0) this.setStatus('disconnected');
    if (!this.active || c.reconnectTimer) return;
    const delay = c.backoff;
    c.backoff = Math.min(c.backoff * 2, this.options.reconnectMaxDelayMs);
    c.reconnectTimer = setTimeout(() => {
      c.reconnectTimer = undefined;
      if (!this.closed && this.active) this.open(c).catch(() => {});
    }, delay);
    c.reconnectTimer.unref();
    if (this.openCount === 0) this.setStatus('reconnecting');
  }

  private startSweep(): void {
    if (this.sweepTimer || this.options.timeoutMs === 0) return;
    const every = Math.max(10, Math.min(1_000, Math.floor(this.options.timeoutMs / 4)));
    this.sweepTimer = setInterval(() => this.sweep(Date.now()), every);
    this.sweepTimer.unref();
  }

  /** Fails tasks past their deadline. Deadlines grow along each FIFO, so only heads are looked at. */
  private sweep(now: number): void {
    const ms = this.options.timeoutMs;
    while (this.queued > 0 && this.queue[this.queueHead]!.deadline <= now) {
      const t = this.queue[this.queueHead]!;
      this.queue[this.queueHead++] = undefined as unknown as Task;
      this.counters.timedOut++;
      t.reject(new PusherClientError('timeout', false, `PusherClient: no connection slot for ${ms} ms (option timeoutMs); this push was not sent. Is the push server up?`));
    }
    if (this.queued === 0 && this.queueHead > 0) {
      this.queue = [];
      this.queueHead = 0;
    }
    for (const c of this.conns) {
      const head = c.inflight[c.head];
      if (!head || head.deadline > now) continue;
      c.inflight[c.head++] = undefined as unknown as Task;
      this.counters.timedOut++;
      head.reject(
        new PusherClientError('timeout', true, `PusherClient: no reply within ${ms} ms (option timeoutMs); the server may still store this push. The connection is being reset`),
      );
      c.socket?.destroy();
    }
  }

  private setStatus(s: PusherClientStatus): void {
    if (this.lastStatus === s) return;
    this.lastStatus = s;
    this._status$.next(s);
  }

  private emitError(err: Error): void {
    if (this.emitter.listenerCount('error') > 0) this.emitter.emit('error', err);
  }
}

function describeConnectError(err: Error & { code?: string }, host: string, port: number): Error {
  if (err.code === 'ECONNREFUSED') {
    err.message = `PusherClient: connection to ${host}:${port} refused; is the push server running with its pusher port on ${host}:${port}? (${err.message})`;
  } else if (err.code === 'ECONNRESET') {
    err.message = `PusherClient: connection to ${host}:${port} was reset; the server may refuse this address (pusher allow-list) or be at its connection limit (${err.message})`;
  }
  return err;
}
