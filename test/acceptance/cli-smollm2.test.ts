/**
 * The `steerguard` CLI end to end on the real SmolLM2 GGUF (skipped, saying why, when it is
 * missing): info, generate, activations and chat, each spawned as a user would. Prompt files here
 * hold benign text only.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { readSafetensorsHeader } from '../../src/formats/safetensors.js';
import { TEST_PROMPTS, cli, promptCsv as writePromptCsv } from '../util/cli.js';
import { SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const NEEDS_MODEL = { skip: missingModel(SMOLLM2_GGUF) };
const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const promptCsv = (name: string): string => writePromptCsv(tmp, name);

describe('steerguard CLI on SmolLM2-135M', NEEDS_MODEL, () => {
  it('info --json has 30 layers and every hook name', () => {
    const r = cli(['info', SMOLLM2_GGUF, '--json', '--threads', '2']);
    assert.equal(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout) as {
      layers: number;
      dModel: number;
      format: string;
      parameters: number;
      tokenizer: { chatTemplate: boolean };
      hooks: { count: number; names: string[] };
    };
    assert.equal(info.layers, 30);
    assert.equal(info.dModel, 576);
    assert.equal(info.format, 'gguf');
    assert.ok(info.parameters > 130e6 && info.parameters < 140e6, String(info.parameters));
    assert.equal(info.tokenizer.chatTemplate, true);
    assert.equal(info.hooks.count, 2 + 30 * 5 + 1);
    assert.ok(info.hooks.names.includes('blocks.29.hook_resid_post'));
  });

  it('generate: greedy is deterministic and --json is valid', () => {
    const args = [
      'generate',
      SMOLLM2_GGUF,
      'Name a colour.',
      '--max-tokens',
      '8',
      '--threads',
      '2',
      '--json',
    ];
    const runs = [cli(args), cli(args)];
    const parsed = runs.map((r) => {
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as {
        index: number;
        text: string;
        tokens: number[];
        finishReason: string;
      }[];
    });
    assert.equal(parsed[0].length, 1);
    assert.equal(parsed[0][0].index, 0);
    assert.ok(parsed[0][0].tokens.length > 0 && parsed[0][0].tokens.length <= 8);
    assert.ok(['stop', 'length'].includes(parsed[0][0].finishReason));
    const strip = (gs: (typeof parsed)[0]) =>
      gs.map(({ index, text, tokens, finishReason }) => ({ index, text, tokens, finishReason }));
    assert.deepEqual(strip(parsed[1]), strip(parsed[0]));
  });

  it('activations: [3, 576] per hook, prompt text never printed', () => {
    const csv = promptCsv('acts.csv');
    const out = path.join(tmp, 'acts.safetensors');
    const r = cli(['activations', SMOLLM2_GGUF, '--prompts', csv, '--out', out, '--threads', '2']);
    assert.equal(r.code, 0, r.stderr);
    const st = readSafetensorsHeader(out);
    const hooks = [...st.tensors.keys()];
    assert.equal(hooks.length, 30);
    for (let l = 0; l < 30; l++) {
      const t = st.tensors.get(`blocks.${l}.hook_resid_post`);
      assert.deepEqual(t?.shape, [3, 576]);
      assert.equal(t?.dtype, 'F32');
    }
    assert.ok(!existsSync(`${out}.partial`));
    for (const p of TEST_PROMPTS) assert.ok(!r.stdout.includes(p) && !r.stderr.includes(p));
    // A second run refuses to clobber the file.
    const again = cli(['activations', SMOLLM2_GGUF, '--prompts', csv, '--out', out]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already exists/);
  });

  it('activations: a run that fails before its first chunk leaves no .partial behind', () => {
    const csv = promptCsv('acts-fail.csv');
    const out = path.join(tmp, 'acts-fail.safetensors');
    const r = cli(['activations', SMOLLM2_GGUF, '--prompts', csv, '--out', out, '--positions', '500']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--positions 500 is out of range/);
    assert.ok(!existsSync(`${out}.partial`) && !existsSync(out));
    // So the corrected command starts cleanly, --overwrite or not.
    const fixed = cli(['activations', SMOLLM2_GGUF, '--prompts', csv, '--out', out, '--positions', '-1']);
    assert.equal(fixed.code, 0, fixed.stderr);
  });
  it('chat: two lines on stdin give two replies', () => {
    const r = cli(['chat', SMOLLM2_GGUF, '--max-tokens', '6', '--stop', '\\n', '--threads', '2'], {
      input: 'Hello!\nWhat is two plus two?\n',
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.split('\n').length - 1, 2, JSON.stringify(r.stdout));
  });
});
