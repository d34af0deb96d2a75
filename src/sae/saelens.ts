/**
 * SAEs on disk in SAELens's layout: a folder with `cfg.json` and `sae_weights.safetensors`
 * holding W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] and, for
 * JumpReLU (GemmaScope's SAEs as SAELens converts them), threshold [d_sae].
 *
 * cfg.json carries the fields SAELens reads: d_in, d_sae, architecture, dtype, device,
 * apply_b_dec_to_input, normalize_activations, reshape_activations, k (topk); and the older flat
 * fields its loader still maps (model_name, hook_name, hook_layer, hook_head_index, prepend_bos,
 * activation_fn_str, activation_fn_kwargs {k}). On loading, the hook may come from the flat
 * fields or from SAELens 6's `metadata` (or `meta`) record, and k from `k` or
 * activation_fn_kwargs. Anything that would change the maths and is not supported (activation
 * normalisation, hook_z reshaping, decoder-norm rescaling) is a FormatError, never ignored.
 */
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { FormatError, OptionError } from '../formats/errors.js';
import { readJsonObject, syncDirectory, writeFileAtomic } from '../formats/files.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  writeSafetensors,
  type SafetensorsWriteTensor,
} from '../formats/safetensors.js';
import { SAE_ARCHITECTURES, Sae, type SaeArchitecture } from './sae.js';

export const SAE_CFG_FILE = 'cfg.json';
export const SAE_WEIGHTS_FILE = 'sae_weights.safetensors';

/** [rows, cols] row-major to [cols, rows]. */
function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c];
  return out;
}

/** The cfg.json record of `sae`, as SAELens writes it. */
export function saeLensConfig(sae: Sae): Record<string, unknown> {
  const c = sae.config;
  const topk = c.architecture === 'topk';
  return {
    architecture: c.architecture,
    d_in: c.dIn,
    d_sae: c.dSae,
    dtype: 'float32',
    device: 'cpu',
    apply_b_dec_to_input: c.applyBDecToInput,
    normalize_activations: 'none',
    reshape_activations: 'none',
    ...(topk ? { k: c.k } : {}),
    model_name: c.modelName,
    hook_name: c.hookName,
    hook_layer: c.hookLayer,
    hook_head_index: null,
    prepend_bos: true,
    activation_fn_str: topk ? 'topk' : 'relu',
    activation_fn_kwargs: topk ? { k: c.k } : {},
  };
}

/**
 * Write `sae` to folder `dir` (created if missing). Each file is written whole or not at all;
 * the weights go first, so a folder with a cfg.json always has the weights that belong to it.
 */
export function saveSae(sae: Sae, dir: string): void {
  mkdirSync(dir, { recursive: true });
  const { dIn, dSae } = sae.config;
  const w = sae.weights;
  const tensors: SafetensorsWriteTensor[] = [
    { name: 'W_enc', dtype: 'F32', shape: [dIn, dSae], data: transpose(w.wEnc, dSae, dIn) },
    { name: 'W_dec', dtype: 'F32', shape: [dSae, dIn], data: w.wDec },
    { name: 'b_enc', dtype: 'F32', shape: [dSae], data: w.bEnc },
    { name: 'b_dec', dtype: 'F32', shape: [dIn], data: w.bDec },
  ];
  if (w.threshold !== undefined)
    tensors.push({ name: 'threshold', dtype: 'F32', shape: [dSae], data: w.threshold });
  const cfgPath = join(dir, SAE_CFG_FILE);
  // An old cfg.json must not describe the new weights while they are being replaced.
  const stale = `${cfgPath}.old-${process.pid}`;
  if (existsSync(cfgPath)) renameSync(cfgPath, stale);
  writeSafetensors(join(dir, SAE_WEIGHTS_FILE), tensors);
  writeFileAtomic(cfgPath, `${JSON.stringify(saeLensConfig(sae), null, 2)}\n`);
  rmSync(stale, { force: true });
  syncDirectory(dir);
}

/** Read an SAE folder in SAELens's layout; FormatError naming the file and field when it is not one. */
export function loadSae(dir: string): Sae {
  const cfgPath = join(dir, SAE_CFG_FILE);
  const weightsPath = join(dir, SAE_WEIGHTS_FILE);
  if (!existsSync(cfgPath))
    throw new FormatError(
      cfgPath,
      '',
      `missing: ${dir} is not an SAE folder (cfg.json + ${SAE_WEIGHTS_FILE})`,
    );
  if (!existsSync(weightsPath)) throw new FormatError(weightsPath, '', 'missing');
  const cfg = readJsonObject(cfgPath);
  const bad = (field: string, problem: string): never => {
    throw new FormatError(cfgPath, field, problem);
  };
  const record = (v: unknown): Record<string, unknown> | undefined =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  const meta = record(cfg.metadata) ?? record(cfg.meta) ?? {};
  const field = (name: string): unknown =>
    cfg[name] !== undefined && cfg[name] !== null ? cfg[name] : meta[name];
  const posInt = (name: string, v: unknown): number => {
    if (v === undefined || v === null) bad(name, 'missing');
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1)
      bad(name, `must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };

  const architecture = cfg.architecture;
  if (architecture === undefined) bad('architecture', 'missing');
  if (typeof architecture !== 'string' || !SAE_ARCHITECTURES.includes(architecture as SaeArchitecture))
    bad(
      'architecture',
      `unsupported ${JSON.stringify(architecture)} (supported: ${SAE_ARCHITECTURES.join(', ')})`,
    );
  const arch = architecture as SaeArchitecture;
  const dIn = posInt('d_in', cfg.d_in);
  const dSae = posInt('d_sae', cfg.d_sae);
  const hookName = field('hook_name');
  if (typeof hookName !== 'string' || hookName === '')
    bad('hook_name', hookName === undefined ? 'missing' : 'must be a non-empty string');
  const layerMatch = /^blocks\.(\d+)\./.exec(hookName as string);
  const layerField = field('hook_layer');
  const hookLayer =
    layerField === undefined || layerField === null
      ? layerMatch !== null
        ? Number(layerMatch[1])
        : bad('hook_layer', 'missing, and hook_name names no block')
      : typeof layerField === 'number' && Number.isInteger(layerField) && layerField >= 0
        ? layerField
        : bad('hook_layer', `must be a non-negative integer, got ${JSON.stringify(layerField)}`);
  let k: number | undefined;
  if (arch === 'topk') {
    const kwargs = record(cfg.activation_fn_kwargs);
    const kValue = cfg.k ?? kwargs?.k;
    if (kValue === undefined) bad('k', 'missing (neither k nor activation_fn_kwargs.k)');
    k = posInt('k', kValue);
    if (k > dSae) bad('k', `${k} is larger than d_sae (${dSae})`);
  }
  const dtype = cfg.dtype;
  if (
    dtype !== undefined &&
    !['float32', 'float16', 'bfloat16', 'torch.float32', 'torch.float16', 'torch.bfloat16'].includes(
      dtype as string,
    )
  )
    bad('dtype', `unsupported ${JSON.stringify(dtype)}`);
  const applyRaw = cfg.apply_b_dec_to_input;
  if (applyRaw !== undefined && typeof applyRaw !== 'boolean')
    bad('apply_b_dec_to_input', 'must be true or false');
  const norm = cfg.normalize_activations;
  if (norm !== undefined && norm !== null && norm !== 'none')
    bad('normalize_activations', `${JSON.stringify(norm)} is not supported (only none)`);
  const reshape = cfg.reshape_activations;
  if (reshape !== undefined && reshape !== null && reshape !== 'none')
    bad('reshape_activations', `${JSON.stringify(reshape)} is not supported (only none)`);
  if (cfg.rescale_acts_by_decoder_norm === true) bad('rescale_acts_by_decoder_norm', 'true is not supported');
  if (cfg.hook_head_index !== undefined && cfg.hook_head_index !== null)
    bad('hook_head_index', 'per-head SAEs are not supported');

  const header = readSafetensorsHeader(weightsPath);
  const tensor = (name: string, shape: readonly number[]): Float32Array => {
    const t = header.tensors.get(name);
    if (t === undefined) throw new FormatError(weightsPath, name, 'missing');
    if (t.shape.length !== shape.length || t.shape.some((n, i) => n !== shape[i]))
      throw new FormatError(
        weightsPath,
        name,
        `shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] (d_in ${dIn}, d_sae ${dSae} in ${SAE_CFG_FILE})`,
      );
    const data = readSafetensorsTensorF32(t);
    for (let i = 0; i < data.length; i++)
      if (!Number.isFinite(data[i]))
        throw new FormatError(weightsPath, name, `non-finite value at index ${i}`);
    return data;
  };
  const expected = new Set([
    'W_enc',
    'W_dec',
    'b_enc',
    'b_dec',
    ...(arch === 'jumprelu' ? ['threshold'] : []),
  ]);
  for (const name of header.tensors.keys())
    if (!expected.has(name)) throw new FormatError(weightsPath, name, `unexpected tensor for a ${arch} SAE`);
  const wEnc = transpose(tensor('W_enc', [dIn, dSae]), dIn, dSae);
  const weights = {
    wEnc,
    wDec: tensor('W_dec', [dSae, dIn]),
    bEnc: tensor('b_enc', [dSae]),
    bDec: tensor('b_dec', [dIn]),
    ...(arch === 'jumprelu' ? { threshold: tensor('threshold', [dSae]) } : {}),
  };
  const modelName = field('model_name');
  try {
    return new Sae(
      {
        architecture: arch,
        dIn,
        dSae,
        k,
        hookName: hookName as string,
        hookLayer,
        modelName: typeof modelName === 'string' ? modelName : '',
        applyBDecToInput: (applyRaw as boolean | undefined) ?? true,
      },
      weights,
    );
  } catch (e) {
    if (e instanceof OptionError) throw new FormatError(cfgPath, '', e.message);
    throw e;
  }
}
