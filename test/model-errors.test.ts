/**
 * Bad model inputs fail with errors that name the file and the field: unsupported architectures
 * (both formats), missing or misshapen tensors, truncated weights, and sizes (layer count, width,
 * heads, MLP width) that disagree with the tensors, caught before anything is allocated.
 */
import assert from 'node:assert/strict';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { FormatError } from '../src/formats/errors.js';
import { GgmlType, type GgufMetadataEntry, GgufValueType, writeGguf } from '../src/formats/gguf.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  writeSafetensors,
} from '../src/formats/safetensors.js';
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

/**
 * Loads must fail fast on sizes that lie about the tensors: a layer count of 1e8 or 2^32 - 1 used
 * to allocate per-layer arrays until the process ran out of memory, and 0 crashed on
 * `layers[0].wq`. Each case must fail within a second, naming the file and the key.
 */
async function rejectsQuickly(source: string, file: RegExp, field: RegExp, message: RegExp): Promise<void> {
  const t0 = performance.now();
  const err = await rejects(source, file, field);
  assert.match(err.message, message);
  assert.ok(performance.now() - t0 < 1000, `took ${performance.now() - t0} ms`);
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
