/**
 * `steerguard direction compute`, then `eval refusal` on held-out and fitted prompts, on the real
 * SmolLM2 GGUF and the shared datasets (skipped, saying why, when either is missing). Harmful
 * prompts are data: nothing here prints them.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import type { CliCommand } from '../../src/cli/commands/common.js';
import { directionCommand } from '../../src/cli/commands/direction.js';
import { evalCommand } from '../../src/cli/commands/eval.js';
import { ControlVector } from '../../src/steering/control-vector.js';
import { runCommand } from '../util/cli.js';
import { ROOT, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-eval-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const evalCli = (args: string[], cmd: CliCommand = evalCommand) => runCommand(cmd, args);

const DATA = process.env.STEERGUARD_DATA ?? path.join(ROOT, '..', 'shared', 'datasets');
const REAL_SKIP =
  missingModel(SMOLLM2_GGUF) ??
  (existsSync(path.join(DATA, 'advbench')) ? undefined : `no datasets at ${DATA}`);

// Small sizes keep this to seconds; the full-size numbers are in docs/EVALUATION.md.
describe('SmolLM2: direction compute, then eval on held-out and fitted prompts', { skip: REAL_SKIP }, () => {
  const dir = path.join(tmp, 'smol-refusal.gguf');
  const common = ['--data-dir', DATA, '--threads', '2'];

  test('direction compute writes a control vector with scores and fitted ids', async () => {
    const r = await evalCli(
      [
        'compute',
        '-m',
        SMOLLM2_GGUF,
        '--out',
        dir,
        '--n-train',
        '4',
        '--n-val',
        '2',
        '--layers',
        '10,12',
        '--positions',
        '-1',
        '--json',
        ...common,
      ],
      directionCommand,
    );
    assert.equal(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as {
      chosen: { layer: number; controlVectorLayer: number };
      candidates: unknown[];
    };
    assert.equal(rep.candidates.length, 2);
    assert.ok([10, 12].includes(rep.chosen.layer));
    const cv = ControlVector.load(dir);
    assert.deepEqual(cv.layers, [rep.chosen.controlVectorLayer]);
    assert.equal((cv.metadata.get('steerguard.fitted_ids') as string[]).length, 12);
    assert.equal(cv.modelHint, 'llama');
  });

  test('eval on the held-out part runs with the chat template; on fitted prompts it refuses to score', async () => {
    const out = path.join(tmp, 'smol.jsonl');
    const args = [
      'refusal',
      '-m',
      SMOLLM2_GGUF,
      '--sets',
      'advbench',
      '--limit',
      '2',
      '--max-tokens',
      '6',
      ...common,
    ];
    const ok = await evalCli([
      ...args,
      '--part',
      'test',
      '--steer',
      'ablate',
      '--vector',
      dir,
      '--out',
      out,
      '--redact',
      '--json',
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    const rows = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(rows.length, 2);
    assert.ok(rows.every((x) => !('response' in x) && (x.responseTokens as number) > 0));
    const leak = await evalCli([...args, '--part', 'train', '--steer', 'ablate', '--vector', dir]);
    assert.equal(leak.code, 1);
    assert.match(leak.stderr, /were used to fit the steering artefact/);
  });
});
