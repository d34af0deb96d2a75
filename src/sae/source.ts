/**
 * Where SAE training and evaluation read activations from: chunks of rows, never the whole set at
 * once, so data larger than memory streams. A source can start at any row of its pass, which is
 * how a resumed training run continues exactly where it stopped.
 */
import { FormatError, OptionError } from '../formats/errors.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  readSafetensorsTensorI32,
  SAFETENSORS_DTYPE_BYTES,
} from '../formats/safetensors.js';

/** Rows of activations in chunks of [rows, dIn] (each chunk's length a multiple of dIn). */
export interface ActivationSource {
  readonly dIn: number;
  /** Names the data in checkpoints: a resumed run must read the same source. */
  readonly id: string;
  /** One pass over the rows, starting at row `start` of the pass. */
  chunks(start: number): Iterable<Float32Array> | AsyncIterable<Float32Array>;
}

/** Rows held in memory, x[rows, dIn], served in chunks of `chunkRows`. */
export function arraySource(x: Float32Array, dIn: number, id = 'array', chunkRows = 4096): ActivationSource {
  if (x.length % dIn !== 0 || x.length === 0)
    throw new OptionError(`activation source ${id}: ${x.length} values are not whole rows of width ${dIn}`);
  const rows = x.length / dIn;
  return {
    dIn,
    id,
    *chunks(start) {
      for (let r = start; r < rows; r += chunkRows)
        yield x.subarray(r * dIn, Math.min(rows, r + chunkRows) * dIn);
    },
  };
}

/**
 * Any re-startable producer of chunks: `open()` yields the pass from its first row each time; rows
 * before `start` are read and skipped.
 */
export function chunkSource(
  dIn: number,
  id: string,
  open: () => Iterable<Float32Array> | AsyncIterable<Float32Array>,
): ActivationSource {
  return {
    dIn,
    id,
    async *chunks(start) {
      let row = 0;
      for await (const chunk of open()) {
        if (chunk.length % dIn !== 0)
          throw new OptionError(
            `activation source ${id}: a chunk of ${chunk.length} values is not whole rows of width ${dIn}`,
          );
        const n = chunk.length / dIn;
        if (row + n > start) yield chunk.subarray(Math.max(0, start - row) * dIn);
        row += n;
      }
    },
  };
}

/**
 * One hook's rows in an activation file written by `steerguard activations` (src/activations/
 * store.ts): tensor `hookName`, [rows, D] or [N, P, D], F32/F16/BF16, read `chunkRows` rows at a
 * time straight from the file. With `skipFirstToken` on an all-token file (one with `offsets`),
 * each prompt's first row (BOS, an attention sink whose norm dwarfs the others') is left out and
 * row numbers count the rows kept. Throws FormatError naming the file when the tensor is missing
 * or not a matrix of rows.
 */
export function storeSource(
  file: string,
  hookName: string,
  options: { chunkRows?: number; skipFirstToken?: boolean } = {},
): ActivationSource & { rows: number } {
  const chunkRows = options.chunkRows ?? 4096;
  const header = readSafetensorsHeader(file);
  const info = header.tensors.get(hookName);
  if (info === undefined) {
    const hooks = [...header.tensors.keys()].filter((n) => n !== 'offsets').slice(0, 8);
    throw new FormatError(file, hookName, `no such tensor (the file holds ${hooks.join(', ') || 'none'})`);
  }
  if (info.shape.length < 2)
    throw new FormatError(file, hookName, `shape [${info.shape.join(', ')}] is not rows of activations`);
  const dIn = info.shape[info.shape.length - 1];
  const rawRows = info.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  if (dIn < 1 || rawRows < 1) throw new FormatError(file, hookName, 'holds no rows');
  const rowBytes = dIn * SAFETENSORS_DTYPE_BYTES[info.dtype];
  const readRows = (r: number, end: number): Float32Array =>
    // A view of the tensor's rows r..end: the reader converts just those bytes.
    readSafetensorsTensorF32({ ...info, begin: info.begin + r * rowBytes, end: info.begin + end * rowBytes });

  if (!options.skipFirstToken) {
    return {
      dIn,
      rows: rawRows,
      id: `${file}#${hookName}`,
      *chunks(start) {
        for (let r = start; r < rawRows; r += chunkRows) yield readRows(r, Math.min(rawRows, r + chunkRows));
      },
    };
  }
  const offsetsInfo = header.tensors.get('offsets');
  if (offsetsInfo === undefined)
    throw new FormatError(
      file,
      'offsets',
      'missing: only an all-token file (--positions all) has first tokens to skip',
    );
  const offsets = readSafetensorsTensorI32(offsetsInfo);
  if (offsets.length < 2 || offsets[0] !== 0 || offsets[offsets.length - 1] !== rawRows)
    throw new FormatError(file, 'offsets', `does not span the ${rawRows} rows of ${hookName}`);
  const prompts = offsets.length - 1;
  let kept = 0;
  for (let p = 0; p < prompts; p++) kept += Math.max(0, offsets[p + 1] - offsets[p] - 1);
  return {
    dIn,
    rows: kept,
    id: `${file}#${hookName}#skip-first-token`,
    *chunks(start) {
      // Find the prompt holding kept row `start`, then read prompt by prompt, each without its first row.
      let p = 0;
      let before = 0;
      while (p < prompts && before + Math.max(0, offsets[p + 1] - offsets[p] - 1) <= start) {
        before += Math.max(0, offsets[p + 1] - offsets[p] - 1);
        p++;
      }
      let from = p < prompts ? offsets[p] + 1 + (start - before) : rawRows;
      for (; p < prompts; p++) {
        const end = offsets[p + 1];
        for (let r = Math.max(from, offsets[p] + 1); r < end; r += chunkRows)
          yield readRows(r, Math.min(end, r + chunkRows));
        from = 0;
      }
    },
  };
}

/** The first `rows` rows of a pass (fewer if the source has fewer), as one array. */
export async function takeRows(source: ActivationSource, rows: number): Promise<Float32Array> {
  const parts: Float32Array[] = [];
  let have = 0;
  for await (const chunk of source.chunks(0)) {
    const n = Math.min(chunk.length / source.dIn, rows - have);
    parts.push(chunk.slice(0, n * source.dIn));
    have += n;
    if (have >= rows) break;
  }
  const out = new Float32Array(have * source.dIn);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
