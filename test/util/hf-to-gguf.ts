/**
 * Test helper: rewrites a small Hugging Face checkpoint (config.json + model.safetensors) as a GGUF
 * file the way llama.cpp's converter does (tensor names, metadata keys, llama q/k row order,
 * gemma's (1 + w) norms), so the GGUF path can be checked against the same reference outputs.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import {
  GgmlType,
  type GgufMetadataEntry,
  type GgufTensorInput,
  GgufValueType,
  writeGguf,
} from '../../src/formats/gguf.js';
import { readSafetensorsHeader, readSafetensorsTensorF32 } from '../../src/formats/safetensors.js';
import { configFromHf } from '../../src/model/config.js';
import { ggufTensorNamer, hfSandwichNamer, hfTensorNamer, type TensorRole } from '../../src/model/weights.js';

const ROLES: TensorRole[] = [
  'attn_norm',
  'q',
  'k',
  'v',
  'o',
  'q_bias',
  'k_bias',
  'v_bias',
  'q_norm',
  'k_norm',
  'post_attn_norm',
  'mlp_norm',
  'post_mlp_norm',
  'gate',
  'up',
  'down',
];

/** Inverse of weights.unpermuteRotaryRows: HF row (h, half, i) goes to file row (h, i, half). */
function permuteRotaryRows(w: Float32Array, heads: number, E: number, K: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = E / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let p = 0; p < 2; p++)
        out.set(
          w.subarray((h * E + p * half + i) * K, (h * E + p * half + i + 1) * K),
          (h * E + i * 2 + p) * K,
        );
  return out;
}

/**
 * Writes `out`. `editMetadata` may change the metadata entries before writing (tests use it to
 * add a tokenizer or to make a key lie).
 */
export function hfToGguf(
  dir: string,
  out: string,
  type: GgmlType = GgmlType.F32,
  editMetadata: (entries: GgufMetadataEntry[]) => GgufMetadataEntry[] = (entries) => entries,
): void {
  const rawConfig = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  const cfg = configFromHf(rawConfig, path.join(dir, 'config.json'));
  if (cfg.ropeScaling.some((s) => s.type !== 'default'))
    throw new Error(`hfToGguf: ${dir} has rotary scaling, which this helper does not write`);
  const st = readSafetensorsHeader(path.join(dir, 'model.safetensors'));
  const hfName = cfg.sandwichNorms ? hfSandwichNamer('model.') : hfTensorNamer('model.');
  const arch = cfg.arch;
  const tensors: GgufTensorInput[] = [];
  const add = (role: TensorRole, layer: number | undefined) => {
    const info = st.tensors.get(hfName(role, layer));
    if (!info) return;
    let data = readSafetensorsTensorF32(info);
    if (/norm/.test(role) && arch === 'gemma3') data = data.map((x) => x + 1);
    if (arch === 'llama' && (role === 'q' || role === 'k'))
      data = permuteRotaryRows(data, role === 'q' ? cfg.nHeads : cfg.nKvHeads, cfg.headDim, cfg.dModel);
    const is2d = info.shape.length === 2;
    tensors.push({
      name: ggufTensorNamer(role, layer),
      dims: [...info.shape].reverse(),
      type: is2d ? type : GgmlType.F32,
      data,
    });
  };
  add('embed', undefined);
  // Without sandwich norms, the HF name of post_attn_norm is that of mlp_norm: write it once.
  const roles = cfg.sandwichNorms
    ? ROLES
    : ROLES.filter((r) => r !== 'post_attn_norm' && r !== 'post_mlp_norm');
  for (let l = 0; l < cfg.nLayers; l++) for (const r of roles) add(r, l);
  add('final_norm', undefined);
  if (!cfg.tiedEmbeddings) add('lm_head', undefined);

  const u32 = (key: string, value: number): GgufMetadataEntry => ({
    key: `${arch}.${key}`,
    type: GgufValueType.UINT32,
    value,
  });
  const f32 = (key: string, value: number): GgufMetadataEntry => ({
    key: `${arch}.${key}`,
    type: GgufValueType.FLOAT32,
    value,
  });
  const metadata: GgufMetadataEntry[] = [
    { key: 'general.architecture', value: arch },
    { key: 'general.name', value: `tiny-${path.basename(dir)}` },
    u32('block_count', cfg.nLayers),
    u32('context_length', cfg.maxContext),
    u32('embedding_length', cfg.dModel),
    u32('feed_forward_length', cfg.ffnDim),
    u32('attention.head_count', cfg.nHeads),
    u32('attention.head_count_kv', cfg.nKvHeads),
    u32('attention.key_length', cfg.headDim),
    u32('attention.value_length', cfg.headDim),
    u32('rope.dimension_count', cfg.ropeDim),
    f32('rope.freq_base', Math.max(...cfg.ropeTheta)),
    f32('attention.layer_norm_rms_epsilon', cfg.rmsEps),
  ];
  if (arch === 'gemma3') {
    const period = cfg.window.findIndex((w) => w === 0) + 1;
    metadata.push(
      u32('attention.sliding_window', Math.max(...cfg.window)),
      u32('attention.sliding_window_pattern', period),
    );
  }
  writeGguf(out, { metadata: editMetadata(metadata), tensors });
}
