/**
 * Leave-one-source-out validation: does a linear reading of "harmful" generalise to a dataset it
 * never saw, or did it learn how one dataset is written?
 *
 * A probe fitted on AdvBench against Alpaca separates the two datasets' styles perfectly and can
 * still score worse than chance on harmful requests from another source held against benign
 * requests on the same topics. In-split accuracy cannot see this; holding out whole sources can.
 *
 *   const v = leaveOneSourceOut(acts, [
 *     { name: 'advbench', label: 1, ids }, { name: 'harmbench', label: 1, ids },
 *     { name: 'alpaca', label: 0, ids }, { name: 'xstest-safe', label: 0, ids },
 *   ]);
 *   v.selection;          // reading, layers and threshold chosen on held-out sources
 *   v.selection.perSource; // the generalization table of that choice
 *
 * Protocol. Rows of `acts` are the prompts of the sources, one source after another. For every
 * source S, each reading (logistic probe, difference of means, PCA direction) is fitted on all
 * rows not in S, and S's rows are scored by that fit: every row gets an out-of-fold score from a
 * reading that never saw its source. A fold's scores are put on one scale by standardising the
 * projection with the fold's own training rows: (v·x − midpoint of the two class means) / pooled
 * within-class standard deviation, so scores from different folds can be pooled.
 *
 * For a source S held out, its row of the table compares S with the other class's out-of-fold
 * rows (a harmful source against every benign row, a benign source against every harmful row):
 * AUROC and the true-positive rate at the threshold where the benign side has `targetFpr` false
 * positives, with 95% intervals. A candidate is a reading with the mean standardised score over
 * its k best layers (ranked by worst-source AUROC); the one chosen has the highest worst-source
 * AUROC (then mean, then fewer layers). Each candidate's threshold is the (1 − targetFpr)
 * quantile of its benign out-of-fold scores.
 *
 * These figures were used to choose, so they are validation figures. A headline figure comes from
 * sources left out of all of this (fit the chosen reading on every source here with
 * {@link fitSourceReading}, then score the untouched sources).
 *
 * Shapes: N rows (all sources), D = d_model, one [N, D] matrix per layer.
 */
import { SteerguardError } from '../formats/errors.js';
import type { LayerActivations } from './activations.js';
import {
  type MatmulF32,
  accuracy,
  auroc,
  differenceOfMeans,
  fitLogistic,
  pcaDirection,
  wilsonInterval,
} from './probe.js';

/** The linear readings compared. */
export type ReadingMethod = 'probe' | 'mean-diff' | 'pca';
export const READING_METHODS: readonly ReadingMethod[] = ['probe', 'mean-diff', 'pca'];

/** One dataset: its name, its class (1 harmful, 0 benign) and the content ids of its rows. */
export interface LabelledSource {
  readonly name: string;
  readonly label: 0 | 1;
  readonly ids: readonly string[];
}

export interface SourceValidationOptions {
  /** Readings to compare (default all three). */
  readonly methods?: readonly ReadingMethod[];
  /** Numbers of best layers averaged into one score (default 1, 2, 3, 5, 8). */
  readonly combine?: readonly number[];
  /** False-positive rate on benign rows that fixes the threshold (default 0.05). */
  readonly targetFpr?: number;
  /** Fewest rows a source may have (default 10). */
  readonly minPerSource?: number;
  /** Logistic regression's inverse regularisation (default 1) and feature standardisation. */
  readonly C?: number;
  readonly standardize?: boolean;
  readonly matmul?: MatmulF32;
  /** Called after each fold with folds done and the total. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** How well a reading separates one held-out source from the other class. */
export interface HeldOutSourceResult {
  readonly source: string;
  readonly label: 0 | 1;
  readonly n: number;
  readonly auroc: number;
  readonly aurocCi: readonly [number, number];
  /** Harmful rows flagged at the threshold that gives `targetFpr` on the benign rows. */
  readonly tpr: number;
  readonly tprCi: readonly [number, number];
  /** Benign rows flagged at that threshold (near targetFpr when the benign side is pooled). */
  readonly fpr: number;
}

/** One reading (method and layers) with its held-out figures. */
export interface ReadingCandidate {
  readonly method: ReadingMethod;
  readonly layers: readonly number[];
  /** Flag when the mean standardised score exceeds this: `targetFpr` of all benign out-of-fold rows do. */
  readonly threshold: number;
  readonly perSource: readonly HeldOutSourceResult[];
  readonly worstAuroc: number;
  readonly meanAuroc: number;
}

/** What {@link leaveOneSourceOut} chose, on which figures, and what it warned about. */
export interface SourceValidation {
  readonly sources: readonly { readonly name: string; readonly label: 0 | 1; readonly n: number }[];
  readonly targetFpr: number;
  /** Every single layer of every method, in layer order (for curves). */
  readonly layerCurves: readonly ReadingCandidate[];
  /** Every candidate tried (single layers and combinations). */
  readonly candidates: readonly ReadingCandidate[];
  /** The candidate chosen. */
  readonly selection: ReadingCandidate;
  /**
   * What a random split pooling every source would have chosen: the layer with the best probe
   * accuracy on a held-out 30% of rows, and that accuracy. Shown to compare, never used.
   */
  readonly inSplit: { readonly layer: number; readonly accuracy: number; readonly heldOutWorstAuroc: number };
  /** Ids found in two sources of the same class, kept in the first only. */
  readonly warnings: readonly string[];
}

/** A reading fitted on every row of the sources, as chosen; scores new rows on the same scale. */
export interface SourceReading {
  readonly method: ReadingMethod;
  readonly layers: readonly number[];
  /** Per layer: the direction, and the midpoint and spread that standardise its projection. */
  readonly directions: readonly {
    readonly layer: number;
    readonly v: Float64Array;
    readonly mid: number;
    readonly spread: number;
  }[];
  readonly threshold: number;
}

type Acts = Pick<LayerActivations, 'layers' | 'n' | 'd' | 'data'>;

/**
 * Checks that `sources` can be validated source by source (2 or more of each class, `minPerSource`
 * prompts each after duplicates, no prompt in both classes) before any activation is computed;
 * returns the warnings leaveOneSourceOut will give.
 */
export function checkSources(sources: readonly LabelledSource[], minPerSource = 10): string[] {
  return assignRows(
    sources.reduce((s, src) => s + src.ids.length, 0),
    sources,
    minPerSource,
  ).warnings;
}

/** Checks the sources against the rows and each other; returns each row's source index (-1: dropped). */
function assignRows(
  rows: number,
  sources: readonly LabelledSource[],
  minPerSource: number,
): {
  rowSource: Int32Array;
  warnings: string[];
} {
  const total = sources.reduce((s, src) => s + src.ids.length, 0);
  if (total !== rows)
    throw new SteerguardError(`the sources have ${total} prompts but the activations have ${rows} rows`);
  const names = new Set<string>();
  for (const s of sources) {
    if (names.has(s.name)) throw new SteerguardError(`source ${s.name} is given twice`);
    names.add(s.name);
  }
  for (const label of [1, 0] as const) {
    const n = sources.filter((s) => s.label === label).length;
    if (n < 2)
      throw new SteerguardError(
        `leave-one-source-out needs at least 2 ${label ? 'harmful' : 'benign'} sources, got ${n}: ` +
          'holding out the only source of a class leaves nothing of that class to fit on',
      );
  }
  const seen = new Map<string, number>();
  const rowSource = new Int32Array(rows);
  const warnings: string[] = [];
  let row = 0;
  sources.forEach((s, k) => {
    let dropped = 0;
    for (const id of s.ids) {
      const first = seen.get(id);
      if (first === undefined) {
        seen.set(id, k);
        rowSource[row++] = k;
        continue;
      }
      if (sources[first].label !== s.label) {
        throw new SteerguardError(
          `sources ${sources[first].name} (${sources[first].label ? 'harmful' : 'benign'}) and ${s.name} ` +
            `(${s.label ? 'harmful' : 'benign'}) share a prompt (id ${id}): one prompt cannot be both`,
        );
      }
      rowSource[row++] = -1;
      dropped++;
    }
    if (dropped > 0)
      warnings.push(
        `${dropped} prompt(s) of ${s.name} are also in ${sources.find((_, j) => j < k)?.name ?? 'an earlier source'}; kept there only`,
      );
  });
  sources.forEach((s, k) => {
    let n = 0;
    for (const r of rowSource) if (r === k) n++;
    if (n < minPerSource)
      throw new SteerguardError(
        `source ${s.name} has ${n} prompt(s) after removing duplicates; leave-one-source-out needs at ` +
          `least ${minPerSource} per source (merge it with another source or leave it out)`,
      );
  });
  return { rowSource, warnings };
}

function gather(m: Float32Array, rows: readonly number[], d: number): Float32Array {
  const out = new Float32Array(rows.length * d);
  rows.forEach((i, k) => out.set(m.subarray(i * d, (i + 1) * d), k * d));
  return out;
}

function dot(m: Float32Array, i: number, d: number, v: Float64Array): number {
  let s = 0;
  const o = i * d;
  for (let j = 0; j < d; j++) s += m[o + j] * v[j];
  return s;
}

/** Direction of `method` on the rows given, with the midpoint and spread of its projections. */
function fitDirection(
  m: Float32Array,
  d: number,
  rows: readonly number[],
  labels: Uint8Array,
  method: ReadingMethod,
  opts: SourceValidationOptions,
): { v: Float64Array; mid: number; spread: number } {
  const x = gather(m, rows, d);
  const y = Uint8Array.from(rows, (i) => labels[i]);
  const v =
    method === 'probe'
      ? fitLogistic(x, y, d, { C: opts.C, standardize: opts.standardize, matmul: opts.matmul }).w
      : method === 'mean-diff'
        ? differenceOfMeans(x, y, d)
        : pcaDirection(x, y, d, { matmul: opts.matmul });
  const sums = [0, 0];
  const counts = [0, 0];
  const proj = rows.map((i) => dot(m, i, d, v));
  proj.forEach((p, k) => {
    sums[y[k]] += p;
    counts[y[k]]++;
  });
  const means = [sums[0] / counts[0], sums[1] / counts[1]];
  let ss = 0;
  proj.forEach((p, k) => (ss += (p - means[y[k]]) ** 2));
  const spread = Math.sqrt(ss / Math.max(1, rows.length - 2));
  if (!(spread > 0 && Number.isFinite(spread)))
    throw new SteerguardError(
      `a ${method} reading has projections that do not vary: the activations are degenerate`,
    );
  return { v, mid: (means[0] + means[1]) / 2, spread };
}

/** The value that `fpr` of `benign` scores exceed (upper quantile, ties resolved upward). */
export function thresholdAtFpr(benign: ArrayLike<number>, fpr: number): number {
  const sorted = Float64Array.from(benign).sort();
  const allowed = Math.floor(fpr * sorted.length);
  return sorted[sorted.length - 1 - allowed];
}

function heldOutRow(
  scores: Float64Array,
  rowSource: Int32Array,
  sources: readonly LabelledSource[],
  k: number,
  targetFpr: number,
): HeldOutSourceResult {
  const s = sources[k];
  const pos: number[] = [];
  const neg: number[] = [];
  for (let i = 0; i < scores.length; i++) {
    const r = rowSource[i];
    if (r < 0) continue;
    const mine = r === k;
    const other = sources[r].label !== s.label;
    if (!(mine || other)) continue;
    (sources[r].label === 1 ? pos : neg).push(scores[i]);
  }
  const all = [...pos, ...neg];
  const labels = [...pos.map(() => 1), ...neg.map(() => 0)];
  const au = auroc(all, labels);
  const thr = thresholdAtFpr(neg, targetFpr);
  const tp = pos.filter((v) => v > thr).length;
  const fp = neg.filter((v) => v > thr).length;
  return {
    source: s.name,
    label: s.label,
    n: s.label === 1 ? pos.length : neg.length,
    auroc: au.auroc,
    aurocCi: au.ci,
    tpr: tp / pos.length,
    tprCi: wilsonInterval(tp, pos.length),
    fpr: fp / neg.length,
  };
}

function candidate(
  method: ReadingMethod,
  layers: readonly number[],
  scores: Float64Array,
  rowSource: Int32Array,
  sources: readonly LabelledSource[],
  targetFpr: number,
): ReadingCandidate {
  const perSource = sources.map((_, k) => heldOutRow(scores, rowSource, sources, k, targetFpr));
  const aucs = perSource.map((r) => r.auroc);
  const benign = scores.filter((_, i) => rowSource[i] >= 0 && sources[rowSource[i]].label === 0);
  return {
    method,
    layers,
    threshold: thresholdAtFpr(benign, targetFpr),
    perSource,
    worstAuroc: Math.min(...aucs),
    meanAuroc: aucs.reduce((a, b) => a + b, 0) / aucs.length,
  };
}

/** The candidate with the best worst-source AUROC, then the best mean, then the fewest layers. */
export function bestCandidate(candidates: readonly ReadingCandidate[]): ReadingCandidate {
  if (candidates.length === 0) throw new SteerguardError('no candidate to choose from');
  return candidates.reduce((a, b) => (better(b, a) ? b : a));
}

function better(a: ReadingCandidate, b: ReadingCandidate): boolean {
  if (a.worstAuroc !== b.worstAuroc) return a.worstAuroc > b.worstAuroc;
  if (a.meanAuroc !== b.meanAuroc) return a.meanAuroc > b.meanAuroc;
  return a.layers.length < b.layers.length;
}

/** Runs the protocol of the file comment; throws on sources it cannot validate honestly. */
export function leaveOneSourceOut(
  acts: Acts,
  sources: readonly LabelledSource[],
  opts: SourceValidationOptions = {},
): SourceValidation {
  const methods = opts.methods ?? READING_METHODS;
  const combine = opts.combine ?? [1, 2, 3, 5, 8];
  const targetFpr = opts.targetFpr ?? 0.05;
  if (!(targetFpr > 0 && targetFpr < 1))
    throw new SteerguardError(`target FPR must be in (0, 1), got ${targetFpr}`);
  for (const m of methods)
    if (!READING_METHODS.includes(m))
      throw new SteerguardError(`unknown reading ${m}: use ${READING_METHODS.join(', ')}`);
  for (const k of combine)
    if (!(Number.isInteger(k) && k >= 1))
      throw new SteerguardError(`layer counts must be positive integers, got ${k}`);
  const { rowSource, warnings } = assignRows(acts.n, sources, opts.minPerSource ?? 10);
  const { d, n } = acts;
  const labels = Uint8Array.from(rowSource, (r) => (r >= 0 ? sources[r].label : 0));

  // oof[method][layer index]: out-of-fold standardised score of every row.
  const oof = new Map<ReadingMethod, Float64Array[]>();
  for (const m of methods)
    oof.set(
      m,
      acts.layers.map(() => new Float64Array(n)),
    );
  sources.forEach((_, k) => {
    const train: number[] = [];
    const held: number[] = [];
    for (let i = 0; i < n; i++) {
      if (rowSource[i] < 0) continue;
      (rowSource[i] === k ? held : train).push(i);
    }
    acts.layers.forEach((_, li) => {
      for (const m of methods) {
        const f = fitDirection(acts.data[li], d, train, labels, m, opts);
        const out = oof.get(m)![li];
        for (const i of held) out[i] = (dot(acts.data[li], i, d, f.v) - f.mid) / f.spread;
      }
    });
    opts.onProgress?.(k + 1, sources.length);
  });

  const layerCurves: ReadingCandidate[] = [];
  const candidates: ReadingCandidate[] = [];
  for (const m of methods) {
    const perLayer = acts.layers.map((layer, li) =>
      candidate(m, [layer], oof.get(m)![li], rowSource, sources, targetFpr),
    );
    layerCurves.push(...perLayer);
    const ranked = perLayer.map((c, li) => ({ c, li })).sort((a, b) => (better(a.c, b.c) ? -1 : 1));
    for (const k of combine) {
      if (k > ranked.length) continue;
      const top = ranked.slice(0, k);
      const mean = new Float64Array(n);
      for (const { li } of top) {
        const s = oof.get(m)![li];
        for (let i = 0; i < n; i++) mean[i] += s[i] / k;
      }
      const layers = top.map((t) => acts.layers[t.li]).sort((a, b) => a - b);
      candidates.push(candidate(m, layers, mean, rowSource, sources, targetFpr));
    }
  }
  const best = bestCandidate(candidates);

  return {
    sources: sources.map((s, k) => ({
      name: s.name,
      label: s.label,
      n: rowSource.filter((r) => r === k).length,
    })),
    targetFpr,
    layerCurves,
    candidates,
    selection: best,
    inSplit: inSplitChoice(acts, rowSource, labels, layerCurves, opts),
    warnings,
  };
}

/** The naive recipe: a seeded 70/30 split over all rows, best probe accuracy on the 30%. */
function inSplitChoice(
  acts: Acts,
  rowSource: Int32Array,
  labels: Uint8Array,
  layerCurves: readonly ReadingCandidate[],
  opts: SourceValidationOptions,
): SourceValidation['inSplit'] {
  const rows = Array.from({ length: acts.n }, (_, i) => i).filter((i) => rowSource[i] >= 0);
  // Deterministic interleave (3 rows in 10 held out), so every source is in both parts.
  const test = rows.filter((_, k) => k % 10 >= 7);
  const train = rows.filter((_, k) => k % 10 < 7);
  let best = { layer: acts.layers[0], accuracy: -1 };
  acts.layers.forEach((layer, li) => {
    const f = fitDirection(acts.data[li], acts.d, train, labels, 'probe', opts);
    const scores = test.map((i) => dot(acts.data[li], i, acts.d, f.v) - f.mid);
    const acc = accuracy(
      scores,
      test.map((i) => labels[i]),
    );
    if (acc > best.accuracy) best = { layer, accuracy: acc };
  });
  const curve = layerCurves.find((c) => c.method === 'probe' && c.layers[0] === best.layer);
  return { ...best, heldOutWorstAuroc: curve ? curve.worstAuroc : NaN };
}

/** Fits a candidate on every row of the sources, for scoring sources never used. */
export function fitSourceReading(
  acts: Acts,
  sources: readonly LabelledSource[],
  chosen: Pick<ReadingCandidate, 'method' | 'layers' | 'threshold'>,
  opts: SourceValidationOptions = {},
): SourceReading {
  const { rowSource } = assignRows(acts.n, sources, opts.minPerSource ?? 10);
  const labels = Uint8Array.from(rowSource, (r) => (r >= 0 ? sources[r].label : 0));
  const rows = Array.from({ length: acts.n }, (_, i) => i).filter((i) => rowSource[i] >= 0);
  const directions = chosen.layers.map((layer) => {
    const li = acts.layers.indexOf(layer);
    if (li < 0) throw new SteerguardError(`the activations have no layer ${layer}`);
    return { layer, ...fitDirection(acts.data[li], acts.d, rows, labels, chosen.method, opts) };
  });
  return { method: chosen.method, layers: [...chosen.layers], directions, threshold: chosen.threshold };
}

/**
 * The standardised score of one request under `reading`: the mean over its directions of
 * (v·x − mid) / spread, where `rowAt(k)` is the request's activation row at direction k's layer.
 */
export function readingScore(reading: SourceReading, rowAt: (k: number) => ArrayLike<number>): number {
  let score = 0;
  reading.directions.forEach((dir, k) => {
    const x = rowAt(k);
    let z = 0;
    for (let j = 0; j < x.length; j++) z += x[j] * dir.v[j];
    const s = (z - dir.mid) / dir.spread;
    if (!Number.isFinite(s)) throw new SteerguardError(`a non-finite score at layer ${dir.layer}`);
    score += s / reading.directions.length;
  });
  return score;
}

/** Mean standardised score of each row of `acts` under `reading` ([N]). */
export function scoreWithReading(acts: Acts, reading: SourceReading): Float64Array {
  const at = reading.directions.map((dir) => {
    const li = acts.layers.indexOf(dir.layer);
    if (li < 0) throw new SteerguardError(`the activations have no layer ${dir.layer}`);
    return acts.data[li];
  });
  const d = acts.d;
  return Float64Array.from({ length: acts.n }, (_, i) => {
    try {
      return readingScore(reading, (k) => at[k].subarray(i * d, (i + 1) * d));
    } catch (e) {
      throw new SteerguardError(`row ${i}: ${(e as Error).message}`);
    }
  });
}
