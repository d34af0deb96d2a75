/**
 * The request bodies `steerguard serve` accepts, checked field by field: the OpenAI fields it
 * implements and the `steerguard` extension. Every field is known or the request is refused with
 * HTTP 400 naming it (`param`), never silently ignored: a client asking for `n: 3`,
 * `logprobs` or a typo'd option must learn that it did not get it.
 */

/** The refusal of a request, in the shape of an OpenAI error. */
export class RequestError extends Error {
  override readonly name = 'RequestError';
  constructor(
    /** HTTP status. */
    readonly status: number,
    message: string,
    /** The offending field (dotted path, e.g. `messages[1].role`), or null. */
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type: string = status >= 500 ? 'server_error' : 'invalid_request_error',
  ) {
    super(message);
  }

  /** The response body: `{ error: { message, type, param, code } }`. */
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/**
 * What the server does with the monitor's verdict on a request:
 * - flag: annotate the response only;
 * - steer: the gated correction (flagged: add the gate's vector; clearly benign: ablate it);
 * - block: a flagged request gets a fixed refusal and never reaches generation;
 * - stop: the reply ends at the first generated token whose score crosses the threshold.
 */
export const POLICIES = ['flag', 'steer', 'block', 'stop'] as const;
export type Policy = (typeof POLICIES)[number];

/** One control vector added to a request's residual stream. */
export interface SteerRequest {
  /** Name of a vector loaded at start (`--vectors DIR`: the file name without `.gguf`). */
  readonly vector: string;
  readonly coeff: number;
  /** Only these layers of the vector (default: all of its layers). */
  readonly layers?: readonly number[];
}

/** The `steerguard` extension field of a request. */
export interface Extension {
  readonly steer: readonly SteerRequest[];
  /** Stream (and return) the monitor's score of every generated token. */
  readonly scores: boolean;
  readonly policy: Policy;
}

export type JobPrompt =
  | { readonly kind: 'chat'; readonly messages: readonly { role: string; content: string }[] }
  | { readonly kind: 'text'; readonly text: string };

/** A checked request, as the model worker takes it. */
export interface Job {
  readonly prompt: JobPrompt;
  /** Undefined: as many as the server's limit and the context allow. */
  readonly maxTokens: number | undefined;
  readonly temperature: number;
  readonly topP: number;
  readonly seed: number;
  readonly stop: readonly string[];
  readonly extension: Extension;
}

export interface ParsedRequest {
  readonly model: string;
  readonly stream: boolean;
  /** `stream_options.include_usage`: a last chunk with the token counts. */
  readonly includeUsage: boolean;
  readonly job: Job;
}

export interface RequestDefaults {
  readonly policy: Policy;
  /** A request may not name a policy other than `policy` (403). */
  readonly policyPinned: boolean;
  /** Largest `max_tokens` accepted. */
  readonly maxTokens: number;
}

type Body = Record<string, unknown>;

const bad = (param: string, message: string): RequestError =>
  new RequestError(400, `${param}: ${message}`, param);

function isObject(x: unknown): x is Body {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Refuses any key of `o` outside `known` (`at` prefixes the field's path). */
function onlyKnown(o: Body, known: readonly string[], at: string): void {
  for (const k of Object.keys(o))
    if (!known.includes(k))
      throw bad(`${at}${k}`, `unknown or unsupported field (supported: ${known.join(', ')})`);
}

function optionalNumber(
  o: Body,
  key: string,
  check: (x: number) => boolean,
  want: string,
  at = '',
): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw bad(`${at}${key}`, `must be ${want}`);
  return v;
}

function optionalBoolean(o: Body, key: string, at = ''): boolean | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw bad(`${at}${key}`, 'must be true or false');
  return v;
}

const CHAT_ROLES = ['system', 'user', 'assistant'] as const;

function parseMessages(v: unknown): { role: string; content: string }[] {
  if (!Array.isArray(v) || v.length === 0) throw bad('messages', 'must be a non-empty list');
  return v.map((m: unknown, i) => {
    const at = `messages[${i}]`;
    if (!isObject(m)) throw bad(at, 'must be an object { role, content }');
    onlyKnown(m, ['role', 'content'], `${at}.`);
    if (!CHAT_ROLES.includes(m.role as (typeof CHAT_ROLES)[number]))
      throw bad(`${at}.role`, `must be one of ${CHAT_ROLES.join(', ')}`);
    return { role: m.role as string, content: parseContent(m.content, `${at}.content`) };
  });
}

/** A message's content: a string, or a list of `{ type: 'text', text }` parts (joined). */
function parseContent(v: unknown, at: string): string {
  if (typeof v === 'string') return v;
  if (!Array.isArray(v)) throw bad(at, 'must be a string or a list of text parts');
  return v
    .map((part: unknown, j) => {
      const p = `${at}[${j}]`;
      if (!isObject(part) || part.type !== 'text' || typeof part.text !== 'string')
        throw bad(p, "must be { type: 'text', text: string } (only text is supported)");
      onlyKnown(part, ['type', 'text'], `${p}.`);
      return part.text;
    })
    .join('');
}

function parseStop(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length > 4 || !list.every((s) => typeof s === 'string' && s !== ''))
    throw bad('stop', 'must be a non-empty string or a list of at most 4 of them');
  return list as string[];
}

function parseExtension(v: unknown, defaults: RequestDefaults): Extension {
  if (v === undefined || v === null) return { steer: [], scores: false, policy: defaults.policy };
  if (!isObject(v)) throw bad('steerguard', 'must be an object { steer, scores, policy }');
  onlyKnown(v, ['steer', 'scores', 'policy'], 'steerguard.');
  const policy = v.policy ?? defaults.policy;
  if (!POLICIES.includes(policy as Policy))
    throw bad('steerguard.policy', `must be one of ${POLICIES.join(', ')}`);
  if (defaults.policyPinned && policy !== defaults.policy)
    throw new RequestError(
      403,
      `steerguard.policy: the server pins the policy to ${defaults.policy} (--policy-pinned); ` +
        `a request may not choose ${policy as Policy}`,
      'steerguard.policy',
      'policy_pinned',
    );
  const steerList = v.steer ?? [];
  if (!Array.isArray(steerList)) throw bad('steerguard.steer', 'must be a list of { vector, coeff, layers }');
  const steer = steerList.map((s: unknown, i): SteerRequest => {
    const at = `steerguard.steer[${i}]`;
    if (!isObject(s)) throw bad(at, 'must be an object { vector, coeff, layers }');
    onlyKnown(s, ['vector', 'coeff', 'layers'], `${at}.`);
    if (typeof s.vector !== 'string' || s.vector === '')
      throw bad(`${at}.vector`, 'must be the name of a loaded vector');
    const coeff = optionalNumber(s, 'coeff', () => true, 'a finite number', `${at}.`) ?? 1;
    let layers: number[] | undefined;
    if (s.layers !== undefined) {
      if (
        !Array.isArray(s.layers) ||
        s.layers.length === 0 ||
        !s.layers.every((l) => Number.isInteger(l) && (l as number) >= 0)
      )
        throw bad(`${at}.layers`, 'must be a non-empty list of layer indices');
      layers = s.layers as number[];
    }
    return { vector: s.vector, coeff, layers };
  });
  return { steer, scores: optionalBoolean(v, 'scores', 'steerguard.') ?? false, policy: policy as Policy };
}

/** The fields both endpoints share: sampling, limits, streaming, the extension. */
function parseCommon(
  body: Body,
  defaults: RequestDefaults,
  prompt: JobPrompt,
  maxTokensKeys: readonly string[],
): ParsedRequest {
  if (typeof body.model !== 'string' || body.model === '') throw bad('model', 'must be a model name');
  const given = maxTokensKeys.filter((k) => body[k] !== undefined && body[k] !== null);
  if (given.length > 1) throw bad(given[1], `give one of ${given.join(', ')}`);
  const maxTokens =
    given.length === 0
      ? undefined
      : optionalNumber(
          body,
          given[0],
          (x) => Number.isInteger(x) && x >= 1 && x <= defaults.maxTokens,
          `an integer in 1..${defaults.maxTokens} (the server's limit)`,
        );
  optionalNumber(body, 'n', (x) => x === 1, '1 (one choice per request)');
  const stream = optionalBoolean(body, 'stream') ?? false;
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!stream) throw bad('stream_options', 'needs stream: true');
    if (!isObject(body.stream_options)) throw bad('stream_options', 'must be { include_usage }');
    onlyKnown(body.stream_options, ['include_usage'], 'stream_options.');
    includeUsage = optionalBoolean(body.stream_options, 'include_usage', 'stream_options.') ?? false;
  }
  return {
    model: body.model,
    stream,
    includeUsage,
    job: {
      prompt,
      maxTokens,
      temperature: optionalNumber(body, 'temperature', (x) => x >= 0 && x <= 2, 'in 0..2') ?? 0,
      topP: optionalNumber(body, 'top_p', (x) => x > 0 && x <= 1, 'in (0, 1]') ?? 1,
      seed: optionalNumber(body, 'seed', (x) => Number.isSafeInteger(x), 'an integer') ?? 0,
      stop: parseStop(body.stop),
      extension: parseExtension(body.steerguard, defaults),
    },
  };
}

const COMMON_KEYS = [
  'model',
  'max_tokens',
  'temperature',
  'top_p',
  'seed',
  'stop',
  'stream',
  'stream_options',
  'n',
  'steerguard',
];

/** A `/v1/chat/completions` body. */
export function parseChatRequest(body: unknown, defaults: RequestDefaults): ParsedRequest {
  if (!isObject(body)) throw new RequestError(400, 'the body must be a JSON object');
  onlyKnown(body, [...COMMON_KEYS, 'messages', 'max_completion_tokens'], '');
  const prompt: JobPrompt = { kind: 'chat', messages: parseMessages(body.messages) };
  return parseCommon(body, defaults, prompt, ['max_tokens', 'max_completion_tokens']);
}

/** A `/v1/completions` body (one prompt string, or a list holding one). */
export function parseCompletionRequest(body: unknown, defaults: RequestDefaults): ParsedRequest {
  if (!isObject(body)) throw new RequestError(400, 'the body must be a JSON object');
  onlyKnown(body, [...COMMON_KEYS, 'prompt'], '');
  const p = Array.isArray(body.prompt) && body.prompt.length === 1 ? body.prompt[0] : body.prompt;
  if (typeof p !== 'string' || p === '')
    throw bad('prompt', 'must be a non-empty string (or a list of one; token-id prompts are not supported)');
  return parseCommon(body, defaults, { kind: 'text', text: p }, ['max_tokens']);
}
