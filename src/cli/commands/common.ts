/**
 * Pieces shared by the subcommands: the command record main.ts dispatches on, model loading with
 * a progress bar, and the option specs several commands repeat.
 *
 * The model code is imported lazily (`await import`) so that `--help`, option errors and the
 * checks done before loading answer at once, without the native engine or the tokenizer library.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { OptionError, SteerguardError } from '../../formats/errors.js';
import { hasChatTemplate } from '../../eval/prompt-sets.js';
import type { WeightStorage } from '../../model/load.js';
import type { Model } from '../../model/model.js';
import {
  type CommandSpec,
  type EnumOption,
  type NumberOption,
  type OptionSpec,
  type ParsedCommand,
  defineCommand,
  formatHelp,
  parseCommandArgs,
} from '../args.js';
import type { CliOutput } from '../output.js';
import { Progress } from '../progress.js';

/** A subcommand as main.ts sees it: its spec (for help and parsing) and what it does. */
export interface CliCommand {
  readonly spec: CommandSpec;
  /** Left out of `steerguard --help` (internal helpers such as bench-worker). */
  readonly hidden: boolean;
  /** Parses `argv` (the words after the command name) and runs, or prints the help for --help. */
  run(argv: readonly string[], out: CliOutput): Promise<void>;
}

/**
 * Ties a spec to its implementation with the option types kept, and erases them for the command
 * table (a table of differently-typed commands cannot keep each one's option types).
 */
export function command<const O extends Record<string, OptionSpec>>(
  spec: CommandSpec<O>,
  run: (args: ParsedCommand<O>, out: CliOutput) => Promise<void>,
  options: { hidden?: boolean } = {},
): CliCommand {
  const checked = defineCommand(spec);
  return {
    spec: checked as unknown as CommandSpec,
    hidden: options.hidden ?? false,
    run: async (argv, out) => {
      const parsed = parseCommandArgs(checked, argv);
      if (parsed.help) {
        out.stdout.write(formatHelp(checked as unknown as CommandSpec));
        return;
      }
      await run(parsed, out);
    },
  };
}

/**
 * A command of one word and several actions (`steerguard concept train ...`): the action is the
 * first word after any `--json`, the rest goes to that action's own command. The group's --help
 * lists every action's options (each action checks its own); an unknown action is an error.
 */
export function actionGroup(group: {
  readonly name: string;
  readonly summary: string;
  /** Already wrapped with `para`. */
  readonly description: string;
  readonly actions: Readonly<Record<string, CliCommand>>;
  readonly examples: readonly string[];
}): CliCommand {
  const names = Object.keys(group.actions);
  const options: Record<string, OptionSpec> = {};
  for (const a of Object.values(group.actions))
    for (const [k, v] of Object.entries(a.spec.options)) options[k] ??= v;
  const spec: CommandSpec = {
    name: group.name,
    summary: group.summary,
    description: group.description,
    positionals: [
      {
        name: 'action',
        description: names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names.at(-1)}` : names[0],
      },
    ],
    options,
    examples: group.examples,
  };
  return {
    spec,
    hidden: false,
    run: async (argv, out) => {
      let k = 0;
      while (argv[k] === '--json') k++;
      const action = argv[k];
      if (action === undefined || action === '--help' || action === '-h' || action === 'help') {
        out.stdout.write(formatHelp(spec));
        return;
      }
      if (!Object.hasOwn(group.actions, action))
        throw new OptionError(
          `unknown action '${action.slice(0, 40)}' for 'steerguard ${group.name}'; expected ${names.join(', ')}`,
        );
      await group.actions[action].run([...argv.slice(0, k), ...argv.slice(k + 1)], out);
    },
  };
}

export const MODEL_OPTION = {
  type: 'string',
  short: 'm',
  required: true,
  placeholder: 'model',
  description: '.gguf file, Hugging Face model folder, or cached repo id',
} as const satisfies OptionSpec;

export const DATA_DIR_OPTION = {
  type: 'string',
  placeholder: 'dir',
  description: 'folder of the named prompt sets (default: $STEERGUARD_DATA)',
} as const satisfies OptionSpec;

export const COLUMN_OPTION = {
  type: 'string',
  placeholder: 'name',
  description: 'prompt column of file sets (a file#column suffix wins)',
} as const satisfies OptionSpec;

export const TOKEN_IDS_OPTION = {
  type: 'boolean',
  description: 'the prompt column holds token ids ("1 52 7"), used as they are',
} as const satisfies OptionSpec;

/** The seeded train/val/test split of prompt sets (data/splits.ts). */
export const SPLIT_OPTIONS = {
  split: {
    type: 'string',
    placeholder: 'train,val,test',
    default: '0.7,0.1,0.2',
    description: 'fractions of the seeded split',
  },
  seed: { type: 'number', integer: true, default: 0, description: 'seed of the split' },
} as const satisfies Record<string, OptionSpec>;

export const OVERWRITE_OPTION = {
  type: 'boolean',
  description: 'replace an existing --out file',
} as const satisfies OptionSpec;

export const THREADS_OPTION = {
  type: 'number',
  integer: true,
  min: 1,
  max: 1024,
  description: 'threads for the native engine (default: $STEERGUARD_THREADS, else every core)',
} as const satisfies NumberOption;

/** Sampling flags shared by generate and chat (see SamplingOptions). */
export const SAMPLING_OPTIONS = {
  temperature: { type: 'number', min: 0, default: 0, description: 'sampling temperature; 0 is greedy' },
  topK: {
    type: 'number',
    integer: true,
    min: 0,
    default: 0,
    description: 'sample from the k most likely (0: off)',
  },
  topP: { type: 'number', min: 0, max: 1, default: 1, description: 'nucleus sampling mass (1: off)' },
  repetitionPenalty: {
    type: 'number',
    min: 0,
    default: 1,
    description: 'penalise tokens already in the text (1: off; 1.1 to 1.3 is typical)',
  },
  seed: { type: 'number', integer: true, default: 0, description: 'random seed for sampling' },
} as const satisfies Record<string, NumberOption>;

export const WEIGHTS_OPTION = {
  type: 'enum',
  values: ['quantized', 'f32'],
  description:
    "how weights are held: quantized (the GGUF's blocks; prompts exact, generation steps with int8 dot products like llama.cpp; the default on the native engine) or f32 (exact everywhere, 4 bytes per weight; the only choice on the reference backend)",
} as const satisfies EnumOption;

export const ADAPTER_OPTION = {
  type: 'list',
  placeholder: 'path',
  description:
    'LoRA adapters applied together: each a PEFT folder (adapter_config.json + adapter_model.safetensors) ' +
    "or a llama.cpp GGUF LoRA file (what 'llama-cli --lora' takes)",
} as const satisfies OptionSpec;

/**
 * Loads each adapter of --adapter and attaches it to `model`, enabled: a folder is read as PEFT's
 * layout, a file as a llama.cpp GGUF LoRA adapter.
 */
export async function attachAdapters(
  model: Model,
  paths: readonly string[] | undefined,
  out: CliOutput,
): Promise<void> {
  if (!paths || paths.length === 0) return;
  const { loadPeftAdapter } = await import('../../training/peft.js');
  const { loadGgufLora } = await import('../../training/gguf-lora.js');
  for (const p of paths) {
    let isFolder: boolean;
    try {
      isFolder = statSync(p).isDirectory();
    } catch {
      throw new OptionError(`--adapter ${p}: no such file or folder (a PEFT folder or a GGUF LoRA file)`);
    }
    const adapter = isFolder ? loadPeftAdapter(p, model.config) : loadGgufLora(p, model.config);
    model.addAdapter(adapter);
    out.info(`adapter ${p}: rank ${adapter.rank}, alpha ${adapter.alpha} on ${adapter.targets.join(',')}`);
  }
}

/** The steerguard package version, from the package.json above this file. */
export function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'steerguard' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // no package.json here; keep walking up
    }
    const parent = path.dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
}

/** Loads a model with a layer progress bar on stderr and a one-line summary after. */
export async function loadModel(
  nameOrPath: string,
  out: CliOutput,
  opts: { threads?: number; weights?: WeightStorage } = {},
): Promise<Model> {
  const { Model } = await import('../../model/model.js');
  const start = performance.now();
  let progress: Progress | undefined;
  const model = await Model.load(nameOrPath, {
    threads: opts.threads,
    weights: opts.weights,
    onProgress: (done, total) => {
      progress ??= new Progress({ total, label: 'loading model', unit: 'layers', json: out.json });
      progress.update(done);
    },
  });
  progress?.finish();
  const c = model.config;
  out.info(
    `loaded ${path.basename(model.identity.path)} (${c.arch}, ${c.nLayers} layers, d_model ${c.dModel}) ` +
      `in ${((performance.now() - start) / 1000).toFixed(1)}s on ${model.backend.name}`,
  );
  return model;
}

/**
 * Decides the chat-template question from `--chat` / `--no-chat`: forced either way, or (neither
 * given) on exactly when the model ships a template, since base models have none to apply.
 */
export function useChat(model: Model, flags: { chat: boolean; noChat: boolean }): boolean {
  if (flags.chat && flags.noChat) throw new OptionError('--chat and --no-chat contradict each other');
  const has = hasChatTemplate(model);
  if (flags.chat && !has) {
    throw new SteerguardError(
      `${path.basename(model.identity.path)} has no chat template (a base model?); drop --chat to send raw text`,
    );
  }
  return flags.noChat ? false : has;
}

/**
 * `--chat` and `--no-chat` are two switches rather than one boolean because the parser cannot
 * tell an absent boolean from `--no-chat`, and absent means "decide from the model".
 */
export const CHAT_OPTIONS = {
  chat: {
    type: 'boolean',
    description: "wrap prompts in the model's chat template (default: when the model has one)",
  },
  noChat: {
    type: 'boolean',
    description: 'send prompts as raw text even when the model has a chat template',
  },
} as const satisfies Record<string, OptionSpec>;

/** Wraps a help paragraph at `width` columns (formatHelp prints descriptions as given). */
export function para(text: string, width = 100): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(line);
  return lines.join('\n');
}

/** `\n`, `\t`, `\\` in a string given on the command line, so stop strings can hold newlines. */
export function unescape(s: string): string {
  return s.replace(/\\([nt\\])/g, (_m, c: string) => (c === 'n' ? '\n' : c === 't' ? '\t' : '\\'));
}

/** Bytes as '1.2 MB' (decimal units, like `ls -h --si`). */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = -1;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

/** Refuses a file option whose file is not there, so that the slip shows before a model loads. */
export function checkInputFile(flag: string, file: string | undefined): void {
  if (file !== undefined && !existsSync(file)) throw new OptionError(`${flag}: ${file} does not exist`);
}

/**
 * Refuses to clobber an output file unless --overwrite, and checks its folder exists, so that
 * no work is lost at the end.
 */
export function checkOutPath(file: string | undefined, overwrite: boolean): void {
  if (file === undefined) return;
  if (existsSync(file) && !overwrite)
    throw new OptionError(`${file} already exists; remove it or pass --overwrite`);
  const dir = path.dirname(path.resolve(file));
  if (!existsSync(dir)) throw new OptionError(`folder ${dir} (of ${file}) does not exist`);
}

/**
 * Runs `work` with a signal that the first Ctrl-C aborts (`onInterrupt` says so); a second
 * Ctrl-C exits at once with 130.
 */
export async function withInterrupt<T>(
  work: (signal: AbortSignal) => Promise<T>,
  onInterrupt?: () => void,
): Promise<T> {
  const controller = new AbortController();
  const onSigint = (): void => {
    if (controller.signal.aborted) process.exit(130);
    controller.abort();
    onInterrupt?.();
  };
  process.on('SIGINT', onSigint);
  try {
    return await work(controller.signal);
  } finally {
    process.off('SIGINT', onSigint);
  }
}

/** Resolves after pending I/O and signals have had a turn (synchronous model calls block them). */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
