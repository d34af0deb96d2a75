/**
 * `steerguard bench MODEL.gguf` and its hidden helper `bench-worker`; the measuring itself is in
 * ../bench.ts.
 */
import { readFileSync } from 'node:fs';

import { OptionError } from '../../formats/errors.js';
import {
  formatBenchMarkdown,
  formatBenchText,
  llamaCppWorker,
  runBench,
  steerguardWorker,
} from '../bench.js';
import { WEIGHTS_OPTION, command, para } from './common.js';

const SHARED = {
  threads: {
    type: 'number',
    integer: true,
    min: 1,
    max: 1024,
    default: 2,
    description: 'threads for each engine (the same for both)',
  },
  genTokens: {
    type: 'number',
    integer: true,
    min: 1,
    max: 4096,
    default: 64,
    description: 'tokens generated after each prompt (greedy, batch 1)',
  },
  repeats: {
    type: 'number',
    integer: true,
    min: 1,
    max: 100,
    default: 3,
    description: 'timed runs; the median is shown',
  },
} as const;

export const benchCommand = command(
  {
    name: 'bench',
    summary: 'compare speed and memory with llama.cpp on the same GGUF file',
    description: para(
      'Runs steerguard and llama.cpp (node-llama-cpp, prebuilt CPU binary) one after the other, each in ' +
        'its own process, on identical token ids with the same thread count: prompt-processing and ' +
        'generation tokens/s, peak RSS, and the cost of steerguard hooks (reading, or adding a vector at, ' +
        'every hook_resid_post). One warm-up run, then the median of --repeats. Prompts are cut from a ' +
        'fixed benign paragraph. Takes minutes on small machines; lower --repeats or --gen-tokens for a ' +
        'quick look.',
    ),
    positionals: [{ name: 'model', description: '.gguf file' }],
    options: {
      ...SHARED,
      prompts: {
        type: 'number',
        integer: true,
        min: 1,
        max: 64,
        default: 4,
        description: 'number of prompts',
      },
      promptTokens: {
        type: 'number',
        integer: true,
        min: 2,
        max: 8192,
        default: 128,
        description: 'tokens per prompt',
      },
      hookOverhead: {
        type: 'boolean',
        default: true,
        description: 'also time steerguard with hooks at every hook_resid_post',
      },
      llamacpp: { type: 'boolean', default: true, description: 'also run llama.cpp' },
      weights: WEIGHTS_OPTION,
      markdown: { type: 'boolean', description: 'print Markdown tables ready for BENCHMARKS.md' },
    },
    examples: [
      'steerguard bench .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf',
      'steerguard bench model.gguf --threads 4 --repeats 5 --markdown >> BENCHMARKS.md',
      'steerguard bench model.gguf --prompts 1 --gen-tokens 16 --repeats 1 --no-hook-overhead --json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    if (o.markdown && out.json) throw new OptionError('choose --markdown or --json, not both');
    const report = await runBench(
      args.positionals[0],
      {
        threads: o.threads,
        prompts: o.prompts,
        promptTokens: o.promptTokens,
        genTokens: o.genTokens,
        repeats: o.repeats,
        hookOverhead: o.hookOverhead,
        llamacpp: o.llamacpp,
        // bench measures the native engine, where quantized weights are the default
        weights: o.weights ?? 'quantized',
      },
      (line) => out.info(line),
    );
    if (report.llamacppError && o.llamacpp) out.warn(`llama.cpp was not measured: ${report.llamacppError}`);
    out.result(report, o.markdown ? formatBenchMarkdown : formatBenchText);
  },
);

export const benchWorkerCommand = command(
  {
    name: 'bench-worker',
    summary: 'one engine of `steerguard bench` (internal)',
    description: 'Measures one engine and prints one JSON line on stdout. Started by `steerguard bench`.',
    options: {
      ...SHARED,
      engine: {
        type: 'enum',
        values: ['steerguard', 'llamacpp'],
        required: true,
        description: 'engine to measure',
      },
      model: { type: 'string', required: true, placeholder: 'file.gguf', description: 'model file' },
      tokensFile: {
        type: 'string',
        required: true,
        placeholder: 'file.json',
        description: 'JSON array of prompts, each an array of token ids',
      },
      hookOverhead: { type: 'boolean', default: true, description: 'also time hooks (steerguard only)' },
      weights: WEIGHTS_OPTION,
    },
    examples: [
      'steerguard bench-worker --engine steerguard --model m.gguf --tokens-file p.json --threads 2 --gen-tokens 64',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const prompts = JSON.parse(readFileSync(o.tokensFile, 'utf8')) as number[][];
    const result =
      o.engine === 'steerguard'
        ? await steerguardWorker(o.model, prompts, { ...o, weights: o.weights ?? 'quantized' })
        : await llamaCppWorker(o.model, prompts, o);
    out.stdout.write(`${JSON.stringify(result)}\n`);
  },
  { hidden: true },
);
