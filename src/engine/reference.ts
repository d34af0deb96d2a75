/**
 * Plain TypeScript kernels: the oracle the native engine is tested against.
 *
 * Written for obviousness, not speed (about 100x slower than the native engine): every sum is
 * accumulated in double, loops follow the definitions in backend.ts one to one, and nothing is
 * parallel. ReferenceBackend implements Backend, so a whole forward pass can also be run on it to
 * check a faster backend end to end on a tiny model.
 *
 * Dimension letters as in backend.ts.
 */
import type { Backend } from './backend.js';

export class ReferenceBackend implements Backend {
  readonly name = 'reference (plain TypeScript, fp64 sums)';
  readonly threads = 1;

  matmul(
    out: Float32Array,
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
    bias?: Float32Array,
  ): void {
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let acc = bias ? bias[n] : 0;
        for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
        out[m * N + n] = acc;
      }
    }
  }

  rmsnorm(out: Float32Array, x: Float32Array, weight: Float32Array, M: number, D: number, eps: number): void {
    for (let m = 0; m < M; m++) {
      let ss = 0;
      for (let d = 0; d < D; d++) ss += x[m * D + d] ** 2;
      const r = 1 / Math.sqrt(ss / D + eps);
      for (let d = 0; d < D; d++) out[m * D + d] = x[m * D + d] * r * weight[d];
    }
  }

  /**
   * The angle is rounded to fp32 where Hugging Face rounds it (inv_freq, then pos·inv_freq): at long
   * positions that rounding moves the angle by ~1e-3 rad and is part of the model as trained, so it
   * belongs to the definition, not to the precision of an implementation. The rest is in double.
   */
  rope(
    x: Float32Array,
    M: number,
    heads: number,
    E: number,
    rotDim: number,
    pos: Int32Array,
    theta: number,
  ): void {
    const f = Math.fround;
    const half = rotDim / 2;
    const inv = Array.from({ length: half }, (_, i) => f(1 / f(f(theta) ** f((2 * i) / rotDim))));
    for (let m = 0; m < M; m++) {
      for (let h = 0; h < heads; h++) {
        const base = (m * heads + h) * E;
        for (let i = 0; i < half; i++) {
          const a = f(pos[m] * inv[i]);
          const x1 = x[base + i];
          const x2 = x[base + i + half];
          x[base + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
          x[base + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
        }
      }
    }
  }

  attention(
    out: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    T: number,
    S: number,
    H: number,
    G: number,
    E: number,
    scale: number,
    window: number,
  ): void {
    const perGroup = H / G;
    for (let t = 0; t < T; t++) {
      const p = S - T + t;
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / perGroup);
        const visible: number[] = [];
        for (let j = 0; j <= p; j++) if (window <= 0 || j > p - window) visible.push(j);
        const scores = visible.map((j) => {
          let s = 0;
          for (let e = 0; e < E; e++) s += q[(t * H + h) * E + e] * k[(j * G + g) * E + e];
          return s * scale;
        });
        const mx = Math.max(...scores);
        const ws = scores.map((s) => Math.exp(s - mx));
        const sum = ws.reduce((a, b) => a + b, 0);
        for (let e = 0; e < E; e++) {
          let acc = 0;
          visible.forEach((j, i) => (acc += ws[i] * v[(j * G + g) * E + e]));
          out[(t * H + h) * E + e] = acc / sum;
        }
      }
    }
  }

  gatedAct(
    out: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    n: number,
    act: 'silu' | 'gelu_tanh',
  ): void {
    for (let i = 0; i < n; i++) {
      const g = gate[i];
      const a =
        act === 'silu'
          ? g / (1 + Math.exp(-g))
          : 0.5 * g * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (g + 0.044715 * g ** 3)));
      out[i] = a * up[i];
    }
  }
}

// ----------------------------------------------------------------------------
// ggml Q8_0: per 32 values, an fp16 scale d = max|w|/127 then 32 int8 q with w ≈ d·q (34 bytes)
