/**
 * `steerguard bench MODEL.gguf` and its hidden helper `bench-worker`; the measuring itself is in
 * ../bench.ts.
 */
import { readFileSync } from 'node:fs';

import { OptionError, SteerguardError } from '../../formats/errors.js';
import { SERVE_BENCH_MAX_PROMPTS, formatServeBenchMarkdown, runServeBench } from '../../server/load-test.js';
import {
  formatBenchMarkdown,
  formatBenchText,
  llamaCppWorker,
  runBench,
  steerguardWorker,
} from '../bench.js';
import { MODEL_OPTION, WEIGHTS_OPTION, checkInputFile, command, para } from './common.js';

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
  batch: {
    type: 'number',
    integer: true,
    min: 1,
    max: 256,
    default: 16,
    description: 'sequences steerguard decodes together for the batched row (1: no batched row)',
  },
} as const;

export const benchCommand = command(
  {
    name: 'bench',
    summary: 'compare speed and memory with llama.cpp on the same GGUF file',
    description: para(
      'Runs steerguard and llama.cpp (node-llama-cpp, prebuilt CPU binary) on identical token ids with ' +
        'the same thread count: prompt-processing and generation tokens/s, peak RSS, and the cost of ' +
        'steerguard hooks (reading, or adding a vector at, every hook_resid_post). Repeats interleave: ' +
        'each repeat runs one worker process per engine (steerguard, its fp32-weight run when the ' +
        'weights are quantized, llama.cpp), one at a time, in an order that rotates per repeat; each ' +
        'worker warms up once. Figures are the median of --repeats, with the min–max range. ' +
        'A batched row times steerguard decoding --batch sequences together (aggregate tokens/s, and ' +
        'its ratio to one sequence), and a memory-bound line compares the weight bytes read per ' +
        'generated token × tokens/s with a measured memory-copy rate. The 1-minute load average is ' +
        'read before the run and after each worker; when other processes held the cores the engines ' +
        'need, the output starts with a warning (--max-load refuses to start on a loaded machine). ' +
        'Prompts are cut from a fixed benign paragraph. --llama-bench PATH adds llama.cpp built ' +
        'natively for this CPU (scripts/build-llama-bench.sh builds one): `PATH -m MODEL -t THREADS ' +
        '-p PROMPT_TOKENS -n GEN_TOKENS -r 1 -o json` once per repeat, interleaved with the workers; ' +
        'its workload has the same shape but its own token ids, and the steerguard / llama.cpp ratios ' +
        'then use it. Takes minutes on small machines; lower --repeats, --gen-tokens or --batch for a ' +
        'quick look.',
    ),
    positionals: [{ name: 'model', description: '.gguf file' }],
    options: {
      ...SHARED,
      repeats: {
        type: 'number',
        integer: true,
        min: 1,
        max: 100,
        default: 3,
        description: 'worker processes per engine, interleaved; the median and range are shown',
      },
      maxLoad: {
        type: 'number',
        min: 0,
        description: 'refuse to start when the 1-minute load average is above this',
      },
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
      llamacpp: { type: 'boolean', default: true, description: 'also run llama.cpp through node-llama-cpp' },
      llamaBench: {
        type: 'string',
        placeholder: 'path',
        description: 'also run this natively built llama-bench (scripts/build-llama-bench.sh)',
      },
      weights: WEIGHTS_OPTION,
      markdown: { type: 'boolean', description: 'print Markdown tables ready for BENCHMARKS.md' },
    },
    examples: [
      'steerguard bench .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf',
      'steerguard bench model.gguf --threads 4 --repeats 5 --max-load 0.5 --markdown >> BENCHMARKS.md',
      'steerguard bench model.gguf --llama-bench .cache/llama.cpp/llama-bench --no-llamacpp',
      'steerguard bench model.gguf --prompts 1 --gen-tokens 16 --repeats 2 --batch 4 --no-hook-overhead --json',
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
        batch: o.batch,
        maxLoad: o.maxLoad ?? null,
        llamaBench: o.llamaBench ?? null,
      },
      (line) => out.info(line),
    );
    if (report.llamacppError && o.llamacpp) out.warn(`llama.cpp was not measured: ${report.llamacppError}`);
    if (report.busy) {
      out.warn(
        `the machine was busy: other processes' 1-minute load reached ${report.load.othersMax.toFixed(2)} ` +
          `(above ${report.load.busyAbove.toFixed(2)} on ${report.machine.availableParallelism} cores with ` +
          `${o.threads} engine threads); these figures are not comparable`,
      );
    }
    out.result(report, o.markdown ? formatBenchMarkdown : formatBenchText);
  },
);

export const benchWorkerCommand = command(
  {
    name: 'bench-worker',
    summary: 'one engine of `steerguard bench` (internal)',
    description:
      'Measures one engine once (after a warm-up) and prints one JSON line on stdout. Started by `steerguard bench`, once per engine and repeat.',
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
      repeat: {
        type: 'number',
        integer: true,
        min: 0,
        max: 99,
        default: 0,
        description: 'which repeat this is, from 0 (rotates the order of the hook settings)',
      },
    },
    examples: [
      'steerguard bench-worker --engine steerguard --model m.gguf --tokens-file p.json --threads 2 --gen-tokens 64 --repeat 0',
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

export const benchServeCommand = command(
  {
    name: 'bench-serve',
    summary:
      'load-test steerguard serve: concurrency, the no-mix-up check under overload, the monitor’s cost',
    description: para(
      'Starts `steerguard serve` itself on 127.0.0.1 (a child process, any free port; nothing is exposed) ' +
        'and drives it with streaming chat clients, greedy: each prompt alone, one at a time (the reference ' +
        'replies); --clients concurrent clients × --requests-per-client (aggregate tokens/s and its ratio to ' +
        'one client), and the same on a second server with a monitor and per-token scores (its cost in ' +
        'tokens/s), the two interleaved for --rounds rounds; --overload-clients at once against --batch + --queue places (every answer must be 200 ' +
        'or 429 and every 200 reply equal to its prompt’s reply alone; the server’s peak RSS). ' +
        'Prints Markdown (--json: the report) with time to first token p50/p99 and per-request tokens/s, with the machine and its load. Counts ' +
        'are bounded and the run stops past --timeout. Exits 1 when the no-mix-up check fails.',
    ),
    options: {
      model: MODEL_OPTION,
      reading: {
        type: 'string',
        placeholder: 'reading.json',
        description: 'the monitor of the monitor phase (default: a reading with a random direction)',
      },
      threads: {
        type: 'number',
        integer: true,
        min: 1,
        max: 256,
        default: 2,
        description: 'serve --threads',
      },
      batch: { type: 'number', integer: true, min: 1, max: 64, default: 8, description: 'serve --batch' },
      queue: { type: 'number', integer: true, min: 0, max: 256, default: 16, description: 'serve --queue' },
      clients: {
        type: 'number',
        integer: true,
        min: 1,
        max: 64,
        default: 8,
        description: 'concurrent clients of the concurrent and monitor phases',
      },
      requestsPerClient: {
        type: 'number',
        integer: true,
        min: 1,
        max: 16,
        default: 1,
        description: 'requests each concurrent client sends per round, one after the other',
      },
      rounds: {
        type: 'number',
        integer: true,
        min: 1,
        max: 8,
        default: 2,
        description: 'rounds of the concurrent phase, each without and with the monitor, interleaved',
      },
      overloadClients: {
        type: 'number',
        integer: true,
        min: 1,
        max: 256,
        default: 64,
        description: 'clients sending at once in the overload phase',
      },
      prompts: {
        type: 'number',
        integer: true,
        min: 1,
        max: SERVE_BENCH_MAX_PROMPTS,
        default: 8,
        description: 'distinct prompts',
      },
      maxTokens: {
        type: 'number',
        integer: true,
        min: 2,
        max: 512,
        default: 32,
        description: 'max_tokens of every request',
      },
      timeout: {
        type: 'number',
        min: 10,
        max: 3600,
        default: 600,
        description: 'seconds the whole run may take; past it the servers are stopped and the run fails',
      },
    },
    examples: [
      'steerguard bench-serve -m .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf',
      'steerguard bench-serve -m model.gguf --clients 2 --overload-clients 8 --queue 2 --batch 2 --max-tokens 8 --json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    checkInputFile('--reading', o.reading);
    const report = await runServeBench(
      {
        model: o.model,
        threads: o.threads,
        batch: o.batch,
        queue: o.queue,
        clients: o.clients,
        requestsPerClient: o.requestsPerClient,
        rounds: o.rounds,
        overloadClients: o.overloadClients,
        prompts: o.prompts,
        maxTokens: o.maxTokens,
        reading: o.reading,
        timeoutSeconds: o.timeout,
      },
      (line) => out.info(line),
    );
    const command = `steerguard ${process.argv.slice(2).join(' ')}`;
    out.result(report, (r) => `${formatServeBenchMarkdown(r, command)}\n`);
    if (!report.noMixUp)
      throw new SteerguardError(
        'the no-mix-up check failed: a reply differed from its reply alone, or a status was not 200/429',
      );
  },
);
