/**
 * The kernels of training: each forward beside its backward (llm.c's `_forward`/`_backward` pairs),
 * over flat row-major buffers of one precision `A` (Float32Array for training, Float64Array for the
 * finite-difference checks).
 *
 * Backward kernels ADD into their gradient outputs (`dx += ...`), so a buffer read by several
 * consumers (the residual stream, a LoRA input) collects every contribution without a copy.
 *
 * `plainKernels` is the whole set in plain TypeScript (sums in double), the reference; `backendKernels`
 * takes the forward kernels of an engine `Backend` (native or reference) and its backward ones when it
 * has them (the native engine's, in C over OpenBLAS), else the plain TypeScript ones.
 *
 * Letters as in src/engine/backend.ts: M rows, K input features, N output features, D width,
 * H query heads, G key/value heads, E head dim, T tokens of one sequence (queries = keys here: a
 * training forward has no KV cache).
 */
import type { Backend } from '../engine/backend.js';

/** A buffer of activations or gradients. */
export type Floats = Float32Array | Float64Array;

export type GatedActivation = 'silu' | 'gelu_tanh';

export interface TrainingKernels<A extends Floats> {
  readonly name: string;
  /** A zeroed buffer of `n` values in this precision. */
  alloc(n: number): A;

  /** out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]). `out` must not alias `x`. */
  matmul(out: A, x: A, w: A | Float32Array, M: number, K: number, N: number, bias?: Float32Array): void;
  /** dx[M,K] += dout[M,N] · w[N,K] and dw[N,K] += dout[M,N]ᵀ · x[M,K]; either may be skipped. */
  matmulBackward(
    dx: A | undefined,
    dw: A | undefined,
    dout: A,
    x: A,
    w: A | Float32Array,
    M: number,
    K: number,
    N: number,
  ): void;

  /** out[M,D] = x / sqrt(mean(x²) + eps) * weight, row by row. `out` may alias `x`. */
  rmsnorm(out: A, x: A, weight: Float32Array, M: number, D: number, eps: number): void;
  /** dx[M,D] += the gradient through rmsnorm at input x (weight frozen). */
  rmsnormBackward(dx: A, dout: A, x: A, weight: Float32Array, M: number, D: number, eps: number): void;

  /** Rotary embedding in place on x[M, heads, E], as Backend.rope. */
  rope(
    x: A,
    M: number,
    heads: number,
    E: number,
    rotDim: number,
    pos: Int32Array,
    invFreq: Float32Array,
    scale: number,
  ): void;
  /** In place: dx ← Rᵀ·dx, the gradient through `rope` (a rotation times `scale`, so its transpose). */
  ropeBackward(
    dx: A,
    M: number,
    heads: number,
    E: number,
    rotDim: number,
    pos: Int32Array,
    invFreq: Float32Array,
    scale: number,
  ): void;

  /**
   * Causal grouped-query attention of one sequence, q[T, H*E], k, v [T, G*E]: query t sees keys
   * j <= t and, when window > 0, j > t - window; head h reads kv head floor(h / (H/G)).
   */
  attention(
    out: A,
    q: A,
    k: A,
    v: A,
    T: number,
    H: number,
    G: number,
    E: number,
    scale: number,
    window: number,
  ): void;
  /** dq, dk, dv += the gradient through `attention`, given its inputs and its output `out`. */
  attentionBackward(
    dq: A,
    dk: A,
    dv: A,
    dout: A,
    q: A,
    k: A,
    v: A,
    out: A,
    T: number,
    H: number,
    G: number,
    E: number,
    scale: number,
    window: number,
  ): void;

  /** out[n] = act(gate[n]) * up[n]. `out` may alias `gate`. */
  gatedAct(out: A, gate: A, up: A, n: number, act: GatedActivation): void;
  /** dgate, dup += the gradient through `gatedAct` at (gate, up). */
  gatedActBackward(dgate: A, dup: A, dout: A, gate: A, up: A, n: number, act: GatedActivation): void;
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** act(g) and act'(g). */
function activation(g: number, act: GatedActivation): [number, number] {
  if (act === 'silu') {
    const s = 1 / (1 + Math.exp(-g));
    return [g * s, s * (1 + g * (1 - s))];
  }
  const u = GELU_C * (g + 0.044715 * g ** 3);
  const t = Math.tanh(u);
  return [0.5 * g * (1 + t), 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * g * g)];
}

/** Softmax weights of query t of head h over its visible keys [j0, t], in `p` (indices j - j0). */
function attentionWeights(
  p: Float64Array,
  q: Floats,
  k: Floats,
  t: number,
  h: number,
  g: number,
  j0: number,
  H: number,
  G: number,
  E: number,
  scale: number,
): void {
  let mx = -Infinity;
  for (let j = j0; j <= t; j++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += q[(t * H + h) * E + e] * k[(j * G + g) * E + e];
    p[j - j0] = s * scale;
    mx = Math.max(mx, p[j - j0]);
  }
  let sum = 0;
  for (let j = j0; j <= t; j++) sum += p[j - j0] = Math.exp(p[j - j0] - mx);
  for (let j = j0; j <= t; j++) p[j - j0] /= sum;
}

/** The whole kernel set in plain TypeScript, every sum in double, stored in buffers from `alloc`. */
export function plainKernels<A extends Floats>(name: string, alloc: (n: number) => A): TrainingKernels<A> {
  const rotate = (
    x: A,
    M: number,
    heads: number,
    E: number,
    rotDim: number,
    pos: Int32Array,
    invFreq: Float32Array,
    scale: number,
    sign: 1 | -1,
  ) => {
    const half = rotDim / 2;
    for (let m = 0; m < M; m++) {
      for (let h = 0; h < heads; h++) {
        const base = (m * heads + h) * E;
        for (let i = 0; i < half; i++) {
          // the angle is rounded to fp32 where Hugging Face rounds it (see ReferenceBackend.rope)
          const a = Math.fround(pos[m] * invFreq[i]);
          const c = Math.cos(a) * scale;
          const s = Math.sin(a) * scale * sign;
          const x1 = x[base + i];
          const x2 = x[base + i + half];
          x[base + i] = x1 * c - x2 * s;
          x[base + i + half] = x2 * c + x1 * s;
        }
      }
    }
  };

  return {
    name,
    alloc,

    matmul(out, x, w, M, K, N, bias) {
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) {
          let acc = bias ? bias[n] : 0;
          for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
          out[m * N + n] = acc;
        }
      }
    },
    matmulBackward(dx, dw, dout, x, w, M, K, N) {
      if (dx) {
        for (let m = 0; m < M; m++) {
          for (let k = 0; k < K; k++) {
            let acc = 0;
            for (let n = 0; n < N; n++) acc += dout[m * N + n] * w[n * K + k];
            dx[m * K + k] += acc;
          }
        }
      }
      if (dw) {
        for (let n = 0; n < N; n++) {
          for (let k = 0; k < K; k++) {
            let acc = 0;
            for (let m = 0; m < M; m++) acc += dout[m * N + n] * x[m * K + k];
            dw[n * K + k] += acc;
          }
        }
      }
    },

    rmsnorm(out, x, weight, M, D, eps) {
      for (let m = 0; m < M; m++) {
        let ss = 0;
        for (let d = 0; d < D; d++) ss += x[m * D + d] ** 2;
        const r = 1 / Math.sqrt(ss / D + eps);
        for (let d = 0; d < D; d++) out[m * D + d] = x[m * D + d] * r * weight[d];
      }
    },
    rmsnormBackward(dx, dout, x, weight, M, D, eps) {
      // y = x·r·w with r = (mean(x²) + eps)^-½:  dx = r·(dy∘w) − x·r³/D · Σ(dy∘w∘x)
      for (let m = 0; m < M; m++) {
        let ss = 0;
        let dot = 0;
        for (let d = 0; d < D; d++) {
          ss += x[m * D + d] ** 2;
          dot += dout[m * D + d] * weight[d] * x[m * D + d];
        }
        const r = 1 / Math.sqrt(ss / D + eps);
        const c = (dot * r * r * r) / D;
        for (let d = 0; d < D; d++) dx[m * D + d] += r * dout[m * D + d] * weight[d] - c * x[m * D + d];
      }
    },

    rope(x, M, heads, E, rotDim, pos, invFreq, scale) {
      rotate(x, M, heads, E, rotDim, pos, invFreq, scale, 1);
    },
    ropeBackward(dx, M, heads, E, rotDim, pos, invFreq, scale) {
      rotate(dx, M, heads, E, rotDim, pos, invFreq, scale, -1);
    },

    attention(out, q, k, v, T, H, G, E, scale, window) {
      const perGroup = H / G;
      const p = new Float64Array(T);
      for (let t = 0; t < T; t++) {
        const j0 = window > 0 ? Math.max(0, t - window + 1) : 0;
        for (let h = 0; h < H; h++) {
          const g = Math.floor(h / perGroup);
          attentionWeights(p, q, k, t, h, g, j0, H, G, E, scale);
          for (let e = 0; e < E; e++) {
            let acc = 0;
            for (let j = j0; j <= t; j++) acc += p[j - j0] * v[(j * G + g) * E + e];
            out[(t * H + h) * E + e] = acc;
          }
        }
      }
    },
    attentionBackward(dq, dk, dv, dout, q, k, v, out, T, H, G, E, scale, window) {
      // o = Σ p_j v_j with p = softmax(s), s_j = scale·q·k_j:
      //   dv_j += p_j·do;  ds_j = p_j·(do·v_j − do·o);  dq += scale·Σ ds_j k_j;  dk_j += scale·ds_j·q
      const perGroup = H / G;
      const p = new Float64Array(T);
      for (let t = 0; t < T; t++) {
        const j0 = window > 0 ? Math.max(0, t - window + 1) : 0;
        for (let h = 0; h < H; h++) {
          const g = Math.floor(h / perGroup);
          const qi = (t * H + h) * E;
          attentionWeights(p, q, k, t, h, g, j0, H, G, E, scale);
          let doO = 0;
          for (let e = 0; e < E; e++) doO += dout[qi + e] * out[qi + e];
          for (let j = j0; j <= t; j++) {
            const kj = (j * G + g) * E;
            let doV = 0;
            for (let e = 0; e < E; e++) doV += dout[qi + e] * v[kj + e];
            const pj = p[j - j0];
            const ds = pj * (doV - doO) * scale;
            for (let e = 0; e < E; e++) {
              dv[kj + e] += pj * dout[qi + e];
              dq[qi + e] += ds * k[kj + e];
              dk[kj + e] += ds * q[qi + e];
            }
          }
        }
      }
    },

    gatedAct(out, gate, up, n, act) {
      for (let i = 0; i < n; i++) out[i] = activation(gate[i], act)[0] * up[i];
    },
    gatedActBackward(dgate, dup, dout, gate, up, n, act) {
      for (let i = 0; i < n; i++) {
        const [a, da] = activation(gate[i], act);
        dgate[i] += dout[i] * up[i] * da;
        dup[i] += dout[i] * a;
      }
    },
  };
}

/** Plain TypeScript in double precision: the finite-difference oracle. */
export const F64_KERNELS: TrainingKernels<Float64Array> = plainKernels(
  'plain TypeScript, fp64',
  (n) => new Float64Array(n),
);

/**
 * fp32 training on an engine backend: its forward kernels (the ones inference runs, so training sees
 * the model inference sees) and its backward kernels (`Backend.backward`: the native engine's), or
 * the plain TypeScript backward on a backend without them (the reference backend).
 */
export function backendKernels(be: Backend): TrainingKernels<Float32Array> {
  const bw = be.backward;
  const plain = plainKernels(
    bw ? `${be.name}, forward and backward` : `${be.name} forward, plain TypeScript backward`,
    (n) => new Float32Array(n),
  );
  return {
    ...plain,
    ...(bw && {
      matmulBackward: (dx, dw, dout, x, w, M, K, N) => bw.matmulBackward(dx, dw, dout, x, w, M, K, N),
      rmsnormBackward: (dx, dout, x, weight, M, D, eps) => bw.rmsnormBackward(dx, dout, x, weight, M, D, eps),
      ropeBackward: (dx, M, heads, E, rotDim, pos, invFreq, scale) =>
        bw.ropeBackward(dx, M, heads, E, rotDim, pos, invFreq, scale),
      attentionBackward: (dq, dk, dv, dout, q, k, v, out, T, H, G, E, scale, window) =>
        bw.attentionBackward(dq, dk, dv, dout, q, k, v, out, T, H, G, E, scale, window),
      gatedActBackward: (dgate, dup, dout, gate, up, n, act) =>
        bw.gatedActBackward(dgate, dup, dout, gate, up, n, act),
    }),
    matmul: (out, x, w, M, K, N, bias) => be.matmul(out, x, w, M, K, N, bias),
    rmsnorm: (out, x, weight, M, D, eps) => be.rmsnorm(out, x, weight, M, D, eps),
    rope: (x, M, heads, E, rotDim, pos, invFreq, scale) =>
      be.rope(x, M, heads, E, rotDim, pos, invFreq, scale),
    attention: (out, q, k, v, T, H, G, E, scale, window) =>
      be.attention(out, q, k, v, T, T, H, G, E, scale, window),
    gatedAct: (out, gate, up, n, act) => be.gatedAct(out, gate, up, n, act),
  };
}
