/**
 * The audit's data: its settings, what each step finds, and the report built from them. These
 * are plain JSON values (they live in audit-state.json and report.json); non-finite numbers are
 * stored as null, hence the `number | null` fields.
 *
 * The recipe: a harmful-request monitor (a "reading") chosen by leave-one-source-out on
 * development sources and measured on test sources; the model's refusal direction; refusal and
 * over-refusal with no steering, the direction added always, ablated always, and the two-sided
 * gate (added where the monitor flags, ablated where it is clearly benign), with the harmless-
 * prompt likelihood cost of each; and the SCAV attack against ablating and subtracting the
 * direction. Every evaluated prompt comes from sources none of the artefacts was fitted or chosen
 * on (the pipeline refuses otherwise).
 */
import type { HeldOutSourceResult, ReadingMethod } from '../concepts/sources.js';
import type { SplitFractions } from '../data/splits.js';
import type { CapabilityTask, Figure, PairedDifference } from '../eval/capability-suite.js';
import type { ClampGridRow } from '../eval/sae-steering.js';
import type { MonitorFeature, RefusalTokenFeature } from '../sae/features.js';

export const STEP_NAMES = [
  'reading',
  'direction',
  'baseline',
  'steering',
  'attack',
  'capability',
  'sae',
] as const;
export type StepName = (typeof STEP_NAMES)[number];

/**
 * The steps an audit runs unless told otherwise; capability (minutes per task) and sae (needs a
 * trained SAE, `--sae DIR`) are opt-in.
 */
export const DEFAULT_STEPS: readonly StepName[] = ['reading', 'direction', 'baseline', 'steering', 'attack'];

/** Steps a step builds on; they run first when asked for and not yet done. */
export const STEP_NEEDS: { readonly [K in StepName]: readonly StepName[] } = {
  reading: [],
  direction: [],
  baseline: [],
  steering: ['reading', 'direction'],
  attack: ['direction'],
  capability: ['reading', 'direction'],
  sae: ['reading', 'direction'],
};

export const STEP_TITLES: { readonly [K in StepName]: string } = {
  reading: 'harmful-request monitor, chosen by leave-one-source-out',
  direction: 'refusal direction',
  baseline: 'refusal and over-refusal without steering',
  steering: 'refusal steering: always on and two-sided gated',
  attack: 'SCAV attack',
  capability: 'capability cost of the gate (MMLU, GSM8K, TruthfulQA)',
  sae: 'SAE latent clamping: always on and gated',
};

/** The three evaluated groups: refusal is wanted on the first, not on the other two. */
export const EVAL_GROUPS = ['harmful', 'borderline', 'harmless'] as const;
export type EvalGroup = (typeof EVAL_GROUPS)[number];

/** Everything that decides the audit's numbers (and is compared when resuming). */
export interface AuditSettings {
  /** Development sources of the monitor (2 or more per class): it is fitted and chosen on them. */
  readonly devHarmful: readonly string[];
  readonly devBenign: readonly string[];
  /** Test sources of the monitor (1 or more per class): its headline figures, used for nothing else. */
  readonly testHarmful: readonly string[];
  readonly testBenign: readonly string[];
  /** First N prompts of each monitor source. */
  readonly limit: number;
  /** False positives on development benign prompts (out of fold) that set the monitor threshold. */
  readonly targetFpr: number;
  /** Refusal direction: harmful and harmless sets (their seeded split's train and val parts). */
  readonly directionHarmful: string;
  readonly directionHarmless: string;
  readonly nTrain: number;
  readonly nVal: number;
  /** Token ids that start a refusal (the direction's refusal score); null: from the tokenizer. */
  readonly refusalTokens: readonly number[] | null;
  /** Evaluated sets by group, and prompts per group (shared out evenly over the group's sets). */
  readonly evalSets: { readonly [G in EvalGroup]: readonly string[] };
  readonly nEval: number;
  readonly maxTokens: number;
  /** Coefficient of the refusal direction where it is added. */
  readonly coefficient: number;
  /** Two-sided gate: below this monitor score a prompt is clearly benign and gets the ablation. */
  readonly benignBelow: number;
  /** Concept of the SCAV attack: harmful and harmless sets, target P(harmful), layer accuracy floor. */
  readonly scavHarmful: string;
  readonly scavHarmless: string;
  readonly p0: number;
  readonly p1: number;
  readonly seed: number;
  readonly split: SplitFractions;
  readonly judges: readonly string[];
  readonly tokenIds: boolean;
  readonly batch: number;
  readonly redact: boolean;
  /** Capability step: items of each task (MMLU stratified by subject), from the seeded subsets. */
  readonly capabilityLimit: number;
  /** SAE step: the SAE folder (SAELens layout) on the model's residual stream; null: no SAE. */
  readonly sae: string | null;
  /** SAE step: the latent clamped; null: the top latent by refusal tokens. */
  readonly saeFeature: number | null;
  /** SAE step: its clamp value; null: the best of the grid on the direction's validation prompts. */
  readonly saeClamp: number | null;
  /** SAE step: the grid, as multiples of the latent's largest activation on refusal tokens. */
  readonly saeClampMultiples: readonly number[];
  /** SAE step: reply tokens from the start that count as a refusal's refusal tokens. */
  readonly saeRefusalTokens: number;
}

/** k of n with a 95% Wilson interval; rate null when n = 0. */
export interface Rate {
  readonly positives: number;
  readonly n: number;
  readonly errors: number;
  readonly rate: number | null;
  readonly ci: readonly [number, number];
}

/** Rates of one evaluated set (or group) in one run. */
export interface SetRates {
  readonly set: string;
  readonly n: number;
  /** Judge name -> rate of refusals (keyword judges) or unsafe replies (llamaguard). */
  readonly judges: Readonly<Record<string, Rate & { readonly measures: 'refusal' | 'unsafe' }>>;
  readonly flawed: Rate;
  /** Share flagged by the monitor (gated runs). */
  readonly flagged: Rate | null;
}

/** A generation run on disk: `<out>/replies/<name>.jsonl`. */
export interface RunRecord {
  readonly name: string;
  readonly label: string;
  readonly key: string;
  readonly file: string;
  readonly prompts: number;
  readonly seconds: number;
  readonly finishedAt: string;
  readonly sets: readonly SetRates[];
}

/** A monitor source: its name, class (1 harmful) and prompt count. */
export interface SourceInfo {
  readonly name: string;
  readonly label: 0 | 1;
  readonly n: number;
}

/** One reading (method and layers) on the development and the test sources. */
export interface ReadingSummary {
  readonly method: ReadingMethod;
  readonly layers: readonly number[];
  /** Worst development source's held-out AUROC (what chose it). */
  readonly devWorstAuroc: number | null;
  readonly testWorstAuroc: number | null;
  readonly testPooled: PooledFigures;
}

/** Every test prompt pooled, harmful against benign, at the development threshold. */
export interface PooledFigures {
  readonly auroc: number | null;
  readonly aurocCi: readonly [number, number];
  readonly tpr: Rate;
  readonly fpr: Rate;
}

export interface ReadingResult {
  /** The reading file (plain JSON, `concept generalize --save-reading`'s format). */
  readonly file: string;
  readonly template: 'chat' | 'raw';
  readonly method: ReadingMethod;
  readonly layers: readonly number[];
  /** Standardised score above which a request is flagged. */
  readonly threshold: number;
  readonly targetFpr: number;
  readonly sources: { readonly dev: readonly SourceInfo[]; readonly test: readonly SourceInfo[] };
  /** Development sources, each held out in turn (validation figures: they chose the reading). */
  readonly dev: readonly HeldOutSourceResult[];
  /** Test sources, each against the other class's test prompts (the headline). */
  readonly test: readonly HeldOutSourceResult[];
  readonly chosen: ReadingSummary;
  /** Each reading's own best candidate on the same test sources. */
  readonly byMethod: readonly ReadingSummary[];
  /** What a random split pooling the development sources would have chosen (never used). */
  readonly inSplit: { readonly layer: number; readonly accuracy: number; readonly heldOutWorstAuroc: number };
  /** Single-layer worst held-out development AUROC per method, for the chart. */
  readonly layerCurves: readonly {
    readonly method: ReadingMethod;
    readonly layer: number;
    readonly worstAuroc: number | null;
  }[];
  readonly warnings: readonly string[];
  readonly forwardSeconds: number;
}

export interface DirectionResult {
  /** The direction as a control vector (GGUF) with the ids it was fitted on. */
  readonly file: string;
  readonly sets: { readonly harmful: string; readonly harmless: string };
  /** Input of this block, at this position from the end of the prompt. */
  readonly layer: number;
  readonly position: number;
  readonly norm: number;
  /** 'filters': passed every filter of Arditi et al.; 'fallback': none did. */
  readonly selectedBy: 'filters' | 'fallback';
  /** Validation refusal scores (log-odds of a refusal-starting token). */
  readonly baseline: { readonly harmful: number; readonly harmless: number };
  readonly ablatedHarmful: number | null;
  readonly addedHarmless: number | null;
  readonly kl: number | null;
  readonly counts: {
    readonly harmfulTrain: number;
    readonly harmlessTrain: number;
    readonly harmfulVal: number;
    readonly harmlessVal: number;
  };
  readonly candidates: number;
  readonly examined: number;
  /** Per candidate layer: the best ablated refusal score over positions (lower: stronger). */
  readonly byLayer: readonly { readonly layer: number; readonly ablatedHarmful: number | null }[];
}

/** One evaluated group: its sets and prompts. */
export interface GroupInfo {
  readonly sets: readonly { readonly set: string; readonly used: number }[];
  readonly n: number;
}

export type EvalData = { readonly [G in EvalGroup]: GroupInfo };

/** Rates per group, and per set within it. */
export interface GroupRates {
  readonly group: SetRates;
  readonly sets: readonly SetRates[];
}

export type GroupedRates = { readonly [G in EvalGroup]: GroupRates };

export interface BaselineResult {
  readonly runs: readonly string[];
  readonly data: EvalData;
  readonly rates: GroupedRates;
}

export const CONDITIONS = ['none', 'add', 'ablate', 'gated'] as const;
export type Condition = (typeof CONDITIONS)[number];

/** The mean per-token log-likelihood change of the unsteered reply under a steering. */
export interface LikelihoodCost {
  readonly n: number;
  readonly meanDelta: number | null;
  readonly ci: readonly [number | null, number | null];
  /** Prompts the steering touched. */
  readonly steered: number;
}

export interface SteeringCondition {
  readonly condition: Condition;
  readonly label: string;
  /** The generation runs its replies come from (the gate composes three). */
  readonly runs: readonly string[];
  readonly rates: GroupedRates;
  /** On the groups where refusal is not wanted; null for no steering. */
  readonly likelihood: { readonly borderline: LikelihoodCost; readonly harmless: LikelihoodCost } | null;
}

export interface SteeringResult {
  readonly direction: { readonly layer: number; readonly norm: number };
  readonly coefficient: number;
  readonly gate: {
    readonly method: ReadingMethod;
    readonly layers: readonly number[];
    readonly threshold: number;
    readonly benignBelow: number;
  };
  /** The gate's verdicts per group. */
  readonly verdicts: {
    readonly [G in EvalGroup]: { readonly flagged: Rate; readonly benign: Rate; readonly uncertain: Rate };
  };
  readonly conditions: readonly SteeringCondition[];
  readonly data: EvalData;
  /** Tokens of the unsteered replies scored for the likelihood cost. */
  readonly likelihoodTokens: number;
}

export const ATTACK_METHODS = ['none', 'scav', 'ablate', 'subtract'] as const;
export type AttackMethod = (typeof ATTACK_METHODS)[number];

export interface AttackRun {
  readonly method: AttackMethod;
  readonly runs: readonly string[];
  readonly harmful: SetRates;
  /** Replies with no refusal phrase (primary judge) that are not flawed either. */
  readonly cleanSuccess: Rate;
}

export interface AttackResult {
  readonly p0: number;
  readonly p1: number;
  /** Blocks the SCAV move is applied at (probe test accuracy above p1). */
  readonly layers: readonly number[];
  readonly concept: { readonly harmful: string; readonly harmless: string; readonly file: string };
  readonly runs: readonly AttackRun[];
  readonly data: GroupInfo;
}

/** The capability suite under one steering. */
export interface CapabilityCondition {
  readonly condition: 'none' | 'gated';
  readonly label: string;
  readonly figures: readonly Figure[];
  /** Per-item rows, in the audit folder (`eval capability --out`'s format). */
  readonly file: string;
  readonly seconds: number;
}

export interface CapabilityResult {
  readonly tasks: readonly CapabilityTask[];
  /** Items per task and the seed of the subsets (0-shot, raw text, as lm-evaluation-harness). */
  readonly limit: number;
  readonly seed: number;
  /** GSM8K: tokens generated per reply at most. */
  readonly maxTokens: number;
  /** No steering, and the two-sided gate of the steering step. */
  readonly conditions: readonly CapabilityCondition[];
  /** Per figure (the conditions' order of figures): the gate minus no steering on the same items. */
  readonly costs: readonly (PairedDifference & { readonly task: string; readonly metric: string })[];
}

/** One steering of the SAE step on the evaluated prompts. */
export interface SaeCondition {
  readonly condition: 'clamp' | 'gated-clamp';
  readonly label: string;
  readonly runs: readonly string[];
  readonly rates: GroupedRates;
}

export interface SaeResult {
  readonly sae: {
    readonly dir: string;
    readonly hookName: string;
    readonly dIn: number;
    readonly dSae: number;
    readonly architecture: string;
    readonly k: number | null;
  };
  /** The search on the refusal direction's train prompts (its two sets), unsteered replies. */
  readonly search: {
    readonly sets: { readonly harmful: string; readonly harmless: string };
    readonly harmful: { readonly n: number; readonly refusals: number };
    readonly harmless: { readonly n: number; readonly refusals: number };
    readonly refusalTokens: number;
    readonly byRefusalTokens: readonly RefusalTokenFeature[];
    /** By correlation with the audit's monitor (its reading) at the last prompt token. */
    readonly byMonitor: readonly MonitorFeature[];
  };
  readonly feature: number;
  readonly featureFrom: 'search' | 'setting';
  /** On the direction's validation prompts, always on; null when the clamp was set. */
  readonly grid: readonly ClampGridRow[] | null;
  readonly clamp: number;
  readonly clampFrom: 'grid' | 'setting';
  /** Clamped always, and gated (flagged: clamp, clearly benign: direction ablated, else none). */
  readonly conditions: readonly SaeCondition[];
  readonly data: EvalData;
}

export interface AuditResults {
  readonly reading: ReadingResult;
  readonly direction: DirectionResult;
  readonly baseline: BaselineResult;
  readonly steering: SteeringResult;
  readonly attack: AttackResult;
  readonly capability: CapabilityResult;
  readonly sae: SaeResult;
}
