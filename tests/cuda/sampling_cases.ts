/**
 * Random sampling cases for the device sampler's tests: logits with ties, masks and flat rows, and
 * rows of random parameters; the comparison with the host sampler, and how close the host's own
 * decisions come to their thresholds (where the kernel's f32 ROW path may decide otherwise).
 */
import { expect } from 'vitest';
import type { SamplingRow } from '../../src/backend/cuda/ops/sampling.js';
import { resolveSamplingParams, type SamplingParams } from '../../src/sampling/params.js';
import { uniform } from '../../src/sampling/philox.js';
import { applyPenalties, type SampleResult } from '../../src/sampling/sampler.js';
import { mulberry32 } from '../helpers/random.js';

export { mulberry32 };

// ---------------------------------------------------------------------------------------------
// Random cases
// ---------------------------------------------------------------------------------------------


export function pick<T>(rnd: () => number, xs: readonly T[]): T {
  return xs[Math.floor(rnd() * xs.length)];
}

export function gaussian(rnd: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
}

/** Logits with ties: a coarse grid, a few levels, continuous values, masked entries, all equal. */
export function randomLogits(rnd: () => number, V: number): Float32Array {
  const kind = pick(rnd, ['grid', 'levels', 'continuous', 'masked', 'flat', 'peaked'] as const);
  const scale = pick(rnd, [0.5, 2, 5, 12]);
  const out = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    const g = gaussian(rnd) * scale;
    switch (kind) {
      case 'grid':
        out[i] = Math.round(g * 2) / 2;
        break;
      case 'levels':
        out[i] = pick(rnd, [-3, -1, 0, 0.5, 2]);
        break;
      case 'continuous':
        out[i] = g;
        break;
      case 'masked':
        out[i] = rnd() < 0.6 ? -Infinity : Math.round(g * 4) / 4;
        break;
      case 'flat':
        out[i] = 1.25;
        break;
      case 'peaked':
        out[i] = i % 97 === 3 ? 20 + Math.round(g) : Math.round(g);
        break;
    }
  }
  if (rnd() < 0.2) out[Math.floor(rnd() * V)] = -0;
  return out;
}

export function randomRow(rnd: () => number, V: number): SamplingRow {
  const given: Partial<SamplingParams> = {
    temperature: pick(rnd, [0, 0.25, 0.7, 1, 1.6, 1e-3]),
    topK: pick(rnd, [0, 0, 1, 2, 5, 40, V - 1, V, V + 7, Math.max(1, Math.floor(V / 2))]),
    topP: pick(rnd, [1, 1, 0.95, 0.8, 0.5, 0.13, 0.05 + 0.9 * rnd()]),
    minP: pick(rnd, [0, 0, 0.01, 0.1, 0.5, rnd() * 0.4, 1]),
    repetitionPenalty: pick(rnd, [1, 1, 1.3, 0.7]),
    presencePenalty: pick(rnd, [0, 0, 0.5, -1]),
    frequencyPenalty: pick(rnd, [0, 0, 0.25, -0.4]),
    logprobs: pick(rnd, [null, null, 0, 1, 5, 20]),
  };
  if (given.topK! < 0) given.topK = 0;
  const tokenIds = Array.from({ length: Math.floor(rnd() * 12) }, () => Math.floor(rnd() * V));
  const outputCounts = new Map<number, number>();
  for (const id of tokenIds.slice(Math.floor(tokenIds.length / 2))) outputCounts.set(id, (outputCounts.get(id) ?? 0) + 1);
  return {
    params: resolveSamplingParams(given),
    seed: Math.floor(rnd() * 2 ** 48),
    stream: Math.floor(rnd() * 4),
    counter: Math.floor(rnd() * 5000),
    tokenIds,
    outputCounts,
  };
}

export function expectSame(model: SampleResult, host: SampleResult, what: string): void {
  expect(model.tokenId, `${what}: token`).toBe(host.tokenId);
  expect(model.logprob === undefined, `${what}: logprob presence`).toBe(host.logprob === undefined);
  if (host.logprob !== undefined && Number.isFinite(host.logprob)) expect(Math.abs(model.logprob! - host.logprob), `${what}: logprob`).toBeLessThan(2e-5 * Math.max(1, Math.abs(host.logprob)));
  if (host.logprob !== undefined && !Number.isFinite(host.logprob)) expect(model.logprob, `${what}: logprob`).toBe(host.logprob);
  expect(model.topLogprobs?.map((t) => t.tokenId), `${what}: top ids`).toEqual(host.topLogprobs?.map((t) => t.tokenId));
  host.topLogprobs?.forEach((t, i) => {
    const got = model.topLogprobs![i].logprob;
    if (Number.isFinite(t.logprob)) expect(Math.abs(got - t.logprob), `${what}: top logprob ${i}`).toBeLessThan(2e-5 * Math.max(1, Math.abs(t.logprob)));
    else expect(got).toBe(t.logprob);
  });
}

/**
 * How close the host's own decisions come to their thresholds (the host's steps, transcribed):
 * the smallest relative gap between p_i / sum and the min-p threshold, between a top-p cumulative
 * sum and topP, and between an inverse-CDF partial sum and the target. Infinity when greedy.
 */
export function hostMargin(logitsIn: Float32Array, row: SamplingRow): number {
  const p = row.params;
  if (p.temperature === 0) return Infinity;
  const logits = Float32Array.from(logitsIn);
  applyPenalties(logits, row);
  const v = logits.length, invT = 1 / p.temperature;
  let max = -Infinity;
  for (const l of logits) if (l > max) max = l;
  let ids = Array.from({ length: v }, (_, i) => i);
  const truncate = p.topP < 1 || p.minP > 0 || (p.topK > 0 && p.topK < v);
  if (truncate) ids.sort((a, b) => logits[b] - logits[a] || a - b);
  if (p.topK > 0 && p.topK < v) ids = ids.slice(0, p.topK);
  const probs = ids.map((i) => Math.exp((logits[i] - max) * invT));
  const sum = probs.reduce((a, b) => a + b, 0);
  let margin = Infinity, keep = ids.length;
  if (p.minP > 0) {
    const thr = p.minP * (probs[0] / sum);
    for (const q of probs) margin = Math.min(margin, Math.abs(q / sum - thr) / thr);
    while (keep > 1 && probs[keep - 1] / sum < thr) keep--;
  }
  if (p.topP < 1) {
    let cum = 0;
    for (let i = 0; i < keep; i++) {
      cum += probs[i] / sum;
      margin = Math.min(margin, Math.abs(cum - p.topP));
      if (cum >= p.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += probs[i];
  const target = uniform(row.seed, row.stream, row.counter) * kept;
  let S = 0;
  for (let i = 0; i < keep; i++) {
    S += probs[i];
    margin = Math.min(margin, Math.abs(S - target) / kept);
    if (S > target) break;
  }
  return margin;
}

/** ROW-path decisions carry f32 exp error: within this relative gap of a threshold they may differ. */
export const ROW_NEAR = 1e-5;

