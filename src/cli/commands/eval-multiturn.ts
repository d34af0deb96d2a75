/**
 * `steerguard eval multiturn`: a Crescendo-style multi-turn attack on the target, the attacker
 * being another chat model or the target itself, with or without steering (the gated defence
 * included), and attack success by turn. The work is done by src/eval/multi-turn.ts; this file
 * holds the options and the output; `eval` (eval.ts) dispatches here.
 *
 * Goals, attacker turns and replies are harmful text: they are printed (and put in --json) only
 * with --show-text; --out holds them unless --redact.
 */
import path from 'node:path';

import { checkLeakage } from '../../data/splits.js';
import { OptionError, SteerguardError } from '../../formats/errors.js';
import type { Model } from '../../model/model.js';
import type { PromptMonitor } from '../../steering/conditional.js';
import type { Conversation, MultiTurnResult, TurnRate } from '../../eval/multi-turn.js';
import { formatTable, toJson } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  MODEL_OPTION,
  OVERWRITE_OPTION,
  THREADS_OPTION,
  checkInputFile,
  checkOutPath,
  command,
  loadModel,
  para,
  withInterrupt,
} from './common.js';
import { GENERATION_OPTIONS, JUDGE_OPTIONS, SET_OPTIONS } from './eval.js';
import { STEERING_OPTIONS, checkSteeringOptions } from './steering-options.js';

const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');

/** One row per measure and turn: attack success per judge, then the gate's and monitor's flags. */
export function formatByTurn(result: MultiTurnResult): string {
  const rows: (string | number)[][] = [];
  const add = (measure: string, rates: readonly TurnRate[]) => {
    for (const r of rates)
      rows.push([
        measure,
        r.turn,
        r.n,
        r.positives,
        pct(r.rate),
        `${pct(r.ci[0])}–${pct(r.ci[1])}`,
        r.errors,
      ]);
  };
  for (const s of result.success) add(`success (${s.judge})`, s.byTurn);
  if (result.gateFlagged) add('gate flagged', result.gateFlagged);
  if (result.monitorFlagged) add('monitor flagged', result.monitorFlagged);
  return formatTable(['measure', 'by turn', 'n', 'goals', 'rate', '95% CI', 'errors'], rows, [
    false,
    true,
    true,
    true,
    true,
    true,
    true,
  ]);
}

/** The conversations as text (--show-text only: they hold the goals and the replies). */
function formatConversations(conversations: readonly Conversation[]): string {
  const lines: string[] = [];
  for (const c of conversations) {
    lines.push(`goal ${c.index + 1} (${c.goal.set}, ended: ${c.endReason}): ${c.goal.text}`);
    for (const t of c.turns) {
      lines.push(
        `  turn ${t.turn} attacker${t.attackerStatus === 'ok' ? '' : ` (${t.attackerStatus}: ${t.attackerReason})`}: ` +
          JSON.stringify(t.message ?? t.attackerOutput),
      );
      if (t.reply !== null) {
        const verdicts = Object.entries(t.complied)
          .map(([j, v]) => `${j}: ${v === null ? 'error' : v ? 'complied' : 'refused'}`)
          .join(', ');
        const gate = t.gate ? `, gate ${t.gate.flagged ? 'flagged' : 'not flagged'}` : '';
        lines.push(`  turn ${t.turn} target (${verdicts}${gate}): ${JSON.stringify(t.reply)}`);
      }
    }
  }
  return lines.join('\n');
}

export const multiturnCommand = command(
  {
    name: 'eval multiturn',
    summary: 'Crescendo-style multi-turn attack success by turn, with or without steering',
    description: para(
      'For each harmful goal of --harmful, an attacker (--attacker, a chat GGUF; default the target itself) ' +
        'leads a conversation with the target for up to --turns turns: it is told the goal and the Crescendo ' +
        "method (open innocuously, escalate a little each turn, build on the target's own answers) and writes " +
        'each next user message from the conversation so far; the target answers the whole conversation with ' +
        'its chat template, under the steering options of eval refusal (a --steer conditional gate reads the ' +
        'conversation so far before each reply). Each reply is judged by --judge; attack success by turn k is ' +
        'the share of goals whose target complied at some turn <= k (keyword judges: no refusal phrase; ' +
        'llamaguard: an unsafe reply), with a 95% Wilson interval, and with a gate or --monitor the share of ' +
        'conversations flagged by turn k. An attacker output with no usable message, or a conversation past ' +
        "a model's context, ends that conversation with the reason recorded. Goals, attacker turns and " +
        'replies are printed only with --show-text; --out holds them (not with --redact).',
    ),
    options: {
      model: MODEL_OPTION,
      attacker: {
        type: 'string',
        placeholder: 'attacker.gguf',
        description: 'attacker model, any chat model steerguard loads (default: the target itself)',
      },
      harmful: {
        type: 'list',
        required: true,
        placeholder: 's1,s2',
        description:
          'harmful goal sets: short names (harmbench, advbench:test, ...) or files (file.csv#column)',
      },
      turns: {
        type: 'number',
        integer: true,
        min: 1,
        default: 5,
        description: 'turn budget per goal (attacker message and target reply)',
      },
      column: SET_OPTIONS.column,
      dataDir: SET_OPTIONS.dataDir,
      part: SET_OPTIONS.part,
      split: SET_OPTIONS.split,
      seed: SET_OPTIONS.seed,
      limit: { ...SET_OPTIONS.limit, description: 'first N goals of each set (after --part)' },
      system: { ...SET_OPTIONS.system, description: "system message of the target's conversation" },
      allowOverlap: SET_OPTIONS.allowOverlap,
      ...GENERATION_OPTIONS,
      attackerMaxTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: 64,
        description: 'tokens the attacker generates per turn at most',
      },
      attackerTemperature: {
        type: 'number',
        min: 0,
        default: 0,
        description: 'attacker sampling temperature (0: greedy)',
      },
      attackerSeed: {
        type: 'number',
        integer: true,
        min: 0,
        default: 0,
        description: 'seed of attacker sampling',
      },
      monitor: {
        type: 'string',
        placeholder: 'file',
        description: "concept file: record its monitor's verdict on each conversation before each reply",
      },
      ...JUDGE_OPTIONS,
      ...STEERING_OPTIONS,
      out: {
        type: 'string',
        short: 'o',
        placeholder: 'file.json',
        description: 'write the summary and every conversation here (written whole, atomically)',
      },
      redact: { type: 'boolean', description: 'leave goal, turn and reply text out of --out' },
      overwrite: OVERWRITE_OPTION,
      showText: {
        type: 'boolean',
        description:
          'print the conversations (goals, attacker turns, replies: harmful text) and put them in --json',
      },
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard eval multiturn -m smollm2.gguf --harmful harmbench --limit 5 --turns 3',
      'steerguard eval multiturn -m qwen.gguf --attacker smollm2.gguf --harmful harmbench:test --turns 5 --out mt.json',
      'steerguard eval multiturn -m qwen.gguf --harmful harmbench --turns 5 --steer conditional --concept harmful.concept.safetensors',
      'steerguard eval multiturn -m qwen.gguf --harmful harmbench --turns 5 --steer conditional --reading reading.json --vector refusal.gguf --benign-below 0 --benign-steer ablate --json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    if (o.redact && o.out === undefined)
      throw new OptionError('--redact only changes --out, which is not given');
    // eval refusal reads --concept only for a gate or an attack; here a monitor alone is --monitor
    if (o.concept !== undefined && o.steer !== 'conditional' && o.attack !== 'scav')
      throw new OptionError(
        "--concept needs --steer conditional or --attack scav (--monitor FILE records a concept's verdicts)",
      );
    checkSteeringOptions(o);
    checkOutPath(o.out, o.overwrite);
    checkInputFile('--attacker', o.attacker);
    checkInputFile('--monitor', o.monitor);
    const { loadSets } = await import('../../eval/prompt-sets.js');
    const sets = loadSets(o.harmful, o);
    for (const s of sets)
      if (s.harmful === false)
        out.warn(
          `${s.name} is a benign set: success on it is no attack success (it is what a model should do)`,
        );
    const goals = sets.flatMap((s) => s.prompts.map((p) => ({ id: p.id, set: s.name, text: p.text })));
    const { buildJudges, checkJudgeSelection } = await import('../../eval/evaluation.js');
    const reporter = cliReporter(out);
    checkJudgeSelection(o);
    checkInputFile('--judge-model', o.judgeModel);
    const judgeModel = o.judgeModel ? await loadModel(o.judgeModel, out, { threads: o.threads }) : undefined;
    const judges = await buildJudges(o, reporter, judgeModel);

    const model = await loadModel(o.model, out, { threads: o.threads });
    const sameModel = o.attacker === undefined || path.resolve(o.attacker) === path.resolve(o.model);
    const attacker: Model = sameModel ? model : await loadModel(o.attacker!, out, { threads: o.threads });
    const { buildSteering } = await import('../../eval/steering.js');
    const steering = await buildSteering(model, o);
    const overlap = checkLeakage(steering.fittedIds, goals, {
      allow: o.allowOverlap,
      what: 'the steering artefact',
    });
    if (overlap.length > 0) out.warn(`${overlap.length} goals were used to fit the steering artefact`);
    let monitor: PromptMonitor | undefined;
    if (o.monitor !== undefined) {
      const { Concept } = await import('../../concepts/concept.js');
      const { promptMonitor } = await import('../../concepts/monitor.js');
      monitor = promptMonitor(await Concept.load(o.monitor, model));
    }

    const { conversationRecord, runMultiTurnAttack } = await import('../../eval/multi-turn.js');
    const attackerName = path.basename(attacker.identity.path);
    out.info(
      `${steering.label}: ${goals.length} goals, up to ${o.turns} turns, attacker ${sameModel ? 'the target itself' : attackerName}`,
    );
    const bar = reporter.progress(`${steering.label}: multi-turn`, 'turns');
    let result: MultiTurnResult;
    try {
      result = await withInterrupt((signal) =>
        runMultiTurnAttack(model, attacker, goals, {
          maxTurns: o.turns,
          judges,
          steering,
          monitor,
          system: o.system,
          maxNewTokens: o.maxTokens,
          attackerMaxTokens: o.attackerMaxTokens,
          attackerTemperature: o.attackerTemperature,
          seed: o.attackerSeed,
          repetitionPenalty: o.repetitionPenalty,
          batchSize: o.batch,
          onProgress: (done, total) => bar.update(done, total),
          signal,
        }),
      );
    } finally {
      bar.finish();
    }

    const summary = {
      run: result.label,
      target: path.basename(model.identity.path),
      attacker: attackerName,
      sets: sets.map((s) => ({ name: s.name, goals: s.prompts.length })),
      maxTurns: result.maxTurns,
      success: result.success,
      gateFlagged: result.gateFlagged,
      monitorFlagged: result.monitorFlagged,
      ended: result.ended,
      judgeFailures: result.judgeFailures,
      seconds: result.seconds,
    };
    if (o.out !== undefined) {
      const { writeFileAtomic } = await import('../../formats/files.js');
      const conversations = result.conversations.map((c) => conversationRecord(c, !o.redact));
      writeFileAtomic(o.out, `${toJson({ ...summary, conversations })}\n`);
      out.info(`wrote ${conversations.length} conversations to ${o.out}`);
    }
    out.result(
      {
        ...summary,
        out: o.out ?? null,
        conversations: result.conversations.map((c) => conversationRecord(c, o.showText)),
      },
      () => report(result, o.showText),
    );
    if (result.judgeFailures.length > 0)
      throw new SteerguardError(
        result.judgeFailures
          .map((f) => `judge ${f.judge} failed on every reply of turn ${f.turn}: ${f.message}`)
          .join('; ') + (o.out ? ` (the conversations are in ${o.out})` : ''),
      );
  },
);

function report(result: MultiTurnResult, showText: boolean): string {
  const ended = Object.entries(result.ended)
    .filter(([, n]) => n > 0)
    .map(([why, n]) => `${why} ${n}`)
    .join(', ');
  return [
    `${result.label}: ${result.conversations.length} goals, ${result.maxTurns} turns; conversations ended: ${ended}`,
    formatByTurn(result).trimEnd(),
    ...(showText ? ['', formatConversations(result.conversations)] : []),
    `${result.seconds.toFixed(1)}s`,
  ].join('\n');
}
