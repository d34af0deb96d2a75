/**
 * Monitors and SCAV hooks on the tiny random llama fixture: threshold calibration, readings per
 * generated token (and where they are read), the SCAV move inside generation, and the `monitor`
 * command.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { type Concept, type ConceptExample, tokenExample, trainConcept } from '../src/concepts/concept.js';
import {
  Monitor,
  type TokenReading,
  calibrate,
  calibrateThreshold,
  promptMonitor,
} from '../src/concepts/monitor.js';
import { type ScavMove, scavHooks, scavLayers } from '../src/concepts/scav.js';
import { LeakageError } from '../src/data/splits.js';
import { blockHook } from '../src/hooks/hooks.js';
import { Model } from '../src/model/model.js';
import { monitorCommand } from '../src/cli/commands/monitor.js';
import { type CliOutput, runMain } from '../src/cli/output.js';
import { FIXTURES } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-monitor-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** `count` distinct token prompts of 4-8 tokens drawn from [lo, hi), deterministic in `seed`. */
function tokenSet(seed: number, count: number, lo: number, hi: number): ConceptExample[] {
  let s = seed * 7919 + 1;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const out = new Map<string, ConceptExample>();
  while (out.size < count) {
    const len = 4 + Math.floor(next() * 5);
    const e = tokenExample(Array.from({ length: len }, () => lo + Math.floor(next() * (hi - lo))));
    out.set(e.id, e);
  }
  return [...out.values()];
}

describe('monitor on tiny llama', () => {
  let model: Model;
  let concept: Concept;
  const cacheDir = path.join(tmp, 'cache');
  const positive = tokenSet(1, 40, 10, 15);
  const negative = tokenSet(2, 40, 150, 155);

  before(async () => {
    model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
    concept = (await trainConcept({ model, positive, negative, cacheDir })).concept;
  });

  it('calibrateThreshold flags exactly the target share when scores are distinct', () => {
    const scores = Array.from({ length: 100 }, (_, i) => (i * 37) % 100);
    for (const fpr of [0, 0.01, 0.05, 0.1, 0.5]) {
      const t = calibrateThreshold(scores, fpr);
      assert.equal(scores.filter((s) => s > t.value).length, Math.floor(fpr * 100));
      assert.equal(t.achievedFpr, Math.floor(fpr * 100) / 100);
    }
    // Ties at the threshold are not flagged, so the rate stays at or under the target.
    const tied = calibrateThreshold([1, 1, 1, 1, 0], 0.5);
    assert.ok(tied.achievedFpr <= 0.5);
  });

  it('calibration on held-out benign prompts hits the target rate there', async () => {
    const benign = tokenSet(21, 50, 150, 155).filter((e) => !concept.fittedIds.includes(e.id));
    const calibrated = await calibrate(concept, model, benign, 0.1, {
      cacheDir,
      setName: 'benign',
      positives: tokenSet(22, 20, 10, 15),
    });
    const t = calibrated.threshold!;
    assert.equal(t.calibrationSet, 'benign');
    assert.equal(t.n, benign.length);
    assert.ok(t.achievedFpr <= 0.1 && t.achievedFpr >= 0.1 - 1 / benign.length, `fpr ${t.achievedFpr}`);
    const readings = await new Monitor(calibrated).check(
      model,
      benign.map((e) => e.prompt),
      { cacheDir },
    );
    assert.equal(readings.filter((r) => r.flagged).length / benign.length, t.achievedFpr);
    assert.ok(t.achievedTpr !== null && t.achievedTpr >= 0.8, `tpr ${t.achievedTpr}`);
    // The calibration prompts now count as used.
    for (const e of benign) assert.ok(calibrated.fittedIds.includes(e.id));
    // Calibrating on training prompts is refused.
    await assert.rejects(
      calibrate(concept, model, negative, 0.1, { cacheDir }),
      (e: Error) => e instanceof LeakageError,
    );
  });

  it('reads every generated token where the model chose it', async () => {
    const monitor = new Monitor(concept, { threshold: 0 });
    const seen: TokenReading[] = [];
    const prompts = [positive[0].prompt, negative[0].prompt];
    const res = await monitor.generate(model, prompts, { maxNewTokens: 5, onToken: (t) => seen.push(t) });
    assert.equal(seen.length, 10);
    res.generations.forEach((g, p) => {
      assert.equal(g.tokens.length, 5);
      const mine = seen.filter((t) => t.prompt === p);
      assert.deepEqual(
        mine.map((t) => t.index),
        [0, 1, 2, 3, 4],
      );
      assert.deepEqual(
        mine.map((t) => t.token),
        g.tokens,
      );
      // Token k is read at position promptLength-1+k of prompt+generation.
      const full = [...g.promptTokens, ...g.tokens];
      const names = monitor.layers.map((l) => blockHook(l, 'hook_resid_post'));
      const run = model.run([{ tokens: full }], { cache: { names, positions: 'all' }, logits: 'none' });
      mine.forEach((t) => {
        const pos = g.promptTokens.length - 1 + t.index;
        monitor.layers.forEach((l, k) => {
          const row = run.cache.get(names[k])![0].subarray(pos * 64, (pos + 1) * 64);
          assert.ok(
            Math.abs(t.layers[k].logit - concept.logit(l, row)) <
              1e-3 * Math.max(1, Math.abs(t.layers[k].logit)),
          );
        });
        assert.equal(t.flagged, t.score > 0);
      });
    });
  });

  it('SCAV hooks make the probe read exactly p0 at the hooked layers during generation', async () => {
    const layers = scavLayers(concept, { p1: 0.5 });
    assert.ok(layers.length > 0);
    const p0 = 0.2;
    const moves: ScavMove[] = [];
    const hooks = scavHooks(concept, { target: 'safe', p0, p1: 0.5, onMove: (m) => moves.push(m) });
    // Readers after the SCAV hooks: what every later computation sees.
    const monitor = new Monitor(concept, { layers });
    const res = await monitor.generate(model, [positive[1].prompt], { maxNewTokens: 4, hooks });
    assert.ok(moves.length > 0);
    for (const t of res.tokens[0]) {
      t.layers.forEach((r) => {
        const moved = moves.some(
          (m) => m.layer === r.layer && m.pos === res.generations[0].promptTokens.length - 1 + t.index,
        );
        if (moved) assert.ok(Math.abs(r.probability - p0) < 1e-5, `layer ${r.layer}: ${r.probability}`);
        else assert.ok(r.probability <= p0 + 1e-6);
      });
    }
    for (const m of moves) {
      assert.ok(m.before > p0);
      assert.ok(Math.abs(m.after - p0) < 1e-5);
    }
    // Only the last prompt token and generated tokens move.
    const promptLength = res.generations[0].promptTokens.length;
    assert.ok(moves.every((m) => m.pos >= promptLength - 1));

    // The defence direction raises a benign prompt to p0.
    const up: ScavMove[] = [];
    const raise = scavHooks(concept, { target: 'malicious', p0: 0.9, p1: 0.5, onMove: (m) => up.push(m) });
    const r2 = await new Monitor(concept, { layers }).check(model, [negative[1].prompt], { hooks: raise });
    assert.ok(up.length > 0);
    r2[0].layers.forEach((r) => assert.ok(r.probability >= 0.9 - 1e-5));
  });

  it('promptMonitor scores one layer as conditional steering expects', () => {
    const m = promptMonitor(concept);
    assert.deepEqual(m.hooks, [blockHook(concept.bestLayer(), 'hook_resid_post')]);
    assert.equal(m.threshold, 0.5);
    const p = m.score([new Float32Array(64)]);
    assert.ok(p >= 0 && p <= 1);
  });

  it('a NaN activation or logit gives an error, never a verdict', () => {
    const m = new Monitor(concept, { layers: [1, 2], threshold: 0 });
    const nan = new Float32Array(64).fill(NaN);
    const ok = new Float32Array(64);
    assert.throws(() => m.fromLogits([0.5, NaN]), /probe logit at layer 2 is NaN, so no verdict/);
    assert.throws(() => m.fromLogits([Infinity, 0]), /layer 1 is Infinity/);
    assert.throws(() => m.read([ok, nan, ok]), /layer 1 is NaN/);
    assert.equal(m.read([ok, ok, ok]).flagged !== null, true);
    const p = promptMonitor(concept, { layer: 1 });
    assert.throws(() => p.score([nan]), /probe logit at layer 1 is NaN/);
  });

  it('the monitor command prints verdicts, ids for file prompts and token scores', async () => {
    const file = path.join(tmp, 'c.safetensors');
    concept.save(file);
    const prompts = path.join(tmp, 'p.jsonl');
    writeFileSync(
      prompts,
      [...positive.slice(0, 2), ...negative.slice(0, 2)]
        .map((e) => JSON.stringify({ ids: (e.prompt as { tokens: number[] }).tokens.join(',') }))
        .join('\n'),
    );
    const argv = [
      '-c',
      file,
      '-m',
      path.join(FIXTURES, 'tiny', 'llama'),
      '--prompts',
      prompts,
      '--column',
      'ids',
      '--token-ids',
      '--threshold',
      '0.5',
      '--generate',
      '3',
      '--cache-dir',
      cacheDir,
    ];
    let stdout = '';
    let stderr = '';
    const code = await runMain(argv, (out: CliOutput) => monitorCommand.run(argv, out), {
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: (s: string) => (stderr += s) },
    });
    process.exitCode = 0;
    assert.equal(code, 0, stderr);
    assert.match(stdout, /#0 [0-9a-f]{16} .*(FLAGGED|ok)/);
    assert.equal((stdout.match(/tokens flagged/g) ?? []).length, 4);
    let json = '';
    const jargv = [...argv, '--json'];
    await runMain(jargv, (out: CliOutput) => monitorCommand.run(jargv, out), {
      stdout: { write: (s: string) => (json += s) },
      stderr: { write: () => true },
    });
    process.exitCode = 0;
    const doc = JSON.parse(json) as {
      prompts: { prompt?: string; tokens: { text?: string }[]; flagged: boolean }[];
    };
    assert.equal(doc.prompts.length, 4);
    assert.ok(
      doc.prompts.every(
        (p) => p.prompt === undefined && p.tokens.length === 3 && p.tokens.every((t) => t.text === undefined),
      ),
    );
    assert.equal(doc.prompts[0].flagged, true);
    assert.equal(doc.prompts[3].flagged, false);
  });
});
