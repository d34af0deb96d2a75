/**
 * Model weights in the layout the forward pass uses, loaded from either file format.
 *
 * Every matrix is row-major [out, in] (Hugging Face layout): fp32, or, when loaded with
 * `weights: 'quantized'`, the GGUF file's own blocks for the block types the engine multiplies
 * directly (QUANTIZED_MATMUL_TYPES). Norms and biases are always fp32. Norm weights are stored as the
 * effective multiplier: Gemma's `(1 + w)` is folded in at load, as llama.cpp's converter does, so
 * the forward pass has one RMSNorm. Letters as in config.ts.
 */
import { FormatError } from '../formats/errors.js';
import { GgmlType, dequantize, ggmlBlockSize, ggmlByteLength, ggmlTypeName } from '../formats/quant.js';
import type { ModelConfig } from './config.js';

/**
 * A matrix [rows, cols] kept in a ggml block layout, row-major, exactly as the GGUF file stores it:
 * each row is cols/blockSize blocks of `type`.
 */
export interface QuantizedMatrix {
  readonly type: GgmlType;
  readonly rows: number;
  readonly cols: number;
  readonly bytes: Uint8Array;
}

/** A weight matrix as the forward pass multiplies it: fp32, or quantized blocks. */
export type WeightMatrix = Float32Array | QuantizedMatrix;

/** Block types the engine's quantized matmul (Backend.matmulQuant) works on directly. */
export const QUANTIZED_MATMUL_TYPES: ReadonlySet<number> = new Set([
  GgmlType.Q4_0,
  GgmlType.Q4_1,
  GgmlType.Q5_0,
  GgmlType.Q5_1,
  GgmlType.Q8_0,
  GgmlType.Q4_K,
  GgmlType.Q5_K,
  GgmlType.Q6_K,
]);

/** Number of values of a matrix. */
export function matrixSize(m: WeightMatrix): number {
  return m instanceof Float32Array ? m.length : m.rows * m.cols;
}

/** Bytes a matrix occupies in memory. */
export function matrixBytes(m: WeightMatrix): number {
  return m instanceof Float32Array ? m.byteLength : m.bytes.byteLength;
}

/**
 * Row `r` of a matrix with `cols` values per row, as fp32: a view of an fp32 matrix, or the
 * quantized row dequantized into `out` (bit-identical to dequantizing the whole matrix).
 */
export function matrixRow(m: WeightMatrix, r: number, cols: number, out?: Float32Array): Float32Array {
  if (m instanceof Float32Array) return m.subarray(r * cols, (r + 1) * cols);
  const rowBytes = ggmlByteLength(m.type, m.cols);
  return dequantize(m.type, m.bytes.subarray(r * rowBytes, (r + 1) * rowBytes), m.cols, out);
}

/** Whether two matrices hold the same values (for checkpoints that save a tied matrix twice). */
export function sameMatrix(a: WeightMatrix, b: WeightMatrix, cols: number): boolean {
  if (a instanceof Float32Array && b instanceof Float32Array)
    return a.length === b.length && a.every((v, i) => v === b[i]);
  const rows = matrixSize(a) / cols;
  if (matrixSize(b) !== rows * cols) return false;
  const ra = new Float32Array(cols);
  const rb = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    const x = matrixRow(a, r, cols, ra);
    const y = matrixRow(b, r, cols, rb);
    for (let i = 0; i < cols; i++) if (x[i] !== y[i]) return false;
  }
  return true;
}

export interface LayerWeights {
  attnNorm: Float32Array; // [D]
  wq: WeightMatrix; // [H*E, D]
  wk: WeightMatrix; // [G*E, D]
  wv: WeightMatrix; // [G*E, D]
  wo: WeightMatrix; // [D, H*E]
  bq?: Float32Array; // [H*E]
  bk?: Float32Array; // [G*E]
  bv?: Float32Array; // [G*E]
  qNorm?: Float32Array; // [E]
  kNorm?: Float32Array; // [E]
  postAttnNorm?: Float32Array; // [D]
  mlpNorm: Float32Array; // [D]
  postMlpNorm?: Float32Array; // [D]
  wGate: WeightMatrix; // [F, D]
  wUp: WeightMatrix; // [F, D]
  wDown: WeightMatrix; // [D, F]
}

export interface ModelWeights {
  embed: WeightMatrix; // [V, D]
  layers: LayerWeights[];
  finalNorm: Float32Array; // [D]
  /** [V, D]; the same object as `embed` when embeddings are tied. */
  lmHead: WeightMatrix;
}

/** Where tensors come from: a GGUF file or a safetensors checkpoint, behind canonical names. */
export interface TensorSource {
  readonly file: string;
  has(name: string): boolean;
  /** Reads a tensor as fp32 and checks that it holds `shape` (outermost first). */
  read(name: string, shape: readonly number[]): Float32Array;
  /**
   * Reads a matrix [rows, cols] for a matmul or an embedding lookup: as quantized blocks when the
   * source keeps them (a GGUF tensor of a QUANTIZED_MATMUL_TYPES type, loaded with
   * `weights: 'quantized'`), else as fp32.
   */
  readMatrix(name: string, shape: readonly [number, number]): WeightMatrix;
}

/** A quantized matrix checked against its shape, or a FormatError naming the tensor. */
export function quantizedMatrix(
  file: string,
  name: string,
  type: GgmlType,
  shape: readonly [number, number],
  bytes: Uint8Array,
): QuantizedMatrix {
  const [rows, cols] = shape;
  if (cols % ggmlBlockSize(type) !== 0)
    throw new FormatError(
      file,
      name,
      `rows of ${cols} values are not whole ${ggmlTypeName(type)} blocks of ${ggmlBlockSize(type)}`,
    );
  const need = ggmlByteLength(type, rows * cols);
  if (bytes.byteLength !== need)
    throw new FormatError(file, name, `holds ${bytes.byteLength} bytes, ${ggmlTypeName(type)} needs ${need}`);
  return { type, rows, cols, bytes };
}

/** The roles a tensor plays, named independently of any file format. */
export type TensorRole =
  | 'embed'
  | 'final_norm'
  | 'lm_head'
  | 'attn_norm'
  | 'q'
  | 'k'
  | 'v'
  | 'o'
  | 'q_bias'
  | 'k_bias'
  | 'v_bias'
  | 'q_norm'
  | 'k_norm'
  | 'post_attn_norm'
  | 'mlp_norm'
  | 'post_mlp_norm'
  | 'gate'
  | 'up'
  | 'down';

/** Maps a role (and layer) to the tensor name a given format and architecture uses. */
export type TensorNamer = (role: TensorRole, layer?: number) => string;

function addOne(w: Float32Array): Float32Array {
  for (let i = 0; i < w.length; i++) w[i] += 1;
  return w;
}

/**
 * Loads all weights of `cfg` from `src`. `normPlusOne` folds Gemma's (1 + w) norm convention
 * (true for Hugging Face gemma checkpoints, false for GGUF, whose converter already did it).
 * `onLayer` reports progress.
 */
export function loadWeights(
  cfg: ModelConfig,
  src: TensorSource,
  name: TensorNamer,
  opts: { normPlusOne: boolean; onLayer?: (done: number, total: number) => void },
): ModelWeights {
  const { dModel: D, nHeads: H, nKvHeads: G, headDim: E, ffnDim: F, vocabSize: V } = cfg;
  const norm = (role: TensorRole, layer: number | undefined, size: number) => {
    const w = src.read(name(role, layer), [size]);
    return opts.normPlusOne ? addOne(w) : w;
  };
  const optional = (role: TensorRole, layer: number, shape: number[]) =>
    src.has(name(role, layer)) ? src.read(name(role, layer), shape) : undefined;
  const embed = src.readMatrix(name('embed'), [V, D]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.nLayers; l++) {
    const layer: LayerWeights = {
      attnNorm: norm('attn_norm', l, D),
      wq: src.readMatrix(name('q', l), [H * E, D]),
      wk: src.readMatrix(name('k', l), [G * E, D]),
      wv: src.readMatrix(name('v', l), [G * E, D]),
      wo: src.readMatrix(name('o', l), [D, H * E]),
      mlpNorm: norm('mlp_norm', l, D),
      wGate: src.readMatrix(name('gate', l), [F, D]),
      wUp: src.readMatrix(name('up', l), [F, D]),
      wDown: src.readMatrix(name('down', l), [D, F]),
    };
    if (cfg.attnBias) {
      layer.bq = src.read(name('q_bias', l), [H * E]);
      layer.bk = src.read(name('k_bias', l), [G * E]);
      layer.bv = src.read(name('v_bias', l), [G * E]);
    } else {
      // Some llama-family checkpoints carry biases without announcing them in the config.
      layer.bq = optional('q_bias', l, [H * E]);
      layer.bk = optional('k_bias', l, [G * E]);
      layer.bv = optional('v_bias', l, [G * E]);
    }
    if (cfg.qkNorm) {
      layer.qNorm = norm('q_norm', l, E);
      layer.kNorm = norm('k_norm', l, E);
    }
    if (cfg.sandwichNorms) {
      layer.postAttnNorm = norm('post_attn_norm', l, D);
      layer.postMlpNorm = norm('post_mlp_norm', l, D);
    }
    layers.push(layer);
    opts.onLayer?.(l + 1, cfg.nLayers);
  }
  const finalNorm = norm('final_norm', undefined, D);
  let lmHead = embed;
  if (cfg.tiedEmbeddings && src.has(name('lm_head'))) {
    // Some checkpoints save the tied matrix twice; a second matrix that differs is not tied.
    const saved = src.readMatrix(name('lm_head'), [V, D]);
    if (!sameMatrix(saved, embed, D))
      throw new FormatError(
        src.file,
        name('lm_head'),
        'differs from the token embedding, but the config says embeddings are tied',
      );
  }
  if (!cfg.tiedEmbeddings) {
    if (!src.has(name('lm_head')))
      throw new FormatError(
        src.file,
        name('lm_head'),
        'missing tensor (the config says embeddings are not tied)',
      );
    lmHead = src.readMatrix(name('lm_head'), [V, D]);
  }
  return { embed, layers, finalNorm, lmHead };
}

/** Tensor names in Hugging Face checkpoints. `prefix` is usually "model." */
export function hfTensorNamer(prefix: string): TensorNamer {
  const block: Record<Exclude<TensorRole, 'embed' | 'final_norm' | 'lm_head'>, string> = {
    attn_norm: 'input_layernorm.weight',
    q: 'self_attn.q_proj.weight',
    k: 'self_attn.k_proj.weight',
    v: 'self_attn.v_proj.weight',
    o: 'self_attn.o_proj.weight',
    q_bias: 'self_attn.q_proj.bias',
    k_bias: 'self_attn.k_proj.bias',
    v_bias: 'self_attn.v_proj.bias',
    q_norm: 'self_attn.q_norm.weight',
    k_norm: 'self_attn.k_norm.weight',
    post_attn_norm: 'post_attention_layernorm.weight',
    mlp_norm: 'post_attention_layernorm.weight',
    post_mlp_norm: 'post_feedforward_layernorm.weight',
    gate: 'mlp.gate_proj.weight',
    up: 'mlp.up_proj.weight',
    down: 'mlp.down_proj.weight',
  };
  return (role, layer) => {
    if (role === 'embed') return `${prefix}embed_tokens.weight`;
    if (role === 'final_norm') return `${prefix}norm.weight`;
    if (role === 'lm_head') return 'lm_head.weight';
    return `${prefix}layers.${layer}.${block[role]}`;
  };
}

/**
 * Gemma-style checkpoints name the pre-MLP norm `pre_feedforward_layernorm` and use
 * `post_attention_layernorm` for the norm on the attention output.
 */
export function hfSandwichNamer(prefix: string): TensorNamer {
  const base = hfTensorNamer(prefix);
  return (role, layer) =>
    role === 'mlp_norm' ? `${prefix}layers.${layer}.pre_feedforward_layernorm.weight` : base(role, layer);
}

/** Tensor names in GGUF files (llama.cpp's converter). */
export const ggufTensorNamer: TensorNamer = (role, layer) => {
  const names: Record<TensorRole, string> = {
    embed: 'token_embd.weight',
    final_norm: 'output_norm.weight',
    lm_head: 'output.weight',
    attn_norm: 'attn_norm.weight',
    q: 'attn_q.weight',
    k: 'attn_k.weight',
    v: 'attn_v.weight',
    o: 'attn_output.weight',
    q_bias: 'attn_q.bias',
    k_bias: 'attn_k.bias',
    v_bias: 'attn_v.bias',
    q_norm: 'attn_q_norm.weight',
    k_norm: 'attn_k_norm.weight',
    post_attn_norm: 'post_attention_norm.weight',
    mlp_norm: 'ffn_norm.weight',
    post_mlp_norm: 'post_ffw_norm.weight',
    gate: 'ffn_gate.weight',
    up: 'ffn_up.weight',
    down: 'ffn_down.weight',
  };
  return layer === undefined ? names[role] : `blk.${layer}.${names[role]}`;
};

/**
 * llama.cpp's converter reorders the rows of each llama q/k head from "first half, second half"
 * to interleaved pairs, to suit its rotary kernel. Undo it so the NeoX-style rotary applies.
 * w: [heads*E] rows of `rowLength` elements (fp32 values, or the bytes of a quantized row: a row
 * is whole blocks, so rows move as they are); row (h, i, half) in the file is row (h, half, i) in
 * Hugging Face order.
 */
export function unpermuteRotaryRows<T extends Float32Array | Uint8Array>(
  w: T,
  heads: number,
  E: number,
  rowLength: number,
): T {
  const out = (w instanceof Float32Array ? new Float32Array(w.length) : new Uint8Array(w.length)) as T;
  const half = E / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let p = 0; p < 2; p++) {
        const src = (h * E + i * 2 + p) * rowLength;
        const dst = (h * E + p * half + i) * rowLength;
        out.set(w.subarray(src, src + rowLength), dst);
      }
  return out;
}
