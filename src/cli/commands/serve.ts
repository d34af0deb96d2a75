/**
 * `steerguard serve --model M`: the guarded OpenAI-compatible server (src/server/, docs/SERVER.md).
 * Runs until SIGINT or SIGTERM, then stops accepting, lets requests in flight finish for
 * --grace seconds, cancels the rest and exits 0.
 */
import { OptionError, SteerguardError } from '../../formats/errors.js';
import { POLICIES } from '../../server/requests.js';
import { MODEL_OPTION, THREADS_OPTION, WEIGHTS_OPTION, checkInputFile, command, para } from './common.js';

const BLOCK_MESSAGE = "I can't help with that request.";

export const serveCommand = command(
  {
    name: 'serve',
    summary: 'a guarded OpenAI-compatible server: per-request steering, the monitor in the stream',
    description: para(
      'Serves /v1/chat/completions and /v1/completions (streaming or not), /v1/models, /health and ' +
        '/metrics. With a monitor (--reading or --concept) every response carries the verdict on its ' +
        'prompt, and --policy (or a request\'s "steerguard": {"policy": ...}) decides what it does: ' +
        'flag annotates, steer applies the gated correction with --vector (add to flagged requests; with ' +
        '--benign-below, ablate from clearly benign ones), block answers flagged requests with a refusal ' +
        'and never generates, stop ends a reply at the first token whose score crosses the threshold. ' +
        'Requests may add control vectors loaded from --vectors by name. Binds 127.0.0.1; any other ' +
        '--host needs --api-key (or $STEERGUARD_API_KEY). No prompt or reply text is logged. See docs/SERVER.md.',
    ),
    options: {
      model: MODEL_OPTION,
      reading: {
        type: 'string',
        placeholder: 'reading.json',
        description: 'the monitor: a reading (concept generalize --save-reading)',
      },
      concept: {
        type: 'string',
        placeholder: 'file',
        description: 'the monitor: a concept file, instead of --reading',
      },
      monitorLayer: {
        type: 'number',
        integer: true,
        min: 0,
        description: "layer a --concept monitor reads (default: the concept's)",
      },
      threshold: {
        type: 'number',
        description: "flag prompts scoring above this (default: the reading's or concept's own)",
      },
      benignBelow: {
        type: 'number',
        description:
          'two-sided gate: prompts scoring below this are clearly benign (policy steer ablates --vector)',
      },
      vector: {
        type: 'string',
        placeholder: 'file.gguf',
        description: 'the gate of policy steer: refusal direction or control vector added to flagged prompts',
      },
      coeff: { type: 'number', default: 1, description: 'coefficient the gate adds --vector with' },
      vectors: {
        type: 'string',
        placeholder: 'dir',
        description: 'folder of control vectors (*.gguf) requests may name in "steerguard": {"steer": ...}',
      },
      policy: {
        type: 'enum',
        values: POLICIES,
        default: 'flag',
        description: 'policy of a request that names none',
      },
      policyPinned: {
        type: 'boolean',
        description:
          'requests may not choose another policy than --policy: one that names another gets HTTP 403',
      },
      host: { type: 'string', default: '127.0.0.1', description: 'address to bind' },
      port: {
        type: 'number',
        integer: true,
        min: 0,
        max: 65535,
        default: 8000,
        description: 'port (0: any free one)',
      },
      apiKey: {
        type: 'string',
        placeholder: 'key',
        description: 'bearer token clients must send (default: $STEERGUARD_API_KEY; required off loopback)',
      },
      batch: {
        type: 'number',
        integer: true,
        min: 1,
        max: 256,
        default: 8,
        description: 'sequences decoded together',
      },
      queue: {
        type: 'number',
        integer: true,
        min: 0,
        default: 16,
        description: 'requests that may wait beyond --batch; past it: HTTP 429 with Retry-After',
      },
      maxTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: 512,
        description: 'largest max_tokens a request may ask for (and the default)',
      },
      maxPromptTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: 4096,
        description: "longest prompt in tokens (also bounded by the model's context)",
      },
      bodyLimit: {
        type: 'number',
        integer: true,
        min: 1024,
        default: 1 << 20,
        description: 'largest request body in bytes; past it: HTTP 413',
      },
      grace: {
        type: 'number',
        min: 0,
        default: 30,
        description: 'seconds requests in flight may take to finish at shutdown before they are cancelled',
      },
      logRequests: {
        type: 'boolean',
        description: 'one line per request on stderr (method, path, status, time; never text)',
      },
      dashboardText: {
        type: 'boolean',
        description:
          'show prompt and reply text on the dashboard at / (default: token counts, scores and prompt hashes only)',
      },
      threads: THREADS_OPTION,
      weights: WEIGHTS_OPTION,
    },
    examples: [
      'steerguard serve -m .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000',
      'steerguard serve -m qwen.gguf --reading reading.json --vector refusal.gguf --benign-below 0 --policy steer',
      'STEERGUARD_API_KEY=... steerguard serve -m qwen.gguf --host 0.0.0.0 --vectors vectors/',
    ],
  },
  async (args, out) => {
    const o = args.options;
    if (o.reading !== undefined && o.concept !== undefined)
      throw new OptionError('give the monitor as --reading or --concept, not both');
    const monitor = o.reading !== undefined || o.concept !== undefined;
    if (!monitor && (o.vector !== undefined || o.threshold !== undefined || o.benignBelow !== undefined))
      throw new OptionError(
        '--vector, --threshold and --benign-below need a monitor: --reading or --concept',
      );
    if (o.policy !== 'flag' && !monitor)
      throw new OptionError(`--policy ${o.policy} needs --reading or --concept`);
    if (o.policy === 'steer' && o.vector === undefined)
      throw new OptionError('--policy steer needs --vector (the gate)');
    if (o.monitorLayer !== undefined && o.concept === undefined)
      throw new OptionError('--monitor-layer needs --concept');
    checkInputFile('--reading', o.reading);
    checkInputFile('--concept', o.concept);
    checkInputFile('--vector', o.vector);
    checkInputFile('--vectors', o.vectors);
    const apiKey = o.apiKey ?? (process.env.STEERGUARD_API_KEY || undefined);
    const { checkExposure, startServer } = await import('../../server/serve.js');
    checkExposure(o.host, apiKey);
    out.info(`loading ${o.model} in the model worker`);
    const server = await startServer({
      engine: {
        model: o.model,
        threads: o.threads,
        weights: o.weights,
        reading: o.reading,
        concept: o.concept,
        monitorLayer: o.monitorLayer,
        threshold: o.threshold,
        benignBelow: o.benignBelow,
        vector: o.vector,
        coeff: o.coeff,
        vectorsDir: o.vectors,
        maxBatch: o.batch,
        maxPromptTokens: o.maxPromptTokens,
        maxTokens: o.maxTokens,
        blockMessage: BLOCK_MESSAGE,
      },
      host: o.host,
      port: o.port,
      apiKey,
      queue: o.queue,
      policy: o.policy,
      policyPinned: o.policyPinned ?? false,
      bodyLimit: o.bodyLimit,
      log: o.logRequests ? (line) => out.info(line) : undefined,
      dashboardText: o.dashboardText ?? false,
    });
    const i = server.info;
    out.info(
      `serving ${i.model} on ${server.url} (${i.backend}; batch ${o.batch}, queue ${o.queue}; ` +
        `monitor ${i.monitor ? `threshold ${i.monitor.threshold}` : 'none'}; ` +
        `policy ${o.policy}${o.policyPinned ? ' (pinned)' : ''}; ${i.vectors.length} vectors; ` +
        `${apiKey ? 'API key required' : 'no API key'}); dashboard at ${server.url}/`,
    );
    const lost = server.lost.then((why) => {
      throw new SteerguardError(`the model worker stopped: ${why}`);
    });
    const stopped = new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        out.info(`${signal}: no new requests; finishing those in flight (at most ${o.grace}s)`);
        void server.close(o.grace * 1000).then(resolve);
      };
      const onInt = () => stop('SIGINT');
      const onTerm = () => stop('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
    });
    await Promise.race([stopped, lost]);
    out.result({ url: server.url, stopped: true }, 'stopped');
  },
);
