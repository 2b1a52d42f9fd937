import { createSocket, type Socket } from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { UdpOutbox } from '../../../lib/server/udp-outbox.js';

const sockets: Socket[] = [];
async function bound(): Promise<{ socket: Socket; port: number; received: string[] }> {
  const socket = createSocket('udp4');
  sockets.push(socket);
  const received: string[] = [];
  socket.on('message', (m) => received.push(m.toString()));
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
  return { socket, port: socket.address().port, received };
}
const until = async (cond: () => boolean, ms = 2000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
};

afterEach(() => {
  for (const s of sockets.splice(0)) {
    try {
      s.close();
    } catch {
      // already closed by the test
    }
  }
});

describe('UdpOutbox', () => {
  it('holds datagrams until the current callback ends, then sends them all, in order', async () => {
    const device = await bound();
    const server = await bound();
    const errors: (Error | null)[] = [];
    const out = new UdpOutbox(() => server.socket, (err) => errors.push(err), 64, 1);
    for (let i = 0; i < 10; i++) out.send(Buffer.from(`m${i}`), device.port, '127.0.0.1');
    expect(out.size).toBe(10);
    await new Promise((r) => process.nextTick(r));
    expect(out.size).toBe(0);
    await until(() => device.received.length === 10);
    expect(device.received).toEqual(Array.from({ length: 10 }, (_, i) => `m${i}`));
    await until(() => errors.length === 10);
    expect(errors.every((e) => e === null)).toBe(true);
  });

  it('never holds more than max: the max-th datagram sends the queue at once', async () => {
    const device = await bound();
    const server = await bound();
    const out = new UdpOutbox(() => server.socket, () => {}, 4);
    for (let i = 0; i < 3; i++) out.send(Buffer.from(`a${i}`), device.port, '127.0.0.1');
    expect(out.size).toBe(3);
    out.send(Buffer.from('a3'), device.port, '127.0.0.1');
    expect(out.size).toBe(0);
    out.send(Buffer.from('a4'), device.port, '127.0.0.1');
    expect(out.size).toBe(1);
    await until(() => device.received.length === 5);
    expect(device.received).toEqual(['a0', 'a1', 'a2', 'a3', 'a4']);
  });

  it('a socket closed (or gone) before the flush fails each send through the callback, without throwing', async () => {
    const server = await bound();
    const errors: (Error | null)[] = [];
    let socket: Socket | undefined = server.socket;
    const out = new UdpOutbox(() => socket, (err) => errors.push(err), 64);
    out.send(Buffer.from('x'), 9, '127.0.0.1');
    server.socket.close();
    out.flush();
    out.send(Buffer.from('y'), 9, '127.0.0.1');
    socket = undefined;
    out.flush();
    expect(errors).toHaveLength(2);
    expect(errors.every((e) => e instanceof Error)).toBe(true);
    expect(out.size).toBe(0);
  });
});

describe('UdpOutbox, checked sends', () => {
  // A datagram larger than UDP allows fails in the kernel (EMSGSIZE), after Node accepted it.
  const tooBig = Buffer.alloc(70_000);
  /** A device, and an outbox on a server socket checking one send in `checkEvery`, with the results it reports. */
  async function checking(checkEvery: number) {
    const device = await bound();
    const server = await bound();
    const results: (Error | null)[] = [];
    const out = new UdpOutbox(() => server.socket, (err) => results.push(err), 64, checkEvery);
    return { device, server, results, out };
  }

  it('reports real send failures of the checked sends: one in checkEvery, the first included', async () => {
    const { device, results, out } = await checking(4);
    for (let i = 0; i < 10; i++) out.send(tooBig, device.port, '127.0.0.1');
    out.flush();
    await new Promise((r) => setTimeout(r, 20));
    // Sends 1, 5 and 9 of 10 carry the callback.
    expect(results).toHaveLength(3);
    expect(results.every((e) => e instanceof Error && /EMSGSIZE/.test(e.message))).toBe(true);
    // Good sends after them are checked at the same pace, and report success.
    for (let i = 0; i < 8; i++) out.send(Buffer.from(`ok${i}`), device.port, '127.0.0.1');
    out.flush();
    await until(() => device.received.length === 8);
    await new Promise((r) => setTimeout(r, 20));
    expect(results.slice(3)).toEqual([null, null]);
  });

  it('checks every send with checkEvery 1, and refuses a checkEvery below 1', async () => {
    const { device, server, results, out } = await checking(1);
    for (let i = 0; i < 5; i++) out.send(tooBig, device.port, '127.0.0.1');
    out.flush();
    await until(() => results.length === 5);
    expect(results.every((e) => e instanceof Error)).toBe(true);
    expect(() => new UdpOutbox(() => server.socket, () => {}, 64, 0)).toThrow(/checkEvery/);
  });
});

describe('UdpOutbox, direct', () => {
  it('sends at once while direct (one datagram handled: nothing to batch with), and queues again after', async () => {
    const device = await bound();
    const server = await bound();
    const out = new UdpOutbox(() => server.socket, () => {}, 64);
    out.direct = true;
    out.send(Buffer.from('echo'), device.port, '127.0.0.1');
    expect(out.size).toBe(0);
    out.direct = false;
    out.send(Buffer.from('push'), device.port, '127.0.0.1');
    expect(out.size).toBe(1);
    await until(() => device.received.length === 2);
    expect(device.received).toEqual(['echo', 'push']);
  });

  it('keeps the order: a direct send behind queued datagrams waits its turn with them', async () => {
    const device = await bound();
    const server = await bound();
    const out = new UdpOutbox(() => server.socket, () => {}, 64);
    out.send(Buffer.from('first'), device.port, '127.0.0.1');
    out.direct = true;
    out.send(Buffer.from('second'), device.port, '127.0.0.1');
    expect(out.size).toBe(2);
    out.direct = false;
    await until(() => device.received.length === 2);
    expect(device.received).toEqual(['first', 'second']);
  });
});

describe('UdpOutbox, reuse', () => {
  it('a datagram queued by a send callback during a flush is kept, in order, for the next flush', async () => {
    const device = await bound();
    const server = await bound();
    let socket: Socket | undefined;
    let requeued = false;
    const out: UdpOutbox = new UdpOutbox(
      () => socket,
      (err) => {
        // The first flush has no socket: its failure callback queues a retry while the flush runs.
        if (err && !requeued) {
          requeued = true;
          out.send(Buffer.from('retry'), device.port, '127.0.0.1');
        }
      },
      64,
    );
    out.send(Buffer.from('lost'), device.port, '127.0.0.1');
    out.flush();
    expect(out.size).toBe(1);
    socket = server.socket;
    out.send(Buffer.from('next'), device.port, '127.0.0.1');
    out.flush();
    expect(out.size).toBe(0);
    await until(() => device.received.length === 2);
    expect(device.received).toEqual(['retry', 'next']);
  });
});
