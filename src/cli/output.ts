/**
 * Where CLI output goes. Human mode: results as text on stdout, messages on stderr. `--json` mode:
 * exactly one JSON document on stdout (the result, or an error object), everything else on
 * stderr, so `steerguard ... --json | jq` always sees valid JSON.
 */
import { OptionError } from '../formats/errors.js';

/** The part of a stream the CLI writes to; process.stdout/stderr fit, and so do test doubles. */
export interface TextSink {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface CliOutputOptions {
  json: boolean;
  /** Suppress info messages (warnings and errors still show). */
  quiet?: boolean;
  stdout?: TextSink;
  stderr?: TextSink;
}

export class CliOutput {
  readonly json: boolean;
  readonly quiet: boolean;
  readonly stdout: TextSink;
  /** Progress bars and logs write here. */
  readonly stderr: TextSink;
  #resultWritten = false;

  constructor(options: CliOutputOptions) {
    this.json = options.json;
    this.quiet = options.quiet ?? false;
    this.stdout = options.stdout ?? process.stdout;
    this.stderr = options.stderr ?? process.stderr;
  }

  /** Whether the JSON document (or a human result) has gone out. */
  get resultWritten(): boolean {
    return this.#resultWritten;
  }

  /**
   * Human-only text on stdout (a table, a report). Dropped in --json mode, where the command's
   * {@link result} carries the same information.
   */
  print(text: string): void {
    if (this.json) return;
    this.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }

  /** A progress or status message, on stderr in both modes. */
  info(message: string): void {
    if (this.quiet) return;
    this.stderr.write(`${message}\n`);
  }

  warn(message: string): void {
    this.stderr.write(`warning: ${message}\n`);
  }

  /**
   * The command's result: in --json mode `value` as the one JSON document on stdout (a second
   * call throws, since two documents would break a JSON reader); otherwise `human` (text, or a
   * function of the value) on stdout, or the JSON itself when no human form is given.
   */
  result<T>(value: T, human?: string | ((value: T) => string)): void {
    if (this.json) {
      if (this.#resultWritten) throw new Error('CliOutput.result called twice in --json mode');
      this.#resultWritten = true;
      this.stdout.write(`${toJson(value, 2)}\n`);
      return;
    }
    this.#resultWritten = true;
    const text = human === undefined ? toJson(value, 2) : typeof human === 'string' ? human : human(value);
    if (text !== '') this.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }
}

/**
 * JSON text of `value` with the types a result may hold made serialisable: typed arrays become
 * arrays, bigints decimal strings, Maps objects, Sets arrays, non-finite numbers null.
 */
export function toJson(value: unknown, indent?: number): string {
  const text = JSON.stringify(
    value,
    (_key, v: unknown) => {
      if (typeof v === 'bigint') return v.toString();
      if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
        return Array.from(v as unknown as ArrayLike<number | bigint>, (x) =>
          typeof x === 'bigint' ? x.toString() : x,
        );
      }
      if (v instanceof Map) return Object.fromEntries(v);
      if (v instanceof Set) return [...v];
      return v;
    },
    indent,
  );
  // JSON.stringify returns undefined for undefined/functions at top level.
  return text ?? 'null';
}

/** 2 for bad usage (unknown option, bad value), 1 for anything else. */
export function exitCodeFor(err: unknown): number {
  return err instanceof OptionError ? 2 : 1;
}

function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

/**
 * The text printed on stderr for an error: `error: <message>`, the messages of its causes, and
 * (only with debug) the stack traces.
 */
export function formatError(err: unknown, debug = false): string {
  const lines: string[] = [];
  if (debug && err instanceof Error && err.stack) lines.push(`error: ${err.stack}`);
  else lines.push(`error: ${errorMessage(err)}`);
  let cause = err instanceof Error ? err.cause : undefined;
  for (let depth = 0; cause !== undefined && depth < 5; depth++) {
    lines.push(
      debug && cause instanceof Error && cause.stack
        ? `  caused by: ${cause.stack}`
        : `  caused by: ${errorMessage(cause)}`,
    );
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  if (!debug && !(err instanceof Error && isExpected(err))) {
    lines.push('  (set STEERGUARD_DEBUG=1 for a stack trace)');
  }
  return `${lines.join('\n')}\n`;
}

/** Errors the project raises on purpose (and Node's file-system errors) need no trace hint. */
function isExpected(err: Error): boolean {
  return (
    err.name === 'SteerguardError' ||
    err.name === 'FormatError' ||
    err.name === 'OptionError' ||
    'code' in err
  );
}

export function isDebug(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.STEERGUARD_DEBUG;
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
}

/**
 * Report `err` and return the exit code. In --json mode, when no result went out yet, stdout also
 * gets `{"error": {"message", "type", "exitCode"}}` so a script reading stdout sees a document.
 */
export function reportError(err: unknown, out: CliOutput, env: NodeJS.ProcessEnv = process.env): number {
  const code = exitCodeFor(err);
  out.stderr.write(formatError(err, isDebug(env)));
  if (code === 2 && !out.json) out.stderr.write('  (run with --help for the options)\n');
  if (out.json && !out.resultWritten) {
    const type = err instanceof Error ? err.name : 'Error';
    out.stdout.write(`${toJson({ error: { message: errorMessage(err), type, exitCode: code } })}\n`);
  }
  return code;
}

/** True when `--json` appears among the words before a `--`. */
export function wantsJson(argv: readonly string[]): boolean {
  for (const w of argv) {
    if (w === '--') return false;
    if (w === '--json') return true;
  }
  return false;
}

export interface RunMainOptions {
  stdout?: TextSink;
  stderr?: TextSink;
  env?: NodeJS.ProcessEnv;
}

/**
 * Run the CLI body with an output chosen from `argv`, turn any thrown error into `error: ...` on
 * stderr, and resolve to the exit code (also stored in process.exitCode). A closed stdout pipe
 * (`steerguard ... | head`) ends the process quietly instead of crashing it.
 */
export async function runMain(
  argv: readonly string[],
  main: (out: CliOutput) => Promise<void> | void,
  options: RunMainOptions = {},
): Promise<number> {
  const out = new CliOutput({ json: wantsJson(argv), stdout: options.stdout, stderr: options.stderr });
  if (options.stdout === undefined) {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  let code = 0;
  try {
    await main(out);
  } catch (err) {
    code = reportError(err, out, options.env ?? process.env);
  }
  if (code !== 0 || process.exitCode === undefined) process.exitCode = code;
  return code;
}

/** Plain-text table with a header row and columns padded to width; `right` aligns numbers. */
export function formatTable(
  headers: readonly string[],
  rows: readonly (readonly (string | number)[])[],
  right: readonly boolean[] = [],
): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? formatNumber(c) : c)));
  const widths = headers.map((h, k) => Math.max(h.length, ...cells.map((r) => (r[k] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r
      .map((c, k) => (right[k] ? c.padStart(widths[k]) : c.padEnd(widths[k])))
      .join('  ')
      .trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n') + '\n';
}

/** Up to 4 significant digits, no exponent for everyday magnitudes. */
export function formatNumber(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(3);
  return String(Number(x.toPrecision(4)));
}
