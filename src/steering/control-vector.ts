/**
 * Control vectors in the llama.cpp / repeng GGUF format, as immutable values.
 *
 * File layout: `general.architecture` = `controlvector`, `controlvector.model_hint` (the model's
 * architecture string, e.g. `llama`), `controlvector.layer_count` (number of direction tensors),
 * and one F32 tensor `direction.{L}` of length d_model per layer, L >= 1.
 *
 * Layer convention, read from llama.cpp: the loader (common_control_vector_load_one) stores
 * `direction.{L}` at offset (L - 1) of its buffer and rejects L = 0; llama_adapter_cvec::apply
 * puts buffer slot (il - 1) into tensors[il]; and every model graph calls cvec.apply_to(cur, il)
 * on the output of 0-based block il, at every token. So `direction.{L}` is added to the output of
 * block L, which is our `blocks.{L}.hook_resid_post` (= `blocks.{L+1}.hook_resid_pre`), and the
 * output of block 0 can never be steered from a file. repeng's ControlModel adds to the output of
 * `model.layers[L]` as well, so the two agree.
 *
 * Block outputs are where the vectors are added; steerguard directions read at a block input
 * (`blocks.{L}.hook_resid_pre`, as the refusal direction is) are stored as `direction.{L-1}`.
 */
import { FormatError, OptionError } from '../formats/errors.js';
import {
  GgmlType,
  type GgufFile,
  type GgufMetadataEntry,
  type GgufValue,
  GgufValueType,
  ggufOptionalString,
  readGguf,
  readGgufTensorF32,
  writeGguf,
} from '../formats/gguf.js';
import { type Hook, type Positions, blockHook } from '../hooks/hooks.js';
import { addVector } from '../hooks/interventions.js';

export const CONTROL_VECTOR_ARCH = 'controlvector';
/** Metadata key of the fingerprint of the model a steerguard direction was computed on. */
export const MODEL_FINGERPRINT_KEY = 'steerguard.model_fingerprint';

/** What a control vector needs to know about the model it is used with. */
export interface ModelShape {
  readonly nLayers: number;
  readonly dModel: number;
  readonly arch?: string;
}

/** Extra metadata kept next to the directions (e.g. `steerguard.*` provenance keys). */
export type ControlVectorMetadata = ReadonlyMap<string, GgufValue>;

export class ControlVector {
  /** Block index L -> direction [D] added to `blocks.{L}.hook_resid_post`. Ascending L. */
  readonly directions: ReadonlyMap<number, Float32Array>;
  /** Architecture of the model it was made for (`controlvector.model_hint`). */
  readonly modelHint: string;
  readonly dModel: number;
  readonly metadata: ControlVectorMetadata;

  /**
   * @param directions block index (>= 1) -> vector; all of one length. The arrays are copied, so
   *   later edits to them do not change this value.
   */
  constructor(
    directions: Iterable<readonly [number, Float32Array]>,
    opts: { modelHint: string; metadata?: ControlVectorMetadata },
  ) {
    const entries = [...directions].sort((a, b) => a[0] - b[0]);
    if (entries.length === 0) throw new OptionError('a control vector needs at least one layer');
    const D = entries[0][1].length;
    const map = new Map<number, Float32Array>();
    for (const [layer, v] of entries) {
      if (!Number.isInteger(layer) || layer < 1)
        throw new OptionError(
          `control vector layer ${layer}: layers start at 1 (llama.cpp never applies direction.0, the output of block 0)`,
        );
      if (map.has(layer)) throw new OptionError(`control vector layer ${layer} given twice`);
      if (v.length !== D || D === 0)
        throw new OptionError(
          `control vector layer ${layer} has ${v.length} values, layer ${entries[0][0]} has ${D}`,
        );
      for (const x of v)
        if (!Number.isFinite(x)) throw new OptionError(`control vector layer ${layer} is not finite`);
      map.set(layer, Float32Array.from(v));
    }
    this.directions = map;
    this.dModel = D;
    this.modelHint = opts.modelHint;
    this.metadata = new Map(opts.metadata ?? []);
  }

  /** A single-layer vector added at the output of block `layer`. */
  static single(
    layer: number,
    vector: Float32Array,
    modelHint: string,
    metadata?: ControlVectorMetadata,
  ): ControlVector {
    return new ControlVector([[layer, vector]], { modelHint, metadata });
  }

  /** Block indices, ascending. */
  get layers(): number[] {
    return [...this.directions.keys()];
  }

  /** The direction added at the output of block `layer`; throws when the vector has none there. */
  direction(layer: number): Float32Array {
    const v = this.directions.get(layer);
    if (!v)
      throw new OptionError(
        `the control vector has no direction for layer ${layer} (it has ${this.layers.join(', ')})`,
      );
    return v;
  }

  private map(f: (layer: number, v: Float32Array) => Float32Array): ControlVector {
    return new ControlVector(
      [...this.directions].map(([l, v]) => [l, f(l, v)] as const),
      { modelHint: this.modelHint, metadata: this.metadata },
    );
  }

  /** coeff · this. */
  scale(coeff: number): ControlVector {
    if (!Number.isFinite(coeff)) throw new OptionError(`control vector scale must be finite, got ${coeff}`);
    return this.map((_, v) => v.map((x) => x * coeff));
  }

  negate(): ControlVector {
    return this.scale(-1);
  }

  /** Layer-wise sum; a layer present in one only is kept as it is. */
  add(other: ControlVector): ControlVector {
    if (other.dModel !== this.dModel)
      throw new OptionError(`cannot add control vectors of width ${this.dModel} and ${other.dModel}`);
    const out = new Map<number, Float32Array>();
    for (const [l, v] of this.directions) out.set(l, Float32Array.from(v));
    for (const [l, v] of other.directions) {
      const cur = out.get(l);
      if (cur) for (let i = 0; i < v.length; i++) cur[i] += v[i];
      else out.set(l, Float32Array.from(v));
    }
    return new ControlVector(out, { modelHint: this.modelHint, metadata: this.metadata });
  }

  /** Only the listed layers. */
  restrict(layers: readonly number[]): ControlVector {
    return new ControlVector(
      layers.map((l) => [l, this.direction(l)] as const),
      { modelHint: this.modelHint, metadata: this.metadata },
    );
  }

  /** Fingerprint of the model the vector was computed on, where it records one (steerguard's do). */
  get modelFingerprint(): string | undefined {
    const v = this.metadata.get(MODEL_FINGERPRINT_KEY);
    return typeof v === 'string' ? v : undefined;
  }

  /** The same directions without the record of the model they were computed on. */
  forgetModel(): ControlVector {
    const metadata = new Map(this.metadata);
    metadata.delete(MODEL_FINGERPRINT_KEY);
    return new ControlVector(this.directions, { modelHint: this.modelHint, metadata });
  }

  /**
   * Throws an OptionError when the vector cannot be used with a model of this shape or, given the
   * model's identity, when the vector records that it was computed on another model (a direction
   * of one model need not mean anything in another of the same width). `file` names it in errors.
   */
  checkModel(
    model: ModelShape,
    opts: { identity?: { readonly name: string; readonly fingerprint: string }; file?: string } = {},
  ): void {
    const what = opts.file ?? 'control vector';
    if (model.dModel !== this.dModel)
      throw new OptionError(`${what} has width ${this.dModel}, the model's d_model is ${model.dModel}`);
    const top = Math.max(...this.layers);
    if (top >= model.nLayers)
      throw new OptionError(
        `${what} has a direction for layer ${top}; the model has blocks 0..${model.nLayers - 1}`,
      );
    const fitted = this.modelFingerprint;
    if (opts.identity && fitted !== undefined && fitted !== opts.identity.fingerprint)
      throw new OptionError(
        `${what} was computed on another model (fingerprint ${fitted.slice(0, 12)}), not on ` +
          `${opts.identity.name} (fingerprint ${opts.identity.fingerprint.slice(0, 12)}); to use it here on ` +
          'purpose (e.g. on a re-quantised copy of that model), write a copy without that record: ' +
          `steerguard control-vector convert ${opts.file ?? 'FILE'} --forget-model --out COPY.gguf`,
      );
  }

  /**
   * Hooks adding `coeff` · direction at each layer's block output, as llama.cpp does with
   * `--control-vector-scaled FILE coeff`: all positions (prompt and generated) by default.
   */
  hooks(coeff = 1, opts: { positions?: Positions } = {}): Hook[] {
    return this.layers.map((l) =>
      addVector(blockHook(l, 'hook_resid_post'), this.direction(l), {
        scale: coeff,
        positions: opts.positions ?? 'all',
      }),
    );
  }

  /** Writes the llama.cpp/repeng GGUF file (atomically). */
  save(path: string): void {
    const metadata: GgufMetadataEntry[] = [
      { key: 'general.architecture', type: GgufValueType.STRING, value: CONTROL_VECTOR_ARCH },
      { key: 'controlvector.model_hint', type: GgufValueType.STRING, value: this.modelHint },
      { key: 'controlvector.layer_count', type: GgufValueType.UINT32, value: this.directions.size },
    ];
    const reserved = new Set(metadata.map((e) => e.key));
    for (const [key, value] of this.metadata) if (!reserved.has(key)) metadata.push({ key, value });
    writeGguf(path, {
      metadata,
      tensors: [...this.directions].map(([l, v]) => ({
        name: `direction.${l}`,
        dims: [v.length],
        type: GgmlType.F32,
        data: v,
      })),
    });
  }

  /** Reads a control vector GGUF (ours, repeng's export_gguf, llama.cpp's cvector-generator). */
  static load(path: string): ControlVector {
    return controlVectorFromGguf(readGguf(path));
  }
}

/** Parses an opened GGUF as a control vector; FormatError naming the key or tensor at fault. */
export function controlVectorFromGguf(file: GgufFile): ControlVector {
  const arch = ggufOptionalString(file, 'general.architecture');
  if (arch !== CONTROL_VECTOR_ARCH)
    throw new FormatError(
      file.path,
      'general.architecture',
      arch === undefined
        ? `missing; a control vector has '${CONTROL_VECTOR_ARCH}'`
        : `is '${arch}', not '${CONTROL_VECTOR_ARCH}' (is this a model file rather than a control vector?)`,
    );
  const hint = ggufOptionalString(file, 'controlvector.model_hint') ?? '';
  const directions: [number, Float32Array][] = [];
  let width: number | undefined;
  for (const [name, info] of file.tensors) {
    const m = /^direction\.(\d+)$/.exec(name);
    // llama.cpp ignores other tensors too; keeping them out means a file may carry extras.
    if (!m) continue;
    const layer = Number(m[1]);
    if (layer === 0)
      throw new FormatError(
        file.path,
        name,
        'layer 0 is invalid (llama.cpp rejects it: directions start at 1)',
      );
    if (info.dims.length !== 1)
      throw new FormatError(file.path, name, `must be 1-D, has shape [${info.dims.join(', ')}]`);
    if (width !== undefined && info.dims[0] !== width)
      throw new FormatError(file.path, name, `has ${info.dims[0]} values, other directions have ${width}`);
    width = info.dims[0];
    directions.push([layer, readGgufTensorF32(file, name)]);
  }
  if (directions.length === 0) throw new FormatError(file.path, '', 'no direction.{L} tensors');
  // controlvector.layer_count is not checked: writers disagree on what it counts (tensors, or the
  // model's layers) and llama.cpp never reads it.
  const metadata = new Map<string, GgufValue>();
  for (const [k, v] of file.metadata)
    if (!k.startsWith('general.') && !k.startsWith('controlvector.')) metadata.set(k, v);
  try {
    return new ControlVector(directions, { modelHint: hint, metadata });
  } catch (e) {
    throw new FormatError(file.path, '', (e as Error).message);
  }
}
