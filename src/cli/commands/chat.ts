/**
 * `steerguard chat MODEL`: a multi-turn conversation. On a terminal it is interactive (prompt,
 * streamed replies, /reset, /exit, Ctrl-C stops a reply); with stdin from a pipe or file each line
 * is one user message and each reply is printed on stdout, so sessions can be scripted.
 */
import { createInterface } from 'node:readline';

import { SteerguardError } from '../../formats/errors.js';
import type { ChatMessage } from '../../formats/tokenizer.js';
import { hasChatTemplate } from '../../eval/prompt-sets.js';
import type { Model } from '../../model/model.js';
import {
  ADAPTER_OPTION,
  SAMPLING_OPTIONS,
  THREADS_OPTION,
  WEIGHTS_OPTION,
  attachAdapters,
  command,
  para,
  loadModel,
  unescape,
} from './common.js';

const HELP_TEXT = 'commands: /reset (forget the conversation), /exit (quit), /help';

export const chatCommand = command(
  {
    name: 'chat',
    summary: 'talk to a chat model, turn by turn',
    description: para(
      'Interactive on a terminal: type a message, the reply streams back; /reset clears the history, ' +
        '/exit (or Ctrl-D) quits, Ctrl-C stops a reply. When stdin is not a terminal, every line is one ' +
        'user message and every reply is printed followed by a newline (with --json: one JSON document at ' +
        'the end). The model needs a chat template.',
    ),
    positionals: [{ name: 'model', description: '.gguf file, Hugging Face model folder, or cached repo id' }],
    options: {
      system: { type: 'string', placeholder: 'text', description: 'system message for the conversation' },
      maxTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: 256,
        description: 'tokens per reply at most',
      },
      ...SAMPLING_OPTIONS,
      stop: {
        type: 'list',
        placeholder: 's1,s2',
        description: 'also stop a reply at these strings (\\n and \\t are understood)',
      },
      threads: THREADS_OPTION,
      weights: WEIGHTS_OPTION,
      adapter: ADAPTER_OPTION,
    },
    examples: [
      'steerguard chat .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf',
      "steerguard chat model.gguf --system 'You are terse.' --temperature 0.7",
      "printf 'Hi!\\nWhat did I just say?\\n' | steerguard chat model.gguf --max-tokens 32 --json",
    ],
  },
  async (args, out) => {
    const o = args.options;
    const interactive = process.stdin.isTTY === true && !out.json;
    const model = await loadModel(args.positionals[0], out, {
      threads: o.threads,
      weights: o.weights,
    });
    await attachAdapters(model, o.adapter, out);
    if (!hasChatTemplate(model)) {
      throw new SteerguardError(
        `${model.identity.name} has no chat template (a base model?); use 'steerguard generate --no-chat' instead`,
      );
    }
    const session = new ChatSession(model, o.system);
    const settings = {
      maxNewTokens: o.maxTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      repetitionPenalty: o.repetitionPenalty,
      seed: o.seed,
      stop: o.stop?.map(unescape),
    };

    const rl = createInterface({
      input: process.stdin,
      output: interactive ? process.stdout : undefined,
      terminal: interactive,
    });
    let controller: AbortController | undefined;
    let quit = false;
    // readline turns Ctrl-C on a terminal into this event instead of a process signal.
    const interrupt = (): void => {
      if (controller && !controller.signal.aborted) controller.abort();
      else {
        quit = true;
        rl.close();
      }
    };
    rl.on('SIGINT', interrupt);
    process.on('SIGINT', interrupt);

    const turns: { turn: number; reply: string; tokens: number; finishReason: string; seconds: number }[] =
      [];
    if (interactive) {
      out.info(`chatting with ${model.identity.name}; ${HELP_TEXT}`);
      rl.setPrompt('> ');
      rl.prompt();
    }
    try {
      for await (const raw of rl) {
        const line = raw.trim();
        if (line === '') {
          if (interactive) rl.prompt();
          continue;
        }
        if (line === '/exit' || line === '/quit') break;
        if (line === '/reset') {
          session.reset();
          if (interactive) {
            out.info('(conversation cleared)');
            rl.prompt();
          }
          continue;
        }
        if (line === '/help') {
          out.info(HELP_TEXT);
          if (interactive) rl.prompt();
          continue;
        }
        controller = new AbortController();
        // On a pipe every reply ends with exactly one newline, an empty one too, so that scripts
        // can count replies by lines.
        let endedWithNewline = interactive;
        const start = performance.now();
        const reply = await session.send(raw, {
          ...settings,
          signal: controller.signal,
          onDropped: (n) =>
            out.warn(`the conversation is longer than the context: dropped the ${n} oldest turn(s)`),
          onText: out.json
            ? undefined
            : (text) => {
                if (text === '') return;
                out.stdout.write(text);
                endedWithNewline = text.endsWith('\n');
              },
        });
        controller = undefined;
        const seconds = (performance.now() - start) / 1000;
        if (!out.json && !endedWithNewline) out.stdout.write('\n');
        if (reply.finishReason === 'aborted' && interactive) out.info('(stopped)');
        turns.push({
          turn: turns.length,
          reply: reply.text,
          tokens: reply.tokens,
          finishReason: reply.finishReason,
          seconds,
        });
        if (quit) break;
        if (interactive) rl.prompt();
      }
    } finally {
      process.off('SIGINT', interrupt);
      rl.close();
    }
    if (out.json) out.result({ model: model.identity.name, turns });
  },
);

/** The conversation state: the history sent to the chat template on every turn. */
export class ChatSession {
  readonly #model: Model;
  readonly #system: string | undefined;
  #history: ChatMessage[] = [];

  constructor(model: Model, system: string | undefined) {
    this.#model = model;
    this.#system = system;
  }

  reset(): void {
    this.#history = [];
  }

  get history(): readonly ChatMessage[] {
    return this.#history;
  }

  /**
   * Adds the user message, generates the reply and keeps it in the history (an aborted reply is
   * kept as far as it got, so the next turn sees what the user saw). Whole old turns are dropped
   * when the conversation no longer fits the context.
   */
  async send(
    message: string,
    opts: {
      maxNewTokens: number;
      temperature: number;
      topK: number;
      topP: number;
      repetitionPenalty: number;
      seed: number;
      stop?: string[];
      signal?: AbortSignal;
      onText?: (text: string) => void;
      onDropped?: (turns: number) => void;
    },
  ): Promise<{ text: string; tokens: number; finishReason: string }> {
    this.#history.push({ role: 'user', content: message });
    const limit = this.#model.config.maxContext - opts.maxNewTokens;
    let dropped = 0;
    for (;;) {
      const tokens = this.#model.tokenize({ messages: this.#messages() }).length;
      if (tokens <= limit || this.#history.length <= 1) break;
      // Drop the oldest user turn and the reply that answered it.
      this.#history.splice(0, this.#history[1]?.role === 'assistant' ? 2 : 1);
      dropped++;
    }
    if (dropped > 0) opts.onDropped?.(dropped);
    const [g] = await this.#model.generate([{ messages: this.#messages() }], {
      maxNewTokens: opts.maxNewTokens,
      temperature: opts.temperature,
      topK: opts.topK,
      topP: opts.topP,
      repetitionPenalty: opts.repetitionPenalty,
      seed: opts.seed,
      stop: opts.stop,
      signal: opts.signal,
      onText: opts.onText ? (_i, text) => opts.onText!(text) : undefined,
    });
    this.#history.push({ role: 'assistant', content: g.text });
    return { text: g.text, tokens: g.tokens.length, finishReason: g.finishReason };
  }

  #messages(): ChatMessage[] {
    return this.#system === undefined
      ? [...this.#history]
      : [{ role: 'system', content: this.#system }, ...this.#history];
  }
}
