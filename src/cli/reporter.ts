/**
 * The CLI's output as the library's Reporter: status lines and warnings on stderr (quiet and
 * --json rules kept), a progress bar per pass, and the stack trace behind a warning only with
 * STEERGUARD_DEBUG.
 */
import type { ProgressReporter, Reporter } from '../eval/reporter.js';
import { type CliOutput, isDebug } from './output.js';
import { Progress } from './progress.js';

export function cliReporter(out: CliOutput): Reporter {
  return {
    info: (message) => out.info(message),
    warn: (message, cause) => {
      out.warn(message);
      if (isDebug() && cause instanceof Error && cause.stack) out.stderr.write(`${cause.stack}\n`);
    },
    progress: (label, unit): ProgressReporter => {
      // The total is known only when the pass starts, so the bar appears with its first update.
      let bar: Progress | undefined;
      return {
        update: (done, total) => {
          bar ??= new Progress({ total, label, unit, json: out.json, stream: out.stderr });
          bar.update(done);
        },
        finish: () => bar?.finish(),
      };
    },
  };
}
