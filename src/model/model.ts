/**
 * `Model`: a loaded checkpoint you can run, read and steer.
 *
 *   const model = await Model.load('path/to/model.gguf');
 *   const { cache } = model.run([{ messages: [{ role: 'user', content: 'Hi' }] }],
 *     { cache: { names: ['blocks.10.hook_resid_post'], positions: 'last' } });
 *   const [out] = await model.generate(['Once upon a time'], { maxNewTokens: 32,
 *     hooks: [addVector('blocks.10.hook_resid_post', v, { scale: 4 })] });
 *
 * Hooks passed to a call apply to that call only. `addHook` attaches one to the model until its
 * handle's `remove()`; such hooks run before the per-call ones.
 *
 * LoRA adapters (`addAdapter`) apply unmerged to every later call while enabled, several at once:
 *
 *   const lora = model.addAdapter(loadPeftAdapter('adapter/', model.config));
 *   lora.disable(); // the base model again
 *   lora.enable();
 *   lora.remove();
 *
 * Prompts that begin alike (the answer options of one question, questions after one few-shot
 * primer) can run their shared beginning once: `prefill` keeps its keys and values, and `run`
 * with `prefix` runs only what follows it.
 *
 *   const primer = model.prefill(fewShotText);
 *   const question = model.prefill({ tokens: questionIds }, { prefix: primer });
 *   const { logits } = model.run(options.map((o) => ({ tokens: o })), { prefix: question, logits: 'all' });
 */
import type { Backend } from '../engine/backend.js';
import { loadBackend } from '../engine/select.js';
import { OptionError } from '../formats/errors.js';
import type { ChatMessage } from '../formats/tokenizer.js';
import {
  BLOCK_HOOKS,
  type Hook,
  type HookName,
  type Positions,
  allHookNames,
  rowSelected,
} from '../hooks/hooks.js';
import type { ModelConfig } from './config.js';
import { type LoraAdapter, checkLoraAdapter } from './lora.js';
import { type LoadOptions, type LoadedModel, type ModelIdentity, loadModelFiles } from './load.js';
import { type SamplingOptions, checkSampling, sampleToken, seededRandom } from './sampling.js';
import { KvCache, type SequenceStep, forward } from './transformer.js';
import type { ModelWeights } from './weights.js';

/**
 * A prompt: raw text (tokenized with the model's BOS handling), a chat (rendered with the model's
 * own chat template, generation prompt appended) or token ids used as they are.
 */
export type Prompt =
  string | { readonly messages: readonly ChatMessage[] } | { readonly tokens: readonly number[] };

/** Which activations `run` keeps. */
export interface CacheRequest {
  /** Hook names, or a predicate over names. */
  readonly names: readonly HookName[] | ((name: HookName) => boolean);
  /** Rows to keep per prompt (default 'last': the last prompt token). */
  readonly positions?: Positions;
}

/**
 * The beginning of a prompt run once by `Model.prefill`: its keys and values, kept so that prompts
 * continuing it run only their own tokens (`RunOptions.prefix`). Opaque: only the model instance
 * that made it can continue it. It holds [prefix tokens × layers × 2 × kv width] floats.
 */
export interface PromptPrefix {
  /** Its token ids from the start of the prompt (a nested prefix's begin with its parent's). */
  readonly tokens: readonly number[];
}

export interface PrefillOptions {
  /**
   * Hooks on the prefix's rows, after the model's permanent ones. A prefix is valid only for the
   * hooks it was computed with: every `run` continuing it, and every prefix nested on it, must
   * pass the same hooks (the model's permanent ones + `hooks` + the prompt's `promptHooks`, as a
   * set of Hook objects), or it throws. The prefix's rows are prompt rows with the prompt seen as
   * one token longer than the prefix, so a hook on 'last' or 'generated' positions never fires on
   * them (and `ctx.seq` is 0 there); positions counted back from the prompt's end (negative
   * indices) cannot be known yet, so such hooks must not select rows inside a prefix.
   */
  readonly hooks?: readonly Hook[];
  /** A prefix this one continues: `prompt` is then read as a continuation (see `RunOptions.prefix`). */
  readonly prefix?: PromptPrefix;
}

/** What `Model.prefill` returns; not exported, so that a prefix cannot be forged. */
class ComputedPrefix implements PromptPrefix {
  constructor(
    readonly model: Model,
    readonly tokens: readonly number[],
    readonly cache: KvCache,
    readonly hooks: ReadonlySet<Hook>,
    readonly adapters: readonly LoraAdapter<Float32Array>[],
  ) {}
}

export interface RunOptions {
  readonly hooks?: readonly Hook[];
  /**
   * A prefix (`Model.prefill`) each prompt continues, the same for all or chosen per prompt
   * index (undefined: none). A prompt with a prefix is its continuation: token ids as they are,
   * or text tokenized without special tokens (no BOS in mid-sequence; text is cut into tokens on
   * its own, which may differ from tokenizing prefix + text at once); a chat is an error. Its
   * positions continue from the prefix's length, and everything it reports is absolute: hook
   * contexts' `pos`, `promptLength` (which counts from the start of the prefix and must exceed
   * the prefix's length), `cachedPositions`. The result holds only the continuation: `tokens`,
   * `logits` and the cached activations are those of its rows, never of the prefix's. The call
   * must pass the hooks the prefix was computed with (`PrefillOptions.hooks`), and prefix +
   * continuation must fit the model's context. Each prompt runs on its own copy of the prefix's
   * KV cache (made when its forward call starts), so a prefix can be continued any number of times.
   */
  readonly prefix?: PromptPrefix | ((index: number) => PromptPrefix | undefined);
  /**
   * Hooks for prompt `index` alone (e.g. steering chosen per prompt by a monitor): they see only
   * that prompt's rows, after the model's permanent hooks and `hooks`, before the cache readers.
   */
  readonly promptHooks?: (index: number) => readonly Hook[];
  /**
   * How many tokens of prompt `index` are its prompt (default: all). Rows past it count as
   * generated for hook and cache positions ('last' is the last prompt token, 'generated' the rest),
   * so a reply scored teacher-forced is steered where generation would steer it.
   */
  readonly promptLength?: (index: number) => number;
  readonly cache?: CacheRequest;
  /**
   * Logits to return per prompt: the last token's [V] (default), all tokens' [T, V], none, or
   * the last `lastTokens` tokens' [min(lastTokens, T), V] (scoring a continuation needs only those).
   */
  readonly logits?: 'last' | 'all' | 'none' | { readonly lastTokens: number };
  /** Upper bound on tokens packed into one forward call (default 1024). */
  readonly maxBatchTokens?: number;
}

export interface RunResult {
  /** Token ids of each prompt (of a prompt with a prefix: its continuation's). */
  readonly tokens: number[][];
  /** Per prompt: [V] or [T, V] logits, as requested. */
  readonly logits: Float32Array[];
  /** Per hook name, per prompt: [P, W] activations at the kept positions. */
  readonly cache: Map<HookName, Float32Array[]>;
  /** Per prompt: the positions kept in `cache` (same order as its rows). */
  readonly cachedPositions: Int32Array[];
}

export interface GenerateOptions extends SamplingOptions {
  /**
   * Default 128. Each prompt's tokens plus `maxNewTokens` must fit the model's context
   * (`config.maxContext`); otherwise `generate` throws before any compute.
   */
  readonly maxNewTokens?: number;
  /**
   * Stop when the text contains one of these (the stop string is cut off). `onText` holds back
   * text that could be the start of a stop string, so it never emits text that is later cut.
   */
  readonly stop?: readonly string[];
  /** Stop at these token ids (default: the tokenizer's end-of-sequence and end-of-turn tokens). */
  readonly stopTokens?: readonly number[];
  /** Hooks on every sequence, fired after each prompt's own (`promptHooks`). */
  readonly hooks?: readonly Hook[];
  /**
   * A prefix (`Model.prefill`) each prompt continues, as in `RunOptions.prefix`: the prompt is its
   * continuation, positions are absolute, prefix + prompt + `maxNewTokens` must fit the context,
   * the call must pass the hooks the prefix was computed with, and `promptTokens` are the
   * continuation's. The prefix's tokens count in the history that `repetitionPenalty` reads. The
   * reply is the one generated from the whole prompt up to the rounding of the prompt pass (its
   * rows are multiplied in another batch), so greedy tokens can differ only at near-ties.
   */
  readonly prefix?: PromptPrefix | ((index: number) => PromptPrefix | undefined);
  /**
   * Hooks for prompt `index` alone (e.g. steering chosen per prompt by a monitor): they see only
   * that sequence's rows, after the model's permanent hooks and before `hooks`.
   */
  readonly promptHooks?: (index: number) => readonly Hook[];
  /**
   * Sequences decoded together (default 16). With more prompts, each one that finishes makes room
   * for the next (continuous batching); the tokens do not depend on it (greedy or seeded).
   */
  readonly maxBatch?: number;
  /** Called with each piece of text as it is decoded, per prompt index. */
  readonly onText?: (index: number, text: string) => void;
  /** Called with each generated token id as it is chosen (`position` counts from 0 per prompt). */
  readonly onToken?: (index: number, token: number, position: number) => void;
  /**
   * Checked before each step: once aborted, `generate` resolves (it does not throw) with the
   * tokens chosen so far and `finishReason: 'aborted'`; text still held back is not emitted.
   */
  readonly signal?: AbortSignal;
}

export interface Generation {
  readonly promptTokens: number[];
  /** Generated ids, the stop token excluded. */
  readonly tokens: number[];
  readonly text: string;
  readonly finishReason: 'stop' | 'length' | 'aborted';
}

/** One sequence of a `Decoder`: `GenerateOptions` for a single prompt. */
export interface SequenceOptions extends SamplingOptions {
  /** Default 128; prompt + maxNewTokens must fit the model's context (`add` throws otherwise). */
  readonly maxNewTokens?: number;
  /** As in `GenerateOptions.stop`. */
  readonly stop?: readonly string[];
  /** As in `GenerateOptions.stopTokens`. */
  readonly stopTokens?: readonly number[];
  /** A prefix this prompt continues, as in `GenerateOptions.prefix`. */
  readonly prefix?: PromptPrefix;
  /** This sequence's own hooks (see `GenerateOptions.promptHooks`). */
  readonly hooks?: readonly Hook[];
  /** Each piece of text as it is decoded (held back as in `GenerateOptions.stop`). */
  readonly onText?: (text: string) => void;
  /** Each generated token id as it is chosen (`position` counts from 0). */
  readonly onToken?: (token: number, position: number) => void;
  /** Checked before each step: once aborted, the sequence ends with `finishReason: 'aborted'`. */
  readonly signal?: AbortSignal;
}

export interface DecoderOptions {
  /** Sequences decoded together (default 16); more wait for a free place. */
  readonly maxBatch?: number;
  /** Hooks on every sequence, fired after each sequence's own. */
  readonly hooks?: readonly Hook[];
}

/** A decoding batch that sequences join and leave between steps (see `Model.decoder`). */
export interface Decoder {
  /**
   * Queues `prompt`; throws (an OptionError) at once for bad options or a prompt that does not
   * fit the context. The promise resolves when the sequence finishes, and rejects when a forward
   * pass it was part of throws (the other sequences go on).
   */
  add(prompt: Prompt, opts?: SequenceOptions): Promise<Generation>;
  /** Ends aborted sequences, admits waiting ones into free places, decodes one token for the rest. */
  step(): void;
  /** Sequences queued, not yet in the batch. */
  readonly waiting: number;
  /** Sequences in the batch. */
  readonly active: number;
  /** Nothing waiting or decoding. */
  readonly idle: boolean;
}

/** Handle returned by `addHook`. */
export interface HookHandle {
  remove(): void;
}

/** Handle returned by `addAdapter`. */
export interface AdapterHandle {
  readonly adapter: LoraAdapter<Float32Array>;
  /** Whether later calls apply the adapter (true once added, false after `disable` or `remove`). */
  readonly enabled: boolean;
  /** Applies it again; an error after `remove`. */
  enable(): void;
  disable(): void;
  /** Detaches it for good. */
  remove(): void;
}

export class Model {
  private readonly permanentHooks: Hook[] = [];
  /** Attached adapters in the order added; the enabled ones apply, in that order. */
  private readonly adapterSlots: { readonly adapter: LoraAdapter<Float32Array>; enabled: boolean }[] = [];
  private knownHookNames: Set<string> | undefined;

  constructor(
    private readonly loaded: LoadedModel,
    readonly backend: Backend,
  ) {}

  /**
   * Loads a checkpoint: a .gguf file, a Hugging Face directory, or a repo id in the local hub cache.
   * `weights` (see WeightStorage): 'quantized', the default when the backend has quantized kernels,
   * keeps a GGUF file's blocks in memory; prompt passes (and so cached activations) stay exact
   * against the dequantized weights and generation steps use int8 dot products like llama.cpp.
   * 'f32' dequantizes everything at load: exact fp32 everywhere, 4 bytes per weight.
   * Without `backend`, loadBackend() picks one: the native engine, else (with a notice) the reference.
   */
  static async load(
    nameOrPath: string,
    opts: LoadOptions & { threads?: number; backend?: Backend } = {},
  ): Promise<Model> {
    const backend = opts.backend ?? loadBackend({ threads: opts.threads });
    const weights = opts.weights ?? (backend.matmulQuant ? 'quantized' : 'f32');
    if (weights === 'quantized' && !backend.matmulQuant)
      throw new OptionError(`weights 'quantized': the ${backend.name} backend has no quantized kernels`);
    const loaded = loadModelFiles(nameOrPath, { ...opts, weights });
    return new Model(loaded, backend);
  }

  get config(): ModelConfig {
    return this.loaded.config;
  }
  get identity(): ModelIdentity {
    return this.loaded.identity;
  }
  get weights(): ModelWeights {
    return this.loaded.weights;
  }
  /** The tokenizer; throws if the checkpoint has none (token-id prompts still work). */
  get tokenizer() {
    const t = this.loaded.tokenizer;
    if (!t)
      throw new OptionError(`${this.identity.path}: no tokenizer found with this model; pass token ids`);
    return t;
  }

  /** Every hook point of this model, in firing order. */
  hookNames(): HookName[] {
    return allHookNames(this.config.nLayers);
  }

  /**
   * Throws an OptionError unless `name` is a hook point of this model: a block index past the
   * last block would otherwise never fire, silently doing nothing.
   */
  checkHookName(name: string): asserts name is HookName {
    if (this.hookNameSet.has(name)) return;
    const L = this.config.nLayers;
    throw new OptionError(
      `unknown hook ${JSON.stringify(name)}: this model has ${L} blocks, so hook names are ` +
        `hook_embed, blocks.L.{${BLOCK_HOOKS.join(',')}} for L in 0..${L - 1}, hook_final_norm and logits`,
    );
  }

  private get hookNameSet(): ReadonlySet<string> {
    this.knownHookNames ??= new Set(this.hookNames());
    return this.knownHookNames;
  }

  /** Attaches a hook to every later call until the handle's remove(). */
  addHook(hook: Hook): HookHandle {
    this.checkHookName(hook.name);
    this.permanentHooks.push(hook);
    return {
      remove: () => {
        const i = this.permanentHooks.indexOf(hook);
        if (i >= 0) this.permanentHooks.splice(i, 1);
      },
    };
  }

  /**
   * Attaches a LoRA adapter, enabled: every later call adds (alpha/r)·B·(A·x) to each adapted
   * projection's output, without merging it into the weights. An adapter that does not fit this
   * model (layers, shapes, rank, alpha, targets) is an error. A call in progress keeps the
   * adapters it started with.
   */
  addAdapter(adapter: LoraAdapter<Float32Array>): AdapterHandle {
    checkLoraAdapter(this.config, adapter);
    for (const layer of adapter.layers)
      for (const t of adapter.targets)
        for (const m of [layer[t]!.a, layer[t]!.b])
          if (!(m instanceof Float32Array))
            throw new OptionError('an adapter applied at inference must hold Float32Array tensors');
    const slot = { adapter, enabled: true };
    this.adapterSlots.push(slot);
    let removed = false;
    return {
      adapter,
      get enabled() {
        return slot.enabled;
      },
      enable: () => {
        if (removed) throw new OptionError('enable: this adapter was removed from the model');
        slot.enabled = true;
      },
      disable: () => {
        slot.enabled = false;
      },
      remove: () => {
        removed = true;
        slot.enabled = false;
        const i = this.adapterSlots.indexOf(slot);
        if (i >= 0) this.adapterSlots.splice(i, 1);
      },
    };
  }

  /** The adapters a call starting now applies. */
  private activeAdapters(): LoraAdapter<Float32Array>[] {
    return this.adapterSlots.filter((s) => s.enabled).map((s) => s.adapter);
  }

  /** Throws unless `adapters` are the ones `prefix` was computed with. */
  private checkPrefixAdapters(
    prefix: ComputedPrefix,
    adapters: readonly LoraAdapter<Float32Array>[],
    what: string,
  ): void {
    if (adapters.length === prefix.adapters.length && adapters.every((a, i) => a === prefix.adapters[i]))
      return;
    throw new OptionError(
      `${what}: its prefix was computed with other LoRA adapters enabled (${prefix.adapters.length} ` +
        `there, ${adapters.length} now): a prefix's keys and values hold them; enable the same ones`,
    );
  }

  /** Token ids of a prompt. */
  tokenize(prompt: Prompt): number[] {
    if (typeof prompt === 'string') return this.tokenizer.encode(prompt, { addSpecialTokens: true });
    if ('tokens' in prompt) return [...prompt.tokens];
    const text = this.tokenizer.applyChatTemplate(prompt.messages, { addGenerationPrompt: true });
    return this.tokenizer.encode(text, { addSpecialTokens: false });
  }

  /** Token ids of a prompt that continues a prefix (`what` names it in errors). */
  private continuationTokens(prompt: Prompt, what: string): number[] {
    if (typeof prompt === 'string') return this.tokenizer.encode(prompt, { addSpecialTokens: false });
    if ('tokens' in prompt) return [...prompt.tokens];
    throw new OptionError(
      `${what}: a chat cannot continue a prefix (its template renders the whole conversation); ` +
        'pass the continuation as text or token ids',
    );
  }

  /** The prefix behind `prefix`, checked to be this model's. */
  private ownPrefix(prefix: PromptPrefix | undefined, what: string): ComputedPrefix | undefined {
    if (prefix === undefined) return undefined;
    if (!(prefix instanceof ComputedPrefix) || prefix.model !== this)
      throw new OptionError(
        `${what}: its prefix was not made by this model's prefill (a prefix holds the keys and ` +
          'values of the model instance that computed it)',
      );
    return prefix;
  }

  /** Throws unless `hooks` are the hooks `prefix` was computed with. */
  private checkPrefixHooks(prefix: ComputedPrefix, hooks: readonly Hook[], what: string): void {
    const given = new Set(hooks);
    if (given.size === prefix.hooks.size && [...given].every((h) => prefix.hooks.has(h))) return;
    throw new OptionError(
      `${what}: its prefix was computed with other hooks (${prefix.hooks.size} there, ${given.size} ` +
        'here): a prefix is valid only for the hooks it was prefilled with; pass the same ones',
    );
  }

  /** A sequence's KV cache: a copy of its prefix's with room for `extra` tokens, else empty. */
  private startCache(prefix: ComputedPrefix | undefined, extra: number): KvCache {
    return (
      prefix?.cache.clone(extra) ??
      new KvCache(this.config.nLayers, this.config.nKvHeads * this.config.headDim)
    );
  }

  private hooksFor(extra: readonly Hook[] | undefined): Hook[] {
    for (const h of extra ?? []) this.checkHookName(h.name);
    return extra ? [...this.permanentHooks, ...extra] : [...this.permanentHooks];
  }

  /**
   * Throws unless prompt `index` (`ownLength` tokens after a prefix of `prefixLength`) plus
   * `newTokens` generated ones fit the model's context: past it, rotary positions leave the
   * trained range, and a huge prompt would otherwise allocate its whole KV cache before anything
   * fails.
   */
  private checkFits(index: number, ownLength: number, newTokens: number, prefixLength = 0): void {
    const context = this.config.maxContext;
    if (ownLength === 0)
      throw new OptionError(`prompt ${index} has no tokens${prefixLength > 0 ? ' after its prefix' : ''}`);
    const length = prefixLength + ownLength;
    if (length > context)
      throw new OptionError(
        `prompt ${index} has ${length} tokens${prefixLength > 0 ? ` (${prefixLength} of them its prefix's)` : ''}; ` +
          `the model's context is ${context}`,
      );
    if (length + newTokens > context)
      throw new OptionError(
        `prompt ${index} has ${length} tokens and maxNewTokens is ${newTokens}: ${length + newTokens} ` +
          `tokens do not fit the model's context of ${context} (use maxNewTokens <= ${context - length})`,
      );
  }

  /**
   * Runs the beginning of a prompt once and keeps its keys and values, for `run` to continue
   * (`RunOptions.prefix`): each continuation then costs only its own tokens. With `prefix`, this
   * one nests on it (a few-shot primer shared by every question, then a question shared by its
   * answers) and `prompt` is read as a continuation. The prefix must leave room in the context
   * for at least one more token. See `PrefillOptions.hooks` for which hooks it is valid for.
   */
  prefill(prompt: Prompt, opts: PrefillOptions = {}): PromptPrefix {
    const parent = this.ownPrefix(opts.prefix, 'prefill');
    const tokens = parent ? this.continuationTokens(prompt, 'prefill') : this.tokenize(prompt);
    const hooks = this.hooksFor(opts.hooks);
    const adapters = this.activeAdapters();
    if (parent) {
      this.checkPrefixHooks(parent, hooks, 'prefill');
      this.checkPrefixAdapters(parent, adapters, 'prefill');
    }
    const parentLength = parent?.tokens.length ?? 0;
    const length = parentLength + tokens.length;
    if (tokens.length === 0)
      throw new OptionError(`prefill: the prefix has no tokens${parent ? ' after its parent prefix' : ''}`);
    if (length >= this.config.maxContext)
      throw new OptionError(
        `prefill: a prefix of ${length} tokens leaves no room for a continuation in the model's ` +
          `context of ${this.config.maxContext}`,
      );
    const cache = this.startCache(parent, tokens.length);
    // One more prompt token is counted than the prefix holds: no prefix row is 'last' or generated.
    forward(this.config, this.weights, this.backend, [{ id: 0, tokens, cache, promptLength: length + 1 }], {
      hooks,
      logits: 'none',
      step: 0,
      adapters,
    });
    return new ComputedPrefix(this, [...(parent?.tokens ?? []), ...tokens], cache, new Set(hooks), adapters);
  }

  /** One forward pass over each prompt, keeping the requested activations and logits. */
  run(prompts: readonly Prompt[], opts: RunOptions = {}): RunResult {
    const prefixes = prompts.map((_, i) =>
      this.ownPrefix(typeof opts.prefix === 'function' ? opts.prefix(i) : opts.prefix, `prompt ${i}`),
    );
    const tokens = prompts.map((p, i) =>
      prefixes[i] ? this.continuationTokens(p, `prompt ${i}`) : this.tokenize(p),
    );
    const prefixLength = prefixes.map((p) => p?.tokens.length ?? 0);
    const V = this.config.vocabSize;
    const logitsMode = opts.logits ?? 'last';
    const maxBatch = opts.maxBatchTokens ?? 1024;
    if (!(maxBatch >= 1)) throw new OptionError(`maxBatchTokens must be >= 1, got ${maxBatch}`);
    tokens.forEach((t, i) => this.checkFits(i, t.length, 0, prefixLength[i]));

    const cache = new Map<HookName, Float32Array[]>();
    const cachedPositions: Int32Array[] = [];
    const positions = opts.cache?.positions ?? 'last';
    const wanted = opts.cache
      ? this.hookNames().filter((n) => {
          const names = opts.cache!.names;
          return typeof names === 'function' ? names(n) : names.includes(n);
        })
      : [];
    if (opts.cache && typeof opts.cache.names !== 'function')
      for (const n of opts.cache.names) this.checkHookName(n);
    for (const n of wanted) cache.set(n, new Array<Float32Array>(tokens.length));
    const logits = new Array<Float32Array>(tokens.length);
    const hooks = this.hooksFor(opts.hooks);
    const adapters = this.activeAdapters();
    if (
      typeof logitsMode === 'object' &&
      !(Number.isInteger(logitsMode.lastTokens) && logitsMode.lastTokens >= 1)
    )
      throw new OptionError(`logits lastTokens must be an integer >= 1, got ${logitsMode.lastTokens}`);
    const ownHooks = tokens.map((_, i) => {
      const own = opts.promptHooks?.(i) ?? [];
      for (const h of own) this.checkHookName(h.name);
      const prefix = prefixes[i];
      if (prefix) {
        this.checkPrefixHooks(prefix, [...hooks, ...own], `prompt ${i}`);
        this.checkPrefixAdapters(prefix, adapters, `prompt ${i}`);
      }
      return own;
    });
    const promptLengths = tokens.map((t, i) => {
      const from = prefixLength[i];
      const n = opts.promptLength?.(i) ?? from + t.length;
      if (!(Number.isInteger(n) && n > from && n <= from + t.length))
        throw new OptionError(
          `prompt ${i}: promptLength must be an integer in ${from + 1}..${from + t.length}` +
            `${from > 0 ? ` (counted from the start of its ${from}-token prefix)` : ''}, got ${n}`,
        );
      return n;
    });

    for (let start = 0; start < tokens.length;) {
      // Pack prompts into one call up to maxBatch tokens (always at least one prompt).
      let end = start + 1;
      let count = tokens[start].length;
      while (end < tokens.length && count + tokens[end].length <= maxBatch) count += tokens[end++].length;
      const batch = tokens.slice(start, end);
      const offset = start;
      const readers: Hook[] = wanted.map((name) => ({
        name,
        fn: (act, ctx) => {
          const perSeq = new Map<number, number[]>();
          for (let r = 0; r < ctx.rows; r++) {
            if (!rowSelected(positions, ctx, r)) continue;
            const list = perSeq.get(ctx.seq[r]) ?? [];
            list.push(r);
            perSeq.set(ctx.seq[r], list);
          }
          for (let i = offset; i < offset + batch.length; i++) {
            const rows = perSeq.get(i) ?? [];
            const out = new Float32Array(rows.length * ctx.width);
            rows.forEach((r, j) => out.set(act.subarray(r * ctx.width, (r + 1) * ctx.width), j * ctx.width));
            cache.get(name)![i] = out;
            cachedPositions[i] ??= Int32Array.from(rows, (r) => ctx.pos[r]);
          }
        },
      }));
      const steps: SequenceStep[] = batch.map((t, b) => ({
        id: offset + b,
        tokens: t,
        cache: this.startCache(prefixes[offset + b], t.length),
        promptLength: promptLengths[offset + b],
        hooks: ownHooks[offset + b],
      }));
      // Readers go last so they see the activation after every intervention.
      const res = forward(this.config, this.weights, this.backend, steps, {
        hooks,
        lastHooks: readers,
        logits: logitsMode,
        step: 0,
        adapters,
      });
      if (logitsMode === 'none') batch.forEach((_, b) => (logits[offset + b] = new Float32Array(0)));
      else {
        const tail = logitsMode === 'all' ? Infinity : logitsMode === 'last' ? 1 : logitsMode.lastTokens;
        let row = 0;
        batch.forEach((t, b) => {
          const n = Math.min(tail, t.length);
          logits[offset + b] = res.logits.slice(row * V, (row + n) * V);
          row += n;
        });
      }
      start = end;
    }
    return { tokens, logits, cache, cachedPositions };
  }

  /**
   * Generates a continuation for each prompt, up to `maxBatch` sequences at a time (one token per
   * sequence per step, with a KV cache; a finished sequence's place goes to the next prompt).
   * Greedy unless `temperature` > 0. Each sequence's arithmetic is its own: the replies do not
   * depend on the batch size or on the other prompts. Built on `decoder()`: every prompt is
   * checked (and the call throws) before any compute.
   */
  async generate(prompts: readonly Prompt[], opts: GenerateOptions = {}): Promise<Generation[]> {
    checkSampling(opts);
    checkMaxNewTokens(opts.maxNewTokens); // also when there are no prompts
    const { hooks, promptHooks, prefix, maxBatch, onText, onToken, signal, seed, ...perSequence } = opts;
    const decoder = this.decoder({ maxBatch, hooks });
    // One signal ends every sequence: the caller's, or a failed pass (which rejects its own
    // sequences; the others then stop too, and the call rejects).
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    const replies = prompts.map((prompt, i) =>
      decoder.add(prompt, {
        ...perSequence,
        seed: (seed ?? 0) + i * 7919,
        prefix: typeof prefix === 'function' ? prefix(i) : prefix,
        hooks: promptHooks?.(i),
        onText: onText && ((text) => onText(i, text)),
        onToken: onToken && ((token, position) => onToken(i, token, position)),
        signal: stop.signal,
      }),
    );
    for (const r of replies) r.catch(onAbort);
    if (signal?.aborted) stop.abort();
    signal?.addEventListener('abort', onAbort);
    try {
      while (!decoder.idle) {
        decoder.step();
        // Let I/O (streams, servers, Ctrl-C) through between steps.
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    return Promise.all(replies);
  }

  /**
   * A batch that sequences join and leave between decoding steps: the step-level form of
   * `generate` (which is built on it), for callers whose prompts arrive while others decode (a
   * server). `add` queues a prompt with its own options and returns its generation's promise;
   * each `step()` first lets queued prompts take free places (a prompt pass of its own each),
   * then decodes one token for every sequence already in the batch. Nothing runs between steps,
   * so the caller decides when (e.g. after letting I/O through).
   */
  decoder(opts: DecoderOptions = {}): Decoder {
    const maxBatch = opts.maxBatch ?? 16;
    if (!(Number.isInteger(maxBatch) && maxBatch >= 1))
      throw new OptionError(`maxBatch must be an integer >= 1, got ${maxBatch}`);
    const callHooks = [...(opts.hooks ?? [])];
    for (const h of callHooks) this.checkHookName(h.name);
    // The adapters on when the decoder is made serve every sequence it decodes.
    const adapters = this.activeAdapters();
    const V = this.config.vocabSize;
    const tokenizer = this.loaded.tokenizer;

    interface Seq {
      /** What hooks see as ctx.seq: the smallest id free when it was added. */
      readonly id: number;
      readonly opts: SequenceOptions;
      readonly maxNew: number;
      readonly stops: readonly string[];
      readonly stopTokens: ReadonlySet<number>;
      readonly prefix: ComputedPrefix | undefined;
      readonly promptTokens: number[];
      readonly promptLength: number;
      readonly hooks: readonly Hook[];
      readonly history: number[];
      readonly generated: number[];
      readonly random: () => number;
      text: string;
      emitted: number;
      done: Generation['finishReason'] | undefined;
      // Made when the sequence joins the batch: a waiting prompt holds no copy of its prefix.
      cache: KvCache | undefined;
      next: readonly number[];
      resolve: (g: Generation) => void;
      reject: (e: unknown) => void;
    }
    const waiting: Seq[] = [];
    let active: Seq[] = [];
    let step = 0;

    const freeId = (): number => {
      const used = new Set([...waiting, ...active].map((s) => s.id));
      let id = 0;
      while (used.has(id)) id++;
      return id;
    };
    const finish = (s: Seq, reason: Generation['finishReason']): void => {
      s.done = reason;
      if (reason !== 'aborted' && s.emitted < s.text.length) s.opts.onText?.(s.text.slice(s.emitted));
      s.resolve({
        promptTokens: s.promptTokens,
        tokens: s.generated,
        text: tokenizer ? s.text : '',
        finishReason: reason,
      });
    };

    /** Samples the sequence's next token from its logits row; false when it is finished. */
    const advance = (s: Seq, logits: Float32Array): boolean => {
      const tok = sampleToken(logits, s.history, s.opts, s.random);
      if (s.stopTokens.has(tok)) {
        finish(s, 'stop');
        return false;
      }
      s.generated.push(tok);
      s.history.push(tok);
      s.opts.onToken?.(tok, s.generated.length - 1);
      let stopped = false;
      if (tokenizer) {
        s.text = tokenizer.decode(s.generated, { skipSpecialTokens: false });
        const hit = s.stops.map((st) => s.text.indexOf(st)).filter((i) => i >= 0);
        if (hit.length > 0) {
          s.text = s.text.slice(0, Math.min(...hit));
          stopped = true;
        }
        // Hold back text that may still be the start of a stop string or an incomplete character.
        let safe = s.text.length;
        if (!stopped) {
          if (s.text.endsWith('\uFFFD')) safe = s.text.length - 1;
          for (const st of s.stops)
            for (let k = Math.min(st.length - 1, s.text.length); k > 0; k--)
              if (s.text.endsWith(st.slice(0, k))) safe = Math.min(safe, s.text.length - k);
        }
        if (safe > s.emitted) {
          s.opts.onText?.(s.text.slice(s.emitted, safe));
          s.emitted = safe;
        }
      }
      if (stopped) {
        finish(s, 'stop');
        return false;
      }
      if (s.generated.length >= s.maxNew) {
        finish(s, 'length');
        return false;
      }
      s.next = [tok];
      return true;
    };
    /** One forward call over `batch`; a throw fails (rejects) every sequence of it. */
    const pass = (batch: readonly Seq[], passStep: number): Seq[] => {
      try {
        const res = forward(
          this.config,
          this.weights,
          this.backend,
          batch.map((s) => ({
            id: s.id,
            tokens: s.next,
            cache: (s.cache ??= this.startCache(s.prefix, s.next.length)),
            promptLength: s.promptLength,
            hooks: s.hooks,
          })),
          { hooks: [...this.permanentHooks], lastHooks: callHooks, logits: 'last', step: passStep, adapters },
        );
        return batch.filter((s, j) => advance(s, res.logits.subarray(j * V, (j + 1) * V)));
      } catch (e) {
        for (const s of batch) {
          if (s.done) continue;
          s.done = 'aborted';
          s.reject(e);
        }
        return [];
      }
    };

    return {
      add: (prompt, o = {}) => {
        checkSampling(o);
        const maxNew = checkMaxNewTokens(o.maxNewTokens);
        const id = freeId();
        const what = `prompt ${id}`;
        const prefix = this.ownPrefix(o.prefix, what);
        const promptTokens = prefix ? this.continuationTokens(prompt, what) : this.tokenize(prompt);
        const prefixLength = prefix?.tokens.length ?? 0;
        this.checkFits(id, promptTokens.length, maxNew, prefixLength);
        const own = [...(o.hooks ?? [])];
        for (const h of own) this.checkHookName(h.name);
        if (prefix) {
          this.checkPrefixHooks(prefix, [...this.permanentHooks, ...own, ...callHooks], what);
          this.checkPrefixAdapters(prefix, adapters, what);
        }
        return new Promise<Generation>((resolve, reject) => {
          const s: Seq = {
            id,
            opts: o,
            maxNew,
            stops: o.stop ?? [],
            stopTokens: new Set(o.stopTokens ?? tokenizer?.eosTokenIds ?? []),
            prefix,
            promptTokens,
            promptLength: prefixLength + promptTokens.length,
            hooks: own,
            history: [...(prefix?.tokens ?? []), ...promptTokens],
            generated: [],
            random: seededRandom(o.seed ?? 0),
            text: '',
            emitted: 0,
            done: undefined,
            cache: undefined,
            next: promptTokens,
            resolve,
            reject,
          };
          if (maxNew === 0) finish(s, 'length');
          else waiting.push(s);
        });
      },
      step: () => {
        for (const s of [...waiting, ...active]) if (s.opts.signal?.aborted) finish(s, 'aborted');
        const live = (s: Seq) => s.done === undefined;
        waiting.splice(0, waiting.length, ...waiting.filter(live));
        active = active.filter(live);
        // Each joining prompt gets a pass of its own: prompt passes are exact, and sgemm's rounding
        // depends on the rows multiplied together, so packing prompts would make a reply depend on
        // its neighbours. Decoding steps (int8 dot products, row by row) do not.
        const joined = waiting.splice(0, maxBatch - active.length).flatMap((s) => pass([s], 0));
        if (active.length > 0) active = pass(active, ++step);
        active.push(...joined);
      },
      get waiting() {
        return waiting.length;
      },
      get active() {
        return active.length;
      },
      get idle() {
        return waiting.length === 0 && active.length === 0;
      },
    };
  }
}

/** `maxNewTokens` or its default (128); throws unless an integer >= 0. */
function checkMaxNewTokens(n: number | undefined): number {
  const maxNew = n ?? 128;
  if (!(Number.isInteger(maxNew) && maxNew >= 0))
    throw new OptionError(`maxNewTokens must be an integer >= 0, got ${maxNew}`);
  return maxNew;
}
