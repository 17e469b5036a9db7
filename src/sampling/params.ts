/**
 * Per-request sampling parameters, their defaults and their validation. Every check names the
 * field and the allowed range, so the CLI and the server can pass the sentence to the user.
 */
import { TesseraError } from '../errors.js';

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** Keep the k most likely tokens; 0 = off. */
  topK: number;
  /** Keep the smallest set of tokens whose probability reaches topP; 1 = off. */
  topP: number;
  /** Drop tokens less likely than minP times the most likely one; 0 = off. */
  minP: number;
  /** Divides positive and multiplies negative logits of tokens already in prompt or output; 1 = off. */
  repetitionPenalty: number;
  /** Subtracted once from the logit of every token already generated. */
  presencePenalty: number;
  /** Subtracted from a token's logit per time it was generated. */
  frequencyPenalty: number;
  /** Makes sampling reproducible; null draws a fresh seed. */
  seed: number | null;
  /** Output tokens at most. */
  maxTokens: number;
  /** Strings that end the output (not included in it). */
  stop: string[];
  /** Token ids that end the output, beside the checkpoint's EOS ids. */
  stopTokenIds: number[];
  /** Keep generating past EOS (benchmarks). */
  ignoreEos: boolean;
  /** Return the log-probability of each chosen token and of the top n alternatives; null = off. */
  logprobs: number | null;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  seed: null,
  maxTokens: 256,
  stop: [],
  stopTokenIds: [],
  ignoreEos: false,
  logprobs: null,
};

export const MAX_LOGPROBS = 20;

function check(ok: boolean, field: string, rule: string, value: unknown): void {
  if (!ok) throw new TesseraError(`${field} must be ${rule}; got ${JSON.stringify(value)}.`, 'invalid_input');
}

/** Fills defaults and validates; `names` maps our field names to the caller's (CLI flags, JSON fields). */
export function resolveSamplingParams(given: Partial<SamplingParams>, names: Partial<Record<keyof SamplingParams, string>> = {}): SamplingParams {
  const p: SamplingParams = { ...DEFAULT_SAMPLING };
  for (const [k, v] of Object.entries(given)) if (v !== undefined) (p as unknown as Record<string, unknown>)[k] = v;
  const n = (k: keyof SamplingParams) => names[k] ?? k;
  const isNum = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
  check(isNum(p.temperature) && p.temperature >= 0 && p.temperature <= 100, n('temperature'), 'a number from 0 to 100', p.temperature);
  check(Number.isInteger(p.topK) && p.topK >= -1, n('topK'), 'a whole number >= 0 (0 or -1 turns it off)', p.topK);
  if (p.topK < 0) p.topK = 0;
  check(isNum(p.topP) && p.topP > 0 && p.topP <= 1, n('topP'), 'greater than 0 and at most 1', p.topP);
  check(isNum(p.minP) && p.minP >= 0 && p.minP <= 1, n('minP'), 'from 0 to 1', p.minP);
  check(isNum(p.repetitionPenalty) && p.repetitionPenalty > 0 && p.repetitionPenalty <= 10, n('repetitionPenalty'), 'greater than 0 and at most 10', p.repetitionPenalty);
  check(isNum(p.presencePenalty) && Math.abs(p.presencePenalty) <= 2, n('presencePenalty'), 'from -2 to 2', p.presencePenalty);
  check(isNum(p.frequencyPenalty) && Math.abs(p.frequencyPenalty) <= 2, n('frequencyPenalty'), 'from -2 to 2', p.frequencyPenalty);
  check(p.seed === null || (Number.isSafeInteger(p.seed) && p.seed >= 0), n('seed'), 'a whole number >= 0', p.seed);
  check(Number.isSafeInteger(p.maxTokens) && p.maxTokens >= 1, n('maxTokens'), 'a whole number >= 1', p.maxTokens);
  check(Array.isArray(p.stop) && p.stop.length <= 16 && p.stop.every((s) => typeof s === 'string' && s.length > 0), n('stop'), 'up to 16 non-empty strings', p.stop);
  check(Array.isArray(p.stopTokenIds) && p.stopTokenIds.every((t) => Number.isSafeInteger(t) && t >= 0), n('stopTokenIds'), 'a list of token ids', p.stopTokenIds);
  check(typeof p.ignoreEos === 'boolean', n('ignoreEos'), 'true or false', p.ignoreEos);
  check(p.logprobs === null || (Number.isInteger(p.logprobs) && p.logprobs >= 0 && p.logprobs <= MAX_LOGPROBS), n('logprobs'), `a whole number from 0 to ${MAX_LOGPROBS}`, p.logprobs);
  return p;
}
