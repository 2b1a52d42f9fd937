import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_CONTENT_LENGTH,
  MAX_U16,
  PUSHER_TASK_ERRORS,
  PusherCmd,
  PusherReply,
  type PusherTask,
  type PusherTaskError,
  decodePusherTask,
  encodePusherTask,
  pusherTaskLength,
  uuidFromKey,
  writePusherTask,
} from '../../../lib/protocol/index.js';
import { UUID, UUID_HEX, hex } from './fixtures.js';

describe('pusher task vectors (protocol.md section 5)', () => {
  it('0x10 general notice', () => {
    expect(encodePusherTask({ appId: 7, cmd: PusherCmd.Notice, uuid: UUID }).toString('hex')).toBe(
      hex(`01 07 10 ${UUID_HEX} 0000`).toString('hex'),
    );
  });

  it('0x11 category with the top bit set', () => {
    expect(encodePusherTask({ appId: 7, cmd: PusherCmd.Category, uuid: UUID, mask: 0x8000000000000001n }).toString('hex')).toBe(
      hex(`01 07 11 ${UUID_HEX} 0008 8000000000000001`).toString('hex'),
    );
  });

  it('0x11 category with all 64 bits', () => {
    expect(encodePusherTask({ appId: 7, cmd: PusherCmd.Category, uuid: UUID, mask: 0xffffffffffffffffn }).toString('hex')).toBe(
      hex(`01 07 11 ${UUID_HEX} 0008 ffffffffffffffff`).toString('hex'),
    );
  });

  it('0x20 custom message', () => {
    expect(encodePusherTask({ appId: 7, cmd: PusherCmd.Message, uuid: UUID, content: Buffer.from('hello') }).toString('hex')).toBe(
      hex(`01 07 20 ${UUID_HEX} 0005 68656c6c6f`).toString('hex'),
    );
  });

  it('0x20 to uuidFromKey("100001") with appId omitted (defaults to 0)', () => {
    expect(encodePusherTask({ cmd: PusherCmd.Message, uuid: uuidFromKey('100001'), content: hex('ff') }).toString('hex')).toBe(
      '010020e2a6a1ace352668000aed191a817d1430001ff',
    );
  });

  it('decodes each row', () => {
    const rows: [string, PusherTask][] = [
      [`01 07 10 ${UUID_HEX} 0000`, { appId: 7, cmd: 0x10, uuid: UUID_HEX, mask: 0n, content: Buffer.alloc(0) }],
      [`01 07 11 ${UUID_HEX} 0008 8000000000000001`, { appId: 7, cmd: 0x11, uuid: UUID_HEX, mask: 0x8000000000000001n, content: Buffer.alloc(0) }],
      [`01 07 11 ${UUID_HEX} 0008 ffffffffffffffff`, { appId: 7, cmd: 0x11, uuid: UUID_HEX, mask: 0xffffffffffffffffn, content: Buffer.alloc(0) }],
      [`01 07 20 ${UUID_HEX} 0005 68656c6c6f`, { appId: 7, cmd: 0x20, uuid: UUID_HEX, mask: 0n, content: Buffer.from('hello') }],
    ];
    for (const [h, expected] of rows) expect(decodePusherTask(hex(h))).toEqual(expected);
  });

  it('decoded content is a copy', () => {
    const b = hex(`01 07 20 ${UUID_HEX} 0003 616263`);
    const t = decodePusherTask(b) as PusherTask;
    b.fill(0);
    expect(t.content.toString()).toBe('abc');
    expect(t.uuid).toBe(UUID_HEX);
  });

  it('writePusherTask batches tasks back to back', () => {
    const tasks = [
      { appId: 1, cmd: PusherCmd.Notice, uuid: UUID },
      { appId: 2, cmd: PusherCmd.Category, uuid: UUID, mask: 3n },
      { appId: 3, cmd: PusherCmd.Message, uuid: UUID, content: Buffer.from('hi') },
    ] as const;
    const total = tasks.reduce((n, t) => n + pusherTaskLength(t), 0);
    expect(total).toBe(21 + 29 + 23);
    const buf = Buffer.alloc(total);
    let off = 0;
    for (const t of tasks) off = writePusherTask(buf, off, t);
    expect(off).toBe(total);
    expect(buf.toString('hex')).toBe(
      hex(`01 01 10 ${UUID_HEX} 0000  01 02 11 ${UUID_HEX} 0008 0000000000000003  01 03 20 ${UUID_HEX} 0002 6869`).toString('hex'),
    );
  });

  it('refuses to encode what cannot be framed', () => {
    expect(() => encodePusherTask({ cmd: PusherCmd.Notice, uuid: new Uint8Array(16 + 1) })).toThrow(RangeError);
    expect(() => encodePusherTask({ cmd: 0x30 as PusherCmd, uuid: UUID })).toThrow(RangeError);
    expect(() => encodePusherTask({ cmd: PusherCmd.Message, uuid: UUID, content: new Uint8Array(MAX_U16 + 1) })).toThrow(RangeError);
  });

  it('reply bytes', () => {
    expect(PusherReply).toEqual({ Accepted: 0x00, Malformed: 0x01, ServerError: 0xff });
  });
});

function task(cmd: number, len: number, body = Buffer.alloc(len, 0x61), version = 1): Buffer {
  return Buffer.concat([Buffer.from([version, 7, cmd]), UUID, Buffer.from([len >> 8, len & 0xff]), body]);
}

describe('decodePusherTask refusals', () => {
  const cases: [string, Buffer, PusherTaskError | 'too-short' | 'bad-length', number?][] = [
    ['version 0', task(0x10, 0, undefined, 0), 'bad-version'],
    ['version 2', task(0x20, 1, undefined, 2), 'bad-version'],
    ['cmd 0x00 (heartbeat is not a task)', task(0x00, 0), 'unknown-cmd'],
    ['cmd 0xff', task(0xff, 0), 'unknown-cmd'],
    ['cmd 0x12', task(0x12, 0), 'unknown-cmd'],
    ['0x10 with len 1', task(0x10, 1), 'bad-data-length'],
    ['0x10 with len 1000 (length vs cmd before too-long)', task(0x10, 1000), 'bad-data-length'],
    ['0x11 with len 0', task(0x11, 0), 'bad-data-length'],
    ['0x11 with len 7', task(0x11, 7), 'bad-data-length'],
    ['0x11 with len 9', task(0x11, 9), 'bad-data-length'],
    ['0x11 with len 600', task(0x11, 600), 'bad-data-length'],
    ['0x20 with len 0', task(0x20, 0), 'bad-data-length'],
    ['0x20 with 501 bytes (default max 500)', task(0x20, 501), 'content-too-long'],
    ['0x20 with 65535 bytes (default max 500)', task(0x20, 65535), 'content-too-long'],
    ['0x20 with 11 bytes, max 10', task(0x20, 11), 'content-too-long', 10],
    ['header only', task(0x10, 0).subarray(0, 20), 'too-short'],
    ['0x20 truncated', task(0x20, 5).subarray(0, 25), 'bad-length'],
    ['0x10 with a trailing byte', Buffer.concat([task(0x10, 0), hex('00')]), 'bad-length'],
  ];
  it.each(cases)('%s -> %s', (_l, bytes, reason, max) => {
    expect(decodePusherTask(bytes, max)).toBe(reason);
  });

  it('covers every PusherTaskError reason', () => {
    const seen = new Set(cases.map((c) => c[2]).filter((r) => r !== 'too-short' && r !== 'bad-length'));
    expect([...seen].sort()).toEqual([...PUSHER_TASK_ERRORS].sort());
  });

  it('content exactly at the max is accepted, max+1 is content-too-long', () => {
    expect(DEFAULT_MAX_CONTENT_LENGTH).toBe(500);
    const at = decodePusherTask(task(0x20, 500, Buffer.alloc(500, 0x42)));
    expect(typeof at).toBe('object');
    expect((at as PusherTask).content.equals(Buffer.alloc(500, 0x42))).toBe(true);
    expect(decodePusherTask(task(0x20, 501))).toBe('content-too-long');
    for (const max of [1, 2, 10, 499, 4096, MAX_U16]) {
      expect(typeof decodePusherTask(task(0x20, max), max)).toBe('object');
      if (max < MAX_U16) expect(decodePusherTask(task(0x20, max + 1), max)).toBe('content-too-long');
    }
  });

  it('accepts exactly 0x10, 0x11, 0x20 as commands', () => {
    const accepted: number[] = [];
    for (let cmd = 0; cmd < 256; cmd++) {
      const len = cmd === 0x11 ? 8 : cmd === 0x20 ? 1 : 0;
      if (typeof decodePusherTask(task(cmd, len)) !== 'string') accepted.push(cmd);
    }
    expect(accepted).toEqual([0x10, 0x11, 0x20]);
  });
});
