/**
 * How long-running library calls (an evaluation, an audit) tell their caller what they are doing:
 * status lines, warnings, and progress counters. The library never writes to the terminal itself;
 * the CLI adapts its output (bars on stderr, `--json` rules) to this interface, and a program that
 * embeds steerguard passes its own or none.
 */

/** Progress of one pass over a known number of items. */
export interface ProgressReporter {
  /** `done` of `total` items are finished (called with growing `done`). */
  update(done: number, total: number): void;
  /** The pass is over (also called when it stopped early). */
  finish(): void;
}

export interface Reporter {
  /** A status line ("baseline: 50 prompts, 48 tokens each"). */
  info(message: string): void;
  /**
   * Something went wrong but the work goes on (a failed audit step). `cause` is the error behind
   * it, for a caller that shows stack traces.
   */
  warn(message: string, cause?: unknown): void;
  /** A counter for one pass: `label` names the pass, `unit` the items (plural noun). */
  progress(label: string, unit: string): ProgressReporter;
}

const NO_PROGRESS: ProgressReporter = { update: () => {}, finish: () => {} };

/** Reports nothing: the default when a caller passes no reporter. */
export const silentReporter: Reporter = {
  info: () => {},
  warn: () => {},
  progress: () => NO_PROGRESS,
};

/** A duration for status lines: '45s', '3m05s', '1h02m'. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  const m = Math.floor(s / 60);
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}
