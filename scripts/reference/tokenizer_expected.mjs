// Produce llama.cpp's own tokenization of test/fixtures/tokenizer/strings.json for the GGUF models,
// using the optional node-llama-cpp dependency (vocab only, CPU), for test/tokenizer.test.ts.
//
// Usage: node scripts/reference/tokenizer_expected.mjs [MODELS_DIR]   (default .cache/models)
// Writes test/fixtures/tokenizer/llamacpp_expected.json. Special tokens in the text are parsed
// (as Tokenizer.encode does); BOS is not included, the test prepends it where the model adds one.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getLlama } from 'node-llama-cpp';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixtures = join(root, 'test', 'fixtures', 'tokenizer');
const modelsDir = process.argv[2] ?? join(root, '.cache', 'models');
const { strings } = JSON.parse(readFileSync(join(fixtures, 'strings.json'), 'utf8'));

const llama = await getLlama({ gpu: false, build: 'never' });
const out = { source: 'llama.cpp via node-llama-cpp (tokenize with special tokens parsed)' };
for (const [key, file] of [
  ['gemma3', 'gemma-3-270m-q4_k_m.gguf'],
  ['smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf'],
]) {
  const model = await llama.loadModel({ modelPath: join(modelsDir, file), vocabOnly: true });
  out[key] = {
    file,
    bos: model.tokens.bos,
    eos: model.tokens.eos,
    addsBos: model.tokens.shouldPrependBosToken,
    ids: strings.map((s) => Array.from(model.tokenize(s, true))),
  };
  await model.dispose();
}
await llama.dispose();
writeFileSync(join(fixtures, 'llamacpp_expected.json'), JSON.stringify(out) + '\n');
console.log(`wrote ${strings.length} strings for gemma3 and smollm2`);
