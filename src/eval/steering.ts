/**
 * Steering and attacks from files, as responders an evaluation generates with: a control vector
 * or refusal direction added or ablated, the SCAV attack from a concept file, and conditional
 * steering gated by a concept's monitor. Each also names the prompt ids its artefacts were fitted
 * on, so that the caller can refuse to evaluate on them (data/splits.ts `checkLeakage`).
 *
 * The method modules are imported when a steering is built, not with this module, so that the
 * CLI's `--help` and option checks stay free of them.
 */
import path from 'node:path';

import type { Concept } from '../concepts/concept.js';
import { OptionError, SteerguardError } from '../formats/errors.js';
import type { Hook } from '../hooks/hooks.js';
import type { Model, Prompt } from '../model/model.js';
import type { PromptMonitor } from '../steering/conditional.js';
import { type Responder, hookResponder } from './refusal.js';

/** What a run steers with, and the prompt ids the artefacts were fitted on (leakage guard). */
export interface Steering {
  readonly label: string;
  readonly responder: Responder;
  readonly fittedIds: readonly string[];
}

/** The hooks each prompt of a steering spec is generated with, as `buildSteering` applies them. */
export interface SteeringHooks {
  readonly label: string;
  /** Per prompt (a gate chooses per prompt; static steering gives every prompt the same). */
  readonly hooksFor: (prompts: readonly Prompt[]) => Promise<Hook[][]>;
  readonly fittedIds: readonly string[];
}

/** Hooks with a label and the ids their artefact was fitted on. */
export interface LabelledHooks {
  readonly hooks: Hook[];
  readonly label: string;
  readonly fittedIds: string[];
}

/** Prompt ids stored in a steerguard artefact's metadata (`steerguard.fitted_ids`). */
export function fittedIdsOf(meta: ReadonlyMap<string, unknown>): string[] {
  const v = meta.get('steerguard.fitted_ids');
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** A steering (the CLI's `--steer` and `--attack` options). */
export interface SteeringSpec {
  readonly steer: 'none' | 'add' | 'ablate' | 'sae-clamp' | 'conditional';
  /** Control vector or refusal direction (GGUF) for add, ablate and (optionally) conditional. */
  readonly vector?: string;
  /** Use only the vector of this layer (block output, as in llama.cpp). */
  readonly layer?: number;
  /** Coefficient of add (negative removes). */
  readonly coeff: number;
  /** Concept file for conditional steering and the SCAV attack. */
  readonly concept?: string;
  /** Reading file (concept generalize --save-reading): the monitor of conditional steering. */
  readonly reading?: string;
  /**
   * Monitor threshold of conditional steering: a probability for a concept (default: its own),
   * a standardised score for a reading (default: its own).
   */
  readonly threshold?: number;
  /** Two-sided gating: below this score a prompt is clearly benign and gets `benignSteer`. */
  readonly benignBelow?: number;
  /** Steering of clearly benign prompts: 'ablate' removes the `vector` direction. */
  readonly benignSteer?: 'none' | 'ablate';
  /** Layer the monitor reads (default: the concept's). */
  readonly monitorLayer?: number;
  /**
   * SAE folder of sae-clamp, and of flagged prompts under conditional steering (then instead of
   * `vector`): latent `feature` is clamped to `clamp` at the SAE's hook.
   */
  readonly sae?: string;
  readonly feature?: number;
  readonly clamp?: number;
  readonly attack: 'none' | 'scav';
  /** SCAV: target P(malicious) after the move. */
  readonly p0: number;
  /** SCAV: only layers whose probe test accuracy is above this. */
  readonly p1: number;
}

/** The hook clamping `feature` of the SAE in `sae` to `clamp`, checked against the model. */
export async function saeClampHooks(
  model: Model,
  o: Pick<SteeringSpec, 'sae' | 'feature' | 'clamp'>,
): Promise<LabelledHooks> {
  if (o.sae === undefined || o.feature === undefined || o.clamp === undefined)
    throw new OptionError('SAE clamping needs --sae DIR, --feature J and --clamp C');
  const { loadSae } = await import('../sae/saelens.js');
  const { checkSaeFitsModel } = await import('../sae/features.js');
  const { saeClampHook } = await import('../sae/clamp.js');
  const sae = loadSae(o.sae);
  checkSaeFitsModel(model, sae);
  return {
    hooks: [saeClampHook(sae, model.backend, { feature: o.feature, value: o.clamp })],
    label: `clamp ${path.basename(path.resolve(o.sae))} latent ${o.feature} to ${o.clamp}`,
    fittedIds: [],
  };
}

/** Static hooks of steer add / ablate from a control-vector or refusal-direction file. */
export async function vectorHooks(
  model: Model,
  o: Pick<SteeringSpec, 'steer' | 'vector' | 'layer' | 'coeff'>,
): Promise<LabelledHooks> {
  if (o.vector === undefined) throw new OptionError(`--steer ${o.steer} needs --vector FILE`);
  const { ControlVector } = await import('../steering/control-vector.js');
  const { ablationHooks, refusalDirectionFromControlVector } =
    await import('../steering/refusal-direction.js');
  const cv = ControlVector.load(o.vector);
  cv.checkModel(model.config, { identity: model.identity, file: o.vector });
  const fittedIds = fittedIdsOf(cv.metadata);
  const base = path.basename(o.vector);
  if (o.steer === 'ablate') {
    const rd = refusalDirectionFromControlVector(cv, o.layer);
    return { hooks: ablationHooks(rd.direction, model.config.nLayers), label: `ablate ${base}`, fittedIds };
  }
  const used = o.layer !== undefined ? cv.restrict([o.layer]) : cv;
  return { hooks: used.hooks(o.coeff), label: `add ${o.coeff} × ${base}`, fittedIds };
}

/**
 * What a steering spec resolves to, once: its label, the ids its artefacts were fitted on, the
 * base hooks (an attack) every prompt gets, and either fixed hooks or a gate.
 */
async function steeringParts(
  model: Model,
  o: SteeringSpec,
): Promise<{
  label: string;
  fittedIds: string[];
  base: Hook[];
  fixed?: Hook[];
  gate?: ConditionalParts['options'];
}> {
  const attack = o.attack === 'scav' ? await scavAttackHooks(model, o) : undefined;
  const base = attack?.hooks ?? [];
  const prefix = attack ? `${attack.label} + ` : '';
  const fitted = attack?.fittedIds ?? [];
  if (o.steer === 'none')
    return { label: attack ? attack.label : 'baseline', fittedIds: fitted, base, fixed: base };
  if (o.steer === 'add' || o.steer === 'ablate') {
    const v = await vectorHooks(model, o);
    return {
      label: `${prefix}${v.label}`,
      fittedIds: [...fitted, ...v.fittedIds],
      base,
      fixed: [...base, ...v.hooks],
    };
  }
  if (o.steer === 'sae-clamp') {
    const v = await saeClampHooks(model, o);
    return { label: `${prefix}${v.label}`, fittedIds: fitted, base, fixed: [...base, ...v.hooks] };
  }
  const c = await conditionalParts(model, o);
  return { label: `${prefix}${c.label}`, fittedIds: [...fitted, ...c.fittedIds], base, gate: c.options };
}

/** The responder of a steering spec. */
export async function buildSteering(model: Model, o: SteeringSpec): Promise<Steering> {
  const { label, fittedIds, base, fixed, gate } = await steeringParts(model, o);
  if (!gate) return { label, responder: hookResponder(model, fixed), fittedIds };
  const { conditionalGenerate } = await import('../steering/conditional.js');
  const responder: Responder = async (prompts, gen) => {
    const r = await conditionalGenerate(model, prompts, { ...gen, ...gate, baseHooks: base });
    return {
      generations: r.generations,
      flags: r.flags.map((f) => f.flagged),
      scores: r.flags.map((f) => f.score),
    };
  };
  return { label, responder, fittedIds };
}

/** The per-prompt hooks of a steering spec (e.g. to score a steering's effect on fixed replies). */
export async function buildSteeringHooks(model: Model, o: SteeringSpec): Promise<SteeringHooks> {
  const { label, fittedIds, base, fixed, gate } = await steeringParts(model, o);
  if (!gate) return { label, hooksFor: async (prompts) => prompts.map(() => [...(fixed ?? [])]), fittedIds };
  const { monitorPrompts, verdictHooks } = await import('../steering/conditional.js');
  return {
    label,
    hooksFor: async (prompts) =>
      verdictHooks(monitorPrompts(model, prompts, gate.monitor, { hooks: base }), {
        ...gate,
        baseHooks: base,
      }),
    fittedIds,
  };
}

/** SCAV attack hooks from a concept file. */
export async function scavAttackHooks(
  model: Model,
  o: Pick<SteeringSpec, 'concept' | 'p0' | 'p1'>,
): Promise<LabelledHooks> {
  if (o.concept === undefined) throw new OptionError('the SCAV attack needs --concept FILE');
  const concept = await loadConcept(o.concept, model);
  const hooks = await scavFor(concept, { target: 'safe', p0: o.p0, p1: o.p1 });
  if (hooks.length === 0)
    throw new SteerguardError(
      `no probe of ${o.concept} is more accurate than --p1 ${o.p1}: SCAV has no layer to move`,
    );
  return { hooks, label: `scav p0=${o.p0}`, fittedIds: concept.fittedIds };
}

interface ConditionalParts {
  options: { monitor: PromptMonitor; steer: Hook[]; steerBenign: Hook[] | undefined };
  label: string;
  fittedIds: string[];
}

/** The prompt monitor a spec names: a reading, else a concept's probe (and that concept). */
export async function specMonitor(
  model: Model,
  o: Pick<SteeringSpec, 'reading' | 'concept' | 'threshold' | 'benignBelow' | 'monitorLayer'>,
): Promise<{ monitor: PromptMonitor; concept?: Concept; label: string; fittedIds: string[] }> {
  if (o.reading !== undefined) {
    const { loadReading, readingMonitor } = await import('../concepts/reading-file.js');
    const r = loadReading(o.reading, model);
    return {
      monitor: readingMonitor(r.reading, { threshold: o.threshold, benignBelow: o.benignBelow }),
      label: path.basename(o.reading),
      fittedIds: [...r.fittedIds],
    };
  }
  if (o.concept !== undefined) {
    const concept = await loadConcept(o.concept, model);
    const m = await monitorFor(concept, { layer: o.monitorLayer, threshold: o.threshold });
    return {
      monitor: { ...m, benignBelow: o.benignBelow },
      concept,
      label: path.basename(o.concept),
      fittedIds: [...concept.fittedIds],
    };
  }
  throw new OptionError('a monitor needs --concept FILE or --reading FILE');
}

/** The monitor and the steering on each side of a conditional spec. */
async function conditionalParts(model: Model, o: SteeringSpec): Promise<ConditionalParts> {
  if (o.reading === undefined && o.concept === undefined)
    throw new OptionError('--steer conditional needs --concept FILE or --reading FILE');
  const { monitor, concept, label: monitorLabel, fittedIds: ids } = await specMonitor(model, o);
  let steer: Hook[];
  let what: string;
  if (o.sae !== undefined) {
    const v = await saeClampHooks(model, o);
    steer = v.hooks;
    what = v.label;
  } else if (o.vector !== undefined) {
    const v = await vectorHooks(model, { steer: 'add', vector: o.vector, layer: o.layer, coeff: o.coeff });
    steer = v.hooks;
    what = v.label;
    ids.push(...v.fittedIds);
  } else if (concept !== undefined) {
    steer = await scavFor(concept, { target: 'malicious', p0: o.p0, p1: o.p1 });
    what = 'scav defence';
  } else throw new OptionError('--steer conditional with --reading needs --vector FILE');
  let steerBenign: Hook[] | undefined;
  if ((o.benignSteer ?? 'none') !== 'none') {
    if (o.benignBelow === undefined) throw new OptionError('--benign-steer needs --benign-below');
    steerBenign = (await vectorHooks(model, { steer: 'ablate', vector: o.vector, layer: o.layer, coeff: 1 }))
      .hooks;
    what += `; benign below ${o.benignBelow}: ablate`;
  }
  return {
    options: { monitor, steer, steerBenign },
    label: `conditional (${monitorLabel}) ${what}`,
    fittedIds: ids,
  };
}

async function loadConcept(file: string, model: Model): Promise<Concept> {
  const { Concept } = await import('../concepts/concept.js');
  return Concept.load(file, model);
}

/** SCAV hooks; the defence ('malicious') keeps scavHooks' own target probability (0.999). */
async function scavFor(
  concept: Concept,
  o: { target: 'safe' | 'malicious'; p0: number; p1: number },
): Promise<Hook[]> {
  const { scavHooks } = await import('../concepts/scav.js');
  return scavHooks(concept, { target: o.target, p0: o.target === 'safe' ? o.p0 : undefined, p1: o.p1 });
}

async function monitorFor(
  concept: Concept,
  o: { layer?: number; threshold?: number },
): Promise<PromptMonitor> {
  const { promptMonitor } = await import('../concepts/monitor.js');
  return promptMonitor(concept, o);
}
