/**
 * steerguard's library API. The whole surface fits on a page:
 *
 * - `Model`: load a checkpoint (GGUF or Hugging Face safetensors), `run` prompts while caching any
 *   hook's activations, `generate` with hooks applied, `addHook` for persistent ones.
 * - Hooks: `HookName` (TransformerLens names), and the interventions `addVector`,
 *   `ablateDirection`, `replaceWith`, `mapRows` that return plain `Hook` values.
 * - Files: GGUF and safetensors readers/writers, prompt files, tokenizer.
 */
export { Model } from './model/model.js';
export type {
  Prompt,
  RunOptions,
  RunResult,
  CacheRequest,
  GenerateOptions,
  Generation,
  HookHandle,
} from './model/model.js';
export type { ModelConfig, Architecture } from './model/config.js';
export type { ModelIdentity, WeightStorage } from './model/load.js';
export type { SamplingOptions } from './model/sampling.js';
export type { Hook, HookFn, HookContext, HookName, Positions, BlockHookKind } from './hooks/hooks.js';
export { allHookNames, blockHook, parseHookName, BLOCK_HOOKS } from './hooks/hooks.js';
export { addVector, ablateDirection, replaceWith, mapRows } from './hooks/interventions.js';
export type { RowInfo } from './hooks/interventions.js';
export type { Backend } from './engine/backend.js';
export { SteerguardError, FormatError, OptionError } from './formats/errors.js';

// Methods: safety concepts (SCAV), monitoring, steering, evaluation.
export { Concept, trainConcept, evaluateConcept } from './concepts/concept.js';
export type { TrainConceptOptions, LayerProbe, ProbeMetrics } from './concepts/concept.js';
export { Monitor, calibrate, promptMonitor } from './concepts/monitor.js';
export { scavHooks, scavStep } from './concepts/scav.js';
export type { ScavOptions, ScavTarget } from './concepts/scav.js';
export { loadPromptSet, knownPromptSets } from './data/datasets.js';
export type { PromptSet, SetPrompt } from './data/datasets.js';
export { checkLeakage, LeakageError, splitItems } from './data/splits.js';
export { ControlVector } from './steering/control-vector.js';
export { computeRefusalDirection, ablationHooks, additionHooks } from './steering/refusal-direction.js';
export { conditionalGenerate } from './steering/conditional.js';
export { evaluateRefusal } from './eval/refusal.js';
export { gcgKeywordJudge, jbbKeywordJudge, llamaGuardJudge } from './eval/judges.js';
export type { Judge, Judgement } from './eval/judges.js';
export { languageFlaws } from './eval/flaws.js';
export { runAudit } from './audit/pipeline.js';
