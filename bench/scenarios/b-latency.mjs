import { measureLatency, openSession } from '../lib/harness.mjs';
import { row } from './common.mjs';
import { settleAll } from './common.mjs';

const RATE = 5000;

export default {
  id: 'b',
  title: 'delivery latency at a fixed 5k pushes/s, online UDP devices',
  steps: (cfg) => 2 + cfg.runs * 2,
  async run({ cfg, progress }) {
    const devices = cfg.count(10_000, 2_000);
    const sessions = {};
    try {
      // Both servers start and register their devices at once; measurements then alternate between them.
      await settleAll(
        ['raw', 'nest'].map(async (impl) => {
          sessions[impl] = await openSession(impl, { devices });
          progress.step(`b: ${devices} devices registered on ${impl}`);
        }),
      );
      const p50 = { raw: [], nest: [] };
      const p99 = { raw: [], nest: [] };
      const lost = { raw: 0, nest: 0 };
      const dups = { raw: 0, nest: 0 };
      for (let r = 0; r < cfg.runs; r++) {
        for (const impl of ['raw', 'nest']) {
          const m = await measureLatency(sessions[impl], { rate: RATE, durationMs: cfg.latencyMs, warmupMs: cfg.warmupMs });
          p50[impl].push(m.p50);
          p99[impl].push(m.p99);
          lost[impl] += m.sent - m.delivered;
          dups[impl] = m.duplicates;
          progress.step(`b: ${impl} run ${r + 1}/${cfg.runs}: p50 ${m.p50.toFixed(3)} ms p99 ${m.p99.toFixed(3)} ms`);
        }
      }
      const scenario = `${devices} UDP devices, ${RATE / 1000}k pushes/s (1 pusher conn)`;
      const notes = [`latency = device receipt - task write on the pusher connection (both clocks: performance.timeOrigin + now())`, `pushes not received (first receipt) by the end of their run: nest-push ${lost.nest}, raw ${lost.raw}`, `re-sent or overtaken pushes received (not timed): nest-push ${dups.nest}, raw ${dups.raw}`];
      return [
        row({ id: 'b1', scenario, metric: 'delivery p50', unit: 'ms', better: 'lower', nest: p50.nest, raw: p50.raw, notes }),
        row({ id: 'b2', scenario, metric: 'delivery p99', unit: 'ms', better: 'lower', nest: p99.nest, raw: p99.raw, target: '<= 2 ms', check: (n) => n <= 2 }),
      ];
    } finally {
      await Promise.all(Object.values(sessions).map((s) => s.close()));
    }
  },
};
