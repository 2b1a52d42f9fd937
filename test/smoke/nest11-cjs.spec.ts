import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const app = join(root, 'test/fixtures/nest11-cjs-app');

/**
 * The peer range is ^11 || ^12: a CommonJS app on Nest 11 must load the ESM
 * package with require() and run it. The fixture pins Nest 11 in its own lock
 * file; nest-push comes from `npm pack`, as a user would install it.
 */
describe('a Nest 11 CommonJS app', () => {
  let packDir: string;

  beforeAll(() => {
    if (!existsSync(join(app, 'node_modules/@nestjs/core'))) {
      execFileSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: app, stdio: 'pipe' });
    }
    packDir = mkdtempSync(join(tmpdir(), 'nest-push-pack11-'));
    const out = execFileSync('npm', ['pack', '--silent', '--pack-destination', packDir], { cwd: root, encoding: 'utf8' });
    const tgz = out.trim().split('\n').pop()!;
    const target = join(app, 'node_modules/nest-push');
    rmSync(target, { recursive: true, force: true });
    mkdirSync(target, { recursive: true });
    execFileSync('tar', ['xzf', join(packDir, tgz), '-C', target, '--strip-components=1']);
  }, 120_000);

  afterAll(() => {
    rmSync(packDir, { recursive: true, force: true });
    rmSync(join(app, 'node_modules/nest-push'), { recursive: true, force: true });
  });

  it('require()s nest-push, boots PushModule, and a push to a device succeeds', () => {
    const out = execFileSync(process.execPath, ['main.cjs'], { cwd: app, encoding: 'utf8', timeout: 30_000 });
    const result = JSON.parse(out.trim().split('\n').pop()!);
    expect(result.nestVersion).toMatch(/^11\./);
    expect(result).toMatchObject({ status: 'success', acks: 1 });
  });
});
