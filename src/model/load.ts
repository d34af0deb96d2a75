/**
 * From a model name or path to config, weights and tokenizer: the only place that knows about
 * file formats and per-format tensor names.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { FormatError } from '../formats/errors.js';
import { type GgufFile, readGguf, readGgufTensorF32 } from '../formats/gguf.js';
import { type HfModelDir, openHfModelDir, openHfTokenizer, resolveModelSource } from '../formats/hf.js';
import { readSafetensorsTensorF32 } from '../formats/safetensors.js';
import { Tokenizer } from '../formats/tokenizer.js';
import { type ModelConfig, configFromGguf, configFromHf } from './config.js';
import {
  type ModelWeights,
  type TensorSource,
  ggufTensorNamer,
  hfSandwichNamer,
  hfTensorNamer,
  loadWeights,
  unpermuteRotaryRows,
} from './weights.js';

/** Where a model came from, recorded in every artifact made with it. */
export interface ModelIdentity {
  /** What the user named (path or repo id). */
  readonly name: string;
  /** Resolved file or directory. */
  readonly path: string;
  readonly format: 'gguf' | 'safetensors';
  readonly arch: string;
  /** Hash of the config and a sample of the weights: equal fingerprints, same model. */
  readonly fingerprint: string;
}

export interface LoadedModel {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly tokenizer: Tokenizer | undefined;
  readonly identity: ModelIdentity;
  /** Default generation settings from the checkpoint (generation_config.json), if any. */
  readonly generationDefaults: Record<string, unknown>;
}

export interface LoadOptions {
  /** Called as layers load, for progress bars. */
  readonly onProgress?: (done: number, total: number) => void;
}

function sameShape(file: string, name: string, got: readonly number[], want: readonly number[]): void {
  const n = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
  const squeezed = (s: readonly number[]) => s.filter((d) => d !== 1);
  if (n(got) !== n(want) || squeezed(got).join() !== squeezed(want).join())
    throw new FormatError(file, name, `has shape [${got.join(', ')}], expected [${want.join(', ')}]`);
}

function ggufSource(file: GgufFile, cfg: () => ModelConfig | undefined): TensorSource {
  return {
    file: file.path,
    has: (name) => file.tensors.has(name),
    read: (name, shape) => {
      const info = file.tensors.get(name);
      if (!info) throw new FormatError(file.path, name, 'missing tensor');
      sameShape(file.path, name, [...info.dims].reverse(), shape);
      const data = readGgufTensorF32(file, name);
      const c = cfg();
      if (c?.arch === 'llama' && /\.attn_[qk]\.weight$/.test(name)) {
        const heads = name.endsWith('attn_q.weight') ? c.nHeads : c.nKvHeads;
        return unpermuteRotaryRows(data, heads, c.headDim, c.dModel);
      }
      return data;
    },
  };
}

function hfSource(dir: HfModelDir): TensorSource {
  return {
    file: dir.dir,
    has: (name) => dir.tensors.has(name),
    read: (name, shape) => {
      const info = dir.tensors.get(name);
      if (!info) throw new FormatError(dir.dir, name, 'missing tensor');
      sameShape(info.file, name, info.shape, shape);
      return readSafetensorsTensorF32(info);
    },
  };
}

function fingerprint(cfg: ModelConfig, w: ModelWeights): string {
  const h = createHash('sha256');
  h.update(JSON.stringify(cfg));
  for (const a of [w.embed, w.layers[0].wq, w.layers[w.layers.length - 1].wDown, w.finalNorm]) {
    const step = Math.max(1, Math.floor(a.length / 4096));
    const sample = new Float32Array(Math.ceil(a.length / step));
    for (let i = 0, j = 0; i < a.length; i += step, j++) sample[j] = a[i];
    h.update(new Uint8Array(sample.buffer));
  }
  return h.digest('hex').slice(0, 16);
}

function metadataReader(file: GgufFile) {
  const get = (key: string) => {
    if (!file.metadata.has(key)) throw new FormatError(file.path, key, 'missing metadata key');
    return file.metadata.get(key);
  };
  return {
    has: (key: string) => file.metadata.has(key),
    keys: () => file.metadata.keys(),
    number: (key: string) => {
      const v = get(key);
      if (typeof v === 'number') return v;
      if (typeof v === 'bigint') return Number(v);
      throw new FormatError(file.path, key, `expected a number, got ${typeof v}`);
    },
    string: (key: string) => {
      const v = get(key);
      if (typeof v !== 'string') throw new FormatError(file.path, key, `expected a string, got ${typeof v}`);
      return v;
    },
  };
}

/** Loads a model named by a local path (.gguf file or Hugging Face directory) or a cached repo id. */
export function loadModelFiles(nameOrPath: string, opts: LoadOptions = {}): LoadedModel {
  const source = resolveModelSource(nameOrPath);
  if (source.kind === 'gguf') {
    const file = readGguf(source.path);
    const embed = file.tensors.get('token_embd.weight');
    if (!embed) throw new FormatError(file.path, 'token_embd.weight', 'missing tensor');
    const base = configFromGguf(metadataReader(file), file.path, embed.dims[1]);
    const config: ModelConfig = {
      ...base,
      tiedEmbeddings: base.arch === 'gemma3' || !file.tensors.has('output.weight'),
      attnBias: base.attnBias || file.tensors.has('blk.0.attn_q.bias'),
    };
    const weights = loadWeights(
      config,
      ggufSource(file, () => config),
      ggufTensorNamer,
      {
        normPlusOne: false,
        onLayer: opts.onProgress,
      },
    );
    return {
      config,
      weights,
      tokenizer: file.metadata.has('tokenizer.ggml.model')
        ? Tokenizer.fromGgufMetadata(file.metadata, file.path)
        : undefined,
      identity: {
        name: nameOrPath,
        path: source.path,
        format: 'gguf',
        arch: config.arch,
        fingerprint: fingerprint(config, weights),
      },
      generationDefaults: {},
    };
  }
  const dir = openHfModelDir(source.dir);
  const config = configFromHf(dir.config, path.join(dir.dir, 'config.json'));
  const prefix = ['model.', 'model.language_model.', 'language_model.model.'].find((p) =>
    dir.tensors.has(`${p}embed_tokens.weight`),
  );
  if (prefix === undefined)
    throw new FormatError(dir.dir, 'model.embed_tokens.weight', 'missing tensor (no token embedding found)');
  const namer = config.sandwichNorms ? hfSandwichNamer(prefix) : hfTensorNamer(prefix);
  const weights = loadWeights(config, hfSource(dir), namer, {
    normPlusOne: config.arch === 'gemma3',
    onLayer: opts.onProgress,
  });
  return {
    config,
    weights,
    tokenizer: dir.tokenizerJsonPath ? openHfTokenizer(dir) : undefined,
    identity: {
      name: nameOrPath,
      path: dir.dir,
      format: 'safetensors',
      arch: config.arch,
      fingerprint: fingerprint(config, weights),
    },
    generationDefaults: dir.generationConfig ?? {},
  };
}
