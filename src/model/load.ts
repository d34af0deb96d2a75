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
import { type ModelConfig, SUPPORTED_ARCHITECTURES, configFromGguf, configFromHf } from './config.js';
import {
  type ModelWeights,
  QUANTIZED_MATMUL_TYPES,
  type TensorSource,
  type WeightMatrix,
  ggufTensorNamer,
  hfSandwichNamer,
  hfTensorNamer,
  type TensorNamer,
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

/**
 * Checks a declared layer count against the blocks that have tensors in the file (`blockIndex`
 * extracts a tensor's block index). Runs before the config is built: the count sizes per-layer
 * arrays and caches, so a lying `block_count` of 1e8 would exhaust memory before any tensor is
 * found missing, and 0 would leave the model without blocks. A non-number is left to the config
 * reader, which names it.
 */
function checkLayerCount(
  file: string,
  key: string,
  declared: unknown,
  tensorNames: Iterable<string>,
  blockIndex: (name: string) => number | undefined,
): void {
  const count = typeof declared === 'bigint' ? Number(declared) : declared;
  if (typeof count !== 'number') return;
  const present = new Set<number>();
  for (const name of tensorNames) {
    const l = blockIndex(name);
    if (l !== undefined) present.add(l);
  }
  const found = present.size === 0 ? 'no block tensors' : `tensors for ${present.size} blocks`;
  if (count !== present.size || present.size === 0)
    throw new FormatError(file, key, `says ${String(declared)} layers, but the file has ${found}`);
  for (let l = 0; l < count; l++)
    if (!present.has(l))
      throw new FormatError(file, key, `says ${count} layers, but block ${l} has no tensors`);
}

/** The config keys each checked dimension comes from, for error messages. */
interface DimensionKeys {
  readonly dModel: string;
  readonly vocabSize: string;
  readonly nHeads: string;
  readonly nKvHeads: string;
  readonly headDim: string;
  readonly ffnDim: string;
}

/**
 * Checks the config's sizes against the shapes of the token embedding and block 0's tensors
 * (`shapeOf` gives a tensor's shape outermost first, or undefined when absent: the weight loader
 * names missing tensors), so that a wrong count is reported by its config key.
 */
function checkDimensions(
  file: string,
  c: ModelConfig,
  keys: DimensionKeys,
  name: TensorNamer,
  shapeOf: (tensor: string) => readonly number[] | undefined,
): void {
  const dims: [keyof DimensionKeys, number][] = [
    ['dModel', c.dModel],
    ['vocabSize', c.vocabSize],
    ['nHeads', c.nHeads],
    ['nKvHeads', c.nKvHeads],
    ['headDim', c.headDim],
    ['ffnDim', c.ffnDim],
  ];
  for (const [dim, value] of dims)
    if (!(Number.isSafeInteger(value) && value > 0))
      throw new FormatError(file, keys[dim], `expected a positive integer, got ${value}`);
  const expect = (tensor: string, axis: number, want: number, key: string, what: string) => {
    const got = shapeOf(tensor)?.[axis];
    if (got !== undefined && got !== want)
      throw new FormatError(file, key, `${what}, but ${tensor} has ${got} along that axis`);
  };
  const heads = (n: number) => `${n} heads × head dim ${c.headDim} = ${n * c.headDim}`;
  expect(name('embed'), 1, c.dModel, keys.dModel, `the model width is ${c.dModel}`);
  expect(name('embed'), 0, c.vocabSize, keys.vocabSize, `the vocabulary size is ${c.vocabSize}`);
  expect(name('q', 0), 0, c.nHeads * c.headDim, keys.nHeads, heads(c.nHeads));
  expect(name('k', 0), 0, c.nKvHeads * c.headDim, keys.nKvHeads, heads(c.nKvHeads));
  expect(name('gate', 0), 0, c.ffnDim, keys.ffnDim, `the MLP width is ${c.ffnDim}`);
}

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
    // An unsupported architecture is reported by the config reader, whatever its counts say.
    const arch = file.metadata.get('general.architecture');
    const blockCount = `${String(arch)}.block_count`;
    if (SUPPORTED_ARCHITECTURES.some((a) => a === arch) && file.metadata.has(blockCount))
      checkLayerCount(file.path, blockCount, file.metadata.get(blockCount), file.tensors.keys(), (name) => {
        const m = /^blk\.(\d+)\./.exec(name);
        return m ? Number(m[1]) : undefined;
      });
    const ropeFreqs = file.tensors.has(ROPE_FREQS) ? readGgufTensorF32(file, ROPE_FREQS) : undefined;
    const base = configFromGguf(metadataReader(file), file.path, embed.dims[1], ropeFreqs);
    const config: ModelConfig = {
      ...base,
      tiedEmbeddings: base.arch === 'gemma3' || !file.tensors.has('output.weight'),
      attnBias: base.attnBias || file.tensors.has('blk.0.attn_q.bias'),
    };
    const key = (k: string) => `${config.arch}.${k}`;
    checkDimensions(
      file.path,
      config,
      {
        dModel: key('embedding_length'),
        vocabSize: 'token_embd.weight',
        nHeads: key('attention.head_count'),
        nKvHeads: key('attention.head_count_kv'),
        headDim: key('attention.key_length'),
        ffnDim: key('feed_forward_length'),
      },
      ggufTensorNamer,
      (name) => {
        const dims = file.tensors.get(name)?.dims;
        return dims && [...dims].reverse();
      },
    );
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
  const configFile = path.join(dir.dir, 'config.json');
  const prefix = ['model.', 'model.language_model.', 'language_model.model.'].find((p) =>
    dir.tensors.has(`${p}embed_tokens.weight`),
  );
  if (prefix === undefined)
    throw new FormatError(dir.dir, 'model.embed_tokens.weight', 'missing tensor (no token embedding found)');
  // Multimodal checkpoints keep the language model's sizes under text_config.
  const textConfig = dir.config.text_config;
  const sizes =
    !('num_hidden_layers' in dir.config) && typeof textConfig === 'object' && textConfig !== null
      ? { at: 'text_config.', cfg: textConfig as Record<string, unknown> }
      : { at: '', cfg: dir.config };
  checkLayerCount(
    configFile,
    `${sizes.at}num_hidden_layers`,
    sizes.cfg.num_hidden_layers,
    dir.tensors.keys(),
    (name) => {
      if (!name.startsWith(prefix)) return undefined;
      const m = /^layers\.(\d+)\./.exec(name.slice(prefix.length));
      return m ? Number(m[1]) : undefined;
    },
  );
  const config = configFromHf(dir.config, configFile);
  const namer = config.sandwichNorms ? hfSandwichNamer(prefix) : hfTensorNamer(prefix);
  checkDimensions(
    configFile,
    config,
    {
      dModel: `${sizes.at}hidden_size`,
      vocabSize: `${sizes.at}vocab_size`,
      nHeads: `${sizes.at}num_attention_heads`,
      nKvHeads: `${sizes.at}num_key_value_heads`,
      headDim: `${sizes.at}head_dim`,
      ffnDim: `${sizes.at}intermediate_size`,
    },
    namer,
    (name) => dir.tensors.get(name)?.shape,
  );
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
