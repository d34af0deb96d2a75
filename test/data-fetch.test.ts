/**
 * `steerguard data fetch|list` and the dataset cache, offline: a local HTTP server on 127.0.0.1
 * serves a mirror laid out like raw.githubusercontent.com (owner/name/ref/path), answering each
 * request from the shared datasets folder (read where it lies, never copied into the project).
 * The CLI runs as a child process with its own cache folder and neither --data-dir nor
 * $STEERGUARD_DATA. Assertions look at paths, sizes and checksums, never at prompt text.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadPromptSet, resolveDataDir } from '../src/data/datasets.js';
import { selectDatasets } from '../src/data/fetch.js';
import { DATASET_SOURCES, type SourceFile, datasetCacheDir, datasetSource } from '../src/data/sources.js';
import { OptionError } from '../src/formats/errors.js';
import { ROOT, SHARED } from './util/fixtures.js';

const MAIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const DATA = path.join(SHARED, 'datasets');
const skip = existsSync(path.join(DATA, 'xstest', 'xstest_prompts.csv')) ? false : `no datasets at ${DATA}`;

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-data-fetch-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');
const allFiles = DATASET_SOURCES.flatMap((d) => d.files);
const fileOf = (rel: string): SourceFile => allFiles.find((f) => f.path === rel)!;

/** Mirror path (`/owner/name/ref/path`) -> the shared copy it serves. */
const ROUTES = new Map(allFiles.map((f) => [`/${f.repo}/${f.ref}/${f.upstreamPath}`, f.path]));

interface Mirror {
  url: string;
  /** Data-directory paths served with one byte changed. */
  corrupt: Set<string>;
  /** Data-directory paths answered with 404. */
  absent: Set<string>;
  /** Data-directory paths whose connection is cut after half the body. */
  cut: Set<string>;
  /** Data-directory paths answered with headers and then nothing. */
  stalled: Set<string>;
  requests: string[];
  server: Server;
}

async function startMirror(): Promise<Mirror> {
  const mirror: Omit<Mirror, 'url' | 'server'> = {
    corrupt: new Set(),
    absent: new Set(),
    cut: new Set(),
    stalled: new Set(),
    requests: [],
  };
  const server = createServer((req, res) => {
    const rel = ROUTES.get(req.url ?? '');
    mirror.requests.push(rel ?? String(req.url));
    if (rel === undefined || mirror.absent.has(rel)) {
      res.writeHead(404, 'Not Found').end();
      return;
    }
    const body = readFileSync(path.join(DATA, rel));
    if (mirror.corrupt.has(rel)) body[Math.floor(body.length / 2)] ^= 0x20;
    res.writeHead(200, { 'content-length': body.length });
    if (mirror.stalled.has(rel)) {
      res.flushHeaders();
    } else if (mirror.cut.has(rel)) {
      res.write(body.subarray(0, body.length >> 1), () => res.destroy());
    } else {
      res.end(body);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { ...mirror, url: `http://127.0.0.1:${port}`, server };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI asynchronously (the mirror answers from this process's event loop). */
function cli(args: string[], cache: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd: ROOT,
      env: {
        ...process.env,
        STEERGUARD_CACHE: cache,
        STEERGUARD_DATA: '',
        STEERGUARD_DATA_MIRROR: '',
        STEERGUARD_DEBUG: '',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill(), 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Every regular file under `dir`, relative to it. */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

describe('the dataset catalogue', { skip }, () => {
  it('pins the size and sha256 of the shared copy of every file', () => {
    for (const f of allFiles) {
      const data = readFileSync(path.join(DATA, f.path));
      assert.equal(data.length, f.bytes, f.path);
      assert.equal(sha256(data), f.sha256, f.path);
    }
  });

  it('fetches the sets the commands use by default, and takes prompt-set names', () => {
    assert.deepEqual(
      selectDatasets([]).map((d) => d.name),
      ['advbench', 'harmbench', 'scav', 'xstest', 'alpaca'],
    );
    assert.deepEqual(
      selectDatasets(['xstest-safe', 'alpaca:train', 'xstest']).map((d) => d.name),
      ['xstest', 'alpaca'],
    );
    assert.throws(() => selectDatasets(['nope']), OptionError);
    assert.throws(() => selectDatasets(['truthfulqa']), /cannot be downloaded/);
    assert.throws(() => selectDatasets(['xstest'], true), /not both/);
  });

  it('puts the cache under $STEERGUARD_CACHE, else $XDG_CACHE_HOME', () => {
    assert.equal(datasetCacheDir({ STEERGUARD_CACHE: '/c' }), path.join('/c', 'datasets'));
    assert.equal(datasetCacheDir({ XDG_CACHE_HOME: '/x' }), path.join('/x', 'steerguard', 'datasets'));
  });
});

describe('steerguard data fetch from a local mirror', { skip }, () => {
  let mirror: Mirror;
  const cache = path.join(tmp, 'cache');
  const cached = path.join(cache, 'datasets');
  before(async () => {
    mirror = await startMirror();
  });
  after(() => {
    mirror.server.closeAllConnections();
    mirror.server.close();
  });

  it('downloads into the cache, each file whole and with its checksum', async () => {
    const r = await cli(['data', 'fetch', 'xstest', 'scav', '--mirror', mirror.url, '--json'], cache);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { cacheDir: string; files: { path: string; action: string }[] };
    assert.equal(doc.cacheDir, cached);
    // In catalogue order, whatever the order of the names.
    const expected = [...datasetSource('scav')!.files, ...datasetSource('xstest')!.files];
    assert.deepEqual(
      doc.files.map((f) => [f.path, f.action]),
      expected.map((f) => [f.path, 'downloaded']),
    );
    assert.deepEqual(filesUnder(cached).sort(), expected.map((f) => f.path).sort());
    for (const f of expected) assert.equal(sha256(readFileSync(path.join(cached, f.path))), f.sha256, f.path);
  });

  it('skips files already there, and replaces one that was changed', async () => {
    const target = path.join(cached, 'scav', 'instructions.csv');
    writeFileSync(target, 'not the data\n');
    const before = mirror.requests.length;
    const r = await cli(['data', 'fetch', 'xstest', 'scav', '--mirror', mirror.url, '--json'], cache);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { files: { path: string; action: string }[] };
    assert.deepEqual(
      doc.files.filter((f) => f.action !== 'present').map((f) => [f.path, f.action]),
      [['scav/instructions.csv', 'replaced']],
    );
    assert.deepEqual(mirror.requests.slice(before), ['scav/instructions.csv']);
    assert.equal(sha256(readFileSync(target)), fileOf('scav/instructions.csv').sha256);
  });

  it('shows progress for a large file', async () => {
    const r = await cli(['data', 'fetch', 'alpaca', '--mirror', mirror.url], cache);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /downloading alpaca\/alpaca_instructions_noinput\.json \(3\.9 MB\)/);
    assert.match(r.stderr, /alpaca\/alpaca_instructions_noinput\.json: 3908\/3908 \(100\.0%\) done in/);
    assert.match(r.stdout, /7 file\(s\) downloaded/);
  });

  it('data list resolves named sets from the cache with no --data-dir or $STEERGUARD_DATA', async () => {
    const r = await cli(['data', 'list', '--json'], cache);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as {
      dataDir: string;
      from: string;
      datasets: { name: string; state: string }[];
      sets: { name: string; available: boolean }[];
    };
    assert.equal(doc.from, 'cache');
    assert.equal(doc.dataDir, cached);
    const state = Object.fromEntries(doc.datasets.map((d) => [d.name, d.state]));
    assert.equal(state.xstest, 'ok');
    assert.equal(state.scav, 'ok');
    assert.equal(state.advbench, 'missing');
    const available = Object.fromEntries(doc.sets.map((s) => [s.name, s.available]));
    assert.equal(available['xstest-safe'], true);
    assert.equal(available['scav-malicious'], true);
    assert.equal(available.alpaca, true);
    assert.equal(available.advbench, false);
  });

  it('the library reads a short name from the cache', () => {
    const env = { STEERGUARD_CACHE: cache };
    assert.equal(resolveDataDir(undefined, env), cached);
    const set = loadPromptSet('xstest-safe', { env });
    assert.equal(set.file, path.join(cached, 'xstest', 'xstest_prompts.csv'));
    assert.equal(set.prompts.length, 250);
  });

  it('a set missing from the cache says which fetch brings it, and where it looked', () => {
    assert.throws(
      () => loadPromptSet('advbench', { env: { STEERGUARD_CACHE: cache } }),
      (err: Error) =>
        err instanceof OptionError &&
        err.message.includes(path.join(cached, 'advbench', 'harmful_behaviors.csv')) &&
        err.message.includes("run 'steerguard data fetch advbench'"),
    );
    assert.throws(
      () => loadPromptSet('advbench', { env: { STEERGUARD_CACHE: path.join(tmp, 'empty') } }),
      /dataset cache .* does not exist: run 'steerguard data fetch'/,
    );
  });

  it("after the README's data step the audit finds every set it reads by default", async () => {
    const fetched = await cli(['data', 'fetch', '--mirror', mirror.url], cache);
    assert.equal(fetched.code, 0, fetched.stderr);
    // The audit checks its prompt sets before it loads the model, so with a model that does not
    // exist the only error left is the model's: every default set resolved from the cache.
    const noModel = path.join(tmp, 'no-such-model.gguf');
    const r = await cli(['audit', '--model', noModel, '--out', path.join(tmp, 'audit-out')], cache);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no-such-model\.gguf/);
    assert.doesNotMatch(r.stderr, /data fetch|prompt set|data directory/);
    assert.ok(!existsSync(path.join(tmp, 'audit-out')));
  });

  it('a corrupted mirror file is a checksum error naming both hashes, and leaves nothing', async () => {
    const fresh = path.join(tmp, 'cache-corrupt');
    const rel = 'xstest/xstest_prompts.csv';
    mirror.corrupt.add(rel);
    try {
      const r = await cli(['data', 'fetch', 'xstest', '--mirror', mirror.url], fresh);
      assert.equal(r.code, 1);
      const served = readFileSync(path.join(DATA, rel));
      served[Math.floor(served.length / 2)] ^= 0x20;
      assert.match(r.stderr, /checksum mismatch for xstest\/xstest_prompts\.csv from http:\/\/127\.0\.0\.1/);
      assert.ok(r.stderr.includes(`expected sha256 ${fileOf(rel).sha256}`), r.stderr);
      assert.ok(r.stderr.includes(`got ${sha256(served)}`), r.stderr);
      assert.deepEqual(filesUnder(fresh), []);
    } finally {
      mirror.corrupt.delete(rel);
    }
  });

  it('an HTTP error names the file and status, and leaves nothing', async () => {
    const fresh = path.join(tmp, 'cache-404');
    mirror.absent.add('scav/instructions.csv');
    try {
      const r = await cli(['data', 'fetch', 'scav', '--mirror', mirror.url, '--json'], fresh);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /could not download scav\/instructions\.csv from .*: HTTP 404 Not Found/);
      assert.match(JSON.parse(r.stdout).error.message as string, /HTTP 404/);
      assert.deepEqual(filesUnder(fresh), []);
    } finally {
      mirror.absent.delete('scav/instructions.csv');
    }
  });

  it('a connection cut mid-file leaves nothing', async () => {
    const fresh = path.join(tmp, 'cache-cut');
    mirror.cut.add('xstest/xstest_prompts.csv');
    try {
      const r = await cli(['data', 'fetch', 'xstest', '--mirror', mirror.url], fresh);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /could not download xstest\/xstest_prompts\.csv from .*; nothing was written/);
      assert.deepEqual(filesUnder(fresh), []);
    } finally {
      mirror.cut.delete('xstest/xstest_prompts.csv');
    }
  });

  it('a server that stops sending times out, and leaves nothing', async () => {
    const fresh = path.join(tmp, 'cache-stall');
    mirror.stalled.add('scav/instructions.csv');
    try {
      const r = await cli(['data', 'fetch', 'scav', '--mirror', mirror.url, '--timeout', '1'], fresh);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /could not download scav\/instructions\.csv from .*: no answer for 1 s/);
      assert.deepEqual(filesUnder(fresh), []);
    } finally {
      mirror.stalled.delete('scav/instructions.csv');
    }
  });

  it('a server that is down is a clear error, and leaves nothing', async () => {
    const down = createServer();
    await new Promise<void>((resolve) => down.listen(0, '127.0.0.1', resolve));
    const { port } = down.address() as AddressInfo;
    await new Promise<void>((resolve) => down.close(() => resolve()));
    const fresh = path.join(tmp, 'cache-down');
    const r = await cli(['data', 'fetch', 'scav', '--mirror', `http://127.0.0.1:${port}`], fresh);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(
        `could not download scav/instructions\\.csv from http://127\\.0\\.0\\.1:${port}/\\S+: .*ECONNREFUSED`,
      ),
    );
    assert.deepEqual(filesUnder(fresh), []);
  });

  it('refuses unknown names and sets that cannot be downloaded, before any download', async () => {
    const before = mirror.requests.length;
    const unknown = await cli(['data', 'fetch', 'advbenchh', '--mirror', mirror.url], cache);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown dataset 'advbenchh'/);
    const truthful = await cli(['data', 'fetch', 'truthfulqa', '--mirror', mirror.url], cache);
    assert.equal(truthful.code, 2);
    assert.match(truthful.stderr, /'truthfulqa' cannot be downloaded/);
    const badMirror = await cli(['data', 'fetch', 'scav', '--mirror', 'ftp://x'], cache);
    assert.equal(badMirror.code, 2);
    assert.equal(mirror.requests.length, before);
  });
});
