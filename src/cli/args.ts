/**
 * A small typed argument parser for `steerguard <command> [options]`.
 *
 * Written by hand rather than on node:util parseArgs because an option's value is always the next
 * word, even when it starts with '-': steering coefficients and position offsets are often
 * negative (`--alpha -4`, `--position -1`), which parseArgs refuses as ambiguous.
 *
 * Options are declared with camelCase keys and given on the command line in kebab-case
 * (`maxTokens` is `--max-tokens`).
 */
import { OptionError } from '../formats/errors.js';

interface BaseOption {
  /** One line, lower case, no final period: shown in --help. */
  description: string;
  /** One-letter alias, without the dash. */
  short?: string;
  /** Word shown for the value in --help (`--model <path>`). */
  placeholder?: string;
}

export interface StringOption extends BaseOption {
  type: 'string';
  default?: string;
  required?: boolean;
}

export interface NumberOption extends BaseOption {
  type: 'number';
  default?: number;
  required?: boolean;
  /** Refuse fractional values. */
  integer?: boolean;
  /** Inclusive bounds. */
  min?: number;
  max?: number;
}

export interface BooleanOption extends BaseOption {
  type: 'boolean';
  /** A boolean that defaults to true can be turned off with `--no-<name>`. */
  default?: boolean;
}

export interface EnumOption<V extends string = string> extends BaseOption {
  type: 'enum';
  values: readonly V[];
  default?: V;
  required?: boolean;
}

export interface ListOption extends BaseOption {
  type: 'list';
  /** Element type; numbers follow the integer/min/max rules below. Default 'string'. */
  of?: 'string' | 'number';
  integer?: boolean;
  min?: number;
  max?: number;
  default?: readonly string[] | readonly number[];
  required?: boolean;
}

export type OptionSpec = StringOption | NumberOption | BooleanOption | EnumOption | ListOption;

export interface PositionalSpec {
  name: string;
  description: string;
  /** Default true. */
  required?: boolean;
  /** Takes every remaining argument (only the last positional may). */
  variadic?: boolean;
}

export interface CommandSpec<O extends Record<string, OptionSpec> = Record<string, OptionSpec>> {
  /** Subcommand word, e.g. 'activations'. */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Optional paragraph(s) shown under the usage line. */
  description?: string;
  options: O;
  positionals?: readonly PositionalSpec[];
  /** Full command lines, e.g. 'steerguard activations -m model.gguf --prompts p.csv'. */
  examples: readonly string[];
}

type HasDefault<S> = S extends { default: unknown } ? true : false;
type IsRequired<S> = S extends { required: true } ? true : false;

/** The value type an option parses to. */
export type OptionValue<S extends OptionSpec> = S extends BooleanOption
  ? boolean
  : S extends NumberOption
    ? number
    : S extends EnumOption<infer V>
      ? V
      : S extends ListOption
        ? S['of'] extends 'number'
          ? number[]
          : string[]
        : string;

/**
 * Parsed options: an option with a default, a required option and any boolean are always set;
 * others may be undefined.
 */
export type OptionValues<O extends Record<string, OptionSpec>> = {
  [K in keyof O]: O[K] extends BooleanOption
    ? boolean
    : HasDefault<O[K]> extends true
      ? OptionValue<O[K]>
      : IsRequired<O[K]> extends true
        ? OptionValue<O[K]>
        : OptionValue<O[K]> | undefined;
};

export interface ParsedCommand<O extends Record<string, OptionSpec>> {
  options: OptionValues<O>;
  positionals: string[];
  /** `--json`: one JSON document on stdout. */
  json: boolean;
  /**
   * `--help` was given: the caller prints {@link formatHelp} and exits 0. Nothing else is
   * validated in that case (so `--help` works next to a half-typed command line).
   */
  help: boolean;
}

/** Options every command accepts. Their names may not be reused by a command. */
export const GLOBAL_OPTIONS = {
  json: {
    type: 'boolean',
    description: 'print one JSON document on stdout (logs and progress go to stderr)',
  },
  help: { type: 'boolean', short: 'h', description: 'show this help and exit' },
} as const satisfies Record<string, BooleanOption>;

/** Identity function that keeps the literal option types, so values come out typed. */
export function defineCommand<const O extends Record<string, OptionSpec>>(
  spec: CommandSpec<O>,
): CommandSpec<O> {
  checkSpec(spec);
  return spec;
}

/** `maxTokens` -> `max-tokens`. */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** Catch mistakes in a command's declaration early, at definition time. */
function checkSpec(spec: CommandSpec): void {
  const shorts = new Set<string>(['h']);
  for (const [key, opt] of Object.entries(spec.options)) {
    if (key in GLOBAL_OPTIONS) throw new Error(`${spec.name}: option '${key}' clashes with a global option`);
    if (opt.short !== undefined) {
      if (!/^[a-zA-Z]$/.test(opt.short) || shorts.has(opt.short)) {
        throw new Error(`${spec.name}: bad or duplicate short option '-${opt.short}'`);
      }
      shorts.add(opt.short);
    }
    if (opt.type === 'enum' && opt.default !== undefined && !opt.values.includes(opt.default)) {
      throw new Error(`${spec.name}: default of --${flagName(key)} is not one of its values`);
    }
  }
  const pos = spec.positionals ?? [];
  pos.forEach((p, k) => {
    if (p.variadic && k !== pos.length - 1) {
      throw new Error(`${spec.name}: only the last positional may be variadic`);
    }
  });
}

/**
 * Parse the words after the subcommand. Throws OptionError naming the option for an unknown
 * option, a missing or bad value, a missing required option or a wrong number of arguments.
 */
export function parseCommandArgs<O extends Record<string, OptionSpec>>(
  spec: CommandSpec<O>,
  argv: readonly string[],
): ParsedCommand<O> {
  const cmd = `'steerguard ${spec.name}'`;
  const byFlag = new Map<string, string>();
  const byShort = new Map<string, string>();
  for (const [key, opt] of Object.entries(spec.options)) {
    byFlag.set(flagName(key), key);
    if (opt.short !== undefined) byShort.set(opt.short, key);
  }

  const raw = new Map<string, string[]>();
  const booleans = new Map<string, boolean>();
  const positionals: string[] = [];
  let json = false;
  let help = false;

  for (let i = 0; i < argv.length; i++) {
    const word = argv[i];
    if (word === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (word === '-' || !word.startsWith('-') || /^-\d/.test(word)) {
      // A lone '-' is the usual name for stdin, and a negative number is a value, not an option.
      positionals.push(word);
      continue;
    }

    let key: string | undefined;
    let inline: string | undefined;
    let shown: string;
    let negated = false;
    if (word.startsWith('--')) {
      const eq = word.indexOf('=');
      const name = eq < 0 ? word.slice(2) : word.slice(2, eq);
      inline = eq < 0 ? undefined : word.slice(eq + 1);
      shown = `--${name}`;
      if (name === 'json' || name === 'help') {
        if (inline !== undefined) throw new OptionError(`${shown} takes no value`);
        if (name === 'json') json = true;
        else help = true;
        continue;
      }
      key = byFlag.get(name);
      if (key === undefined && name.startsWith('no-')) {
        const k = byFlag.get(name.slice(3));
        if (k !== undefined && spec.options[k].type === 'boolean') {
          key = k;
          negated = true;
        }
      }
      if (key === undefined) {
        throw new OptionError(
          `unknown option ${shown} for ${cmd}${suggest(name, [...byFlag.keys(), 'json', 'help'])}`,
        );
      }
    } else {
      // Short options: -m value, -mvalue; no bundling, since all but -h take values.
      const letter = word[1];
      shown = `-${letter}`;
      if (letter === 'h' && word.length === 2) {
        help = true;
        continue;
      }
      key = byShort.get(letter);
      if (key === undefined) throw new OptionError(`unknown option ${shown} for ${cmd}`);
      if (word.length > 2) inline = word.slice(2);
    }

    const opt = spec.options[key];
    const label = `--${flagName(key)}`;
    if (opt.type === 'boolean') {
      if (inline !== undefined) {
        if (negated || !/^(true|false)$/.test(inline)) {
          throw new OptionError(
            `${label} is a switch: give it alone (or --no-${flagName(key)}), not with a value`,
          );
        }
        negated = inline === 'false';
      }
      if (booleans.has(key)) throw new OptionError(`${label} is given more than once`);
      booleans.set(key, !negated);
      continue;
    }
    let value = inline;
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new OptionError(`${label} needs a value${valueHint(opt)}`);
      value = argv[++i];
    }
    const list = raw.get(key);
    if (list === undefined) raw.set(key, [value]);
    else if (opt.type === 'list') list.push(value);
    else throw new OptionError(`${label} is given more than once`);
  }

  if (help) return { options: {} as OptionValues<O>, positionals, json, help };

  const values: Record<string, unknown> = {};
  for (const [key, opt] of Object.entries(spec.options)) {
    const label = `--${flagName(key)}`;
    if (opt.type === 'boolean') {
      values[key] = booleans.get(key) ?? opt.default ?? false;
      continue;
    }
    const given = raw.get(key);
    if (given === undefined) {
      if (opt.default !== undefined) values[key] = opt.type === 'list' ? [...opt.default] : opt.default;
      else if (opt.required) throw new OptionError(`missing required option ${label}${valueHint(opt)}`);
      continue;
    }
    values[key] = convert(label, opt, given);
  }

  checkPositionals(spec, positionals);
  return { options: values as OptionValues<O>, positionals, json, help };
}

function convert(label: string, opt: Exclude<OptionSpec, BooleanOption>, given: string[]): unknown {
  const one = given[0];
  switch (opt.type) {
    case 'string':
      return one;
    case 'number':
      return toNumber(label, one, opt);
    case 'enum':
      if (!(opt.values as readonly string[]).includes(one)) {
        throw new OptionError(`${label} must be one of ${opt.values.join(', ')}; got '${clip(one)}'`);
      }
      return one;
    case 'list': {
      const items = given.flatMap((g) => g.split(',')).map((s) => s.trim());
      if (items.some((s) => s === '')) {
        throw new OptionError(`${label} has an empty item in '${clip(given.join(','))}'`);
      }
      return opt.of === 'number' ? items.map((s) => toNumber(label, s, opt)) : items;
    }
  }
}

const NUMBER_RE = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

function toNumber(label: string, s: string, rule: { integer?: boolean; min?: number; max?: number }): number {
  const t = s.trim();
  if (!NUMBER_RE.test(t)) throw new OptionError(`${label} must be a number; got '${clip(s)}'`);
  const v = Number(t);
  if (!Number.isFinite(v)) throw new OptionError(`${label} is out of range: ${clip(s)}`);
  if (rule.integer && !Number.isInteger(v)) {
    throw new OptionError(`${label} must be a whole number; got ${clip(s)}`);
  }
  if (rule.min !== undefined && v < rule.min) {
    throw new OptionError(`${label} must be at least ${rule.min}; got ${v}`);
  }
  if (rule.max !== undefined && v > rule.max) {
    throw new OptionError(`${label} must be at most ${rule.max}; got ${v}`);
  }
  return v;
}

function checkPositionals(spec: CommandSpec, positionals: string[]): void {
  const pos = spec.positionals ?? [];
  const variadic = pos.length > 0 && pos[pos.length - 1].variadic === true;
  const needed = pos.filter((p) => p.required !== false).length;
  if (positionals.length < needed) {
    const missing = pos.filter((p) => p.required !== false)[positionals.length];
    throw new OptionError(`missing argument <${missing.name}> for 'steerguard ${spec.name}'`);
  }
  if (!variadic && positionals.length > pos.length) {
    throw new OptionError(
      `unexpected argument '${clip(positionals[pos.length])}' for 'steerguard ${spec.name}'`,
    );
  }
}

/** User input echoed in messages is cut short: it may be a long (possibly harmful) prompt. */
function clip(s: string): string {
  return s.length <= 40 ? s : `${s.slice(0, 40)}…`;
}

function valueHint(opt: OptionSpec): string {
  if (opt.type === 'enum') return ` (one of ${opt.values.join(', ')})`;
  return '';
}

/** ' (did you mean --x?)' for a near miss, by edit distance. */
function suggest(name: string, known: string[]): string {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(name.length / 4))
    ? ` (did you mean --${best}?)`
    : '';
}

/** Optimal-string-alignment distance: a swap of two neighbours ('dmeo') counts as one edit. */
function editDistance(a: string, b: string): number {
  const rows: number[][] = [Array.from({ length: b.length + 1 }, (_, j) => j)];
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    const prev = rows[i - 1];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        cur[j] = Math.min(cur[j], rows[i - 2][j - 2] + 1);
      }
    }
    rows.push(cur);
  }
  return rows[a.length][b.length];
}

// ---------------------------------------------------------------------------------------------
// Help text

function optionPlaceholder(opt: OptionSpec): string {
  if (opt.placeholder !== undefined) return `<${opt.placeholder}>`;
  switch (opt.type) {
    case 'boolean':
      return '';
    case 'enum':
      return `<${opt.values.join('|')}>`;
    case 'number':
      return opt.integer ? '<int>' : '<num>';
    case 'list':
      return opt.of === 'number' ? '<n,...>' : '<a,b,...>';
    case 'string':
      return '<str>';
  }
}

function optionNotes(opt: OptionSpec): string[] {
  const notes: string[] = [];
  if ((opt.type === 'number' || opt.type === 'list') && (opt.min !== undefined || opt.max !== undefined)) {
    if (opt.min !== undefined && opt.max !== undefined) notes.push(`${opt.min}..${opt.max}`);
    else if (opt.min !== undefined) notes.push(`>= ${opt.min}`);
    else notes.push(`<= ${String(opt.max)}`);
  }
  if (opt.type === 'boolean') {
    if (opt.default === true) notes.push('default: on; --no-… turns it off');
  } else if (opt.default !== undefined) {
    const d = Array.isArray(opt.default) ? opt.default.join(',') : String(opt.default);
    notes.push(`default: ${d === '' ? "''" : d}`);
  } else if (opt.required) {
    notes.push('required');
  }
  return notes;
}

/** Help text for one command: usage, every option with its default, the examples. */
export function formatHelp(spec: CommandSpec, program = 'steerguard'): string {
  const pos = (spec.positionals ?? [])
    .map((p) => {
      const n = `<${p.name}>${p.variadic ? '...' : ''}`;
      return p.required === false ? `[${n}]` : n;
    })
    .join(' ');
  const lines: string[] = [
    `Usage: ${program} ${spec.name} [options]${pos ? ` ${pos}` : ''}`,
    '',
    spec.summary,
  ];
  if (spec.description) lines.push('', spec.description);

  const rows: [string, string][] = [];
  for (const p of spec.positionals ?? []) rows.push([`<${p.name}>`, p.description]);
  if (rows.length > 0) lines.push('', 'Arguments:', ...table(rows));

  const optRows: [string, string][] = [];
  const all: [string, OptionSpec][] = [...Object.entries(spec.options), ...Object.entries(GLOBAL_OPTIONS)];
  for (const [key, opt] of all) {
    const flag = `${opt.short !== undefined ? `-${opt.short}, ` : '    '}--${flagName(key)}`;
    const ph = optionPlaceholder(opt);
    const notes = optionNotes(opt);
    optRows.push([
      ph ? `${flag} ${ph}` : flag,
      `${opt.description}${notes.length ? ` (${notes.join('; ')})` : ''}`,
    ]);
  }
  lines.push('', 'Options:', ...table(optRows));

  if (spec.examples.length > 0) lines.push('', 'Examples:', ...spec.examples.map((e) => `  ${e}`));
  return `${lines.join('\n')}\n`;
}

/** Top-level help: the list of commands. */
export function formatCommandList(commands: readonly CommandSpec[], program = 'steerguard'): string {
  const lines = [
    `Usage: ${program} <command> [options]`,
    '',
    'Commands:',
    ...table(commands.map((c) => [c.name, c.summary])),
    '',
    `Run '${program} <command> --help' for the options of a command.`,
  ];
  return `${lines.join('\n')}\n`;
}

function table(rows: [string, string][]): string[] {
  const width = Math.min(34, Math.max(...rows.map(([l]) => l.length)));
  return rows.map(([left, right]) =>
    left.length > width ? `  ${left}\n  ${' '.repeat(width)}  ${right}` : `  ${left.padEnd(width)}  ${right}`,
  );
}

/**
 * Split `argv` (without node and script) into the subcommand and its arguments. Returns
 * command undefined for no command or a bare --help / -h. Throws OptionError for an unknown one.
 */
export function splitCommand<C extends CommandSpec>(
  commands: readonly C[],
  argv: readonly string[],
): { command: C | undefined; rest: string[] } {
  // Global switches may come before the command word: `steerguard --json probe ...`.
  let k = 0;
  while (argv[k] === '--json') k++;
  const globals = argv.slice(0, k);
  const first = argv[k];
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    return { command: undefined, rest: [...globals, ...argv.slice(k + 1)] };
  }
  const command = commands.find((c) => c.name === first);
  if (command === undefined) {
    const hint = suggest(
      first,
      commands.map((c) => c.name),
    ).replace('--', '');
    throw new OptionError(`unknown command '${clip(first)}'${hint}; run 'steerguard --help' for the list`);
  }
  return { command, rest: [...globals, ...argv.slice(k + 1)] };
}
