/**
 * The architecture description the forward pass reads: one normalised record for every supported
 * family, built from a Hugging Face `config.json` or from GGUF metadata.
 *
 * Letters: L layers, D d_model, H query heads, G key/value heads, E head dim, F MLP width, V vocab.
 */
import { FormatError } from '../formats/errors.js';
import { NO_SCALING, type RopeScaling, ggufRopeScaling, hfRope } from './rope-config.js';

/** Architecture families the runtime implements. */
export type Architecture = 'llama' | 'qwen2' | 'gemma3';

export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ['llama', 'qwen2', 'gemma3'];

/** Everything the forward pass needs to know about a model's shape and numerics. */
export interface ModelConfig {
  readonly arch: Architecture;
  /** L: number of decoder blocks. */
  readonly nLayers: number;
  /** D: width of the residual stream. */
  readonly dModel: number;
  /** H: query heads. */
  readonly nHeads: number;
  /** G: key/value heads (G divides H). */
  readonly nKvHeads: number;
  /** E: width of one head. */
  readonly headDim: number;
  /** F: hidden width of the gated MLP. */
  readonly ffnDim: number;
  /** V: vocabulary size (rows of the embedding matrix). */
  readonly vocabSize: number;
  readonly rmsEps: number;
  /** Rotary base per layer (gemma3 uses a different base on sliding-window layers). */
  readonly ropeTheta: readonly number[];
  /** How each layer's rotary frequencies are scaled from its base (src/model/rope.ts computes them). */
  readonly ropeScaling: readonly RopeScaling[];
  /** Number of leading dimensions of each head that are rotated. */
  readonly ropeDim: number;
  /** Attention window per layer; 0 means full causal attention. */
  readonly window: readonly number[];
  /** Multiplier applied to q·k. */
  readonly attnScale: number;
  readonly act: 'silu' | 'gelu_tanh';
  /** Multiplier applied to token embeddings (gemma: sqrt(D)). */
  readonly embedScale: number;
  /** RMS-normalise each query and key head before rotary (gemma3). */
  readonly qkNorm: boolean;
  /** Extra norms on the attention and MLP outputs before they join the residual (gemma3). */
  readonly sandwichNorms: boolean;
  /** Biases on the q, k and v projections (qwen2). */
  readonly attnBias: boolean;
  readonly tiedEmbeddings: boolean;
  readonly maxContext: number;
}

type Json = Record<string, unknown>;

function num(obj: Json, key: string, file: string, fallback?: number): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new FormatError(file, key, 'missing (required for this architecture)');
  }
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new FormatError(file, key, `expected a number, got ${JSON.stringify(v)}`);
  return v;
}

function positiveInt(obj: Json, key: string, file: string, fallback?: number): number {
  const v = num(obj, key, file, fallback);
  if (!Number.isInteger(v) || v <= 0)
    throw new FormatError(file, key, `expected a positive integer, got ${v}`);
  return v;
}

function checkShape(c: ModelConfig, file: string): ModelConfig {
  if (c.nHeads % c.nKvHeads !== 0)
    throw new FormatError(
      file,
      'num_key_value_heads',
      `${c.nKvHeads} does not divide num_attention_heads ${c.nHeads}`,
    );
  if (c.ropeDim % 2 !== 0 || c.ropeDim > c.headDim)
    throw new FormatError(
      file,
      'rope dimension',
      `${c.ropeDim} must be even and at most head_dim ${c.headDim}`,
    );
  return c;
}

const HF_ARCHS: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Gemma3ForCausalLM: 'gemma3',
  Gemma3ForConditionalGeneration: 'gemma3',
};

/** Reads a Hugging Face `config.json` object. `file` is used in error messages. */
export function configFromHf(raw: Json, file: string): ModelConfig {
  const archName = Array.isArray(raw.architectures)
    ? String(raw.architectures[0])
    : String(raw.model_type ?? '');
  const arch = HF_ARCHS[archName];
  if (!arch)
    throw new FormatError(
      file,
      'architectures',
      `unsupported architecture ${JSON.stringify(archName)} (supported: ${Object.keys(HF_ARCHS).join(', ')})`,
    );
  // Multimodal gemma3 checkpoints keep the language model's settings under text_config.
  const cfg = (arch === 'gemma3' && typeof raw.text_config === 'object' ? raw.text_config : raw) as Json;
  const rope = hfRope(cfg, file);
  const nLayers = positiveInt(cfg, 'num_hidden_layers', file);
  const dModel = positiveInt(cfg, 'hidden_size', file);
  const nHeads = positiveInt(cfg, 'num_attention_heads', file);
  const nKvHeads = positiveInt(cfg, 'num_key_value_heads', file, nHeads);
  const headDim = positiveInt(cfg, 'head_dim', file, dModel / nHeads);
  const theta = rope.global.theta;
  const tied = Boolean(cfg.tie_word_embeddings ?? raw.tie_word_embeddings ?? arch === 'gemma3');
  const common = {
    nLayers,
    dModel,
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: positiveInt(cfg, 'intermediate_size', file),
    vocabSize: positiveInt(cfg, 'vocab_size', file),
    rmsEps: num(cfg, 'rms_norm_eps', file, 1e-6),
    ropeDim: headDim,
    tiedEmbeddings: tied,
    maxContext: positiveInt(cfg, 'max_position_embeddings', file, 4096),
  };
  if (arch === 'gemma3') {
    const windowSize = positiveInt(cfg, 'sliding_window', file, 4096);
    const layerTypes = Array.isArray(cfg.layer_types)
      ? (cfg.layer_types as unknown[]).map(String)
      : gemma3LayerTypes(nLayers, positiveInt(cfg, 'sliding_window_pattern', file, 6));
    if (layerTypes.length !== nLayers)
      throw new FormatError(file, 'layer_types', `has ${layerTypes.length} entries for ${nLayers} layers`);
    const localTheta = rope.local.theta;
    const act = String(cfg.hidden_activation ?? cfg.hidden_act ?? 'gelu_pytorch_tanh');
    if (act !== 'gelu_pytorch_tanh' && act !== 'gelu')
      throw new FormatError(file, 'hidden_activation', `unsupported activation ${JSON.stringify(act)}`);
    if (cfg.final_logit_softcapping != null || cfg.attn_logit_softcapping != null)
      throw new FormatError(file, 'final_logit_softcapping', 'logit soft-capping is not supported yet');
    return checkShape(
      {
        arch,
        ...common,
        ropeTheta: layerTypes.map((t) => (t === 'sliding_attention' ? localTheta : theta)),
        ropeScaling: layerTypes.map((t) => (t === 'sliding_attention' ? rope.local : rope.global).scaling),
        window: layerTypes.map((t) => (t === 'sliding_attention' ? windowSize : 0)),
        attnScale: 1 / Math.sqrt(num(cfg, 'query_pre_attn_scalar', file, headDim)),
        act: 'gelu_tanh',
        embedScale: Math.sqrt(dModel),
        qkNorm: true,
        sandwichNorms: true,
        attnBias: false,
      },
      file,
    );
  }
  const act = String(cfg.hidden_act ?? 'silu');
  if (act !== 'silu')
    throw new FormatError(file, 'hidden_act', `unsupported activation ${JSON.stringify(act)}`);
  const slidingWindow =
    (cfg.use_sliding_window ?? archName === 'MistralForCausalLM') && typeof cfg.sliding_window === 'number'
      ? (cfg.sliding_window as number)
      : 0;
  return checkShape(
    {
      arch,
      ...common,
      ropeTheta: new Array<number>(nLayers).fill(theta),
      ropeScaling: new Array<RopeScaling>(nLayers).fill(rope.global.scaling),
      window: new Array<number>(nLayers).fill(slidingWindow),
      attnScale: 1 / Math.sqrt(headDim),
      act: 'silu',
      embedScale: 1,
      qkNorm: false,
      sandwichNorms: false,
      attnBias: arch === 'qwen2' || Boolean(cfg.attention_bias),
    },
    file,
  );
}

/** Gemma 3 interleaves `pattern - 1` sliding-window layers with one global layer. */
function gemma3LayerTypes(nLayers: number, pattern: number): string[] {
  return Array.from({ length: nLayers }, (_, i) =>
    (i + 1) % pattern === 0 ? 'full_attention' : 'sliding_attention',
  );
}

/** Minimal view of GGUF metadata needed here (keeps this file independent of the reader). */
export interface MetadataReader {
  has(key: string): boolean;
  keys(): Iterable<string>;
  number(key: string): number;
  string(key: string): string;
}

const GGUF_ARCHS: Record<string, Architecture> = { llama: 'llama', qwen2: 'qwen2', gemma3: 'gemma3' };

/**
 * Reads GGUF metadata. `vocabSize` comes from the token embedding's shape because many files
 * omit `{arch}.vocab_size`; `ropeFreqFactors` is the `rope_freqs.weight` tensor, if the file has one.
 */
export function configFromGguf(
  meta: MetadataReader,
  file: string,
  vocabSize: number,
  ropeFreqFactors?: Float32Array,
): ModelConfig {
  const archName = meta.string('general.architecture');
  const arch = GGUF_ARCHS[archName];
  if (!arch)
    throw new FormatError(
      file,
      'general.architecture',
      `unsupported architecture ${JSON.stringify(archName)} (supported: ${Object.keys(GGUF_ARCHS).join(', ')})`,
    );
  const k = (key: string) => `${archName}.${key}`;
  const opt = (key: string, fallback: number) => (meta.has(k(key)) ? meta.number(k(key)) : fallback);
  const nLayers = meta.number(k('block_count'));
  const dModel = meta.number(k('embedding_length'));
  const nHeads = meta.number(k('attention.head_count'));
  const nKvHeads = opt('attention.head_count_kv', nHeads);
  const headDim = opt('attention.key_length', dModel / nHeads);
  const theta = opt('rope.freq_base', 10000);
  const ropeDim = opt('rope.dimension_count', headDim);
  if (ropeFreqFactors && arch !== 'llama')
    throw new FormatError(
      file,
      'rope_freqs.weight',
      `rotary frequency factors are not supported for ${arch}`,
    );
  const scaling = ggufRopeScaling(meta, file, archName, ropeDim, ropeFreqFactors);
  const common = {
    arch,
    nLayers,
    dModel,
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: meta.number(k('feed_forward_length')),
    vocabSize,
    rmsEps: opt('attention.layer_norm_rms_epsilon', 1e-6),
    ropeDim,
    maxContext: opt('context_length', 4096),
  };
  if (arch === 'gemma3') {
    // llama.cpp's gemma3 files do not store the layer pattern or (before rope.freq_base_swa) the
    // local rotary base; it assumes these. Keys, when present, win.
    const pattern = opt('attention.sliding_window_pattern', 6);
    const windowSize = opt('attention.sliding_window', 4096);
    const types = gemma3LayerTypes(nLayers, pattern);
    return checkShape(
      {
        ...common,
        tiedEmbeddings: true,
        ropeTheta: types.map((t) => (t === 'sliding_attention' ? opt('rope.freq_base_swa', 10000) : theta)),
        // llama.cpp scales only the global layers of gemma3, as transformers' gemma3 does
        ropeScaling: types.map((t) => (t === 'sliding_attention' ? NO_SCALING : scaling)),
        window: types.map((t) => (t === 'sliding_attention' ? windowSize : 0)),
        attnScale: 1 / Math.sqrt(headDim),
        act: 'gelu_tanh',
        embedScale: Math.sqrt(dModel),
        qkNorm: true,
        sandwichNorms: true,
        attnBias: false,
      },
      file,
    );
  }
  const window = opt('attention.sliding_window', 0);
  return checkShape(
    {
      ...common,
      tiedEmbeddings: false, // decided by the loader from the presence of output.weight
      ropeTheta: new Array<number>(nLayers).fill(theta),
      ropeScaling: new Array<RopeScaling>(nLayers).fill(scaling),
      window: new Array<number>(nLayers).fill(window),
      attnScale: 1 / Math.sqrt(headDim),
      act: 'silu',
      embedScale: 1,
      qkNorm: false,
      sandwichNorms: false,
      attnBias: arch === 'qwen2',
    },
    file,
  );
}
