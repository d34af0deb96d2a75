/**
 * Rotary settings read from a Hugging Face config or GGUF metadata, with transformers' semantics
 * (modeling_rope_utils.py) and every default resolved; rope.ts turns them into frequencies.
 */
import { FormatError } from '../formats/errors.js';
import type { MetadataReader } from './config.js';

type Json = Record<string, unknown>;

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

export const NO_SCALING: RopeScaling = { type: 'default' };

/** One layer's rotary settings. */
export interface RopeLayer {
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
export function hfRope(cfg: Json, file: string): { global: RopeLayer; local: RopeLayer } {
  const theta = fieldNumber(cfg, 'rope_theta', file, 'rope_theta', 10000);
  const localTheta = fieldNumber(cfg, 'rope_local_base_freq', file, 'rope_local_base_freq', 10000);
  const maxContext = fieldNumber(cfg, 'max_position_embeddings', file, 'max_position_embeddings', 4096);
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
export function ggufRopeScaling(
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
