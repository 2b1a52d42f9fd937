#!/usr/bin/env node
// The nest-push benchmark: every scenario of the issues in one tool, each
// against the raw-Node baseline (a stateless forwarder) measured in the same
// run, with the ratio and the issue's target.
//
//   npm run bench                              # all scenarios, medians of 3 runs (< 10 min on 2 cores)
//   node bench/run.mjs --quick                 # one short run per figure (< 90 s)
//   node bench/run.mjs --scenarios a,e --devices 500 --out /tmp/b
//
// Flags: --scenarios a,b,... (default all)  --quick  --runs N  --devices N
// (overrides every scenario's device count)  --window ms  --out dir.
//
// The server under test runs in a child process of its own; simulated
// devices and the pusher load generator run in worker threads of this one.
// Results: bench/results/<timestamp>/{results.json,results.md,chart.html}.
import { existsSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Progress } from './lib/progress.mjs';
import { fmt, markdown, writeReport } from './lib/report.mjs';
import a from './scenarios/a-udp-rate.mjs';
import b from './scenarios/b-latency.mjs';
import c from './scenarios/c-tcp.mjs';
import d from './scenarios/d-offline-online.mjs';
import e from './scenarios/e-idle-memory.mjs';
import f from './scenarios/f-heartbeats.mjs';
import g from './scenarios/g-durable.mjs';
import h from './scenarios/h-cluster.mjs';
import { unavailable } from './scenarios/common.mjs';

const ALL = [a, b, c, d, e, f, g, h];
const here = fileURLToPath(new URL('.', import.meta.url));

const { values } = parseArgs({
  options: {
    scenarios: { type: 'string', default: ALL.map((s) => s.id).join(',') },
    quick: { type: 'boolean', default: false },
    runs: { type: 'string' },
    devices: { type: 'string' },
    window: { type: 'string' },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (values.help) {
  console.log('usage: node bench/run.mjs [--scenarios a,b,c,d,e,f,g,h] [--quick] [--runs N] [--devices N] [--window ms] [--out dir]');
  for (const s of ALL) console.log(`  ${s.id}: ${s.title}`);
  process.exit(0);
}

if (!existsSync(new URL('../dist/index.js', import.meta.url))) {
  console.error('dist/ is missing: run `npm run build` first (or `npm run bench`, which builds)');
  process.exit(1);
}

const ids = values.scenarios.split(',').map((x) => x.trim()).filter(Boolean);
const unknown = ids.filter((id) => !ALL.some((s) => s.id === id));
if (unknown.length) {
  console.error(`unknown scenario(s) ${unknown.join(', ')}; known: ${ALL.map((s) => s.id).join(', ')}`);
  process.exit(2);
}
const positive = (name, raw) => {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer, got ${raw}`);
    process.exit(2);
  }
  return n;
};
const quick = values.quick;
const devicesOverride = values.devices !== undefined ? positive('devices', values.devices) : undefined;
const cfg = {
  quick,
  runs: values.runs !== undefined ? positive('runs', values.runs) : quick ? 1 : 3,
  windowMs: values.window !== undefined ? positive('window', values.window) : quick ? 800 : 2500,
  warmupMs: quick ? 200 : 800,
  latencyMs: quick ? 1000 : 3000,
  /** Device count: the scenario's full or quick default, unless --devices overrides it. */
  count: (full, quickCount) => devicesOverride ?? (quick ? quickCount : full),
};

const chosen = ALL.filter((s) => ids.includes(s.id));
const startedAt = new Date();
const stamp = startedAt.toISOString().replace(/[:.]/g, '-').replace('T', '_').slice(0, 19);
const outDir = values.out ?? join(here, 'results', stamp);
const plan = chosen.map((s) => ({ s, why: s.available?.() ?? null }));
const progress = new Progress(plan.reduce((n, p) => n + (p.why ? 1 : p.s.steps(cfg)), 0));

const results = {
  command: `node bench/run.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  startedAt: startedAt.toISOString(),
  node: process.version,
  cpus: cpus().length,
  cpuModel: cpus()[0]?.model ?? 'unknown',
  loadavg: loadavg(),
  quick,
  runs: cfg.runs,
  windowMs: cfg.windowMs,
  durationMs: 0,
  rows: [],
  errors: [],
};

progress.show('starting');
for (const { s, why } of plan) {
  if (why) {
    results.rows.push(unavailable(s.id, s.title, why));
    progress.step(`${s.id}: ${why}`);
    continue;
  }
  const t0 = Date.now();
  try {
    const rows = await s.run({ cfg, progress });
    results.rows.push(...rows);
    for (const r of rows) {
      progress.log(r.unavailable ? `${r.id}: ${r.unavailable}` : `${r.id}: ${r.metric}: nest-push ${fmt(r.nest, r.unit)}, raw ${fmt(r.raw, r.unit)}${r.target ? ` (target ${r.target}: ${r.pass ? 'pass' : 'FAIL'})` : ''}`);
    }
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    results.errors.push({ scenario: s.id, message });
    results.rows.push(unavailable(s.id, s.title, `error: ${message.split('\n')[0]}`));
    progress.log(`${s.id}: error: ${message}`);
  }
  results[`${s.id}Ms`] = Date.now() - t0;
}
results.durationMs = Date.now() - startedAt.getTime();
results.loadavgEnd = loadavg();
progress.end();
writeReport(outDir, results);
process.stdout.write(markdown(results));
console.log(`\nwritten: ${join(outDir, 'results.json')}, results.md, chart.html`);
process.exit(results.errors.length ? 1 : 0);
