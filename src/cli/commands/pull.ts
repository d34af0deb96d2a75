/** `steerguard pull REPO`: download a Hugging Face model into the local hub cache. */
import { command, para, formatBytes } from './common.js';

export const pullCommand = command(
  {
    name: 'pull',
    summary: 'download a Hugging Face model into the local hub cache',
    description: para(
      'Fetches config, tokenizer and safetensors weights (or the exact --file paths) into the hub cache ' +
        'shared with Python huggingface_hub ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub) and ' +
        'prints the snapshot folder. Afterwards the repo id can be used wherever a model is expected. ' +
        'Gated models need $HF_TOKEN; HF_HUB_OFFLINE=1 refuses to download.',
    ),
    positionals: [{ name: 'repo', description: 'repo id, org/name or org/name@revision' }],
    options: {
      revision: {
        type: 'string',
        placeholder: 'rev',
        description: 'branch, tag or commit (default: main, or @rev in the id)',
      },
      file: {
        type: 'list',
        placeholder: 'path,...',
        description: 'fetch exactly these repository files (e.g. one .gguf) instead of the default set',
      },
      cacheDir: {
        type: 'string',
        placeholder: 'dir',
        description: 'hub cache folder to fill (default: the hub cache)',
      },
      timeout: {
        type: 'number',
        min: 1,
        default: 15,
        description: 'seconds to wait for the Hub to answer a request',
      },
    },
    examples: [
      'steerguard pull HuggingFaceTB/SmolLM2-135M-Instruct',
      'steerguard pull Qwen/Qwen2.5-0.5B-Instruct@main --json',
      'steerguard pull unsloth/gemma-3-270m-it-GGUF --file gemma-3-270m-it-Q4_K_M.gguf',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const repo = args.positionals[0];
    const { pullModel } = await import('../../formats/hf.js');
    const start = performance.now();
    const files: { file: string; bytes: number }[] = [];
    const dir = await pullModel(repo, {
      revision: o.revision,
      files: o.file,
      cacheDir: o.cacheDir,
      timeoutMs: o.timeout * 1000,
      onProgress: (p) => {
        files.push({ file: p.file, bytes: p.bytes });
        out.info(`[${p.index}/${p.total}] ${p.file} (${formatBytes(p.bytes)})`);
      },
    });
    const seconds = (performance.now() - start) / 1000;
    out.result({ repo, revision: o.revision ?? null, path: dir, files, seconds }, dir);
  },
);
