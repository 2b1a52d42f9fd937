import { parseArgs } from 'node:util';
import type { PusherPush } from '../client/pusher.client.js';
import { PusherClientError } from '../errors/pusher-client.error.js';
import { PusherRejectedError } from '../errors/pusher-rejected.error.js';
import { isUuidHex } from '../protocol/uuid.util.js';

export const USAGE = `Usage:
  nest-push push [--host 127.0.0.1] [--port 9999] (--uuid <hex> | --key <user>)
                 (--text <message> | --notice | --category <mask>)
                 [--app-id N] [--timeout ms]
  nest-push --help

Sends one push task to a DDPush v1 pusher port (TCP 9999) and waits for its reply.

Options:
  --host <host>        pusher port host (default 127.0.0.1)
  --port <port>        pusher port (default 9999)
  --uuid <hex>         device uuid, 32 hex characters
  --key <user>         user key; the uuid is its MD5 (DDPush convention)
  --text <message>     0x20 custom message (UTF-8)
  --notice             0x10 general notice
  --category <mask>    0x11 category notice; 64-bit mask, decimal or 0x-hex
  --app-id <N>         appId byte, 0..255 (default 1)
  --timeout <ms>       give up after this long (default 10000)
  -h, --help           show this help

Exit status: 0 accepted (reply 0x00, stored), 1 rejected or not delivered, 2 usage error.`;

class UsageError extends Error {}

const MASK_RE = /^(0x[0-9a-f]{1,16}|\d{1,20})$/i;

function intOption(name: string, value: string | undefined, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}, got "${value}"`);
  return Number(value);
}

interface Command {
  host: string;
  port: number;
  timeout: number;
  push: PusherPush;
}

function parse(argv: string[]): Command | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        host: { type: 'string' },
        port: { type: 'string' },
        uuid: { type: 'string' },
        key: { type: 'string' },
        text: { type: 'string' },
        notice: { type: 'boolean' },
        category: { type: 'string' },
        'app-id': { type: 'string' },
        timeout: { type: 'string' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  if (v.help) return 'help';
  if (positionals.length === 0) throw new UsageError('missing command (only "push" exists)');
  if (positionals[0] !== 'push' || positionals.length > 1) throw new UsageError(`unknown command "${positionals.join(' ')}" (only "push" exists)`);

  if ((v.uuid === undefined) === (v.key === undefined)) throw new UsageError('give exactly one of --uuid <hex> or --key <user>');
  if (v.uuid !== undefined && !isUuidHex(v.uuid)) throw new UsageError(`--uuid must be 32 hex characters, got "${v.uuid}"`);
  if (v.key !== undefined && v.key.length === 0) throw new UsageError('--key must not be empty');
  const kinds = [v.text !== undefined, v.notice === true, v.category !== undefined].filter(Boolean).length;
  if (kinds !== 1) throw new UsageError('give exactly one of --text <message>, --notice or --category <mask>');

  const push: PusherPush = { kind: 'notice', appId: intOption('app-id', v['app-id'], 0, 255, 1) };
  if (v.uuid !== undefined) push.uuid = v.uuid;
  else push.key = v.key;
  if (v.text !== undefined) {
    if (v.text.length === 0) throw new UsageError('--text must not be empty');
    push.kind = 'message';
    push.content = Buffer.from(v.text, 'utf8');
  } else if (v.category !== undefined) {
    if (!MASK_RE.test(v.category) || BigInt(v.category) >= 1n << 64n) throw new UsageError(`--category must be a 64-bit mask in decimal or 0x-hex, got "${v.category}"`);
    push.kind = 'category';
    push.mask = BigInt(v.category);
  }
  return {
    host: v.host ?? '127.0.0.1',
    port: intOption('port', v.port, 1, 65535, 9999),
    timeout: intOption('timeout', v.timeout, 1, 3_600_000, 10_000),
    push,
  };
}

/** Where `main` writes (process.stdout / process.stderr, or a test's collector). */
export interface Output {
  write(text: string): unknown;
}

/**
 * Runs `nest-push` with `argv` (without node and the script); resolves to the
 * exit status: 0 accepted, 1 rejected / not delivered, 2 usage error.
 * Nest (via PusherClient) is loaded only once the arguments are valid, so
 * `--help` and usage errors answer at once.
 */
export async function main(argv: string[], out: Output = process.stdout, err: Output = process.stderr): Promise<number> {
  let cmd: Command | 'help';
  try {
    cmd = parse(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err.write(`nest-push: ${e.message}\n\n${USAGE}\n`);
    return 2;
  }
  if (cmd === 'help') {
    out.write(`${USAGE}\n`);
    return 0;
  }
  const { host, port, timeout, push } = cmd;
  const { PusherClient } = await import('../client/pusher.client.js');
  const client = new PusherClient({ host, port, connectTimeoutMs: timeout, timeoutMs: timeout });
  let bytes: Buffer;
  try {
    bytes = client.encode(push);
  } catch (e) {
    err.write(`nest-push: ${(e as Error).message}\n`);
    return 2;
  }
  try {
    // One shot: a connection the server drops is a failure, not something to retry behind the user's back.
    const dropped = new Promise<never>((_, reject) =>
      client.on('disconnect', () =>
        reject(new Error(`the server at ${host}:${port} closed the connection before answering (this address may be refused by its allow-list, or it is at its connection limit)`)),
      ),
    );
    dropped.catch(() => {});
    await Promise.race([client.push(push), dropped]);
    out.write(`accepted: ${push.kind} for ${push.uuid ?? `key ${push.key}`} (${bytes.length} bytes, reply 0x00, stored)\n`);
    return 0;
  } catch (e) {
    const reason = e instanceof PusherRejectedError || e instanceof PusherClientError || (e as Error).message?.startsWith('PusherClient:')
      ? (e as Error).message.replace(/^PusherClient: /, '')
      : `could not push to ${host}:${port}: ${(e as Error).message}`;
    err.write(`nest-push: ${reason}\n`);
    return 1;
  } finally {
    await client.close().catch(() => {});
  }
}
