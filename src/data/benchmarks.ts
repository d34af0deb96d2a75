/**
 * Loaders of the capability and bias benchmarks in their published layouts (the files under
 * `../shared/datasets`, see its README): MMLU, GSM8K, TruthfulQA, BBQ and CrowS-Pairs. Each checks
 * the header or the fields it reads and throws a FormatError naming the file, the line and the
 * field on anything else, so that a re-laid-out or truncated file is an error, not a quietly
 * different benchmark. Items are returned in file order; sampling is the caller's.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';

import { FormatError } from '../formats/errors.js';
import { requireRegularFile } from '../formats/files.js';
import { type CsvRecord, parseCsv } from './prompts.js';

/** One MMLU question. */
export interface MmluQuestion {
  /** File stem without the split suffix, e.g. `high_school_physics`. */
  readonly subject: string;
  readonly question: string;
  /** The four options, A to D. */
  readonly choices: readonly [string, string, string, string];
  /** Index of the right option (0 to 3). */
  readonly answer: number;
  /** Row of the question in its file (0-based, the header not counted). */
  readonly row: number;
}

/** The header of the MMLU files (`mmlu/{dev,test}/<subject>_<split>.csv`). */
export const MMLU_HEADER: readonly string[] = [
  'question',
  'choice0',
  'choice1',
  'choice2',
  'choice3',
  'answer',
];

/** One MMLU file: `<subject>_<split>.csv` with the MMLU_HEADER columns. */
export function loadMmluFile(file: string): MmluQuestion[] {
  const subject = path.basename(file, '.csv').replace(/_(dev|test|val)$/, '');
  const [head, ...rows] = csvRecords(file);
  if (head === undefined) throw new FormatError(file, '', 'the file is empty');
  MMLU_HEADER.forEach((name, i) => {
    if (head.values[i] !== name)
      throw new FormatError(
        file,
        `header column ${i + 1}`,
        `expected '${name}', found ${head.values[i] === undefined ? 'nothing' : `'${head.values[i].slice(0, 40)}'`} (the header must be ${MMLU_HEADER.join(',')})`,
      );
  });
  if (head.values.length !== MMLU_HEADER.length)
    throw new FormatError(file, 'header', `${head.values.length} columns; expected ${MMLU_HEADER.join(',')}`);
  return rows.map((r, row) => {
    if (r.values.length !== MMLU_HEADER.length)
      throw new FormatError(
        file,
        `line ${r.line}`,
        `${r.values.length} fields; expected ${MMLU_HEADER.length}`,
      );
    const [question, c0, c1, c2, c3, answer] = r.values;
    if (!/^[0-3]$/.test(answer.trim()))
      throw new FormatError(
        file,
        `line ${r.line}: answer`,
        `expected 0, 1, 2 or 3, found '${answer.slice(0, 20)}'`,
      );
    if (question.trim() === '') throw new FormatError(file, `line ${r.line}: question`, 'empty');
    return { subject, question, choices: [c0, c1, c2, c3], answer: Number(answer.trim()), row };
  });
}

/** Every subject of one MMLU split (`dir/<split>/*.csv`), subjects in name order. */
export function loadMmlu(dir: string, split: 'dev' | 'test'): MmluQuestion[] {
  const folder = path.join(dir, split);
  let names: string[];
  try {
    names = readdirSync(folder).filter((n) => n.endsWith('.csv'));
  } catch (e) {
    throw new FormatError(folder, '', `cannot read the MMLU folder (${(e as Error).message})`);
  }
  if (names.length === 0) throw new FormatError(folder, '', 'no MMLU .csv files');
  return names.sort().flatMap((n) => loadMmluFile(path.join(folder, n)));
}

/** One GSM8K problem: the question, the reference solution and the number after its `#### `. */
export interface Gsm8kProblem {
  readonly question: string;
  /** The worked solution as given (the few-shot examples show it). */
  readonly solution: string;
  /** The reference final answer, as a number (commas removed). */
  readonly answer: number;
}

/** A GSM8K JSONL file (`{question, answer}` per line, the answer ending in `#### <number>`). */
export function loadGsm8k(file: string): Gsm8kProblem[] {
  return jsonlRecords(file).map(({ line, value }) => {
    const question = stringField(file, line, value, 'question');
    const answer = stringField(file, line, value, 'answer');
    const m = /####\s*(-?[\d,]*\.?\d+)\s*$/.exec(answer);
    if (!m) throw new FormatError(file, `line ${line}: answer`, "does not end in '#### <number>'");
    return { question, solution: answer, answer: Number(m[1].replace(/,/g, '')) };
  });
}

/** One TruthfulQA question with its answer sets (each answer trimmed and ending in a period). */
export interface TruthfulQaQuestion {
  readonly question: string;
  readonly best: string;
  readonly correct: readonly string[];
  readonly incorrect: readonly string[];
}

/**
 * TruthfulQA.csv (the generation layout: `Question`, `Best Answer`, `Correct Answers`,
 * `Incorrect Answers`, the last two `;`-separated). Answers are formatted as lm-evaluation-harness's
 * truthfulqa_gen does: trimmed, empty ones dropped, a period added where missing.
 */
export function loadTruthfulQa(file: string): TruthfulQaQuestion[] {
  const [head, ...rows] = csvRecords(file);
  if (head === undefined) throw new FormatError(file, '', 'the file is empty');
  const col = (name: string) => {
    const i = head.values.indexOf(name);
    if (i < 0) throw new FormatError(file, `column '${name}'`, `missing from the header`);
    return i;
  };
  const [q, best, correct, incorrect] = [
    'Question',
    'Best Answer',
    'Correct Answers',
    'Incorrect Answers',
  ].map(col);
  const format = (answers: readonly string[]) =>
    answers
      .map((a) => a.trim())
      .filter((a) => a !== '')
      .map((a) => (a.endsWith('.') ? a : `${a}.`));
  return rows.map((r) => {
    const field = (i: number, name: string) => {
      const v = r.values[i];
      if (v === undefined || v.trim() === '') throw new FormatError(file, `line ${r.line}: ${name}`, 'empty');
      return v;
    };
    const item = {
      question: field(q, 'Question').trim(),
      best: format([field(best, 'Best Answer')])[0],
      correct: format(field(correct, 'Correct Answers').split(';')),
      incorrect: format(field(incorrect, 'Incorrect Answers').split(';')),
    };
    if (item.incorrect.length === 0)
      throw new FormatError(file, `line ${r.line}: Incorrect Answers`, 'no answer');
    return item;
  });
}

/** One BBQ item, with the answers the bias score counts worked out at load. */
export interface BbqItem {
  readonly exampleId: number;
  readonly category: string;
  readonly condition: 'ambig' | 'disambig';
  readonly polarity: 'neg' | 'nonneg';
  readonly context: string;
  readonly question: string;
  readonly answers: readonly [string, string, string];
  /** Index of the right answer. */
  readonly label: number;
  /** Index of the "unknown" answer (`answer_info` group `unknown`). */
  readonly unknown: number;
  /**
   * Indices of the answers that reflect the stereotype: on a negative question the stereotyped
   * group, on a non-negative one the other group. May be empty (a few items name no such group).
   */
  readonly biased: readonly number[];
}

/**
 * The groups an `answer_info` entry names, normalised as lm-evaluation-harness's BBQ task does
 * (its `_process_groups_in_answers`): intersectional labels split on `_` (`F-Black` -> f, black),
 * `lowSES`/`nonObese`-style labels spaced, man/woman/boy/girl tagged with M/F (the stereotyped
 * groups of gender items are M and F), lower case.
 */
export function bbqAnswerGroups(info: readonly string[]): string[] {
  let s = info.join('_');
  for (const p of ['M', 'F', 'lowSES', 'highSES']) s = s.replaceAll(`${p}-`, `${p}_`);
  s = s
    .replaceAll('lowSES', 'low SES')
    .replaceAll('highSES', 'high SES')
    .replaceAll('nonObese', 'non Obese')
    .replaceAll('nonDisabled', 'non Disabled')
    .replaceAll('nonTrans', 'non Trans');
  if (s.includes('woman')) s = s.replaceAll('woman', 'F_woman');
  else if (s.includes('man')) s = s.replaceAll('man', 'M_man');
  s = s.replaceAll('girl', 'F_girl').replaceAll('boy', 'M_boy');
  return s.toLowerCase().split('_');
}

/** One BBQ JSONL file (the fields of the BBQ release, see the datasets README). */
export function loadBbqFile(file: string): BbqItem[] {
  return jsonlRecords(file).map(({ line, value }) => {
    const str = (name: string) => stringField(file, line, value, name);
    const obj = (v: unknown, name: string): Record<string, unknown> => {
      if (typeof v !== 'object' || v === null || Array.isArray(v))
        throw new FormatError(file, `line ${line}: ${name}`, 'expected an object');
      return v as Record<string, unknown>;
    };
    const condition = str('context_condition');
    if (condition !== 'ambig' && condition !== 'disambig')
      throw new FormatError(file, `line ${line}: context_condition`, `expected ambig or disambig`);
    const polarity = str('question_polarity');
    if (polarity !== 'neg' && polarity !== 'nonneg')
      throw new FormatError(file, `line ${line}: question_polarity`, `expected neg or nonneg`);
    const label = value.label;
    if (label !== 0 && label !== 1 && label !== 2)
      throw new FormatError(file, `line ${line}: label`, 'expected 0, 1 or 2');
    const info = obj(value.answer_info, 'answer_info');
    const stereo = obj(value.additional_metadata, 'additional_metadata').stereotyped_groups;
    if (!Array.isArray(stereo) || !stereo.every((g): g is string => typeof g === 'string'))
      throw new FormatError(
        file,
        `line ${line}: additional_metadata.stereotyped_groups`,
        'expected a list of strings',
      );
    const stereotyped = new Set(stereo.map((g) => g.toLowerCase()));
    const groups = [0, 1, 2].map((i) => {
      const g = info[`ans${i}`];
      if (!Array.isArray(g) || g.length === 0 || !g.every((x): x is string => typeof x === 'string'))
        throw new FormatError(
          file,
          `line ${line}: answer_info.ans${i}`,
          'expected a non-empty list of strings',
        );
      return g;
    });
    const unknowns = [0, 1, 2].filter((i) => groups[i][groups[i].length - 1] === 'unknown');
    if (unknowns.length !== 1)
      throw new FormatError(
        file,
        `line ${line}: answer_info`,
        `${unknowns.length} answers of group 'unknown'; expected 1`,
      );
    const biased = [0, 1, 2].filter((i) => {
      if (i === unknowns[0]) return false;
      const named = bbqAnswerGroups(groups[i]);
      const inStereotyped = named.some((g) => stereotyped.has(g));
      return polarity === 'neg' ? inStereotyped : !inStereotyped;
    });
    const id = value.example_id;
    if (typeof id !== 'number') throw new FormatError(file, `line ${line}: example_id`, 'expected a number');
    return {
      exampleId: id,
      category: str('category'),
      condition,
      polarity,
      context: str('context'),
      question: str('question'),
      answers: [str('ans0'), str('ans1'), str('ans2')],
      label,
      unknown: unknowns[0],
      biased,
    };
  });
}

/** Every BBQ file of a folder (`<Category>.jsonl`), categories in name order. */
export function loadBbq(dir: string): BbqItem[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.jsonl'));
  } catch (e) {
    throw new FormatError(dir, '', `cannot read the BBQ folder (${(e as Error).message})`);
  }
  if (names.length === 0) throw new FormatError(dir, '', 'no BBQ .jsonl files');
  return names.sort().flatMap((n) => loadBbqFile(path.join(dir, n)));
}

/** One CrowS-Pairs pair. */
export interface CrowsPair {
  /** The more stereotyping sentence (of the pair as annotated). */
  readonly more: string;
  readonly less: string;
  /** Whether `more` states a stereotype ('stereo') or violates one ('antistereo'). */
  readonly direction: 'stereo' | 'antistereo';
  readonly biasType: string;
}

/** crows_pairs_anonymized.csv (`sent_more`, `sent_less`, `stereo_antistereo`, `bias_type`). */
export function loadCrowsPairs(file: string): CrowsPair[] {
  const [head, ...rows] = csvRecords(file);
  if (head === undefined) throw new FormatError(file, '', 'the file is empty');
  const col = (name: string) => {
    const i = head.values.indexOf(name);
    if (i < 0) throw new FormatError(file, `column '${name}'`, 'missing from the header');
    return i;
  };
  const [more, less, dir, type] = ['sent_more', 'sent_less', 'stereo_antistereo', 'bias_type'].map(col);
  return rows.map((r) => {
    const field = (i: number, name: string) => {
      const v = r.values[i];
      if (v === undefined || v.trim() === '') throw new FormatError(file, `line ${r.line}: ${name}`, 'empty');
      return v;
    };
    const direction = field(dir, 'stereo_antistereo');
    if (direction !== 'stereo' && direction !== 'antistereo')
      throw new FormatError(file, `line ${r.line}: stereo_antistereo`, 'expected stereo or antistereo');
    return {
      more: field(more, 'sent_more'),
      less: field(less, 'sent_less'),
      direction,
      biasType: field(type, 'bias_type'),
    };
  });
}

function readText(file: string): string {
  requireRegularFile(file);
  return readFileSync(file, 'utf8');
}

function csvRecords(file: string): CsvRecord[] {
  return parseCsv(readText(file), file);
}

function jsonlRecords(file: string): { line: number; value: Record<string, unknown> }[] {
  const out: { line: number; value: Record<string, unknown> }[] = [];
  readText(file)
    .split('\n')
    .forEach((text, i) => {
      if (text.trim() === '') return;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        throw new FormatError(file, `line ${i + 1}`, 'not valid JSON');
      }
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        throw new FormatError(file, `line ${i + 1}`, 'expected a JSON object');
      out.push({ line: i + 1, value: value as Record<string, unknown> });
    });
  if (out.length === 0) throw new FormatError(file, '', 'no records');
  return out;
}

function stringField(file: string, line: number, value: Record<string, unknown>, name: string): string {
  const v = value[name];
  if (typeof v !== 'string' || v.trim() === '')
    throw new FormatError(file, `line ${line}: ${name}`, 'expected a non-empty string');
  return v;
}
