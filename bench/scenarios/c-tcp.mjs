import { measureLatency, measureWindow, openSession } from '../lib/harness.mjs';
import { row } from './common.mjs';
import { settleAll } from './common.mjs';

const RATE = 2000;

export default {
  id: 'c',
  title: 'TCP devices: push rate, and p99 at 2k pushes/s',
  steps: (cfg) => 2 + cfg.runs * 4,
  async run({ cfg, progress }) {
    const devices = cfg.count(1_000, 300);
    const sessions = {};
    try {
      // Both servers start and register their devices at once; measurements then alternate between them.
      await settleAll(
        ['raw', 'nest'].map(async (impl) => {
          sessions[impl] = await openSession(impl, { devices, kind: 'tcp' });
          progress.step(`c: ${devices} TCP devices connected to ${impl}`);
        }),
      );
      const rate = { raw: [], nest: [] };
      const p99 = { raw: [], nest: [] };
      for (let r = 0; r < cfg.runs; r++) {
        for (const impl of ['raw', 'nest']) {
          const m = await measureWindow(sessions[impl], { connections: 4, window: 32, warmupMs: cfg.warmupMs, durationMs: cfg.windowMs });
          if (m.bad) throw new Error(`${impl}: ${m.bad} pusher replies were not 0x00`);
          rate[impl].push(m.rate);
          progress.step(`c: ${impl} rate run ${r + 1}/${cfg.runs}: ${Math.round(m.rate)}/s`);
        }
        for (const impl of ['raw', 'nest']) {
          const m = await measureLatency(sessions[impl], { rate: RATE, durationMs: cfg.latencyMs, warmupMs: cfg.warmupMs });
          p99[impl].push(m.p99);
          progress.step(`c: ${impl} latency run ${r + 1}/${cfg.runs}: p99 ${m.p99.toFixed(3)} ms`);
        }
      }
      return [
        row({ id: 'c1', scenario: `${devices} TCP devices, 4 pusher conns x 32 in flight`, metric: 'acked pushes/s', unit: '/s', nest: rate.nest, raw: rate.raw }),
        row({ id: 'c2', scenario: `${devices} TCP devices, ${RATE / 1000}k pushes/s`, metric: 'delivery p99', unit: 'ms', better: 'lower', nest: p99.nest, raw: p99.raw, target: '<= 10 ms', check: (n) => n <= 10 }),
      ];
    } finally {
      await Promise.all(Object.values(sessions).map((s) => s.close()));
    }
  },
};
