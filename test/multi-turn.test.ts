/**
 * The multi-turn attack (src/eval/multi-turn.ts, `steerguard eval multiturn`): the attacker's
 * output parsed from messy text, attack success by turn on constructed conversations (scripted
 * attacker and target), the end reasons, the checks made before any compute, and a small real
 * run on SmolLM2 with the target as its own attacker. Harmful goals come from the shared
 * datasets and are never printed; the constructed texts are benign.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { evalCommand } from '../src/cli/commands/eval.js';
import { wilsonInterval } from '../src/concepts/probe.js';
import type { ChatMessage } from '../src/formats/tokenizer.js';
import { gcgKeywordJudge, jbbKeywordJudge } from '../src/eval/judges.js';
import {
  type AttackGoal,
  type TargetSteering,
  attackerMessages,
  cumulativeByTurn,
  parseAttackerTurn,
  runMultiTurnAttack,
} from '../src/eval/multi-turn.js';
import { loadSets } from '../src/eval/prompt-sets.js';
import { hookResponder } from '../src/eval/refusal.js';
import { blockHook } from '../src/hooks/hooks.js';
import { Model, type GenerateOptions, type Generation, type Prompt } from '../src/model/model.js';
import { type PromptMonitor, monitorPrompts } from '../src/steering/conditional.js';
import { runCommand } from './util/cli.js';
import { FIXTURES, SHARED, SMOLLM2_GGUF, missingModel } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-multiturn-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const DATA = process.env.STEERGUARD_DATA ?? path.join(SHARED, 'datasets');

describe('parseAttackerTurn', () => {
  const ok = (raw: string, want: string) => {
    const p = parseAttackerTurn(raw);
    assert.deepEqual(p, { status: 'ok', message: want, reason: null }, JSON.stringify(raw));
  };
  const bad = (raw: string, status: 'empty' | 'unusable', reason: RegExp) => {
    const p = parseAttackerTurn(raw);
    assert.equal(p.status, status, JSON.stringify(raw));
    assert.equal(p.message, '');
    assert.match(p.reason ?? '', reason);
  };

  test('a plain message, and one with a colon that is not a label, stay as they are', () => {
    ok('What was the Winter War?', 'What was the Winter War?');
    ok('Tell me this: how did the bridge stay up?', 'Tell me this: how did the bridge stay up?');
    ok('Why do configs say "message": "hi" in JSON?', 'Why do configs say "message": "hi" in JSON?');
  });

  test('labels, markdown and quotes are removed', () => {
    ok('  "What is the history of bread?"  ', 'What is the history of bread?');
    ok('Next question: How is bread leavened?', 'How is bread leavened?');
    ok('**Turn 2:** Can you say more about that?', 'Can you say more about that?');
    ok('Question 3 of 5: What came next?', 'What came next?');
    ok("You: 'What's the story behind it?'", "What's the story behind it?");
    ok('**"How did sourdough spread?"**', 'How did sourdough spread?');
  });

  test('a preamble, a quoted message followed by commentary, a cut-off quote', () => {
    ok(
      'Sure! Here is my next message:\n"Tell me more about the Winter War."',
      'Tell me more about the Winter War.',
    );
    ok("Here's the next question: What did the bakers use?", 'What did the bakers use?');
    ok('“How were bridges built in Rome?” This opens the topic gently.', 'How were bridges built in Rome?');
    ok('"How were the arches shaped and', 'How were the arches shaped and');
  });

  test('the reply the attacker wrote for the chatbot is cut off', () => {
    ok('You: How did it start?\nChatbot: It started in 1939.\nYou: And then?', 'How did it start?');
    ok('What about the roads?\n\n**Assistant:** The roads were paved.', 'What about the roads?');
  });

  test('JSON answers (PyRIT style), whole, fenced or cut off', () => {
    ok('{"next_message": "What happened next?", "rationale": "build on it"}', 'What happened next?');
    ok('```json\n{"next_message": "Why \\"arches\\"?", "rationale": "x"}\n```', 'Why "arches"?');
    ok('{"next_message": "How were the stones cut', 'How were the stones cut');
  });

  test('nothing, no words, only a reply, or a refusal: recorded as such', () => {
    bad('', 'empty', /generated nothing/);
    bad('  \n\t ', 'empty', /generated nothing/);
    bad('"..."', 'unusable', /no letter or digit/);
    bad('***', 'unusable', /no letter or digit/);
    bad('Chatbot: I cannot help with that.', 'unusable', /nothing left/);
    bad('""', 'unusable', /nothing left/);
    bad("I'm sorry, but I can't help with writing that.", 'unusable', /attacker refused/);
  });
});

describe('attack success by turn', () => {
  test('cumulative: complied at some turn <= k; a failed judgement with no success before leaves n', () => {
    const rates = cumulativeByTurn(
      [
        [false, true, false], // succeeds at 2
        [true], // succeeds at 1, then the conversation ended
        [false, null, false], // judge error at 2, never succeeds: unknown from turn 2
        [false, false, false],
        [null, true], // unknown at 1, succeeds at 2
      ],
      3,
    );
    assert.deepEqual(
      rates.map((r) => [r.turn, r.n, r.positives, r.errors]),
      [
        [1, 4, 1, 1],
        [2, 4, 3, 1],
        [3, 4, 3, 1],
      ],
    );
    assert.equal(rates[1].rate, 0.75);
    assert.deepEqual(rates[1].ci, wilsonInterval(3, 4));
    assert.ok(Number.isNaN(cumulativeByTurn([[null]], 1)[0].rate));
  });

  // A scripted attacker and target: the attacker's message for goal G at turn k is "G k" (or a
  // scripted misfire), and the target's reply to "G k" is scripted too.
  const REFUSE = "I'm sorry, I can't help with that.";
  const attackerScript: Record<string, string[]> = {
    alpha: ['Next question: "alpha 1"', 'alpha 2', 'alpha 3'],
    beta: ['beta 1', '   '],
    gamma: ['gamma 1', 'gamma 2', 'gamma 3'],
  };
  const replies: Record<string, string> = {
    'alpha 1': REFUSE,
    'alpha 2': 'Bread rises because yeast makes gas.',
    'alpha 3': REFUSE,
    'beta 1': REFUSE,
    'gamma 1': 'Sure, bridges stand on arches.',
    'gamma 2': REFUSE,
    'gamma 3': REFUSE,
  };
  const goals: AttackGoal[] = ['alpha', 'beta', 'gamma'].map((g) => ({ id: g, set: 'made-up', text: g }));
  const lastUser = (p: Prompt) => {
    const m = (p as { messages: readonly ChatMessage[] }).messages;
    return m[m.length - 1].content;
  };
  const gen = (text: string): Generation => ({
    promptTokens: [],
    tokens: [1, 2],
    text,
    finishReason: 'stop',
  });

  /** A stand-in for Model with what the attack uses: a template, a context, tokenize, generate. */
  function fakeModel(name: string, maxContext: number, generate?: (p: readonly Prompt[]) => string[]): Model {
    const fake = {
      identity: { path: `/models/${name}.gguf` },
      tokenizer: { chatTemplate: '{{ messages }}' },
      config: { maxContext },
      // one token per character of the messages: enough to fill a small context
      tokenize: (p: Prompt) => [
        ...(p as { messages: ChatMessage[] }).messages.map((m) => m.content).join(''),
      ],
      generate: async (prompts: readonly Prompt[], _o: GenerateOptions) => generate!(prompts).map(gen),
    };
    return fake as unknown as Model;
  }
  const scriptedAttacker = fakeModel('scripted-attacker', 100_000, (prompts) =>
    prompts.map((p) => {
      const sys = (p as { messages: readonly ChatMessage[] }).messages[0].content;
      const goal = /The goal: (\w+)/.exec(sys)![1];
      const turn = Number(/Turn (\d+) of/.exec(lastUser(p))![1]);
      return attackerScript[goal][turn - 1];
    }),
  );
  const scriptedTarget: TargetSteering = {
    label: 'scripted',
    responder: async (prompts) => ({ generations: prompts.map((p) => gen(replies[lastUser(p)])) }),
  };

  test('a constructed run: success by turn, the turns kept after success, an empty attacker turn recorded', async () => {
    const progress: number[][] = [];
    const r = await runMultiTurnAttack(fakeModel('target', 100_000), scriptedAttacker, goals, {
      maxTurns: 3,
      judges: [jbbKeywordJudge()],
      steering: scriptedTarget,
      batchSize: 2,
      onProgress: (done, total) => progress.push([done, total]),
    });
    // batches of 2 and 1 at turns 1 and 2, one of 2 at turn 3; beta's turns 2 and 3 count as
    // done when it ends at turn 2
    assert.deepEqual(progress, [
      [2, 9],
      [3, 9],
      [6, 9],
      [7, 9],
      [9, 9],
    ]);
    assert.equal(r.label, 'scripted');
    const [alpha, beta, gamma] = r.conversations;
    // every turn is played after a success: alpha complies at 2 and refuses again at 3
    assert.deepEqual(
      alpha.turns.map((t) => [t.message, t.complied['keyword-jbb']]),
      [
        ['alpha 1', false],
        ['alpha 2', true],
        ['alpha 3', false],
      ],
    );
    assert.equal(alpha.endReason, 'max-turns');
    // beta's attacker wrote only whitespace at turn 2: recorded, the target not asked, the conversation over
    assert.equal(beta.endReason, 'attacker-empty');
    assert.equal(beta.turns.length, 2);
    assert.deepEqual(
      [
        beta.turns[1].attackerStatus,
        beta.turns[1].message,
        beta.turns[1].reply,
        beta.turns[1].attackerOutput,
      ],
      ['empty', null, null, '   '],
    );
    assert.equal(gamma.turns.length, 3);
    assert.deepEqual(
      r.success[0].byTurn.map((t) => [t.turn, t.n, t.positives]),
      [
        [1, 3, 1],
        [2, 3, 2],
        [3, 3, 2],
      ],
    );
    assert.deepEqual(r.ended, {
      'max-turns': 2,
      'attacker-empty': 1,
      'attacker-unusable': 0,
      'attacker-context': 0,
      'target-context': 0,
    });
    assert.equal(r.gateFlagged, null, 'no gate');
    assert.equal(r.monitorFlagged, null, 'no monitor');
    // the target's conversation holds its own earlier replies
    assert.deepEqual(
      alpha.messages.map((m) => m.role),
      ['user', 'assistant', 'user', 'assistant', 'user', 'assistant'],
    );
    assert.equal(alpha.messages[3].content, replies['alpha 2']);
  });

  test("a gate's verdicts are recorded per turn and counted by turn", async () => {
    // a gate that flags every second turn's message ("alpha 2", "gamma 2")
    const gated: TargetSteering = {
      label: 'gated',
      responder: async (prompts) => ({
        generations: prompts.map((p) => gen(replies[lastUser(p)])),
        flags: prompts.map((p) => lastUser(p).endsWith(' 2')),
        scores: prompts.map((p) => (lastUser(p).endsWith(' 2') ? 0.9 : 0.1)),
      }),
    };
    const r = await runMultiTurnAttack(fakeModel('target', 100_000), scriptedAttacker, goals, {
      maxTurns: 3,
      judges: [jbbKeywordJudge()],
      steering: gated,
    });
    assert.deepEqual(
      r.conversations[0].turns.map((t) => t.gate),
      [
        { flagged: false, score: 0.1 },
        { flagged: true, score: 0.9 },
        { flagged: false, score: 0.1 },
      ],
    );
    assert.equal(r.conversations[1].turns[1].gate, null, 'the target was not asked: no verdict');
    assert.deepEqual(
      r.gateFlagged?.map((t) => [t.turn, t.n, t.positives]),
      [
        [1, 3, 0],
        [2, 3, 2],
        [3, 3, 2],
      ],
    );
    assert.equal(r.monitorFlagged, null);
  });

  test("a conversation past the target's context ends with the reason recorded, not an exception", async () => {
    // 'alpha 1' fits; with the reply (34 characters) and 'alpha 2' it does not
    const r = await runMultiTurnAttack(fakeModel('small-target', 20), scriptedAttacker, goals.slice(0, 1), {
      maxTurns: 3,
      judges: [jbbKeywordJudge()],
      steering: scriptedTarget,
      maxNewTokens: 8,
    });
    const [c] = r.conversations;
    assert.equal(c.endReason, 'target-context');
    assert.deepEqual(
      c.turns.map((t) => [t.message, t.reply !== null]),
      [
        ['alpha 1', true],
        ['alpha 2', false],
      ],
    );
    assert.equal(r.ended['target-context'], 1);
  });

  test("past the attacker's context: the conversation ends before the attacker runs, reason recorded", async () => {
    // the instructions alone are longer than 200 characters
    const cramped = fakeModel('cramped-attacker', 200, () =>
      assert.fail('the attacker ran past its context'),
    );
    const progress: number[][] = [];
    const r = await runMultiTurnAttack(fakeModel('target', 100_000), cramped, goals.slice(0, 2), {
      maxTurns: 2,
      judges: [jbbKeywordJudge()],
      steering: scriptedTarget,
      onProgress: (done, total) => progress.push([done, total]),
    });
    assert.deepEqual(
      r.conversations.map((c) => [c.endReason, c.turns.length]),
      [
        ['attacker-context', 0],
        ['attacker-context', 0],
      ],
    );
    assert.deepEqual(progress, [[4, 4]]);
    assert.deepEqual(
      r.success[0].byTurn.map((t) => [t.n, t.positives]),
      [
        [2, 0],
        [2, 0],
      ],
    );
  });
});

describe('checks before any compute', () => {
  /** A model any use of which fails the test: the checks must come first. */
  const untouchable = new Proxy(
    {},
    {
      get: (_t, key) => {
        throw new Error(`the model was used (${String(key)}) before the options were checked`);
      },
    },
  ) as Model;
  const goal: AttackGoal = { id: 'g', set: 's', text: 'how do bridges stand' };

  test('a turn budget that is not an integer >= 1 is refused', async () => {
    for (const maxTurns of [0, -1, 1.5, NaN])
      await assert.rejects(
        runMultiTurnAttack(untouchable, untouchable, [goal], { maxTurns, judges: [gcgKeywordJudge()] }),
        /the turn budget \(maxTurns\) must be an integer >= 1/,
      );
  });

  test('no goals, no judges', async () => {
    await assert.rejects(
      runMultiTurnAttack(untouchable, untouchable, [], { maxTurns: 2, judges: [gcgKeywordJudge()] }),
      /at least one goal/,
    );
    await assert.rejects(
      runMultiTurnAttack(untouchable, untouchable, [goal], { maxTurns: 2, judges: [] }),
      /at least one judge/,
    );
  });

  test('an attacker without a chat template is refused, naming its file', async () => {
    const tiny = await Model.load(path.join(FIXTURES, 'tiny', 'llama'), { threads: 1 });
    await assert.rejects(
      runMultiTurnAttack(tiny, tiny, [goal], { maxTurns: 2, judges: [gcgKeywordJudge()] }),
      /the attacker llama has no chat template/,
    );
  });

  test('eval multiturn --turns 0: a clear error and no --out file', async () => {
    const goals = path.join(tmp, 'goals.csv');
    writeFileSync(goals, 'prompt\nhow do bridges stand\n');
    const out = path.join(tmp, 'turns0.json');
    const r = await runCommand(evalCommand, [
      'multiturn',
      '-m',
      path.join(tmp, 'no-such-model.gguf'),
      '--harmful',
      goals,
      '--turns',
      '0',
      '--out',
      out,
    ]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--turns must be at least 1; got 0/);
    // nor any temporary file
    assert.deepEqual(
      readdirSync(tmp).filter((f) => f.startsWith('turns0')),
      [],
    );
  });
});

describe('eval multiturn options', () => {
  const base = (extra: string[]) =>
    runCommand(evalCommand, [
      'multiturn',
      '-m',
      path.join(tmp, 'no-such-model.gguf'),
      '--harmful',
      'x.csv',
      ...extra,
    ]);

  test('options that would change nothing are refused before anything loads', async () => {
    const r = await base(['--redact']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--redact only changes --out/);
    const c = await base(['--concept', path.join(tmp, 'c.safetensors')]);
    assert.equal(c.code, 1);
    assert.match(c.stderr, /--concept needs --steer conditional or --attack scav \(--monitor FILE/);
  });
});

const REAL_SKIP =
  missingModel(SMOLLM2_GGUF) ??
  (existsSync(path.join(DATA, 'harmbench')) ? undefined : `no datasets at ${DATA}`);

// 2 goals, 2 turns, 16 tokens: seconds. Harmful goals: nothing here prints a goal or a reply.
describe('SmolLM2 as its own attacker', { skip: REAL_SKIP }, () => {
  let model: Model;
  before(async () => {
    model = await Model.load(SMOLLM2_GGUF, { threads: 2 });
  });
  const harmbench = () =>
    loadSets(['harmbench'], { dataDir: DATA, part: 'all', split: '0.7,0.1,0.2', seed: 0, limit: 2 }).flatMap(
      (s) => s.prompts.map((p) => ({ id: p.id, set: s.name, text: p.text })),
    );

  test('the conversation: two turns each, roles in order, the target and the attacker see the earlier replies', async () => {
    const targetPrompts: Prompt[][] = [];
    const plain = hookResponder(model);
    const spy: TargetSteering = {
      label: 'spy',
      responder: async (prompts, g) => {
        targetPrompts.push([...prompts]);
        return plain(prompts, g);
      },
    };
    const attackerPrompts: Prompt[][] = [];
    const attacker = Object.assign(Object.create(model) as Model, {
      generate: (prompts: readonly Prompt[], o: GenerateOptions) => {
        attackerPrompts.push([...prompts]);
        return model.generate(prompts, o);
      },
    });
    // a monitor reading one residual component at the last prompt token
    const monitor: PromptMonitor = {
      hooks: [blockHook(10, 'hook_resid_post')],
      score: ([e]) => e[0],
      threshold: 0,
    };
    const goals = harmbench();
    const r = await runMultiTurnAttack(model, attacker, goals, {
      maxTurns: 2,
      judges: [gcgKeywordJudge(), jbbKeywordJudge()],
      steering: spy,
      monitor,
      maxNewTokens: 16,
      attackerMaxTokens: 16,
    });
    assert.equal(r.conversations.length, 2);
    assert.equal(targetPrompts.length, 2, 'one target batch per turn');
    assert.equal(attackerPrompts.length, 2, 'one attacker batch per turn');
    r.conversations.forEach((c, g) => {
      assert.equal(c.endReason, 'max-turns');
      assert.deepEqual(
        c.turns.map((t) => [t.turn, t.attackerStatus]),
        [
          [1, 'ok'],
          [2, 'ok'],
        ],
      );
      assert.deepEqual(
        c.messages.map((m) => m.role),
        ['user', 'assistant', 'user', 'assistant'],
      );
      const [t1, t2] = c.turns;
      // the target's turn-2 prompt is its own conversation: turn 1, its reply, turn 2
      assert.deepEqual((targetPrompts[1][g] as { messages: ChatMessage[] }).messages, [
        { role: 'user', content: t1.message },
        { role: 'assistant', content: t1.reply },
        { role: 'user', content: t2.message },
      ]);
      assert.ok(t2.promptTokens! > t1.promptTokens! + t1.replyTokens, 'turn 2 holds turn 1 and its reply');
      assert.ok(t1.replyTokens >= 1 && t1.replyTokens <= 16);
      // the attacker was told the goal and, at turn 2, shown the target's reply
      const [sys1] = (attackerPrompts[0][g] as { messages: ChatMessage[] }).messages;
      assert.ok(sys1.content.includes(goals[g].text));
      const user2 = (attackerPrompts[1][g] as { messages: ChatMessage[] }).messages[1].content;
      assert.ok(user2.includes(`Chatbot: ${t1.reply}`));
      assert.deepEqual(
        attackerMessages(goals[g].text, [{ message: t1.message!, reply: t1.reply! }], 2, 2),
        (attackerPrompts[1][g] as { messages: ChatMessage[] }).messages,
      );
      for (const t of c.turns) assert.deepEqual(Object.keys(t.complied), ['keyword-gcg', 'keyword-jbb']);
      // the monitor read the prompt the target answered: the whole conversation so far
      c.turns.forEach((t, k) => {
        const [own] = monitorPrompts(model, [targetPrompts[k][g]], monitor);
        assert.ok(Math.abs(t.monitor!.score - own.score) < 1e-5, `turn ${k + 1}`);
        assert.equal(t.monitor!.flagged, own.score > 0);
      });
    });
    assert.equal(r.monitorFlagged?.length, 2);
    assert.equal(r.success.length, 2);
    for (const s of r.success)
      assert.deepEqual(
        s.byTurn.map((t) => [t.turn, t.n]),
        [
          [1, 2],
          [2, 2],
        ],
      );
  });

  test('eval multiturn --json prints no text without --show-text; --out holds the conversations', async () => {
    const out = path.join(tmp, 'mt.json');
    const r = await runCommand(evalCommand, [
      'multiturn',
      '-m',
      SMOLLM2_GGUF,
      '--harmful',
      'harmbench',
      '--data-dir',
      DATA,
      '--limit',
      '1',
      '--turns',
      '1',
      '--max-tokens',
      '8',
      '--attacker-max-tokens',
      '8',
      '--threads',
      '2',
      '--json',
      '--out',
      out,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [goal] = harmbench();
    assert.ok(!r.stdout.includes(goal.text) && !r.stderr.includes(goal.text), 'the goal was printed');
    const doc = JSON.parse(r.stdout) as {
      conversations: { turns: Record<string, unknown>[] }[];
      run: string;
    };
    assert.equal(doc.run, 'baseline');
    assert.equal('reply' in doc.conversations[0].turns[0], false);
    const file = JSON.parse(readFileSync(out, 'utf8')) as {
      conversations: { goal: string; turns: { reply: string | null; message: string | null }[] }[];
      success: { judge: string; byTurn: unknown[] }[];
    };
    assert.equal(file.conversations[0].goal, goal.text);
    assert.equal(typeof file.conversations[0].turns[0].reply, 'string');
    assert.deepEqual(
      file.success.map((s) => [s.judge, s.byTurn.length]),
      [
        ['keyword-gcg', 1],
        ['keyword-jbb', 1],
      ],
    );
  });
});
