import { register, spawnServer, spawnWorker } from '../lib/harness.mjs';
import { row } from './common.mjs';

export default {
  id: 'e',
  title: 'idle-device memory: bytes per registered idle UDP device (server delta after GC)',
  steps: (cfg) => cfg.runs * 2,
  async run({ cfg, progress }) {
    // At least 10k: below that, a per-device delta drowns in the heap's own noise (+-100 KB).
    const devices = Math.max(10_000, cfg.count(100_000, 20_000));
    const heap = { raw: [], nest: [] };
    const rss = { raw: [], nest: [] };
    for (let r = 0; r < cfg.runs; r++) {
      for (const impl of ['raw', 'nest']) {
        const server = await spawnServer(impl);
        const dev = spawnWorker('devices-worker.mjs');
        try {
          await dev.call('setup', { port: server.ports.device, devices, sockets: 256 });
          const m0 = await server.mem();
          await register(server, dev, devices);
          const m1 = await server.mem();
          heap[impl].push((m1.heapUsed + m1.external - m0.heapUsed - m0.external) / devices);
          rss[impl].push((m1.rss - m0.rss) / devices);
          progress.step(`e: ${impl} run ${r + 1}/${cfg.runs}: ${Math.round(heap[impl].at(-1))} B/device heap+external`);
        } finally {
          await dev.call('close').catch(() => {});
          await dev.terminate();
          await server.stop();
        }
      }
    }
    const scenario = `${devices} idle UDP devices registered`;
    return [
      row({ id: 'e1', scenario, metric: 'heapUsed+external per device', unit: 'B', better: 'lower', nest: heap.nest, raw: heap.raw, target: '<= 150 B', check: (n) => n <= 150, notes: ['raw = Map<uuid hex, {address, port}>; deltas measured in the server process after forced GC'] }),
      row({ id: 'e2', scenario, metric: 'RSS per device', unit: 'B', better: 'lower', nest: rss.nest, raw: rss.raw }),
    ];
  },
};
