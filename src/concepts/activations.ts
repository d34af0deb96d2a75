/**
 * Last-token residual-stream activations of a list of prompts, every layer, with an on-disk cache.
 *
 * For each prompt this reads `blocks.L.hook_resid_post` (the output of block L) at the last prompt
 * token, for every block L: the position that predicts the first reply token, where SCAV and the
 * refusal-direction work read their concepts. Text prompts go through the model's chat template as
 * a single user message ('chat', the default when the model has a template) or are tokenized as
 * they are ('raw'); chat-message and token-id prompts are used as given.
 *
 * Cache: one small safetensors file per prompt holding all L rows ([L, D] F32), named by a hash of
 * (model fingerprint, prompt, template mode and template text, hook, position), under
 * `<cache>/<fingerprint>/<2 hex>/<hash>.safetensors`. Files are written atomically and checked on
 * read (metadata and shape); an unreadable or mismatching file counts as a miss and is rewritten.
 * Rerunning with the same prompts therefore skips the model entirely.
 *
 * Shapes: N prompts, L blocks, D = d_model.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { OptionError, SteerguardError } from '../formats/errors.js';
import { readSafetensorsHeader, readSafetensorsTensorF32, writeSafetensors } from '../formats/safetensors.js';
import { type HookName, blockHook } from '../hooks/hooks.js';
import type { Model, Prompt } from '../model/model.js';

/** How text prompts reach the model. */
export type TemplateMode = 'chat' | 'raw';

export interface ExtractOptions {
  /** Default: 'chat' when the model has a chat template, else 'raw'. */
  readonly template?: TemplateMode;
  /** Blocks to return (default all); every block is cached regardless. */
  readonly layers?: readonly number[];
  /** Cache directory, or false for none (default {@link resolveActivationCacheDir}()). */
  readonly cacheDir?: string | false;
  /** Tokens per forward pass (default 2048). */
  readonly batchTokens?: number;
  /** Called after each batch with prompts done (cache hits included) and the total. */
  readonly onProgress?: (done: number, total: number) => void;
  readonly signal?: AbortSignal;
}

export interface LayerActivations {
  /** Block indices, in the order of `data`. */
  readonly layers: readonly number[];
  /** N. */
  readonly n: number;
  /** D. */
  readonly d: number;
  /** Per entry of `layers`: [N, D] row-major. */
  readonly data: readonly Float32Array[];
  /** Prompts read from the cache. */
  readonly cached: number;
  /** Prompts run through the model. */
  readonly computed: number;
  /** Seconds spent in forward passes. */
  readonly forwardSeconds: number;
}

const CACHE_FORMAT = 'steerguard.activation-cache';
const CACHE_VERSION = '1';
const HOOK_KIND = 'resid_post';
const POSITION = 'last';
const TENSOR = 'resid_post';

/**
 * The default cache directory: `$STEERGUARD_CACHE/activations` when that variable is set (it
 * names steerguard's cache root), else `.cache/activations` under the current directory.
 */
export function resolveActivationCacheDir(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string {
  const root =
    env.STEERGUARD_CACHE !== undefined && env.STEERGUARD_CACHE !== ''
      ? env.STEERGUARD_CACHE
      : path.join(cwd, '.cache');
  return path.join(root, 'activations');
}

/** The template mode used when none is asked for. */
export function defaultTemplate(model: Model): TemplateMode {
  try {
    return model.tokenizer.chatTemplate !== undefined ? 'chat' : 'raw';
  } catch {
    return 'raw';
  }
}

/** The prompt as the model receives it under `template`. */
export function templated(prompt: Prompt, template: TemplateMode): Prompt {
  return typeof prompt === 'string' && template === 'chat'
    ? { messages: [{ role: 'user', content: prompt }] }
    : prompt;
}

/** Cache key of one prompt: what decides its activations. */
export function activationCacheKey(model: Model, prompt: Prompt, template: TemplateMode): string {
  const templateText = (() => {
    if (template !== 'chat') return null;
    try {
      return model.tokenizer.chatTemplate ?? null;
    } catch {
      return null;
    }
  })();
  const what =
    typeof prompt === 'string'
      ? { text: prompt }
      : 'tokens' in prompt
        ? { tokens: [...prompt.tokens] }
        : { messages: prompt.messages.map((m) => ({ role: m.role, content: m.content })) };
  const key = JSON.stringify({
    v: CACHE_VERSION,
    model: model.identity.fingerprint,
    template,
    templateHash: templateText === null ? null : createHash('sha256').update(templateText).digest('hex'),
    hook: HOOK_KIND,
    position: POSITION,
    prompt: what,
  });
  return createHash('sha256').update(key).digest('hex');
}

function cachePath(dir: string, fingerprint: string, key: string): string {
  const safe = fingerprint.replace(/[^A-Za-z0-9_-]/g, '_');
  return path.join(dir, safe, key.slice(0, 2), `${key}.safetensors`);
}

function readCached(
  file: string,
  key: string,
  fingerprint: string,
  nLayers: number,
  d: number,
): Float32Array | undefined {
  if (!existsSync(file)) return undefined;
  try {
    const st = readSafetensorsHeader(file);
    const m = st.metadata;
    if (
      m.format !== CACHE_FORMAT ||
      m.format_version !== CACHE_VERSION ||
      m.key !== key ||
      m.model !== fingerprint
    ) {
      return undefined;
    }
    const info = st.tensors.get(TENSOR);
    if (!info || info.shape.length !== 2 || info.shape[0] !== nLayers || info.shape[1] !== d)
      return undefined;
    const data = readSafetensorsTensorF32(info);
    for (const v of data) if (!Number.isFinite(v)) return undefined;
    return data;
  } catch {
    // A damaged cache entry is recomputed, never fatal.
    return undefined;
  }
}

/**
 * Last-token `hook_resid_post` of every block for each prompt (see the file comment). Throws a
 * SteerguardError when the model gives a non-finite activation, naming the prompt by index.
 */
export async function extractLastToken(
  model: Model,
  prompts: readonly Prompt[],
  opts: ExtractOptions = {},
): Promise<LayerActivations> {
  const L = model.config.nLayers;
  const D = model.config.dModel;
  const n = prompts.length;
  const template = opts.template ?? defaultTemplate(model);
  const layers = opts.layers ? [...opts.layers] : Array.from({ length: L }, (_, l) => l);
  for (const l of layers) {
    if (!(Number.isInteger(l) && l >= 0 && l < L))
      throw new OptionError(`layer ${l} is out of range: the model has blocks 0..${L - 1}`);
  }
  const batchTokens = opts.batchTokens ?? 2048;
  if (!(Number.isInteger(batchTokens) && batchTokens >= 1))
    throw new OptionError(`batch tokens must be a positive integer, got ${batchTokens}`);
  const cacheDir = opts.cacheDir === undefined ? resolveActivationCacheDir() : opts.cacheDir;
  const fingerprint = model.identity.fingerprint;

  // rows[i]: [L, D] for prompt i.
  const rows: (Float32Array | undefined)[] = Array.from({ length: n }, () => undefined);
  const keys: string[] = Array.from({ length: n }, () => '');
  let cached = 0;
  for (let i = 0; i < n; i++) {
    if (cacheDir === false) continue;
    keys[i] = activationCacheKey(model, prompts[i], template);
    const hit = readCached(cachePath(cacheDir, fingerprint, keys[i]), keys[i], fingerprint, L, D);
    if (hit) {
      rows[i] = hit;
      cached++;
    }
  }
  opts.onProgress?.(cached, n);

  const names: HookName[] = Array.from({ length: L }, (_, l) => blockHook(l, 'hook_resid_post'));
  const todo = rows.map((r, i) => (r === undefined ? i : -1)).filter((i) => i >= 0);
  let forwardSeconds = 0;
  let done = cached;
  // The prompt that did not fit into a batch, tokenized already.
  const tokenized = new Map<number, number[]>();
  for (let k = 0; k < todo.length;) {
    if (opts.signal?.aborted) throw new SteerguardError('activation extraction was interrupted');
    // Pack prompts up to batchTokens tokens (at least one per batch).
    const batch: number[] = [];
    const tokens: number[][] = [];
    let count = 0;
    while (k < todo.length) {
      const i = todo[k];
      const t = tokenized.get(i) ?? model.tokenize(templated(prompts[i], template));
      if (t.length === 0) throw new OptionError(`prompt ${i} has no tokens`);
      if (t.length > model.config.maxContext) {
        throw new OptionError(
          `prompt ${i} has ${t.length} tokens; the model's context is ${model.config.maxContext}`,
        );
      }
      if (batch.length > 0 && count + t.length > batchTokens) {
        tokenized.set(i, t);
        break;
      }
      tokenized.delete(i);
      batch.push(i);
      tokens.push(t);
      count += t.length;
      k++;
    }
    const started = performance.now();
    const res = model.run(
      tokens.map((t) => ({ tokens: t })),
      { cache: { names, positions: 'last' }, logits: 'none', maxBatchTokens: Math.max(batchTokens, count) },
    );
    forwardSeconds += (performance.now() - started) / 1000;
    batch.forEach((i, j) => {
      const out = new Float32Array(L * D);
      for (let l = 0; l < L; l++) {
        const row = res.cache.get(names[l])![j];
        for (let t = 0; t < D; t++) {
          if (!Number.isFinite(row[t])) {
            throw new SteerguardError(
              `prompt ${i} gives a non-finite activation (NaN or infinity) at blocks.${l}.hook_resid_post; ` +
                'a hook or a damaged model file may be writing it',
            );
          }
        }
        out.set(row, l * D);
      }
      rows[i] = out;
      if (cacheDir !== false) {
        const file = cachePath(cacheDir, fingerprint, keys[i]);
        mkdirSync(path.dirname(file), { recursive: true });
        writeSafetensors(file, [{ name: TENSOR, dtype: 'F32', shape: [L, D], data: out }], {
          format: CACHE_FORMAT,
          format_version: CACHE_VERSION,
          key: keys[i],
          model: fingerprint,
          hook: HOOK_KIND,
          position: POSITION,
          template,
        });
      }
    });
    done += batch.length;
    opts.onProgress?.(done, n);
    // model.run blocks the event loop; let progress output and signals through between batches.
    await new Promise((r) => setImmediate(r));
  }

  const data = layers.map((l) => {
    const m = new Float32Array(n * D);
    for (let i = 0; i < n; i++) m.set(rows[i]!.subarray(l * D, (l + 1) * D), i * D);
    return m;
  });
  return { layers, n, d: D, data, cached, computed: todo.length, forwardSeconds };
}
