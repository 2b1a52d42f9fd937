import { firstValueFrom, filter, timeout } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceClient } from '../../lib/client/device.client.js';
import { startDeviceServer } from '../helpers/device-server.js';

describe('sanity', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => { for (const c of cleanup.splice(0)) await c(); });

  for (const transport of ['udp', 'tcp'] as const) {
    it(`${transport}: register, push, ack`, async () => {
      const s = await startDeviceServer();
      cleanup.push(() => s.close());
      const d = new DeviceClient({ port: s.port, transport, key: 'u1', heartbeatIntervalMs: 0 });
      cleanup.push(() => d.close());
      const online = firstValueFrom(s.engine.events.pipe(filter((e) => e.type === 'online'), timeout(2000)));
      await d.connect();
      await online;
      const got = firstValueFrom(d.messages.pipe(filter((m) => m.kind === 'message'), timeout(2000)));
      const acked = firstValueFrom(s.engine.events.pipe(filter((e) => e.type === 'ack'), timeout(2000)));
      const r = await s.engine.push(d.uuid, { kind: 'message', content: Buffer.from('hello') });
      expect(r.sentVia).toBe(transport);
      expect((await got).content.toString()).toBe('hello');
      expect(await acked).toMatchObject({ kind: 'message', version: r.version });
      expect(await s.store.read(d.uuid)).toBeNull();
    });
  }
});
