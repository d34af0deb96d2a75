/**
 * Hook semantics on tiny random models (llama and gemma3): reading is free of side effects,
 * interventions change exactly what they should, batching does not matter, and all of it holds in
 * KV-cached generation as well as in a single forward pass.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { type Hook, type HookName, blockHook } from '../src/hooks/hooks.js';
import { ablateDirection, addVector, replaceWith } from '../src/hooks/interventions.js';
import { Model } from '../src/model/model.js';
import { FIXTURES, relMaxDiff } from './util/fixtures.js';

function seeded(seed: number): () => number {
  let s = seed;
  return () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
}
function randomVector(n: number, seed: number): Float32Array {
  const r = seeded(seed);
  return Float32Array.from({ length: n }, () => r());
}
function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
const norm = (a: Float32Array) => Math.sqrt(dot(a, a));

for (const name of ['llama', 'gemma3']) {
  const dir = path.join(FIXTURES, 'tiny', name);
  const prompts = (
    JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { prompts: number[][] }
  ).prompts.map((tokens) => ({ tokens }));

  describe(`hooks on tiny ${name}`, async () => {
    const model = await Model.load(dir);
    const L = model.config.nLayers;
    const D = model.config.dModel;
    const resid = Array.from({ length: L }, (_, l) => blockHook(l, 'hook_resid_post'));
    const everything = model.hookNames().filter((n) => n !== 'logits');

    test('reading every hook changes nothing', () => {
      const plain = model.run(prompts, { logits: 'all' });
      const read = model.run(prompts, { logits: 'all', cache: { names: everything, positions: 'all' } });
      plain.logits.forEach((l, i) => assert.deepEqual(read.logits[i], l));
    });

    test('adding a zero vector changes nothing', () => {
      const zero = new Float32Array(D);
      const hooks = everything.filter((n) => n !== 'hook_final_norm').map((n) => addVector(n, zero));
      const plain = model.run(prompts, { logits: 'all', cache: { names: everything, positions: 'all' } });
      const steered = model.run(prompts, {
        hooks,
        logits: 'all',
        cache: { names: everything, positions: 'all' },
      });
      plain.logits.forEach((l, i) => assert.deepEqual(steered.logits[i], l));
      for (const n of everything)
        plain.cache.get(n)!.forEach((a, i) => assert.deepEqual(steered.cache.get(n)![i], a));
    });

    test('adding a vector at block L changes blocks >= L only, by exactly the vector at the hook', () => {
      const v = randomVector(D, 7);
      const at = 1;
      const names: HookName[] = [...resid, blockHook(at, 'hook_resid_pre')];
      const plain = model.run(prompts, { cache: { names, positions: 'all' } });
      const steered = model.run(prompts, {
        hooks: [addVector(blockHook(at, 'hook_resid_pre'), v, { scale: 3 })],
        cache: { names, positions: 'all' },
      });
      prompts.forEach((_, i) => {
        for (let l = 0; l < at; l++)
          assert.deepEqual(steered.cache.get(resid[l])![i], plain.cache.get(resid[l])![i]);
        for (let l = at; l < L; l++)
          assert.notDeepEqual(
            steered.cache.get(resid[l])![i],
            plain.cache.get(resid[l])![i],
            `block ${l} unchanged`,
          );
        const before = plain.cache.get(blockHook(at, 'hook_resid_pre'))![i];
        const after = steered.cache.get(blockHook(at, 'hook_resid_pre'))![i];
        for (let j = 0; j < before.length; j++)
          assert.ok(Math.abs(after[j] - before[j] - 3 * v[j % D]) < 1e-5);
      });
    });

    test('ablating a direction leaves no component along it', () => {
      const d = randomVector(D, 11);
      const unit = d.map((x) => x / norm(d));
      const hooks = model
        .hookNames()
        .filter((n) => /resid_(pre|post)|attn_out|mlp_out/.test(n))
        .map((n) => ablateDirection(n, d));
      const res = model.run(prompts, { hooks, cache: { names: resid, positions: 'all' } });
      for (const n of resid)
        for (const acts of res.cache.get(n)!)
          for (let r = 0; r < acts.length / D; r++) {
            const row = acts.subarray(r * D, (r + 1) * D);
            assert.ok(
              Math.abs(dot(row, unit)) <= 1e-5 * Math.max(1, norm(row)),
              `${n} row ${r} keeps a component`,
            );
          }
    });

    test('batched and one-by-one results are equal', () => {
      const batched = model.run(prompts, { cache: { names: resid, positions: 'last' } });
      prompts.forEach((p, i) => {
        const single = model.run([p], { cache: { names: resid, positions: 'last' } });
        assert.ok(relMaxDiff(single.logits[0], batched.logits[i]) < 1e-6);
        for (const n of resid)
          assert.ok(relMaxDiff(single.cache.get(n)![0], batched.cache.get(n)![i]) < 1e-6);
      });
    });

    test('positions select rows: prompt-only vs generated-only vs explicit', () => {
      const v = randomVector(D, 3);
      const read = blockHook(0, 'hook_resid_post');
      const base = model
        .run([prompts[0]], { cache: { names: [read], positions: 'all' } })
        .cache.get(read)![0];
      const only = model
        .run([prompts[0]], {
          hooks: [addVector(read, v, { positions: [0, -1] })],
          cache: { names: [read], positions: 'all' },
        })
        .cache.get(read)![0];
      const T = base.length / D;
      for (let t = 0; t < T; t++) {
        const moved = t === 0 || t === T - 1;
        const diff = Math.abs(only[t * D] - base[t * D] - (moved ? v[0] : 0));
        assert.ok(diff < 1e-5, `row ${t}`);
      }
      const gen = model
        .run([prompts[0]], {
          hooks: [addVector(read, v, { positions: 'generated' })],
          cache: { names: [read], positions: 'all' },
        })
        .cache.get(read)![0];
      assert.deepEqual(gen, base);
    });

    describe('during KV-cached generation', () => {
      const N = 8;
      const greedy = (hooks: Hook[] = [], ps = prompts.slice(0, 3)) =>
        model.generate(ps, { maxNewTokens: N, stopTokens: [], hooks });

      test('reading hooks and adding zero change no token', async () => {
        const plain = await greedy();
        const seen: number[] = [];
        const reader: Hook = {
          name: blockHook(1, 'hook_resid_post'),
          fn: (_a, ctx) => void seen.push(ctx.step),
        };
        const zero = addVector(blockHook(0, 'hook_resid_post'), new Float32Array(D));
        const hooked = await greedy([reader, zero]);
        assert.deepEqual(
          hooked.map((g) => g.tokens),
          plain.map((g) => g.tokens),
        );
        assert.deepEqual(
          seen,
          [0, 0, 0, ...Array.from({ length: N - 1 }, (_, i) => i + 1)],
          'hook fires in each prompt pass (one per prompt), then once per decoding step',
        );
      });

      test('batched and single generations are equal', async () => {
        const batched = await greedy();
        for (let i = 0; i < 3; i++)
          assert.deepEqual((await greedy([], [prompts[i]]))[0].tokens, batched[i].tokens);
      });

      test('cached steps equal a full forward over prompt + generated tokens, with steering applied', async () => {
        const v = randomVector(D, 5);
        const hooks = [addVector(blockHook(1, 'hook_resid_pre'), v, { scale: 2 })];
        const [g] = await model.generate([prompts[0]], { maxNewTokens: N, stopTokens: [], hooks });
        const full = model.run([{ tokens: [...prompts[0].tokens, ...g.tokens.slice(0, -1)] }], {
          hooks,
          logits: 'all',
        });
        const V = model.config.vocabSize;
        const T0 = prompts[0].tokens.length;
        for (let s = 0; s < N; s++) {
          const row = full.logits[0].subarray((T0 - 1 + s) * V, (T0 + s) * V);
          let best = 0;
          for (let j = 1; j < V; j++) if (row[j] > row[best]) best = j;
          assert.equal(best, g.tokens[s], `step ${s}`);
        }
      });

      test('ablation holds on generated tokens; prompt-only steering leaves generated rows alone', async () => {
        const d = randomVector(D, 13);
        const unit = d.map((x) => x / norm(d));
        const name = blockHook(1, 'hook_resid_post');
        let worst = 0;
        const check: Hook = {
          name,
          fn: (act, ctx) => {
            for (let r = 0; r < ctx.rows; r++) {
              const row = act.subarray(r * D, (r + 1) * D);
              worst = Math.max(worst, Math.abs(dot(row, unit)) / Math.max(1, norm(row)));
            }
          },
        };
        await greedy([ablateDirection(name, d), check]);
        assert.ok(worst <= 1e-5, `component left: ${worst}`);

        // Prompt-only replacement at block 0's output: the prompt rows become zero, while a
        // generated row's block-0 output depends only on block-0 keys and values, which the
        // replacement does not reach. So generated rows must equal an unhooked forward pass over
        // the same tokens, and must not be zero.
        const at = blockHook(0, 'hook_resid_post');
        const promptRows: Float32Array[] = [];
        const generatedRows: Float32Array[] = [];
        const recorder: Hook = {
          name: at,
          fn: (act, ctx) => {
            for (let r = 0; r < ctx.rows; r++)
              (ctx.pos[r] < ctx.promptLength[ctx.seq[r]] ? promptRows : generatedRows).push(
                act.slice(r * D, (r + 1) * D),
              );
          },
        };
        const [g] = await model.generate([prompts[0]], {
          maxNewTokens: N,
          stopTokens: [],
          hooks: [replaceWith(at, new Float32Array(D), { positions: 'prompt' }), recorder],
        });
        const T0 = prompts[0].tokens.length;
        assert.equal(promptRows.length, T0);
        for (const row of promptRows) assert.ok(norm(row) === 0, 'prompt rows are replaced');
        const plain = model.run([{ tokens: [...prompts[0].tokens, ...g.tokens.slice(0, -1)] }], {
          cache: { names: [at], positions: 'all' },
        });
        const all = plain.cache.get(at)![0];
        assert.equal(generatedRows.length, N - 1);
        generatedRows.forEach((row, s) => {
          assert.ok(norm(row) > 0, `generated row ${s} was replaced`);
          const want = all.subarray((T0 + s) * D, (T0 + s + 1) * D);
          assert.ok(relMaxDiff(row, want) < 1e-5, `generated row ${s} differs from the unhooked pass`);
        });
      });

      test('a permanent hook applies until removed', async () => {
        const plain = await greedy();
        const handle = model.addHook(
          addVector(blockHook(0, 'hook_resid_post'), randomVector(D, 17), { scale: 50 }),
        );
        const steered = await greedy();
        handle.remove();
        const again = await greedy();
        assert.notDeepEqual(
          steered.map((g) => g.tokens),
          plain.map((g) => g.tokens),
        );
        assert.deepEqual(
          again.map((g) => g.tokens),
          plain.map((g) => g.tokens),
        );
      });
    });
  });
}
