/**
 * The attention launcher's host-side logic, without a GPU: the variant table against the
 * kernel source, regime and split planning, scratch sizes, validation errors.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ATTENTION_COMBINE, DECLS, DECODE_VARIANTS, PREFILL_VARIANTS, attention, planAttention, planSplits } from '../../src/backend/cuda/ops/attention.js';
import type { CudaOpContext } from '../../src/backend/cuda/ops/types.js';
import { fakeDevice, tensor, type Recorded } from './fake_device.js';

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/attention.cu'), 'utf8');


function run(opts: { T: number; B: number; H: number; KV: number; hd: number; maxContextLen: number; maxQueryLen: number; window?: number | null; blockSize?: number; sms?: number; cacheShape?: number[] }) {
  const launches: Recorded[] = [];
  const scratch: number[] = [];
  const { T, B, H, KV, hd } = opts;
  const ctx: CudaOpContext = {
    inputs: [
      tensor([T, H * hd], 'bf16', 0x1000n),
      tensor(opts.cacheShape ?? [2, 64, opts.blockSize ?? 16, KV, hd], 'bf16', 0x2000n),
      tensor([B + 1], 'i32', 0x3000n),
      tensor([B], 'i32', 0x4000n),
      tensor([B, 8], 'i32', 0x5000n),
    ],
    outputs: [tensor([T, H * hd], 'bf16', 0x6000n)],
    attrs: { numHeads: H, numKvHeads: KV, headDim: hd, scale: 1 / Math.sqrt(hd), slidingWindow: opts.window ?? null },
    step: { numTokens: T, numSeqs: B, numLogitRows: B, blockTableWidth: 8, maxContextLen: opts.maxContextLen, maxQueryLen: opts.maxQueryLen },
    device: fakeDevice(opts.sms ?? 132),
    launch: (decl, launch, args) => launches.push({ decl, launch, args }),
    constant: () => 0n,
    scratch: (bytes) => {
      scratch.push(bytes);
      return 0x100000n;
    },
    tensorMap2d: () => {
      throw new Error('attention uses no tensor maps');
    },
  };
  attention(ctx);
  return { launches, scratch };
}

describe('attention variants', () => {
  it('match the TS_ATTENTION_ENTRY lines of kernels/attention.cu', () => {
    const entries = [...SOURCE.matchAll(/^TS_ATTENTION_ENTRY\((\w+), (\d+), (\d+), (\d+), (\d+), (true|false)\)/gm)].map((m) => ({
      name: m[1],
      hd: +m[2],
      rows: 16 * +m[3],
      tileTokens: +m[5] * +m[4],
      threads: 32 * +m[3] * +m[4],
    }));
    const variants = [...PREFILL_VARIANTS, ...DECODE_VARIANTS].map((v) => ({ name: v.decl.name, hd: v.headDimBucket, rows: v.rows, tileTokens: v.tileTokens, threads: v.threads }));
    expect(variants).toEqual(entries);
    expect(SOURCE).toContain(`void __launch_bounds__(128) ${ATTENTION_COMBINE.name}(`);
    expect(new Set(DECLS.map((d) => d.name)).size).toBe(DECLS.length);
  });
});

describe('attention launcher', () => {
  it('launches nothing for zero rows or zero sequences', () => {
    expect(run({ T: 0, B: 0, H: 4, KV: 2, hd: 64, maxContextLen: 0, maxQueryLen: 0 }).launches).toEqual([]);
    expect(run({ T: 0, B: 3, H: 4, KV: 2, hd: 64, maxContextLen: 5, maxQueryLen: 0 }).launches).toEqual([]);
  });

  it('runs a prefill step as one launch over (row tiles, kv heads, sequences)', () => {
    const { launches, scratch } = run({ T: 300, B: 3, H: 8, KV: 2, hd: 128, maxContextLen: 400, maxQueryLen: 200, window: 64 });
    expect(scratch).toEqual([]);
    expect(launches).toHaveLength(1);
    const [l] = launches;
    expect(l.decl.name).toBe('ts_attention_prefill_hd128_bf16');
    expect(l.launch.grid).toEqual([Math.ceil((200 * 4) / 64), 2, 3]);
    expect(l.launch.block).toEqual([128, 1, 1]);
    expect(l.args).toMatchObject({ numSplits: 1, splitLen: 0, window: 64, blockSizeLog2: 4, numCacheBlocks: 64, blockTableWidth: 8, headDim: 128, numTokens: 300 });
  });

  it('picks the smallest head-dim bucket that holds hd', () => {
    expect(run({ T: 5, B: 1, H: 2, KV: 1, hd: 8, maxContextLen: 5, maxQueryLen: 5 }).launches[0].decl.name).toBe('ts_attention_prefill_hd16_bf16');
    expect(run({ T: 5, B: 1, H: 2, KV: 1, hd: 80, maxContextLen: 5, maxQueryLen: 5 }).launches[0].decl.name).toBe('ts_attention_prefill_hd128_bf16');
    expect(run({ T: 5, B: 1, H: 2, KV: 1, hd: 256, maxContextLen: 5, maxQueryLen: 5 }).launches[0].decl.name).toBe('ts_attention_prefill_hd256_bf16');
    expect(run({ T: 2, B: 2, H: 2, KV: 1, hd: 40, maxContextLen: 5, maxQueryLen: 1 }).launches[0].decl.name).toBe('ts_attention_decode_hd64_bf16');
  });

  it('splits a long decode context when the batch would not fill the GPU, then combines', () => {
    const { launches, scratch } = run({ T: 1, B: 1, H: 32, KV: 8, hd: 128, maxContextLen: 8192, maxQueryLen: 1 });
    expect(launches).toHaveLength(2);
    const [main, combine] = launches;
    expect(main.decl.name).toBe('ts_attention_decode_hd128_bf16');
    const S = main.args.numSplits as number, len = main.args.splitLen as number;
    expect(S).toBeGreaterThan(1);
    expect(len % 64).toBe(0);
    expect(S * len).toBeGreaterThanOrEqual(8192);
    expect((S - 1) * len).toBeLessThan(8192);
    expect(main.launch.grid).toEqual([S, 8, 1]);
    expect(scratch).toEqual([S * 1 * 32 * (128 + 2) * 4]);
    expect(main.args.partO).toBe(0x100000n);
    expect(main.args.partML).toBe(0x100000n + BigInt(S * 32 * 128 * 4));
    expect(combine.decl).toBe(ATTENTION_COMBINE);
    expect(combine.launch.grid).toEqual([8, 1, 1]);
    expect(combine.args).toMatchObject({ numSplits: S, numSeqs: 1, numTokens: 1, numHeads: 32, headDim: 128 });
  });

  it('does not split a large decode batch, nor a short context', () => {
    const big = run({ T: 256, B: 256, H: 32, KV: 8, hd: 128, maxContextLen: 4096, maxQueryLen: 1 });
    expect(big.launches).toHaveLength(1);
    expect(big.launches[0].args.numSplits).toBe(1);
    const short = run({ T: 1, B: 1, H: 32, KV: 8, hd: 128, maxContextLen: 100, maxQueryLen: 1 });
    expect(short.launches).toHaveLength(1);
  });

  it('covers more heads than one row tile holds (MQA) with more tiles', () => {
    const plan = planAttention({ numTokens: 2, numSeqs: 2, numHeads: 40, numKvHeads: 1, headDim: 64, maxContextLen: 300, maxQueryLen: 1, slidingWindow: null, multiprocessors: 132 });
    expect(plan!.grid[0]).toBe(3 * plan!.numSplits);
  });

  it('bounds decode splits by the sliding window', () => {
    const full = planAttention({ numTokens: 1, numSeqs: 1, numHeads: 8, numKvHeads: 8, headDim: 64, maxContextLen: 32768, maxQueryLen: 1, slidingWindow: null, multiprocessors: 132 })!;
    const windowed = planAttention({ numTokens: 1, numSeqs: 1, numHeads: 8, numKvHeads: 8, headDim: 64, maxContextLen: 32768, maxQueryLen: 1, slidingWindow: 256, multiprocessors: 132 })!;
    expect(windowed.numSplits).toBeLessThanOrEqual(2);
    expect(full.numSplits).toBeGreaterThan(windowed.numSplits);
  });

  it('plans splits that cover every key with no empty split', () => {
    for (const keys of [1, 63, 64, 65, 128, 129, 1000, 4096, 100_000])
      for (const units of [1, 3, 8, 64, 1000]) {
        const { numSplits, splitLen } = planSplits(units, keys, 64, 108);
        if (numSplits === 1) continue;
        expect(splitLen % 64).toBe(0);
        expect(numSplits * splitLen).toBeGreaterThanOrEqual(keys);
        expect((numSplits - 1) * splitLen).toBeLessThan(keys);
        expect(numSplits).toBeLessThanOrEqual(128);
      }
  });

  it('rejects shapes the kernels do not take', () => {
    expect(() => run({ T: 4, B: 1, H: 4, KV: 2, hd: 12, maxContextLen: 4, maxQueryLen: 4 })).toThrow(/head dim 12/);
    expect(() => run({ T: 4, B: 1, H: 4, KV: 2, hd: 264, maxContextLen: 4, maxQueryLen: 4 })).toThrow(/head dim 264/);
    expect(() => run({ T: 4, B: 1, H: 6, KV: 4, hd: 64, maxContextLen: 4, maxQueryLen: 4 })).toThrow(/multiple of numKvHeads/);
    expect(() => run({ T: 4, B: 1, H: 4, KV: 2, hd: 64, maxContextLen: 4, maxQueryLen: 4, blockSize: 12 })).toThrow(/power of two/);
    expect(() => run({ T: 4, B: 1, H: 4, KV: 2, hd: 64, maxContextLen: 4, maxQueryLen: 4, cacheShape: [2, 64, 16, 4, 64] })).toThrow(/cache must be/);
    expect(() => run({ T: 4, B: 1, H: 4, KV: 2, hd: 64, maxContextLen: 4, maxQueryLen: 4, window: 0 })).toThrow(/slidingWindow/);
  });
});
