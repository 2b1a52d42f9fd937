import { openSession } from '../lib/harness.mjs';
import { row } from './common.mjs';
import { settleAll } from './common.mjs';

export default {
  id: 'f',
  title: 'heartbeat rate with many registered devices',
  steps: (cfg) => 2 + cfg.runs * 2,
  async run({ cfg, progress }) {
    const devices = cfg.count(100_000, 20_000);
    const sessions = {};
    try {
      // Both servers start and register their devices at once; measurements then alternate between them.
      await settleAll(
        ['raw', 'nest'].map(async (impl) => {
          sessions[impl] = await openSession(impl, { devices, sockets: 256 });
          progress.step(`f: ${devices} devices registered on ${impl}`);
        }),
      );
      const wall = { raw: [], nest: [] };
      const perCpu = { raw: [], nest: [] };
      const sentRate = { raw: [], nest: [] };
      const cpuShare = { raw: [], nest: [] };
      for (let r = 0; r < cfg.runs; r++) {
        for (const impl of ['raw', 'nest']) {
          const s = sessions[impl];
          const c0 = await s.server.stats();
          const b = await s.dev.call('blast', { durationMs: cfg.windowMs });
          const c1 = await s.server.stats();
          const handled = c1.stats.heartbeats - c0.stats.heartbeats;
          const seconds = (c1.at - c0.at) / 1000;
          const cpuSeconds = (c1.cpuMs - c0.cpuMs) / 1000;
          wall[impl].push(handled / seconds);
          perCpu[impl].push(handled / cpuSeconds);
          sentRate[impl].push(b.sent / (cfg.windowMs / 1000));
          cpuShare[impl].push(cpuSeconds / seconds);
          progress.step(`f: ${impl} run ${r + 1}/${cfg.runs}: ${Math.round(handled / seconds)}/s handled, ${Math.round(handled / cpuSeconds)} per server CPU-s`);
        }
      }
      const med = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];
      const scenario = `${devices} registered UDP devices, heartbeats blasted from one thread`;
      return [
        row({
          id: 'f1',
          scenario,
          metric: 'heartbeats handled/s (wall)',
          unit: '/s',
          nest: wall.nest,
          raw: wall.raw,
          notes: [
            `offered: ~${Math.round(med(sentRate.nest))}/s (nest-push run), ~${Math.round(med(sentRate.raw))}/s (raw run) from the sender thread; excess is dropped by the kernel`,
            `server CPU: ${Math.round(med(cpuShare.nest) * 100)}% (nest-push), ${Math.round(med(cpuShare.raw) * 100)}% (raw) of one core`,
          ],
        }),
        row({ id: 'f2', scenario, metric: 'heartbeats per server CPU-second', unit: '/s', nest: perCpu.nest, raw: perCpu.raw, target: '>= 200k/s (one core)', check: (n) => n >= 200_000 }),
      ];
    } finally {
      await Promise.all(Object.values(sessions).map((s) => s.close()));
    }
  },
};
