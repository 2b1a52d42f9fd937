import { EventEmitter } from 'node:events';
import { BlockList, createServer, isIP, type Server as NetServer, type Socket } from 'node:net';
import { PayloadTooLargeError } from '../errors/payload-too-large.error.js';
import { PushFailedError } from '../errors/push-failed.error.js';
import { PushConfigError } from '../errors/push-config.error.js';
import { type BudgetReader, PipelineBudget } from './pipeline-budget.js';
import { type IntakeQueue, PusherIntake } from './pusher-intake.js';
import { IDLE_CUTS_PER_TURN, PushTransportServer } from './push-transport.server.js';
import type { PushSubmitter, SubmitCallback } from '../interfaces/push-submitter.interface.js';
import { DEFAULT_MAX_CONTENT_LENGTH, MAX_U16, PusherCmd, PusherReply, type PusherTaskError } from '../protocol/protocol.constants.js';
import type { PusherTask } from '../protocol/pusher-task.codec.js';
import { PusherTaskStreamDecoder, type PusherTaskSink } from '../protocol/pusher-task.decoder.js';
import { PUSHER_TRANSPORT } from '../push.constants.js';
import type { PendingWrite } from '../store/offline-store.js';

/** Options of the pusher port (TCP 9999, protocol.md section 5). */
export interface PusherTransportOptions {
  /** Default `'127.0.0.1'`: app servers are local unless you say otherwise (protocol.md section 7). */
  host?: string;
  /** Default 9999. 0 picks a free port (read it back from `strategy.port`). */
  port?: number;
  /** Largest 0x20 content in bytes; longer tasks get 0x01. Keep it equal to the engine's. Default 500. */
  maxContentLength?: number;
  /**
   * A connection that completes no task and gets no reply for this long is
   * closed (a connection waiting on its replies is never idle). Only whole
   * tasks count: a peer dripping one byte at a time (slowloris) is cut like a
   * silent one. Default 600 s (DDPush).
   */
  idleTimeoutMs?: number;
  /** Open connections at most; further ones are destroyed at once and counted. Default 1024. */
  maxConnections?: number;
  /**
   * Tasks per connection whose reply byte is not written yet. At this many the
   * socket is paused (no more reads) until one is answered. Tasks are decoded a
   * whole read chunk at a time, so one chunk can overshoot the limit by at most
   * `chunkBytes / 21` tasks (a 64 KiB chunk of 0x10 tasks: ~3,120). Default 256.
   */
  maxPipelined?: number;
  /**
   * Tasks read and not yet answered over all connections together. At this
   * many every connection stops being read until answers bring the count
   * back down; then held connections read again, oldest held first. Unread
   * tasks wait in the kernel's socket buffers, where they cost no heap, and
   * TCP flow control slows their senders. Why: with a durable store each task
   * waits in the heap for its group commit, and past a few thousand waiting
   * tasks a larger backlog adds no throughput (a commit is already large),
   * only garbage-collector work. Soft like `maxPipelined`: a read chunk is
   * decoded whole. Raise it for a disk whose commits take tens of ms
   * (throughput is at most this many tasks per commit). Default 4096.
   */
  maxPipelinedTotal?: number;
  /**
   * Tasks submitted per event-loop turn, over all connections (round-robin
   * between them), while the device port is busy; the rest wait for the next
   * turn. libuv reads at most 32 UDP datagrams per turn, so without this
   * limit a pusher connection delivering thousands of tasks per read would
   * starve the device port: acks and heartbeats pile up in the kernel buffer
   * and are dropped (the kernel's UDP buffer holds a few hundred). "Busy":
   * the port received a datagram in the last 20 ms; while it is quiet,
   * and in a strategy with no device port to watch (used standalone, or the
   * device port disabled), intake is not limited per turn. A turn after a
   * poll phase that read a full batch of 32 datagrams (the port is behind:
   * more wait in the kernel buffer) takes an eighth of this, at least one,
   * so a backlog of acks drains instead of being carried along. Default 32,
   * the same pace.
   */
  tasksPerTurn?: number;
  /**
   * CIDR allow-list, e.g. `['127.0.0.0/8', '10.0.0.0/8', '::1/128']` (a bare
   * address means that one host). Connections from elsewhere are destroyed at
   * once and counted. Unset: every address that can reach `host` is allowed.
   */
  allow?: readonly string[];
  /** How long `close()` waits for in-flight tasks to be stored and answered before cutting connections. Default 5 s. */
  closeTimeoutMs?: number;
}

export type PusherTransportStatus = 'listening' | 'closed';

/** Events of the pusher transport (`strategy.on(...)`). */
export type PusherTransportEvents = {
  error: (err: Error) => void;
  listening: (port: number) => void;
};

/** Pusher port counters (monotonic, except the gauges noted). */
export interface PusherTransportCounters {
  /** Connections accepted. */
  connections: number;
  /** Connections refused because `maxConnections` were open. */
  refusedLimit: number;
  /** Connections refused by the `allow` list. */
  refusedAllowList: number;
  /** Tasks answered 0x00 (stored). */
  accepted: number;
  /** Tasks answered 0x01, per reason. */
  malformed: Record<PusherTaskError, number>;
  /** Tasks answered 0xff (the submitter rejected: nothing stored). */
  errors: number;
  /** Submits that settled after their connection was gone (the reply could not be written). */
  unreplied: number;
  /** Connections closed by the idle timeout. */
  idleClosed: number;
  /** Connections closed after a bad version byte (framing lost). */
  protocolClosed: number;
  /** Times a connection was paused at `maxPipelined`, at `maxPipelinedTotal`, or for write backpressure. */
  pauses: number;
  /** Highest number of unanswered tasks seen on one connection. */
  peakPipelined: number;
  /** Highest number of unanswered tasks seen over all connections. */
  peakPipelinedTotal: number;
  /** Times the unanswered tasks of all connections reached `maxPipelinedTotal` (every connection was held). */
  heldAtTotal: number;
  /** Tasks that waited for a later event-loop turn while the device port was busy (`tasksPerTurn`). */
  deferred: number;
}

/** One open connection, as `connectionsInfo()` reports it. */
export interface PusherConnectionInfo {
  address: string;
  port: number;
  /** Tasks read whose reply byte is not written yet. */
  pipelined: number;
  /** Reading is paused (pipelining limit, write backpressure, or closing). */
  paused: boolean;
}

type ResolvedOptions = Required<Omit<PusherTransportOptions, 'allow'>> & { allow: readonly string[] | undefined };

const POSITIVE_INT = ['idleTimeoutMs', 'maxConnections', 'maxPipelined', 'maxPipelinedTotal', 'tasksPerTurn', 'closeTimeoutMs'] as const;

function resolve(o: PusherTransportOptions): ResolvedOptions {
  const r: ResolvedOptions = {
    host: o.host ?? '127.0.0.1',
    port: o.port ?? 9999,
    maxContentLength: o.maxContentLength ?? DEFAULT_MAX_CONTENT_LENGTH,
    idleTimeoutMs: o.idleTimeoutMs ?? 600_000,
    maxConnections: o.maxConnections ?? 1024,
    maxPipelined: o.maxPipelined ?? 256,
    maxPipelinedTotal: o.maxPipelinedTotal ?? 4096,
    tasksPerTurn: o.tasksPerTurn ?? 32,
    allow: o.allow,
    closeTimeoutMs: o.closeTimeoutMs ?? 5_000,
  };
  if (typeof r.host !== 'string' || r.host.length === 0) throw new PushConfigError('pusher.host', `expected a host name or address, got ${String(r.host)}`);
  if (!Number.isInteger(r.port) || r.port < 0 || r.port > 65535) throw new PushConfigError('pusher.port', `expected 0..65535, got ${r.port}`);
  if (!Number.isInteger(r.maxContentLength) || r.maxContentLength < 1 || r.maxContentLength > MAX_U16) {
    throw new PushConfigError('pusher.maxContentLength', `expected an integer in 1..${MAX_U16} (the same as the engine's maxContentLength), got ${r.maxContentLength}`);
  }
  for (const k of POSITIVE_INT) {
    if (!Number.isInteger(r[k]) || r[k] < 1) throw new PushConfigError(`pusher.${k}`, `expected a positive integer, got ${r[k]}`);
  }
  if (r.allow !== undefined && (!Array.isArray(r.allow) || r.allow.length === 0)) {
    throw new PushConfigError('pusher.allow', 'expected a non-empty array of CIDRs such as "10.0.0.0/8"; omit the option to allow every address');
  }
  return r;
}

/** Parses the allow-list into a BlockList (used as an allow list), or throws a PushConfigError naming the bad entry. */
function buildAllowList(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of cidrs) {
    const bad = (why: string) => new PushConfigError('pusher.allow', `"${String(entry)}" is not a CIDR (${why}); write e.g. "10.0.0.0/8", "192.168.1.7" or "::1/128"`);
    if (typeof entry !== 'string') throw bad('not a string');
    const slash = entry.indexOf('/');
    const address = slash < 0 ? entry : entry.slice(0, slash);
    const family = isIP(address);
    if (family === 0) throw bad('bad address');
    const max = family === 4 ? 32 : 128;
    const prefixText = slash < 0 ? String(max) : entry.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) throw bad(`prefix must be 0..${max}`);
    list.addSubnet(address, Number(prefixText), family === 4 ? 'ipv4' : 'ipv6');
  }
  return list;
}

const MAPPED_V4 = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/** Pause reading when this many reply bytes sit unsent in the socket (a peer that does not read its replies). */
const WRITE_BACKLOG_LIMIT = 64 * 1024;

/** Reply slot still waiting for its submit. */
const PENDING = -1;

/**
 * Replies ready but held, at most, while more of the connection's tasks wait
 * in the intake queue (see `flush`): one write per this many at least.
 */
const REPLY_BATCH = 64;

/**
 * One pusher connection: decodes tasks, submits them, and writes one reply
 * byte per task in task order, whatever order the submits settle in.
 *
 * Replies live in a FIFO of slots (`codes[seq - base]`); a settled submit fills
 * its slot and the ready prefix is written in one batch on the next tick, so a
 * burst of pipelined tasks costs one socket write, not one per task. While the
 * intake paces a burst over several turns, its replies wait for the last of it
 * (or REPLY_BATCH of them), for the same reason.
 */
class PusherConnection implements PusherTaskSink, IntakeQueue, BudgetReader {
  readonly decoder: PusherTaskStreamDecoder;
  /** Reply codes of unanswered tasks; index 0 is sequence number `base`. */
  private codes: number[] = [];
  /**
   * Tasks read but not yet submitted (over the intake's per-turn budget), with
   * their sequence numbers, from `qHead`. Bounded like every read task: they
   * count in `pipelined`, which pauses reading at `maxPipelined`.
   */
  private qTasks: PusherTask[] = [];
  private qSeqs: number[] = [];
  private qHead = 0;
  /** In the intake scheduler's wait list. */
  waiting = false;
  /** Held by the port-wide budget (`maxPipelinedTotal`). */
  held = false;
  private head = 0;
  private base = 0;
  private flushScheduled = false;
  private readPaused = false;
  /** Bad version seen: answer what came before, then close. */
  private fatal = false;
  /** Closing gracefully (`close()`, or the peer half-closed): no more reads, close after the last reply. */
  private draining = false;
  private finished = false;
  closed = false;
  /** When a task was last decoded or a reply written (ms): what idleness is judged on. */
  lastProgress = Date.now();
  readonly address: string;
  readonly port: number;

  constructor(
    readonly socket: Socket,
    private readonly owner: PusherTransportStrategy,
    private readonly submitter: PushSubmitter,
    private readonly maxPipelined: number,
    maxContent: number,
    private readonly onIdle: () => void,
  ) {
    this.address = socket.remoteAddress ?? '';
    this.port = socket.remotePort ?? 0;
    // Socket chunks are never reused: a task's content is a view of its chunk until the store copies it.
    this.decoder = new PusherTaskStreamDecoder(this, maxContent, true);
  }

  /** Tasks read whose reply byte is not written yet. */
  get pipelined(): number {
    return this.codes.length - this.head;
  }

  get paused(): boolean {
    return this.readPaused;
  }

  get active(): boolean {
    return !this.closed && !this.fatal && !this.draining;
  }

  get room(): number {
    return this.maxPipelined - this.pipelined;
  }

  onData(chunk: Buffer): void {
    if (this.fatal || this.draining || this.closed) return;
    const before = this.base + this.codes.length;
    this.decoder.write(chunk);
    const read = this.base + this.codes.length - before;
    // Whole tasks (good or bad) are progress; bytes of a partial one are not.
    if (read > 0) {
      this.lastProgress = Date.now();
      this.owner.budget.read(this, read);
    }
    const n = this.pipelined;
    if (n > this.owner.counters.peakPipelined) this.owner.counters.peakPipelined = n;
    this.updateFlow();
  }

  // ----------------------------------------------------------- decoder sink

  /** Whether tasks wait in this connection's intake queue. */
  get hasQueued(): boolean {
    return this.qHead < this.qTasks.length;
  }

  task(task: PusherTask): void {
    const seq = this.base + this.codes.length;
    this.codes.push(PENDING);
    // Tasks of one connection are submitted in order: once one waits, the rest queue behind it.
    if (!this.hasQueued && this.owner.intake.admit()) return this.submit(task, seq);
    this.qTasks.push(task);
    this.qSeqs.push(seq);
    this.owner.counters.deferred++;
    this.owner.intake.wait(this);
  }

  /** Submits the oldest queued task (the intake scheduler's turn for this connection). */
  submitQueued(): void {
    const i = this.qHead++;
    const task = this.qTasks[i]!;
    const seq = this.qSeqs[i]!;
    this.qTasks[i] = undefined as never;
    if (this.qHead === this.qTasks.length) {
      this.qTasks = [];
      this.qSeqs = [];
      this.qHead = 0;
    }
    this.submit(task, seq);
  }

  private submit(task: PusherTask, seq: number): void {
    const done: SubmitCallback = (err) => {
      if (!err) {
        this.owner.counters.accepted++;
        this.settle(seq, PusherReply.Accepted);
      } else if (err instanceof PayloadTooLargeError || (err instanceof PushFailedError && err.isRequestFault)) {
        // Only when the engine's limit is below ours: still the task's fault, not the server's.
        this.owner.counters.malformed['content-too-long']++;
        this.settle(seq, PusherReply.Malformed);
      } else {
        this.owner.counters.errors++;
        this.settle(seq, PusherReply.ServerError);
      }
    };
    try {
      this.submitter.submit(task.uuid, toWrite(task), 'pusher', done);
    } catch (err) {
      // A submitter that throws instead of calling back: the task was not stored.
      done(err instanceof Error ? err : new Error(String(err)));
    }
  }

  malformed(reason: PusherTaskError, fatal: boolean): void {
    this.owner.counters.malformed[reason]++;
    this.codes.push(PusherReply.Malformed);
    if (fatal) {
      // The length field of a non-v1 header means nothing: framing is lost.
      this.fatal = true;
      this.owner.counters.protocolClosed++;
      this.socket.pause();
      this.readPaused = true;
    }
    this.scheduleFlush();
  }

  // ---------------------------------------------------------------- replies

  private settle(seq: number, code: number): void {
    if (this.closed) {
      this.owner.counters.unreplied++;
      return;
    }
    const i = seq - this.base;
    // A submitter calling back twice must not rewrite an answer.
    if (i < this.head || this.codes[i] !== PENDING) return;
    this.codes[i] = code;
    // `flush` decides whether the ready prefix goes out now (see there).
    if (this.codes[this.head] !== PENDING) this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // nextTick runs after the current promise jobs drain, so every submit that
    // settles in this turn lands in one write.
    process.nextTick(this.flush);
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.closed) return;
    const codes = this.codes;
    let end = this.head;
    while (end < codes.length && codes[end] !== PENDING) end++;
    const n = end - this.head;
    // While more of this connection's tasks wait in the intake queue (paced
    // against the device port, they go a few per turn), their replies come in
    // the next turns: writing each turn's few would cost a syscall per few
    // tasks here and in the client, which then sends its next tasks in as many
    // small writes. They go out together once the queue is drained (the last
    // task's settle schedules this again), or every REPLY_BATCH. A client that
    // waits for each reply has nothing queued.
    if (n > 0 && (!this.hasQueued || n >= REPLY_BATCH)) {
      const out = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) out[i] = codes[this.head + i]!;
      this.head = end;
      if (this.head === codes.length) {
        this.base += codes.length;
        this.codes = [];
        this.head = 0;
      } else if (this.head >= 1024 && this.head * 2 >= codes.length) {
        this.base += this.head;
        this.codes = codes.slice(this.head);
        this.head = 0;
      }
      this.socket.write(out);
      this.lastProgress = Date.now();
      this.owner.budget.answered(n);
    }
    if (this.pipelined === 0 && (this.fatal || this.draining)) {
      this.finish();
      return;
    }
    this.updateFlow();
  };

  /** Pauses reading at the pipelining limit or when replies back up; resumes below. */
  updateFlow(): void {
    if (this.closed || this.fatal || this.draining) return;
    const stop = this.held || this.pipelined >= this.maxPipelined || this.socket.writableLength > WRITE_BACKLOG_LIMIT;
    if (stop && !this.readPaused) {
      this.readPaused = true;
      this.owner.counters.pauses++;
      this.socket.pause();
    } else if (!stop && this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  /** Stops reading new tasks; closes once every task read so far is answered (on `close()`, or when the peer half-closes). */
  drain(): void {
    if (this.closed || this.draining) return;
    this.draining = true;
    this.socket.pause();
    this.readPaused = true;
    if (this.pipelined === 0 && !this.flushScheduled) this.finish();
  }

  /** All replies written: half-close, then let the peer's FIN (or a short grace timer) end the socket. */
  private finish(): void {
    if (this.closed || this.finished) return;
    this.finished = true;
    this.socket.end();
    // Read and drop whatever the peer still sends so its FIN is seen and the
    // kernel does not answer unread data with a reset (which could discard replies).
    this.socket.on('data', () => {});
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }

  /** Cuts the connection if it made no progress since `cutoff` (ms); true when it did. */
  checkIdle(cutoff: number): boolean {
    // A connection waiting on a slow store is not idle: its replies are progress when they come.
    if (this.closed || this.socket.destroyed || this.pipelined > 0 || this.lastProgress >= cutoff) return false;
    this.onIdle();
    return true;
  }

  onClose(): void {
    this.closed = true;
    // Never to be answered: out of the port-wide count.
    if (this.pipelined > 0) this.owner.budget.answered(this.pipelined);
    this.codes = [];
    this.head = 0;
    // Read but never submitted: nothing was stored, and there is no one left to answer.
    this.qTasks = [];
    this.qSeqs = [];
    this.qHead = 0;
  }
}

function toWrite(task: PusherTask): PendingWrite {
  switch (task.cmd) {
    case PusherCmd.Notice:
      return { kind: 'notice' };
    case PusherCmd.Category:
      return { kind: 'category', mask: task.mask };
    default:
      return { kind: 'message', content: task.content };
  }
}

/**
 * The pusher port (TCP 9999) as a Nest custom transport: app servers submit
 * push tasks and get one reply byte per task (protocol.md section 5).
 *
 * Every well-formed task goes through `PushSubmitter.submit(uuid, write,
 * 'pusher', done)`, and 0x00 is written only once `done` reports the push
 * stored. Connections are persistent and may pipeline; replies come
 * back in task order even when submits settle out of order.
 *
 * Usable without Nest: `await new PusherTransportStrategy(engine, opts).start()`.
 */
export class PusherTransportStrategy extends PushTransportServer<PusherTransportEvents, PusherTransportStatus> {
  override transportId = PUSHER_TRANSPORT;
  readonly options: ResolvedOptions;
  readonly counters: PusherTransportCounters = {
    connections: 0,
    refusedLimit: 0,
    refusedAllowList: 0,
    accepted: 0,
    malformed: { 'bad-version': 0, 'unknown-cmd': 0, 'bad-data-length': 0, 'content-too-long': 0 },
    errors: 0,
    unreplied: 0,
    idleClosed: 0,
    protocolClosed: 0,
    pauses: 0,
    peakPipelined: 0,
    peakPipelinedTotal: 0,
    heldAtTotal: 0,
    deferred: 0,
  };
  private readonly allowList: BlockList | undefined;
  private readonly connections = new Set<PusherConnection>();
  /** @internal Turn-by-turn task intake, shared by the connections. */
  readonly intake: PusherIntake;
  /** @internal Unanswered tasks over all connections (`maxPipelinedTotal`). */
  readonly budget: PipelineBudget;
  private readonly emitter = new EventEmitter();
  private server: NetServer | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private boundPort = 0;

  constructor(
    readonly submitter: PushSubmitter,
    options: PusherTransportOptions = {},
  ) {
    super();
    if (!submitter || typeof submitter.submit !== 'function') {
      throw new PushConfigError('pusher.submitter', 'expected a PushSubmitter (an object with submit(uuid, write, source, done)), e.g. the DeviceEngine');
    }
    this.options = resolve(options);
    this.intake = new PusherIntake(this.options.tasksPerTurn);
    this.budget = new PipelineBudget(this.options.maxPipelinedTotal, () => this.connections, this.counters);
    this.allowList = this.options.allow && buildAllowList(this.options.allow);
  }

  /** The bound port (useful with port 0); 0 when not listening. */
  get port(): number {
    return this.boundPort;
  }

  /**
   * Paces task intake against the device port (see `tasksPerTurn`):
   * `datagrams` reads its running count of received datagrams. PushModule
   * wires it to the app's device transport.
   */
  paceWith(datagrams: () => number): void {
    this.intake.paceWith(datagrams);
  }

  get listening(): boolean {
    return this.boundPort !== 0;
  }

  /** Open connections (gauge). */
  get openConnections(): number {
    return this.connections.size;
  }

  /** Unanswered tasks over all connections (gauge). */
  get pipelined(): number {
    return this.budget.unanswered;
  }

  connectionsInfo(): PusherConnectionInfo[] {
    return [...this.connections].map((c) => ({ address: c.address, port: c.port, pipelined: c.pipelined, paused: c.paused }));
  }

  /** Starts listening (also usable without Nest). */
  async start(): Promise<void> {
    if (this.server) return;
    // allowHalfOpen: a client that sends its tasks and then shuts down its side
    // (`printf ... | nc`) still gets every reply; we end our side after the last one.
    const server = createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.onConnection(socket));
    this.server = server;
    try {
      this.boundPort = await new Promise<number>((resolvePort, reject) => {
        server.once('error', reject);
        server.listen({ host: this.options.host, port: this.options.port, backlog: 1024 }, () => {
          server.off('error', reject);
          resolvePort((server.address() as { port: number }).port);
        });
      });
    } catch (err) {
      this.server = undefined;
      throw err;
    }
    server.on('error', (err) => this.emitter.emit('error', err));
    // At the cap, Node closes a new connection's handle before building a Socket for it (cheaper than
    // destroying one in onConnection, for a client reconnecting as fast as it is refused).
    server.maxConnections = this.options.maxConnections;
    server.on('drop', () => this.counters.refusedLimit++);
    // One timer for all connections. Idleness is judged on whole tasks and on
    // replies, not on bytes: socket.setTimeout is re-armed by any byte, so a
    // peer dripping one byte a minute would hold its slot forever.
    const idle = this.options.idleTimeoutMs;
    this.idleTimer = setInterval(() => this.cutIdle(Date.now() - idle), Math.max(10, Math.min(idle / 4, 30_000)));
    this.idleTimer.unref();
    this._status$.next('listening');
    this.emitter.emit('listening', this.boundPort);
  }

  /**
   * Cuts connections idle since `cutoff`, `IDLE_CUTS_PER_TURN` per event-loop
   * turn; the next turn goes on with the same iterator (a Set's survives
   * deletions), so thousands of idle connections cost one pass.
   */
  private cutIdle(cutoff: number, it = this.connections.values()): void {
    let cuts = 0;
    for (let r = it.next(); !r.done; r = it.next()) {
      if (r.value.checkIdle(cutoff) && ++cuts === IDLE_CUTS_PER_TURN) {
        setImmediate(() => this.idleTimer && this.cutIdle(cutoff, it));
        return;
      }
    }
  }

  private isAllowed(address: string | undefined): boolean {
    const list = this.allowList;
    if (!list) return true;
    if (!address) return false;
    const family = isIP(address);
    if (family === 4) return list.check(address, 'ipv4');
    if (family !== 6) return false;
    if (list.check(address, 'ipv6')) return true;
    const mapped = MAPPED_V4.exec(address);
    return mapped !== null && list.check(mapped[1]!, 'ipv4');
  }

  private onConnection(socket: Socket): void {
    if (!this.isAllowed(socket.remoteAddress)) {
      this.counters.refusedAllowList++;
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.options.maxConnections) {
      this.counters.refusedLimit++;
      socket.destroy();
      return;
    }
    this.counters.connections++;
    const conn = new PusherConnection(socket, this, this.submitter, this.options.maxPipelined, this.options.maxContentLength, () => {
      this.counters.idleClosed++;
      socket.destroy();
    });
    this.connections.add(conn);
    socket.on('data', (chunk: Buffer) => conn.onData(chunk));
    socket.on('drain', () => conn.updateFlow());
    socket.on('end', () => conn.drain());
    socket.on('error', () => {});
    socket.on('close', () => {
      conn.onClose();
      this.connections.delete(conn);
    });
    this.budget.admitNew(conn);
  }

  /**
   * Graceful stop: no new connections; existing ones stop reading, their
   * in-flight tasks are stored and answered, then they are closed. After
   * `closeTimeoutMs` whatever is left is destroyed.
   */
  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = undefined;
    const closed = new Promise<void>((r) => server.close(() => r()));
    for (const c of this.connections) c.drain();
    if (this.connections.size > 0) {
      await new Promise<void>((done) => {
        const timer = setTimeout(done, this.options.closeTimeoutMs);
        const check = () => {
          if (this.connections.size === 0) {
            clearTimeout(timer);
            done();
          }
        };
        for (const c of this.connections) c.socket.once('close', () => setImmediate(check));
        check();
      });
    }
    for (const c of this.connections) c.socket.destroy();
    await closed;
    this.boundPort = 0;
    this._status$.next('closed');
  }

  on<K extends keyof PusherTransportEvents>(event: K, callback: PusherTransportEvents[K]): this {
    this.emitter.on(event, callback as (...args: any[]) => void);
    return this;
  }

  /** The `net.Server`. */
  unwrap<T>(): T {
    if (!this.server) throw new Error('Pusher transport is not listening: call listen() (or app.startAllMicroservices()) first');
    return this.server as T;
  }
}
