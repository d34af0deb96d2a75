/**
 * A harmful-request reading chosen by leave-one-source-out validation (sources.ts), as a plain
 * JSON file that a monitor can load: the method, its layers, per layer the direction and the
 * midpoint and spread that standardise its projection, and the threshold chosen on the
 * development sources. The score of a request is the mean standardised projection of its
 * last-token residual stream (`blocks.L.hook_resid_post`) over the layers; flagged above the
 * threshold.
 *
 *   { "format": "steerguard.reading", "version": "1", "model": { "name", "fingerprint" },
 *     "template": "chat", "method": "probe", "threshold": 0.87,
 *     "directions": [{ "layer": 14, "mid": 1.2, "spread": 3.4, "v": [...d_model numbers] }],
 *     "fittedIds": [...content ids of every development prompt] }
 */
import { readJsonObject, writeFileAtomic } from '../formats/files.js';
import { FormatError, OptionError } from '../formats/errors.js';
import { type HookName, blockHook } from '../hooks/hooks.js';
import type { Model } from '../model/model.js';
import type { PromptMonitor } from '../steering/conditional.js';
import type { TemplateMode } from './activations.js';
import { READING_METHODS, type SourceReading, readingScore } from './sources.js';

export const READING_FORMAT = 'steerguard.reading';
export const READING_FORMAT_VERSION = '1';

/** A reading with what it was fitted on. */
export interface ReadingArtifact {
  readonly reading: SourceReading;
  readonly model: { readonly name: string; readonly fingerprint: string };
  readonly template: TemplateMode;
  /** Content ids of the prompts the reading was fitted and chosen on (for leakage checks). */
  readonly fittedIds: readonly string[];
}

/** Writes `artifact` to `file` atomically. */
export function saveReading(file: string, artifact: ReadingArtifact): void {
  const r = artifact.reading;
  const json = {
    format: READING_FORMAT,
    version: READING_FORMAT_VERSION,
    model: artifact.model,
    template: artifact.template,
    method: r.method,
    threshold: r.threshold,
    directions: r.directions.map((d) => ({
      layer: d.layer,
      mid: d.mid,
      spread: d.spread,
      v: Array.from(d.v),
    })),
    fittedIds: artifact.fittedIds,
  };
  writeFileAtomic(file, `${JSON.stringify(json)}\n`);
}

/**
 * Reads a reading file; with `model`, checks it was fitted on that model (same fingerprint) and
 * that its directions fit the model's width and layers. Throws FormatError naming the file and
 * the field for anything malformed or non-finite.
 */
export function loadReading(file: string, model?: Model): ReadingArtifact {
  const j = readJsonObject(file);
  const bad = (field: string, why: string) => new FormatError(file, field, why);
  if (j.format !== READING_FORMAT) throw bad('format', `must be "${READING_FORMAT}"`);
  if (j.version !== READING_FORMAT_VERSION) throw bad('version', `must be "${READING_FORMAT_VERSION}"`);
  const m = j.model as Record<string, unknown> | undefined;
  if (!m || typeof m.name !== 'string' || typeof m.fingerprint !== 'string')
    throw bad('model', 'must be { name, fingerprint } strings');
  if (j.template !== 'chat' && j.template !== 'raw') throw bad('template', 'must be "chat" or "raw"');
  const method = READING_METHODS.find((x) => x === j.method);
  if (method === undefined) throw bad('method', `must be one of ${READING_METHODS.join(', ')}`);
  if (typeof j.threshold !== 'number' || !Number.isFinite(j.threshold))
    throw bad('threshold', 'must be finite');
  if (!Array.isArray(j.directions) || j.directions.length === 0)
    throw bad('directions', 'must be a non-empty list');
  const directions = j.directions.map((d: unknown, i: number) => {
    const o = d as Record<string, unknown>;
    const at = `directions[${i}]`;
    if (!Number.isInteger(o?.layer) || (o.layer as number) < 0)
      throw bad(`${at}.layer`, 'must be an integer >= 0');
    for (const k of ['mid', 'spread'] as const)
      if (typeof o[k] !== 'number' || !Number.isFinite(o[k])) throw bad(`${at}.${k}`, 'must be finite');
    if ((o.spread as number) <= 0) throw bad(`${at}.spread`, 'must be > 0');
    if (
      !Array.isArray(o.v) ||
      o.v.length === 0 ||
      !o.v.every((x) => typeof x === 'number' && Number.isFinite(x))
    )
      throw bad(`${at}.v`, 'must be a non-empty list of finite numbers');
    return {
      layer: o.layer as number,
      mid: o.mid as number,
      spread: o.spread as number,
      v: Float64Array.from(o.v as number[]),
    };
  });
  const layers = directions.map((d) => d.layer);
  if (new Set(layers).size !== layers.length) throw bad('directions', 'name a layer twice');
  const width = directions[0].v.length;
  if (directions.some((d) => d.v.length !== width)) throw bad('directions', 'have different widths');
  if (!Array.isArray(j.fittedIds) || !j.fittedIds.every((x) => typeof x === 'string'))
    throw bad('fittedIds', 'must be a list of strings');
  const artifact: ReadingArtifact = {
    reading: { method, layers, directions, threshold: j.threshold },
    model: { name: m.name, fingerprint: m.fingerprint },
    template: j.template,
    fittedIds: j.fittedIds as string[],
  };
  if (model) {
    if (model.identity.fingerprint !== m.fingerprint)
      throw new OptionError(
        `${file} was fitted on ${m.name} (fingerprint ${m.fingerprint.slice(0, 12)}), not on ` +
          `${model.identity.name} (fingerprint ${model.identity.fingerprint.slice(0, 12)})`,
      );
    if (width !== model.config.dModel)
      throw bad('directions', `have width ${width}; the model's d_model is ${model.config.dModel}`);
    const L = model.config.nLayers;
    const over = layers.find((l) => l >= L);
    if (over !== undefined) throw bad('directions', `name layer ${over}; the model has blocks 0..${L - 1}`);
  }
  return artifact;
}

/**
 * A prompt monitor of a reading: the mean standardised projection at the reading's layers,
 * flagged above `threshold` (default the reading's own) and clearly benign below `benignBelow`.
 */
export function readingMonitor(
  reading: SourceReading,
  opts: { threshold?: number; benignBelow?: number } = {},
): PromptMonitor {
  const threshold = opts.threshold ?? reading.threshold;
  const hooks: HookName[] = reading.directions.map((d) => blockHook(d.layer, 'hook_resid_post'));
  return {
    hooks,
    threshold,
    benignBelow: opts.benignBelow,
    score: (rows) => readingScore(reading, (k) => rows[k]),
  };
}
