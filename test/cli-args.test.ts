import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  defineCommand,
  flagName,
  formatCommandList,
  formatHelp,
  parseCommandArgs,
  splitCommand,
  type OptionValues,
} from '../src/cli/args.js';
import {
  CliOutput,
  exitCodeFor,
  formatError,
  formatNumber,
  formatTable,
  reportError,
  runMain,
  toJson,
  wantsJson,
  type TextSink,
} from '../src/cli/output.js';
import { formatRate, Progress } from '../src/cli/progress.js';
import { formatDuration } from '../src/eval/reporter.js';
import { FormatError, OptionError } from '../src/formats/errors.js';

const demo = defineCommand({
  name: 'demo',
  summary: 'exercise every option type',
  options: {
    model: { type: 'string', short: 'm', required: true, placeholder: 'path', description: 'model file' },
    layer: { type: 'number', integer: true, min: 0, max: 79, default: 10, description: 'layer index' },
    alpha: { type: 'number', description: 'steering coefficient' },
    dtype: { type: 'enum', values: ['f32', 'f16', 'bf16'], default: 'f32', description: 'storage type' },
    hooks: { type: 'list', default: ['resid_post'], description: 'hook names' },
    layers: { type: 'list', of: 'number', integer: true, min: 0, description: 'layer indices' },
    restart: { type: 'boolean', description: 'discard an unfinished run' },
    chat: { type: 'boolean', default: true, description: 'apply the chat template' },
    maxTokens: { type: 'number', integer: true, min: 1, default: 64, description: 'tokens to generate' },
  },
  positionals: [{ name: 'prompts', description: 'prompt file', required: false }],
  examples: [
    'steerguard demo -m m.gguf --layer 12 prompts.csv',
    'steerguard demo -m m.gguf --alpha -4 --json',
  ],
});

function parse(...argv: string[]) {
  return parseCommandArgs(demo, argv);
}

function optionError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof OptionError && pattern.test(err.message));
}

describe('parseCommandArgs', () => {
  it('applies defaults and types the values', () => {
    const { options, positionals, json, help } = parse('-m', 'model.gguf');
    const expected: OptionValues<typeof demo.options> = {
      model: 'model.gguf',
      layer: 10,
      alpha: undefined,
      dtype: 'f32',
      hooks: ['resid_post'],
      layers: undefined,
      restart: false,
      chat: true,
      maxTokens: 64,
    };
    assert.deepEqual({ ...options, alpha: options.alpha, layers: options.layers }, expected);
    assert.deepEqual(positionals, []);
    assert.equal(json, false);
    assert.equal(help, false);
  });

  it('reads every form: --x v, --x=v, -mv, negatives, lists, --no-, --json, positionals, --', () => {
    const r = parse(
      '--model=a.gguf',
      '--alpha',
      '-4.5',
      '--layer',
      '3',
      '--hooks',
      'resid_pre,attn_out',
      '--hooks',
      'mlp_out',
      '--layers=1,2',
      '--no-chat',
      '--restart',
      '--max-tokens',
      '1e2',
      '--json',
      'p.csv',
    );
    assert.equal(r.options.model, 'a.gguf');
    assert.equal(r.options.alpha, -4.5);
    assert.equal(r.options.layer, 3);
    assert.deepEqual(r.options.hooks, ['resid_pre', 'attn_out', 'mlp_out']);
    assert.deepEqual(r.options.layers, [1, 2]);
    assert.equal(r.options.chat, false);
    assert.equal(r.options.restart, true);
    assert.equal(r.options.maxTokens, 100);
    assert.equal(r.json, true);
    assert.deepEqual(r.positionals, ['p.csv']);
    assert.equal(parse('-mx.gguf').options.model, 'x.gguf');
    assert.deepEqual(parse('-m', 'x', '--', '--not-an-option').positionals, ['--not-an-option']);
    assert.equal(parse('-m', 'x', '--restart=false').options.restart, false);
  });

  it('--help skips validation', () => {
    const r = parse('--layer', 'nonsense', '--help');
    assert.equal(r.help, true);
    assert.equal(parse('-h').help, true);
  });

  it('reports bad usage as OptionError naming the option', () => {
    optionError(() => parse(), /missing required option --model/);
    optionError(
      () => parse('-m', 'x', '--layr', '3'),
      /unknown option --layr for 'steerguard demo' \(did you mean --layer\?\)/,
    );
    optionError(() => parse('-m', 'x', '-q'), /unknown option -q/);
    optionError(() => parse('-m', 'x', '--layer', '80'), /--layer must be at most 79; got 80/);
    optionError(() => parse('-m', 'x', '--layer', '-1'), /--layer must be at least 0/);
    optionError(() => parse('-m', 'x', '--layer', '2.5'), /--layer must be a whole number/);
    optionError(() => parse('-m', 'x', '--layer', 'ten'), /--layer must be a number; got 'ten'/);
    optionError(() => parse('-m', 'x', '--alpha', '0x10'), /--alpha must be a number/);
    optionError(() => parse('-m', 'x', '--alpha', 'Infinity'), /--alpha must be a number/);
    optionError(() => parse('-m', 'x', '--alpha', ''), /--alpha must be a number/);
    optionError(() => parse('-m', 'x', '--dtype', 'f64'), /--dtype must be one of f32, f16, bf16; got 'f64'/);
    optionError(() => parse('-m', 'x', '--layers', '1,,2'), /--layers has an empty item/);
    optionError(() => parse('-m', 'x', '--layers', '1,-2'), /--layers must be at least 0/);
    optionError(() => parse('-m', 'x', '--layer'), /--layer needs a value/);
    optionError(() => parse('-m', 'x', '--layer', '1', '--layer', '2'), /--layer is given more than once/);
    optionError(() => parse('-m', 'x', '--restart=yes'), /--restart is a switch/);
    optionError(() => parse('-m', 'x', '--no-model'), /unknown option --no-model/);
    optionError(() => parse('-m', 'x', '--json=1'), /--json takes no value/);
    optionError(() => parse('-m', 'x', 'a.csv', 'b.csv'), /unexpected argument 'b\.csv'/);
    optionError(() => parse('-m', 'x', 'y'.repeat(500), 'z'.repeat(500)), /unexpected argument 'z{40}…'/);
  });

  it('required positionals and variadic ones', () => {
    const cmd = defineCommand({
      name: 'cmp',
      summary: 's',
      options: {},
      positionals: [
        { name: 'a', description: 'first' },
        { name: 'rest', description: 'others', variadic: true },
      ],
      examples: [],
    });
    optionError(() => parseCommandArgs(cmd, []), /missing argument <a>/);
    assert.deepEqual(parseCommandArgs(cmd, ['1', '2', '3']).positionals, ['1', '2', '3']);
  });

  it('refuses broken declarations', () => {
    assert.throws(() =>
      defineCommand({
        name: 'x',
        summary: '',
        options: { json: { type: 'boolean', description: '' } },
        examples: [],
      }),
    );
    assert.throws(() =>
      defineCommand({
        name: 'x',
        summary: '',
        options: { a: { type: 'string', short: 'h', description: '' } },
        examples: [],
      }),
    );
    assert.throws(() =>
      defineCommand({
        name: 'x',
        summary: '',
        options: { a: { type: 'enum', values: ['p'], default: 'q' as 'p', description: '' } },
        examples: [],
      }),
    );
  });
});

describe('help text', () => {
  const help = formatHelp(demo);

  it('lists every option with its flag, default and the examples', () => {
    for (const key of Object.keys(demo.options)) assert.ok(help.includes(`--${flagName(key)}`), key);
    assert.ok(help.includes('--json'));
    assert.ok(help.includes('-h, --help'));
    assert.match(help, /^Usage: steerguard demo \[options\] \[<prompts>\]$/m);
    assert.match(help, /-m, --model <path> +model file \(required\)/);
    assert.match(help, /--layer <int> +layer index \(0\.\.79; default: 10\)/);
    assert.match(help, /--dtype <f32\|f16\|bf16> +storage type \(default: f32\)/);
    assert.match(help, /--hooks <a,b,\.\.\.> +hook names \(default: resid_post\)/);
    assert.match(help, /--chat +apply the chat template \(default: on; --no-… turns it off\)/);
    assert.match(help, /--max-tokens <int> +tokens to generate \(>= 1; default: 64\)/);
    for (const e of demo.examples) assert.ok(help.includes(`  ${e}\n`));
  });

  it('command list and command splitting', () => {
    const list = formatCommandList([demo]);
    assert.match(list, /demo +exercise every option type/);
    assert.deepEqual(splitCommand([demo], ['demo', '-m', 'x']), { command: demo, rest: ['-m', 'x'] });
    assert.deepEqual(splitCommand([demo], ['--json', 'demo', '-m', 'x']), {
      command: demo,
      rest: ['--json', '-m', 'x'],
    });
    assert.equal(splitCommand([demo], []).command, undefined);
    assert.equal(splitCommand([demo], ['--help']).command, undefined);
    optionError(() => splitCommand([demo], ['dmeo']), /unknown command 'dmeo' \(did you mean demo\?\)/);
  });
});

/** A TextSink that remembers what was written. */
class Sink implements TextSink {
  text = '';
  constructor(
    public isTTY = false,
    public columns?: number,
  ) {}
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
}

describe('output helpers', () => {
  it('human mode: results and text on stdout, info and warnings on stderr', () => {
    const stdout = new Sink();
    const stderr = new Sink();
    const out = new CliOutput({ json: false, stdout, stderr });
    out.info('loading');
    out.warn('careful');
    out.print('a table');
    out.result({ n: 3 }, (v) => `n = ${v.n}`);
    assert.equal(stdout.text, 'a table\nn = 3\n');
    assert.equal(stderr.text, 'loading\nwarning: careful\n');
  });

  it('json mode: exactly one JSON document on stdout', () => {
    const stdout = new Sink();
    const stderr = new Sink();
    const out = new CliOutput({ json: true, stdout, stderr });
    out.info('loading');
    out.print('human only');
    out.result({ scores: new Float32Array([0.5, 1]), big: 2n ** 70n, bad: NaN }, 'ignored');
    assert.deepEqual(JSON.parse(stdout.text), { scores: [0.5, 1], big: '1180591620717411303424', bad: null });
    assert.equal(stderr.text, 'loading\n');
    assert.throws(() => out.result({}));
  });

  it('toJson handles maps, sets and undefined', () => {
    assert.equal(toJson(new Map([['a', 1]])), '{"a":1}');
    assert.equal(toJson(new Set([1, 2])), '[1,2]');
    assert.equal(toJson(undefined), 'null');
  });

  it('errors: message only, exit code 2 for usage and 1 otherwise, stack only when debugging', () => {
    assert.equal(exitCodeFor(new OptionError('x')), 2);
    assert.equal(exitCodeFor(new FormatError('f', 'c', 'bad')), 1);
    assert.equal(exitCodeFor(new Error('boom')), 1);
    assert.equal(exitCodeFor('string thrown'), 1);
    assert.equal(
      formatError(new FormatError('a.csv', 'goal', 'no such column')),
      'error: a.csv: goal: no such column\n',
    );
    const plain = formatError(new Error('boom', { cause: new Error('root') }));
    assert.match(
      plain,
      /^error: boom\n {2}caused by: root\n {2}\(set STEERGUARD_DEBUG=1 for a stack trace\)\n$/,
    );
    assert.doesNotMatch(plain, /at /);
    assert.match(formatError(new Error('boom'), true), /^error: Error: boom\n\s+at /);
  });

  it('reportError writes stderr, and a JSON error document in json mode', () => {
    const stdout = new Sink();
    const stderr = new Sink();
    const code = reportError(
      new OptionError('--layer must be at most 79'),
      new CliOutput({ json: true, stdout, stderr }),
      {},
    );
    assert.equal(code, 2);
    assert.equal(stderr.text, 'error: --layer must be at most 79\n');
    assert.deepEqual(JSON.parse(stdout.text), {
      error: { message: '--layer must be at most 79', type: 'OptionError', exitCode: 2 },
    });
    const h = new Sink();
    reportError(new OptionError('bad'), new CliOutput({ json: false, stdout: new Sink(), stderr: h }), {});
    assert.equal(h.text, 'error: bad\n  (run with --help for the options)\n');
    const d = new Sink();
    reportError(new Error('bug'), new CliOutput({ json: false, stdout: new Sink(), stderr: d }), {
      STEERGUARD_DEBUG: '1',
    });
    assert.match(d.text, /^error: Error: bug\n\s+at /);
  });

  it('runMain sets the exit code and keeps stdout clean', async () => {
    const saved = process.exitCode;
    try {
      const stdout = new Sink();
      const stderr = new Sink();
      const code = await runMain(
        ['x', '--json'],
        (out) => {
          assert.equal(out.json, true);
          throw new FormatError('p.csv', '', 'file is empty');
        },
        { stdout, stderr, env: {} },
      );
      assert.equal(code, 1);
      assert.equal(process.exitCode, 1);
      assert.equal(JSON.parse(stdout.text).error.type, 'FormatError');
      const ok = await runMain([], (out) => out.result({ ok: true }, 'fine'), {
        stdout: new Sink(),
        stderr: new Sink(),
      });
      assert.equal(ok, 0);
    } finally {
      process.exitCode = saved;
    }
    assert.equal(wantsJson(['a', '--', '--json']), false);
  });

  it('formatTable and formatNumber', () => {
    assert.equal(
      formatTable(
        ['layer', 'auroc'],
        [
          [1, 0.51234],
          [12, 0.9],
        ],
        [true, true],
      ),
      'layer   auroc\n-----  ------\n    1  0.5123\n   12     0.9\n',
    );
    assert.equal(formatNumber(1234567.5), '1.235e+6');
    assert.equal(formatNumber(0.00001234), '1.234e-5');
    assert.equal(formatNumber(-2), '-2');
  });
});

describe('progress', () => {
  it('plain lines on a non-terminal, at most one per interval, and a final line', () => {
    let t = 0;
    const s = new Sink(false);
    const p = new Progress({
      total: 100,
      label: 'acts',
      unit: 'prompts',
      stream: s,
      now: () => t,
      plainEveryMs: 10_000,
    });
    for (let k = 0; k < 50; k++) {
      t += 100;
      p.tick();
    }
    const written = (): string => s.text;
    assert.equal(written(), '', 'nothing before the first interval');
    t = 10_000;
    p.update(50);
    assert.equal(written(), 'acts: 50/100 (50.0%) 5.00 prompts/s ETA 10s\n');
    t = 20_000;
    p.update(100);
    p.finish();
    p.update(7);
    assert.equal(written().split('\n').at(-2), 'acts: 100/100 (100.0%) done in 20s (5.00 prompts/s)');
  });

  it('in-place bar on a terminal, throttled, and logs do not garble it', () => {
    let t = 0;
    const s = new Sink(true, 100);
    const p = new Progress({ total: 10, initial: 5, stream: s, now: () => t, redrawMs: 100 });
    t = 1000;
    p.tick();
    t = 1050;
    p.tick();
    assert.equal(s.text.split('\r').length - 1, 1, 'second tick within 100 ms not drawn');
    assert.equal(s.text, `\r[${'#'.repeat(18)}${'-'.repeat(12)}] 6/10 1.00 it/s ETA 4s\x1b[K`);
    p.log('note');
    assert.ok(s.text.includes('\r\x1b[Knote\n\r['));
    p.finish();
    assert.ok(s.text.endsWith('\r\x1b[K7/10 done in 1s (1.90 it/s)\n'));
  });

  it('silent in json mode unless asked; unknown total', () => {
    const s = new Sink(true);
    const p = new Progress({ total: 3, json: true, stream: s });
    p.tick();
    p.finish();
    assert.equal(s.text, '');
    let t = 0;
    const q = new Progress({ json: true, show: true, stream: s, tty: false, now: () => t });
    t = 2000;
    q.tick(4);
    q.finish();
    assert.equal(s.text, '4 done in 2s (2.00 it/s)\n');
  });

  it('formats durations and rates', () => {
    assert.equal(formatDuration(45.2), '45s');
    assert.equal(formatDuration(185), '3m05s');
    assert.equal(formatDuration(3725), '1h02m');
    assert.equal(formatDuration(Infinity), '?');
    assert.equal(formatRate(0.25, 'prompts'), '4.0 s/prompt');
    assert.equal(formatRate(250, 'tok'), '250 tok/s');
  });
});
