#!/usr/bin/env node
/**
 * Write the llama.cpp greedy-continuation fixtures test/fixtures/llamacpp/<smollm2|gemma3>.json.
 *
 * For each real model (GGUF in $STEERGUARD_MODELS or .cache/models), the prompt token ids are taken
 * from the transformers parity fixture test/fixtures/parity/<name>.json when it exists (or from
 * --input FILE), else from the small built-in prompt list below, tokenized by llama.cpp (SmolLM2:
 * the GGUF's ChatML chat template with its default system prompt, then special-token parsing;
 * gemma3: BOS + raw text). Each prompt is continued by raw-token greedy decoding (pure argmax, no
 * penalties, EOG tokens kept, no stop before --max-tokens) with node-llama-cpp's prebuilt CPU
 * llama.cpp, through src/reference/llamacpp.ts. The output has no timestamps: rerunning it on the
 * same build gives the same file.
 *
 * Needs the TypeScript build (npx tsc -p tsconfig.json) and the optional node-llama-cpp package.
 * Usage: node scripts/reference/llamacpp_greedy.mjs [--model smollm2|gemma3|all] [--input FILE]
 *          [--max-tokens 32] [--threads 2] [--out-dir test/fixtures/llamacpp]
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCRIPT = relative(ROOT, fileURLToPath(import.meta.url));

const MODELS = {
  smollm2: { file: 'SmolLM2-135M-Instruct.Q4_1.gguf', chat: true },
  gemma3: { file: 'gemma-3-270m-q4_k_m.gguf', chat: false },
};

/** Used only when no parity fixture gives the prompt ids. */
const BUILTIN_PROMPTS = [
  'What is the capital of France?',
  'Write a haiku about the ocean.',
  'Explain in one sentence why the sky is blue.',
  'List three prime numbers.',
];

/** SmolLM2's default system prompt (also in its chat template, which adds it when none is given). */
const SMOLLM2_SYSTEM = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: 'all' },
    input: { type: 'string' },
    'max-tokens': { type: 'string', default: '32' },
    threads: { type: 'string', default: '2' },
    'out-dir': { type: 'string', default: join('test', 'fixtures', 'llamacpp') },
  },
});
const maxTokens = Number(args['max-tokens']);
const threads = Number(args.threads);
const names = args.model === 'all' ? Object.keys(MODELS) : [args.model];
for (const n of names) {
  if (!(n in MODELS)) fail(`unknown --model ${n} (smollm2, gemma3 or all)`);
}
if (args.input && names.length !== 1) fail('--input needs a single --model');

function fail(message) {
  console.error(`llamacpp_greedy: ${message}`);
  process.exit(1);
}

const distWrapper = join(ROOT, 'dist', 'src', 'reference', 'llamacpp.js');
if (!existsSync(distWrapper))
  fail(`${relative(ROOT, distWrapper)} is missing: run npx tsc -p tsconfig.json first`);
const { loadLlamaCpp, GET_LLAMA_OPTIONS, GREEDY_EVALUATE_OPTIONS } = await import(
  pathToFileURL(distWrapper).href
);

async function sha256(file) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk);
  return hash.digest('hex');
}

const isIdArray = (v) => Array.isArray(v) && v.length > 0 && v.every((x) => Number.isInteger(x) && x >= 0);

/**
 * Prompt cases of a parity fixture (scripts/reference/make_parity_fixtures.py): `prompts` is a
 * list of {user?, text, ids}; `generation.runs` holds transformers' greedy continuations
 * ({prompt_index, new_tokens}) for some of them, compared below with llama.cpp's.
 */
function promptsFromParity(json, file) {
  if (!Array.isArray(json?.prompts) || !json.prompts.every((p) => isIdArray(p?.ids))) {
    fail(`${file}: expected a "prompts" list of objects with "ids" (token id arrays)`);
  }
  const hf = new Map();
  for (const run of json.generation?.runs ?? []) {
    if (Number.isInteger(run?.prompt_index) && isIdArray(run?.new_tokens))
      hf.set(run.prompt_index, run.new_tokens);
  }
  return json.prompts.map((p, i) => ({
    name: typeof p.user === 'string' ? p.user : typeof p.text === 'string' ? p.text : `prompt ${i}`,
    parityIndex: i,
    promptIds: p.ids,
    transformersIds: hf.get(i),
  }));
}

/** Number of leading tokens two continuations share. */
function commonPrefix(a, b) {
  let k = 0;
  while (k < a.length && k < b.length && a[k] === b[k]) k++;
  return k;
}

async function renderChat(template, user) {
  const { Template } = await import('@huggingface/jinja');
  return new Template(template).render({
    messages: [
      { role: 'system', content: SMOLLM2_SYSTEM },
      { role: 'user', content: user },
    ],
    add_generation_prompt: true,
    bos_token: '',
    eos_token: '',
  });
}

async function builtinPrompts(handle, chat) {
  const cases = [];
  for (const prompt of BUILTIN_PROMPTS) {
    if (chat) {
      if (!handle.info.chatTemplate) fail(`${handle.info.modelPath} has no chat template`);
      const rendered = await renderChat(handle.info.chatTemplate, prompt);
      cases.push({ name: prompt, rendered, promptIds: handle.tokenize(rendered, { special: true }) });
    } else {
      const ids = handle.tokenize(prompt, { special: false });
      const bos = handle.info.bosTokenId;
      cases.push({ name: prompt, rendered: prompt, promptIds: bos == null ? ids : [bos, ...ids] });
    }
  }
  return cases;
}

const modelsDir = process.env.STEERGUARD_MODELS ?? join(ROOT, '.cache', 'models');
const outDir = resolve(ROOT, args['out-dir']);
mkdirSync(outDir, { recursive: true });

for (const name of names) {
  const { file, chat } = MODELS[name];
  const gguf = join(modelsDir, file);
  if (!existsSync(gguf)) fail(`${gguf} is missing: run npm run fetch-models`);

  // F32 KV cache and no flash attention: the fewest approximations beyond the GGUF's own
  // quantization (llama.cpp's default F16 KV cache flips near-tie tokens of these small models).
  const loadOptions = {
    threads,
    contextSize: 1024,
    batchSize: 512,
    flashAttention: false,
    kvCacheType: 'F32',
  };
  const t0 = performance.now();
  const handle = await loadLlamaCpp(gguf, { ...loadOptions, logLevel: 'error' });
  try {
    const parityFile = args.input ?? join(ROOT, 'test', 'fixtures', 'parity', `${name}.json`);
    let promptSource;
    let cases;
    if (existsSync(parityFile)) {
      cases = promptsFromParity(JSON.parse(readFileSync(parityFile, 'utf8')), parityFile);
      promptSource = `${relative(ROOT, parityFile)}: prompts[i].ids (token ids from transformers)`;
    } else {
      cases = await builtinPrompts(handle, chat);
      promptSource = chat
        ? `built-in prompts, chat template from the GGUF metadata (system: "${SMOLLM2_SYSTEM}", add_generation_prompt), tokenized by llama.cpp with special-token parsing`
        : 'built-in prompts, BOS + text tokenized by llama.cpp without special-token parsing';
    }

    const out = [];
    for (const c of cases) {
      const greedyIds = await handle.greedy(c.promptIds, maxTokens);
      const steps = await handle.greedyWithMargins(c.promptIds, maxTokens);
      if (steps.ids.join() !== greedyIds.join()) {
        fail(`${name}: ${JSON.stringify(c.name)}: evaluate() greedy and the raw-logit argmax disagree`);
      }
      out.push({
        name: c.name,
        ...(c.parityIndex === undefined ? {} : { parityIndex: c.parityIndex }),
        promptIds: c.promptIds,
        promptText: handle.detokenize(c.promptIds, { special: true }),
        greedyIds,
        greedyText: handle.detokenize(greedyIds, { special: true }),
        // Top logit minus runner-up per step: near-ties (small margins) are where another
        // implementation may legitimately diverge.
        margins: steps.margins.map((m) => Number(m.toFixed(4))),
        // Leading tokens shared with transformers' fp32 greedy run of the parity fixture, if any.
        ...(c.transformersIds ? { sameAsTransformersFor: commonPrefix(greedyIds, c.transformersIds) } : {}),
      });
      console.error(
        `${name}: ${JSON.stringify(c.name.slice(0, 60))} -> ${JSON.stringify(out.at(-1).greedyText)}`,
      );
    }

    const llamaCpp = { ...handle.info };
    delete llamaCpp.chatTemplate; // long, and in the GGUF anyway
    delete llamaCpp.modelPath; // machine-specific
    const fixture = {
      description:
        'Raw-token greedy continuations of the prompt ids by llama.cpp (node-llama-cpp, prebuilt CPU binary). ' +
        'Pure argmax: no sampling, no penalties, EOG tokens kept, nothing added to the prompt ids. ' +
        'Checked against the argmax of the raw logits at every step (margins = top1 - top2 logit).',
      generator: `node ${SCRIPT}`,
      model: { name, file, sha256: await sha256(gguf) },
      llamaCpp,
      options: {
        getLlama: GET_LLAMA_OPTIONS,
        load: loadOptions,
        evaluate: GREEDY_EVALUATE_OPTIONS,
        sequence: 'fresh (clearHistory) per prompt; no context shift; interval checkpoints off',
        maxTokens,
      },
      promptSource,
      cases: out,
    };
    const outFile = join(outDir, `${name}.json`);
    writeFileSync(outFile, JSON.stringify(fixture, null, 2) + '\n');
    console.error(
      `${name}: wrote ${relative(ROOT, outFile)} (${out.length} prompts, ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
  } finally {
    await handle.dispose();
  }
}
