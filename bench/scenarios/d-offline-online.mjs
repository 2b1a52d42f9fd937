import { spawnServer, spawnWorker } from '../lib/harness.mjs';
import { row } from './common.mjs';

export default {
  id: 'd',
  title: 'offline then online: N pushes stored for offline devices, then they all heartbeat',
  steps: (cfg) => cfg.runs * 2,
  async run({ cfg, progress }) {
    const devices = cfg.count(10_000, 2_000);
    const ms = { raw: [], nest: [] };
    const stored = { raw: [], nest: [] };
    const notes = [];
    for (let r = 0; r < cfg.runs; r++) {
      for (const impl of ['raw', 'nest']) {
        // The raw forwarder keeps the last payload per uuid until acked: the least state this scenario needs.
        const server = await spawnServer(impl, impl === 'raw' ? { store: true } : {});
        const dev = spawnWorker('devices-worker.mjs');
        const load = spawnWorker('loadgen-worker.mjs');
        try {
          await dev.call('setup', { port: server.ports.device, devices, sockets: 64 });
          await load.call('setup', { devices });
          const b = await load.call('burst', { port: server.ports.pusher, total: devices, window: 256 });
          if (b.bad) throw new Error(`${impl}: ${b.bad} pusher replies were not 0x00`);
          stored[impl].push(b.ms);
          await dev.call('resetDistinct');
          const d = await dev.call('deliverAll', { timeoutMs: 30_000, retryMs: 250 });
          if (!d.complete) notes.push(`${impl} run ${r + 1}: only ${d.delivered}/${devices} delivered within 30 s`);
          ms[impl].push(d.complete ? d.ms : NaN);
          progress.step(`d: ${impl} run ${r + 1}/${cfg.runs}: ${devices} stored in ${Math.round(b.ms)} ms, delivered in ${Math.round(d.ms)} ms`);
        } finally {
          await dev.call('close').catch(() => {});
          await Promise.allSettled([dev.terminate(), load.terminate()]);
          await server.stop();
        }
      }
    }
    const med = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];
    notes.unshift(`storing the ${devices} pushes (pusher replies): nest-push ${Math.round(med(stored.nest))} ms, raw ${Math.round(med(stored.raw))} ms`);
    notes.push('raw baseline here = forwarder + a Map of the last payload per uuid until acked (a stateless forwarder cannot deliver to offline devices)');
    return [
      row({ id: 'd1', scenario: `${devices} offline UDP devices come online`, metric: 'time to deliver all', unit: 'ms', better: 'lower', nest: ms.nest, raw: ms.raw, notes }),
    ];
  },
};
