// Hugging Face model folders (single and sharded safetensors), model name resolution against a fake
// hub cache, and pullModel failing clearly and quickly when the Hub cannot be reached.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FormatError, SteerguardError } from '../src/formats/errors.js';
import {
  cachedSnapshotDir,
  hubCacheDir,
  openHfModelDir,
  openHfTokenizer,
  parseRepoId,
  pullModel,
  resolveModelSource,
} from '../src/formats/hf.js';
import { readSafetensorsTensorF32, writeSafetensors } from '../src/formats/safetensors.js';
import { FIXTURES, SHARED } from './util/fixtures.js';

const root = mkdtempSync(join(tmpdir(), 'steerguard-hf-'));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
function freshDir(name: string): string {
  const d = join(root, `${name}-${counter++}`);
  mkdirSync(d, { recursive: true });
  return d;
}

const CONFIG = { model_type: 'llama', hidden_size: 4, eos_token_id: [2, 7] };
const values = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => i * k);

function shardedModel(): string {
  const dir = freshDir('sharded');
  writeFileSync(join(dir, 'config.json'), JSON.stringify(CONFIG));
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: 9, temperature: 0.7 }));
  writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), [
    { name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [3, 4], data: values(12, 0.5) },
    { name: 'model.norm.weight', dtype: 'F32', shape: [4], data: values(4, 1) },
  ]);
  writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), [
    { name: 'lm_head.weight', dtype: 'F16', shape: [3, 4], data: values(12, -0.25) },
  ]);
  writeFileSync(
    join(dir, 'model.safetensors.index.json'),
    JSON.stringify({
      metadata: { total_size: 60 },
      weight_map: {
        'model.embed_tokens.weight': 'model-00001-of-00002.safetensors',
        'model.norm.weight': 'model-00001-of-00002.safetensors',
        'lm_head.weight': 'model-00002-of-00002.safetensors',
      },
    }),
  );
  return dir;
}

test('sharded safetensors folder: every tensor of every shard, readable', () => {
  const dir = shardedModel();
  const m = openHfModelDir(dir);
  assert.deepEqual(m.config, CONFIG);
  assert.equal(m.generationConfig?.temperature, 0.7);
  assert.equal(m.tokenizerJsonPath, undefined);
  assert.deepEqual(m.weightFiles, [
    join(dir, 'model-00001-of-00002.safetensors'),
    join(dir, 'model-00002-of-00002.safetensors'),
  ]);
  assert.deepEqual([...m.tensors.keys()].sort(), [
    'lm_head.weight',
    'model.embed_tokens.weight',
    'model.norm.weight',
  ]);
  const head = m.tensors.get('lm_head.weight')!;
  assert.equal(head.file, join(dir, 'model-00002-of-00002.safetensors'));
  assert.deepEqual(readSafetensorsTensorF32(head), values(12, -0.25));
  assert.deepEqual(readSafetensorsTensorF32(m.tensors.get('model.embed_tokens.weight')!), values(12, 0.5));
});

test('single-file folder, and tokenizer-only folders on request', () => {
  const dir = freshDir('single');
  writeFileSync(join(dir, 'config.json'), JSON.stringify(CONFIG));
  writeSafetensors(join(dir, 'model.safetensors'), [
    { name: 'w', dtype: 'F32', shape: [2], data: values(2, 3) },
  ]);
  const m = openHfModelDir(dir);
  assert.deepEqual([...m.tensors.keys()], ['w']);
  assert.equal(m.generationConfig, undefined);

  const tokOnly = freshDir('tok-only');
  writeFileSync(join(tokOnly, 'config.json'), '{}');
  writeFileSync(join(tokOnly, 'pytorch_model.bin'), '');
  assert.throws(
    () => openHfModelDir(tokOnly),
    (e: unknown) =>
      e instanceof FormatError &&
      /no model\.safetensors or model\.safetensors\.index\.json/.test(e.message) &&
      /found pytorch_model\.bin/.test(e.message),
  );
  assert.equal(openHfModelDir(tokOnly, { requireWeights: false }).tensors.size, 0);
});

test('bad folders: missing config.json, missing shard, bad index, bad JSON', () => {
  const empty = freshDir('empty');
  assert.throws(
    () => openHfModelDir(empty),
    (e: unknown) =>
      e instanceof FormatError && e.file === join(empty, 'config.json') && /missing/.test(e.message),
  );

  const noShard = shardedModel();
  rmSync(join(noShard, 'model-00002-of-00002.safetensors'));
  assert.throws(
    () => openHfModelDir(noShard),
    (e: unknown) =>
      e instanceof FormatError &&
      e.file === join(noShard, 'model.safetensors.index.json') &&
      e.message.includes('shard model-00002-of-00002.safetensors is missing'),
  );

  const wrongShard = shardedModel();
  writeFileSync(
    join(wrongShard, 'model.safetensors.index.json'),
    JSON.stringify({ weight_map: { 'lm_head.weight': 'model-00001-of-00002.safetensors' } }),
  );
  assert.throws(() => openHfModelDir(wrongShard), /weight_map\.lm_head\.weight: tensor is not in shard/);

  const escape = shardedModel();
  writeFileSync(
    join(escape, 'model.safetensors.index.json'),
    JSON.stringify({ weight_map: { x: '../x.safetensors' } }),
  );
  assert.throws(() => openHfModelDir(escape), /is not a shard file name/);

  const badJson = freshDir('bad-json');
  writeFileSync(join(badJson, 'config.json'), '{"model_type": ');
  assert.throws(
    () => openHfModelDir(badJson),
    (e: unknown) =>
      e instanceof FormatError && e.file === join(badJson, 'config.json') && /not valid JSON/.test(e.message),
  );

  const badShard = shardedModel();
  writeFileSync(join(badShard, 'model-00002-of-00002.safetensors'), 'garbage');
  assert.throws(() => openHfModelDir(badShard), /model-00002-of-00002\.safetensors: header length/);
});

/** A fake hub cache entry: refs/<rev> -> sha, snapshots/<sha>/ with the given files. */
function fakeCache(
  cache: string,
  repo: string,
  rev: string,
  sha: string,
  files: Record<string, string>,
): string {
  const repoDir = join(cache, `models--${repo.replace('/', '--')}`);
  mkdirSync(join(repoDir, 'refs'), { recursive: true });
  writeFileSync(join(repoDir, 'refs', rev), `${sha}\n`);
  const snap = join(repoDir, 'snapshots', sha);
  mkdirSync(snap, { recursive: true });
  for (const [name, content] of Object.entries(files)) writeFileSync(join(snap, name), content);
  return snap;
}

function withEnv(vars: Record<string, string | undefined>, fn: () => void): void {
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(vars)) {
    saved[k] = process.env[k];
    if (vars[k] === undefined) delete process.env[k];
    else process.env[k] = vars[k];
  }
  try {
    fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test('repo ids resolve through the hub cache ($HF_HUB_CACHE, $HF_HOME, ~/.cache)', () => {
  const cache = freshDir('hub');
  const shaMain = 'a'.repeat(40);
  const shaV1 = 'b'.repeat(40);
  const main = fakeCache(cache, 'org/model', 'main', shaMain, { 'config.json': '{}' });
  const v1 = fakeCache(cache, 'org/model', 'v1', shaV1, { 'weights.Q4_K_M.gguf': 'GGUF' });

  assert.deepEqual(parseRepoId('org/model@v1'), { repo: 'org/model', revision: 'v1' });
  assert.equal(parseRepoId('model.gguf'), undefined);
  assert.equal(parseRepoId('./org/model'), undefined);

  withEnv({ HF_HUB_CACHE: cache, HF_HOME: undefined }, () => {
    assert.equal(hubCacheDir(), cache);
    assert.deepEqual(resolveModelSource('org/model'), { kind: 'hf-dir', dir: main });
    assert.deepEqual(resolveModelSource('org/model@v1'), {
      kind: 'gguf',
      path: join(v1, 'weights.Q4_K_M.gguf'),
    });
    assert.deepEqual(resolveModelSource(`org/model@${shaMain}`), { kind: 'hf-dir', dir: main });
    assert.throws(
      () => resolveModelSource('org/other'),
      (e: unknown) =>
        e instanceof SteerguardError &&
        e.message.includes('org/other is not in the local Hugging Face cache') &&
        e.message.includes(cache) &&
        e.message.includes('steerguard pull org/other'),
    );
    assert.throws(() => resolveModelSource('org/model@v2'), /steerguard pull org\/model@v2/);
  });

  const home = freshDir('hf-home');
  mkdirSync(join(home, 'hub'));
  const viaHome = fakeCache(join(home, 'hub'), 'org/model', 'main', shaMain, { 'config.json': '{}' });
  withEnv({ HF_HUB_CACHE: undefined, HUGGINGFACE_HUB_CACHE: undefined, HF_HOME: home }, () => {
    assert.equal(hubCacheDir(), join(home, 'hub'));
    assert.deepEqual(resolveModelSource('org/model'), { kind: 'hf-dir', dir: viaHome });
  });
  withEnv(
    {
      HF_HUB_CACHE: undefined,
      HUGGINGFACE_HUB_CACHE: undefined,
      HF_HOME: undefined,
      XDG_CACHE_HOME: undefined,
    },
    () => {
      assert.match(hubCacheDir(), /\.cache[/\\]huggingface[/\\]hub$/);
    },
  );
  assert.equal(cachedSnapshotDir('org/model', 'main', cache), main);
  assert.equal(cachedSnapshotDir('org/model', 'nope', cache), undefined);
});

test('local paths: .gguf file, HF folder, folder with one .gguf, ambiguous folders', () => {
  const d = freshDir('local');
  const gguf = join(d, 'm.gguf');
  writeFileSync(gguf, 'GGUF');
  assert.deepEqual(resolveModelSource(gguf), { kind: 'gguf', path: gguf });
  assert.deepEqual(resolveModelSource(d), { kind: 'gguf', path: gguf });

  writeFileSync(join(d, 'other.gguf'), 'GGUF');
  assert.throws(() => resolveModelSource(d), /several GGUF files \(m\.gguf, other\.gguf\)/);
  writeFileSync(join(d, 'config.json'), '{}');
  assert.deepEqual(resolveModelSource(d), { kind: 'hf-dir', dir: d });

  const txt = join(d, 'notes.txt');
  writeFileSync(txt, '');
  assert.throws(() => resolveModelSource(txt), /not a \.gguf file or a model folder/);
  assert.throws(() => resolveModelSource(freshDir('nothing')), /neither a Hugging Face model folder/);
  assert.throws(() => resolveModelSource('./missing/model.gguf'), /no such file or folder/);
});

test('pullModel fails clearly and quickly when the Hub cannot be reached', async () => {
  const cache = freshDir('pull-cache');
  // A port that refuses connections.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const closedPort = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));

  let started = Date.now();
  await assert.rejects(
    pullModel('org/model', { hubUrl: `http://127.0.0.1:${closedPort}`, cacheDir: cache, timeoutMs: 5000 }),
    (e: unknown) => {
      assert.ok(e instanceof SteerguardError);
      assert.match(
        e.message,
        /^could not reach the Hugging Face Hub at http:\/\/127\.0\.0\.1:\d+ to download org\/model/,
      );
      assert.match(e.message, /\(network error: .*ECONNREFUSED.*\)$/);
      return true;
    },
  );
  assert.ok(Date.now() - started < 5000, 'refused connections fail at once');

  // A server that accepts connections but never answers: the timeout has to end it.
  const silent: Server = createServer(() => {});
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const silentPort = (silent.address() as { port: number }).port;
  started = Date.now();
  try {
    await assert.rejects(
      pullModel('org/model', { hubUrl: `http://127.0.0.1:${silentPort}`, cacheDir: cache, timeoutMs: 800 }),
      /could not reach the Hugging Face Hub .*\(network error: no answer within 800 ms\)/,
    );
  } finally {
    silent.close();
  }
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 700 && elapsed < 5000, `timed out after ${elapsed} ms`);
  assert.ok(!existsSync(join(cache, 'models--org--model', 'snapshots')), 'nothing half-downloaded');

  await assert.rejects(pullModel('not a repo'), /not a Hugging Face repo id/);
});

/**
 * A minimal stand-in for the Hub's HTTP API (model info, file tree, paths-info, resolve), serving
 * the files of one repo at one commit, and recording which files were downloaded.
 */
async function fakeHub(repo: string, sha: string, files: Record<string, Uint8Array>) {
  const downloaded: string[] = [];
  const oid = (b: Uint8Array) => createHash('sha1').update(b).digest('hex');
  const server = createHttpServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body));
    };
    if (url.pathname === `/api/models/${repo}/revision/main`) return send(200, { _id: 'x', id: repo, sha });
    if (url.pathname === `/api/models/${repo}/tree/${sha}`) {
      return send(
        200,
        Object.entries(files).map(([path, b]) => ({ type: 'file', path, size: b.length, oid: oid(b) })),
      );
    }
    if (url.pathname === `/api/models/${repo}/paths-info/${sha}` && req.method === 'POST') {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const { paths } = JSON.parse(body) as { paths: string[] };
        send(
          200,
          paths.map((path) => ({ type: 'file', path, size: files[path].length, oid: oid(files[path]) })),
        );
      });
      return;
    }
    const prefix = `/${repo}/resolve/${sha}/`;
    if (url.pathname.startsWith(prefix)) {
      const path = decodeURIComponent(url.pathname.slice(prefix.length));
      const b = files[path];
      if (!b) return send(404, 'missing', { 'x-error-code': 'EntryNotFound' });
      const headers = { 'content-type': 'application/octet-stream', etag: `"${oid(b)}"` };
      const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (range) {
        const [from, to] = [Number(range[1]), Math.min(Number(range[2]), b.length - 1)];
        return send(206, b.subarray(from, to + 1), {
          ...headers,
          'content-range': `bytes ${from}-${to}/${b.length}`,
        });
      }
      downloaded.push(path);
      return send(200, b, headers);
    }
    send(404, { error: `unexpected ${req.method} ${url.pathname}` });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return { url, downloaded, close: () => new Promise<void>((r) => server.close(() => r())) };
}

test('pullModel fills the hub cache so that the repo id then resolves and opens', async () => {
  const src = shardedModel();
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(src)) files[f] = readFileSync(join(src, f));
  files['README.md'] = new TextEncoder().encode('# model card');
  files['pytorch_model.bin'] = new Uint8Array(16);
  files['consolidated.safetensors'] = new Uint8Array(16); // not named by the index: not fetched
  const sha = 'c'.repeat(40);
  const hub = await fakeHub('org/model', sha, files);
  const cache = freshDir('pulled');
  const progress: string[] = [];
  try {
    const snap = await pullModel('org/model', {
      hubUrl: hub.url,
      cacheDir: cache,
      onProgress: (p) => progress.push(`${p.index}/${p.total} ${p.file}`),
    });
    assert.equal(snap, join(cache, 'models--org--model', 'snapshots', sha));
    assert.equal(readFileSync(join(cache, 'models--org--model', 'refs', 'main'), 'utf8'), sha);
    assert.deepEqual(readdirSync(snap).sort(), [
      'config.json',
      'generation_config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
    ]);
    // Snapshot entries link into blobs/, as huggingface_hub lays the cache out.
    assert.ok(lstatSync(join(snap, 'config.json')).isSymbolicLink());
    assert.deepEqual(hub.downloaded.sort(), readdirSync(snap).sort());
    assert.equal(progress.length, 5);
    assert.match(progress[0], /^1\/5 /);

    assert.deepEqual(resolveModelSource('org/model', { cacheDir: cache }), { kind: 'hf-dir', dir: snap });
    const m = openHfModelDir(snap);
    assert.deepEqual(readSafetensorsTensorF32(m.tensors.get('lm_head.weight')!), values(12, -0.25));

    // A second pull finds everything cached and downloads nothing.
    hub.downloaded.length = 0;
    await pullModel('org/model', { hubUrl: hub.url, cacheDir: cache });
    assert.deepEqual(hub.downloaded, []);
  } finally {
    await hub.close();
  }
});

const SHARED_TOKENIZER = join(SHARED, 'models', 'SmolLM2-135M-Instruct-tokenizer');

test(
  'openHfTokenizer combines tokenizer files with config/generation_config EOS ids',
  { skip: existsSync(join(SHARED_TOKENIZER, 'tokenizer.json')) ? false : `${SHARED_TOKENIZER} is missing` },
  () => {
    const dir = freshDir('smol');
    copyFileSync(join(SHARED_TOKENIZER, 'tokenizer.json'), join(dir, 'tokenizer.json'));
    copyFileSync(join(SHARED_TOKENIZER, 'config.json'), join(dir, 'config.json'));
    copyFileSync(
      join(FIXTURES, 'tokenizer', 'smollm2_tokenizer_config.json'),
      join(dir, 'tokenizer_config.json'),
    );
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 0] }));
    const m = openHfModelDir(dir, { requireWeights: false });
    const tok = openHfTokenizer(m);
    assert.equal(tok.bosTokenId, 1);
    assert.deepEqual(tok.eosTokenIds, [2, 0]);
    assert.deepEqual(tok.encode('Hello world'), [19556, 905]);
    assert.ok(tok.chatTemplate?.includes('<|im_start|>'));

    // Newer repos keep the template in chat_template.jinja.
    const jinjaDir = freshDir('jinja');
    copyFileSync(join(SHARED_TOKENIZER, 'tokenizer.json'), join(jinjaDir, 'tokenizer.json'));
    writeFileSync(join(jinjaDir, 'config.json'), '{}');
    writeFileSync(
      join(jinjaDir, 'chat_template.jinja'),
      '{% for m in messages %}[{{ m.content }}]{% endfor %}',
    );
    const t2 = openHfTokenizer(openHfModelDir(jinjaDir, { requireWeights: false }));
    assert.equal(t2.applyChatTemplate([{ role: 'user', content: 'hi' }]), '[hi]');
  },
);
