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

  readonly matmul: Backend['matmul'] = (out, x, w, M, K, N, bias) => {
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let acc = bias ? bias[n] : 0;
        for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
        out[m * N + n] = acc;
      }
    }
  };

  readonly rmsnorm: Backend['rmsnorm'] = (out, x, weight, M, D, eps) => {
    for (let m = 0; m < M; m++) {
      let ss = 0;
      for (let d = 0; d < D; d++) ss += x[m * D + d] ** 2;
      const r = 1 / Math.sqrt(ss / D + eps);
      for (let d = 0; d < D; d++) out[m * D + d] = x[m * D + d] * r * weight[d];
    }
  };

  /**
   * The angle is rounded to fp32 where Hugging Face rounds it (pos·inv_freq): at long positions that
   * rounding moves the angle by ~1e-3 rad and is part of the model as trained, so it belongs to the
   * definition, not to the precision of an implementation. The rest is in double.
   */
  readonly rope: Backend['rope'] = (x, M, heads, E, rotDim, pos, invFreq, scale) => {
    const half = rotDim / 2;
    for (let m = 0; m < M; m++) {
      for (let h = 0; h < heads; h++) {
        const base = (m * heads + h) * E;
        for (let i = 0; i < half; i++) {
          const a = Math.fround(pos[m] * invFreq[i]);
          const c = Math.cos(a) * scale;
          const s = Math.sin(a) * scale;
          const x1 = x[base + i];
          const x2 = x[base + i + half];
          x[base + i] = x1 * c - x2 * s;
          x[base + i + half] = x2 * c + x1 * s;
        }
      }
    }
  };

  readonly attention: Backend['attention'] = (out, q, k, v, T, S, H, G, E, scale, window) => {
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
  };

  readonly gatedAct: Backend['gatedAct'] = (out, gate, up, n, act) => {
    for (let i = 0; i < n; i++) {
      const g = gate[i];
      const a =
        act === 'silu'
          ? g / (1 + Math.exp(-g))
          : 0.5 * g * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (g + 0.044715 * g ** 3)));
      out[i] = a * up[i];
    }
  };
}
