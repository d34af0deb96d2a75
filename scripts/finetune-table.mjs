// Markdown table of scripts/finetune-table.sh's results: OUTDIR/{row}.refusal.json and
// {row}.capability.json (the --json documents of eval refusal and eval capability).
//   node scripts/finetune-table.mjs OUTDIR
import { readFileSync } from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
if (!dir) throw new Error('usage: node scripts/finetune-table.mjs OUTDIR');
const ROWS = [
  ['baseline', 'baseline (no adapter)'],
  ['attack', 'attack finetune'],
  ['defence-sv-on', 'defence, security vector on'],
  ['defence-sv-off', 'defence, security vector off (as used)'],
];
const read = (file) => JSON.parse(readFileSync(path.join(dir, file), 'utf8'));
const pct = (x) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');

const lines = [];
const header = [
  'row',
  'advbench refusal',
  'harmbench refusal',
  'xstest-safe refusal',
  'flawed (all sets)',
  'MMLU',
  'GSM8K',
];
lines.push(`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`);
for (const [key, label] of ROWS) {
  const refusal = read(`${key}.refusal.json`);
  const capability = read(`${key}.capability.json`);
  // The GCG keyword list's verdict, per set (sets are named with their part, e.g. advbench@test).
  const rate = (set) =>
    refusal.summary.find(
      (s) => s.set.startsWith(`${set}@`) && s.judge === 'keyword-gcg' && s.measures === 'refusal',
    );
  const flawed = refusal.summary.filter((s) => s.measures === 'flawed');
  const flawedRate = flawed.reduce((a, s) => a + s.rate * s.n, 0) / flawed.reduce((a, s) => a + s.n, 0);
  const figure = (task) => capability.figures.find((f) => f.task === task);
  const cell = (r) => (r ? `${pct(r.rate)} (n ${r.n})` : '-');
  const fig = (f) => (f ? `${pct(f.value)} [${pct(f.ci[0])}, ${pct(f.ci[1])}]` : '-');
  lines.push(
    `| ${[label, cell(rate('advbench')), cell(rate('harmbench')), cell(rate('xstest-safe')), pct(flawedRate), fig(figure('mmlu')), fig(figure('gsm8k'))].join(' | ')} |`,
  );
}
lines.push(
  '',
  'Refusal: share of replies with a refusal phrase (GCG keyword list), held-out test parts; the attack',
  'works when harmful-set refusal falls, the defence when it stays up with the security vector off.',
);
console.log(lines.join('\n'));
