/**
 * llama.cpp (through the optional `node-llama-cpp` package) as the reference for correctness and
 * speed: raw-token greedy decoding for the parity fixtures, and prompt-processing / generation
 * throughput for `steerguard bench`.
 *
 * `node-llama-cpp` is imported dynamically, so steerguard builds and runs without it; only the
 * functions here need it, and they throw a SteerguardError naming the package when it is absent.
 *
 * Only the prebuilt CPU binary shipped in the npm package is used: `getLlama` is called with
 * `gpu: false, build: 'never', skipDownload: true, usePrebuiltBinaries: true`, so nothing is ever
 * downloaded or compiled. If no prebuilt binary works on this machine, loading fails.
 *
 * Greedy decoding is pure argmax over the model's logits. node-llama-cpp's sampler chain is built
 * from the evaluate options; with the options in {@link GREEDY_EVALUATE_OPTIONS} (temperature 0,
 * no repeat / DRY penalty, no XTC, no token bias, no grammar) the chain holds only llama.cpp's
 * greedy sampler, whose choice is the highest logit (lowest id on a tie). EOG tokens are yielded
 * rather than ending generation, no BOS or template is added to the given ids, the sequence is
 * cleared before each call, and a request that would not fit the context is refused (no context
 * shift ever drops tokens).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { OptionError, SteerguardError } from '../formats/errors.js';

// ---------------------------------------------------------------------------------------------
// The parts of node-llama-cpp's API used here, typed structurally so that this file compiles
// when the optional package is not installed.

interface NlcEvaluateOptions {
  temperature: number;
  minP: number;
  topK: number;
  topP: number;
  seed: number;
  yieldEogToken: boolean;
}

type NlcControlledInput =
  number | [token: number, options: { generateNext: { token: true; probabilities: true } }];

interface NlcControlledOutput {
  next: { token?: number | null; probabilities?: Map<number, number> };
}

interface NlcSequence {
  readonly nextTokenIndex: number;
  readonly contextSize: number;
  evaluate(tokens: number[], options: NlcEvaluateOptions): AsyncGenerator<number, void, void | number>;
  controlledEvaluate(input: NlcControlledInput[]): Promise<Array<undefined | NlcControlledOutput>>;
  clearHistory(): Promise<void>;
  dispose(): Promise<void>;
}

interface NlcContext {
  readonly contextSize: number;
  readonly batchSize: number;
  readonly flashAttention: 'auto' | boolean;
  readonly kvCacheKeyType: number;
  readonly kvCacheValueType: number;
  readonly currentThreads: number;
  readonly idealThreads: number;
  getSequence(options: { checkpoints: { interval: false } }): NlcSequence;
  dispose(): Promise<void>;
}

interface NlcModel {
  readonly architecture: string;
  readonly trainContextSize: number;
  readonly size: number;
  readonly tokens: { readonly bos: number | null; readonly eos: number | null };
  readonly fileInfo: { readonly metadata: unknown };
  tokenize(text: string, specialTokens: boolean): number[];
  detokenize(tokens: readonly number[], specialTokens: boolean): string;
  isEogToken(token: number): boolean;
  iterateAllTokens(): Generator<number, void, unknown>;
  createContext(options: {
    contextSize: number;
    batchSize: number;
    threads: { ideal: number; min: number };
    flashAttention: boolean;
    sequences: number;
    experimentalKvCacheKeyType: string;
    experimentalKvCacheValueType: string;
    ignoreMemorySafetyChecks: boolean;
    lora?: { adapters: { filePath: string; scale: number }[] };
  }): Promise<NlcContext>;
  dispose(): Promise<void>;
}

interface NlcLlama {
  readonly buildType: string;
  readonly gpu: string | false;
  readonly llamaCppRelease: { readonly repo: string; readonly release: string };
  readonly systemInfo: string;
  readonly cpuMathCores: number;
  readonly maxThreads: number;
  loadModel(options: { modelPath: string; gpuLayers: number; useMmap: boolean }): Promise<NlcModel>;
  dispose(): Promise<void>;
}

interface NlcModule {
  getLlama(options: {
    gpu: false;
    build: 'never';
    skipDownload: boolean;
    usePrebuiltBinaries: boolean;
    progressLogs: boolean;
    logLevel: string;
    maxThreads: number;
  }): Promise<NlcLlama>;
}

// ---------------------------------------------------------------------------------------------
// Public types

/** Options of {@link loadLlamaCpp}. */
export interface LlamaCppLoadOptions {
  /** Threads for evaluation (both the llama instance cap and the context's fixed count). Default 2. */
  threads?: number;
  /** Context size in tokens (llama.cpp may round it up). Default 1024. */
  contextSize?: number;
  /** Largest number of tokens decoded in one llama_decode call. Default 512. */
  batchSize?: number;
  /** Use llama.cpp's flash-attention kernels. Default false (the classic attention path). */
  flashAttention?: boolean;
  /** Element type of the KV cache. Default 'F16' (llama.cpp's default). */
  kvCacheType?: 'F16' | 'F32';
  /** GGUF LoRA adapter files applied at scale 1 (as `llama-cli --lora FILE`). Default none. */
  lora?: readonly string[];
  /** llama.cpp log level passed to node-llama-cpp. Default 'error'. */
  logLevel?: 'disabled' | 'fatal' | 'error' | 'warn' | 'info' | 'debug';
}

/** What the loaded llama.cpp build and context are, for the bench output and the fixtures. */
export interface LlamaCppInfo {
  /** Version of the node-llama-cpp npm package. */
  nodeLlamaCppVersion: string;
  /** llama.cpp repository and release the binary was built from. */
  llamaCppRepo: string;
  llamaCppRelease: string;
  /** 'prebuilt' (from npm) or 'localBuild'. */
  buildType: string;
  /** Always false: the CPU backend only. */
  gpu: false;
  /** llama.cpp's system info line, e.g. "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ...". */
  systemInfo: string;
  /** CPU features that llama.cpp reports as enabled, parsed from `systemInfo`. */
  cpuFeatures: string[];
  /** Cores node-llama-cpp considers useful for math on this machine. */
  cpuMathCores: number;
  /** Threads the context evaluates with. */
  threads: number;
  contextSize: number;
  batchSize: number;
  flashAttention: boolean;
  kvCacheType: string;
  modelPath: string;
  architecture: string;
  /** Size of the model weights in bytes. */
  modelSizeBytes: number;
  vocabSize: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  /** The Jinja chat template in the GGUF metadata, if any. */
  chatTemplate: string | null;
}

/** Options of {@link LlamaCppHandle.bench}. */
export interface LlamaCppBenchOptions {
  /** Prompts to process, as raw token ids (nothing is added to them). */
  promptTokens: number[][];
  /** Tokens generated greedily, one decode at a time, after each prompt. */
  genTokens: number;
  /** Run one untimed prompt + a few generated tokens first. Default true. */
  warmup?: boolean;
}

/** Timings of one prompt of a bench run. */
export interface LlamaCppBenchPrompt {
  promptTokens: number;
  promptSeconds: number;
  generatedTokens: number;
  generationSeconds: number;
}

/** Result of {@link LlamaCppHandle.bench}. Rates are total tokens over total seconds. */
export interface LlamaCppBenchResult {
  promptTokens: number;
  promptSeconds: number;
  promptTokensPerSecond: number;
  generatedTokens: number;
  generationSeconds: number;
  generationTokensPerSecond: number;
  perPrompt: LlamaCppBenchPrompt[];
  /** Largest resident set size of this process so far, in bytes. */
  peakRssBytes: number;
  info: LlamaCppInfo;
}

/** Result of {@link LlamaCppHandle.greedyWithMargins}. */
export interface LlamaCppGreedySteps {
  ids: number[];
  /**
   * Chosen logit minus the second-highest logit, per step (>= 0; capped at 80, beyond which the
   * runner-up's float32 probability underflows).
   */
  margins: number[];
}

/** A model loaded in llama.cpp with one context of one sequence. */
export interface LlamaCppHandle {
  readonly info: LlamaCppInfo;
  /** Token ids of `text`. Never adds BOS/EOS; `special` parses special-token text such as `<|im_start|>`. */
  tokenize(text: string, options: { special: boolean }): number[];
  /** Text of `ids`; special tokens are rendered as their text unless `special` is false. */
  detokenize(ids: readonly number[], options?: { special?: boolean }): string;
  /** The next `maxTokens` argmax tokens after exactly `promptTokenIds` (EOG tokens included). */
  greedy(promptTokenIds: number[], maxTokens: number): Promise<number[]>;
  /**
   * The same decoding as {@link greedy}, step by step with the full next-token distribution: each
   * chosen token is checked to be the most probable, and its logit gap to the runner-up is
   * returned (a small gap marks a near-tie, where another implementation may legitimately pick
   * differently). Much slower than greedy.
   */
  greedyWithMargins(promptTokenIds: number[], maxTokens: number): Promise<LlamaCppGreedySteps>;
  /** Prompt-processing and generation throughput, measured separately. */
  bench(options: LlamaCppBenchOptions): Promise<LlamaCppBenchResult>;
  dispose(): Promise<void>;
}

/**
 * The evaluate options that make node-llama-cpp decode by pure argmax. Temperature 0 makes the
 * sampler chain [greedy] (top-k / top-p / min-p / seed are then not in the chain; they are set to
 * neutral values anyway); repeatPenalty, dryRepeatPenalty, xtc, tokenBias and
 * grammarEvaluationState are left out, which leaves those samplers out of the chain; EOG tokens are
 * yielded instead of stopping.
 */
export const GREEDY_EVALUATE_OPTIONS: Readonly<NlcEvaluateOptions> = Object.freeze({
  temperature: 0,
  minP: 0,
  topK: 0,
  topP: 1,
  seed: 0,
  yieldEogToken: true,
});

/** The `getLlama` options used: the prebuilt CPU binary from npm, never a download or a build. */
export const GET_LLAMA_OPTIONS = Object.freeze({
  gpu: false,
  build: 'never',
  skipDownload: true,
  usePrebuiltBinaries: true,
  progressLogs: false,
} as const);

// ---------------------------------------------------------------------------------------------

const PACKAGE = 'node-llama-cpp';

async function importNodeLlamaCpp(): Promise<{ module: NlcModule; version: string }> {
  let mod: unknown;
  try {
    // A non-literal specifier keeps TypeScript from requiring the optional package at build time.
    const specifier: string = PACKAGE;
    mod = await import(specifier);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new SteerguardError(
        `${PACKAGE} is not installed: the llama.cpp reference (bench comparison, parity fixtures) needs the ` +
          `optional dependency ${PACKAGE} (the version pinned in steerguard's package.json, optionalDependencies); ` +
          'the rest of steerguard works without it',
      );
    }
    throw new SteerguardError(`${PACKAGE} could not be loaded: ${(err as Error).message}`);
  }
  if (typeof (mod as Partial<NlcModule>).getLlama !== 'function') {
    throw new SteerguardError(`${PACKAGE} was found but exports no getLlama function (unsupported version?)`);
  }
  return { module: mod as NlcModule, version: packageVersion() };
}

/**
 * Whether the optional node-llama-cpp package can be imported (its binary is not loaded). For
 * callers that skip the llama.cpp reference when it is absent instead of failing.
 */
export async function llamaCppAvailable(): Promise<boolean> {
  try {
    await importNodeLlamaCpp();
    return true;
  } catch {
    return false;
  }
}

/** Version from node-llama-cpp's package.json (its `exports` map hides the file from import). */
function packageVersion(): string {
  try {
    let dir = dirname(fileURLToPath(import.meta.resolve(PACKAGE)));
    for (let i = 0; i < 6; i++) {
      try {
        const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
          name?: string;
          version?: string;
        };
        if (pkg.name === PACKAGE && typeof pkg.version === 'string') return pkg.version;
      } catch {
        // no package.json at this level
      }
      dir = dirname(dir);
    }
  } catch {
    // resolution failed; fall through
  }
  return 'unknown';
}

function checkPositiveInt(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0)
    throw new OptionError(`${name} must be a positive integer, got ${value}`);
}

function checkTokenIds(name: string, ids: readonly number[], vocabSize: number): void {
  if (ids.length === 0) throw new OptionError(`${name} is empty`);
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
      throw new OptionError(`${name} holds an invalid token id ${String(id)} (vocabulary size ${vocabSize})`);
  }
}

function chatTemplateOf(metadata: unknown): string | null {
  const tokenizer = (metadata as { tokenizer?: { chat_template?: unknown } } | null)?.tokenizer;
  return typeof tokenizer?.chat_template === 'string' ? tokenizer.chat_template : null;
}

function countTokens(model: NlcModel): number {
  let n = 0;
  const it = model.iterateAllTokens();
  while (!it.next().done) n++;
  return n;
}

const MAX_MARGIN = 80;

const GGML_TYPE_NAMES: Record<number, string> = { 0: 'F32', 1: 'F16', 30: 'BF16' };

/**
 * Load a GGUF model with the prebuilt CPU llama.cpp and create one context with one sequence.
 * Throws a SteerguardError when node-llama-cpp is missing or its binary cannot be used.
 */
export async function loadLlamaCpp(
  ggufPath: string,
  options: LlamaCppLoadOptions = {},
): Promise<LlamaCppHandle> {
  const threads = options.threads ?? 2;
  const contextSize = options.contextSize ?? 1024;
  const batchSize = options.batchSize ?? 512;
  checkPositiveInt('threads', threads);
  checkPositiveInt('contextSize', contextSize);
  checkPositiveInt('batchSize', batchSize);
  const kvCacheType = options.kvCacheType ?? 'F16';
  const flashAttention = options.flashAttention ?? false;

  const { module, version } = await importNodeLlamaCpp();
  let llama: NlcLlama;
  try {
    llama = await module.getLlama({
      ...GET_LLAMA_OPTIONS,
      logLevel: options.logLevel ?? 'error',
      maxThreads: threads,
    });
  } catch (err) {
    throw new SteerguardError(
      `${PACKAGE}: no usable prebuilt CPU llama.cpp binary (steerguard never downloads or builds one): ${(err as Error).message}`,
    );
  }
  let model: NlcModel | undefined;
  let context: NlcContext | undefined;
  let sequence: NlcSequence;
  try {
    model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0, useMmap: true });
    context = await model.createContext({
      contextSize,
      batchSize,
      threads: { ideal: threads, min: threads },
      flashAttention,
      sequences: 1,
      experimentalKvCacheKeyType: kvCacheType,
      experimentalKvCacheValueType: kvCacheType,
      ignoreMemorySafetyChecks: true,
      ...(options.lora?.length
        ? { lora: { adapters: options.lora.map((filePath) => ({ filePath, scale: 1 })) } }
        : {}),
    });
    // No interval checkpoints (taken for SWA models): they cost time and change nothing here.
    sequence = context.getSequence({ checkpoints: { interval: false } });
  } catch (err) {
    await context?.dispose().catch(() => undefined);
    await model?.dispose().catch(() => undefined);
    await llama.dispose().catch(() => undefined);
    throw new SteerguardError(`${ggufPath}: llama.cpp could not load the model: ${(err as Error).message}`);
  }
  const ctx = context;
  const mdl = model;

  const systemInfo = llama.systemInfo.trim();
  const info: LlamaCppInfo = {
    nodeLlamaCppVersion: version,
    llamaCppRepo: llama.llamaCppRelease.repo,
    llamaCppRelease: llama.llamaCppRelease.release,
    buildType: llama.buildType,
    gpu: false,
    systemInfo,
    cpuFeatures: [...systemInfo.matchAll(/([A-Z0-9_]+) = 1/g)].map((m) => m[1]),
    cpuMathCores: llama.cpuMathCores,
    threads: ctx.idealThreads,
    contextSize: ctx.contextSize,
    batchSize: ctx.batchSize,
    flashAttention: ctx.flashAttention === true,
    kvCacheType: GGML_TYPE_NAMES[ctx.kvCacheKeyType] ?? `ggml type ${ctx.kvCacheKeyType}`,
    modelPath: ggufPath,
    architecture: mdl.architecture,
    modelSizeBytes: mdl.size,
    vocabSize: countTokens(mdl),
    bosTokenId: mdl.tokens.bos,
    eosTokenId: mdl.tokens.eos,
    chatTemplate: chatTemplateOf(mdl.fileInfo.metadata),
  };

  let disposed = false;
  let busy = false;
  const ensureUsable = (): void => {
    if (disposed) throw new SteerguardError('llama.cpp handle is disposed');
    if (busy)
      throw new SteerguardError('llama.cpp handle is busy: await the previous greedy/bench call first');
  };
  const checkFits = (promptLength: number, maxTokens: number): void => {
    // The last generated token is never decoded, so prompt + maxTokens - 1 cells are used.
    if (promptLength + maxTokens - 1 > ctx.contextSize) {
      throw new OptionError(
        `prompt (${promptLength} tokens) + ${maxTokens} generated tokens exceed the llama.cpp context size ` +
          `${ctx.contextSize}; load with a larger contextSize`,
      );
    }
  };

  /**
   * Clear the sequence, evaluate the prompt in one go, then generate `maxTokens` tokens one decode
   * at a time; `onStep(i, token)` is called after token i (0 = the one predicted by the prompt).
   */
  const run = async (
    prompt: number[],
    maxTokens: number,
    onStep: (i: number, token: number) => void,
    onStart?: () => void,
  ): Promise<void> => {
    busy = true;
    try {
      await sequence.clearHistory();
      onStart?.();
      let i = 0;
      for await (const token of sequence.evaluate(prompt.slice(), { ...GREEDY_EVALUATE_OPTIONS })) {
        onStep(i, token);
        if (++i >= maxTokens) break;
      }
      if (i < maxTokens) throw new SteerguardError(`llama.cpp stopped after ${i} of ${maxTokens} tokens`);
    } finally {
      busy = false;
    }
  };

  const handle: LlamaCppHandle = {
    info,

    tokenize(text, { special }) {
      ensureUsable();
      return Array.from(mdl.tokenize(text, special), Number);
    },

    detokenize(ids, opts = {}) {
      ensureUsable();
      return mdl.detokenize(ids, opts.special ?? true);
    },

    async greedy(promptTokenIds, maxTokens) {
      ensureUsable();
      checkTokenIds('promptTokenIds', promptTokenIds, info.vocabSize);
      checkPositiveInt('maxTokens', maxTokens);
      checkFits(promptTokenIds.length, maxTokens);
      const out: number[] = [];
      await run(promptTokenIds, maxTokens, (_i, token) => out.push(token));
      return out;
    },

    async greedyWithMargins(promptTokenIds, maxTokens) {
      ensureUsable();
      checkTokenIds('promptTokenIds', promptTokenIds, info.vocabSize);
      checkPositiveInt('maxTokens', maxTokens);
      checkFits(promptTokenIds.length, maxTokens);
      const result: LlamaCppGreedySteps = { ids: [], margins: [] };
      const next = (token: number): NlcControlledInput => [
        token,
        { generateNext: { token: true, probabilities: true } },
      ];
      busy = true;
      try {
        await sequence.clearHistory();
        let input: NlcControlledInput[] = [
          ...promptTokenIds.slice(0, -1),
          next(promptTokenIds.at(-1) as number),
        ];
        while (result.ids.length < maxTokens) {
          const out = (await sequence.controlledEvaluate(input)).at(-1)?.next;
          const token = out?.token;
          // The softmax of the raw logits (the greedy chain leaves them as they are); the logit
          // gap of the two best tokens is the log of their probability ratio.
          let best = -1;
          let p1 = -1;
          let p2 = 0;
          for (const [t, p] of out?.probabilities ?? []) {
            if (p > p1 || (p === p1 && t < best)) {
              p2 = Math.max(p2, p1);
              p1 = p;
              best = t;
            } else if (p > p2) p2 = p;
          }
          if (token == null || best !== token) {
            throw new SteerguardError(
              `llama.cpp step ${result.ids.length}: sampled token ${String(token)} is not the most probable ${best}`,
            );
          }
          result.ids.push(token);
          result.margins.push(p2 > 0 ? Math.min(MAX_MARGIN, Math.log(p1) - Math.log(p2)) : MAX_MARGIN);
          input = [next(token)];
        }
      } finally {
        busy = false;
      }
      return result;
    },

    async bench({ promptTokens, genTokens, warmup = true }) {
      ensureUsable();
      if (promptTokens.length === 0) throw new OptionError('bench needs at least one prompt');
      checkPositiveInt('genTokens', genTokens);
      promptTokens.forEach((p, i) => {
        checkTokenIds(`promptTokens[${i}]`, p, info.vocabSize);
        if (p.length > ctx.batchSize) {
          throw new OptionError(
            `promptTokens[${i}] has ${p.length} tokens, more than the batch size ${ctx.batchSize}: it would not be ` +
              `processed in one batch; load with a larger batchSize`,
          );
        }
        // genTokens decodes after the prompt, so genTokens + 1 tokens are sampled.
        checkFits(p.length, genTokens + 1);
      });

      if (warmup) {
        const w = promptTokens[0];
        await run(w.slice(0, Math.min(w.length, 16)), Math.min(4, genTokens + 1), () => undefined);
      }

      const perPrompt: LlamaCppBenchPrompt[] = [];
      for (const prompt of promptTokens) {
        // Each step's time runs from the previous step's end: step 0 is the prompt decode (and the
        // sampling of its next token), steps 1..genTokens are single-token decodes.
        let start = 0;
        let promptSeconds = 0;
        let generationSeconds = 0;
        await run(
          prompt,
          genTokens + 1,
          (i) => {
            const now = performance.now();
            if (i === 0) promptSeconds = (now - start) / 1000;
            else generationSeconds += (now - start) / 1000;
            start = performance.now();
          },
          () => {
            start = performance.now();
          },
        );
        perPrompt.push({
          promptTokens: prompt.length,
          promptSeconds,
          generatedTokens: genTokens,
          generationSeconds,
        });
      }

      const sum = (f: (p: LlamaCppBenchPrompt) => number): number => perPrompt.reduce((s, p) => s + f(p), 0);
      const pTok = sum((p) => p.promptTokens);
      const pSec = sum((p) => p.promptSeconds);
      const gTok = sum((p) => p.generatedTokens);
      const gSec = sum((p) => p.generationSeconds);
      return {
        promptTokens: pTok,
        promptSeconds: pSec,
        promptTokensPerSecond: pTok / pSec,
        generatedTokens: gTok,
        generationSeconds: gSec,
        generationTokensPerSecond: gTok / gSec,
        perPrompt,
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
        info,
      };
    },

    async dispose() {
      if (disposed) return;
      disposed = true;
      await sequence.dispose().catch(() => undefined);
      await ctx.dispose();
      await mdl.dispose();
      await llama.dispose();
    },
  };
  return handle;
}
