#!/usr/bin/env node
/**
 * Larger models on the engine: Qwen2.5-Coder-1.5B-Instruct generates, and a Qwen2.5-7B-shaped GGUF
 * of random weights loads within 24 GiB and gives finite logits (docs/ENGINE.md, "Larger models").
 *
 *   npx tsc -p tsconfig.json
 *   /work/pyref/bin/python scripts/reference/make_random_gguf.py --arch qwen2 --preset qwen2.5-7b \
 *       --type Q4_0 --out /tmp/qwen2.5-7b-random-q4_0.gguf
 *   node scripts/check-large-models.mjs --random-7b /tmp/qwen2.5-7b-random-q4_0.gguf [--threads N]
 *
 * 1.5B (`--model-1p5b`, default .cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf, from
 * `npm run fetch-models -- --large`; its sha256 is checked): 32 greedy tokens for one chat prompt,
 * never stopping early. 7B (`--random-7b`, left out when not given): one forward pass over 16 token
 * ids with the logits of every position, then a 4-token greedy generation. Both load with the
 * default weight storage ('quantized' on the native engine), and every logit is checked to be
 * finite: the 7B's forward pass returns all [16, V], and a hook on `logits` sees each generation step's.
 *
 * Each model runs in its own child process so that its peak RSS (process.resourceUsage().maxRSS)
 * is its own. Prints one JSON object; exits 1 if a logit is not finite, a peak RSS is over 24 GiB,
 * or a run fails. Prompt tokens/s is the prompt pass (for the 1.5B, generation step 0, which also
 * picks the first token); generation tokens/s counts the decoding steps after it.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SCRIPT = fileURLToPath(import.meta.url);
const MODEL_1P5B = '.cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf';
const MODEL_1P5B_SHA256 = 'cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046';
const CHAT_PROMPT = 'Write a Python function that reverses a string.';
const GEN_TOKENS_1P5B = 32;
const PROMPT_TOKENS_7B = 16;
const GEN_TOKENS_7B = 4;
const RSS_LIMIT_BYTES = 24 * 2 ** 30;

const { values: opts } = parseArgs({
  options: {
    'model-1p5b': { type: 'string', default: MODEL_1P5B },
    'random-7b': { type: 'string' },
    threads: { type: 'string' },
    // internal: run one check ('chat': the 1.5B, 'random': the 7B) in this process, print its figures
    part: { type: 'string' },
    file: { type: 'string' },
  },
});
const threads = opts.threads === undefined ? undefined : Number(opts.threads);
if (threads !== undefined && !(Number.isInteger(threads) && threads > 0)) {
  console.error(`--threads must be a positive integer, got ${JSON.stringify(opts.threads)}`);
  process.exit(2);
}

async function sha256(file) {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk);
  return h.digest('hex');
}

/** A hook on `logits` that counts the values it sees and the non-finite ones among them. */
function logitChecker() {
  const seen = { values: 0, nonFinite: 0 };
  const hook = {
    name: 'logits',
    fn: (act) => {
      seen.values += act.length;
      for (let i = 0; i < act.length; i++) if (!Number.isFinite(act[i])) seen.nonFinite++;
    },
  };
  return { hook, seen };
}

/**
 * Generates from `prompt` with the logit checker, timing the prompt pass (step 0) apart from the
 * decoding steps: hook_embed fires first in every forward pass, so step 1's marks their start.
 */
async function timedGenerate(model, prompt, maxNewTokens, checker) {
  let stepOne = 0;
  const timer = {
    name: 'hook_embed',
    fn: (_act, ctx) => {
      if (ctx.step === 1) stepOne = performance.now();
    },
  };
  const start = performance.now();
  const [out] = await model.generate([prompt], {
    maxNewTokens,
    stopTokens: [],
    hooks: [timer, checker.hook],
  });
  const end = performance.now();
  return {
    out,
    promptSeconds: (stepOne - start) / 1000,
    decodeSteps: out.tokens.length - 1,
    decodeSeconds: (end - stepOne) / 1000,
  };
}

async function runPart(part, file) {
  const { Model } = await import(pathToFileURL(resolve(ROOT, 'dist/src/index.js')).href);
  const { weightBytes } = await import(pathToFileURL(resolve(ROOT, 'dist/src/cli/commands/info.js')).href);
  const t0 = performance.now();
  const model = await Model.load(file, { threads });
  const loadSeconds = (performance.now() - t0) / 1000;
  const checker = logitChecker();
  const report = {
    check: part,
    file,
    fileBytes: statSync(file).size,
    backend: model.backend.name,
    weightsInMemoryBytes: weightBytes(model),
    loadSeconds,
  };
  if (part === 'chat') {
    const prompt = { messages: [{ role: 'user', content: CHAT_PROMPT }] };
    const g = await timedGenerate(model, prompt, GEN_TOKENS_1P5B, checker);
    Object.assign(report, {
      promptTokens: g.out.promptTokens.length,
      promptTokensPerSecond: g.out.promptTokens.length / g.promptSeconds,
      generatedTokens: g.out.tokens.length,
      genTokensPerSecond: g.decodeSteps / g.decodeSeconds,
      replyStart: g.out.text.slice(0, 80),
    });
  } else {
    const V = model.config.vocabSize;
    // Spread over the vocabulary (7919 is prime, so the ids are distinct).
    const tokens = Array.from({ length: PROMPT_TOKENS_7B }, (_, i) => (1 + i * 7919) % V);
    const t = performance.now();
    const [logits] = model.run([{ tokens }], { logits: 'all' }).logits;
    const runSeconds = (performance.now() - t) / 1000;
    checker.seen.values += logits.length;
    for (const v of logits) if (!Number.isFinite(v)) checker.seen.nonFinite++;
    const g = await timedGenerate(model, { tokens }, GEN_TOKENS_7B, checker);
    Object.assign(report, {
      promptTokens: tokens.length,
      promptTokensPerSecond: tokens.length / runSeconds,
      generatedTokens: g.out.tokens.length,
      generatedIds: g.out.tokens,
      genTokensPerSecond: g.decodeSteps / g.decodeSeconds,
    });
  }
  report.logitsChecked = checker.seen.values;
  report.logitsNonFinite = checker.seen.nonFinite;
  report.logitsFinite = checker.seen.nonFinite === 0 && checker.seen.values > 0;
  report.peakRssBytes = process.resourceUsage().maxRSS * 1024;
  return report;
}

/** Runs one model in a child process; its stdout is the report, its stderr passes through. */
function spawnPart(part, file) {
  const args = [SCRIPT, '--part', part, '--file', file];
  if (threads !== undefined) args.push('--threads', String(threads));
  const child = spawnSync(process.execPath, args, {
    cwd: ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 20,
  });
  if (child.status !== 0) return { check: part, file, error: `exited with ${child.status ?? child.signal}` };
  return JSON.parse(child.stdout);
}

function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  return {
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown',
    cpus: os.availableParallelism(),
    ramBytes: os.totalmem(),
    // the machine is shared: the one-minute load average at the end puts the speeds in context
    loadAverage: os.loadavg()[0],
    node: process.version,
    date: new Date().toISOString(),
  };
}

if (opts.part !== undefined) {
  if (opts.part !== 'chat' && opts.part !== 'random') throw new Error(`unknown --part ${opts.part}`);
  process.stdout.write(JSON.stringify(await runPart(opts.part, opts.file)) + '\n');
} else {
  const problems = [];
  const models = [];
  const small = resolve(ROOT, opts['model-1p5b']);
  const digest = await sha256(small);
  if (opts['model-1p5b'] === MODEL_1P5B && digest !== MODEL_1P5B_SHA256)
    problems.push(`${small}: sha256 ${digest}, expected ${MODEL_1P5B_SHA256}`);
  else models.push({ ...spawnPart('chat', small), sha256: digest });
  if (opts['random-7b'] !== undefined) models.push(spawnPart('random', resolve(opts['random-7b'])));
  for (const m of models) {
    if (m.error) problems.push(`${m.file}: ${m.error}`);
    else if (!m.logitsFinite)
      problems.push(`${m.file}: ${m.logitsNonFinite} of ${m.logitsChecked} logits are not finite`);
    if (m.peakRssBytes > RSS_LIMIT_BYTES)
      problems.push(`${m.file}: peak RSS ${m.peakRssBytes} bytes is over 24 GiB`);
  }
  const ok = problems.length === 0;
  process.stdout.write(JSON.stringify({ machine: machine(), models, ok, problems }, null, 2) + '\n');
  process.exit(ok ? 0 : 1);
}
