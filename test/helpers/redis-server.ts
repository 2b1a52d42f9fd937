import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A real `redis-server` child process for tests (on 127.0.0.1, a free port, a temporary directory). */
export interface TestRedis {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  /** The process is running and answers PING. */
  readonly running: boolean;
  /** Stops the server (SIGTERM, waits for exit). With `appendonly`, the AOF stays in `dir`. */
  stop(): Promise<void>;
  /** SIGKILLs the server (no shutdown save). */
  kill(): Promise<void>;
  /** Starts the server again on the same port and directory (loads the AOF when `appendonly`). */
  restart(): Promise<void>;
  /** Sends one inline command and returns the raw reply (for INFO, CONFIG SET, FLUSHALL without a client). */
  command(...args: string[]): Promise<string>;
  /** Stops the server and deletes its directory. */
  dispose(): Promise<void>;
}

export interface TestRedisOptions {
  /** AOF persistence with `appendfsync always`. Default false (no persistence at all). */
  appendonly?: boolean;
  /** Binary. Default `REDIS_SERVER` or `redis-server` on the PATH. */
  bin?: string;
}

/** A free TCP port: bind port 0, read it, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Sends RESP commands over a raw socket and collects the reply until it is complete enough (one reply). */
function rawCommand(port: number, args: string[], timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = new Socket();
    let out = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args[0]}: no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = (fn: () => void) => {
      clearTimeout(timer);
      sock.destroy();
      fn();
    };
    sock.once('error', (err) => finish(() => reject(err)));
    sock.connect(port, '127.0.0.1', () => {
      sock.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
    });
    sock.on('data', (chunk) => {
      out += chunk.toString('utf8');
      if (complete(out)) finish(() => resolve(out));
    });
  });
}

/** Is `s` one complete RESP reply (simple, error, integer, or bulk)? Arrays are not needed by the tests. */
function complete(s: string): boolean {
  const nl = s.indexOf('\r\n');
  if (nl < 0) return false;
  if (s[0] !== '$') return true;
  const len = Number(s.slice(1, nl));
  return len < 0 || s.length >= nl + 2 + len + 2;
}

/**
 * Starts `redis-server --port <free> --save '' --appendonly yes|no --dir <tmp>`
 * in the foreground and waits until it answers PING.
 */
export async function startRedis(options: TestRedisOptions = {}): Promise<TestRedis> {
  const bin = options.bin ?? process.env.REDIS_SERVER ?? 'redis-server';
  const dir = mkdtempSync(join(tmpdir(), 'nest-push-redis-'));
  let port = await freePort();
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let stderr = '';

  const args = () => [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', options.appendonly ? 'yes' : 'no',
    '--appendfsync', 'always',
    '--dir', dir,
    '--daemonize', 'no',
    '--logfile', '',
    '--loglevel', 'warning',
  ];

  async function launch(): Promise<void> {
    stderr = '';
    const c = spawn(bin, args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (d) => (stderr += d));
    c.stderr!.on('data', (d) => (stderr += d));
    exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    const spawnError = new Promise<never>((_, reject) => c.once('error', reject));
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (c.exitCode !== null) throw new Error(`redis-server exited with ${c.exitCode}: ${stderr}`);
      try {
        const reply = await Promise.race([rawCommand(port, ['PING'], 500), spawnError]);
        if (reply.startsWith('+PONG')) return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${bin} not found: install redis-server (apt-get install -y redis-server)`);
      }
      if (Date.now() > deadline) throw new Error(`redis-server did not answer PING within 10 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async function signal(sig: NodeJS.Signals): Promise<void> {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(sig);
    await exited;
  }

  // The free port may be taken between finding it and redis binding it: try another.
  for (let attempt = 1; ; attempt++) {
    try {
      await launch();
      break;
    } catch (err) {
      if (attempt >= 3 || !/exited/.test((err as Error).message)) throw err;
      port = await freePort();
    }
  }
  return {
    get port() {
      return port;
    },
    get url() {
      return `redis://127.0.0.1:${port}`;
    },
    dir,
    get running() {
      return !!child && child.exitCode === null && child.signalCode === null;
    },
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    async restart() {
      await signal('SIGTERM');
      await launch();
    },
    command: (...a: string[]) => rawCommand(port, a),
    async dispose() {
      await signal('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One `redis-server` for a spec file: started before its tests, disposed
 * after them; `cleanup` runs (last first) after each test, for the clients
 * and nodes a test opened. Call at the top level of the file.
 */
export function useRedisServer(hooks: {
  beforeAll: (fn: () => Promise<void>) => void;
  afterAll: (fn: () => Promise<void>) => void;
  afterEach: (fn: () => Promise<void>) => void;
}): { readonly redis: TestRedis; readonly cleanup: (() => unknown)[] } {
  let redis: TestRedis | undefined;
  const cleanup: (() => unknown)[] = [];
  hooks.beforeAll(async () => {
    redis = await startRedis();
  });
  hooks.afterAll(async () => {
    await redis?.dispose();
  });
  hooks.afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  return {
    get redis(): TestRedis {
      if (!redis) throw new Error('useRedisServer: the server starts in beforeAll; use it inside tests');
      return redis;
    },
    cleanup,
  };
}
