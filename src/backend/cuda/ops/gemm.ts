/**
 * matmul(x[R, K], w[N, K] (, bias[N])) -> y[R, N] = x w^T (+ bias), and
 * matmul_add(x, w, res[R, N] (, bias)) -> x w^T (+ bias) + res with y in res's place, and
 * matmul_glu(x, w[2I, K] in (gate, up) row pairs (, bias[2I])) -> act(gate) * up: [R, I], and
 * matmul_rope_kv(x, w_qkv (q/k rows in rope_rows order), positions, cache, slots (, bias)) -> q
 * rotated, k rotated and v written into the cache (the `rope_*` parameters, kernels/rope.cuh), on
 * tensor cores: kernels/gemm.cu (and gemv.cu, gemm_sm90.cu: every variant has the res and the glu
 * epilogues; the kernels take `glu`, an activation code or GLU_NONE). With attrs.rmsEps, x's rows
 * are RMS-normalized in the GEMM (the norm's weight folded into w's columns at load): y =
 * rstd[r] (x w^T)[r] (+ bias), computed by the kernel itself where its rows are few (the GEMV,
 * the 16-row tile; the 32- and 64-row tiles up to 64 rows), else by ts_row_rstd_* in a launch before it.
 * x, w, bias and res share the storage type (bf16 or f16). One kernel per tile
 * configuration, storage type and output dtype (the storage type for projections, f32 for the
 * logits): the tables below name the bf16 entries, kernel_decl.forStorage the f16 ones. Picked from R, N and the SM count by gemmPlan; when the tiles alone would
 * leave most SMs idle (decode, or few row tiles with a long K) K is split over blockIdx.z, the
 * splits write f32 partials to scratch and the last split of each tile to finish adds them up
 * with the bias and the residual (arrival counters from CudaOpContext.counters). With
 * attrs.gemmSplitMerge 'separate' the rung before it runs: ts_gemm_splitk_reduce_* in a second
 * launch (the Hopper kernel's splits, sm90s, always take that one).
 */
import { forStorage, type KernelDecl, type ParamType } from '../kernel_decl.js';
import type { Attrs } from '../../../graph/ir.js';
import { actCode, expectDType, storageOf } from './elementwise.js';
import { ROW_RSTD } from './norm.js';
import { cacheHalves, ropeInvFreqOn } from './rope_kv.js';
import type { CudaOp, CudaOpContext, DeviceTensor, Launch } from './types.js';
import { ceilDiv, elementBytes } from './types.js';

export type GemmTileName = '16x128' | '32x128' | '64x128' | '128x128';
/** y's dtype: the storage type (the table's `bf16` entry, forStorage for f16) or f32. */
export type GemmOutDType = 'bf16' | 'f32';

/** The entry name's tail for y's dtype: `_bf16` (y in the storage type) or `_bf16_f32`. */
function outSuffix(d: GemmOutDType): string {
  return d === 'f32' ? 'bf16_f32' : 'bf16';
}

export interface GemmTile {
  name: GemmTileName;
  /** Rows (of x and y) per block. */
  bm: number;
  /** Columns of y (rows of w) per block. */
  bn: number;
  /** K per pipeline stage. */
  bk: number;
  warps: number;
  stages: number;
  /** Dynamic shared memory: stages * (bm + bn) * bk 16-bit values. */
  sharedBytes: number;
}

/** K per stage in every config (kernels/gemm.cu: BK); k-tiles are counted in these. */
export const GEMM_BK = 32;

function tile(name: GemmTileName, bm: number, bn: number, warps: number, stages: number): GemmTile {
  return { name, bm, bn, bk: GEMM_BK, warps, stages, sharedBytes: stages * (bm + bn) * GEMM_BK * 2 };
}

/** The tile configurations of kernels/gemm.cu (keep in step with its TS_GEMM_ENTRY lines). */
export const GEMM_TILES: Record<GemmTileName, GemmTile> = {
  '16x128': tile('16x128', 16, 128, 4, 4),
  '32x128': tile('32x128', 32, 128, 4, 4),
  '64x128': tile('64x128', 64, 128, 4, 4),
  '128x128': tile('128x128', 128, 128, 8, 3),
};

/** At most this many K splits, each of at least SPLIT_MIN_K_TILES k-tiles. */
export const GEMM_MAX_SPLITS = 8;
export const GEMM_SPLIT_MIN_K_TILES = 4;
/** Largest f32 partial workspace (splits * R * N * 4 bytes) a split may need. */
export const GEMM_MAX_WORKSPACE_BYTES = 32 << 20;

export interface GemmPlan {
  tile: GemmTile;
  tilesM: number;
  tilesN: number;
  /** K splits (gridDim.z); 1 = y written directly by the tile kernel. */
  splits: number;
  /** k-tiles (of GEMM_BK) per split; the last split may have fewer, none has zero. */
  kTilesPerSplit: number;
  /** f32 partials [splits, R, N]; 0 when splits == 1. */
  workspaceBytes: number;
  grid: [number, number, number];
  block: [number, number, number];
}

/**
 * Which kernel configuration the matmul launcher uses for y[R, N] = x[R, K] w[N, K]^T on a GPU
 * with `multiprocessors` SMs (R, N >= 1):
 *   R <= 16: 16x128; R <= 32: 32x128 (decode: N spread over blocks, the weights streamed once);
 *   R <= 64: 64x128; larger R: 128x128 when its tiles make at least one wave, else 64x128.
 * Then, when the tiles are fewer than the SMs (twice the SMs for the decode tiles, which are small
 * enough to run several per SM), K is split until they are (at most 8 ways, >= 4 k-tiles a split).
 */
export function gemmPlan(R: number, N: number, K: number, multiprocessors: number): GemmPlan {
  const sms = Math.max(1, multiprocessors);
  const tilesFor = (t: GemmTile): number => ceilDiv(R, t.bm) * ceilDiv(N, t.bn);
  let t: GemmTile;
  if (R <= 16) t = GEMM_TILES['16x128'];
  else if (R <= 32) t = GEMM_TILES['32x128'];
  else if (R <= 64) t = GEMM_TILES['64x128'];
  else t = tilesFor(GEMM_TILES['128x128']) >= sms ? GEMM_TILES['128x128'] : GEMM_TILES['64x128'];

  const tilesM = ceilDiv(R, t.bm), tilesN = ceilDiv(N, t.bn), blocks = tilesM * tilesN;
  const kTiles = ceilDiv(K, GEMM_BK);
  const target = (t.bm <= 32 ? 2 : 1) * sms;
  let splits = 1;
  if (blocks < target) {
    splits = Math.min(GEMM_MAX_SPLITS, ceilDiv(target, blocks), Math.floor(kTiles / GEMM_SPLIT_MIN_K_TILES));
    while (splits > 1 && splits * R * N * 4 > GEMM_MAX_WORKSPACE_BYTES) splits--;
    splits = Math.max(1, splits);
  }
  // Even k-tile ranges; recount so that no split is empty (ceil(kTiles / per) <= splits).
  const kTilesPerSplit = Math.max(1, ceilDiv(kTiles, splits));
  if (splits > 1) splits = ceilDiv(kTiles, kTilesPerSplit);
  return {
    tile: t,
    tilesM,
    tilesN,
    splits,
    kTilesPerSplit,
    workspaceBytes: splits > 1 ? splits * R * N * 4 : 0,
    grid: [blocks, 1, splits],
    block: [t.warps * 32, 1, 1],
  };
}

/** The kernels' `glu` for a plain product (common.cuh GLU_NONE); else the activation's code (ACT_CODE). */
export const GLU_NONE = -1;

/**
 * Every GEMM entry's last parameters: the matmul_rope_kv epilogue (kernels/rope.cuh RopeKv), the
 * rows' positions and cache slots, RoPE's inv_freq, the layer's cache (0: a plain epilogue), and
 * q's width, the head and rotary dims, and the cache's slots.
 */
const ROPE_KV_PARAMS: ReadonlyArray<readonly [string, ParamType]> = [
  ['ropePositions', 'ptr'],
  ['ropeSlots', 'ptr'],
  ['ropeInvFreq', 'ptr'],
  ['ropeCache', 'ptr'],
  ['ropeQCols', 'i32'],
  ['ropeHeadDim', 'i32'],
  ['ropeRotaryDim', 'i32'],
  ['ropeNumSlots', 'i32'],
];

/** matmul_rope_kv's epilogue operands (ROPE_KV_PARAMS). */
export interface RopeKvOperands {
  ropePositions: bigint;
  ropeSlots: bigint;
  ropeInvFreq: bigint;
  ropeCache: bigint;
  ropeQCols: number;
  ropeHeadDim: number;
  ropeRotaryDim: number;
  ropeNumSlots: number;
}

/** A plain epilogue: no RoPE, no KV write. */
const NO_ROPE: RopeKvOperands = { ropePositions: 0n, ropeSlots: 0n, ropeInvFreq: 0n, ropeCache: 0n, ropeQCols: 0, ropeHeadDim: 0, ropeRotaryDim: 0, ropeNumSlots: 0 };

/** The GEMV's: y, x, w, bias, res, R, N, K, glu, rmsEps (a GEMV block covers all of K, without splits), then ROPE_KV_PARAMS. */
const GEMV_PARAMS: ReadonlyArray<readonly [string, ParamType]> = [
  ['y', 'ptr'],
  ['x', 'ptr'],
  ['w', 'ptr'],
  ['bias', 'ptr'],
  ['res', 'ptr'],
  ['R', 'i32'],
  ['N', 'i32'],
  ['K', 'i32'],
  ['glu', 'i32'],
  ['rmsEps', 'f32'],
  ...ROPE_KV_PARAMS,
];

/**
 * The tile kernel's: the GEMV's operands, the split merge's partials and tile counters (or null),
 * then R, N, K, the k-tiles per split, glu, and the folded norm's row scales (or null) and eps
 * (>= 0: the kernel computes the scales itself).
 */
const GEMM_PARAMS: ReadonlyArray<readonly [string, ParamType]> = [
  ...GEMV_PARAMS.slice(0, 5),
  ['ws', 'ptr'],
  ['counters', 'ptr'],
  ...GEMV_PARAMS.slice(5, 8),
  ['kTilesPerSplit', 'i32'],
  ['glu', 'i32'],
  ['rstd', 'ptr'],
  ['rmsEps', 'f32'],
  ...ROPE_KV_PARAMS,
];

/**
 * The tile configurations whose kernel, writing partials for the separate reduce, computes the
 * folded norm's row scales itself from its rows of x read whole from L2 (few rows a block: the
 * 16-row decode tile).
 */
export const GEMM_RMS_IN_BLOCK_MAX_BM = 16;
/**
 * Up to this many rows of x, the 16-, 32- and 64-row tiles sum their rows' squares from the A
 * fragments of their main loop (free where the weights bound the time; a compute-bound GEMM would
 * pay ~10% for it, more than ts_row_rstd's launch), the K split, if any, merged in the launch.
 */
export const GEMM_RMS_FRAGMENT_MAX_R = 64;

const REDUCE_PARAMS: ReadonlyArray<readonly [string, ParamType]> = [
  ['y', 'ptr'],
  ['ws', 'ptr'],
  ['bias', 'ptr'],
  ['res', 'ptr'],
  ['R', 'i32'],
  ['N', 'i32'],
  ['splits', 'i32'],
  ['glu', 'i32'],
  ...ROPE_KV_PARAMS,
];

const OUT_DTYPES: GemmOutDType[] = ['bf16', 'f32'];

/**
 * The rungs: the mma.sync tile kernel (with its own split-K), the decode GEMV, the Hopper kernel
 * over whole tiles (sm90), the Hopper kernel with K split when its tiles would leave SMs idle
 * (sm90s; the same entry, gemmSm90Plan), the Hopper kernel with ping-pong consumers on
 * 128 x 128 tiles (sm90p: one consumer's epilogue under the other's main loop), and the Hopper
 * kernel scheduled stream-K (sm90k: every block the same number of k-tiles, tiles shared between
 * blocks finished by the last to arrive; gemmSm90kPlan), and the Hopper kernel in clusters of two
 * blocks on row tiles that share w's tile, each loading half of it for both through TMA multicast
 * (sm90c: a third less operand traffic through L2 a k-tile; gemmSm90cGrid), and the ping-pong
 * kernel in such clusters (sm90pc: sm90p's epilogue overlap at sm90c's L2 traffic per FLOP).
 */
export type GemmVariant = 'tiles' | 'gemv' | 'sm90' | 'sm90s' | 'sm90p' | 'sm90k' | 'sm90c' | 'sm90pc';
/** What attrs.gemmVariant and TESSERA_GEMM take besides auto. */
export const GEMM_VARIANTS: readonly GemmVariant[] = ['tiles', 'gemv', 'sm90', 'sm90s', 'sm90p', 'sm90k', 'sm90c', 'sm90pc'];
/** The variants that need compute capability 9 (wgmma, TMA; sm90c and sm90pc also thread-block clusters). */
export const GEMM_HOPPER_VARIANTS: readonly GemmVariant[] = ['sm90', 'sm90s', 'sm90p', 'sm90k', 'sm90c', 'sm90pc'];

/** The GEMV entries' largest R (kernels/gemv.cu: one entry per MAXR, storage type and y dtype). */
export const GEMV_MAX_R = [1, 2, 4, 8] as const;
/** Rows of w per GEMV block, and its threads. */
export const GEMV_ROWS = 4;
export const GEMV_THREADS = 256;

/** ts_gemv_r<maxR>_bf16 and ts_gemv_r<maxR>_bf16_f32. */
export const GEMV_KERNELS = Object.fromEntries(
  GEMV_MAX_R.map((m) => [m, Object.fromEntries(OUT_DTYPES.map((d) => [d, { name: `ts_gemv_r${m}_${outSuffix(d)}`, params: GEMV_PARAMS } satisfies KernelDecl]))]),
) as Record<(typeof GEMV_MAX_R)[number], Record<GemmOutDType, KernelDecl>>;

/**
 * The variant the matmul launcher runs for R rows on a GPU of compute capability `major`. Asked
 * for (attrs.gemmVariant, or TESSERA_GEMM) it is honoured where it applies (gemv for R <= 8, the
 * Hopper rungs on compute capability 9). The default is the tile kernel: another becomes the default where the
 * GPU benchmark has measured it faster (docs/perf/gemm.md).
 */
export function gemmVariant(R: number, asked: unknown = process.env.TESSERA_GEMM, major = 9): GemmVariant {
  if (asked !== undefined && asked !== 'auto' && !GEMM_VARIANTS.includes(asked as GemmVariant))
    throw new Error(`gemm variant must be auto, ${GEMM_VARIANTS.slice(0, -1).join(', ')} or ${GEMM_VARIANTS[GEMM_VARIANTS.length - 1]}, not ${String(asked)}`);
  if (asked === 'gemv' && R <= GEMV_MAX_R[GEMV_MAX_R.length - 1]) return 'gemv';
  if (GEMM_HOPPER_VARIANTS.includes(asked as GemmVariant) && major === 9) return asked as GemmVariant;
  return 'tiles';
}

/** kernels/gemm_sm90.cu's tile, threads and dynamic shared memory (keep in step with its Cfg<false>). */
export const GEMM_SM90 = { bm: 128, bn: 256, bk: 64, stages: 4, threads: 384, sharedBytes: 4 * (128 + 256) * 64 * 2 + 1024 + 2 * 4 * 8 } as const;
/** The ping-pong entries' (Cfg<PING>): each consumer warpgroup a 128 x 128 tile, six 32 KiB stages. */
export const GEMM_SM90P = { bm: 128, bn: 128, bk: 64, stages: 6, threads: 384, sharedBytes: 6 * (128 + 128) * 64 * 2 + 1024 + 2 * 6 * 8 } as const;
/** The stream-K entries' (Cfg<STREAMK>): GEMM_SM90's tiles and stages, and a flag in shared memory. */
export const GEMM_SM90K = { ...GEMM_SM90, sharedBytes: GEMM_SM90.sharedBytes + 16 } as const;
/**
 * The cluster entries' (Cfg<MCAST>): GEMM_SM90's tiles, stages and shared memory, launched in
 * clusters of `cluster` blocks along x; w's tensor map boxes bn / cluster rows (a block's share of
 * the tile it multicasts).
 */
export const GEMM_SM90C = { ...GEMM_SM90, cluster: 2 } as const;
/** The ping-pong cluster entries' (Cfg<PING_MCAST>): GEMM_SM90P's tiles, stages and shared memory, in clusters as sm90c. */
export const GEMM_SM90PC = { ...GEMM_SM90P, cluster: 2 } as const;
/** A stream-K block's partial-tile slot: 256 consumer threads x 128 f32 accumulators (SLOT_FLOATS). */
export const GEMM_SM90K_SLOT_BYTES = 256 * 128 * 4;
/** Stream-K gives a block at least this many k-tiles (fewer pieces per tile where K is short of work). */
export const GEMM_SM90K_MIN_K_TILES = 4;

const GEMM_SM90_PARAMS: ReadonlyArray<readonly [string, ParamType]> = [
  ['tmX', 'tmap'],
  ['tmW', 'tmap'],
  ['y', 'ptr'],
  ['bias', 'ptr'],
  ['res', 'ptr'],
  ['M', 'i32'],
  ['N', 'i32'],
  ['K', 'i32'],
  ['splits', 'i32'],
  ['kTilesPerSplit', 'i32'],
  ['glu', 'i32'],
  ['rstd', 'ptr'],
  ...ROPE_KV_PARAMS,
];

/** ts_gemm_sm90_bf16 and ts_gemm_sm90_bf16_f32. */
export const GEMM_SM90_KERNELS: Record<GemmOutDType, KernelDecl> = {
  bf16: { name: 'ts_gemm_sm90_bf16', params: GEMM_SM90_PARAMS },
  f32: { name: 'ts_gemm_sm90_bf16_f32', params: GEMM_SM90_PARAMS },
};
/** Stream-K: the maps, y, bias and res as above, its slots and tile counters, M N K, and its split of the work. */
const GEMM_SM90K_PARAMS: ReadonlyArray<readonly [string, ParamType]> = [
  ...GEMM_SM90_PARAMS.slice(0, 5),
  ['ws', 'ptr'],
  ['counters', 'ptr'],
  ...GEMM_SM90_PARAMS.slice(5, 8),
  ['dpTiles', 'i32'],
  ['kTilesPerBlock', 'i32'],
  ['glu', 'i32'],
  ['rstd', 'ptr'],
  ...ROPE_KV_PARAMS,
];

/** ts_gemm_sm90k_bf16 and ts_gemm_sm90k_bf16_f32: stream-K. */
export const GEMM_SM90K_KERNELS: Record<GemmOutDType, KernelDecl> = {
  bf16: { name: 'ts_gemm_sm90k_bf16', params: GEMM_SM90K_PARAMS },
  f32: { name: 'ts_gemm_sm90k_bf16_f32', params: GEMM_SM90K_PARAMS },
};

export interface GemmSm90kPlan {
  tiles: number;
  /** Tiles done whole first, in turn over the blocks (whole waves of them). */
  dpTiles: number;
  /** k-tiles of the rest's flattened (tile, k-tile) sequence per block; the last block may have fewer. */
  kTilesPerBlock: number;
  /** Blocks with a stream-K range (the first ones). */
  streamKBlocks: number;
  grid: number;
  /** Two partial-tile slots per stream-K block where a tile is shared. */
  workspaceBytes: number;
  /** Tiles whose k-tiles fall to more than one block (finished by the last to arrive). */
  sharedTiles: number;
}

/**
 * How sm90k spreads y[R, N] = x[R, K] w[N, K]^T over `multiprocessors` SMs. Whole waves of tiles
 * but the last full one go to the blocks in turn, as sm90 hands them out (concurrent tiles are
 * neighbours, sharing operands in L2); the tiles left, between one and two waves' worth (all of
 * them below two waves), have their k-tiles laid out in one tile-major sequence cut into equal
 * ranges of at least GEMM_SM90K_MIN_K_TILES, a block a range. Every block ends with the same work
 * to within a k-tile; no K split is chosen. Whole waves only (tiles a multiple of the SMs): sm90's
 * launch, no stream-K part.
 */
export function gemmSm90kPlan(R: number, N: number, K: number, multiprocessors: number): GemmSm90kPlan {
  const sms = Math.max(1, multiprocessors);
  const tiles = ceilDiv(R, GEMM_SM90K.bm) * ceilDiv(N, GEMM_SM90K.bn);
  const kTiles = Math.max(1, ceilDiv(K, GEMM_SM90K.bk));
  const waves = Math.floor(tiles / sms);
  const dpTiles = tiles % sms === 0 ? tiles : waves >= 2 ? (waves - 1) * sms : 0;
  const total = (tiles - dpTiles) * kTiles;
  const per = total === 0 ? kTiles : Math.max(Math.min(GEMM_SM90K_MIN_K_TILES, kTiles), ceilDiv(total, sms));
  const streamKBlocks = ceilDiv(total, per);
  let sharedTiles = 0;
  for (let t = 0; t < tiles - dpTiles; t++) if (Math.floor((t * kTiles) / per) !== Math.floor(((t + 1) * kTiles - 1) / per)) sharedTiles++;
  return {
    tiles,
    dpTiles,
    kTilesPerBlock: per,
    streamKBlocks,
    grid: Math.max(1, dpTiles > 0 ? sms : streamKBlocks),
    workspaceBytes: sharedTiles > 0 ? 2 * streamKBlocks * GEMM_SM90K_SLOT_BYTES : 0,
    sharedTiles,
  };
}

/** ts_gemm_sm90c_bf16 and ts_gemm_sm90c_bf16_f32: the cluster schedule, the same parameters (splits 1). */
export const GEMM_SM90C_KERNELS: Record<GemmOutDType, KernelDecl> = {
  bf16: { name: 'ts_gemm_sm90c_bf16', params: GEMM_SM90_PARAMS },
  f32: { name: 'ts_gemm_sm90c_bf16_f32', params: GEMM_SM90_PARAMS },
};

/** ts_gemm_sm90pc_bf16 and ts_gemm_sm90pc_bf16_f32: ping-pong in clusters, the same parameters (splits 1). */
export const GEMM_SM90PC_KERNELS: Record<GemmOutDType, KernelDecl> = {
  bf16: { name: 'ts_gemm_sm90pc_bf16', params: GEMM_SM90_PARAMS },
  f32: { name: 'ts_gemm_sm90pc_bf16_f32', params: GEMM_SM90_PARAMS },
};

/**
 * sm90c's (and with bn 128, sm90pc's) persistent grid, in blocks: a cluster per pair of row tiles
 * sharing a column tile (the last pair of an odd count has one real tile), at most `maxClusters`
 * resident at once (cuOccupancyMaxActiveClusters: clusters go to GPCs whole, so it can be below
 * SMs / 2).
 */
export function gemmSm90cGrid(R: number, N: number, maxClusters: number, bn: number = GEMM_SM90C.bn): number {
  const pairs = ceilDiv(ceilDiv(R, GEMM_SM90C.bm), GEMM_SM90C.cluster) * ceilDiv(N, bn);
  return GEMM_SM90C.cluster * Math.max(1, Math.min(pairs, maxClusters));
}

/** The clusters the device holds at once (the backend asks the driver once a kernel); half the SMs for a context without the query. */
function maxClusters(ctx: CudaOpContext, decl: KernelDecl, launch: Launch): number {
  if (!ctx.maxActiveClusters) return Math.max(1, Math.floor(ctx.device.multiprocessors / launch.cluster![0]));
  const n = ctx.maxActiveClusters(decl, launch);
  if (n < 1) throw new Error(`${decl.name}: the device can hold no cluster of ${launch.cluster![0]} blocks with ${launch.sharedBytes} bytes of shared memory each`);
  return n;
}

/** ts_gemm_sm90p_bf16 and ts_gemm_sm90p_bf16_f32: the ping-pong schedule, the same parameters. */
export const GEMM_SM90P_KERNELS: Record<GemmOutDType, KernelDecl> = {
  bf16: { name: 'ts_gemm_sm90p_bf16', params: GEMM_SM90_PARAMS },
  f32: { name: 'ts_gemm_sm90p_bf16_f32', params: GEMM_SM90_PARAMS },
};

/**
 * Persistent grid: one block per SM at most, one per work unit at least (a ping-pong block runs
 * two units at once only where there are more units than SMs).
 */
export function gemmSm90Grid(R: number, N: number, multiprocessors: number, splits = 1, bn: number = GEMM_SM90.bn): number {
  const tiles = ceilDiv(R, GEMM_SM90.bm) * ceilDiv(N, bn);
  return Math.max(1, Math.min(tiles * splits, multiprocessors));
}

/**
 * The cost model that picks sm90s's K split. Predictions, to be replaced by what the GPU run
 * measures (docs/perf/gemm.md, v2c): a 128 x 256 x 64 k-tile takes an SM 0.75 µs when the tensor
 * cores bound it (75% of H100's 989 TFLOP/s dense shared by 132 SMs; the tensor cores do the
 * whole tile whatever M is), an SM's TMA pulls at most 100 GB/s from L2, HBM gives 3 TB/s (H100
 * SXM's copy bandwidth is about 3.0) to the operands' unique bytes (tiles re-read through L2 are
 * not counted), and a launch costs 3 µs.
 */
export const GEMM_SM90_COST = { kTileUs: 0.75, smBytesPerUs: 100e3, bytesPerUs: 3.0e6, launchUs: 3 } as const;
/** Why the benchmark does not run sm90s at a shape: its plan does not split, so it is sm90's launch. */
export const SM90S_UNSPLIT = 'same launch as sm90: the plan does not split K at this shape';
/** Why `tessera bench kernels` leaves out the tile kernel's ` reduce` rung at a shape: there it is the tile case's launch. */
export const TILES_UNSPLIT = 'same launch as the tile kernel: its plan does not split K at this shape';
/** sm90s splits K at most this many ways. */
export const GEMM_SM90_MAX_SPLITS = 16;

export interface GemmSm90Plan {
  tiles: number;
  /** K splits; 1 = y written by the kernel directly. */
  splits: number;
  /** k-tiles (of GEMM_SM90.bk) per split; every split has at least one. */
  kTilesPerSplit: number;
  /** f32 partials [splits, R, N]; 0 when splits == 1. */
  workspaceBytes: number;
  grid: number;
  /** The cost model's estimate, µs (GEMM_SM90_COST). */
  predictedUs: number;
}

/**
 * How sm90s runs y[R, N] = x[R, K] w[N, K]^T (K >= 1) on `multiprocessors` SMs: the number of K
 * splits (1 to GEMM_SM90_MAX_SPLITS, within GEMM_MAX_WORKSPACE_BYTES) that the cost model
 * (GEMM_SM90_COST) predicts fastest. The main loop takes the longer of its rounds of units (each
 * k-tile at the slower of the tensor cores and the SM's loads) and the operands' bytes from HBM;
 * the units store y (f32 partials when split); a split adds the reduce: a launch, the partials
 * read, y written (and res read). With splits fixed to 1 it is the sm90 rung's launch.
 */
export function gemmSm90Plan(R: number, N: number, K: number, multiprocessors: number, outBytes: number, withRes: boolean, maxSplits = GEMM_SM90_MAX_SPLITS): GemmSm90Plan {
  const sms = Math.max(1, multiprocessors);
  const c = GEMM_SM90_COST;
  const tiles = ceilDiv(R, GEMM_SM90.bm) * ceilDiv(N, GEMM_SM90.bn);
  const kTiles = Math.max(1, ceilDiv(K, GEMM_SM90.bk));
  const stageBytes = (GEMM_SM90.bm + GEMM_SM90.bn) * GEMM_SM90.bk * 2;
  const kTileUs = Math.max(c.kTileUs, stageBytes / c.smBytesPerUs);
  const operandUs = (2 * (R * K + N * K)) / c.bytesPerUs;
  const cost = (splits: number, kps: number): number => {
    const main = Math.max(ceilDiv(tiles * splits, sms) * kps * kTileUs, operandUs);
    const stores = (R * N * (splits > 1 ? 4 * splits : outBytes + (withRes ? 2 : 0))) / c.bytesPerUs;
    const reduce = splits > 1 ? c.launchUs + (splits * R * N * 4 + R * N * (outBytes + (withRes ? 2 : 0))) / c.bytesPerUs : 0;
    return main + stores + reduce;
  };
  let best = { splits: 1, kps: kTiles, us: cost(1, kTiles) };
  for (let want = 2; want <= Math.min(maxSplits, kTiles); want++) {
    const kps = ceilDiv(kTiles, want), splits = ceilDiv(kTiles, kps);
    if (splits * R * N * 4 > GEMM_MAX_WORKSPACE_BYTES) break;
    const us = cost(splits, kps);
    if (us < best.us) best = { splits, kps, us };
  }
  return {
    tiles,
    splits: best.splits,
    kTilesPerSplit: best.kps,
    workspaceBytes: best.splits > 1 ? best.splits * R * N * 4 : 0,
    grid: gemmSm90Grid(R, N, sms, best.splits),
    predictedUs: best.us,
  };
}

/** ts_gemm_<tile>_bf16 and ts_gemm_<tile>_bf16_f32: one per tile configuration and output dtype. */
export const GEMM_KERNELS = Object.fromEntries(
  Object.keys(GEMM_TILES).map((name) => [
    name,
    Object.fromEntries(OUT_DTYPES.map((d) => [d, { name: `ts_gemm_${name}_${outSuffix(d)}`, params: GEMM_PARAMS } satisfies KernelDecl])),
  ]),
) as Record<GemmTileName, Record<GemmOutDType, KernelDecl>>;

/** ts_gemm_splitk_reduce_bf16 and ..._bf16_f32: y = sum of the split partials (+ bias) (+ res). */
export const GEMM_SPLITK_REDUCE: Record<GemmOutDType, KernelDecl> = {
  bf16: { name: 'ts_gemm_splitk_reduce_bf16', params: REDUCE_PARAMS },
  f32: { name: 'ts_gemm_splitk_reduce_bf16_f32', params: REDUCE_PARAMS },
};

const REDUCE_BLOCK = 256;

function fmt(t: DeviceTensor | undefined): string {
  return t ? `[${t.shape.join(', ')}] ${t.dtype}` : 'missing';
}

/** matmul(x[R, K], w[N, K] (, bias[N])) -> y[R, N], all of one storage type T but y, which may be f32 */
export const matmul: CudaOp = (ctx) => {
  if (ctx.inputs.length !== 2 && ctx.inputs.length !== 3) throw new Error(`matmul: expects 2 or 3 inputs, got ${ctx.inputs.length}`);
  const [x, w, bias] = ctx.inputs;
  gemm(ctx, 'matmul', x, w, bias, undefined);
};

/** matmul_add(x[R, K], w[N, K], res[R, N] (, bias[N])) -> y[R, N] = x w^T (+ bias) + res, all of one storage type; y may be res */
export const matmulAdd: CudaOp = (ctx) => {
  if (ctx.inputs.length !== 3 && ctx.inputs.length !== 4) throw new Error(`matmul_add: expects 3 or 4 inputs, got ${ctx.inputs.length}`);
  const [x, w, res, bias] = ctx.inputs;
  gemm(ctx, 'matmul_add', x, w, bias, res);
};

/** matmul_glu(x[R, K], w[2I, K] (, bias[2I])) -> y[R, I] = act(gate) * up, w's rows (and bias) in (gate, up) pairs; attrs.act silu, gelu, gelu_tanh */
export const matmulGlu: CudaOp = (ctx) => {
  if (ctx.inputs.length !== 2 && ctx.inputs.length !== 3) throw new Error(`matmul_glu: expects 2 or 3 inputs, got ${ctx.inputs.length}`);
  const [x, w, bias] = ctx.inputs;
  gemm(ctx, 'matmul_glu', x, w, bias, undefined, actCode('matmul_glu', ctx.attrs.act));
};

/**
 * matmul_rope_kv(x[T, K], w[(H + 2 KV) hd, K], positions[T], cache, slots[T] (, bias)) -> (q[T, H hd],
 * cache): w's q and k heads in rope_rows order, so each rotary pair is a pair of neighbouring
 * columns; the epilogue rotates them, stores q, and writes k and v into the cache at slots[t].
 * attrs numHeads, numKvHeads, headDim, rope (null: no rotation), rmsEps
 */
export const matmulRopeKv: CudaOp = (ctx) => {
  const op = 'matmul_rope_kv';
  if (ctx.inputs.length !== 5 && ctx.inputs.length !== 6) throw new Error(`${op}: expects 5 or 6 inputs, got ${ctx.inputs.length}`);
  const [x, w, positions, cache, slots, bias] = ctx.inputs;
  const [q, cacheOut] = ctx.outputs;
  if (cacheOut.ptr !== cache.ptr) throw new Error(`${op} must update its cache in place`);
  expectDType(op, 'positions', positions, 'i32');
  expectDType(op, 'slots', slots, 'i32');
  if (cache.dtype !== x.dtype) throw new Error(`${op}: cache ${fmt(cache)} must be ${x.dtype} like x`);
  const heads = ctx.attrs.numHeads as number, kvHeads = ctx.attrs.numKvHeads as number, hd = ctx.attrs.headDim as number;
  const { k: cacheK, numSlots } = cacheHalves(op, cache, kvHeads, hd);
  const T = x.shape[0];
  if (positions.shape[0] < T || slots.shape[0] < T) throw new Error(`${op}: positions ${fmt(positions)} and slots ${fmt(slots)} must cover the ${T} rows of x`);
  if (hd % 2 !== 0 || w.shape[0] !== (heads + 2 * kvHeads) * hd) throw new Error(`${op}: w ${fmt(w)} is not ${heads} + 2 x ${kvHeads} heads of an even ${hd}`);
  // The cache is written too: it must not share bytes with what the GEMM reads or with q.
  if (overlaps(cache, q) || overlaps(cache, x)) throw new Error(`${op}: the cache overlaps x or q`);
  const freq = ctx.attrs.rope ? ropeInvFreqOn(ctx, ctx.attrs.rope as Attrs, op, hd) : { ptr: 0n, rotaryDim: 0 };
  gemm(ctx, op, x, w, bias, undefined, GLU_NONE, {
    ropePositions: positions.ptr,
    ropeSlots: slots.ptr,
    ropeInvFreq: freq.ptr,
    ropeCache: cacheK,
    ropeQCols: heads * hd,
    ropeHeadDim: hd,
    ropeRotaryDim: freq.rotaryDim,
    ropeNumSlots: numSlots,
  });
};

function gemm(
  ctx: CudaOpContext,
  op: 'matmul' | 'matmul_add' | 'matmul_glu' | 'matmul_rope_kv',
  x: DeviceTensor | undefined,
  w: DeviceTensor | undefined,
  bias: DeviceTensor | undefined,
  res: DeviceTensor | undefined,
  glu = GLU_NONE,
  rope: RopeKvOperands = NO_ROPE,
): void {
  const y = ctx.outputs[0];
  function fail(why: string): never {
    throw new Error(`${op}: ${why} (x ${fmt(x)}, w ${fmt(w)}${res ? `, res ${fmt(res)}` : ''}${bias ? `, bias ${fmt(bias)}` : ''}, y ${fmt(y)})`);
  }
  if (!x || !w || !y || (op === 'matmul_add' && !res)) fail('missing operand');
  if (x.shape.length !== 2 || w.shape.length !== 2) fail('x and w must be matrices');
  const [R, K] = x.shape, N = w.shape[0];
  if (w.shape[1] !== K) fail(`x and w disagree on K`);
  if (x.dtype !== w.dtype || (x.dtype !== 'bf16' && x.dtype !== 'f16')) fail('x and w must both be bf16 or both f16');
  const dtype = storageOf(op, [
    ['x', x],
    ['w', w],
    ['bias', bias],
    ['res', res],
  ]);
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== N)) fail(`bias must be [${N}] ${dtype}`);
  if (res && (res.shape.length !== 2 || res.shape[0] !== R || res.shape[1] !== N)) fail(`res must be [${R}, ${N}] ${dtype}`);
  if (y.dtype !== dtype && (y.dtype !== 'f32' || res)) fail(res ? `y must be ${dtype}` : `y must be ${dtype} or f32`);
  if (glu !== GLU_NONE && N % 2 !== 0) fail(`w must have an even number of rows (gate, up pairs), not ${N}`);
  const roped = rope.ropeCache !== 0n;
  if (roped && (y.dtype !== dtype || res || N % 2 !== 0)) fail(`q must be ${dtype}, without a residual, and w's rows even`);
  const yCols = roped ? rope.ropeQCols : glu === GLU_NONE ? N : N / 2;
  if (y.shape.length !== 2 || y.shape[0] !== R || y.shape[1] !== yCols) fail(`y must be [${R}, ${yCols}]`);
  if (K % 8 !== 0) fail(`K = ${K} is not a multiple of 8`);
  if (R === 0 || N === 0) return;
  for (const [name, t] of [['x', x], ['w', w], ['y', y], ['bias', bias], ['res', res]] as const) {
    if (t && t.ptr % 16n !== 0n) fail(`${name} is not 16-byte aligned (0x${t.ptr.toString(16)})`);
  }
  // y may be res itself (the planner's in-place sum: each element is read before it is written,
  // by the same thread), not a shifted view of it.
  if (res && res.ptr !== y.ptr && overlaps(res, y)) fail('y overlaps res without being it');
  if (res && overlaps(x, y)) fail('y overlaps x, which the GEMM still reads while y is written');
  const rms = ctx.attrs.rmsEps;
  if (rms !== undefined && (typeof rms !== 'number' || !(rms >= 0))) fail(`attr rmsEps must be a number >= 0, got ${String(rms)}`);
  const outDType: GemmOutDType = y.dtype === 'f32' ? 'f32' : 'bf16';
  const entry = (d: KernelDecl) => forStorage(d, dtype);
  // The folded norm's row scales from ts_row_rstd (the rungs that do not compute them), or null.
  const rowScales = (): bigint => {
    if (rms === undefined) return 0n;
    const rstd = ctx.scratch(4 * R);
    ctx.launch(entry(ROW_RSTD), { grid: [Math.min(ceilDiv(R, 8), 65535), 1, 1], block: [256, 1, 1] }, { rstd, x: x.ptr, rows: R, K, eps: rms });
    return rstd;
  };
  const biasPtr = bias ? bias.ptr : 0n;
  const resPtr = res ? res.ptr : 0n;
  // Asked for (the conformance suite, the benchmark, TESSERA_GEMM), else measured on this GPU
  // model (kernels/choices), else the default.
  const env = process.env.TESSERA_GEMM === 'auto' ? undefined : process.env.TESSERA_GEMM;
  const variant = gemmVariant(R, ctx.attrs.gemmVariant ?? env ?? ctx.gemmChoice?.(R) ?? undefined, ctx.device.computeCapability[0]);
  if (variant === 'gemv') {
    const maxR = GEMV_MAX_R.find((m) => m >= R)!;
    ctx.launch(entry(GEMV_KERNELS[maxR][outDType]), { grid: [ceilDiv(N, GEMV_ROWS), 1, 1], block: [GEMV_THREADS, 1, 1] }, { y: y.ptr, x: x.ptr, w: w.ptr, bias: biasPtr, res: resPtr, R, N, K, glu, rmsEps: rms ?? -1, ...rope });
    return;
  }
  // K = 0 (y = bias, + res) has no tiles for TMA to load: the tile kernel takes it.
  if (variant === 'sm90k' && K > 0) {
    const tmX = ctx.tensorMap2d(x, [GEMM_SM90K.bm, GEMM_SM90K.bk], '128B');
    const tmW = ctx.tensorMap2d(w, [GEMM_SM90K.bn, GEMM_SM90K.bk], '128B');
    const p = gemmSm90kPlan(R, N, K, ctx.device.multiprocessors);
    const rstd = rowScales();
    // One counter a tile, zero between launches (the last block to arrive on a tile zeroes it).
    const counters = ctx.counters(p.tiles);
    const ws = p.workspaceBytes > 0 ? ctx.scratch(p.workspaceBytes) : 0n;
    if (ws % 16n !== 0n) fail(`scratch is not 16-byte aligned (0x${ws.toString(16)})`);
    ctx.launch(entry(GEMM_SM90K_KERNELS[outDType]), { grid: [p.grid, 1, 1], block: [GEMM_SM90K.threads, 1, 1], sharedBytes: GEMM_SM90K.sharedBytes }, {
      tmX,
      tmW,
      y: y.ptr,
      bias: biasPtr,
      res: resPtr,
      ws,
      counters,
      M: R,
      N,
      K,
      dpTiles: p.dpTiles,
      kTilesPerBlock: p.kTilesPerBlock,
      glu,
      rstd,
      ...rope,
    });
    return;
  }
  if ((variant === 'sm90c' || variant === 'sm90pc') && K > 0) {
    const cfg = variant === 'sm90c' ? GEMM_SM90C : GEMM_SM90PC;
    const tmX = ctx.tensorMap2d(x, [cfg.bm, cfg.bk], '128B');
    const tmW = ctx.tensorMap2d(w, [cfg.bn / cfg.cluster, cfg.bk], '128B');
    const decl = entry((variant === 'sm90c' ? GEMM_SM90C_KERNELS : GEMM_SM90PC_KERNELS)[outDType]);
    const base: Launch = { grid: [cfg.cluster, 1, 1], block: [cfg.threads, 1, 1], sharedBytes: cfg.sharedBytes, cluster: [cfg.cluster, 1, 1] };
    const grid = gemmSm90cGrid(R, N, maxClusters(ctx, decl, base), cfg.bn);
    const rstd = rowScales();
    ctx.launch(decl, { ...base, grid: [grid, 1, 1] }, { tmX, tmW, y: y.ptr, bias: biasPtr, res: resPtr, M: R, N, K, splits: 1, kTilesPerSplit: ceilDiv(K, cfg.bk), glu, rstd, ...rope });
    return;
  }
  if (variant === 'sm90p' && K > 0) {
    const tmX = ctx.tensorMap2d(x, [GEMM_SM90P.bm, GEMM_SM90P.bk], '128B');
    const tmW = ctx.tensorMap2d(w, [GEMM_SM90P.bn, GEMM_SM90P.bk], '128B');
    const grid = gemmSm90Grid(R, N, ctx.device.multiprocessors, 1, GEMM_SM90P.bn);
    const rstd = rowScales();
    ctx.launch(entry(GEMM_SM90P_KERNELS[outDType]), { grid: [grid, 1, 1], block: [GEMM_SM90P.threads, 1, 1], sharedBytes: GEMM_SM90P.sharedBytes }, {
      tmX,
      tmW,
      y: y.ptr,
      bias: biasPtr,
      res: resPtr,
      M: R,
      N,
      K,
      splits: 1,
      kTilesPerSplit: ceilDiv(K, GEMM_SM90P.bk),
      glu,
      rstd,
      ...rope,
    });
    return;
  }
  if ((variant === 'sm90' || variant === 'sm90s') && K > 0) {
    const tmX = ctx.tensorMap2d(x, [GEMM_SM90.bm, GEMM_SM90.bk], '128B');
    const tmW = ctx.tensorMap2d(w, [GEMM_SM90.bn, GEMM_SM90.bk], '128B');
    const p = gemmSm90Plan(R, N, K, ctx.device.multiprocessors, elementBytes(y.dtype) / (glu === GLU_NONE ? 1 : 2), !!res, variant === 'sm90s' ? GEMM_SM90_MAX_SPLITS : 1);
    const launch = { grid: [p.grid, 1, 1] as [number, number, number], block: [GEMM_SM90.threads, 1, 1] as [number, number, number], sharedBytes: GEMM_SM90.sharedBytes };
    const rstd = rowScales();
    if (p.splits === 1) {
      ctx.launch(entry(GEMM_SM90_KERNELS[outDType]), launch, { tmX, tmW, y: y.ptr, bias: biasPtr, res: resPtr, M: R, N, K, splits: 1, kTilesPerSplit: p.kTilesPerSplit, glu, rstd, ...rope });
      return;
    }
    const ws = ctx.scratch(p.workspaceBytes);
    if (ws % 16n !== 0n) fail(`scratch is not 16-byte aligned (0x${ws.toString(16)})`);
    // The partials are scaled by the row scales already (the sum is linear): the reduce adds them up.
    ctx.launch(entry(GEMM_SM90_KERNELS.f32), launch, { tmX, tmW, y: ws, bias: 0n, res: 0n, M: R, N, K, splits: p.splits, kTilesPerSplit: p.kTilesPerSplit, glu: GLU_NONE, rstd, ...NO_ROPE });
    reduceSplits(ctx, entry, outDType, y.ptr, ws, biasPtr, resPtr, R, N, p.splits, glu, rope);
    return;
  }
  const plan = gemmPlan(R, N, K, ctx.device.multiprocessors);
  const merge = ctx.attrs.gemmSplitMerge ?? 'fused';
  if (merge !== 'fused' && merge !== 'separate') fail(`attr gemmSplitMerge must be fused or separate, got ${String(merge)}`);
  // A folded norm: the 16-, 32- and 64-row tiles at up to 64 rows compute their rows' scales from
  // their A fragments, the splits' sums beside their partial tiles in ws; the 16-row tile writing
  // partials for the separate reduce from x read from L2 (the warps' sums and the scales, 4 bytes
  // each a row, in shared memory past the stages); the others read them from ts_row_rstd's output.
  const separate = plan.splits > 1 && merge === 'separate';
  const l2Rows = separate && plan.tile.bm <= GEMM_RMS_IN_BLOCK_MAX_BM;
  const fragRows = !separate && plan.tile.bm <= 64 && R <= GEMM_RMS_FRAGMENT_MAX_R;
  const inBlock = rms !== undefined && (l2Rows || fragRows);
  const launch = { grid: plan.grid, block: plan.block, sharedBytes: plan.tile.sharedBytes + (inBlock && l2Rows ? 4 * plan.tile.bm * (plan.tile.warps + 1) : 0) };
  const decls = GEMM_KERNELS[plan.tile.name];
  const operands = { x: x.ptr, w: w.ptr, R, N, K, kTilesPerSplit: plan.kTilesPerSplit, glu, rstd: inBlock ? 0n : rowScales(), rmsEps: inBlock ? rms : -1, ...rope };
  if (plan.splits === 1) {
    ctx.launch(entry(decls[outDType]), launch, { ...operands, y: y.ptr, bias: biasPtr, res: resPtr, ws: 0n, counters: 0n });
    return;
  }
  const ws = ctx.scratch(plan.workspaceBytes + (inBlock && fragRows ? 4 * plan.splits * plan.grid[0] * plan.tile.bm : 0));
  if (ws % 16n !== 0n) fail(`scratch is not 16-byte aligned (0x${ws.toString(16)})`);
  if (merge === 'fused') {
    // One counter per tile (blockIdx.x); the last split to arrive merges and resets it.
    ctx.launch(entry(decls[outDType]), launch, { ...operands, y: y.ptr, bias: biasPtr, res: resPtr, ws, counters: ctx.counters(plan.tilesM * plan.tilesN) });
    return;
  }
  ctx.launch(entry(decls.f32), launch, { ...operands, y: ws, bias: 0n, res: 0n, ws: 0n, counters: 0n, glu: GLU_NONE, ...NO_ROPE });
  reduceSplits(ctx, entry, outDType, y.ptr, ws, biasPtr, resPtr, R, N, plan.splits, glu, rope);
}

/** y = the sum of the f32 partials ws [splits, R, N] (+ bias) (+ res); with glu, y [R, N / 2] gated; with rope, matmul_rope_kv's epilogue. */
function reduceSplits(
  ctx: CudaOpContext,
  entry: (d: KernelDecl) => KernelDecl,
  outDType: GemmOutDType,
  y: bigint,
  ws: bigint,
  bias: bigint,
  res: bigint,
  R: number,
  N: number,
  splits: number,
  glu: number,
  rope: RopeKvOperands,
): void {
  // A thread a pair of columns with glu or rope, else a thread an element.
  const threads = glu === GLU_NONE && rope.ropeCache === 0n ? R * N : (R * N) / 2;
  const reduceBlocks = Math.max(1, Math.min(ceilDiv(threads, REDUCE_BLOCK), 4 * Math.max(1, ctx.device.multiprocessors)));
  ctx.launch(entry(GEMM_SPLITK_REDUCE[outDType]), { grid: [reduceBlocks, 1, 1], block: [REDUCE_BLOCK, 1, 1] }, { y, ws, bias, res, R, N, splits, glu, ...rope });
}

/** Whether two tensors' byte ranges meet. */
function overlaps(a: DeviceTensor, b: DeviceTensor): boolean {
  const end = (t: DeviceTensor) => t.ptr + BigInt(t.shape.reduce((p, d) => p * d, 1) * elementBytes(t.dtype));
  return a.ptr < end(b) && b.ptr < end(a);
}

export const DECLS: KernelDecl[] = [
  ...Object.values(GEMM_KERNELS).flatMap((byDType) => OUT_DTYPES.map((d) => byDType[d])),
  ...GEMV_MAX_R.flatMap((m) => OUT_DTYPES.map((d) => GEMV_KERNELS[m][d])),
  GEMM_SM90_KERNELS.bf16,
  GEMM_SM90_KERNELS.f32,
  GEMM_SM90P_KERNELS.bf16,
  GEMM_SM90P_KERNELS.f32,
  GEMM_SM90K_KERNELS.bf16,
  GEMM_SM90K_KERNELS.f32,
  GEMM_SM90C_KERNELS.bf16,
  GEMM_SM90C_KERNELS.f32,
  GEMM_SM90PC_KERNELS.bf16,
  GEMM_SM90PC_KERNELS.f32,
  GEMM_SPLITK_REDUCE.bf16,
  GEMM_SPLITK_REDUCE.f32,
];
