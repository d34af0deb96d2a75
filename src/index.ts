/**
 * steerguard's library API, on one page. Grouped by layer, lowest first (docs/ARCHITECTURE.md);
 * every value here comes with the types its callers need to write down its options and results.
 * Nothing here loads the command line (src/cli/) or node-llama-cpp (src/reference/).
 *
 * - Files: GGUF and safetensors readers and writers, Hugging Face folders and hub cache, the
 *   tokenizer with chat templates, and the error types every layer throws.
 * - Model: `Model.load` a checkpoint (GGUF or safetensors), `run` prompts while caching any hook's
 *   activations, `generate` with hooks, `addHook` for persistent ones.
 * - Hooks: TransformerLens names (`HookName`, `blockHook`), and the interventions `addVector`,
 *   `ablateDirection`, `replaceWith`, `mapRows`, which return plain `Hook` values.
 * - Data: prompt files and named prompt sets, seeded splits, the leakage guard, the capability and
 *   bias benchmarks' files (MMLU, GSM8K, TruthfulQA, BBQ, CrowS-Pairs).
 * - Methods: SCAV concepts (train, evaluate, calibrate, monitor, attack), control vectors, the
 *   refusal direction, conditional steering, sparse autoencoders (`Sae`, `trainSae`, SAELens files).
 * - Evaluation: judges, language flaws, the refusal evaluation, capability (MMLU, GSM8K,
 *   TruthfulQA) and bias (BBQ, CrowS-Pairs) by lm-evaluation-harness's log-likelihood scoring, with
 *   or without steering (`buildSteeringHooks`), and the `Reporter` interface that long calls
 *   report progress through.
 * - Audit: `runAudit`, the whole pipeline with its HTML and JSON report.
 */

// Files ---------------------------------------------------------------------------------------
export { SteerguardError, FormatError, OptionError } from './formats/errors.js';
export {
  readGguf,
  readGgufTensorF32,
  readGgufTensorBytes,
  ggufMetadataEntries,
  writeGguf,
} from './formats/gguf.js';
export type {
  GgufFile,
  GgufTensorInfo,
  GgufValue,
  GgufMetadataEntry,
  GgufTensorInput,
  GgufWriteInput,
} from './formats/gguf.js';
export { readSafetensorsHeader, readSafetensorsTensorF32, writeSafetensors } from './formats/safetensors.js';
export type {
  SafetensorsFile,
  SafetensorsTensorInfo,
  SafetensorsDtype,
  SafetensorsWriteDtype,
  SafetensorsWriteTensor,
} from './formats/safetensors.js';
export { openHfModelDir, openHfTokenizer, resolveModelSource, pullModel } from './formats/hf.js';
export type {
  HfModelDir,
  OpenHfModelDirOptions,
  ModelSource,
  PullOptions,
  PullProgress,
} from './formats/hf.js';
export { Tokenizer, StreamDecoder } from './formats/tokenizer.js';
export type {
  ChatMessage,
  ChatTemplateOptions,
  FormatPromptOptions,
  EncodeOptions,
  DecodeOptions,
  HfTokenizerConfig,
  GgufMetadataLike,
} from './formats/tokenizer.js';

// Engine --------------------------------------------------------------------------------------
export type { Backend } from './engine/backend.js';

// Hooks ---------------------------------------------------------------------------------------
export { allHookNames, blockHook, parseHookName, BLOCK_HOOKS } from './hooks/hooks.js';
export type { Hook, HookFn, HookContext, HookName, Positions, BlockHookKind } from './hooks/hooks.js';
export { addVector, ablateDirection, replaceWith, mapRows } from './hooks/interventions.js';
export type { RowInfo } from './hooks/interventions.js';

// Model ---------------------------------------------------------------------------------------
export { Model } from './model/model.js';
export type {
  Prompt,
  PromptPrefix,
  PrefillOptions,
  RunOptions,
  RunResult,
  CacheRequest,
  GenerateOptions,
  Generation,
  Decoder,
  DecoderOptions,
  SequenceOptions,
  HookHandle,
  AdapterHandle,
} from './model/model.js';
export type { ModelConfig, Architecture } from './model/config.js';
export type { ModelIdentity, LoadOptions, WeightStorage } from './model/load.js';
export type { SamplingOptions } from './model/sampling.js';

// Data ----------------------------------------------------------------------------------------
export { loadPromptFile } from './data/prompts.js';
export type { PromptRecord, LoadPromptOptions } from './data/prompts.js';
export { loadPromptSet, knownPromptSets } from './data/datasets.js';
export type { PromptSet, SetPrompt, LoadSetOptions } from './data/datasets.js';
export { checkLeakage, LeakageError, splitItems, parseSplit } from './data/splits.js';
export {
  loadMmlu,
  loadMmluFile,
  loadGsm8k,
  loadTruthfulQa,
  loadBbq,
  loadBbqFile,
  loadCrowsPairs,
  MMLU_HEADER,
} from './data/benchmarks.js';
export type {
  MmluQuestion,
  Gsm8kProblem,
  TruthfulQaQuestion,
  BbqItem,
  CrowsPair,
} from './data/benchmarks.js';
export type { SplitFractions, SplitName, Splits } from './data/splits.js';

// Methods: concepts ---------------------------------------------------------------------------
export { Concept, trainConcept, evaluateConcept } from './concepts/concept.js';
export type {
  ConceptExample,
  ConceptInit,
  ConceptModel,
  ConceptData,
  ConceptScore,
  ConceptThreshold,
  ConceptEvaluation,
  TrainConceptOptions,
  TrainReport,
  LayerProbe,
  ProbeMetrics,
} from './concepts/concept.js';
export { Monitor, calibrate, promptMonitor } from './concepts/monitor.js';
export type {
  MonitorOptions,
  MonitorReading,
  TokenReading,
  LayerReading,
  MonitorGenerateOptions,
  CalibrateOptions,
} from './concepts/monitor.js';
export { scavHooks, scavStep } from './concepts/scav.js';
export type { ScavOptions, ScavTarget, ScavMove } from './concepts/scav.js';
export { leaveOneSourceOut, fitSourceReading, scoreWithReading, readingScore } from './concepts/sources.js';
export type {
  LabelledSource,
  ReadingMethod,
  SourceValidationOptions,
  SourceValidation,
  HeldOutSourceResult,
  ReadingCandidate,
  SourceReading,
} from './concepts/sources.js';
export { measureGeneralization } from './concepts/generalization.js';
export type {
  SourceGroups,
  GeneralizationOptions,
  GeneralizationReport,
  ReadingReport,
} from './concepts/generalization.js';
export { saveReading, loadReading, readingMonitor } from './concepts/reading-file.js';
export type { ReadingArtifact } from './concepts/reading-file.js';

// Methods: steering ---------------------------------------------------------------------------
export { ControlVector } from './steering/control-vector.js';
export type { ModelShape, ControlVectorMetadata } from './steering/control-vector.js';
export { computeRefusalDirection, ablationHooks, additionHooks } from './steering/refusal-direction.js';
export type {
  RefusalDirectionOptions,
  RefusalDirectionResult,
  PromptSplit,
  DirectionCandidate,
  SelectionRules,
} from './steering/refusal-direction.js';
export { conditionalGenerate, monitorPrompts, verdictHooks } from './steering/conditional.js';
export type {
  PromptMonitor,
  PromptFlag,
  PromptVerdict,
  SteerSpec,
  ConditionalOptions,
  ConditionalResult,
} from './steering/conditional.js';

// Methods: training --------------------------------------------------------------------------
export { loraLoss, loraLossAndGradients } from './training/backward.js';
export type { TrainingSequence, LossAndGradients, TrainingOptions } from './training/backward.js';
export { createLora, zeroLoraLayers, LORA_TARGETS, checkLoraAdapter } from './training/lora.js';
export type { LoraAdapter, LoraLayers, LoraPair, LoraTarget, LoraOptions } from './training/lora.js';
export { loadPeftAdapter, savePeftAdapter, readPeftConfig } from './training/peft.js';
export type { PeftSaveOptions } from './training/peft.js';
export { loadGgufLora, saveGgufLora, ggufLoraTensorName } from './training/gguf-lora.js';
export { trainLora, scheduledLr } from './training/train.js';
export type {
  LoraTrainOptions,
  LoraTrainResult,
  StepReport,
  ValidationReport,
  TrainingLog,
} from './training/train.js';
export { readTrainingFile, chatSequence, trainingSequences } from './training/data.js';
export type { TrainingRecord, RecordSource } from './training/data.js';
export { AdamW } from './training/adamw.js';
export type { AdamWOptions } from './training/adamw.js';

// Methods: sparse autoencoders ----------------------------------------------------------------
export { Sae, topKIndices, SAE_ARCHITECTURES } from './sae/sae.js';
export type { SaeArchitecture, SaeConfig, SaeWeights, SparseCodes } from './sae/sae.js';
export { saeLoss } from './sae/loss.js';
export type { DenseProduct, SaeParams, SaeLossOptions, SaeLossResult } from './sae/loss.js';
export { trainSae, geometricMedian, SAE_CHECKPOINT_FILE } from './sae/train.js';
export type { SaeTrainOptions, SaeTrainProgress, SaeTrainResult } from './sae/train.js';
export { arraySource, chunkSource, storeSource, takeRows } from './sae/source.js';
export type { ActivationSource } from './sae/source.js';
export { saveSae, loadSae, saeLensConfig, SAE_CFG_FILE, SAE_WEIGHTS_FILE } from './sae/saelens.js';
export { reconstructionQuality, spliceHook, ceLossRecovered } from './sae/quality.js';
export type { SaeReconstructionQuality, CeRecovered } from './sae/quality.js';

// Evaluation ----------------------------------------------------------------------------------
export { evaluateRefusal, hookResponder } from './eval/refusal.js';
export type {
  EvalPrompt,
  Responder,
  ResponderOutput,
  RefusalEvalOptions,
  RefusalEvalResult,
  RefusalRow,
  RateSummary,
} from './eval/refusal.js';
export { gcgKeywordJudge, jbbKeywordJudge, llamaGuardJudge } from './eval/judges.js';
export type { Judge, Judgement, JudgeItem, JudgeRunOptions, LlamaGuardOptions } from './eval/judges.js';
export { modelJudge, MODEL_JUDGE_FORMATS } from './eval/model-judge.js';
export type { ModelJudgeFormat, ModelJudgeOptions } from './eval/model-judge.js';
export {
  judgeAgreement,
  activationJudgeAgreement,
  activationRefusalJudge,
  replyRefusalProjections,
  readLabels,
  matchLabels,
  replyHash,
  fitThreshold,
} from './eval/judge-agreement.js';
export type {
  JudgeAgreement,
  ActivationJudgeAgreement,
  ReplyLabel,
  LabelledReply,
  ThresholdRule,
} from './eval/judge-agreement.js';
export { measureTokenMonitor, summarizeTokenMonitor } from './eval/token-monitor.js';
export type {
  LabelledPrompt,
  TokenMonitorRow,
  TokenMonitorSummary,
  TokenMonitorResult,
  TokenMonitorOptions,
} from './eval/token-monitor.js';
export { measureLikelihoodShift, summarizeLikelihood } from './eval/likelihood.js';
export type { LikelihoodItem, LikelihoodRow, LikelihoodSummary } from './eval/likelihood.js';
export {
  attackerMessages,
  cumulativeByTurn,
  parseAttackerTurn,
  runMultiTurnAttack,
} from './eval/multi-turn.js';
export type {
  AttackGoal,
  Conversation,
  EndReason,
  MultiTurnOptions,
  MultiTurnResult,
  ParsedAttackerTurn,
  TargetSteering,
  TurnRate,
  TurnRecord,
} from './eval/multi-turn.js';
export {
  scoreContinuations,
  encodeRequest,
  evaluateMmlu,
  evaluateGsm8k,
  evaluateTruthfulQa,
  extractFinalNumber,
  mmluPrompt,
  gsm8kPrompt,
  truthfulQaPrompt,
  sampleItems,
  DEFAULT_LIMITS,
} from './eval/capability.js';
export type {
  TokenRequest,
  TextRequest,
  ScoreOptions,
  TaskOptions,
  Rate as BenchmarkRate,
  Mean as BenchmarkMean,
  MmluRow,
  MmluResult,
  Gsm8kRow,
  Gsm8kResult,
  TruthfulQaRow,
  TruthfulQaResult,
} from './eval/capability.js';
export {
  CAPABILITY_TASKS,
  BIAS_TASKS,
  BENCHMARK_PATHS,
  GSM8K_MAX_TOKENS,
  loadCapabilityData,
  runCapability,
  pairedDifference,
} from './eval/capability-suite.js';
export type {
  CapabilityTask,
  BiasTask,
  CapabilityData,
  CapabilityDataOptions,
  CapabilityRun,
  CapabilityRunOptions,
  Figure as BenchmarkFigure,
  PairedDifference,
} from './eval/capability-suite.js';
export { evaluateBbq, evaluateCrowsPairs, bbqScores, bbqPrompt, crowsSummary } from './eval/bias.js';
export type {
  BbqAnswer,
  BbqRow,
  BbqScores,
  BbqResult,
  BiasScore,
  CrowsRow,
  CrowsResult,
} from './eval/bias.js';
export { buildSteeringHooks } from './eval/steering.js';
export type { SteeringSpec, SteeringHooks } from './eval/steering.js';
export { languageFlaws } from './eval/flaws.js';
export type { FlawOptions, FlawReport, FlawReason, FlawMetrics, FlawThresholds } from './eval/flaws.js';
export { silentReporter } from './eval/reporter.js';
export type { Reporter, ProgressReporter } from './eval/reporter.js';

// Audit ---------------------------------------------------------------------------------------
export { runAudit, checkAuditInputs } from './audit/pipeline.js';
export type { AuditOptions, AuditOutcome } from './audit/pipeline.js';
export { STEP_NAMES, DEFAULT_STEPS } from './audit/types.js';
export { DEFAULT_AUDIT_SETTINGS, auditSettings } from './audit/settings.js';
export type {
  AuditSettings,
  StepName,
  AuditResults,
  ReadingResult,
  DirectionResult,
  BaselineResult,
  SteeringResult,
  SteeringCondition,
  AttackResult,
  AttackRun,
  CapabilityResult,
  CapabilityCondition,
  EvalGroup,
  Rate,
  SetRates,
  RunRecord,
} from './audit/types.js';
export type { AuditReport, StepStatus, Goal, MachineInfo } from './audit/report.js';
