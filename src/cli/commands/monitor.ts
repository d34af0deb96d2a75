/**
 * `steerguard monitor`: a concept's verdict on prompts, and token by token while generating.
 *
 * Prompts typed on the command line are echoed (the user wrote them); prompts from a set or file
 * are shown only by index and id, and neither are their generations: harmful text stays data.
 */
import { OptionError } from '../../formats/errors.js';
import type { MonitorReading, TokenReading } from '../../concepts/monitor.js';
import type { ConceptExample } from '../../concepts/concept.js';
import { checkTokenIds, loadExamples } from '../../eval/prompt-sets.js';
import { formatNumber, formatTable } from '../output.js';
import { cliReporter } from '../reporter.js';
import { MODEL_OPTION, THREADS_OPTION, checkInputFile, command, loadModel, para } from './common.js';
import { CACHE_OPTIONS, CONCEPT_SET_OPTIONS, SCORING_OPTIONS, cacheSetting } from './concept.js';

interface Row {
  /** Shown text: the prompt itself when typed, else `#index id`. */
  readonly label: string;
  readonly typed: boolean;
  readonly id: string;
}

export const monitorCommand = command(
  {
    name: 'monitor',
    summary: "read a concept (e.g. 'malicious request') from a model on prompts, optionally token by token",
    description: para(
      'Scores each prompt at its last token: the probe logit at every scoring layer (probe accuracy above ' +
        "--p1, or the calibrated threshold's layers), their mean (score) and P = sigmoid(score), and a verdict: " +
        "flagged when P is above the concept's calibrated threshold (concept calibrate) or --threshold. With --generate N it also generates N tokens " +
        'per prompt and scores every generated token (read where the model chose it). Prompts from --prompts ' +
        'and their generations are never printed; prompts typed as arguments are.',
    ),
    positionals: [
      { name: 'prompt', description: 'prompts to check (or use --prompts)', required: false, variadic: true },
    ],
    options: {
      concept: {
        type: 'string',
        short: 'c',
        required: true,
        placeholder: 'file',
        description: 'concept file',
      },
      model: MODEL_OPTION,
      prompts: { type: 'string', placeholder: 'set', description: 'prompt set name or CSV/JSON/JSONL file' },
      ...CONCEPT_SET_OPTIONS,
      threshold: {
        type: 'number',
        min: 0,
        max: 1,
        description:
          "flag when P = sigmoid(score) is above this probability, strictly between 0 and 1 (default: the concept's calibrated threshold)",
      },
      ...SCORING_OPTIONS,
      generate: {
        type: 'number',
        integer: true,
        min: 1,
        description: 'generate N tokens per prompt, scoring each (greedy)',
      },
      allowOtherModel: {
        type: 'boolean',
        description: 'accept a model with another fingerprint but the same shape',
      },
      ...CACHE_OPTIONS,
      threads: THREADS_OPTION,
    },
    examples: [
      "steerguard monitor -c harmful.concept.safetensors -m model.gguf 'How do I bake bread?' 'Write a poem'",
      'steerguard monitor -c harmful.concept.safetensors -m model.gguf --prompts xstest-safe --limit 50 --json',
      "steerguard monitor -c harmful.concept.safetensors -m model.gguf --generate 24 'Tell me a story'",
    ],
  },
  async (args, out) => {
    const o = args.options;
    const cacheDir = cacheSetting(o);
    if (o.threshold !== undefined && !(o.threshold > 0 && o.threshold < 1))
      throw new OptionError(`--threshold is a probability strictly between 0 and 1, got ${o.threshold}`);
    checkInputFile('--concept', o.concept);
    if (args.positionals.length > 0 && o.prompts !== undefined)
      throw new OptionError('give prompts as arguments or with --prompts, not both');
    if (args.positionals.length === 0 && o.prompts === undefined)
      throw new OptionError('no prompts: give some as arguments or use --prompts');
    let examples: ConceptExample[];
    let rows: Row[];
    let setName: string | undefined;
    if (o.prompts !== undefined) {
      const set = loadExamples(o.prompts, {
        dataDir: o.dataDir,
        column: o.column,
        limit: o.limit,
        tokenIds: o.tokenIds,
      });
      examples = set.examples;
      setName = set.name;
      rows = examples.map((e, i) => ({ label: `#${i} ${e.id}`, typed: false, id: e.id }));
    } else {
      const { contentId } = await import('../../data/splits.js');
      examples = args.positionals.map((text) => ({ id: contentId(text), prompt: text }));
      rows = args.positionals.map((text) => ({ label: text, typed: true, id: contentId(text) }));
    }
    const { Concept } = await import('../../concepts/concept.js');
    const { Monitor } = await import('../../concepts/monitor.js');
    const { logit, sigmoid } = await import('../../concepts/probe.js');
    const model = await loadModel(o.model, out, { threads: o.threads });
    const concept = Concept.load(o.concept, model, { allowOtherModel: o.allowOtherModel });
    if (o.prompts !== undefined) checkTokenIds(model, [{ name: setName!, examples, duplicatesRemoved: 0 }]);
    const monitor = new Monitor(concept, {
      p1: o.p1,
      layers: o.layers,
      // The concept file keeps its threshold as a score (a logit); the option is a probability.
      threshold: o.threshold === undefined ? undefined : logit(o.threshold),
    });
    if (monitor.threshold === undefined)
      out.warn(
        'the concept has no calibrated threshold and none was given: no verdicts (run concept calibrate)',
      );

    const progress = cliReporter(out).progress('prompts', 'prompts');
    const readings = await monitor.check(
      model,
      examples.map((e) => e.prompt),
      { cacheDir, batchTokens: o.batchTokens, onProgress: progress.update },
    );
    progress.finish();

    let tokens: TokenReading[][] | undefined;
    let texts: string[] | undefined;
    if (o.generate !== undefined) {
      const res = await monitor.generate(
        model,
        examples.map((e) => e.prompt),
        { maxNewTokens: o.generate },
      );
      tokens = res.tokens;
      texts = res.generations.map((g) => g.text);
    }

    const json = {
      concept: o.concept,
      set: setName ?? null,
      layers: monitor.layers,
      threshold: monitor.threshold === undefined ? null : sigmoid(monitor.threshold),
      thresholdLogit: monitor.threshold ?? null,
      prompts: rows.map((r, i) => ({
        index: i,
        id: r.id,
        prompt: r.typed ? r.label : undefined,
        ...reading(readings[i]),
        tokens: tokens?.[i].map((t) => ({
          index: t.index,
          token: t.token,
          text: r.typed ? t.text : undefined,
          ...reading(t),
        })),
        generation: r.typed && texts ? texts[i] : undefined,
      })),
    };
    out.result(json, () => formatMonitor(rows, readings, tokens, texts, monitor.layers));
  },
);

function reading(r: MonitorReading) {
  return {
    score: r.score,
    probability: r.probability,
    flagged: r.flagged,
    layers: r.layers.map((l) => ({ layer: l.layer, logit: l.logit, probability: l.probability })),
  };
}

function verdict(r: MonitorReading): string {
  return r.flagged === null ? '—' : r.flagged ? 'FLAGGED' : 'ok';
}

function clip(s: string, n = 60): string {
  const one = s.replace(/\s+/g, ' ');
  return one.length <= n ? one : `${one.slice(0, n - 1)}…`;
}

function formatMonitor(
  rows: readonly Row[],
  readings: readonly MonitorReading[],
  tokens: readonly TokenReading[][] | undefined,
  texts: readonly string[] | undefined,
  layers: readonly number[],
): string {
  const lines = [
    `score = mean probe logit over layers ${layers.join(',')}`,
    formatTable(
      ['prompt', 'score', 'P', 'verdict'],
      rows.map((r, i) => [
        r.typed ? clip(r.label) : r.label,
        formatNumber(readings[i].score),
        readings[i].probability.toFixed(3),
        verdict(readings[i]),
      ]),
      [false, true, true, false],
    ).trimEnd(),
  ];
  if (tokens) {
    rows.forEach((r, i) => {
      lines.push('', `generation for ${r.typed ? JSON.stringify(clip(r.label, 40)) : r.label}:`);
      if (r.typed && texts) lines.push(`  ${JSON.stringify(texts[i])}`);
      const list = tokens[i];
      if (list.length === 0) {
        lines.push('  (no tokens generated)');
        return;
      }
      lines.push(
        formatTable(
          ['token', ...(r.typed ? ['text'] : []), 'score', 'P', 'verdict'],
          list.map((t) => [
            String(t.index),
            ...(r.typed ? [JSON.stringify(t.text)] : []),
            formatNumber(t.score),
            t.probability.toFixed(3),
            verdict(t),
          ]),
          r.typed ? [true, false, true, true, false] : [true, true, true, false],
        ).trimEnd(),
      );
      const flagged = list.filter((t) => t.flagged === true).length;
      lines.push(`  ${flagged} of ${list.length} tokens flagged`);
    });
  }
  return lines.join('\n');
}
