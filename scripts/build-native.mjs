#!/usr/bin/env node
/**
 * Builds the native engine: src/engine/native/steerguard.c -> build/steerguard.node.
 *
 * Runs at `npm install` and by hand (`node scripts/build-native.mjs [--force]`). It calls the C
 * compiler directly instead of node-gyp, because node-gyp downloads Node's headers and installs here
 * must work offline; the headers ship with Node itself (<prefix>/include/node).
 *
 * Needs: a C compiler with OpenMP (gcc or clang + libomp), OpenBLAS headers and library.
 * Debian/Ubuntu: apt-get install build-essential libopenblas-dev
 *
 * Environment overrides:
 *   STEERGUARD_CC               compiler (default: $CC, else cc)
 *   STEERGUARD_CFLAGS           replaces the optimisation flags (default: -O3 -march=native); use e.g.
 *                               "-O3 -march=x86-64-v3" for a binary that runs on other machines
 *   STEERGUARD_NODE_INCLUDE     directory holding node_api.h
 *   STEERGUARD_OPENBLAS_INCLUDE directory holding OpenBLAS's cblas.h
 *   STEERGUARD_LDFLAGS          extra linker flags, e.g. -L/opt/openblas/lib
 *   STEERGUARD_FORCE_BUILD=1    rebuild even when build/steerguard.node is up to date (same as --force)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'src', 'engine', 'native', 'steerguard.c');
const outDir = path.join(root, 'build');
const target = path.join(outDir, 'steerguard.node');
const FIX = 'On Debian/Ubuntu: sudo apt-get install build-essential libopenblas-dev';

function fail(what, detail) {
  console.error(`\nsteerguard: building the native engine failed: ${what}`);
  if (detail) console.error(detail.trimEnd());
  console.error(
    `\nThe engine needs a C compiler with OpenMP and OpenBLAS (headers and library).\n${FIX}\n` +
      'Then run: node scripts/build-native.mjs\n' +
      'Overrides: STEERGUARD_CC, STEERGUARD_CFLAGS, STEERGUARD_NODE_INCLUDE, STEERGUARD_OPENBLAS_INCLUDE, ' +
      'STEERGUARD_LDFLAGS (see the top of scripts/build-native.mjs).',
  );
  process.exit(1);
}

const splitFlags = (s) => s.trim().split(/\s+/).filter(Boolean);

function upToDate() {
  if (process.argv.includes('--force') || process.env.STEERGUARD_FORCE_BUILD === '1') return false;
  if (!existsSync(target)) return false;
  const built = statSync(target).mtimeMs;
  // a changed build recipe can change the binary as much as a changed source
  return built > statSync(source).mtimeMs && built > statSync(fileURLToPath(import.meta.url)).mtimeMs;
}

function nodeInclude() {
  const candidates = process.env.STEERGUARD_NODE_INCLUDE
    ? [process.env.STEERGUARD_NODE_INCLUDE]
    : [
        path.resolve(path.dirname(process.execPath), '..', 'include', 'node'),
        '/usr/include/node',
        '/usr/local/include/node',
      ];
  const dir = candidates.find((d) => existsSync(path.join(d, 'node_api.h')));
  if (!dir) {
    fail(
      `node_api.h not found (looked in ${candidates.join(', ')})`,
      "Node's C headers come with the official Node.js builds; distribution packages put them in a " +
        'separate package (Debian: libnode-dev), or set STEERGUARD_NODE_INCLUDE.',
    );
  }
  return dir;
}

// OpenBLAS's own cblas.h declares openblas_set_num_threads; netlib's does not, and a distribution
// may have both, so a header is accepted only if it is OpenBLAS's.
function isOpenblasHeader(dir) {
  const h = path.join(dir, 'cblas.h');
  if (!existsSync(h)) return false;
  try {
    return readFileSync(h, 'utf8').includes('openblas_');
  } catch {
    return false;
  }
}

function pkgConfig(args) {
  const r = spawnSync('pkg-config', [...args, 'openblas'], { encoding: 'utf8' });
  return r.status === 0 ? splitFlags(r.stdout) : null;
}

function openblasFlags() {
  const ldExtra = splitFlags(process.env.STEERGUARD_LDFLAGS ?? '');
  if (process.env.STEERGUARD_OPENBLAS_INCLUDE) {
    return { cflags: [`-I${process.env.STEERGUARD_OPENBLAS_INCLUDE}`], libs: [...ldExtra, '-lopenblas'] };
  }
  const pcI = pkgConfig(['--cflags']);
  const pcL = pkgConfig(['--libs']);
  if (pcI && pcL) {
    const dirs = pcI.filter((f) => f.startsWith('-I')).map((f) => f.slice(2));
    if (dirs.length === 0 || dirs.some(isOpenblasHeader)) {
      const rpath = pcL
        .filter((f) => f.startsWith('-L') && !f.startsWith('-L/usr/lib'))
        .map((f) => `-Wl,-rpath,${f.slice(2)}`);
      return { cflags: pcI, libs: [...ldExtra, ...pcL, ...rpath] };
    }
  }
  const candidates = ['/usr/include/openblas', '/usr/local/include/openblas'];
  for (const base of ['/usr/include', '/usr/local/include']) {
    let entries;
    try {
      entries = readdirSync(base, { withFileTypes: true });
    } catch {
      continue;
    }
    // multiarch variants, e.g. /usr/include/x86_64-linux-gnu/openblas-pthread
    for (const e of entries) {
      if (!e.isDirectory() || !e.name.includes('-linux-')) continue;
      for (const v of ['openblas-pthread', 'openblas-openmp', 'openblas-serial', 'openblas', '.']) {
        candidates.push(path.join(base, e.name, v));
      }
    }
  }
  candidates.push(
    '/opt/homebrew/opt/openblas/include',
    '/usr/local/opt/openblas/include',
    '/usr/include',
    '/usr/local/include',
  );
  const dir = candidates.find(isOpenblasHeader);
  if (!dir) fail(`OpenBLAS's cblas.h not found (looked in ${candidates.join(', ')})`);
  const libs = [...ldExtra];
  const libDir = path.join(path.dirname(dir), 'lib');
  if (dir.includes('/opt/') && existsSync(libDir)) libs.push(`-L${libDir}`, `-Wl,-rpath,${libDir}`);
  libs.push('-lopenblas');
  return { cflags: [`-I${dir}`], libs };
}

function build() {
  const cc = process.env.STEERGUARD_CC || process.env.CC || 'cc';
  const opt = splitFlags(process.env.STEERGUARD_CFLAGS ?? '-O3 -march=native');
  const blas = openblasFlags();
  const darwin = process.platform === 'darwin' ? ['-undefined', 'dynamic_lookup'] : [];
  mkdirSync(outDir, { recursive: true });
  // compile to a private name and rename, so a process loading the addon never sees half a file
  const tmp = `${target}.${process.pid}.tmp`;
  const args = [
    ...opt,
    '-std=gnu11',
    '-Wall',
    '-fopenmp',
    '-fPIC',
    '-shared',
    `-I${nodeInclude()}`,
    ...blas.cflags,
    source,
    '-o',
    tmp,
    ...darwin,
    ...blas.libs,
    '-lm',
  ];
  console.log(`steerguard: ${cc} ${args.join(' ')}`);
  const t0 = performance.now();
  const r = spawnSync(cc, args, { encoding: 'utf8' });
  if (r.error) {
    fail(`could not run the C compiler '${cc}' (${r.error.message})`);
  }
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.status !== 0) {
    rmSync(tmp, { force: true });
    fail(`${cc} exited with status ${r.status}`);
  }
  renameSync(tmp, target);
  console.log(
    `steerguard: built ${path.relative(root, target)} in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

if (upToDate()) {
  console.log(`steerguard: ${path.relative(root, target)} is up to date`);
} else {
  build();
}
