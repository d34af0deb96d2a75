/**
 * `steerguard data list|fetch`: the public datasets the named prompt sets read, where each comes
 * from, whether the data directory holds it intact, and downloading it into the dataset cache.
 * Prompt texts are never printed: these commands deal in files, sizes and checksums.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import type { FileState } from '../../data/fetch.js';
import type { SourceFile } from '../../data/sources.js';
import type { CommandSpec } from '../args.js';
import { formatTable } from '../output.js';
import { Progress } from '../progress.js';
import { type CliCommand, actionGroup, command, formatBytes, para } from './common.js';

/** Downloads at least this large get a progress bar; smaller ones a line each. */
const PROGRESS_BYTES = 1_000_000;

const LIST_SPEC = {
  name: 'data list',
  summary: 'the known datasets: source, licence, size, and whether the data directory holds them',
  description: para(
    'Checks each file of each dataset against its pinned size and sha256 in the data directory the other ' +
      'commands read: --data-dir, else $STEERGUARD_DATA, else the dataset cache ($STEERGUARD_CACHE/datasets, ' +
      '$XDG_CACHE_HOME/steerguard/datasets or ~/.cache/steerguard/datasets). A file is ok, missing or modified. ' +
      'Also says which named prompt sets can be loaded from there.',
  ),
  options: {
    dataDir: {
      type: 'string',
      placeholder: 'dir',
      description: 'folder to check (default: $STEERGUARD_DATA, else the dataset cache)',
    },
  },
  examples: ['steerguard data list', 'steerguard data list --data-dir ../shared/datasets --json'],
} as const satisfies CommandSpec;

const FETCH_SPEC = {
  name: 'data fetch',
  summary: 'download datasets from their upstream repositories into the dataset cache',
  description: para(
    'Downloads each file from its upstream repository (raw GitHub URLs, pinned to a commit where one was ' +
      'checked), verifies its sha256, and only then moves it into the dataset cache, so a failed download ' +
      'leaves nothing behind. Files already there with the right checksum are skipped. Without names it ' +
      'fetches the sets the commands use by default (advbench, harmbench, scav, xstest, alpaca); a name is a ' +
      "dataset ('xstest') or a prompt set ('xstest-safe'). --mirror (or $STEERGUARD_DATA_MIRROR) replaces " +
      'https://raw.githubusercontent.com with a server laid out the same way (owner/name/ref/path).',
  ),
  positionals: [
    {
      name: 'names',
      description: 'datasets or prompt sets (default: those the commands use)',
      required: false,
      variadic: true,
    },
  ],
  options: {
    all: { type: 'boolean', description: 'fetch every downloadable dataset (adds gsm8k, bbq, crows_pairs)' },
    mirror: {
      type: 'string',
      placeholder: 'url',
      description:
        'download base laid out like raw.githubusercontent.com (default: $STEERGUARD_DATA_MIRROR, else GitHub)',
    },
    timeout: {
      type: 'number',
      min: 1,
      default: 30,
      description: 'seconds to wait for the server to answer or send more data',
    },
  },
  examples: [
    'steerguard data fetch',
    'steerguard data fetch xstest alpaca --json',
    'steerguard data fetch --all --mirror http://127.0.0.1:8000',
  ],
} as const satisfies CommandSpec;

const listCommand = command(LIST_SPEC, async (args, out) => {
  const { knownPromptSets, locateDataDir } = await import('../../data/datasets.js');
  const { fileState } = await import('../../data/fetch.js');
  const { DATASET_SOURCES, UNFETCHABLE_DATASETS, datasetCacheDir, sourceUrl } =
    await import('../../data/sources.js');
  const choice = locateDataDir(args.options.dataDir);
  const states = new Map<string, FileState>();
  const datasets = DATASET_SOURCES.map((d) => {
    const files = d.files.map((f) => {
      const state = fileState(choice.dir, f);
      states.set(f.path, state);
      return { path: f.path, url: sourceUrl(f), bytes: f.bytes, sha256: f.sha256, state };
    });
    return {
      name: d.name,
      description: d.description,
      licence: d.licence,
      byDefault: d.byDefault,
      sources: sourcesOf(d.files),
      bytes: files.reduce((sum, f) => sum + f.bytes, 0),
      state: datasetState(files.map((f) => f.state)),
      files,
    };
  });
  // A file without a pinned checksum (truthfulqa's) counts as there when it exists at all.
  const usable = (rel: string): boolean =>
    states.has(rel) ? states.get(rel) === 'ok' : existsSync(path.join(choice.dir, rel));
  const sets = knownPromptSets().map((s) => ({ name: s.name, available: s.files.every(usable) }));
  out.result(
    {
      dataDir: choice.dir,
      from: choice.from,
      cacheDir: datasetCacheDir(),
      datasets,
      notDownloadable: UNFETCHABLE_DATASETS.map((u) => ({ name: u.name, reason: u.reason })),
      sets,
    },
    () => {
      const table = formatTable(
        ['dataset', 'state', 'size', 'licence', 'source'],
        datasets.map((d) => [
          d.name + (d.byDefault ? '' : ' (--all)'),
          d.state,
          formatBytes(d.bytes),
          d.licence,
          d.sources.map((x) => `${x.repo}@${x.refs.map(shortRef).join(',')}`).join(', '),
        ]),
      );
      const where =
        choice.from === 'cache'
          ? 'dataset cache'
          : `data directory (from ${choice.from === 'STEERGUARD_DATA' ? '$STEERGUARD_DATA' : choice.from})`;
      const available = sets.filter((s) => s.available).map((s) => s.name);
      const missing = sets.filter((s) => !s.available).map((s) => s.name);
      return [
        `${where}: ${choice.dir}`,
        '',
        table.trimEnd(),
        '',
        `not downloadable: ${UNFETCHABLE_DATASETS.map((u) => u.name).join(', ')} (--json says why)`,
        `prompt sets available: ${available.length > 0 ? available.join(', ') : 'none'}`,
        ...(missing.length > 0 ? [`prompt sets missing: ${missing.join(', ')}`] : []),
      ].join('\n');
    },
  );
});

/** The repositories a dataset's files come from, each with its refs in file order. */
function sourcesOf(files: readonly SourceFile[]): { repo: string; refs: string[] }[] {
  const byRepo = new Map<string, string[]>();
  for (const f of files) {
    const refs = byRepo.get(f.repo) ?? [];
    if (!refs.includes(f.ref)) refs.push(f.ref);
    byRepo.set(f.repo, refs);
  }
  return [...byRepo].map(([repo, refs]) => ({ repo, refs }));
}

/** A commit as its first 10 digits, like `git log --oneline`; a branch as is. */
function shortRef(ref: string): string {
  return /^[0-9a-f]{40}$/.test(ref) ? ref.slice(0, 10) : ref;
}

/** One word for a dataset: all its files ok or missing, else modified or partial. */
function datasetState(files: readonly FileState[]): FileState | 'partial' {
  const kinds = new Set(files);
  if (kinds.size === 1) return files[0];
  return kinds.has('modified') ? 'modified' : 'partial';
}

const fetchCommand = command(FETCH_SPEC, async (args, out) => {
  const o = args.options;
  const { locateDataDir } = await import('../../data/datasets.js');
  const { fetchDatasets, resolveMirror, selectDatasets } = await import('../../data/fetch.js');
  const { datasetCacheDir } = await import('../../data/sources.js');
  const datasets = selectDatasets(args.positionals, o.all);
  const base = resolveMirror(o.mirror);
  const dir = datasetCacheDir();
  const inEffect = locateDataDir();
  if (inEffect.from !== 'cache') {
    out.warn(`STEERGUARD_DATA is set, so commands read ${inEffect.dir}, not the cache this fills`);
  }
  out.info(`fetching ${datasets.map((d) => d.name).join(', ')} into ${dir}`);

  const controller = new AbortController();
  const onSigint = (): void => {
    if (controller.signal.aborted) process.exit(130);
    controller.abort();
  };
  process.on('SIGINT', onSigint);
  let progress: Progress | undefined;
  const start = performance.now();
  let files;
  try {
    files = await fetchDatasets(datasets, {
      dir,
      base,
      timeoutMs: o.timeout * 1000,
      signal: controller.signal,
      onEvent: (e) => {
        if (e.kind === 'start') {
          if (e.replacing) out.warn(`${e.file.path} differs from its pinned checksum; downloading it again`);
          out.info(`downloading ${e.file.path} (${formatBytes(e.file.bytes)}) from ${e.url}`);
          if (e.file.bytes >= PROGRESS_BYTES) {
            progress = new Progress({
              total: Math.round(e.file.bytes / 1000),
              label: e.file.path,
              unit: 'kB',
              json: out.json,
            });
          }
        } else if (e.kind === 'bytes') {
          progress?.update(Math.round(e.received / 1000));
        } else if (e.kind === 'done') {
          progress?.finish();
          progress = undefined;
        }
      },
    });
  } catch (err) {
    // Leave the terminal's half-drawn bar on its own line, above the error.
    if (progress !== undefined && out.stderr.isTTY === true) out.stderr.write('\n');
    throw err;
  } finally {
    process.off('SIGINT', onSigint);
  }
  const seconds = (performance.now() - start) / 1000;
  const downloaded = files.filter((f) => f.action !== 'present');
  const bytes = downloaded.reduce((sum, f) => sum + f.bytes, 0);
  out.result(
    {
      cacheDir: dir,
      mirror: base,
      datasets: datasets.map((d) => d.name),
      files,
      bytesDownloaded: bytes,
      seconds,
    },
    `${downloaded.length} file(s) downloaded (${formatBytes(bytes)}), ` +
      `${files.length - downloaded.length} already there, in ${dir}`,
  );
});

const ACTIONS: Readonly<Record<string, CliCommand>> = { list: listCommand, fetch: fetchCommand };

export const dataCommand: CliCommand = actionGroup({
  name: 'data',
  summary: 'the public datasets: list what the data directory holds, fetch them into the cache',
  description: para(
    "Actions: 'list' shows each dataset, its upstream source and licence, and whether the data directory " +
      "holds it intact; 'fetch' downloads datasets into the dataset cache, which every command reads when " +
      "neither --data-dir nor $STEERGUARD_DATA is given. Run 'steerguard data <action> --help' for the " +
      'options of one action; all of them are listed below.',
  ),
  actions: ACTIONS,
  examples: [LIST_SPEC.examples[0], FETCH_SPEC.examples[0], FETCH_SPEC.examples[1]],
});
