#!/usr/bin/env node
/**
 * LoRA training throughput and peak memory, bounded: `steerguard train lora` on a few short chats
 * (harmless Alpaca instructions from the shared datasets with short made-up answers), one epoch,
 * under GNU time for the peak resident set. Prints one JSON object: tokens/s over every step and
 * over the steps after the first (the first pays for OpenBLAS's buffers and the JIT), seconds per
 * step, peak RSS, and the 1-minute load average before and after (the machine is shared).
 *
 *   node scripts/bench-train.mjs --model .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
 *     [--examples 8] [--batch 2] [--rank 8] [--targets q,k,v,o,gate,up,down] [--max-tokens 64] \
 *     [--threads 2] [--cli dist/src/cli/main.js]
 *
 * --cli points at another build's CLI (an older checkout's dist/, to measure before a change).
 * The prompts are read from ../shared/datasets/alpaca/harmless_train.json (env STEERGUARD_DATASETS
 * for another folder) and never printed.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: o } = parseArgs({
  options: {
    model: { type: 'string' },
    examples: { type: 'string', default: '8' },
    batch: { type: 'string', default: '2' },
    rank: { type: 'string', default: '8' },
    targets: { type: 'string', default: 'q,k,v,o,gate,up,down' },
    'max-tokens': { type: 'string', default: '64' },
    threads: { type: 'string', default: '2' },
    cli: { type: 'string', default: path.join(root, 'dist', 'src', 'cli', 'main.js') },
  },
  strict: true,
});
if (!o.model) throw new Error('--model is required');
const examples = Number(o.examples);
if (!(Number.isInteger(examples) && examples >= 1)) throw new Error(`--examples must be a positive integer`);

const datasets = process.env.STEERGUARD_DATASETS ?? path.resolve(root, '..', 'shared', 'datasets');
const prompts = JSON.parse(readFileSync(path.join(datasets, 'alpaca', 'harmless_train.json'), 'utf8'))
  .map((r) => r.instruction)
  .filter((p) => typeof p === 'string' && p.length <= 80)
  .slice(0, examples);
if (prompts.length < examples) throw new Error(`only ${prompts.length} short prompts in harmless_train.json`);
const ANSWERS = [
  'Sure. Here is a short answer to that.',
  'Happy to help: start small, then check the result.',
  'Yes. The usual way is simple and quick.',
  'Of course. Three steps are enough here.',
];

const dir = mkdtempSync(path.join(os.tmpdir(), 'steerguard-bench-train-'));
try {
  const data = path.join(dir, 'chats.jsonl');
  writeFileSync(
    data,
    prompts.map((p, i) => JSON.stringify({ prompt: p, response: ANSWERS[i % ANSWERS.length] })).join('\n') +
      '\n',
  );
  const out = path.join(dir, 'adapter');
  const loadBefore = os.loadavg()[0];
  const args = [
    '-f',
    '%M',
    '-o',
    path.join(dir, 'rss'),
    process.execPath,
    o.cli,
    'train',
    'lora',
    '--model',
    o.model,
    '--data',
    data,
    '--targets',
    o.targets,
    '--rank',
    o.rank,
    '--alpha',
    String(2 * Number(o.rank)),
    '--epochs',
    '1',
    '--batch',
    o.batch,
    '--warmup',
    '0',
    '--val-split',
    '0',
    '--max-tokens',
    o['max-tokens'],
    '--threads',
    o.threads,
    '--out',
    out,
  ];
  const run = spawnSync('/usr/bin/time', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  if (run.status !== 0) throw new Error(`train lora exited with ${run.status}`);
  const log = JSON.parse(readFileSync(path.join(out, 'training-log.json'), 'utf8'));
  const steps = log.log.steps;
  const rate = (ss) => ss.reduce((a, s) => a + s.tokens, 0) / ss.reduce((a, s) => a + s.seconds, 0);
  console.log(
    JSON.stringify(
      {
        model: path.basename(o.model),
        date: new Date().toISOString(),
        cpu: os.cpus()[0]?.model,
        threads: Number(o.threads),
        options: {
          examples,
          batch: Number(o.batch),
          rank: Number(o.rank),
          targets: o.targets,
          maxTokens: Number(o['max-tokens']),
        },
        steps: steps.length,
        tokensPerStep: steps.map((s) => s.tokens),
        secondsPerStep: steps.map((s) => Number(s.seconds.toFixed(2))),
        tokensPerSecond: Number(rate(steps).toFixed(2)),
        tokensPerSecondAfterFirstStep: steps.length > 1 ? Number(rate(steps.slice(1)).toFixed(2)) : null,
        peakRssMB: Math.round(
          Number(readFileSync(path.join(dir, 'rss'), 'utf8').trim().split('\n').at(-1)) / 1024,
        ),
        load1Before: loadBefore,
        load1After: os.loadavg()[0],
      },
      null,
      2,
    ),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
