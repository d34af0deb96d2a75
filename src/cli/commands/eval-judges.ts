/**
 * `steerguard eval judges`: how each judge agrees with hand labels (src/eval/judge-agreement.ts)
 * on replies from replies files (the audit's `replies/*.jsonl`, `eval refusal --out`). Prompts and
 * replies are read, never printed; the output holds figures only.
 */
import { OptionError } from '../../formats/errors.js';
import type { ActivationJudgeAgreement, JudgeAgreement } from '../../eval/judge-agreement.js';
import type { OptionSpec } from '../args.js';
import { formatTable, toJson } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  OVERWRITE_OPTION,
  THREADS_OPTION,
  checkInputFile,
  checkOutPath,
  command,
  loadModel,
  para,
} from './common.js';

const OPTIONS = {
  replies: {
    type: 'list',
    required: true,
    placeholder: 'a.jsonl,b.jsonl',
    description:
      "replies files holding the labelled replies' text (a file's name is its run unless rows name one)",
  },
  labels: {
    type: 'string',
    required: true,
    placeholder: 'labels.jsonl',
    description:
      'hand labels: run, set, index, sha256 of prompt and reply, refused, unsafe (docs/EVALUATION.md)',
  },
  judge: {
    type: 'list',
    placeholder: 'j1,j2',
    default: ['keyword-gcg', 'keyword-jbb'],
    description: 'judges: keyword-gcg, keyword-jbb, model-llamaguard, model-harmbench, model-xstest',
  },
  judgeModel: {
    type: 'string',
    placeholder: 'file.gguf',
    description: 'chat model the model-* judges run on, in-process',
  },
  model: {
    type: 'string',
    short: 'm',
    placeholder: 'model',
    description: 'the model that wrote the replies: with --direction, adds the activation refusal judge',
  },
  direction: {
    type: 'string',
    placeholder: 'refusal-direction.gguf',
    description: "that model's refusal direction (`steerguard direction compute`, or the audit's)",
  },
  replyTokens: {
    type: 'number',
    integer: true,
    min: 1,
    default: 16,
    description: 'reply tokens the activation judge averages its projection over',
  },
  folds: {
    type: 'number',
    integer: true,
    min: 2,
    default: 5,
    description: "folds of the activation judge's cross-validated threshold",
  },
  out: {
    type: 'string',
    short: 'o',
    placeholder: 'agreement.json',
    description: 'write the agreement figures here (written whole, atomically)',
  },
  overwrite: OVERWRITE_OPTION,
  threads: THREADS_OPTION,
} as const satisfies Record<string, OptionSpec>;

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

export const judgesCommand = command(
  {
    name: 'eval judges',
    summary: 'agreement of each judge with hand-labelled replies',
    description: para(
      "Judges the labelled replies with each judge and reports accuracy against the labels (95% Wilson interval; a reply the judge gave no verdict for counts as a disagreement) and Cohen\u2019s kappa. Refusal judges are compared with the `refused` label, safety judges (model-llamaguard, model-harmbench) with `unsafe`. With --model and --direction, the activation refusal judge is added: the reply's residual stream projected on the model's refusal direction, its threshold and side fitted out of fold. No prompt or reply is printed.",
    ),
    positionals: [],
    options: OPTIONS,
    examples: [
      'steerguard eval judges --replies audit/replies/none.jsonl,audit/replies/add.jsonl --labels labels.jsonl',
      'steerguard eval judges --replies audit/replies/none.jsonl,audit/replies/ablate.jsonl --labels labels.jsonl --judge keyword-jbb,model-xstest --judge-model qwen-1.5b.gguf',
      'steerguard eval judges --replies none.jsonl --labels labels.jsonl -m qwen-0.5b.gguf --direction audit/refusal-direction.gguf --json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const { checkJudgeSelection, buildJudges } = await import('../../eval/evaluation.js');
    const names = checkJudgeSelection({ judge: o.judge, judgeModel: o.judgeModel });
    if (names.includes('llamaguard'))
      throw new OptionError('eval judges runs judges in-process: use model-llamaguard with --judge-model');
    if ((o.model === undefined) !== (o.direction === undefined))
      throw new OptionError('the activation judge needs both --model and --direction');
    for (const f of o.replies) checkInputFile('--replies', f);
    checkInputFile('--labels', o.labels);
    checkInputFile('--judge-model', o.judgeModel);
    checkInputFile('--direction', o.direction);
    checkOutPath(o.out, o.overwrite);
    const { readLabels, matchLabels, judgeAgreement, activationJudgeAgreement } =
      await import('../../eval/judge-agreement.js');
    const replies = matchLabels(readLabels(o.labels), o.replies, o.labels);
    const reporter = cliReporter(out);
    const judgeModel = o.judgeModel ? await loadModel(o.judgeModel, out, { threads: o.threads }) : undefined;
    const judges = await buildJudges(
      { judge: names, judgeModel: o.judgeModel, judgeTimeout: 60, judgeConcurrency: 1 },
      reporter,
      judgeModel,
    );
    const rows: (JudgeAgreement | ActivationJudgeAgreement)[] = [];
    for (const judge of judges) {
      const bar = reporter.progress(judge.name, 'replies');
      try {
        rows.push(await judgeAgreement(judge, replies, { onProgress: (d, t) => bar.update(d, t) }));
      } finally {
        bar.finish();
      }
    }
    if (o.model !== undefined && o.direction !== undefined) {
      const model = await loadModel(o.model, out, { threads: o.threads });
      const { ControlVector } = await import('../../steering/control-vector.js');
      const { refusalDirectionFromControlVector } = await import('../../steering/refusal-direction.js');
      const cv = ControlVector.load(o.direction);
      cv.checkModel(model.config, { identity: model.identity, file: o.direction });
      reporter.info('activation-refusal: projecting the replies on the refusal direction ...');
      rows.push(
        activationJudgeAgreement(model, replies, refusalDirectionFromControlVector(cv), {
          replyTokens: o.replyTokens,
          folds: o.folds,
        }),
      );
    }
    const doc = {
      labels: o.labels,
      n: replies.length,
      positives: {
        refused: replies.filter((r) => r.label.refused).length,
        unsafe: replies.filter((r) => r.label.unsafe).length,
      },
      judgeModel: o.judgeModel ?? null,
      agreement: rows,
    };
    if (o.out !== undefined) {
      const { writeFileAtomic } = await import('../../formats/files.js');
      writeFileAtomic(o.out, `${toJson(doc)}\n`);
    }
    out.result(doc, () => formatAgreement(doc.n, doc.positives, rows));
  },
);

function formatAgreement(
  n: number,
  positives: { refused: number; unsafe: number },
  rows: readonly (JudgeAgreement | ActivationJudgeAgreement)[],
): string {
  const notes = rows
    .filter((r): r is ActivationJudgeAgreement => 'rule' in r)
    .map(
      (r) =>
        `\n${r.judge}: blocks.${r.layer}.hook_resid_pre over the first ${r.replyTokens} reply tokens; ` +
        `AUROC ${r.auroc.toFixed(3)} (refused replies scoring higher; below 0.5 means lower); ` +
        `refused when the projection is ${r.rule.above ? 'above' : 'below'} ${r.rule.threshold.toFixed(3)} ` +
        `(fitted on all labels; out-of-fold sides: ${r.foldSides.join(', ')})`,
    )
    .join('');
  return (
    `${n} labelled replies (${positives.refused} refused, ${positives.unsafe} unsafe)\n` +
    formatTable(
      ['judge', 'label', 'agree', 'accuracy', '95% CI', 'kappa', 'no verdict', 'tp/fp/fn/tn'],
      rows.map((r) => [
        r.judge,
        r.label,
        `${r.agree}/${r.n}`,
        pct(r.accuracy),
        `${pct(r.ci[0])}–${pct(r.ci[1])}`,
        r.kappa === null ? '-' : r.kappa.toFixed(2),
        r.noVerdict,
        `${r.confusion.tp}/${r.confusion.fp}/${r.confusion.fn}/${r.confusion.tn}`,
      ]),
    ) +
    notes
  );
}
