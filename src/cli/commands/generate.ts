/** `steerguard generate MODEL PROMPT...`: text continuations, streamed for a single prompt. */
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { Generation, Prompt } from '../../model/model.js';
import {
  ADAPTER_OPTION,
  CHAT_OPTIONS,
  SAMPLING_OPTIONS,
  THREADS_OPTION,
  WEIGHTS_OPTION,
  attachAdapters,
  command,
  para,
  loadModel,
  unescape,
  useChat,
} from './common.js';

export const generateCommand = command(
  {
    name: 'generate',
    summary: 'generate text from one or more prompts',
    description: para(
      'Prompts come from the arguments or from a prompt file (CSV, JSON, JSONL); several prompts are ' +
        'generated together as one batch. A single prompt is streamed to stdout as it is generated. ' +
        'Decoding is greedy unless --temperature > 0. Prompt text from a file is never printed.',
    ),
    positionals: [
      { name: 'model', description: '.gguf file, Hugging Face model folder, or cached repo id' },
      { name: 'prompt', description: 'prompt text (several allowed)', required: false, variadic: true },
    ],
    options: {
      promptFile: {
        type: 'string',
        placeholder: 'file',
        description: 'read prompts from a CSV, JSON or JSONL file',
      },
      column: {
        type: 'string',
        placeholder: 'name',
        description: 'field of --prompt-file holding the prompt (default: prompt, instruction, goal, ...)',
      },
      limit: {
        type: 'number',
        integer: true,
        min: 1,
        description: 'use only the first N prompts of --prompt-file',
      },
      ...CHAT_OPTIONS,
      system: {
        type: 'string',
        placeholder: 'text',
        description: 'system message (needs the chat template)',
      },
      maxTokens: {
        type: 'number',
        integer: true,
        min: 0,
        default: 128,
        description: 'tokens to generate at most',
      },
      ...SAMPLING_OPTIONS,
      stop: {
        type: 'list',
        placeholder: 's1,s2',
        description: 'stop at any of these strings (\\n and \\t are understood)',
      },
      threads: THREADS_OPTION,
      weights: WEIGHTS_OPTION,
      adapter: ADAPTER_OPTION,
    },
    examples: [
      "steerguard generate model.gguf 'Write a haiku about rivers.' --max-tokens 48",
      'steerguard generate model.gguf --prompt-file prompts.csv --column goal --limit 8 --json > out.json',
      "steerguard generate gemma.gguf 'The capital of France is' --no-chat --temperature 0.7 --seed 1 --stop '\\n'",
    ],
  },
  async (args, out) => {
    const o = args.options;
    const [modelName, ...texts] = args.positionals;
    if (o.promptFile !== undefined && texts.length > 0) {
      throw new OptionError('give prompts as arguments or with --prompt-file, not both');
    }
    if (o.promptFile === undefined && (o.column !== undefined || o.limit !== undefined)) {
      throw new OptionError(`--${o.column !== undefined ? 'column' : 'limit'} needs --prompt-file`);
    }
    if (o.system !== undefined && o.noChat)
      throw new OptionError('--system needs the chat template: drop --no-chat');
    if (o.promptFile === undefined && texts.length === 0) {
      throw new OptionError('no prompt: give one as an argument or use --prompt-file');
    }
    const prompts =
      o.promptFile === undefined
        ? texts
        : (await import('../../data/prompts.js'))
            .loadPromptFile(o.promptFile, { column: o.column, limit: o.limit })
            .map((r) => r.text);

    const model = await loadModel(modelName, out, { threads: o.threads, weights: o.weights });
    await attachAdapters(model, o.adapter, out);
    const chat = useChat(model, o);
    if (o.system !== undefined && !chat) {
      throw new OptionError(
        `--system needs a chat template, and ${path.basename(model.identity.path)} has none`,
      );
    }
    const inputs: Prompt[] = prompts.map((text) =>
      chat
        ? {
            messages: [
              ...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []),
              { role: 'user', content: text },
            ],
          }
        : text,
    );

    const stream = prompts.length === 1 && !out.json;
    const controller = new AbortController();
    const onSigint = (): void => {
      if (controller.signal.aborted) process.exit(130);
      controller.abort();
    };
    process.on('SIGINT', onSigint);
    if (prompts.length > 1) {
      out.info(`generating ${prompts.length} prompts as one batch${chat ? ' (chat template)' : ''}`);
    }
    const start = performance.now();
    let results: Generation[];
    let endedWithNewline = true;
    try {
      results = await model.generate(inputs, {
        maxNewTokens: o.maxTokens,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        repetitionPenalty: o.repetitionPenalty,
        seed: o.seed,
        stop: o.stop?.map(unescape),
        signal: controller.signal,
        onText: stream
          ? (_i, text) => {
              if (text === '') return;
              out.stdout.write(text);
              endedWithNewline = text.endsWith('\n');
            }
          : undefined,
      });
    } finally {
      process.off('SIGINT', onSigint);
    }
    const seconds = (performance.now() - start) / 1000;
    if (stream && !endedWithNewline) out.stdout.write('\n');

    const generated = results.reduce((s, r) => s + r.tokens.length, 0);
    const report = results.map((r, index) => ({
      index,
      text: r.text,
      tokens: r.tokens,
      promptTokens: r.promptTokens.length,
      finishReason: r.finishReason,
      timing: {
        seconds,
        batchSize: results.length,
        batchTokensPerSecond: seconds > 0 ? generated / seconds : 0,
      },
    }));
    const rate = `${(seconds > 0 ? generated / seconds : 0).toFixed(1)} tokens/s`;
    if (stream) {
      const r = results[0];
      out.info(`[${r.tokens.length} tokens, ${seconds.toFixed(1)}s, ${rate}, finish: ${r.finishReason}]`);
      if (r.finishReason === 'aborted') process.exitCode = 130;
      return;
    }
    out.result(
      report,
      (rep) =>
        rep
          .map(
            (r) =>
              `--- prompt ${r.index}: ${r.promptTokens} prompt tokens, ${r.tokens.length} generated, ${r.finishReason} ---\n` +
              r.text,
          )
          .join('\n') + `\n--- ${generated} tokens in ${seconds.toFixed(1)}s (${rate}) ---`,
    );
    if (results.some((r) => r.finishReason === 'aborted')) process.exitCode = 130;
  },
);
