/**
 * Hook points: named places in the forward pass where activations can be read or changed.
 *
 * Names follow TransformerLens. Each is defined by its maths, identical on every architecture
 * (block index L counts from 0; rows are tokens):
 *
 *   hook_embed                 [M, D]  token embeddings (times sqrt(D) on gemma)
 *   blocks.L.hook_resid_pre    [M, D]  input of block L (blocks.0.hook_resid_pre = hook_embed)
 *   blocks.L.hook_attn_out     [M, D]  what attention adds to the stream (after o_proj and, on
 *                                      gemma3, the post-attention norm)
 *   blocks.L.hook_resid_mid    [M, D]  resid_pre + attn_out
 *   blocks.L.hook_mlp_out      [M, D]  what the MLP adds (gemma3: after the post-MLP norm)
 *   blocks.L.hook_resid_post   [M, D]  resid_mid + mlp_out = output of block L
 *                                      = blocks.{L+1}.hook_resid_pre
 *   hook_final_norm            [M, D]  final RMSNorm of the last resid_post
 *   logits                     [M, V]  unembedding of hook_final_norm (only rows whose logits
 *                                      are computed: the last token of each sequence, unless all
 *                                      are asked for)
 *
 * A hook function sees the activation of all rows of a forward call and may change it in place;
 * edits propagate to everything downstream. Hooks are plain values: pass them to a call, or add
 * them to a model with a handle that removes exactly what it added.
 */

/** Every hook point name. An unknown name is a type error. */
export type HookName =
  | 'hook_embed'
  | `blocks.${number}.hook_resid_pre`
  | `blocks.${number}.hook_attn_out`
  | `blocks.${number}.hook_resid_mid`
  | `blocks.${number}.hook_mlp_out`
  | `blocks.${number}.hook_resid_post`
  | 'hook_final_norm'
  | 'logits';

/** The per-block hook kinds, in the order they fire. */
export const BLOCK_HOOKS = [
  'hook_resid_pre',
  'hook_attn_out',
  'hook_resid_mid',
  'hook_mlp_out',
  'hook_resid_post',
] as const;
export type BlockHookKind = (typeof BLOCK_HOOKS)[number];

/** Name of a per-block hook. */
export function blockHook(layer: number, kind: BlockHookKind): HookName {
  return `blocks.${layer}.${kind}`;
}

/** All hook names of a model with `nLayers` blocks, in firing order. */
export function allHookNames(nLayers: number): HookName[] {
  const names: HookName[] = ['hook_embed'];
  for (let l = 0; l < nLayers; l++) for (const k of BLOCK_HOOKS) names.push(blockHook(l, k));
  names.push('hook_final_norm', 'logits');
  return names;
}

const HOOK_RE =
  /^(?:hook_embed|hook_final_norm|logits|blocks\.(\d+)\.(hook_resid_pre|hook_attn_out|hook_resid_mid|hook_mlp_out|hook_resid_post))$/;

/** Checks a name given at run time (CLI, files); throws naming the problem. */
export function parseHookName(name: string, nLayers: number): HookName {
  const m = HOOK_RE.exec(name);
  if (!m)
    throw new Error(
      `unknown hook ${JSON.stringify(name)} (expected e.g. blocks.3.hook_resid_post, hook_embed, logits)`,
    );
  if (m[1] !== undefined && Number(m[1]) >= nLayers)
    throw new Error(`hook ${name}: the model has ${nLayers} blocks (0..${nLayers - 1})`);
  return name as HookName;
}

/** Block index of a per-block hook, or undefined. */
export function hookLayer(name: HookName): number | undefined {
  const m = /^blocks\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : undefined;
}

/**
 * What a hook function knows about the rows in front of it. Rows are the tokens of one forward
 * call, packed sequence after sequence (no padding).
 */
export interface HookContext {
  readonly name: HookName;
  /** Block index for per-block hooks. */
  readonly layer: number | undefined;
  /** M: number of rows. */
  readonly rows: number;
  /** Width of a row (D, or V for logits). */
  readonly width: number;
  /**
   * [M] which sequence each row belongs to: the index of its prompt in the `run` or `generate`
   * call, the same in every step of a generation (sequences join and leave the batch).
   */
  readonly seq: Int32Array;
  /** [M] absolute position of each row in its sequence. */
  readonly pos: Int32Array;
  /**
   * Number of prompt tokens of each sequence, indexed by `seq`; rows with pos >= it are generated
   * tokens (pos - promptLength is a generated row's index in its reply).
   */
  readonly promptLength: Int32Array;
  /**
   * 0 for a forward pass over prompts, n >= 1 for the n-th decoding step of a `generate` call. With
   * more prompts than `maxBatch` the sequences of one step are at different points of their replies.
   */
  readonly step: number;
}

/** Reads and/or edits `act` ([M, width], row-major) in place. */
export type HookFn = (act: Float32Array, ctx: HookContext) => void;

/** A function attached to one hook point. */
export interface Hook {
  readonly name: HookName;
  readonly fn: HookFn;
}

/**
 * Which rows an intervention touches or a cache keeps.
 * - 'all': every token; 'prompt': prompt tokens only; 'generated': generated tokens only;
 * - 'last': the last prompt token of each sequence (the position that predicts the reply);
 * - number[]: positions in the prompt; negative counts from the end (-1 = last prompt token).
 */
export type Positions = 'all' | 'prompt' | 'generated' | 'last' | readonly number[];

/** True when row `r` of `ctx` is selected by `positions`. */
export function rowSelected(positions: Positions, ctx: HookContext, r: number): boolean {
  const p = ctx.pos[r];
  const n = ctx.promptLength[ctx.seq[r]];
  switch (positions) {
    case 'all':
      return true;
    case 'prompt':
      return p < n;
    case 'generated':
      return p >= n;
    case 'last':
      return p === n - 1;
    default:
      for (const q of positions) if ((q < 0 ? n + q : q) === p) return true;
      return false;
  }
}
