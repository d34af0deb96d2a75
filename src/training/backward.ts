/**
 * The training forward and its backward, for LoRA adapters on a frozen model: the loss is the mean
 * cross-entropy of the answer tokens only, and the backward pass returns its gradient with respect
 * to every LoRA A and B (and, if asked, to the input embeddings). Every architecture of
 * src/model/transformer.ts is covered by the same flags: qk norms, sandwich norms, q/k/v biases,
 * embedding scale, per-layer window and rotary frequencies, SiLU or GELU gates, tied or untied head.
 *
 * The training forward computes what src/model/transformer.ts computes (no hooks, no KV cache:
 * packed sequences, each attending to itself from position 0) and keeps every activation the
 * backward reads. It is checked against finite differences and against PyTorch's gradients
 * (test/training-grad.test.ts).
 *
 * Letters as in src/model/transformer.ts: M rows (tokens of all sequences packed), D d_model,
 * H query heads, G kv heads, E head dim, F MLP width, V vocab, r LoRA rank, R answer tokens.
 */
import { OptionError, SteerguardError } from '../formats/errors.js';
import type { ModelConfig } from '../model/config.js';
import { ropeFrequencies } from '../model/rope.js';
import type { ModelWeights, WeightMatrix } from '../model/weights.js';
import type { Floats, TrainingKernels } from './kernels.js';
import {
  checkLoraAdapter,
  type LoraAdapter,
  type LoraLayers,
  type LoraPair,
  type LoraTarget,
  loraScale,
  zeroLoraLayers,
} from './lora.js';

/** One training sequence. */
export interface TrainingSequence {
  readonly tokens: readonly number[];
  /**
   * answer[t]: token t is an answer token, so the model's prediction of it (from position t - 1)
   * counts in the loss. answer[0] must be false: nothing predicts the first token. This is
   * Hugging Face's `labels` with -100 on every token that is not an answer.
   */
  readonly answer: readonly boolean[];
}

export interface LossAndGradients<A extends Floats> {
  /** Mean cross-entropy (nats) over the answer tokens of all sequences. */
  readonly loss: number;
  /** R: number of answer tokens the mean is over. */
  readonly answerTokens: number;
  /** dLoss/dA and dLoss/dB of every adapted projection, shaped like the adapter. */
  readonly grads: LoraLayers<A>;
  /** [M, D] dLoss/d(hook_embed) (the embeddings after the embedding scale), when asked for. */
  readonly embedGrad?: A;
}

/** What one block's forward keeps for the backward. */
interface BlockTape<A extends Floats> {
  resid: A; // [M, D] block input
  h1: A; // [M, D] attention norm output
  qPre?: A; // [M, H*E] q before its norm (qk norms only)
  kPre?: A; // [M, G*E]
  q: A; // [M, H*E] after norm and rotary
  k: A; // [M, G*E]
  v: A; // [M, G*E]
  att: A; // [M, H*E] attention output, input of o
  oPre?: A; // [M, D] o output before the post-attention norm (sandwich norms only)
  mid: A; // [M, D] resid + attention
  h2: A; // [M, D] MLP norm output
  gate: A; // [M, F] before the activation
  up: A; // [M, F]
  act: A; // [M, F] act(gate)·up, input of down
  downPre?: A; // [M, D] down output before the post-MLP norm (sandwich norms only)
  loraIn: Partial<Record<LoraTarget, A>>; // [M, r] x·Aᵀ of each adapted projection
}

/** Where each packed sequence's rows are. */
interface Rows {
  readonly M: number;
  readonly rowStart: Int32Array; // [B] first row of each sequence
  readonly lengths: Int32Array; // [B] its tokens
  readonly pos: Int32Array; // [M] position of each row in its sequence
}

interface Tape<A extends Floats> {
  readonly rows: Rows;
  /** Each block's input, kept in every mode (a recomputed block starts from it). */
  readonly inputs: A[];
  /** Each block's tape, or none when blocks are recomputed in the backward. */
  readonly blocks: BlockTape<A>[];
  readonly final: A; // [M, D] last block output
  readonly predictorRows: Int32Array; // [R] row whose logits predict each answer token
  readonly headIn: A; // [R, D] final norm output of those rows
  readonly dLogits: A; // [R, V] dLoss/dlogits
  readonly loss: number;
}

function fp32Matrix(m: WeightMatrix, what: string): Float32Array {
  if (m instanceof Float32Array) return m;
  throw new OptionError(
    `training needs fp32 weights, but ${what} is quantized: load the model with weights: 'f32'`,
  );
}

function checkSequences(cfg: ModelConfig, seqs: readonly TrainingSequence[]): number {
  if (seqs.length === 0) throw new OptionError('training needs at least one sequence');
  let answers = 0;
  seqs.forEach((s, i) => {
    if (s.answer.length !== s.tokens.length)
      throw new OptionError(
        `sequence ${i}: answer mask has ${s.answer.length} entries for ${s.tokens.length} tokens`,
      );
    if (s.answer[0])
      throw new OptionError(`sequence ${i}: token 0 cannot be an answer token (nothing predicts it)`);
    for (const id of s.tokens)
      if (!(Number.isInteger(id) && id >= 0 && id < cfg.vocabSize))
        throw new OptionError(
          `sequence ${i}: token id ${id} is outside the vocabulary (0..${cfg.vocabSize - 1})`,
        );
    for (const a of s.answer) if (a) answers++;
  });
  if (answers === 0)
    throw new OptionError('the sequences have no answer tokens, so there is no loss to train on');
  return answers;
}

const view = <A extends Floats>(a: A, from: number, to: number): A => a.subarray(from, to) as A;

/** The frozen weight, bias and LoRA pair of one projection. */
interface Projection<A extends Floats> {
  readonly w: Float32Array;
  readonly bias?: Float32Array;
  readonly lora?: LoraPair<A>;
}

/** How the training forward keeps what the backward reads. */
export interface TrainingOptions {
  /**
   * Keep only each block's input and run the block's forward again in the backward: memory of
   * one block's activations (plus an [M, D] input per block) instead of every block's, for one
   * more forward pass. The gradients are the same, bit for bit.
   */
  readonly recompute?: boolean;
}

/**
 * out[M, N] = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ; returns x·Aᵀ (for the backward) when adapted. `scratch`
 * holds at least M·N values, overwritten.
 */
function project<A extends Floats>(
  kn: TrainingKernels<A>,
  out: A,
  x: A,
  p: Projection<A>,
  M: number,
  K: number,
  N: number,
  r: number,
  s: number,
  scratch: A,
): A | undefined {
  kn.matmul(out, x, p.w, M, K, N, p.bias);
  if (!p.lora) return undefined;
  const u = kn.alloc(M * r);
  const delta = view(scratch, 0, M * N);
  kn.matmul(u, x, p.lora.a, M, K, r);
  kn.matmul(delta, u, p.lora.b, M, r, N);
  for (let i = 0; i < out.length; i++) out[i] += s * delta[i];
  return u;
}

/** Block l's forward from its input `resid`: its output and what its backward reads. */
function blockForward<A extends Floats>(
  cfg: ModelConfig,
  w: ModelWeights,
  adapter: LoraAdapter<A>,
  l: number,
  resid: A,
  rows: Rows,
  kn: TrainingKernels<A>,
): { out: A; tape: BlockTape<A> } {
  const { dModel: D, nHeads: H, nKvHeads: G, headDim: E, ffnDim: F, rmsEps: eps } = cfg;
  const HE = H * E;
  const GE = G * E;
  const { M, rowStart, lengths, pos } = rows;
  const r = adapter.rank;
  const s = loraScale(adapter);
  const lw = w.layers[l];
  const lora = adapter.layers[l];
  const loraIn: Partial<Record<LoraTarget, A>> = {};
  // one buffer for every projection's LoRA term: fewer fresh [M, F] arrays for the collector
  const scratch = kn.alloc(M * Math.max(HE, D, F));
  const run = (
    out: A,
    x: A,
    target: LoraTarget,
    m: WeightMatrix,
    K: number,
    N: number,
    bias?: Float32Array,
  ) => {
    const p = { w: fp32Matrix(m, `layer ${l} ${target}`), bias, lora: lora[target] };
    const u = project(kn, out, x, p, M, K, N, r, s, scratch);
    if (u) loraIn[target] = u;
  };
  const copy = (a: A): A => {
    const c = kn.alloc(a.length);
    c.set(a);
    return c;
  };

  // Attention.
  const h1 = kn.alloc(M * D);
  kn.rmsnorm(h1, resid, lw.attnNorm, M, D, eps);
  const q = kn.alloc(M * HE);
  const k = kn.alloc(M * GE);
  const v = kn.alloc(M * GE);
  run(q, h1, 'q', lw.wq, D, HE, lw.bq);
  run(k, h1, 'k', lw.wk, D, GE, lw.bk);
  run(v, h1, 'v', lw.wv, D, GE, lw.bv);
  let qPre: A | undefined;
  let kPre: A | undefined;
  if (lw.qNorm && lw.kNorm) {
    qPre = copy(q);
    kPre = copy(k);
    kn.rmsnorm(q, q, lw.qNorm, M * H, E, eps);
    kn.rmsnorm(k, k, lw.kNorm, M * G, E, eps);
  }
  const { invFreq, scale } = ropeFrequencies(cfg)[l];
  kn.rope(q, M, H, E, cfg.ropeDim, pos, invFreq, scale);
  kn.rope(k, M, G, E, cfg.ropeDim, pos, invFreq, scale);
  const att = kn.alloc(M * HE);
  for (let b = 0; b < rowStart.length; b++) {
    const [r0, T] = [rowStart[b], lengths[b]];
    kn.attention(
      view(att, r0 * HE, (r0 + T) * HE),
      view(q, r0 * HE, (r0 + T) * HE),
      view(k, r0 * GE, (r0 + T) * GE),
      view(v, r0 * GE, (r0 + T) * GE),
      T,
      H,
      G,
      E,
      cfg.attnScale,
      cfg.window[l],
    );
  }
  const attnOut = kn.alloc(M * D);
  run(attnOut, att, 'o', lw.wo, HE, D);
  let oPre: A | undefined;
  if (lw.postAttnNorm) {
    oPre = copy(attnOut);
    kn.rmsnorm(attnOut, attnOut, lw.postAttnNorm, M, D, eps);
  }
  const mid = kn.alloc(M * D);
  for (let i = 0; i < mid.length; i++) mid[i] = resid[i] + attnOut[i];

  // MLP.
  const h2 = kn.alloc(M * D);
  kn.rmsnorm(h2, mid, lw.mlpNorm, M, D, eps);
  const gate = kn.alloc(M * F);
  const up = kn.alloc(M * F);
  run(gate, h2, 'gate', lw.wGate, D, F);
  run(up, h2, 'up', lw.wUp, D, F);
  const act = kn.alloc(M * F);
  kn.gatedAct(act, gate, up, M * F, cfg.act);
  const mlpOut = kn.alloc(M * D);
  run(mlpOut, act, 'down', lw.wDown, F, D);
  let downPre: A | undefined;
  if (lw.postMlpNorm) {
    downPre = copy(mlpOut);
    kn.rmsnorm(mlpOut, mlpOut, lw.postMlpNorm, M, D, eps);
  }
  const out = kn.alloc(M * D);
  for (let i = 0; i < out.length; i++) out[i] = mid[i] + mlpOut[i];
  return {
    out,
    tape: { resid, h1, qPre, kPre, q, k, v, att, oPre, mid, h2, gate, up, act, downPre, loraIn },
  };
}

/**
 * Training forward: runs the model over packed sequences and keeps what `backward` reads; the loss
 * and dLoss/dlogits are computed here, on the rows that predict answer tokens only.
 */
function trainingForward<A extends Floats>(
  cfg: ModelConfig,
  w: ModelWeights,
  adapter: LoraAdapter<A>,
  seqs: readonly TrainingSequence[],
  kn: TrainingKernels<A>,
  opts: TrainingOptions,
): Tape<A> {
  const { dModel: D, vocabSize: V, rmsEps: eps } = cfg;
  const R = checkSequences(cfg, seqs);
  checkLoraAdapter(cfg, adapter);

  const B = seqs.length;
  const rowStart = new Int32Array(B);
  const lengths = Int32Array.from(seqs, (q) => q.tokens.length);
  let M = 0;
  for (let b = 0; b < B; b++) {
    rowStart[b] = M;
    M += lengths[b];
  }
  const pos = new Int32Array(M);
  for (let b = 0; b < B; b++) for (let t = 0; t < lengths[b]; t++) pos[rowStart[b] + t] = t;
  const rows: Rows = { M, rowStart, lengths, pos };

  let x = kn.alloc(M * D);
  const embed = fp32Matrix(w.embed, 'the embedding');
  for (let m = 0, b = 0; b < B; b++)
    for (const id of seqs[b].tokens) {
      for (let d = 0; d < D; d++) x[m * D + d] = embed[id * D + d] * cfg.embedScale;
      m++;
    }

  const inputs: A[] = [];
  const blocks: BlockTape<A>[] = [];
  for (let l = 0; l < cfg.nLayers; l++) {
    inputs.push(x);
    const { out, tape } = blockForward(cfg, w, adapter, l, x, rows, kn);
    if (!opts.recompute) blocks.push(tape);
    x = out;
  }

  // Head, on the rows that predict an answer token.
  const predictorRows = new Int32Array(R);
  const targets = new Int32Array(R);
  for (let i = 0, b = 0; b < B; b++)
    seqs[b].answer.forEach((a, t) => {
      if (!a) return;
      predictorRows[i] = rowStart[b] + t - 1;
      targets[i++] = seqs[b].tokens[t];
    });
  const headIn = kn.alloc(R * D);
  for (let i = 0; i < R; i++) headIn.set(view(x, predictorRows[i] * D, (predictorRows[i] + 1) * D), i * D);
  kn.rmsnorm(headIn, headIn, w.finalNorm, R, D, eps);
  const dLogits = kn.alloc(R * V);
  kn.matmul(dLogits, headIn, fp32Matrix(w.lmHead, 'the output head'), R, D, V);

  // Cross-entropy, in place: logits become dLoss/dlogits = (softmax − onehot) / R.
  let loss = 0;
  for (let i = 0; i < R; i++) {
    const row = view(dLogits, i * V, (i + 1) * V);
    let mx = -Infinity;
    for (let j = 0; j < V; j++) mx = Math.max(mx, row[j]);
    loss += mx - row[targets[i]];
    let sum = 0;
    for (let j = 0; j < V; j++) sum += row[j] = Math.exp(row[j] - mx);
    loss += Math.log(sum);
    const norm = 1 / (sum * R);
    for (let j = 0; j < V; j++) row[j] *= norm;
    row[targets[i]] -= 1 / R;
  }
  return { rows, inputs, blocks, final: x, predictorRows, headIn, dLogits, loss: loss / R };
}

/** The backward of `trainingForward`: gradients of every LoRA A and B, and of the embeddings. */
function backward<A extends Floats>(
  cfg: ModelConfig,
  w: ModelWeights,
  adapter: LoraAdapter<A>,
  tape: Tape<A>,
  kn: TrainingKernels<A>,
): { grads: LoraLayers<A>; embedGrad: A } {
  const { dModel: D, nHeads: H, nKvHeads: G, headDim: E, ffnDim: F, vocabSize: V, rmsEps: eps } = cfg;
  const HE = H * E;
  const GE = G * E;
  const { predictorRows } = tape;
  const { M, rowStart, lengths, pos } = tape.rows;
  const R = predictorRows.length;
  const r = adapter.rank;
  const s = loraScale(adapter);
  const grads = zeroLoraLayers(cfg, r, adapter.targets, (n) => kn.alloc(n));

  /** dx += d(project)/dx · dout, and the LoRA pair's gradients. */
  const projectBackward = (
    dx: A,
    dout: A,
    x: A,
    l: number,
    block: BlockTape<A>,
    target: LoraTarget,
    m: WeightMatrix,
    K: number,
    N: number,
  ) => {
    kn.matmulBackward(dx, undefined, dout, x, fp32Matrix(m, `layer ${l} ${target}`), M, K, N);
    const pair = adapter.layers[l][target];
    if (!pair) return;
    const grad = grads[l][target]!;
    // out = … + s·(u·Bᵀ) with u = x·Aᵀ: dB += doutᵀ·(s·u) and du = s·(dout·B), the scale applied
    // to the [M, r] factors rather than to the [M, N] dout
    const u = block.loraIn[target]!;
    const su = kn.alloc(M * r);
    for (let i = 0; i < su.length; i++) su[i] = s * u[i];
    const du = kn.alloc(M * r);
    kn.matmulBackward(du, grad.b, dout, su, pair.b, M, r, N);
    for (let i = 0; i < du.length; i++) du[i] *= s;
    kn.matmulBackward(dx, grad.a, du, x, pair.a, M, K, r);
  };

  // Head and final norm: scatter the answer rows' gradients back to their rows.
  const dHeadIn = kn.alloc(R * D);
  kn.matmulBackward(
    dHeadIn,
    undefined,
    tape.dLogits,
    tape.headIn,
    fp32Matrix(w.lmHead, 'the output head'),
    R,
    D,
    V,
  );
  const dx = kn.alloc(M * D);
  for (let i = 0; i < R; i++) {
    const row = predictorRows[i]; // distinct rows: each predicts one token
    kn.rmsnormBackward(
      view(dx, row * D, (row + 1) * D),
      view(dHeadIn, i * D, (i + 1) * D),
      view(tape.final, row * D, (row + 1) * D),
      w.finalNorm,
      1,
      D,
      eps,
    );
  }

  // Each layer's gradient buffers are zeroed and used again by the next layer: fewer fresh arrays
  // for the collector.
  const reusable = (n: number) => {
    let b: A | undefined;
    return (): A => (b ? (b.fill(0) as A) : (b = kn.alloc(n)));
  };
  const [dDownBuf, dh2Buf, dOBuf, dh1Buf] = [0, 1, 2, 3].map(() => reusable(M * D));
  const [dActBuf, dGateBuf, dUpBuf] = [0, 1, 2].map(() => reusable(M * F));
  const [dAttBuf, dqBuf, dqInBuf] = [0, 1, 2].map(() => reusable(M * HE));
  const [dkBuf, dvBuf, dkInBuf] = [0, 1, 2].map(() => reusable(M * GE));

  // Blocks, last first. dx is d(block output), then d(mid), then d(block input).
  for (let l = cfg.nLayers - 1; l >= 0; l--) {
    const lw = w.layers[l];
    const t = tape.blocks[l] ?? blockForward(cfg, w, adapter, l, tape.inputs[l], tape.rows, kn).tape;

    // MLP: out = mid + norm?(down(act(gate(h2))·up(h2))), h2 = rmsnorm(mid).
    let dDown = dx;
    if (lw.postMlpNorm && t.downPre) {
      dDown = dDownBuf();
      kn.rmsnormBackward(dDown, dx, t.downPre, lw.postMlpNorm, M, D, eps);
    }
    const dAct = dActBuf();
    projectBackward(dAct, dDown, t.act, l, t, 'down', lw.wDown, F, D);
    const dGate = dGateBuf();
    const dUp = dUpBuf();
    kn.gatedActBackward(dGate, dUp, dAct, t.gate, t.up, M * F, cfg.act);
    const dh2 = dh2Buf();
    projectBackward(dh2, dGate, t.h2, l, t, 'gate', lw.wGate, D, F);
    projectBackward(dh2, dUp, t.h2, l, t, 'up', lw.wUp, D, F);
    kn.rmsnormBackward(dx, dh2, t.mid, lw.mlpNorm, M, D, eps);

    // Attention: mid = resid + norm?(o(attention(rope(norm?(q(h1))), …))), h1 = rmsnorm(resid).
    let dO = dx;
    if (lw.postAttnNorm && t.oPre) {
      dO = dOBuf();
      kn.rmsnormBackward(dO, dx, t.oPre, lw.postAttnNorm, M, D, eps);
    }
    const dAtt = dAttBuf();
    projectBackward(dAtt, dO, t.att, l, t, 'o', lw.wo, HE, D);
    const dq = dqBuf();
    const dk = dkBuf();
    const dv = dvBuf();
    for (let b = 0; b < rowStart.length; b++) {
      const [r0, T] = [rowStart[b], lengths[b]];
      const qs = (a: A) => view(a, r0 * HE, (r0 + T) * HE);
      const ks = (a: A) => view(a, r0 * GE, (r0 + T) * GE);
      kn.attentionBackward(
        qs(dq),
        ks(dk),
        ks(dv),
        qs(dAtt),
        qs(t.q),
        ks(t.k),
        ks(t.v),
        qs(t.att),
        T,
        H,
        G,
        E,
        cfg.attnScale,
        cfg.window[l],
      );
    }
    const { invFreq, scale } = ropeFrequencies(cfg)[l];
    kn.ropeBackward(dq, M, H, E, cfg.ropeDim, pos, invFreq, scale);
    kn.ropeBackward(dk, M, G, E, cfg.ropeDim, pos, invFreq, scale);
    let dqIn = dq;
    let dkIn = dk;
    if (lw.qNorm && lw.kNorm && t.qPre && t.kPre) {
      dqIn = dqInBuf();
      dkIn = dkInBuf();
      kn.rmsnormBackward(dqIn, dq, t.qPre, lw.qNorm, M * H, E, eps);
      kn.rmsnormBackward(dkIn, dk, t.kPre, lw.kNorm, M * G, E, eps);
    }
    const dh1 = dh1Buf();
    projectBackward(dh1, dqIn, t.h1, l, t, 'q', lw.wq, D, HE);
    projectBackward(dh1, dkIn, t.h1, l, t, 'k', lw.wk, D, GE);
    projectBackward(dh1, dv, t.h1, l, t, 'v', lw.wv, D, GE);
    kn.rmsnormBackward(dx, dh1, t.resid, lw.attnNorm, M, D, eps);
  }
  return { grads, embedGrad: dx };
}

/** The masked mean cross-entropy of the adapted model, without gradients. */
export function loraLoss<A extends Floats>(
  cfg: ModelConfig,
  w: ModelWeights,
  adapter: LoraAdapter<A>,
  seqs: readonly TrainingSequence[],
  kernels: TrainingKernels<A>,
): number {
  return trainingForward(cfg, w, adapter, seqs, kernels, { recompute: true }).loss;
}

/**
 * The masked mean cross-entropy of the adapted model and its gradients with respect to every LoRA
 * A and B (base weights frozen). A non-finite loss is an error, never a gradient step.
 */
export function loraLossAndGradients<A extends Floats>(
  cfg: ModelConfig,
  w: ModelWeights,
  adapter: LoraAdapter<A>,
  seqs: readonly TrainingSequence[],
  kernels: TrainingKernels<A>,
  opts: TrainingOptions & { readonly embedGrad?: boolean } = {},
): LossAndGradients<A> {
  const tape = trainingForward(cfg, w, adapter, seqs, kernels, opts);
  if (!Number.isFinite(tape.loss))
    throw new SteerguardError(`the training loss is ${tape.loss}: the adapter or the model has diverged`);
  const { grads, embedGrad } = backward(cfg, w, adapter, tape, kernels);
  return {
    loss: tape.loss,
    answerTokens: tape.predictorRows.length,
    grads,
    ...(opts.embedGrad ? { embedGrad } : {}),
  };
}
