/**
 * `steerguard activations`: residual-stream (or any hook's) activations of a prompt set, saved
 * to one safetensors file. Long runs are resumable: finished chunks are kept by ActivationRun and
 * a rerun of the same command carries on after the last one.
 *
 * Every check that needs no model (output writable, prompt file and column, hook name syntax) runs
 * before the model is loaded, so a typo costs a second, not a model load.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import { ActivationRun, checkWritable } from '../../activations/store.js';
import { loadPromptFile, promptListHash } from '../../data/prompts.js';
import { OptionError } from '../../formats/errors.js';
import { type HookName, type Positions, parseHookName } from '../../hooks/hooks.js';
import type { Model } from '../../model/model.js';
import { Progress } from '../progress.js';
import {
  CHAT_OPTIONS,
  THREADS_OPTION,
  command,
  para,
  formatBytes,
  loadModel,
  useChat,
  yieldToEventLoop,
} from './common.js';

export const activationsCommand = command(
  {
    name: 'activations',
    summary: 'save hook activations of a prompt set to a safetensors file',
    description: para(
      'Runs every prompt of --prompts through the model and stores the activations at --hooks: one tensor ' +
        'per hook, [N, D] for --positions last, [N, P, D] for P listed positions, or [total tokens, D] ' +
        "plus an 'offsets' tensor for all/prompt. Work is saved chunk by chunk in <out>.partial/; an " +
        'interrupted run (Ctrl-C exits 130) resumes when the same command is run again. Prompt text is ' +
        'never printed. In --hooks, blocks.*.<kind> stands for that hook in every block.',
    ),
    positionals: [{ name: 'model', description: '.gguf file, Hugging Face model folder, or cached repo id' }],
    options: {
      prompts: {
        type: 'string',
        required: true,
        placeholder: 'file',
        description: 'prompt file (CSV, JSON or JSONL)',
      },
      column: {
        type: 'string',
        placeholder: 'name',
        description:
          'field holding the prompt (default: prompt, instruction, goal, Behavior, text, question)',
      },
      out: {
        type: 'string',
        short: 'o',
        required: true,
        placeholder: 'file.safetensors',
        description: 'output file',
      },
      hooks: {
        type: 'list',
        placeholder: 'h1,h2',
        description: 'hook names (default: blocks.*.hook_resid_post, every block)',
      },
      positions: {
        type: 'string',
        default: 'last',
        placeholder: 'last|all|prompt|i,j,..',
        description: 'token rows kept per prompt; listed positions may be negative (-1: last token)',
      },
      ...CHAT_OPTIONS,
      batchTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: 1024,
        description: 'tokens per forward pass (a chunk of prompts is saved after each)',
      },
      dtype: { type: 'enum', values: ['F32', 'F16', 'BF16'], default: 'F32', description: 'storage type' },
      limit: { type: 'number', integer: true, min: 1, description: 'use only the first N prompts' },
      restart: { type: 'boolean', description: 'discard an unfinished run with different settings' },
      overwrite: {
        type: 'boolean',
        description:
          'replace an existing output file (and discard an unfinished run with different settings)',
      },
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard activations model.gguf --prompts harmful.csv --column goal --out harmful.safetensors',
      'steerguard activations model.gguf --prompts p.jsonl --hooks blocks.10.hook_resid_post,blocks.20.hook_resid_post --positions -1,-2 --out a.safetensors',
      'steerguard activations gemma.gguf --prompts p.csv --positions all --no-chat --dtype F16 --out all.safetensors',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const positions = parsePositions(o.positions);
    const hookPatterns = (o.hooks ?? ['blocks.*.hook_resid_post']).map(checkHookPattern);

    checkWritable(o.out);
    if (existsSync(o.out) && !o.overwrite) {
      throw new OptionError(`${o.out} already exists; remove it or pass --overwrite`);
    }
    const records = loadPromptFile(o.prompts, { column: o.column, limit: o.limit });
    const texts = records.map((r) => r.text);

    const model = await loadModel(args.positionals[0], out, { threads: o.threads });
    const hooks = expandHooks(hookPatterns, model.config.nLayers);
    const chat = useChat(model, o);
    const id = model.identity;
    const run = await ActivationRun.open(
      o.out,
      {
        model: {
          fingerprint: id.fingerprint,
          arch: id.arch,
          format: id.format,
          file: path.basename(id.path),
        },
        hooks,
        positions: positions.canonical,
        rowsPerPrompt: positions.rowsPerPrompt,
        template: chat ? (model.tokenizer.chatTemplate ?? '') : '',
        promptFile: o.prompts,
        column: o.column ?? '',
        promptsHash: promptListHash(texts),
        nPrompts: texts.length,
        dtype: o.dtype,
      },
      { promptIds: records.map((r) => r.id), restart: o.restart, overwrite: o.overwrite },
    );

    let interrupted = false;
    const onSigint = (): void => {
      // Signals wait for the chunk in hand (model.run blocks), so a second Ctrl-C is only seen
      // with the first; it then means "stop at once" rather than "after saving this chunk".
      if (interrupted) {
        run.release();
        process.exit(130);
      }
      interrupted = true;
    };
    process.on('SIGINT', onSigint);
    try {
      for (const d of run.dropped) out.warn(`not resuming ${d}; computing it again`);
      if (run.resumed) out.info(`resuming: ${run.completed} of ${texts.length} prompts were already done`);
      const startedAt = performance.now();
      const progress = new Progress({
        total: texts.length,
        initial: run.completed,
        label: 'activations',
        unit: 'prompts',
        json: out.json,
      });
      const initial = run.completed;
      await collect(model, run, texts, { hooks, positions, chat, batchTokens: o.batchTokens }, () => {
        progress.update(run.completed);
        return interrupted;
      });
      if (interrupted && run.completed < texts.length) {
        progress.finish();
        run.release();
        out.info(
          `interrupted: ${run.completed} of ${texts.length} prompts saved in ${run.workDir}; ` +
            'run the same command again to resume',
        );
        out.result(
          { interrupted: true, completed: run.completed, prompts: texts.length, workDir: run.workDir },
          '',
        );
        process.exitCode = 130;
        return;
      }
      progress.finish();
      const result = await run.finish();
      const seconds = (performance.now() - startedAt) / 1000;
      const dims = Object.values(result.dims);
      out.result(
        {
          path: result.path,
          prompts: result.nPrompts,
          resumedFrom: initial,
          hooks,
          positions: positions.canonical,
          rows: result.rows,
          dims: result.dims,
          dtype: o.dtype,
          chatTemplate: chat,
          bytes: result.bytes,
          seconds,
        },
        `wrote ${result.path}: ${result.nPrompts} prompts, ${hooks.length} hook${hooks.length === 1 ? '' : 's'} ` +
          `× [${shapeOf(result.rows, result.nPrompts, positions.rowsPerPrompt, dims[0] ?? 0)}] ${o.dtype}, ` +
          `${formatBytes(result.bytes)} in ${seconds.toFixed(1)}s`,
      );
    } catch (err) {
      run.release();
      throw err;
    } finally {
      process.off('SIGINT', onSigint);
    }
  },
);

function shapeOf(rows: number, n: number, perPrompt: number | 'all', d: number): string {
  if (perPrompt === 'all') return `${rows}, ${d}`;
  return perPrompt === 1 ? `${n}, ${d}` : `${n}, ${perPrompt}, ${d}`;
}

interface ParsedPositions {
  /** What model.run is asked to cache. */
  readonly cache: Positions;
  /** Listed positions, kept in the order given (the cache holds them in position order). */
  readonly list: readonly number[] | undefined;
  readonly canonical: string;
  readonly rowsPerPrompt: number | 'all';
}

/** `--positions`: last, all, prompt, or a comma list of integers. */
export function parsePositions(spec: string): ParsedPositions {
  const s = spec.trim();
  if (s === 'last') return { cache: 'last', list: undefined, canonical: 'last', rowsPerPrompt: 1 };
  // Without generation every token is a prompt token, so 'prompt' stores what 'all' does.
  if (s === 'all' || s === 'prompt') return { cache: s, list: undefined, canonical: s, rowsPerPrompt: 'all' };
  const items = s.split(',').map((x) => x.trim());
  if (items.length === 0 || items.some((x) => !/^[+-]?\d+$/.test(x))) {
    throw new OptionError(
      `--positions must be last, all, prompt or a list of integers like 0,-1; got '${spec.slice(0, 40)}'`,
    );
  }
  const list = items.map(Number);
  return { cache: list, list, canonical: list.join(','), rowsPerPrompt: list.length };
}

const LAYER_WILDCARD = /^blocks\.\*\.(hook_\w+)$/;

/** Syntax check of one --hooks item before the model (and its block count) is known. */
function checkHookPattern(name: string): string {
  const m = LAYER_WILDCARD.exec(name);
  try {
    parseHookName(m ? `blocks.0.${m[1]}` : name, Number.MAX_SAFE_INTEGER);
  } catch (err) {
    throw new OptionError(`--hooks: ${(err as Error).message}`);
  }
  if (name === 'logits') {
    throw new OptionError("--hooks: 'logits' is not stored (V values per token); use hook_final_norm");
  }
  return name;
}

/** Expands blocks.*.x, checks layer indices against the model, and drops repeats. */
export function expandHooks(patterns: readonly string[], nLayers: number): HookName[] {
  const names: HookName[] = [];
  for (const p of patterns) {
    const m = LAYER_WILDCARD.exec(p);
    const expanded = m ? Array.from({ length: nLayers }, (_, l) => `blocks.${l}.${m[1]}`) : [p];
    for (const n of expanded) {
      let name: HookName;
      try {
        name = parseHookName(n, nLayers);
      } catch (err) {
        throw new OptionError(`--hooks: ${(err as Error).message}`);
      }
      if (!names.includes(name)) names.push(name);
    }
  }
  return names;
}

/**
 * Runs the prompts from `run.completed` on, in chunks of at most `batchTokens` tokens (at least
 * one prompt), saving each chunk. `afterChunk` returns true to stop early (Ctrl-C).
 */
async function collect(
  model: Model,
  run: ActivationRun,
  texts: readonly string[],
  opts: { hooks: HookName[]; positions: ParsedPositions; chat: boolean; batchTokens: number },
  afterChunk: () => boolean,
): Promise<void> {
  const tokenize = (text: string): number[] =>
    model.tokenize(opts.chat ? { messages: [{ role: 'user', content: text }] } : text);
  const maxContext = model.config.maxContext;
  const D = model.config.dModel;
  let next: number[] | undefined;
  while (run.completed < texts.length) {
    const start = run.completed;
    const chunk: number[][] = [];
    let tokens = 0;
    for (let i = start; i < texts.length; i++) {
      const t = next ?? tokenize(texts[i]);
      next = undefined;
      if (t.length === 0) throw new OptionError(`prompt ${i} has no tokens`);
      if (t.length > maxContext) {
        throw new OptionError(`prompt ${i} has ${t.length} tokens; the model's context is ${maxContext}`);
      }
      if (chunk.length > 0 && tokens + t.length > opts.batchTokens) {
        next = t;
        break;
      }
      const list = opts.positions.list;
      if (list) {
        const bad = list.find(
          (q) => (q < 0 ? t.length + q : q) < 0 || (q < 0 ? t.length + q : q) >= t.length,
        );
        if (bad !== undefined) {
          throw new OptionError(
            `prompt ${i} has ${t.length} tokens, so --positions ${bad} is out of range (use -${t.length}..${t.length - 1})`,
          );
        }
      }
      chunk.push(t);
      tokens += t.length;
    }

    const res = model.run(
      chunk.map((t) => ({ tokens: t })),
      {
        cache: { names: opts.hooks, positions: opts.positions.cache },
        logits: 'none',
        maxBatchTokens: opts.batchTokens,
      },
    );
    const activations: Record<string, Float32Array> = {};
    for (const h of opts.hooks) {
      const perPrompt = res.cache.get(h)!;
      const list = opts.positions.list;
      if (list) {
        const outRows = new Float32Array(chunk.length * list.length * D);
        chunk.forEach((t, j) => {
          list.forEach((q, k) => {
            const p = q < 0 ? t.length + q : q;
            const row = res.cachedPositions[j].indexOf(p);
            outRows.set(perPrompt[j].subarray(row * D, (row + 1) * D), (j * list.length + k) * D);
          });
        });
        activations[h] = outRows;
      } else {
        const total = perPrompt.reduce((s, a) => s + a.length, 0);
        const joined = new Float32Array(total);
        let off = 0;
        for (const a of perPrompt) {
          joined.set(a, off);
          off += a.length;
        }
        activations[h] = joined;
      }
    }
    await run.writeChunk({
      start,
      count: chunk.length,
      activations,
      tokenCounts: opts.positions.rowsPerPrompt === 'all' ? chunk.map((t) => t.length) : undefined,
    });
    // Signals are only delivered between chunks: model.run blocks the event loop.
    await yieldToEventLoop();
    if (afterChunk()) return;
  }
}
