import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');

/**
 * Packs the package as a user would receive it, installs the tarball's content
 * into a scratch project (peer dependencies linked from ours), and loads it
 * from an ESM file and from a CommonJS file (require(esm), Node >= 20.19).
 */
describe('packed package loads from ESM and CJS', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'nest-push-pack-'));
    const out = execFileSync('npm', ['pack', '--silent', '--pack-destination', dir], { cwd: root, encoding: 'utf8' });
    const tgz = out.trim().split('\n').pop()!;
    const pkgDir = join(dir, 'node_modules', 'nest-push');
    mkdirSync(pkgDir, { recursive: true });
    execFileSync('tar', ['xzf', join(dir, tgz), '-C', pkgDir, '--strip-components=1']);
    // Peer dependencies come from our own install, as an app's would.
    for (const dep of readdirSync(join(root, 'node_modules'))) {
      if (dep === 'nest-push' || dep.startsWith('.')) continue;
      symlinkSync(join(root, 'node_modules', dep), join(dir, 'node_modules', dep));
    }
  }, 60_000);

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('ships only dist and docs', () => {
    const files = readdirSync(join(dir, 'node_modules', 'nest-push'));
    expect(files).toContain('dist');
    expect(files).toContain('package.json');
    expect(files).not.toContain('lib');
    expect(files).not.toContain('test');
  });

  const probe = `
    const p = m.uuidFromKey('100001').toString('hex');
    const f = m.decodeClientFrame(m.encodeClientFrame({ appId: 1, cmd: 0, uuid: m.uuidFromKey('100001') }));
    console.log(JSON.stringify({ p, cmd: f.cmd, engine: typeof m.DeviceEngine, strategy: typeof m.DeviceTransportStrategy }));
  `;
  const expected = { p: 'e2a6a1ace352668000aed191a817d143', cmd: 0, engine: 'function', strategy: 'function' };

  it('import from an ESM file', () => {
    writeFileSync(join(dir, 'probe.mjs'), `import * as m from 'nest-push';\n${probe}`);
    const out = execFileSync(process.execPath, [join(dir, 'probe.mjs')], { cwd: dir, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual(expected);
  });

  it('require() from a CommonJS file', () => {
    writeFileSync(join(dir, 'probe.cjs'), `const m = require('nest-push');\n${probe}`);
    const out = execFileSync(process.execPath, [join(dir, 'probe.cjs')], { cwd: dir, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual(expected);
  });

  it('the protocol subpath loads without Nest', () => {
    writeFileSync(join(dir, 'probe-protocol.cjs'), `const m = require('nest-push/protocol'); console.log(m.uuidToHex(m.uuidFromKey('a')));`);
    const out = execFileSync(process.execPath, [join(dir, 'probe-protocol.cjs')], { cwd: dir, encoding: 'utf8' });
    expect(out.trim()).toBe('0cc175b9c0f1b6a831c399e269772661');
  });
});
