// Tokenizers against their references, on the strings of test/fixtures/tokenizer/strings.json:
//  - SmolLM2 tokenizer.json   == transformers AutoTokenizer (smollm2_expected.json, made by
//    scripts/reference/tokenizer_expected.py)
//  - SmolLM2 GGUF tokenizer   == the same ids, and == llama.cpp (llamacpp_expected.json, made by
//    scripts/reference/tokenizer_expected.mjs through node-llama-cpp)
//  - Gemma 3 GGUF tokenizer   == llama.cpp
// plus decode round trips, chat templates against transformers' apply_chat_template, streaming
// decode, and small synthetic vocabularies that need no model files.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { FormatError } from '../src/formats/errors.js';
import { readGguf } from '../src/formats/gguf.js';
import { type ChatMessage, Tokenizer } from '../src/formats/tokenizer.js';
import { FIXTURES, GEMMA3_GGUF, SHARED, SMOLLM2_GGUF, missingModel } from './util/fixtures.js';

const FIX = join(FIXTURES, 'tokenizer');
const json = <T>(name: string): T => JSON.parse(readFileSync(join(FIX, name), 'utf8')) as T;

const { strings } = json<{ strings: string[] }>('strings.json');
interface ChatCase {
  messages: ChatMessage[];
  with_generation_prompt: string;
  without_generation_prompt: string;
}
const HF = json<{ ids: number[][]; ids_with_special_tokens: number[][]; chat: Record<string, ChatCase> }>(
  'smollm2_expected.json',
);
const LLAMACPP =
  json<Record<'gemma3' | 'smollm2', { ids: number[][]; bos: number; addsBos: boolean }>>(
    'llamacpp_expected.json',
  );
const SMOL_CONFIG = join(FIX, 'smollm2_tokenizer_config.json');

const SMOL_JSON = join(
  process.env.STEERGUARD_SMOLLM2_TOKENIZER ?? join(SHARED, 'models', 'SmolLM2-135M-Instruct-tokenizer'),
  'tokenizer.json',
);
const missingJson = existsSync(SMOL_JSON)
  ? undefined
  : `${SMOL_JSON} is missing (set STEERGUARD_SMOLLM2_TOKENIZER)`;

// Loaded once per file and shared by the tests below.
const cache = new Map<string, Tokenizer>();
function smolJson(): Tokenizer {
  if (!cache.has('json')) cache.set('json', Tokenizer.fromHfFiles(SMOL_JSON, SMOL_CONFIG));
  return cache.get('json')!;
}
function fromGguf(path: string): Tokenizer {
  if (!cache.has(path)) cache.set(path, Tokenizer.fromGgufMetadata(readGguf(path).metadata, path));
  return cache.get(path)!;
}

function assertIds(tok: Tokenizer, expected: number[][], opts: { addSpecialTokens: boolean }, label: string) {
  assert.equal(expected.length, strings.length);
  const bad: string[] = [];
  strings.forEach((s, i) => {
    const got = tok.encode(s, opts);
    if (JSON.stringify(got) !== JSON.stringify(expected[i])) {
      bad.push(
        `${JSON.stringify(s)}\n  got      ${JSON.stringify(got)}\n  expected ${JSON.stringify(expected[i])}`,
      );
    }
  });
  assert.equal(
    bad.length,
    0,
    `${label}: ${bad.length} of ${strings.length} strings differ:\n${bad.join('\n')}`,
  );
}

function assertRoundTrip(tok: Tokenizer) {
  for (const s of strings) {
    assert.equal(
      tok.decode(tok.encode(s, { addSpecialTokens: false })),
      s,
      `round trip of ${JSON.stringify(s)}`,
    );
  }
}

test('SmolLM2 tokenizer.json matches transformers AutoTokenizer', { skip: missingJson ?? false }, () => {
  const tok = smolJson();
  assert.ok(strings.length >= 30);
  assertIds(tok, HF.ids, { addSpecialTokens: false }, 'without special tokens');
  // SmolLM2 adds no BOS: with special tokens the ids are the same.
  assertIds(tok, HF.ids_with_special_tokens, { addSpecialTokens: true }, 'with special tokens');
  assertRoundTrip(tok);
  assert.equal(tok.vocabSize, 49152);
  assert.equal(tok.bosTokenId, 1);
  assert.deepEqual(tok.eosTokenIds, [2, 0]);
  assert.equal(tok.tokenToString(905), 'Ġworld');
  assert.equal(tok.tokenToId('<|im_end|>'), 2);
  assert.ok(tok.isSpecialToken(1) && !tok.isSpecialToken(905));
});

test(
  'SmolLM2 GGUF tokenizer gives the same ids as tokenizer.json and llama.cpp',
  { skip: missingModel(SMOLLM2_GGUF) ?? false },
  () => {
    const tok = fromGguf(SMOLLM2_GGUF);
    assertIds(tok, HF.ids, { addSpecialTokens: false }, 'vs transformers');
    assertIds(tok, HF.ids_with_special_tokens, { addSpecialTokens: true }, 'vs transformers, special');
    assertIds(tok, LLAMACPP.smollm2.ids, { addSpecialTokens: false }, 'vs llama.cpp');
    assertRoundTrip(tok);
    assert.equal(tok.vocabSize, 49152);
    assert.equal(tok.bosTokenId, 1);
    assert.deepEqual(tok.eosTokenIds, [2, 0]);
  },
);

test('Gemma 3 GGUF tokenizer matches llama.cpp', { skip: missingModel(GEMMA3_GGUF) ?? false }, (t) => {
  const meta = readGguf(GEMMA3_GGUF).metadata;
  const started = performance.now();
  const tok = Tokenizer.fromGgufMetadata(meta, GEMMA3_GGUF);
  const buildMs = performance.now() - started;
  t.diagnostic(`fromGgufMetadata on 262144 tokens: ${buildMs.toFixed(0)} ms`);
  assert.ok(buildMs < 3000, `building the Gemma tokenizer took ${buildMs.toFixed(0)} ms`);

  assertIds(tok, LLAMACPP.gemma3.ids, { addSpecialTokens: false }, 'vs llama.cpp');
  assert.ok(LLAMACPP.gemma3.addsBos);
  assertIds(
    tok,
    LLAMACPP.gemma3.ids.map((ids) => [LLAMACPP.gemma3.bos, ...ids]),
    { addSpecialTokens: true },
    'vs llama.cpp with BOS',
  );
  assertRoundTrip(tok);
  assert.equal(tok.vocabSize, 262144);
  assert.equal(tok.bosTokenId, 2);
  assert.deepEqual(tok.eosTokenIds, [1, 106]); // <eos>, <end_of_turn>
  assert.equal(tok.tokenToString(107), '\n');
  assert.deepEqual(tok.encode(''), [2]);
  assert.deepEqual(tok.encode('', { addSpecialTokens: false }), []);
});

test(
  'encoding is fast and not quadratic on long inputs',
  { skip: missingModel(GEMMA3_GGUF) ?? false },
  (t) => {
    const tok = fromGguf(GEMMA3_GGUF);
    const unit = 'The quick brown fox jumps over the lazy dog. Ünïcödé 🤗 12345\n';
    const time = (text: string) => {
      const start = performance.now();
      const ids = tok.encode(text);
      return { ms: performance.now() - start, n: ids.length };
    };
    time(unit.repeat(100)); // warm up
    const small = time(unit.repeat(2000));
    const large = time(unit.repeat(8000));
    t.diagnostic(
      `${unit.length * 2000} chars: ${small.ms.toFixed(0)} ms; ${unit.length * 8000} chars: ${large.ms.toFixed(0)} ms`,
    );
    assert.ok(large.n > 4 * small.n - 10);
    assert.ok(large.ms < 4000, `encoding ${unit.length * 8000} chars took ${large.ms.toFixed(0)} ms`);
    // 4x the text should cost roughly 4x the time; 12x leaves room for noise, not for O(n^2).
    assert.ok(large.ms < 12 * small.ms + 50, `4x text took ${(large.ms / small.ms).toFixed(1)}x the time`);
  },
);

test(
  'chat template rendering equals transformers apply_chat_template',
  { skip: missingJson ?? false },
  () => {
    const sources: [string, () => Tokenizer][] = [['tokenizer.json', smolJson]];
    if (!missingModel(SMOLLM2_GGUF)) sources.push(['GGUF', () => fromGguf(SMOLLM2_GGUF)]);
    for (const [label, make] of sources) {
      const tok = make();
      for (const [name, c] of Object.entries(HF.chat)) {
        assert.equal(tok.applyChatTemplate(c.messages), c.with_generation_prompt, `${label} ${name}`);
        assert.equal(
          tok.applyChatTemplate(c.messages, { addGenerationPrompt: false }),
          c.without_generation_prompt,
          `${label} ${name} without generation prompt`,
        );
      }
    }
    const tok = smolJson();
    const oneTurn = HF.chat.one_user_turn;
    // The template's built-in system prompt is used only when there is no system turn.
    assert.match(oneTurn.with_generation_prompt, /named SmolLM/);
    const withSystem = tok.applyChatTemplate(oneTurn.messages, {
      systemPrompt: 'You are a terse assistant.',
    });
    assert.doesNotMatch(withSystem, /named SmolLM/);
    assert.equal(
      withSystem,
      '<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?' +
        '<|im_end|>\n<|im_start|>assistant\n',
    );
    // An explicit systemPrompt replaces a system turn already in the messages.
    const sys = HF.chat.system_and_user;
    assert.equal(
      tok.applyChatTemplate(sys.messages, { systemPrompt: 'Be brief.' }),
      sys.with_generation_prompt.replace('You are a terse assistant.', 'Be brief.'),
    );
    assert.equal(
      tok.formatPrompt('What is the capital of France?', { chat: true }),
      oneTurn.with_generation_prompt,
    );
    assert.equal(tok.formatPrompt('raw text', { chat: false }), 'raw text');
    // The rendered ChatML text is tokenised with its special tokens recognised.
    const ids = tok.encode(oneTurn.with_generation_prompt, { addSpecialTokens: false });
    assert.equal(ids[0], 1);
    assert.equal(ids.filter((id) => id === 2).length, 2);
  },
);

test(
  'a base model without a chat template: clear error, raw prompts still work',
  { skip: missingModel(GEMMA3_GGUF) ?? false },
  () => {
    const tok = fromGguf(GEMMA3_GGUF);
    assert.equal(tok.chatTemplate, undefined);
    assert.throws(
      () => tok.applyChatTemplate([{ role: 'user', content: 'hi' }]),
      (e: unknown) =>
        e instanceof FormatError &&
        e.file === GEMMA3_GGUF &&
        e.field === 'chat_template' &&
        /no chat template/.test(e.message) &&
        /chat: false/.test(e.message),
    );
    assert.throws(() => tok.formatPrompt('hi', { chat: true }), /no chat template/);
    assert.equal(tok.formatPrompt('The capital of France is', { chat: false }), 'The capital of France is');
  },
);

test('streaming decode emits multi-byte characters once, whole', (t) => {
  const toks: [string, () => Tokenizer][] = [];
  if (!missingJson) toks.push(['SmolLM2 tokenizer.json', smolJson]);
  if (!missingModel(GEMMA3_GGUF)) toks.push(['Gemma 3 GGUF', () => fromGguf(GEMMA3_GGUF)]);
  if (toks.length === 0) return t.skip('no real tokenizer available');
  const text = 'Emoji 🦙 and 🤗, math 𝔘𝔫𝔦, hieroglyph 𓀀!';
  for (const [label, make] of toks) {
    const tok = make();
    const ids = tok.encode(text, { addSpecialTokens: false });
    // Precondition: some characters really are split across several tokens.
    assert.ok(
      ids.some((id) => tok.decode([id]).includes('\uFFFD')),
      `${label}: no split character in the test text`,
    );
    const stream = tok.createStreamDecoder();
    const pieces = ids.map((id) => stream.push(id));
    pieces.push(stream.flush());
    assert.equal(pieces.join(''), text, label);
    for (const p of pieces)
      assert.ok(!p.includes('\uFFFD'), `${label}: emitted a broken character in ${JSON.stringify(p)}`);
    assert.equal(pieces.filter((p) => p.includes('🦙')).length, 1, `${label}: 🦙 emitted once`);
  }
});

test(
  'decode options: special tokens kept or skipped; bad ids rejected',
  { skip: missingJson ?? false },
  () => {
    const tok = smolJson();
    const ids = tok.encode('<|im_start|>user\nHi<|im_end|>', { addSpecialTokens: false });
    assert.equal(tok.decode(ids), '<|im_start|>user\nHi<|im_end|>');
    assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'user\nHi');
    assert.equal(tok.decode([]), '');
    assert.throws(() => tok.decode([49152]), /token id 49152 is outside the vocabulary/);
    const stream = tok.createStreamDecoder({ skipSpecialTokens: true });
    assert.equal(ids.map((id) => stream.push(id)).join('') + stream.flush(), 'user\nHi');
  },
);

// ---------------------------------------------------------------------------------------------
// Synthetic vocabularies: the GGUF translation without real model files.

const BYTE_TOKENS = Array.from(
  { length: 256 },
  (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`,
);

function spmMeta(pieces: [string, number][], extra: Record<string, unknown> = {}): Map<string, unknown> {
  const tokens = ['<unk>', '<s>', '</s>', '<ctrl>', ...BYTE_TOKENS, ...pieces.map((p) => p[0])];
  const scores = [0, 0, 0, 0, ...BYTE_TOKENS.map(() => 0), ...pieces.map((p) => p[1])];
  const types = [2, 3, 3, 3, ...BYTE_TOKENS.map(() => 6), ...pieces.map(() => 1)];
  return new Map<string, unknown>([
    ['tokenizer.ggml.model', 'llama'],
    ['tokenizer.ggml.tokens', tokens],
    ['tokenizer.ggml.scores', Float32Array.from(scores)],
    ['tokenizer.ggml.token_type', Int32Array.from(types)],
    ['tokenizer.ggml.bos_token_id', 1],
    ['tokenizer.ggml.eos_token_id', 2],
    ['tokenizer.ggml.unknown_token_id', 0],
    ...Object.entries(extra),
  ]);
}

test('SentencePiece GGUF vocab: best-score merges, leftmost ties, byte fallback, space prefix', () => {
  const pieces: [string, number][] = [
    ['▁', -1],
    ['a', -2],
    ['b', -3],
    ['c', -4],
    ['ab', -10],
    ['bc', -5], // better than ab, so "abc" starts by merging b+c
    ['abc', -20],
    ['aa', -6],
    ['▁a', -7],
  ];
  const tok = Tokenizer.fromGgufMetadata(spmMeta(pieces), 'spm.gguf');
  const pieceOf = (ids: number[]) => ids.map((id) => tok.tokenToString(id));
  // llama.cpp defaults for SentencePiece: BOS added, a space prefixed to the text.
  assert.deepEqual(pieceOf(tok.encode('abc')), ['<s>', '▁a', 'bc']);
  const noPrefix = Tokenizer.fromGgufMetadata(
    spmMeta(pieces, { 'tokenizer.ggml.add_space_prefix': false }),
    'spm.gguf',
  );
  const p2 = (s: string) =>
    noPrefix.encode(s, { addSpecialTokens: false }).map((id) => noPrefix.tokenToString(id));
  assert.deepEqual(p2('abc'), ['abc']);
  assert.deepEqual(p2('aaa'), ['aa', 'a']); // equal scores: the leftmost pair merges first
  assert.deepEqual(p2('é'), ['<0xC3>', '<0xA9>']); // not in the vocabulary: UTF-8 bytes
  assert.deepEqual(p2('a<ctrl>b'), ['a', '<ctrl>', 'b']); // control tokens split out of text
  assert.equal(noPrefix.decode(noPrefix.encode('aé abc', { addSpecialTokens: false })), 'aé abc');
  assert.equal(tok.decode(tok.encode('abc aaa'), { skipSpecialTokens: true }), 'abc aaa');
  assert.deepEqual(tok.eosTokenIds, [2]);
  assert.equal(tok.isSpecialToken(3), true);
});

/** GPT-2's byte-to-symbol map: printable Latin-1 bytes stand for themselves, others map above 255. */
function byteSymbols(): string[] {
  const keep = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCharCode(keep(b) ? b : 256 + extra++));
  return out;
}

function bpeMeta(pre: string | undefined, extra: Record<string, unknown> = {}): Map<string, unknown> {
  const sym = byteSymbols();
  const merged = ['he', 'hel', 'hell', 'hello', `${sym[32]}w`, `${sym[32]}wo`, '12'];
  const tokens = ['<|endoftext|>', '<|im_end|>', ...sym, ...merged];
  const m = new Map<string, unknown>([
    ['tokenizer.ggml.model', 'gpt2'],
    ['tokenizer.ggml.tokens', tokens],
    ['tokenizer.ggml.token_type', Int32Array.from(tokens.map((_, i) => (i < 2 ? 3 : 1)))],
    ['tokenizer.ggml.merges', ['h e', 'he l', 'hel l', 'hell o', `${sym[32]} w`, `${sym[32]}w o`, '1 2']],
    ['tokenizer.ggml.eos_token_id', 0],
    ...Object.entries(extra),
  ]);
  if (pre !== undefined) m.set('tokenizer.ggml.pre', pre);
  return m;
}

test('byte-level BPE GGUF vocab: merges, pre-tokenizer by name, errors naming the key', () => {
  const tok = Tokenizer.fromGgufMetadata(bpeMeta('gpt2'), 'bpe.gguf');
  const pieces = (s: string) => tok.encode(s).map((id) => tok.tokenToString(id));
  assert.deepEqual(pieces('hello wo'), ['hello', 'Ġwo']);
  assert.deepEqual(pieces('hello<|im_end|>'), ['hello', '<|im_end|>']);
  assert.equal(tok.decode(tok.encode('hello wo ✓')), 'hello wo ✓');
  assert.deepEqual(tok.eosTokenIds, [0, 1]);
  assert.equal(tok.bosTokenId, undefined);

  // gpt2 keeps runs of digits together (so "1 2" merges); smollm splits every digit first.
  assert.deepEqual(pieces('12'), ['12']);
  const smol = Tokenizer.fromGgufMetadata(bpeMeta('smollm'), 'bpe.gguf');
  assert.deepEqual(
    smol.encode('12').map((id) => smol.tokenToString(id)),
    ['1', '2'],
  );
  for (const pre of ['llama-bpe', 'qwen2', 'default', 'starcoder', undefined]) {
    const t = Tokenizer.fromGgufMetadata(bpeMeta(pre), 'bpe.gguf');
    assert.equal(
      t.decode(t.encode('hello world 123', { addSpecialTokens: false })),
      'hello world 123',
      String(pre),
    );
  }

  const field = (meta: Map<string, unknown>, key: string, problem: RegExp) =>
    assert.throws(
      () => Tokenizer.fromGgufMetadata(meta, 'bad.gguf'),
      (e: unknown) =>
        e instanceof FormatError && e.file === 'bad.gguf' && e.field === key && problem.test(e.message),
    );
  field(
    bpeMeta('gpt2', { 'tokenizer.ggml.model': 't5' }),
    'tokenizer.ggml.model',
    /unsupported tokenizer model "t5"/,
  );
  field(bpeMeta('no-such-pre'), 'tokenizer.ggml.pre', /unsupported pre-tokenizer "no-such-pre"/);
  const noTokens = bpeMeta('gpt2');
  noTokens.delete('tokenizer.ggml.tokens');
  field(noTokens, 'tokenizer.ggml.tokens', /missing/);
  const noMerges = bpeMeta('gpt2');
  noMerges.delete('tokenizer.ggml.merges');
  field(noMerges, 'tokenizer.ggml.merges', /missing/);
  field(
    bpeMeta('gpt2', { 'tokenizer.ggml.token_type': Int32Array.of(1, 2) }),
    'tokenizer.ggml.token_type',
    /entries but there are/,
  );
  field(spmMeta([], { 'tokenizer.ggml.scores': undefined }), 'tokenizer.ggml.scores', /missing/);
  const noModel = bpeMeta('gpt2');
  noModel.delete('tokenizer.ggml.model');
  field(noModel, 'tokenizer.ggml.model', /missing/);
});

test('tokenizer.json problems are FormatErrors naming the file', () => {
  assert.throws(
    () => Tokenizer.fromHfJson({ added_tokens: [] }, 'x/tokenizer.json'),
    (e: unknown) => e instanceof FormatError && e.file === 'x/tokenizer.json' && e.field === 'model',
  );
  assert.throws(() => Tokenizer.fromHfFiles(join(FIX, 'missing.json')), /missing\.json: cannot read/);
  assert.throws(() => Tokenizer.fromHfFiles(join(FIX, 'strings.json'), {}), /strings\.json: model: missing/);
});
