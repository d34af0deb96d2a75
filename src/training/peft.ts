/**
 * PEFT's LoRA adapter folder (Hugging Face `peft`, as `save_pretrained` writes it and
 * `PeftModel.from_pretrained` reads it): `adapter_config.json` and `adapter_model.safetensors` with
 * the keys `base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight` and
 * `...mlp.{gate,up,down}_proj.lora_{A,B}.weight`, A [r, in] and B [out, r]
 * (peft/utils/save_and_load.py strips the adapter name from the module keys).
 *
 * Only plain LoRA is read: every option that changes what the adapter computes and that steerguard
 * does not implement (DoRA, rsLoRA's alpha/√r, per-module ranks or alphas, LoRA biases, trained
 * biases or whole modules, layer selection, Conv1D's transposed layout, ...) is refused by name,
 * never ignored; so is an unknown option with a value other than a default, a tensor key the
 * adapter does not explain, a missing one and a wrong shape.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../formats/errors.js';
import { readJsonObject, syncDirectory, writeFileAtomic } from '../formats/files.js';
import {
  type SafetensorsWriteTensor,
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  writeSafetensors,
} from '../formats/safetensors.js';
import type { ModelConfig } from '../model/config.js';
import {
  LORA_TARGETS,
  type LoraAdapter,
  type LoraPair,
  type LoraTarget,
  checkLoraAdapter,
  loraShape,
} from '../model/lora.js';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';

/** PEFT's module name of each target (the same on llama, qwen2 and gemma3). */
const MODULE_OF: Record<LoraTarget, string> = {
  q: 'self_attn.q_proj',
  k: 'self_attn.k_proj',
  v: 'self_attn.v_proj',
  o: 'self_attn.o_proj',
  gate: 'mlp.gate_proj',
  up: 'mlp.up_proj',
  down: 'mlp.down_proj',
};

/** The safetensors key of one layer's A or B. */
export function peftKey(layer: number, target: LoraTarget, which: 'a' | 'b'): string {
  return `base_model.model.model.layers.${layer}.${MODULE_OF[target]}.lora_${which === 'a' ? 'A' : 'B'}.weight`;
}

/** The short module name (`q_proj`) PEFT's `target_modules` lists for a target. */
function targetModule(target: LoraTarget): string {
  return MODULE_OF[target].split('.')[1];
}

/**
 * Config fields that do not change what a loaded adapter computes: bookkeeping, dropout (training
 * only) and the options of initialisation methods (they set A and B's starting values, which the
 * file holds).
 */
const IGNORED_FIELDS = new Set([
  'task_type',
  'peft_type',
  'auto_mapping',
  'peft_version',
  'base_model_name_or_path',
  'revision',
  'inference_mode',
  'lora_dropout',
  'init_lora_weights',
  'megatron_core',
  'loftq_config',
  'eva_config',
  'corda_config',
  'lora_ga_config',
  'qalora_group_size',
  'ensure_weight_tying',
  'r',
  'lora_alpha',
  'target_modules',
]);

/** Fields that must keep PEFT's default: another value changes the computation. */
const DEFAULT_FIELDS: Record<string, { readonly ok: (v: unknown) => boolean; readonly why: string }> = {
  bias: {
    ok: (v) => v === 'none' || v === undefined,
    why: "trained biases (only bias: 'none' is supported)",
  },
  use_dora: { ok: isDefault, why: 'DoRA (weight-decomposed LoRA)' },
  use_rslora: { ok: isDefault, why: 'rsLoRA (scale alpha/sqrt(r))' },
  lora_bias: { ok: isDefault, why: 'a bias on lora_B' },
  fan_in_fan_out: { ok: isDefault, why: "Conv1D's transposed weights" },
  rank_pattern: { ok: isDefault, why: 'per-module ranks' },
  alpha_pattern: { ok: isDefault, why: 'per-module alphas' },
  modules_to_save: { ok: isDefault, why: 'fully trained modules beside the adapter' },
  layers_to_transform: { ok: isDefault, why: 'a subset of layers' },
  layers_pattern: { ok: isDefault, why: 'a subset of layers' },
  exclude_modules: { ok: isDefault, why: 'excluded modules' },
  trainable_token_indices: { ok: isDefault, why: 'trained token embeddings' },
  target_parameters: { ok: isDefault, why: 'LoRA on parameters instead of modules' },
  layer_replication: { ok: isDefault, why: 'replicated layers' },
  use_qalora: { ok: isDefault, why: 'QALoRA' },
  use_bdlora: { ok: isDefault, why: 'block-diagonal LoRA' },
  alora_invocation_tokens: { ok: isDefault, why: 'activated LoRA (aLoRA)' },
  megatron_config: { ok: isDefault, why: 'Megatron parallel layers' },
  arrow_config: { ok: isDefault, why: 'Arrow routing' },
  velora_config: { ok: isDefault, why: 'VeLoRA' },
  monteclora_config: { ok: isDefault, why: 'MonteCLoRA' },
  kasa_config: { ok: isDefault, why: 'KaSA' },
};

/** null, false, an empty list or object: what PEFT writes for an option not in use. */
function isDefault(v: unknown): boolean {
  return (
    v === undefined ||
    v === null ||
    v === false ||
    (Array.isArray(v) && v.length === 0) ||
    (typeof v === 'object' && v !== null && Object.keys(v).length === 0)
  );
}

/** The targets a PEFT config's `target_modules` names, each checked. */
function readTargets(file: string, value: unknown): LoraTarget[] {
  if (value === 'all-linear') return [...LORA_TARGETS];
  if (!Array.isArray(value) || value.length === 0 || !value.every((m) => typeof m === 'string'))
    throw new FormatError(
      file,
      'target_modules',
      `must be a non-empty list of module names or "all-linear", got ${JSON.stringify(value)} ` +
        '(a regular expression is not supported)',
    );
  const targets: LoraTarget[] = [];
  for (const name of value as string[]) {
    const target = LORA_TARGETS.find((t) => targetModule(t) === name);
    if (!target)
      throw new FormatError(
        file,
        'target_modules',
        `module ${JSON.stringify(name)} is not one steerguard adapts ` +
          `(${LORA_TARGETS.map(targetModule).join(', ')})`,
      );
    if (targets.includes(target))
      throw new FormatError(file, 'target_modules', `${JSON.stringify(name)} is listed twice`);
    targets.push(target);
  }
  // Keep steerguard's order, so that a loaded adapter saves to the same file.
  return LORA_TARGETS.filter((t) => targets.includes(t));
}

/** Rank, alpha and targets of an adapter_config.json, every option checked. */
export function readPeftConfig(file: string): Pick<LoraAdapter<Float32Array>, 'rank' | 'alpha' | 'targets'> {
  const json = readJsonObject(file);
  if (json.peft_type !== 'LORA')
    throw new FormatError(file, 'peft_type', `must be "LORA", got ${JSON.stringify(json.peft_type)}`);
  if (!(json.task_type === 'CAUSAL_LM' || json.task_type === null || json.task_type === undefined))
    throw new FormatError(
      file,
      'task_type',
      `must be "CAUSAL_LM" (or absent), got ${JSON.stringify(json.task_type)}`,
    );
  const rank = json.r;
  if (!(typeof rank === 'number' && Number.isInteger(rank) && rank >= 1))
    throw new FormatError(file, 'r', `must be an integer >= 1, got ${JSON.stringify(rank)}`);
  const alpha = json.lora_alpha;
  if (!(typeof alpha === 'number' && Number.isFinite(alpha) && alpha !== 0))
    throw new FormatError(
      file,
      'lora_alpha',
      `must be a finite non-zero number, got ${JSON.stringify(alpha)}`,
    );
  const targets = readTargets(file, json.target_modules);
  for (const [field, value] of Object.entries(json)) {
    if (IGNORED_FIELDS.has(field)) continue;
    const rule = DEFAULT_FIELDS[field];
    if (rule) {
      if (!rule.ok(value))
        throw new FormatError(
          file,
          field,
          `${JSON.stringify(value)} asks for ${rule.why}, which steerguard does not implement`,
        );
    } else if (!isDefault(value))
      throw new FormatError(
        file,
        field,
        `unknown PEFT option set to ${JSON.stringify(value)}: steerguard cannot tell whether it ` +
          'changes what the adapter computes, so it refuses the adapter',
      );
  }
  return { rank, alpha, targets };
}

/**
 * Reads a PEFT LoRA adapter folder for a model of `cfg`. Every tensor the config implies must be
 * there with its shape ([r, in] for A, [out, r] for B), and no other tensor may be; any stored
 * float dtype is read as fp32.
 */
export function loadPeftAdapter(dir: string, cfg: ModelConfig): LoraAdapter<Float32Array> {
  const configFile = join(dir, PEFT_CONFIG_FILE);
  const weightsFile = join(dir, PEFT_WEIGHTS_FILE);
  for (const f of [configFile, weightsFile])
    if (!existsSync(f))
      throw new FormatError(
        f,
        '',
        'missing: a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors',
      );
  const { rank, alpha, targets } = readPeftConfig(configFile);
  const st = readSafetensorsHeader(weightsFile);
  const expected = new Set<string>();
  const layers = Array.from({ length: cfg.nLayers }, (_, l) => {
    const layer: Partial<Record<LoraTarget, LoraPair<Float32Array>>> = {};
    for (const t of targets) {
      const { inDim, outDim } = loraShape(cfg, t);
      const read = (which: 'a' | 'b', shape: readonly number[]): Float32Array => {
        const key = peftKey(l, t, which);
        expected.add(key);
        const info = st.tensors.get(key);
        if (!info)
          throw new FormatError(
            weightsFile,
            key,
            `missing (the config targets ${targetModule(t)} and the model has ${cfg.nLayers} layers)`,
          );
        if (info.shape.length !== 2 || info.shape[0] !== shape[0] || info.shape[1] !== shape[1])
          throw new FormatError(
            weightsFile,
            key,
            `shape [${info.shape.join(', ')}]; this model needs [${shape.join(', ')}] ` +
              `(rank ${rank}, ${t} is ${outDim} x ${inDim}): an adapter for another model?`,
          );
        const data = readSafetensorsTensorF32(info);
        if (!data.every(Number.isFinite)) throw new FormatError(weightsFile, key, 'holds a non-finite value');
        return data;
      };
      layer[t] = { a: read('a', [rank, inDim]), b: read('b', [outDim, rank]) };
    }
    return layer;
  });
  for (const key of st.tensors.keys())
    if (!expected.has(key))
      throw new FormatError(
        weightsFile,
        key,
        `not a tensor of this adapter (config: r ${rank}, targets ${targets.map(targetModule).join(', ')}; ` +
          `model: ${cfg.nLayers} layers)`,
      );
  const adapter = { rank, alpha, targets, layers };
  checkLoraAdapter(cfg, adapter);
  return adapter;
}

export interface PeftSaveOptions {
  /** `base_model_name_or_path` of the config (what PEFT loads the adapter onto by default). */
  readonly baseModel?: string;
}

/**
 * Writes `adapter` as a PEFT folder (created if needed): fp32 tensors under PEFT's keys, and a
 * config with every option at PEFT's default but r, lora_alpha and target_modules. Each file is
 * written atomically, the weights first.
 */
export function savePeftAdapter(
  dir: string,
  adapter: LoraAdapter<Float32Array>,
  cfg: ModelConfig,
  opts: PeftSaveOptions = {},
): void {
  checkLoraAdapter(cfg, adapter);
  mkdirSync(dir, { recursive: true });
  const tensors: SafetensorsWriteTensor[] = [];
  adapter.layers.forEach((layer, l) => {
    for (const t of adapter.targets) {
      const { inDim, outDim } = loraShape(cfg, t);
      const pair = layer[t]!;
      tensors.push({ name: peftKey(l, t, 'a'), dtype: 'F32', shape: [adapter.rank, inDim], data: pair.a });
      tensors.push({ name: peftKey(l, t, 'b'), dtype: 'F32', shape: [outDim, adapter.rank], data: pair.b });
    }
  });
  writeSafetensors(join(dir, PEFT_WEIGHTS_FILE), tensors, { format: 'pt' });
  const config = {
    task_type: 'CAUSAL_LM',
    peft_type: 'LORA',
    base_model_name_or_path: opts.baseModel ?? null,
    inference_mode: true,
    r: adapter.rank,
    lora_alpha: adapter.alpha,
    target_modules: adapter.targets.map(targetModule),
    lora_dropout: 0,
    bias: 'none',
    fan_in_fan_out: false,
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
  };
  writeFileAtomic(join(dir, PEFT_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
  syncDirectory(dir);
}
