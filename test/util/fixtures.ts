/** Test helpers: where fixtures and real models live, and comparisons with stated tolerances. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensorsHeader, readSafetensorsTensorF32 } from '../../src/formats/safetensors.js';

/** Repository root (works from test/ and dist/test/). */
export const ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
})();

export const FIXTURES = path.join(ROOT, 'test', 'fixtures');
export const MODELS_DIR = process.env.STEERGUARD_MODELS ?? path.join(ROOT, '.cache', 'models');
export const SMOLLM2_GGUF = path.join(MODELS_DIR, 'SmolLM2-135M-Instruct.Q4_1.gguf');
export const GEMMA3_GGUF = path.join(MODELS_DIR, 'gemma-3-270m-q4_k_m.gguf');
export const QWEN05_GGUF = path.join(MODELS_DIR, 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf');

/** Reason to skip a test that needs a real model file, or undefined when it is there. */
export function missingModel(file: string): string | undefined {
  return existsSync(file) ? undefined : `${file} is missing: run \`bash scripts/fetch-models.sh\``;
}

/** All tensors of a safetensors fixture as fp32, by name, with shapes. */
export function readFixture(file: string): Map<string, { shape: number[]; data: Float32Array }> {
  const st = readSafetensorsHeader(file);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, info] of st.tensors)
    out.set(name, { shape: [...info.shape], data: readSafetensorsTensorF32(info) });
  return out;
}

/** max |a - ref| / ||ref||₂: the parity measure used throughout (see docs/ARCHITECTURE.md). */
export function relMaxDiff(a: Float32Array, ref: Float32Array): number {
  if (a.length !== ref.length) throw new Error(`length ${a.length} vs reference ${ref.length}`);
  let max = 0;
  let norm = 0;
  for (let i = 0; i < a.length; i++) {
    max = Math.max(max, Math.abs(a[i] - ref[i]));
    norm += ref[i] * ref[i];
  }
  return max / Math.sqrt(norm);
}

/**
 * max |got - want| / max |want| (a non-finite value in `got` is infinitely wrong): the kernel
 * tests' measure, relative to the largest reference value.
 */
export function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs reference ${want.length}`);
  let diff = 0;
  let mag = 0;
  for (let i = 0; i < want.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    mag = Math.max(mag, Math.abs(want[i]));
  }
  return mag === 0 ? diff : diff / mag;
}

/** Asserts that `fn` throws the native engine's argument error: its kind, message and code. */
export function throwsBadArgument(
  fn: () => void,
  message: RegExp,
  kind: typeof TypeError | typeof RangeError = RangeError,
): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof kind, `expected ${kind.name}, got ${String(e)}`);
    assert.match((e as Error).message, message);
    assert.equal((e as { code?: string }).code, 'STEERGUARD_BAD_ARGUMENT');
    return true;
  });
}

export function argmaxOf(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** The shared folder beside the repository (datasets, tokenizer files), as CI lays it out. */
export const SHARED = process.env.STEERGUARD_SHARED ?? path.join(ROOT, '..', 'shared');
