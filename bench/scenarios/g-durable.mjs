import { existsSync } from 'node:fs';
import { measureWindow, openSession } from '../lib/harness.mjs';
import { row, unavailable } from './common.mjs';
import { settleAll } from './common.mjs';

const LMDB = new URL('../../dist/store/lmdb-offline-store.js', import.meta.url);
const IMPLS = [
  ['raw', 'raw', {}],
  ['memory', 'nest', {}],
  ['lmdb', 'nest', { store: 'lmdb' }],
];

export default {
  id: 'g',
  title: 'durable (LMDB, fsync per group commit) vs memory store',
  available: () => (existsSync(LMDB) ? null : 'not available: dist/store/lmdb-offline-store.js is not built'),
  steps: (cfg) => 3 + cfg.runs * 3,
  async run({ cfg, progress }) {
    const devices = cfg.count(10_000, 2_000);
    const sessions = {};
    try {
      await settleAll(
        IMPLS.map(async ([name, impl, serverOpts]) => {
          sessions[name] = await openSession(impl, { devices, serverOpts });
          progress.step(`g: ${devices} devices registered on ${name}`);
        }),
      );
      const rate = { raw: [], memory: [], lmdb: [] };
      for (let r = 0; r < cfg.runs; r++) {
        for (const [name] of IMPLS) {
          const m = await measureWindow(sessions[name], { connections: 4, window: 32, warmupMs: cfg.warmupMs, durationMs: cfg.windowMs });
          if (m.bad) throw new Error(`${name}: ${m.bad} pusher replies were not 0x00`);
          rate[name].push(m.rate);
          progress.step(`g: ${name} run ${r + 1}/${cfg.runs}: ${Math.round(m.rate)}/s`);
        }
      }
      const scenario = `${devices} UDP devices, 4 pusher conns x 32 in flight`;
      const a = row({ id: 'g1', scenario: `${scenario}, LMDB store (durability sync)`, metric: 'acked pushes/s', unit: '/s', nest: rate.lmdb, raw: rate.raw });
      const b = row({ id: 'g2', scenario: `${scenario}, memory store`, metric: 'acked pushes/s', unit: '/s', nest: rate.memory, raw: rate.raw });
      a.notes.push(`LMDB / memory: ${(a.nest / b.nest).toFixed(2)}x`);
      return [a, b];
    } catch (err) {
      return [unavailable('g', this.title, `failed: ${err instanceof Error ? err.message.split('\n')[0] : err}`)];
    } finally {
      await Promise.all(Object.values(sessions).map((s) => s.close()));
    }
  },
};
