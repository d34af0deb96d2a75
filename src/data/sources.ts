/**
 * Where the public datasets come from, and where a downloaded copy lives.
 *
 * Each file is named by its path in a data directory (the layout datasets.ts reads:
 * `advbench/harmful_behaviors.csv`, ...) and by its upstream location: a GitHub repository, a
 * commit (or `main` where no commit could be checked against the reference copy) and a path.
 * The sha256 and size are those of the files as their upstream repositories publish them, so a
 * download is checked byte for byte whatever the ref; a ref that moved shows as a checksum error,
 * never as silently different data.
 */
import { homedir } from 'node:os';
import path from 'node:path';

/** Raw-file host the upstream URLs are built on; `--mirror` replaces it. */
export const UPSTREAM_BASE = 'https://raw.githubusercontent.com';

export interface SourceFile {
  /** Path inside the data directory. */
  readonly path: string;
  /** GitHub `owner/name` the file is published in. */
  readonly repo: string;
  /** Commit (40 hex digits) or branch. */
  readonly ref: string;
  /** Path inside that repository. */
  readonly upstreamPath: string;
  readonly sha256: string;
  readonly bytes: number;
}

export interface DatasetSource {
  /** The data directory's folder name, also the name `steerguard data fetch` takes. */
  readonly name: string;
  readonly description: string;
  readonly licence: string;
  /** Fetched by `steerguard data fetch` without names: the sets the commands use by default. */
  readonly byDefault: boolean;
  readonly files: readonly SourceFile[];
}

/** A folder of the reference data layout that cannot be downloaded as is, and why. */
export interface UnfetchableDataset {
  readonly name: string;
  readonly reason: string;
}

const LLM_ATTACKS = { repo: 'llm-attacks/llm-attacks', ref: 'main' };
const HARMBENCH = { repo: 'centerforaisafety/HarmBench', ref: 'main' };
const SCAV = { repo: 'EEEEEKKO/SCAV', ref: '21f5d8f5a5a4f4eedd0d4b913525485d9412893b' };
const XSTEST = { repo: 'paul-rottger/exaggerated-safety', ref: 'd7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d' };
// XSTest's older layout (xstest_v2_prompts.csv), removed from the repository by a later commit.
const XSTEST_V2 = {
  repo: 'paul-rottger/exaggerated-safety',
  ref: 'a3bb396ddc1939c6f264f17b7cf5b7a5d82833de',
};
const ALPACA = { repo: 'tatsu-lab/stanford_alpaca', ref: '761dc5bfbdeeffa89b8bff5d038781a4055f796a' };
const REFUSAL_DIRECTION = {
  repo: 'andyrdt/refusal_direction',
  ref: '9d852fae1a9121c78b29142de733cb1340770cc3',
};
const GSM8K = { repo: 'openai/grade-school-math', ref: '3101c7d5072418e28b9008a6636bde82a006892c' };
const BBQ = { repo: 'nyu-mll/BBQ', ref: 'bea11bd97d79217245b5871acd247b9d6eb24598' };
const CROWS_PAIRS = { repo: 'nyu-mll/crows-pairs', ref: '8aaac11c485473159ec9328a65253a5be9a479dc' };

const bbqFile = (category: string, sha256: string, bytes: number): SourceFile => ({
  path: `bbq/${category}.jsonl`,
  ...BBQ,
  upstreamPath: `data/${category}.jsonl`,
  sha256,
  bytes,
});

/** Every downloadable dataset, in the order `steerguard data list` shows them. */
export const DATASET_SOURCES: readonly DatasetSource[] = [
  {
    name: 'advbench',
    description: 'AdvBench harmful behaviours and strings (GCG paper)',
    licence: 'MIT',
    byDefault: true,
    files: [
      {
        path: 'advbench/harmful_behaviors.csv',
        ...LLM_ATTACKS,
        upstreamPath: 'data/advbench/harmful_behaviors.csv',
        sha256: '6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1',
        bytes: 82125,
      },
      {
        path: 'advbench/harmful_strings.csv',
        ...LLM_ATTACKS,
        upstreamPath: 'data/advbench/harmful_strings.csv',
        sha256: '2c4751403195634f88eb849d923670cb2d9a883bcc3d74456bf2f08141424a15',
        bytes: 34654,
      },
      {
        path: 'advbench/LICENSE.llm-attacks',
        ...LLM_ATTACKS,
        upstreamPath: 'LICENSE',
        sha256: 'ca4eb92c94aa1f355ab306c258e796db053f102ce99061076a74cd69b3fed8ef',
        bytes: 1086,
      },
    ],
  },
  {
    name: 'harmbench',
    description: 'HarmBench text behaviours, with the official val / test split',
    licence: 'MIT',
    byDefault: true,
    files: [
      {
        path: 'harmbench/harmbench_behaviors_text_all.csv',
        ...HARMBENCH,
        upstreamPath: 'data/behavior_datasets/harmbench_behaviors_text_all.csv',
        sha256: '8d81accedd38eaaf8b760618622bb888417d1fd0c86eba65c427a16f1cbb4afc',
        bytes: 198850,
      },
      {
        path: 'harmbench/harmbench_behaviors_text_val.csv',
        ...HARMBENCH,
        upstreamPath: 'data/behavior_datasets/harmbench_behaviors_text_val.csv',
        sha256: '7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534',
        bytes: 38024,
      },
      {
        path: 'harmbench/harmbench_behaviors_text_test.csv',
        ...HARMBENCH,
        upstreamPath: 'data/behavior_datasets/harmbench_behaviors_text_test.csv',
        sha256: '75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29',
        bytes: 160828,
      },
      {
        path: 'harmbench/LICENSE',
        ...HARMBENCH,
        upstreamPath: 'LICENSE',
        sha256: 'd0a231f9526f809628100ec2fcb9d5cb94ebc4201ae9dcf71bc0b396779ff84e',
        bytes: 1073,
      },
    ],
  },
  {
    name: 'scav',
    description: 'the SCAV reference set: 50+50 train, 50+50 test, Malicious / Safe',
    licence: 'none stated (academic use)',
    byDefault: true,
    files: [
      {
        path: 'scav/instructions.csv',
        ...SCAV,
        upstreamPath: 'embedding-level/instructions/instructions.csv',
        sha256: '21ed67c541dfdabfe1f96f96e68dcf44039a00ccebda2dabe80f3bc287ee7d43',
        bytes: 25610,
      },
    ],
  },
  {
    name: 'xstest',
    description: 'XSTest: safe prompts that only look unsafe, and unsafe contrasts',
    licence: 'CC-BY-4.0',
    byDefault: true,
    files: [
      {
        path: 'xstest/xstest_prompts.csv',
        ...XSTEST,
        upstreamPath: 'xstest_prompts.csv',
        sha256: '11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a',
        bytes: 38719,
      },
      {
        path: 'xstest/xstest_v2_prompts.csv',
        ...XSTEST_V2,
        upstreamPath: 'xstest_v2_prompts.csv',
        sha256: 'e15832490045469ea1d6f6d3ee5674398fae2ed95962f35f5c90c4f557a86509',
        bytes: 39308,
      },
      {
        path: 'xstest/LICENSE',
        ...XSTEST,
        upstreamPath: 'LICENSE',
        sha256: '9e5f1b3c610b9c2da5c313bf81d577a7d1acec686bdb0384edefa6df0f90cd94',
        bytes: 18656,
      },
    ],
  },
  {
    name: 'alpaca',
    description: 'Alpaca instructions without input, the refusal-direction split, seed tasks',
    licence: 'CC BY-NC 4.0 (data), Apache-2.0 (split)',
    byDefault: true,
    files: [
      {
        path: 'alpaca/alpaca_instructions_noinput.json',
        ...REFUSAL_DIRECTION,
        upstreamPath: 'dataset/processed/alpaca.json',
        sha256: 'c4ce1bdc5c9b92caabcb171c27c7ec1e79832836bae10291d7c8ab8c6245f600',
        bytes: 3908460,
      },
      {
        path: 'alpaca/harmless_train.json',
        ...REFUSAL_DIRECTION,
        upstreamPath: 'dataset/splits/harmless_train.json',
        sha256: '86623b1f8a25aa35df153fc97a556dbcebb6a7c881538ae43ee479ca17f2e002',
        bytes: 2344466,
      },
      {
        path: 'alpaca/harmless_val.json',
        ...REFUSAL_DIRECTION,
        upstreamPath: 'dataset/splits/harmless_val.json',
        sha256: '772010758e7d771ef4c7e5e4acdfd7598dcece1a6f383f20d382f640913a2a4d',
        bytes: 780532,
      },
      {
        path: 'alpaca/harmless_test.json',
        ...REFUSAL_DIRECTION,
        upstreamPath: 'dataset/splits/harmless_test.json',
        sha256: '1b5930ce5e855ada758b3116ce7c4aaea9b9d05f8cdd77b385511d4c84173b19',
        bytes: 783466,
      },
      {
        path: 'alpaca/LICENSE.refusal_direction_splits',
        ...REFUSAL_DIRECTION,
        upstreamPath: 'LICENSE',
        sha256: 'c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4',
        bytes: 11357,
      },
      {
        path: 'alpaca/seed_tasks.jsonl',
        ...ALPACA,
        upstreamPath: 'seed_tasks.jsonl',
        sha256: '7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48',
        bytes: 110934,
      },
      {
        path: 'alpaca/DATA_LICENSE',
        ...ALPACA,
        upstreamPath: 'DATA_LICENSE',
        sha256: '3711f963c05d0be80d53e5923308a6dee31b203da23435c9cfb7c7b6e4dd5e19',
        bytes: 19346,
      },
    ],
  },
  {
    name: 'gsm8k',
    description: 'GSM8K grade-school maths (test and train)',
    licence: 'MIT',
    byDefault: false,
    files: [
      {
        path: 'gsm8k/test.jsonl',
        ...GSM8K,
        upstreamPath: 'grade_school_math/data/test.jsonl',
        sha256: '3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14',
        bytes: 749738,
      },
      {
        path: 'gsm8k/train.jsonl',
        ...GSM8K,
        upstreamPath: 'grade_school_math/data/train.jsonl',
        sha256: '17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465',
        bytes: 4166206,
      },
      {
        path: 'gsm8k/LICENSE',
        ...GSM8K,
        upstreamPath: 'LICENSE',
        sha256: '86bbb73e855821d7c401912fd4bf82e34313e6e3b6fd6f909f2b6cc9e209a53b',
        bytes: 1062,
      },
    ],
  },
  {
    name: 'bbq',
    description: 'BBQ bias benchmark, 6 of its 11 categories',
    licence: 'CC-BY-4.0',
    byDefault: false,
    files: [
      bbqFile('Age', '46e805b3fc2d8cbd26eeb8e8430d98cf7b2dc9c83574ff3674e8ce4f0fca2a60', 3091834),
      bbqFile(
        'Disability_status',
        '375d40d9b71f056150264445ec189b13934998f3f49a1e311aa7578eb3b45e5f',
        1336984,
      ),
      bbqFile('Nationality', 'a583e74666aec0341ded8aa3983e7cad694eb24de72c254d28b2df3035720090', 2900040),
      bbqFile(
        'Physical_appearance',
        'e48d7e13508565f4801574e611043470c25c95a0a62af3699cb5ee7cb02608fb',
        1347476,
      ),
      bbqFile('Religion', 'cb9555f9f3454a52cd2df85956b59bd7fcca5aa922c8527693b1164d08417616', 1118728),
      bbqFile(
        'Sexual_orientation',
        '2c71036b9e7584fe589c42aef32c1a42bc01b9a5e9b1b8704342630cdb08cefd',
        729010,
      ),
      {
        path: 'bbq/LICENSE',
        ...BBQ,
        upstreamPath: 'LICENSE',
        sha256: '95df2e9564862e51d69683a899b6dcc8218d577057bdf67322880769ff85f29e',
        bytes: 18649,
      },
    ],
  },
  {
    name: 'crows_pairs',
    description: 'CrowS-Pairs stereotype sentence pairs',
    licence: 'CC BY-SA 4.0',
    byDefault: false,
    files: [
      {
        path: 'crows_pairs/crows_pairs_anonymized.csv',
        ...CROWS_PAIRS,
        upstreamPath: 'data/crows_pairs_anonymized.csv',
        sha256: 'dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c',
        bytes: 437764,
      },
    ],
  },
];

/** Folders of the reference layout that `steerguard data fetch` does not download. */
export const UNFETCHABLE_DATASETS: readonly UnfetchableDataset[] = [
  {
    name: 'truthfulqa',
    reason:
      'its upstream file (sylinrl/TruthfulQA, TruthfulQA.csv) has not been checked against the reference ' +
      'copy, so no checksum is pinned; put TruthfulQA.csv in truthfulqa/ of a --data-dir folder',
  },
  {
    name: 'mmlu',
    reason:
      'the reference copy is re-laid-out (one CSV per subject with a question,choice0..choice3,answer ' +
      'header), not an upstream file; lay it out that way in mmlu/ of a --data-dir folder',
  },
];

/** The source of `name` (a folder name), or undefined. */
export function datasetSource(name: string): DatasetSource | undefined {
  return DATASET_SOURCES.find((d) => d.name === name);
}

/** The dataset folder a data-directory path such as `xstest/xstest_prompts.csv` belongs to. */
export function datasetOfFile(relPath: string): string {
  return relPath.split('/')[0];
}

/** `base/owner/name/ref/path`: the raw-file URL on GitHub, or the same layout on a mirror. */
export function sourceUrl(file: SourceFile, base: string = UPSTREAM_BASE): string {
  return `${base.replace(/\/+$/, '')}/${file.repo}/${file.ref}/${file.upstreamPath}`;
}

/**
 * The dataset cache `steerguard data fetch` fills: `$STEERGUARD_CACHE/datasets` when that
 * variable is set (it names steerguard's cache root), else `$XDG_CACHE_HOME/steerguard/datasets`,
 * else `~/.cache/steerguard/datasets`.
 */
export function datasetCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.STEERGUARD_CACHE !== undefined && env.STEERGUARD_CACHE !== '') {
    return path.join(env.STEERGUARD_CACHE, 'datasets');
  }
  const xdg = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== '' ? env.XDG_CACHE_HOME : undefined;
  return path.join(xdg ?? path.join(homedir(), '.cache'), 'steerguard', 'datasets');
}
