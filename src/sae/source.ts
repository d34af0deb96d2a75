/**
 * Where SAE training and evaluation read activations from: chunks of rows, never the whole set at
 * once, so data larger than memory streams. A source can start at any row of its pass, which is
 * how a resumed training run continues exactly where it stopped.
 */
import { FormatError, OptionError } from '../formats/errors.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
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
 * time straight from the file. Throws FormatError naming the file when the tensor is missing or
 * not a matrix of rows.
 */
export function storeSource(
  file: string,
  hookName: string,
  chunkRows = 4096,
): ActivationSource & { rows: number } {
  const header = readSafetensorsHeader(file);
  const info = header.tensors.get(hookName);
  if (info === undefined) {
    const hooks = [...header.tensors.keys()].filter((n) => n !== 'offsets').slice(0, 8);
    throw new FormatError(file, hookName, `no such tensor (the file holds ${hooks.join(', ') || 'none'})`);
  }
  if (info.shape.length < 2)
    throw new FormatError(file, hookName, `shape [${info.shape.join(', ')}] is not rows of activations`);
  const dIn = info.shape[info.shape.length - 1];
  const rows = info.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  if (dIn < 1 || rows < 1) throw new FormatError(file, hookName, 'holds no rows');
  const rowBytes = dIn * SAFETENSORS_DTYPE_BYTES[info.dtype];
  return {
    dIn,
    rows,
    id: `${file}#${hookName}`,
    *chunks(start) {
      for (let r = start; r < rows; r += chunkRows) {
        const end = Math.min(rows, r + chunkRows);
        // A view of the tensor's rows r..end: the reader converts just those bytes.
        yield readSafetensorsTensorF32({
          ...info,
          begin: info.begin + r * rowBytes,
          end: info.begin + end * rowBytes,
        });
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
