/**
 * Bad model inputs fail with errors that name the file and the field: unsupported architectures
 * (both formats), missing or misshapen tensors, truncated weights; a NaN weight, which loads but
 * must make generation and activation runs fail rather than give empty replies or NaN rows.
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
import { GgmlType, writeGguf } from '../src/formats/gguf.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  writeSafetensors,
} from '../src/formats/safetensors.js';
import { Model } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';

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
    metadata: [{ key: 'general.architecture', value: 'bert' }],
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
  const dir = tinyCopy('shape', (c) => (c.intermediate_size = 96));
  const err = await rejects(dir, /model\.safetensors$/, /^model\.layers\.0\.mlp\.gate_proj\.weight$/);
  assert.match(err.message, /expected \[96, 64\]/);
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
