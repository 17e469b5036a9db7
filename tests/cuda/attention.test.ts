/**
 * The attention launcher's host-side logic, without a GPU: the variant table against the
 * kernel source, regime and split planning, scratch sizes, validation errors.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ATTENTION_COMBINE,
  ATTENTION_SM90,
  ATTENTION_SM90_KERNELS,
  DECLS,
  DECODE_VARIANTS,
  PREFILL_VARIANTS,
  attention,
  attentionVariant,
  planAttention,
  planSplits,
  sm90AttentionRefusal,
} from '../../src/backend/cuda/ops/attention.js';
import type { CudaOpContext, DeviceTensor } from '../../src/backend/cuda/ops/types.js';
import type { Attrs } from '../../src/graph/ir.js';
import { packArgs } from '../../src/backend/cuda/kernel_decl.js';
import { fakeDevice, tensor, type Recorded } from './fake_device.js';

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/attention.cu'), 'utf8');
const SM90_SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/attention_sm90.cu'), 'utf8');


interface RunOptions {
  T: number;
  B: number;
  H: number;
  KV: number;
  hd: number;
  maxContextLen: number;
  maxQueryLen: number;
  window?: number | null;
  blockSize?: number;
  sms?: number;
  cacheShape?: number[];
  attrs?: Record<string, unknown>;
  computeMajor?: number;
  /** The measured table's answer (CudaOpContext.attentionChoice). */
  choice?: 'tiles' | 'sm90' | 'sm90o' | null;
  /** q, cache and output's storage type (default bf16); `outDtype` overrides the output's. */
  dtype?: 'bf16' | 'f16';
  outDtype?: 'bf16' | 'f16';
}

function run(opts: RunOptions) {
  const launches: Recorded[] = [];
  const scratch: number[] = [];
  const counters: number[] = [];
  const maps: Array<{ t: DeviceTensor; shape: readonly number[]; box: readonly number[]; swizzle: string }> = [];
  const { T, B, H, KV, hd } = opts;
  const ctx: CudaOpContext = {
    inputs: [
      tensor([T, H * hd], opts.dtype ?? 'bf16', 0x1000n),
      tensor(opts.cacheShape ?? [2, 64, opts.blockSize ?? 16, KV, hd], opts.dtype ?? 'bf16', 0x2000n),
      tensor([B + 1], 'i32', 0x3000n),
      tensor([B], 'i32', 0x4000n),
      tensor([B, 8], 'i32', 0x5000n),
    ],
    outputs: [tensor([T, H * hd], opts.outDtype ?? opts.dtype ?? 'bf16', 0x6000n)],
    attrs: { numHeads: H, numKvHeads: KV, headDim: hd, scale: 1 / Math.sqrt(hd), slidingWindow: opts.window ?? null, ...opts.attrs } as Attrs,
    step: { numTokens: T, numSeqs: B, numLogitRows: B, blockTableWidth: 8, maxContextLen: opts.maxContextLen, maxQueryLen: opts.maxQueryLen },
    device: { ...fakeDevice(opts.sms ?? 132), computeCapability: [opts.computeMajor ?? 9, 0] },
    launch: (decl, launch, args) => {
      packArgs(new DataView(new ArrayBuffer(512)), decl, args); // every declared argument, nothing else
      launches.push({ decl, launch, args });
    },
    ...(opts.choice !== undefined ? { attentionChoice: () => opts.choice ?? null } : {}),
    constant: () => 0n,
    counters: (n) => {
      counters.push(n);
      return 0x7000n;
    },
    scratch: (bytes) => {
      scratch.push(bytes);
      return 0x100000n;
    },
    tensorMap2d: () => {
      throw new Error('attention uses no 2-D tensor maps');
    },
    tensorMap: (t, shape, box, swizzle) => {
      maps.push({ t, shape, box, swizzle });
      return new Uint8Array(128).fill(maps.length);
    },
  };
  attention(ctx);
  return { launches, scratch, maps, counters };
}

describe('attention variants', () => {
  it('match the TS_ATTENTION_ENTRY lines of kernels/attention.cu', () => {
    const lines = [...SOURCE.matchAll(/^TS_ATTENTION_ENTRIES\((\w+), (\d+), (\d+), (\d+), (\d+), (true|false), (true|false)\)/gm)];
    const entries = lines.map((m) => ({
      name: `${m[1]}_bf16`,
      hd: +m[2],
      rows: 16 * +m[3],
      tileTokens: +m[5] * +m[4],
      threads: 32 * +m[3] * +m[4],
    }));
    // SPLITS: the decode entries carry the fused merge of their splits, the prefill ones do not.
    expect(lines.map((m) => [m[1], m[7]])).toEqual(lines.map((m) => [m[1], String(m[1].includes('_decode_'))]));
    const variants = [...PREFILL_VARIANTS, ...DECODE_VARIANTS].map((v) => ({ name: v.decl.name, hd: v.headDimBucket, rows: v.rows, tileTokens: v.tileTokens, threads: v.threads }));
    expect(variants).toEqual(entries);
    // Each variant line makes the bf16 and the fp16 entry; the combine kernel comes as both too.
    expect(SOURCE).toMatch(/#define TS_ATTENTION_ENTRIES\(NAME, [^)]*\)\s*\\\s*TS_ATTENTION_ENTRY\(NAME##_bf16, ts::bf16,[^\n]*\n\s*TS_ATTENTION_ENTRY\(NAME##_f16, ts::f16,/);
    expect(ATTENTION_COMBINE.name).toBe('ts_attention_combine_bf16');
    expect(SOURCE).toContain('TS_COMBINE_ENTRY(ts::bf16, bf16)\nTS_COMBINE_ENTRY(ts::f16, f16)');
    expect(SOURCE).toContain('ts_attention_combine_##SUFFIX(');
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

  it('runs the fp16 entries for an fp16 cache: prefill, decode and its separate combine, the Hopper rungs; a mix is refused', () => {
    const f16 = { dtype: 'f16' as const };
    expect(run({ T: 5, B: 1, H: 2, KV: 1, hd: 80, maxContextLen: 5, maxQueryLen: 5, ...f16 }).launches[0].decl.name).toBe('ts_attention_prefill_hd128_f16');
    const decode = run({ T: 1, B: 1, H: 32, KV: 8, hd: 128, maxContextLen: 8192, maxQueryLen: 1, attrs: { attentionCombine: 'separate' }, ...f16 }).launches;
    expect(decode.map((l) => l.decl.name)).toEqual(['ts_attention_decode_hd128_f16', 'ts_attention_combine_f16']);
    const llama = { T: 1000, B: 2, H: 32, KV: 8, hd: 128, maxContextLen: 700, maxQueryLen: 600, ...f16 };
    const sm90 = run({ ...llama, attrs: { attentionVariant: 'sm90o' } });
    expect(sm90.launches[0].decl.name).toBe('ts_attention_prefill_sm90o_hd128_f16');
    expect(sm90.maps[0].t.dtype).toBe('f16');
    expect(() => run({ ...llama, outDtype: 'bf16' })).toThrow(/attention: output \[1000, 4096\] is bf16, but the other operands are f16/);
  });

  it('splits a long decode context when the batch would not fill the GPU, and merges the splits in the same launch (fused) or a second one (separate)', () => {
    // Fused (the default): one launch, with a zeroed counter per (sequence, kv head, row tile).
    const fused = run({ T: 2, B: 2, H: 32, KV: 8, hd: 128, maxContextLen: 8192, maxQueryLen: 1 });
    expect(fused.launches.map((l) => l.decl.name)).toEqual(['ts_attention_decode_hd128_bf16']);
    expect(fused.launches[0].args.numSplits).toBeGreaterThan(1);
    expect(fused.launches[0].args.counters).toBe(0x7000n);
    expect(fused.counters).toEqual([2 * 8]);
    // No split: no counters.
    const big = run({ T: 256, B: 256, H: 32, KV: 8, hd: 128, maxContextLen: 4096, maxQueryLen: 1 });
    expect([big.launches[0].args.counters, big.counters]).toEqual([0n, []]);
    expect(() => run({ T: 1, B: 1, H: 32, KV: 8, hd: 128, maxContextLen: 8192, maxQueryLen: 1, attrs: { attentionCombine: 'later' } })).toThrow(
      'attention: attr attentionCombine must be fused or separate, got later',
    );

    const { launches, scratch } = run({ T: 1, B: 1, H: 32, KV: 8, hd: 128, maxContextLen: 8192, maxQueryLen: 1, attrs: { attentionCombine: 'separate' } });
    expect(launches).toHaveLength(2);
    const [main, combine] = launches;
    expect(main.args.counters).toBe(0n);
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

describe('Hopper prefill attention (kernels/attention_sm90.cu) launcher', () => {
  const llama = { T: 1000, B: 2, H: 32, KV: 8, hd: 128, maxContextLen: 700, maxQueryLen: 600 };

  it('declares the entries and geometry of the source', () => {
    const entries = [...SM90_SOURCE.matchAll(/^TS_ATTN_SM90_ENTRIES\((\w+), (\d+), (true|false)\)/gm)].map((m) => [`${m[1]}_bf16`, +m[2], m[3] === 'true']);
    expect(SM90_SOURCE).toMatch(/#define TS_ATTN_SM90_ENTRIES\(NAME, HD, OVERLAP\)\s*\\\s*TS_ATTN_SM90_ENTRY\(NAME##_bf16, ts::bf16, HD, OVERLAP\)\s*\\\s*TS_ATTN_SM90_ENTRY\(NAME##_f16, ts::f16, HD, OVERLAP\)/);
    expect(entries).toEqual((['sm90', 'sm90o'] as const).flatMap((v) => ATTENTION_SM90.headDims.map((hd) => [ATTENTION_SM90_KERNELS[v][hd].name, hd, v === 'sm90o'])));
    expect(SM90_SOURCE).toContain(`constexpr int BM = ${ATTENTION_SM90.rows};`);
    expect(SM90_SOURCE).toContain(`constexpr int KT = ${ATTENTION_SM90.tileTokens};`);
    expect(SM90_SOURCE).toContain(`constexpr int STAGES = ${ATTENTION_SM90.stages};`);
    expect(SM90_SOURCE).toContain(`constexpr int THREADS = ${ATTENTION_SM90.threads};`);
    // Layout<HD>::SHARED_BYTES of the source, evaluated: Q + STAGES x (K + V) + the mbarriers + slack.
    const layout = /Q_BYTES = BM \* HD \* 2;[\s\S]*TILE_BYTES = KT \* HD \* 2;[\s\S]*STAGE_BYTES = 2 \* TILE_BYTES;[\s\S]*BARRIER_OFFSET = Q_BYTES \+ STAGES \* STAGE_BYTES;[\s\S]*SHARED_BYTES = BARRIER_OFFSET \+ (\d+) \* STAGES \* 8 \+ 1024;/.exec(SM90_SOURCE);
    expect(layout).not.toBeNull();
    const barriers = Number(layout![1]);
    for (const hd of [64, 128]) expect(ATTENTION_SM90.sharedBytes(hd)).toBe(128 * hd * 2 + 2 * 2 * 128 * hd * 2 + barriers * 2 * 8 + 1024);
    expect(ATTENTION_SM90.sharedBytes(128)).toBeLessThanOrEqual(227 * 1024);
    for (const byHd of Object.values(ATTENTION_SM90_KERNELS)) for (const k of Object.values(byHd)) expect(DECLS).toContain(k);
  });

  it('stays on the mma.sync kernel unless asked or chosen', () => {
    expect(run(llama).launches[0].decl.name).toBe('ts_attention_prefill_hd128_bf16');
    expect(run({ ...llama, attrs: { attentionVariant: 'tiles' }, choice: 'sm90' }).launches[0].decl.name).toBe('ts_attention_prefill_hd128_bf16');
    expect(run({ ...llama, choice: 'sm90' }).launches[0].decl.name).toBe('ts_attention_prefill_sm90_hd128_bf16');
    expect(run({ ...llama, choice: 'tiles' }).launches[0].decl.name).toBe('ts_attention_prefill_hd128_bf16');
    expect(run({ ...llama, choice: 'sm90o' }).launches[0].decl.name).toBe('ts_attention_prefill_sm90o_hd128_bf16');
    expect(run({ ...llama, hd: 64, cacheShape: [2, 64, 16, 8, 64], attrs: { attentionVariant: 'sm90o' } }).launches[0].decl.name).toBe('ts_attention_prefill_sm90o_hd64_bf16');
  });

  it('launches 128 packed rows per block over a 3-D tensor map of the pool, one box per cache block', () => {
    const { launches, maps, scratch } = run({ ...llama, attrs: { attentionVariant: 'sm90', causal: false }, window: 256 });
    expect(scratch).toEqual([]);
    expect(launches).toHaveLength(1);
    const [l] = launches;
    expect(l.decl).toBe(ATTENTION_SM90_KERNELS.sm90[128]);
    expect(l.launch).toEqual({ grid: [Math.ceil((600 * 4) / 128), 8, 2], block: [384, 1, 1], sharedBytes: ATTENTION_SM90.sharedBytes(128) });
    expect(maps).toHaveLength(1);
    // [2, 64 blocks, 16, KV 8, 128] seen as [2 * 64 * 16 tokens, 8, 128]; box 16 tokens x 1 head x 64 columns.
    expect(maps[0]).toMatchObject({ shape: [2 * 64 * 16, 8, 128], box: [16, 1, 64], swizzle: '128B' });
    expect(maps[0].t.ptr).toBe(0x2000n);
    expect(l.args).toMatchObject({ out: 0x6000n, q: 0x1000n, queryStart: 0x3000n, contextLens: 0x4000n, blockTables: 0x5000n, numHeads: 32, numKvHeads: 8, blockSizeLog2: 4, blockTableWidth: 8, vOffset: 64 * 16, window: 256, causal: 0 });
    expect(l.args.tmKV).toEqual(new Uint8Array(128).fill(1));
    expect(l.args.scale).toBeCloseTo(1 / Math.sqrt(128), 7);
  });

  it('boxes at most one 128-token tile of a large cache block', () => {
    const { maps } = run({ ...llama, hd: 64, attrs: { attentionVariant: 'sm90' }, cacheShape: [2, 4, 512, 8, 64] });
    expect(maps[0]).toMatchObject({ shape: [2 * 4 * 512, 8, 64], box: [128, 1, 64] });
  });

  it('falls back to the mma.sync kernel where the Hopper kernel does not apply, and says why', () => {
    const tiles = (o: Partial<RunOptions>) => run({ ...llama, attrs: { attentionVariant: 'sm90' }, ...o }).launches[0].decl.name;
    expect(tiles({ computeMajor: 8 })).toBe('ts_attention_prefill_hd128_bf16');
    expect(tiles({ hd: 96, cacheShape: [2, 64, 16, 8, 96] })).toBe('ts_attention_prefill_hd128_bf16');
    expect(tiles({ blockSize: 4, cacheShape: [2, 64, 4, 8, 128] })).toBe('ts_attention_prefill_hd128_bf16');
    expect(tiles({ T: 2, maxQueryLen: 1 })).toBe('ts_attention_decode_hd128_bf16');
    const base = { regime: 'prefill' as const, computeMajor: 9, headDim: 128, blockSize: 16, numCacheBlocks: 1000 };
    expect(sm90AttentionRefusal(base)).toBeNull();
    expect(sm90AttentionRefusal({ ...base, computeMajor: 8 })).toBe('compute capability 8.x is not Hopper');
    expect(sm90AttentionRefusal({ ...base, regime: 'decode' })).toMatch(/decode step/);
    expect(sm90AttentionRefusal({ ...base, headDim: 256 })).toBe('head dim 256 is not 64 or 128');
    expect(sm90AttentionRefusal({ ...base, blockSize: 4 })).toBe('cache block size 4 is under 8');
    expect(sm90AttentionRefusal({ ...base, numCacheBlocks: 2 ** 26 })).toMatch(/2\^31 token slots/);
  });

  it('takes auto, tiles and sm90, and refuses anything else by name', () => {
    expect(attentionVariant(undefined, null)).toBe('tiles');
    expect(attentionVariant('auto', null)).toBe('tiles');
    expect(attentionVariant('sm90', null)).toBe('sm90');
    expect(attentionVariant('sm90o', null)).toBe('sm90o');
    expect(attentionVariant('sm90', 'why not')).toBe('tiles');
    expect(attentionVariant('sm90o', 'why not')).toBe('tiles');
    expect(() => attentionVariant('fa3', null)).toThrow('attention variant must be auto, tiles, sm90, sm90o, not fa3');
    expect(() => run({ ...llama, attrs: { attentionVariant: 'fast' } })).toThrow(/not fast/);
  });
});
