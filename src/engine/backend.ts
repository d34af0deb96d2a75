/**
 * The compute engine seen by the model code: a handful of kernels over flat fp32 buffers.
 *
 * Dimension letters used throughout the engine and model code:
 *   M  rows (tokens packed from all sequences of a batch)    K  input features
 *   N  output features                                      D  d_model
 *   H  query heads   G  key/value heads   E  head dim       T  query tokens   S  key tokens
 *
 * All matrices are row-major. Weights are stored as [N, K] (out x in), the Hugging Face layout and
 * the memory layout of a GGUF tensor with ne = [K, N].
 *
 * The model's forward pass calls only these kernels, so a GPU backend is another object that
 * implements this interface; the hooks and every method above the model see host Float32Arrays.
 */
export interface Backend {
  /** Human-readable name and build, e.g. "native (OpenBLAS 0.3.21, 2 threads)". */
  readonly name: string;

  /** out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]). `out` must not alias `x`. */
  matmul(
    out: Float32Array,
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
    bias?: Float32Array,
  ): void;

  /** out[M,D] = x / sqrt(mean(x²) + eps) * weight, row by row. `out` may alias `x`. */
  rmsnorm(out: Float32Array, x: Float32Array, weight: Float32Array, M: number, D: number, eps: number): void;

  /**
   * Rotary embedding in place, "rotate half" (NeoX / Hugging Face) convention, on x[M, heads, E]:
   * for each row m, each head, each i < rotDim/2, the pair (i, i + rotDim/2) is rotated by the angle
   * fp32(pos[m] * invFreq[i]), with cos and sin multiplied by `scale`. The model computes invFreq
   * (rotDim/2 values, every rotary scaling folded in) and scale (YaRN's attention factor, else 1).
   */
  rope(
    x: Float32Array,
    M: number,
    heads: number,
    E: number,
    rotDim: number,
    pos: Int32Array,
    invFreq: Float32Array,
    scale: number,
  ): void;

  /**
   * Causal grouped-query attention for one sequence.
   * q[T, H*E]; k, v [S, G*E] hold every key/value of the sequence so far, the last T of which
   * belong to the queries (query t sits at absolute position S - T + t).
   * Query position p sees keys j with j <= p and, when window > 0, j > p - window.
   * out[T, H*E] = softmax(q·kᵀ * scale) · v, head h reading kv head floor(h / (H/G)).
   */
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
  ): void;

  /** out[n] = act(gate[n]) * up[n], act = SiLU ("silu") or tanh-approximated GELU ("gelu_tanh"). */
  gatedAct(
    out: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    n: number,
    act: 'silu' | 'gelu_tanh',
  ): void;

  /**
   * Optional: out[M,N] = x[M,K] · dequant(w)[N,K]ᵀ (+ bias[N]) with the weights kept in one of ggml's
   * block layouts (`type`: a GgmlType id, one of QUANTIZED_MATMUL_TYPES), exactly as a GGUF file
   * stores them: each row of w is K/blockSize blocks, so K must be a multiple of the block size (32,
   * or 256 for the k-quants) and w holds N·K/blockSize·blockBytes bytes (unaligned views are fine).
   * `activations`:
   * - 'f32': exact; the result is that of `matmul` on the dequantised weights, up to the order of
   *   the fp32 sums (weights are dequantised a tile of rows at a time, never the whole matrix).
   * - 'q8': x is rounded to int8 per block (max|x|/127, per 32 values, per 256 for the k-quants) and
   *   the dot products run on integers, like llama.cpp's CPU kernels: at batch-1 decoding the weight
   *   stream is 0.56–1.06 bytes per weight instead of 4, and the result differs from 'f32' by
   *   about 1% of the largest output.
   */
  matmulQuant?(
    out: Float32Array,
    x: Float32Array,
    w: Uint8Array,
    type: number,
    M: number,
    K: number,
    N: number,
    bias: Float32Array | undefined,
    activations: 'f32' | 'q8',
  ): void;

  /**
   * Optional: the backward of each fp32 kernel above, for training (src/training/kernels.ts uses
   * them when present). The native engine has them; the reference backend does not (training's
   * plain TypeScript backward is the reference).
   */
  readonly backward?: BackwardKernels;

  /** Number of threads the kernels use. */
  readonly threads: number;
}

/**
 * The gradients through the kernels of `Backend`, over fp32 buffers. Each ADDS into its gradient
 * outputs (`dx += ...`), which must not overlap any other argument; the forward's inputs are given
 * again (nothing is kept between calls).
 */
export interface BackwardKernels {
  /**
   * dx[M,K] += dout[M,N] · w[N,K] and dw[N,K] += dout[M,N]ᵀ · x[M,K], the gradient through `matmul`;
   * either output may be undefined (not computed).
   */
  matmulBackward(
    dx: Float32Array | undefined,
    dw: Float32Array | undefined,
    dout: Float32Array,
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
  ): void;

  /** dx[M,D] += the gradient through `rmsnorm` at input x (weight frozen). */
  rmsnormBackward(
    dx: Float32Array,
    dout: Float32Array,
    x: Float32Array,
    weight: Float32Array,
    M: number,
    D: number,
    eps: number,
  ): void;

  /** In place, dx ← Rᵀ·dx: the gradient through `rope` with the same arguments. */
  ropeBackward(
    dx: Float32Array,
    M: number,
    heads: number,
    E: number,
    rotDim: number,
    pos: Int32Array,
    invFreq: Float32Array,
    scale: number,
  ): void;

  /**
   * dq, dk, dv += the gradient through `attention` for one sequence with no cache (S = T: q[T, H*E],
   * k, v [T, G*E]), given its inputs and its output `out`.
   */
  attentionBackward(
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    dout: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    T: number,
    H: number,
    G: number,
    E: number,
    scale: number,
    window: number,
  ): void;

  /** dgate, dup += the gradient through `gatedAct` at (gate, up). */
  gatedActBackward(
    dgate: Float32Array,
    dup: Float32Array,
    dout: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    n: number,
    act: 'silu' | 'gelu_tanh',
  ): void;
}
