import { execFile, execSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';
import { main } from '../../lib/cli/nest-push.js';
import { uuidFromKey } from '../../lib/protocol/index.js';
import { startPusherServer } from '../helpers/pusher-server.js';

const CLI = 'dist/cli/nest-push.cli.js';
const SOURCES = ['lib/cli/nest-push.cli.ts', 'lib/cli/nest-push.ts', 'lib/client/pusher.client.ts', 'lib/errors/pusher-rejected.error.ts', 'lib/errors/pusher-client.error.ts'];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `main` in-process (same code as the executable, without a node start-up per case). */
async function inProcess(...args: string[]): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { write: (t: string) => (stdout += t) }, { write: (t: string) => (stderr += t) });
  return { code, stdout, stderr };
}

/** Spawns the built executable. */
function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('nest-push CLI', () => {
  beforeAll(() => {
    // Build only when the compiled CLI is missing (or older than its sources).
    const built = existsSync(CLI) ? statSync(CLI).mtimeMs : 0;
    if (!built || SOURCES.some((f) => statSync(f).mtimeMs > built)) execSync('npx tsc -p tsconfig.build.json', { stdio: 'inherit' });
  }, 60_000);

  const cleanup: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  async function server(...args: Parameters<typeof startPusherServer>) {
    const s = await startPusherServer(...args);
    cleanup.push(() => s.close());
    return s;
  }

  it('push --text: exit 0, and a registered UDP device receives the text', async () => {
    const s = await server();
    const device = new DeviceClient({ port: s.devicePort, transport: 'udp', key: 'cli-user', heartbeatIntervalMs: 0 });
    cleanup.push(() => device.close());
    const online = firstValueFrom(s.engine.events.pipe(filter((e) => e.type === 'online'), timeout(2000)));
    await device.connect();
    await online;
    const got = firstValueFrom(device.messages.pipe(filter((m) => m.kind === 'message'), timeout(5000)));
    const r = await cli('push', '--host', '127.0.0.1', '--port', String(s.pusherPort), '--key', 'cli-user', '--text', 'héllo from the cli', '--app-id', '7');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^accepted: message/);
    expect((await got).content.toString()).toBe('héllo from the cli');
  });

  it('push --notice and --category (hex and decimal) with --uuid: exit 0 and stored (in-process main)', async () => {
    const s = await server();
    const uuid = uuidFromKey('cat-user').toString('hex');
    const port = String(s.pusherPort);
    const runs = await Promise.all([
      inProcess('push', '--port', port, '--uuid', uuid.toUpperCase(), '--notice'),
      inProcess('push', '--port', port, '--uuid', uuid, '--category', '0x8000000000000000'),
      inProcess('push', '--port', port, '--uuid', uuid, '--category', '5'),
    ]);
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0]);
    const state = await s.store.read(uuid);
    expect(state!.notice).toBeGreaterThan(0);
    expect(state!.category).toBe(0x8000000000000005n);
  });

  it('a too-long text: exit 1 with the server rejection reason', async () => {
    const s = await server();
    const r = await cli('push', '--port', String(s.pusherPort), '--key', 'k', '--text', 'z'.repeat(501));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/rejected the task as malformed \(reply 0x01\).*maxContentLength/);
    expect(r.stdout).toBe('');
    expect(s.pusher.counters.malformed['content-too-long']).toBe(1);
  });

  it('refused connections: exit 1 with a message (nothing listening; allow-list refusal)', async () => {
    const s = await server({ allow: ['10.0.0.0/8'] });
    const port = s.pusherPort;
    const refusedByList = await cli('push', '--port', String(port), '--key', 'k', '--notice', '--timeout', '3000');
    expect(refusedByList.code).toBe(1);
    expect(refusedByList.stderr).toMatch(/allow-list/);
    expect(s.pusher.counters.refusedAllowList).toBeGreaterThanOrEqual(1);
    await s.close();
    cleanup.length = 0;
    const nothing = await cli('push', '--port', String(port), '--key', 'k', '--notice', '--timeout', '3000');
    expect(nothing.code).toBe(1);
    expect(nothing.stderr).toMatch(/refused; is the push server running/);
  });

  it('bad usage: exit 2 with the reason and the usage text; --help: exit 0 (executable)', async () => {
    const [bad, help] = await Promise.all([cli('push', '--key', 'k', '--notice', '--text', 'x'), cli('--help')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^nest-push: give exactly one of --text <message>, --notice or --category <mask>\n\nUsage:/);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage:\n {2}nest-push push/);
    expect(help.stderr).toBe('');
  });

  it('bad usage matrix: exit 2 with the reason (in-process main)', async () => {
    const uuid = '00112233445566778899aabbccddeeff';
    const cases: [string[], RegExp][] = [
      [[], /missing command/],
      [['send', '--key', 'k', '--notice'], /unknown command "send"/],
      [['push', '--notice'], /exactly one of --uuid <hex> or --key <user>/],
      [['push', '--uuid', 'abc', '--notice'], /--uuid must be 32 hex characters/],
      [['push', '--uuid', uuid, '--key', 'k', '--notice'], /exactly one of --uuid/],
      [['push', '--key', 'k'], /exactly one of --text <message>, --notice or --category/],
      [['push', '--key', 'k', '--notice', '--text', 'x'], /exactly one of --text/],
      [['push', '--key', 'k', '--category', '0x1ffffffffffffffff'], /--category must be a 64-bit mask/],
      [['push', '--key', 'k', '--category', 'lots'], /--category must be a 64-bit mask/],
      [['push', '--key', 'k', '--notice', '--port', '99999'], /--port must be an integer in 1\.\.65535/],
      [['push', '--key', 'k', '--notice', '--app-id', '300'], /--app-id must be an integer in 0\.\.255/],
      [['push', '--key', 'k', '--notice', '--bogus'], /Unknown option '--bogus'/],
    ];
    const runs = await Promise.all(cases.map(([args]) => inProcess(...args)));
    runs.forEach((r, i) => {
      expect(r.code, cases[i]![0].join(' ')).toBe(2);
      expect(r.stderr).toMatch(cases[i]![1]);
      expect(r.stderr).toContain('Usage:');
    });
    expect((await inProcess('-h')).code).toBe(0);
  });
});
