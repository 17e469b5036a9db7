/**
 * Every supported architecture end to end on the CUDA backend: the tiny random checkpoints of
 * tests/helpers/tiny_checkpoint.ts (the exact HF formats), loaded with bf16 and with fp16 weights
 * and activations, against the independent float64 forward pass (tests/helpers/naive_reference.ts)
 * that the CPU backend matches to 1e-4 (tests/graph/architectures.test.ts):
 *  - prefill logits at every position, and decode logits over the paged cache (KV blocks of 4)
 *    fed the reference's own greedy tokens, within the 16-bit tolerance;
 *  - the same logits with prefill chunked 8 tokens a step (later chunks attend to the cache);
 *  - greedy tokens through the engine (CUDA graphs for decode, sampling on the device), alone
 *    and two requests batched, equal to the reference's up to the first step where the
 *    reference's two best logits are closer than the tolerance (past a near tie a 16-bit
 *    backend may rightly pick the other; the reference's are far from ties here).
 * On the GPU, or without one on the kernel emulator (tests/cuda/emu); skipped, saying why, only
 * where neither is possible.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tessera } from '../../src/llm.js';
import { resolveSamplingParams } from '../../src/sampling/params.js';
import { BlockManager } from '../../src/scheduler/block_manager.js';
import { Sequence } from '../../src/scheduler/sequence.js';
import { cudaTarget } from '../cuda/emu/target.js';
import { SequenceDriver } from '../helpers/forward.js';
import { loadNaiveModel, type NaiveModel } from '../helpers/naive_reference.js';
import { VARIANTS, uniform, writeTinyCheckpoint, type TinyDir } from '../helpers/tiny_checkpoint.js';

const target = cudaTarget();
if (target.skip) console.log(`architectures on CUDA: skipped: ${target.skip}`);
else console.log(`architectures on CUDA: ${target.title}`);

const PROMPT_LEN = 40;
const STEPS = 8;
const KV_BLOCK = 4;
/** |cuda - ref| <= REL * (1 + max |ref| of the row): bf16 keeps 8 bits of mantissa (fp16 is finer). */
const REL = 0.02;

function randomPrompt(seed: number, length: number): number[] {
  const u = uniform(seed);
  return Array.from({ length }, () => Math.floor(u() * 256));
}

/** The worst |got - ref| of a row and its tolerance, and the reference's top-1 minus top-2. */
function rowError(got: Float32Array, ref: Float64Array): { err: number; tol: number; gap: number } {
  let err = 0, scale = 0, best = -Infinity, second = -Infinity;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(got[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
    if (ref[i] > best) [second, best] = [best, ref[i]];
    else if (ref[i] > second) second = ref[i];
  }
  return { err, tol: REL * (1 + scale), gap: best - second };
}

/** Logits rows [T * V] against reference rows: fails naming the first row out of tolerance. */
function expectRows(got: Float32Array, want: Float64Array[], v: number, what: string): void {
  expect(got.length, what).toBe(want.length * v);
  want.forEach((row, r) => {
    const { err, tol } = rowError(got.subarray(r * v, (r + 1) * v), row);
    expect(err, `${what}: row ${r}`).toBeLessThanOrEqual(tol);
  });
}

/** Greedy steps before the reference's first near tie (top-2 gap under twice the tolerance). */
function stepsBeforeTie(rows: Float64Array[], fromRow: number, steps: number): number {
  for (let i = 0; i < steps; i++) {
    const r = rows[fromRow + i];
    const { gap, tol } = rowError(Float32Array.from(r), r);
    if (gap < 2 * tol) return i;
  }
  return steps;
}

const DTYPES = ['bfloat16', 'float16'] as const;
const CASES = VARIANTS.flatMap((variant) => DTYPES.map((dtype) => [variant, dtype] as const));

describe.skipIf(target.skip !== null).each(CASES)(`%s (%s) on CUDA${target.emulated ? ' (kernel emulator)' : ''} vs the naive float64 reference`, (variant, dtype) => {
  const prompt = randomPrompt(VARIANTS.indexOf(variant) + 1, PROMPT_LEN);
  const prompt2 = randomPrompt(100 + VARIANTS.indexOf(variant), 23);
  let tiny: TinyDir;
  let ref: NaiveModel;
  let greedy: { tokens: number[]; logits: Float64Array[] };
  let greedy2: { tokens: number[]; logits: Float64Array[] };
  let llm: Tessera;

  beforeAll(async () => {
    tiny = await writeTinyCheckpoint(variant);
    ref = await loadNaiveModel(tiny.dir);
    greedy = ref.greedy(prompt, STEPS + 1);
    greedy2 = ref.greedy(prompt2, STEPS);
    llm = await Tessera.load(tiny.dir, { device: 'cuda', dtype, kvBlockSize: KV_BLOCK, maxNumSeqs: 4, maxLogitRows: 128 });
    expect(llm.info.computeDtype).toBe(dtype);
  });
  afterAll(async () => {
    await llm?.close();
    await tiny?.remove();
  });

  it('binds every checkpoint tensor', () => {
    expect(llm.info.unusedTensors).toEqual([]);
  });

  it('prefill logits at every position and decode logits over the paged cache, within the 16-bit tolerance', async () => {
    const v = ref.vocab;
    const driver = new SequenceDriver(llm, prompt);
    expectRows(await driver.prefill(), greedy.logits.slice(0, PROMPT_LEN), v, 'prefill');
    for (let i = 0; i < STEPS; i++) expectRows(await driver.decode(greedy.tokens[i]), [greedy.logits[PROMPT_LEN + i]], v, `decode step ${i}`);
  });

  it('greedy tokens through the engine, alone and two requests batched, up to the first near tie', async () => {
    const opts = { temperature: 0, maxTokens: STEPS, ignoreEos: true };
    const upTo = stepsBeforeTie(greedy.logits, PROMPT_LEN - 1, STEPS);
    const upTo2 = stepsBeforeTie(greedy2.logits, prompt2.length - 1, STEPS);
    const alone = await llm.complete(prompt, opts);
    expect(alone.tokenIds.slice(0, upTo), `alone, before step ${upTo}`).toEqual(greedy.tokens.slice(0, upTo));
    const [a, b] = await Promise.all([llm.complete(prompt, opts), llm.complete(prompt2, opts)]);
    expect(a.tokenIds.slice(0, upTo), `batched, before step ${upTo}`).toEqual(greedy.tokens.slice(0, upTo));
    expect(b.tokenIds.slice(0, upTo2), `second request, before step ${upTo2}`).toEqual(greedy2.tokens.slice(0, upTo2));
  });

  it('prefill chunked to 8 tokens a step: each chunk\'s logits (earlier chunks read from the cache)', async () => {
    const chunked = await Tessera.load(tiny.dir, { device: 'cuda', dtype, kvBlockSize: KV_BLOCK, maxNumSeqs: 2, maxNumBatchedTokens: 8, maxLogitRows: 8 });
    try {
      const v = ref.vocab;
      const seq = new Sequence(0, 'chunked', prompt, resolveSamplingParams({ temperature: 0 }));
      const blocks = new BlockManager(chunked.info.kvCacheBlocks, KV_BLOCK);
      blocks.grow([], 7 * KV_BLOCK); // start past block 0, so block ids differ from positions
      const got = new Float32Array(PROMPT_LEN * v);
      for (let start = 0; start < PROMPT_LEN; start += 8) {
        const n = Math.min(8, PROMPT_LEN - start);
        expect(blocks.grow(seq.blockTable, start + n)).toBe(true);
        got.set(await chunked.runner.backend.execute(chunked.runner.prepare([{ seq, numNewTokens: n, sample: true }], true)), start * v);
        seq.numComputedTokens += n;
      }
      expectRows(got, greedy.logits.slice(0, PROMPT_LEN), v, 'chunked prefill');
    } finally {
      await chunked.close();
    }
  });
});
