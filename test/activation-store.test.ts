import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import {
  ActivationRun,
  checkWritable,
  descriptorDifferences,
  parseActivationMetadata,
  partialDir,
  type ActivationRunDescriptor,
} from '../src/activations/store.js';
import { promptId, promptListHash } from '../src/data/prompts.js';
import { OptionError, SteerguardError } from '../src/formats/errors.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  readSafetensorsTensorI32,
} from '../src/formats/safetensors.js';

const root = mkdtempSync(join(tmpdir(), 'sg-store-'));
after(() => rmSync(root, { recursive: true, force: true }));
let seq = 0;
const newDir = (): string => {
  const d = join(root, `case-${seq++}`);
  mkdirSync(d);
  return d;
};

const N = 10;
const texts = Array.from({ length: N }, (_, i) => `prompt number ${i}`);
const ids = texts.map(promptId);
const HOOKS = ['blocks.0.hook_resid_post', 'blocks.1.hook_mlp_out'];
const DIMS: Record<string, number> = { 'blocks.0.hook_resid_post': 8, 'blocks.1.hook_mlp_out': 6 };

function descriptor(over: Partial<ActivationRunDescriptor> = {}): ActivationRunDescriptor {
  return {
    model: { name: 'tiny-test', sha256: 'ab'.repeat(32) },
    hooks: HOOKS,
    positions: 'last',
    rowsPerPrompt: 1,
    template: 'chatml',
    promptFile: 'prompts.csv',
    column: 'prompt',
    promptsHash: promptListHash(texts),
    nPrompts: N,
    dtype: 'F32',
    ...over,
  };
}

/** Token count of prompt i in all-token runs (varied, one prompt with none). */
const tokensOf = (i: number): number => (i === 3 ? 0 : 2 + (i % 4));

/** Deterministic activation value: prompt i, row r within the prompt, hook h, feature k. */
const value = (i: number, r: number, h: number, k: number): number => i * 100 + r * 10 + h + k / 16;

function chunkData(d: ActivationRunDescriptor, start: number, count: number) {
  const activations: Record<string, Float32Array> = {};
  const tokenCounts: number[] = [];
  d.hooks.forEach((hook, h) => {
    const rowsOf = (i: number): number => (d.rowsPerPrompt === 'all' ? tokensOf(i) : d.rowsPerPrompt);
    const vals: number[] = [];
    for (let i = start; i < start + count; i++) {
      for (let r = 0; r < rowsOf(i); r++) for (let k = 0; k < DIMS[hook]; k++) vals.push(value(i, r, h, k));
    }
    activations[hook] = Float32Array.from(vals);
  });
  for (let i = start; i < start + count; i++) tokenCounts.push(tokensOf(i));
  return d.rowsPerPrompt === 'all'
    ? { start, count, activations, tokenCounts }
    : { start, count, activations };
}

async function runChunks(
  out: string,
  d: ActivationRunDescriptor,
  sizes: number[],
  finish = true,
  options: { restart?: boolean; overwrite?: boolean } = {},
): Promise<ActivationRun> {
  const run = await ActivationRun.open(out, d, { promptIds: ids, ...options });
  let start = run.completed;
  for (const size of sizes) {
    await run.writeChunk(chunkData(d, start, size));
    start += size;
  }
  if (finish) await run.finish();
  return run;
}

function rejectsWith(
  p: Promise<unknown>,
  type: new (...a: never[]) => Error,
  pattern: RegExp,
): Promise<void> {
  return assert.rejects(p, (err: unknown) => err instanceof type && pattern.test(err.message));
}

describe('ActivationRun', () => {
  it('an interrupted and resumed run gives the same file as an uninterrupted one', async () => {
    const dir = newDir();
    const d = descriptor();
    const whole = join(dir, 'whole.safetensors');
    await runChunks(whole, d, [4, 4, 2]);

    const out = join(dir, 'resumed.safetensors');
    const first = await runChunks(out, d, [4, 4], false);
    assert.equal(first.completed, 8);
    assert.equal(existsSync(out), false, 'nothing at the output path before the end');
    assert.ok(existsSync(partialDir(out)));
    // Interruption: the first run object is simply never used again.
    const second = await ActivationRun.open(out, d, { promptIds: ids });
    assert.equal(second.resumed, true);
    assert.equal(second.completed, 8);
    assert.deepEqual(second.dims, DIMS);
    await second.writeChunk(chunkData(d, 8, 2));
    const result = await second.finish();
    assert.equal(result.rows, N);
    assert.deepEqual(result.dims, DIMS);
    assert.ok(readFileSync(out).equals(readFileSync(whole)), 'byte-identical files');
    assert.equal(existsSync(partialDir(out)), false, 'work directory removed');
    assert.deepEqual(readdirSync(dir).sort(), ['resumed.safetensors', 'whole.safetensors']);
    await rejectsWith(first.writeChunk(chunkData(d, 8, 2)), SteerguardError, /already finished|took over/);
  });

  it('the final file is readable: shapes, values, metadata', async () => {
    const dir = newDir();
    const d = descriptor();
    const out = join(dir, 'a.safetensors');
    await runChunks(out, d, [3, 7]);
    const file = readSafetensorsHeader(out);
    assert.deepEqual([...file.tensors.keys()].sort(), [...HOOKS].sort());
    HOOKS.forEach((hook, h) => {
      const info = file.tensors.get(hook);
      assert.ok(info);
      assert.equal(info.dtype, 'F32');
      assert.deepEqual(info.shape, [N, DIMS[hook]]);
      assert.equal(info.begin % 8, 0);
      const data = readSafetensorsTensorF32(info);
      for (let i = 0; i < N; i++)
        for (let k = 0; k < DIMS[hook]; k++) assert.equal(data[i * DIMS[hook] + k], value(i, 0, h, k));
    });
    const meta = parseActivationMetadata(file.metadata);
    assert.deepEqual(meta.descriptor, d);
    assert.deepEqual(meta.promptIds, ids);
    assert.deepEqual(meta.dims, DIMS);
    assert.equal(file.metadata.positions, 'last');
    assert.equal(file.metadata.hooks, JSON.stringify(HOOKS));
    assert.equal(file.metadata.template, 'chatml');
    assert.equal(file.metadata.promptsHash, d.promptsHash);
    assert.throws(() => parseActivationMetadata({}), SteerguardError);
  });

  it('several rows per prompt give [N, P, D]', async () => {
    const dir = newDir();
    const d = descriptor({ rowsPerPrompt: 3, positions: '-3,-2,-1' });
    const out = join(dir, 'p.safetensors');
    await runChunks(out, d, [5, 5]);
    const info = readSafetensorsHeader(out).tensors.get(HOOKS[1]);
    assert.ok(info);
    assert.deepEqual(info.shape, [N, 3, 6]);
    assert.equal(readSafetensorsTensorF32(info)[(4 * 3 + 2) * 6 + 5], value(4, 2, 1, 5));
  });

  it('all-token runs pack rows and write offsets; resume is identical; F16 storage', async () => {
    const dir = newDir();
    const d = descriptor({ rowsPerPrompt: 'all', positions: 'all', dtype: 'F16' });
    const whole = join(dir, 'whole.safetensors');
    await runChunks(whole, d, [N]);
    const out = join(dir, 'resumed.safetensors');
    await runChunks(out, d, [2, 1, 3], false);
    await runChunks(out, d, [4]);
    assert.ok(readFileSync(out).equals(readFileSync(whole)));

    const file = readSafetensorsHeader(out);
    const offsetsInfo = file.tensors.get('offsets');
    assert.ok(offsetsInfo);
    assert.equal(offsetsInfo.dtype, 'I32');
    const offsets = readSafetensorsTensorI32(offsetsInfo);
    const expected = [0];
    for (let i = 0; i < N; i++) expected.push(expected[i] + tokensOf(i));
    assert.deepEqual([...offsets], expected);
    const total = expected[N];
    HOOKS.forEach((hook, h) => {
      const info = file.tensors.get(hook);
      assert.ok(info);
      assert.equal(info.dtype, 'F16');
      assert.deepEqual(info.shape, [total, DIMS[hook]]);
      const data = readSafetensorsTensorF32(info);
      for (let i = 0; i < N; i++) {
        for (let r = 0; r < tokensOf(i); r++) {
          const got = data[(offsets[i] + r) * DIMS[hook] + 1];
          const want = value(i, r, h, 1);
          assert.ok(Math.abs(got - want) <= want * 1e-3, `prompt ${i} row ${r}: ${got} vs ${want}`);
        }
      }
    });
  });

  it('a run with different settings is refused, or discarded with restart', async () => {
    const dir = newDir();
    const out = join(dir, 'x.safetensors');
    await runChunks(out, descriptor(), [4], false);
    const changed = descriptor({
      hooks: [HOOKS[0]],
      template: 'none',
      model: { name: 'tiny-test', sha256: 'cd' },
    });
    await rejectsWith(
      ActivationRun.open(out, changed, { promptIds: ids }),
      OptionError,
      /different settings \(hooks, model\.sha256, template\).*--restart/,
    );
    // The refused attempt must not have disturbed the unfinished run.
    const same = await ActivationRun.open(out, descriptor(), { promptIds: ids });
    assert.equal(same.completed, 4);
    const fresh = await ActivationRun.open(out, changed, { promptIds: ids, restart: true });
    assert.equal(fresh.completed, 0);
    assert.equal(fresh.resumed, false);
    assert.deepEqual(readdirSync(partialDir(out)).sort(), ['lock', 'manifest.json']);
    assert.deepEqual(descriptorDifferences(descriptor(), descriptor({ extra: { maxLen: '512' } })), [
      'extra.maxLen',
    ]);
    await rejectsWith(
      ActivationRun.open(out, changed, { promptIds: [...ids].reverse() }),
      OptionError,
      /different settings \(prompt ids\)/,
    );
  });

  it('damaged or orphaned chunks are dropped and recomputed', async () => {
    const dir = newDir();
    const d = descriptor();
    const out = join(dir, 'x.safetensors');
    await runChunks(out, d, [2, 2, 2], false);
    const work = partialDir(out);
    truncateSync(join(work, 'chunk-000000002.safetensors'), 20);
    writeFileSync(join(work, '.chunk-000000006.safetensors.123.tmp'), 'half-written');
    const run = await ActivationRun.open(out, d, { promptIds: ids });
    assert.equal(run.completed, 2, 'resumes before the damaged chunk');
    assert.deepEqual(readdirSync(work).sort(), ['chunk-000000000.safetensors', 'lock', 'manifest.json']);
    await run.writeChunk(chunkData(d, 2, 8));
    await run.finish();
    const whole = join(dir, 'whole.safetensors');
    await runChunks(whole, d, [10]);
    assert.ok(readFileSync(out).equals(readFileSync(whole)));
  });

  it('a run killed by SIGKILL resumes (the dead process lock is taken over)', async () => {
    const dir = newDir();
    const d = descriptor();
    const out = join(dir, 'k.safetensors');
    const storeUrl = new URL('../src/activations/store.js', import.meta.url).href;
    const script = join(dir, 'child.mjs');
    writeFileSync(
      script,
      `import { ActivationRun } from ${JSON.stringify(storeUrl)};
const [out, d, ids, chunks] = JSON.parse(process.argv[2]);
const run = await ActivationRun.open(out, d, { promptIds: ids });
for (const c of chunks) {
  const activations = {};
  for (const [k, v] of Object.entries(c.activations)) activations[k] = Float32Array.from(v);
  await run.writeChunk({ ...c, activations });
}
process.kill(process.pid, 'SIGKILL');
`,
    );
    const plain = (c: ReturnType<typeof chunkData>) => ({
      ...c,
      activations: Object.fromEntries(Object.entries(c.activations).map(([k, v]) => [k, [...v]])),
    });
    const child = spawnSync(
      process.execPath,
      [script, JSON.stringify([out, d, ids, [plain(chunkData(d, 0, 3)), plain(chunkData(d, 3, 3))]])],
      { encoding: 'utf8' },
    );
    assert.equal(child.signal, 'SIGKILL', child.stderr);
    assert.equal(existsSync(out), false);
    const run = await ActivationRun.open(out, d, { promptIds: ids });
    assert.equal(run.completed, 6);
    await run.writeChunk(chunkData(d, 6, 4));
    await run.finish();
    const whole = join(dir, 'whole.safetensors');
    await runChunks(whole, d, [10]);
    assert.ok(readFileSync(out).equals(readFileSync(whole)));
  });

  it('a run held by another live process is refused; release() frees it', async () => {
    const dir = newDir();
    const out = join(dir, 'l.safetensors');
    const run = await runChunks(out, descriptor(), [1], false);
    const lockPath = join(partialDir(out), 'lock');
    const mine = readFileSync(lockPath, 'utf8');
    writeFileSync(lockPath, JSON.stringify({ pid: process.ppid, host: hostname(), token: 'other' }));
    await rejectsWith(
      ActivationRun.open(out, descriptor(), { promptIds: ids }),
      SteerguardError,
      /another steerguard process \(pid \d+\)/,
    );
    await rejectsWith(
      run.writeChunk(chunkData(descriptor(), 1, 1)),
      SteerguardError,
      /another run took over/,
    );
    writeFileSync(lockPath, mine);
    const again = await ActivationRun.open(out, descriptor(), { promptIds: ids });
    again.release();
    assert.equal(existsSync(lockPath), false);
    await rejectsWith(again.writeChunk(chunkData(descriptor(), 1, 1)), SteerguardError, /released/);
  });

  it('bad chunks and early finish are refused', async () => {
    const dir = newDir();
    const d = descriptor();
    const run = await ActivationRun.open(join(dir, 'c.safetensors'), d, { promptIds: ids });
    await rejectsWith(run.writeChunk(chunkData(d, 1, 2)), SteerguardError, /starts at prompt 1, expected 0/);
    await rejectsWith(run.writeChunk(chunkData(d, 0, 11)), SteerguardError, /bad chunk size/);
    const short = chunkData(d, 0, 2);
    short.activations[HOOKS[0]] = new Float32Array(15);
    await rejectsWith(run.writeChunk(short), SteerguardError, /15 values, not a multiple of 2 rows/);
    const missing = chunkData(d, 0, 2);
    delete missing.activations[HOOKS[1]];
    await rejectsWith(
      run.writeChunk(missing),
      SteerguardError,
      /no activations for hook blocks\.1\.hook_mlp_out/,
    );
    await run.writeChunk(chunkData(d, 0, 2));
    const wide = chunkData(d, 2, 2);
    wide.activations[HOOKS[0]] = new Float32Array(2 * 9);
    await rejectsWith(run.writeChunk(wide), SteerguardError, /width 9, earlier chunks had 8/);
    await rejectsWith(run.finish(), SteerguardError, /only 2 of 10 prompts are done/);
    const all = descriptor({ rowsPerPrompt: 'all' });
    const allRun = await ActivationRun.open(join(dir, 'all.safetensors'), all, { promptIds: ids });
    await rejectsWith(allRun.writeChunk(chunkData(d, 0, 2)), SteerguardError, /needs 2 token counts/);
  });

  it('a chunk with NaN or infinity is refused and saves nothing; a run that saved no chunk leaves no work directory', async () => {
    const dir = newDir();
    const d = descriptor();
    const out = join(dir, 'nan.safetensors');
    const run = await ActivationRun.open(out, d, { promptIds: ids });
    const bad = chunkData(d, 0, 3);
    bad.activations[HOOKS[1]][2 * DIMS[HOOKS[1]] + 1] = NaN;
    await rejectsWith(
      run.writeChunk(bad),
      SteerguardError,
      /hook blocks\.1\.hook_mlp_out has a non-finite value \(NaN\) for prompt 2; nothing of this chunk was saved/,
    );
    const inf = chunkData(d, 0, 3);
    inf.activations[HOOKS[0]][0] = Infinity;
    await rejectsWith(run.writeChunk(inf), SteerguardError, /non-finite value \(Infinity\) for prompt 0/);
    assert.equal(run.completed, 0);
    assert.deepEqual(readdirSync(partialDir(out)).sort(), ['lock', 'manifest.json']);
    run.release();
    assert.equal(existsSync(partialDir(out)), false, 'nothing left to resume, nothing left behind');
    assert.deepEqual(readdirSync(dir), []);
    // A run with saved chunks keeps them for a resume.
    const kept = await runChunks(out, d, [2], false);
    kept.release();
    assert.ok(existsSync(join(partialDir(out), 'chunk-000000000.safetensors')));
  });

  it('a flipped byte in a saved chunk is caught by its checksum: the chunk and those after it are computed again', async () => {
    const dir = newDir();
    const d = descriptor();
    const out = join(dir, 'flip.safetensors');
    (await runChunks(out, d, [3, 3, 2], false)).release();
    const file = join(partialDir(out), 'chunk-000000003.safetensors');
    const bytes = readFileSync(file);
    bytes[bytes.length - 5] ^= 0x01; // inside the last tensor's data: the header still parses
    writeFileSync(file, bytes);
    const run = await ActivationRun.open(out, d, { promptIds: ids });
    assert.equal(run.completed, 3, 'resumes before the damaged chunk');
    assert.deepEqual(run.dropped, [
      'chunk-000000003.safetensors (prompts 3..5): its checksum does not match the manifest',
    ]);
    await run.writeChunk(chunkData(d, 3, 7));
    await run.finish();
    const whole = join(dir, 'whole.safetensors');
    await runChunks(whole, d, [10]);
    assert.ok(readFileSync(out).equals(readFileSync(whole)), 'the flipped byte is not in the result');
  });

  it('a damaged lock file is refused with how to clear it', async () => {
    const dir = newDir();
    const out = join(dir, 'g.safetensors');
    (await runChunks(out, descriptor(), [1], false)).release();
    const lockPath = join(partialDir(out), 'lock');
    for (const garbage of ['{}', 'not json', '', '{"pid":"x","host":1}']) {
      writeFileSync(lockPath, garbage);
      await assert.rejects(
        ActivationRun.open(out, descriptor(), { promptIds: ids }),
        (e: unknown) =>
          e instanceof SteerguardError &&
          /lock file .*lock is not a steerguard lock .*delete .*lock and run again/.test(e.message) &&
          !/undefined/.test(e.message),
      );
    }
    rmSync(lockPath);
    assert.equal((await ActivationRun.open(out, descriptor(), { promptIds: ids })).completed, 1);
  });

  it('--overwrite discards an unfinished run with different settings', async () => {
    const dir = newDir();
    const out = join(dir, 'w.safetensors');
    (await runChunks(out, descriptor(), [4], false)).release();
    const changed = descriptor({ positions: '-1', template: 'none' });
    await rejectsWith(
      ActivationRun.open(out, changed, { promptIds: ids }),
      OptionError,
      /different settings \(positions, template\).*--restart \(or --overwrite\)/,
    );
    const run = await ActivationRun.open(out, changed, { promptIds: ids, overwrite: true });
    assert.equal(run.completed, 0);
    assert.equal(run.resumed, false);
  });

  it('bad descriptors, an existing output, and unwritable paths are refused before any work', async () => {
    const dir = newDir();
    const out = join(dir, 'o.safetensors');
    await rejectsWith(
      ActivationRun.open(out, descriptor({ hooks: [] }), { promptIds: ids }),
      OptionError,
      /no hooks/,
    );
    await rejectsWith(
      ActivationRun.open(out, descriptor(), { promptIds: ids.slice(1) }),
      OptionError,
      /9 prompt ids for 10/,
    );
    await rejectsWith(
      ActivationRun.open(out, descriptor({ rowsPerPrompt: 'all', hooks: ['offsets'] }), { promptIds: ids }),
      OptionError,
      /clashes with the offsets tensor/,
    );
    writeFileSync(out, 'previous results');
    await rejectsWith(
      ActivationRun.open(out, descriptor(), { promptIds: ids }),
      OptionError,
      /already exists.*--overwrite/,
    );
    await runChunks(out, descriptor(), [10], true, { overwrite: true });
    assert.equal(readSafetensorsHeader(out).tensors.size, 2);
    await rejectsWith(
      ActivationRun.open(join(dir, 'missing', 'o.safetensors'), descriptor(), { promptIds: ids }),
      OptionError,
      /directory .*missing does not exist/,
    );
  });
});

describe('checkWritable', () => {
  it('accepts a writable directory and leaves nothing behind', () => {
    const dir = newDir();
    checkWritable(join(dir, 'fine.safetensors'));
    assert.deepEqual(readdirSync(dir), []);
  });

  it('names the problem: missing directory, file in the way, directory as output', () => {
    const dir = newDir();
    writeFileSync(join(dir, 'file'), '');
    assert.throws(() => checkWritable(join(dir, 'nope', 'x.st')), /directory .*nope does not exist/);
    assert.throws(() => checkWritable(join(dir, 'file', 'x.st')), /file is not a directory/);
    assert.throws(
      () => checkWritable(dir),
      (e: unknown) => e instanceof OptionError && /it is a directory/.test(e.message),
    );
  });

  it('reports a directory without write permission', () => {
    const dir = newDir();
    const ro = join(dir, 'ro');
    mkdirSync(ro);
    chmodSync(ro, 0o555);
    chmodSync(dir, 0o755);
    chmodSync(root, 0o755);
    const target = join(ro, 'x.safetensors');
    if (process.getuid?.() === 0) {
      // Root writes anywhere, so check as an unprivileged user in a child process.
      const storeUrl = new URL('../src/activations/store.js', import.meta.url).href;
      const child = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { checkWritable } from ${JSON.stringify(storeUrl)};
try { checkWritable(${JSON.stringify(target)}); console.log('writable'); } catch (e) { console.log(e.name + ': ' + e.message); }`,
        ],
        { encoding: 'utf8', uid: 65534, gid: 65534 },
      );
      assert.match(
        child.stdout,
        /^OptionError: cannot write .*: directory .*ro: permission denied/,
        child.stderr,
      );
    } else {
      assert.throws(() => checkWritable(target), /permission denied/);
    }
  });
});
