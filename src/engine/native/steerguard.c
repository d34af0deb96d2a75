/*
 * steerguard native engine: the kernels of src/engine/backend.ts over flat fp32 buffers.
 *
 * Eager and llm.c-style on purpose: every kernel is a plain C function that takes its output, its
 * inputs and its sizes, so the TypeScript model code keeps every intermediate (hooks, KV cache), and
 * each forward kernel has its backward twin next to it (for LoRA training: src/training/kernels.ts).
 * The matrix products go to OpenBLAS; the rest are short loops parallelised with OpenMP. The Node-API layer at the bottom validates every argument
 * (typed-array kind, length against the sizes, forbidden overlaps) before any kernel touches memory,
 * and passes the typed arrays' own storage to the kernels: nothing is copied.
 *
 * Dimension letters (as in backend.ts):
 *   M rows   K input features   N output features   D model width
 *   H query heads   G key/value heads   E head dim   T query tokens   S key tokens
 *
 * Built by scripts/build-native.mjs (per CPU level, e.g. cc -O3 -march=x86-64-v3 -ffp-contract=off -fopenmp ...).
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* Debian's and most distributions' cblas.h declare these, netlib's does not: declare them ourselves
 * so the file compiles against any cblas.h as long as the library linked is OpenBLAS. */
void openblas_set_num_threads(int num_threads);
char *openblas_get_config(void);

/* Thread count for the OpenMP kernels. Process-wide, like OpenBLAS's own. */
static int g_threads = 1;

/* Below this many elements of work an OpenMP region costs more than it saves. */
#define PAR_MIN_WORK (1 << 15)

// ----------------------------------------------------------------------------
// kernels

/* out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]) */
static void matmul_forward(float *out, const float *x, const float *w, const float *bias, int M, int K, int N) {
  float beta = 0.0f;
  if (bias) {
    /* letting BLAS add the bias through beta = 1 saves a second pass over out */
    for (int m = 0; m < M; m++) memcpy(out + (size_t)m * N, bias, (size_t)N * sizeof(float));
    beta = 1.0f;
  }
  if (M == 1) {
    /* the matrix-vector routine streams w once; sgemm would pack it first for no reuse */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, x, 1, beta, out, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, beta, out, N);
  }
}

/* The gradient through matmul_forward, added in: dx[M,K] += dout[M,N] · w[N,K] and
 * dw[N,K] += dout[M,N]ᵀ · x[M,K]; either may be NULL. Both are sgemms on the arrays as stored (the
 * transposes are BLAS flags, no transposed copy of w); beta = 1 does the adding. */
static void matmul_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, int M, int K,
                            int N) {
  if (dx) {
    if (M == 1)
      cblas_sgemv(CblasRowMajor, CblasTrans, N, K, 1.0f, w, K, dout, 1, 1.0f, dx, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dout, N, w, K, 1.0f, dx, K);
  }
  if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dout, N, x, K, 1.0f, dw, K);
}

/* out[M,D] = x / sqrt(mean(x²) + eps) * weight; out may be x. */
static void rmsnorm_forward(float *out, const float *x, const float *weight, int M, int D, float eps) {
#pragma omp parallel for num_threads(g_threads) if ((size_t)M * D >= PAR_MIN_WORK) schedule(static)
  for (int m = 0; m < M; m++) {
    const float *xr = x + (size_t)m * D;
    float *orow = out + (size_t)m * D;
    /* the sum of squares in double rounds to the same fp32 mean as PyTorch's pairwise fp32 sum in
     * nearly every case; a plain fp32 running sum over D = 4096 would not */
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int d = 0; d < D; d++) ss += (double)xr[d] * (double)xr[d];
    /* then the same fp32 operations, in the same order, as Hugging Face's RMSNorm */
    float var = (float)(ss / D);
    float r = 1.0f / sqrtf(var + eps);
    for (int d = 0; d < D; d++) orow[d] = (xr[d] * r) * weight[d];
  }
}

/* dx[M,D] += the gradient through rmsnorm_forward at input x (weight frozen): with r = (mean(x²) +
 * eps)^-1/2, dx = r·(dy∘w) − x·r³/D·Σ(dy∘w∘x). dx must not overlap dout or x. */
static void rmsnorm_backward(float *dx, const float *dout, const float *x, const float *weight, int M, int D,
                             float eps) {
#pragma omp parallel for num_threads(g_threads) if ((size_t)M * D >= PAR_MIN_WORK) schedule(static)
  for (int m = 0; m < M; m++) {
    const float *xr = x + (size_t)m * D, *dy = dout + (size_t)m * D;
    float *dr = dx + (size_t)m * D;
    double ss = 0.0, dot = 0.0;
#pragma omp simd reduction(+ : ss, dot)
    for (int d = 0; d < D; d++) {
      ss += (double)xr[d] * (double)xr[d];
      dot += (double)dy[d] * (double)weight[d] * (double)xr[d];
    }
    double r = 1.0 / sqrt(ss / D + (double)eps);
    float rf = (float)r, c = (float)(dot * r * r * r / D);
#pragma omp simd
    for (int d = 0; d < D; d++) dr[d] += rf * dy[d] * weight[d] - c * xr[d];
  }
}

/* Rotate-half rotary embedding in place on x[M, heads, E], pair i turned by pos * inv_freq[i], with
 * cos and sin multiplied by scale (YaRN's attention factor, 1 otherwise). */
static int rope_rotate(float *x, int M, int heads, int E, int rotDim, const int32_t *pos, const float *inv_freq,
                       float scale, float sign) {
  int half = rotDim / 2;
  float *cs = malloc((size_t)g_threads * 2 * half * sizeof(float));
  if (!cs) return -1;
  /* the angle is rounded to fp32 at the same step as Hugging Face: at position 30000 one fp32 ulp of
   * the angle is 0.002 rad, so that rounding is part of the model as trained, and an angle kept in
   * double would drift from HF by more than any other kernel here. cos and sin are taken in double and
   * rounded once, which gives the correctly rounded fp32 value that PyTorch's ~1-ulp fp32 versions
   * return in nearly every case, and the same value on every libm; then scaled in fp32, as HF does. */
#pragma omp parallel num_threads(g_threads) if ((size_t)M * heads * rotDim >= PAR_MIN_WORK)
  {
    float *c = cs + (size_t)omp_get_thread_num() * 2 * half;
    float *s = c + half;
#pragma omp for schedule(static)
    for (int m = 0; m < M; m++) {
      float p = (float)pos[m];
      for (int i = 0; i < half; i++) {
        float a = p * inv_freq[i];
        c[i] = (float)cos((double)a) * scale;
        s[i] = (float)sin((double)a) * scale * sign;
      }
      for (int h = 0; h < heads; h++) {
        float *xh = x + ((size_t)m * heads + h) * E;
        for (int i = 0; i < half; i++) {
          float x1 = xh[i], x2 = xh[i + half];
          xh[i] = x1 * c[i] - x2 * s[i];
          xh[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  }
  free(cs);
  return 0;
}

static int rope_forward(float *x, int M, int heads, int E, int rotDim, const int32_t *pos, const float *inv_freq,
                        float scale) {
  return rope_rotate(x, M, heads, E, rotDim, pos, inv_freq, scale, 1.0f);
}

/* In place, dx ← Rᵀ·dx: the gradient through rope_forward. Each pair is turned by scale times a rotation,
 * so its transpose is the same turn with sin negated. */
static int rope_backward(float *dx, int M, int heads, int E, int rotDim, const int32_t *pos, const float *inv_freq,
                         float scale) {
  return rope_rotate(dx, M, heads, E, rotDim, pos, inv_freq, scale, -1.0f);
}

/* s[r] = q · k_r for four key rows k_r = k0 + r*stride: four independent sums keep both FMA units
 * busy, where one sum per row would wait on its own FMA latency */
static inline void dot4(const float *q, const float *k0, size_t stride, int E, float *s) {
  const float *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int e = 0; e < E; e++) {
    float qe = q[e];
    a0 += qe * k0[e];
    a1 += qe * k1[e];
    a2 += qe * k2[e];
    a3 += qe * k3[e];
  }
  s[0] = a0;
  s[1] = a1;
  s[2] = a2;
  s[3] = a3;
}

static inline float dot1(const float *q, const float *k, int E) {
  float a = 0.0f;
#pragma omp simd reduction(+ : a)
  for (int e = 0; e < E; e++) a += q[e] * k[e];
  return a;
}

/*
 * One query row against n consecutive keys (rows kvstride apart): scores in sc, then
 * acc[E] = Σ_j exp(s_j - mx) v_j, unnormalised. Returns mx; *sum gets Σ_j exp(s_j - mx).
 */
static float attend_keys(const float *qr, const float *kb, const float *vb, size_t kvstride, int n, int E,
                         float scale, float *sc, float *acc, double *sum) {
  int j = 0;
  for (; j + 4 <= n; j += 4) dot4(qr, kb + (size_t)j * kvstride, kvstride, E, sc + j);
  for (; j < n; j++) sc[j] = dot1(qr, kb + (size_t)j * kvstride, E);
  float mx = -INFINITY;
  for (j = 0; j < n; j++) {
    sc[j] *= scale;
    if (sc[j] > mx) mx = sc[j];
  }
  /* the normaliser in double: S can reach thousands of terms */
  double l = 0.0;
  for (j = 0; j < n; j++) {
    float e = expf(sc[j] - mx);
    sc[j] = e;
    l += e;
  }
  *sum = l;
  for (int e = 0; e < E; e++) acc[e] = 0.0f;
  /* four value rows per pass over acc: a quarter of the loads and stores of acc */
  for (j = 0; j + 4 <= n; j += 4) {
    const float *v0 = vb + (size_t)j * kvstride, *v1 = v0 + kvstride, *v2 = v1 + kvstride, *v3 = v2 + kvstride;
    float w0 = sc[j], w1 = sc[j + 1], w2 = sc[j + 2], w3 = sc[j + 3];
#pragma omp simd
    for (int e = 0; e < E; e++) acc[e] += w0 * v0[e] + w1 * v1[e] + w2 * v2[e] + w3 * v3[e];
  }
  for (; j < n; j++) {
    const float *vr = vb + (size_t)j * kvstride;
    float wj = sc[j];
#pragma omp simd
    for (int e = 0; e < E; e++) acc[e] += wj * vr[e];
  }
  return mx;
}

/*
 * Causal grouped-query attention for one sequence, query by query (decoding and short chunks).
 * q[T, H*E], k/v[S, G*E], out[T, H*E]; query t sits at absolute position S - T + t.
 *
 * A work item is (query t, kv head g, key chunk c) and handles all H/G query heads that read g, so
 * the chunk's keys and values are fetched from memory once and then hit in L2 for the other heads.
 * With many queries (prefill) there is one chunk, the whole visible range. With few (decode: T = 1,
 * G work items for two or more threads) the keys are split into chunks, each chunk's partial softmax
 * (max, sum, unnormalised output) is kept, and a merge rescales them to the common max: the usual
 * split-key ("flash-decoding") scheme, which keeps every thread busy on one long sequence.
 */
static int attention_rows(float *out, const float *q, const float *k, const float *v, int T, int S, int H, int G,
                          int E, float scale, int window) {
  size_t qstride = (size_t)H * E, kvstride = (size_t)G * E;
  int per_group = H / G;
  long base_items = (long)T * G;
  int nchunks = 1;
  if (g_threads > 1 && base_items < 8L * g_threads) {
    /* about 8 items per thread evens out the causal imbalance; chunks under 256 keys cost more in
     * merging than they give back */
    long want = (8L * g_threads + base_items - 1) / base_items;
    long most = (S + 255) / 256;
    nchunks = (int)(want < most ? want : most);
    if (nchunks < 1) nchunks = 1;
  }
  int chunk = (S + nchunks - 1) / nchunks;
  size_t scratch = (size_t)chunk + (size_t)E;
  float *buf = malloc((size_t)g_threads * scratch * sizeof(float));
  /* partials per (t, h, chunk): E unnormalised outputs, the max and the sum */
  size_t nparts = nchunks > 1 ? (size_t)T * H * nchunks : 0;
  float *pacc = nparts ? malloc(nparts * E * sizeof(float)) : NULL;
  float *pmax = nparts ? malloc(nparts * sizeof(float)) : NULL;
  double *psum = nparts ? malloc(nparts * sizeof(double)) : NULL;
  if (!buf || (nparts && (!pacc || !pmax || !psum))) {
    free(buf);
    free(pacc);
    free(pmax);
    free(psum);
    return -1;
  }
  long items = base_items * nchunks;
#pragma omp parallel num_threads(g_threads) if (items > 1 && (size_t)T * H * S * E >= PAR_MIN_WORK)
  {
    float *sc = buf + (size_t)omp_get_thread_num() * scratch;
    float *acc = sc + chunk;
    /* the last queries see the most keys: hand them out first, one by one, so the threads finish
     * together in a causal prefill */
#pragma omp for schedule(dynamic, 1)
    for (long it = items - 1; it >= 0; it--) {
      int c = (int)(it % nchunks);
      int g = (int)((it / nchunks) % G);
      int t = (int)(it / nchunks / G);
      int p = S - T + t;
      int lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
      int hi = p + 1; /* keys [lo, hi) are visible */
      int c0 = c * chunk, c1 = c0 + chunk < S ? c0 + chunk : S;
      int j0 = lo > c0 ? lo : c0, j1 = hi < c1 ? hi : c1;
      for (int h = g * per_group; h < (g + 1) * per_group; h++) {
        size_t part = ((size_t)t * H + h) * nchunks + c;
        if (j0 >= j1) { /* only possible with chunks: this chunk is outside the visible range */
          pmax[part] = -INFINITY;
          psum[part] = 0.0;
          continue;
        }
        const float *qr = q + (size_t)t * qstride + (size_t)h * E;
        const float *kb = k + (size_t)j0 * kvstride + (size_t)g * E;
        const float *vb = v + (size_t)j0 * kvstride + (size_t)g * E;
        double sum;
        float mx = attend_keys(qr, kb, vb, kvstride, j1 - j0, E, scale, sc, acc, &sum);
        if (nchunks == 1) {
          float inv = (float)(1.0 / sum);
          float *orow = out + (size_t)t * qstride + (size_t)h * E;
          for (int e = 0; e < E; e++) orow[e] = acc[e] * inv;
        } else {
          memcpy(pacc + part * E, acc, (size_t)E * sizeof(float));
          pmax[part] = mx;
          psum[part] = sum;
        }
      }
    }
  }
  if (nchunks > 1) {
    for (size_t th = 0; th < (size_t)T * H; th++) {
      const float *ms = pmax + th * nchunks;
      const double *ls = psum + th * nchunks;
      float mx = -INFINITY;
      for (int c = 0; c < nchunks; c++)
        if (ls[c] > 0.0 && ms[c] > mx) mx = ms[c];
      double total = 0.0;
      float *orow = out + th * E;
      for (int e = 0; e < E; e++) orow[e] = 0.0f;
      for (int c = 0; c < nchunks; c++) {
        if (ls[c] == 0.0) continue;
        float f = expf(ms[c] - mx);
        total += ls[c] * f;
        const float *a = pacc + (th * nchunks + c) * E;
        for (int e = 0; e < E; e++) orow[e] += f * a[e];
      }
      float inv = (float)(1.0 / total);
      for (int e = 0; e < E; e++) orow[e] *= inv;
    }
  }
  free(buf);
  free(pacc);
  free(pmax);
  free(psum);
  return 0;
}

#define ATT_QBLOCK 128

/*
 * The same attention for many queries (prefill), as matrix products: for each head and block of up to
 * 128 queries, P = scale·Q·Kᵀ over the keys any query of the block sees (one sgemm), a masked softmax
 * on each row of P, then O = P·V (a second sgemm). The masked entries of P are zeros that the second
 * sgemm multiplies for nothing, at most 128 per row, and in exchange both products run at sgemm speed.
 */
static int attention_blocks(float *out, const float *q, const float *k, const float *v, int T, int S, int H,
                            int G, int E, float scale, int window) {
  size_t qstride = (size_t)H * E, kvstride = (size_t)G * E;
  int per_group = H / G;
  int bq = T < ATT_QBLOCK ? T : ATT_QBLOCK;
  float *P = malloc((size_t)bq * S * sizeof(float));
  float *rinv = malloc((size_t)bq * sizeof(float));
  if (!P || !rinv) {
    free(P);
    free(rinv);
    return -1;
  }
  for (int h = 0; h < H; h++) {
    int g = h / per_group;
    for (int t0 = 0; t0 < T; t0 += bq) {
      int nb = T - t0 < bq ? T - t0 : bq;
      int p0 = S - T + t0; /* position of the block's first query */
      int jlo = (window > 0 && p0 - window + 1 > 0) ? p0 - window + 1 : 0;
      int jhi = p0 + nb; /* one past the last query's position */
      int ns = jhi - jlo;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, ns, E, scale, q + (size_t)t0 * qstride + (size_t)h * E,
                  (int)qstride, k + (size_t)jlo * kvstride + (size_t)g * E, (int)kvstride, 0.0f, P, ns);
#pragma omp parallel for num_threads(g_threads) if ((size_t)nb * ns >= PAR_MIN_WORK) schedule(static)
      for (int r = 0; r < nb; r++) {
        int p = p0 + r;
        int a = ((window > 0 && p - window + 1 > 0) ? p - window + 1 : 0) - jlo;
        int b = p - jlo + 1; /* row r sees columns [a, b) */
        float *row = P + (size_t)r * ns;
        float mx = -INFINITY;
        for (int j = a; j < b; j++)
          if (row[j] > mx) mx = row[j];
        double sum = 0.0;
        for (int j = 0; j < a; j++) row[j] = 0.0f;
        for (int j = a; j < b; j++) {
          float e = expf(row[j] - mx);
          row[j] = e;
          sum += e;
        }
        for (int j = b; j < ns; j++) row[j] = 0.0f;
        rinv[r] = (float)(1.0 / sum);
      }
      float *o = out + (size_t)t0 * qstride + (size_t)h * E;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, E, ns, 1.0f, P, ns,
                  v + (size_t)jlo * kvstride + (size_t)g * E, (int)kvstride, 0.0f, o, (int)qstride);
      for (int r = 0; r < nb; r++)
        for (int e = 0; e < E; e++) o[(size_t)r * qstride + e] *= rinv[r];
    }
  }
  free(P);
  free(rinv);
  return 0;
}

/* From 8 queries on, the sgemm path was faster on every shape measured (docs/ENGINE.md); below, the
 * row path, which also splits long key ranges across threads for decoding. */
#define ATT_BLOCKS_MIN_T 8

static int attention_forward(float *out, const float *q, const float *k, const float *v, int T, int S, int H,
                             int G, int E, float scale, int window) {
  if (T >= ATT_BLOCKS_MIN_T) return attention_blocks(out, q, k, v, T, S, H, G, E, scale, window);
  return attention_rows(out, q, k, v, T, S, H, G, E, scale, window);
}

/*
 * dq, dk, dv += the gradient through attention_forward for one training sequence (T = S: queries and
 * keys are the same T tokens), given its inputs and its output. o = Σ_j p_j v_j, p = softmax(s),
 * s_j = scale·q·k_j, so dv_j += p_j·do, ds_j = p_j·(do·v_j − do·o), dq += scale·Σ_j ds_j k_j and
 * dk_j += scale·ds_j·q. Laid out as attention_blocks is: per head and block of up to 128 queries,
 * P is recomputed with one sgemm (and the masked softmax), dP = dO·Vᵀ is a second, and dV += Pᵀ·dO,
 * dQ += dS·K, dK += dSᵀ·Q three more. Heads run one after another, so the heads sharing a kv head
 * add into its dk, dv without a race; each sgemm is threaded by OpenBLAS.
 */
static int attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                              const float *v, const float *out, int T, int H, int G, int E, float scale,
                              int window) {
  size_t qstride = (size_t)H * E, kvstride = (size_t)G * E;
  int per_group = H / G;
  int bq = T < ATT_QBLOCK ? T : ATT_QBLOCK;
  float *P = malloc((size_t)bq * T * sizeof(float));
  float *dP = malloc((size_t)bq * T * sizeof(float));
  if (!P || !dP) {
    free(P);
    free(dP);
    return -1;
  }
  for (int h = 0; h < H; h++) {
    int g = h / per_group;
    for (int t0 = 0; t0 < T; t0 += bq) {
      int nb = T - t0 < bq ? T - t0 : bq;
      int jlo = (window > 0 && t0 - window + 1 > 0) ? t0 - window + 1 : 0;
      int ns = t0 + nb - jlo;
      const float *qb = q + (size_t)t0 * qstride + (size_t)h * E;
      const float *dob = dout + (size_t)t0 * qstride + (size_t)h * E;
      const float *ob = out + (size_t)t0 * qstride + (size_t)h * E;
      const float *kb = k + (size_t)jlo * kvstride + (size_t)g * E;
      const float *vb = v + (size_t)jlo * kvstride + (size_t)g * E;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, ns, E, scale, qb, (int)qstride, kb, (int)kvstride,
                  0.0f, P, ns);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, ns, E, 1.0f, dob, (int)qstride, vb, (int)kvstride,
                  0.0f, dP, ns);
#pragma omp parallel for num_threads(g_threads) if ((size_t)nb * ns >= PAR_MIN_WORK) schedule(static)
      for (int r = 0; r < nb; r++) {
        int p = t0 + r;
        int a = ((window > 0 && p - window + 1 > 0) ? p - window + 1 : 0) - jlo;
        int b = p - jlo + 1; /* row r sees columns [a, b) */
        float *row = P + (size_t)r * ns, *drow = dP + (size_t)r * ns;
        float mx = -INFINITY;
        for (int j = a; j < b; j++)
          if (row[j] > mx) mx = row[j];
        double sum = 0.0;
        for (int j = a; j < b; j++) {
          float e = expf(row[j] - mx);
          row[j] = e;
          sum += e;
        }
        float inv = (float)(1.0 / sum);
        double doo = 0.0;
        for (int e = 0; e < E; e++) doo += (double)dob[(size_t)r * qstride + e] * (double)ob[(size_t)r * qstride + e];
        float dof = (float)doo;
        for (int j = 0; j < a; j++) row[j] = drow[j] = 0.0f;
        for (int j = a; j < b; j++) {
          float pj = row[j] * inv;
          row[j] = pj;
          drow[j] = pj * (drow[j] - dof) * scale;
        }
        for (int j = b; j < ns; j++) row[j] = drow[j] = 0.0f;
      }
      float *dqb = dq + (size_t)t0 * qstride + (size_t)h * E;
      float *dkb = dk + (size_t)jlo * kvstride + (size_t)g * E;
      float *dvb = dv + (size_t)jlo * kvstride + (size_t)g * E;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ns, E, nb, 1.0f, P, ns, dob, (int)qstride, 1.0f, dvb,
                  (int)kvstride);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, E, ns, 1.0f, dP, ns, kb, (int)kvstride, 1.0f, dqb,
                  (int)qstride);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ns, E, nb, 1.0f, dP, ns, qb, (int)qstride, 1.0f, dkb,
                  (int)kvstride);
    }
  }
  free(P);
  free(dP);
  return 0;
}

enum act_kind { ACT_SILU, ACT_GELU_TANH };

/* out[n] = act(gate[n]) * up[n]; out may be gate or up. */
static void gated_act_forward(float *out, const float *gate, const float *up, size_t n, enum act_kind act) {
  if (act == ACT_SILU) {
#pragma omp parallel for num_threads(g_threads) if (n >= PAR_MIN_WORK) schedule(static)
    for (size_t i = 0; i < n; i++) {
      float g = gate[i];
      out[i] = g / (1.0f + expf(-g)) * up[i];
    }
  } else {
    /* PyTorch's gelu(approximate='tanh') = 0.5·x·(1 + tanh(u)), u = sqrt(2/pi)·(x + 0.044715·x³),
     * computed through the identity (1 + tanh(u))/2 = 1/(1 + exp(-2u)): one expf instead of a tanhf,
     * which is about 4x slower in glibc, and no cancellation in 1 + tanh(u) for negative x */
    const float kBeta = 0.7978845608028654f; /* sqrt(2/pi) */
    const float kKappa = 0.044715f;
#pragma omp parallel for num_threads(g_threads) if (n >= PAR_MIN_WORK) schedule(static)
    for (size_t i = 0; i < n; i++) {
      float g = gate[i];
      float u = kBeta * (g + kKappa * g * g * g);
      out[i] = g / (1.0f + expf(-2.0f * u)) * up[i];
    }
  }
}

/* dgate, dup += the gradient through gated_act_forward at (gate, up): dup += dout·act(g),
 * dgate += dout·up·act'(g). For SiLU, with s = σ(g): act = g·s, act' = s·(1 + g·(1 − s)). For the tanh
 * GELU, with σ = σ(2u) = (1 + tanh u)/2 as in the forward: act = g·σ, act' = σ + 2g·σ(1 − σ)·u'. */
static void gated_act_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                               size_t n, enum act_kind act) {
  if (act == ACT_SILU) {
#pragma omp parallel for num_threads(g_threads) if (n >= PAR_MIN_WORK) schedule(static)
    for (size_t i = 0; i < n; i++) {
      float g = gate[i];
      float s = 1.0f / (1.0f + expf(-g));
      dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
      dup[i] += dout[i] * (g * s);
    }
  } else {
    const float kBeta = 0.7978845608028654f; /* sqrt(2/pi) */
    const float kKappa = 0.044715f;
#pragma omp parallel for num_threads(g_threads) if (n >= PAR_MIN_WORK) schedule(static)
    for (size_t i = 0; i < n; i++) {
      float g = gate[i];
      float u = kBeta * (g + kKappa * g * g * g);
      float du = kBeta * (1.0f + 3.0f * kKappa * g * g);
      float s = 1.0f / (1.0f + expf(-2.0f * u));
      dgate[i] += dout[i] * up[i] * (s + 2.0f * g * s * (1.0f - s) * du);
      dup[i] += dout[i] * (g * s);
    }
  }
}

// ----------------------------------------------------------------------------
// Quantised matmul on ggml's own blocks (weights as stored in a GGUF file)
//
// Two ways to multiply, chosen by the caller:
//  - exact: each weight row is dequantised to fp32 (the same fp32 values ggml's dequantize_row_*
//    gives) and multiplied in fp32, as an fp32 matmul on the dequantised matrix would: for M >= 8 a
//    tile of rows at a time into a scratch buffer and sgemm, below that a row at a time and plain dots.
//  - q8: the activations are rounded to int8 blocks (32 values for the 32-blocks, 256 with sums per 16
//    for the k-quants, like ggml's Q8_0 / Q8_K) and the dot products run on integers, as llama.cpp's
//    vec_dot_*_q8_* do: a weight is read as its 4-8 bits and never expanded to fp32.
//
// Block layouts (ggml-common.h; all fields little-endian, fp16 scales):
//   Q4_0 18 B: d, qs[16]               w = d·(q-8),        q = nibble (low: j, high: j+16)
//   Q4_1 20 B: d, m, qs[16]            w = d·q + m
//   Q5_0 22 B: d, qh[4], qs[16]        w = d·(q-16),       bit 4 of value j in bit j of qh
//   Q5_1 24 B: d, m, qh[4], qs[16]     w = d·q + m
//   Q8_0 34 B: d, qs[32] (int8)        w = d·q
//   Q4_K 144 B per 256: d, dmin, scales[12] (eight 6-bit scale/min pairs), qs[128]
//   Q5_K 176 B per 256: d, dmin, scales[12], qh[32], qs[128]
//   Q6_K 210 B per 256: ql[128], qh[64], scales[16] (int8), d
// The integer kernels take the quants as stored (4-6-bit unsigned values, or int8) and apply each
// group's affine map w = a·q + b afterwards: Σw·x = dx·(a·Σq·xq + b·Σxq), with the activation sums
// Σxq computed once per row, so the only rounding is that of x and of the per-group fp32 scaling.

#define QK 32
#define QK_K 256

/* Every kernel here has a portable scalar version, the reference, and an AVX2 one where it matters,
 * each its own function so that either can be picked at run time; the plain-named function picks at
 * compile time for now. In an AVX2 build the scalar versions are compiled but unused. */
#define SCALAR_REFERENCE __attribute__((unused))

enum qtype { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

typedef struct {
  int block;      /* values per block */
  size_t bytes;   /* bytes per block */
} qtraits;

static bool qtype_traits(int type, qtraits *t) {
  *t = (qtraits){0, 0};
  switch (type) {
    case Q4_0: *t = (qtraits){QK, 18}; return true;
    case Q4_1: *t = (qtraits){QK, 20}; return true;
    case Q5_0: *t = (qtraits){QK, 22}; return true;
    case Q5_1: *t = (qtraits){QK, 24}; return true;
    case Q8_0: *t = (qtraits){QK, 34}; return true;
    case Q4_K: *t = (qtraits){QK_K, 144}; return true;
    case Q5_K: *t = (qtraits){QK_K, 176}; return true;
    case Q6_K: *t = (qtraits){QK_K, 210}; return true;
    default: return false;
  }
}

static inline float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: renormalise */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

static inline float half_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return f16_to_f32(h);
}

static inline uint32_t u32_at(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* The eight 6-bit (scale, min) pairs of Q4_K/Q5_K, packed in 12 bytes. */
static inline void k_scale_min(const uint8_t *p, uint8_t *sc, uint8_t *mn) {
  for (int j = 0; j < 4; j++) {
    sc[j] = p[j] & 63;
    mn[j] = p[j + 4] & 63;
  }
  for (int j = 4; j < 8; j++) {
    sc[j] = (p[j + 4] & 0xf) | ((p[j - 4] >> 6) << 4);
    mn[j] = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
  }
}

/* ---- dequantisation: one row of K values, bit-identical to ggml's dequantize_row_* ---- */

SCALAR_REFERENCE static void dequant_row_scalar(int type, const uint8_t *src, float *y, int K) {
  qtraits t;
  qtype_traits(type, &t);
  int nb = K / t.block;
  for (int b = 0; b < nb; b++, src += t.bytes, y += t.block) {
    switch (type) {
      case Q4_0: {
        float d = half_at(src);
        for (int j = 0; j < 16; j++) {
          y[j] = d * (float)((src[2 + j] & 0xf) - 8);
          y[j + 16] = d * (float)((src[2 + j] >> 4) - 8);
        }
        break;
      }
      case Q4_1: {
        float d = half_at(src), m = half_at(src + 2);
        for (int j = 0; j < 16; j++) {
          y[j] = d * (float)(src[4 + j] & 0xf) + m;
          y[j + 16] = d * (float)(src[4 + j] >> 4) + m;
        }
        break;
      }
      case Q5_0: {
        float d = half_at(src);
        uint32_t qh = u32_at(src + 2);
        for (int j = 0; j < 16; j++) {
          y[j] = d * (float)((int)((src[6 + j] & 0xf) | (((qh >> j) & 1) << 4)) - 16);
          y[j + 16] = d * (float)((int)((src[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
        }
        break;
      }
      case Q5_1: {
        float d = half_at(src), m = half_at(src + 2);
        uint32_t qh = u32_at(src + 4);
        for (int j = 0; j < 16; j++) {
          y[j] = d * (float)((src[8 + j] & 0xf) | (((qh >> j) & 1) << 4)) + m;
          y[j + 16] = d * (float)((src[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) + m;
        }
        break;
      }
      case Q8_0: {
        float d = half_at(src);
        const int8_t *q = (const int8_t *)(src + 2);
        for (int j = 0; j < 32; j++) y[j] = d * (float)q[j];
        break;
      }
      case Q4_K:
      case Q5_K: {
        float d = half_at(src), dmin = half_at(src + 2);
        uint8_t sc[8], mn[8];
        k_scale_min(src + 4, sc, mn);
        const uint8_t *qh = src + 16;
        const uint8_t *qs = src + (type == Q4_K ? 16 : 48);
        for (int c = 0; c < 4; c++) {
          float d1 = d * sc[2 * c], m1 = dmin * mn[2 * c];
          float d2 = d * sc[2 * c + 1], m2 = dmin * mn[2 * c + 1];
          for (int l = 0; l < 32; l++) {
            int lo = qs[c * 32 + l] & 0xf, hi = qs[c * 32 + l] >> 4;
            if (type == Q5_K) {
              lo |= ((qh[l] >> (2 * c)) & 1) << 4;
              hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            y[c * 64 + l] = d1 * (float)lo - m1;
            y[c * 64 + 32 + l] = d2 * (float)hi - m2;
          }
        }
        break;
      }
      case Q6_K: {
        float d = half_at(src + 208);
        const int8_t *sc = (const int8_t *)(src + 192);
        for (int h = 0; h < 2; h++) {
          const uint8_t *ql = src + 64 * h, *qh = src + 128 + 32 * h;
          const int8_t *s = sc + 8 * h;
          float *yh = y + 128 * h;
          for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q0 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
            int q1 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            yh[l] = d * (float)s[is] * (float)q0;
            yh[l + 32] = d * (float)s[is + 2] * (float)q1;
            yh[l + 64] = d * (float)s[is + 4] * (float)q2;
            yh[l + 96] = d * (float)s[is + 6] * (float)q3;
          }
        }
        break;
      }
    }
  }
}

/* ---- activations rounded to int8 ---- */

/* A row of K activations as int8 blocks: q in [-127, 127], scale d[b] = max|x|/127 per block of
 * `block` values, and the integer sums of q per group of `group` values (sum[g]). */
typedef struct {
  int8_t *q;
  float *d;
  int32_t *sum;
} qrow;

static void quantize_row_i8(const float *x, int K, int block, int group, qrow r) {
  for (int b = 0; b < K / block; b++) {
    const float *xb = x + (size_t)b * block;
    float amax = 0.0f;
    for (int i = 0; i < block; i++) amax = fmaxf(amax, fabsf(xb[i]));
    float d = amax / 127.0f;
    float id = d > 0.0f ? 1.0f / d : 0.0f;
    r.d[b] = d;
    for (int i = 0; i < block; i++) r.q[(size_t)b * block + i] = (int8_t)lrintf(xb[i] * id);
  }
  for (int g = 0; g < K / group; g++) {
    int32_t s = 0;
    for (int i = 0; i < group; i++) s += r.q[(size_t)g * group + i];
    r.sum[g] = s;
  }
}

/* ---- integer dot products: one weight row against one int8 activation row ---- */

#if defined(__AVX2__)
/* 32 unsigned bytes (0..127) times 32 signed bytes, as 16 int16 pair sums (no overflow: u <= 63). */
static inline __m256i mul_u8_i8(__m256i u, __m256i x) { return _mm256_maddubs_epi16(u, x); }

static inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

/* The 32 nibbles of 16 bytes in value order: low nibbles first, then high. */
static inline __m256i nibbles16(const uint8_t *p) {
  __m128i v = _mm_loadu_si128((const __m128i *)p);
  __m128i m = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* Bit j of 32 bits as byte j: 0x10 where set, 0 where not (the fifth bit of Q5_0/Q5_1 values). */
static inline __m256i bit4_of(uint32_t bits) {
  const __m256i spread = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202,
                                            0x0303030303030303);
  const __m256i mask = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* Half h (128 values) of a Q6_K block as four runs of 32 unsigned 6-bit values (0..63), in value
   order: low 4 bits from ql, high 2 bits from qh. */
static inline void q6k_unpack_avx2(const uint8_t *blk, int h, __m256i u[4]) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
  const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
  __m256i a = _mm256_loadu_si256((const __m256i *)ql);
  __m256i c = _mm256_loadu_si256((const __m256i *)(ql + 32));
  __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
  u[0] = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2));
  u[1] = _mm256_or_si256(_mm256_and_si256(c, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2));
  u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), _mm256_and_si256(hb, m2));
  u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c, 4), m4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2));
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
/* 32 int8 values to fp32: y = d·q (+ m when `add`). One rounding per value, as in the scalar code:
 * d·q is exact in fp32 for every type (at most 24 significant bits), so d·q + m as an fma rounds the
 * same way as the separate multiply and add. */
static inline void store_scaled32(float *y, __m256i q, __m256 d, __m256 m, bool add) {
  __m128i half[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
  for (int h = 0; h < 2; h++)
    for (int e = 0; e < 2; e++) {
      __m128i part = e == 0 ? half[h] : _mm_srli_si128(half[h], 8);
      __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
      _mm256_storeu_ps(y + 16 * h + 8 * e, add ? _mm256_fmadd_ps(d, f, m) : _mm256_mul_ps(d, f));
    }
}

/* The same values as the scalar dequantiser, eight lanes at a time. */
static void dequant_row_avx2(int type, const uint8_t *src, float *y, int K) {
  qtraits t;
  qtype_traits(type, &t);
  const int nb = K / t.block;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int b = 0; b < nb; b++, src += t.bytes, y += t.block) {
    switch (type) {
      case Q4_0:
        store_scaled32(y, _mm256_sub_epi8(nibbles16(src + 2), _mm256_set1_epi8(8)), _mm256_set1_ps(half_at(src)),
                       zero, false);
        break;
      case Q4_1:
        store_scaled32(y, nibbles16(src + 4), _mm256_set1_ps(half_at(src)), _mm256_set1_ps(half_at(src + 2)), true);
        break;
      case Q5_0:
        store_scaled32(y,
                       _mm256_sub_epi8(_mm256_or_si256(nibbles16(src + 6), bit4_of(u32_at(src + 2))),
                                       _mm256_set1_epi8(16)),
                       _mm256_set1_ps(half_at(src)), zero, false);
        break;
      case Q5_1:
        store_scaled32(y, _mm256_or_si256(nibbles16(src + 8), bit4_of(u32_at(src + 4))),
                       _mm256_set1_ps(half_at(src)), _mm256_set1_ps(half_at(src + 2)), true);
        break;
      case Q8_0:
        store_scaled32(y, _mm256_loadu_si256((const __m256i *)(src + 2)), _mm256_set1_ps(half_at(src)), zero,
                       false);
        break;
      case Q4_K:
      case Q5_K: {
        float d = half_at(src), dmin = half_at(src + 2);
        uint8_t sc[8], mn[8];
        k_scale_min(src + 4, sc, mn);
        const uint8_t *qs = src + (type == Q4_K ? 16 : 48);
        __m256i hbits = type == Q5_K ? _mm256_loadu_si256((const __m256i *)(src + 16)) : _mm256_setzero_si256();
        const __m256i one = _mm256_set1_epi8(1);
        for (int c = 0; c < 4; c++) {
          __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
          __m256i lo = _mm256_and_si256(v, m4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
          if (type == Q5_K) {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c), one), 4));
            hi = _mm256_or_si256(hi,
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c + 1), one), 4));
          }
          store_scaled32(y + 64 * c, lo, _mm256_set1_ps(d * sc[2 * c]), _mm256_set1_ps(-(dmin * mn[2 * c])), true);
          store_scaled32(y + 64 * c + 32, hi, _mm256_set1_ps(d * sc[2 * c + 1]),
                         _mm256_set1_ps(-(dmin * mn[2 * c + 1])), true);
        }
        break;
      }
      case Q6_K: {
        float d = half_at(src + 208);
        const int8_t *sc = (const int8_t *)(src + 192);
        const __m256i off = _mm256_set1_epi8(32);
        for (int h = 0; h < 2; h++) {
          __m256i u[4];
          q6k_unpack_avx2(src, h, u);
          for (int k = 0; k < 4; k++) {
            const int8_t *s = sc + 8 * h + 2 * k;
            /* values 0-15 of the run use scale s[0], values 16-31 s[1] */
            __m256 dlo = _mm256_set1_ps(d * (float)s[0]), dhi = _mm256_set1_ps(d * (float)s[1]);
            __m256i q = _mm256_sub_epi8(u[k], off);
            float *yk = y + 128 * h + 32 * k;
            __m128i q16[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
            for (int g = 0; g < 2; g++)
              for (int e = 0; e < 2; e++) {
                __m128i part = e == 0 ? q16[g] : _mm_srli_si128(q16[g], 8);
                __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                _mm256_storeu_ps(yk + 16 * g + 8 * e, _mm256_mul_ps(g == 0 ? dlo : dhi, f));
              }
          }
        }
        break;
      }
    }
  }
}
#endif

static void dequant_row(int type, const uint8_t *src, float *y, int K) {
#if defined(__AVX2__) && defined(__FMA__)
  dequant_row_avx2(type, src, y, K);
#else
  dequant_row_scalar(type, src, y, K);
#endif
}

/* Σu·x over the 32 values of a 32-block, u the unsigned quants (offset not applied). */
static inline int32_t dot_block32(int type, const uint8_t *blk, const int8_t *x) {
  int32_t s = 0;
  switch (type) {
    case Q4_0:
    case Q4_1: {
      const uint8_t *qs = blk + (type == Q4_0 ? 2 : 4);
      for (int j = 0; j < 16; j++) s += (qs[j] & 0xf) * x[j] + (qs[j] >> 4) * x[j + 16];
      break;
    }
    case Q5_0:
    case Q5_1: {
      uint32_t qh = u32_at(blk + (type == Q5_0 ? 2 : 4));
      const uint8_t *qs = blk + (type == Q5_0 ? 6 : 8);
      for (int j = 0; j < 16; j++)
        s += (int)((qs[j] & 0xf) | (((qh >> j) & 1) << 4)) * x[j] +
             (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * x[j + 16];
      break;
    }
    default: {
      const int8_t *q = (const int8_t *)(blk + 2);
      for (int j = 0; j < 32; j++) s += q[j] * x[j];
    }
  }
  return s;
}

#if defined(__AVX2__) && defined(__FMA__)
/* Activation rows taken per pass over a weight row: each weight block is unpacked once for all of
 * them, and their accumulators stay in registers. Every row's arithmetic is the same whatever its
 * neighbours, so batched decoding gives the same numbers as decoding one sequence at a time. */
#define DOT_ROWS 4

static inline float hsum_ps(__m256 v) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
  return _mm_cvtss_f32(s4);
}

/* One weight row of 32-blocks of a fixed type against R (1, 2 or DOT_ROWS) int8 activation rows:
 * out[r·stride] = Σw·x + bias. Per row, the block's int32 products are scaled and summed in fp32
 * vectors, one horizontal sum at the end. Inlined once per type and R so the tests fold away. */
static inline __attribute__((always_inline)) void dot_rows32_avx2(const int type, const uint8_t *w, size_t bbytes,
                                                                 int nb, const qrow *x, const int R, float *out,
                                                                 size_t stride, float bias) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[DOT_ROWS];
  float mins[DOT_ROWS]; /* Q4_1/Q5_1: Σ m·dx·Σxq */
  for (int r = 0; r < R; r++) {
    acc[r] = _mm256_setzero_ps();
    mins[r] = 0.0f;
  }
  for (int b = 0; b < nb; b++, w += bbytes) {
    const float dw = half_at(w);
    if (type == Q4_1 || type == Q5_1) {
      const __m256i u = type == Q4_1 ? nibbles16(w + 4) : _mm256_or_si256(nibbles16(w + 8), bit4_of(u32_at(w + 4)));
      const float m = half_at(w + 2);
      for (int r = 0; r < R; r++) {
        __m256i p = mul_u8_i8(u, _mm256_loadu_si256((const __m256i *)(x[r].q + (size_t)b * QK)));
        mins[r] += m * x[r].d[b] * (float)x[r].sum[b];
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x[r].d[b]), _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)),
                                 acc[r]);
      }
    } else {
      /* signed weights (q-8, q-16, int8): maddubs needs an unsigned operand, so |w| and x with w's sign */
      const __m256i q = type == Q4_0   ? _mm256_sub_epi8(nibbles16(w + 2), _mm256_set1_epi8(8))
                        : type == Q5_0 ? _mm256_sub_epi8(_mm256_or_si256(nibbles16(w + 6), bit4_of(u32_at(w + 2))),
                                                         _mm256_set1_epi8(16))
                                       : _mm256_loadu_si256((const __m256i *)(w + 2));
      const __m256i uq = _mm256_sign_epi8(q, q);
      for (int r = 0; r < R; r++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x[r].q + (size_t)b * QK));
        __m256i p = _mm256_maddubs_epi16(uq, _mm256_sign_epi8(xv, q));
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x[r].d[b]), _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)),
                                 acc[r]);
      }
    }
  }
  for (int r = 0; r < R; r++) out[(size_t)r * stride] = hsum_ps(acc[r]) + mins[r] + bias;
}
#endif

SCALAR_REFERENCE static float dot_row32_scalar(int type, const uint8_t *w, size_t bbytes, int nb,
                                               const qrow *x) {
  float acc = 0.0f;
  for (int b = 0; b < nb; b++, w += bbytes) {
    const int8_t *xq = x->q + (size_t)b * QK;
    int32_t s = dot_block32(type, w, xq);
    float d = half_at(w) * x->d[b];
    switch (type) {
      case Q4_0: acc += d * (float)(s - 8 * x->sum[b]); break;
      case Q5_0: acc += d * (float)(s - 16 * x->sum[b]); break;
      case Q4_1:
      case Q5_1: acc += d * (float)s + half_at(w + 2) * x->d[b] * (float)x->sum[b]; break;
      default: acc += d * (float)s;
    }
  }
  return acc;
}

/* Q4_K / Q5_K block: Σ_j sc_j·Σu·x over the eight 32-value sub-blocks, as an int32. */
static inline int32_t dot_q45k_block_scalar(int type, const uint8_t *blk, const uint8_t *sc, const int8_t *x) {
  const uint8_t *qh = blk + 16;
  const uint8_t *qs = blk + (type == Q4_K ? 16 : 48);
  int32_t total = 0;
  for (int c = 0; c < 4; c++) {
    int32_t slo = 0, shi = 0;
    for (int l = 0; l < 32; l++) {
      int lo = qs[c * 32 + l] & 0xf, hi = qs[c * 32 + l] >> 4;
      if (type == Q5_K) {
        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
      }
      slo += lo * x[c * 64 + l];
      shi += hi * x[c * 64 + 32 + l];
    }
    total += sc[2 * c] * slo + sc[2 * c + 1] * shi;
  }
  return total;
}

/* Q6_K block: Σ_g sc_g·Σu·x over the sixteen 16-value groups (u = q + 32), as an int32. */
static inline int32_t dot_q6k_block_scalar(const uint8_t *blk, const int8_t *x) {
  const int8_t *sc = (const int8_t *)(blk + 192);
  int32_t total = 0;
  for (int h = 0; h < 2; h++) {
    const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
    const int8_t *xh = x + 128 * h;
    int32_t s[8] = {0};
    for (int l = 0; l < 32; l++) {
      int is = l / 16;
      s[is] += ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) * xh[l];
      s[is + 2] += ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) * xh[l + 32];
      s[is + 4] += ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) * xh[l + 64];
      s[is + 6] += ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) * xh[l + 96];
    }
    for (int g = 0; g < 8; g++) total += sc[8 * h + g] * s[g];
  }
  return total;
}

/* Σw·x for a row of k-quant blocks against activations quantised per 256 (sums per 16). */
SCALAR_REFERENCE static float dot_row_k_scalar(int type, const uint8_t *w, size_t bbytes, int nb, const qrow *x) {
  float acc = 0.0f;
  for (int b = 0; b < nb; b++, w += bbytes) {
    const int8_t *xq = x->q + (size_t)b * QK_K;
    const int32_t *bs = x->sum + (size_t)b * (QK_K / 16);
    if (type == Q6_K) {
      const int8_t *sc = (const int8_t *)(w + 192);
      int32_t off = 0;
      for (int g = 0; g < 16; g++) off += sc[g] * bs[g];
      acc += half_at(w + 208) * x->d[b] * (float)(dot_q6k_block_scalar(w, xq) - 32 * off);
    } else {
      uint8_t sc[8], mn[8];
      k_scale_min(w + 4, sc, mn);
      int32_t msum = 0;
      for (int j = 0; j < 8; j++) msum += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
      acc += x->d[b] * (half_at(w) * (float)dot_q45k_block_scalar(type, w, sc, xq) - half_at(w + 2) * (float)msum);
    }
  }
  return acc;
}

#if defined(__AVX2__) && defined(__FMA__)
/* One weight row of k-quant blocks against R (1, 2 or DOT_ROWS) activation rows, the same arithmetic as
 * dot_row_k_scalar: each block's 256 quants and its sub-block scales are unpacked once, then every
 * row takes its integer dot (maddubs, then madd with the scale) and one fp32 scaling per block. */
static inline __attribute__((always_inline)) void dot_rows_k_avx2(const int type, const uint8_t *w, size_t bbytes,
                                                                 int nb, const qrow *x, const int R, float *out,
                                                                 size_t stride, float bias) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  float acc[DOT_ROWS];
  for (int r = 0; r < R; r++) acc[r] = 0.0f;
  for (int b = 0; b < nb; b++, w += bbytes) {
    __m256i iacc[DOT_ROWS];
    for (int r = 0; r < R; r++) iacc[r] = _mm256_setzero_si256();
    if (type == Q6_K) {
      const int8_t *sc = (const int8_t *)(w + 192);
      for (int h = 0; h < 2; h++) {
        __m256i u[4];
        q6k_unpack_avx2(w, h, u);
        for (int k = 0; k < 4; k++) {
          const int8_t *s = sc + 8 * h + 2 * k; /* values 0-15 of the run use s[0], values 16-31 s[1] */
          const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
          for (int r = 0; r < R; r++) {
            const int8_t *xq = x[r].q + (size_t)b * QK_K + 128 * h + 32 * k;
            __m256i p = mul_u8_i8(u[k], _mm256_loadu_si256((const __m256i *)xq));
            iacc[r] = _mm256_add_epi32(iacc[r], _mm256_madd_epi16(p, scale));
          }
        }
      }
      const float d = half_at(w + 208);
      for (int r = 0; r < R; r++) {
        const int32_t *bs = x[r].sum + (size_t)b * (QK_K / 16);
        int32_t off = 0;
        for (int g = 0; g < 16; g++) off += sc[g] * bs[g];
        acc[r] += d * x[r].d[b] * (float)(hsum_i32(iacc[r]) - 32 * off);
      }
    } else {
      uint8_t sc[8], mn[8];
      k_scale_min(w + 4, sc, mn);
      const uint8_t *qs = w + (type == Q4_K ? 16 : 48);
      const __m256i hbits = type == Q5_K ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
      const __m256i one = _mm256_set1_epi8(1);
      for (int c = 0; c < 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(v, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (type == Q5_K) {
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c + 1), one), 4));
        }
        const __m256i slo = _mm256_set1_epi16(sc[2 * c]), shi = _mm256_set1_epi16(sc[2 * c + 1]);
        for (int r = 0; r < R; r++) {
          const int8_t *xq = x[r].q + (size_t)b * QK_K + 64 * c;
          __m256i plo = mul_u8_i8(lo, _mm256_loadu_si256((const __m256i *)xq));
          __m256i phi = mul_u8_i8(hi, _mm256_loadu_si256((const __m256i *)(xq + 32)));
          iacc[r] = _mm256_add_epi32(iacc[r], _mm256_add_epi32(_mm256_madd_epi16(plo, slo), _mm256_madd_epi16(phi, shi)));
        }
      }
      const float d = half_at(w), dmin = half_at(w + 2);
      for (int r = 0; r < R; r++) {
        const int32_t *bs = x[r].sum + (size_t)b * (QK_K / 16);
        int32_t msum = 0;
        for (int j = 0; j < 8; j++) msum += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
        acc[r] += x[r].d[b] * (d * (float)hsum_i32(iacc[r]) - dmin * (float)msum);
      }
    }
  }
  for (int r = 0; r < R; r++) out[(size_t)r * stride] = acc[r] + bias;
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
/* Rows in groups of DOT_ROWS, then 2, then 1, each kernel specialised for its type and R. */
#define DOT_ROWS_OF(kernel, T)                                                                      \
  do {                                                                                              \
    int m = 0;                                                                                      \
    for (; m + DOT_ROWS <= M; m += DOT_ROWS)                                                        \
      kernel(T, w, bbytes, nb, x + m, DOT_ROWS, out + (size_t)m * stride, stride, bias);           \
    for (; m + 2 <= M; m += 2) kernel(T, w, bbytes, nb, x + m, 2, out + (size_t)m * stride, stride, bias); \
    for (; m < M; m++) kernel(T, w, bbytes, nb, x + m, 1, out + (size_t)m * stride, stride, bias);  \
  } while (0)
#endif

/* One weight row against M int8 activation rows: out[m·stride] = Σw·x + bias. */
static void dot_rows(int type, const uint8_t *w, size_t bbytes, int nb, const qrow *x, int M, float *out,
                     size_t stride, float bias) {
#if defined(__AVX2__) && defined(__FMA__)
  switch (type) {
    case Q4_0: DOT_ROWS_OF(dot_rows32_avx2, Q4_0); break;
    case Q4_1: DOT_ROWS_OF(dot_rows32_avx2, Q4_1); break;
    case Q5_0: DOT_ROWS_OF(dot_rows32_avx2, Q5_0); break;
    case Q5_1: DOT_ROWS_OF(dot_rows32_avx2, Q5_1); break;
    case Q8_0: DOT_ROWS_OF(dot_rows32_avx2, Q8_0); break;
    case Q4_K: DOT_ROWS_OF(dot_rows_k_avx2, Q4_K); break;
    case Q5_K: DOT_ROWS_OF(dot_rows_k_avx2, Q5_K); break;
    default: DOT_ROWS_OF(dot_rows_k_avx2, Q6_K);
  }
#else
  for (int m = 0; m < M; m++)
    out[(size_t)m * stride] = (type == Q4_K || type == Q5_K || type == Q6_K
                                   ? dot_row_k_scalar(type, w, bbytes, nb, &x[m])
                                   : dot_row32_scalar(type, w, bbytes, nb, &x[m])) +
                              bias;
#endif
}

/* out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias), w in ggml blocks, x rounded to int8 blocks. */
static int matmul_quant_q8(float *out, const float *x, const uint8_t *w, int type, const float *bias, int M,
                           int K, int N) {
  qtraits t;
  qtype_traits(type, &t);
  bool kq = t.block == QK_K;
  int group = kq ? 16 : QK;
  int nb = K / t.block;
  int8_t *xq = malloc((size_t)M * K);
  float *xd = malloc((size_t)M * nb * sizeof(float));
  int32_t *xs = malloc((size_t)M * (K / group) * sizeof(int32_t));
  qrow *rows = malloc((size_t)M * sizeof(qrow));
  if (!xq || !xd || !xs || !rows) {
    free(xq);
    free(xd);
    free(xs);
    free(rows);
    return -1;
  }
  for (int m = 0; m < M; m++) {
    rows[m] = (qrow){xq + (size_t)m * K, xd + (size_t)m * nb, xs + (size_t)m * (K / group)};
    quantize_row_i8(x + (size_t)m * K, K, t.block, group, rows[m]);
  }
  size_t row_bytes = (size_t)nb * t.bytes;
  /* one weight row against every activation row: the weights are the big stream, read once */
#pragma omp parallel for num_threads(g_threads) if ((size_t)N * K >= PAR_MIN_WORK) schedule(static)
  for (int n = 0; n < N; n++) {
    const uint8_t *wrow = w + (size_t)n * row_bytes;
    dot_rows(type, wrow, t.bytes, nb, rows, M, out + n, N, bias ? bias[n] : 0.0f);
  }
  free(xq);
  free(xd);
  free(xs);
  free(rows);
  return 0;
}

/* fp32 values per dequantised tile (16 MiB). Each sgemm call packs all of x again, so wide tiles
 * pay off: at 512x4864x896 tiles of 16 MiB took 1.09x the time of an fp32 sgemm, 4 MiB 1.17x. */
#define QUANT_TILE_VALUES (1 << 22)

/* The dequantised tile, kept per thread between calls: a fresh 4+ MiB buffer would be page-faulted in
 * again on every matmul. It only grows, to the largest tile asked for (QUANT_TILE_VALUES floats, or 16
 * rows of the widest matrix). */
static float *tile_scratch(size_t values) {
  static __thread float *buf = NULL;
  static __thread size_t cap = 0;
  if (values > cap) {
    float *grown = realloc(buf, values * sizeof(float));
    if (!grown) return NULL;
    buf = grown;
    cap = values;
  }
  return buf;
}

/* out[M,N] = x[M,K] · dequant(w)[N,K]ᵀ (+ bias) in fp32, through sgemm for every M: a row's result
 * does not depend on how many rows come with it, so a prompt's activations are the same alone or
 * packed with others. */
static int matmul_quant_exact(float *out, const float *x, const uint8_t *w, int type, const float *bias, int M,
                              int K, int N) {
  qtraits t;
  qtype_traits(type, &t);
  size_t row_bytes = (size_t)(K / t.block) * t.bytes;
  int tile = QUANT_TILE_VALUES / K;
  if (tile < 16) tile = 16;
  if (tile > N) tile = N;
  float *scratch = tile_scratch((size_t)tile * K);
  if (!scratch) return -1;
  float beta = 0.0f;
  if (bias) {
    for (int m = 0; m < M; m++) memcpy(out + (size_t)m * N, bias, (size_t)N * sizeof(float));
    beta = 1.0f;
  }
  for (int n0 = 0; n0 < N; n0 += tile) {
    int nt = N - n0 < tile ? N - n0 : tile;
    /* on the calling thread: OpenBLAS's threads still spin after the previous tile's sgemm, and an
     * OpenMP team competing with them for the cores made the whole product up to 2x slower */
    for (int r = 0; r < nt; r++) dequant_row(type, w + (size_t)(n0 + r) * row_bytes, scratch + (size_t)r * K, K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nt, K, 1.0f, x, K, scratch, K, beta, out + n0, N);
  }
  return 0;
}

// ----------------------------------------------------------------------------
// Node-API argument checking

#define ERR_CODE "STEERGUARD_BAD_ARGUMENT"
#define MAX_ARGS 14

/* napi_status failures that are not the caller's fault (out of memory, engine shutting down) */
#define NAPI_OK(call)                                                                                        \
  do {                                                                                                       \
    if ((call) != napi_ok) {                                                                                 \
      const napi_extended_error_info *ei = NULL;                                                             \
      napi_get_last_error_info(env, &ei);                                                                    \
      bool pending = false;                                                                                  \
      napi_is_exception_pending(env, &pending);                                                              \
      if (!pending)                                                                                          \
        napi_throw_error(env, NULL, ei && ei->error_message ? ei->error_message : "Node-API call failed");  \
      return NULL;                                                                                           \
    }                                                                                                        \
  } while (0)

static void throw_type(napi_env env, const char *fn, const char *msg_fmt, const char *name) {
  char msg[256];
  char what[160];
  snprintf(what, sizeof what, msg_fmt, name);
  snprintf(msg, sizeof msg, "%s: %s", fn, what);
  napi_throw_type_error(env, ERR_CODE, msg);
}

static void throw_range(napi_env env, const char *msg) { napi_throw_range_error(env, ERR_CODE, msg); }

typedef struct {
  void *data;
  size_t len; /* elements */
  size_t elem; /* bytes per element */
} view;

/* A typed array of the given kind, or (when optional) undefined/null, which gives data == NULL. */
static bool get_view(napi_env env, napi_value v, napi_typedarray_type want, const char *fn, const char *name,
                     bool optional, view *out) {
  out->data = NULL;
  out->len = 0;
  out->elem = want == napi_uint8_array ? 1 : 4;
  napi_valuetype vt;
  if (napi_typeof(env, v, &vt) != napi_ok) return false;
  if (optional && (vt == napi_undefined || vt == napi_null)) return true;
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  const char *kind = want == napi_float32_array ? "a Float32Array"
                     : want == napi_int32_array   ? "an Int32Array"
                                                  : "a Uint8Array";
  char fmt[96];
  snprintf(fmt, sizeof fmt, "%%s must be %s", kind);
  if (!is_ta) {
    throw_type(env, fn, fmt, name);
    return false;
  }
  napi_typedarray_type t;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &t, &len, &data, NULL, NULL) != napi_ok || t != want) {
    throw_type(env, fn, fmt, name);
    return false;
  }
  out->data = data;
  out->len = len;
  return true;
}

/* A whole number in [lo, INT32_MAX]. */
static bool get_int(napi_env env, napi_value v, const char *fn, const char *name, int64_t lo, int *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    throw_type(env, fn, "%s must be a number", name);
    return false;
  }
  if (!(d == floor(d)) || d < (double)lo || d > 2147483647.0) {
    char msg[200];
    snprintf(msg, sizeof msg, "%s: %s must be an integer in [%lld, 2147483647], got %g", fn, name, (long long)lo,
             d);
    throw_range(env, msg);
    return false;
  }
  *out = (int)d;
  return true;
}

static bool get_finite(napi_env env, napi_value v, const char *fn, const char *name, double *out) {
  if (napi_get_value_double(env, v, out) != napi_ok) {
    throw_type(env, fn, "%s must be a number", name);
    return false;
  }
  if (!isfinite(*out)) {
    char msg[200];
    snprintf(msg, sizeof msg, "%s: %s must be a finite number, got %g", fn, name, *out);
    throw_range(env, msg);
    return false;
  }
  return true;
}

/* len(name) >= need, where need is the product of up to three sizes (computed without overflow). */
static bool check_len(napi_env env, const char *fn, const char *name, const view *a, const char *need_expr,
                      uint64_t x, uint64_t y, uint64_t z) {
  uint64_t need, t;
  bool ovf = __builtin_mul_overflow(x, y, &t) || __builtin_mul_overflow(t, z, &need);
  if (ovf || a->len < need) {
    char msg[256];
    if (ovf)
      snprintf(msg, sizeof msg, "%s: %s = %s overflows", fn, name, need_expr);
    else
      snprintf(msg, sizeof msg, "%s: %s has %zu elements, needs %s = %llu", fn, name, a->len, need_expr,
               (unsigned long long)need);
    throw_range(env, msg);
    return false;
  }
  return true;
}

/* The first na/nb elements of two views overlap in memory. */
static bool overlaps(const view *a, size_t na, const view *b, size_t nb) {
  if (!a->data || !b->data || na == 0 || nb == 0) return false;
  uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + na * a->elem;
  uintptr_t b0 = (uintptr_t)b->data, b1 = b0 + nb * b->elem;
  return a0 < b1 && b0 < a1;
}

static bool check_no_overlap(napi_env env, const char *fn, const char *an, const view *a, size_t na,
                             const char *bn, const view *b, size_t nb, bool allow_same) {
  if (!overlaps(a, na, b, nb)) return true;
  if (allow_same && a->data == b->data) return true;
  char msg[200];
  snprintf(msg, sizeof msg, "%s: %s must not overlap %s%s", fn, an, bn,
           allow_same ? " (it may be the very same array)" : "");
  throw_range(env, msg);
  return false;
}

/* None of the first n_out arrays (a backward kernel's gradient outputs, written in place) overlaps any
 * other of the n arrays; sizes[i] is how many elements of arrays[i] the kernel touches. */
static bool check_disjoint(napi_env env, const char *fn, int n_out, int n, const char *const *names,
                           const view *const *arrays, const size_t *sizes) {
  for (int i = 0; i < n_out; i++)
    for (int j = i + 1; j < n; j++)
      if (!check_no_overlap(env, fn, names[i], arrays[i], sizes[i], names[j], arrays[j], sizes[j], false))
        return false;
  return true;
}

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = MAX_ARGS;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return false;
  /* missing trailing arguments read as undefined, so the checks below report them by name */
  napi_value undef;
  napi_get_undefined(env, &undef);
  for (size_t i = argc; i < want; i++) argv[i] = undef;
  return true;
}

static void throw_oom(napi_env env, const char *fn) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s: out of memory for scratch buffers", fn);
  napi_throw_error(env, NULL, msg);
}

// ----------------------------------------------------------------------------
// Node-API bindings

/* matmul(out, x, w, M, K, N, bias?) */
static napi_value js_matmul(napi_env env, napi_callback_info info) {
  const char *fn = "matmul";
  napi_value a[MAX_ARGS];
  view out, x, w, bias;
  int M, K, N;
  if (!get_args(env, info, 7, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "out", false, &out) ||
      !get_view(env, a[1], napi_float32_array, fn, "x", false, &x) ||
      !get_view(env, a[2], napi_float32_array, fn, "w", false, &w) || !get_int(env, a[3], fn, "M", 0, &M) ||
      !get_int(env, a[4], fn, "K", 1, &K) || !get_int(env, a[5], fn, "N", 1, &N) ||
      !get_view(env, a[6], napi_float32_array, fn, "bias", true, &bias))
    return NULL;
  if (!check_len(env, fn, "out", &out, "M*N", M, N, 1) || !check_len(env, fn, "x", &x, "M*K", M, K, 1) ||
      !check_len(env, fn, "w", &w, "N*K", N, K, 1) ||
      (bias.data && !check_len(env, fn, "bias", &bias, "N", N, 1, 1)))
    return NULL;
  size_t nout = (size_t)M * N;
  if (!check_no_overlap(env, fn, "out", &out, nout, "x", &x, (size_t)M * K, false) ||
      !check_no_overlap(env, fn, "out", &out, nout, "w", &w, (size_t)N * K, false) ||
      !check_no_overlap(env, fn, "out", &out, nout, "bias", &bias, (size_t)N, false))
    return NULL;
  if (M > 0) matmul_forward(out.data, x.data, w.data, bias.data, M, K, N);
  return NULL;
}

/* matmulBackward(dx?, dw?, dout, x, w, M, K, N): dx += dout·w, dw += doutᵀ·x */
static napi_value js_matmul_backward(napi_env env, napi_callback_info info) {
  const char *fn = "matmulBackward";
  napi_value a[MAX_ARGS];
  view dx, dw, dout, x, w;
  int M, K, N;
  if (!get_args(env, info, 8, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "dx", true, &dx) ||
      !get_view(env, a[1], napi_float32_array, fn, "dw", true, &dw) ||
      !get_view(env, a[2], napi_float32_array, fn, "dout", false, &dout) ||
      !get_view(env, a[3], napi_float32_array, fn, "x", false, &x) ||
      !get_view(env, a[4], napi_float32_array, fn, "w", false, &w) || !get_int(env, a[5], fn, "M", 0, &M) ||
      !get_int(env, a[6], fn, "K", 1, &K) || !get_int(env, a[7], fn, "N", 1, &N))
    return NULL;
  if ((dx.data && !check_len(env, fn, "dx", &dx, "M*K", M, K, 1)) ||
      (dw.data && !check_len(env, fn, "dw", &dw, "N*K", N, K, 1)) ||
      !check_len(env, fn, "dout", &dout, "M*N", M, N, 1) || !check_len(env, fn, "x", &x, "M*K", M, K, 1) ||
      !check_len(env, fn, "w", &w, "N*K", N, K, 1))
    return NULL;
  const char *names[] = {"dx", "dw", "dout", "x", "w"};
  const view *arrays[] = {&dx, &dw, &dout, &x, &w};
  size_t sizes[] = {(size_t)M * K, (size_t)N * K, (size_t)M * N, (size_t)M * K, (size_t)N * K};
  if (!check_disjoint(env, fn, 2, 5, names, arrays, sizes)) return NULL;
  if (M > 0) matmul_backward(dx.data, dw.data, dout.data, x.data, w.data, M, K, N);
  return NULL;
}

/* rmsnorm(out, x, weight, M, D, eps) */
static napi_value js_rmsnorm(napi_env env, napi_callback_info info) {
  const char *fn = "rmsnorm";
  napi_value a[MAX_ARGS];
  view out, x, w;
  int M, D;
  double eps;
  if (!get_args(env, info, 6, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "out", false, &out) ||
      !get_view(env, a[1], napi_float32_array, fn, "x", false, &x) ||
      !get_view(env, a[2], napi_float32_array, fn, "weight", false, &w) || !get_int(env, a[3], fn, "M", 0, &M) ||
      !get_int(env, a[4], fn, "D", 1, &D) || !get_finite(env, a[5], fn, "eps", &eps))
    return NULL;
  if (eps < 0) {
    throw_range(env, "rmsnorm: eps must be >= 0");
    return NULL;
  }
  size_t n = (size_t)M * D;
  if (!check_len(env, fn, "out", &out, "M*D", M, D, 1) || !check_len(env, fn, "x", &x, "M*D", M, D, 1) ||
      !check_len(env, fn, "weight", &w, "D", D, 1, 1) ||
      !check_no_overlap(env, fn, "out", &out, n, "x", &x, n, true) ||
      !check_no_overlap(env, fn, "out", &out, n, "weight", &w, (size_t)D, false))
    return NULL;
  if (M > 0) rmsnorm_forward(out.data, x.data, w.data, M, D, (float)eps);
  return NULL;
}

/* rmsnormBackward(dx, dout, x, weight, M, D, eps): dx += the gradient through rmsnorm at x */
static napi_value js_rmsnorm_backward(napi_env env, napi_callback_info info) {
  const char *fn = "rmsnormBackward";
  napi_value a[MAX_ARGS];
  view dx, dout, x, w;
  int M, D;
  double eps;
  if (!get_args(env, info, 7, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "dx", false, &dx) ||
      !get_view(env, a[1], napi_float32_array, fn, "dout", false, &dout) ||
      !get_view(env, a[2], napi_float32_array, fn, "x", false, &x) ||
      !get_view(env, a[3], napi_float32_array, fn, "weight", false, &w) || !get_int(env, a[4], fn, "M", 0, &M) ||
      !get_int(env, a[5], fn, "D", 1, &D) || !get_finite(env, a[6], fn, "eps", &eps))
    return NULL;
  if (eps < 0) {
    throw_range(env, "rmsnormBackward: eps must be >= 0");
    return NULL;
  }
  size_t n = (size_t)M * D;
  if (!check_len(env, fn, "dx", &dx, "M*D", M, D, 1) || !check_len(env, fn, "dout", &dout, "M*D", M, D, 1) ||
      !check_len(env, fn, "x", &x, "M*D", M, D, 1) || !check_len(env, fn, "weight", &w, "D", D, 1, 1))
    return NULL;
  const char *names[] = {"dx", "dout", "x", "weight"};
  const view *arrays[] = {&dx, &dout, &x, &w};
  size_t sizes[] = {n, n, n, (size_t)D};
  if (!check_disjoint(env, fn, 1, 4, names, arrays, sizes)) return NULL;
  if (M > 0) rmsnorm_backward(dx.data, dout.data, x.data, w.data, M, D, (float)eps);
  return NULL;
}

/* rope(x, M, heads, E, rotDim, pos, invFreq, scale), and ropeBackward with the same arguments */
static napi_value rope_binding(napi_env env, napi_callback_info info, const char *fn, bool backward) {
  napi_value a[MAX_ARGS];
  view x, pos, inv;
  int M, heads, E, rotDim;
  double scale;
  if (!get_args(env, info, 8, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "x", false, &x) || !get_int(env, a[1], fn, "M", 0, &M) ||
      !get_int(env, a[2], fn, "heads", 1, &heads) || !get_int(env, a[3], fn, "E", 1, &E) ||
      !get_int(env, a[4], fn, "rotDim", 2, &rotDim) ||
      !get_view(env, a[5], napi_int32_array, fn, "pos", false, &pos) ||
      !get_view(env, a[6], napi_float32_array, fn, "invFreq", false, &inv) ||
      !get_finite(env, a[7], fn, "scale", &scale))
    return NULL;
  if (rotDim % 2 != 0 || rotDim > E) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s: rotDim must be even and <= E = %d, got %d", fn, E, rotDim);
    throw_range(env, msg);
    return NULL;
  }
  if (!check_len(env, fn, "x", &x, "M*heads*E", M, heads, E) || !check_len(env, fn, "pos", &pos, "M", M, 1, 1) ||
      !check_len(env, fn, "invFreq", &inv, "rotDim/2", rotDim / 2, 1, 1) ||
      !check_no_overlap(env, fn, "x", &x, (size_t)M * heads * E, "invFreq", &inv, (size_t)rotDim / 2, false))
    return NULL;
  for (int i = 0; i < rotDim / 2; i++) {
    if (!isfinite(((const float *)inv.data)[i])) {
      char msg[160];
      snprintf(msg, sizeof msg, "%s: invFreq[%d] must be finite, got %g", fn, i, ((const float *)inv.data)[i]);
      throw_range(env, msg);
      return NULL;
    }
  }
  if (M > 0 && (backward ? rope_backward : rope_forward)(x.data, M, heads, E, rotDim, pos.data, inv.data,
                                                        (float)scale) != 0)
    throw_oom(env, fn);
  return NULL;
}

static napi_value js_rope(napi_env env, napi_callback_info info) { return rope_binding(env, info, "rope", false); }

static napi_value js_rope_backward(napi_env env, napi_callback_info info) {
  return rope_binding(env, info, "ropeBackward", true);
}

/* attention(out, q, k, v, T, S, H, G, E, scale, window) */
static napi_value js_attention(napi_env env, napi_callback_info info) {
  const char *fn = "attention";
  napi_value a[MAX_ARGS];
  view out, q, k, v;
  int T, S, H, G, E, window;
  double scale;
  if (!get_args(env, info, 11, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "out", false, &out) ||
      !get_view(env, a[1], napi_float32_array, fn, "q", false, &q) ||
      !get_view(env, a[2], napi_float32_array, fn, "k", false, &k) ||
      !get_view(env, a[3], napi_float32_array, fn, "v", false, &v) || !get_int(env, a[4], fn, "T", 0, &T) ||
      !get_int(env, a[5], fn, "S", 0, &S) || !get_int(env, a[6], fn, "H", 1, &H) ||
      !get_int(env, a[7], fn, "G", 1, &G) || !get_int(env, a[8], fn, "E", 1, &E) ||
      !get_finite(env, a[9], fn, "scale", &scale) || !get_int(env, a[10], fn, "window", 0, &window))
    return NULL;
  char msg[200];
  if (T > S) {
    snprintf(msg, sizeof msg, "attention: T (%d) must be <= S (%d): the queries' own keys are part of k", T, S);
    throw_range(env, msg);
    return NULL;
  }
  if (H % G != 0) {
    snprintf(msg, sizeof msg, "attention: H (%d) must be a multiple of G (%d)", H, G);
    throw_range(env, msg);
    return NULL;
  }
  if ((uint64_t)H * E > INT32_MAX) { /* H*E and G*E are BLAS leading dimensions, C ints */
    throw_range(env, "attention: H*E must be < 2^31");
    return NULL;
  }
  size_t nq = (size_t)T * H * E, nkv = (size_t)S * G * E;
  if (!check_len(env, fn, "out", &out, "T*H*E", T, H, E) || !check_len(env, fn, "q", &q, "T*H*E", T, H, E) ||
      !check_len(env, fn, "k", &k, "S*G*E", S, G, E) || !check_len(env, fn, "v", &v, "S*G*E", S, G, E) ||
      !check_no_overlap(env, fn, "out", &out, nq, "q", &q, nq, false) ||
      !check_no_overlap(env, fn, "out", &out, nq, "k", &k, nkv, false) ||
      !check_no_overlap(env, fn, "out", &out, nq, "v", &v, nkv, false))
    return NULL;
  if (T > 0 && attention_forward(out.data, q.data, k.data, v.data, T, S, H, G, E, (float)scale, window) != 0)
    throw_oom(env, fn);
  return NULL;
}

/* attentionBackward(dq, dk, dv, dout, q, k, v, out, T, H, G, E, scale, window): one training sequence,
 * T queries over their own T keys; dq, dk, dv += the gradient through attention */
static napi_value js_attention_backward(napi_env env, napi_callback_info info) {
  const char *fn = "attentionBackward";
  napi_value a[MAX_ARGS];
  view dq, dk, dv, dout, q, k, v, out;
  int T, H, G, E, window;
  double scale;
  if (!get_args(env, info, 14, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "dq", false, &dq) ||
      !get_view(env, a[1], napi_float32_array, fn, "dk", false, &dk) ||
      !get_view(env, a[2], napi_float32_array, fn, "dv", false, &dv) ||
      !get_view(env, a[3], napi_float32_array, fn, "dout", false, &dout) ||
      !get_view(env, a[4], napi_float32_array, fn, "q", false, &q) ||
      !get_view(env, a[5], napi_float32_array, fn, "k", false, &k) ||
      !get_view(env, a[6], napi_float32_array, fn, "v", false, &v) ||
      !get_view(env, a[7], napi_float32_array, fn, "out", false, &out) || !get_int(env, a[8], fn, "T", 0, &T) ||
      !get_int(env, a[9], fn, "H", 1, &H) || !get_int(env, a[10], fn, "G", 1, &G) ||
      !get_int(env, a[11], fn, "E", 1, &E) || !get_finite(env, a[12], fn, "scale", &scale) ||
      !get_int(env, a[13], fn, "window", 0, &window))
    return NULL;
  char msg[200];
  if (H % G != 0) {
    snprintf(msg, sizeof msg, "%s: H (%d) must be a multiple of G (%d)", fn, H, G);
    throw_range(env, msg);
    return NULL;
  }
  if ((uint64_t)H * E > INT32_MAX) {
    snprintf(msg, sizeof msg, "%s: H*E must be < 2^31", fn);
    throw_range(env, msg);
    return NULL;
  }
  size_t nq = (size_t)T * H * E, nkv = (size_t)T * G * E;
  if (!check_len(env, fn, "dq", &dq, "T*H*E", T, H, E) || !check_len(env, fn, "dk", &dk, "T*G*E", T, G, E) ||
      !check_len(env, fn, "dv", &dv, "T*G*E", T, G, E) || !check_len(env, fn, "dout", &dout, "T*H*E", T, H, E) ||
      !check_len(env, fn, "q", &q, "T*H*E", T, H, E) || !check_len(env, fn, "k", &k, "T*G*E", T, G, E) ||
      !check_len(env, fn, "v", &v, "T*G*E", T, G, E) || !check_len(env, fn, "out", &out, "T*H*E", T, H, E))
    return NULL;
  const char *names[] = {"dq", "dk", "dv", "dout", "q", "k", "v", "out"};
  const view *arrays[] = {&dq, &dk, &dv, &dout, &q, &k, &v, &out};
  size_t sizes[] = {nq, nkv, nkv, nq, nq, nkv, nkv, nq};
  if (!check_disjoint(env, fn, 3, 8, names, arrays, sizes)) return NULL;
  if (T > 0 && attention_backward(dq.data, dk.data, dv.data, dout.data, q.data, k.data, v.data, out.data, T, H, G,
                                  E, (float)scale, window) != 0)
    throw_oom(env, fn);
  return NULL;
}

/* act: 'silu' or 'gelu_tanh' */
static bool get_act(napi_env env, napi_value v, const char *fn, enum act_kind *kind) {
  char act[16] = {0};
  size_t alen = 0;
  if (napi_get_value_string_utf8(env, v, act, sizeof act, &alen) != napi_ok) {
    throw_type(env, fn, "%s must be 'silu' or 'gelu_tanh'", "act");
    return false;
  }
  if (strcmp(act, "silu") == 0) {
    *kind = ACT_SILU;
  } else if (strcmp(act, "gelu_tanh") == 0) {
    *kind = ACT_GELU_TANH;
  } else {
    char msg[160];
    snprintf(msg, sizeof msg, "%s: act must be 'silu' or 'gelu_tanh', got '%s'", fn, act);
    throw_range(env, msg);
    return false;
  }
  return true;
}

/* gatedAct(out, gate, up, n, act) */
static napi_value js_gated_act(napi_env env, napi_callback_info info) {
  const char *fn = "gatedAct";
  napi_value a[MAX_ARGS];
  view out, gate, up;
  int n;
  if (!get_args(env, info, 5, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "out", false, &out) ||
      !get_view(env, a[1], napi_float32_array, fn, "gate", false, &gate) ||
      !get_view(env, a[2], napi_float32_array, fn, "up", false, &up) || !get_int(env, a[3], fn, "n", 0, &n))
    return NULL;
  enum act_kind kind;
  if (!get_act(env, a[4], fn, &kind)) return NULL;
  if (!check_len(env, fn, "out", &out, "n", n, 1, 1) || !check_len(env, fn, "gate", &gate, "n", n, 1, 1) ||
      !check_len(env, fn, "up", &up, "n", n, 1, 1) ||
      !check_no_overlap(env, fn, "out", &out, n, "gate", &gate, n, true) ||
      !check_no_overlap(env, fn, "out", &out, n, "up", &up, n, true))
    return NULL;
  gated_act_forward(out.data, gate.data, up.data, (size_t)n, kind);
  return NULL;
}

/* gatedActBackward(dgate, dup, dout, gate, up, n, act): dgate, dup += the gradient through gatedAct */
static napi_value js_gated_act_backward(napi_env env, napi_callback_info info) {
  const char *fn = "gatedActBackward";
  napi_value a[MAX_ARGS];
  view dgate, dup, dout, gate, up;
  int n;
  enum act_kind kind;
  if (!get_args(env, info, 7, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "dgate", false, &dgate) ||
      !get_view(env, a[1], napi_float32_array, fn, "dup", false, &dup) ||
      !get_view(env, a[2], napi_float32_array, fn, "dout", false, &dout) ||
      !get_view(env, a[3], napi_float32_array, fn, "gate", false, &gate) ||
      !get_view(env, a[4], napi_float32_array, fn, "up", false, &up) || !get_int(env, a[5], fn, "n", 0, &n) ||
      !get_act(env, a[6], fn, &kind))
    return NULL;
  if (!check_len(env, fn, "dgate", &dgate, "n", n, 1, 1) || !check_len(env, fn, "dup", &dup, "n", n, 1, 1) ||
      !check_len(env, fn, "dout", &dout, "n", n, 1, 1) || !check_len(env, fn, "gate", &gate, "n", n, 1, 1) ||
      !check_len(env, fn, "up", &up, "n", n, 1, 1))
    return NULL;
  const char *names[] = {"dgate", "dup", "dout", "gate", "up"};
  const view *arrays[] = {&dgate, &dup, &dout, &gate, &up};
  size_t sizes[] = {(size_t)n, (size_t)n, (size_t)n, (size_t)n, (size_t)n};
  if (!check_disjoint(env, fn, 2, 5, names, arrays, sizes)) return NULL;
  gated_act_backward(dgate.data, dup.data, dout.data, gate.data, up.data, (size_t)n, kind);
  return NULL;
}

/* matmulQuant(out, x, w, type, M, K, N, bias, activations) with w in ggml blocks of `type`, each row K
 * values; activations 'f32' (exact against the dequantised weights) or 'q8' (int8 activations). */
static napi_value js_matmul_quant(napi_env env, napi_callback_info info) {
  const char *fn = "matmulQuant";
  napi_value a[MAX_ARGS];
  view out, x, w, bias;
  int type, M, K, N;
  if (!get_args(env, info, 9, a)) return NULL;
  if (!get_view(env, a[0], napi_float32_array, fn, "out", false, &out) ||
      !get_view(env, a[1], napi_float32_array, fn, "x", false, &x) ||
      !get_view(env, a[2], napi_uint8_array, fn, "w", false, &w) || !get_int(env, a[3], fn, "type", 0, &type) ||
      !get_int(env, a[4], fn, "M", 0, &M) || !get_int(env, a[5], fn, "K", 1, &K) ||
      !get_int(env, a[6], fn, "N", 1, &N) || !get_view(env, a[7], napi_float32_array, fn, "bias", true, &bias))
    return NULL;
  qtraits t;
  if (!qtype_traits(type, &t)) {
    char msg[200];
    snprintf(msg, sizeof msg,
             "%s: type %d is not a supported block type (Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q8_0=8, Q4_K=12, "
             "Q5_K=13, Q6_K=14)",
             fn, type);
    throw_range(env, msg);
    return NULL;
  }
  char act[8] = {0};
  size_t alen = 0;
  if (napi_get_value_string_utf8(env, a[8], act, sizeof act, &alen) != napi_ok) {
    throw_type(env, fn, "%s must be 'f32' or 'q8'", "activations");
    return NULL;
  }
  bool q8 = strcmp(act, "q8") == 0;
  if (!q8 && strcmp(act, "f32") != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s: activations must be 'f32' or 'q8', got '%s'", fn, act);
    throw_range(env, msg);
    return NULL;
  }
  if (K % t.block != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s: K must be a multiple of %d (the block size of type %d), got %d", fn, t.block,
             type, K);
    throw_range(env, msg);
    return NULL;
  }
  if (!check_len(env, fn, "out", &out, "M*N", M, N, 1) || !check_len(env, fn, "x", &x, "M*K", M, K, 1) ||
      !check_len(env, fn, "w", &w, "N*(K/block)*blockBytes", N, K / t.block, t.bytes) ||
      (bias.data && !check_len(env, fn, "bias", &bias, "N", N, 1, 1)))
    return NULL;
  size_t nout = (size_t)M * N;
  if (!check_no_overlap(env, fn, "out", &out, nout, "x", &x, (size_t)M * K, false) ||
      !check_no_overlap(env, fn, "out", &out, nout, "w", &w, (size_t)N * (K / t.block) * t.bytes, false) ||
      !check_no_overlap(env, fn, "out", &out, nout, "bias", &bias, (size_t)N, false))
    return NULL;
  if (M == 0) return NULL;
  int rc = q8 ? matmul_quant_q8(out.data, x.data, w.data, type, bias.data, M, K, N)
              : matmul_quant_exact(out.data, x.data, w.data, type, bias.data, M, K, N);
  if (rc != 0) throw_oom(env, fn);
  return NULL;
}

/* setThreads(n): OpenBLAS and the OpenMP kernels, process-wide */
static napi_value js_set_threads(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS];
  int n;
  if (!get_args(env, info, 1, a)) return NULL;
  if (!get_int(env, a[0], "setThreads", "n", 1, &n)) return NULL;
  if (n > 1024) {
    throw_range(env, "setThreads: n must be <= 1024");
    return NULL;
  }
  g_threads = n;
  openblas_set_num_threads(n);
  omp_set_num_threads(n);
  return NULL;
}

static napi_value make_string(napi_env env, const char *s) {
  napi_value v;
  if (napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v) != napi_ok) return NULL;
  return v;
}

/* info(): { config, threads, simd } */
static napi_value js_info(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value obj, threads;
  NAPI_OK(napi_create_object(env, &obj));
  const char *cfg = openblas_get_config();
  NAPI_OK(napi_set_named_property(env, obj, "config", make_string(env, cfg ? cfg : "unknown")));
  NAPI_OK(napi_create_int32(env, g_threads, &threads));
  NAPI_OK(napi_set_named_property(env, obj, "threads", threads));
  const char *simd =
#if defined(__AVX2__) && defined(__FMA__)
      "avx2+fma"
#elif defined(__AVX__)
      "avx"
#else
      "scalar"
#endif
      ;
  NAPI_OK(napi_set_named_property(env, obj, "simd", make_string(env, simd)));
  return obj;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"matmul", NULL, js_matmul, NULL, NULL, NULL, napi_enumerable, NULL},
      {"rmsnorm", NULL, js_rmsnorm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"rope", NULL, js_rope, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attention", NULL, js_attention, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gatedAct", NULL, js_gated_act, NULL, NULL, NULL, napi_enumerable, NULL},
      {"matmulQuant", NULL, js_matmul_quant, NULL, NULL, NULL, napi_enumerable, NULL},
      {"matmulBackward", NULL, js_matmul_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"rmsnormBackward", NULL, js_rmsnorm_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"ropeBackward", NULL, js_rope_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attentionBackward", NULL, js_attention_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gatedActBackward", NULL, js_gated_act_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setThreads", NULL, js_set_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"info", NULL, js_info, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  /* one thread until told otherwise (loadNativeBackend() always sets the count it wants); only on the
   * first load, since worker threads load the module again into the same process */
  static int initialised = 0;
  if (__atomic_exchange_n(&initialised, 1, __ATOMIC_SEQ_CST) == 0) {
    g_threads = 1;
    openblas_set_num_threads(1);
  }
  return exports;
}
