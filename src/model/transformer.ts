/**
 * The forward pass: one function, read top to bottom. Works for every supported architecture;
 * the differences are flags in ModelConfig (qk norms, sandwich norms, biases, embedding scale,
 * per-layer window and rotary frequencies).
 *
 * Letters: B sequences in the batch, M rows = tokens of all sequences packed one after another
 * (no padding, so a sequence's result cannot depend on its neighbours), D d_model, H query heads,
 * G kv heads, E head dim, F MLP width, V vocab, S keys of one sequence so far.
 */
import type { Backend } from '../engine/backend.js';
import { ggmlTypeName } from '../formats/quant.js';
import { type Hook, type HookContext, type HookFn, type HookName, blockHook } from '../hooks/hooks.js';
import type { ModelConfig } from './config.js';
import { type LoraAdapter, type LoraTarget, loraScale } from './lora.js';
import { ropeFrequencies } from './rope.js';
import { type ModelWeights, type WeightMatrix, matrixRow } from './weights.js';

/** Keys and values of one sequence for every layer, grown as tokens arrive. */
export class KvCache {
  /** S: tokens stored. */
  length = 0;
  private capacity = 0;
  /** Per layer [capacity, G*E]. */
  readonly k: Float32Array[] = [];
  readonly v: Float32Array[] = [];

  constructor(
    private readonly nLayers: number,
    private readonly rowWidth: number,
  ) {}

  /** Makes room for `extra` more tokens. */
  reserve(extra: number): void {
    const need = this.length + extra;
    if (need <= this.capacity) return;
    const cap = Math.max(need, this.capacity * 2, 64);
    for (let l = 0; l < this.nLayers; l++) {
      const k = new Float32Array(cap * this.rowWidth);
      const v = new Float32Array(cap * this.rowWidth);
      if (this.capacity > 0) {
        k.set(this.k[l].subarray(0, this.length * this.rowWidth));
        v.set(this.v[l].subarray(0, this.length * this.rowWidth));
      }
      this.k[l] = k;
      this.v[l] = v;
    }
    this.capacity = cap;
  }

  /**
   * A copy of the stored tokens' keys and values, with room for `extra` more: a shared prefix's
   * cache is copied for each continuation, which then grows its copy without touching the original.
   */
  clone(extra = 0): KvCache {
    const copy = new KvCache(this.nLayers, this.rowWidth);
    copy.reserve(this.length + extra);
    if (this.length === 0) return copy;
    for (let l = 0; l < this.nLayers; l++) {
      copy.k[l].set(this.k[l].subarray(0, this.length * this.rowWidth));
      copy.v[l].set(this.v[l].subarray(0, this.length * this.rowWidth));
    }
    copy.length = this.length;
    return copy;
  }
}

/** One sequence's part of a forward call. */
export interface SequenceStep {
  /**
   * The sequence's id, what hooks see as `ctx.seq` (the prompt's index in a `run` or `generate`
   * call). Ids are distinct within a forward call; `ctx.promptLength` is indexed by them.
   */
  readonly id: number;
  /** New tokens to process (the whole prompt at first, then one token per generation step). */
  readonly tokens: readonly number[];
  readonly cache: KvCache;
  /** Number of prompt tokens of the sequence (positions at or beyond it are generated). */
  readonly promptLength: number;
  /** This sequence's own hooks: they see only its rows, after `hooks` and before `lastHooks`. */
  readonly hooks?: readonly Hook[];
}

export interface ForwardOptions {
  /** Fired first at each hook point, on every row. */
  readonly hooks: readonly Hook[];
  /** Fired last at each hook point, on every row (after the sequences' own hooks). */
  readonly lastHooks?: readonly Hook[];
  /**
   * Which rows get logits: the last new token of each sequence, every row, none, or the last
   * `lastTokens` new tokens of each sequence (all of a shorter one).
   */
  readonly logits: 'last' | 'all' | 'none' | { readonly lastTokens: number };
  /** 0 for the prompt pass, n for the n-th generation step (passed to hooks). */
  readonly step: number;
  /**
   * LoRA adapters applied unmerged, each adding (alpha/r)·B·(A·x) to its projections' outputs
   * (after the bias, before any norm), in order. Their shapes are the caller's to check
   * (`checkLoraAdapter`).
   */
  readonly adapters?: readonly LoraAdapter<Float32Array>[];
}

export interface ForwardResult {
  /** [R, V] logits of the selected rows, in row order. */
  readonly logits: Float32Array;
  /** [R] index into the packed rows of each logits row. */
  readonly logitRows: Int32Array;
  /** [B] index of the first packed row of each sequence. */
  readonly rowStart: Int32Array;
}

function byHookName(hooks: readonly Hook[]): Map<HookName, HookFn[]> {
  const byName = new Map<HookName, HookFn[]>();
  for (const h of hooks) {
    const list = byName.get(h.name);
    if (list) list.push(h.fn);
    else byName.set(h.name, [h.fn]);
  }
  return byName;
}

/** Runs the model over the new tokens of each sequence, extending their KV caches. */
export function forward(
  cfg: ModelConfig,
  w: ModelWeights,
  be: Backend,
  seqs: readonly SequenceStep[],
  opts: ForwardOptions,
): ForwardResult {
  const { dModel: D, nHeads: H, nKvHeads: G, headDim: E, ffnDim: F, vocabSize: V, rmsEps: eps } = cfg;
  const HE = H * E;
  const GE = G * E;

  // Row bookkeeping shared with hooks.
  const B = seqs.length;
  const rowStart = new Int32Array(B);
  let M = 0;
  let maxId = -1;
  for (let b = 0; b < B; b++) {
    rowStart[b] = M;
    M += seqs[b].tokens.length;
    const id = seqs[b].id;
    if (!(Number.isInteger(id) && id >= 0)) throw new Error(`sequence id ${id} is not an integer >= 0`);
    maxId = Math.max(maxId, id);
  }
  const seqOfRow = new Int32Array(M);
  const pos = new Int32Array(M);
  const promptLength = new Int32Array(maxId + 1).fill(-1);
  for (let b = 0; b < B; b++) {
    const s = seqs[b];
    if (promptLength[s.id] !== -1) throw new Error(`sequence id ${s.id} appears twice in one forward call`);
    promptLength[s.id] = s.promptLength;
    s.cache.reserve(s.tokens.length);
    for (let t = 0; t < s.tokens.length; t++) {
      seqOfRow[rowStart[b] + t] = s.id;
      pos[rowStart[b] + t] = s.cache.length + t;
    }
  }

  // Quantized matrices (weights: 'quantized'): prompt passes multiply exactly against the dequantized
  // blocks; generation steps round the activations to int8 blocks and take integer dot products, as
  // llama.cpp does, since batch-1 decoding is bound by the weight bytes it reads (docs/ENGINE.md).
  const activations = opts.step > 0 ? 'q8' : 'f32';
  const mm = (
    out: Float32Array,
    a: Float32Array,
    m: WeightMatrix,
    rows: number,
    K: number,
    N: number,
    bias?: Float32Array,
  ) => {
    if (m instanceof Float32Array) be.matmul(out, a, m, rows, K, N, bias);
    else if (be.matmulQuant) be.matmulQuant(out, a, m.bytes, m.type, rows, K, N, bias, activations);
    else throw new Error(`the ${be.name} backend cannot multiply ${ggmlTypeName(m.type)} weights`);
  };

  // out[M, N] += (alpha/r)·(x·Aᵀ)·Bᵀ for each adapter on this projection of layer l.
  const adapters = opts.adapters ?? [];
  const maxRank = Math.max(0, ...adapters.map((a) => a.rank));
  const loraIn = new Float32Array(M * maxRank);
  const loraOut = adapters.length > 0 ? new Float32Array(M * Math.max(D, HE, F)) : new Float32Array(0);
  const addLora = (
    out: Float32Array,
    x: Float32Array,
    l: number,
    target: LoraTarget,
    K: number,
    N: number,
  ) => {
    for (const adapter of adapters) {
      const pair = adapter.layers[l][target];
      if (!pair) continue;
      const r = adapter.rank;
      const ax = loraIn.subarray(0, M * r);
      const bax = loraOut.subarray(0, M * N);
      be.matmul(ax, x, pair.a, M, K, r);
      be.matmul(bax, ax, pair.b, M, r, N);
      const s = loraScale(adapter);
      for (let i = 0; i < M * N; i++) out[i] += s * bax[i];
    }
  };

  const first = byHookName(opts.hooks);
  const last = byHookName(opts.lastHooks ?? []);
  const own = seqs.map((s) => (s.hooks && s.hooks.length > 0 ? byHookName(s.hooks) : undefined));
  const ownRows = (b: number): [number, number] => [rowStart[b], seqs[b].tokens.length];
  const fire = (
    name: HookName,
    act: Float32Array,
    rows = M,
    width = D,
    rowSeq = seqOfRow,
    rowPos = pos,
    seqRows = ownRows,
  ) => {
    const layer = name.startsWith('blocks.') ? Number(name.split('.')[1]) : undefined;
    const context = (r0: number, n: number): HookContext => ({
      name,
      layer,
      rows: n,
      width,
      seq: r0 === 0 && n === rows ? rowSeq : rowSeq.subarray(r0, r0 + n),
      pos: r0 === 0 && n === rows ? rowPos : rowPos.subarray(r0, r0 + n),
      promptLength,
      step: opts.step,
    });
    const all = first.get(name);
    if (all) for (const fn of all) fn(act, context(0, rows));
    // A sequence's own rows: its tokens, or (logits) its rows among the logit rows.
    own.forEach((hooks, b) => {
      const fns = hooks?.get(name);
      if (!fns) return;
      const [r0, n] = seqRows(b);
      const ctx = context(r0, n);
      for (const fn of fns) fn(act.subarray(r0 * width, (r0 + n) * width), ctx);
    });
    const tail = last.get(name);
    if (tail) for (const fn of tail) fn(act, context(0, rows));
  };

  // x [M, D]: the residual stream.
  const x = new Float32Array(M * D);
  const embedRow = new Float32Array(D);
  for (let b = 0; b < B; b++) {
    const toks = seqs[b].tokens;
    for (let t = 0; t < toks.length; t++) {
      const id = toks[t];
      if (!(id >= 0 && id < V)) throw new Error(`token id ${id} is outside the vocabulary (0..${V - 1})`);
      const row = (rowStart[b] + t) * D;
      const e = matrixRow(w.embed, id, D, embedRow);
      for (let i = 0; i < D; i++) x[row + i] = e[i] * cfg.embedScale;
    }
  }
  fire('hook_embed', x);

  const h = new Float32Array(M * D); // normed input of a sub-block
  const q = new Float32Array(M * HE);
  const k = new Float32Array(M * GE);
  const v = new Float32Array(M * GE);
  const att = new Float32Array(M * HE);
  const out = new Float32Array(M * D); // a sub-block's contribution to the stream
  const gate = new Float32Array(M * F);
  const up = new Float32Array(M * F);
  const rope = ropeFrequencies(cfg);

  for (let l = 0; l < cfg.nLayers; l++) {
    const lw = w.layers[l];
    fire(blockHook(l, 'hook_resid_pre'), x);

    // Attention.
    be.rmsnorm(h, x, lw.attnNorm, M, D, eps);
    mm(q, h, lw.wq, M, D, HE, lw.bq);
    mm(k, h, lw.wk, M, D, GE, lw.bk);
    mm(v, h, lw.wv, M, D, GE, lw.bv);
    addLora(q, h, l, 'q', D, HE);
    addLora(k, h, l, 'k', D, GE);
    addLora(v, h, l, 'v', D, GE);
    if (lw.qNorm && lw.kNorm) {
      be.rmsnorm(q, q, lw.qNorm, M * H, E, eps);
      be.rmsnorm(k, k, lw.kNorm, M * G, E, eps);
    }
    const { invFreq, scale } = rope[l];
    be.rope(q, M, H, E, cfg.ropeDim, pos, invFreq, scale);
    be.rope(k, M, G, E, cfg.ropeDim, pos, invFreq, scale);
    for (let b = 0; b < B; b++) {
      const s = seqs[b];
      const T = s.tokens.length;
      const r0 = rowStart[b];
      const S = s.cache.length + T;
      s.cache.k[l].set(k.subarray(r0 * GE, (r0 + T) * GE), s.cache.length * GE);
      s.cache.v[l].set(v.subarray(r0 * GE, (r0 + T) * GE), s.cache.length * GE);
      be.attention(
        att.subarray(r0 * HE, (r0 + T) * HE),
        q.subarray(r0 * HE, (r0 + T) * HE),
        s.cache.k[l].subarray(0, S * GE),
        s.cache.v[l].subarray(0, S * GE),
        T,
        S,
        H,
        G,
        E,
        cfg.attnScale,
        cfg.window[l],
      );
    }
    mm(out, att, lw.wo, M, HE, D);
    addLora(out, att, l, 'o', HE, D);
    if (lw.postAttnNorm) be.rmsnorm(out, out, lw.postAttnNorm, M, D, eps);
    fire(blockHook(l, 'hook_attn_out'), out);
    for (let i = 0; i < x.length; i++) x[i] += out[i];
    fire(blockHook(l, 'hook_resid_mid'), x);

    // MLP.
    be.rmsnorm(h, x, lw.mlpNorm, M, D, eps);
    mm(gate, h, lw.wGate, M, D, F);
    mm(up, h, lw.wUp, M, D, F);
    addLora(gate, h, l, 'gate', D, F);
    addLora(up, h, l, 'up', D, F);
    be.gatedAct(gate, gate, up, M * F, cfg.act);
    mm(out, gate, lw.wDown, M, F, D);
    addLora(out, gate, l, 'down', F, D);
    if (lw.postMlpNorm) be.rmsnorm(out, out, lw.postMlpNorm, M, D, eps);
    fire(blockHook(l, 'hook_mlp_out'), out);
    for (let i = 0; i < x.length; i++) x[i] += out[i];
    fire(blockHook(l, 'hook_resid_post'), x);
  }
  for (const s of seqs) s.cache.length += s.tokens.length;

  be.rmsnorm(h, x, w.finalNorm, M, D, eps);
  fire('hook_final_norm', h);

  if (opts.logits === 'none') return { logits: new Float32Array(0), logitRows: new Int32Array(0), rowStart };
  const tail = opts.logits === 'all' ? Infinity : opts.logits === 'last' ? 1 : opts.logits.lastTokens;
  if (!(Number.isInteger(tail) ? tail >= 1 : tail === Infinity))
    throw new Error(`logits lastTokens must be an integer >= 1, got ${tail}`);
  // Per sequence: its first logit row and how many it has.
  const logitStart = new Int32Array(B);
  const logitCount = Int32Array.from(seqs, (s) => Math.min(tail, s.tokens.length));
  for (let b = 1; b < B; b++) logitStart[b] = logitStart[b - 1] + logitCount[b - 1];
  const logitRows = new Int32Array(B === 0 ? 0 : logitStart[B - 1] + logitCount[B - 1]);
  for (let b = 0; b < B; b++)
    for (let j = 0; j < logitCount[b]; j++)
      logitRows[logitStart[b] + j] = rowStart[b] + seqs[b].tokens.length - logitCount[b] + j;
  const R = logitRows.length;
  const hr = new Float32Array(R * D);
  for (let i = 0; i < R; i++) hr.set(h.subarray(logitRows[i] * D, (logitRows[i] + 1) * D), i * D);
  const logits = new Float32Array(R * V);
  mm(logits, hr, w.lmHead, R, D, V);
  fire(
    'logits',
    logits,
    R,
    V,
    Int32Array.from(logitRows, (r) => seqOfRow[r]),
    Int32Array.from(logitRows, (r) => pos[r]),
    (b) => [logitStart[b], logitCount[b]],
  );
  return { logits, logitRows, rowStart };
}
