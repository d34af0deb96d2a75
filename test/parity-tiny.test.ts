/**
 * Parity with Hugging Face transformers on tiny random models of every supported architecture and
 * rotary scaling (llama3, linear, YaRN), in both formats: the safetensors checkpoints under
 * test/fixtures/tiny/ (F32, BF16, F16) and GGUF files, either written by the fixture script as
 * llama.cpp's converter writes them (model.gguf, for the rotary-scaling models) or by this test
 * from the checkpoint (llama.cpp's names, q/k order and norm convention).
 * Reference: test/fixtures/tiny/<name>/reference.*, made by scripts/reference/make_parity_fixtures.py.
 * Tolerance: max|diff| / ||ref|| <= 1e-3 for every hook at every position of prompt 0 and for the
 * last-token residual and logits of all 8 prompts; same top-1; greedy tokens equal.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { BLOCK_HOOKS, blockHook, type HookName } from '../src/hooks/hooks.js';
import { configFromHf } from '../src/model/config.js';
import { Model } from '../src/model/model.js';
import { ropeFrequencies } from '../src/model/rope.js';
import { FIXTURES, argmaxOf, readFixture, relMaxDiff } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';

const TOL = 1e-3;
const tmp = mkdtempSync(path.join(tmpdir(), 'sg-tiny-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface TinyJson {
  prompts: number[][];
  generation: { runs: { prompt_index: number; new_tokens: number[]; steps: { margin: number }[] }[] };
}

const ROPE_SCALED = ['llama-rope-llama3', 'qwen2-rope-yarn', 'gemma3-rope-linear'];

for (const name of ['llama', 'llama-tied-bf16', 'qwen2', 'gemma3', ...ROPE_SCALED]) {
  const dir = path.join(FIXTURES, 'tiny', name);
  const ref = JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as TinyJson;
  const tensors = readFixture(path.join(dir, 'reference.safetensors'));
  for (const format of ['safetensors', 'gguf'] as const) {
    describe(`tiny ${name} (${format}) vs transformers`, () => {
      let model: Model;
      test('loads', async () => {
        let source = dir;
        if (format === 'gguf') {
          source = path.join(dir, 'model.gguf');
          if (!existsSync(source)) {
            source = path.join(tmp, `${name}.gguf`);
            hfToGguf(dir, source);
          }
        }
        model = await Model.load(source);
        assert.equal(model.identity.format, format);
      });

      test('every hook at every position of prompt 0', () => {
        const { nLayers: L } = model.config;
        const names: HookName[] = ['hook_embed', 'hook_final_norm'];
        for (let l = 0; l < L; l++) for (const k of BLOCK_HOOKS) names.push(blockHook(l, k));
        const res = model.run([{ tokens: ref.prompts[0] }], {
          cache: { names, positions: 'all' },
          logits: 'all',
        });
        for (const n of names) {
          const want = tensors.get(`prompt0.${n}`)!.data;
          const got = res.cache.get(n)![0];
          const d = relMaxDiff(got, want);
          assert.ok(d <= TOL, `${n}: rel max diff ${d.toExponential(2)}`);
        }
        assert.ok(relMaxDiff(res.logits[0], tensors.get('prompt0.logits')!.data) <= TOL);
      });

      test('last-token residual and logits of all prompts, batched', () => {
        const { nLayers: L, dModel: D, vocabSize: V } = model.config;
        const names = Array.from({ length: L }, (_, l) => blockHook(l, 'hook_resid_post'));
        const res = model.run(
          ref.prompts.map((tokens) => ({ tokens })),
          { cache: { names, positions: 'last' } },
        );
        const resid = tensors.get('last.resid_post')!.data;
        const logits = tensors.get('last.logits')!.data;
        ref.prompts.forEach((_, i) => {
          for (let l = 0; l < L; l++) {
            const d = relMaxDiff(
              res.cache.get(names[l])![i],
              resid.subarray((i * L + l) * D, (i * L + l + 1) * D),
            );
            assert.ok(d <= TOL, `prompt ${i} block ${l}: ${d.toExponential(2)}`);
          }
          const want = logits.subarray(i * V, (i + 1) * V);
          assert.ok(relMaxDiff(res.logits[i], want) <= TOL, `prompt ${i} logits`);
          assert.equal(argmaxOf(res.logits[i]), argmaxOf(want));
        });
      });

      test('greedy generation with the KV cache equals transformers', async () => {
        const runs = ref.generation.runs;
        const gens = await model.generate(
          runs.map((r) => ({ tokens: ref.prompts[r.prompt_index] })),
          { maxNewTokens: runs[0].new_tokens.length, stopTokens: [] },
        );
        runs.forEach((run, i) => {
          const firstDiff = gens[i].tokens.findIndex((t, j) => t !== run.new_tokens[j]);
          if (firstDiff >= 0)
            assert.ok(
              run.steps[firstDiff].margin < TOL,
              `prompt ${run.prompt_index} diverges at ${firstDiff}`,
            );
        });
      });
    });
  }
}

describe('rotary scaling read from both formats', () => {
  const expected: Record<string, string> = {
    'llama-rope-llama3': 'freq_factors', // GGUF: llama.cpp's rope_freqs.weight; HF: llama3
    'qwen2-rope-yarn': 'yarn',
    'gemma3-rope-linear': 'linear',
  };
  for (const name of ROPE_SCALED) {
    test(`${name}: GGUF and safetensors give the same frequencies`, async () => {
      const dir = path.join(FIXTURES, 'tiny', name);
      const hf = await Model.load(dir);
      const gguf = await Model.load(path.join(dir, 'model.gguf'));
      assert.ok(gguf.config.ropeScaling.some((s) => s.type === expected[name]));
      assert.ok(hf.config.ropeScaling.some((s) => s.type !== 'default'));
      const a = ropeFrequencies(hf.config);
      const b = ropeFrequencies(gguf.config);
      a.forEach((layer, l) => {
        assert.equal(layer.scale, b[l].scale, `layer ${l} scale`);
        assert.ok(relMaxDiff(b[l].invFreq, layer.invFreq) <= 1e-6, `layer ${l} frequencies`);
      });
    });
  }

  test('the pre-transformers-5 spelling (rope_scaling, rope_theta) reads the same', () => {
    for (const name of ['llama-rope-llama3', 'qwen2-rope-yarn']) {
      const file = path.join(FIXTURES, 'tiny', name, 'config.json');
      const v5 = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      const scaling = { ...(v5.rope_parameters as Record<string, unknown>) };
      scaling.type = scaling.rope_type; // the older name of the key
      delete scaling.rope_type;
      delete scaling.rope_theta; // top-level rope_theta holds it
      const legacy = { ...v5, rope_parameters: undefined, rope_scaling: scaling };
      assert.deepEqual(configFromHf(legacy, file), configFromHf(v5, file));
    }
  });
});
