import { measureWindow, openSession } from '../lib/harness.mjs';
import { fmtPct, row } from './common.mjs';
import { settleAll } from './common.mjs';

const WINDOWS = [32, 1];

export default {
  id: 'a',
  title: 'acked push rate, online UDP devices, 4 pusher connections',
  steps: (cfg) => 2 + cfg.runs * WINDOWS.length * 2,
  async run({ cfg, progress }) {
    const devices = cfg.count(10_000, 2_000);
    const sessions = {};
    try {
      // Both servers start and register their devices at once; measurements then alternate between them.
      await settleAll(
        ['raw', 'nest'].map(async (impl) => {
          sessions[impl] = await openSession(impl, { devices });
          progress.step(`a: ${devices} devices registered on ${impl}`);
        }),
      );
      const figures = { raw: { 32: [], 1: [] }, nest: { 32: [], 1: [] } };
      const cpu = { raw: { 32: [], 1: [] }, nest: { 32: [], 1: [] } };
      const acksRead = { raw: { 32: [], 1: [] }, nest: { 32: [], 1: [] } };
      const kernelDrops = { raw: { 32: [], 1: [] }, nest: { 32: [], 1: [] } };
      const acked = { 32: '', 1: '' };
      for (let r = 0; r < cfg.runs; r++) {
        for (const w of WINDOWS) {
          for (const impl of ['raw', 'nest']) {
            const m = await measureWindow(sessions[impl], { connections: 4, window: w, warmupMs: cfg.warmupMs, durationMs: cfg.windowMs });
            if (m.bad) throw new Error(`${impl}: ${m.bad} pusher replies were not 0x00`);
            figures[impl][w].push(m.rate);
            cpu[impl][w].push(m.serverCpu);
            acksRead[impl][w].push(m.acksRead);
            kernelDrops[impl][w].push(m.kernelUdpDropRate);
            if (impl === 'nest') {
              const settled = m.server.outcomes.success - m.before.outcomes.success;
              const tasks = m.server.tasks - m.before.tasks;
              acked[w] = `${settled} of ${tasks} (${((100 * settled) / Math.max(1, tasks)).toFixed(1)}%)`;
            }
            progress.step(`a: ${impl} 4x${w} run ${r + 1}/${cfg.runs}: ${Math.round(m.rate)}/s`);
          }
        }
      }
      // The forwarder ignores acks, but how many it reads at all matters: what the kernel drops for a full
      // receive buffer costs it no receive call, so a forwarder that falls behind gets faster, not slower.
      const acksNote = (w) => {
        const drops = (impl) => (Number.isFinite(median(kernelDrops[impl][w])) ? `, kernel UDP drops ${Math.round(median(kernelDrops[impl][w]))}/s` : '');
        return `device acks read by the server per delivered push: ${fmtPct(median(acksRead.nest[w]))} (nest-push${drops('nest')}) vs ${fmtPct(median(acksRead.raw[w]))} (raw${drops('raw')})`;
      };
      const cpuNote = (w) => `server CPU ${fmtPct(median(cpu.nest[w]))} (nest-push) vs ${fmtPct(median(cpu.raw[w]))} (raw) of one core`;
      return WINDOWS.map((w) =>
        row({
          id: `a${w === 32 ? 1 : 2}`,
          scenario: `${devices} UDP devices, 4 pusher conns x ${w} in flight`,
          metric: 'acked pushes/s',
          unit: '/s',
          nest: figures.nest[w],
          raw: figures.raw[w],
          target: '>= 0.7x raw',
          check: (_n, _r, ratio) => ratio >= 0.7,
          notes: [cpuNote(w), acksNote(w), `nest-push pushes accepted in the last window that were settled by their device's ack before it ended (acks still on their way settle after): ${acked[w]}`],
        }),
      );
    } finally {
      await Promise.all(Object.values(sessions).map((s) => s.close()));
    }
  },
};

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  return s.length ? s[s.length >> 1] : NaN;
}
