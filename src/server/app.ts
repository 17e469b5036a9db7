/**
 * The OpenAI-compatible HTTP server: Hono routes on @hono/node-server.
 *
 *   GET  /health               {"status": "ok"}
 *   GET  /v1/models            the served model
 *   POST /v1/completions       prompt -> text (stream: SSE)
 *   POST /v1/chat/completions  messages through the chat template -> reply (stream: SSE)
 *   GET  /metrics              Prometheus text
 *
 * The engine runs wherever `llm` runs it (the CLI loads it in a worker thread); this thread keeps
 * HTTP, tokenization and detokenization. A client that disconnects aborts its request, which frees
 * its KV blocks. Shutting down stops taking requests, lets those in flight finish up to a timeout
 * and aborts the rest.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createAdaptorServer } from '@hono/node-server';
import { Hono, type Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import { TesseraError, isTesseraError } from '../errors.js';
import type { RequestHandle, SampleChunk, Tessera } from '../llm.js';
import { ApiError, INTERNAL_ERROR, fromTesseraError } from './errors.js';
import { ServerMetrics, type RequestTracker } from './metrics.js';
import { checkModel, parseChat, parseCompletion, type GenerationRequest, type Json } from './protocol.js';
import { CompletionLogprobsBuilder, apiFinishReason, chatLogprobs, newId, nowSeconds, usage, type ChoiceState } from './shapes.js';

export interface ServerOptions {
  /** The name clients pass as `model` (default: the model directory's basename). */
  servedModelName?: string;
  /** Clients of /v1/* must send `Authorization: Bearer <apiKey>`; null or empty: no key. */
  apiKey?: string | null;
  /** Requests that may wait beyond the engine's max-num-seqs; past that, 429 (default 256). */
  maxQueue?: number;
  /** Request bodies larger than this are refused with 413 (default 4 MiB). */
  maxBodyBytes?: number;
  /** Where bugs are reported, with their stacks (default: console.error). */
  logError?: (message: string, err: unknown) => void;
}

export interface ListenOptions extends ServerOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
}

export const DEFAULT_MAX_QUEUE = 256;
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

/** The routes and the requests in flight, without a listener (tests may call app.request()). */
export interface TesseraApp {
  app: Hono;
  metrics: ServerMetrics;
  servedModelName: string;
  /** Generation requests being answered. */
  readonly numActive: number;
  /** Refuses new generation requests (503) from now on. */
  stopAccepting(): void;
  /** Stops accepting, waits up to `timeoutMs` for the requests in flight, aborts the rest. */
  drain(timeoutMs: number): Promise<void>;
  /** Aborts every request in flight now. */
  abortAll(): void;
}

export interface TesseraServer extends TesseraApp {
  server: Server;
  host: string;
  port: number;
  /** http://host:port */
  url: string;
  /** Closes the listener, drains (up to `timeoutMs`, default 0: abort at once) and closes every connection. */
  close(opts?: { timeoutMs?: number }): Promise<void>;
}

/** Why a request was aborted from this side. */
class ClientGone extends Error {
  constructor() {
    super('The client disconnected.');
  }
}
class ShuttingDown extends Error {
  constructor() {
    super('The server shut down before the request finished.');
  }
}

/** A timer that does not keep the process alive by itself. */
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** Reads the body as text, refusing more than `limit` bytes with 413. */
async function readBody(req: Request, limit: number): Promise<string> {
  const tooLarge = () => new ApiError(413, `The request body is larger than the server's limit of ${limit} bytes.`);
  const declared = req.headers.get('content-length');
  if (declared !== null && Number(declared) > limit) throw tooLarge();
  if (!req.body) return '';
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      void reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJsonObject(req: Request, limit: number): Promise<Json> {
  const text = await readBody(req, limit);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, `The request body is not valid JSON (${(err as Error).message.replace(/\.$/, '')}).`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'The request body must be a JSON object.');
  return body as Json;
}

/** Which field a TesseraError from llm.submit() concerns: the prompt (too long) or max_tokens (too many). */
function submitErrorParam(err: TesseraError, req: GenerationRequest): string | null {
  if (/^The prompt\b/.test(err.message)) return req.promptField;
  if (/max_tokens|max tokens/i.test(err.message)) return req.maxTokensField;
  if (/^n must\b/.test(err.message)) return 'n';
  return null;
}

export function createApp(llm: Tessera, opts: ServerOptions = {}): TesseraApp {
  const servedModelName = opts.servedModelName ?? path.basename(path.resolve(llm.info.dir));
  const maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
  const maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const apiKeyHash = opts.apiKey ? sha256(opts.apiKey) : null;
  const logError = opts.logError ?? ((message: string, err: unknown) => console.error(message, err));
  const metrics = new ServerMetrics(llm);
  const created = nowSeconds();
  const active = new Set<AbortController>();
  let accepting = true;

  const app = new Hono();

  app.onError((err, c) => {
    if (err instanceof ApiError) return c.json(err.body(), err.status);
    logError(`tessera: internal error answering ${c.req.method} ${c.req.path} (a bug in Tessera):`, err);
    return c.json(INTERNAL_ERROR.body(), 500);
  });
  app.notFound((c) => c.json(new ApiError(404, `There is no route ${c.req.method} ${c.req.path}.`).body(), 404));

  app.use('*', async (c, next) => {
    await next();
    if (!accepting) c.header('Connection', 'close');
  });

  app.get('/health', (c) => (accepting ? c.json({ status: 'ok' }) : c.json({ status: 'shutting_down' }, 503)));

  app.get('/metrics', async (c) => c.body(await metrics.text(), 200, { 'Content-Type': metrics.contentType }));

  app.use('/v1/*', async (c, next) => {
    if (apiKeyHash) {
      const m = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '');
      if (!m || !timingSafeEqual(sha256(m[1].trim()), apiKeyHash))
        throw new ApiError(401, m ? 'The API key is wrong.' : 'An API key is required; send it as "Authorization: Bearer <key>".', null, 'authentication_error', 'invalid_api_key');
    }
    await next();
  });

  const modelCard = () => ({ id: servedModelName, object: 'model', created, owned_by: 'tessera', max_model_len: llm.info.maxModelLen });
  app.get('/v1/models', (c) => c.json({ object: 'list', data: [modelCard()] }));
  app.get('/v1/models/:model{.+}', (c) => {
    checkModel({ model: c.req.param('model') }, servedModelName);
    return c.json(modelCard());
  });

  app.post('/v1/completions', (c) => generate(c, 'completion'));
  app.post('/v1/chat/completions', (c) => generate(c, 'chat'));

  async function generate(c: Context, kind: GenerationRequest['kind']): Promise<Response> {
    const start = performance.now();
    const clientSignal = c.req.raw.signal;
    if (!accepting) throw new ApiError(503, 'The server is shutting down and takes no new requests.', null, 'server_error');
    const body = await readJsonObject(c.req.raw, maxBodyBytes);
    checkModel(body, servedModelName);
    const req = kind === 'chat' ? parseChat(llm, body) : parseCompletion(llm, body);
    const capacity = llm.info.maxNumSeqs + maxQueue;
    if (llm.numInFlight >= capacity)
      throw new ApiError(429, `The server is at capacity (${llm.numInFlight} requests in flight); retry later.`, null, 'rate_limit_error', 'rate_limit_exceeded');

    const ctrl = new AbortController();
    const onClientGone = () => ctrl.abort(new ClientGone());
    if (clientSignal.aborted) return new Response(null, { status: 499 });
    clientSignal.addEventListener('abort', onClientGone, { once: true });
    let handle: RequestHandle;
    try {
      handle = llm.submit(req.promptIds, { ...req.sampling, n: req.n, priority: req.priority, signal: ctrl.signal });
    } catch (err) {
      clientSignal.removeEventListener('abort', onClientGone);
      if (isTesseraError(err) && err.code !== 'aborted') throw fromTesseraError(err, submitErrorParam(err, req)) ?? err;
      throw fromTesseraError(err) ?? err;
    }
    active.add(ctrl);
    const tracker = metrics.track(start, handle.numPromptTokens, req.n);
    const done = () => {
      active.delete(ctrl);
      clientSignal.removeEventListener('abort', onClientGone);
    };
    const run: Run = { llm, req, handle, tracker, model: servedModelName, signal: ctrl.signal, logError };
    if (req.stream) {
      return streamSSE(c, async (stream) => {
        stream.onAbort(onClientGone);
        try {
          await (kind === 'chat' ? streamChat(run, stream) : streamCompletion(run, stream));
        } finally {
          done();
        }
      });
    }
    try {
      const choices = await collect(run);
      if (choices === null) return new Response(null, { status: 499 }); // nobody is listening
      return c.json(kind === 'chat' ? chatResponse(run, choices) : completionResponse(run, choices));
    } finally {
      done();
    }
  }

  const abortAll = () => {
    for (const ctrl of active) ctrl.abort(new ShuttingDown());
  };

  return {
    app,
    metrics,
    servedModelName,
    get numActive() {
      return active.size;
    },
    stopAccepting() {
      accepting = false;
    },
    abortAll,
    async drain(timeoutMs: number) {
      accepting = false;
      const deadline = performance.now() + timeoutMs;
      while (active.size > 0 && performance.now() < deadline) await sleep(Math.min(25, Math.max(1, deadline - performance.now())));
      if (active.size > 0) abortAll();
      // Aborted handlers write their last bytes (an error for a stream, a 503 otherwise).
      const grace = performance.now() + 2000;
      while (active.size > 0 && performance.now() < grace) await sleep(5);
    },
  };
}

/** Starts the server; resolves once it listens (a port in use is a one-sentence TesseraError). */
export async function createServer(llm: Tessera, opts: ListenOptions = {}): Promise<TesseraServer> {
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? 8000;
  const core = createApp(llm, opts);
  const server = createAdaptorServer({ fetch: core.app.fetch, overrideGlobalObjects: false }) as Server;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      const where = `${host}:${port}`;
      if (err.code === 'EADDRINUSE') reject(new TesseraError(`Port ${port} on ${host} is in use; pick another with --port (0 picks a free one).`, 'invalid_input'));
      else if (err.code === 'EACCES') reject(new TesseraError(`Listening on ${where} is not permitted; pick a port above 1023 with --port.`, 'invalid_input'));
      else if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND')
        reject(new TesseraError(`Cannot listen on ${host}: no such address on this machine (--host).`, 'invalid_input'));
      else reject(err);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(port, host);
  });
  const address = server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address;
  let closing: Promise<void> | null = null;
  return {
    ...core,
    get numActive() {
      return core.numActive;
    },
    server,
    host: address.address,
    port: address.port,
    url: `http://${urlHost}:${address.port}`,
    close(closeOpts: { timeoutMs?: number } = {}) {
      closing ??= (async () => {
        core.stopAccepting();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        await core.drain(closeOpts.timeoutMs ?? 0);
        server.closeIdleConnections();
        await Promise.race([closed, sleep(1000)]);
        server.closeAllConnections();
        await closed;
      })();
      return closing;
    },
  };
}

/** One generation request being answered. */
interface Run {
  llm: Tessera;
  req: GenerationRequest;
  handle: RequestHandle;
  tracker: RequestTracker;
  model: string;
  signal: AbortSignal;
  logError: (message: string, err: unknown) => void;
}

function newChoices(run: Run): ChoiceState[] {
  const { req } = run;
  return Array.from({ length: req.n }, () => ({
    text: '',
    finishReason: null,
    completionTokens: 0,
    cachedTokens: 0,
    completionLogprobs: req.kind === 'completion' && req.logprobs !== null ? new CompletionLogprobsBuilder(req.echo ? req.promptText.length : 0) : null,
    chatLogprobs: req.kind === 'chat' && req.logprobs !== null ? [] : null,
  }));
}

/** Folds a chunk into its choice. */
function apply(choice: ChoiceState, chunk: SampleChunk): void {
  choice.text += chunk.text;
  if (chunk.finishReason !== null) choice.finishReason = apiFinishReason(chunk.finishReason);
  if (chunk.usage) {
    choice.completionTokens = chunk.usage.completionTokens;
    choice.cachedTokens = chunk.usage.cachedPromptTokens;
  }
}

function totalUsage(run: Run, choices: ChoiceState[]) {
  return usage(
    run.handle.numPromptTokens,
    choices.reduce((s, c) => s + c.completionTokens, 0),
    choices.reduce((m, c) => Math.max(m, c.cachedTokens), 0),
  );
}

/** What ended a request early: the client (nothing to answer), the shutdown or the model (an error to send). */
function endedBy(run: Run, err: unknown): ApiError | null {
  const reason: unknown = run.signal.aborted ? run.signal.reason : err;
  if (reason instanceof ClientGone) {
    run.tracker.end('abort');
    return null;
  }
  if (reason instanceof ShuttingDown) {
    run.tracker.end('abort');
    return new ApiError(503, reason.message, null, 'server_error');
  }
  run.tracker.end('error');
  const mapped = fromTesseraError(reason);
  if (mapped) return mapped;
  run.logError('tessera: internal error while generating (a bug in Tessera):', reason);
  return INTERNAL_ERROR;
}

/** Runs a request to the end; null when the client left. */
async function collect(run: Run): Promise<ChoiceState[] | null> {
  const choices = newChoices(run);
  try {
    for await (const chunk of run.handle) {
      run.tracker.chunk(chunk);
      const choice = choices[chunk.index];
      apply(choice, chunk);
      if (chunk.logprobs) {
        choice.completionLogprobs?.add(chunk.logprobs);
        choice.chatLogprobs?.push(...chatLogprobs(chunk.logprobs));
      }
    }
  } catch (err) {
    const apiError = endedBy(run, err);
    if (apiError === null) return null;
    throw apiError;
  }
  run.tracker.end();
  return choices;
}

function completionResponse(run: Run, choices: ChoiceState[]) {
  const { req } = run;
  return {
    id: newId('cmpl'),
    object: 'text_completion',
    created: nowSeconds(),
    model: run.model,
    choices: choices.map((c, index) => ({
      index,
      text: (req.echo ? req.promptText : '') + c.text,
      logprobs: c.completionLogprobs?.all ?? null,
      finish_reason: c.finishReason,
    })),
    usage: totalUsage(run, choices),
  };
}

function chatResponse(run: Run, choices: ChoiceState[]) {
  return {
    id: newId('chatcmpl'),
    object: 'chat.completion',
    created: nowSeconds(),
    model: run.model,
    choices: choices.map((c, index) => ({
      index,
      message: { role: 'assistant', content: c.text, refusal: null },
      logprobs: c.chatLogprobs ? { content: c.chatLogprobs, refusal: null } : null,
      finish_reason: c.finishReason,
    })),
    usage: totalUsage(run, choices),
  };
}

/**
 * Streams a request's chunks as SSE `data:` lines, through `write` (one JSON object each), then
 * the usage chunk if asked and `data: [DONE]`. An error after the headers went out is sent as a
 * `data: {"error": ...}` line, without [DONE].
 */
async function streamRun(
  run: Run,
  stream: SSEStreamingApi,
  handlers: { start: (write: (o: object) => Promise<void>) => Promise<void>; chunk: (c: SampleChunk, choice: ChoiceState, write: (o: object) => Promise<void>) => Promise<void>; usage: (u: object) => object },
): Promise<void> {
  const choices = newChoices(run);
  const write = (o: object) => stream.writeSSE({ data: JSON.stringify(o) });
  try {
    await handlers.start(write);
    for await (const chunk of run.handle) {
      run.tracker.chunk(chunk);
      const choice = choices[chunk.index];
      apply(choice, chunk);
      await handlers.chunk(chunk, choice, write);
    }
  } catch (err) {
    const apiError = endedBy(run, err);
    if (apiError !== null && !stream.aborted) await write(apiError.body());
    return;
  }
  run.tracker.end();
  if (run.req.includeUsage) await write(handlers.usage(totalUsage(run, choices)));
  await stream.writeSSE({ data: '[DONE]' });
}

function streamCompletion(run: Run, stream: SSEStreamingApi): Promise<void> {
  const { req } = run;
  const base = { id: newId('cmpl'), object: 'text_completion', created: nowSeconds(), model: run.model };
  const extra = req.includeUsage ? { usage: null } : {};
  return streamRun(run, stream, {
    start: async (write) => {
      if (!req.echo) return;
      for (let index = 0; index < req.n; index++) await write({ ...base, choices: [{ index, text: req.promptText, logprobs: null, finish_reason: null }], ...extra });
    },
    chunk: async (chunk, choice, write) => {
      if (!chunk.text && !chunk.logprobs && chunk.finishReason === null) return;
      const logprobs = choice.completionLogprobs ? choice.completionLogprobs.add(chunk.logprobs ?? []) : null;
      await write({ ...base, choices: [{ index: chunk.index, text: chunk.text, logprobs, finish_reason: choice.finishReason }], ...extra });
    },
    usage: (u) => ({ ...base, choices: [], usage: u }),
  });
}

function streamChat(run: Run, stream: SSEStreamingApi): Promise<void> {
  const { req } = run;
  const base = { id: newId('chatcmpl'), object: 'chat.completion.chunk', created: nowSeconds(), model: run.model };
  const extra = req.includeUsage ? { usage: null } : {};
  return streamRun(run, stream, {
    start: async (write) => {
      for (let index = 0; index < req.n; index++)
        await write({ ...base, choices: [{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }], ...extra });
    },
    chunk: async (chunk, choice, write) => {
      if (chunk.text || chunk.logprobs) {
        const logprobs = choice.chatLogprobs ? { content: chatLogprobs(chunk.logprobs ?? []), refusal: null } : null;
        await write({ ...base, choices: [{ index: chunk.index, delta: { content: chunk.text }, logprobs, finish_reason: null }], ...extra });
      }
      if (chunk.finishReason !== null) await write({ ...base, choices: [{ index: chunk.index, delta: {}, logprobs: null, finish_reason: choice.finishReason }], ...extra });
    },
    usage: (u) => ({ ...base, choices: [], usage: u }),
  });
}
