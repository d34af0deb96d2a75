/**
 * Bad model inputs fail with errors that name the file and the field: unsupported architectures
 * (both formats), missing or misshapen tensors, tensors the loader does not know, truncated weights,
 * rotary scaling it cannot follow, and sizes (layer count, width, heads, MLP width) that disagree with
 * the tensors, caught before anything is allocated; a NaN weight, which loads but must make
 * generation and activation runs fail rather than give empty replies or NaN rows.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ActivationRun, partialDir } from '../src/activations/store.js';
import { extractLastToken } from '../src/concepts/activations.js';
import { FormatError, SteerguardError } from '../src/formats/errors.js';
import {
  GgmlType,
  type GgufMetadataEntry,
  GgufValueType,
  readGguf,
  readGgufTensorF32,
  writeGguf,
} from '../src/formats/gguf.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  writeSafetensors,
} from '../src/formats/safetensors.js';
import { configFromGguf, configFromHf } from '../src/model/config.js';
import { Model } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';

const tiny = path.join(FIXTURES, 'tiny', 'llama');
const tmp = mkdtempSync(path.join(tmpdir(), 'sg-err-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function tinyCopy(name: string, edit: (config: Record<string, unknown>) => void = () => {}): string {
  const dir = path.join(tmp, name);
  mkdirSync(dir);
  const config = JSON.parse(readFileSync(path.join(tiny, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit(config);
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  copyFileSync(path.join(tiny, 'model.safetensors'), path.join(dir, 'model.safetensors'));
  return dir;
}

async function rejects(source: string, file: RegExp, field: RegExp): Promise<FormatError> {
  const err = await Model.load(source).then(
    () => assert.fail('expected an error'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof FormatError, `expected FormatError, got ${String(err)}`);
  assert.match(err.file, file);
  assert.match(err.field, field);
  return err;
}

test('unsupported architecture in config.json names it', async () => {
  const dir = tinyCopy('gpt2', (c) => (c.architectures = ['GPT2LMHeadModel']));
  const err = await rejects(dir, /config\.json$/, /^architectures$/);
  assert.match(err.message, /GPT2LMHeadModel/);
});

test('unsupported architecture in GGUF metadata names the key', async () => {
  const file = path.join(tmp, 'bert.gguf');
  writeGguf(file, {
    metadata: [
      { key: 'general.architecture', value: 'bert' },
      { key: 'bert.block_count', value: 12 },
    ],
    tensors: [{ name: 'token_embd.weight', dims: [4, 8], type: GgmlType.F32, data: new Float32Array(32) }],
  });
  const err = await rejects(file, /bert\.gguf$/, /^general\.architecture$/);
  assert.match(err.message, /bert/);
});

test('a missing tensor is named', async () => {
  const dir = tinyCopy('missing');
  const st = readSafetensorsHeader(path.join(tiny, 'model.safetensors'));
  const keep = [...st.tensors.values()].filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight');
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    keep.map((t) => ({
      name: t.name,
      dtype: 'F32' as const,
      shape: t.shape,
      data: readSafetensorsTensorF32(t),
    })),
  );
  await rejects(dir, /missing$/, /^model\.layers\.1\.mlp\.up_proj\.weight$/);
});

test('a tensor whose shape disagrees with the config is named', async () => {
  const dir = tinyCopy('shape');
  const st = readSafetensorsHeader(path.join(tiny, 'model.safetensors'));
  const bad = 'model.layers.2.mlp.up_proj.weight';
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    [...st.tensors.values()].map((t) => {
      const data = readSafetensorsTensorF32(t);
      return t.name === bad
        ? { name: t.name, dtype: 'F32' as const, shape: [64, 64], data: data.subarray(0, 64 * 64) }
        : { name: t.name, dtype: 'F32' as const, shape: t.shape, data };
    }),
  );
  const err = await rejects(dir, /model\.safetensors$/, /^model\.layers\.2\.mlp\.up_proj\.weight$/);
  assert.match(err.message, /expected \[128, 64\]/);
});

test('truncated weights are reported, not read past the end', async () => {
  const dir = tinyCopy('truncated');
  truncateSync(path.join(dir, 'model.safetensors'), 40_000);
  await rejects(dir, /model\.safetensors$/, /.+/);
});

test('a config with inconsistent heads names the field', async () => {
  const dir = tinyCopy('heads', (c) => (c.num_key_value_heads = 3));
  await rejects(dir, /config\.json$/, /^num_key_value_heads$/);
});

/** Rewrites the tiny llama's weights with `extra` tensors added. */
function withTensors(dir: string, extra: { name: string; data: Float32Array; shape: number[] }[]): void {
  const st = readSafetensorsHeader(path.join(tiny, 'model.safetensors'));
  writeSafetensors(path.join(dir, 'model.safetensors'), [
    ...[...st.tensors.values()].map((t) => ({
      name: t.name,
      dtype: 'F32' as const,
      shape: t.shape,
      data: readSafetensorsTensorF32(t),
    })),
    ...extra.map((t) => ({ ...t, dtype: 'F32' as const })),
  ]);
}

test('a safetensors tensor the loader does not know is refused, named with its file', async () => {
  const dir = tinyCopy('extra-st');
  withTensors(dir, [
    { name: 'model.layers.0.self_attn.k_proj.lora_A', data: new Float32Array(8), shape: [8] },
  ]);
  const err = await rejects(
    dir,
    /extra-st\/model\.safetensors$/,
    /^model\.layers\.0\.self_attn\.k_proj\.lora_A$/,
  );
  assert.match(err.message, /not used by the loader/);
});

test("old checkpoints' rotary inv_freq buffers are accepted", async () => {
  const dir = tinyCopy('inv-freq');
  withTensors(dir, [
    { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', data: new Float32Array(8), shape: [8] },
  ]);
  const model = await Model.load(dir);
  assert.equal(model.config.nLayers, 3);
});

test('a tied lm_head that differs from the embedding is refused', async () => {
  const dir = tinyCopy('tied-differs', (c) => (c.tie_word_embeddings = true));
  // the tiny llama's lm_head.weight is its own random matrix
  await rejects(dir, /tied-differs$/, /^lm_head\.weight$/);
});

test('a GGUF tensor the loader does not know is refused, named with its file', async () => {
  const file = path.join(tmp, 'extra.gguf');
  const src = path.join(tmp, 'extra-src.gguf');
  hfToGguf(tiny, src);
  const g = readGguf(src);
  writeGguf(file, {
    metadata: [...g.metadata.entries()].map(([key, value]) => ({ key, value, ...g.metadataTypes.get(key) })),
    tensors: [
      ...[...g.tensors.values()].map((t) => ({
        name: t.name,
        dims: t.dims,
        type: GgmlType.F32,
        data: readGgufTensorF32(g, t.name),
      })),
      { name: 'blk.0.attn_q.lora_a', dims: [8], type: GgmlType.F32, data: new Float32Array(8) },
    ],
  });
  const err = await rejects(file, /extra\.gguf$/, /^blk\.0\.attn_q\.lora_a$/);
  assert.match(err.message, /not used by the loader/);
});

test('rotary scaling the runtime cannot follow is refused, naming the field', () => {
  const file = path.join(FIXTURES, 'tiny', 'llama-rope-llama3', 'config.json');
  const base = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const params = base.rope_parameters as Record<string, unknown>;
  const refuses = (rope: Record<string, unknown>, field: RegExp, message: RegExp) =>
    assert.throws(
      () => configFromHf({ ...base, rope_parameters: rope }, file),
      (e: unknown) => e instanceof FormatError && field.test(e.field) && message.test(e.message),
    );
  refuses({ ...params, rope_type: 'dynamic' }, /^rope_parameters\.rope_type$/, /"dynamic" is not supported/);
  refuses({ ...params, beta_fast: 32 }, /^rope_parameters\.beta_fast$/, /unknown key for rope type 'llama3'/);
  refuses({ ...params, low_freq_factor: undefined }, /^rope_parameters\.low_freq_factor$/, /missing/);
  refuses({ ...params, high_freq_factor: 0.5 }, /^rope_parameters\.high_freq_factor$/, /must exceed/);
  refuses({ ...params, partial_rotary_factor: 0.5 }, /partial_rotary_factor$/, /not supported/);
  refuses({ rope_type: 'linear', factor: -2 }, /^rope_parameters\.factor$/, /positive/);
  assert.throws(
    () => configFromHf({ ...base, rope_scaling: { type: 'longrope', factor: 4 } }, file),
    (e: unknown) => e instanceof FormatError && e.field === 'rope_scaling.rope_type',
  );
});

test('GGUF rotary scaling keys the runtime cannot follow are refused, naming the key', () => {
  const meta = (extra: Record<string, number | string>) => {
    const m = new Map<string, number | string>([
      ['general.architecture', 'llama'],
      ['llama.block_count', 2],
      ['llama.embedding_length', 32],
      ['llama.attention.head_count', 2],
      ['llama.feed_forward_length', 64],
      ...Object.entries(extra),
    ]);
    return {
      has: (k: string) => m.has(k),
      keys: () => m.keys(),
      number: (k: string) => m.get(k) as number,
      string: (k: string) => m.get(k) as string,
    };
  };
  const refuses = (extra: Record<string, number | string>, field: string, factors?: Float32Array) =>
    assert.throws(
      () => configFromGguf(meta(extra), 'x.gguf', 256, factors),
      (e: unknown) => e instanceof FormatError && e.file === 'x.gguf' && e.field === field,
    );
  const yarn = {
    'llama.rope.scaling.type': 'yarn',
    'llama.rope.scaling.factor': 4,
    'llama.rope.scaling.original_context_length': 64,
  };
  assert.equal(configFromGguf(meta(yarn), 'x.gguf', 256).ropeScaling[0].type, 'yarn');
  refuses({ 'llama.rope.scaling.type': 'longrope' }, 'llama.rope.scaling.type');
  refuses({ 'llama.rope.scaling.mystery': 1 }, 'llama.rope.scaling.mystery');
  refuses({ ...yarn, 'llama.rope.scaling.yarn_ext_factor': 0.5 }, 'llama.rope.scaling.yarn_ext_factor');
  refuses(
    { ...yarn, 'llama.rope.scaling.yarn_log_multiplier': 0.1 },
    'llama.rope.scaling.yarn_log_multiplier',
  );
  refuses(
    { 'llama.rope.scaling.type': 'yarn', 'llama.rope.scaling.factor': 4 },
    'llama.rope.scaling.original_context_length',
  );
  refuses({}, 'rope_freqs.weight', new Float32Array(3).fill(1)); // head dim 16: 8 factors
  refuses({ 'llama.rope.scaling.type': 'linear' }, 'llama.rope.scaling.type', new Float32Array(8).fill(1));
  refuses({ 'general.architecture': 'qwen2' }, 'rope_freqs.weight', new Float32Array(8).fill(1));
  // not an error, but read rather than assumed: gemma3's local base, when the file stores it
  const gemma = Object.fromEntries(
    [...meta({}).keys()].map((k) => [k.replace(/^llama\./, 'gemma3.'), meta({}).number(k)]),
  );
  const cfg = configFromGguf(
    meta({ ...gemma, 'general.architecture': 'gemma3', 'gemma3.rope.freq_base_swa': 5000 }),
    'x.gguf',
    256,
  );
  assert.deepEqual(cfg.ropeTheta, [5000, 5000]); // both layers are sliding under the default pattern 6
});

test('a model with a NaN weight: generation and activations refuse it, nothing is written', async () => {
  const dir = tinyCopy('nan-weight');
  const st = readSafetensorsHeader(path.join(tiny, 'model.safetensors'));
  const poisoned = 'model.layers.0.mlp.down_proj.weight';
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    [...st.tensors.values()].map((t) => {
      const data = readSafetensorsTensorF32(t);
      if (t.name === poisoned) data[7] = NaN;
      return { name: t.name, dtype: 'F32' as const, shape: t.shape, data };
    }),
  );
  const model = await Model.load(dir);
  const prompt = { tokens: [1, 5, 9, 12] };
  await assert.rejects(
    model.generate([prompt], { maxNewTokens: 4 }),
    (e: unknown) => e instanceof SteerguardError && /non-finite logit \(NaN\)/.test((e as Error).message),
  );
  await assert.rejects(
    model.generate([prompt], { maxNewTokens: 4, temperature: 0.7, seed: 1 }),
    /non-finite logit/,
  );

  const cacheDir = path.join(tmp, 'nan-cache');
  await assert.rejects(
    extractLastToken(model, [prompt], { cacheDir }),
    /prompt 0 gives a non-finite activation .* blocks\.0\.hook_resid_post/,
  );
  assert.equal(existsSync(cacheDir) ? readdirSync(cacheDir, { recursive: true }).length : 0, 0);

  // The activation store, fed as `steerguard activations` feeds it.
  const out = path.join(tmp, 'nan-acts.safetensors');
  const hook = 'blocks.1.hook_resid_post';
  const run = await ActivationRun.open(
    out,
    {
      model: { fingerprint: model.identity.fingerprint },
      hooks: [hook],
      positions: 'last',
      rowsPerPrompt: 1,
      template: '',
      promptFile: 'tokens',
      column: '',
      promptsHash: 'x',
      nPrompts: 1,
      dtype: 'F32',
    },
    { promptIds: ['p0'] },
  );
  const res = model.run([prompt], { cache: { names: [hook], positions: 'last' }, logits: 'none' });
  await assert.rejects(
    run.writeChunk({ start: 0, count: 1, activations: { [hook]: res.cache.get(hook)![0] } }),
    /hook blocks\.1\.hook_resid_post has a non-finite value \(NaN\) for prompt 0/,
  );
  run.release();
  assert.equal(existsSync(out), false);
  assert.equal(existsSync(partialDir(out)), false);
});

test('a named pipe given as a model, config.json, concept or prompt file is refused at once', () => {
  const fifoDir = path.join(tmp, 'fifo');
  mkdirSync(fifoDir);
  const fifo = path.join(fifoDir, 'model.gguf');
  const made = spawnSync('mkfifo', [fifo]);
  assert.equal(made.status, 0, 'mkfifo is needed for this test');
  const hfDir = tinyCopy('fifo-config');
  rmSync(path.join(hfDir, 'config.json'));
  spawnSync('mkfifo', [path.join(hfDir, 'config.json')]);
  // Opening a pipe blocks the whole process, so the attempts run in a child with a time limit.
  const url = (rel: string): string => JSON.stringify(new URL(rel, import.meta.url).href);
  const script = `
    const { Model } = await import(${url('../src/model/model.js')});
    const { Concept } = await import(${url('../src/concepts/concept.js')});
    const { loadPromptFile } = await import(${url('../src/data/prompts.js')});
    const [fifo, hfDir] = process.argv.slice(1);
    const out = [];
    const attempt = async (f) => { try { await f(); out.push('no error'); } catch (e) { out.push(e.name + ': ' + e.message); } };
    await attempt(() => Model.load(fifo));
    await attempt(() => Model.load(hfDir));
    await attempt(() => Concept.load(fifo));
    await attempt(() => loadPromptFile(fifo));
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, fifo, hfDir], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(r.signal, null, 'timed out: a pipe was opened and waited on');
  const messages = JSON.parse(r.stdout) as string[];
  assert.equal(messages.length, 4, r.stderr);
  const pipe = /^FormatError: .*: is a named pipe \(FIFO\), not a regular file; give a file$/;
  for (const m of messages) assert.match(m, pipe);
  assert.ok(messages[0].includes(fifo) && messages[1].includes(path.join(hfDir, 'config.json')));
});

/**
 * Loads must fail fast on sizes that lie about the tensors: a layer count of 1e8 or 2^32 - 1 used
 * to allocate per-layer arrays until the process ran out of memory, and 0 crashed on
 * `layers[0].wq`. Each case must fail before allocating anything, naming the file and the key; the
 * time bound is far above what a refusal takes and far below what the old allocation took.
 */
async function rejectsQuickly(source: string, file: RegExp, field: RegExp, message: RegExp): Promise<void> {
  const t0 = performance.now();
  const err = await rejects(source, file, field);
  assert.match(err.message, message);
  assert.ok(performance.now() - t0 < 15_000, `took ${performance.now() - t0} ms`);
}

function lyingGguf(name: string, key: string, value: number | bigint): string {
  const file = path.join(tmp, `${name}.gguf`);
  hfToGguf(tiny, file, GgmlType.F32, (entries) =>
    entries.map((e): GgufMetadataEntry =>
      e.key === `llama.${key}`
        ? { key: e.key, type: typeof value === 'bigint' ? GgufValueType.UINT64 : GgufValueType.UINT32, value }
        : e,
    ),
  );
  return file;
}

for (const [count, message] of [
  [1e8, /says 100000000 layers, but the file has tensors for 3 blocks/],
  [2 ** 32 - 1, /says 4294967295 layers/],
  [0, /says 0 layers/],
  [2, /says 2 layers, but the file has tensors for 3 blocks/],
] as const) {
  test(`GGUF block_count ${count} (the file has 3 blocks) is refused before allocating`, async () => {
    await rejectsQuickly(
      lyingGguf(`blocks-${count}`, 'block_count', count),
      /\.gguf$/,
      /^llama\.block_count$/,
      message,
    );
  });
  test(`config.json num_hidden_layers ${count} (the file has 3 blocks) is refused before allocating`, async () => {
    const dir = tinyCopy(`layers-${count}`, (c) => (c.num_hidden_layers = count));
    await rejectsQuickly(dir, /config\.json$/, /^num_hidden_layers$/, message);
  });
}

test('a uint64 GGUF block_count of 2^63 is refused', async () => {
  await rejectsQuickly(
    lyingGguf('blocks-u64', 'block_count', 2n ** 63n),
    /\.gguf$/,
    /^llama\.block_count$/,
    /says 9223372036854775808 layers/,
  );
});

test('a gap in the blocks names the missing one', async () => {
  const dir = tinyCopy('gap');
  const st = readSafetensorsHeader(path.join(tiny, 'model.safetensors'));
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    [...st.tensors.values()]
      .filter((t) => !t.name.startsWith('model.layers.1.'))
      .map((t) => ({
        name: t.name,
        dtype: 'F32' as const,
        shape: t.shape,
        data: readSafetensorsTensorF32(t),
      })),
  );
  const config = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  config.num_hidden_layers = 2;
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  await rejectsQuickly(dir, /config\.json$/, /^num_hidden_layers$/, /block 1 has no tensors/);
});

for (const [key, value, message] of [
  ['embedding_length', 1e8, /model width is 100000000, but token_embd\.weight has 64/],
  ['attention.head_count', 1e6, /1000000 heads × head dim 16/],
  ['attention.head_count_kv', 1, /1 heads × head dim 16 = 16, but blk\.0\.attn_k\.weight has 32/],
  ['feed_forward_length', 2 ** 32 - 1, /MLP width is 4294967295, but blk\.0\.ffn_gate\.weight has 128/],
  ['feed_forward_length', 0, /expected a positive integer, got 0/],
] as const) {
  test(`GGUF ${key} ${value} that disagrees with the tensors is named`, async () => {
    await rejectsQuickly(
      lyingGguf(`${key}-${value}`, key, value),
      /\.gguf$/,
      new RegExp(`^llama\\.${key.replace('.', '\\.')}$`),
      message,
    );
  });
}

for (const [key, value, message] of [
  ['hidden_size', 1024, /model width is 1024/],
  ['vocab_size', 1e9, /vocabulary size is 1000000000, but model\.embed_tokens\.weight has 256/],
  ['intermediate_size', 96, /MLP width is 96, but model\.layers\.0\.mlp\.gate_proj\.weight has 128/],
  ['num_attention_heads', 8, /8 heads × head dim 16 = 128/],
] as const) {
  test(`config.json ${key} ${value} that disagrees with the tensors is named`, async () => {
    const dir = tinyCopy(`${key}-${value}`, (c) => (c[key] = value));
    await rejectsQuickly(dir, /config\.json$/, new RegExp(`^${key}$`), message);
  });
}
