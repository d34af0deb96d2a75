#!/usr/bin/env node
// Chat transcripts for SAE training and measurement: each prompt and the model's own reply
// rendered through the model's chat template (user turn, then assistant turn), one {"text"} per
// line, ready for `steerguard activations --no-chat --positions all` or `sae eval`.
//   node scripts/sae-transcripts.mjs MODEL OUT.jsonl SOURCE [SOURCE ...]
// A SOURCE is a replies file of `steerguard eval refusal --out` (fields prompt, response) or
// gsm8k:FILE[:N] (a GSM8K JSONL: question as the user turn, the worked answer as the reply; the
// first N rows). Nothing is printed but counts: the prompts come from harmful sets.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';

import { Model } from '../dist/src/index.js';

const [modelPath, out, ...sources] = process.argv.slice(2);
if (!modelPath || !out || sources.length === 0) {
  console.error('usage: node scripts/sae-transcripts.mjs MODEL OUT.jsonl SOURCE [SOURCE ...]');
  process.exit(2);
}
const model = await Model.load(modelPath, { threads: 1 });
const lines = [];
for (const source of sources) {
  const pairs = [];
  if (source.startsWith('gsm8k:')) {
    const [, file, n] = source.split(':');
    const rows = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '');
    for (const [i, l] of rows.slice(0, n ? Number(n) : undefined).entries()) {
      const r = JSON.parse(l);
      if (typeof r.question !== 'string' || typeof r.answer !== 'string')
        throw new Error(`${file} row ${i + 1}: no question/answer`);
      pairs.push([r.question, r.answer]);
    }
  } else {
    const rows = readFileSync(source, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '');
    for (const [i, l] of rows.entries()) {
      const r = JSON.parse(l);
      if (typeof r.prompt !== 'string' || typeof r.response !== 'string')
        throw new Error(`${source} row ${i + 1}: no prompt/response (a redacted replies file?)`);
      pairs.push([r.prompt, r.response]);
    }
  }
  for (const [user, assistant] of pairs) {
    const text = model.tokenizer.applyChatTemplate(
      [
        { role: 'user', content: user },
        { role: 'assistant', content: assistant },
      ],
      { addGenerationPrompt: false },
    );
    lines.push(JSON.stringify({ text }));
  }
  console.error(`${source}: ${pairs.length} transcripts`);
}
writeFileSync(`${out}.tmp`, lines.join('\n') + '\n');
renameSync(`${out}.tmp`, out);
console.error(`wrote ${lines.length} transcripts to ${out}`);
