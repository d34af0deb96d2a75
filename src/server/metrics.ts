/**
 * The server's Prometheus metrics (`/metrics`), on a registry of its own so that two servers in
 * one process (tests) do not share counters.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'steerguard_requests_total',
    help: 'HTTP requests answered, by endpoint and status',
    labelNames: ['endpoint', 'status'] as const,
    registers: [this.registry],
  });
  readonly tokens = new Counter({
    name: 'steerguard_tokens_total',
    help: 'Tokens processed, by kind (prompt, completion)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly verdicts = new Counter({
    name: 'steerguard_verdicts_total',
    help: "The monitor's verdicts on prompts (flagged, benign, uncertain), and replies blocked or stopped by policy",
    labelNames: ['verdict'] as const,
    registers: [this.registry],
  });
  readonly cancelled = new Counter({
    name: 'steerguard_requests_cancelled_total',
    help: 'Generations cancelled before their end (the client left, or the server stopped)',
    registers: [this.registry],
  });
  readonly latency = new Histogram({
    name: 'steerguard_request_duration_seconds',
    help: 'Time from a generation request to its last byte, by endpoint',
    labelNames: ['endpoint'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });
  readonly firstToken = new Histogram({
    name: 'steerguard_time_to_first_token_seconds',
    help: 'Time from a generation request to its first generated text',
    labelNames: ['endpoint'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  /** `load()` is read at each scrape: jobs in flight, queued in the decoder, decoding. */
  constructor(load: () => { inFlight: number; waiting: number; active: number }) {
    new Gauge({
      name: 'steerguard_requests_in_flight',
      help: 'Generation requests accepted and not finished',
      registers: [this.registry],
      collect() {
        this.set(load().inFlight);
      },
    });
    new Gauge({
      name: 'steerguard_queue_depth',
      help: "Sequences waiting for a place in the decoder's batch",
      registers: [this.registry],
      collect() {
        this.set(load().waiting);
      },
    });
    new Gauge({
      name: 'steerguard_batch_size',
      help: 'Sequences decoding together',
      registers: [this.registry],
      collect() {
        this.set(load().active);
      },
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'steerguard_' });
  }
}
