/**
 * SCAV's closed-form embedding move (Xu et al. 2024; METHODS.md §1.4).
 *
 * For a layer whose probe P_m(e) = sigmoid(w·e + b) is accurate enough (test accuracy > p1), an
 * activation e that reads more malicious than p0 is moved the shortest distance that makes it
 * read exactly p0:
 *     eps = (logit(p0) - b - w·e) / ||w||,   e' = e + eps · w / ||w||.
 * With target 'malicious' (a defence) the same move raises P_m to p0 when it is below.
 *
 * The hooks sit on `blocks.L.hook_resid_post`, the activation the probe of layer L was fitted on,
 * and run in block order inside the forward pass, so each later layer sees (and reads) the
 * already moved stream. By default they touch the last prompt token and every generated token.
 *
 * Shapes: D = d_model.
 */
import { OptionError } from '../formats/errors.js';
import { type Hook, type Positions, blockHook } from '../hooks/hooks.js';
import { type RowInfo, mapRows } from '../hooks/interventions.js';
import { type Concept, DEFAULT_P1 } from './concept.js';
import { logit, sigmoid } from './probe.js';

export type ScavTarget = 'safe' | 'malicious';

/** The paper's reference code default for the attack (the paper itself used 1e-4). */
export const DEFAULT_SCAV_P0 = 0.001;

export interface ScavOptions {
  /** 'safe' (attack, default): lower P_m to p0; 'malicious' (defence): raise it to p0. */
  readonly target?: ScavTarget;
  /** Probability the move sets; default 0.001 for 'safe', 0.999 for 'malicious'. */
  readonly p0?: number;
  /** Only layers whose probe accuracy is above p1 are moved (default 0.9). */
  readonly p1?: number;
  /** Rows to move (default 'last+generated': the last prompt token and every generated token). */
  readonly positions?: Positions | 'last+generated';
  /** Restrict to these layers (still subject to p1). */
  readonly layers?: readonly number[];
  /** Called after each move, e.g. to count moves per layer. */
  readonly onMove?: (event: ScavMove) => void;
}

export interface ScavMove {
  readonly layer: number;
  readonly seq: number;
  readonly pos: number;
  readonly generated: boolean;
  /** P_m before and after the move. */
  readonly before: number;
  readonly after: number;
}

function checkP(name: string, p: number): void {
  if (!(p > 0 && p < 1)) throw new OptionError(`${name} must be strictly between 0 and 1, got ${p}`);
}

/** The signed distance eps of the move along w/||w|| that brings P_m(e) to p0 (Float64). */
export function scavEpsilon(e: ArrayLike<number>, w: ArrayLike<number>, b: number, p0: number): number {
  checkP('p0', p0);
  if (e.length !== w.length)
    throw new OptionError(`activation has ${e.length} values, the probe ${w.length}`);
  let z = b;
  let ww = 0;
  for (let j = 0; j < w.length; j++) {
    z += w[j] * e[j];
    ww += w[j] * w[j];
  }
  if (!(ww > 0)) throw new OptionError('the probe weights are all zero: there is no direction to move along');
  return (logit(p0) - z) / Math.sqrt(ww);
}

/** e' = e + eps · w/||w||, for which sigmoid(w·e' + b) = p0 (up to rounding). Float64. */
export function scavStep(e: ArrayLike<number>, w: ArrayLike<number>, b: number, p0: number): Float64Array {
  const eps = scavEpsilon(e, w, b, p0);
  let ww = 0;
  for (let j = 0; j < w.length; j++) ww += w[j] * w[j];
  const k = eps / Math.sqrt(ww);
  const out = new Float64Array(e.length);
  for (let j = 0; j < e.length; j++) out[j] = e[j] + k * w[j];
  return out;
}

/** Layers the hooks would move: probe accuracy above p1, within `layers` when given. */
export function scavLayers(concept: Concept, opts: Pick<ScavOptions, 'p1' | 'layers'> = {}): number[] {
  const p1 = opts.p1 ?? DEFAULT_P1;
  if (!(p1 >= 0 && p1 <= 1)) throw new OptionError(`p1 must be between 0 and 1, got ${p1}`);
  const allowed = opts.layers ? new Set(opts.layers) : undefined;
  if (opts.layers) for (const l of opts.layers) concept.layer(l);
  return concept.layers
    .filter((p) => p.metrics.accuracy > p1 && (!allowed || allowed.has(p.layer)))
    .map((p) => p.layer);
}

/** The SCAV hooks for `concept` (see the file comment); empty when no layer passes p1. */
export function scavHooks(concept: Concept, opts: ScavOptions = {}): Hook[] {
  const target = opts.target ?? 'safe';
  if (target !== 'safe' && target !== 'malicious')
    throw new OptionError(`target must be 'safe' or 'malicious', got ${String(target)}`);
  const p0 = opts.p0 ?? (target === 'safe' ? DEFAULT_SCAV_P0 : 1 - DEFAULT_SCAV_P0);
  checkP('p0', p0);
  const goal = logit(p0);
  const positions = opts.positions ?? 'last+generated';
  const hooks: Hook[] = [];
  for (const layer of scavLayers(concept, opts)) {
    const probe = concept.layer(layer);
    const w = Float64Array.from(probe.w);
    let ww = 0;
    for (const v of w) ww += v * v;
    if (!(ww > 0)) continue;
    const b = probe.b;
    const name = blockHook(layer, 'hook_resid_post');
    const move = (row: Float32Array, info: RowInfo): void => {
      const z = logitOf(row, w, b);
      if (target === 'safe' ? !(z > goal) : !(z < goal)) return;
      // Two passes: the second removes what rounding the moved row to Float32 left over.
      for (let pass = 0; pass < 2; pass++) {
        const k = (goal - logitOf(row, w, b)) / ww;
        for (let j = 0; j < row.length; j++) row[j] += k * w[j];
      }
      opts.onMove?.({
        layer,
        seq: info.seq,
        pos: info.pos,
        generated: info.generated,
        before: sigmoid(z),
        after: sigmoid(logitOf(row, w, b)),
      });
    };
    if (positions === 'last+generated') {
      hooks.push(mapRows(name, move, { positions: 'last' }), mapRows(name, move, { positions: 'generated' }));
    } else {
      hooks.push(mapRows(name, move, { positions }));
    }
  }
  return hooks;
}

function logitOf(row: ArrayLike<number>, w: Float64Array, b: number): number {
  let z = b;
  for (let j = 0; j < w.length; j++) z += w[j] * row[j];
  return z;
}
