/**
 * Conditional steering: steer only the requests a monitor flags (the remedy O'Brien et al. name for
 * the over-refusal that always-on refusal steering causes), and optionally steer the other way the
 * requests it judges clearly benign (two-sided gating: a model that over-refuses is steered away
 * from refusal only where the monitor is confident that the request is harmless).
 *
 * Each prompt gets one verdict from its score s:
 *   flagged    s > threshold             -> `steer` (e.g. add the refusal direction)
 *   benign     s < benignBelow           -> `steerBenign` (e.g. ablate the refusal direction)
 *   uncertain  benignBelow <= s <= threshold -> left alone
 * Without `benignBelow` every unflagged prompt is benign, and without `steerBenign` benign prompts
 * are left alone: one-sided gating.
 *
 * A hook cannot decide after the prompt pass that the prompt pass itself should have been
 * steered, so the work is done in two steps:
 *   1. `model.run` over the prompts (logits off) reads the monitored hook at the last prompt token
 *      and scores it: flagged = score > threshold;
 *   2. every prompt is generated in one batch, each sequence with the hooks its verdict chose
 *      (`promptHooks`), so the batch stays full whatever the verdicts.
 * Step 1 costs one extra prompt pass (no KV cache is shared with step 2; the engine has no API to
 * hand one over), which is small next to generation.
 *
 * Shapes: D = d_model.
 */
import { OptionError } from '../formats/errors.js';
import type { Hook, HookName } from '../hooks/hooks.js';
import type { GenerateOptions, Generation, Model, Prompt } from '../model/model.js';

/** Anything that scores a request from activation rows [D] read at the last prompt token. */
export interface PromptMonitor {
  /** Hook points read, e.g. `blocks.12.hook_resid_post` (one or several layers). */
  readonly hooks: readonly HookName[];
  /** A score from the rows read at `hooks`, in that order (e.g. the probe's P(malicious)). */
  score(rows: readonly Float32Array[]): number;
  /** Flag when score > threshold. */
  readonly threshold: number;
  /** Clearly benign when score < benignBelow (at most `threshold`; default `threshold`). */
  readonly benignBelow?: number;
}

/** What the monitor made of a prompt (see the file comment). */
export type PromptVerdict = 'flagged' | 'benign' | 'uncertain';

export interface PromptFlag {
  readonly index: number;
  readonly verdict: PromptVerdict;
  /** verdict === 'flagged'. */
  readonly flagged: boolean;
  readonly score: number;
}

/** Steering for flagged (or benign) prompts: fixed hooks, or a function of each prompt's flag. */
export type SteerSpec = readonly Hook[] | ((flag: PromptFlag) => readonly Hook[]);

export interface ConditionalOptions extends Omit<GenerateOptions, 'hooks' | 'promptHooks'> {
  readonly monitor: PromptMonitor;
  /** Steering for flagged prompts. */
  readonly steer: SteerSpec;
  /** Steering for clearly benign prompts (default none). */
  readonly steerBenign?: SteerSpec;
  /**
   * Hooks on every prompt, in the verdict pass too (e.g. an attack the defence must see through).
   * They run before the steering hooks.
   */
  readonly baseHooks?: readonly Hook[];
}

export interface ConditionalResult {
  readonly generations: Generation[];
  readonly flags: PromptFlag[];
}

/** Scores each prompt with the monitor (one forward pass, no logits). */
export function monitorPrompts(
  model: Model,
  prompts: readonly Prompt[],
  monitor: PromptMonitor,
  opts: { hooks?: readonly Hook[]; maxBatchTokens?: number } = {},
): PromptFlag[] {
  if (!Number.isFinite(monitor.threshold))
    throw new OptionError(`monitor threshold must be finite, got ${monitor.threshold}`);
  const benignBelow = monitor.benignBelow ?? monitor.threshold;
  if (!(Number.isFinite(benignBelow) && benignBelow <= monitor.threshold))
    throw new OptionError(
      `the benign bound must be a finite number at most the threshold ${monitor.threshold}, got ${benignBelow}`,
    );
  if (monitor.hooks.length === 0) throw new OptionError('the monitor reads no hook');
  const res = model.run(prompts, {
    hooks: opts.hooks,
    cache: { names: monitor.hooks, positions: 'last' },
    logits: 'none',
    maxBatchTokens: opts.maxBatchTokens,
  });
  const read = monitor.hooks.map((h) => res.cache.get(h)!);
  return prompts.map((_, index) => {
    const score = monitor.score(read.map((rows) => rows[index]));
    if (!Number.isFinite(score))
      throw new OptionError(`the monitor gave prompt ${index} a non-finite score (${score}): no verdict`);
    const verdict: PromptVerdict =
      score > monitor.threshold ? 'flagged' : score < benignBelow ? 'benign' : 'uncertain';
    return { index, verdict, flagged: verdict === 'flagged', score };
  });
}

/** The gate's choice for each prompt: the base hooks, then the steering its verdict calls for. */
export function verdictHooks(
  flags: readonly PromptFlag[],
  opts: Pick<ConditionalOptions, 'steer' | 'steerBenign' | 'baseHooks'>,
): Hook[][] {
  const { steer, steerBenign, baseHooks = [] } = opts;
  const hooksOf = (spec: SteerSpec | undefined, f: PromptFlag): readonly Hook[] =>
    spec === undefined ? [] : typeof spec === 'function' ? spec(f) : spec;
  return flags.map((f) => [
    ...baseHooks,
    ...(f.verdict === 'flagged' ? hooksOf(steer, f) : f.verdict === 'benign' ? hooksOf(steerBenign, f) : []),
  ]);
}

/**
 * Generates every prompt in one batch, each with the hooks its verdict chose (`verdictHooks`).
 * The replies do not depend on the verdicts of the other prompts.
 */
export async function conditionalGenerate(
  model: Model,
  prompts: readonly Prompt[],
  opts: ConditionalOptions,
): Promise<ConditionalResult> {
  const { monitor, steer, steerBenign, baseHooks = [], ...gen } = opts;
  const flags = monitorPrompts(model, prompts, monitor, { hooks: baseHooks });
  const own = verdictHooks(flags, { steer, steerBenign, baseHooks });
  const generations = await model.generate(prompts, { ...gen, promptHooks: (i) => own[i] });
  return { generations, flags };
}
