/**
 * From a model name or path to config, weights and tokenizer: the only place that knows about
 * file formats and per-format tensor names.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { FormatError, OptionError } from '../formats/errors.js';
import { type GgufFile, readGguf, readGgufTensorBytes, readGgufTensorF32 } from '../formats/gguf.js';
import { type HfModelDir, openHfModelDir, openHfTokenizer, resolveModelSource } from '../formats/hf.js';
import { ggmlBlockSize, ggmlByteLength } from '../formats/quant.js';
import { readSafetensorsTensorF32 } from '../formats/safetensors.js';
import { Tokenizer } from '../formats/tokenizer.js';
import { type ModelConfig, configFromGguf, configFromHf } from './config.js';
import {
  type ModelWeights,
  QUANTIZED_MATMUL_TYPES,
  type TensorSource,
  type WeightMatrix,
  ggufTensorNamer,
  hfSandwichNamer,
  hfTensorNamer,
  loadWeights,
  matrixRow,
  matrixSize,
  quantizedMatrix,
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

/**
 * How weight matrices are held in memory:
 * - 'f32': every matrix dequantized to fp32 at load (4 bytes per weight).
 * - 'quantized': matrices of a GGUF file stay in the file's own blocks when their type is one the
 *   engine multiplies directly (QUANTIZED_MATMUL_TYPES: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
 *   Q6_K); other types, safetensors checkpoints, norms and biases are fp32 as with 'f32'.
 */
export type WeightStorage = 'f32' | 'quantized';

export interface LoadOptions {
  /** Called as layers load, for progress bars. */
  readonly onProgress?: (done: number, total: number) => void;
  /** How matrices are held; default 'f32' here (Model.load picks its own default, see there). */
  readonly weights?: WeightStorage;
}

function sameShape(file: string, name: string, got: readonly number[], want: readonly number[]): void {
  const n = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
  const squeezed = (s: readonly number[]) => s.filter((d) => d !== 1);
  if (n(got) !== n(want) || squeezed(got).join() !== squeezed(want).join())
    throw new FormatError(file, name, `has shape [${got.join(', ')}], expected [${want.join(', ')}]`);
}

/** A TensorSource that remembers what was read, so tensors nobody read can be refused. */
interface TrackedSource extends TensorSource {
  readonly consumed: Set<string>;
}

function ggufSource(
  file: GgufFile,
  cfg: () => ModelConfig | undefined,
  storage: WeightStorage,
): TrackedSource {
  const consumed = new Set<string>();
  const info = (name: string, shape: readonly number[]) => {
    const t = file.tensors.get(name);
    if (!t) throw new FormatError(file.path, name, 'missing tensor');
    sameShape(file.path, name, [...t.dims].reverse(), shape);
    consumed.add(name);
    return t;
  };
  // llama q/k rows come back in Hugging Face order (see unpermuteRotaryRows); rows are whole blocks,
  // so quantized rows move as bytes.
  const unpermuted = <T extends Float32Array | Uint8Array>(name: string, data: T, rowLength: number): T => {
    const c = cfg();
    if (c?.arch !== 'llama' || !/\.attn_[qk]\.weight$/.test(name)) return data;
    const heads = name.endsWith('attn_q.weight') ? c.nHeads : c.nKvHeads;
    return unpermuteRotaryRows(data, heads, c.headDim, rowLength);
  };
  const read = (name: string, shape: readonly number[]) => {
    info(name, shape);
    return unpermuted(name, readGgufTensorF32(file, name), shape[shape.length - 1]);
  };
  return {
    file: file.path,
    consumed,
    has: (name) => file.tensors.has(name),
    read,
    readMatrix: (name, shape) => {
      const t = info(name, shape);
      if (storage === 'f32' || !QUANTIZED_MATMUL_TYPES.has(t.type) || shape[1] % ggmlBlockSize(t.type) !== 0)
        return read(name, shape);
      const bytes = unpermuted(name, readGgufTensorBytes(file, name), ggmlByteLength(t.type, shape[1]));
      return quantizedMatrix(file.path, name, t.type, shape, bytes);
    },
  };
}

function hfSource(dir: HfModelDir): TrackedSource {
  const consumed = new Set<string>();
  const read = (name: string, shape: readonly number[]) => {
    const info = dir.tensors.get(name);
    if (!info) throw new FormatError(dir.dir, name, 'missing tensor');
    sameShape(info.file, name, info.shape, shape);
    consumed.add(name);
    return readSafetensorsTensorF32(info);
  };
  return {
    file: dir.dir,
    consumed,
    has: (name) => dir.tensors.has(name),
    read,
    // F16/BF16 checkpoints are widened to fp32: the engine has no 2-byte matmul yet.
    readMatrix: read,
  };
}

/**
 * Tensors a checkpoint may carry that the forward pass rightly does without. Anything else left
 * unread is an error: a tensor the loader does not know changes the model in a way it cannot run.
 */
const HARMLESS_HF_TENSORS: readonly { readonly pattern: RegExp; readonly reason: string }[] = [
  {
    pattern: /(^|\.)layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/,
    reason: 'old checkpoints saved the rotary buffer; it is recomputed from the config',
  },
  {
    pattern: /^(model\.)?(vision_tower|multi_modal_projector)\./,
    reason: "a multimodal gemma3's image encoder, unused for text",
  },
];

/** Throws on the first tensor of `names` that was neither read nor listed as harmless. */
function refuseUnread(
  names: Iterable<string>,
  consumed: ReadonlySet<string>,
  fileOf: (name: string) => string,
  harmless: readonly { readonly pattern: RegExp }[],
): void {
  for (const name of names) {
    if (consumed.has(name) || harmless.some((h) => h.pattern.test(name))) continue;
    throw new FormatError(
      fileOf(name),
      name,
      'tensor not used by the loader: this architecture does not know it, so the model would run without it',
    );
  }
}

/** Every `step`-th value of a matrix from the first, as fp32 (quantized rows dequantized one by one). */
function sampleValues(a: WeightMatrix, cols: number, step: number): Float32Array {
  const n = matrixSize(a);
  const sample = new Float32Array(Math.ceil(n / step));
  if (a instanceof Float32Array) {
    for (let i = 0, j = 0; i < n; i += step, j++) sample[j] = a[i];
    return sample;
  }
  const row = new Float32Array(cols);
  let cached = -1;
  for (let i = 0, j = 0; i < n; i += step, j++) {
    const r = Math.floor(i / cols);
    if (r !== cached) matrixRow(a, r, cols, row);
    cached = r;
    sample[j] = row[i - r * cols];
  }
  return sample;
}

/** The same for fp32 and quantized storage of one file, since it samples the values, not the bytes. */
function fingerprint(cfg: ModelConfig, w: ModelWeights): string {
  const h = createHash('sha256');
  // Unscaled rotary leaves the field out, so models that predate it keep their fingerprints (and
  // with them their activation caches and audit folders).
  const { ropeScaling, ...rest } = cfg;
  h.update(JSON.stringify(ropeScaling.every((s) => s.type === 'default') ? rest : cfg));
  const sampled: [WeightMatrix, number][] = [
    [w.embed, cfg.dModel],
    [w.layers[0].wq, cfg.dModel],
    [w.layers[w.layers.length - 1].wDown, cfg.ffnDim],
    [w.finalNorm, cfg.dModel],
  ];
  for (const [a, cols] of sampled) {
    const step = Math.max(1, Math.floor(matrixSize(a) / 4096));
    h.update(new Uint8Array(sampleValues(a, cols, step).buffer));
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

/** llama.cpp's llama3 rotary scaling: per-dimension divisors of the frequencies (config.ts). */
const ROPE_FREQS = 'rope_freqs.weight';

/** Loads a model named by a local path (.gguf file or Hugging Face directory) or a cached repo id. */
export function loadModelFiles(nameOrPath: string, opts: LoadOptions = {}): LoadedModel {
  const storage = opts.weights ?? 'f32';
  if (storage !== 'f32' && storage !== 'quantized')
    throw new OptionError(`weights must be 'f32' or 'quantized', got ${JSON.stringify(storage)}`);
  const source = resolveModelSource(nameOrPath);
  if (source.kind === 'gguf') {
    const file = readGguf(source.path);
    const embed = file.tensors.get('token_embd.weight');
    if (!embed) throw new FormatError(file.path, 'token_embd.weight', 'missing tensor');
    const ropeFreqs = file.tensors.has(ROPE_FREQS) ? readGgufTensorF32(file, ROPE_FREQS) : undefined;
    const base = configFromGguf(metadataReader(file), file.path, embed.dims[1], ropeFreqs);
    const config: ModelConfig = {
      ...base,
      tiedEmbeddings: base.arch === 'gemma3' || !file.tensors.has('output.weight'),
      attnBias: base.attnBias || file.tensors.has('blk.0.attn_q.bias'),
    };
    const tensors = ggufSource(file, () => config, storage);
    const weights = loadWeights(config, tensors, ggufTensorNamer, {
      normPlusOne: false,
      onLayer: opts.onProgress,
    });
    if (ropeFreqs) tensors.consumed.add(ROPE_FREQS);
    refuseUnread(file.tensors.keys(), tensors.consumed, () => file.path, []);
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
  const tensors = hfSource(dir);
  const weights = loadWeights(config, tensors, namer, {
    normPlusOne: config.arch === 'gemma3',
    onLayer: opts.onProgress,
  });
  refuseUnread(
    dir.tensors.keys(),
    tensors.consumed,
    (name) => dir.tensors.get(name)!.file,
    HARMLESS_HF_TENSORS,
  );
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
