import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, ROOT } from '../../fixtures/cluster-node/cluster-node.js';

/** A resolve hook that makes `ioredis` unresolvable, as in an app that did not install it. */
const HOOK = `export async function resolve(s, c, next) { if (s === 'ioredis' || s.startsWith('ioredis/')) throw new Error('Cannot find package ioredis'); return next(s, c); }`;
const REGISTER = `data:text/javascript,import{register}from"node:module";register(${JSON.stringify('data:text/javascript,' + encodeURIComponent(HOOK))});`;

function load(entry: string): string {
  try {
    return execFileSync(process.execPath, ['--import', REGISTER, '--input-type=module', '-e', `await import(${JSON.stringify(entry)}); console.log('loaded')`], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: 'pipe',
    }).trim();
  } catch (err) {
    return String((err as { stderr?: string }).stderr ?? err);
  }
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

describe('ioredis is an optional peer dependency', () => {
  beforeAll(() => ensureBuilt(), 120_000);

  it('no core source imports ioredis or lib/redis', () => {
    const offenders = sources(join(ROOT, 'lib'))
      .filter((f) => !f.includes(`${join('lib', 'redis')}`))
      .filter((f) => /from\s+['"](ioredis|[./]+redis\/[^'"]*)['"]|import\(\s*['"](ioredis|[./]+redis\/)/.test(readFileSync(f, 'utf8')));
    expect(offenders).toEqual([]);
  });

  it('the built main entry loads without ioredis; nest-push/redis needs it', () => {
    expect(load('./dist/index.js')).toBe('loaded');
    expect(load('./dist/redis/index.js')).toMatch(/Cannot find package ioredis/);
    expect(load('./dist/protocol/index.js')).toBe('loaded');
  });

  it('package.json exports ./redis and declares ioredis an optional peer', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.exports['./redis']).toEqual({ types: './dist/redis/index.d.ts', default: './dist/redis/index.js' });
    expect(pkg.peerDependencies.ioredis).toBeDefined();
    expect(pkg.peerDependenciesMeta.ioredis).toEqual({ optional: true });
    expect(pkg.devDependencies.ioredis).toBeDefined();
  });
});
