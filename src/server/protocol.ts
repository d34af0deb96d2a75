/**
 * What the HTTP side and the model worker (worker.ts) say to each other, and the settings the
 * worker starts from. Plain data only: everything crosses a `postMessage` (structured clone).
 */
import type { WeightStorage } from '../model/load.js';
import type { PromptVerdict } from '../steering/conditional.js';
import type { Job } from './requests.js';

/** What the worker loads at start. */
export interface EngineSettings {
  readonly model: string;
  readonly threads?: number;
  readonly weights?: WeightStorage;
  /** The monitor: a reading file (concept generalize --save-reading) or a concept file. */
  readonly reading?: string;
  readonly concept?: string;
  /** Layer a concept's monitor reads (default the concept's). */
  readonly monitorLayer?: number;
  /** Flag above this score (default: the reading's or concept's own). */
  readonly threshold?: number;
  /** Two-sided gate: below this score a request is clearly benign (and `steer` ablates the vector). */
  readonly benignBelow?: number;
  /** The gate's vector (refusal direction or control vector, GGUF): added to flagged requests. */
  readonly vector?: string;
  /** Coefficient the gate adds `vector` with. */
  readonly coeff: number;
  /** Folder of control vectors (`*.gguf`) requests may name. */
  readonly vectorsDir?: string;
  /** Sequences decoded together. */
  readonly maxBatch: number;
  /** Longest prompt accepted, in tokens (also bounded by the context). */
  readonly maxPromptTokens: number;
  /** Largest max_tokens, and the default when a request gives none. */
  readonly maxTokens: number;
  /** The reply of a request that policy `block` refuses. */
  readonly blockMessage: string;
}

/** What the worker reports once loaded. */
export interface EngineInfo {
  /** The model id clients name in `model`: the model's file or folder name, without `.gguf`. */
  readonly model: string;
  readonly maxContext: number;
  /** The model has a chat template (chat completions need it). */
  readonly chat: boolean;
  readonly backend: string;
  /** Names of the vectors requests may steer with. */
  readonly vectors: readonly string[];
  readonly monitor: { readonly threshold: number; readonly benignBelow: number } | null;
  /** A gate vector is loaded (policy steer possible). */
  readonly gate: boolean;
}

/** The monitor's verdict on a prompt, as responses carry it. */
export interface Verdict {
  readonly score: number;
  readonly verdict: PromptVerdict;
  readonly threshold: number;
  readonly benign_below: number;
}

/** The steering a request ran with, as responses report it. */
export interface SteeringApplied {
  readonly vectors: readonly { vector: string; coeff: number; layers: readonly number[] }[];
  /** What the gate did (policy steer): added the vector, ablated it, or nothing. */
  readonly gate: 'add' | 'ablate' | 'none' | null;
}

/** How a reply ended: OpenAI's reasons, and `cancelled` (client gone or server stopping). */
export type FinishReason = 'stop' | 'length' | 'content_filter' | 'cancelled';

export type ToWorker =
  | { readonly type: 'submit'; readonly id: number; readonly job: Job }
  | { readonly type: 'cancel'; readonly id: number };

export type FromWorker =
  | { readonly type: 'ready'; readonly info: EngineInfo }
  | { readonly type: 'fatal'; readonly message: string }
  | {
      readonly type: 'accepted';
      readonly id: number;
      readonly promptTokens: number;
      readonly verdict: Verdict | null;
      readonly steering: SteeringApplied;
      readonly blocked: boolean;
    }
  | {
      readonly type: 'rejected';
      readonly id: number;
      readonly status: number;
      readonly message: string;
      readonly param: string | null;
    }
  | {
      readonly type: 'text';
      readonly id: number;
      readonly text: string;
      /** Tokens generated so far (text may lag behind them: stop strings, split characters). */
      readonly tokens: number;
    }
  | { readonly type: 'score'; readonly id: number; readonly index: number; readonly score: number }
  | {
      readonly type: 'done';
      readonly id: number;
      readonly finishReason: FinishReason;
      readonly completionTokens: number;
      readonly text: string;
    }
  | { readonly type: 'failed'; readonly id: number; readonly message: string }
  | { readonly type: 'load'; readonly waiting: number; readonly active: number };
