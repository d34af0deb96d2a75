/**
 * Which backend a model runs on when the caller does not pass one.
 *
 * The native engine when it is built and loads; otherwise the TypeScript reference backend, with a
 * one-line notice on stderr (once per process) saying so and how to get the fast path, so an install
 * without a C compiler or OpenBLAS still works, only slower. Env STEERGUARD_BACKEND forces a choice:
 * "native" (an error when it is unavailable), "reference", or "auto" (the default).
 */
import { SteerguardError } from '../formats/errors.js';
import type { Backend } from './backend.js';
import { NativeUnavailableError, loadNativeBackend } from './native.js';
import { ReferenceBackend } from './reference.js';

/** The values STEERGUARD_BACKEND accepts. */
export const BACKEND_CHOICES = ['auto', 'native', 'reference'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

export interface BackendOptions {
  /** Threads for the native engine (the reference backend has one). */
  threads?: number;
  /** Default: env STEERGUARD_BACKEND, else "auto". */
  choice?: BackendChoice;
}

let noticeShown = false;

function choiceFromEnv(): BackendChoice {
  const env = process.env.STEERGUARD_BACKEND;
  if (env === undefined || env === '') return 'auto';
  const known = BACKEND_CHOICES.find((c) => c === env);
  if (!known) {
    throw new SteerguardError(
      `STEERGUARD_BACKEND must be one of ${BACKEND_CHOICES.join(', ')}, got ${JSON.stringify(env)}`,
    );
  }
  return known;
}

/**
 * The backend to run on: see the file comment. Errors other than the native engine being
 * unavailable (a bad thread count, say) are thrown whatever the choice.
 */
export function loadBackend(options: BackendOptions = {}): Backend {
  const choice = options.choice ?? choiceFromEnv();
  if (choice === 'reference') return new ReferenceBackend();
  if (choice === 'native') return loadNativeBackend({ threads: options.threads });
  try {
    return loadNativeBackend({ threads: options.threads });
  } catch (e) {
    if (!(e instanceof NativeUnavailableError)) throw e;
    if (!noticeShown) {
      noticeShown = true;
      process.stderr.write(
        `steerguard: native engine unavailable (${e.reason.replace(/\s+/g, ' ')}); running on the TypeScript reference backend, ` +
          'much slower (prompts ~50x, generation ~4x). Fast path: apt-get install build-essential libopenblas-dev, then ' +
          '`npm rebuild steerguard` (in a checkout: node scripts/build-native.mjs). ' +
          'STEERGUARD_BACKEND=reference hides this line.\n',
      );
    }
    return new ReferenceBackend();
  }
}
