import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { DeviceClient, type DeviceMessage } from 'nest-push';

/**
 * Device simulator: connects N DDPush devices (user keys `user-1`..`user-N`,
 * so `POST /push {"key":"user-1",...}` reaches the first), acks what they
 * receive, and prints a summary line every few seconds.
 *
 *   npm run sample:devices -- --count 1000 [--tcp] [--host h] [--port p]
 *     [--heartbeat ms] [--interval ms] [--concurrency n] [--prefix user-]
 *     [--duration ms] [--quiet] [--json]
 *
 * Latency: a message whose payload carries its send time is timed on
 * arrival. Either JSON with a numeric `t` (epoch ms, fractions allowed),
 * e.g. `{"t": 1700000000000.25, "text": "hi"}`, or text starting `t=<epoch ms>`
 * followed by a space, `;` or `|`. Both sides must share a clock (same host).
 */
export interface SimulatorOptions {
  count: number;
  host?: string;
  port?: number;
  transport?: 'udp' | 'tcp';
  /** Heartbeat period per device in ms. Default 50,000 (DDPush devices). */
  heartbeatMs?: number;
  /** Connects in progress at once. Default 256. */
  concurrency?: number;
  /** Key prefix: device i has key `${prefix}${i}`. Default `user-`. */
  prefix?: string;
  /** Called for every push a device receives (not for heartbeat echoes). */
  onMessage?: (index: number, device: DeviceClient, message: DeviceMessage, latencyMs: number | undefined) => void;
}

/** Totals at one moment. */
export interface SimulatorStats {
  devices: number;
  connected: number;
  failed: number;
  received: number;
  acked: number;
  heartbeats: number;
  reconnects: number;
  /** Messages that carried a send time. */
  timed: number;
  latencyMs: { p50: number; p99: number; max: number } | null;
  connectMs: number;
}

const LATENCY_SAMPLES = 1 << 16;

/** Latency samples since the last `take()`, plus a bounded reservoir of all of them. */
class LatencyBook {
  private readonly window = new Float64Array(LATENCY_SAMPLES);
  private windowCount = 0;
  private readonly all = new Float64Array(LATENCY_SAMPLES);
  private allSeen = 0;

  add(ms: number): void {
    if (this.windowCount < LATENCY_SAMPLES) this.window[this.windowCount] = ms;
    else this.window[Math.floor(Math.random() * LATENCY_SAMPLES)] = ms;
    this.windowCount++;
    // Reservoir sampling keeps an unbiased sample of every latency seen.
    if (this.allSeen < LATENCY_SAMPLES) this.all[this.allSeen] = ms;
    else {
      const j = Math.floor(Math.random() * (this.allSeen + 1));
      if (j < LATENCY_SAMPLES) this.all[j] = ms;
    }
    this.allSeen++;
  }

  get count(): number {
    return this.allSeen;
  }

  /** Percentiles of the samples since the last call (null when none), then clears them. */
  takeWindow(): SimulatorStats['latencyMs'] {
    const n = Math.min(this.windowCount, LATENCY_SAMPLES);
    this.windowCount = 0;
    return percentiles(this.window.subarray(0, n));
  }

  overall(): SimulatorStats['latencyMs'] {
    return percentiles(this.all.subarray(0, Math.min(this.allSeen, LATENCY_SAMPLES)));
  }
}

function percentiles(values: Float64Array): SimulatorStats['latencyMs'] {
  if (values.length === 0) return null;
  const s = Float64Array.from(values).sort();
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: at(0.5), p99: at(0.99), max: s[s.length - 1]! };
}

/** The send time a payload carries (epoch ms), or undefined. */
export function sentAtOf(content: Buffer): number | undefined {
  if (content.length < 3) return undefined;
  const first = content[0];
  if (first === 0x7b /* { */) {
    try {
      const v = (JSON.parse(content.toString('utf8')) as { t?: unknown }).t;
      return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
    } catch {
      return undefined;
    }
  }
  if (first === 0x74 /* t */ && content[1] === 0x3d /* = */) {
    const m = /^t=(\d+(?:\.\d+)?)(?:[ ;|]|$)/.exec(content.subarray(0, 40).toString('latin1'));
    return m ? Number(m[1]) : undefined;
  }
  return undefined;
}

/** A running simulation: many `DeviceClient`s in this process. */
export class DeviceSimulator {
  readonly devices: DeviceClient[] = [];
  private readonly latency = new LatencyBook();
  private failed = 0;
  private connectMs = 0;
  private closed = false;

  constructor(readonly options: SimulatorOptions) {
    if (!Number.isInteger(options.count) || options.count < 1) throw new RangeError('count must be a positive integer');
  }

  /**
   * Connects every device, `concurrency` at a time (UDP binds are cheap; TCP
   * connects wait for the accept), and resolves when all have tried. Devices
   * whose connect failed are counted in `failed` (TCP ones keep retrying).
   */
  async start(): Promise<void> {
    const o = this.options;
    const t0 = performance.now();
    const concurrency = Math.max(1, o.concurrency ?? 256);
    let next = 0;
    const worker = async () => {
      while (!this.closed) {
        const i = next++;
        if (i >= o.count) return;
        const d = this.create(i + 1);
        this.devices.push(d);
        try {
          await d.connect();
        } catch {
          this.failed++;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, o.count) }, worker));
    this.connectMs = performance.now() - t0;
  }

  private create(index: number): DeviceClient {
    const o = this.options;
    const d = new DeviceClient({
      host: o.host ?? '127.0.0.1',
      port: o.port ?? 9966,
      transport: o.transport ?? 'udp',
      key: `${o.prefix ?? 'user-'}${index}`,
      heartbeatIntervalMs: o.heartbeatMs ?? 50_000,
    });
    d.messages.subscribe((m) => {
      if (m.kind === 'echo') return;
      let latencyMs: number | undefined;
      if (m.kind === 'message') {
        const sent = sentAtOf(m.content);
        if (sent !== undefined) {
          // receivedAt is performance.now(): on the epoch clock it is timeOrigin + receivedAt.
          latencyMs = performance.timeOrigin + m.receivedAt - sent;
          this.latency.add(latencyMs);
        }
      }
      o.onMessage?.(index, d, m, latencyMs);
    });
    return d;
  }

  /** Totals now; `window: true` reports latency since the previous windowed call instead of overall. */
  stats(window = false): SimulatorStats {
    let received = 0;
    let acked = 0;
    let heartbeats = 0;
    let reconnects = 0;
    for (const d of this.devices) {
      received += d.counters.received;
      acked += d.counters.acked;
      heartbeats += d.counters.heartbeats;
      reconnects += d.counters.reconnects;
    }
    return {
      devices: this.options.count,
      connected: this.devices.length - this.failed,
      failed: this.failed,
      received,
      acked,
      heartbeats,
      reconnects,
      timed: this.latency.count,
      latencyMs: window ? this.latency.takeWindow() : this.latency.overall(),
      connectMs: Math.round(this.connectMs),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.devices.map((d) => d.close()));
  }
}

/** One summary line. */
export function formatStats(s: SimulatorStats, label: string): string {
  const lat = s.latencyMs ? ` | latency p50 ${s.latencyMs.p50.toFixed(2)} ms p99 ${s.latencyMs.p99.toFixed(2)} ms max ${s.latencyMs.max.toFixed(2)} ms` : '';
  const failed = s.failed ? ` (${s.failed} failed)` : '';
  return `[${label}] devices ${s.connected}/${s.devices}${failed} | received ${s.received} acked ${s.acked} | heartbeats ${s.heartbeats}${lat}`;
}

function describe(m: DeviceMessage): string {
  if (m.kind === 'message') return `message "${m.content.toString('utf8')}"`;
  if (m.kind === 'category') return `category 0x${m.mask.toString(16)}`;
  return m.kind;
}

function intFlag(name: string, raw: string | undefined, min: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${raw}`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      count: { type: 'string', default: '10' },
      host: { type: 'string', default: process.env.PUSH_DEVICE_HOST && process.env.PUSH_DEVICE_HOST !== '0.0.0.0' ? process.env.PUSH_DEVICE_HOST : '127.0.0.1' },
      port: { type: 'string', default: process.env.PUSH_DEVICE_PORT || '9966' },
      tcp: { type: 'boolean', default: false },
      heartbeat: { type: 'string', default: '50000' },
      interval: { type: 'string', default: '5000' },
      concurrency: { type: 'string', default: '256' },
      prefix: { type: 'string', default: 'user-' },
      duration: { type: 'string' },
      quiet: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log('usage: npm run sample:devices -- --count 1000 [--tcp] [--host h] [--port p] [--heartbeat ms] [--interval ms] [--concurrency n] [--prefix user-] [--duration ms] [--quiet] [--json]');
    return;
  }
  const count = intFlag('count', values.count, 1);
  const interval = intFlag('interval', values.interval, 100);
  const transport = values.tcp ? 'tcp' : 'udp';
  const print = (s: SimulatorStats, label: string) => console.log(values.json ? JSON.stringify({ type: label, ...s }) : formatStats(s, label));
  const sim = new DeviceSimulator({
    count,
    host: values.host,
    port: intFlag('port', values.port, 1),
    transport,
    heartbeatMs: intFlag('heartbeat', values.heartbeat, 0),
    concurrency: intFlag('concurrency', values.concurrency, 1),
    prefix: values.prefix,
    onMessage: values.quiet
      ? undefined
      : (i, d, m, latency) => console.log(`${values.prefix}${i} (${d.uuid}) got ${describe(m)}${latency !== undefined ? ` after ${latency.toFixed(2)} ms` : ''}`),
  });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(timer);
    print(sim.stats(), 'final');
    await sim.close();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const timer = setInterval(() => print(sim.stats(true), 'summary'), interval);
  await sim.start();
  const s = sim.stats();
  const ready = `${s.connected} ${transport.toUpperCase()} devices connected to ${values.host}:${values.port} in ${s.connectMs} ms (keys ${values.prefix}1..${values.prefix}${count})`;
  console.log(values.json ? JSON.stringify({ type: 'ready', ...s }) : ready);
  if (values.duration !== undefined) setTimeout(stop, intFlag('duration', values.duration, 0));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  });
}
