/**
 * Reads OpenAI request bodies into what the engine takes: prompt token ids, n, priority and
 * sampling parameters. Every field is type-checked, and a mistake is a 400 whose sentence and
 * `param` name the field. Fields Tessera does not know are ignored, as OpenAI does; fields it knows
 * but cannot honour (tools, logit_bias, suffix...) are refused rather than silently dropped.
 */
import { isTesseraError } from '../errors.js';
import type { Tessera } from '../llm.js';
import { MAX_LOGPROBS, resolveSamplingParams, type SamplingParams } from '../sampling/params.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { ApiError, badField } from './errors.js';

export type Json = Record<string, unknown>;

/** A completion or chat request, checked. */
export interface GenerationRequest {
  kind: 'completion' | 'chat';
  promptIds: number[];
  /** The prompt as text, for echo (completions). */
  promptText: string;
  n: number;
  priority: number | undefined;
  sampling: Partial<SamplingParams>;
  stream: boolean;
  includeUsage: boolean;
  /** Completions: prepend the prompt to each choice. */
  echo: boolean;
  /** Logprobs asked for: completions' integer, or chat's top_logprobs when logprobs is true; null = off. */
  logprobs: number | null;
  /** Field names for messages about the request as a whole (a prompt too long, max_tokens too big). */
  promptField: 'prompt' | 'messages';
  maxTokensField: 'max_tokens' | 'max_completion_tokens';
}

const MAX_N = 64;

/** Short JSON of a value for a message. */
function show(value: unknown): string {
  const s = JSON.stringify(value) ?? String(value);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function rule(field: string, what: string, value: unknown): ApiError {
  return badField(field, `${field} must be ${what}; got ${show(value)}.`);
}

/** A field's value, with null read as absent (OpenAI's clients send null for unset fields). */
function get(body: Json, field: string): unknown {
  const v = body[field];
  return v === null ? undefined : v;
}

function optionalBool(body: Json, field: string): boolean | undefined {
  const v = get(body, field);
  if (v !== undefined && typeof v !== 'boolean') throw rule(field, 'true or false', v);
  return v;
}

function optionalInt(body: Json, field: string, min: number, max: number): number | undefined {
  const v = get(body, field);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? (min === Number.MIN_SAFE_INTEGER ? 'a whole number' : `a whole number >= ${min}`) : `a whole number from ${min} to ${max}`;
    throw rule(field, range, v);
  }
  return v;
}

/** The fields that map one to one onto SamplingParams. */
const SAMPLING_FIELDS: Array<[string, keyof SamplingParams]> = [
  ['temperature', 'temperature'],
  ['top_p', 'topP'],
  ['top_k', 'topK'],
  ['min_p', 'minP'],
  ['repetition_penalty', 'repetitionPenalty'],
  ['presence_penalty', 'presencePenalty'],
  ['frequency_penalty', 'frequencyPenalty'],
  ['seed', 'seed'],
  ['ignore_eos', 'ignoreEos'],
  ['stop_token_ids', 'stopTokenIds'],
];

/**
 * Checks one sampling value with the engine's own rule (so the ranges live in one place) and
 * answers a 400 naming the JSON field.
 */
function checkSampling(out: Partial<SamplingParams>, key: keyof SamplingParams, field: string, value: unknown): void {
  try {
    resolveSamplingParams({ [key]: value }, { [key]: field });
  } catch (err) {
    if (isTesseraError(err)) throw badField(field, err.message);
    throw err;
  }
  (out as Record<string, unknown>)[key] = value;
}

function commonSampling(body: Json, maxTokensField: 'max_tokens' | 'max_completion_tokens'): Partial<SamplingParams> {
  const out: Partial<SamplingParams> = {};
  for (const [field, key] of SAMPLING_FIELDS) {
    const v = get(body, field);
    if (v !== undefined) checkSampling(out, key, field, v);
  }
  const maxTokens = get(body, maxTokensField);
  if (maxTokens !== undefined) checkSampling(out, 'maxTokens', maxTokensField, maxTokens);
  const stop = get(body, 'stop');
  if (stop !== undefined) {
    if (typeof stop !== 'string' && !Array.isArray(stop)) throw rule('stop', 'a string or a list of strings', stop);
    checkSampling(out, 'stop', 'stop', typeof stop === 'string' ? [stop] : stop);
  }
  return out;
}

function commonFields(llm: Tessera, body: Json): { n: number; priority: number | undefined; stream: boolean; includeUsage: boolean } {
  // The engine cannot run more samples of one request than sequences in a step.
  const n = optionalInt(body, 'n', 1, Math.min(MAX_N, llm.info.maxNumSeqs)) ?? 1;
  const priority = optionalInt(body, 'priority', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  const stream = optionalBool(body, 'stream') ?? false;
  let includeUsage = false;
  const options = get(body, 'stream_options');
  if (options !== undefined) {
    if (typeof options !== 'object' || Array.isArray(options)) throw rule('stream_options', 'an object such as {"include_usage": true}', options);
    if (!stream) throw badField('stream_options', 'stream_options is only allowed when stream is true.');
    const inc = (options as Json).include_usage;
    if (inc !== undefined && inc !== null && typeof inc !== 'boolean') throw rule('stream_options.include_usage', 'true or false', inc);
    includeUsage = inc === true;
  }
  const bestOf = get(body, 'best_of');
  if (bestOf !== undefined && bestOf !== n) throw badField('best_of', 'best_of is not supported; leave it out or set it equal to n.');
  const bias = get(body, 'logit_bias');
  if (bias !== undefined && !(typeof bias === 'object' && bias !== null && !Array.isArray(bias) && Object.keys(bias).length === 0))
    throw badField('logit_bias', 'logit_bias is not supported by this server.');
  return { n, priority, stream, includeUsage };
}

/** The model field: absent means the served model; another name is a 404. */
export function checkModel(body: Json, servedName: string): void {
  const model = get(body, 'model');
  if (model === undefined) return;
  if (typeof model !== 'string') throw rule('model', 'a string', model);
  if (model !== servedName)
    throw new ApiError(404, `The model "${show(model).slice(1, -1)}" does not exist; this server serves "${servedName}".`, 'model', 'invalid_request_error', 'model_not_found');
}

function tokenIds(value: unknown[], field: string, vocabSize: number): number[] {
  value.forEach((t, i) => {
    if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0 || t >= vocabSize)
      throw badField(field, `${field}[${i}] must be a token id from 0 to ${vocabSize - 1}; got ${show(t)}.`);
  });
  return value as number[];
}

const BATCH = 'prompt must be a single prompt; this server does not take batches of several prompts (send one request per prompt).';

/** prompt: a string, a list of one string, a list of token ids, or a list of one list of token ids. */
function readPrompt(llm: Tessera, body: Json): { ids: number[]; text: string } {
  const prompt = get(body, 'prompt');
  const vocab = llm.config.vocabSize;
  const fromText = (text: string) => ({ ids: llm.tokenizer.encode(text), text });
  const fromIds = (ids: number[]) => ({ ids, text: llm.tokenizer.decode(ids, { skipSpecialTokens: true }) });
  if (prompt === undefined) throw badField('prompt', 'prompt is required: a string or a list of token ids.');
  if (typeof prompt === 'string') return fromText(prompt);
  if (!Array.isArray(prompt) || prompt.length === 0) throw rule('prompt', 'a string or a non-empty list of token ids', prompt);
  if (prompt.every((p) => typeof p === 'number')) return fromIds(tokenIds(prompt, 'prompt', vocab));
  if (prompt.every((p) => typeof p === 'string')) {
    if (prompt.length > 1) throw badField('prompt', BATCH);
    return fromText(prompt[0] as string);
  }
  if (prompt.every((p) => Array.isArray(p))) {
    if (prompt.length > 1) throw badField('prompt', BATCH);
    const ids = prompt[0] as unknown[];
    if (ids.length === 0) throw rule('prompt', 'a string or a non-empty list of token ids', prompt);
    return fromIds(tokenIds(ids, 'prompt[0]', vocab));
  }
  throw rule('prompt', 'a string or a list of token ids', prompt);
}

export function parseCompletion(llm: Tessera, body: Json): GenerationRequest {
  const { ids, text } = readPrompt(llm, body);
  const common = commonFields(llm, body);
  const sampling = commonSampling(body, 'max_tokens');
  sampling.maxTokens ??= 16; // OpenAI's default for completions
  const logprobs = get(body, 'logprobs');
  if (logprobs !== undefined) checkSampling(sampling, 'logprobs', 'logprobs', logprobs);
  const echo = optionalBool(body, 'echo') ?? false;
  if (echo && logprobs !== undefined)
    throw badField('echo', 'echo with logprobs is not supported (Tessera does not compute the logprobs of prompt tokens); drop one of them.');
  const suffix = get(body, 'suffix');
  if (suffix !== undefined && suffix !== '') throw badField('suffix', 'suffix is not supported by this server.');
  return {
    kind: 'completion',
    promptIds: ids,
    promptText: text,
    ...common,
    sampling,
    echo,
    logprobs: (sampling.logprobs as number | undefined) ?? null,
    promptField: 'prompt',
    maxTokensField: 'max_tokens',
  };
}

/** messages: [{role, content}], content a string or a list of text parts. */
function readMessages(body: Json): ChatMessage[] {
  const messages = get(body, 'messages');
  if (!Array.isArray(messages) || messages.length === 0) throw rule('messages', 'a non-empty list of {"role", "content"} objects', messages);
  return messages.map((m: unknown, i): ChatMessage => {
    const field = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw rule(field, 'an object with "role" and "content"', m);
    const { role, content } = m as Json;
    if (typeof role !== 'string' || role === '') throw badField('messages', `${field}.role must be a non-empty string; got ${show(role)}.`);
    if (content === undefined || content === null) return { role, content: '' };
    if (typeof content === 'string') return { role, content };
    if (!Array.isArray(content)) throw badField('messages', `${field}.content must be a string or a list of text parts; got ${show(content)}.`);
    const texts = content.map((part: unknown, j) => {
      const p = part as Json | null;
      if (typeof p !== 'object' || p === null || p.type !== 'text' || typeof p.text !== 'string') {
        const type = typeof p === 'object' && p !== null ? p.type : undefined;
        throw badField(
          'messages',
          typeof type === 'string' && type !== 'text'
            ? `${field}.content[${j}] is of type "${type}", which this server does not support; it takes text parts only.`
            : `${field}.content[${j}] must be {"type": "text", "text": string}; got ${show(part)}.`,
        );
      }
      return p.text as string;
    });
    return { role, content: texts.join('') };
  });
}

export function parseChat(llm: Tessera, body: Json): GenerationRequest {
  const messages = readMessages(body);
  const common = commonFields(llm, body);
  const maxTokensField = get(body, 'max_completion_tokens') !== undefined ? 'max_completion_tokens' : 'max_tokens';
  const sampling = commonSampling(body, maxTokensField);
  const wantLogprobs = optionalBool(body, 'logprobs') ?? false;
  const top = optionalInt(body, 'top_logprobs', 0, MAX_LOGPROBS);
  if (top !== undefined && !wantLogprobs) throw badField('top_logprobs', 'top_logprobs needs logprobs set to true.');
  if (wantLogprobs) sampling.logprobs = top ?? 0;
  const tools = get(body, 'tools');
  if (tools !== undefined && !(Array.isArray(tools) && tools.length === 0)) throw badField('tools', 'tools are not supported by this server.');
  const functions = get(body, 'functions');
  if (functions !== undefined && !(Array.isArray(functions) && functions.length === 0)) throw badField('functions', 'functions are not supported by this server.');
  const format = get(body, 'response_format');
  if (format !== undefined && (typeof format !== 'object' || (format as Json).type !== 'text'))
    throw badField('response_format', 'response_format other than {"type": "text"} is not supported by this server.');
  if (!llm.tokenizer.chatTemplate)
    throw new ApiError(400, `The model has no chat template (in tokenizer_config.json or chat_template.jinja); use /v1/completions instead.`, null);
  let promptIds: number[];
  try {
    promptIds = llm.tokenizer.encodeChat(messages, { addGenerationPrompt: true });
  } catch (err) {
    if (isTesseraError(err) && err.code === 'invalid_input') throw badField('messages', err.message);
    throw err;
  }
  return {
    kind: 'chat',
    promptIds,
    promptText: '',
    ...common,
    sampling,
    echo: false,
    logprobs: wantLogprobs ? (top ?? 0) : null,
    promptField: 'messages',
    maxTokensField,
  };
}
