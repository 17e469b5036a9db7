/**
 * Sampling on the device (kernels/sampling.cu, ts_sample_f32): after the Program's last kernel
 * has written the logits (f32 [S, V]), one block per row applies the penalties, takes the argmax or
 * draws a token with the host sampler's semantics (src/sampling/sampler.ts), and writes the token
 * ids, plus logprobs when a row asks for them. Only those cross to the host.
 *
 * Not an IR op: the backend calls packSamplingRows (host), uploads its three buffers, calls
 * launchSampling, downloads the outputs and turns them into SampleResults with readSamplingResults.
 *
 * ## Per-row parameters: `params`, S records of ROW_BYTES = 96 bytes, little-endian
 *
 * | offset | type | field                                                                 |
 * |-------:|------|-----------------------------------------------------------------------|
 * |      0 | f64  | temperature (0 = greedy)                                              |
 * |      8 | f64  | topP (1 = off)                                                        |
 * |     16 | f64  | minP (0 = off)                                                        |
 * |     24 | f64  | repetitionPenalty (1 = off)                                           |
 * |     32 | f64  | presencePenalty                                                       |
 * |     40 | f64  | frequencyPenalty                                                      |
 * |     48 | i32  | topK (0 = off; >= V is off too)                                       |
 * |     52 | i32  | logprobs: -1 = off, else the number of top logprobs (0..20)           |
 * |     56 | u32  | seed & 0xffffffff                                                     |
 * |     60 | u32  | floor(seed / 2^32)                                                    |
 * |     64 | u32  | stream (which of the request's n samples)                             |
 * |     68 | u32  | counter (output index of this draw)                                   |
 * |     72 | i32  | repStart: the row's repetition ids are ids[repStart, +repCount)       |
 * |     76 | i32  | repCount (0 when repetitionPenalty is 1)                              |
 * |     80 | i32  | outStart: its output ids are ids[outStart, +outCount), counts alike   |
 * |     84 | i32  | outCount (0 when presence and frequency penalties are both 0)         |
 * |     88 | i32  | reserved (0)                                                          |
 * |     92 | i32  | reserved (0)                                                          |
 *
 * The penalties and probabilities are doubles because the host computes in doubles: the device
 * applies the penalties in double with the host's roundings (bit-exact penalized logits).
 *
 * ## CSR token ids: `ids` and `counts`, i32 [N] (N >= 1: padded with one 0 when empty)
 * Row by row, the row's distinct prompt+output ids (repetition penalty; each id once, first
 * occurrence order), then its distinct output ids (presence/frequency penalties). `counts` runs
 * parallel to `ids`: counts[j] is the output count of ids[j] in an output range, 0 elsewhere.
 *
 * ## Outputs (device buffers the caller allocates; what readSamplingResults reads back)
 *   outTokens       i32 [S]            the sampled (or greedy) token of each row
 *   outLogprobs     f32 [S]            log_softmax(penalized logits)[token]; NaN for rows with
 *                                      logprobs off
 *   outTopIds       i32 [S, maxTopN]   each row's top-n ids by logprob (ties: lower id first),
 *                                      -1 past the row's n; only when maxTopN > 0
 *   outTopLogprobs  f32 [S, maxTopN]   their logprobs; -inf past n
 * maxTopN = max over rows of `logprobs` (packSamplingRows computes it); with 0 the two top
 * buffers may be null (0n).
 *
 * The logits are overwritten with the penalized logits: sample a logits buffer once.
 *
 * ## Algorithm (details and cost in the kernel's header)
 * One block of 512 threads per row. Penalties in place; a max pass (argmax, ties to the lowest
 * id; greedy rows stop here). Candidates are ordered by the u64 key (fkey(logit) << 32) | ~id,
 * whose descending order is the host's (logit desc, id asc); a kept set is always a prefix of
 * that order, named by its last key.
 *  - LIST path, when the host's candidate list has at most LIST_CAP entries (V <= 2048 or
 *    0 < topK <= 2048): the list is gathered into shared memory (the top k found by a radix select
 *    on the key), bitonic-sorted (or left in id order when the host does not sort), and the host's
 *    drawTruncated runs on it in double with the host's own sequence of roundings: per-entry
 *    values (p_i, p_i / sum, the min-p test) in parallel, the four left folds (sum, top-p's
 *    cumulative sum, kept, the inverse-CDF walk) on one thread in the host's order.
 *  - ROW path otherwise (top-p or min-p over a large vocabulary, or no truncation): masses
 *    q = round(exp((l - max) / T) * 2^42) in u64 fixed point (exact, order-free sums); the top-k
 *    cut, the top-p cut and the drawn token are radix selects on the key (4 passes of 8 bits,
 *    256-bin shared histograms of counts or masses over the candidates of a cut) that find the
 *    exact value where a cumulative count or mass crosses its threshold, ties at that value being
 *    split in id order; min-p is a value cut (min key whose mass >= minP * 2^42); without
 *    truncation the host walks ids in order, and so does one block scan.
 * Agreement with the host: penalties, argmax, order, ties and top-k are exact; the LIST path
 * computes what the host computes (only CUDA's double exp may differ from V8's in the last ulp);
 * ROW-path masses carry f32 __expf error (~1e-7), so a ROW decision can differ only when a
 * cumulative probability (or p_i against minP) lies within ~1e-6 of its threshold, e.g. tied
 * logits whose cumulative sum lands exactly on topP, where the host's own answer is rounding.
 * tests/cuda/sampling.test.ts holds a JavaScript model of both paths checked against sampleToken.
 */
import type { SampleContext, SampleResult, TokenLogprob } from '../../../sampling/sampler.js';
import type { DevPtr } from '../driver.js';
import type { ArgValue, KernelDecl } from '../kernel_decl.js';
import type { Launch } from './types.js';

/** Bytes of one row's parameter record. */
export const ROW_BYTES = 96;
/** Threads per block (one block per row): NT in the kernel. */
export const SAMPLING_THREADS = 512;
/** Longest candidate list the LIST path holds in shared memory: CAP in the kernel. */
export const LIST_CAP = 2048;
/** Top logprobs per row at most (the kernel's MAX_TOP is 32; the API allows 20). */
export const MAX_TOP_N = 20;

/** Byte offsets of the fields of a row's record (see the table above). */
export const PARAM_OFFSETS = {
  temperature: 0,
  topP: 8,
  minP: 16,
  repetitionPenalty: 24,
  presencePenalty: 32,
  frequencyPenalty: 40,
  topK: 48,
  logprobs: 52,
  seedLo: 56,
  seedHi: 60,
  stream: 64,
  counter: 68,
  repStart: 72,
  repCount: 76,
  outStart: 80,
  outCount: 84,
} as const;

export const SAMPLE_F32: KernelDecl = {
  name: 'ts_sample_f32',
  params: [
    ['logits', 'ptr'],
    ['vocab', 'i32'],
    ['params', 'ptr'],
    ['ids', 'ptr'],
    ['counts', 'ptr'],
    ['outTokens', 'ptr'],
    ['outLogprobs', 'ptr'],
    ['outTopIds', 'ptr'],
    ['outTopLogprobs', 'ptr'],
    ['maxTopN', 'i32'],
  ],
};

export const SAMPLING_DECLS: KernelDecl[] = [SAMPLE_F32];
export const DECLS = SAMPLING_DECLS;

/** One row of logits to sample: exactly the host sampler's SampleContext. */
export type SamplingRow = SampleContext;

export interface PackedSampling {
  /** S records of ROW_BYTES bytes. */
  params: ArrayBuffer;
  /** CSR token ids (length >= 1). */
  ids: Int32Array;
  /** Output counts, parallel to ids. */
  counts: Int32Array;
  rows: number;
  /** Largest top-logprobs count of any row (0 when none asks): the width of the top outputs. */
  maxTopN: number;
}

function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`sampling: ${what} must be a u32; got ${v}`);
  return v;
}

/** Packs the per-row parameters and the CSR token ids the kernel reads (layout above). */
export function packSamplingRows(rows: readonly SamplingRow[]): PackedSampling {
  const params = new ArrayBuffer(Math.max(1, rows.length) * ROW_BYTES);
  const view = new DataView(params);
  const ids: number[] = [];
  const counts: number[] = [];
  let maxTopN = 0;
  rows.forEach((row, r) => {
    const p = row.params;
    const o = r * ROW_BYTES;
    if (!Number.isSafeInteger(row.seed) || row.seed < 0) throw new Error(`sampling: seed must be a whole number >= 0; got ${row.seed}`);
    if (!Number.isInteger(p.topK)) throw new Error(`sampling: topK must be a whole number; got ${p.topK}`);
    if (p.logprobs !== null && (!Number.isInteger(p.logprobs) || p.logprobs < 0 || p.logprobs > MAX_TOP_N))
      throw new Error(`sampling: logprobs must be null or 0..${MAX_TOP_N}; got ${p.logprobs}`);
    view.setFloat64(o + PARAM_OFFSETS.temperature, p.temperature, true);
    view.setFloat64(o + PARAM_OFFSETS.topP, p.topP, true);
    view.setFloat64(o + PARAM_OFFSETS.minP, p.minP, true);
    view.setFloat64(o + PARAM_OFFSETS.repetitionPenalty, p.repetitionPenalty, true);
    view.setFloat64(o + PARAM_OFFSETS.presencePenalty, p.presencePenalty, true);
    view.setFloat64(o + PARAM_OFFSETS.frequencyPenalty, p.frequencyPenalty, true);
    view.setInt32(o + PARAM_OFFSETS.topK, Math.max(0, p.topK), true);
    view.setInt32(o + PARAM_OFFSETS.logprobs, p.logprobs ?? -1, true);
    // As uniform() in src/sampling/philox.ts.
    view.setUint32(o + PARAM_OFFSETS.seedLo, row.seed >>> 0, true);
    view.setUint32(o + PARAM_OFFSETS.seedHi, Math.floor(row.seed / 2 ** 32) >>> 0, true);
    view.setUint32(o + PARAM_OFFSETS.stream, u32(row.stream, 'stream'), true);
    view.setUint32(o + PARAM_OFFSETS.counter, u32(row.counter, 'counter'), true);

    const repStart = ids.length;
    if (p.repetitionPenalty !== 1) {
      for (const id of new Set(row.tokenIds)) {
        ids.push(id);
        counts.push(0);
      }
    }
    view.setInt32(o + PARAM_OFFSETS.repStart, repStart, true);
    view.setInt32(o + PARAM_OFFSETS.repCount, ids.length - repStart, true);
    const outStart = ids.length;
    if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
      for (const [id, count] of row.outputCounts) {
        ids.push(id);
        counts.push(count);
      }
    }
    view.setInt32(o + PARAM_OFFSETS.outStart, outStart, true);
    view.setInt32(o + PARAM_OFFSETS.outCount, ids.length - outStart, true);
    if (p.logprobs !== null) maxTopN = Math.max(maxTopN, p.logprobs);
  });
  if (ids.length === 0) {
    ids.push(0);
    counts.push(0);
  }
  return { params, ids: Int32Array.from(ids), counts: Int32Array.from(counts), rows: rows.length, maxTopN };
}

/** Bytes of each output buffer for `rows` rows (top buffers: 0 when maxTopN is 0). */
export function samplingOutputBytes(rows: number, maxTopN: number): { tokens: number; logprobs: number; topIds: number; topLogprobs: number } {
  return { tokens: rows * 4, logprobs: rows * 4, topIds: rows * maxTopN * 4, topLogprobs: rows * maxTopN * 4 };
}

export interface SamplingLaunchArgs {
  /** f32 [rows, vocab]; overwritten with the penalized logits. */
  logits: DevPtr;
  vocab: number;
  rows: number;
  /** packSamplingRows().params on the device. */
  params: DevPtr;
  /** packSamplingRows().ids on the device. */
  ids: DevPtr;
  /** packSamplingRows().counts on the device. */
  counts: DevPtr;
  /** i32 [rows] */
  outTokens: DevPtr;
  /** f32 [rows] */
  outLogprobs: DevPtr;
  /** i32 [rows, maxTopN] (0n when maxTopN is 0) */
  outTopIds: DevPtr;
  /** f32 [rows, maxTopN] (0n when maxTopN is 0) */
  outTopLogprobs: DevPtr;
  /** packSamplingRows().maxTopN */
  maxTopN: number;
  /** Unused by this version (everything lives in shared memory); kept for a split-row variant. */
  scratch: (bytes: number) => DevPtr;
  /** Unused by this version (one block per row); kept for a split-row variant. */
  smCount: number;
}

export type LaunchFn = (decl: KernelDecl, launch: Launch, args: Record<string, ArgValue>) => void;

/** One launch: grid [rows], 512 threads, ~36 KiB of static shared memory. */
export function launchSampling(launch: LaunchFn, a: SamplingLaunchArgs): void {
  if (a.rows === 0) return;
  if (!Number.isInteger(a.vocab) || a.vocab < 1 || a.vocab >= 2 ** 22) throw new Error(`sampling: vocab ${a.vocab} is out of range (1 .. 2^22 - 1)`);
  if (!Number.isInteger(a.maxTopN) || a.maxTopN < 0 || a.maxTopN > MAX_TOP_N) throw new Error(`sampling: maxTopN ${a.maxTopN} is out of range (0 .. ${MAX_TOP_N})`);
  launch(SAMPLE_F32, { grid: [a.rows, 1, 1], block: [SAMPLING_THREADS, 1, 1] }, {
    logits: a.logits,
    vocab: a.vocab,
    params: a.params,
    ids: a.ids,
    counts: a.counts,
    outTokens: a.outTokens,
    outLogprobs: a.outLogprobs,
    outTopIds: a.maxTopN > 0 ? a.outTopIds : 0n,
    outTopLogprobs: a.maxTopN > 0 ? a.outTopLogprobs : 0n,
    maxTopN: a.maxTopN,
  });
}

/** The outputs, copied back to the host. */
export interface SamplingOutputs {
  /** i32 [rows] */
  tokens: Int32Array;
  /** f32 [rows] */
  logprobs: Float32Array;
  /** i32 [rows, maxTopN] */
  topIds: Int32Array;
  /** f32 [rows, maxTopN] */
  topLogprobs: Float32Array;
}

/**
 * The host sampler's SampleResult for each row from the downloaded outputs: tokenId always;
 * logprob when the row's params.logprobs is not null; topLogprobs (its n entries, fewer when the
 * vocabulary is smaller) when it is > 0.
 */
export function readSamplingResults(rows: readonly Pick<SamplingRow, 'params'>[], out: SamplingOutputs, maxTopN: number): SampleResult[] {
  return rows.map((row, r) => {
    const result: SampleResult = { tokenId: out.tokens[r] };
    const n = row.params.logprobs;
    if (n === null) return result;
    result.logprob = out.logprobs[r];
    if (n > 0) {
      const top: TokenLogprob[] = [];
      for (let t = 0; t < Math.min(n, maxTopN); t++) {
        const id = out.topIds[r * maxTopN + t];
        if (id < 0) break;
        top.push({ tokenId: id, logprob: out.topLogprobs[r * maxTopN + t] });
      }
      result.topLogprobs = top;
    }
    return result;
  });
}
