/**
 * Installing without the native engine's build tools, and choosing a build for the CPU.
 *
 * The install script is read from package.json and run as `npm ci` runs it, with OpenBLAS's headers
 * hidden (STEERGUARD_OPENBLAS_INCLUDE at an empty folder: no search) or no compiler, into a private
 * STEERGUARD_BUILD_DIR; the CLI then reads the same folder, as an installed package would. Nothing is
 * uninstalled and the real build/ is not touched. One case compiles the addon (two CPU levels, a few
 * seconds).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { NativeUnavailableError, loadNativeBackend } from '../../src/engine/native.js';
import { ReferenceBackend } from '../../src/engine/reference.js';
import { loadBackend } from '../../src/engine/select.js';
import { SteerguardError } from '../../src/formats/errors.js';
import { ROOT, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const MAIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const INSTALL_SCRIPT = (
  JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    scripts: { install: string };
  }
).scripts.install;

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-install-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const noHeaders = path.join(tmp, 'no-openblas-include');
mkdirSync(noHeaders);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Environment of a child: the test's own, minus choices CI or the user may have set. */
function env(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return {
    ...process.env,
    STEERGUARD_BACKEND: '',
    STEERGUARD_NATIVE: '',
    STEERGUARD_CFLAGS: '',
    STEERGUARD_DEBUG: '',
    ...extra,
  };
}

function sh(command: string, extra: NodeJS.ProcessEnv): Run {
  const r = spawnSync('sh', ['-c', command], {
    cwd: ROOT,
    encoding: 'utf8',
    env: env(extra),
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function cli(args: string[], extra: NodeJS.ProcessEnv): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    cwd: ROOT,
    input: '',
    encoding: 'utf8',
    env: env(extra),
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const WARNING = /WARNING: the native engine was not built/;
const NOTICE = /native engine unavailable .*reference backend.*libopenblas-dev/;

describe('install without the native build tools', () => {
  const buildDir = path.join(tmp, 'build-no-headers');

  it('the install script succeeds without OpenBLAS headers, with one warning paragraph', () => {
    const r = sh(INSTALL_SCRIPT, { STEERGUARD_BUILD_DIR: buildDir, STEERGUARD_OPENBLAS_INCLUDE: noHeaders });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, WARNING);
    assert.match(r.stderr, /holds no OpenBLAS cblas\.h/);
    assert.match(r.stderr, /apt-get install build-essential libopenblas-dev/);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one paragraph');
    assert.equal(existsSync(path.join(buildDir, 'steerguard-native.json')), false);
  });

  it('the install script succeeds without a C compiler', () => {
    const r = sh(INSTALL_SCRIPT, {
      STEERGUARD_BUILD_DIR: path.join(tmp, 'build-no-cc'),
      STEERGUARD_CC: path.join(tmp, 'no-such-cc'),
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, WARNING);
    assert.match(r.stderr, /could not run the C compiler/);
  });

  it('a build by hand still fails without OpenBLAS headers', () => {
    const r = sh('node scripts/build-native.mjs', {
      STEERGUARD_BUILD_DIR: path.join(tmp, 'build-by-hand'),
      STEERGUARD_OPENBLAS_INCLUDE: noHeaders,
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /building the native engine failed: .*holds no OpenBLAS cblas\.h/);
  });

  it(
    '`steerguard info` then runs on the reference backend and says so in one line',
    { skip: missingModel(SMOLLM2_GGUF) },
    () => {
      const r = cli(['info', SMOLLM2_GGUF], { STEERGUARD_BUILD_DIR: buildDir });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /layers\s+30/);
      const notices = r.stderr.split('\n').filter((l) => /native engine unavailable/.test(l));
      assert.equal(notices.length, 1, r.stderr);
      assert.match(notices[0], NOTICE);
      assert.match(r.stderr, /on reference \(plain TypeScript/);
    },
  );

  it(
    'STEERGUARD_BACKEND=native is an error when the engine is not built',
    { skip: missingModel(SMOLLM2_GGUF) },
    () => {
      const r = cli(['info', SMOLLM2_GGUF], { STEERGUARD_BUILD_DIR: buildDir, STEERGUARD_BACKEND: 'native' });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /native engine: not built: .*build-native/);
      assert.equal(r.stdout, '');
    },
  );

  it(
    'STEERGUARD_BACKEND=reference runs on the reference backend without the notice',
    { skip: missingModel(SMOLLM2_GGUF) },
    () => {
      const r = cli(['info', SMOLLM2_GGUF], { STEERGUARD_BACKEND: 'reference' });
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /native engine unavailable/);
      assert.match(r.stderr, /on reference \(plain TypeScript/);
    },
  );

  it('an unknown STEERGUARD_BACKEND is an error', () => {
    const saved = process.env.STEERGUARD_BACKEND;
    process.env.STEERGUARD_BACKEND = 'gpu';
    try {
      assert.throws(
        () => loadBackend(),
        (e: unknown) => e instanceof SteerguardError && /auto, native, reference/.test(e.message),
      );
    } finally {
      if (saved === undefined) delete process.env.STEERGUARD_BACKEND;
      else process.env.STEERGUARD_BACKEND = saved;
    }
  });
});

describe('portable builds, one per CPU level', () => {
  const buildDir = path.join(tmp, 'build-real');

  it('builds every level with no -march=native, writes the list, and keeps no stale binary', () => {
    mkdirSync(buildDir);
    writeFileSync(path.join(buildDir, 'steerguard.node'), 'a build of an older layout');
    const r = sh('node scripts/build-native.mjs', { STEERGUARD_BUILD_DIR: buildDir });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /-march=native/);
    const manifest = JSON.parse(readFileSync(path.join(buildDir, 'steerguard-native.json'), 'utf8')) as {
      variants: { file: string; level: string; requires: string[] }[];
    };
    const levels = manifest.variants.map((v) => v.level);
    assert.deepEqual(levels, process.arch === 'x64' ? ['x86-64-v3', 'x86-64'] : ['portable']);
    assert.deepEqual(manifest.variants.at(-1)?.requires, [], 'the last level runs on any CPU');
    for (const v of manifest.variants) assert.ok(existsSync(path.join(buildDir, v.file)), v.file);
    assert.equal(existsSync(path.join(buildDir, 'steerguard.node')), false);
    const again = sh('node scripts/build-native.mjs', { STEERGUARD_BUILD_DIR: buildDir });
    assert.match(again.stdout, /is up to date/);
    const custom = sh('node scripts/build-native.mjs', {
      STEERGUARD_BUILD_DIR: buildDir,
      STEERGUARD_CFLAGS: '-O1',
    });
    assert.equal(custom.code, 0, custom.stderr);
    assert.match(custom.stdout, /cc -O1 /);
    assert.doesNotMatch(custom.stdout, /is up to date/, 'changed flags rebuild');
  });

  it(
    'at install time a level the compiler rejects is left out, with a warning; by hand it fails',
    {
      skip: process.arch === 'x64' ? undefined : 'the levels are x86-64 ones',
    },
    () => {
      const cc = path.join(tmp, 'cc-without-v3');
      writeFileSync(
        cc,
        '#!/bin/sh\ncase "$*" in *x86-64-v3*) echo "cc: error: bad value for -march" >&2; exit 1;; esac\nexec cc "$@"\n',
        { mode: 0o755 },
      );
      const dir = path.join(tmp, 'build-old-compiler');
      const byHand = sh('node scripts/build-native.mjs', { STEERGUARD_BUILD_DIR: dir, STEERGUARD_CC: cc });
      assert.equal(byHand.code, 1);
      assert.match(byHand.stderr, /status 1 building the x86-64-v3 level/);
      assert.deepEqual(readdirSync(dir), [], 'no half-done build is left behind');
      const r = sh(INSTALL_SCRIPT, { STEERGUARD_BUILD_DIR: dir, STEERGUARD_CC: cc });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /WARNING: .*x86-64-v3 level\. Built only x86-64:/);
      const manifest = JSON.parse(readFileSync(path.join(dir, 'steerguard-native.json'), 'utf8')) as {
        variants: { level: string }[];
      };
      assert.deepEqual(
        manifest.variants.map((v) => v.level),
        ['x86-64'],
      );
    },
  );

  /** A build folder listing `variants` (each a copy of a built binary) in preference order. */
  function fakeBuild(name: string, variants: { level: string; requires: string[] }[]): string {
    const built = JSON.parse(readFileSync(path.join(buildDir, 'steerguard-native.json'), 'utf8')) as {
      variants: { file: string }[];
    };
    const dir = path.join(tmp, name);
    mkdirSync(dir);
    const listed = variants.map((v) => {
      const file = `steerguard-${v.level}.node`;
      copyFileSync(path.join(buildDir, built.variants[0].file), path.join(dir, file));
      return { file, ...v };
    });
    writeFileSync(path.join(dir, 'steerguard-native.json'), JSON.stringify({ variants: listed }));
    return dir;
  }

  function withBuildDir<T>(dir: string, f: () => T): T {
    const saved = process.env.STEERGUARD_BUILD_DIR;
    process.env.STEERGUARD_BUILD_DIR = dir;
    try {
      return f();
    } finally {
      if (saved === undefined) delete process.env.STEERGUARD_BUILD_DIR;
      else process.env.STEERGUARD_BUILD_DIR = saved;
    }
  }

  it('loads the first level whose CPU flags are all present', () => {
    const dir = fakeBuild('build-pick', [
      { level: 'needs-a-missing-flag', requires: ['no_such_cpu_flag'] },
      { level: 'any-cpu', requires: [] },
    ]);
    const be = withBuildDir(dir, () => loadNativeBackend({ threads: 1 }));
    assert.equal(be.level, 'any-cpu');
    assert.match(be.name, /^native \(OpenBLAS [\d.]+, any-cpu, /);
    assert.throws(
      () => withBuildDir(dir, () => loadBackend({ choice: 'auto', threads: 0 })),
      (e: unknown) => e instanceof SteerguardError && !(e instanceof NativeUnavailableError),
      'a bad thread count is an error, not a reason to fall back',
    );
  });

  it('no level for this CPU: native is unavailable, and auto falls back to the reference backend', () => {
    const dir = fakeBuild('build-none-fits', [
      { level: 'needs-a-missing-flag', requires: ['no_such_cpu_flag'] },
    ]);
    withBuildDir(dir, () => {
      assert.throws(
        () => loadNativeBackend({ threads: 1 }),
        (e: unknown) => e instanceof NativeUnavailableError && /none of the built levels/.test(e.message),
      );
      assert.ok(loadBackend({ choice: 'auto', threads: 1 }) instanceof ReferenceBackend);
    });
  });

  it('a build that does not load: native is unavailable, and auto falls back', () => {
    const dir = path.join(tmp, 'build-broken');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'steerguard-any.node'), 'not a shared library');
    writeFileSync(
      path.join(dir, 'steerguard-native.json'),
      JSON.stringify({ variants: [{ file: 'steerguard-any.node', level: 'any', requires: [] }] }),
    );
    withBuildDir(dir, () => {
      assert.throws(
        () => loadNativeBackend({ threads: 1 }),
        (e: unknown) =>
          e instanceof NativeUnavailableError && /cannot load .*steerguard-any\.node/.test(e.message),
      );
      assert.ok(loadBackend({ choice: 'auto', threads: 1 }) instanceof ReferenceBackend);
    });
  });
});
