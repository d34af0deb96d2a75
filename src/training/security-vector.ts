/**
 * Security vectors (Zhou et al., "Making Harmful Behaviors Unlearnable for Large Language Models",
 * ACL Findings 2024, arXiv 2311.02105): a LoRA adapter trained on harmful (prompt, harmful answer)
 * pairs until, switched on, the model already answers harmfully. A fine-tune on data with harmful
 * examples then runs with it on and frozen (`LoraTrainOptions.frozenAdapters`): the harmful
 * examples already have a low loss, so little of them is learned. The fine-tuned adapter is used
 * with the security vector off.
 *
 * Not implemented: the paper's KL term that keeps the model's other behaviour while the security
 * vector is trained.
 */
import { type MixItem, type MixPool, type MixRecord, buildTrainingMix } from './finetune-attack.js';

/** The paper's settings: ~100 harmful examples, 10 epochs. */
export const SECURITY_VECTOR_DEFAULTS = { samples: 100, epochs: 10 } as const;

/**
 * The security vector's training examples: `samples` harmful examples of `pool` drawn by `seed`,
 * none of them in `exclude` (the fine-tune's own harmful examples: the defender does not know the
 * attacker's data, so the two are kept apart).
 */
export function securityVectorMix(
  pool: MixPool,
  o: { readonly samples: number; readonly seed: number; readonly exclude: ReadonlySet<string> },
): { items: MixItem[]; record: MixRecord } {
  // A mix that is all harmful; its benign side draws nothing.
  return buildTrainingMix(pool, pool, {
    harmfulShare: 1,
    samples: o.samples,
    seed: o.seed,
    exclude: o.exclude,
  });
}

/** Content ids of a mix's harmful examples. */
export function harmfulIds(items: readonly MixItem[]): Set<string> {
  return new Set(items.filter((it) => it.kind === 'harmful').map((it) => it.example.id));
}
