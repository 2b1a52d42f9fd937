import { parseArgs } from 'node:util';
import { DeviceClient, type DeviceMessage } from 'nest-push';

/**
 * Device simulator: connects N DDPush devices (user keys `user-1`..`user-N`,
 * so `POST /push {"key":"user-1",...}` reaches the first) and prints what they
 * receive. Usage: npm run sample:devices -- --count 1000 [--tcp] [--host h] [--port p]
 */
const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '10' },
    host: { type: 'string', default: process.env.PUSH_DEVICE_HOST && process.env.PUSH_DEVICE_HOST !== '0.0.0.0' ? process.env.PUSH_DEVICE_HOST : '127.0.0.1' },
    port: { type: 'string', default: process.env.PUSH_DEVICE_PORT || '9966' },
    tcp: { type: 'boolean', default: false },
    heartbeat: { type: 'string', default: '50000' },
    quiet: { type: 'boolean', default: false },
  },
});

const count = Number(values.count);
if (!Number.isInteger(count) || count < 1) throw new Error('--count must be a positive integer');

function describe(m: DeviceMessage): string {
  if (m.kind === 'message') return `message "${m.content.toString('utf8')}"`;
  if (m.kind === 'category') return `category 0x${m.mask.toString(16)}`;
  return m.kind;
}

async function main() {
  const devices: DeviceClient[] = [];
  let received = 0;
  for (let i = 1; i <= count; i++) {
    const d = new DeviceClient({
      host: values.host,
      port: Number(values.port),
      transport: values.tcp ? 'tcp' : 'udp',
      key: `user-${i}`,
      heartbeatIntervalMs: Number(values.heartbeat),
    });
    d.messages.subscribe((m) => {
      if (m.kind === 'echo') return;
      received++;
      if (!values.quiet) console.log(`user-${i} (${d.uuid}) got ${describe(m)}`);
    });
    await d.connect();
    devices.push(d);
  }
  console.log(`${count} ${values.tcp ? 'TCP' : 'UDP'} devices connected to ${values.host}:${values.port} (keys user-1..user-${count})`);
  const timer = setInterval(() => console.log(`received ${received} pushes`), 10_000);
  const stop = async () => {
    clearInterval(timer);
    await Promise.all(devices.map((d) => d.close()));
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
