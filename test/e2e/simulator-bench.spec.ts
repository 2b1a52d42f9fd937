import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const out = mkdtempSync(join(tmpdir(), 'nest-push-bench-smoke-'));

interface Row {
  id: string;
  metric: string;
  unit: string;
  nest: number | null;
  raw: number | null;
  ratio: number | null;
  target: string | null;
  pass: boolean | null;
  unavailable?: string;
  runs: { nest: number[]; raw: number[] };
}

/** The benchmark CLI end to end, small: simulated devices, server child, report files. Runs over dist (built by `npm test`). */
describe('bench/run.mjs --quick smoke run', () => {
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('runs scenarios a and e with 500 devices and writes results.json, results.md and chart.html', async () => {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['bench/run.mjs', '--quick', '--scenarios', 'a,e', '--devices', '500', '--out', out], {
      cwd: root,
      timeout: 40_000,
    });
    // Not a TTY: the progress bar prints one line per step on stderr.
    expect(stderr).toMatch(/^\[\s*\d+% \d+s\] a: 500 devices registered on raw$/m);
    expect(stderr).toMatch(/^\[100% \d+s\] e: nest run 1\/1/m);

    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as { quick: boolean; runs: number; rows: Row[]; errors: unknown[] };
    expect(results.quick).toBe(true);
    expect(results.errors).toEqual([]);
    expect(results.rows.map((r) => r.id)).toEqual(['a1', 'a2', 'e1', 'e2']);
    for (const r of results.rows) {
      expect(r.unavailable).toBeUndefined();
      expect(r.runs.nest).toHaveLength(1);
      expect(r.runs.raw).toHaveLength(1);
      expect(Number.isFinite(r.nest)).toBe(true);
      expect(Number.isFinite(r.raw)).toBe(true);
      expect(r.ratio).toBeCloseTo(r.nest! / r.raw!, 6);
      // RSS deltas of a few MB can go either way (pages returned to the OS); the others are positive.
      if (r.id !== 'e2') expect(Math.min(r.nest!, r.raw!)).toBeGreaterThan(0);
    }
    const [a1, , e1] = results.rows;
    expect(a1).toMatchObject({ metric: 'acked pushes/s', unit: '/s', target: '>= 0.7x raw' });
    expect(a1!.pass).toBe(a1!.ratio! >= 0.7);
    expect(e1).toMatchObject({ unit: 'B', target: '<= 150 B' });
    expect(e1!.pass).toBe(e1!.nest! <= 150);
    // Bytes per device are bounded by physics: a 16-byte uuid at least, well under a kilobyte.
    expect(e1!.nest!).toBeGreaterThan(16);
    expect(e1!.nest!).toBeLessThan(1000);

    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).toContain('| scenario | metric | nest-push | raw forwarder | ratio | target | pass/fail |');
    const tableRows = md.split('\n').filter((l) => /^\| [ae]\d: /.test(l));
    expect(tableRows).toHaveLength(4);
    for (const l of tableRows) expect(l.split('|').filter((c) => c.trim() !== '')).toHaveLength(7);
    expect(stdout).toContain(tableRows[0]);

    const html = readFileSync(join(out, 'chart.html'), 'utf8');
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).toContain('<svg');
    expect((html.match(/<rect /g) ?? []).length).toBe(2 + 4 * 2);
    // Self-contained: no scripts, stylesheets or images from anywhere else.
    expect(html).not.toMatch(/<script|<link|src=|href=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
  }, 45_000);

  it('refuses an unknown scenario', async () => {
    const err = await promisify(execFile)(process.execPath, ['bench/run.mjs', '--scenarios', 'z'], { cwd: root }).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 2 });
    expect((err as { stderr: string }).stderr).toContain('unknown scenario(s) z');
  });
});
