/**
 * tessera bench serve: a load generator for an OpenAI-compatible server, after vLLM's
 * benchmark_serving. It sends N completions requests of random token ids, C at a time (closed
 * loop: a client sends its next request when the last one finished), streams every reply and
 * measures per request the time to the first token, the gaps between tokens and the end-to-end
 * time. It either drives a running server on this machine (--url) or starts one here, in process,
 * with its engine in a worker thread as `tessera serve` runs it; then it also reports, from the
 * engine's counters, the prompt tokens prefilled and the prefix-cache hit rate.
 */
import { percentile } from '../util/stats.js';
import os from 'node:os';
import { TesseraError } from '../errors.js';
import type { EngineStats, Tessera } from '../llm.js';
import { uniform } from '../sampling/philox.js';
import { createServer, type TesseraServer } from '../server/app.js';
import { MODEL_HELP, MODEL_OPTIONS, modelOptions, numberFlag, parse } from './args.js';
import { loadForCli } from './load.js';

const HELP = `Usage: tessera bench serve [options]

Load-tests an OpenAI-compatible server: REQUESTS completions requests, CONCURRENCY at a time,
each a prompt of random token ids (ids 0-255) streamed back with usage, EOS ignored, greedy.
Reports requests/s, input and output tokens/s, and the p50/p99 of time to first token (TTFT),
inter-token latency (ITL, over every gap) and end-to-end latency (E2E). Without --url it starts
the server itself (the engine in a worker thread, on 127.0.0.1) and also reports the prompt
tokens prefilled and the prefix-cache hit rate.

      --url URL                  a running server on this machine, e.g. http://127.0.0.1:8000
                                 (default: start one here from the model flags below)
      --api-key KEY              with --url: the server's key (default: $TESSERA_API_KEY)
      --requests N               requests in all (default 100)
      --concurrency C            requests in flight at a time (default 8)
      --input-len L              mean prompt tokens per request (default 128)
      --output-len O             mean output tokens per request (default 128)
      --range-ratio R            lengths are drawn uniformly within +-R of the means (default 0.25)
      --shared-prefix-tokens P   a system prompt of P tokens before every prompt (default 0)
      --seed N                   the workload's random seed (default 0)
      --compare-prefix-caching   run the workload twice, with and without prefix caching, and
                                 show both side by side (starts the server here)
      --json                     machine-readable output

Every request asks for logprobs 0, so each token arrives in a chunk of its own even while its
text is an incomplete UTF-8 character (random weights emit arbitrary bytes). When the server is
started here, --max-num-seqs defaults to the concurrency.

${MODEL_HELP}`;

const OPTIONS = {
  ...MODEL_OPTIONS,
  url: { type: 'string' },
  'api-key': { type: 'string' },
  requests: { type: 'string' },
  concurrency: { type: 'string' },
  'input-len': { type: 'string' },
  'output-len': { type: 'string' },
  'range-ratio': { type: 'string' },
  'shared-prefix-tokens': { type: 'string' },
  seed: { type: 'string' },
  'compare-prefix-caching': { type: 'boolean' },
  json: { type: 'boolean' },
} as const;

/** Prompt token ids are drawn from 0..PROMPT_ID_RANGE-1: bytes in a byte-level vocabulary, ordinary tokens in the others. */
const PROMPT_ID_RANGE = 256;

export interface Workload {
  /** Every request's prompt: the shared prefix, then its own tokens. */
  prompts: number[][];
  /** Every request's max_tokens (exactly what it must produce). */
  outputLens: number[];
  sharedPrefixTokens: number;
}

export interface WorkloadSpec {
  requests: number;
  inputLen: number;
  outputLen: number;
  rangeRatio: number;
  sharedPrefixTokens: number;
  seed: number;
  /** Prompt ids are drawn from 0..vocab-1. */
  vocab: number;
}

/** Philox streams: the shared prefix, then one per request. */
const PREFIX_STREAM = 0;
const WARMUP_STREAM = 0xffffffff;

function drawLength(mean: number, ratio: number, u: number): number {
  const lo = Math.max(1, Math.round(mean * (1 - ratio)));
  const hi = Math.max(lo, Math.round(mean * (1 + ratio)));
  return lo + Math.min(hi - lo, Math.floor(u * (hi - lo + 1)));
}

/** The longest prompt plus output a request of this spec can draw. */
export function maxRequestTokens(spec: Pick<WorkloadSpec, 'inputLen' | 'outputLen' | 'rangeRatio' | 'sharedPrefixTokens'>): number {
  const hi = (mean: number) => Math.max(1, Math.round(mean * (1 + spec.rangeRatio)));
  return spec.sharedPrefixTokens + hi(spec.inputLen) + hi(spec.outputLen);
}

/** The same spec always gives the same workload. */
export function makeWorkload(spec: WorkloadSpec): Workload {
  const ids = (stream: number, from: number, n: number) => Array.from({ length: n }, (_, i) => Math.floor(uniform(spec.seed, stream, from + i) * spec.vocab));
  const prefix = ids(PREFIX_STREAM, 0, spec.sharedPrefixTokens);
  const prompts: number[][] = [];
  const outputLens: number[] = [];
  for (let r = 0; r < spec.requests; r++) {
    const stream = r + 1;
    const inputLen = drawLength(spec.inputLen, spec.rangeRatio, uniform(spec.seed, stream, 0));
    outputLens.push(drawLength(spec.outputLen, spec.rangeRatio, uniform(spec.seed, stream, 1)));
    prompts.push([...prefix, ...ids(stream, 2, inputLen)]);
  }
  return { prompts, outputLens, sharedPrefixTokens: spec.sharedPrefixTokens };
}

export interface RequestResult {
  ok: boolean;
  /** Why it failed, in one sentence. */
  error?: string;
  promptTokens: number;
  /** Output tokens as the usage reported them. */
  outputTokens: number;
  ttftMs: number;
  /** Gaps between successive streamed chunks. */
  itlMs: number[];
  e2eMs: number;
}

interface Target {
  /** http://host:port, no trailing slash. */
  base: string;
  model: string;
  apiKey: string | null;
}

interface StreamChunk {
  error?: { message?: string };
  choices?: Array<{ text?: string; finish_reason?: string | null; logprobs?: { tokens?: unknown[] } | null }>;
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null;
}

const errorMessage = (err: unknown): string => {
  const e = err as { message?: string; cause?: { message?: string; code?: string } };
  const cause = e?.cause?.code ?? e?.cause?.message;
  return `${e?.message ?? String(err)}${cause ? ` (${cause})` : ''}`;
};

/** Sends one streamed completions request and times it; never throws. */
export async function sendRequest(target: Target, prompt: number[], maxTokens: number): Promise<RequestResult> {
  const result: RequestResult = { ok: false, promptTokens: prompt.length, outputTokens: 0, ttftMs: NaN, itlMs: [], e2eMs: NaN };
  const body = {
    model: target.model,
    prompt,
    max_tokens: maxTokens,
    temperature: 0,
    ignore_eos: true,
    logprobs: 0,
    stream: true,
    stream_options: { include_usage: true },
  };
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (target.apiKey) headers.authorization = `Bearer ${target.apiKey}`;
  const start = performance.now();
  let last = NaN;
  let streamedTokens = 0;
  let finishReason: string | null = null;
  let usage: StreamChunk['usage'] = null;
  let done = false;
  const fail = (error: string): RequestResult => ({ ...result, ok: false, error, e2eMs: performance.now() - start });
  try {
    const res = await fetch(`${target.base}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
    if (!res.ok || !res.body) {
      const text = await res.text();
      let message = text.slice(0, 200);
      try {
        message = (JSON.parse(text) as StreamChunk).error?.message ?? message;
      } catch {
        // not JSON
      }
      return fail(`HTTP ${res.status}: ${message}`);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { done: eof, value } = await reader.read();
      if (eof) break;
      const now = performance.now();
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') {
            done = true;
            continue;
          }
          const chunk = JSON.parse(data) as StreamChunk;
          if (chunk.error) return fail(`the stream ended with an error: ${chunk.error.message ?? data}`);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices?.[0];
          if (!choice) continue;
          if (Number.isNaN(last)) result.ttftMs = now - start;
          else result.itlMs.push(now - last);
          last = now;
          streamedTokens += choice.logprobs?.tokens?.length ?? 1;
          if (choice.finish_reason) finishReason = choice.finish_reason;
        }
      }
    }
  } catch (err) {
    return fail(errorMessage(err));
  }
  result.e2eMs = performance.now() - start;
  if (!done) return fail('the stream ended without data: [DONE].');
  if (!usage) return fail('the stream carried no usage chunk.');
  result.outputTokens = usage.completion_tokens ?? 0;
  if (usage.completion_tokens !== maxTokens) return fail(`usage.completion_tokens is ${usage.completion_tokens}, not max_tokens ${maxTokens}.`);
  if (usage.prompt_tokens !== prompt.length) return fail(`usage.prompt_tokens is ${usage.prompt_tokens}, not the ${prompt.length} tokens sent.`);
  if (streamedTokens !== maxTokens) return fail(`${streamedTokens} tokens were streamed, not max_tokens ${maxTokens}.`);
  if (finishReason !== 'length') return fail(`finish_reason is ${finishReason}, not length.`);
  return { ...result, ok: true };
}

/** Runs the workload, `concurrency` requests at a time; results in request order. */
export async function runLoad(target: Target, workload: Workload, concurrency: number): Promise<{ results: RequestResult[]; durationS: number }> {
  const n = workload.prompts.length;
  const results = new Array<RequestResult>(n);
  let next = 0;
  const client = async () => {
    while (next < n) {
      const i = next++;
      results[i] = await sendRequest(target, workload.prompts[i], workload.outputLens[i]);
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, client));
  return { results, durationS: (performance.now() - t0) / 1000 };
}

interface Latency {
  mean: number;
  p50: number;
  p99: number;
}

function latency(xs: number[]): Latency {
  const round = (v: number) => (Number.isFinite(v) ? Number(v.toFixed(3)) : NaN);
  const mean = xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
  return { mean: round(mean), p50: round(percentile(xs, 50)), p99: round(percentile(xs, 99)) };
}

export interface RunSummary {
  /** true/false when the server was started here; null with --url. */
  prefixCaching: boolean | null;
  completed: number;
  failed: number;
  /** Up to 5 distinct failure messages, with counts. */
  errors: Array<{ message: string; count: number }>;
  durationS: number;
  requestsPerS: number;
  outputTokensPerS: number;
  inputTokensPerS: number;
  /** Prompt tokens of the requests that completed, and of every request sent. */
  totalInputTokens: number;
  sentInputTokens: number;
  totalOutputTokens: number;
  ttftMs: Latency;
  itlMs: Latency;
  e2eMs: Latency;
  /** From the engine's counters (server started here), over the measured requests only. */
  prefillTokens: number | null;
  prefixQueriedTokens: number | null;
  prefixHitTokens: number | null;
  prefixHitRate: number | null;
}

export function summarize(results: RequestResult[], durationS: number, prefixCaching: boolean | null, before: EngineStats | null, after: EngineStats | null): RunSummary {
  const ok = results.filter((r) => r.ok);
  const failures = new Map<string, number>();
  for (const r of results) if (!r.ok) failures.set(r.error ?? 'unknown', (failures.get(r.error ?? 'unknown') ?? 0) + 1);
  const input = ok.reduce((s, r) => s + r.promptTokens, 0);
  const output = ok.reduce((s, r) => s + r.outputTokens, 0);
  const rate = (x: number) => Number((x / durationS).toFixed(2));
  const delta = (k: keyof EngineStats) => (before && after ? after[k] - before[k] : null);
  const queried = delta('prefixQueriedTokens');
  const hit = delta('prefixHitTokens');
  return {
    prefixCaching,
    completed: ok.length,
    failed: results.length - ok.length,
    errors: [...failures].slice(0, 5).map(([message, count]) => ({ message, count })),
    durationS: Number(durationS.toFixed(3)),
    requestsPerS: rate(ok.length),
    outputTokensPerS: rate(output),
    inputTokensPerS: rate(input),
    totalInputTokens: input,
    sentInputTokens: results.reduce((s, r) => s + r.promptTokens, 0),
    totalOutputTokens: output,
    ttftMs: latency(ok.map((r) => r.ttftMs)),
    itlMs: latency(ok.flatMap((r) => r.itlMs)),
    e2eMs: latency(ok.map((r) => r.e2eMs)),
    prefillTokens: delta('prefillTokens'),
    prefixQueriedTokens: queried,
    prefixHitTokens: hit,
    prefixHitRate: queried === null || hit === null ? null : queried > 0 ? Number((hit / queried).toFixed(4)) : 0,
  };
}

/** localhost, 127.0.0.0/8 or ::1: the only hosts this command sends load to. */
function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function parseUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new TesseraError(`--url takes an address such as http://127.0.0.1:8000, not "${raw}".`, 'invalid_input');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TesseraError(`--url must be an http:// or https:// address, not "${raw}".`, 'invalid_input');
  if (!isLoopback(url.hostname))
    throw new TesseraError(`--url must point at this machine (localhost, 127.0.0.1 or [::1]), not ${url.hostname}: tessera bench serve sends load to no other host.`, 'invalid_input');
  return `${url.origin}${url.pathname.replace(/\/+$/, '').replace(/\/v1$/, '')}`;
}

/** The served model's name and context, from GET /v1/models. */
async function describeServer(base: string, apiKey: string | null): Promise<{ model: string; maxModelLen: number | null }> {
  let res: Response;
  try {
    res = await fetch(`${base}/v1/models`, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
  } catch (err) {
    throw new TesseraError(`Nothing answers at ${base} (${errorMessage(err)}); start the server first or leave out --url.`, 'invalid_input');
  }
  if (res.status === 401) throw new TesseraError(`${base} wants an API key; pass it with --api-key or $TESSERA_API_KEY.`, 'invalid_input');
  if (!res.ok) throw new TesseraError(`GET ${base}/v1/models answered HTTP ${res.status}; is this an OpenAI-compatible server?`, 'invalid_input');
  const list = (await res.json()) as { data?: Array<{ id?: string; max_model_len?: number }> };
  const card = list.data?.[0];
  if (!card?.id) throw new TesseraError(`GET ${base}/v1/models lists no model.`, 'invalid_input');
  return { model: card.id, maxModelLen: typeof card.max_model_len === 'number' ? card.max_model_len : null };
}

/** Waits until the engine has nothing in flight (its counters are final then). */
async function settle(llm: Tessera): Promise<void> {
  const deadline = performance.now() + 10_000;
  while ((llm.numInFlight > 0 || llm.stats().running + llm.stats().waiting > 0) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
}

function shellQuote(args: string[]): string {
  return args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

const fmtMs = (v: number) => (Number.isFinite(v) ? `${v.toFixed(v < 100 ? 2 : 1)} ms` : 'n/a');

function printText(report: BenchServeReport): void {
  const w = report.workload;
  const s = report.server;
  const where = s.startedHere ? `started here on ${s.url}` : `at ${s.url}`;
  console.log(`server: ${s.model}${s.architecture ? ` (${s.architecture} ${((s.parameters ?? 0) / 1e6).toFixed(2)}M on ${s.device})` : ''}, ${where}`);
  if (s.startedHere) console.log(`engine: max-num-seqs ${s.maxNumSeqs}, max-num-batched-tokens ${s.maxNumBatchedTokens}, ${s.kvCacheBlocks} KV blocks of ${s.kvBlockSize} tokens`);
  console.log(`client: ${report.machine.cpu}, ${report.machine.cores} cores, Node ${report.machine.node}`);
  console.log(
    `workload: ${w.requests} requests, concurrency ${w.concurrency}, input ${w.inputLen} and output ${w.outputLen} tokens (+-${w.rangeRatio * 100}%)` +
      `${w.sharedPrefixTokens ? `, shared prefix ${w.sharedPrefixTokens} tokens` : ''}, seed ${w.seed}`,
  );
  const runs = report.runs;
  const head = runs.length > 1 ? runs.map((r) => (r.prefixCaching ? 'prefix caching on' : 'prefix caching off')) : ['result'];
  const rows: Array<[string, ...string[]]> = [
    ['requests ok / failed', ...runs.map((r) => `${r.completed} / ${r.failed}`)],
    ['duration', ...runs.map((r) => `${r.durationS.toFixed(2)} s`)],
    ['requests/s', ...runs.map((r) => r.requestsPerS.toFixed(2))],
    ['output tokens/s', ...runs.map((r) => r.outputTokensPerS.toFixed(1))],
    ['input tokens/s', ...runs.map((r) => r.inputTokensPerS.toFixed(1))],
    ['TTFT p50 / p99', ...runs.map((r) => `${fmtMs(r.ttftMs.p50)} / ${fmtMs(r.ttftMs.p99)}`)],
    ['ITL p50 / p99', ...runs.map((r) => `${fmtMs(r.itlMs.p50)} / ${fmtMs(r.itlMs.p99)}`)],
    ['E2E p50 / p99', ...runs.map((r) => `${fmtMs(r.e2eMs.p50)} / ${fmtMs(r.e2eMs.p99)}`)],
  ];
  if (runs.every((r) => r.prefillTokens !== null)) {
    rows.push(['prefill tokens computed', ...runs.map((r) => `${r.prefillTokens} of ${r.sentInputTokens}`)]);
    rows.push(['prefix-cache hit rate', ...runs.map((r) => `${((r.prefixHitRate ?? 0) * 100).toFixed(1)}%`)]);
  }
  const width0 = Math.max(...rows.map((r) => r[0].length));
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i + 1].length)));
  console.log(`${''.padEnd(width0)}  ${head.map((h, i) => h.padStart(widths[i])).join('  ')}`);
  for (const row of rows) console.log(`${row[0].padEnd(width0)}  ${row.slice(1).map((c, i) => c.padStart(widths[i])).join('  ')}`);
  for (const r of runs)
    for (const e of r.errors) console.log(`failed${runs.length > 1 ? ` (prefix caching ${r.prefixCaching ? 'on' : 'off'})` : ''}: ${e.count} x ${e.message}`);
}

interface BenchServeReport {
  command: string;
  date: string;
  machine: { cpu: string; cores: number; node: string; platform: string };
  server: {
    url: string;
    startedHere: boolean;
    model: string;
    architecture?: string;
    parameters?: number;
    device?: string;
    maxModelLen: number | null;
    maxNumSeqs?: number;
    maxNumBatchedTokens?: number;
    kvCacheBlocks?: number;
    kvBlockSize?: number;
  };
  workload: { requests: number; concurrency: number; inputLen: number; outputLen: number; rangeRatio: number; sharedPrefixTokens: number; seed: number; promptIdRange: number };
  runs: RunSummary[];
}

export async function benchServe(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, OPTIONS, 'bench serve');
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length) throw new TesseraError(`tessera bench serve takes no positional arguments (got "${positionals[0]}").`, 'invalid_input');
  const int = (flag: string, dflt: number, min: number) => {
    const v = numberFlag(values, flag, true) ?? dflt;
    if (v < min) throw new TesseraError(`--${flag} must be at least ${min}, not ${v}.`, 'invalid_input');
    return v;
  };
  const requests = int('requests', 100, 1);
  const concurrency = int('concurrency', 8, 1);
  const inputLen = int('input-len', 128, 1);
  const outputLen = int('output-len', 128, 1);
  const sharedPrefixTokens = int('shared-prefix-tokens', 0, 0);
  const seed = int('seed', 0, 0);
  const rangeRatio = numberFlag(values, 'range-ratio') ?? 0.25;
  if (!(rangeRatio >= 0 && rangeRatio < 1)) throw new TesseraError(`--range-ratio must be from 0 up to (not including) 1, not ${rangeRatio}.`, 'invalid_input');
  const compare = values['compare-prefix-caching'] === true;
  const json = values.json === true;
  const rawUrl = values.url as string | undefined;
  const apiKeyFlag = values['api-key'] as string | undefined;
  const modelFlags = Object.keys(MODEL_OPTIONS).filter((k) => values[k] !== undefined);
  if (rawUrl !== undefined) {
    if (modelFlags.length)
      throw new TesseraError(`--${modelFlags[0]} configures the server this command starts; with --url the running server keeps its own settings.`, 'invalid_input');
    if (compare) throw new TesseraError('--compare-prefix-caching starts the server here (twice); leave out --url.', 'invalid_input');
  } else if (apiKeyFlag !== undefined) throw new TesseraError('--api-key is for a server given with --url; the server started here takes no key.', 'invalid_input');
  if (compare && values['no-prefix-caching']) throw new TesseraError('--compare-prefix-caching runs with and without prefix caching; leave out --no-prefix-caching.', 'invalid_input');
  const base = rawUrl !== undefined ? parseUrl(rawUrl) : null;
  const { dir, opts } = modelOptions(values);
  if (opts.maxNumSeqs === undefined) opts.maxNumSeqs = concurrency;

  const spec = { requests, inputLen, outputLen, rangeRatio, sharedPrefixTokens, seed };
  const checkFits = (maxModelLen: number | null) => {
    const longest = maxRequestTokens(spec);
    if (maxModelLen !== null && longest > maxModelLen)
      throw new TesseraError(
        `The longest request (${sharedPrefixTokens ? `${sharedPrefixTokens} shared + ` : ''}${Math.round(inputLen * (1 + rangeRatio))} prompt + ${Math.round(outputLen * (1 + rangeRatio))} output tokens = ${longest}) exceeds the context of ${maxModelLen} tokens; lower --input-len, --output-len or --range-ratio.`,
        'invalid_input',
      );
  };
  const machine = { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, node: process.version, platform: `${os.type()} ${os.release()}` };
  const workloadInfo = { requests, concurrency, inputLen, outputLen, rangeRatio, sharedPrefixTokens, seed, promptIdRange: PROMPT_ID_RANGE };
  const command = `tessera bench serve ${shellQuote(argv)}`.trim();

  let report: BenchServeReport;
  if (base !== null) {
    const apiKey = apiKeyFlag ?? (process.env.TESSERA_API_KEY || null);
    const { model, maxModelLen } = await describeServer(base, apiKey);
    checkFits(maxModelLen);
    const workload = makeWorkload({ ...spec, vocab: PROMPT_ID_RANGE });
    const target = { base, model, apiKey };
    await sendRequest(target, makeWorkload({ ...spec, requests: 1, inputLen: 8, outputLen: 2, rangeRatio: 0, sharedPrefixTokens: 0, seed: WARMUP_STREAM, vocab: PROMPT_ID_RANGE }).prompts[0], 2);
    const { results, durationS } = await runLoad(target, workload, concurrency);
    report = {
      command,
      date: new Date().toISOString(),
      machine,
      server: { url: base, startedHere: false, model, maxModelLen },
      workload: workloadInfo,
      runs: [summarize(results, durationS, null, null, null)],
    };
  } else {
    const settings = compare ? [true, false] : [opts.prefixCaching !== false];
    const runs: BenchServeReport['runs'] = [];
    let server!: BenchServeReport['server'];
    for (const prefixCaching of settings) {
      const { llm, reportLoad } = await loadForCli(dir, { ...opts, prefixCaching, engineThread: 'worker' }, json);
      let srv: TesseraServer | null = null;
      try {
        checkFits(llm.info.maxModelLen);
        reportLoad();
        srv = await createServer(llm, { host: '127.0.0.1', port: 0, maxQueue: Math.max(256, requests) });
        const info = llm.info;
        server = {
          url: srv.url,
          startedHere: true,
          model: srv.servedModelName,
          architecture: info.config.hfArchitecture,
          parameters: info.numParameters,
          device: info.device,
          maxModelLen: info.maxModelLen,
          maxNumSeqs: info.maxNumSeqs,
          maxNumBatchedTokens: info.maxNumBatchedTokens,
          kvCacheBlocks: info.kvCacheBlocks,
          kvBlockSize: info.kvBlockSize,
        };
        const vocab = Math.min(PROMPT_ID_RANGE, llm.config.vocabSize);
        const workload = makeWorkload({ ...spec, vocab });
        const target = { base: srv.url, model: srv.servedModelName, apiKey: null };
        // One short request first (its own random tokens: it shares no prefix with the workload).
        await sendRequest(target, makeWorkload({ ...spec, requests: 1, inputLen: 8, outputLen: 2, rangeRatio: 0, sharedPrefixTokens: 0, seed: WARMUP_STREAM, vocab }).prompts[0], 2);
        await settle(llm);
        const before = { ...llm.stats() };
        if (!json) console.error(`tessera: ${requests} requests, concurrency ${concurrency}${compare ? `, prefix caching ${prefixCaching ? 'on' : 'off'}` : ''}...`);
        const { results, durationS } = await runLoad(target, workload, concurrency);
        await settle(llm);
        const after = { ...llm.stats() };
        runs.push(summarize(results, durationS, prefixCaching, before, after));
      } finally {
        await srv?.close();
        await llm.close();
      }
    }
    report = { command, date: new Date().toISOString(), machine, server, workload: workloadInfo, runs };
  }
  if (json) console.log(JSON.stringify(report, null, 2));
  else printText(report);
  return report.runs.some((r) => r.failed > 0) ? 1 : 0;
}
