/**
 * llama.cpp GGUF LoRA adapter files (src/training/gguf-lora.ts) on the tiny fixture models:
 *
 * - test/fixtures/tiny/<arch>/gguf-lora/adapter.gguf, made by the `gguf` Python package from peft's
 *   adapter in peft/adapter/ the way llama.cpp's convert_lora_to_gguf.py lays it out
 *   (scripts/reference/make_gguf_lora_fixtures.py), reads to exactly peft's tensors and gives
 *   peft's logits;
 * - steerguard writes the adapter of peft/steerguard/ as gguf-lora/steerguard.gguf (the same bytes
 *   each time; scripts/reference/check_gguf_lora.py checks that file's keys, types, shapes and
 *   values against the PEFT folder), reads it back to the same tensors, and gives the logits peft
 *   computed with that adapter;
 * - bad files are refused naming file and field; `--adapter` takes a GGUF file beside a PEFT
 *   folder; `train lora --gguf` writes the trained adapter as a GGUF file.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { attachAdapters } from '../src/cli/commands/common.js';
import { CliOutput } from '../src/cli/output.js';
import { loadBackend } from '../src/engine/select.js';
import { FormatError, OptionError } from '../src/formats/errors.js';
import {
  GgmlType,
  type GgufMetadataEntry,
  type GgufTensorInput,
  GgufValueType,
  ggufMetadataEntries,
  readGguf,
  readGgufTensorF32,
  writeGguf,
} from '../src/formats/gguf.js';
import { loadModelFiles } from '../src/model/load.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import { ControlVector } from '../src/steering/control-vector.js';
import { createLora } from '../src/training/lora.js';
import { ggufLoraTensorName, loadGgufLora, saveGgufLora } from '../src/training/gguf-lora.js';
import { loadPeftAdapter } from '../src/training/peft.js';
import { cli } from './util/cli.js';
import { FIXTURES, readFixture, relErr } from './util/fixtures.js';

const ARCHS = ['llama', 'qwen2', 'gemma3'];
/**
 * steerguard (fp32) against transformers + peft (float64), max |diff| / max |ref| over a
 * sequence's logits; the same bound as test/peft.test.ts (measured there <= 1.3e-6).
 */
const PEFT_TOL = 1e-5;

const backend = loadBackend();
const scratch = mkdtempSync(path.join(tmpdir(), 'steerguard-gguf-lora-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const tinyDir = (arch: string) => path.join(FIXTURES, 'tiny', arch);
const peftDir = (arch: string) => path.join(tinyDir(arch), 'peft');
const ggufDir = (arch: string) => path.join(tinyDir(arch), 'gguf-lora');

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
  describe(`GGUF LoRA adapters: ${arch}`, () => {
    const fixture = readFixture(path.join(peftDir(arch), 'logits.safetensors'));
    const tokens = fixture.get('tokens')!;
    const sequences = tokens.shape[0];

    test("a file converted from peft's adapter as convert_lora_to_gguf does reads to peft's tensors and gives peft's logits", async (t) => {
      const model = await Model.load(tinyDir(arch), { weights: 'f32', backend });
      const adapter = loadGgufLora(path.join(ggufDir(arch), 'adapter.gguf'), model.config);
      assert.deepEqual(adapter, loadPeftAdapter(path.join(peftDir(arch), 'adapter'), model.config));
      model.addAdapter(adapter);
      const err = maxErr(logitsOf(model, tokens.data, sequences), fixture.get('peft')!.data);
      t.diagnostic(`relative error against peft: ${err}`);
      assert.ok(err <= PEFT_TOL, `${err}`);
    });

    test("steerguard's file: the same bytes, llama.cpp's names and dims, the same tensors back, peft's logits", async (t) => {
      const model = await Model.load(tinyDir(arch), { weights: 'f32', backend });
      const adapter = loadPeftAdapter(path.join(peftDir(arch), 'steerguard'), model.config);
      const committed = path.join(ggufDir(arch), 'steerguard.gguf');
      if (process.env.STEERGUARD_WRITE_FIXTURES === '1') saveGgufLora(committed, adapter, model.config);
      const written = path.join(scratch, `${arch}.gguf`);
      saveGgufLora(written, adapter, model.config);
      assert.deepEqual(readFileSync(written), readFileSync(committed));

      const file = readGguf(written);
      assert.equal(file.metadata.get('general.architecture'), arch);
      assert.equal(file.metadata.get('general.type'), 'adapter');
      assert.equal(file.metadata.get('adapter.type'), 'lora');
      assert.equal(file.metadata.get('adapter.lora.alpha'), 5);
      assert.equal(file.metadataTypes.get('adapter.lora.alpha')?.type, GgufValueType.FLOAT32);
      const { dModel: D, nHeads: H, headDim: E } = model.config;
      assert.deepEqual(file.tensors.get('blk.0.attn_q.weight.lora_a')?.dims, [D, 3]);
      assert.deepEqual(file.tensors.get('blk.0.attn_q.weight.lora_b')?.dims, [3, H * E]);
      assert.deepEqual(file.tensors.get('blk.1.attn_output.weight.lora_a')?.dims, [H * E, 3]);
      assert.equal(file.tensors.size, model.config.nLayers * adapter.targets.length * 2);
      for (const info of file.tensors.values()) assert.equal(info.type, GgmlType.F32);
      // llama's q rows are stored in llama.cpp's order, the others as they are.
      const storedQ = readGgufTensorF32(file, 'blk.0.attn_q.weight.lora_b');
      if (arch === 'llama') assert.notDeepEqual(storedQ, adapter.layers[0].q!.b);
      else assert.deepEqual(storedQ, adapter.layers[0].q!.b);

      const back = loadGgufLora(written, model.config);
      assert.deepEqual(back, adapter);
      model.addAdapter(back);
      const err = maxErr(logitsOf(model, tokens.data, sequences), fixture.get('steerguard')!.data);
      t.diagnostic(`relative error against peft loading the same adapter: ${err}`);
      assert.ok(err <= PEFT_TOL, `${err}`);
    });
  });

describe('GGUF LoRA adapters: bad files', () => {
  const llama = loadModelFiles(tinyDir('llama'), { weights: 'f32' }).config;
  const source = path.join(ggufDir('llama'), 'adapter.gguf');
  let n = 0;
  /** The llama fixture adapter rewritten with its metadata and tensors changed by `edit`. */
  function variant(edit: (metadata: GgufMetadataEntry[], tensors: GgufTensorInput[]) => void): string {
    const file = readGguf(source);
    const metadata = ggufMetadataEntries(file);
    const tensors: GgufTensorInput[] = [...file.tensors.values()].map((t) => ({
      name: t.name,
      dims: t.dims,
      type: GgmlType.F32,
      data: readGgufTensorF32(file, t.name),
    }));
    edit(metadata, tensors);
    const out = path.join(scratch, `bad-${n++}.gguf`);
    writeGguf(out, { metadata, tensors });
    return out;
  }
  function refused(file: string, field: string | RegExp, cfg = llama): void {
    assert.throws(
      () => loadGgufLora(file, cfg),
      (e: unknown) => {
        assert.ok(e instanceof FormatError, String(e));
        assert.equal(e.file, file);
        if (typeof field === 'string') assert.equal(e.field, field);
        else assert.match(e.field, field);
        return true;
      },
    );
  }
  const drop = (key: string) => (m: GgufMetadataEntry[]) =>
    m.splice(
      m.findIndex((e) => e.key === key),
      1,
    );
  const set = (key: string, value: string | number, type: GgufValueType) => (m: GgufMetadataEntry[]) => {
    m.splice(
      m.findIndex((e) => e.key === key),
      1,
      { key, value, type },
    );
  };

  test('not an adapter, another architecture, alpha missing or unusable, aLoRA: the field is named', () => {
    const cv = path.join(scratch, 'control-vector.gguf');
    ControlVector.single(1, new Float32Array(llama.dModel), 'llama').save(cv);
    refused(cv, 'general.type');
    refused(variant(drop('general.type')), 'general.type');
    refused(variant(set('general.type', 'model', GgufValueType.STRING)), 'general.type');
    refused(variant(set('adapter.type', 'cvec', GgufValueType.STRING)), 'adapter.type');
    refused(path.join(ggufDir('qwen2'), 'adapter.gguf'), 'general.architecture');
    refused(variant(set('general.architecture', 'qwen2', GgufValueType.STRING)), 'general.architecture');
    refused(variant(drop('adapter.lora.alpha')), 'adapter.lora.alpha');
    refused(variant(set('adapter.lora.alpha', 0, GgufValueType.FLOAT32)), 'adapter.lora.alpha');
    refused(variant(set('adapter.lora.alpha', Number.NaN, GgufValueType.FLOAT32)), 'adapter.lora.alpha');
    refused(variant(set('adapter.lora.alpha', 4, GgufValueType.UINT32)), 'adapter.lora.alpha');
    refused(
      variant((m) => m.push({ key: 'adapter.alora.invocation_tokens', value: new Uint32Array([1, 2]) })),
      'adapter.alora.invocation_tokens',
    );
  });

  test('a tensor for a module or layer the model lacks, a missing one, wrong shapes, mixed ranks: the tensor is named', () => {
    const extra = (name: string, dims: number[]) => (_: GgufMetadataEntry[], t: GgufTensorInput[]) =>
      t.push({ name, dims, type: GgmlType.F32, data: new Float32Array(dims[0] * dims[1]) });
    refused(variant(extra('token_embd.weight.lora_a', [llama.vocabSize, 2])), 'token_embd.weight.lora_a');
    refused(variant(extra('output.weight.lora_b', [2, llama.vocabSize])), 'output.weight.lora_b');
    refused(variant(extra('blk.0.attn_norm.weight', [llama.dModel, 1])), 'blk.0.attn_norm.weight');
    refused(variant(extra('blk.3.attn_q.weight.lora_a', [llama.dModel, 2])), 'blk.3.attn_q.weight.lora_a');
    const without = (name: string) => (_: GgufMetadataEntry[], t: GgufTensorInput[]) =>
      t.splice(
        t.findIndex((x) => x.name === name),
        1,
      );
    refused(variant(without('blk.1.ffn_up.weight.lora_b')), 'blk.1.ffn_up.weight.lora_b');
    refused(variant(without('blk.2.attn_k.weight.lora_a')), 'blk.2.attn_k.weight.lora_a');
    // An adapter for a model of another shape: the same file on a model with a wider MLP.
    refused(source, ggufLoraTensorName(0, 'gate', 'b'), { ...llama, ffnDim: 2 * llama.ffnDim });
    // lora_a stored as [r, in] (not transposed, as llama.cpp's old finetune wrote it).
    refused(
      variant((_, t) => {
        const a = t.find((x) => x.name === 'blk.0.attn_v.weight.lora_a')!;
        a.dims = [a.dims[1], a.dims[0]];
      }),
      /^blk\.0\.attn_v\.weight\.lora_a$/,
    );
    refused(
      variant((_, t) => {
        const i = t.findIndex((x) => x.name === 'blk.0.attn_v.weight.lora_a');
        t[i] = { ...t[i], dims: [llama.dModel, 3], data: new Float32Array(llama.dModel * 3) };
      }),
      'blk.0.attn_v.weight.lora_a',
    );
  });

  test('rank 0 and a non-finite value are refused with the tensor named', () => {
    const nan = variant((_, t) => {
      const b = t.find((x) => x.name === 'blk.2.ffn_down.weight.lora_b')!;
      (b.data as Float32Array)[5] = Number.POSITIVE_INFINITY;
    });
    refused(nan, 'blk.2.ffn_down.weight.lora_b');
    // A rank-0 file: writeGguf refuses a zero dimension, so patch the stored dims of one pair.
    const file = variant((_, t) =>
      t.splice(0, t.length, ...t.filter((x) => x.name.startsWith('blk.0.attn_q.'))),
    );
    const bytes = readFileSync(file);
    const patch = (name: string, dim: number) => {
      const at = bytes.indexOf(Buffer.from(name)) + name.length; // then u32 n_dims, u64 dims...
      assert.equal(bytes.readUInt32LE(at), 2);
      bytes.writeBigUInt64LE(0n, at + 4 + 8 * dim);
    };
    patch('blk.0.attn_q.weight.lora_a', 1);
    patch('blk.0.attn_q.weight.lora_b', 0);
    writeFileSync(file, bytes);
    refused(file, 'blk.0.attn_q.weight.lora_a');
  });

  test('an F16 file (convert_lora_to_gguf --outtype f16) reads to the values within f16 rounding', () => {
    const f16 = variant((_, t) => t.forEach((x) => (x.type = GgmlType.F16)));
    assert.equal(readGguf(f16).tensors.get('blk.0.attn_q.weight.lora_a')?.type, GgmlType.F16);
    const got = loadGgufLora(f16, llama);
    const want = loadGgufLora(source, llama);
    for (const [l, layer] of want.layers.entries())
      for (const target of want.targets)
        for (const which of ['a', 'b'] as const) {
          const w = layer[target]![which];
          const g = got.layers[l][target]![which];
          assert.ok(relErr(g, w) <= 1e-3, `${l} ${target} ${which}: ${relErr(g, w)}`);
        }
  });

  test('saving an adapter that does not fit the model is refused before anything is written', () => {
    const adapter = createLora(
      { ...llama, nLayers: 2 },
      { rank: 2, alpha: 4, targets: ['q'], seed: 1 },
      (k) => new Float32Array(k),
    );
    const file = path.join(scratch, 'unwritten.gguf');
    assert.throws(() => saveGgufLora(file, adapter, llama), OptionError);
    assert.ok(!existsSync(file));
  });
});

describe('--adapter takes GGUF files and PEFT folders; train lora --gguf', () => {
  const quiet = () => new CliOutput({ json: false, quiet: true });

  test('a GGUF file and a PEFT folder given together apply as the two adapters do', async () => {
    const model = await Model.load(tinyDir('qwen2'), { weights: 'f32', backend });
    const prompts = [{ tokens: [3, 14, 15, 92, 65] }];
    const ggufFile = path.join(ggufDir('qwen2'), 'steerguard.gguf');
    const folder = path.join(peftDir('qwen2'), 'adapter');
    const handles = [
      model.addAdapter(loadPeftAdapter(path.join(peftDir('qwen2'), 'steerguard'), model.config)),
      model.addAdapter(loadPeftAdapter(folder, model.config)),
    ];
    const want = model.run(prompts, { logits: 'all' }).logits[0];
    for (const h of handles) h.remove();
    await attachAdapters(model, [ggufFile, folder], quiet());
    assert.deepEqual(model.run(prompts, { logits: 'all' }).logits[0], want);
    await assert.rejects(
      attachAdapters(model, [path.join(scratch, 'nowhere.gguf')], quiet()),
      /nowhere\.gguf: no such file or folder/,
    );
    await assert.rejects(
      attachAdapters(model, [path.join(ggufDir('llama'), 'adapter.gguf')], quiet()),
      /general\.architecture/,
    );
  });

  test('train lora --gguf writes the trained adapter as a GGUF file equal to the PEFT folder', async () => {
    const data = path.join(scratch, 'tokens.jsonl');
    const random = seededRandom(9);
    writeFileSync(
      data,
      Array.from({ length: 2 }, () => {
        const tokens = Array.from({ length: 6 }, () => Math.floor(random() * 256));
        return JSON.stringify({ tokens, answer: tokens.map((_, t) => (t >= 3 ? 1 : 0)) });
      }).join('\n'),
    );
    const out = path.join(scratch, 'trained');
    const ggufFile = path.join(scratch, 'trained.gguf');
    const args = ['train', 'lora', '-m', tinyDir('llama'), '--data', data, '--targets', 'q,k,down'];
    const rest = [
      '--rank',
      '2',
      '--alpha',
      '4',
      '--epochs',
      '1',
      '--batch',
      '2',
      '--lr',
      '1e-2',
      '--out',
      out,
    ];
    const r = cli([...args, ...rest, '--gguf', ggufFile, '--json'], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { gguf: string }).gguf, ggufFile);
    const cfg = loadModelFiles(tinyDir('llama'), { weights: 'f32' }).config;
    const fromGguf = loadGgufLora(ggufFile, cfg);
    assert.deepEqual(fromGguf, loadPeftAdapter(out, cfg));
    assert.ok(
      fromGguf.layers[0].q!.b.some((x) => x !== 0),
      'the adapter was trained',
    );
    // An existing --gguf file is not replaced without --overwrite, and nothing is trained.
    rmSync(out, { recursive: true });
    const again = cli([...args, ...rest, '--gguf', ggufFile], { timeoutMs: 60_000 });
    assert.equal(again.code, 2); // an option error
    assert.match(again.stderr, /--gguf .*trained\.gguf exists/);
    assert.ok(!existsSync(out));
  });
});
