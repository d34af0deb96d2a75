/**
 * The architecture description the forward pass reads: one normalised record for every supported
 * family, built from a Hugging Face `config.json` or from GGUF metadata.
 *
 * Letters: L layers, D d_model, H query heads, G key/value heads, E head dim, F MLP width, V vocab.
 */
import { FormatError } from '../formats/errors.js';

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

/**
 * Rotary scaling of one layer, with transformers' semantics (modeling_rope_utils.py), every default
 * resolved. `freq_factors` is llama.cpp's form of llama3 scaling: a GGUF `rope_freqs.weight` tensor
 * whose entries divide the frequencies.
 */
export type RopeScaling =
  | { readonly type: 'default' }
  | { readonly type: 'linear'; readonly factor: number }
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalContext: number;
    }
  | {
      readonly type: 'yarn';
      readonly factor: number;
      readonly originalContext: number;
      readonly betaFast: number;
      readonly betaSlow: number;
      /** Multiplier on cos and sin (transformers' attention_factor, resolved from mscale if unset). */
      readonly attentionFactor: number;
      /** Round the ramp's ends to whole dimensions (transformers' `truncate`, default true). */
      readonly truncate: boolean;
    }
  | { readonly type: 'freq_factors'; readonly factors: readonly number[] };

const NO_SCALING: RopeScaling = { type: 'default' };

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

/** One layer's rotary settings. */
interface RopeLayer {
  readonly theta: number;
  readonly scaling: RopeScaling;
}

/** The keys transformers reads for each rope type, besides rope_type/type, rope_theta, partial_rotary_factor. */
const HF_ROPE_KEYS: Record<string, readonly string[]> = {
  default: [],
  linear: ['factor'],
  llama3: ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'],
  yarn: [
    'factor',
    'original_max_position_embeddings',
    'attention_factor',
    'beta_fast',
    'beta_slow',
    'mscale',
    'mscale_all_dim',
    'truncate',
  ],
};

/** obj[key] as a finite number (`fallback` when absent), named `field` in errors. */
function fieldNumber(obj: Json, key: string, file: string, field: string, fallback?: number): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new FormatError(file, field, 'missing (required for this rope type)');
  }
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new FormatError(file, field, `expected a number, got ${JSON.stringify(v)}`);
  return v;
}

function positive(obj: Json, key: string, file: string, field: string, fallback?: number): number {
  const v = fieldNumber(obj, key, file, field, fallback);
  if (!(v > 0)) throw new FormatError(file, field, `expected a positive number, got ${v}`);
  return v;
}

/** transformers' yarn get_mscale. */
function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * One `rope_scaling` / `rope_parameters` record. `key` names it in errors; `thetaDefault` and
 * `originalDefault` are what transformers fills in when the record omits rope_theta and
 * original_max_position_embeddings.
 */
function hfRopeLayer(
  raw: unknown,
  key: string,
  file: string,
  thetaDefault: number,
  originalDefault: number,
  originalOverride: number | undefined,
): RopeLayer {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new FormatError(file, key, `expected an object, got ${JSON.stringify(raw)}`);
  const p = raw as Json;
  const type = p.rope_type ?? p.type ?? 'default';
  if (typeof type !== 'string' || !(type in HF_ROPE_KEYS))
    throw new FormatError(
      file,
      `${key}.rope_type`,
      `rope type ${JSON.stringify(type)} is not supported (supported: ${Object.keys(HF_ROPE_KEYS).join(', ')})`,
    );
  const known = new Set(['rope_type', 'type', 'rope_theta', 'partial_rotary_factor', ...HF_ROPE_KEYS[type]]);
  for (const k of Object.keys(p))
    if (!known.has(k)) throw new FormatError(file, `${key}.${k}`, `unknown key for rope type '${type}'`);
  const field = (k: string) => `${key}.${k}`;
  if (fieldNumber(p, 'partial_rotary_factor', file, field('partial_rotary_factor'), 1) !== 1)
    throw new FormatError(file, field('partial_rotary_factor'), 'partial rotary embedding is not supported');
  const theta = positive(p, 'rope_theta', file, field('rope_theta'), thetaDefault);
  const factor = () => positive(p, 'factor', file, field('factor'));
  const original = () =>
    originalOverride ??
    positive(
      p,
      'original_max_position_embeddings',
      file,
      field('original_max_position_embeddings'),
      originalDefault,
    );
  switch (type) {
    case 'default':
      return { theta, scaling: NO_SCALING };
    case 'linear':
      return { theta, scaling: { type, factor: factor() } };
    case 'llama3': {
      const lowFreqFactor = positive(p, 'low_freq_factor', file, field('low_freq_factor'));
      const highFreqFactor = positive(p, 'high_freq_factor', file, field('high_freq_factor'));
      if (!(highFreqFactor > lowFreqFactor))
        throw new FormatError(
          file,
          field('high_freq_factor'),
          `${highFreqFactor} must exceed low_freq_factor ${lowFreqFactor}`,
        );
      const originalContext = original();
      return { theta, scaling: { type, factor: factor(), lowFreqFactor, highFreqFactor, originalContext } };
    }
    default: {
      const f = factor();
      // transformers reads these with `or`: 0 and null mean the default
      const mscale = fieldNumber(p, 'mscale', file, field('mscale'), 0);
      const mscaleAllDim = fieldNumber(p, 'mscale_all_dim', file, field('mscale_all_dim'), 0);
      const given = p.attention_factor;
      const attentionFactor =
        given !== undefined && given !== null
          ? positive(p, 'attention_factor', file, field('attention_factor'))
          : mscale && mscaleAllDim
            ? yarnMscale(f, mscale) / yarnMscale(f, mscaleAllDim)
            : yarnMscale(f);
      const truncate = p.truncate ?? true;
      if (typeof truncate !== 'boolean')
        throw new FormatError(
          file,
          field('truncate'),
          `expected true or false, got ${JSON.stringify(truncate)}`,
        );
      return {
        theta,
        scaling: {
          type: 'yarn',
          factor: f,
          originalContext: original(),
          betaFast: fieldNumber(p, 'beta_fast', file, field('beta_fast'), 0) || 32,
          betaSlow: fieldNumber(p, 'beta_slow', file, field('beta_slow'), 0) || 1,
          attentionFactor,
          truncate,
        },
      };
    }
  }
}

/**
 * Rotary settings of global and local (gemma3 sliding-window) layers. transformers 5 writes
 * `rope_parameters` (one record, or one per layer type); older configs use `rope_theta`,
 * `rope_local_base_freq` and `rope_scaling`, which then wins over `rope_parameters` and applies to
 * global layers only.
 */
function hfRope(cfg: Json, file: string): { global: RopeLayer; local: RopeLayer } {
  const theta = num(cfg, 'rope_theta', file, 10000);
  const localTheta = num(cfg, 'rope_local_base_freq', file, 10000);
  const maxContext = num(cfg, 'max_position_embeddings', file, 4096);
  // Phi-3-style configs keep the pretraining length next to the rope record; transformers prefers it.
  const topOriginal =
    cfg.original_max_position_embeddings === undefined
      ? undefined
      : positive(cfg, 'original_max_position_embeddings', file, 'original_max_position_embeddings');
  const local: RopeLayer = { theta: localTheta, scaling: NO_SCALING };
  const scaling = cfg.rope_scaling;
  if (scaling !== undefined && scaling !== null)
    return { global: hfRopeLayer(scaling, 'rope_scaling', file, theta, maxContext, topOriginal), local };
  const params = cfg.rope_parameters;
  if (params === undefined || params === null) return { global: { theta, scaling: NO_SCALING }, local };
  if (typeof params === 'object' && ('full_attention' in params || 'sliding_attention' in params)) {
    const byType = params as Json;
    for (const kind of Object.keys(byType))
      if (kind !== 'full_attention' && kind !== 'sliding_attention')
        throw new FormatError(file, `rope_parameters.${kind}`, 'unknown layer type');
    const layer = (kind: string, fallback: RopeLayer, thetaDefault: number) =>
      byType[kind] === undefined || byType[kind] === null
        ? fallback
        : hfRopeLayer(byType[kind], `rope_parameters.${kind}`, file, thetaDefault, maxContext, undefined);
    return {
      global: layer('full_attention', { theta, scaling: NO_SCALING }, theta),
      local: layer('sliding_attention', local, localTheta),
    };
  }
  return { global: hfRopeLayer(params, 'rope_parameters', file, theta, maxContext, topOriginal), local };
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

/** The `{arch}.rope.scaling.*` keys read here; any other is refused rather than ignored. */
const GGUF_SCALING_KEYS = [
  'type',
  'factor',
  'original_context_length',
  'yarn_beta_fast',
  'yarn_beta_slow',
  'yarn_attn_factor',
  'yarn_ext_factor',
  'yarn_log_multiplier',
  'attn_factor',
  'finetuned',
];

/**
 * Rotary scaling from llama.cpp's metadata keys and `rope_freqs.weight` (`freqFactors`), mapped to
 * transformers' parameters the way llama.cpp's converter maps them the other way.
 */
function ggufRopeScaling(
  meta: MetadataReader,
  file: string,
  archName: string,
  ropeDim: number,
  freqFactors: Float32Array | undefined,
): RopeScaling {
  const k = (key: string) => `${archName}.rope.scaling.${key}`;
  for (const key of meta.keys())
    if (key.startsWith(k('')) && !GGUF_SCALING_KEYS.includes(key.slice(k('').length)))
      throw new FormatError(file, key, 'unknown rope scaling key');
  const opt = (key: string, fallback: number) => (meta.has(k(key)) ? meta.number(k(key)) : fallback);
  const mustBe = (key: string, value: number, why: string) => {
    if (meta.has(k(key)) && meta.number(k(key)) !== value)
      throw new FormatError(file, k(key), `${meta.number(k(key))} is not supported (${why})`);
  };
  const positiveKey = (key: string, fallback?: number) => {
    const v = fallback === undefined ? meta.number(k(key)) : opt(key, fallback);
    if (!(v > 0) || !Number.isFinite(v))
      throw new FormatError(file, k(key), `expected a positive number, got ${v}`);
    return v;
  };
  mustBe('attn_factor', 1, 'transformers has no such multiplier outside YaRN');
  // older files spell the linear factor `rope.scale_linear`
  const legacyLinear = meta.has(`${archName}.rope.scale_linear`)
    ? meta.number(`${archName}.rope.scale_linear`)
    : 1;
  let type = meta.has(k('type')) ? meta.string(k('type')) : 'none';
  if (type === 'none' && legacyLinear !== 1) type = 'linear';
  if (freqFactors) {
    if (type !== 'none')
      throw new FormatError(file, k('type'), `'${type}' together with rope_freqs.weight is not supported`);
    if (freqFactors.length !== ropeDim / 2)
      throw new FormatError(
        file,
        'rope_freqs.weight',
        `has ${freqFactors.length} values, expected rope dimension / 2 = ${ropeDim / 2}`,
      );
    freqFactors.forEach((f, i) => {
      if (!(f > 0) || !Number.isFinite(f))
        throw new FormatError(file, 'rope_freqs.weight', `value ${i} is ${f}, expected a positive number`);
    });
    return { type: 'freq_factors', factors: Array.from(freqFactors) };
  }
  switch (type) {
    case 'none':
      return NO_SCALING;
    case 'linear':
      return { type, factor: meta.has(k('factor')) ? positiveKey('factor') : legacyLinear };
    case 'yarn': {
      mustBe('yarn_ext_factor', 1, 'transformers always blends the full YaRN ramp');
      mustBe('yarn_log_multiplier', 0, "DeepSeek's mscale_all_dim form of YaRN is not supported");
      const factor = positiveKey('factor');
      return {
        type,
        factor,
        originalContext: positiveKey('original_context_length'),
        betaFast: opt('yarn_beta_fast', 0) || 32,
        betaSlow: opt('yarn_beta_slow', 0) || 1,
        attentionFactor: meta.has(k('yarn_attn_factor'))
          ? positiveKey('yarn_attn_factor')
          : yarnMscale(factor),
        truncate: true,
      };
    }
    default:
      throw new FormatError(
        file,
        k('type'),
        `rope scaling '${type}' is not supported (supported: none, linear, yarn)`,
      );
  }
}

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
