/**
 * `steerguard sae train|eval`: Top-k sparse autoencoders from the command line, thin over
 * src/sae/. Training reads an activation file written by `steerguard activations`; evaluation
 * runs the model on a prompt file. Prompt text is never printed.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { Model } from '../../model/model.js';
import { type LoadedSet, loadSets, toEvalPrompts } from '../../eval/prompt-sets.js';
import type { EvalPrompt } from '../../eval/refusal.js';
import type { Judge } from '../../eval/judges.js';
import type { Sae } from '../../sae/sae.js';
import { type CommandSpec, type OptionSpec } from '../args.js';
import { formatNumber } from '../output.js';
import { Progress } from '../progress.js';
import {
  type CliCommand,
  actionGroup,
  CHAT_OPTIONS,
  checkInputFile,
  checkOutPath,
  COLUMN_OPTION,
  MODEL_OPTION,
  THREADS_OPTION,
  TOKEN_IDS_OPTION,
  command,
  loadModel,
  para,
  useChat,
  withInterrupt,
} from './common.js';
import { GENERATION_OPTIONS, SET_OPTIONS } from './eval.js';

const KEEP_FIRST_TOKEN_OPTION = {
  type: 'boolean',
  description:
    "use each prompt's first token too (by default it is left out: BOS is an attention sink whose norm dwarfs every other token's)",
} as const satisfies OptionSpec;

const LAYER_OPTION = {
  type: 'number',
  integer: true,
  min: 0,
  required: true,
  placeholder: 'L',
  description: 'block whose hook_resid_post the SAE reads',
} as const satisfies OptionSpec;

// ---------------------------------------------------------------------------------------------
// sae train

const TRAIN_SPEC = {
  name: 'sae train',
  summary: 'train a Top-k sparse autoencoder on stored activations (resumable)',
  description: para(
    'Reads blocks.L.hook_resid_post from --activations (a file of `steerguard activations`, e.g. with ' +
      '--positions all) in chunks, so files larger than memory stream, and trains f = TopK(W_enc (x - b_dec) + b_enc), ' +
      'x_hat = W_dec f + b_dec with MSE plus the AuxK dead-latent loss (coefficient 1/32), Adam and unit-norm ' +
      'decoder rows (Gao et al. 2024). Passes over the file repeat until --steps. Every --checkpoint-every steps the ' +
      'state is saved in --out; rerunning the same command resumes from it (more --steps continue a finished run). ' +
      'At the end --out holds cfg.json and sae_weights.safetensors in SAELens layout. Progress lines report loss, ' +
      "L0 (mean active latents) and the dead share (latents silent for --dead-tokens rows). In an all-token file each prompt's first token is left out unless --keep-first-token.",
  ),
  options: {
    activations: {
      type: 'string',
      required: true,
      placeholder: 'file',
      description: 'activation file holding blocks.L.hook_resid_post',
    },
    layer: LAYER_OPTION,
    expansion: {
      type: 'number',
      integer: true,
      min: 1,
      default: 8,
      description: 'latents per input dimension (d_sae = E × d_in)',
    },
    k: { type: 'number', integer: true, min: 1, default: 32, description: 'latents kept per token' },
    steps: { type: 'number', integer: true, min: 1, required: true, description: 'optimizer steps' },
    batchSize: { type: 'number', integer: true, min: 1, default: 1024, description: 'tokens per step' },
    lr: { type: 'number', min: 1e-12, default: 5e-4, description: 'Adam learning rate' },
    deadTokens: {
      type: 'number',
      integer: true,
      min: 1,
      default: 100000,
      description: 'a latent silent for this many tokens is dead (and trained by AuxK)',
    },
    seed: { type: 'number', integer: true, default: 0, description: 'seed of the initial decoder' },
    keepFirstToken: KEEP_FIRST_TOKEN_OPTION,
    checkpointEvery: {
      type: 'number',
      integer: true,
      min: 1,
      default: 100,
      description: 'steps between checkpoints',
    },
    out: {
      type: 'string',
      short: 'o',
      required: true,
      placeholder: 'dir',
      description: 'SAE folder to write',
    },
    overwrite: { type: 'boolean', description: 'replace a finished SAE in --out that has no checkpoint' },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard activations qwen.gguf --prompts held-in.jsonl --positions all --hooks blocks.12.hook_resid_post --out acts.safetensors',
    'steerguard sae train --activations acts.safetensors --layer 12 --expansion 8 --k 32 --steps 2000 --out sae-l12/',
    'steerguard sae train --activations acts.safetensors --layer 12 --k 32 --steps 4000 --out sae-l12/ --json  # resumes, continues to 4000',
  ],
} as const satisfies CommandSpec;

const trainCommand = command(TRAIN_SPEC, async (args, out) => {
  const o = args.options;
  if (!existsSync(o.activations)) throw new OptionError(`--activations: ${o.activations} does not exist`);
  const { SAE_CHECKPOINT_FILE, trainSae } = await import('../../sae/train.js');
  const { SAE_CFG_FILE, saveSae } = await import('../../sae/saelens.js');
  const { storeSource } = await import('../../sae/source.js');
  const { loadBackend } = await import('../../engine/select.js');
  const { readSafetensorsHeader } = await import('../../formats/safetensors.js');
  const { parseActivationMetadata } = await import('../../activations/store.js');
  const hookName = `blocks.${o.layer}.hook_resid_post`;
  if (
    existsSync(path.join(o.out, SAE_CFG_FILE)) &&
    !existsSync(path.join(o.out, SAE_CHECKPOINT_FILE)) &&
    !o.overwrite
  )
    throw new OptionError(`${o.out} holds an SAE with no training checkpoint; remove it or pass --overwrite`);
  const header = readSafetensorsHeader(o.activations);
  const skipFirstToken = !o.keepFirstToken && header.tensors.has('offsets');
  const source = storeSource(o.activations, hookName, { skipFirstToken });
  let modelName = '';
  try {
    modelName = parseActivationMetadata(header.metadata).descriptor.model.file ?? '';
  } catch {
    // not written by `steerguard activations`: the SAE's model stays unnamed
  }
  const backend = loadBackend({ threads: o.threads });
  const progress = new Progress({ total: o.steps, label: 'sae train', unit: 'steps', json: out.json });
  const logEvery = Math.max(1, Math.round(o.steps / 20));
  let stopRequested = false;
  const result = await withInterrupt(
    () =>
      trainSae(backend, source, {
        dSae: o.expansion * source.dIn,
        k: o.k,
        steps: o.steps,
        batchSize: o.batchSize,
        lr: o.lr,
        deadTokens: o.deadTokens,
        seed: o.seed,
        hookName,
        hookLayer: o.layer,
        modelName,
        checkpointDir: o.out,
        checkpointEvery: o.checkpointEvery,
        stopAfterStep: () => stopRequested,
        onProgress: (p) => {
          progress.update(p.step);
          if (p.step % logEvery === 0 || p.step === p.steps)
            progress.log(
              `step ${p.step}: loss ${formatNumber(p.loss)}, mse ${formatNumber(p.mse)}, L0 ${formatNumber(p.l0)}, dead ${(100 * p.deadShare).toFixed(1)}%`,
            );
        },
      }),
    () => {
      stopRequested = true;
      out.info('stopping after this step; rerun the same command to resume');
    },
  );
  progress.finish();
  if (result.resumed) out.info(`resumed from step ${result.step - result.stepsThisRun}`);
  if (stopRequested && result.step < o.steps) {
    out.warn(`interrupted at step ${result.step} of ${o.steps}; the checkpoint in ${o.out} resumes it`);
    process.exitCode = 130;
    return;
  }
  saveSae(result.sae, o.out);
  const last = result.last;
  out.result(
    {
      out: o.out,
      hookName,
      dIn: source.dIn,
      dSae: result.sae.config.dSae,
      k: o.k,
      step: result.step,
      stepsThisRun: result.stepsThisRun,
      resumed: result.resumed,
      rows: source.rows,
      skipFirstToken,
      last: last ?? null,
      seconds: result.seconds,
      tokensPerSecond: result.stepsThisRun > 0 ? (result.stepsThisRun * o.batchSize) / result.seconds : null,
    },
    `wrote ${o.out}: d_in ${source.dIn}, d_sae ${result.sae.config.dSae}, k ${o.k}, ${result.step} steps` +
      (last
        ? ` (last loss ${formatNumber(last.loss)}, L0 ${formatNumber(last.l0)}, dead ${(100 * last.deadShare).toFixed(1)}%)`
        : '') +
      (result.stepsThisRun > 0
        ? `; ${formatNumber((result.stepsThisRun * o.batchSize) / result.seconds)} tokens/s over ${result.stepsThisRun} steps`
        : ''),
  );
});

// ---------------------------------------------------------------------------------------------
// sae eval

const EVAL_SPEC = {
  name: 'sae eval',
  summary: 'explained variance, L0, dead latents and CE-loss recovered of an SAE on prompts',
  description: para(
    'Runs every prompt of --prompts (plain text, tokenized without a chat template) through the model, ' +
      "reads the SAE's hook at every token and reports explained variance (1 - Σ|x - x_hat|² / Σ|x - mean|²), " +
      'L0 (mean active latents per token), the dead share (latents active on no token), and CE-loss recovered, ' +
      '(CE_zero_ablation - CE_spliced) / (CE_zero_ablation - CE_clean): the mean next-token loss with x_hat ' +
      'spliced in for x at every position, against the clean model and the activation set to zero. ' +
      "Each prompt's first token is left out of both unless --keep-first-token. Use prompts the SAE was not trained on.",
  ),
  options: {
    sae: {
      type: 'string',
      required: true,
      placeholder: 'dir',
      description: 'SAE folder (cfg.json + sae_weights.safetensors)',
    },
    model: MODEL_OPTION,
    prompts: {
      type: 'string',
      required: true,
      placeholder: 'file',
      description: 'held-out prompts (CSV/JSON/JSONL)',
    },
    column: COLUMN_OPTION,
    tokenIds: TOKEN_IDS_OPTION,
    limit: { type: 'number', integer: true, min: 1, description: 'first N prompts' },
    layer: {
      ...LAYER_OPTION,
      required: false,
      description: "block of the SAE's hook (default: the SAE's own; must agree)",
    },
    keepFirstToken: {
      type: 'boolean',
      description:
        "measure and splice each prompt's first token too (by default it is left as it is, as in training)",
    },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard sae eval --sae sae-l12/ --model qwen.gguf --prompts held-out.jsonl --layer 12',
    'steerguard sae eval --sae gemmascope-l6/ -m gemma.gguf --prompts p.csv --column text --limit 50 --json',
  ],
} as const satisfies CommandSpec;

const evalCommand = command(EVAL_SPEC, async (args, out) => {
  const o = args.options;
  const { loadSae } = await import('../../sae/saelens.js');
  const { OUTLIER_NORM_RATIO, ceLossRecovered, reconstructionQuality } = await import('../../sae/quality.js');
  const { arraySource } = await import('../../sae/source.js');
  const { loadPromptFile } = await import('../../data/prompts.js');
  const { parseTokenIds } = await import('../../eval/prompt-sets.js');
  const sae = loadSae(o.sae);
  if (o.layer !== undefined && o.layer !== sae.config.hookLayer)
    throw new OptionError(
      `--layer ${o.layer}: the SAE in ${o.sae} reads ${sae.config.hookName} (layer ${sae.config.hookLayer})`,
    );
  const records = loadPromptFile(o.prompts, { column: o.column, limit: o.limit });
  const model: Model = await loadModel(o.model, out, { threads: o.threads });
  const hook: string = sae.config.hookName;
  model.checkHookName(hook);
  if (model.config.dModel !== sae.config.dIn)
    throw new OptionError(
      `the SAE in ${o.sae} reads width ${sae.config.dIn} but the model's d_model is ${model.config.dModel}`,
    );
  const tokens = records.map((r, i) =>
    o.tokenIds
      ? parseTokenIds(r.text, `${o.prompts}: prompt ${i}`, model.config.vocabSize)
      : model.tokenize(r.text),
  );
  const short = tokens.findIndex((t) => t.length < 2);
  if (short >= 0)
    throw new OptionError(`--prompts: prompt ${short} (${records[short].id}) has fewer than 2 tokens`);

  const { cache } = model.run(
    tokens.map((t) => ({ tokens: t })),
    { cache: { names: [hook], positions: 'all' }, logits: 'none' },
  );
  const skip = o.keepFirstToken ? 0 : sae.config.dIn;
  const rows = (cache.get(hook) ?? []).map((r) => r.subarray(skip));
  const activations = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
  let off = 0;
  for (const r of rows) {
    activations.set(r, off);
    off += r.length;
  }
  const quality = await reconstructionQuality(
    sae,
    model.backend,
    arraySource(activations, sae.config.dIn, o.prompts),
  );
  const ce = ceLossRecovered(model, sae, tokens, !o.keepFirstToken);
  const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;
  out.result(
    { sae: o.sae, hookName: sae.config.hookName, prompts: records.length, ...quality, ce },
    [
      `${o.sae} at ${sae.config.hookName}, ${records.length} prompts, ${quality.rows} tokens:`,
      `  explained variance  ${formatNumber(quality.explainedVariance)}`,
      `    typical tokens    ${formatNumber(quality.typical.explainedVariance)} over ${quality.typical.rows} tokens ` +
        `(${quality.outliers.rows} with norm above ${formatNumber(quality.outliers.normAbove)}, ` +
        `${OUTLIER_NORM_RATIO}x the median, left out: they hold ${pct(quality.outliers.varianceShare)} of the variance)`,
      `  L0                  ${formatNumber(quality.l0)}`,
      `  dead latents        ${pct(quality.deadShare)}`,
      `  CE recovered        ${pct(ce.recovered)} (clean ${formatNumber(ce.ceClean)}, spliced ${formatNumber(ce.ceSpliced)}, zero-ablated ${formatNumber(ce.ceZeroAblation)} nats over ${ce.tokens} tokens)`,
    ].join('\n'),
  );
});

// ---------------------------------------------------------------------------------------------
// sae features and sae steer: choosing a latent and its clamp on development prompts

const SEARCH_SET_OPTIONS = {
  harmful: {
    type: 'list',
    placeholder: 's1,s2',
    default: ['advbench'],
    description: 'harmful development sets (short names or files); keep them apart from evaluation sets',
  },
  benign: {
    type: 'list',
    placeholder: 's1,s2',
    default: ['alpaca:train'],
    description: 'benign development sets (short names or files)',
  },
  ...SET_OPTIONS,
  ...CHAT_OPTIONS,
  maxTokens: { ...GENERATION_OPTIONS.maxTokens, default: 32 },
  batch: GENERATION_OPTIONS.batch,
  judge: {
    type: 'enum',
    values: ['keyword-gcg', 'keyword-jbb'],
    default: 'keyword-gcg',
    description: 'refusal judge that says which replies are refusals',
  },
} as const satisfies Record<string, OptionSpec>;

const SAE_OPTION = {
  type: 'string',
  required: true,
  placeholder: 'dir',
  description: 'SAE folder (cfg.json + sae_weights.safetensors)',
} as const satisfies OptionSpec;

type SearchSetOptions = {
  harmful: string[];
  benign: string[];
  chat: boolean;
  noChat: boolean;
  tokenIds?: boolean;
  system?: string;
} & Parameters<typeof loadSets>[1];

/** The harmful and benign development prompts of a search (sets loaded before the model). */
function searchSets(o: SearchSetOptions): { harmful: LoadedSet[]; benign: LoadedSet[] } {
  return { harmful: loadSets(o.harmful, o), benign: loadSets(o.benign, o) };
}

function searchPrompts(
  model: Model,
  sets: { harmful: LoadedSet[]; benign: LoadedSet[] },
  o: SearchSetOptions,
): { harmful: EvalPrompt[]; benign: EvalPrompt[] } {
  const form = { ...o, chat: o.tokenIds ? false : useChat(model, o) };
  return {
    harmful: toEvalPrompts(model, sets.harmful, form),
    benign: toEvalPrompts(model, sets.benign, form),
  };
}

async function loadSaeFor(model: Model, dir: string): Promise<Sae> {
  const { loadSae } = await import('../../sae/saelens.js');
  const { checkSaeFitsModel } = await import('../../sae/features.js');
  const sae = loadSae(dir);
  checkSaeFitsModel(model, sae);
  return sae;
}

async function refusalJudge(name: string): Promise<Judge> {
  const { buildJudges } = await import('../../eval/evaluation.js');
  return (await buildJudges({ judge: [name], judgeTimeout: 60, judgeConcurrency: 1 }))[0];
}

const FEATURES_SPEC = {
  name: 'sae features',
  summary: 'rank SAE latents by refusal tokens and by correlation with the concept monitor',
  description: para(
    "Generates the model's greedy replies to --harmful and --benign development prompts, judges which are " +
      'refusals (--judge), and ranks the latents two ways: by how much more they fire on the first --refusal-tokens ' +
      "reply tokens of refusals than on the same tokens of the other replies (O'Brien et al. 2024), and, with " +
      "--concept or --reading, by the Pearson correlation of their activation at the last prompt token with the monitor's " +
      'score. Each listed latent comes with the token contexts where it fires most; their text is shown only with ' +
      '--show-text (the prompts are harmful). The suggested clamp values for `sae steer` are 1, 2, 4 and 8 times the ' +
      "top latent's largest activation on refusal tokens.",
  ),
  options: {
    sae: SAE_OPTION,
    model: MODEL_OPTION,
    ...SEARCH_SET_OPTIONS,
    refusalTokens: {
      type: 'number',
      integer: true,
      min: 1,
      default: 8,
      description: 'reply tokens from the start that count as the refusal tokens',
    },
    top: { type: 'number', integer: true, min: 1, default: 10, description: 'latents listed per ranking' },
    contexts: { type: 'number', integer: true, min: 1, default: 5, description: 'contexts kept per latent' },
    concept: {
      type: 'string',
      placeholder: 'file',
      description: 'concept file whose prompt monitor the latents are correlated with',
    },
    reading: {
      type: 'string',
      placeholder: 'reading.json',
      description: 'reading file (concept generalize --save-reading) as the monitor, instead of --concept',
    },
    showText: { type: 'boolean', description: 'print the contexts as text (they come from harmful prompts)' },
    out: {
      type: 'string',
      short: 'o',
      placeholder: 'file.json',
      description: 'write the rankings and contexts (token ids; text too with --show-text) here, atomically',
    },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard sae features --sae sae-l12/ -m qwen.gguf --harmful advbench --benign alpaca:train --part train --limit 64',
    'steerguard sae features --sae sae-l12/ -m qwen.gguf --part train --limit 64 --reading reading.json --out features.json',
  ],
} as const satisfies CommandSpec;

const featuresCommand = command(FEATURES_SPEC, async (args, out) => {
  const o = args.options;
  if (o.concept !== undefined && o.reading !== undefined)
    throw new OptionError('--concept and --reading name two monitors: pass one');
  checkInputFile('--concept', o.concept);
  checkInputFile('--reading', o.reading);
  if (o.out !== undefined) checkOutPath(o.out, true);
  const sets = searchSets(o);
  const judge = await refusalJudge(o.judge);
  const model = await loadModel(o.model, out, { threads: o.threads });
  const sae = await loadSaeFor(model, o.sae);
  const { harmful, benign } = searchPrompts(model, sets, o);
  const monitor =
    o.concept !== undefined || o.reading !== undefined
      ? (await (await import('../../eval/steering.js')).specMonitor(model, o)).monitor
      : undefined;
  const { searchSaeFeatures } = await import('../../eval/sae-steering.js');
  const progress = new Progress({
    total: harmful.length + benign.length,
    label: 'replies',
    unit: 'prompts',
    json: out.json,
  });
  const found = await withInterrupt((signal) =>
    searchSaeFeatures(model, sae, {
      harmful,
      benign,
      judge,
      maxNewTokens: o.maxTokens,
      batchSize: o.batch,
      refusalTokens: o.refusalTokens,
      top: o.top,
      contexts: o.contexts,
      contextBefore: 8,
      monitor,
      onProgress: (done) => progress.update(done),
      signal,
    }),
  );
  progress.finish();
  const text = (tokens: readonly number[]): string | undefined =>
    o.showText ? model.tokenizer.decode([...tokens]) : undefined;
  const contexts = Object.fromEntries(
    [...found.contexts].map(([feature, list]) => [
      feature,
      list.map((c) => ({
        ...c,
        prompt: found.prompts[c.example].id,
        set: found.prompts[c.example].set,
        ...(o.showText ? { text: text(c.tokens) } : {}),
      })),
    ]),
  );
  const top = found.byRefusalTokens[0];
  const suggested = [1, 2, 4, 8].map((m) => Number((m * top.maxOnRefusal).toPrecision(3)));
  const doc = {
    sae: o.sae,
    hookName: sae.config.hookName,
    judge: o.judge,
    harmful: found.harmful,
    benign: found.benign,
    refusalTokens: found.refusalTokens,
    byRefusalTokens: found.byRefusalTokens,
    byMonitor: found.byMonitor,
    contexts,
    suggestedClampValues: suggested,
  };
  if (o.out !== undefined) {
    const { writeFileAtomic } = await import('../../formats/files.js');
    writeFileAtomic(o.out, JSON.stringify(doc, null, 1) + '\n');
  }
  const f = (x: number): string => formatNumber(x);
  const pct = (x: number): string => `${(100 * x).toFixed(0)}%`;
  const lines = [
    `${found.harmful.refusals}/${found.harmful.n} harmful and ${found.benign.refusals}/${found.benign.n} benign replies are refusals (${o.judge})`,
    `latents by refusal tokens (first ${o.refusalTokens} reply tokens of refusals vs of the other replies):`,
    '  latent   score   mean on refusals   mean elsewhere   active on refusals   active elsewhere   max',
    ...found.byRefusalTokens.map(
      (r) =>
        `  ${String(r.feature).padStart(6)}  ${f(r.score).padStart(6)}  ${f(r.meanOnRefusal).padStart(17)}  ${f(r.meanElsewhere).padStart(15)}  ${pct(r.freqOnRefusal).padStart(19)}  ${pct(r.freqElsewhere).padStart(17)}  ${f(r.maxOnRefusal)}`,
    ),
  ];
  if (found.byMonitor) {
    lines.push(
      'latents by correlation with the monitor (last prompt token):',
      '  latent       r   active   max',
    );
    for (const m of found.byMonitor)
      lines.push(
        `  ${String(m.feature).padStart(6)}  ${f(m.correlation).padStart(6)}  ${pct(m.freq).padStart(7)}  ${f(m.maxActivation)}`,
      );
  }
  if (o.showText) {
    lines.push('contexts (strongest first; the last token is where the latent fires):');
    for (const [feature, list] of Object.entries(contexts))
      for (const c of list) lines.push(`  ${feature}  ${f(c.activation)}  ${JSON.stringify(c.text)}`);
  } else lines.push('contexts are kept as token ids (--show-text prints them)');
  lines.push(`suggested clamp values for latent ${top.feature}: ${suggested.join(',')} (sae steer --values)`);
  if (o.out !== undefined) lines.push(`wrote ${o.out}`);
  out.result(doc, lines.join('\n'));
});

const STEER_SPEC = {
  name: 'sae steer',
  summary: 'grid-search the clamp value of one SAE latent on validation prompts',
  description: para(
    "Clamps latent --feature to each of --values at every position (x' = x + (C - f_J(x)) W_dec[J]), always on, " +
      'generates greedy replies to the --harmful and --benign validation prompts, and reports per value the refusal ' +
      'of harmful prompts, the over-refusal of benign ones and the degenerate-reply rate, each with a 95% interval. ' +
      'The chosen value maximises refusal - over-refusal - degenerate rate (ties: the smaller |C|). Evaluate the ' +
      'choice on held-out sets with `eval refusal --steer sae-clamp` (always on) or `--steer conditional --sae` (gated ' +
      'by the monitor). Prompt and reply text are never printed.',
  ),
  options: {
    sae: SAE_OPTION,
    model: MODEL_OPTION,
    feature: {
      type: 'number',
      integer: true,
      min: 0,
      required: true,
      placeholder: 'J',
      description: 'latent to clamp',
    },
    values: {
      type: 'list',
      required: true,
      placeholder: 'c1,c2',
      description: 'clamp values to try (sae features suggests some)',
    },
    ...SEARCH_SET_OPTIONS,
    out: {
      type: 'string',
      short: 'o',
      placeholder: 'file.json',
      description: 'write the grid and the choice here, atomically',
    },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard sae steer --sae sae-l12/ -m qwen.gguf --feature 1234 --values 10,20,40,80 --part val --limit 24',
  ],
} as const satisfies CommandSpec;

const steerCommand = command(STEER_SPEC, async (args, out) => {
  const o = args.options;
  const values = o.values.map((v) => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x))
      throw new OptionError(`--values: '${v.slice(0, 20)}' is not a finite number`);
    return x;
  });
  if (o.out !== undefined) checkOutPath(o.out, true);
  const sets = searchSets(o);
  const judge = await refusalJudge(o.judge);
  const model = await loadModel(o.model, out, { threads: o.threads });
  const sae = await loadSaeFor(model, o.sae);
  const { checkClamp } = await import('../../sae/clamp.js');
  for (const value of values) checkClamp(sae, { feature: o.feature, value });
  const { harmful, benign } = searchPrompts(model, sets, o);
  const { chooseClamp, clampGrid } = await import('../../eval/sae-steering.js');
  const progress = new Progress({
    total: (harmful.length + benign.length) * values.length,
    label: 'sae steer',
    unit: 'prompts',
    json: out.json,
  });
  const rows = await withInterrupt((signal) =>
    clampGrid(model, sae, {
      harmful,
      benign,
      feature: o.feature,
      values,
      judge,
      maxNewTokens: o.maxTokens,
      batchSize: o.batch,
      onProgress: (done) => progress.update(done),
      signal,
    }),
  );
  progress.finish();
  const chosen = chooseClamp(rows);
  const doc = {
    sae: o.sae,
    hookName: sae.config.hookName,
    feature: o.feature,
    judge: o.judge,
    sets: { harmful: sets.harmful.map((s) => s.name), benign: sets.benign.map((s) => s.name) },
    grid: rows,
    chosen: chosen.value,
  };
  if (o.out !== undefined) {
    const { writeFileAtomic } = await import('../../formats/files.js');
    writeFileAtomic(o.out, JSON.stringify(doc, null, 1) + '\n');
  }
  const pct = (r: { rate: number; ci: readonly [number, number] }): string =>
    `${(100 * r.rate).toFixed(1)}% (${(100 * r.ci[0]).toFixed(0)}–${(100 * r.ci[1]).toFixed(0)})`;
  out.result(
    doc,
    [
      `latent ${o.feature} of ${o.sae}, ${harmful.length} harmful and ${benign.length} benign validation prompts:`,
      '  clamp      refusal (harmful)   over-refusal (benign)   degenerate   objective',
      ...rows.map(
        (r) =>
          `  ${formatNumber(r.value).padStart(6)}  ${pct(r.refusal).padStart(18)}  ${pct(r.overRefusal).padStart(22)}  ${pct(r.flawed).padStart(11)}  ${r.objective.toFixed(3)}${r === chosen ? '  <- chosen' : ''}`,
      ),
      `evaluate it: steerguard eval refusal -m ${o.model} --sets <held-out sets> --steer sae-clamp --sae ${o.sae} --feature ${o.feature} --clamp ${chosen.value}`,
    ].join('\n'),
  );
});

// ---------------------------------------------------------------------------------------------
// the group

const ACTIONS: Record<string, CliCommand> = {
  train: trainCommand,
  eval: evalCommand,
  features: featuresCommand,
  steer: steerCommand,
};

export const saeCommand: CliCommand = actionGroup({
  name: 'sae',
  summary: 'sparse autoencoders: train, evaluate, find refusal latents, choose a clamp',
  description: para(
    "Actions: 'train' fits a Top-k SAE to an activation file (resumable); 'eval' measures explained variance, " +
      "L0, dead latents and CE-loss recovered; 'features' ranks latents by the refusal tokens of the model's refusals " +
      "and by correlation with a concept monitor; 'steer' grid-searches a latent's clamp value on validation prompts. SAEs are folders in SAELens's layout, so SAELens SAEs (topk, " +
      "jumprelu such as GemmaScope's) load too. Run 'steerguard sae <action> --help' for an action's options; all " +
      'of them are listed below.',
  ),
  actions: ACTIONS,
  examples: [TRAIN_SPEC.examples[1], EVAL_SPEC.examples[0]],
});
