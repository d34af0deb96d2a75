/** The token-level monitor's figures from scored rows, and a run on a tiny model. */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { keywordJudge } from '../src/eval/judges.js';
import {
  type TokenMonitorRow,
  measureTokenMonitor,
  summarizeTokenMonitor,
} from '../src/eval/token-monitor.js';
import { Model } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';

const row = (
  label: 0 | 1,
  refused: boolean | null,
  promptScore: number,
  tokenScores: number[],
): TokenMonitorRow => {
  const hit = tokenScores.findIndex((s) => s > 0);
  return {
    set: label ? 'h' : 'b',
    label,
    refused,
    promptScore,
    tokenScores,
    firstFlag: hit >= 0 ? hit + 1 : null,
  };
};

describe('token monitor', () => {
  test('figures from rows (threshold 0)', () => {
    const rows = [
      row(1, false, 1, [1, 1]), // complied, flagged at the request and at token 1
      row(1, false, -1, [-1, -1, -1, -1, -1, -1, -1, -1, -1, 2]), // flagged at token 10
      row(1, false, -1, [-1, -1]), // never flagged
      row(1, true, 1, [-1, 1]), // refused: not among the complied
      row(1, null, 1, [1]), // judge failed: in neither group
      row(0, null, -1, [-1, -1, 1, -1]), // benign: one alarm in four tokens
      row(0, null, 1, [-1, -1]), // benign request flagged, reply clean
    ];
    const s = summarizeTokenMonitor(rows, 0);
    assert.equal(s.complied.atRequest.n, 3);
    assert.equal(s.complied.atRequest.positives, 1);
    assert.equal(s.complied.inReply.positives, 2);
    assert.equal(s.complied.within8.positives, 1);
    assert.equal(s.complied.within16.positives, 2);
    assert.equal(s.complied.medianTokensToFlag, 5.5);
    assert.deepEqual([s.refusedInReply.positives, s.refusedInReply.n], [1, 1]);
    assert.deepEqual([s.benignReplyAlarms.positives, s.benignReplyAlarms.n], [1, 2]);
    assert.deepEqual([s.benignRequestAlarms.positives, s.benignRequestAlarms.n], [1, 2]);
    assert.deepEqual([s.benignTokenAlarms.positives, s.benignTokenAlarms.n], [1, 6]);
    assert.ok(s.complied.inReply.ci[0] > 0 && s.complied.inReply.ci[1] < 1);
    // reply means: complied 1, -0.7, -1 against benign -0.5, -1: 3 of 6 pairs won, 1 tied
    assert.equal(s.replyAuroc.nHarmful, 3);
    assert.equal(s.replyAuroc.nBenign, 2);
    assert.ok(Math.abs(s.replyAuroc.auroc - 3.5 / 6) < 1e-12, `${s.replyAuroc.auroc}`);
  });

  test('a run reads the request and every generated token that was fed back', async () => {
    const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
    const D = model.config.dModel;
    const seen: number[] = [];
    const res = await measureTokenMonitor(
      model,
      [
        { set: 'h', label: 1, text: '', prompt: { tokens: [1, 2, 3] } },
        { set: 'b', label: 0, text: '', prompt: { tokens: [4, 5, 6, 7, 8] } },
      ],
      {
        hooks: ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'],
        threshold: 0,
        score: (rows) => {
          assert.equal(rows.length, 2);
          assert.ok(rows.every((r) => r.length === D));
          seen.push(rows[0][0]);
          return rows[1][0] - rows[0][0];
        },
      },
      { judge: keywordJudge({ name: 'k', phrases: ['sorry'], caseSensitive: false }), maxNewTokens: 5 },
    );
    // 1 request row + 4 generated tokens fed back (the 5th is never an input), per prompt
    assert.deepEqual(
      res.rows.map((r) => r.tokenScores.length),
      [4, 4],
    );
    assert.equal(seen.length, 10);
    assert.ok(res.rows.every((r) => Number.isFinite(r.promptScore)));
    await assert.rejects(
      measureTokenMonitor(
        model,
        [{ set: 'h', label: 1, text: '', prompt: { tokens: [1] } }],
        {
          hooks: ['blocks.0.hook_resid_post'],
          threshold: 0,
          score: () => 0,
        },
        { judge: keywordJudge({ name: 'k', phrases: ['sorry'], caseSensitive: false }), maxNewTokens: 2 },
      ),
      /needs harmful and benign prompts/,
    );
  });
});
