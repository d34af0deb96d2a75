/**
 * What a steering costs on harmless prompts, before any benchmark: how much less likely the
 * steered model finds the replies the unsteered model gives. Each prompt is answered greedily
 * without steering; then both models score that reply teacher-forced, and the figure is the mean
 * per-token log-likelihood change, steered minus unsteered (0: the steering leaves the reply as
 * likely as it was; negative: it pulls the model away from its own answer). A capability proxy
 * until `eval capability` exists: it shows that a gate leaves benign prompts alone, and by how much
 * an always-on steering does not.
 */
import { SteerguardError } from '../formats/errors.js';
import type { Hook } from '../hooks/hooks.js';
import type { Model, Prompt } from '../model/model.js';

export interface LikelihoodItem {
  readonly set: string;
  readonly prompt: Prompt;
}

export interface LikelihoodRow {
  /** Position of the prompt in the items. */
  readonly index: number;
  readonly set: string;
  /** Reply tokens scored (the unsteered greedy reply). */
  readonly tokens: number;
  /** Mean log-probability per reply token, unsteered and steered. */
  readonly base: number;
  readonly steered: number;
  readonly delta: number;
  /** Whether the steering ran any hook on this prompt (a gate may leave it alone). */
  readonly steeredPrompt: boolean;
}

export interface LikelihoodSummary {
  readonly set: string;
  readonly n: number;
  /** Mean over prompts of the per-token change, with a 95% normal interval over prompts. */
  readonly meanDelta: number;
  readonly ci: readonly [number, number];
  readonly meanBase: number;
  /** Prompts the steering touched. */
  readonly steered: number;
}

/**
 * Mean log-softmax of `tokens[t+1]` at positions t = from-1 .. end-2, from `logits` [T-from+1, V]:
 * the rows of those positions and the last one.
 */
function replyLogLikelihood(
  logits: Float32Array,
  tokens: readonly number[],
  from: number,
  V: number,
): number {
  let total = 0;
  for (let t = from - 1; t < tokens.length - 1; t++) {
    const k = t - (from - 1);
    const row = logits.subarray(k * V, (k + 1) * V);
    let max = -Infinity;
    for (let v = 0; v < V; v++) if (row[v] > max) max = row[v];
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(row[v] - max);
    total += row[tokens[t + 1]] - max - Math.log(sum);
  }
  const n = tokens.length - from;
  const mean = total / n;
  if (!Number.isFinite(mean)) throw new SteerguardError(`a reply's log-likelihood is not finite (${mean})`);
  return mean;
}

/** Per set (first-seen order): the mean change and its interval. */
export function summarizeLikelihood(rows: readonly LikelihoodRow[]): LikelihoodSummary[] {
  const sets = [...new Set(rows.map((r) => r.set))];
  return sets.map((set) => {
    const rs = rows.filter((r) => r.set === set);
    const n = rs.length;
    const mean = rs.reduce((a, r) => a + r.delta, 0) / n;
    const sd = n > 1 ? Math.sqrt(rs.reduce((a, r) => a + (r.delta - mean) ** 2, 0) / (n - 1)) : NaN;
    const half = (1.96 * sd) / Math.sqrt(n);
    return {
      set,
      n,
      meanDelta: mean,
      ci: [mean - half, mean + half],
      meanBase: rs.reduce((a, r) => a + r.base, 0) / n,
      steered: rs.filter((r) => r.steeredPrompt).length,
    };
  });
}

/**
 * The change described in the file comment, for each item under each steering: `steerings[k][i]`
 * are the hooks item i is steered with in steering k, and the result's `[k]` are its rows. The
 * unsteered replies are generated and scored once for all of them. Items whose unsteered reply is
 * empty (the model stopped at once) are left out.
 */
export async function measureLikelihoodShift(
  model: Model,
  items: readonly LikelihoodItem[],
  steerings: readonly (readonly (readonly Hook[])[])[],
  opts: { maxNewTokens: number; onProgress?: (done: number, total: number) => void },
): Promise<LikelihoodRow[][]> {
  for (const hooks of steerings)
    if (hooks.length !== items.length)
      throw new SteerguardError(`${hooks.length} hook lists for ${items.length} prompts`);
  const V = model.config.vocabSize;
  const replies = await model.generate(
    items.map((it) => it.prompt),
    { maxNewTokens: opts.maxNewTokens },
  );
  const rows: LikelihoodRow[][] = steerings.map(() => []);
  for (let i = 0; i < items.length; i++) {
    const g = replies[i];
    if (g.tokens.length > 0) {
      const tokens = [...g.promptTokens, ...g.tokens];
      const from = g.promptTokens.length;
      const score = (h: readonly Hook[]) =>
        replyLogLikelihood(
          // Only the reply's rows need logits; the reply counts as generated for hook positions,
          // so a hook on generated tokens steers the rows it steered while generating.
          model.run([{ tokens }], {
            logits: { lastTokens: tokens.length - from + 1 },
            hooks: h,
            promptLength: () => from,
          }).logits[0],
          tokens,
          from,
          V,
        );
      const base = score([]);
      steerings.forEach((hooks, k) => {
        const steered = hooks[i].length > 0 ? score(hooks[i]) : base;
        rows[k].push({
          index: i,
          set: items[i].set,
          tokens: g.tokens.length,
          base,
          steered,
          delta: steered - base,
          steeredPrompt: hooks[i].length > 0,
        });
      });
    }
    opts.onProgress?.(i + 1, items.length);
  }
  return rows;
}
