/**
 * Tokenizers for the two model sources: a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)
 * or the vocabulary embedded in GGUF metadata. Both end up as an `@huggingface/tokenizers` pipeline,
 * so normalisation, added/special-token splitting, pre-tokenisation and decoding are shared; GGUF
 * metadata is first translated into the equivalent tokenizer.json object.
 *
 * GGUF `llama` (SentencePiece) vocabularies are the exception in one step: the library has no
 * "merge the adjacent pair whose concatenation has the best score" model, and expressing it as
 * ranked BPE merges needs every two-way split of every token (over 500k merges for Gemma 3), which
 * takes seconds to build and makes long inputs slow. That step is `SentencePieceBpeModel` below,
 * a port of the algorithm llama.cpp uses, plugged into the library pipeline as its model.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as tokenizersLib from '@huggingface/tokenizers';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { FormatError, SteerguardError } from './errors.js';
import { readJsonObject, requireRegularFile } from './files.js';

export interface ChatMessage {
  /** 'system', 'user' or 'assistant' (templates may accept others, e.g. 'tool'). */
  readonly role: string;
  readonly content: string;
}

export interface ChatTemplateOptions {
  /** End the prompt with the header of an assistant turn, ready for generation (default true). */
  readonly addGenerationPrompt?: boolean;
  /**
   * A system message to use. It replaces a leading system message in `messages` if there is one,
   * and otherwise is put first; either way a template's built-in default system prompt (SmolLM2's,
   * for instance) is then not used, because templates only add theirs when no system turn exists.
   */
  readonly systemPrompt?: string;
}

export interface FormatPromptOptions extends ChatTemplateOptions {
  /** true: wrap `text` as one user turn with the chat template; false: return `text` unchanged. */
  readonly chat: boolean;
}

export interface EncodeOptions {
  /**
   * Add the model's own special tokens around the text (default true): BOS for models that want
   * one (Gemma, Llama), nothing for models that don't (SmolLM2, Qwen2). Special tokens written in
   * the text itself, like `<|im_start|>`, are always recognised.
   */
  readonly addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop control/special tokens (BOS, EOS, `<|im_end|>`, ...) from the output (default false). */
  readonly skipSpecialTokens?: boolean;
}

/** A parsed `tokenizer_config.json`; only the fields below are read. */
export interface HfTokenizerConfig {
  readonly bos_token?: unknown;
  readonly eos_token?: unknown;
  readonly pad_token?: unknown;
  readonly unk_token?: unknown;
  readonly chat_template?: unknown;
  readonly clean_up_tokenization_spaces?: unknown;
  readonly [key: string]: unknown;
}

/** Extra ids from `config.json` / `generation_config.json` that the tokenizer files may lack. */
export interface HfTokenizerExtras {
  readonly bosTokenId?: number;
  readonly eosTokenIds?: readonly number[];
  /** Overrides the template from tokenizer_config.json (e.g. the contents of chat_template.jinja). */
  readonly chatTemplate?: string;
}

/** GGUF metadata as any reader returns it: arrays may be plain arrays or typed arrays. */
export type GgufMetadataLike = ReadonlyMap<string, unknown>;

/**
 * Tokens that end an assistant turn in the common chat formats; generation stops on any of them
 * that the vocabulary has, besides EOS (the list llama.cpp uses, trimmed to real chat formats).
 */
const END_OF_TURN_TOKENS = [
  '<|im_end|>',
  '<end_of_turn>',
  '<|eot_id|>',
  '<|eom_id|>',
  '<|end|>',
  '<|endoftext|>',
  '<|end_of_text|>',
  '<EOT>',
];

/** GGUF token types (llama.cpp `llama_token_type`). */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** Holds back at most this many tokens waiting for a multi-byte character to complete. */
const STREAM_MAX_PENDING = 8;

type Json = Record<string, unknown>;

interface TokenizerInit {
  hf: HfTokenizer;
  source: string;
  vocabSize: number;
  specialIds: Set<number>;
  bosTokenId?: number;
  eosTokenIds: number[];
  padTokenId?: number;
  unkTokenId?: number;
  chatTemplate?: string;
  /** Added by this wrapper (GGUF); HF tokenizers add theirs through their post-processor. */
  prependBos: boolean;
  appendEos: boolean;
  cleanUpSpaces: boolean;
  templateVars: Record<string, string>;
}

export class Tokenizer {
  /** The file the vocabulary came from (tokenizer.json or .gguf), for messages. */
  readonly source: string;
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  /** EOS and every end-of-turn token the vocabulary has, EOS first: generation stops on any. */
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | undefined;
  readonly unkTokenId: number | undefined;
  /** The model's Jinja chat template; undefined for base models that ship none. */
  readonly chatTemplate: string | undefined;

  private readonly hf: HfTokenizer;
  private readonly specialIds: Set<number>;
  private readonly prependBos: boolean;
  private readonly appendEos: boolean;
  private readonly cleanUpSpaces: boolean;
  private readonly templateVars: Record<string, string>;
  private compiledTemplate: Template | undefined;

  private constructor(init: TokenizerInit) {
    this.hf = init.hf;
    this.source = init.source;
    this.vocabSize = init.vocabSize;
    this.specialIds = init.specialIds;
    this.bosTokenId = init.bosTokenId;
    this.eosTokenIds = init.eosTokenIds;
    this.padTokenId = init.padTokenId;
    this.unkTokenId = init.unkTokenId;
    this.chatTemplate = init.chatTemplate;
    this.prependBos = init.prependBos;
    this.appendEos = init.appendEos;
    this.cleanUpSpaces = init.cleanUpSpaces;
    this.templateVars = init.templateVars;
  }

  /**
   * Load a Hugging Face tokenizer. `tokenizerConfig` is the parsed tokenizer_config.json or its
   * path; when omitted, a tokenizer_config.json next to tokenizer.json is used if present. Without
   * a template in the config, a chat_template.jinja next to tokenizer.json is used (newer repos).
   */
  static fromHfFiles(
    tokenizerJsonPath: string,
    tokenizerConfig?: HfTokenizerConfig | string,
    extras: HfTokenizerExtras = {},
  ): Tokenizer {
    const json = readJsonObject(tokenizerJsonPath);
    let config: HfTokenizerConfig = {};
    let configPath = join(dirname(tokenizerJsonPath), 'tokenizer_config.json');
    if (typeof tokenizerConfig === 'string') {
      configPath = tokenizerConfig;
      config = readJsonObject(tokenizerConfig);
    } else if (tokenizerConfig) {
      config = tokenizerConfig;
    } else if (existsSync(configPath)) {
      config = readJsonObject(configPath);
    }
    let chatTemplate = extras.chatTemplate ?? pickChatTemplate(config.chat_template, configPath);
    const jinjaPath = join(dirname(tokenizerJsonPath), 'chat_template.jinja');
    if (chatTemplate === undefined && existsSync(jinjaPath)) {
      requireRegularFile(jinjaPath);
      chatTemplate = readFileSync(jinjaPath, 'utf8');
    }
    return Tokenizer.fromHfJson(json, tokenizerJsonPath, config, { ...extras, chatTemplate });
  }

  /** As fromHfFiles, from already-parsed objects; `source` names the tokenizer.json for errors. */
  static fromHfJson(
    tokenizerJson: Json,
    source: string,
    config: HfTokenizerConfig = {},
    extras: HfTokenizerExtras = {},
  ): Tokenizer {
    if (typeof tokenizerJson.model !== 'object' || tokenizerJson.model === null) {
      throw new FormatError(source, 'model', 'missing: not a tokenizer.json');
    }
    const addedTokens = tokenizerJson.added_tokens ?? [];
    if (!Array.isArray(addedTokens)) throw new FormatError(source, 'added_tokens', 'must be a list');
    const patched: Json = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...tokenizerJson,
      added_tokens: addedTokens,
    };
    patched.pre_tokenizer = patchPreTokenizer(patched.pre_tokenizer);
    const hf = buildHf(patched, { ...config, clean_up_tokenization_spaces: false }, source);

    const specialIds = new Set<number>();
    for (const [id, tok] of hf.get_added_tokens_decoder()) if (tok.special) specialIds.add(id);
    const idOf = (v: unknown): number | undefined => {
      const s = specialTokenString(v);
      return s === undefined ? undefined : hf.token_to_id(s);
    };
    const bosTokenId = idOf(config.bos_token) ?? extras.bosTokenId;
    const eosTokenIds: number[] = [];
    const addEos = (id: number | undefined) => {
      if (id !== undefined && !eosTokenIds.includes(id)) eosTokenIds.push(id);
    };
    addEos(idOf(config.eos_token));
    for (const id of extras.eosTokenIds ?? []) addEos(id);
    for (const text of END_OF_TURN_TOKENS) {
      const id = hf.token_to_id(text);
      if (id !== undefined && specialIds.has(id)) addEos(id);
    }
    const templateVars: Record<string, string> = {};
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token'] as const) {
      const s = specialTokenString(config[key]);
      if (s !== undefined) templateVars[key] = s;
    }
    if (templateVars.bos_token === undefined && bosTokenId !== undefined) {
      templateVars.bos_token = hf.id_to_token(bosTokenId) ?? '';
    }
    if (templateVars.eos_token === undefined && eosTokenIds.length > 0) {
      templateVars.eos_token = hf.id_to_token(eosTokenIds[0]) ?? '';
    }
    return new Tokenizer({
      hf,
      source,
      vocabSize: libModel(hf).vocab.length,
      specialIds,
      bosTokenId,
      eosTokenIds,
      padTokenId: idOf(config.pad_token),
      unkTokenId: idOf(config.unk_token) ?? libModel(hf).unk_token_id,
      chatTemplate: extras.chatTemplate ?? pickChatTemplate(config.chat_template, source),
      prependBos: false,
      appendEos: false,
      cleanUpSpaces: config.clean_up_tokenization_spaces === true,
      templateVars,
    });
  }

  /**
   * Build the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
   * Supports `tokenizer.ggml.model` = `gpt2` (byte-level BPE; the split regex follows
   * `tokenizer.ggml.pre`) and `llama` (SentencePiece BPE with scores and byte fallback).
   */
  static fromGgufMetadata(meta: GgufMetadataLike, sourceFile: string): Tokenizer {
    const g = new GgufReader(meta, sourceFile);
    const model = g.string('tokenizer.ggml.model');
    const tokens = g.stringArray('tokenizer.ggml.tokens');
    const n = tokens.length;
    const types = g.intArray('tokenizer.ggml.token_type', n) ?? new Int32Array(n).fill(TOKEN_TYPE.normal);
    const tokenId = (key: string) => g.tokenId(key, n);
    const bosTokenId = tokenId('tokenizer.ggml.bos_token_id');
    const eosId = tokenId('tokenizer.ggml.eos_token_id');
    const unkTokenId = tokenId('tokenizer.ggml.unknown_token_id');
    const padTokenId = tokenId('tokenizer.ggml.padding_token_id');
    const pre = g.optionalString('tokenizer.ggml.pre') ?? 'default';

    // Control and unknown tokens are special; user-defined ones are matched in text but are
    // ordinary text when decoding. llama.cpp partitions exactly these out before tokenizing.
    const added: Json[] = [];
    const specialIds = new Set<number>();
    for (let id = 0; id < n; id++) {
      const t = types[id];
      if (t === TOKEN_TYPE.control || t === TOKEN_TYPE.unknown || t === TOKEN_TYPE.userDefined) {
        const special = t !== TOKEN_TYPE.userDefined;
        if (special) specialIds.add(id);
        added.push({ id, content: tokens[id], special, normalized: false });
      }
    }

    let hf: HfTokenizer;
    let defaultAddBos: boolean;
    if (model === 'gpt2') {
      const merges = g.stringArray('tokenizer.ggml.merges');
      const vocab: Record<string, number> = Object.create(null);
      for (let id = 0; id < n; id++) vocab[tokens[id]] = id;
      const { preTokenizer, ignoreMerges, addBos } = byteLevelPreTokenizer(pre, sourceFile);
      defaultAddBos = addBos;
      hf = buildHf(
        {
          normalizer: null,
          pre_tokenizer: preTokenizer,
          post_processor: null,
          decoder: { type: 'ByteLevel' },
          model: {
            type: 'BPE',
            vocab,
            merges,
            ignore_merges: ignoreMerges,
            unk_token: unkTokenId === undefined ? undefined : tokens[unkTokenId],
          },
          added_tokens: added,
        },
        { clean_up_tokenization_spaces: false },
        sourceFile,
      );
    } else if (model === 'llama') {
      const scores = g.floatArray('tokenizer.ggml.scores', n);
      const addSpacePrefix = g.optionalBool('tokenizer.ggml.add_space_prefix') ?? true;
      defaultAddBos = true;
      const normalizers: Json[] = [];
      if (addSpacePrefix) normalizers.push({ type: 'Prepend', prepend: '\u2581' });
      normalizers.push({ type: 'Replace', pattern: { String: ' ' }, content: '\u2581' });
      const decoders: Json[] = [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
      ];
      if (addSpacePrefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
      hf = buildHf(
        {
          normalizer: { type: 'Sequence', normalizers },
          pre_tokenizer: null,
          post_processor: null,
          decoder: { type: 'Sequence', decoders },
          // Placeholder: replaced by SentencePieceBpeModel right after construction.
          model: { type: 'BPE', vocab: {}, merges: [] },
          added_tokens: added,
        },
        { clean_up_tokenization_spaces: false },
        sourceFile,
      );
      (hf as unknown as { model: LibModel }).model = new SentencePieceBpeModel(tokens, scores, unkTokenId);
    } else {
      throw new FormatError(
        sourceFile,
        'tokenizer.ggml.model',
        `unsupported tokenizer model ${JSON.stringify(model)} (supported: gpt2, llama)`,
      );
    }

    const eosTokenIds: number[] = [];
    const addEos = (id: number | undefined) => {
      if (id !== undefined && !eosTokenIds.includes(id)) eosTokenIds.push(id);
    };
    addEos(eosId);
    addEos(tokenId('tokenizer.ggml.eot_token_id'));
    addEos(tokenId('tokenizer.ggml.eom_token_id'));
    for (const text of END_OF_TURN_TOKENS) {
      const id = hf.token_to_id(text);
      if (id !== undefined && specialIds.has(id)) addEos(id);
    }
    const templateVars: Record<string, string> = {};
    if (bosTokenId !== undefined) templateVars.bos_token = tokens[bosTokenId];
    if (eosId !== undefined) templateVars.eos_token = tokens[eosId];
    if (unkTokenId !== undefined) templateVars.unk_token = tokens[unkTokenId];
    if (padTokenId !== undefined) templateVars.pad_token = tokens[padTokenId];

    const prependBos =
      (g.optionalBool('tokenizer.ggml.add_bos_token') ?? defaultAddBos) && bosTokenId !== undefined;
    const appendEos = (g.optionalBool('tokenizer.ggml.add_eos_token') ?? false) && eosId !== undefined;
    return new Tokenizer({
      hf,
      source: sourceFile,
      vocabSize: n,
      specialIds,
      bosTokenId,
      eosTokenIds,
      padTokenId,
      unkTokenId,
      chatTemplate: g.optionalString('tokenizer.chat_template'),
      prependBos,
      appendEos,
      cleanUpSpaces: false,
      templateVars,
    });
  }

  /** Token ids for `text`. Special tokens spelled out in the text are always recognised. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecial = options.addSpecialTokens ?? true;
    const enc = this.hf.encode(text, { add_special_tokens: addSpecial });
    const ids = enc.ids;
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] === undefined) {
        throw new FormatError(this.source, 'vocab', `no id for piece ${JSON.stringify(enc.tokens[i])}`);
      }
    }
    if (addSpecial && this.prependBos && this.bosTokenId !== undefined) ids.unshift(this.bosTokenId);
    if (addSpecial && this.appendEos && this.eosTokenIds.length > 0) ids.push(this.eosTokenIds[0]);
    return ids;
  }

  /** Text for `ids`. Without skipSpecialTokens, special tokens appear as their literal text. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const kept: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new SteerguardError(
          `token id ${id} is outside the vocabulary of ${this.source} (0..${this.vocabSize - 1})`,
        );
      }
      if (!(options.skipSpecialTokens && this.specialIds.has(id))) kept.push(id);
    }
    if (kept.length === 0) return '';
    return this.hf.decode(kept, { clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  /** A decoder for generation: feed ids one at a time, get back only complete text. */
  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    return new StreamDecoder(this, options);
  }

  /** The vocabulary entry of `id` as stored (e.g. 'Ġworld', '▁world', '<0x0A>'), not decoded text. */
  tokenToString(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /** The id of a vocabulary entry spelled exactly as stored, if any. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** Whether `id` is a control/special token (BOS, EOS, chat markers, ...). */
  isSpecialToken(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * Render a conversation with the model's own chat template (as transformers'
   * `apply_chat_template(..., tokenize=False)` does). The result already contains the template's
   * special tokens; encode it with `{ addSpecialTokens: false }` when the template itself starts
   * with BOS (Gemma, Llama 3 instruct templates), or BOS will appear twice.
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === undefined) {
      throw new FormatError(
        this.source,
        'chat_template',
        'this model has no chat template (probably a base model); send the raw text instead ' +
          '(formatPrompt(text, { chat: false }))',
      );
    }
    let msgs = messages.map((m) => ({ role: m.role, content: m.content }));
    if (options.systemPrompt !== undefined) {
      const system = { role: 'system', content: options.systemPrompt };
      msgs = msgs.length > 0 && msgs[0].role === 'system' ? [system, ...msgs.slice(1)] : [system, ...msgs];
    }
    try {
      this.compiledTemplate ??= new Template(this.chatTemplate);
      return this.compiledTemplate.render({
        ...this.templateVars,
        messages: msgs,
        add_generation_prompt: options.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw new SteerguardError(`chat template of ${this.source} failed: ${(e as Error).message}`);
    }
  }

  /**
   * The prompt text to feed the model for a single user message: with `chat: true` the text is
   * wrapped as one user turn by the chat template (an error for models without one); with
   * `chat: false` it is returned unchanged, which is how base models such as Gemma 3 270M are used.
   */
  formatPrompt(text: string, options: FormatPromptOptions): string {
    if (!options.chat) return text;
    return this.applyChatTemplate([{ role: 'user', content: text }], options);
  }
}

/**
 * Incremental detokenizer. Decoding token by token would split multi-byte characters (an emoji is
 * often 2-4 byte tokens) and, for SentencePiece models, lose the spaces decoders strip at the
 * start; so each step decodes a short window of recent tokens and emits only the new text, once it
 * no longer ends in an incomplete character.
 */
export class StreamDecoder {
  private readonly ids: number[] = [];
  /** Start of the context window that is decoded on each step. */
  private prefixOffset = 0;
  /** Tokens before this have been emitted. */
  private readOffset = 0;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly options: DecodeOptions = {},
  ) {}

  /** Add one token; returns the text it completes (possibly '' while a character is incomplete). */
  push(id: number): string {
    if (this.options.skipSpecialTokens && this.tokenizer.isSpecialToken(id)) return '';
    this.ids.push(id);
    const before = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const after = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    const pending = this.ids.length - this.readOffset;
    if (after.length > before.length && (!after.endsWith('\uFFFD') || pending >= STREAM_MAX_PENDING)) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.trim();
      return after.slice(before.length);
    }
    return '';
  }

  /** Emit whatever is still held back (an incomplete character comes out as U+FFFD). */
  flush(): string {
    if (this.readOffset === this.ids.length) return '';
    const before = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const after = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.trim();
    return after.slice(before.length);
  }

  /** Forget tokens before the window, so memory stays bounded over long generations. */
  private trim(): void {
    if (this.prefixOffset > 0) {
      this.ids.splice(0, this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SentencePiece BPE (GGUF `llama` vocabularies)

/**
 * The parts of tokenizers.js's model base class used here. Its own typings use extensionless
 * relative paths that do not resolve under NodeNext, so the class is typed by hand.
 */
interface LibModel {
  vocab: string[];
  tokens_to_ids: Map<string, number>;
  unk_token_id?: number;
  unk_token?: string;
}
type LibModelClass = abstract new (config: Record<string, unknown>) => LibModel;
const LibModelBase = (tokenizersLib as unknown as { Model: LibModelClass }).Model;

function libModel(hf: HfTokenizer): LibModel {
  return (hf as unknown as { model: LibModel }).model;
}

const utf8 = new TextEncoder();

/**
 * Greedy score-driven merging, as llama.cpp's `llm_tokenizer_spm` does it: start from single
 * characters, repeatedly merge the adjacent pair whose concatenation is a vocabulary entry with the
 * highest score (leftmost on ties), and spell leftover characters that are not in the vocabulary
 * as `<0xXX>` byte tokens.
 */
class SentencePieceBpeModel extends LibModelBase {
  private readonly scores: Float32Array;
  private readonly maxPieceLength: number;
  private readonly byteFallbackOk: boolean;

  constructor(tokens: readonly string[], scores: Float32Array, unkId: number | undefined) {
    super({ type: 'SentencePieceBPE' });
    this.scores = scores;
    // Last duplicate wins, as in llama.cpp's token_to_id map.
    const ids = new Map<string, number>();
    let maxLen = 0;
    for (let id = 0; id < tokens.length; id++) {
      ids.set(tokens[id], id);
      if (tokens[id].length > maxLen) maxLen = tokens[id].length;
    }
    this.tokens_to_ids = ids;
    this.vocab = tokens.slice();
    this.maxPieceLength = maxLen;
    if (unkId !== undefined) {
      this.unk_token_id = unkId;
      this.unk_token = tokens[unkId];
    }
    let bytesOk = true;
    for (let b = 0; b < 256 && bytesOk; b++) bytesOk = ids.has(byteToken(b));
    this.byteFallbackOk = bytesOk;
  }

  /** Called by the library with the pre-tokenized pieces; returns vocabulary entries. */
  encode(pieces: string[]): string[] {
    const out: string[] = [];
    for (const piece of pieces) this.encodePiece(piece, out);
    return out;
  }

  private encodePiece(text: string, out: string[]): void {
    const ids = this.tokens_to_ids;
    // Symbols: one per code point, as [start, length) in UTF-16 units, in a linked list.
    const cap = text.length;
    const start = new Int32Array(cap);
    const len = new Int32Array(cap);
    const prev = new Int32Array(cap);
    const next = new Int32Array(cap);
    let count = 0;
    for (let i = 0; i < text.length;) {
      const cp = text.codePointAt(i) as number;
      const w = cp > 0xffff ? 2 : 1;
      start[count] = i;
      len[count] = w;
      prev[count] = count - 1;
      next[count] = i + w < text.length ? count + 1 : -1;
      count++;
      i += w;
    }
    if (count === 0) return;

    const heap = new BigramHeap(count * 3);
    const tryAdd = (l: number, r: number) => {
      if (l < 0 || r < 0) return;
      const size = len[l] + len[r];
      if (size > this.maxPieceLength) return;
      const id = ids.get(text.substr(start[l], size));
      if (id === undefined) return;
      heap.push(this.scores[id], l, r, size);
    };
    for (let i = 1; i < count; i++) tryAdd(i - 1, i);
    while (heap.size > 0) {
      heap.pop();
      const l = heap.left;
      const r = heap.right;
      // Stale entry: one side was merged into something else since it was queued.
      if (len[l] === 0 || len[r] === 0 || len[l] + len[r] !== heap.width) continue;
      len[l] += len[r];
      len[r] = 0;
      next[l] = next[r];
      if (next[r] >= 0) prev[next[r]] = l;
      tryAdd(prev[l], l);
      tryAdd(l, next[l]);
    }
    for (let i = 0; i !== -1; i = next[i]) {
      const piece = text.substr(start[i], len[i]);
      if (ids.has(piece)) {
        out.push(piece);
      } else if (this.byteFallbackOk) {
        for (const b of utf8.encode(piece)) out.push(byteToken(b));
      } else if (this.unk_token !== undefined) {
        out.push(this.unk_token);
      }
    }
  }
}

function byteToken(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}

/** Max-heap of candidate merges keyed by score, then by leftmost position, in flat typed arrays. */
class BigramHeap {
  size = 0;
  /** The entry last popped. */
  left = 0;
  right = 0;
  width = 0;
  private score: Float32Array;
  private l: Int32Array;
  private r: Int32Array;
  private w: Int32Array;

  constructor(capacity: number) {
    const cap = Math.max(capacity, 4);
    this.score = new Float32Array(cap);
    this.l = new Int32Array(cap);
    this.r = new Int32Array(cap);
    this.w = new Int32Array(cap);
  }

  private before(i: number, j: number): boolean {
    return this.score[i] > this.score[j] || (this.score[i] === this.score[j] && this.l[i] < this.l[j]);
  }

  private swap(i: number, j: number): void {
    const s = this.score[i];
    this.score[i] = this.score[j];
    this.score[j] = s;
    let t = this.l[i];
    this.l[i] = this.l[j];
    this.l[j] = t;
    t = this.r[i];
    this.r[i] = this.r[j];
    this.r[j] = t;
    t = this.w[i];
    this.w[i] = this.w[j];
    this.w[j] = t;
  }

  push(score: number, left: number, right: number, width: number): void {
    if (this.size === this.score.length) this.grow();
    let i = this.size++;
    this.score[i] = score;
    this.l[i] = left;
    this.r[i] = right;
    this.w[i] = width;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): void {
    this.left = this.l[0];
    this.right = this.r[0];
    this.width = this.w[0];
    this.size--;
    if (this.size === 0) return;
    this.swap(0, this.size);
    let i = 0;
    for (;;) {
      const a = 2 * i + 1;
      const b = a + 1;
      let best = i;
      if (a < this.size && this.before(a, best)) best = a;
      if (b < this.size && this.before(b, best)) best = b;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
  }

  private grow(): void {
    const cap = this.score.length * 2;
    const score = new Float32Array(cap);
    score.set(this.score);
    this.score = score;
    for (const key of ['l', 'r', 'w'] as const) {
      const a = new Int32Array(cap);
      a.set(this[key]);
      this[key] = a;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF byte-level pre-tokenizers

/** The GPT-2 split, as the ByteLevel pre-tokenizer of tokenizers applies it. */
const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/** Llama 3 split, with the case-insensitive contractions spelled out as llama.cpp does. */
const LLAMA3_SPLIT =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function split(regex: string): Json {
  return { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false };
}

/** Regex splits applied in turn, each to the pieces of the previous one, then bytes to symbols. */
function splitsThenBytes(...regexes: string[]): Json {
  return {
    type: 'Sequence',
    pretokenizers: [
      ...regexes.map(split),
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    ],
  };
}

/**
 * The pre-tokenizer for a GGUF byte-level BPE vocabulary, from `tokenizer.ggml.pre`. The groups
 * and their regexes follow llama.cpp's llama-vocab.cpp; the defaults for BOS follow it too.
 */
function byteLevelPreTokenizer(
  pre: string,
  file: string,
): { preTokenizer: Json; ignoreMerges: boolean; addBos: boolean } {
  switch (pre) {
    case 'gpt2':
    case 'mpt':
    case 'olmo':
    case 'jais':
    case 'trillion':
    case 'granite-docling':
      return { preTokenizer: splitsThenBytes(GPT2_SPLIT), ignoreMerges: false, addBos: false };
    case 'smollm':
    case 'starcoder':
    case 'refact':
    case 'command-r':
    case 'codeshell':
    case 'exaone':
    case 'minerva-7b':
      return { preTokenizer: splitsThenBytes('\\p{N}', GPT2_SPLIT), ignoreMerges: false, addBos: false };
    case 'llama3':
    case 'llama-v3':
    case 'llama-bpe':
    case 'falcon3':
    case 'dbrx':
    case 'smaug-bpe':
      return { preTokenizer: splitsThenBytes(LLAMA3_SPLIT), ignoreMerges: true, addBos: true };
    case 'qwen2':
    case 'stablelm2':
    case 'deepseek-r1-qwen':
    case 'hunyuan':
      return { preTokenizer: splitsThenBytes(QWEN2_SPLIT), ignoreMerges: false, addBos: false };
    case 'default':
      return {
        preTokenizer: splitsThenBytes('[\\p{P}\\$\\+<=>\\^~\\|]+', GPT2_SPLIT, '\\p{N}+', '[0-9][0-9][0-9]'),
        ignoreMerges: false,
        addBos: false,
      };
    default:
      throw new FormatError(
        file,
        'tokenizer.ggml.pre',
        `unsupported pre-tokenizer ${JSON.stringify(pre)} (supported: gpt2, smollm, starcoder, llama-bpe, qwen2, default and their aliases)`,
      );
  }
}

// ---------------------------------------------------------------------------------------------
// helpers

function buildHf(json: Json, config: Json, source: string): HfTokenizer {
  try {
    return new HfTokenizer(json, config);
  } catch (e) {
    throw new FormatError(source, '', `unsupported or malformed tokenizer: ${(e as Error).message}`);
  }
}

/**
 * tokenizers.js implements `Digits` with JavaScript's ASCII-only `\d`, while the Rust library
 * (and llama.cpp) split on every Unicode number (\p{N}); an equivalent `Split` keeps e.g. Arabic
 * digits tokenised as the model saw them in training. The same goes for ByteLevel's built-in
 * regex, whose JavaScript `\s` differs from Unicode White_Space on U+0085 and U+FEFF; the library's
 * `Split` translates `\s` properly, so the regex is moved there when no prefix space is involved.
 */
function patchPreTokenizer(pt: unknown): unknown {
  if (typeof pt !== 'object' || pt === null) return pt;
  const p = pt as Json;
  switch (p.type) {
    case 'Digits':
      return split(p.individual_digits ? '\\p{N}' : '\\p{N}+');
    case 'ByteLevel':
      if (p.use_regex === false || p.add_prefix_space === true) return p;
      return {
        type: 'Sequence',
        pretokenizers: [split(GPT2_SPLIT), { ...p, use_regex: false }],
      };
    case 'Sequence':
      return {
        ...p,
        pretokenizers: Array.isArray(p.pretokenizers)
          ? p.pretokenizers.map(patchPreTokenizer)
          : p.pretokenizers,
      };
    default:
      return p;
  }
}

/** tokenizer_config.json spells special tokens as strings or as {content: ...} objects. */
function specialTokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json).content === 'string') {
    return (v as Json).content as string;
  }
  return undefined;
}

/** `chat_template` is a string, or a list of {name, template} of which "default" is the chat one. */
function pickChatTemplate(v: unknown, file: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const named = v.filter(
      (t): t is { name: string; template: string } =>
        typeof t === 'object' && t !== null && typeof t.name === 'string' && typeof t.template === 'string',
    );
    return (named.find((t) => t.name === 'default') ?? named[0])?.template;
  }
  throw new FormatError(file, 'chat_template', 'must be a string or a list of {name, template}');
}

/** Typed access to GGUF metadata with errors that name the file and key. */
class GgufReader {
  constructor(
    private readonly meta: GgufMetadataLike,
    private readonly file: string,
  ) {}

  private fail(key: string, problem: string): never {
    throw new FormatError(this.file, key, problem);
  }

  string(key: string): string {
    const v = this.meta.get(key);
    if (v === undefined) this.fail(key, 'missing');
    if (typeof v !== 'string') this.fail(key, 'must be a string');
    return v;
  }

  optionalString(key: string): string | undefined {
    return this.meta.get(key) === undefined ? undefined : this.string(key);
  }

  optionalBool(key: string): boolean | undefined {
    const v = this.meta.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') this.fail(key, 'must be a boolean');
    return v;
  }

  stringArray(key: string): string[] {
    const v = this.meta.get(key);
    if (v === undefined) this.fail(key, 'missing');
    if (!Array.isArray(v)) this.fail(key, 'must be an array of strings');
    for (let i = 0; i < v.length; i++)
      if (typeof v[i] !== 'string') this.fail(key, `element ${i} is not a string`);
    return v as string[];
  }

  private numberArray(key: string, n: number): ArrayLike<number> | undefined {
    const v = this.meta.get(key);
    if (v === undefined) return undefined;
    const ok = ArrayBuffer.isView(v) || Array.isArray(v);
    if (!ok) this.fail(key, 'must be an array of numbers');
    const arr = v as ArrayLike<unknown>;
    if (arr.length !== n) this.fail(key, `has ${arr.length} entries but there are ${n} tokens`);
    if (Array.isArray(v)) {
      for (let i = 0; i < n; i++)
        if (typeof v[i] !== 'number') this.fail(key, `element ${i} is not a number`);
    }
    return arr as ArrayLike<number>;
  }

  floatArray(key: string, n: number): Float32Array {
    const v = this.numberArray(key, n);
    if (v === undefined) this.fail(key, 'missing');
    return v instanceof Float32Array ? v : Float32Array.from(v);
  }

  intArray(key: string, n: number): Int32Array | undefined {
    const v = this.numberArray(key, n);
    if (v === undefined) return undefined;
    return v instanceof Int32Array ? v : Int32Array.from(v);
  }

  tokenId(key: string, n: number): number | undefined {
    const v = this.meta.get(key);
    if (v === undefined) return undefined;
    const id = typeof v === 'bigint' ? Number(v) : v;
    if (typeof id !== 'number' || !Number.isInteger(id)) this.fail(key, 'must be an integer');
    // Some converters write -1 (as uint32: 4294967295) for "no such token".
    if (id < 0 || id >= n) return undefined;
    return id;
  }
}
