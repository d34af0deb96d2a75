/**
 * Model weights in the layout the forward pass uses, loaded from either file format.
 *
 * Every matrix is fp32, row-major [out, in] (Hugging Face layout). Norm weights are stored as the
 * effective multiplier: Gemma's `(1 + w)` is folded in at load, as llama.cpp's converter does, so
 * the forward pass has one RMSNorm. Letters as in config.ts.
 */
import { FormatError } from '../formats/errors.js';
import { quantizeQ8_0 } from '../formats/quant.js';
import type { ModelConfig } from './config.js';

export interface LayerWeights {
  attnNorm: Float32Array; // [D]
  wq: Float32Array; // [H*E, D]
  wk: Float32Array; // [G*E, D]
  wv: Float32Array; // [G*E, D]
  wo: Float32Array; // [D, H*E]
  bq?: Float32Array; // [H*E]
  bk?: Float32Array; // [G*E]
  bv?: Float32Array; // [G*E]
  qNorm?: Float32Array; // [E]
  kNorm?: Float32Array; // [E]
  postAttnNorm?: Float32Array; // [D]
  mlpNorm: Float32Array; // [D]
  postMlpNorm?: Float32Array; // [D]
  wGate: Float32Array; // [F, D]
  wUp: Float32Array; // [F, D]
  wDown: Float32Array; // [D, F]
}

export interface ModelWeights {
  embed: Float32Array; // [V, D]
  layers: LayerWeights[];
  finalNorm: Float32Array; // [D]
  /** [V, D]; the same array as `embed` when embeddings are tied. */
  lmHead: Float32Array;
  /**
   * Q8_0 copies of the matrices, used for decoding steps when the model was loaded with
   * `decodeWeights: 'q8'`: batch-1 decoding reads every weight once per token, and 1.06 bytes per
   * weight instead of 4 is most of llama.cpp's speed advantage.
   */
  q8?: WeakMap<Float32Array, Uint8Array>;
}

/** Builds the Q8_0 copies of every matrix whose input width is a multiple of 32. */
export function quantizeForDecode(w: ModelWeights): void {
  const q8 = new WeakMap<Float32Array, Uint8Array>();
  const add = (m: Float32Array, K: number) => {
    if (K % 32 === 0 && !q8.has(m)) q8.set(m, quantizeQ8_0(m));
  };
  const D = w.finalNorm.length;
  for (const l of w.layers) {
    for (const m of [l.wq, l.wk, l.wv, l.wGate, l.wUp]) add(m, D);
    add(l.wo, l.wo.length / D);
    add(l.wDown, l.wDown.length / D);
  }
  add(w.lmHead, D);
  w.q8 = q8;
}

/** Where tensors come from: a GGUF file or a safetensors checkpoint, behind canonical names. */
export interface TensorSource {
  readonly file: string;
  has(name: string): boolean;
  /** Reads a tensor as fp32 and checks that it holds `shape` (outermost first). */
  read(name: string, shape: readonly number[]): Float32Array;
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
  const embed = src.read(name('embed'), [V, D]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.nLayers; l++) {
    const layer: LayerWeights = {
      attnNorm: norm('attn_norm', l, D),
      wq: src.read(name('q', l), [H * E, D]),
      wk: src.read(name('k', l), [G * E, D]),
      wv: src.read(name('v', l), [G * E, D]),
      wo: src.read(name('o', l), [D, H * E]),
      mlpNorm: norm('mlp_norm', l, D),
      wGate: src.read(name('gate', l), [F, D]),
      wUp: src.read(name('up', l), [F, D]),
      wDown: src.read(name('down', l), [D, F]),
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
    const saved = src.read(name('lm_head'), [V, D]);
    if (saved.some((v, i) => v !== embed[i]))
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
    lmHead = src.read(name('lm_head'), [V, D]);
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
 * w: [heads*E, K]; row (h, i, half) in the file is row (h, half, i) in Hugging Face order.
 */
export function unpermuteRotaryRows(w: Float32Array, heads: number, E: number, K: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = E / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let p = 0; p < 2; p++) {
        const src = (h * E + i * 2 + p) * K;
        const dst = (h * E + p * half + i) * K;
        out.set(w.subarray(src, src + K), dst);
      }
  return out;
}
