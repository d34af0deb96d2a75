/**
 * Acceptance: steerguard as another project installs it. `npm pack` makes the tarball, a fresh
 * project outside the repo installs it (`npm install --offline`), and a TypeScript file there that
 * imports `runAudit` and the types it needs from 'steerguard' type-checks with NodeNext settings,
 * and so does the README's runAudit example. Nothing runs a model: the type check is the
 * acceptance.
 *
 * The install is offline, so steerguard's own dependencies must not need the registry: the test
 * copies the versions this checkout has installed into the project first (npm then only unpacks
 * the tarball and builds the native engine; the optional node-llama-cpp is left out).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  cpSync,
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
import { after, test } from 'node:test';

import { ROOT } from '../util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-package-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function run(cmd: string, args: readonly string[], cwd: string): { code: number | null; output: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, output: `${r.stdout}\n${r.stderr}` };
}

/** The folders under node_modules/ that steerguard's runtime dependencies live in. */
function runtimeDependencyDirs(): string[] {
  const ls = run('npm', ['ls', '--omit=dev', '--omit=optional', '--all', '--parseable'], ROOT);
  const top = new Set<string>();
  for (const line of ls.output.split('\n')) {
    const rel = path.relative(path.join(ROOT, 'node_modules'), line.trim());
    if (line.trim() === '' || rel.startsWith('..') || path.isAbsolute(rel)) continue;
    const parts = rel.split(path.sep);
    // Nested node_modules come along with their parent package.
    top.add(parts[0].startsWith('@') ? path.join(parts[0], parts[1]) : parts[0]);
  }
  return [...top];
}

const CONSUMER = `
import {
  Model,
  auditSettings,
  runAudit,
  STEP_NAMES,
  type AuditOptions,
  type AuditOutcome,
  type AuditSettings,
  type ProgressReporter,
  type Reporter,
  type StepName,
} from 'steerguard';

const reporter: Reporter = {
  info: (message: string) => console.error(message),
  warn: (message: string, cause?: unknown) => console.error('warning:', message, cause ?? ''),
  progress: (label: string, unit: string): ProgressReporter => ({
    update: (done: number, total: number) => console.error(label, done, '/', total, unit),
    finish: () => {},
  }),
};

export async function audit(modelPath: string, outDir: string): Promise<AuditOutcome> {
  const settings: AuditSettings = auditSettings({ nEval: 8, redact: true });
  const steps: StepName[] = STEP_NAMES.filter((s) => s !== 'attack');
  const model = await Model.load(modelPath);
  const options: AuditOptions = { model, outDir, settings, steps, reporter, signal: new AbortController().signal };
  const outcome = await runAudit(options);
  const html: string = outcome.files.html;
  const summary: readonly string[] = outcome.report.summary;
  console.log(html, summary.length, outcome.failed.length);
  return outcome;
}

export async function wrong(model: Model): Promise<void> {
  // @ts-expect-error settings are required: the types are real, not any
  await runAudit({ model, outDir: 'x' });
}
`;

test('runAudit type-checks in a project that installs the packed package', { timeout: 300_000 }, () => {
  assert.ok(
    existsSync(path.join(ROOT, 'dist', 'src', 'index.d.ts')),
    'build first (npx tsc -p tsconfig.json)',
  );
  const pack = run('npm', ['pack', '--ignore-scripts', '--pack-destination', tmp], ROOT);
  assert.equal(pack.code, 0, pack.output);
  const tarball = readdirSync(tmp).find((f) => /^steerguard-.*\.tgz$/.test(f));
  assert.ok(tarball, pack.output);

  const project = path.join(tmp, 'consumer');
  mkdirSync(path.join(project, 'node_modules'), { recursive: true });
  for (const dir of runtimeDependencyDirs())
    cpSync(path.join(ROOT, 'node_modules', dir), path.join(project, 'node_modules', dir), {
      recursive: true,
    });
  writeFileSync(
    path.join(project, 'package.json'),
    JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }),
  );
  const install = run(
    'npm',
    // --omit=optional: node-llama-cpp (bench only) would otherwise install from the npm cache
    // where CI's `npm ci` left it, and run its own install script.
    ['install', '--offline', '--no-audit', '--no-fund', '--omit=optional', path.join(tmp, tarball)],
    project,
  );
  assert.equal(install.code, 0, install.output);
  assert.ok(existsSync(path.join(project, 'node_modules', 'steerguard', 'dist', 'src', 'index.d.ts')));

  writeFileSync(path.join(project, 'audit.ts'), CONSUMER);
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const example = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)]
    .map((m) => m[1])
    .find((c) => c.includes('runAudit('));
  assert.ok(example, 'README.md has a runAudit example');
  writeFileSync(path.join(project, 'readme.ts'), example);
  writeFileSync(
    path.join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: ['node'],
        typeRoots: [path.join(ROOT, 'node_modules', '@types')],
      },
      files: ['audit.ts', 'readme.ts'],
    }),
  );
  const tsc = run(
    process.execPath,
    [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'],
    project,
  );
  assert.equal(tsc.code, 0, tsc.output);
});
