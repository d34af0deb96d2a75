#!/usr/bin/env node
// Logits of a model with PEFT adapters applied by steerguard, for check_peft_gguf.py to compare
// with transformers + peft. Usage (after `npx tsc -p tsconfig.json`):
//   node scripts/reference/steerguard_adapter_logits.mjs MODEL OUT.safetensors TOKENS_JSON [ADAPTER_DIR...]
// TOKENS_JSON is a JSON list of token-id lists; OUT holds tokens.S and logits.S (fp32 weights).
import { readFileSync } from 'node:fs';
import { writeSafetensors } from '../../dist/src/formats/safetensors.js';
import { Model } from '../../dist/src/model/model.js';
import { loadPeftAdapter } from '../../dist/src/training/peft.js';

const [modelPath, outFile, tokensFile, ...adapters] = process.argv.slice(2);
if (!tokensFile) {
  console.error('usage: steerguard_adapter_logits.mjs MODEL OUT.safetensors TOKENS_JSON [ADAPTER_DIR...]');
  process.exit(2);
}
const sequences = JSON.parse(readFileSync(tokensFile, 'utf8'));
const model = await Model.load(modelPath, { weights: 'f32' });
for (const dir of adapters) model.addAdapter(loadPeftAdapter(dir, model.config));
const { logits } = model.run(
  sequences.map((tokens) => ({ tokens })),
  { logits: 'all' },
);
const V = model.config.vocabSize;
writeSafetensors(
  outFile,
  sequences.flatMap((tokens, s) => [
    { name: `tokens.${s}`, dtype: 'I32', shape: [tokens.length], data: Int32Array.from(tokens) },
    { name: `logits.${s}`, dtype: 'F32', shape: [tokens.length, V], data: logits[s] },
  ]),
);
console.error(`wrote ${outFile}: ${sequences.length} sequences, ${adapters.length} adapters`);
