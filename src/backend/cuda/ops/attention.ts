/**
 * attention: paged attention over one layer's KV cache (kernels/attention.cu).
 *
 * inputs: q [T, H*hd], cache [2, N, bs, KV, hd], queryStart [B+1] i32, contextLens [B] i32,
 * blockTables [B, W] i32; output [T, H*hd]. q, cache and output share the storage type (bf16 or
 * f16), which picks each kernel's _bf16 or _f16 entry. attrs: numHeads, numKvHeads, headDim, scale,
 * slidingWindow (null or W), causal (default true; false: every row sees the whole context).
 *
 * Two regimes, one kernel template (a block per sequence x kv head x tile of packed
 * (token, head-in-group) rows x KV split), one variant per head-dim bucket:
 *  - prefill / mixed (maxQueryLen > 1): ts_attention_prefill_hd*, 64 packed rows per
 *    block (32 for hd 256), no split, writes the output directly;
 *  - decode (maxQueryLen = 1): ts_attention_decode_hd*, 16 packed rows per block (the
 *    group's heads), the context split into numSplits chunks of splitLen tokens when
 *    sequences x kv heads alone would not fill the GPU; the last split of each (sequence, kv
 *    head, row tile) to finish then merges the partials in the same launch (one counter per
 *    such tile, zero between launches: the backend's counter area). attrs.attentionCombine 'separate'
 *    runs the unfused rung instead: ts_attention_combine merges them in a second launch.
 * Scratch (only when numSplits > 1): numSplits * T * H * (hd + 2) * 4 bytes: partO
 * [S, T, H, hd] f32, then partML [S, T, H] (max, sum) f32 pairs.
 * These kernels use static shared memory of at most 48 KiB (sharedBytes 0).
 *
 * On Hopper a prefill step can run kernels/attention_sm90.cu instead (TMA, wgmma, warp-specialised,
 * 160 KiB of dynamic shared memory at hd 128): where asked (attrs.attentionVariant,
 * TESSERA_ATTENTION) or chosen by the GPU's measured table, and where it applies
 * (sm90AttentionRefusal says why not).
 */
import { forStorage, type KernelDecl } from '../kernel_decl.js';
import { storageOf } from './elementwise.js';
import type { CudaOp, DeviceTensor } from './types.js';
import { ceilDiv } from './types.js';

const PARAMS: KernelDecl['params'] = [
  ['out', 'ptr'],
  ['partO', 'ptr'],
  ['partML', 'ptr'],
  ['counters', 'ptr'],
  ['q', 'ptr'],
  ['cache', 'ptr'],
  ['queryStart', 'ptr'],
  ['contextLens', 'ptr'],
  ['blockTables', 'ptr'],
  ['numTokens', 'i32'],
  ['numHeads', 'i32'],
  ['numKvHeads', 'i32'],
  ['headDim', 'i32'],
  ['numCacheBlocks', 'i32'],
  ['blockSizeLog2', 'i32'],
  ['blockTableWidth', 'i32'],
  ['scale', 'f32'],
  ['window', 'i32'],
  ['numSplits', 'i32'],
  ['splitLen', 'i32'],
  ['causal', 'i32'],
];

/** A variant of the attention template: its entry point and block geometry. */
export interface AttentionVariant {
  decl: KernelDecl;
  /** Largest head dim it takes (runtime hd: a multiple of 8 up to this). */
  headDimBucket: number;
  /** Packed (token, head-in-group) rows per block. */
  rows: number;
  /** Keys per K/V tile. */
  tileTokens: number;
  threads: number;
}

const HEAD_DIM_BUCKETS = [16, 32, 64, 128, 256] as const;

function variant(kind: 'prefill' | 'decode', hd: number, rows: number, tileTokens: number, threads: number): AttentionVariant {
  return { decl: { name: `ts_attention_${kind}_hd${hd}_bf16`, params: PARAMS }, headDimBucket: hd, rows, tileTokens, threads };
}

/** Must match the TS_ATTENTION_ENTRY lines of kernels/attention.cu. */
export const PREFILL_VARIANTS: readonly AttentionVariant[] = [
  variant('prefill', 16, 64, 64, 128),
  variant('prefill', 32, 64, 64, 128),
  variant('prefill', 64, 64, 64, 128),
  variant('prefill', 128, 64, 64, 128),
  variant('prefill', 256, 32, 16, 64),
];
export const DECODE_VARIANTS: readonly AttentionVariant[] = [
  variant('decode', 16, 16, 64, 128),
  variant('decode', 32, 16, 64, 128),
  variant('decode', 64, 16, 64, 128),
  variant('decode', 128, 16, 64, 128),
  variant('decode', 256, 16, 32, 64),
];

/**
 * kernels/attention_sm90.cu (Hopper prefill: TMA, wgmma, producer and ping-pong consumer
 * warpgroups). Keep in step with its constants and Layout<HD>.
 */
export const ATTENTION_SM90 = {
  rows: 128,
  tileTokens: 128,
  stages: 2,
  threads: 384,
  headDims: [64, 128] as readonly number[],
  /** Smallest cache block: each TMA box of min(bs, 128) tokens must fill whole 1024-byte swizzle atoms. */
  minBlockSize: 8,
  /** Dynamic shared memory: Q, STAGES x (K, V), 4 x STAGES mbarriers (K and V full and empty), 1 KiB of alignment slack. */
  sharedBytes: (hd: number) => 128 * hd * 2 + 2 * 2 * 128 * hd * 2 + 4 * 2 * 8 + 1024,
};

const ATTENTION_SM90_PARAMS: KernelDecl['params'] = [
  ['tmKV', 'tmap'],
  ['out', 'ptr'],
  ['q', 'ptr'],
  ['queryStart', 'ptr'],
  ['contextLens', 'ptr'],
  ['blockTables', 'ptr'],
  ['numHeads', 'i32'],
  ['numKvHeads', 'i32'],
  ['blockSizeLog2', 'i32'],
  ['blockTableWidth', 'i32'],
  ['vOffset', 'i32'],
  ['scale', 'f32'],
  ['window', 'i32'],
  ['causal', 'i32'],
];

export type AttentionVariantName = 'tiles' | 'sm90' | 'sm90o';
export const ATTENTION_VARIANTS: readonly AttentionVariantName[] = ['tiles', 'sm90', 'sm90o'];

/**
 * ts_attention_prefill_<sm90|sm90o>_hd<64|128>_<bf16|f16>: the Hopper kernel with the two warpgroups'
 * ping-pong (sm90), and with each warpgroup's softmax also overlapped with its own previous PV
 * (sm90o). Two rungs of the ladder, both runnable, so each step's gain stays measurable.
 */
export const ATTENTION_SM90_KERNELS: Record<'sm90' | 'sm90o', Record<number, KernelDecl>> = {
  sm90: Object.fromEntries(ATTENTION_SM90.headDims.map((hd) => [hd, { name: `ts_attention_prefill_sm90_hd${hd}_bf16`, params: ATTENTION_SM90_PARAMS }])),
  sm90o: Object.fromEntries(ATTENTION_SM90.headDims.map((hd) => [hd, { name: `ts_attention_prefill_sm90o_hd${hd}_bf16`, params: ATTENTION_SM90_PARAMS }])),
};

/** Why the Hopper prefill kernel cannot run a step, or null when it can. */
export function sm90AttentionRefusal(s: { regime: 'prefill' | 'decode'; computeMajor: number; headDim: number; blockSize: number; numCacheBlocks: number }): string | null {
  if (s.computeMajor !== 9) return `compute capability ${s.computeMajor}.x is not Hopper`;
  if (s.regime !== 'prefill') return 'a decode step (one query token per sequence)';
  if (!ATTENTION_SM90.headDims.includes(s.headDim)) return `head dim ${s.headDim} is not ${ATTENTION_SM90.headDims.join(' or ')}`;
  if (s.blockSize < ATTENTION_SM90.minBlockSize) return `cache block size ${s.blockSize} is under ${ATTENTION_SM90.minBlockSize}`;
  if (2 * s.numCacheBlocks * s.blockSize >= 2 ** 31) return 'the KV pool has more than 2^31 token slots';
  return null;
}

/**
 * The prefill kernel a step runs. Asked for (attrs.attentionVariant, TESSERA_ATTENTION) it is
 * honoured where it applies; else the measured table's choice; else the mma.sync kernel, which
 * stays the default until the GPU benchmark has measured the Hopper kernel faster
 * (docs/perf/attention.md).
 */
export function attentionVariant(asked: unknown, refusal: string | null): AttentionVariantName {
  if (asked !== undefined && asked !== null && asked !== 'auto' && !ATTENTION_VARIANTS.includes(asked as AttentionVariantName))
    throw new Error(`attention variant must be auto, ${ATTENTION_VARIANTS.join(', ')}, not ${String(asked)}`);
  return (asked === 'sm90' || asked === 'sm90o') && refusal === null ? asked : 'tiles';
}

export const ATTENTION_COMBINE: KernelDecl = {
  name: 'ts_attention_combine_bf16',
  params: [
    ['out', 'ptr'],
    ['partO', 'ptr'],
    ['partML', 'ptr'],
    ['queryStart', 'ptr'],
    ['numSeqs', 'i32'],
    ['numTokens', 'i32'],
    ['numHeads', 'i32'],
    ['headDim', 'i32'],
    ['numSplits', 'i32'],
  ],
};
/** (sequence, head) pairs per combine block: one warp each. */
const COMBINE_WARPS = 4;

/** Split-KV: blocks wanted per multiprocessor, fewest K/V tiles per split, most splits. */
const SPLIT_BLOCKS_PER_SM = 4;
const MIN_TILES_PER_SPLIT = 2;
const MAX_SPLITS = 128;

const MAX_GRID_YZ = 65535;
const MAX_GRID_X = 2 ** 31 - 1;

export interface AttentionShape {
  numTokens: number;
  numSeqs: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Longest context of any sequence (tokens in the cache), from the step. */
  maxContextLen: number;
  /** Longest query of any sequence, from the step. */
  maxQueryLen: number;
  /** null: full causal. */
  slidingWindow: number | null;
  multiprocessors: number;
}

export interface AttentionPlan {
  regime: 'prefill' | 'decode';
  variant: AttentionVariant;
  grid: [number, number, number];
  block: [number, number, number];
  numSplits: number;
  /** Keys per split (a multiple of the tile); 0 when numSplits = 1. */
  splitLen: number;
  /** Bytes of scratch for the partials: numSplits * T * H * (hd + 2) * 4 when numSplits > 1, else 0. */
  scratchBytes: number;
  /** Offset of partML in the scratch. */
  partMLOffset: number;
}

export function headDimBucket(headDim: number): number {
  const bucket = HEAD_DIM_BUCKETS.find((b) => b >= headDim);
  if (bucket === undefined || headDim < 8 || headDim % 8 !== 0) throw new Error(`attention: head dim ${headDim} is not a multiple of 8 in 8..256`);
  return bucket;
}

/**
 * How many splits a decode step's context is cut into: enough blocks for SPLIT_BLOCKS_PER_SM per
 * multiprocessor, each split at least MIN_TILES_PER_SPLIT tiles, at most MAX_SPLITS.
 * Depends on host sizes only (the same for every replay of a captured decode graph).
 */
export function planSplits(units: number, maxKeys: number, tileTokens: number, multiprocessors: number): { numSplits: number; splitLen: number } {
  const tiles = ceilDiv(Math.max(maxKeys, 1), tileTokens);
  const wanted = ceilDiv(SPLIT_BLOCKS_PER_SM * Math.max(multiprocessors, 1), Math.max(units, 1));
  const splits = Math.min(wanted, Math.floor(tiles / MIN_TILES_PER_SPLIT), MAX_SPLITS);
  if (splits <= 1) return { numSplits: 1, splitLen: 0 };
  const tilesPerSplit = ceilDiv(tiles, splits);
  return { numSplits: ceilDiv(tiles, tilesPerSplit), splitLen: tilesPerSplit * tileTokens };
}

/** The launch for a step; null when there is nothing to compute. Throws on shapes the kernels do not take. */
export function planAttention(s: AttentionShape): AttentionPlan | null {
  const { numTokens: T, numSeqs: B, numHeads: H, numKvHeads: KV, headDim: hd } = s;
  const where = `attention (T ${T}, B ${B}, heads ${H}/${KV}, head dim ${hd})`;
  if (!(Number.isInteger(H) && Number.isInteger(KV) && H > 0 && KV > 0 && H % KV === 0)) throw new Error(`${where}: numHeads must be a positive multiple of numKvHeads`);
  const bucket = headDimBucket(hd);
  if (s.slidingWindow !== null && !(Number.isInteger(s.slidingWindow) && s.slidingWindow >= 1 && s.slidingWindow < 2 ** 31))
    throw new Error(`${where}: slidingWindow ${s.slidingWindow} is not a positive integer`);
  if (T === 0 || B === 0 || s.maxQueryLen <= 0) return null;
  if (KV > MAX_GRID_YZ || B > MAX_GRID_YZ) throw new Error(`${where}: more than ${MAX_GRID_YZ} kv heads or sequences`);
  if (s.maxContextLen >= 2 ** 31) throw new Error(`${where}: context ${s.maxContextLen} does not fit 32-bit positions`);
  const G = H / KV;
  const decode = s.maxQueryLen === 1;
  const variant = (decode ? DECODE_VARIANTS : PREFILL_VARIANTS).find((v) => v.headDimBucket === bucket)!;
  const mTiles = ceilDiv(s.maxQueryLen * G, variant.rows);
  let numSplits = 1, splitLen = 0;
  if (decode) {
    const maxKeys = s.slidingWindow === null ? s.maxContextLen : Math.min(s.maxContextLen, s.slidingWindow);
    ({ numSplits, splitLen } = planSplits(B * KV * mTiles, maxKeys, variant.tileTokens, s.multiprocessors));
  }
  if (mTiles * numSplits > MAX_GRID_X) throw new Error(`${where}: grid too large`);
  const partMLOffset = numSplits > 1 ? numSplits * T * H * hd * 4 : 0;
  return {
    regime: decode ? 'decode' : 'prefill',
    variant,
    grid: [mTiles * numSplits, KV, B],
    block: [variant.threads, 1, 1],
    numSplits,
    splitLen,
    scratchBytes: numSplits > 1 ? numSplits * T * H * (hd + 2) * 4 : 0,
    partMLOffset,
  };
}

function intAttr(attrs: Record<string, unknown>, name: string): number {
  const v = attrs[name];
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error(`attention: attr ${name} must be an integer, got ${String(v)}`);
  return v;
}

function expect(cond: boolean, what: string, t: DeviceTensor): void {
  if (!cond) throw new Error(`attention: ${what} (got ${t.dtype} [${t.shape.join(', ')}])`);
}

export const attention: CudaOp = (ctx) => {
  const [q, cache, queryStart, contextLens, blockTables] = ctx.inputs;
  const out = ctx.outputs[0];
  if (ctx.inputs.length !== 5 || !out) throw new Error(`attention: expects 5 inputs and 1 output, got ${ctx.inputs.length} and ${ctx.outputs.length}`);
  const H = intAttr(ctx.attrs, 'numHeads'), KV = intAttr(ctx.attrs, 'numKvHeads'), hd = intAttr(ctx.attrs, 'headDim');
  const scale = ctx.attrs.scale;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new Error(`attention: attr scale must be a finite number, got ${String(scale)}`);
  const sw = ctx.attrs.slidingWindow ?? null;
  if (sw !== null && typeof sw !== 'number') throw new Error(`attention: attr slidingWindow must be null or a number, got ${String(sw)}`);
  const causal = ctx.attrs.causal ?? true;
  if (typeof causal !== 'boolean') throw new Error(`attention: attr causal must be a boolean, got ${String(causal)}`);

  const dtype = storageOf('attention', [
    ['q', q],
    ['cache', cache],
    ['output', out],
  ]);
  expect(q.shape.length === 2 && q.shape[1] === H * hd, `q must be [T, ${H} * ${hd}]`, q);
  const T = q.shape[0];
  expect(out.shape.length === 2 && out.shape[0] === T && out.shape[1] === H * hd, `output must be [${T}, ${H * hd}]`, out);
  expect(cache.shape.length === 5 && cache.shape[0] === 2 && cache.shape[3] === KV && cache.shape[4] === hd, `cache must be [2, blocks, blockSize, ${KV}, ${hd}]`, cache);
  const numCacheBlocks = cache.shape[1], blockSize = cache.shape[2];
  const blockSizeLog2 = Math.log2(blockSize);
  expect(Number.isInteger(blockSizeLog2) && blockSize >= 1 && blockSize <= 1024, 'cache block size must be a power of two', cache);
  expect(numCacheBlocks < 2 ** 31, 'cache has too many blocks for 32-bit block ids', cache);
  const B = contextLens.shape[0];
  expect(contextLens.dtype === 'i32' && contextLens.shape.length === 1, 'contextLens must be i32 [B]', contextLens);
  expect(queryStart.dtype === 'i32' && queryStart.shape.length === 1 && queryStart.shape[0] === B + 1, `queryStart must be i32 [${B + 1}]`, queryStart);
  expect(blockTables.dtype === 'i32' && blockTables.shape.length === 2 && blockTables.shape[0] === B, `blockTables must be i32 [${B}, width]`, blockTables);
  const blockTableWidth = blockTables.shape[1];

  const plan = planAttention({
    numTokens: T,
    numSeqs: B,
    numHeads: H,
    numKvHeads: KV,
    headDim: hd,
    maxContextLen: ctx.step.maxContextLen,
    maxQueryLen: ctx.step.maxQueryLen,
    slidingWindow: sw,
    multiprocessors: ctx.device.multiprocessors,
  });
  if (plan === null) return;

  const env = process.env.TESSERA_ATTENTION === 'auto' ? undefined : process.env.TESSERA_ATTENTION;
  const refusal = sm90AttentionRefusal({ regime: plan.regime, computeMajor: ctx.device.computeCapability[0], headDim: hd, blockSize, numCacheBlocks });
  const chosen = attentionVariant(ctx.attrs.attentionVariant ?? env ?? (plan.regime === 'prefill' ? ctx.attentionChoice?.(hd) : undefined) ?? undefined, refusal);
  if (chosen !== 'tiles') {
    const G = H / KV;
    // The pool [2, N, bs, KV, hd] seen as [2 N bs, KV, hd]: one box = min(bs, 128) tokens of one kv head, 64 columns.
    const tmKV = ctx.tensorMap(cache, [2 * numCacheBlocks * blockSize, KV, hd], [Math.min(blockSize, ATTENTION_SM90.tileTokens), 1, 64], '128B');
    expect(q.ptr % 16n === 0n && out.ptr % 16n === 0n, 'q and the output must be 16-byte aligned', q);
    ctx.launch(forStorage(ATTENTION_SM90_KERNELS[chosen][hd], dtype), { grid: [ceilDiv(ctx.step.maxQueryLen * G, ATTENTION_SM90.rows), KV, B], block: [ATTENTION_SM90.threads, 1, 1], sharedBytes: ATTENTION_SM90.sharedBytes(hd) }, {
      tmKV,
      out: out.ptr,
      q: q.ptr,
      queryStart: queryStart.ptr,
      contextLens: contextLens.ptr,
      blockTables: blockTables.ptr,
      numHeads: H,
      numKvHeads: KV,
      blockSizeLog2,
      blockTableWidth,
      vOffset: numCacheBlocks * blockSize,
      scale,
      window: sw ?? 0,
      causal: causal ? 1 : 0,
    });
    return;
  }

  const combine = ctx.attrs.attentionCombine ?? 'fused';
  if (combine !== 'fused' && combine !== 'separate') throw new Error(`attention: attr attentionCombine must be fused or separate, got ${String(combine)}`);
  let partO = 0n, partML = 0n, counters = 0n;
  if (plan.numSplits > 1) {
    partO = ctx.scratch(plan.scratchBytes);
    partML = partO + BigInt(plan.partMLOffset);
    // One counter per (sequence, kv head, row tile), zero between launches (the last split to
    // arrive sets it back), from the backend's area (a decode step splits only below 4 blocks an
    // SM, so there are few).
    if (combine === 'fused') counters = ctx.counters(B * KV * (plan.grid[0] / plan.numSplits));
  }
  ctx.launch(forStorage(plan.variant.decl, dtype), { grid: plan.grid, block: plan.block }, {
    out: out.ptr,
    partO,
    partML,
    counters,
    q: q.ptr,
    cache: cache.ptr,
    queryStart: queryStart.ptr,
    contextLens: contextLens.ptr,
    blockTables: blockTables.ptr,
    numTokens: T,
    numHeads: H,
    numKvHeads: KV,
    headDim: hd,
    numCacheBlocks,
    blockSizeLog2,
    blockTableWidth,
    scale,
    window: sw ?? 0,
    numSplits: plan.numSplits,
    splitLen: plan.splitLen,
    causal: causal ? 1 : 0,
  });
  if (plan.numSplits > 1 && combine === 'separate') {
    ctx.launch(forStorage(ATTENTION_COMBINE, dtype), { grid: [ceilDiv(B * H, COMBINE_WARPS), 1, 1], block: [32 * COMBINE_WARPS, 1, 1] }, {
      out: out.ptr,
      partO,
      partML,
      queryStart: queryStart.ptr,
      numSeqs: B,
      numTokens: T,
      numHeads: H,
      headDim: hd,
      numSplits: plan.numSplits,
    });
  }
};

export const DECLS: KernelDecl[] = [...PREFILL_VARIANTS.map((v) => v.decl), ...DECODE_VARIANTS.map((v) => v.decl), ATTENTION_COMBINE, ...Object.values(ATTENTION_SM90_KERNELS).flatMap((byHd) => Object.values(byHd))];
