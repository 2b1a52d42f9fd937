// results.json, results.md (a Markdown table) and chart.html (inline SVG, no external resources).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function fmt(value, unit) {
  if (!Number.isFinite(value)) return 'n/a';
  if (unit === 'ms') return `${value < 10 ? value.toFixed(3) : value.toFixed(1)} ms`;
  if (unit === 'B') return `${Math.round(value)} B`;
  if (unit === '/s') return value >= 10_000 ? `${(value / 1000).toFixed(1)}k/s` : `${Math.round(value)}/s`;
  return `${value}`;
}

const ratioText = (r) => (Number.isFinite(r) ? `${r.toFixed(2)}x` : 'n/a');
const passText = (p) => (p === null ? '—' : p ? 'pass' : 'FAIL');

export function markdown(results) {
  const lines = [];
  lines.push(`# nest-push benchmark, ${results.startedAt}`);
  lines.push('');
  lines.push(`\`${results.command}\` — node ${results.node}, ${results.cpus} x ${results.cpuModel}, load average at start ${results.loadavg.map((x) => x.toFixed(2)).join(' ')}; ${results.quick ? 'quick mode (1 run per figure, short windows)' : `median of ${results.runs} runs per figure`}; total ${Math.round(results.durationMs / 1000)} s.`);
  lines.push('');
  lines.push('Ratio = nest-push / raw forwarder (same run). For rates higher is better; for latency and memory lower is better.');
  lines.push('');
  lines.push('| scenario | metric | nest-push | raw forwarder | ratio | target | pass/fail |');
  lines.push('|---|---|---|---|---|---|---|');
  for (const r of results.rows) {
    if (r.unavailable) {
      lines.push(`| ${r.id}: ${r.scenario} | — | ${r.unavailable} | — | — | — | — |`);
      continue;
    }
    lines.push(`| ${r.id}: ${r.scenario} | ${r.metric} | ${fmt(r.nest, r.unit)} | ${fmt(r.raw, r.unit)} | ${ratioText(r.ratio)} | ${r.target ?? '—'} | ${passText(r.pass)} |`);
  }
  const notes = results.rows.flatMap((r) => r.notes.map((n) => `- ${r.id}: ${n}`));
  if (notes.length) {
    lines.push('');
    lines.push('Notes:');
    lines.push(...notes);
  }
  if (results.errors.length) {
    lines.push('');
    lines.push('Errors:');
    for (const e of results.errors) lines.push(`- ${e.scenario}: ${e.message}`);
  }
  lines.push('');
  return lines.join('\n');
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** One pair of horizontal bars per row, each row scaled to its own larger value. */
export function chartHtml(results) {
  const rows = results.rows.filter((r) => !r.unavailable && (Number.isFinite(r.nest) || Number.isFinite(r.raw)));
  const rowH = 64;
  const left = 360;
  const barW = 420;
  const width = left + barW + 170;
  const height = 40 + rows.length * rowH + 30;
  const parts = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`);
  parts.push(`<rect x="${left}" y="10" width="12" height="12" fill="#2b6cb0"/><text x="${left + 18}" y="21">nest-push</text>`);
  parts.push(`<rect x="${left + 110}" y="10" width="12" height="12" fill="#a0aec0"/><text x="${left + 128}" y="21">raw Node forwarder</text>`);
  rows.forEach((r, i) => {
    const y = 40 + i * rowH;
    const max = Math.max(Number.isFinite(r.nest) ? r.nest : 0, Number.isFinite(r.raw) ? r.raw : 0) || 1;
    const w = (v) => (Number.isFinite(v) ? Math.max(1, (v / max) * barW) : 0);
    const status = r.pass === null ? '' : r.pass ? ' ✓' : ' ✗';
    parts.push(`<text x="8" y="${y + 14}" font-weight="600">${esc(`${r.id}: ${r.metric}`)}${esc(status)}</text>`);
    parts.push(`<text x="8" y="${y + 30}" fill="#4a5568">${esc(r.scenario.slice(0, 58))}</text>`);
    parts.push(`<text x="8" y="${y + 46}" fill="#4a5568">${esc(`ratio ${ratioText(r.ratio)}${r.target ? `, target ${r.target}` : ''}; ${r.better === 'lower' ? 'lower' : 'higher'} is better`)}</text>`);
    parts.push(`<rect x="${left}" y="${y + 4}" width="${w(r.nest)}" height="18" fill="#2b6cb0"><title>nest-push ${esc(fmt(r.nest, r.unit))}</title></rect>`);
    parts.push(`<text x="${left + w(r.nest) + 6}" y="${y + 17}">${esc(fmt(r.nest, r.unit))}</text>`);
    parts.push(`<rect x="${left}" y="${y + 26}" width="${w(r.raw)}" height="18" fill="#a0aec0"><title>raw ${esc(fmt(r.raw, r.unit))}</title></rect>`);
    parts.push(`<text x="${left + w(r.raw) + 6}" y="${y + 39}">${esc(fmt(r.raw, r.unit))}</text>`);
  });
  parts.push('</svg>');
  const unavailable = results.rows.filter((r) => r.unavailable).map((r) => `<li>${esc(`${r.id}: ${r.scenario} — ${r.unavailable}`)}</li>`);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nest-push benchmark ${esc(results.startedAt)}</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;color:#1a202c}p{max-width:60em}</style></head>
<body>
<h1>nest-push benchmark</h1>
<p>${esc(`${results.startedAt} — node ${results.node}, ${results.cpus} x ${results.cpuModel}, load average at start ${results.loadavg.map((x) => x.toFixed(2)).join(' ')}; ${results.quick ? 'quick mode' : `median of ${results.runs} runs`}. Each pair of bars is scaled to its larger value.`)}</p>
${parts.join('\n')}
${unavailable.length ? `<h2>Not run</h2><ul>${unavailable.join('')}</ul>` : ''}
</body></html>
`;
}

export function writeReport(dir, results) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'results.json'), JSON.stringify(results, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
  writeFileSync(join(dir, 'results.md'), markdown(results));
  writeFileSync(join(dir, 'chart.html'), chartHtml(results));
}
