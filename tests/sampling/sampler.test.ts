import { describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { resolveSamplingParams, type SamplingParams } from '../../src/sampling/params.js';
import { applyPenalties, sampleToken, type SampleContext } from '../../src/sampling/sampler.js';

function ctx(params: Partial<SamplingParams>, extra: Partial<SampleContext> = {}): SampleContext {
  return {
    params: resolveSamplingParams(params),
    tokenIds: [],
    outputCounts: new Map(),
    seed: 42,
    stream: 0,
    counter: 0,
    ...extra,
  };
}

/** Empirical distribution of sampleToken over many counters. */
function histogram(logits: number[], params: Partial<SamplingParams>, draws = 4000): Map<number, number> {
  const counts = new Map<number, number>();
  for (let i = 0; i < draws; i++) {
    const id = sampleToken(Float32Array.from(logits), ctx(params, { counter: i })).tokenId;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

describe('sampling', () => {
  it('temperature 0 is argmax, ties to the lowest id', () => {
    expect(sampleToken(Float32Array.from([1, 5, 3, 5]), ctx({ temperature: 0 })).tokenId).toBe(1);
  });

  it('is reproducible for a seed and counter, and varies with them', () => {
    const logits = Array.from({ length: 50 }, (_, i) => Math.sin(i));
    const a = Array.from({ length: 20 }, (_, i) => sampleToken(Float32Array.from(logits), ctx({ temperature: 1 }, { counter: i })).tokenId);
    const b = Array.from({ length: 20 }, (_, i) => sampleToken(Float32Array.from(logits), ctx({ temperature: 1 }, { counter: i })).tokenId);
    const c = Array.from({ length: 20 }, (_, i) => sampleToken(Float32Array.from(logits), ctx({ temperature: 1 }, { counter: i, seed: 43 })).tokenId);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
  });

  it('draws from softmax(logits / T)', () => {
    const logits = [0, Math.log(2), Math.log(5), -Infinity];
    const h = histogram(logits, { temperature: 1 }, 8000);
    expect(h.get(3)).toBeUndefined();
    expect(h.get(0)! / 8000).toBeCloseTo(1 / 8, 1);
    expect(h.get(1)! / 8000).toBeCloseTo(2 / 8, 1);
    expect(h.get(2)! / 8000).toBeCloseTo(5 / 8, 1);
    // T = 2 flattens: p ~ sqrt of the weights.
    const flat = histogram(logits, { temperature: 2 }, 8000);
    const z = 1 + Math.SQRT2 + Math.sqrt(5);
    expect(flat.get(2)! / 8000).toBeCloseTo(Math.sqrt(5) / z, 1);
  });

  it('top-k keeps exactly the k most likely', () => {
    const logits = [1, 4, 2, 3, 0];
    expect([...histogram(logits, { temperature: 1, topK: 2 }).keys()].sort()).toEqual([1, 3]);
    expect([...histogram(logits, { temperature: 1, topK: 1 }).keys()]).toEqual([1]);
  });

  it('top-p keeps the smallest prefix whose mass reaches p', () => {
    // probabilities 0.5, 0.3, 0.15, 0.05
    const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    expect([...histogram(logits, { temperature: 1, topP: 0.75 }).keys()].sort()).toEqual([0, 1]);
    expect([...histogram(logits, { temperature: 1, topP: 0.8 }).keys()].sort()).toEqual([0, 1]);
    expect([...histogram(logits, { temperature: 1, topP: 0.81 }).keys()].sort()).toEqual([0, 1, 2]);
    expect([...histogram(logits, { temperature: 1, topP: 0.4 }).keys()]).toEqual([0]);
  });

  it('min-p drops tokens below min_p times the top probability', () => {
    const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    // threshold 0.25 * 0.5 = 0.125: keeps 0.5, 0.3, 0.15
    expect([...histogram(logits, { temperature: 1, minP: 0.25 }).keys()].sort()).toEqual([0, 1, 2]);
    // threshold 0.7 * 0.5 = 0.35: 0.3 and below go
    expect([...histogram(logits, { temperature: 1, minP: 0.7 }).keys()]).toEqual([0]);
  });

  it('applies repetition, presence and frequency penalties as defined', () => {
    const logits = Float32Array.from([2, -2, 1, 1]);
    applyPenalties(logits, ctx({ repetitionPenalty: 2 }, { tokenIds: [0, 1, 1] }));
    expect([...logits]).toEqual([1, -4, 1, 1]);
    const l2 = Float32Array.from([2, 2, 2, 2]);
    applyPenalties(l2, ctx({ presencePenalty: 0.5, frequencyPenalty: 0.25 }, { outputCounts: new Map([[1, 1], [2, 3]]) }));
    expect([...l2]).toEqual([2, 2 - 0.75, 2 - 1.25, 2]);
  });

  it('a repetition penalty changes the greedy choice away from seen tokens', () => {
    const c = ctx({ temperature: 0, repetitionPenalty: 1.5 }, { tokenIds: [0] });
    expect(sampleToken(Float32Array.from([3, 2.5, 0]), c).tokenId).toBe(1);
  });

  it('returns logprobs of the chosen token and the top alternatives, sorted', () => {
    const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    const r = sampleToken(Float32Array.from(logits), ctx({ temperature: 0, logprobs: 2 }));
    expect(r.tokenId).toBe(0);
    expect(r.logprob).toBeCloseTo(Math.log(0.5), 6);
    expect(r.topLogprobs!.map((t) => t.tokenId)).toEqual([0, 1]);
    expect(r.topLogprobs![1].logprob).toBeCloseTo(Math.log(0.3), 6);
  });

  it('validates every field with a sentence naming it', () => {
    const bad: Array<[Partial<SamplingParams>, RegExp]> = [
      [{ temperature: -1 }, /temperature must be a number from 0 to 100/],
      [{ topP: 0 }, /topP must be greater than 0 and at most 1/],
      [{ topK: 1.5 }, /topK must be a whole number/],
      [{ minP: 2 }, /minP must be from 0 to 1/],
      [{ maxTokens: 0 }, /maxTokens must be a whole number >= 1/],
      [{ seed: -3 }, /seed must be a whole number >= 0/],
      [{ stop: [''] }, /stop must be up to 16 non-empty strings/],
      [{ logprobs: 21 }, /logprobs must be a whole number from 0 to 20/],
      [{ presencePenalty: 3 }, /presencePenalty must be from -2 to 2/],
    ];
    for (const [p, re] of bad) {
      expect(() => resolveSamplingParams(p)).toThrow(TesseraError);
      expect(() => resolveSamplingParams(p)).toThrow(re);
    }
    expect(() => resolveSamplingParams({ temperature: -1 }, { temperature: '--temperature' })).toThrow(/^--temperature must be/);
  });
});
