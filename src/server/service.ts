/**
 * The model side of the server, run in the worker thread (worker.ts): the model, the monitor,
 * the gate and the control vectors loaded once; each submitted job checked, scored by the
 * monitor, given its hooks and added to one long-lived `Decoder` that steps while any sequence is
 * queued or decoding. Between steps the worker's event loop delivers new jobs and cancellations,
 * so a request that arrives mid-decode joins the running batch at the next step.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';

import { Concept } from '../concepts/concept.js';
import { promptMonitor } from '../concepts/monitor.js';
import { loadReading, readingMonitor } from '../concepts/reading-file.js';
import { vectorHooks } from '../eval/steering.js';
import { OptionError, SteerguardError } from '../formats/errors.js';
import type { Hook } from '../hooks/hooks.js';
import { type Decoder, Model } from '../model/model.js';
import { type PromptMonitor, monitorPrompts } from '../steering/conditional.js';
import { ControlVector } from '../steering/control-vector.js';
import type { EngineInfo, EngineSettings, FromWorker, SteeringApplied, Verdict } from './protocol.js';
import { type Job, RequestError } from './requests.js';

interface Gate {
  readonly steer: Hook[];
  readonly steerBenign: Hook[] | undefined;
}

interface Live {
  readonly controller: AbortController;
  /** Policy stop or block ended the reply: nothing more is sent. */
  stopped: boolean;
  /** Policy block refused the request in its prompt pass: the reply is the block message. */
  blocked: boolean;
  /** Text posted so far (a stopped reply is what its client has seen). */
  sent: string;
  /** Tokens of the reply when policy stop ended it. */
  keptTokens: number;
  /** Tokens generated so far. */
  generated: number;
}

export class ModelService {
  private readonly live = new Map<number, Live>();
  private readonly decoder: Decoder;
  private scheduled = false;
  private lastLoad = '';

  private constructor(
    private readonly model: Model,
    private readonly settings: EngineSettings,
    private readonly monitor: PromptMonitor | undefined,
    private readonly gate: Gate | undefined,
    private readonly vectors: ReadonlyMap<string, ControlVector>,
    private readonly post: (m: FromWorker) => void,
  ) {
    this.decoder = model.decoder({ maxBatch: settings.maxBatch });
  }

  /** Loads everything `settings` names; throws (a SteerguardError) for anything unusable. */
  static async load(settings: EngineSettings, post: (m: FromWorker) => void): Promise<ModelService> {
    const model = await Model.load(settings.model, { threads: settings.threads, weights: settings.weights });
    const monitor = loadMonitor(model, settings);
    let gate: Gate | undefined;
    if (settings.vector !== undefined) {
      if (!monitor) throw new OptionError('--vector (the gate) needs a monitor: --reading or --concept');
      const add = await vectorHooks(model, { steer: 'add', vector: settings.vector, coeff: settings.coeff });
      const ablate =
        settings.benignBelow === undefined
          ? undefined
          : await vectorHooks(model, { steer: 'ablate', vector: settings.vector, coeff: 1 });
      gate = { steer: add.hooks, steerBenign: ablate?.hooks };
    }
    const vectors = loadVectors(model, settings.vectorsDir);
    return new ModelService(model, settings, monitor, gate, vectors, post);
  }

  info(): EngineInfo {
    const { hasChatTemplate } = this;
    return {
      // The file or folder name, as clients would call it: SmolLM2-135M-Instruct.Q4_1
      model: path.basename(this.model.identity.name).replace(/\.gguf$/, ''),
      maxContext: this.model.config.maxContext,
      chat: hasChatTemplate,
      backend: this.model.backend.name,
      vectors: [...this.vectors.keys()],
      monitor: this.monitor
        ? {
            threshold: this.monitor.threshold,
            benignBelow: this.monitor.benignBelow ?? this.monitor.threshold,
          }
        : null,
      gate: this.gate !== undefined,
    };
  }

  private get hasChatTemplate(): boolean {
    try {
      return this.model.tokenizer.chatTemplate !== undefined;
    } catch {
      return false;
    }
  }

  /** Checks, scores and queues a job; every outcome is posted (accepted or rejected, then the rest). */
  submit(id: number, job: Job): void {
    try {
      this.start(id, job);
    } catch (e) {
      if (e instanceof RequestError)
        this.post({ type: 'rejected', id, status: e.status, message: e.message, param: e.param });
      else if (e instanceof SteerguardError)
        this.post({ type: 'rejected', id, status: 400, message: e.message, param: null });
      else this.post({ type: 'failed', id, message: e instanceof Error ? e.message : String(e) });
    }
  }

  /** Ends a job's generation at the next step (its client left, or the server stops). */
  cancel(id: number): void {
    this.live.get(id)?.controller.abort();
  }

  private start(id: number, job: Job): void {
    const ext = job.extension;
    const field = job.prompt.kind === 'chat' ? 'messages' : 'prompt';
    if (job.prompt.kind === 'chat' && !this.hasChatTemplate)
      throw new RequestError(
        400,
        `messages: ${this.model.identity.name} has no chat template; use /v1/completions`,
        'messages',
      );
    let tokens: number[];
    try {
      tokens = this.model.tokenize(
        job.prompt.kind === 'chat' ? { messages: job.prompt.messages } : job.prompt.text,
      );
    } catch (e) {
      // e.g. a chat template that refuses the conversation (raise_exception: roles must alternate)
      throw new RequestError(400, `${field}: ${e instanceof Error ? e.message : String(e)}`, field);
    }
    const context = this.model.config.maxContext;
    const limit = Math.min(this.settings.maxPromptTokens, context - 1);
    if (tokens.length > limit)
      throw new RequestError(
        400,
        `${field}: the prompt has ${tokens.length} tokens; at most ${limit} are accepted ` +
          `(the model's context is ${context}, the server's prompt limit ${this.settings.maxPromptTokens})`,
        field,
        'context_length_exceeded',
      );
    const room = context - tokens.length;
    if (job.maxTokens !== undefined && job.maxTokens > room)
      throw new RequestError(
        400,
        `max_tokens: ${tokens.length} prompt tokens + ${job.maxTokens} do not fit the model's context ` +
          `of ${context} (use max_tokens <= ${room})`,
        'max_tokens',
        'context_length_exceeded',
      );
    const maxNewTokens = job.maxTokens ?? Math.min(this.settings.maxTokens, room);

    const steering: SteeringApplied['vectors'][number][] = [];
    const steerHooks = ext.steer.flatMap((s, i) => {
      const at = `steerguard.steer[${i}]`;
      const cv = this.vectors.get(s.vector);
      if (!cv)
        throw new RequestError(
          400,
          `${at}.vector: no vector named ${JSON.stringify(s.vector)} is loaded ` +
            `(${this.vectors.size === 0 ? 'the server was started without --vectors' : `loaded: ${[...this.vectors.keys()].join(', ')}`})`,
          `${at}.vector`,
        );
      const layers = s.layers ?? cv.layers;
      const missing = layers.find((l) => !cv.layers.includes(l));
      if (missing !== undefined)
        throw new RequestError(
          400,
          `${at}.layers: ${s.vector} has no layer ${missing} (it has ${cv.layers.join(', ')})`,
          `${at}.layers`,
        );
      steering.push({ vector: s.vector, coeff: s.coeff, layers });
      return cv.restrict(layers).hooks(s.coeff);
    });

    const needsMonitor = ext.policy !== 'flag' || ext.scores;
    const monitor = this.monitor;
    if (needsMonitor && !monitor)
      throw new RequestError(
        400,
        `steerguard.${ext.scores ? 'scores' : 'policy'}: the server was started without a monitor ` +
          '(--reading or --concept)',
        `steerguard.${ext.scores ? 'scores' : 'policy'}`,
      );
    if (ext.policy === 'steer' && !this.gate)
      throw new RequestError(
        400,
        'steerguard.policy: steer needs the gate vector, and the server was started without --vector',
        'steerguard.policy',
      );

    // A request whose prompt pass nothing steers (policies flag, stop and block, no vectors of its
    // own) has its verdict read in its generation's own prompt pass, as that pass runs: no second
    // pass. Block refuses there, before any text is sent (the token that pass picks is dropped).
    // Steer needs the verdict before the prompt pass (it steers that pass), and a request's own
    // vectors would steer what the monitor reads.
    const verdictInPass = monitor !== undefined && ext.policy !== 'steer' && ext.steer.length === 0;
    const verdict = monitor && !verdictInPass ? this.verdictOf(tokens, monitor) : null;
    if (ext.policy === 'block' && verdict?.verdict === 'flagged') {
      this.post({
        type: 'accepted',
        id,
        promptTokens: tokens.length,
        verdict,
        steering: { vectors: steering, gate: null },
        blocked: true,
      });
      this.post({
        type: 'done',
        id,
        finishReason: 'content_filter',
        completionTokens: 0,
        text: this.settings.blockMessage,
      });
      return;
    }
    let gateHooks: Hook[] = [];
    let gateDid: SteeringApplied['gate'] = null;
    if (ext.policy === 'steer' && this.gate && verdict) {
      gateHooks =
        verdict.verdict === 'flagged'
          ? this.gate.steer
          : verdict.verdict === 'benign'
            ? (this.gate.steerBenign ?? [])
            : [];
      gateDid = gateHooks.length === 0 ? 'none' : verdict.verdict === 'flagged' ? 'add' : 'ablate';
    }

    const live: Live = {
      controller: new AbortController(),
      stopped: false,
      blocked: false,
      sent: '',
      keptTokens: 0,
      generated: 0,
    };
    const readScores = monitor && (ext.scores || ext.policy === 'stop');
    const readers = readScores
      ? tokenScoreHooks(monitor, tokens.length, (index, score) => {
          if (live.stopped) return;
          if (ext.scores) this.post({ type: 'score', id, index, score });
          if (ext.policy === 'stop' && score > monitor.threshold) {
            // Token `index` is the last one kept; the one this pass picks next is dropped.
            live.stopped = true;
            live.keptTokens = index + 1;
            live.controller.abort();
          }
        })
      : [];
    const accept = (v: Verdict | null) =>
      this.post({
        type: 'accepted',
        id,
        promptTokens: tokens.length,
        verdict: v,
        steering: { vectors: steering, gate: gateDid },
        blocked: live.blocked,
      });
    const verdictReaders =
      monitor && verdictInPass
        ? scoreHooks(
            monitor,
            (pos) => pos === tokens.length - 1,
            (_, score) => {
              const v = verdictFor(score, monitor);
              if (ext.policy === 'block' && v.verdict === 'flagged') {
                live.stopped = true;
                live.blocked = true;
                live.controller.abort();
              }
              accept(v);
            },
          )
        : [];
    this.live.set(id, live);
    const reply = this.decoder.add(
      { tokens },
      {
        maxNewTokens,
        temperature: job.temperature,
        topP: job.topP,
        seed: job.seed,
        stop: job.stop,
        hooks: [...steerHooks, ...gateHooks, ...verdictReaders, ...readers],
        signal: live.controller.signal,
        onToken: () => {
          live.generated++;
        },
        onText: (text) => {
          if (live.stopped || text === '') return;
          live.sent += text;
          this.post({ type: 'text', id, text, tokens: live.generated });
        },
      },
    );
    if (!verdictInPass) accept(verdict);
    reply.then(
      (g) => {
        this.live.delete(id);
        this.post({
          type: 'done',
          id,
          finishReason: live.stopped
            ? 'content_filter'
            : g.finishReason === 'aborted'
              ? 'cancelled'
              : g.finishReason,
          completionTokens: live.stopped ? live.keptTokens : g.tokens.length,
          text: live.blocked ? this.settings.blockMessage : live.stopped ? live.sent : g.text,
        });
      },
      (e: unknown) => {
        this.live.delete(id);
        this.post({ type: 'failed', id, message: e instanceof Error ? e.message : String(e) });
      },
    );
    this.schedule();
  }

  private verdictOf(tokens: readonly number[], monitor: PromptMonitor): Verdict {
    // The same scoring as conditional steering's first step (an extra prompt pass, logits off).
    const [flag] = monitorPrompts(this.model, [{ tokens }], monitor);
    return verdictFor(flag.score, monitor);
  }

  /** Steps the decoder on later turns of the event loop while it has work, letting messages in between. */
  private schedule(): void {
    if (this.scheduled || this.decoder.idle) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.decoder.step();
      const load = `${this.decoder.waiting} ${this.decoder.active}`;
      if (load !== this.lastLoad) {
        this.lastLoad = load;
        this.post({ type: 'load', waiting: this.decoder.waiting, active: this.decoder.active });
      }
      this.schedule();
    });
  }
}

function loadMonitor(model: Model, s: EngineSettings): PromptMonitor | undefined {
  if (s.reading !== undefined && s.concept !== undefined)
    throw new OptionError('give the monitor as --reading or --concept, not both');
  let monitor: PromptMonitor | undefined;
  if (s.reading !== undefined) {
    monitor = readingMonitor(loadReading(s.reading, model).reading, {
      threshold: s.threshold,
      benignBelow: s.benignBelow,
    });
  } else if (s.concept !== undefined) {
    const m = promptMonitor(Concept.load(s.concept, model), {
      layer: s.monitorLayer,
      threshold: s.threshold,
    });
    monitor = { ...m, benignBelow: s.benignBelow };
  } else if (s.threshold !== undefined || s.benignBelow !== undefined)
    throw new OptionError('--threshold and --benign-below need a monitor: --reading or --concept');
  if (monitor) {
    const benignBelow = monitor.benignBelow ?? monitor.threshold;
    if (!(
      Number.isFinite(monitor.threshold) &&
      Number.isFinite(benignBelow) &&
      benignBelow <= monitor.threshold
    ))
      throw new OptionError(
        `--benign-below must be a finite number at most the threshold ${monitor.threshold}, got ${benignBelow}`,
      );
  }
  return monitor;
}

/** Every `*.gguf` control vector in `dir`, by file name without the extension. */
function loadVectors(model: Model, dir: string | undefined): Map<string, ControlVector> {
  const vectors = new Map<string, ControlVector>();
  if (dir === undefined) return vectors;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.gguf'))
    .sort();
  if (files.length === 0) throw new OptionError(`--vectors ${dir}: the folder holds no .gguf control vector`);
  for (const f of files) {
    const cv = ControlVector.load(path.join(dir, f));
    cv.checkModel(model.config, { identity: model.identity, file: path.join(dir, f) });
    vectors.set(f.slice(0, -'.gguf'.length), cv);
  }
  return vectors;
}

/** The verdict of a prompt scoring `score`, as `monitorPrompts` gives it. */
function verdictFor(score: number, monitor: PromptMonitor): Verdict {
  const benignBelow = monitor.benignBelow ?? monitor.threshold;
  return {
    score,
    verdict: score > monitor.threshold ? 'flagged' : score < benignBelow ? 'benign' : 'uncertain',
    threshold: monitor.threshold,
    benign_below: benignBelow,
  };
}

/**
 * Hooks that score each generated token as it is fed back (its row at position promptLength + k
 * is token k's), as the token monitor reads them (src/eval/token-monitor.ts). Placed after the
 * steering hooks, they see the steered stream.
 */
function tokenScoreHooks(
  monitor: PromptMonitor,
  promptLength: number,
  onScore: (index: number, score: number) => void,
): Hook[] {
  return scoreHooks(
    monitor,
    (pos) => pos >= promptLength,
    (pos, score) => onScore(pos - promptLength, score),
  );
}

/** Hooks that give the monitor's score of the rows at the positions `wanted` picks, read at its hooks. */
function scoreHooks(
  monitor: PromptMonitor,
  wanted: (pos: number) => boolean,
  onScore: (pos: number, score: number) => void,
): Hook[] {
  const K = monitor.hooks.length;
  const pending = new Map<number, Float32Array[]>();
  return monitor.hooks.map((name, k) => ({
    name,
    fn: (act, ctx) => {
      for (let r = 0; r < ctx.rows; r++) {
        const pos = ctx.pos[r];
        if (!wanted(pos)) continue;
        const got = pending.get(pos) ?? new Array<Float32Array>(K);
        got[k] = act.slice(r * ctx.width, (r + 1) * ctx.width);
        if (got.filter((x) => x !== undefined).length < K) {
          pending.set(pos, got);
          continue;
        }
        pending.delete(pos);
        const score = monitor.score(got);
        if (!Number.isFinite(score))
          throw new SteerguardError(`the monitor gave a non-finite score (${score}) at position ${pos}`);
        onScore(pos, score);
      }
    },
  }));
}
