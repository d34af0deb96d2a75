/**
 * Fine-tuning data: JSONL files of chat conversations, prompt/response pairs or token ids, turned
 * into training sequences whose answer mask covers the assistant's tokens only.
 *
 * Masking is exact by construction: the conversation is rendered with the model's chat template
 * turn by turn, and for each assistant turn i the text the model is prompted with (turns before i,
 * generation prompt appended) and the text with turn i included are both prefixes of the whole
 * rendering; the characters between the two are the assistant's (its content and end-of-turn
 * marker, trailing whitespace left out). Each stretch is tokenized on its own, so the tokens
 * before an answer are exactly those `Model.generate` is prompted with for that conversation.
 */
import { readFileSync } from 'node:fs';
import { FormatError } from '../formats/errors.js';
import type { ChatMessage, Tokenizer } from '../formats/tokenizer.js';
import type { TrainingSequence } from './backward.js';

/** One line of a training file, as read. */
export type TrainingRecord =
  | { readonly kind: 'chat'; readonly messages: readonly ChatMessage[] }
  | { readonly kind: 'tokens'; readonly sequence: TrainingSequence };

/** Where a record came from, for errors (never its text). */
export interface RecordSource {
  readonly file: string;
  /** 1-based line number. */
  readonly line: number;
}

function parseMessages(value: unknown, where: () => FormatError): ChatMessage[] {
  if (!Array.isArray(value) || value.length === 0) throw where();
  return value.map((m) => {
    const o = m as Record<string, unknown>;
    if (typeof m !== 'object' || m === null || typeof o.role !== 'string' || typeof o.content !== 'string')
      throw where();
    return { role: o.role, content: o.content };
  });
}

/**
 * Reads a JSONL training file. Each non-empty line is one of
 *   {"messages": [{"role": ..., "content": ...}, ...]}   a conversation
 *   {"prompt": "...", "response": "..."}                  one user turn and the assistant's answer
 *   {"tokens": [ids], "answer": [0|1 per token]}           token ids with their answer mask
 * Anything else is an error naming the file and line.
 */
export function readTrainingFile(file: string): { records: TrainingRecord[]; sources: RecordSource[] } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new FormatError(file, '', `cannot read: ${(e as Error).message}`);
  }
  const records: TrainingRecord[] = [];
  const sources: RecordSource[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    const field = `line ${i + 1}`;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new FormatError(file, field, `not valid JSON: ${(e as Error).message}`);
    }
    if (typeof row !== 'object' || row === null || Array.isArray(row))
      throw new FormatError(file, field, 'must be a JSON object');
    const o = row as Record<string, unknown>;
    if ('messages' in o) {
      const messages = parseMessages(
        o.messages,
        () =>
          new FormatError(
            file,
            `${field}: messages`,
            'must be a non-empty list of {"role": string, "content": string}',
          ),
      );
      records.push({ kind: 'chat', messages });
    } else if ('prompt' in o || 'response' in o) {
      if (typeof o.prompt !== 'string' || typeof o.response !== 'string')
        throw new FormatError(file, field, '"prompt" and "response" must both be strings');
      records.push({
        kind: 'chat',
        messages: [
          { role: 'user', content: o.prompt },
          { role: 'assistant', content: o.response },
        ],
      });
    } else if ('tokens' in o) {
      const tokens = o.tokens;
      const answer = o.answer;
      if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && (t as number) >= 0))
        throw new FormatError(file, `${field}: tokens`, 'must be a list of token ids (integers >= 0)');
      if (
        !Array.isArray(answer) ||
        answer.length !== tokens.length ||
        !answer.every((a) => a === 0 || a === 1)
      )
        throw new FormatError(file, `${field}: answer`, 'must be a list of 0 or 1, one per token');
      records.push({
        kind: 'tokens',
        sequence: { tokens: tokens as number[], answer: answer.map((a) => a === 1) },
      });
    } else
      throw new FormatError(
        file,
        field,
        'needs "messages", "prompt" and "response", or "tokens" and "answer"',
      );
    sources.push({ file, line: i + 1 });
  });
  if (records.length === 0) throw new FormatError(file, '', 'holds no training examples');
  return { records, sources };
}

/** Trailing whitespace is not the assistant's: generation stops at the end-of-turn token. */
function trimEnd(text: string, from: number, to: number): number {
  while (to > from && /\s/.test(text[to - 1])) to--;
  return to;
}

/**
 * The tokens of a conversation with the assistant's tokens marked (see the file's comment). A
 * conversation without an assistant turn, or a template that does not render each turn as a
 * continuation of the ones before it, is an error naming `source`.
 */
export function chatSequence(
  tokenizer: Tokenizer,
  messages: readonly ChatMessage[],
  source: RecordSource,
): TrainingSequence {
  const field = `line ${source.line}`;
  const fail = (problem: string) => new FormatError(source.file, field, problem);
  if (!messages.some((m) => m.role === 'assistant'))
    throw fail('the conversation has no assistant turn, so there is nothing to train on');
  const render = (upTo: number, generationPrompt: boolean) =>
    tokenizer.applyChatTemplate(messages.slice(0, upTo), { addGenerationPrompt: generationPrompt });
  const whole = render(messages.length, false);
  // Alternating stretches of the whole rendering: [prompt, answer, prompt, answer, ..., rest].
  const cuts: number[] = [0];
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const before = render(i, true);
    const through = render(i + 1, false);
    if (!whole.startsWith(through) || !through.startsWith(before) || before.length < cuts[cuts.length - 1])
      throw fail(
        `the chat template does not render assistant turn ${i} as a continuation of the turns before it, ` +
          'so its tokens cannot be told apart exactly',
      );
    const end = trimEnd(through, before.length, through.length);
    if (before.length === 0) throw fail(`assistant turn ${i} has no prompt before it`);
    cuts.push(before.length, end);
  });
  cuts.push(whole.length);
  const tokens: number[] = [];
  const answer: boolean[] = [];
  for (let s = 0; s + 1 < cuts.length; s++) {
    const piece = whole.slice(cuts[s], cuts[s + 1]);
    if (piece === '') continue;
    const ids = tokenizer.encode(piece, { addSpecialTokens: false });
    tokens.push(...ids);
    for (let k = 0; k < ids.length; k++) answer.push(s % 2 === 1);
  }
  return { tokens, answer };
}

/**
 * Training sequences of every record: chats tokenized with `tokenizer` (needed only for chats),
 * each cut to its first `maxTokens` tokens if given. A sequence left with no answer token (all of
 * its answers past `maxTokens`) is dropped and counted, never trained on with an empty loss.
 */
export function trainingSequences(
  records: readonly TrainingRecord[],
  sources: readonly RecordSource[],
  opts: { readonly tokenizer?: () => Tokenizer; readonly maxTokens?: number; readonly vocabSize: number },
): { sequences: TrainingSequence[]; dropped: number; truncated: number } {
  const sequences: TrainingSequence[] = [];
  let dropped = 0;
  let truncated = 0;
  records.forEach((r, i) => {
    const source = sources[i];
    let seq: TrainingSequence;
    if (r.kind === 'chat') {
      let tokenizer: Tokenizer | undefined;
      try {
        tokenizer = opts.tokenizer?.();
      } catch (e) {
        throw new FormatError(
          source.file,
          `line ${source.line}`,
          `a chat needs the model's tokenizer: ${(e as Error).message}`,
        );
      }
      if (!tokenizer)
        throw new FormatError(source.file, `line ${source.line}`, "a chat needs the model's tokenizer");
      seq = chatSequence(tokenizer, r.messages, source);
    } else {
      seq = r.sequence;
      const bad = seq.tokens.find((t) => t >= opts.vocabSize);
      if (bad !== undefined)
        throw new FormatError(
          source.file,
          `line ${source.line}: tokens`,
          `token id ${bad} is outside the vocabulary (0..${opts.vocabSize - 1})`,
        );
      if (seq.answer[0])
        throw new FormatError(
          source.file,
          `line ${source.line}: answer`,
          'token 0 cannot be an answer token',
        );
      if (!seq.answer.some(Boolean))
        throw new FormatError(source.file, `line ${source.line}: answer`, 'marks no answer token');
    }
    if (opts.maxTokens !== undefined && seq.tokens.length > opts.maxTokens) {
      seq = { tokens: seq.tokens.slice(0, opts.maxTokens), answer: seq.answer.slice(0, opts.maxTokens) };
      truncated++;
    }
    if (seq.answer.some(Boolean)) sequences.push(seq);
    else dropped++;
  });
  return { sequences, dropped, truncated };
}
