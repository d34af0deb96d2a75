#!/usr/bin/env node
/**
 * Builds the native engine: src/engine/native/steerguard.c -> build/steerguard-<level>.node, one
 * binary per CPU level, plus build/steerguard-native.json, the list src/engine/native.ts picks from.
 *
 * Runs at `npm install` as `node scripts/build-native.mjs --if-possible` and by hand
 * (`node scripts/build-native.mjs [--force]`). It calls the C compiler directly instead of node-gyp,
 * because node-gyp downloads Node's headers and installs must work offline; the headers ship with
 * Node itself (<prefix>/include/node).
 *
 * CPU levels: no -march=native, so a build runs on any machine of the architecture. On x86-64 the
 * same C file is compiled twice, for x86-64 (every x86-64 CPU) and x86-64-v3 (AVX2, FMA, F16C: the
 * level the hand-written kernels use); the loader takes the best level the CPU's /proc/cpuinfo flags
 * allow. Elsewhere (aarch64, ...) one portable -O3 build. docs/ENGINE.md says why this design.
 *
 * Needs: a C compiler with OpenMP (gcc or clang + libomp), OpenBLAS headers and library.
 * Debian/Ubuntu: apt-get install build-essential libopenblas-dev
 *
 * --if-possible (the install script): when the build cannot be done, print one warning paragraph and
 * exit 0; steerguard then runs on its TypeScript reference backend. Without it, a failed build exits 1.
 *
 * Environment overrides:
 *   STEERGUARD_CC               compiler (default: $CC, else cc)
 *   STEERGUARD_CFLAGS           one build with these flags instead of the per-level builds, e.g.
 *                               "-O3 -march=native" for a binary that only has to run on this machine
 *   STEERGUARD_NODE_INCLUDE     directory holding node_api.h
 *   STEERGUARD_OPENBLAS_INCLUDE directory holding OpenBLAS's cblas.h (no search when set)
 *   STEERGUARD_LDFLAGS          extra linker flags, e.g. -L/opt/openblas/lib
 *   STEERGUARD_BUILD_DIR        output directory (default: <package root>/build); the loader reads it too
 *   STEERGUARD_FORCE_BUILD=1    rebuild even when the build is up to date (same as --force)
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'src', 'engine', 'native', 'steerguard.c');
const outDir = path.resolve(process.env.STEERGUARD_BUILD_DIR || path.join(root, 'build'));
const MANIFEST = 'steerguard-native.json';
const manifestPath = path.join(outDir, MANIFEST);
const FIX = 'On Debian/Ubuntu: sudo apt-get install build-essential libopenblas-dev';
const ifPossible = process.argv.includes('--if-possible');

/** A build step that cannot be done; `detail` is what the compiler or the search said. */
class BuildError extends Error {
  constructor(what, detail = '') {
    super(what);
    this.detail = detail;
  }
}

/**
 * The CPU levels built on x86-64, best first. `requires` are the /proc/cpuinfo flags of the level
 * (x86-64-v2 and -v3 of the psABI: LZCNT shows as "abm", SSE3 as "pni"); Linux lists AVX flags only
 * when the kernel saves AVX state, so a listed flag is usable.
 */
const X86_LEVELS = [
  {
    level: 'x86-64-v3',
    cflags: ['-O3', '-march=x86-64-v3'],
    requires: [
      ...['cx16', 'lahf_lm', 'popcnt', 'pni', 'sse4_1', 'sse4_2', 'ssse3'],
      ...['abm', 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'movbe', 'xsave'],
    ],
  },
  { level: 'x86-64', cflags: ['-O3', '-march=x86-64', '-mtune=generic'], requires: [] },
];

const splitFlags = (s) => s.trim().split(/\s+/).filter(Boolean);

function plannedVariants() {
  const custom = process.env.STEERGUARD_CFLAGS;
  if (custom !== undefined && custom.trim() !== '') {
    return [{ level: 'custom', cflags: splitFlags(custom), requires: [] }];
  }
  if (process.arch === 'x64') return X86_LEVELS;
  return [{ level: 'portable', cflags: ['-O3'], requires: [] }];
}

const fileOf = (v) => `steerguard-${v.level}.node`;

function readManifest() {
  try {
    return JSON.parse(readFileSync(manifestPath, 'utf8'));
  } catch {
    return null;
  }
}

function upToDate(variants) {
  if (process.argv.includes('--force') || process.env.STEERGUARD_FORCE_BUILD === '1') return false;
  const m = readManifest();
  if (!m || !existsSync(manifestPath)) return false;
  const built = statSync(manifestPath).mtimeMs;
  // a changed build recipe can change the binary as much as a changed source
  if (!(built > statSync(source).mtimeMs && built > statSync(fileURLToPath(import.meta.url)).mtimeMs)) {
    return false;
  }
  const want = JSON.stringify(variants.map((v) => [fileOf(v), v.cflags]));
  const have = JSON.stringify((m.variants ?? []).map((v) => [v.file, v.cflags]));
  return want === have && m.variants.every((v) => existsSync(path.join(outDir, v.file)));
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
    throw new BuildError(
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
  const given = process.env.STEERGUARD_OPENBLAS_INCLUDE;
  if (given) {
    if (!isOpenblasHeader(given)) {
      throw new BuildError(`STEERGUARD_OPENBLAS_INCLUDE=${given} holds no OpenBLAS cblas.h`);
    }
    return { cflags: [`-I${given}`], libs: [...ldExtra, '-lopenblas'] };
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
  if (!dir) throw new BuildError(`OpenBLAS's cblas.h not found (looked in ${candidates.join(', ')})`);
  const libs = [...ldExtra];
  const libDir = path.join(path.dirname(dir), 'lib');
  if (dir.includes('/opt/') && existsSync(libDir)) libs.push(`-L${libDir}`, `-Wl,-rpath,${libDir}`);
  libs.push('-lopenblas');
  return { cflags: [`-I${dir}`], libs };
}

function compile(cc, args) {
  return new Promise((resolve) => {
    const child = spawn(cc, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', (error) => resolve({ error, stderr }));
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

async function build(variants) {
  const cc = process.env.STEERGUARD_CC || process.env.CC || 'cc';
  // -ffp-contract=off: the compiler may not fuse a*b+c on its own. Where it did, the same C line
  // rounded differently in the kernels specialised for one and for four rows, so a sequence's
  // reply depended on its batch; FMAs are written out as intrinsics where they are wanted.
  const common = [
    '-std=gnu11',
    '-Wall',
    '-ffp-contract=off',
    '-fopenmp',
    '-fPIC',
    '-shared',
    `-I${nodeInclude()}`,
  ];
  const blas = openblasFlags();
  const darwin = process.platform === 'darwin' ? ['-undefined', 'dynamic_lookup'] : [];
  mkdirSync(outDir, { recursive: true });
  const t0 = performance.now();
  // compile to private names and rename, so a process loading the addon never sees half a file
  const jobs = variants.map((v) => {
    const tmp = path.join(outDir, `${fileOf(v)}.${process.pid}.tmp`);
    const args = [...v.cflags, ...common, ...blas.cflags, source, '-o', tmp, ...darwin, ...blas.libs, '-lm'];
    console.log(`steerguard: ${cc} ${args.join(' ')}`);
    return { v, tmp, result: compile(cc, args) };
  });
  const results = await Promise.all(jobs.map((j) => j.result));
  // the variants compile the same file, so their warnings are mostly the same text
  for (const text of new Set(results.map((r) => r.stderr).filter(Boolean))) process.stderr.write(text);
  const failures = jobs.flatMap((j, i) => {
    const r = results[i];
    if (!r.error && r.status === 0) return [];
    rmSync(j.tmp, { force: true });
    return [
      r.error
        ? `could not run the C compiler '${cc}' (${r.error.message})`
        : `${cc} exited with status ${r.status} building the ${j.v.level} level`,
    ];
  });
  const builtJobs = jobs.filter((_, i) => !results[i].error && results[i].status === 0);
  // An old compiler may know no -march=x86-64-v3; at install time the levels that did build still
  // beat the reference backend. By hand (and in CI) every level must build.
  if (failures.length > 0 && (!ifPossible || builtJobs.length === 0)) {
    for (const j of builtJobs) rmSync(j.tmp, { force: true });
    throw new BuildError(failures[0]);
  }
  for (const j of builtJobs) renameSync(j.tmp, path.join(outDir, fileOf(j.v)));
  const built = builtJobs.map((j) => j.v);
  const manifest = {
    source: path.relative(root, source),
    variants: built.map((v) => ({ file: fileOf(v), level: v.level, cflags: v.cflags, requires: v.requires })),
  };
  const tmpManifest = `${manifestPath}.${process.pid}.tmp`;
  writeFileSync(tmpManifest, `${JSON.stringify(manifest, null, 2)}\n`);
  renameSync(tmpManifest, manifestPath);
  // binaries of other levels or of older builds (build/steerguard.node) would only mislead
  const keep = new Set(manifest.variants.map((v) => v.file));
  for (const name of readdirSync(outDir)) {
    if (/^steerguard.*\.node$/.test(name) && !keep.has(name))
      rmSync(path.join(outDir, name), { force: true });
  }
  if (failures.length > 0) {
    console.warn(
      `\nsteerguard: WARNING: ${failures.join('; ')}. Built only ${built.map((v) => v.level).join(', ')}: ` +
        'it runs, slower than the missing level on CPUs that have it; a newer compiler (gcc 11+, clang 12+) ' +
        'builds every level.\n',
    );
  }
  console.log(
    `steerguard: built ${built.map((v) => fileOf(v)).join(', ')} in ${path.relative(root, outDir) || '.'} ` +
      `in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

function report(e) {
  const detail = e.detail ? ` ${e.detail.trim()}` : '';
  if (ifPossible) {
    console.warn(
      `\nsteerguard: WARNING: the native engine was not built: ${e.message}.${detail} ` +
        'steerguard still works, on its plain TypeScript reference backend, which is much slower (prompts ~50x, ' +
        'generation ~4x; README.md, "Set-up on a fresh machine"). For the fast path install a C compiler with OpenMP and ' +
        `OpenBLAS (${FIX}) and run \`npm rebuild steerguard\` (in a checkout: node scripts/build-native.mjs).\n`,
    );
    process.exit(0);
  }
  console.error(`\nsteerguard: building the native engine failed: ${e.message}`);
  if (e.detail) console.error(e.detail.trimEnd());
  console.error(
    `\nThe engine needs a C compiler with OpenMP and OpenBLAS (headers and library).\n${FIX}\n` +
      'Then run: node scripts/build-native.mjs\n' +
      'Overrides: STEERGUARD_CC, STEERGUARD_CFLAGS, STEERGUARD_NODE_INCLUDE, STEERGUARD_OPENBLAS_INCLUDE, ' +
      'STEERGUARD_LDFLAGS, STEERGUARD_BUILD_DIR (see the top of scripts/build-native.mjs).',
  );
  process.exit(1);
}

const variants = plannedVariants();
if (upToDate(variants)) {
  console.log(`steerguard: ${path.relative(root, manifestPath)} is up to date`);
} else {
  try {
    await build(variants);
  } catch (e) {
    if (!(e instanceof BuildError)) throw e;
    report(e);
  }
}
