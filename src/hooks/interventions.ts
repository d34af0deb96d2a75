/**
 * Interventions: hooks that change the residual stream. Each returns a plain `Hook`, so they
 * compose by listing several, and removing one is removing it from the list (or its handle).
 *
 * All act on the selected rows only (see `Positions`) and run in the prompt forward pass and at
 * every generation step alike.
 */
import { type Hook, type HookContext, type HookName, type Positions, rowSelected } from './hooks.js';

function checkWidth(name: HookName, v: Float32Array, ctx: HookContext): void {
  if (v.length !== ctx.width)
    throw new Error(`${name}: vector has ${v.length} values but the activation has width ${ctx.width}`);
}

/** x <- x + scale * vector. */
export function addVector(
  name: HookName,
  vector: Float32Array,
  opts: { scale?: number; positions?: Positions } = {},
): Hook {
  const scale = opts.scale ?? 1;
  const positions = opts.positions ?? 'all';
  return {
    name,
    fn: (act, ctx) => {
      checkWidth(name, vector, ctx);
      const W = ctx.width;
      for (let r = 0; r < ctx.rows; r++) {
        if (!rowSelected(positions, ctx, r)) continue;
        const o = r * W;
        for (let i = 0; i < W; i++) act[o + i] += scale * vector[i];
      }
    },
  };
}

/** x <- x - (x · d̂) d̂: removes the component along `direction` (any length, not zero). */
export function ablateDirection(
  name: HookName,
  direction: Float32Array,
  opts: { positions?: Positions } = {},
): Hook {
  const positions = opts.positions ?? 'all';
  let norm2 = 0;
  for (const v of direction) norm2 += v * v;
  if (!(norm2 > 0) || !Number.isFinite(norm2))
    throw new Error(`${name}: ablation direction must be finite and non-zero`);
  const unit = new Float64Array(direction.length);
  const inv = 1 / Math.sqrt(norm2);
  for (let i = 0; i < unit.length; i++) unit[i] = direction[i] * inv;
  return {
    name,
    fn: (act, ctx) => {
      checkWidth(name, direction, ctx);
      const W = ctx.width;
      for (let r = 0; r < ctx.rows; r++) {
        if (!rowSelected(positions, ctx, r)) continue;
        const o = r * W;
        let dot = 0;
        for (let i = 0; i < W; i++) dot += act[o + i] * unit[i];
        for (let i = 0; i < W; i++) act[o + i] -= dot * unit[i];
      }
    },
  };
}

/** x <- value (the same vector at every selected row). */
export function replaceWith(name: HookName, value: Float32Array, opts: { positions?: Positions } = {}): Hook {
  const positions = opts.positions ?? 'all';
  return {
    name,
    fn: (act, ctx) => {
      checkWidth(name, value, ctx);
      for (let r = 0; r < ctx.rows; r++) if (rowSelected(positions, ctx, r)) act.set(value, r * ctx.width);
    },
  };
}

/** Facts about one row given to `mapRows` functions. */
export interface RowInfo {
  readonly seq: number;
  readonly pos: number;
  readonly generated: boolean;
  readonly step: number;
}

/**
 * x <- f(x) row by row: the general case (SCAV's closed-form move, SAE clamping). `f` gets a view
 * of the row and may edit it in place or return a replacement of the same width.
 */
export function mapRows(
  name: HookName,
  f: (row: Float32Array, info: RowInfo) => Float32Array | void,
  opts: { positions?: Positions } = {},
): Hook {
  const positions = opts.positions ?? 'all';
  return {
    name,
    fn: (act, ctx) => {
      const W = ctx.width;
      for (let r = 0; r < ctx.rows; r++) {
        if (!rowSelected(positions, ctx, r)) continue;
        const row = act.subarray(r * W, (r + 1) * W);
        const seq = ctx.seq[r];
        const out = f(row, {
          seq,
          pos: ctx.pos[r],
          generated: ctx.pos[r] >= ctx.promptLength[seq],
          step: ctx.step,
        });
        if (out) {
          if (out.length !== W)
            throw new Error(`${name}: mapRows returned ${out.length} values for width ${W}`);
          row.set(out);
        }
      }
    },
  };
}
