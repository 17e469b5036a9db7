/**
 * Soak: 100 warm-up requests and then 500 more against the server on the demo model (CPU, the
 * engine in a worker thread as `tessera serve` runs it), 32 in flight at a time, streaming and
 * not, with about one in five aborted by its client at a random moment. Every request that was
 * not aborted must complete with exactly max_tokens tokens, every request must settle (complete
 * or reject with an abort error, none hanging), and afterwards nothing is left behind: no request
 * in flight, every KV block back in the pool, and the heap no larger than before the 500.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tessera } from '../../src/llm.js';
import { createServer, type TesseraServer } from '../../src/server/app.js';
import { mulberry32 as rng } from '../helpers/random.js';

const DEMO_DIR = path.resolve(import.meta.dirname, '../../models/demo');
const CONCURRENCY = 32;
const WARMUP_REQUESTS = 100;
const SOAK_REQUESTS = 500;
/** A request that takes longer than this has hung (a normal one takes about a second here). */
const REQUEST_TIMEOUT_MS = 30_000;
/**
 * How much the heap (this thread's: HTTP, client, tokenizer, front end) may grow over the 500
 * requests. Without a leak it stays flat: about 1 MiB of growth measured after a forced GC. The
 * bound is generous on purpose, so that it never fails on GC noise (without gc() the median of
 * samples still moves by tens of MiB), yet it catches what matters: anything a request leaves
 * behind of 128 KiB or more (a response body, an SSE buffer, a queue of chunks, a detokenizer)
 * adds up to 64 MiB over 500 requests. Smaller per-request leaks show up as requests still in
 * flight or KV blocks still in use, which are checked exactly.
 */
const HEAP_GROWTH_BOUND = 64 * 1024 * 1024;

let llm: Tessera;
let server: TesseraServer;

beforeAll(async () => {
  llm = await Tessera.load(DEMO_DIR, { device: 'cpu', engineThread: 'worker' });
  server = await createServer(llm, { port: 0 });
});

afterAll(async () => {
  await server?.close();
  await llm?.close();
});


type AbortPlan = { kind: 'none' } | { kind: 'timer'; ms: number } | { kind: 'after-chunks'; chunks: number };

interface Plan {
  prompt: number[];
  maxTokens: number;
  stream: boolean;
  abort: AbortPlan;
}

function plans(n: number, seed: number): Plan[] {
  const rand = rng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  return Array.from({ length: n }, () => {
    const prompt = Array.from({ length: int(4, 16) }, () => int(0, 255));
    const maxTokens = int(2, 12);
    const stream = rand() < 0.5;
    let abort: AbortPlan = { kind: 'none' };
    if (rand() < 0.2) {
      // Anywhere from before the request is sent to after it has finished (a request takes about 1 s at this load).
      abort = stream && rand() < 0.5 ? { kind: 'after-chunks', chunks: int(1, maxTokens) } : { kind: 'timer', ms: Math.floor(rand() * 1500) };
    }
    return { prompt, maxTokens, stream, abort };
  });
}

type Outcome = { kind: 'completed' } | { kind: 'aborted' } | { kind: 'failed'; why: string };

const isAbortError = (err: unknown) => (err as { name?: string } | null)?.name === 'AbortError';

/** Sends one request as planned and says how it ended; never throws. */
async function send(plan: Plan): Promise<Outcome> {
  const ctrl = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  if (plan.abort.kind === 'timer') timer = setTimeout(() => ctrl.abort(), plan.abort.ms);
  const body = { model: 'demo', prompt: plan.prompt, max_tokens: plan.maxTokens, ignore_eos: true, temperature: 0, logprobs: 0, stream: plan.stream, ...(plan.stream ? { stream_options: { include_usage: true } } : {}) };
  try {
    const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: ctrl.signal });
    if (res.status !== 200) return { kind: 'failed', why: `HTTP ${res.status}: ${await res.text()}` };
    if (!plan.stream) {
      const json = (await res.json()) as { choices: Array<{ finish_reason: string }>; usage: { completion_tokens: number; prompt_tokens: number } };
      if (json.usage.completion_tokens !== plan.maxTokens || json.usage.prompt_tokens !== plan.prompt.length || json.choices[0].finish_reason !== 'length')
        return { kind: 'failed', why: `non-streamed: usage ${JSON.stringify(json.usage)}, finish ${json.choices[0].finish_reason}, wanted ${plan.maxTokens} tokens` };
      return { kind: 'completed' };
    }
    const reader = res.body!.getReader();
    // Node 20's fetch (undici) never settles a pending read() when the signal aborts after the whole
    // body has arrived but before the reader saw its end; cancelling the reader on abort ends it.
    const onAbort = () => void reader.cancel(ctrl.signal.reason).catch(() => {});
    if (ctrl.signal.aborted) onAbort();
    else ctrl.signal.addEventListener('abort', onAbort, { once: true });
    const decoder = new TextDecoder();
    let buffer = '';
    let chunks = 0;
    let tokens = 0;
    let usage: { completion_tokens: number } | null = null;
    let done = false;
    for (;;) {
      const { done: eof, value } = await reader.read();
      if (eof) break;
      buffer += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const data = buffer.slice(0, end).replace(/^data: ?/, '');
        buffer = buffer.slice(end + 2);
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        const chunk = JSON.parse(data) as { error?: unknown; choices: Array<{ logprobs: { tokens: string[] } | null }>; usage?: { completion_tokens: number } | null };
        if (chunk.error) return { kind: 'failed', why: `stream error ${JSON.stringify(chunk.error)}` };
        if (chunk.usage) usage = chunk.usage;
        if (chunk.choices.length) {
          chunks++;
          tokens += chunk.choices[0].logprobs?.tokens.length ?? 0;
          if (plan.abort.kind === 'after-chunks' && chunks === plan.abort.chunks) ctrl.abort();
        }
      }
    }
    if (!done && ctrl.signal.aborted) return { kind: 'aborted' }; // the reader was cancelled mid-stream
    if (!done || usage?.completion_tokens !== plan.maxTokens || tokens !== plan.maxTokens)
      return { kind: 'failed', why: `streamed: done ${done}, usage ${JSON.stringify(usage)}, ${tokens} tokens in chunks, wanted ${plan.maxTokens}` };
    return { kind: 'completed' };
  } catch (err) {
    if (isAbortError(err) && plan.abort.kind !== 'none' && ctrl.signal.aborted) return { kind: 'aborted' };
    return { kind: 'failed', why: `${(err as Error).name}: ${(err as Error).message}` };
  } finally {
    clearTimeout(timer);
  }
}

/** Settles within REQUEST_TIMEOUT_MS or reports a hang. */
async function sendWithDeadline(plan: Plan): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<Outcome>((resolve) => {
    timer = setTimeout(() => resolve({ kind: 'failed', why: `hung for ${REQUEST_TIMEOUT_MS / 1000}s` }), REQUEST_TIMEOUT_MS);
  });
  try {
    return await Promise.race([send(plan), hung]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs the plans, CONCURRENCY at a time; outcomes in plan order. */
async function runAll(all: Plan[]): Promise<Outcome[]> {
  const outcomes = new Array<Outcome>(all.length);
  let next = 0;
  const client = async () => {
    while (next < all.length) {
      const i = next++;
      outcomes[i] = await sendWithDeadline(all[i]);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, client));
  return outcomes;
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A real gc() where V8 lets us expose it (the flag only takes effect for contexts made afterwards). */
function exposeGc(): (() => void) | null {
  if (typeof globalThis.gc === 'function') return globalThis.gc;
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as () => void) : null;
  } catch {
    return null;
  }
}

/** heapUsed after a full GC, median of 5 samples (without gc(), the median damps the collector's timing). */
async function heapUsed(gc: (() => void) | null): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 20));
    gc?.();
    samples.push(process.memoryUsage().heapUsed);
  }
  samples.sort((a, b) => a - b);
  return samples[2];
}

function tally(outcomes: Outcome[]): { completed: number; aborted: number; failed: string[] } {
  const failed = outcomes.filter((o): o is Extract<Outcome, { kind: 'failed' }> => o.kind === 'failed').map((o) => o.why);
  return { completed: outcomes.filter((o) => o.kind === 'completed').length, aborted: outcomes.filter((o) => o.kind === 'aborted').length, failed };
}

async function expectIdle(): Promise<void> {
  await until(() => llm.numInFlight === 0 && server.numActive === 0, 'no request in flight');
  await until(() => llm.stats().kvBlocksUsed === 0 && llm.stats().running === 0 && llm.stats().waiting === 0, 'every KV block back in the pool');
  expect(llm.numInFlight).toBe(0);
  expect(llm.stats()).toMatchObject({ running: 0, waiting: 0, kvBlocksUsed: 0 });
}

describe('soak', () => {
  it(`${SOAK_REQUESTS} requests at concurrency ${CONCURRENCY} with random client aborts: none lost, none hung, nothing leaked`, { timeout: 180_000 }, async () => {
    const gc = exposeGc();
    const all = plans(WARMUP_REQUESTS + SOAK_REQUESTS, 20261125);
    const warmup = all.slice(0, WARMUP_REQUESTS);
    const soak = all.slice(WARMUP_REQUESTS);

    const warm = tally(await runAll(warmup));
    expect(warm.failed).toEqual([]);
    await expectIdle();
    const heapBefore = await heapUsed(gc);
    const rssBefore = process.memoryUsage().rss;

    const t0 = performance.now();
    const outcomes = await runAll(soak);
    const seconds = (performance.now() - t0) / 1000;
    const { completed, aborted, failed } = tally(outcomes);

    // Nothing lost: every request settled, as completed with exactly max_tokens or as aborted by its client.
    expect(outcomes.filter((o) => o !== undefined)).toHaveLength(SOAK_REQUESTS);
    expect(failed).toEqual([]);
    expect(completed + aborted).toBe(SOAK_REQUESTS);
    const planned = soak.filter((p) => p.abort.kind !== 'none').length;
    // An abort planned for after the end does nothing; the rest end the request.
    expect(aborted).toBeLessThanOrEqual(planned);
    expect(aborted).toBeGreaterThan(SOAK_REQUESTS / 10);
    soak.forEach((p, i) => {
      if (p.abort.kind === 'none') expect(outcomes[i].kind).toBe('completed');
    });
    const abortedStreams = soak.filter((p, i) => p.stream && outcomes[i].kind === 'aborted').length;
    expect(abortedStreams).toBeGreaterThan(10);
    expect(aborted - abortedStreams).toBeGreaterThan(10); // non-streamed requests aborted too

    await expectIdle();
    const heapAfter = await heapUsed(gc);
    const rssAfter = process.memoryUsage().rss;
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    console.log(
      `soak: ${SOAK_REQUESTS} requests (after ${WARMUP_REQUESTS} warm-up), concurrency ${CONCURRENCY}, ${planned} aborts planned, ${aborted} aborted ` +
        `(${abortedStreams} streamed, ${aborted - abortedStreams} not), ${completed} completed in ${seconds.toFixed(1)}s; heap ${mib(heapBefore)} -> ${mib(heapAfter)} MiB (${gc ? 'after gc()' : 'median, no gc()'}), ` +
        `rss ${mib(rssBefore)} -> ${mib(rssAfter)} MiB`,
    );
    expect(heapAfter - heapBefore).toBeLessThan(HEAP_GROWTH_BOUND);
  });
});
