/** `steerguard info MODEL`: what a checkpoint is and which hook points it offers. */
import { statSync } from 'node:fs';

import { BLOCK_HOOKS } from '../../hooks/hooks.js';
import type { Model } from '../../model/model.js';
import { type WeightMatrix, matrixBytes, matrixSize } from '../../model/weights.js';
import { formatNumber } from '../output.js';
import { hasChatTemplate } from '../../eval/prompt-sets.js';
import { THREADS_OPTION, WEIGHTS_OPTION, command, para, formatBytes, loadModel } from './common.js';

export const infoCommand = command(
  {
    name: 'info',
    summary: 'show the architecture, tokenizer and hook points of a model',
    description: para(
      'Loads the model (to count parameters and fingerprint the weights) and prints its shape, files and ' +
        'the names of its hook points. --json also lists every hook name and the full config.',
    ),
    positionals: [{ name: 'model', description: '.gguf file, Hugging Face model folder, or cached repo id' }],
    options: { threads: THREADS_OPTION, weights: WEIGHTS_OPTION },
    examples: [
      'steerguard info .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf',
      'steerguard info HuggingFaceTB/SmolLM2-135M-Instruct --json',
      "steerguard info model.gguf --json | jq '.hooks.names | length'",
    ],
  },
  async (args, out) => {
    const model = await loadModel(args.positionals[0], out, {
      threads: args.options.threads,
      weights: args.options.weights,
    });
    const info = describeModel(model);
    out.result(info, formatInfo);
  },
);

/** Everything `info` reports, as plain JSON. */
export function describeModel(model: Model) {
  const c = model.config;
  const id = model.identity;
  let fileBytes: number | null;
  try {
    const st = statSync(id.path);
    fileBytes = st.isFile() ? st.size : null;
  } catch {
    fileBytes = null;
  }
  let tokenizer: {
    present: boolean;
    source: string | null;
    vocabSize: number | null;
    bosTokenId: number | null;
    eosTokenIds: number[];
    chatTemplate: boolean;
  } = {
    present: false,
    source: null,
    vocabSize: null,
    bosTokenId: null,
    eosTokenIds: [],
    chatTemplate: false,
  };
  try {
    const t = model.tokenizer;
    tokenizer = {
      present: true,
      source: t.source,
      vocabSize: t.vocabSize,
      bosTokenId: t.bosTokenId ?? null,
      eosTokenIds: [...t.eosTokenIds],
      chatTemplate: hasChatTemplate(model),
    };
  } catch {
    // a checkpoint without tokenizer files: reported as absent
  }
  const names = model.hookNames();
  return {
    name: id.name,
    file: id.path,
    format: id.format,
    fileBytes,
    fingerprint: id.fingerprint,
    architecture: c.arch,
    layers: c.nLayers,
    dModel: c.dModel,
    heads: c.nHeads,
    kvHeads: c.nKvHeads,
    headDim: c.headDim,
    ffnDim: c.ffnDim,
    vocabSize: c.vocabSize,
    context: c.maxContext,
    parameters: countParameters(model),
    weightBytes: weightBytes(model),
    tiedEmbeddings: c.tiedEmbeddings,
    tokenizer,
    hooks: { count: names.length, patterns: hookPatterns(c.nLayers), names },
    config: c,
  };
}

/** Bytes the weights occupy in memory (fp32 or quantized blocks), tied embeddings counted once. */
export function weightBytes(model: Model): number {
  const w = model.weights;
  let n = matrixBytes(w.embed) + w.finalNorm.byteLength + (w.lmHead === w.embed ? 0 : matrixBytes(w.lmHead));
  for (const layer of w.layers)
    for (const v of Object.values(layer) as (WeightMatrix | undefined)[]) n += v ? matrixBytes(v) : 0;
  return n;
}

/** Number of weights the forward pass uses, tied embeddings counted once. */
export function countParameters(model: Model): number {
  const w = model.weights;
  let n = matrixSize(w.embed) + w.finalNorm.length + (w.lmHead === w.embed ? 0 : matrixSize(w.lmHead));
  for (const layer of w.layers)
    for (const v of Object.values(layer) as (WeightMatrix | undefined)[]) n += v ? matrixSize(v) : 0;
  return n;
}

/** The hook names in compact form: one pattern per kind, with how many names each stands for. */
export function hookPatterns(nLayers: number): { pattern: string; count: number }[] {
  const range = nLayers === 1 ? '0' : `{0..${nLayers - 1}}`;
  return [
    { pattern: 'hook_embed', count: 1 },
    ...BLOCK_HOOKS.map((k) => ({ pattern: `blocks.${range}.${k}`, count: nLayers })),
    { pattern: 'hook_final_norm', count: 1 },
    { pattern: 'logits', count: 1 },
  ];
}

function formatInfo(i: ReturnType<typeof describeModel>): string {
  const yes = (b: boolean) => (b ? 'yes' : 'no');
  const rows: [string, string][] = [
    ['model', i.name],
    ['file', `${i.file}${i.fileBytes !== null ? ` (${formatBytes(i.fileBytes)})` : ''}`],
    ['format', i.format],
    ['fingerprint', i.fingerprint],
    ['architecture', i.architecture],
    ['parameters', `${formatNumber(i.parameters / 1e6)}M (${i.parameters})`],
    ['weights in memory', formatBytes(i.weightBytes)],
    ['layers', String(i.layers)],
    ['d_model', String(i.dModel)],
    ['heads', `${i.heads} query, ${i.kvHeads} key/value, head dim ${i.headDim}`],
    ['mlp width', String(i.ffnDim)],
    ['vocab', String(i.vocabSize)],
    ['context', String(i.context)],
    ['tied embeddings', yes(i.tiedEmbeddings)],
    [
      'tokenizer',
      i.tokenizer.present
        ? `yes (bos ${i.tokenizer.bosTokenId ?? 'none'}, eos ${i.tokenizer.eosTokenIds.join(',') || 'none'})`
        : 'no',
    ],
    ['chat template', yes(i.tokenizer.chatTemplate)],
    ['hook points', String(i.hooks.count)],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`);
  const pw = Math.max(...i.hooks.patterns.map((p) => p.pattern.length));
  for (const p of i.hooks.patterns) lines.push(`  ${p.pattern.padEnd(pw)}  ${p.count}`);
  return lines.join('\n');
}
