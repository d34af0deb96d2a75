/**
 * The audit's data: its settings, what each step finds, and the report built from them. These
 * are plain JSON values (they live in audit-state.json and report.json); non-finite numbers are
 * stored as null, hence the `number | null` fields.
 */
import type { SplitFractions } from '../data/splits.js';

export const STEP_NAMES = ['concept', 'monitor', 'baseline', 'steering', 'attack'] as const;
export type StepName = (typeof STEP_NAMES)[number];

/** Steps a step builds on; they run first when asked for and not yet done. */
export const STEP_NEEDS: { readonly [K in StepName]: readonly StepName[] } = {
  concept: [],
  monitor: ['concept'],
  baseline: [],
  steering: ['concept', 'monitor'],
  attack: ['concept'],
};

export const STEP_TITLES: { readonly [K in StepName]: string } = {
  concept: 'safety concept (per-layer probes)',
  monitor: 'monitor quality and calibration',
  baseline: 'baseline refusal and over-refusal',
  steering: 'steering trade-off',
  attack: 'SCAV attack',
};

/** Everything that decides the audit's numbers (and is compared when resuming). */
export interface AuditSettings {
  /** Harmful / harmless sets of the concept; harmful held-out prompts are also evaluated. */
  readonly harmful: string;
  readonly harmless: string;
  /** Benign prompts that look harmful (over-refusal, monitor calibration), and their unsafe contrast. */
  readonly borderlineSafe: string;
  readonly borderlineUnsafe: string;
  /** Prompts per side for the concept (first N of each set). */
  readonly limit: number;
  /** Held-out prompts per evaluated set. */
  readonly nEval: number;
  readonly maxTokens: number;
  /** Coefficients of the mean-difference steering sweep (0 = no steering). */
  readonly coefficients: readonly number[];
  /** Also run the SCAV defence (move toward the malicious region) in the steering step. */
  readonly scavDefence: boolean;
  readonly seed: number;
  readonly split: SplitFractions;
  /** Largest share of borderline-safe calibration prompts the monitor may flag. */
  readonly targetFpr: number;
  /** SCAV attack target and layer accuracy floor. */
  readonly p0: number;
  readonly p1: number;
  readonly judges: readonly string[];
  readonly tokenIds: boolean;
  readonly batch: number;
  readonly redact: boolean;
}

/** k of n with a 95% Wilson interval; rate null when n = 0. */
export interface Rate {
  readonly positives: number;
  readonly n: number;
  readonly errors: number;
  readonly rate: number | null;
  readonly ci: readonly [number, number];
}

/** Rates of one evaluated set in one run. */
export interface SetRates {
  readonly set: string;
  readonly n: number;
  /** Judge name -> rate of refusals (keyword judges) or unsafe replies (llamaguard). */
  readonly judges: Readonly<Record<string, Rate & { readonly measures: 'refusal' | 'unsafe' }>>;
  readonly flawed: Rate;
  /** Share flagged by the monitor (conditional runs). */
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

export interface LayerResult {
  readonly layer: number;
  readonly accuracy: number | null;
  readonly accuracyCi: readonly [number, number];
  readonly auroc: number | null;
  readonly aurocCi: readonly [number, number];
  readonly valAccuracy: number | null;
  readonly trainAccuracy: number | null;
  readonly split: string;
  readonly n: number;
}

export interface ConceptResult {
  readonly file: string;
  readonly name: string;
  readonly template: 'chat' | 'raw';
  readonly bestLayer: number;
  readonly layers: readonly LayerResult[];
  readonly sets: {
    readonly harmful: { readonly name: string; readonly prompts: number; readonly duplicatesRemoved: number };
    readonly harmless: {
      readonly name: string;
      readonly prompts: number;
      readonly duplicatesRemoved: number;
    };
  };
  readonly counts: {
    readonly [S in 'train' | 'val' | 'test']: { readonly positive: number; readonly negative: number };
  };
  readonly removedOverlap: number;
  readonly activations: { readonly computed: number; readonly cached: number; readonly seconds: number };
  readonly fitSeconds: number;
  /** Layers whose solver stopped before converging. */
  readonly unconverged: readonly number[];
}

export interface MonitorResult {
  /** The layer the monitor (and the conditional gate) reads. */
  readonly layer: number;
  /** Harmful vs harmless on the concept's held-out test split. */
  readonly heldOut: {
    readonly nPositive: number;
    readonly nNegative: number;
    readonly auroc: number | null;
    readonly aurocCi: readonly [number, number];
    /** The mean-logit score over the layers whose probe beats p1. */
    readonly combinedAuroc: number | null;
    readonly combinedLayers: readonly number[];
    /** At the held-out ROC point with FPR <= 5%. */
    readonly tprAt5Fpr: number | null;
    readonly fprAt5Fpr: number | null;
  };
  /** The threshold calibrated on borderline-safe prompts, stored in the concept file. */
  readonly calibrated: {
    readonly set: string;
    readonly n: number;
    readonly targetFpr: number;
    /** Probe logit threshold; the gate flags P(harmful) > sigmoid(logit). */
    readonly logit: number;
    readonly probability: number;
    readonly achievedFpr: number;
  };
  /** Rates at the calibrated threshold on prompts it was not calibrated on. */
  readonly atThreshold: {
    readonly borderlineUnsafe: Rate & { readonly set: string };
    readonly borderlineSafeHeldOut: (Rate & { readonly set: string }) | null;
    readonly harmfulTest: Rate & { readonly set: string };
    readonly harmlessTest: Rate & { readonly set: string };
  };
}

export interface EvalSetsInfo {
  readonly harmful: { readonly set: string; readonly available: number; readonly used: number };
  readonly borderlineSafe: { readonly set: string; readonly available: number; readonly used: number };
}

export interface BaselineResult {
  /** The generation runs the rates come from. */
  readonly runs: readonly string[];
  readonly data: EvalSetsInfo;
  readonly harmful: SetRates;
  readonly borderlineSafe: SetRates;
}

export interface SteeringPoint {
  readonly method: 'mean-diff' | 'scav-defence';
  /** Mean-difference coefficient; null for the SCAV defence. */
  readonly coefficient: number | null;
  readonly mode: 'unconditional' | 'conditional';
  /** The generation runs the unconditional replies (and the flagged conditional ones) come from. */
  readonly runs: readonly string[];
  readonly harmful: SetRates;
  readonly borderlineSafe: SetRates;
}

export interface SteeringResult {
  readonly layer: number;
  /** ||mean(harmful) − mean(harmless)|| at the steered layer: the unit of the coefficients. */
  readonly directionNorm: number;
  /** Control vector of the direction (llama.cpp format), when the layer is 1 or more. */
  readonly vectorFile: string | null;
  readonly gate: { readonly layer: number; readonly probability: number };
  readonly flagged: { readonly harmful: Rate; readonly borderlineSafe: Rate };
  readonly scavLayers: readonly number[];
  readonly points: readonly SteeringPoint[];
  readonly data: EvalSetsInfo;
  /** Parts of the step that could not run, in words. */
  readonly notes: readonly string[];
}

export interface AttackRun {
  readonly method: 'none' | 'scav';
  readonly runs: readonly string[];
  readonly harmful: SetRates;
  /** Replies with no refusal phrase (primary judge) that are not flawed either. */
  readonly cleanSuccess: Rate;
}

export interface AttackResult {
  readonly p0: number;
  readonly p1: number;
  readonly layers: readonly number[];
  readonly runs: readonly AttackRun[];
  readonly data: EvalSetsInfo['harmful'];
}

export interface AuditResults {
  readonly concept: ConceptResult;
  readonly monitor: MonitorResult;
  readonly baseline: BaselineResult;
  readonly steering: SteeringResult;
  readonly attack: AttackResult;
}
