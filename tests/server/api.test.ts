/**
 * The OpenAI-compatible server in process, over HTTP, with the official openai client and plain
 * fetch: the demo model on the CPU, its engine in a worker thread as `tessera serve` runs it.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tessera } from '../../src/llm.js';
import { createServer, type TesseraServer } from '../../src/server/app.js';

const DEMO_DIR = path.resolve(import.meta.dirname, '../../models/demo');

let llm: Tessera;
let server: TesseraServer;
let client: OpenAI;
const servers: TesseraServer[] = [];
const models: Tessera[] = [];
const scratch: string[] = [];

async function start(model: Tessera, opts: Parameters<typeof createServer>[1] = {}): Promise<TesseraServer> {
  const s = await createServer(model, { port: 0, ...opts });
  servers.push(s);
  return s;
}

function openai(s: TesseraServer, apiKey = 'unused'): OpenAI {
  return new OpenAI({ baseURL: `${s.url}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });
}

beforeAll(async () => {
  llm = await Tessera.load(DEMO_DIR, { device: 'cpu', engineThread: 'worker' });
  models.push(llm);
  server = await start(llm);
  client = openai(server);
});

afterAll(async () => {
  for (const s of servers) await s.close();
  for (const m of models) await m.close();
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});

interface Raw {
  status: number;
  headers: Headers;
  json: unknown;
  text: string;
}

async function request(url: string, init: RequestInit = {}): Promise<Raw> {
  const res = await fetch(url, init);
  const text = await res.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, json, text };
}

function post(s: TesseraServer, route: string, body: unknown, headers: Record<string, string> = {}): Promise<Raw> {
  return request(`${s.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

function apiError(param: string | null, message: RegExp | string, type = 'invalid_request_error', code: string | null = null) {
  return { error: { message: typeof message === 'string' ? message : expect.stringMatching(message), type, param, code } };
}

/** Extra (non-OpenAI) fields, spread into a typed request without tripping excess-property checks. */
const extra = (fields: Record<string, unknown>): object => fields;

const CHAT = [{ role: 'user' as const, content: 'Who made the heaven and the earth?' }];

/** Metric values from Prometheus text: name{labels} -> value. */
async function scrape(s: TesseraServer): Promise<Map<string, number>> {
  const res = await request(`${s.url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  const values = new Map<string, number>();
  for (const line of res.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    values.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return values;
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('routes', () => {
  it('/health answers ok and /v1/models lists the served model', async () => {
    const health = await request(`${server.url}/health`);
    expect(health.status).toBe(200);
    expect(health.json).toEqual({ status: 'ok' });
    const list = await client.models.list();
    expect(list.data).toHaveLength(1);
    expect(list.data[0]).toMatchObject({ id: 'demo', object: 'model', owned_by: 'tessera', max_model_len: 256 });
    expect((await client.models.retrieve('demo')).id).toBe('demo');
    const missing = await request(`${server.url}/v1/models/gpt-4`);
    expect(missing.status).toBe(404);
    expect(missing.json).toEqual(apiError('model', /gpt-4/, 'invalid_request_error', 'model_not_found'));
    const nowhere = await request(`${server.url}/v2/nothing`);
    expect(nowhere.status).toBe(404);
    expect(nowhere.json).toEqual(apiError(null, /no route/i));
  });

  it('binds 127.0.0.1 unless told otherwise', () => {
    expect(server.host).toBe('127.0.0.1');
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`);
  });
});

describe('chat completions', () => {
  it('answers in OpenAI shape, and streamed deltas add up to the same content at temperature 0', async () => {
    const params = { model: 'demo', messages: CHAT, max_tokens: 24, temperature: 0 };
    const whole = await client.chat.completions.create(params);
    expect(whole.id).toMatch(/^chatcmpl-/);
    expect(whole.object).toBe('chat.completion');
    expect(whole.model).toBe('demo');
    expect(typeof whole.created).toBe('number');
    expect(whole.choices).toHaveLength(1);
    const choice = whole.choices[0];
    expect(choice.index).toBe(0);
    expect(choice.message.role).toBe('assistant');
    expect(choice.message.content!.length).toBeGreaterThan(0);
    expect(['stop', 'length']).toContain(choice.finish_reason);
    const promptTokens = llm.tokenizer.encodeChat(CHAT, { addGenerationPrompt: true }).length;
    expect(whole.usage).toMatchObject({ prompt_tokens: promptTokens, total_tokens: promptTokens + whole.usage!.completion_tokens });
    expect(whole.usage!.prompt_tokens_details).toEqual({ cached_tokens: expect.any(Number) });

    const stream = await client.chat.completions.create({ ...params, stream: true });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id && c.usage === undefined)).toBe(true);
    const last = chunks[chunks.length - 1];
    expect(last.choices[0].finish_reason).toBe(choice.finish_reason);
    expect(last.choices[0].delta).toEqual({});
    expect(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).toBe(true);
    expect(chunks.map((c) => c.choices[0].delta.content ?? '').join('')).toBe(choice.message.content);
  });

  it('n = 2 gives two choices and sums their completion tokens', async () => {
    const r = await client.chat.completions.create({ model: 'demo', messages: CHAT, n: 2, max_tokens: 10, temperature: 1, seed: 3, ...extra({ ignore_eos: true }) });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(r.choices.every((c) => c.finish_reason === 'length')).toBe(true);
    expect(r.usage!.completion_tokens).toBe(20);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + 20);
  });

  it('returns logprobs in the chat format; the chosen token is in its top_logprobs with the same value', async () => {
    const r = await client.chat.completions.create({ model: 'demo', messages: CHAT, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3, ...extra({ ignore_eos: true }) });
    const content = r.choices[0].logprobs!.content!;
    expect(content).toHaveLength(8);
    expect(content.map((t) => t.token).join('')).toBe(r.choices[0].message.content);
    for (const t of content) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.bytes).toEqual([...Buffer.from(t.token)]);
      expect(t.top_logprobs).toHaveLength(3);
      expect(t.top_logprobs.find((a) => a.token === t.token)?.logprob).toBe(t.logprob);
      expect(t.top_logprobs[0].logprob).toBe(t.logprob); // greedy: the chosen token is the most likely
    }
    const plain = await client.chat.completions.create({ model: 'demo', messages: CHAT, max_tokens: 2 });
    expect(plain.choices[0].logprobs).toBeNull();
  });

  it('streams usage last, with no choices, when include_usage is set', async () => {
    const stream = await client.chat.completions.create({ model: 'demo', messages: CHAT, max_tokens: 6, stream: true, stream_options: { include_usage: true }, ...extra({ ignore_eos: true }) });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    const last = chunks[chunks.length - 1];
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ completion_tokens: 6, prompt_tokens: expect.any(Number) });
    expect(last.usage!.total_tokens).toBe(last.usage!.prompt_tokens + 6);
    expect(chunks.slice(0, -1).every((c) => c.usage === null && c.choices.length === 1)).toBe(true);
    expect(chunks[chunks.length - 2].choices[0].finish_reason).toBe('length');
  });

  it('takes content as a list of text parts and max_completion_tokens', async () => {
    const r = await client.chat.completions.create({
      model: 'demo',
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Who made ' }, { type: 'text', text: 'the heaven and the earth?' }] }],
      max_completion_tokens: 5,
      temperature: 0,
      ...extra({ ignore_eos: true }),
    });
    const same = await client.chat.completions.create({ model: 'demo', messages: CHAT, max_tokens: 5, temperature: 0, ...extra({ ignore_eos: true }) });
    expect(r.usage!.completion_tokens).toBe(5);
    expect(r.choices[0].message.content).toBe(same.choices[0].message.content);
  });
});

describe('completions', () => {
  const PROMPT = 'In the beginning God created';

  it('continues a prompt given as text or token ids, echoes it on request', async () => {
    const r = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 12, temperature: 0, ...extra({ ignore_eos: true }) });
    expect(r.id).toMatch(/^cmpl-/);
    expect(r.object).toBe('text_completion');
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]).toMatchObject({ index: 0, finish_reason: 'length', logprobs: null });
    const ids = llm.tokenizer.encode(PROMPT);
    expect(r.usage).toMatchObject({ prompt_tokens: ids.length, completion_tokens: 12, total_tokens: ids.length + 12 });
    const fromIds = await client.completions.create({ model: 'demo', prompt: ids, max_tokens: 12, temperature: 0, ...extra({ ignore_eos: true }) });
    expect(fromIds.choices[0].text).toBe(r.choices[0].text);
    const listOfOne = await client.completions.create({ model: 'demo', prompt: [PROMPT], max_tokens: 12, temperature: 0, ...extra({ ignore_eos: true }) });
    expect(listOfOne.choices[0].text).toBe(r.choices[0].text);
    const echoed = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 12, temperature: 0, echo: true, ...extra({ ignore_eos: true }) });
    expect(echoed.choices[0].text).toBe(PROMPT + r.choices[0].text);
    // Defaults: max_tokens 16, as OpenAI's.
    const short = await client.completions.create({ model: 'demo', prompt: PROMPT, temperature: 0, ...extra({ ignore_eos: true }) });
    expect(short.usage!.completion_tokens).toBe(16);
  });

  it('streams text chunks that add up to the whole text', async () => {
    const params = { model: 'demo', prompt: PROMPT, max_tokens: 12, temperature: 0, ...extra({ ignore_eos: true }) };
    const whole = await client.completions.create(params);
    const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
    const chunks: OpenAI.Completion[] = [];
    for await (const c of stream) chunks.push(c);
    const usageChunk = chunks.pop()!;
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toMatchObject({ completion_tokens: 12 });
    expect(chunks.map((c) => c.choices[0].text).join('')).toBe(whole.choices[0].text);
    expect(chunks[chunks.length - 1].choices[0].finish_reason).toBe('length');
  });

  it('ends the text before a stop string, streaming or not', async () => {
    const full = (await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 40, temperature: 0, ...extra({ ignore_eos: true }) })).choices[0].text;
    const stop = full.slice(8, 11);
    const expected = full.slice(0, full.indexOf(stop));
    const r = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 40, temperature: 0, stop: [stop, 'never appears'], ...extra({ ignore_eos: true }) });
    expect(r.choices[0].text).toBe(expected);
    expect(r.choices[0].finish_reason).toBe('stop');
    const stream = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 40, temperature: 0, stop, stream: true, ...extra({ ignore_eos: true }) });
    let text = '';
    let finish: string | null = null;
    for await (const c of stream) {
      text += c.choices[0].text;
      finish = c.choices[0].finish_reason ?? finish;
    }
    expect(text).toBe(expected);
    expect(finish).toBe('stop');
  });

  it('returns legacy logprobs: tokens, token_logprobs, top_logprobs holding the chosen token, text_offset', async () => {
    const r = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 10, temperature: 0, logprobs: 2, ...extra({ ignore_eos: true }) });
    const lp = r.choices[0].logprobs!;
    expect(lp.tokens).toHaveLength(10);
    expect(lp.tokens!.join('')).toBe(r.choices[0].text);
    let offset = 0;
    lp.tokens!.forEach((token, i) => {
      expect(lp.top_logprobs![i][token]).toBe(lp.token_logprobs![i]);
      expect(Object.keys(lp.top_logprobs![i]).length).toBeLessThanOrEqual(3);
      expect(lp.text_offset![i]).toBe(offset);
      offset += token.length;
    });
    // Sampled: the chosen token is in top_logprobs even when it is not among the top ones.
    const sampled = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 10, temperature: 1.5, seed: 5, logprobs: 0, ...extra({ ignore_eos: true }) });
    const s = sampled.choices[0].logprobs!;
    s.tokens!.forEach((token, i) => expect(s.top_logprobs![i]).toEqual({ [token]: s.token_logprobs![i] }));
  });

  it('reproduces sampling with a seed at temperature 1', async () => {
    const params = { model: 'demo', prompt: PROMPT, max_tokens: 32, temperature: 1, ...extra({ ignore_eos: true }) };
    const a = await client.completions.create({ ...params, seed: 42 });
    const b = await client.completions.create({ ...params, seed: 42 });
    expect(b.choices[0].text).toBe(a.choices[0].text);
    const others = await Promise.all([1, 2, 3].map((seed) => client.completions.create({ ...params, seed })));
    expect(new Set([a, ...others].map((r) => r.choices[0].text)).size).toBeGreaterThan(1);
  });

  it('ignores fields it does not know, as OpenAI does', async () => {
    const r = await post(server, '/v1/completions', { model: 'demo', prompt: 'And', max_tokens: 2, some_future_field: { x: 1 }, user: 'me' });
    expect(r.status).toBe(200);
  });
});

describe('metrics', () => {
  it('counts tokens, requests by finish reason and latencies; reads the engine gauges at scrape time', async () => {
    const before = await scrape(server);
    for (const name of ['tessera_requests_running', 'tessera_requests_waiting', 'tessera_kv_blocks_used', 'tessera_prefix_cache_hit_rate'])
      expect(before.has(name), name).toBe(true);
    expect(before.get('tessera_kv_blocks_total')).toBe(llm.info.kvCacheBlocks);
    const r = await client.completions.create({ model: 'demo', prompt: 'And God said', max_tokens: 7, ...extra({ ignore_eos: true }) });
    const after = await scrape(server);
    const delta = (name: string) => after.get(name)! - (before.get(name) ?? 0);
    expect(delta('tessera_prompt_tokens_total')).toBe(r.usage!.prompt_tokens);
    expect(delta('tessera_generation_tokens_total')).toBe(7);
    expect(delta('tessera_requests_total{finish_reason="length"}')).toBe(1);
    expect(delta('tessera_time_to_first_token_seconds_count')).toBe(1);
    expect(delta('tessera_e2e_request_latency_seconds_count')).toBe(1);
    expect(delta('tessera_inter_token_latency_seconds_count')).toBe(6);
    expect(after.get('tessera_kv_blocks_used')).toBe(0);
  });
});

describe('errors', () => {
  it('answers a bad field with 400 naming it', async () => {
    const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
      ['/v1/completions', { prompt: 'x', temperature: 'hot' }, 'temperature', /^temperature must be a number/],
      ['/v1/completions', { prompt: 'x', temperature: -1 }, 'temperature', /^temperature must be a number from 0/],
      ['/v1/completions', { prompt: 'x', top_p: 1.5 }, 'top_p', /^top_p must be/],
      ['/v1/completions', { prompt: 'x', top_k: 2.5 }, 'top_k', /^top_k must be a whole number/],
      ['/v1/completions', { prompt: 'x', min_p: 2 }, 'min_p', /^min_p /],
      ['/v1/completions', { prompt: 'x', repetition_penalty: 0 }, 'repetition_penalty', /^repetition_penalty /],
      ['/v1/completions', { prompt: 'x', presence_penalty: 3 }, 'presence_penalty', /^presence_penalty /],
      ['/v1/completions', { prompt: 'x', frequency_penalty: '1' }, 'frequency_penalty', /^frequency_penalty /],
      ['/v1/completions', { prompt: 'x', max_tokens: 0 }, 'max_tokens', /^max_tokens must be a whole number >= 1/],
      ['/v1/completions', { prompt: 'x', max_tokens: '5' }, 'max_tokens', /^max_tokens /],
      ['/v1/completions', { prompt: 'x', n: 0 }, 'n', /^n must be a whole number from 1 to 32; got 0\.$/],
      ['/v1/completions', { prompt: 'x', n: 2.5 }, 'n', /^n must be/],
      ['/v1/completions', { prompt: 'x', seed: -1 }, 'seed', /^seed must be/],
      ['/v1/completions', { prompt: 'x', stop: 5 }, 'stop', /^stop must be a string or a list of strings/],
      ['/v1/completions', { prompt: 'x', stop: [''] }, 'stop', /^stop must be up to 16 non-empty strings/],
      ['/v1/completions', { prompt: 'x', logprobs: 21 }, 'logprobs', /^logprobs must be a whole number from 0 to 20/],
      ['/v1/completions', { prompt: 'x', logprobs: true }, 'logprobs', /^logprobs /],
      ['/v1/completions', { prompt: 'x', echo: 'yes' }, 'echo', /^echo must be true or false/],
      ['/v1/completions', { prompt: 'x', ignore_eos: 1 }, 'ignore_eos', /^ignore_eos /],
      ['/v1/completions', { prompt: 'x', stream: 'yes' }, 'stream', /^stream must be true or false/],
      ['/v1/completions', { prompt: 'x', stream_options: { include_usage: true } }, 'stream_options', /only allowed when stream is true/],
      ['/v1/completions', { prompt: 'x', stream: true, stream_options: { include_usage: 'y' } }, 'stream_options.include_usage', /true or false/],
      ['/v1/completions', { prompt: 'x', priority: 'high' }, 'priority', /^priority must be a whole number/],
      ['/v1/completions', { prompt: 'x', model: 7 }, 'model', /^model must be a string/],
      ['/v1/completions', { prompt: ['one', 'two'] }, 'prompt', /single prompt; this server does not take batches/],
      ['/v1/completions', { prompt: [[1, 2], [3]] }, 'prompt', /batches/],
      ['/v1/completions', { prompt: [65, 9999] }, 'prompt', /^prompt\[1\] must be a token id from 0 to 263/],
      ['/v1/completions', { prompt: 42 }, 'prompt', /^prompt must be a string/],
      ['/v1/completions', {}, 'prompt', /^prompt is required/],
      ['/v1/chat/completions', { messages: 'hi' }, 'messages', /^messages must be a non-empty list/],
      ['/v1/chat/completions', { messages: [] }, 'messages', /^messages must be a non-empty list/],
      ['/v1/chat/completions', { messages: [{ content: 'hi' }] }, 'messages', /^messages\[0\]\.role must be a non-empty string/],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }, 'messages', /^messages\[0\]\.content must be/],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages', /type "image_url"/],
      ['/v1/chat/completions', { messages: [{ role: 'robot', content: 'hi' }] }, 'messages', /chat template rejected/],
      ['/v1/chat/completions', { messages: CHAT, logprobs: 'yes' }, 'logprobs', /^logprobs must be true or false/],
      ['/v1/chat/completions', { messages: CHAT, logprobs: true, top_logprobs: 21 }, 'top_logprobs', /^top_logprobs must be a whole number from 0 to 20/],
      ['/v1/chat/completions', { messages: CHAT, top_logprobs: 2 }, 'top_logprobs', /needs logprobs/],
      ['/v1/chat/completions', { messages: CHAT, max_completion_tokens: -3 }, 'max_completion_tokens', /^max_completion_tokens must be/],
      ['/v1/chat/completions', { messages: CHAT, tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools', /not supported/],
    ];
    for (const [route, body, param, message] of cases) {
      const r = await post(server, route, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json, JSON.stringify(body)).toEqual(apiError(param, message));
      expect((r.json as { error: { message: string } }).error.message, JSON.stringify(body)).toMatch(/[.?]$/);
    }
    expect(llm.numInFlight).toBe(0);
  });

  it('surfaces as the openai client\'s BadRequestError with the param', async () => {
    const err = await client.chat.completions.create({ model: 'demo', messages: CHAT, temperature: 'warm' as unknown as number }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err).toMatchObject({ status: 400, param: 'temperature', type: 'invalid_request_error', code: null });
  });

  it('refuses a prompt too long for the context with 400', async () => {
    const long = 'And it came to pass '.repeat(20); // 400 bytes: over the 256-token context
    const r = await post(server, '/v1/completions', { model: 'demo', prompt: long });
    expect(r.status).toBe(400);
    expect(r.json).toEqual(apiError('prompt', /^The prompt has \d+ tokens; this model's context is 256 tokens/));
    const chat = await post(server, '/v1/chat/completions', { model: 'demo', messages: [{ role: 'user', content: long }] });
    expect(chat.status).toBe(400);
    expect(chat.json).toEqual(apiError('messages', /^The prompt has \d+ tokens/));
    expect(llm.numInFlight).toBe(0);
  });

  it('answers a wrong model with 404 model_not_found', async () => {
    const r = await post(server, '/v1/chat/completions', { model: 'gpt-4o', messages: CHAT });
    expect(r.status).toBe(404);
    expect(r.json).toEqual(apiError('model', 'The model "gpt-4o" does not exist; this server serves "demo".', 'invalid_request_error', 'model_not_found'));
    const err = await client.completions.create({ model: 'gpt-4o', prompt: 'x' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect(err).toMatchObject({ code: 'model_not_found' });
  });

  it('answers invalid JSON and a body that is not an object with 400, and a huge body with 413', async () => {
    const bad = await post(server, '/v1/completions', '{"prompt": "x",');
    expect(bad.status).toBe(400);
    expect(bad.json).toEqual(apiError(null, /^The request body is not valid JSON/));
    const array = await post(server, '/v1/chat/completions', '[1, 2]');
    expect(array.status).toBe(400);
    expect(array.json).toEqual(apiError(null, 'The request body must be a JSON object.'));
    const huge = await post(server, '/v1/completions', { prompt: 'x'.repeat(5 * 1024 * 1024) });
    expect(huge.status).toBe(413);
    expect(huge.json).toEqual(apiError(null, /larger than the server's limit of 4194304 bytes/));
  });

  it('requires the API key on /v1/* only, when one is set', async () => {
    const locked = await start(llm, { apiKey: 'sesame' });
    const noKey = await request(`${locked.url}/v1/models`);
    expect(noKey.status).toBe(401);
    expect(noKey.json).toEqual(apiError(null, /API key is required/, 'authentication_error', 'invalid_api_key'));
    const wrong = await post(locked, '/v1/completions', { prompt: 'x' }, { authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.json).toEqual(apiError(null, 'The API key is wrong.', 'authentication_error', 'invalid_api_key'));
    const err = await openai(locked, 'nope').models.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((await openai(locked, 'sesame').models.list()).data[0].id).toBe('demo');
    const ok = await openai(locked, 'sesame').completions.create({ model: 'demo', prompt: 'And', max_tokens: 2 });
    expect(ok.choices).toHaveLength(1);
    expect((await request(`${locked.url}/health`)).status).toBe(200);
    expect((await request(`${locked.url}/metrics`)).status).toBe(200);
  });
});

describe('aborts', () => {
  it('a client that leaves mid-stream frees its request and KV blocks', async () => {
    const before = await scrape(server);
    const stream = await client.chat.completions.create({ model: 'demo', messages: CHAT, max_tokens: 200, stream: true, ...extra({ ignore_eos: true }) });
    let seen = 0;
    for await (const c of stream) {
      if (c.choices[0]?.delta.content) seen++;
      if (seen === 3) break; // the client's iterator aborts the HTTP request
    }
    expect(llm.numInFlight).toBeLessThanOrEqual(1);
    await until(() => llm.numInFlight === 0 && llm.stats().kvBlocksUsed === 0 && server.numActive === 0, 'the request to be freed');
    const after = await scrape(server);
    expect(after.get('tessera_requests_total{finish_reason="abort"}')! - before.get('tessera_requests_total{finish_reason="abort"}')!).toBe(1);
    expect(after.get('tessera_generation_tokens_total')! - before.get('tessera_generation_tokens_total')!).toBeLessThan(200);
  });

  it('a client that leaves before a non-streamed answer frees its request too', async () => {
    const before = await scrape(server);
    const ac = new AbortController();
    const pending = fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'demo', prompt: 'And', max_tokens: 200, ignore_eos: true }),
      signal: ac.signal,
    }).catch((e: unknown) => e);
    await until(() => llm.numInFlight === 1 && llm.stats().kvBlocksUsed > 0, 'the request to start');
    ac.abort();
    expect(await pending).toBeInstanceOf(Error);
    await until(() => llm.numInFlight === 0 && llm.stats().kvBlocksUsed === 0 && server.numActive === 0, 'the request to be freed');
    const after = await scrape(server);
    expect(after.get('tessera_requests_total{finish_reason="abort"}')! - before.get('tessera_requests_total{finish_reason="abort"}')!).toBe(1);
  });
});

describe('a small server', () => {
  let small: Tessera;
  let smallServer: TesseraServer;

  beforeAll(async () => {
    // A copy of the demo model without its chat template, one sequence at a time.
    const dir = await mkdtemp(path.join(tmpdir(), 'tessera-server-'));
    scratch.push(dir);
    const modelDir = path.join(dir, 'plain');
    await cp(DEMO_DIR, modelDir, { recursive: true });
    const configPath = path.join(modelDir, 'tokenizer_config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
    delete config.chat_template;
    await writeFile(configPath, JSON.stringify(config));
    small = await Tessera.load(modelDir, { device: 'cpu', engineThread: 'worker', maxNumSeqs: 1 });
    models.push(small);
    smallServer = await start(small, { maxQueue: 1 });
  });

  it('is named after its directory and refuses chat without a template', async () => {
    expect((await openai(smallServer).models.list()).data[0].id).toBe('plain');
    const r = await post(smallServer, '/v1/chat/completions', { model: 'plain', messages: CHAT });
    expect(r.status).toBe(400);
    expect(r.json).toEqual(apiError(null, /^The model has no chat template .*; use \/v1\/completions instead\.$/));
  });

  it('refuses more samples than the engine runs sequences in a step', async () => {
    const r = await post(smallServer, '/v1/completions', { prompt: 'And', n: 2 });
    expect(r.status).toBe(400);
    expect(r.json).toEqual(apiError('n', 'n must be a whole number from 1 to 1; got 2.'));
  });

  it('answers 429 past max-num-seqs + max-queue requests in flight', async () => {
    const body = { model: 'plain', prompt: 'And God said', max_tokens: 48, ignore_eos: true };
    const results = await Promise.all(Array.from({ length: 6 }, () => post(smallServer, '/v1/completions', body)));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 429, 429, 429, 429]);
    for (const r of results.filter((x) => x.status === 429)) {
      expect(r.json).toEqual(apiError(null, /^The server is at capacity \(2 requests in flight\); retry later\.$/, 'rate_limit_error', 'rate_limit_exceeded'));
    }
    const err = await Promise.all([
      post(smallServer, '/v1/completions', body),
      post(smallServer, '/v1/completions', body),
      openai(smallServer).completions.create({ model: 'plain', prompt: 'x', max_tokens: 1 }).catch((e: unknown) => e),
    ]);
    expect(err[2]).toBeInstanceOf(OpenAI.RateLimitError);
    expect(small.numInFlight).toBe(0);
  });

  it('finishes requests in flight on close, within the timeout, and refuses new ones', async () => {
    const s = await start(small);
    const pending = post(s, '/v1/completions', { model: 'plain', prompt: 'And', max_tokens: 30, ignore_eos: true });
    await until(() => small.numInFlight === 1, 'the request to start');
    const closing = s.close({ timeoutMs: 20_000 });
    const refused = await fetch(`${s.url}/health`).then(
      () => 'answered',
      () => 'refused',
    );
    expect(refused).toBe('refused');
    const r = await pending;
    expect(r.status).toBe(200);
    expect((r.json as OpenAI.Completion).usage!.completion_tokens).toBe(30);
    await closing;
  });

  it('aborts what is left when the shutdown timeout passes', async () => {
    const s = await start(small);
    const pending = post(s, '/v1/completions', { model: 'plain', prompt: 'And', max_tokens: 200, ignore_eos: true });
    await until(() => small.numInFlight === 1, 'the request to start');
    await s.close({ timeoutMs: 50 });
    const r = await pending;
    expect(r.status).toBe(503);
    expect(r.json).toEqual(apiError(null, 'The server shut down before the request finished.', 'server_error'));
    await until(() => small.numInFlight === 0 && small.stats().kvBlocksUsed === 0, 'the request to be freed');
  });
});
