/**
 * Prometheus metrics of the server, in a registry of its own (not prom-client's global one, so
 * two servers in one process do not collide). Latencies and token counts are recorded as
 * requests run; the engine's gauges are read from llm.stats() at scrape time.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SampleChunk, Tessera } from '../llm.js';

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export type MetricsFinishReason = 'stop' | 'length' | 'abort' | 'error';

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly ttft: Histogram;
  private readonly itl: Histogram;
  private readonly e2e: Histogram;
  private readonly promptTokens: Counter;
  private readonly generationTokens: Counter;
  private readonly requests: Counter<'finish_reason'>;

  constructor(llm: Tessera) {
    const registers = [this.registry];
    this.ttft = new Histogram({ name: 'tessera_time_to_first_token_seconds', help: 'Time from a request arriving to its first generated token.', buckets: TTFT_BUCKETS, registers });
    this.itl = new Histogram({ name: 'tessera_inter_token_latency_seconds', help: "Time between two tokens of one sample.", buckets: ITL_BUCKETS, registers });
    this.e2e = new Histogram({ name: 'tessera_e2e_request_latency_seconds', help: 'Time from a request arriving to its last token.', buckets: E2E_BUCKETS, registers });
    this.promptTokens = new Counter({ name: 'tessera_prompt_tokens_total', help: 'Prompt tokens of the requests accepted.', registers });
    this.generationTokens = new Counter({ name: 'tessera_generation_tokens_total', help: 'Tokens generated, over all samples.', registers });
    this.requests = new Counter({
      name: 'tessera_requests_total',
      help: 'Samples finished (one per choice: a request with n = 2 counts twice), by finish reason; abort: the client left or the server shut down.',
      labelNames: ['finish_reason'],
      registers,
    });
    for (const reason of ['stop', 'length', 'abort', 'error']) this.requests.inc({ finish_reason: reason }, 0);
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    gauge('tessera_requests_running', 'Requests the engine is running (in its batch).', () => llm.stats().running);
    gauge('tessera_requests_waiting', 'Requests waiting for a place in the batch.', () => llm.stats().waiting);
    gauge('tessera_kv_blocks_used', 'KV-cache blocks in use.', () => llm.stats().kvBlocksUsed);
    gauge('tessera_kv_blocks_total', 'KV-cache blocks in the pool.', () => llm.stats().kvBlocksTotal || llm.info.kvCacheBlocks);
    gauge('tessera_prefix_cache_hit_rate', 'Prompt tokens found in the prefix cache over those looked up, since start.', () => {
      const s = llm.stats();
      return s.prefixQueriedTokens > 0 ? s.prefixHitTokens / s.prefixQueriedTokens : 0;
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Starts recording a request accepted by the engine; `start` is performance.now() at its arrival. */
  track(start: number, numPromptTokens: number, n: number): RequestTracker {
    this.promptTokens.inc(numPromptTokens);
    return new RequestTracker(this, start, n);
  }

  /** @internal */
  record(kind: 'ttft' | 'itl' | 'e2e', seconds: number): void {
    this[kind].observe(seconds);
  }

  /** @internal */
  countTokens(n: number): void {
    this.generationTokens.inc(n);
  }

  /** @internal */
  countFinished(reason: MetricsFinishReason, count = 1): void {
    if (count > 0) this.requests.inc({ finish_reason: reason }, count);
  }
}

/** The timings of one request's samples. */
export class RequestTracker {
  private firstToken = false;
  private readonly lastToken: Array<number | null>;
  private readonly finished: boolean[];
  private ended = false;

  constructor(
    private readonly metrics: ServerMetrics,
    private readonly start: number,
    n: number,
  ) {
    this.lastToken = Array<number | null>(n).fill(null);
    this.finished = Array<boolean>(n).fill(false);
  }

  chunk(c: SampleChunk): void {
    const now = performance.now();
    if (c.tokenIds.length) {
      if (!this.firstToken) {
        this.firstToken = true;
        this.metrics.record('ttft', (now - this.start) / 1000);
      }
      const last = this.lastToken[c.index];
      if (last !== null) this.metrics.record('itl', (now - last) / 1000);
      this.lastToken[c.index] = now;
      this.metrics.countTokens(c.tokenIds.length);
    }
    if (c.finishReason !== null && !this.finished[c.index]) {
      this.finished[c.index] = true;
      this.metrics.countFinished(c.finishReason === 'length' ? 'length' : c.finishReason === 'abort' ? 'abort' : 'stop');
    }
  }

  /** The request ended: every sample finished, or it was cut short (`reason` for the unfinished ones). */
  end(reason: 'abort' | 'error' | null = null): void {
    if (this.ended) return;
    this.ended = true;
    const unfinished = this.finished.filter((f) => !f).length;
    if (unfinished === 0) this.metrics.record('e2e', (performance.now() - this.start) / 1000);
    else this.metrics.countFinished(reason ?? 'abort', unfinished);
  }
}
