/**
 * The model worker thread: loads the model (service.ts) and serves the HTTP side's messages
 * (protocol.ts), so that forward passes never block the HTTP event loop.
 */
import { parentPort, workerData } from 'node:worker_threads';

import type { EngineSettings, FromWorker, ToWorker } from './protocol.js';
import { ModelService } from './service.js';

const port = parentPort;
if (!port) throw new Error('src/server/worker.ts runs as a worker thread (see engine.ts)');
const post = (m: FromWorker): void => port.postMessage(m);

try {
  const service = await ModelService.load(workerData as EngineSettings, post);
  port.on('message', (m: ToWorker) => {
    if (m.type === 'submit') service.submit(m.id, m.job);
    else service.cancel(m.id);
  });
  post({ type: 'ready', info: service.info() });
} catch (e) {
  post({ type: 'fatal', message: e instanceof Error ? e.message : String(e) });
}
