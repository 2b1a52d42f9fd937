// The raw-Node baseline: a stateless forwarder, the least work a DDPush
// server can do. Devices: UDP heartbeats record the last address per uuid
// (a Map keyed by the uuid's hex string), TCP heartbeats the last socket per
// uuid; acks are read and ignored. Pusher port: parses 21-byte task headers,
// sends each 0x20 content as a server frame to the device's last address,
// and replies 0x00 per task (one write per read chunk).
//
// `store: true` (offline-then-online scenario only) adds the one piece of
// state that scenario needs: the last payload per uuid until its ack.
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';

export async function startRawForwarder({ store = false } = {}) {
  const udpAddr = new Map(); // uuid hex -> { address, port }
  const tcpLinks = new Map(); // uuid hex -> socket
  const pending = store ? new Map() : null; // uuid hex -> frame
  const counters = { heartbeats: 0, acks: 0, tasks: 0, forwarded: 0 };

  const udp = createSocket({ type: 'udp4', recvBufferSize: 4 * 1024 * 1024, sendBufferSize: 1024 * 1024 });
  const sendTo = (key, frame) => {
    const link = tcpLinks.get(key);
    if (link && !link.destroyed) {
      link.write(frame);
      return true;
    }
    const a = udpAddr.get(key);
    if (!a) return false;
    udp.send(frame, a.port, a.address);
    return true;
  };
  const onClientFrame = (msg, offset, key) => {
    if (msg[offset + 2] === 0x00) {
      counters.heartbeats++;
      if (pending) {
        const f = pending.get(key);
        if (f) sendTo(key, f);
      }
    } else {
      counters.acks++;
      if (pending && msg[offset + 2] === 0x20) pending.delete(key);
    }
  };
  udp.on('message', (msg, rinfo) => {
    if (msg.length < 21 || msg[0] !== 1) return;
    const key = msg.toString('hex', 3, 19);
    if (msg[2] === 0x00) {
      const a = udpAddr.get(key);
      if (!a) udpAddr.set(key, { address: rinfo.address, port: rinfo.port });
      else if (a.port !== rinfo.port || a.address !== rinfo.address) udpAddr.set(key, { address: rinfo.address, port: rinfo.port });
    }
    onClientFrame(msg, 0, key);
  });
  udp.on('error', () => {});

  // One TCP server on the device port for TCP devices (21-byte frames; 0x11 acks carry 8 more).
  const deviceTcp = createServer({ noDelay: true }, (socket) => {
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let i = 0;
      while (buf.length - i >= 21) {
        const len = 21 + ((buf[i + 19] << 8) | buf[i + 20]);
        if (buf.length - i < len) break;
        const key = buf.toString('hex', i + 3, i + 19);
        if (buf[i + 2] === 0x00) tcpLinks.set(key, socket);
        onClientFrame(buf, i, key);
        i += len;
      }
      buf = i === buf.length ? Buffer.alloc(0) : buf.subarray(i);
    });
    socket.on('error', () => {});
  });

  const pusher = createServer({ noDelay: true }, (socket) => {
    const header = Buffer.alloc(21);
    let have = 0;
    let content = null;
    let filled = 0;
    socket.on('data', (chunk) => {
      let replies = 0;
      let i = 0;
      while (i < chunk.length) {
        if (content) {
          const take = Math.min(content.length - filled, chunk.length - i);
          chunk.copy(content, filled, i, i + take);
          filled += take;
          i += take;
          if (filled < content.length) break;
        } else {
          const take = Math.min(21 - have, chunk.length - i);
          chunk.copy(header, have, i, i + take);
          have += take;
          i += take;
          if (have < 21) break;
          have = 0;
          const len = (header[19] << 8) | header[20];
          // The server frame is built in place: 5-byte header, then the content.
          content = Buffer.allocUnsafe(5 + len).subarray(5);
          filled = 0;
          if (len > 0) continue;
        }
        const frame = Buffer.from(content.buffer, content.byteOffset - 5, content.length + 5);
        frame[0] = 1;
        frame[1] = header[1];
        frame[2] = header[2];
        frame[3] = content.length >> 8;
        frame[4] = content.length & 0xff;
        const key = header.toString('hex', 3, 19);
        counters.tasks++;
        if (pending) pending.set(key, frame);
        if (sendTo(key, frame)) counters.forwarded++;
        content = null;
        replies++;
      }
      if (replies > 0) socket.write(Buffer.alloc(replies));
    });
    socket.on('error', () => {});
  });

  const listen = (server, port) =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port }, () => resolve(server.address().port));
    });
  const devicePort = await listen(deviceTcp, 0);
  await new Promise((resolve, reject) => {
    udp.once('error', reject);
    udp.bind(devicePort, '127.0.0.1', resolve);
  });
  const pusherPort = await listen(pusher, 0);
  return {
    ports: { device: devicePort, pusher: pusherPort },
    stats: () => ({ ...counters, devices: udpAddr.size + tcpLinks.size, pending: pending ? pending.size : 0 }),
    async close() {
      for (const s of tcpLinks.values()) s.destroy();
      await Promise.all([new Promise((r) => udp.close(r)), new Promise((r) => deviceTcp.close(r)), new Promise((r) => pusher.close(r))]);
    },
  };
}
