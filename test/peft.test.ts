/**
 * PEFT adapter folders (src/training/peft.ts) against transformers + peft, on the tiny fixture
 * models: an adapter made by peft (test/fixtures/tiny/<arch>/peft/adapter/, by
 * scripts/reference/make_peft_fixtures.py) gives peft's logits in steerguard; an adapter written by
 * steerguard (peft/steerguard/, written here deterministically) keeps its bytes, reads back to the
 * same tensors under PEFT's keys, and gives in steerguard the logits peft computed from it. Bad
 * folders are refused with the file and key named.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { loadBackend } from '../src/engine/select.js';
import { FormatError, OptionError } from '../src/formats/errors.js';
import { readSafetensorsHeader, writeSafetensors } from '../src/formats/safetensors.js';
import type { ModelConfig } from '../src/model/config.js';
import { loadModelFiles } from '../src/model/load.js';
import type { LoraAdapter, LoraTarget } from '../src/model/lora.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import { createLora } from '../src/training/lora.js';
import {
  PEFT_CONFIG_FILE,
  PEFT_WEIGHTS_FILE,
  loadPeftAdapter,
  peftKey,
  savePeftAdapter,
} from '../src/training/peft.js';
import { FIXTURES, readFixture, relErr } from './util/fixtures.js';

const ARCHS = ['llama', 'qwen2', 'gemma3'];
/**
 * steerguard (fp32) against transformers + peft (float64), max |diff| / max |ref| over a
 * sequence's logits. Measured <= 1.3e-6 (docs/TRAINING.md).
 */
const PEFT_TOL = 1e-5;
const STEERGUARD_TARGETS: readonly LoraTarget[] = ['q', 'v', 'o', 'up', 'down'];

const backend = loadBackend();
const scratch = mkdtempSync(path.join(tmpdir(), 'steerguard-peft-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const tinyDir = (arch: string) => path.join(FIXTURES, 'tiny', arch);
const peftDir = (arch: string) => path.join(tinyDir(arch), 'peft');

/** The adapter steerguard writes to peft/steerguard/: rank 3, alpha 5, five targets, seeded. */
function steerguardAdapter(cfg: ModelConfig): LoraAdapter<Float32Array> {
  const adapter = createLora(
    cfg,
    { rank: 3, alpha: 5, targets: STEERGUARD_TARGETS, seed: 77 },
    (n) => new Float32Array(n),
  );
  const random = seededRandom(78);
  for (const layer of adapter.layers)
    for (const t of STEERGUARD_TARGETS) {
      const b = layer[t]!.b;
      for (let i = 0; i < b.length; i++) b[i] = Math.fround((2 * random() - 1) * 0.3);
    }
  return adapter;
}

/** Each fixture sequence's logits [T, V] with the model's enabled adapters. */
function logitsOf(model: Model, tokens: Float32Array, sequences: number): Float32Array[] {
  const T = tokens.length / sequences;
  const prompts = Array.from({ length: sequences }, (_, s) => ({
    tokens: Array.from(tokens.subarray(s * T, (s + 1) * T)),
  }));
  return model.run(prompts, { logits: 'all' }).logits;
}

function maxErr(got: Float32Array[], want: Float32Array): number {
  const n = want.length / got.length;
  return Math.max(...got.map((g, s) => relErr(g, want.subarray(s * n, (s + 1) * n))));
}

for (const arch of ARCHS)
  describe(`PEFT adapters: ${arch}`, () => {
    const fixture = readFixture(path.join(peftDir(arch), 'logits.safetensors'));
    const tokens = fixture.get('tokens')!;
    const sequences = tokens.shape[0];

    test("an adapter made by peft gives transformers + peft's logits", async (t) => {
      const model = await Model.load(tinyDir(arch), { weights: 'f32', backend });
      const adapter = loadPeftAdapter(path.join(peftDir(arch), 'adapter'), model.config);
      assert.equal(adapter.rank, 2);
      assert.equal(adapter.alpha, 4);
      assert.deepEqual(adapter.targets, ['q', 'k', 'v', 'o', 'gate', 'up', 'down']);
      const base = logitsOf(model, tokens.data, sequences);
      assert.ok(maxErr(base, fixture.get('base')!.data) <= PEFT_TOL);
      model.addAdapter(adapter);
      const err = maxErr(logitsOf(model, tokens.data, sequences), fixture.get('peft')!.data);
      t.diagnostic(`relative error against peft: ${err}`);
      assert.ok(err <= PEFT_TOL, `${err}`);
      // The adapter matters: without it the logits are far from peft's.
      assert.ok(maxErr(base, fixture.get('peft')!.data) > 0.05);
    });

    test('an adapter written by steerguard: the same bytes, the same tensors read back, PEFT keys, peft logits', async (t) => {
      const model = await Model.load(tinyDir(arch), { weights: 'f32', backend });
      const adapter = steerguardAdapter(model.config);
      const committed = path.join(peftDir(arch), 'steerguard');
      if (process.env.STEERGUARD_WRITE_FIXTURES === '1')
        savePeftAdapter(committed, adapter, model.config, { baseModel: `test/fixtures/tiny/${arch}` });
      const written = path.join(scratch, `${arch}-steerguard`);
      savePeftAdapter(written, adapter, model.config, { baseModel: `test/fixtures/tiny/${arch}` });
      for (const f of [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE])
        assert.deepEqual(readFileSync(path.join(written, f)), readFileSync(path.join(committed, f)), f);

      const keys = [...readSafetensorsHeader(path.join(written, PEFT_WEIGHTS_FILE)).tensors.keys()].sort();
      const wantKeys: string[] = [];
      for (let l = 0; l < model.config.nLayers; l++)
        for (const target of STEERGUARD_TARGETS)
          for (const which of ['a', 'b'] as const) wantKeys.push(peftKey(l, target, which));
      assert.deepEqual(keys, wantKeys.sort());
      assert.match(
        wantKeys[0],
        /^base_model\.model\.model\.layers\.0\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$/,
      );
      const config = JSON.parse(readFileSync(path.join(written, PEFT_CONFIG_FILE), 'utf8')) as Record<
        string,
        unknown
      >;
      assert.equal(config.peft_type, 'LORA');
      assert.equal(config.task_type, 'CAUSAL_LM');
      assert.deepEqual(config.target_modules, ['q_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj']);

      const back = loadPeftAdapter(written, model.config);
      assert.deepEqual(back, adapter);

      const fromPeft = fixture.get('steerguard');
      assert.ok(fromPeft, 'logits.safetensors has no steerguard logits: run make_peft_fixtures.py');
      model.addAdapter(back);
      const err = maxErr(logitsOf(model, tokens.data, sequences), fromPeft.data);
      t.diagnostic(`relative error against peft loading steerguard's adapter: ${err}`);
      assert.ok(err <= PEFT_TOL, `${err}`);
    });
  });

describe('PEFT adapters: bad folders', () => {
  const source = path.join(peftDir('llama'), 'adapter');
  const llama = loadModelFiles(tinyDir('llama'), { weights: 'f32' }).config;
  let n = 0;
  /** A copy of the llama fixture adapter with its config changed by `edit`. */
  function variant(edit: (config: Record<string, unknown>) => void): string {
    const dir = path.join(scratch, `bad-${n++}`);
    cpSync(source, dir, { recursive: true });
    const file = path.join(dir, PEFT_CONFIG_FILE);
    const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    edit(config);
    writeFileSync(file, JSON.stringify(config));
    return dir;
  }
  function refused(dir: string, file: string, field: RegExp | string): void {
    assert.throws(
      () => loadPeftAdapter(dir, llama),
      (e: unknown) => {
        assert.ok(e instanceof FormatError, String(e));
        assert.equal(e.file, path.join(dir, file));
        if (typeof field === 'string') assert.equal(e.field, field);
        else assert.match(e.field, field);
        return true;
      },
    );
  }

  test('options steerguard does not implement are refused by name', () => {
    const cases: [string, unknown][] = [
      ['use_dora', true],
      ['use_rslora', true],
      ['bias', 'all'],
      ['lora_bias', true],
      ['fan_in_fan_out', true],
      ['rank_pattern', { q_proj: 4 }],
      ['alpha_pattern', { q_proj: 4 }],
      ['modules_to_save', ['lm_head']],
      ['layers_to_transform', [0]],
      ['some_future_option', { enabled: 1 }],
      ['peft_type', 'IA3'],
      ['task_type', 'SEQ_CLS'],
      ['r', 0],
      ['lora_alpha', 'four'],
      ['target_modules', ['q_proj', 'lm_head']],
      ['target_modules', '.*proj'],
    ];
    for (const [field, value] of cases)
      refused(
        variant((c) => (c[field] = value)),
        PEFT_CONFIG_FILE,
        field,
      );
    // An unknown option left at a default value changes nothing and is accepted.
    loadPeftAdapter(
      variant((c) => (c.some_future_option = null)),
      llama,
    );
  });

  test('a missing, an unexpected or a mis-shaped tensor is refused with its key', () => {
    // Rank 3 in the config, rank-2 tensors in the file.
    refused(
      variant((c) => (c.r = 3)),
      PEFT_WEIGHTS_FILE,
      peftKey(0, 'q', 'a'),
    );
    // A target the file has no tensors for.
    const noTensors = variant(() => {});
    const tensors = readFixture(path.join(noTensors, PEFT_WEIGHTS_FILE));
    const without = [...tensors].filter(([k]) => !k.includes('layers.1.mlp.up_proj.lora_B'));
    writeSafetensors(
      path.join(noTensors, PEFT_WEIGHTS_FILE),
      without.map(([name, t]) => ({ name, dtype: 'F32', shape: t.shape, data: t.data })),
    );
    refused(noTensors, PEFT_WEIGHTS_FILE, peftKey(1, 'up', 'b'));
    // Tensors for a target the config does not list.
    refused(
      variant((c) => (c.target_modules = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj'])),
      PEFT_WEIGHTS_FILE,
      /down_proj\.lora_A/,
    );
    // An adapter for another model: qwen2's (2 layers) on llama (3 layers), llama's on qwen2.
    refused(path.join(peftDir('qwen2'), 'adapter'), PEFT_WEIGHTS_FILE, /layers\.2\./);
    assert.throws(
      () => loadPeftAdapter(source, { ...llama, nLayers: 2 }),
      /layers\.2\..*not a tensor of this adapter/,
    );
    assert.throws(
      () => loadPeftAdapter(path.join(scratch, 'nowhere'), llama),
      /adapter_config\.json: missing/,
    );
  });

  test('saving an adapter that does not fit the model is refused before anything is written', () => {
    const adapter = createLora(
      { ...llama, nLayers: 2 },
      { rank: 2, alpha: 4, targets: ['q'], seed: 1 },
      (k) => new Float32Array(k),
    );
    const dir = path.join(scratch, 'unwritten');
    assert.throws(() => savePeftAdapter(dir, adapter, llama), OptionError);
    assert.throws(() => readFileSync(path.join(dir, PEFT_CONFIG_FILE)));
  });
});
