/**
 * Conditional steering: steer only the requests a monitor flags (the remedy O'Brien et al. name for
 * the over-refusal that always-on refusal steering causes).
 *
 * A hook cannot decide after the prompt pass that the prompt pass itself should have been
 * steered, so the work is done in two steps:
 *   1. `model.run` over the prompts (logits off) reads the monitored hook at the last prompt token
 *      and scores it: flagged = score > threshold;
 *   2. flagged prompts are generated with the steering hooks, the others without, each group as
 *      one batch, and the replies are put back in input order.
 * Step 1 costs one extra prompt pass (no KV cache is shared with step 2; the engine has no API to
 * hand one over), which is small next to generation.
 *
 * Shapes: D = d_model.
 */
import { OptionError } from '../formats/errors.js';
import type { Hook, HookName } from '../hooks/hooks.js';
import type { GenerateOptions, Generation, Model, Prompt } from '../model/model.js';

/** Anything that scores a request from one activation row [D] read at the last prompt token. */
export interface PromptMonitor {
  /** Hook point read, e.g. `blocks.12.hook_resid_post`. */
  readonly hook: HookName;
  /** A score, e.g. the probe's P(malicious). */
  score(e: Float32Array): number;
  /** Flag when score > threshold. */
  readonly threshold: number;
}

export interface PromptFlag {
  readonly index: number;
  readonly flagged: boolean;
  readonly score: number;
}

/**
 * Steering for flagged prompts: fixed hooks, or a function of each flagged prompt. Prompts for
 * which the function returns the same array are generated together; return one shared array
 * (or a few) to keep batches large.
 */
export type SteerSpec = readonly Hook[] | ((flag: PromptFlag) => readonly Hook[]);

export interface ConditionalOptions extends Omit<GenerateOptions, 'hooks'> {
  readonly monitor: PromptMonitor;
  readonly steer: SteerSpec;
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
  const res = model.run(prompts, {
    hooks: opts.hooks,
    cache: { names: [monitor.hook], positions: 'last' },
    logits: 'none',
    maxBatchTokens: opts.maxBatchTokens,
  });
  const rows = res.cache.get(monitor.hook)!;
  return rows.map((e, index) => {
    const score = monitor.score(e);
    return { index, flagged: score > monitor.threshold, score };
  });
}

/**
 * Generates every prompt, steering only those the monitor flags. Greedy results do not depend on
 * the grouping; sampled ones do (seeds follow the position within a group).
 */
export async function conditionalGenerate(
  model: Model,
  prompts: readonly Prompt[],
  opts: ConditionalOptions,
): Promise<ConditionalResult> {
  const { monitor, steer, baseHooks = [], ...gen } = opts;
  const flags = monitorPrompts(model, prompts, monitor, { hooks: baseHooks });

  // Group prompts by the hooks they get; unflagged prompts share the empty group.
  const groups = new Map<readonly Hook[], number[]>();
  const none: readonly Hook[] = [];
  for (const f of flags) {
    const hooks = !f.flagged ? none : typeof steer === 'function' ? steer(f) : steer;
    const list = groups.get(hooks) ?? [];
    list.push(f.index);
    groups.set(hooks, list);
  }
  const generations = new Array<Generation>(prompts.length);
  for (const [hooks, indices] of groups) {
    const out = await model.generate(
      indices.map((i) => prompts[i]),
      {
        ...gen,
        hooks: [...baseHooks, ...hooks],
        onText: gen.onText ? (i, text) => gen.onText!(indices[i], text) : undefined,
      },
    );
    out.forEach((g, k) => (generations[indices[k]] = g));
  }
  return { generations, flags };
}
