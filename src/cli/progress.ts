/**
 * Progress on stderr: a bar redrawn in place on a terminal; occasional plain lines when stderr is
 * a file or pipe (redrawing would fill a log with carriage returns); nothing in --json mode unless
 * asked, so that scripts capturing stderr stay quiet.
 */
import { formatDuration } from '../eval/reporter.js';
import type { TextSink } from './output.js';

export interface ProgressOptions {
  /** Number of items; 0 or undefined when unknown (no bar, no ETA). */
  total?: number;
  /** Shown first, e.g. 'activations'. */
  label?: string;
  /** Plural noun for the rate, e.g. 'prompts' (default 'it'). */
  unit?: string;
  /** Default process.stderr. */
  stream?: TextSink;
  /** --json mode: draw nothing unless `show` is true. */
  json?: boolean;
  /** Force showing (true) or hiding (false) regardless of mode. */
  show?: boolean;
  /** Items already done before this process started (a resumed run): excluded from the rate. */
  initial?: number;
  /** Override the terminal test (stream.isTTY). */
  tty?: boolean;
  /** Least time between redraws on a terminal, ms (default 100). */
  redrawMs?: number;
  /** Least time between plain lines, ms (default 10 000). */
  plainEveryMs?: number;
  /** Clock in ms, for tests. */
  now?: () => number;
}

export class Progress {
  readonly total: number;
  #done: number;
  readonly #initial: number;
  readonly #label: string;
  readonly #unit: string;
  readonly #stream: TextSink;
  readonly #visible: boolean;
  readonly #tty: boolean;
  readonly #redrawMs: number;
  readonly #plainEveryMs: number;
  readonly #now: () => number;
  readonly #start: number;
  #lastDraw = -Infinity;
  #lastPlain: number;
  #drawn = false;
  #finished = false;

  constructor(options: ProgressOptions = {}) {
    this.total = options.total ?? 0;
    this.#initial = options.initial ?? 0;
    this.#done = this.#initial;
    this.#label = options.label ?? '';
    this.#unit = options.unit ?? 'it';
    this.#stream = options.stream ?? process.stderr;
    this.#visible = options.show ?? !options.json;
    this.#tty = options.tty ?? this.#stream.isTTY === true;
    this.#redrawMs = options.redrawMs ?? 100;
    this.#plainEveryMs = options.plainEveryMs ?? 10_000;
    this.#now = options.now ?? Date.now;
    this.#start = this.#now();
    this.#lastPlain = this.#start;
  }

  get done(): number {
    return this.#done;
  }

  /** Count `n` more items done. */
  tick(n = 1): void {
    this.update(this.#done + n);
  }

  /** Set the number of items done. */
  update(done: number): void {
    this.#done = done;
    if (!this.#visible || this.#finished) return;
    const t = this.#now();
    if (this.#tty) {
      if (t - this.#lastDraw >= this.#redrawMs) this.#draw(t);
    } else if (t - this.#lastPlain >= this.#plainEveryMs) {
      this.#lastPlain = t;
      this.#stream.write(`${this.line(t, false)}\n`);
    }
  }

  /** Print a message without garbling the bar: clear it, print, redraw. */
  log(message: string): void {
    if (this.#tty && this.#drawn && !this.#finished) {
      this.#stream.write(`\r\x1b[K${message}\n`);
      this.#draw(this.#now());
    } else {
      this.#stream.write(`${message}\n`);
    }
  }

  /** Final state and a newline; later updates are ignored. */
  finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (!this.#visible) return;
    const t = this.#now();
    if (this.#tty) this.#stream.write(`\r\x1b[K${this.line(t, true)}\n`);
    else this.#stream.write(`${this.line(t, true)}\n`);
  }

  #draw(t: number): void {
    this.#lastDraw = t;
    this.#drawn = true;
    this.#stream.write(`\r${this.line(t, false)}\x1b[K`);
  }

  /** The progress line at time `t` (ms); `final` gives the summary form. */
  line(t: number, final: boolean): string {
    const elapsed = Math.max(0, (t - this.#start) / 1000);
    const fresh = this.#done - this.#initial;
    const rate = elapsed > 0 ? fresh / elapsed : 0;
    const parts: string[] = [];
    if (this.#label) parts.push(`${this.#label}:`);
    const known = this.total > 0;
    const count = known ? `${this.#done}/${this.total}` : `${this.#done}`;
    if (this.#tty && known && !final) {
      const cols = this.#stream.columns ?? 80;
      const barWidth = Math.max(10, Math.min(30, cols - 60));
      parts.push(bar(this.#done / this.total, barWidth));
    }
    parts.push(count);
    if (known && !this.#tty) parts.push(`(${((100 * this.#done) / this.total).toFixed(1)}%)`);
    if (final) {
      parts.push(`done in ${formatDuration(elapsed)}`);
      if (fresh > 0 && elapsed > 0) parts.push(`(${formatRate(rate, this.#unit)})`);
    } else {
      if (fresh > 0 && elapsed > 0) parts.push(formatRate(rate, this.#unit));
      if (known && fresh > 0 && rate > 0 && this.#done < this.total) {
        parts.push(`ETA ${formatDuration((this.total - this.#done) / rate)}`);
      }
    }
    const text = parts.join(' ');
    // A line wider than the terminal wraps, and '\r' then redraws only its last part.
    const cols = this.#stream.columns;
    return this.#tty && cols !== undefined && text.length >= cols ? text.slice(0, cols - 1) : text;
  }
}

function bar(fraction: number, width: number): string {
  const f = Math.min(1, Math.max(0, fraction));
  const full = Math.floor(f * width);
  return `[${'#'.repeat(full)}${'-'.repeat(width - full)}]`;
}

/** '4.21 prompts/s', or '12.3 s/prompt' style when slower than one per second. */
export function formatRate(perSecond: number, unit = 'it'): string {
  if (perSecond >= 1 || perSecond === 0) return `${perSecond.toFixed(perSecond >= 100 ? 0 : 2)} ${unit}/s`;
  const singular = unit.endsWith('s') && unit !== 'it' ? unit.slice(0, -1) : unit;
  return `${(1 / perSecond).toFixed(1)} s/${singular}`;
}
