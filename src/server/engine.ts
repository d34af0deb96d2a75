/**
 * The HTTP side's handle on the model worker: starts it, numbers jobs, routes the worker's
 * messages to each job's listener, and counts what is in flight (the queue bound is checked
 * against it before a job is sent).
 */
import { Worker } from 'node:worker_threads';

import { NativeUnavailableError, loadNativeBackend } from '../engine/native.js';
import { SteerguardError } from '../formats/errors.js';
import type {
  EngineInfo,
  EngineSettings,
  FinishReason,
  FromWorker,
  SteeringApplied,
  ToWorker,
  Verdict,
} from './protocol.js';
import { type Job, RequestError } from './requests.js';

/** What the worker made of a job before generating. */
export interface Accepted {
  readonly promptTokens: number;
  readonly verdict: Verdict | null;
  readonly steering: SteeringApplied;
  /** Policy block refused it: no generation runs, the reply is the block message. */
  readonly blocked: boolean;
}

export interface Finished {
  readonly finishReason: FinishReason;
  readonly completionTokens: number;
  readonly text: string;
}

/** A job's stream of events, after `accepted` resolved. */
export interface JobListener {
  /** `tokens`: tokens generated so far. */
  onText(text: string, tokens: number): void;
  onScore(index: number, score: number): void;
  onDone(result: Finished): void;
  onFailed(error: RequestError): void;
}

/** A submitted job: `accepted` rejects with a RequestError when the worker refuses it. */
export interface JobHandle {
  readonly accepted: Promise<Accepted>;
  /** Where its events go; those that came before are replayed to it. */
  listen(listener: JobListener): void;
  /** Ends its generation at the next step; its `onDone` then says `cancelled`. */
  cancel(): void;
}

interface Pending {
  accept: (a: Accepted) => void;
  refuse: (e: RequestError) => void;
  listener?: JobListener;
  /** Events that came before a listener. */
  early: ((l: JobListener) => void)[];
  accepted: boolean;
}

function deliver(job: Pending, event: (l: JobListener) => void): void {
  if (job.listener) event(job.listener);
  else job.early.push(event);
}

export class ModelWorker {
  private readonly jobs = new Map<number, Pending>();
  private nextId = 1;
  private failure: string | undefined;
  private announceLoss!: (why: string) => void;
  /** Resolves, with the reason, when the worker is gone (failed, or closed). */
  readonly lost = new Promise<string>((resolve) => (this.announceLoss = resolve));
  /** Sequences queued in the worker's decoder, and decoding (as of its last step). */
  load = { waiting: 0, active: 0 };

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
  ) {
    worker.on('message', (m: FromWorker) => this.receive(m));
    worker.on('error', (e) => this.fail(`the model worker failed: ${e.message}`));
    worker.on('exit', (code) => this.fail(`the model worker exited (code ${code})`));
  }

  /** Starts the worker and waits until the model is loaded; throws what the worker could not load. */
  static start(settings: EngineSettings): Promise<ModelWorker> {
    pinNativeEngine(settings.threads);
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: settings });
    return new Promise((resolve, reject) => {
      const onExit = (code: number) => reject(new SteerguardError(`the model worker exited (code ${code})`));
      worker.once('error', reject);
      worker.once('exit', onExit);
      worker.once('message', (m: FromWorker) => {
        worker.off('error', reject);
        worker.off('exit', onExit);
        if (m.type === 'ready') resolve(new ModelWorker(worker, m.info));
        else {
          void worker.terminate();
          reject(new SteerguardError(m.type === 'fatal' ? m.message : `unexpected first message ${m.type}`));
        }
      });
    });
  }

  /** Jobs sent and not finished. */
  get inFlight(): number {
    return this.jobs.size;
  }

  /** Why the worker is gone, if it is. */
  get failed(): string | undefined {
    return this.failure;
  }

  submit(job: Job): JobHandle {
    if (this.failure) throw new RequestError(503, this.failure, null, 'model_unavailable');
    const id = this.nextId++;
    let pending!: Pending;
    const accepted = new Promise<Accepted>((accept, refuse) => {
      pending = { accept, refuse, early: [], accepted: false };
    });
    this.jobs.set(id, pending);
    this.send({ type: 'submit', id, job });
    return {
      accepted,
      listen: (listener) => {
        pending.listener = listener;
        for (const event of pending.early.splice(0)) event(listener);
      },
      cancel: () => {
        if (this.jobs.has(id)) this.send({ type: 'cancel', id });
      },
    };
  }

  /** Cancels every job in flight. */
  cancelAll(): void {
    for (const id of this.jobs.keys()) this.send({ type: 'cancel', id });
  }

  async close(): Promise<void> {
    this.failure ??= 'the server is shutting down';
    await this.worker.terminate();
  }

  private send(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  private receive(m: FromWorker): void {
    if (m.type === 'load') {
      this.load = { waiting: m.waiting, active: m.active };
      return;
    }
    if (m.type === 'ready' || m.type === 'fatal') return;
    const job = this.jobs.get(m.id);
    if (!job) return;
    switch (m.type) {
      case 'accepted':
        job.accepted = true;
        job.accept({
          promptTokens: m.promptTokens,
          verdict: m.verdict,
          steering: m.steering,
          blocked: m.blocked,
        });
        return;
      case 'rejected':
        this.jobs.delete(m.id);
        job.refuse(new RequestError(m.status, m.message, m.param));
        return;
      case 'text':
        deliver(job, (l) => l.onText(m.text, m.tokens));
        return;
      case 'score':
        deliver(job, (l) => l.onScore(m.index, m.score));
        return;
      case 'done':
        this.jobs.delete(m.id);
        if (!job.accepted) {
          // A job whose verdict comes with its prompt pass is accepted only then; cancelled while
          // it waited for a place, it never started.
          job.refuse(
            m.finishReason === 'cancelled'
              ? new RequestError(503, 'the request was cancelled before it started', null, 'cancelled')
              : new RequestError(500, 'the job ended before it was accepted'),
          );
          return;
        }
        deliver(job, (l) =>
          l.onDone({ finishReason: m.finishReason, completionTokens: m.completionTokens, text: m.text }),
        );
        return;
      case 'failed': {
        this.jobs.delete(m.id);
        const error = new RequestError(500, `generation failed: ${m.message}`);
        if (!job.accepted) job.refuse(error);
        else deliver(job, (l) => l.onFailed(error));
        return;
      }
    }
  }

  private fail(why: string): void {
    this.failure ??= why;
    this.announceLoss(this.failure);
    const error = new RequestError(503, this.failure, null, 'model_unavailable');
    for (const job of this.jobs.values()) {
      if (!job.accepted) job.refuse(error);
      else deliver(job, (l) => l.onFailed(error));
    }
    this.jobs.clear();
  }
}

/**
 * Loads the native engine in this thread too, for the life of the process. An addon loaded only
 * by a worker is unloaded when the worker exits, and OpenBLAS with it, while OpenBLAS's own
 * threads (started when threads > 1) still run: they then jump into unmapped code (a segfault at
 * shutdown). The thread count is process-wide, so this sets the one the worker sets.
 */
function pinNativeEngine(threads: number | undefined): void {
  if (process.env.STEERGUARD_BACKEND === 'reference') return;
  try {
    loadNativeBackend({ threads });
  } catch (e) {
    if (!(e instanceof NativeUnavailableError)) throw e;
  }
}
