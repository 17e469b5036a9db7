/**
 * Chooses the next token from a row of logits, on the host. The order is that of Hugging Face
 * and vLLM: penalties, then temperature, then top-k, top-p and min-p over the tempered
 * distribution, then one draw. Temperature 0 is greedy (argmax; ties to the lowest id).
 * Logprobs, when asked, are those of the model's distribution after penalties, before
 * temperature and truncation.
 */
import type { SamplingParams } from './params.js';
import { uniform } from './philox.js';

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
}

export interface SampleResult {
  tokenId: number;
  /** Present when params.logprobs is not null. */
  logprob?: number;
  topLogprobs?: TokenLogprob[];
}

export interface SampleContext {
  params: SamplingParams;
  /** Prompt and output ids so far (repetition penalty). */
  tokenIds: readonly number[];
  /** Counts of each id in the output (presence and frequency penalties). */
  outputCounts: ReadonlyMap<number, number>;
  /** Seed in effect (the request's, or one drawn for it). */
  seed: number;
  /** Which of the request's n samples: a separate random stream. */
  stream: number;
  /** Output index of this draw: the counter of the stream. */
  counter: number;
}

/** Applies the penalties in place. */
export function applyPenalties(logits: Float32Array, ctx: SampleContext): void {
  const { repetitionPenalty, presencePenalty, frequencyPenalty } = ctx.params;
  if (repetitionPenalty !== 1) {
    const seen = new Set(ctx.tokenIds);
    for (const id of seen) {
      const l = logits[id];
      logits[id] = l > 0 ? l / repetitionPenalty : l * repetitionPenalty;
    }
  }
  if (presencePenalty !== 0 || frequencyPenalty !== 0) {
    for (const [id, count] of ctx.outputCounts) logits[id] -= presencePenalty + frequencyPenalty * count;
  }
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

function topLogprobs(logits: Float32Array, lse: number, n: number): TokenLogprob[] {
  const top: TokenLogprob[] = [];
  for (let i = 0; i < logits.length; i++) {
    if (top.length < n || logits[i] > logits[top[top.length - 1].tokenId]) {
      const entry = { tokenId: i, logprob: logits[i] - lse };
      let j = top.length;
      top.push(entry);
      // By logit (the same order as the logprob, and defined when lse is not: a +inf logit).
      while (j > 0 && logits[top[j - 1].tokenId] < logits[i]) {
        top[j] = top[j - 1];
        j--;
      }
      top[j] = entry;
      if (top.length > n) top.pop();
    }
  }
  return top;
}

/** Samples one token. `logits` is scratch: it is modified. */
export function sampleToken(logits: Float32Array, ctx: SampleContext): SampleResult {
  const p = ctx.params;
  // A NaN logit (a numerically broken model) counts as -inf: never drawn unless every logit is,
  // and out of the softmax. The device sampler does the same.
  for (let i = 0; i < logits.length; i++) if (logits[i] !== logits[i]) logits[i] = -Infinity;
  applyPenalties(logits, ctx);
  let result: SampleResult;
  if (p.temperature === 0) {
    result = { tokenId: argmax(logits) };
  } else {
    result = { tokenId: drawTruncated(logits, p, uniform(ctx.seed, ctx.stream, ctx.counter)) };
  }
  if (p.logprobs !== null) {
    const lse = logSumExp(logits);
    result.logprob = logits[result.tokenId] - lse;
    if (p.logprobs > 0) result.topLogprobs = topLogprobs(logits, lse, p.logprobs);
  }
  return result;
}

/**
 * Tempered softmax restricted by top-k, top-p and min-p, then inverse-CDF sampling with u.
 * Candidates are sorted by logit (descending, ties by id) only as far as the filters need.
 */
function drawTruncated(logits: Float32Array, p: SamplingParams, u: number): number {
  const v = logits.length;
  const invT = 1 / p.temperature;
  let max = -Infinity;
  for (let i = 0; i < v; i++) if (logits[i] > max) max = logits[i];
  // +inf present (its mass would be inf - inf) or every logit -inf: no distribution to draw from;
  // the argmax, as at temperature 0.
  if (!Number.isFinite(max)) return argmax(logits);

  let ids: number[];
  if (p.topK > 0 && p.topK < v) {
    ids = selectTop(logits, p.topK);
  } else {
    ids = Array.from({ length: v }, (_, i) => i);
  }
  const truncate = p.topP < 1 || p.minP > 0 || ids.length < v;
  if (truncate) ids.sort((a, b) => logits[b] - logits[a] || a - b);

  const probs = new Float64Array(ids.length);
  let sum = 0;
  for (let i = 0; i < ids.length; i++) sum += probs[i] = Math.exp((logits[ids[i]] - max) * invT);
  let keep = ids.length;
  if (p.minP > 0) {
    const threshold = p.minP * (probs[0] / sum);
    while (keep > 1 && probs[keep - 1] / sum < threshold) keep--;
  }
  if (p.topP < 1) {
    let cum = 0;
    for (let i = 0; i < keep; i++) {
      cum += probs[i] / sum;
      if (cum >= p.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += probs[i];
  let target = u * kept;
  for (let i = 0; i < keep; i++) {
    target -= probs[i];
    if (target < 0) return ids[i];
  }
  return ids[keep - 1];
}

/** Ids of the k largest logits (unordered), by partial selection in O(V) expected. */
function selectTop(logits: Float32Array, k: number): number[] {
  const ids = Array.from({ length: logits.length }, (_, i) => i);
  const better = (a: number, b: number) => logits[a] > logits[b] || (logits[a] === logits[b] && a < b);
  let lo = 0, hi = ids.length - 1;
  while (lo < hi) {
    const pivot = ids[(lo + hi) >> 1];
    let i = lo, j = hi;
    while (i <= j) {
      while (better(ids[i], pivot)) i++;
      while (better(pivot, ids[j])) j--;
      if (i <= j) {
        [ids[i], ids[j]] = [ids[j], ids[i]];
        i++;
        j--;
      }
    }
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else break;
  }
  return ids.slice(0, k);
}
