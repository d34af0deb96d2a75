/**
 * `steerguard concept token-monitor`: a reading (concept generalize --save-reading) read along the
 * replies it would guard, token by token (eval/token-monitor.ts). Prints counts and rates only.
 */
import { OptionError } from '../../formats/errors.js';
import type { Rate, TokenMonitorResult } from '../../eval/token-monitor.js';
import { formatTable } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  DATA_DIR_OPTION,
  MODEL_OPTION,
  THREADS_OPTION,
  checkInputFile,
  checkOutPath,
  command,
  loadModel,
  para,
} from './common.js';

const SETS = { type: 'list', of: 'string', placeholder: 'set1,set2' } as const;

const TOKEN_MONITOR_SPEC = {
  name: 'concept token-monitor',
  summary:
    'read a monitor along generated replies: tokens to flag a compliant reply, false alarms on safe ones',
  description: para(
    "Answers every prompt greedily (no steering) while the reading's hooks read the residual stream at the " +
      'last prompt token (the request) and at every generated token (the reply so far). A keyword judge decides ' +
      'which replies refused. Reports, for harmful requests whose reply complied, the share the monitor flags ' +
      'at the request and within the reply (any token, within 8 and 16 tokens) with the median tokens to the ' +
      'first flag; for benign requests, the share of replies with a false alarm and of flagged tokens. Use ' +
      'sets the reading was not fitted on (it refuses overlap). Prompts and replies are never printed.',
  ),
  options: {
    model: MODEL_OPTION,
    reading: {
      type: 'string',
      required: true,
      placeholder: 'reading.json',
      description: 'the monitor: a reading file from concept generalize --save-reading',
    },
    harmful: { ...SETS, required: true, description: 'sets of harmful requests' },
    benign: { ...SETS, required: true, description: 'sets of benign requests' },
    dataDir: DATA_DIR_OPTION,
    limit: { type: 'number', integer: true, min: 1, description: 'first N prompts of each set' },
    maxTokens: {
      type: 'number',
      integer: true,
      min: 1,
      default: 32,
      description: 'tokens generated per reply (greedy)',
    },
    threshold: { type: 'number', description: "flag above this standardised score (default: the reading's)" },
    judge: {
      type: 'enum',
      values: ['keyword-gcg', 'keyword-jbb'],
      default: 'keyword-gcg',
      description: 'which replies count as refusals',
    },
    allowOverlap: {
      type: 'boolean',
      description: 'measure even on prompts the reading was fitted on (results are then not results)',
    },
    out: {
      type: 'string',
      placeholder: 'rows.json',
      description: 'also write every score (no text) as JSON',
    },
    overwrite: { type: 'boolean', description: 'replace an existing --out file' },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard concept token-monitor -m qwen.gguf --reading reading.json --harmful harmbench --benign xstest-safe:privacy_public,alpaca:test --limit 40',
  ],
} as const;

export const tokenMonitorCommand = command(TOKEN_MONITOR_SPEC, async (args, out) => {
  const o = args.options;
  checkInputFile('--reading', o.reading);
  checkOutPath(o.out, o.overwrite);
  const { loadPromptSet } = await import('../../data/datasets.js');
  const { checkLeakage } = await import('../../data/splits.js');
  const load = (names: readonly string[], label: 0 | 1) =>
    names.map((n) => {
      const set = loadPromptSet(n, { dataDir: o.dataDir, limit: o.limit });
      if (set.prompts.length === 0) throw new OptionError(`prompt set ${set.name} is empty`);
      return { set, label };
    });
  const sets = [...load(o.harmful, 1), ...load(o.benign, 0)];
  const model = await loadModel(o.model, out, { threads: o.threads });
  const { loadReading, readingMonitor } = await import('../../concepts/reading-file.js');
  const reading = loadReading(o.reading, model);
  const items = sets.flatMap(({ set }) => set.prompts);
  const overlap = checkLeakage(reading.fittedIds, items, { allow: o.allowOverlap, what: o.reading });
  if (overlap.length > 0) out.warn(`${overlap.length} prompts were used to fit ${o.reading}`);
  const prompts = sets.flatMap(({ set, label }) =>
    set.prompts.map((p) => ({
      set: set.name,
      label,
      text: p.text,
      prompt:
        reading.template === 'chat' ? { messages: [{ role: 'user' as const, content: p.text }] } : p.text,
    })),
  );
  const { measureTokenMonitor } = await import('../../eval/token-monitor.js');
  const { makeJudge } = await import('../../eval/judges.js');
  const bar = cliReporter(out).progress('replies', 'prompts');
  const result = await measureTokenMonitor(
    model,
    prompts,
    readingMonitor(reading.reading, { threshold: o.threshold }),
    {
      judge: makeJudge(o.judge),
      maxNewTokens: o.maxTokens,
      onProgress: (done, total) => bar.update(done, total),
    },
  );
  bar.finish();
  if (o.out !== undefined) {
    const { writeFileAtomic } = await import('../../formats/files.js');
    writeFileAtomic(o.out, `${JSON.stringify(result)}\n`);
  }
  out.result(
    {
      reading: o.reading,
      threshold: result.threshold,
      maxNewTokens: result.maxNewTokens,
      ...result.summary,
      rows: undefined,
    },
    () => formatTokenMonitor(result),
  );
});

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;
const cell = (r: Rate): string[] => [
  `${r.positives}/${r.n}`,
  Number.isNaN(r.rate) ? 'n/a' : pct(r.rate),
  `${pct(r.ci[0])}–${pct(r.ci[1])}`,
];

function formatTokenMonitor(r: TokenMonitorResult): string {
  const s = r.summary;
  const rows: [string, Rate][] = [
    ['harmful, reply complied: flagged at the request', s.complied.atRequest],
    ['harmful, reply complied: flagged in the reply', s.complied.inReply],
    ['harmful, reply complied: flagged within 8 tokens', s.complied.within8],
    ['harmful, reply complied: flagged within 16 tokens', s.complied.within16],
    ['harmful, reply refused: flagged in the reply', s.refusedInReply],
    ['benign: request flagged (false positive)', s.benignRequestAlarms],
    ['benign: reply with a false alarm', s.benignReplyAlarms],
    ['benign: generated tokens flagged', s.benignTokenAlarms],
  ];
  const table = formatTable(
    ['', 'count', 'rate', '95% CI'],
    rows.map(([what, rate]) => [what, ...cell(rate)]),
    [false, true, true, true],
  );
  const med = s.complied.medianTokensToFlag;
  const a = s.replyAuroc;
  return (
    `threshold ${r.threshold.toFixed(3)} (standardised score), ${r.maxNewTokens} tokens per reply\n` +
    table.trimEnd() +
    `\nmedian tokens to the first flag (compliant replies flagged in the reply): ${Number.isNaN(med) ? 'n/a' : med}\n` +
    `mean score over the reply, compliant harmful (${a.nHarmful}) vs benign (${a.nBenign}) replies: AUROC ` +
    `${Number.isNaN(a.auroc) ? 'n/a' : `${a.auroc.toFixed(3)} (${a.ci[0].toFixed(3)}–${a.ci[1].toFixed(3)})`}\n`
  );
}
