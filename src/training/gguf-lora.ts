/**
 * llama.cpp's GGUF LoRA adapter files (`llama-cli --lora FILE`; written by llama.cpp's
 * convert_lora_to_gguf.py, read by llama_adapter_lora_init in src/llama-adapter.cpp).
 *
 * Layout, read from llama.cpp: metadata `general.type` = "adapter", `adapter.type` = "lora",
 * `general.architecture` = the base model's architecture (llama.cpp refuses another),
 * `adapter.lora.alpha` (FLOAT32); per adapted matrix the base model's GGUF tensor name with
 * `.lora_a` / `.lora_b` appended (`blk.{i}.attn_q.weight.lora_a`). In ggml's dimension order
 * (ne0 first) the base matrix is [in, out], lora_a is [in, r] and lora_b is [r, out]: the same
 * memory as PEFT's A [r, in] and B [out, r]. llama.cpp adds scale·(alpha/r)·B·(A·x), r being
 * lora_b's ne0, to the matrix's output, unmerged (build_lora_mm); the scale is the one given with
 * `--lora-scaled` (1 for `--lora`). With alpha absent or 0 llama.cpp uses no alpha/r factor;
 * steerguard refuses such a file rather than guess which was meant.
 *
 * llama's q and k rows: the GGUF converter interleaves each head's rows for llama.cpp's rotary
 * kernel, and applies the same row permutation to lora_b (lora_a is untouched), so B of q and k is
 * stored in GGUF order and steerguard (which keeps Hugging Face order, see unpermuteRotaryRows)
 * reorders it on the way in and out. qwen2 and gemma3 are stored unpermuted.
 *
 * Only what steerguard's adapters compute is read: a tensor for a module outside q..down (token
 * embeddings, the head, mergekit's norm tensors), an activated LoRA (aLoRA), a layer or a target
 * with a missing tensor, or tensors of different ranks are refused, naming the file and tensor.
 */
import { FormatError } from '../formats/errors.js';
import {
  GgmlType,
  type GgufFile,
  type GgufTensorInput,
  GgufValueType,
  ggufOptionalString,
  readGguf,
  readGgufTensorF32,
  writeGguf,
} from '../formats/gguf.js';
import type { ModelConfig } from '../model/config.js';
import {
  LORA_TARGETS,
  type LoraAdapter,
  type LoraPair,
  type LoraTarget,
  checkLoraAdapter,
  loraShape,
} from '../model/lora.js';
import { unpermuteRotaryRows } from '../model/weights.js';

export const GGUF_LORA_ALPHA_KEY = 'adapter.lora.alpha';

/** The base model's GGUF tensor of each target (llama.cpp's names, the same on llama, qwen2 and gemma3). */
const TENSOR_OF: Record<LoraTarget, string> = {
  q: 'attn_q',
  k: 'attn_k',
  v: 'attn_v',
  o: 'attn_output',
  gate: 'ffn_gate',
  up: 'ffn_up',
  down: 'ffn_down',
};

/** The GGUF tensor name of one layer's A or B: `blk.{layer}.attn_q.weight.lora_a`. */
export function ggufLoraTensorName(layer: number, target: LoraTarget, which: 'a' | 'b'): string {
  return `blk.${layer}.${TENSOR_OF[target]}.weight.lora_${which}`;
}

const TENSOR_NAME = /^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$/;

/** Query / key heads whose B rows llama.cpp stores interleaved, or undefined when it stores them as they are. */
function rotaryHeads(cfg: ModelConfig, target: LoraTarget): number | undefined {
  if (cfg.arch !== 'llama') return undefined;
  if (target === 'q') return cfg.nHeads;
  if (target === 'k') return cfg.nKvHeads;
  return undefined;
}

/** Hugging Face row order to llama.cpp's: the inverse of unpermuteRotaryRows, row (h, half, i) to (h, i, half). */
function permuteRotaryRows(w: Float32Array, heads: number, E: number, rowLength: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = E / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let p = 0; p < 2; p++) {
        const src = (h * E + p * half + i) * rowLength;
        const dst = (h * E + i * 2 + p) * rowLength;
        out.set(w.subarray(src, src + rowLength), dst);
      }
  return out;
}

/** A string key that must hold `want`; FormatError naming it otherwise. */
function requireString(file: GgufFile, key: string, want: string, missing: string): void {
  const got = ggufOptionalString(file, key);
  if (got !== want)
    throw new FormatError(
      file.path,
      key,
      got === undefined ? `missing: ${missing}` : `is ${JSON.stringify(got)}, not ${JSON.stringify(want)}`,
    );
}

/** `adapter.lora.alpha`: present, FLOAT32 (the only type llama.cpp reads), finite and non-zero. */
function readAlpha(file: GgufFile): number {
  const key = GGUF_LORA_ALPHA_KEY;
  const value = file.metadata.get(key);
  if (value === undefined)
    throw new FormatError(
      file.path,
      key,
      'missing (llama.cpp would then apply B·A without the alpha/r factor; steerguard needs alpha stated)',
    );
  if (file.metadataTypes.get(key)?.type !== GgufValueType.FLOAT32 || typeof value !== 'number')
    throw new FormatError(file.path, key, 'must be a FLOAT32 (llama.cpp reads it as one)');
  if (!Number.isFinite(value) || value === 0)
    throw new FormatError(
      file.path,
      key,
      `must be finite and non-zero, got ${value} (llama.cpp reads 0 as "no alpha/r factor")`,
    );
  return value;
}

/**
 * Reads a llama.cpp GGUF LoRA adapter for a model of `cfg`: the architecture must be the model's,
 * every layer must hold A and B for each target the file adapts, with this model's shapes and one
 * rank; any float type llama.cpp stores (F32, F16, BF16, Q8_0, ...) is read as fp32.
 */
export function loadGgufLora(file: string, cfg: ModelConfig): LoraAdapter<Float32Array> {
  const gguf = readGguf(file);
  requireString(gguf, 'general.type', 'adapter', 'not an adapter file (a model file?)');
  requireString(gguf, 'adapter.type', 'lora', 'an adapter file states adapter.type');
  const arch = ggufOptionalString(gguf, 'general.architecture');
  if (arch !== cfg.arch)
    throw new FormatError(
      file,
      'general.architecture',
      `${arch === undefined ? 'missing' : JSON.stringify(arch)}: this adapter is not for a ${cfg.arch} model`,
    );
  const alpha = readAlpha(gguf);
  if (gguf.metadata.has('adapter.alora.invocation_tokens'))
    throw new FormatError(
      file,
      'adapter.alora.invocation_tokens',
      'an activated LoRA (aLoRA), which steerguard does not implement',
    );

  let rank: number | undefined;
  const found = new Set<LoraTarget>();
  for (const [name, info] of gguf.tensors) {
    const m = TENSOR_NAME.exec(name);
    const target = m && LORA_TARGETS.find((t) => TENSOR_OF[t] === m[2]);
    if (!m || !target)
      throw new FormatError(
        file,
        name,
        `not a LoRA tensor of a module steerguard adapts (blk.{i}.{${LORA_TARGETS.map(
          (t) => TENSOR_OF[t],
        ).join(',')}}.weight.lora_{a,b})`,
      );
    const layer = Number(m[1]);
    if (layer >= cfg.nLayers)
      throw new FormatError(
        file,
        name,
        `layer ${layer}: the model has ${cfg.nLayers} layers (another model?)`,
      );
    if (info.dims.length !== 2)
      throw new FormatError(file, name, `must be 2-D, has dims [${info.dims.join(', ')}]`);
    const r = m[3] === 'a' ? info.dims[1] : info.dims[0];
    if (r === 0) throw new FormatError(file, name, 'rank 0');
    if (rank !== undefined && r !== rank)
      throw new FormatError(file, name, `rank ${r}; other tensors have rank ${rank} (one rank per adapter)`);
    rank = r;
    found.add(target);
  }
  if (rank === undefined) throw new FormatError(file, '', 'no LoRA tensors');
  const targets = LORA_TARGETS.filter((t) => found.has(t));

  const layers = Array.from({ length: cfg.nLayers }, (_, l) => {
    const layer: Partial<Record<LoraTarget, LoraPair<Float32Array>>> = {};
    for (const t of targets) {
      const { inDim, outDim } = loraShape(cfg, t);
      const read = (which: 'a' | 'b', dims: readonly number[]): Float32Array => {
        const name = ggufLoraTensorName(l, t, which);
        const info = gguf.tensors.get(name);
        if (!info)
          throw new FormatError(
            file,
            name,
            `missing (the file adapts ${TENSOR_OF[t]}; steerguard's adapters cover every layer of the model's ${cfg.nLayers})`,
          );
        if (info.dims[0] !== dims[0] || info.dims[1] !== dims[1])
          throw new FormatError(
            file,
            name,
            `dims [${info.dims.join(', ')}] (ggml order); this model needs [${dims.join(', ')}] ` +
              `(rank ${rank}, ${t} is ${outDim} x ${inDim}): an adapter for another model?`,
          );
        const data = readGgufTensorF32(gguf, name);
        if (!data.every(Number.isFinite)) throw new FormatError(file, name, 'holds a non-finite value');
        return data;
      };
      const a = read('a', [inDim, rank]);
      const stored = read('b', [rank, outDim]);
      const heads = rotaryHeads(cfg, t);
      layer[t] = {
        a,
        b: heads === undefined ? stored : unpermuteRotaryRows(stored, heads, cfg.headDim, rank),
      };
    }
    return layer;
  });
  const adapter = { rank, alpha, targets, layers };
  checkLoraAdapter(cfg, adapter);
  return adapter;
}

/**
 * Writes `adapter` as a llama.cpp GGUF LoRA file for a model of `cfg` (atomically): F32 tensors
 * under llama.cpp's names, alpha as FLOAT32 (an alpha that fp32 cannot hold exactly is rounded).
 */
export function saveGgufLora(file: string, adapter: LoraAdapter<Float32Array>, cfg: ModelConfig): void {
  checkLoraAdapter(cfg, adapter);
  const tensors: GgufTensorInput[] = [];
  adapter.layers.forEach((layer, l) => {
    for (const t of adapter.targets) {
      const { inDim, outDim } = loraShape(cfg, t);
      const pair = layer[t]!;
      const heads = rotaryHeads(cfg, t);
      const b = heads === undefined ? pair.b : permuteRotaryRows(pair.b, heads, cfg.headDim, adapter.rank);
      tensors.push({
        name: ggufLoraTensorName(l, t, 'a'),
        dims: [inDim, adapter.rank],
        type: GgmlType.F32,
        data: pair.a,
      });
      tensors.push({
        name: ggufLoraTensorName(l, t, 'b'),
        dims: [adapter.rank, outDim],
        type: GgmlType.F32,
        data: b,
      });
    }
  });
  writeGguf(file, {
    metadata: [
      { key: 'general.architecture', type: GgufValueType.STRING, value: cfg.arch },
      { key: 'general.type', type: GgufValueType.STRING, value: 'adapter' },
      { key: 'adapter.type', type: GgufValueType.STRING, value: 'lora' },
      { key: GGUF_LORA_ALPHA_KEY, type: GgufValueType.FLOAT32, value: adapter.alpha },
    ],
    tensors,
  });
}
