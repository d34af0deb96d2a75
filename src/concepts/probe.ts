/**
 * Linear readings of a concept from activations: L2-regularised logistic regression, the
 * difference of class means, the first principal component of paired differences, and the
 * metrics that say how well a reading separates the classes (accuracy, AUROC, 95% intervals).
 *
 * Shapes: N examples, D features; matrices are row-major [N, D]. Labels are 1 (positive) / 0.
 * Arithmetic is Float64 whatever the input type.
 *
 * Logistic regression minimises, like scikit-learn's LogisticRegression(C) with its default L2
 * penalty and unpenalised intercept,
 *     f(w, b) = sum_i log(1 + exp(-y_i (w·x_i + b))) + ||w||² / (2C),   y_i = ±1,
 * by Newton's method with a backtracking line search, to a gradient near rounding level:
 * - features are centred first, which only shifts the intercept;
 * - with N <= D (the usual case: a few hundred prompts, d_model in the hundreds or thousands) the
 *   weights lie in the span of the centred examples (stationarity: w = -C Σ g_i x_i), so each step
 *   solves an N×N system built from the Gram matrix, which the model engine's Float32 matmul may
 *   compute (it only steers the steps; gradients and objective stay Float64);
 * - with N > D, steps solve the (D+1)×(D+1) primal Hessian system.
 * On nearly separable data (typical for late layers) the loss behaves like exp(-margin) and plain
 * Newton steps fall short by a constant factor, so the line search also tries longer steps.
 */
import { SteerguardError } from '../formats/errors.js';

/** Matrix rows as any numeric array (Float32Array activations, Float64Array, number[]). */
export type Matrix = ArrayLike<number>;

export interface LogisticOptions {
  /** Inverse regularisation strength (default 1, scikit-learn's default). */
  readonly C?: number;
  /**
   * Divide each feature by its standard deviation before fitting (the penalty then acts on the
   * scaled weights). The returned w, b still act on raw features. Default false.
   */
  readonly standardize?: boolean;
  /** Stop when max |gradient| <= tol · max(1, max |gradient at 0|) (default 1e-10). */
  readonly tol?: number;
  /** Default 10 000, scikit-learn SCAV reference's max_iter. */
  readonly maxIter?: number;
}

export interface LogisticFit {
  /** [D] weights on raw features. */
  readonly w: Float64Array;
  readonly b: number;
  /** Newton steps, and how many of them factorised a fresh Hessian (the expensive part). */
  readonly iterations: number;
  readonly factorizations: number;
  readonly converged: boolean;
  /** max |∂f/∂(w, b)| of the objective on the raw features at (w, b) (scaled features if standardised). */
  readonly gradNorm: number;
  /** f(w, b). */
  readonly objective: number;
}

/** Numerically safe log(1 + exp(t)). */
export function softplus(t: number): number {
  return t > 0 ? t + Math.log1p(Math.exp(-t)) : Math.log1p(Math.exp(t));
}

export function sigmoid(t: number): number {
  if (t >= 0) return 1 / (1 + Math.exp(-t));
  const e = Math.exp(t);
  return e / (1 + e);
}

export function logit(p: number): number {
  return Math.log(p) - Math.log1p(-p);
}

function checkData(x: Matrix, labels: ArrayLike<number>, d: number): { n: number; nPos: number } {
  if (!(Number.isInteger(d) && d > 0))
    throw new SteerguardError(`feature count must be a positive integer, got ${d}`);
  const n = labels.length;
  if (x.length !== n * d)
    throw new SteerguardError(`matrix has ${x.length} values, expected ${n} rows × ${d}`);
  let nPos = 0;
  for (let i = 0; i < n; i++) {
    const y = labels[i];
    if (y !== 0 && y !== 1) throw new SteerguardError(`label ${i} is ${y}; labels must be 0 or 1`);
    nPos += y;
  }
  if (nPos === 0 || nPos === n) {
    throw new SteerguardError(
      `need examples of both classes to fit a probe; got ${nPos} positive and ${n - nPos} negative`,
    );
  }
  for (let k = 0; k < x.length; k++) {
    if (!Number.isFinite(x[k])) {
      throw new SteerguardError(
        `example ${Math.floor(k / d)} has a non-finite value (NaN or infinity) at feature ${k % d}`,
      );
    }
  }
  return { n, nPos };
}

/** f(w, b) and its gradient on raw features (for checks and reports). */
export function logisticObjective(
  x: Matrix,
  labels: ArrayLike<number>,
  d: number,
  w: ArrayLike<number>,
  b: number,
  C = 1,
): { value: number; gradW: Float64Array; gradB: number } {
  const n = labels.length;
  const gradW = new Float64Array(d);
  let value = 0;
  let gradB = 0;
  for (let i = 0; i < n; i++) {
    let z = b;
    const o = i * d;
    for (let j = 0; j < d; j++) z += w[j] * x[o + j];
    const y = labels[i] === 1 ? 1 : -1;
    value += softplus(-y * z);
    const g = -y * sigmoid(-y * z);
    gradB += g;
    for (let j = 0; j < d; j++) gradW[j] += g * x[o + j];
  }
  let ww = 0;
  for (let j = 0; j < d; j++) {
    ww += w[j] * w[j];
    gradW[j] += w[j] / C;
  }
  return { value: value + ww / (2 * C), gradW, gradB };
}

/**
 * Float32 matrix product out[M, N] = x[M, K] · w[N, K]ᵀ, e.g. the model engine's `matmul`. Given
 * to the fit, it computes the Gram matrix (or Hessian) that only steers Newton's steps; gradients
 * and objective values stay Float64, so the solution is as exact as without it.
 */
export type MatmulF32 = (
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  M: number,
  K: number,
  N: number,
) => void;

/** Fits P(y = 1 | x) = sigmoid(w·x + b); see the file comment for the objective and method. */
export function fitLogistic(
  x: Matrix,
  labels: ArrayLike<number>,
  d: number,
  opts: LogisticOptions & { readonly matmul?: MatmulF32 } = {},
): LogisticFit {
  const C = opts.C ?? 1;
  if (!(C > 0 && Number.isFinite(C))) throw new SteerguardError(`C must be a positive number, got ${C}`);
  const tol = opts.tol ?? 1e-10;
  const maxIter = opts.maxIter ?? 10_000;
  const { n } = checkData(x, labels, d);
  const y = Float64Array.from({ length: n }, (_, i) => (labels[i] === 1 ? 1 : -1));

  // Centred (and optionally scaled) Float64 copy.
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += x[i * d + j];
  for (let j = 0; j < d; j++) mean[j] /= n;
  const scale = new Float64Array(d).fill(1);
  const xc = new Float64Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xc[i * d + j] = x[i * d + j] - mean[j];
  if (opts.standardize) {
    for (let j = 0; j < d; j++) {
      let v = 0;
      for (let i = 0; i < n; i++) v += xc[i * d + j] ** 2;
      const sd = Math.sqrt(v / n);
      scale[j] = sd > 0 ? sd : 1;
    }
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xc[i * d + j] /= scale[j];
  }

  const sol =
    n <= d
      ? newtonKernel(xc, y, n, d, C, tol, maxIter, opts.matmul)
      : newtonPrimal(xc, y, n, d, C, tol, maxIter, opts.matmul);
  const w = new Float64Array(d);
  let shift = 0;
  for (let j = 0; j < d; j++) {
    w[j] = sol.w[j] / scale[j];
    shift += w[j] * mean[j];
  }
  const b = sol.c - shift;

  // Report the gradient of the objective actually minimised, on the features it was posed on.
  let check: { value: number; gradW: Float64Array; gradB: number };
  if (opts.standardize) {
    const xs = new Float64Array(n * d);
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xs[i * d + j] = x[i * d + j] / scale[j];
    check = logisticObjective(xs, labels, d, sol.w, b, C);
  } else {
    check = logisticObjective(x, labels, d, w, b, C);
  }
  let gradNorm = Math.abs(check.gradB);
  for (let j = 0; j < d; j++) gradNorm = Math.max(gradNorm, Math.abs(check.gradW[j]));
  return {
    w,
    b,
    iterations: sol.iterations,
    factorizations: sol.factorizations,
    converged: sol.converged,
    gradNorm,
    objective: check.value,
  };
}

/** Gram matrix X Xᵀ of row-major X [n, d], Float64, by `matmul` in Float32 when given. */
function gram(x: Float64Array, n: number, d: number, matmul: MatmulF32 | undefined): Float64Array {
  if (matmul) {
    const x32 = Float32Array.from(x);
    const out = new Float32Array(n * n);
    matmul(out, x32, x32, n, d, n);
    const k = Float64Array.from(out);
    // Float32 accumulation order can differ between (i, j) and (j, i): keep it exactly symmetric.
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) k[j * n + i] = k[i * n + j];
    return k;
  }
  return gramRows(x, n, d);
}

/** X Xᵀ of row-major X [n, d] (symmetric, full), two rows by two rows to halve the loads. */
function gramRows(x: Float64Array, n: number, d: number): Float64Array {
  const k = new Float64Array(n * n);
  const put = (i: number, j: number, v: number): void => {
    k[i * n + j] = v;
    k[j * n + i] = v;
  };
  for (let i = 0; i < n; i += 2) {
    const i2 = Math.min(i + 1, n - 1);
    const oa = i * d;
    const ob = i2 * d;
    for (let j = 0; j <= i2; j += 2) {
      const j2 = Math.min(j + 1, n - 1);
      const oc = j * d;
      const oe = j2 * d;
      let ac = 0;
      let ae = 0;
      let bc = 0;
      let be = 0;
      for (let t = 0; t < d; t++) {
        const xa = x[oa + t];
        const xb = x[ob + t];
        const xc = x[oc + t];
        const xe = x[oe + t];
        ac += xa * xc;
        ae += xa * xe;
        bc += xb * xc;
        be += xb * xe;
      }
      put(i, j, ac);
      put(i, j2, ae);
      put(i2, j, bc);
      put(i2, j2, be);
    }
  }
  return k;
}

/** out = M v for symmetric row-major M [n, n]. */
function symVec(m: Float64Array, v: Float64Array, n: number, out: Float64Array): Float64Array {
  for (let i = 0; i < n; i++) {
    const o = i * n;
    let s0 = 0;
    let s1 = 0;
    let j = 0;
    for (; j + 1 < n; j += 2) {
      s0 += m[o + j] * v[j];
      s1 += m[o + j + 1] * v[j + 1];
    }
    if (j < n) s0 += m[o + j] * v[j];
    out[i] = s0 + s1;
  }
  return out;
}

/** out = Xᵀ v for row-major X [n, d]. */
function xtVec(x: Float64Array, v: Float64Array, n: number, d: number, out: Float64Array): Float64Array {
  out.fill(0);
  let i = 0;
  for (; i + 1 < n; i += 2) {
    const v0 = v[i];
    const v1 = v[i + 1];
    const o0 = i * d;
    const o1 = o0 + d;
    for (let t = 0; t < d; t++) out[t] += v0 * x[o0 + t] + v1 * x[o1 + t];
  }
  if (i < n) {
    const vi = v[i];
    const o = i * d;
    for (let t = 0; t < d; t++) out[t] += vi * x[o + t];
  }
  return out;
}

/** out = X w + c for row-major X [n, d]. */
function xVec(
  x: Float64Array,
  w: Float64Array,
  c: number,
  n: number,
  d: number,
  out: Float64Array,
): Float64Array {
  for (let i = 0; i < n; i++) {
    const o = i * d;
    let s0 = 0;
    let s1 = 0;
    let t = 0;
    for (; t + 1 < d; t += 2) {
      s0 += x[o + t] * w[t];
      s1 += x[o + t + 1] * w[t + 1];
    }
    if (t < d) s0 += x[o + t] * w[t];
    out[i] = s0 + s1 + c;
  }
  return out;
}

/**
 * Lower Cholesky factor of SPD [m, m] (row-major) into `l`; false when not positive definite.
 * Rows are computed two at a time so each loaded element of an earlier row serves both.
 */
function choleskyInto(a: Float64Array, m: number, l: Float64Array): boolean {
  let i = 0;
  for (; i + 1 < m; i += 2) {
    const oi = i * m;
    const oi2 = oi + m;
    for (let j = 0; j <= i; j++) {
      const oj = j * m;
      let s0 = a[oi + j];
      let s1 = 0;
      let t0 = a[oi2 + j];
      let t1 = 0;
      let k = 0;
      for (; k + 1 < j; k += 2) {
        const l0 = l[oj + k];
        const l1 = l[oj + k + 1];
        s0 -= l[oi + k] * l0;
        s1 -= l[oi + k + 1] * l1;
        t0 -= l[oi2 + k] * l0;
        t1 -= l[oi2 + k + 1] * l1;
      }
      if (k < j) {
        const l0 = l[oj + k];
        s0 -= l[oi + k] * l0;
        t0 -= l[oi2 + k] * l0;
      }
      const s = s0 + s1;
      if (i === j) {
        if (!(s > 0)) return false;
        l[oi + i] = Math.sqrt(s);
      } else {
        l[oi + j] = s / l[oj + j];
      }
      // Row i+1 at column j <= i needs l[j][j], which is final by now (set above when j = i).
      l[oi2 + j] = (t0 + t1) / l[oj + j];
    }
    let s = a[oi2 + i + 1];
    for (let k = 0; k <= i; k++) s -= l[oi2 + k] * l[oi2 + k];
    if (!(s > 0)) return false;
    l[oi2 + i + 1] = Math.sqrt(s);
  }
  if (i < m) {
    // The last row of an odd-sized matrix, alone.
    const oi = i * m;
    for (let j = 0; j <= i; j++) {
      const oj = j * m;
      let s = a[oi + j];
      for (let k = 0; k < j; k++) s -= l[oi + k] * l[oj + k];
      if (i === j) {
        if (!(s > 0)) return false;
        l[oi + i] = Math.sqrt(s);
      } else {
        l[oi + j] = s / l[oj + j];
      }
    }
  }
  return true;
}

/** Solves L Lᵀ x = v in place. */
function cholSolve(l: Float64Array, m: number, v: Float64Array): void {
  for (let i = 0; i < m; i++) {
    let s = v[i];
    const o = i * m;
    for (let k = 0; k < i; k++) s -= l[o + k] * v[k];
    v[i] = s / l[o + i];
  }
  for (let i = m - 1; i >= 0; i--) {
    let s = v[i];
    for (let k = i + 1; k < m; k++) s -= l[k * m + i] * v[k];
    v[i] = s / l[i * m + i];
  }
}

/** Per-example loss derivatives at margins z: g = dℓ/dz, s = d²ℓ/dz², and the summed loss. */
function lossTerms(z: Float64Array, y: Float64Array, g: Float64Array, s: Float64Array): number {
  let f = 0;
  for (let i = 0; i < z.length; i++) {
    const m = y[i] * z[i];
    f += softplus(-m);
    const q = sigmoid(-m);
    g[i] = -y[i] * q;
    s[i] = q * (1 - q);
  }
  return f;
}

function lossOnly(z: Float64Array, dz: Float64Array, t: number, y: Float64Array): number {
  let f = 0;
  for (let i = 0; i < z.length; i++) f += softplus(-y[i] * (z[i] + t * dz[i]));
  return f;
}

/**
 * Newton's method on the kernel form, for N <= D: w = Xcᵀ α, so each step solves an N×N system,
 * (I + C S K) Δα + C s Δc = -(α + C g) with sᵀK Δα + Σs Δc = -Σg, by the Woodbury identity (one
 * Cholesky of I + C S^½ K S^½) and the Schur complement of Δc. That system times diag(K, 1) is the
 * Hessian system of the objective in (α, c), so a factorisation made at an earlier point still
 * gives a descent direction: after a fresh Newton step the same factorisation is reused ("chord"
 * steps, about a tenth of the cost) for as long as each such step at least quarters the residual.
 * K only shapes the steps; margins, objective and the stopping test (α + C g = 0, Σ g = 0, which
 * makes the w-gradient Xcᵀ(α + C g)/C zero) are computed from the data in Float64, so a Float32 K
 * costs no accuracy.
 */
function newtonKernel(
  xc: Float64Array,
  y: Float64Array,
  n: number,
  d: number,
  C: number,
  tol: number,
  maxIter: number,
  matmul: MatmulF32 | undefined,
): { w: Float64Array; c: number; iterations: number; factorizations: number; converged: boolean } {
  const k = gram(xc, n, d, matmul);
  const alpha = new Float64Array(n);
  const w = new Float64Array(d);
  let c = 0;
  const z = new Float64Array(n);
  const g = new Float64Array(n);
  const s = new Float64Array(n);
  const r = new Float64Array(n);
  // The factorisation and what goes with it, all at the point where it was made.
  const s0 = new Float64Array(n);
  const sq = new Float64Array(n);
  const a = new Float64Array(n * n);
  const l = new Float64Array(n * n);
  const q = new Float64Array(n);
  const kq = new Float64Array(n);
  let schur = 0;
  let factored = false;
  let factorizations = 0;
  const tmp = new Float64Array(n);
  const rhs = new Float64Array(n);
  const p = new Float64Array(n);
  const kp = new Float64Array(n);
  const da = new Float64Array(n);
  const dw = new Float64Array(d);
  const dz = new Float64Array(n);
  // out = M⁻¹ v for M = I + C S0 K, by Woodbury: v - C S0^½ (I + C S0^½ K S0^½)⁻¹ S0^½ K v.
  const solveM = (v: Float64Array, out: Float64Array): void => {
    symVec(k, v, n, tmp);
    for (let i = 0; i < n; i++) tmp[i] *= sq[i];
    cholSolve(l, n, tmp);
    for (let i = 0; i < n; i++) out[i] = v[i] - C * sq[i] * tmp[i];
  };
  const factor = (): boolean => {
    let sumS = 0;
    for (let i = 0; i < n; i++) {
      s0[i] = s[i];
      sq[i] = Math.sqrt(s[i]);
      sumS += s[i];
    }
    for (let i = 0; i < n; i++) {
      const o = i * n;
      for (let j = 0; j <= i; j++) a[o + j] = C * sq[i] * k[o + j] * sq[j];
      a[o + i] += 1;
    }
    if (!choleskyInto(a, n, l)) return false;
    for (let i = 0; i < n; i++) rhs[i] = C * s0[i];
    solveM(rhs, q);
    symVec(k, q, n, kq);
    let sKq = 0;
    for (let i = 0; i < n; i++) sKq += s0[i] * kq[i];
    schur = sumS - sKq;
    factored = true;
    factorizations++;
    return true;
  };
  let iterations = 0;
  let converged = false;
  let rmax: number;
  let lastR = Infinity;
  xVec(xc, w, c, n, d, z);
  for (;;) {
    const loss = lossTerms(z, y, g, s);
    rmax = 0;
    let rc = 0;
    for (let i = 0; i < n; i++) {
      r[i] = alpha[i] + C * g[i];
      rmax = Math.max(rmax, Math.abs(r[i]));
      rc += g[i];
    }
    if (rmax <= tol * C && Math.abs(rc) <= tol * n) {
      converged = true;
      break;
    }
    if (iterations >= maxIter) break;
    iterations++;
    // Refactorise unless the last step quartered the residual.
    const fresh = !factored || rmax > 0.25 * lastR;
    if (fresh && !factor()) break;
    lastR = rmax;
    for (let i = 0; i < n; i++) rhs[i] = -r[i];
    solveM(rhs, p);
    symVec(k, p, n, kp);
    let sKp = 0;
    for (let i = 0; i < n; i++) sKp += s0[i] * kp[i];
    const dc = schur > 0 ? (-rc - sKp) / schur : 0;
    for (let i = 0; i < n; i++) da[i] = p[i] - dc * q[i];
    xtVec(xc, da, n, d, dw);
    xVec(xc, dw, dc, n, d, dz);
    let ww = 0;
    let wd = 0;
    let dd = 0;
    for (let j = 0; j < d; j++) {
      ww += w[j] * w[j];
      wd += w[j] * dw[j];
      dd += dw[j] * dw[j];
    }
    let slope = wd / C;
    for (let i = 0; i < n; i++) slope += g[i] * dz[i];
    if (!(slope < 0)) {
      if (fresh) break;
      factored = false;
      continue;
    }
    const f0 = loss + ww / (2 * C);
    const t = lineSearch((u) => lossOnly(z, dz, u, y) + (ww + 2 * u * wd + u * u * dd) / (2 * C), f0, slope);
    if (t === 0) {
      if (fresh) break;
      factored = false;
      continue;
    }
    for (let i = 0; i < n; i++) alpha[i] += t * da[i];
    for (let j = 0; j < d; j++) w[j] += t * dw[j];
    c += t * dc;
    xVec(xc, w, c, n, d, z);
  }
  // Stalled at rounding level: accept a residual within a few orders of the target.
  if (!converged) converged = rmax <= 1e4 * tol * C;
  return { w, c, iterations, factorizations, converged };
}

/** Newton's method in the primal (w, c), for N > D: a (D+1)×(D+1) Hessian per step. */
function newtonPrimal(
  xc: Float64Array,
  y: Float64Array,
  n: number,
  d: number,
  C: number,
  tol: number,
  maxIter: number,
  matmul: MatmulF32 | undefined,
): { w: Float64Array; c: number; iterations: number; factorizations: number; converged: boolean } {
  const m = d + 1;
  const w = new Float64Array(d);
  let c = 0;
  const z = new Float64Array(n);
  const g = new Float64Array(n);
  const s = new Float64Array(n);
  const grad = new Float64Array(m);
  const h = new Float64Array(m * m);
  const l = new Float64Array(m * m);
  const dz = new Float64Array(n);
  const gw = new Float64Array(d);
  xVec(xc, w, c, n, d, z);
  let iterations = 0;
  let converged = false;
  let target = -1;
  let gmax: number;
  for (;;) {
    const loss = lossTerms(z, y, g, s);
    xtVec(xc, g, n, d, gw);
    let ww = 0;
    let gc = 0;
    for (let i = 0; i < n; i++) gc += g[i];
    for (let j = 0; j < d; j++) {
      grad[j] = gw[j] + w[j] / C;
      ww += w[j] * w[j];
    }
    grad[d] = gc;
    gmax = 0;
    for (const v of grad) gmax = Math.max(gmax, Math.abs(v));
    if (target < 0) target = tol * Math.max(1, gmax);
    if (gmax <= target) {
      converged = true;
      break;
    }
    if (iterations >= maxIter) break;
    iterations++;
    hessian(xc, s, n, d, h, matmul);
    for (let p = 0; p < d; p++) h[p * m + p] += 1 / C;
    if (!choleskyInto(h, m, l)) break;
    const step = Float64Array.from(grad, (v) => -v);
    cholSolve(l, m, step);
    let slope = 0;
    for (let j = 0; j < m; j++) slope += grad[j] * step[j];
    if (!(slope < 0)) break;
    xVec(xc, step, step[d], n, d, dz);
    let wd = 0;
    let dd = 0;
    for (let j = 0; j < d; j++) {
      wd += w[j] * step[j];
      dd += step[j] * step[j];
    }
    const f0 = loss + ww / (2 * C);
    const t = lineSearch((u) => lossOnly(z, dz, u, y) + (ww + 2 * u * wd + u * u * dd) / (2 * C), f0, slope);
    if (t === 0) break;
    for (let j = 0; j < d; j++) w[j] += t * step[j];
    c += t * step[d];
    xVec(xc, w, c, n, d, z);
  }
  if (!converged) converged = gmax <= 1e4 * target;
  return { w, c, iterations, factorizations: iterations, converged };
}

/** Lower triangle (and more) of [Xc 1]ᵀ S [Xc 1] into h [(d+1), (d+1)] (row-major). */
function hessian(
  xc: Float64Array,
  s: Float64Array,
  n: number,
  d: number,
  h: Float64Array,
  matmul: MatmulF32 | undefined,
): void {
  const m = d + 1;
  h.fill(0);
  if (matmul) {
    // (S^½ Xc)ᵀ (S^½ Xc) as one Float32 product of the transposed, scaled data.
    const t = new Float32Array(d * n);
    for (let i = 0; i < n; i++) {
      const r = Math.sqrt(s[i]);
      for (let j = 0; j < d; j++) t[j * n + i] = r * xc[i * d + j];
    }
    const out = new Float32Array(d * d);
    matmul(out, t, t, d, n, d);
    for (let p = 0; p < d; p++) for (let q = 0; q <= p; q++) h[p * m + q] = out[p * d + q];
  } else {
    for (let i = 0; i < n; i++) {
      const si = s[i];
      if (si === 0) continue;
      const o = i * d;
      for (let p = 0; p < d; p++) {
        const v = si * xc[o + p];
        const row = p * m;
        for (let q = 0; q <= p; q++) h[row + q] += v * xc[o + q];
      }
    }
  }
  for (let i = 0; i < n; i++) {
    const si = s[i];
    const o = i * d;
    for (let p = 0; p < d; p++) h[d * m + p] += si * xc[o + p];
    h[d * m + d] += si;
  }
}

/**
 * Step length along a Newton direction: the full step when it decreases f enough (Armijo), else
 * halved until it does; a full step that succeeds is doubled while f keeps falling, since on
 * nearly separable data f behaves like exp(-margin) and Newton undershoots by a constant factor
 * there. Near the optimum, where f can no longer resolve the decrease, the full step is taken.
 * 0 when no step decreases f.
 */
function lineSearch(f: (t: number) => number, f0: number, slope: number): number {
  if (-slope <= 1e-13 * (1 + Math.abs(f0))) return 1;
  let t = 1;
  let ft = f(1);
  if (ft <= f0 + 1e-4 * slope) {
    while (t < 64) {
      const f2 = f(2 * t);
      if (!(f2 < ft)) break;
      ft = f2;
      t *= 2;
    }
    return t;
  }
  for (let ls = 0; ls < 60; ls++) {
    t *= 0.5;
    ft = f(t);
    if (ft <= f0 + 1e-4 * t * slope) return t;
  }
  return 0;
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// ---------------------------------------------------------------------------------------------
// Directions

/** mean(positive rows) - mean(negative rows), [D]. */
export function differenceOfMeans(x: Matrix, labels: ArrayLike<number>, d: number): Float64Array {
  const { n, nPos } = checkData(x, labels, d);
  const out = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const wgt = labels[i] === 1 ? 1 / nPos : -1 / (n - nPos);
    const o = i * d;
    for (let j = 0; j < d; j++) out[j] += wgt * x[o + j];
  }
  return out;
}

/**
 * First principal component of the differences between paired positive and negative rows, as
 * repeng computes its control vectors: the k-th positive is paired with the k-th negative (in the
 * order given; the extra rows of the larger class are left out), the differences are centred and
 * the top eigenvector of their covariance is taken, with its sign chosen so that positives project
 * higher than their pair in most pairs. Unit length, [D]. With fewer than two pairs, or
 * differences that do not vary, the normalised difference of means is returned instead.
 */
export function pcaDirection(
  x: Matrix,
  labels: ArrayLike<number>,
  d: number,
  opts: { readonly matmul?: MatmulF32 } = {},
): Float64Array {
  const { n } = checkData(x, labels, d);
  const pos: number[] = [];
  const neg: number[] = [];
  for (let i = 0; i < n; i++) (labels[i] === 1 ? pos : neg).push(i);
  const p = Math.min(pos.length, neg.length);
  const diffs = new Float64Array(p * d);
  for (let k = 0; k < p; k++)
    for (let j = 0; j < d; j++) diffs[k * d + j] = x[pos[k] * d + j] - x[neg[k] * d + j];
  const mean = new Float64Array(d);
  for (let k = 0; k < p; k++) for (let j = 0; j < d; j++) mean[j] += diffs[k * d + j] / p;
  for (let k = 0; k < p; k++) for (let j = 0; j < d; j++) diffs[k * d + j] -= mean[j];

  let v = p >= 2 ? topEigenvector(diffs, p, d, opts.matmul) : undefined;
  if (v === undefined) {
    v = differenceOfMeans(x, labels, d);
    normalizeInPlace(v);
    return v;
  }
  let larger = 0;
  let smaller = 0;
  for (let k = 0; k < p; k++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += (x[pos[k] * d + j] - x[neg[k] * d + j]) * v[j];
    if (s > 0) larger++;
    else if (s < 0) smaller++;
  }
  let flip = smaller > larger;
  if (smaller === larger) {
    let s = 0;
    for (let j = 0; j < d; j++) s += mean[j] * v[j];
    flip = s < 0;
  }
  if (flip) for (let j = 0; j < d; j++) v[j] = -v[j];
  return v;
}

function normalizeInPlace(v: Float64Array): void {
  let s = 0;
  for (const t of v) s += t * t;
  const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
  for (let j = 0; j < v.length; j++) v[j] *= inv;
}

/**
 * Top right singular vector of M [p, d] (unit), by power iteration on the smaller of M Mᵀ and
 * Mᵀ M; undefined when M is zero.
 */
function topEigenvector(
  m: Float64Array,
  p: number,
  d: number,
  matmul: MatmulF32 | undefined,
): Float64Array | undefined {
  const small = p <= d;
  const k = small ? p : d;
  // Gram of the smaller side.
  const g = new Float64Array(k * k);
  // A Float32 Gram is ample here: the direction is stored in Float32.
  if (small) g.set(gram(m, p, d, matmul));
  else {
    for (let i = 0; i < p; i++) {
      const o = i * d;
      for (let a = 0; a < d; a++) {
        const ma = m[o + a];
        if (ma === 0) continue;
        for (let b = 0; b <= a; b++) g[a * d + b] += ma * m[o + b];
      }
    }
    for (let a = 0; a < d; a++) for (let b = 0; b < a; b++) g[b * d + a] = g[a * d + b];
  }
  let trace = 0;
  for (let i = 0; i < k; i++) trace += g[i * k + i];
  if (!(trace > 0)) return undefined;
  // A fixed pseudo-random start: never orthogonal to the answer except by a measure-zero accident.
  let v = new Float64Array(k);
  let seed = 12345;
  for (let i = 0; i < k; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    v[i] = seed / 2147483648 - 0.5;
  }
  normalizeInPlace(v);
  let lambda = 0;
  for (let it = 0; it < 20_000; it++) {
    const next = new Float64Array(k);
    for (let i = 0; i < k; i++) {
      let s = 0;
      const o = i * k;
      for (let j = 0; j < k; j++) s += g[o + j] * v[j];
      next[i] = s;
    }
    const norm = Math.sqrt(dot(next, next));
    if (!(norm > 0)) return undefined;
    for (let i = 0; i < k; i++) next[i] /= norm;
    const change = 1 - Math.abs(dot(next, v));
    v = next;
    const done = Math.abs(norm - lambda) <= 1e-14 * norm && change <= 1e-14;
    lambda = norm;
    if (done) break;
  }
  if (!small) return v;
  // Right singular vector from the left one: Mᵀ v, normalised.
  const out = new Float64Array(d);
  for (let i = 0; i < p; i++) {
    const vi = v[i];
    const o = i * d;
    for (let j = 0; j < d; j++) out[j] += vi * m[o + j];
  }
  normalizeInPlace(out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Metrics

/** Share of examples classified right when `score > threshold` means positive. */
export function accuracy(scores: ArrayLike<number>, labels: ArrayLike<number>, threshold = 0): number {
  if (scores.length !== labels.length) throw new SteerguardError('scores and labels differ in length');
  if (scores.length === 0) return NaN;
  let right = 0;
  for (let i = 0; i < scores.length; i++) if ((scores[i] > threshold ? 1 : 0) === labels[i]) right++;
  return right / scores.length;
}

/** Wilson score interval for k successes out of n (z = 1.96: 95%). [0, 1] when n = 0. */
export function wilsonInterval(k: number, n: number, z = 1.96): [number, number] {
  if (n === 0) return [0, 1];
  const p = k / n;
  const z2 = z * z;
  const denom = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denom;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / denom;
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

/** Mid-ranks (1-based; tied values share the mean of their ranks). */
function midRanks(values: ArrayLike<number>): Float64Array {
  const n = values.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => values[a] - values[b]);
  const ranks = new Float64Array(n);
  for (let i = 0; i < n;) {
    let j = i;
    while (j + 1 < n && values[order[j + 1]] === values[order[i]]) j++;
    const r = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) ranks[order[k]] = r;
    i = j + 1;
  }
  return ranks;
}

export interface AurocResult {
  /** P(score of a random positive > score of a random negative), ties counting 1/2. */
  readonly auroc: number;
  /** DeLong standard error. */
  readonly se: number;
  /**
   * 95% interval by Newcombe's Wilson-type method (see {@link aurocInterval}); unlike auroc ±
   * 1.96 se it keeps a width at AUROC 0 or 1. [0, 1] with no example of a class.
   */
  readonly ci: [number, number];
}

/**
 * Newcombe's (2006) "method 5" interval for an AUROC: the θ where (θ̂ − θ)² = z² V(θ), with V the
 * Hanley–McNeil variance evaluated at θ itself and both class sizes replaced by their mean N*:
 *   V(θ) = θ(1 − θ) [1 + (N* − 1)(1 − θ)/(2 − θ) + (N* − 1) θ/(1 + θ)] / N*².
 * Like the Wilson interval for a proportion it never collapses to a point, which DeLong's does at
 * 0 and 1 (an "interval" of 1.000–1.000 from 40 examples claims a certainty nobody has).
 */
export function aurocInterval(auc: number, nPos: number, nNeg: number, z = 1.96): [number, number] {
  if (nPos === 0 || nNeg === 0 || !Number.isFinite(auc)) return [0, 1];
  const nStar = (nPos + nNeg) / 2;
  const variance = (t: number): number =>
    (t * (1 - t) * (1 + ((nStar - 1) * (1 - t)) / (2 - t) + ((nStar - 1) * t) / (1 + t))) / (nStar * nStar);
  // g(θ) = (θ̂ − θ)² − z² V(θ) is negative at θ̂ and positive at the far end of each side (V(0) =
  // V(1) = 0); bisection finds the crossing on each side.
  const g = (t: number): number => (auc - t) ** 2 - z * z * variance(t);
  const root = (inside: number, outside: number): number => {
    if (g(outside) <= 0) return outside;
    let a = inside;
    let b = outside;
    for (let i = 0; i < 60; i++) {
      const mid = (a + b) / 2;
      if (g(mid) <= 0) a = mid;
      else b = mid;
    }
    return (a + b) / 2;
  };
  return [root(auc, 0), root(auc, 1)];
}

/** AUROC (Mann–Whitney, ties counted 1/2) with DeLong's standard error and Newcombe's interval. */
export function auroc(scores: ArrayLike<number>, labels: ArrayLike<number>): AurocResult {
  if (scores.length !== labels.length) throw new SteerguardError('scores and labels differ in length');
  const posIdx: number[] = [];
  const negIdx: number[] = [];
  for (let i = 0; i < labels.length; i++) {
    if (Number.isNaN(scores[i])) throw new SteerguardError(`score ${i} is NaN`);
    (labels[i] === 1 ? posIdx : negIdx).push(i);
  }
  const m = posIdx.length;
  const n = negIdx.length;
  if (m === 0 || n === 0) return { auroc: NaN, se: NaN, ci: [0, 1] };
  const all = midRanks(scores);
  const rp = midRanks(posIdx.map((i) => scores[i]));
  const rn = midRanks(negIdx.map((i) => scores[i]));
  let sumPos = 0;
  for (const i of posIdx) sumPos += all[i];
  const auc = (sumPos - (m * (m + 1)) / 2) / (m * n);
  if (m < 2 || n < 2) return { auroc: auc, se: NaN, ci: aurocInterval(auc, m, n) };
  // Structural components: for each positive, the share of negatives below it (ties 1/2), and
  // for each negative, the share of positives above it.
  let s10 = 0;
  posIdx.forEach((i, k) => {
    const v = (all[i] - rp[k]) / n;
    s10 += (v - auc) ** 2;
  });
  let s01 = 0;
  negIdx.forEach((i, k) => {
    const v = 1 - (all[i] - rn[k]) / m;
    s01 += (v - auc) ** 2;
  });
  const variance = s10 / (m - 1) / m + s01 / (n - 1) / n;
  const se = Math.sqrt(variance);
  return { auroc: auc, se, ci: aurocInterval(auc, m, n) };
}
