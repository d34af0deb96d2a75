/** Test helpers: the CLI spawned as a user runs it, or one command run in-process. */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { CliCommand } from '../../src/cli/commands/common.js';
import { CliOutput } from '../../src/cli/output.js';
import { ROOT } from './fixtures.js';

const MAIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Spawns `node dist/src/cli/main.js ARGS` from the repository root. */
export function cli(
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    cwd: ROOT,
    input: opts.input ?? '',
    encoding: 'utf8',
    env: { ...process.env, STEERGUARD_DEBUG: '', ...opts.env },
    timeout: opts.timeoutMs ?? 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs one command in-process, as main.ts would: exit code 1 and the message on a throw. */
export async function runCommand(
  cmd: CliCommand,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const out = new CliOutput({
    json: args.includes('--json'),
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
  });
  try {
    await cmd.run(args, out);
    return { code: 0, stdout, stderr };
  } catch (e) {
    return { code: 1, stdout, stderr: stderr + String((e as Error).message) };
  }
}

/** Three harmless prompts the CLI tests feed to commands. */
export const TEST_PROMPTS = [
  'How do plants grow?',
  'Write a short poem about the sea.',
  'What is the capital of France?',
];

/** Writes TEST_PROMPTS as `dir/name` (columns prompt, label) and returns the path. */
export function promptCsv(dir: string, name: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, `prompt,label\n${TEST_PROMPTS.map((p, i) => `"${p}",${i}`).join('\n')}\n`);
  return file;
}
