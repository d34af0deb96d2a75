/**
 * Control vectors: value semantics, the llama.cpp GGUF layout (checked with two independent
 * readers, @huggingface/gguf and node-llama-cpp's readGgufFileInfo), the layer convention
 * (direction.{L} → blocks.{L}.hook_resid_post) and refusal-direction files.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { gguf as hfGguf } from '@huggingface/gguf';

import { controlVectorCommand, directionCommand } from '../src/cli/commands/direction.js';
import { CliOutput } from '../src/cli/output.js';
import { FormatError } from '../src/formats/errors.js';
import { GgmlType, writeGguf } from '../src/formats/gguf.js';
import { blockHook } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import { Model } from '../src/model/model.js';
import { ControlVector } from '../src/steering/control-vector.js';
import {
  refusalDirectionFromControlVector,
  refusalDirectionToControlVector,
} from '../src/steering/refusal-direction.js';
import { FIXTURES } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-cvec-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const vec = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));
const D = 64;
const cv = new ControlVector(
  [
    [2, vec(D, (i) => i / 10)],
    [1, vec(D, (i) => -i)],
  ],
  { modelHint: 'llama' },
);

describe('ControlVector values', () => {
  test('layers ascending, width, copies of the input', () => {
    assert.deepEqual(cv.layers, [1, 2]);
    assert.equal(cv.dModel, D);
    const src = vec(4, () => 1);
    const one = ControlVector.single(3, src, 'llama');
    src[0] = 99;
    assert.equal(one.direction(3)[0], 1);
  });

  test('scale, negate and add return new objects and leave the original alone', () => {
    const s = cv.scale(2);
    assert.notEqual(s, cv);
    assert.equal(s.direction(2)[5], Math.fround(Math.fround(0.5) * 2));
    assert.equal(cv.direction(2)[5], Math.fround(0.5));
    const zero = cv.add(cv.negate());
    for (const l of zero.layers) assert.ok(zero.direction(l).every((x) => x === 0));
    const extra = ControlVector.single(
      5,
      vec(D, () => 1),
      'llama',
    );
    const sum = cv.add(extra);
    assert.deepEqual(sum.layers, [1, 2, 5]);
    assert.deepEqual(cv.layers, [1, 2]);
    assert.deepEqual(sum.restrict([5]).layers, [5]);
  });

  test('bad input is refused with the reason', () => {
    assert.throws(
      () =>
        ControlVector.single(
          0,
          vec(D, () => 1),
          'llama',
        ),
      /layers start at 1/,
    );
    assert.throws(
      () =>
        new ControlVector(
          [
            [1, vec(4, () => 1)],
            [2, vec(5, () => 1)],
          ],
          { modelHint: '' },
        ),
      /has 5 values/,
    );
    assert.throws(
      () =>
        ControlVector.single(
          1,
          vec(3, () => NaN),
          '',
        ),
      /not finite/,
    );
    assert.throws(
      () =>
        cv.add(
          ControlVector.single(
            1,
            vec(3, () => 1),
            '',
          ),
        ),
      /width/,
    );
    assert.throws(() => cv.direction(7), /no direction for layer 7/);
    assert.throws(() => cv.checkModel({ nLayers: 2, dModel: D }), /layer 2/);
    assert.throws(() => cv.checkModel({ nLayers: 3, dModel: 8 }), /d_model/);
    cv.checkModel({ nLayers: 3, dModel: D });
  });

  test('a vector that records another model is refused for this one, and fits once it forgets it', () => {
    const shape = { nLayers: 3, dModel: D };
    const here = { name: 'here.gguf', fingerprint: 'b'.repeat(64) };
    const made = refusalDirectionToControlVector(
      { direction: vec(D, () => 1), layer: 2, position: -1 },
      { arch: 'llama', fingerprint: 'a'.repeat(64) },
    );
    assert.equal(made.modelFingerprint, 'a'.repeat(64));
    assert.throws(
      () => made.checkModel(shape, { identity: here, file: 'r.gguf' }),
      /r\.gguf was computed on another model \(fingerprint a{12}\), not on here\.gguf \(fingerprint b{12}\).*--forget-model/,
    );
    made.checkModel(shape, { identity: { ...here, fingerprint: 'a'.repeat(64) } });
    made.checkModel(shape); // no identity: only the shape is checked
    const forgot = made.forgetModel();
    assert.equal(forgot.modelFingerprint, undefined);
    assert.equal(forgot.metadata.get('steerguard.kind'), 'refusal-direction');
    forgot.checkModel(shape, { identity: here });
    cv.checkModel(shape, { identity: here }); // a file that records no model (llama.cpp, repeng)
  });
});

describe('control vector GGUF files', () => {
  const file = path.join(tmp, 'cv.gguf');
  cv.save(file);

  test('round trip', () => {
    const back = ControlVector.load(file);
    assert.deepEqual(back.layers, [1, 2]);
    assert.equal(back.modelHint, 'llama');
    for (const l of cv.layers) assert.deepEqual(back.direction(l), cv.direction(l));
  });

  test('@huggingface/gguf reads the layout llama.cpp expects', async () => {
    const { metadata, tensorInfos } = await hfGguf(file, { allowLocalFile: true });
    assert.equal(metadata['general.architecture'], 'controlvector');
    assert.equal(metadata['controlvector.model_hint'], 'llama');
    assert.equal(metadata['controlvector.layer_count'], 2);
    assert.deepEqual(
      tensorInfos.map((t) => ({ name: t.name, shape: t.shape.map(Number), dtype: t.dtype })),
      [
        { name: 'direction.1', shape: [D], dtype: GgmlType.F32 },
        { name: 'direction.2', shape: [D], dtype: GgmlType.F32 },
      ],
    );
  });

  test("node-llama-cpp's readGgufFileInfo reads it too, and the data sits where it says", async (t) => {
    let readGgufFileInfo: typeof import('node-llama-cpp').readGgufFileInfo;
    try {
      ({ readGgufFileInfo } = await import('node-llama-cpp'));
    } catch (e) {
      return t.skip(`node-llama-cpp is not installed (${(e as Error).message.slice(0, 80)})`);
    }
    const info = await readGgufFileInfo(file, { readTensorInfo: true });
    const meta = info.metadata as unknown as Record<string, Record<string, unknown>>;
    assert.equal(meta.general.architecture, 'controlvector');
    assert.equal(meta.controlvector.model_hint, 'llama');
    assert.equal(Number(meta.controlvector.layer_count), 2);
    const bytes = readFileSync(file);
    for (const ti of info.tensorInfo ?? []) {
      assert.equal(ti.ggmlType, GgmlType.F32);
      assert.deepEqual(ti.dimensions.map(Number), [D]);
      const layer = Number(ti.name.split('.')[1]);
      const at = Number(ti.fileOffset);
      const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset + at, bytes.byteOffset + at + 4 * D));
      assert.deepEqual(data, cv.direction(layer));
    }
    assert.equal(info.tensorInfo?.length, 2);
  });

  test('files that are not control vectors, or break the layout, are refused naming the field', () => {
    const bad = (name: string, arch: string, tensors: { name: string; dims: number[] }[]) => {
      const p = path.join(tmp, name);
      writeGguf(p, {
        metadata: [{ key: 'general.architecture', value: arch }],
        tensors: tensors.map((x) => ({
          ...x,
          type: GgmlType.F32,
          data: new Float32Array(x.dims.reduce((a, b) => a * b, 1)),
        })),
      });
      return p;
    };
    assert.throws(
      () => ControlVector.load(bad('model.gguf', 'llama', [{ name: 'direction.1', dims: [4] }])),
      (e: unknown) => {
        assert.ok(e instanceof FormatError);
        assert.equal(e.field, 'general.architecture');
        return true;
      },
    );
    assert.throws(
      () => ControlVector.load(bad('zero.gguf', 'controlvector', [{ name: 'direction.0', dims: [4] }])),
      /layer 0 is invalid/,
    );
    assert.throws(
      () => ControlVector.load(bad('2d.gguf', 'controlvector', [{ name: 'direction.1', dims: [4, 2] }])),
      /1-D/,
    );
    assert.throws(
      () => ControlVector.load(bad('none.gguf', 'controlvector', [{ name: 'other', dims: [4] }])),
      /no direction/,
    );
    assert.throws(
      () =>
        ControlVector.load(
          bad('mixed.gguf', 'controlvector', [
            { name: 'direction.1', dims: [4] },
            { name: 'direction.2', dims: [5] },
          ]),
        ),
      /other directions have 4/,
    );
  });
});

describe('layer convention on a model', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const prompts = [{ tokens: [1, 5, 9, 30, 2] }, { tokens: [7, 7, 3] }];

  test('hooks(c) == addVector(c · direction.L) at blocks.L.hook_resid_post, every position', () => {
    const a = model.run(prompts, { hooks: cv.hooks(0.5), logits: 'all' });
    const b = model.run(prompts, {
      hooks: [1, 2].map((l) => addVector(blockHook(l, 'hook_resid_post'), cv.direction(l), { scale: 0.5 })),
      logits: 'all',
    });
    a.logits.forEach((x, i) => assert.deepEqual(x, b.logits[i]));
  });

  test('scale(0) and coefficient 0 reproduce the unsteered model', () => {
    const plain = model.run(prompts, { logits: 'all' });
    for (const hooks of [cv.scale(0).hooks(), cv.hooks(0)]) {
      const r = model.run(prompts, { hooks, logits: 'all' });
      r.logits.forEach((x, i) => assert.deepEqual(x, plain.logits[i]));
    }
  });

  test('a refusal direction at block input l is stored as direction.{l-1} and read back', () => {
    const r = vec(D, (i) => Math.sin(i));
    const asCv = refusalDirectionToControlVector(
      { direction: r, layer: 2, position: -1 },
      { arch: 'llama', fingerprint: 'abc' },
    );
    assert.deepEqual(asCv.layers, [1]);
    const p = path.join(tmp, 'refusal.gguf');
    asCv.save(p);
    const back = ControlVector.load(p);
    assert.equal(back.metadata.get('steerguard.kind'), 'refusal-direction');
    const rd = refusalDirectionFromControlVector(back);
    assert.equal(rd.layer, 2);
    assert.equal(rd.position, -1);
    assert.deepEqual(rd.direction, r);
    // Added at the output of block 1 = the input of block 2: the same logits either way.
    const viaCv = model.run(prompts, { hooks: back.hooks(1), logits: 'all' });
    const viaPre = model.run(prompts, {
      hooks: [addVector(blockHook(2, 'hook_resid_pre'), r)],
      logits: 'all',
    });
    viaCv.logits.forEach((x, i) => assert.deepEqual(x, viaPre.logits[i]));
    // A plain single-layer control vector is read as r at the next block's input.
    assert.equal(refusalDirectionFromControlVector(ControlVector.single(4, r, 'llama')).layer, 5);
    assert.throws(() => refusalDirectionFromControlVector(cv), /pick one/);
  });
});

describe('steerguard control-vector / direction info (in-process)', () => {
  const run = async (
    cmd: { run(argv: readonly string[], out: CliOutput): Promise<void> },
    args: string[],
  ) => {
    let stdout = '';
    const out = new CliOutput({
      json: args.includes('--json'),
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: () => true },
    });
    await cmd.run(args, out);
    return stdout;
  };
  const file = path.join(tmp, 'cli.gguf');
  cv.save(file);

  test('info lists layers, norms and the convention; -m checks the model', async () => {
    const doc = JSON.parse(await run(controlVectorCommand, ['info', file, '--json'])) as {
      layers: number[];
      dModel: number;
      norms: { norm: number }[];
    };
    assert.deepEqual(doc.layers, [1, 2]);
    assert.equal(doc.dModel, D);
    const text = await run(controlVectorCommand, ['info', file, '-m', path.join(FIXTURES, 'tiny', 'llama')]);
    assert.match(text, /blocks\.L\.hook_resid_post/);
    assert.match(text, /fits llama/);
  });

  test('convert scales and restricts into a new file', async () => {
    const outFile = path.join(tmp, 'neg.gguf');
    await run(controlVectorCommand, ['convert', file, '--scale', '-2', '--layers', '2', '--out', outFile]);
    const back = ControlVector.load(outFile);
    assert.deepEqual(back.layers, [2]);
    assert.deepEqual(
      back.direction(2),
      cv.direction(2).map((x) => x * -2),
    );
    await assert.rejects(run(controlVectorCommand, ['convert', file, '--out', outFile]), /already exists/);
  });

  test('info -m refuses a direction of another model; convert --forget-model writes one that fits', async () => {
    const tiny = path.join(FIXTURES, 'tiny', 'llama');
    const other = path.join(tmp, 'other-model.gguf');
    refusalDirectionToControlVector(
      { direction: vec(D, () => 1), layer: 2, position: -1 },
      { arch: 'llama', fingerprint: 'f'.repeat(64) },
    ).save(other);
    await assert.rejects(
      run(controlVectorCommand, ['info', other, '-m', tiny]),
      /other-model\.gguf was computed on another model \(fingerprint f{12}\)/,
    );
    const copy = path.join(tmp, 'any-model.gguf');
    await run(controlVectorCommand, ['convert', other, '--forget-model', '--out', copy]);
    assert.equal(ControlVector.load(copy).modelFingerprint, undefined);
    assert.match(await run(controlVectorCommand, ['info', copy, '-m', tiny]), /fits llama/);
  });

  test('direction info reads refusal-direction metadata', async () => {
    const p = path.join(tmp, 'rd-info.gguf');
    refusalDirectionToControlVector(
      { direction: vec(D, () => 1), layer: 3, position: -2 },
      { arch: 'llama' },
    ).save(p);
    const doc = JSON.parse(await run(directionCommand, ['info', p, '--json'])) as {
      metadata: Record<string, unknown>;
      layers: number[];
    };
    assert.deepEqual(doc.layers, [2]);
    assert.equal(doc.metadata['steerguard.refusal_direction.layer'], 3);
    assert.equal(doc.metadata['steerguard.refusal_direction.position'], -2);
  });
});
