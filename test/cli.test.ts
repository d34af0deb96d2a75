/**
 * The `steerguard` CLI end to end: each case spawns `node dist/src/cli/main.js` as a user would.
 * The cases on the real SmolLM2 model are in acceptance/cli-smollm2.test.ts. Prompt files here
 * hold benign text only.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { flagName } from '../src/cli/args.js';
import { COMMANDS } from '../src/cli/commands/index.js';
import { cli, promptCsv as writePromptCsv } from './util/cli.js';
import { ROOT } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const promptCsv = (name: string): string => writePromptCsv(tmp, name);

describe('steerguard CLI: usage', () => {
  it('--help lists every visible command', () => {
    const r = cli(['--help']);
    assert.equal(r.code, 0);
    for (const c of COMMANDS.filter((c) => !c.hidden))
      assert.match(r.stdout, new RegExp(`^  ${c.spec.name} `, 'm'));
    assert.doesNotMatch(r.stdout, /bench-worker/);
  });

  for (const c of COMMANDS) {
    it(`${c.spec.name} --help lists its options and examples`, () => {
      const r = cli([c.spec.name, '--help']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^Usage: steerguard ${c.spec.name} `));
      for (const key of Object.keys(c.spec.options)) assert.ok(r.stdout.includes(`--${flagName(key)}`), key);
      assert.ok(r.stdout.includes('--json'));
      assert.ok(c.hidden || c.spec.examples.length >= 2, 'at least two examples');
      for (const e of c.spec.examples) assert.ok(r.stdout.includes(e));
    });
  }

  it('--version prints the package version', () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = cli(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.trim(), `steerguard ${pkg.version}`);
  });

  it('an unknown command exits 2 with a suggestion', () => {
    const r = cli(['generat']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /error: unknown command 'generat' \(did you mean generate\?\)/);
  });

  it('a bad option exits 2 and names it, in JSON mode too', () => {
    const r = cli(['generate', 'm.gguf', 'hi', '--max-tokenz', '3']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option --max-tokenz .*did you mean --max-tokens/);
    const j = cli(['info', 'm.gguf', '--threads', 'x', '--json']);
    assert.equal(j.code, 2);
    assert.equal((JSON.parse(j.stdout) as { error: { exitCode: number } }).error.exitCode, 2);
  });

  it('a missing model exits 1 with error: ...', () => {
    const r = cli(['info', path.join(tmp, 'nothing.gguf')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: .*nothing\.gguf/m);
  });
});

describe('steerguard CLI: pull', () => {
  it('fails clearly when offline', () => {
    const r = cli(['pull', 'HuggingFaceTB/SmolLM2-135M-Instruct'], { env: { HF_HUB_OFFLINE: '1' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: cannot download HuggingFaceTB\/SmolLM2-135M-Instruct: HF_HUB_OFFLINE=1/m);
  });

  it('fails clearly when the Hub cannot be reached', () => {
    const r = cli(['pull', 'HuggingFaceTB/SmolLM2-135M-Instruct', '--json', '--cache-dir', tmp], {
      env: { HF_HUB_OFFLINE: '', HF_ENDPOINT: 'http://127.0.0.1:1' },
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: could not reach the Hugging Face Hub/m);
    assert.equal((JSON.parse(r.stdout) as { error: { exitCode: number } }).error.exitCode, 1);
  });
});

describe('steerguard CLI: activations checks before loading', () => {
  // The model path does not exist: had the model been loaded first, the error would name it.
  const noModel = path.join(tmp, 'no-such-model.gguf');

  it('a missing column exits non-zero, names the column and writes nothing', () => {
    const csv = promptCsv('col.csv');
    const out = path.join(tmp, 'col.safetensors');
    const r = cli(['activations', noModel, '--prompts', csv, '--column', 'goal', '--out', out]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /goal: no such column/);
    assert.ok(!existsSync(out) && !existsSync(`${out}.partial`));
  });

  it('a non-writable output exits non-zero before the model is loaded', () => {
    const csv = promptCsv('w.csv');
    const r = cli(['activations', noModel, '--prompts', csv, '--out', path.join(csv, 'x.safetensors')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cannot write .*x\.safetensors/);
    assert.doesNotMatch(r.stderr, /no-such-model/);
  });

  it('bad --positions and --hooks are refused before loading', () => {
    const csv = promptCsv('p.csv');
    const out = path.join(tmp, 'p.safetensors');
    assert.equal(
      cli(['activations', noModel, '--prompts', csv, '--out', out, '--positions', 'first']).code,
      2,
    );
    const r = cli(['activations', noModel, '--prompts', csv, '--out', out, '--hooks', 'blocks.1.resid']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--hooks: unknown hook/);
  });
});

describe('steerguard CLI: concept, monitor and eval checks before loading', () => {
  // As above: the model does not exist, so an error naming it means the model came first.
  const noModel = path.join(tmp, 'no-such-model.gguf');
  const missing = path.join(tmp, 'missing.safetensors');

  it('monitor with a missing concept file says so before loading the model', () => {
    const r = cli(['monitor', '-c', missing, '-m', noModel, 'How do plants grow?']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^error: --concept: .*missing\.safetensors does not exist$/m);
    assert.doesNotMatch(r.stderr, /no-such-model|ENOENT/);
  });

  it('eval and attack with a missing vector, concept or prompt column say so before loading', () => {
    const csv = promptCsv('eval.csv');
    const cases: [string[], RegExp][] = [
      [
        ['eval', 'refusal', '--sets', csv, '--steer', 'add', '--vector', missing],
        /--vector: .*does not exist/,
      ],
      [
        ['eval', 'refusal', '--sets', csv, '--steer', 'conditional', '--concept', missing],
        /--concept: .*does not exist/,
      ],
      [['eval', 'refusal', '--sets', `${csv}#goal`], /goal/],
      [
        ['attack', 'scav', '--prompts', csv, '--methods', 'scav', '--concept', missing],
        /--concept: .*does not exist/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = cli([...args, '-m', noModel]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /no-such-model/);
    }
  });

  it('--threshold is a probability in monitor and in eval, and says so', () => {
    for (const value of ['0', '1', '1.5', '-2']) {
      const r = cli(['monitor', '-c', missing, '-m', noModel, '--threshold', value, 'hi']);
      assert.equal(r.code, 2, value);
      assert.match(r.stderr, /--threshold/);
    }
    for (const name of ['monitor', 'eval']) {
      const help = cli([name, '--help']).stdout;
      const line = help.split('\n').find((l) => /^\s+--threshold </.test(l));
      assert.match(line ?? '', /probability/, `${name} --help`);
    }
  });

  it('help examples name concept files as concept train writes them (safetensors)', () => {
    for (const c of COMMANDS)
      for (const e of c.spec.examples)
        for (const m of e.matchAll(/(?:--concept|-c) (\S+)/g))
          assert.match(m[1], /\.safetensors$/, `${c.spec.name}: ${e}`);
  });
});
