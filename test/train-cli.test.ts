/**
 * `steerguard train lora` on a tiny fixture model (token-id rows: the tiny models have no
 * tokenizer), and `--adapter` on `generate` with SmolLM2 (skipped when its file is missing).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { LORA_TARGETS } from '../src/model/lora.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import { createLora } from '../src/training/lora.js';
import { PEFT_CONFIG_FILE, loadPeftAdapter, savePeftAdapter } from '../src/training/peft.js';
import { cli } from './util/cli.js';
import { FIXTURES, ROOT, SMOLLM2_GGUF, missingModel } from './util/fixtures.js';

const scratch = mkdtempSync(path.join(tmpdir(), 'steerguard-train-cli-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const TINY = path.join(FIXTURES, 'tiny', 'llama');

describe('steerguard train lora', () => {
  const data = path.join(scratch, 'tokens.jsonl');
  const random = seededRandom(4);
  writeFileSync(
    data,
    Array.from({ length: 8 }, () => {
      const tokens = Array.from({ length: 7 }, () => Math.floor(random() * 256));
      return JSON.stringify({ tokens, answer: tokens.map((_, t) => (t >= 4 ? 1 : 0)) });
    }).join('\n'),
  );
  const out = path.join(scratch, 'adapter');
  const args = [
    'train',
    'lora',
    '-m',
    TINY,
    '--data',
    data,
    '--targets',
    'q,v,down',
    '--rank',
    '2',
    '--alpha',
    '4',
    '--epochs',
    '2',
    '--lr',
    '1e-2',
    '--batch',
    '2',
    '--warmup',
    '1',
    '--val-split',
    '0.25',
    '--out',
    out,
    '--json',
  ];

  test('trains, writes a PEFT adapter, a log and a checkpoint', async () => {
    const r = cli(args, { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout) as { step: number; heldOutLoss: number; lastLoss: number };
    assert.equal(result.step, 6); // 6 training sequences, 2 per step, 2 epochs
    assert.ok(Number.isFinite(result.heldOutLoss) && Number.isFinite(result.lastLoss));
    const model = await Model.load(TINY, { weights: 'f32' });
    const adapter = loadPeftAdapter(out, model.config);
    assert.deepEqual(adapter.targets, ['q', 'v', 'down']);
    const log = JSON.parse(readFileSync(path.join(out, 'training-log.json'), 'utf8')) as {
      log: { steps: unknown[]; validation: unknown[] };
      sequences: { train: number; val: number };
      finished: boolean;
    };
    assert.equal(log.log.steps.length, 6);
    assert.equal(log.log.validation.length, 2);
    assert.deepEqual(log.sequences, { train: 6, val: 2, dropped: 0, truncated: 0 });
    assert.ok(log.finished);
    assert.ok(existsSync(path.join(out, 'training-checkpoint.safetensors')));
  });

  test('a second run needs --resume; resuming a finished run changes nothing', () => {
    const again = cli(args);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /holds a training checkpoint; pass --resume/);
    const before = readFileSync(path.join(out, 'adapter_model.safetensors'));
    const resumed = cli([...args, '--resume']);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.deepEqual(readFileSync(path.join(out, 'adapter_model.safetensors')), before);
    const changed = cli([...args.map((a) => (a === '1e-2' ? '2e-2' : a)), '--resume']);
    assert.notEqual(changed.code, 0);
    assert.match(changed.stderr, /other settings or data \(lr\)/);
  });

  test('bad data: a rank of 0, a chat for a model without a tokenizer, no file', () => {
    const rank0 = cli([...args.map((a) => (a === out ? path.join(scratch, 'r0') : a)), '--rank', '0']);
    assert.equal(rank0.code, 2, rank0.stderr);
    const chats = path.join(scratch, 'chats.jsonl');
    writeFileSync(chats, JSON.stringify({ prompt: 'p', response: 'r' }));
    const noTokenizer = cli([
      ...args.map((a) => (a === data ? chats : a === out ? path.join(scratch, 'c') : a)),
    ]);
    assert.equal(noTokenizer.code, 1);
    assert.match(noTokenizer.stderr, /no tokenizer/);
    const missing = cli([
      ...args.map((a) =>
        a === data ? path.join(scratch, 'nope.jsonl') : a === out ? path.join(scratch, 'm') : a,
      ),
    ]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /nope\.jsonl: cannot read/);
  });
});

describe('train lora: Ctrl-C', () => {
  test('interrupted, it checkpoints and exits 130; --resume ends where a straight run ends', async () => {
    const data = path.join(scratch, 'many.jsonl');
    const random = seededRandom(9);
    writeFileSync(
      data,
      Array.from({ length: 300 }, () => {
        const tokens = Array.from({ length: 8 }, () => Math.floor(random() * 256));
        return JSON.stringify({ tokens, answer: tokens.map((_, t) => (t >= 4 ? 1 : 0)) });
      }).join('\n'),
    );
    const args = (out: string) => [
      'train',
      'lora',
      '-m',
      TINY,
      '--data',
      data,
      '--targets',
      'q,down',
      '--rank',
      '2',
      '--lr',
      '1e-3',
      '--checkpoint-every',
      '50',
      '--out',
      out,
    ];
    const interrupted = path.join(scratch, 'interrupted');
    const child = spawn(
      process.execPath,
      [path.join(ROOT, 'dist', 'src', 'cli', 'main.js'), ...args(interrupted)],
      {
        cwd: ROOT,
      },
    );
    let stderr = '';
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        // The first step's line: the loop (and its Ctrl-C handler) is running.
        if (/step 1\/300/.test(stderr) && !child.killed) child.kill('SIGINT');
      });
      child.on('close', resolve);
    });
    assert.equal(code, 130, stderr);
    assert.match(stderr, /interrupted at step \d+ of 300; --resume continues/);
    assert.ok(!existsSync(path.join(interrupted, PEFT_CONFIG_FILE)), 'no adapter from an unfinished run');
    const resumed = cli([...args(interrupted), '--resume'], { timeoutMs: 300_000 });
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stderr, /resumed from step \d+/);
    const straight = path.join(scratch, 'straight');
    assert.equal(cli(args(straight), { timeoutMs: 300_000 }).code, 0);
    assert.deepEqual(
      readFileSync(path.join(interrupted, 'adapter_model.safetensors')),
      readFileSync(path.join(straight, 'adapter_model.safetensors')),
    );
  });
});

describe('generate --adapter', { skip: missingModel(SMOLLM2_GGUF) ?? false }, () => {
  test("the command's greedy tokens are the library's with the adapter; another model's adapter is refused", async () => {
    const model = await Model.load(SMOLLM2_GGUF);
    const adapter = createLora(
      model.config,
      { rank: 4, alpha: 8, targets: LORA_TARGETS, seed: 1 },
      (n) => new Float32Array(n),
    );
    const random = seededRandom(2);
    for (const layer of adapter.layers)
      for (const t of LORA_TARGETS) {
        const b = layer[t]!.b;
        for (let i = 0; i < b.length; i++) b[i] = (2 * random() - 1) * 0.5;
      }
    const dir = path.join(scratch, 'smol-adapter');
    savePeftAdapter(dir, adapter, model.config);
    const prompt = 'The capital of France is';
    const opts = { maxNewTokens: 8, stopTokens: [] as number[] };
    const [base] = await model.generate([prompt], opts);
    model.addAdapter(loadPeftAdapter(dir, model.config));
    const [adapted] = await model.generate([prompt], opts);
    assert.notDeepEqual(adapted.tokens, base.tokens, 'the adapter should change the greedy tokens');
    const r = cli(
      ['generate', SMOLLM2_GGUF, prompt, '--no-chat', '--max-tokens', '8', '--adapter', dir, '--json'],
      {
        timeoutMs: 120_000,
      },
    );
    assert.equal(r.code, 0, r.stderr);
    const [report] = JSON.parse(r.stdout) as { tokens: number[] }[];
    // The CLI stops at end-of-sequence tokens; compare the tokens it produced.
    assert.deepEqual(report.tokens, adapted.tokens.slice(0, report.tokens.length));
    const wrong = cli([
      'generate',
      SMOLLM2_GGUF,
      prompt,
      '--adapter',
      path.join(FIXTURES, 'tiny', 'llama', 'peft', 'adapter'),
    ]);
    assert.equal(wrong.code, 1);
    assert.match(
      wrong.stderr,
      /adapter_model\.safetensors: base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight: shape \[2, 64\]; this model needs \[2, 576\]/,
    );
  });
});
