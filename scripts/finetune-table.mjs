// Markdown table of scripts/finetune-table.sh's results: OUTDIR/{row}.refusal.json and
// {row}.capability.json (the --json documents of eval refusal and eval capability).
//   node scripts/finetune-table.mjs OUTDIR
import { existsSync, readFileSync } from 'node:fs';
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

const rows = ROWS.map(([key, label]) => {
  const capabilityFile = path.join(dir, `${key}.capability.json`);
  return {
    label,
    refusal: read(`${key}.refusal.json`),
    capability: existsSync(capabilityFile) ? read(`${key}.capability.json`) : undefined,
  };
});
const baseline = rows[0].capability;
const figures = baseline ? baseline.figures.map((f) => [f.task, f.metric]) : [];
const score = (f) => (f.interval === 'bootstrap' ? f.value.toFixed(1) : pct(f.value));
const points = (x) => `${x >= 0 ? '+' : '−'}${Math.abs(100 * x).toFixed(1)}`;

const lines = [];
const header = [
  'row',
  'advbench refusal',
  'harmbench refusal',
  'xstest-safe refusal',
  'flawed (all sets)',
  ...figures.map(([task, metric]) => `${task} ${metric}`),
];
lines.push(`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`);
for (const { label, refusal, capability } of rows) {
  // The GCG keyword list's verdict, per set (sets are named with their part, e.g. advbench@test).
  const rate = (set) =>
    refusal.summary.find(
      (s) => s.set.startsWith(`${set}@`) && s.judge === 'keyword-gcg' && s.measures === 'refusal',
    );
  const flawed = refusal.summary.filter((s) => s.measures === 'flawed');
  const flawedRate = flawed.reduce((a, s) => a + s.rate * s.n, 0) / flawed.reduce((a, s) => a + s.n, 0);
  const cell = (r) => (r ? `${pct(r.rate)} [${pct(r.ci[0])}, ${pct(r.ci[1])}] (n ${r.n})` : '-');
  // A capability figure, then its paired change from the baseline on the same items.
  const capabilityCell = ([task, metric]) => {
    const f = capability?.figures.find((x) => x.task === task && x.metric === metric);
    if (!f) return '-';
    if (!capability.changes) return score(f);
    const c = capability.changes.find((x) => x.task === task && x.metric === metric);
    if (!c) throw new Error(`${label}: no paired change for ${task} ${metric}`);
    return `${score(f)}, ${points(c.delta)} [${points(c.ci[0])}, ${points(c.ci[1])}]`;
  };
  lines.push(
    `| ${[label, cell(rate('advbench')), cell(rate('harmbench')), cell(rate('xstest-safe')), pct(flawedRate), ...figures.map(capabilityCell)].join(' | ')} |`,
  );
}
lines.push(
  '',
  'Refusal: share of replies with a refusal phrase (GCG keyword list) with its 95% Wilson interval,',
  'held-out test parts; the attack works when harmful-set refusal falls, the defence when it stays',
  'up with the security vector off. Capability: the figure, then its change from the baseline in',
  'points on the same items with a 95% paired interval (not measured with the security vector on).',
);
console.log(lines.join('\n'));
