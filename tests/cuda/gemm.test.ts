/**
 * The matmul launcher's host-side logic, without a GPU: the tile table against the kernel source,
 * tile and split-K selection (gemmPlan) for the Llama-3-8B projections and the tiny test shapes,
 * what gets launched with which arguments, and the validation errors.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Attrs } from '../../src/graph/ir.js';
import { forStorage, packArgs, withStorageTwins, type KernelDecl } from '../../src/backend/cuda/kernel_decl.js';
import {
  DECLS,
  GEMM_BK,
  GEMM_KERNELS,
  GEMM_MAX_SPLITS,
  GEMM_MAX_WORKSPACE_BYTES,
  GEMM_SPLITK_REDUCE,
  GEMM_SPLIT_MIN_K_TILES,
  GEMM_TILES,
  gemmPlan,
  matmul,
  matmulAdd,
  matmulGlu,
  matmulRopeKv,
  type GemmTileName,
} from '../../src/backend/cuda/ops/gemm.js';
import type { CudaOpContext, Launch } from '../../src/backend/cuda/ops/types.js';
import { fakeDevice, tensor, type Recorded } from './fake_device.js';

/** The matmul_rope_kv epilogue's operands, off: every GEMM launch but matmul_rope_kv's carries them. */
const NO_ROPE = { ropePositions: 0n, ropeSlots: 0n, ropeInvFreq: 0n, ropeCache: 0n, ropeQCols: 0, ropeHeadDim: 0, ropeRotaryDim: 0, ropeNumSlots: 0 };
const ROPE_PARAMS = ['ropePositions:ptr', 'ropeSlots:ptr', 'ropeInvFreq:ptr', 'ropeCache:ptr', 'ropeQCols:i32', 'ropeHeadDim:i32', 'ropeRotaryDim:i32', 'ropeNumSlots:i32'];

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/gemm.cu'), 'utf8');
const GEMV_SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/gemv.cu'), 'utf8');
const SM90_SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/gemm_sm90.cu'), 'utf8');

/**
 * The entry names a kernel file's per-configuration macro makes: each `PER_CONFIG(a, b, ...)` line
 * expanded through the `NAME_PREFIX##A##x##B##_suffix`-style names of its definition (the
 * preprocessor's pasting, for the names only).
 */
function macroEntryNames(source: string, perConfig: string, params: string[]): string[] {
  const def = new RegExp(`#define ${perConfig}\\(([^)]*)\\)((?:.*\\\\\n)*.*)`).exec(source);
  if (!def) throw new Error(`no #define ${perConfig}`);
  const formal = def[1].split(',').map((x) => x.trim());
  const templates = [...def[2].matchAll(/\b(ts_\w*(?:##\w+)+\w*)/g)].map((m) => m[1]);
  const names: string[] = [];
  for (const line of source.matchAll(new RegExp(`^${perConfig}\\(([^)]*)\\)`, 'gm'))) {
    const actual = line[1].split(',').map((x) => x.trim());
    for (const t of templates) names.push(t.split('##').map((part) => (formal.includes(part) ? actual[formal.indexOf(part)] : part)).join(''));
  }
  expect(formal.slice(0, params.length)).toEqual(params);
  return names;
}


/**
 * One matmul launch (matmul_add with `res`: the residual at p.res, which defaults to y's buffer,
 * the in-place sum the planner makes).
 */
function run(opts: { R: number; N: number; K: number; bias?: boolean; res?: boolean; glu?: string; yCols?: number; out?: 'bf16' | 'f16' | 'f32'; storage?: 'bf16' | 'f16'; sms?: number; maxClusters?: number; attrs?: Attrs; ptrs?: Partial<Record<'x' | 'w' | 'b' | 'y' | 'ws' | 'res', bigint>> }) {
  const { R, N, K } = opts;
  const p = { x: 0x1000n, w: 0x2000n, b: 0x3000n, y: 0x4000n, ws: 0x100000n, ...opts.ptrs };
  const launches: Recorded[] = [];
  const scratch: number[] = [];
  const boxes: string[] = [];
  const clusterQueries: Launch[] = [];
  const st = opts.storage ?? 'bf16';
  const inputs = [tensor([R, K], st, p.x), tensor([N, K], st, p.w)];
  if (opts.res) inputs.push(tensor([R, N], st, p.res ?? p.y));
  if (opts.bias) inputs.push(tensor([N], st, p.b));
  const ctx: CudaOpContext = {
    inputs,
    outputs: [tensor([R, opts.yCols ?? (opts.glu ? N / 2 : N)], opts.out ?? st, p.y)],
    attrs: { ...(opts.glu ? { act: opts.glu } : {}), ...opts.attrs },
    step: { numTokens: R, numSeqs: 1, numLogitRows: 1, blockTableWidth: 1, maxContextLen: R, maxQueryLen: R },
    device: fakeDevice(opts.sms ?? 132),
    launch: (decl, launch, args) => {
      // Every declared argument given, nothing else (what the backend's packArgs enforces).
      packArgs(new DataView(new ArrayBuffer(4096)), decl, args);
      launches.push({ decl, launch, args });
    },
    ...(opts.maxClusters !== undefined
      ? {
          maxActiveClusters: (_decl: KernelDecl, launch: Launch) => {
            clusterQueries.push(launch);
            return opts.maxClusters!;
          },
        }
      : {}),
    constant: () => 0n,
    counters: () => 0x5000n,
    scratch: (bytes) => {
      scratch.push(bytes);
      return p.ws;
    },
    tensorMap2d: (t, box) => {
      if (!['sm90', 'sm90s', 'sm90p', 'sm90k', 'sm90c', 'sm90pc'].includes(String(opts.attrs?.gemmVariant))) throw new Error('no tensor maps expected');
      boxes.push([t === inputs[0] ? 'x' : 'w', ...box].join(' '));
      return new Uint8Array(128).fill(t === inputs[0] ? 1 : 2);
    },
    tensorMap: () => {
      throw new Error('no tensor maps expected');
    },
  };
  (opts.glu ? matmulGlu : opts.res ? matmulAdd : matmul)(ctx);
  return { launches, scratch, boxes, clusterQueries };
}

const LLAMA3_8B: Array<[string, number, number]> = [
  ['qkv', 6144, 4096],
  ['o', 4096, 4096],
  ['gate_up', 28672, 4096],
  ['down', 4096, 14336],
  ['lm_head', 128256, 4096],
];

describe('gemm tile table', () => {
  it('matches the TS_GEMM_ENTRIES lines of kernels/gemm.cu', () => {
    const found = [...SOURCE.matchAll(/^TS_GEMM_ENTRIES\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)/gm)];
    expect(found.length).toBe(Object.keys(GEMM_TILES).length);
    for (const [, bm, bn, wm, wn, stages] of found) {
      const tile = GEMM_TILES[`${bm}x${bn}` as GemmTileName];
      expect(tile, `${bm}x${bn}`).toBeDefined();
      expect([tile.bm, tile.bn, tile.warps, tile.stages]).toEqual([+bm, +bn, +wm * +wn, +stages]);
    }
    expect(SOURCE).toContain(`constexpr int BK = ${GEMM_BK};`);
  });

  it('declares one kernel per tile and output dtype, the split-K reductions and the GEMV entries, all distinct, and each one\'s fp16 twin', () => {
    const names = DECLS.map((d) => d.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names.length).toBe(2 * Object.keys(GEMM_TILES).length + 2 + 2 * 4 + 2 + 2 + 2 + 2 + 2);
    // Every entry the sources make, bf16 and fp16: exactly the declarations and their twins.
    const sourceNames = [
      ...macroEntryNames(SOURCE, 'TS_GEMM_ENTRIES', ['BM', 'BN']),
      ...[...SOURCE.matchAll(/^TS_REDUCE_ENTRY\((\w+),/gm)].map((m) => m[1]),
      ...macroEntryNames(GEMV_SOURCE, 'TS_GEMV_ENTRIES', ['MAXR']),
      ...[...SM90_SOURCE.matchAll(/^TS_GEMM_SM90K?_ENTRY\((\w+),/gm)].map((m) => m[1]),
    ];
    expect(sourceNames.sort()).toEqual(withStorageTwins(DECLS).map((d) => d.name).sort());
    expect(GEMM_KERNELS['128x128'].f32.params.map(([n, t]) => `${n}:${t}`)).toEqual(['y:ptr', 'x:ptr', 'w:ptr', 'bias:ptr', 'res:ptr', 'ws:ptr', 'counters:ptr', 'R:i32', 'N:i32', 'K:i32', 'kTilesPerSplit:i32', 'glu:i32', 'rstd:ptr', 'rmsEps:f32', ...ROPE_PARAMS]);
    expect(GEMM_SPLITK_REDUCE.bf16.params.map(([n, t]) => `${n}:${t}`)).toEqual(['y:ptr', 'ws:ptr', 'bias:ptr', 'res:ptr', 'R:i32', 'N:i32', 'splits:i32', 'glu:i32', ...ROPE_PARAMS]);
  });

  it('keeps every config within 48 KiB of dynamic shared memory', () => {
    for (const t of Object.values(GEMM_TILES)) {
      expect(t.sharedBytes).toBe(t.stages * (t.bm + t.bn) * t.bk * 2);
      expect(t.sharedBytes).toBeLessThanOrEqual(48 * 1024);
    }
  });
});

describe('gemmPlan', () => {
  it.each([
    [1, '16x128'],
    [16, '16x128'],
    [17, '32x128'],
    [32, '32x128'],
    [33, '64x128'],
    [64, '64x128'],
    [65, '128x128'],
    [8192, '128x128'],
  ] as Array<[number, GemmTileName]>)('R = %i on Llama-3-8B gate_up (N = 28672) uses %s', (R, name) => {
    expect(gemmPlan(R, 28672, 4096, 132).tile.name).toBe(name);
  });

  it('falls back to 64x128 when 128x128 tiles would not make a wave', () => {
    expect(gemmPlan(512, 4096, 4096, 132).tile.name).toBe('64x128'); // 4 x 32 = 128 tiles < 132 SMs
    expect(gemmPlan(640, 4096, 4096, 132).tile.name).toBe('128x128'); // 5 x 32 = 160
    expect(gemmPlan(512, 4096, 4096, 108).tile.name).toBe('128x128'); // A100: 128 >= 108
  });

  it('splits K for decode when N alone does not fill the GPU', () => {
    const o = gemmPlan(1, 4096, 4096, 132);
    expect(o.tile.name).toBe('16x128');
    expect([o.tilesM, o.tilesN, o.splits, o.kTilesPerSplit]).toEqual([1, 32, 8, 16]);
    expect(o.grid).toEqual([32, 1, 8]);
    expect(o.block).toEqual([128, 1, 1]);
    expect(o.workspaceBytes).toBe(8 * 4096 * 4);
    const down = gemmPlan(1, 4096, 14336, 132);
    expect([down.splits, down.kTilesPerSplit]).toEqual([8, 56]);
    const qkv = gemmPlan(1, 6144, 4096, 132);
    expect([qkv.tilesN, qkv.splits, qkv.kTilesPerSplit]).toEqual([48, 6, 22]); // 128 k-tiles: 5 x 22 + 18
    const lm = gemmPlan(1, 128256, 4096, 132);
    expect([lm.tilesN, lm.splits, lm.workspaceBytes]).toEqual([1002, 1, 0]);
  });

  it('gives the Llama-3-8B decode projections the plans the kernel header states', () => {
    const plans = LLAMA3_8B.map(([name, N, K]) => {
      const p = gemmPlan(1, N, K, 132);
      return `${name} ${p.tile.name} ${p.tilesN}x${p.splits}`;
    });
    expect(plans).toEqual(['qkv 16x128 48x6', 'o 16x128 32x8', 'gate_up 16x128 224x2', 'down 16x128 32x8', 'lm_head 16x128 1002x1']);
    expect(gemmPlan(65, 28672, 4096, 132).tile.name).toBe('128x128');
    expect(gemmPlan(65, 128256, 4096, 132).tile.name).toBe('128x128');
    expect(gemmPlan(512, 4096, 4096, 132).tile.name).toBe('64x128');
    expect(gemmPlan(513, 4096, 4096, 132).tile.name).toBe('128x128');
  });

  it('does not split prefill shapes', () => {
    for (const [, N, K] of LLAMA3_8B) {
      const p = gemmPlan(8192, N, K, 132);
      expect(p.tile.name).toBe('128x128');
      expect(p.splits).toBe(1);
      expect(p.grid).toEqual([64 * Math.ceil(N / 128), 1, 1]);
      expect(p.block).toEqual([256, 1, 1]);
    }
  });

  it('needs at least two splits of 4 k-tiles before splitting', () => {
    expect(gemmPlan(1, 8, 224, 132).splits).toBe(1); // 7 k-tiles
    expect(gemmPlan(1, 8, 256, 132).splits).toBe(2); // 8 k-tiles
    expect(gemmPlan(1, 8, 32, 132).splits).toBe(1);
    expect(gemmPlan(1, 8, 0, 132)).toMatchObject({ splits: 1, kTilesPerSplit: 1 });
  });

  it('covers every k-tile with non-empty splits and bounded workspace, for all shapes', () => {
    const Rs = [1, 2, 3, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 511, 512, 640, 1000, 2048, 8192];
    const shapes: Array<[number, number]> = [...LLAMA3_8B.map(([, N, K]) => [N, K] as [number, number])];
    for (const K of [8, 32, 40, 64, 128, 136, 256]) for (const N of [1, 8, 9, 127, 128, 129, 520, 1536]) shapes.push([N, K]);
    for (const sms of [1, 28, 46, 84, 108, 132])
      for (const R of Rs)
        for (const [N, K] of shapes) {
          const p = gemmPlan(R, N, K, sms);
          const kTiles = Math.ceil(K / GEMM_BK);
          const what = `R ${R} N ${N} K ${K} sms ${sms}`;
          expect(p.tilesM * p.tile.bm, what).toBeGreaterThanOrEqual(R);
          expect((p.tilesM - 1) * p.tile.bm, what).toBeLessThan(R);
          expect((p.tilesN - 1) * p.tile.bn, what).toBeLessThan(N);
          expect(p.grid, what).toEqual([p.tilesM * p.tilesN, 1, p.splits]);
          expect(p.block, what).toEqual([p.tile.warps * 32, 1, 1]);
          expect(p.splits, what).toBeGreaterThanOrEqual(1);
          expect(p.splits, what).toBeLessThanOrEqual(GEMM_MAX_SPLITS);
          expect(p.splits * p.kTilesPerSplit, what).toBeGreaterThanOrEqual(kTiles);
          if (p.splits > 1) {
            expect((p.splits - 1) * p.kTilesPerSplit, what).toBeLessThan(kTiles); // the last split is not empty
            expect(p.kTilesPerSplit, what).toBeGreaterThanOrEqual(GEMM_SPLIT_MIN_K_TILES);
            expect(p.workspaceBytes, what).toBe(p.splits * R * N * 4);
            expect(p.workspaceBytes, what).toBeLessThanOrEqual(GEMM_MAX_WORKSPACE_BYTES);
          } else expect(p.workspaceBytes, what).toBe(0);
          if (R <= 16) expect(p.tile.name, what).toBe('16x128');
          else if (R <= 32) expect(p.tile.name, what).toBe('32x128');
        }
  });
});

describe('matmul launcher', () => {
  it('launches one tile kernel with the bias when K is not split', () => {
    const { launches, scratch } = run({ R: 8192, N: 4096, K: 4096, bias: true });
    expect(scratch).toEqual([]);
    expect(launches).toHaveLength(1);
    const [l] = launches;
    expect(l.decl.name).toBe('ts_gemm_128x128_bf16');
    expect(l.launch).toEqual({ grid: [64 * 32, 1, 1], block: [256, 1, 1], sharedBytes: 48 * 1024 });
    expect(l.args).toEqual({ y: 0x4000n, x: 0x1000n, w: 0x2000n, bias: 0x3000n, res: 0n, ws: 0n, counters: 0n, R: 8192, N: 4096, K: 4096, kTilesPerSplit: 128, glu: -1, rstd: 0n, rmsEps: -1, ...NO_ROPE });
  });

  it('picks the f32 kernel for f32 logits and passes a null bias when there is none', () => {
    const { launches } = run({ R: 1, N: 128256, K: 4096, out: 'f32' });
    expect(launches.map((l) => l.decl.name)).toEqual(['ts_gemm_16x128_bf16_f32']);
    expect(launches[0].args.bias).toBe(0n);
    expect(launches[0].launch.sharedBytes).toBe(GEMM_TILES['16x128'].sharedBytes);
  });

  it.each(['bf16', 'f32'] as const)('splits K into f32 partials in scratch that the last split of each tile merges, with the bias, into %s: one launch', (out) => {
    const { launches, scratch } = run({ R: 1, N: 4096, K: 4096, bias: true, out });
    expect(scratch).toEqual([8 * 4096 * 4]);
    expect(launches.map((l) => l.decl.name)).toEqual([out === 'f32' ? 'ts_gemm_16x128_bf16_f32' : 'ts_gemm_16x128_bf16']);
    expect(launches[0].launch.grid).toEqual([32, 1, 8]);
    // One counter a tile (32 tiles), from the backend's zeroed area.
    expect(launches[0].args).toEqual({ y: 0x4000n, x: 0x1000n, w: 0x2000n, bias: 0x3000n, res: 0n, ws: 0x100000n, counters: 0x5000n, R: 1, N: 4096, K: 4096, kTilesPerSplit: 16, glu: -1, rstd: 0n, rmsEps: -1, ...NO_ROPE });
    expect(() => run({ R: 1, N: 4096, K: 4096, attrs: { gemmSplitMerge: 'later' } })).toThrow(/matmul: attr gemmSplitMerge must be fused or separate, got later/);
  });

  it.each(['bf16', 'f32'] as const)('with gemmSplitMerge separate, splits K into f32 partials in scratch, then reduces with the bias into %s', (out) => {
    const { launches, scratch } = run({ R: 1, N: 4096, K: 4096, bias: true, out, attrs: { gemmSplitMerge: 'separate' } });
    expect(scratch).toEqual([8 * 4096 * 4]);
    expect(launches.map((l) => l.decl.name)).toEqual(['ts_gemm_16x128_bf16_f32', out === 'f32' ? 'ts_gemm_splitk_reduce_bf16_f32' : 'ts_gemm_splitk_reduce_bf16']);
    const [gemm, reduce] = launches;
    expect(gemm.launch.grid).toEqual([32, 1, 8]);
    expect(gemm.args).toMatchObject({ y: 0x100000n, bias: 0n, res: 0n, ws: 0n, counters: 0n, R: 1, N: 4096, K: 4096, kTilesPerSplit: 16 });
    expect(reduce.args).toEqual({ y: 0x4000n, ws: 0x100000n, bias: 0x3000n, res: 0n, R: 1, N: 4096, splits: 8, glu: -1, ...NO_ROPE });
    expect(reduce.launch.block).toEqual([256, 1, 1]);
    expect(reduce.launch.grid).toEqual([16, 1, 1]);
  });

  it('runs the fp16 entries for fp16 operands: tiles, split-K merged and with its reduce, GEMV, the Hopper kernel', () => {
    expect(run({ R: 8192, N: 4096, K: 4096, bias: true, storage: 'f16' }).launches.map((l) => l.decl.name)).toEqual(['ts_gemm_128x128_f16']);
    expect(run({ R: 1, N: 4096, K: 4096, bias: true, storage: 'f16' }).launches.map((l) => l.decl.name)).toEqual(['ts_gemm_16x128_f16']);
    const separate = { gemmSplitMerge: 'separate' };
    expect(run({ R: 1, N: 4096, K: 4096, bias: true, storage: 'f16', attrs: separate }).launches.map((l) => l.decl.name)).toEqual(['ts_gemm_16x128_f16_f32', 'ts_gemm_splitk_reduce_f16']);
    expect(run({ R: 1, N: 4096, K: 4096, storage: 'f16', out: 'f32', attrs: separate }).launches.map((l) => l.decl.name)).toEqual(['ts_gemm_16x128_f16_f32', 'ts_gemm_splitk_reduce_f16_f32']);
    expect(run({ R: 2, N: 64, K: 64, storage: 'f16', attrs: { gemmVariant: 'gemv' } }).launches.map((l) => l.decl.name)).toEqual(['ts_gemv_r2_f16']);
    expect(forStorage(GEMM_KERNELS['64x128'].bf16, 'f16').name).toBe('ts_gemm_64x128_f16');
    expect(forStorage(GEMM_KERNELS['64x128'].bf16, 'bf16')).toBe(GEMM_KERNELS['64x128'].bf16);
    // One storage type for x, w and bias; y is it or f32.
    expect(() => run({ R: 2, N: 8, K: 32, storage: 'f16', out: 'bf16' })).toThrow(/matmul: y must be f16 or f32/);
  });

  it('matmul_glu: the gated unit in every rung, y [R, N / 2], the split partials and the rung before them ungated', () => {
    // glu is the activation's code (silu 0, gelu 1, gelu_tanh 2) where y is written, GLU_NONE (-1) where partials are.
    const tiles = run({ R: 8192, N: 28672, K: 4096, glu: 'silu' }).launches;
    expect(tiles.map((l) => [l.decl.name, l.args.glu, l.args.N])).toEqual([['ts_gemm_128x128_bf16', 0, 28672]]);
    const merged = run({ R: 1, N: 4096, K: 4096, bias: true, glu: 'gelu' }).launches;
    expect(merged.map((l) => [l.decl.name, l.args.glu, l.args.ws])).toEqual([['ts_gemm_16x128_bf16', 1, 0x100000n]]);
    const separate = run({ R: 1, N: 4096, K: 4096, glu: 'gelu_tanh', attrs: { gemmSplitMerge: 'separate' } }).launches;
    expect(separate.map((l) => [l.decl.name, l.args.glu])).toEqual([
      ['ts_gemm_16x128_bf16_f32', -1],
      ['ts_gemm_splitk_reduce_bf16', 2],
    ]);
    // The reduce covers the R N / 2 outputs: 2048 at 256 a block.
    expect(separate[1].launch.grid).toEqual([8, 1, 1]);
    expect(run({ R: 2, N: 64, K: 64, glu: 'silu', attrs: { gemmVariant: 'gemv' } }).launches.map((l) => [l.decl.name, l.args.glu])).toEqual([['ts_gemv_r2_bf16', 0]]);
    for (const v of ['sm90', 'sm90p', 'sm90k', 'sm90c', 'sm90pc'])
      expect(run({ R: 1024, N: 4096, K: 4096, glu: 'silu', maxClusters: 66, attrs: { gemmVariant: v } }).launches.map((l) => l.args.glu), v).toEqual([0]);
    const sm90s = run({ R: 256, N: 4096, K: 4096, glu: 'silu', attrs: { gemmVariant: 'sm90s' } }).launches;
    expect(sm90s.map((l) => [l.decl.name, l.args.glu])).toEqual([
      ['ts_gemm_sm90_bf16_f32', -1],
      ['ts_gemm_splitk_reduce_bf16', 0],
    ]);
  });

  it('a folded norm (rmsEps): the GEMV and the 16-, 32- and 64-row tiles (to 64 rows) compute the row scales, every other rung gets them from ts_row_rstd', () => {
    const gemv = run({ R: 2, N: 64, K: 64, attrs: { gemmVariant: 'gemv', rmsEps: 1e-5 } }).launches;
    expect(gemv.map((l) => [l.decl.name, l.args.rmsEps])).toEqual([['ts_gemv_r2_bf16', 1e-5]]);
    // 16 rows a tile, K split 8 ways and merged: each block sums its rows' squares from its A
    // fragments, each split's sums past the partial tiles in ws.
    const decode = run({ R: 1, N: 4096, K: 4096, attrs: { rmsEps: 1e-5 } });
    expect(decode.launches.map((l) => [l.decl.name, l.args.rstd, l.args.rmsEps, l.launch.sharedBytes])).toEqual([['ts_gemm_16x128_bf16', 0n, 1e-5, GEMM_TILES['16x128'].sharedBytes]]);
    expect(decode.scratch).toEqual([8 * 1 * 4096 * 4 + 4 * 8 * 32 * 16]);
    // With the separate reduce each split sees a part of K: the 16-row tile reads its rows whole
    // from L2 instead, the 4 warps' sums and the scales in 320 bytes of shared memory past the
    // stages, and scales its partials.
    const separate = run({ R: 1, N: 4096, K: 4096, attrs: { rmsEps: 1e-5, gemmSplitMerge: 'separate' } });
    expect(separate.launches.map((l) => [l.decl.name, l.args.rstd, l.args.rmsEps, l.launch.sharedBytes])).toEqual([
      ['ts_gemm_16x128_bf16_f32', 0n, 1e-5, GEMM_TILES['16x128'].sharedBytes + 320],
      ['ts_gemm_splitk_reduce_bf16', undefined, undefined, undefined],
    ]);
    // 32 and 64 rows a tile, up to 64 rows of x: the sums of squares from the A fragments, each
    // split's beside its partial tile (ws [splits][tiles][BM] f32 after the partials), no launch
    // before and no shared memory more.
    const tiles32 = run({ R: 32, N: 4096, K: 4096, attrs: { rmsEps: 1e-6 } });
    expect(tiles32.launches.map((l) => [l.decl.name, l.args.rstd, l.args.rmsEps, l.launch.sharedBytes, l.launch.grid])).toEqual([
      ['ts_gemm_32x128_bf16', 0n, 1e-6, GEMM_TILES['32x128'].sharedBytes, [32, 1, 8]],
    ]);
    expect(tiles32.scratch).toEqual([8 * 32 * 4096 * 4 + 4 * 8 * 32 * 32]);
    expect(run({ R: 64, N: 4096, K: 4096, attrs: { rmsEps: 1e-6 } }).launches.map((l) => [l.decl.name, l.args.rmsEps])).toEqual([['ts_gemm_64x128_bf16', 1e-6]]);
    // Not with the separate reduce (each split would see its own part of K), nor past 64 rows
    // (where the GEMM is compute-bound and the sums would cost more than ts_row_rstd).
    expect(run({ R: 32, N: 4096, K: 4096, attrs: { rmsEps: 1e-6, gemmSplitMerge: 'separate' } }).launches.map((l) => [l.decl.name, l.args.rmsEps])).toEqual([
      ['ts_row_rstd_bf16', undefined],
      ['ts_gemm_32x128_bf16_f32', -1],
      ['ts_gemm_splitk_reduce_bf16', undefined],
    ]);
    expect(run({ R: 100, N: 4096, K: 4096, attrs: { rmsEps: 1e-6 } }).launches.map((l) => [l.decl.name, l.args.rmsEps])).toEqual([
      ['ts_row_rstd_bf16', undefined],
      ['ts_gemm_64x128_bf16', -1],
    ]);
    // 128 rows a tile: the scales from a launch before, in scratch.
    const prefill = run({ R: 8192, N: 4096, K: 4096, attrs: { rmsEps: 1e-5 } });
    expect(prefill.scratch).toEqual([4 * 8192]);
    expect(prefill.launches.map((l) => l.decl.name)).toEqual(['ts_row_rstd_bf16', 'ts_gemm_128x128_bf16']);
    expect(prefill.launches[0].args).toEqual({ rstd: 0x100000n, x: 0x1000n, rows: 8192, K: 4096, eps: 1e-5 });
    expect(prefill.launches[0].launch).toEqual({ grid: [1024, 1, 1], block: [256, 1, 1] });
    expect(prefill.launches[1].args).toMatchObject({ rstd: 0x100000n, rmsEps: -1 });
    expect(prefill.launches[1].launch.sharedBytes).toBe(GEMM_TILES['128x128'].sharedBytes);
    for (const v of ['sm90', 'sm90p', 'sm90k', 'sm90c', 'sm90pc']) {
      const l = run({ R: 1024, N: 4096, K: 4096, maxClusters: 66, attrs: { gemmVariant: v, rmsEps: 1e-5 } }).launches;
      expect(l.map((x) => x.decl.name)[0], v).toBe('ts_row_rstd_bf16');
      expect(l[l.length - 1].args.rstd, v).toBe(0x100000n);
    }
    // Without one: no scales, no launch.
    expect(run({ R: 1024, N: 4096, K: 4096, attrs: { gemmVariant: 'sm90' } }).launches.map((l) => [l.decl.name, l.args.rstd])).toEqual([['ts_gemm_sm90_bf16', 0n]]);
    expect(() => run({ R: 2, N: 64, K: 64, attrs: { rmsEps: -1 } })).toThrow(/matmul: attr rmsEps must be a number >= 0, got -1/);
  });

  it('matmul_glu refuses an odd N, a y that is not [R, N / 2] and an unknown activation', () => {
    expect(() => run({ R: 2, N: 63, K: 64, glu: 'silu', yCols: 31 })).toThrow(/matmul_glu: w must have an even number of rows \(gate, up pairs\), not 63/);
    expect(() => run({ R: 2, N: 64, K: 64, glu: 'silu', yCols: 64 })).toThrow(/matmul_glu: y must be \[2, 32\]/);
    expect(() => run({ R: 2, N: 64, K: 64, glu: 'swish' })).toThrow(/matmul_glu: unknown activation swish/);
  });

  it('launches nothing for zero rows or zero columns', () => {
    expect(run({ R: 0, N: 64, K: 64 }).launches).toEqual([]);
    expect(run({ R: 4, N: 0, K: 64 }).launches).toEqual([]);
  });

  it('handles K = 0 (y = bias) with one launch', () => {
    const { launches } = run({ R: 3, N: 8, K: 0, bias: true });
    expect(launches).toHaveLength(1);
    expect(launches[0].args).toMatchObject({ K: 0, kTilesPerSplit: 1 });
    // Asked for the Hopper kernel too: it has no k-tile to load (its tensor maps need K >= 1).
    const sm90 = run({ R: 3, N: 8, K: 0, bias: true, attrs: { gemmVariant: 'sm90' } });
    expect(sm90.launches.map((l) => l.decl.name)).toEqual([launches[0].decl.name]);
  });

  it('rejects what the kernels do not handle, naming the op and the shapes', () => {
    expect(() => run({ R: 2, N: 8, K: 36 })).toThrow(/matmul: K = 36 is not a multiple of 8 \(x \[2, 36\] bf16, w \[8, 36\] bf16, y \[2, 8\] bf16\)/);
    expect(() => run({ R: 2, N: 8, K: 32, ptrs: { x: 0x1008n } })).toThrow(/matmul: x is not 16-byte aligned/);
    expect(() => run({ R: 2, N: 8, K: 32, ptrs: { w: 0x2004n } })).toThrow(/matmul: w is not 16-byte aligned/);
    expect(() => run({ R: 2, N: 8, K: 32, ptrs: { y: 0x4002n } })).toThrow(/matmul: y is not 16-byte aligned/);
    expect(() => run({ R: 2, N: 8, K: 32, bias: true, ptrs: { b: 0x3002n } })).toThrow(/matmul: bias is not 16-byte aligned/);
  });

  it('rejects mismatched shapes and dtypes', () => {
    const base = (): CudaOpContext => {
      const ctx = {
        inputs: [tensor([2, 32], 'bf16', 0x1000n), tensor([8, 32], 'bf16', 0x2000n)],
        outputs: [tensor([2, 8], 'bf16', 0x4000n)],
        attrs: {},
        device: { multiprocessors: 132 },
        launch: () => {},
        scratch: () => 0x100000n,
        constant: () => 0n,
        counters: () => 0n,
      };
      return ctx as unknown as CudaOpContext;
    };
    let ctx = base();
    ctx.inputs[1] = tensor([8, 40], 'bf16', 0x2000n);
    expect(() => matmul(ctx)).toThrow(/matmul: x and w disagree on K/);
    ctx = base();
    ctx.inputs[0] = tensor([2, 32], 'f32', 0x1000n);
    expect(() => matmul(ctx)).toThrow(/matmul: x and w must both be bf16 or both f16/);
    ctx = base();
    ctx.inputs[1] = tensor([8, 32], 'f16', 0x2000n);
    expect(() => matmul(ctx)).toThrow(/matmul: x and w must both be bf16 or both f16/);
    ctx = base();
    ctx.inputs.push(tensor([8], 'f16', 0x3000n));
    expect(() => matmul(ctx)).toThrow(/matmul: bias \[8\] is f16, but the other operands are bf16/);
    ctx = base();
    ctx.inputs.push(tensor([7], 'bf16', 0x3000n));
    expect(() => matmul(ctx)).toThrow(/matmul: bias must be \[8\] bf16/);
    ctx = base();
    ctx.outputs[0] = tensor([2, 8], 'i32', 0x4000n);
    expect(() => matmul(ctx)).toThrow(/matmul: y must be bf16 or f32/);
    ctx = base();
    ctx.outputs[0] = tensor([3, 8], 'bf16', 0x4000n);
    expect(() => matmul(ctx)).toThrow(/matmul: y must be \[2, 8\]/);
  });
});

describe('matmul_add launcher (the residual in the epilogue)', () => {
  it('passes the residual to the tile kernel, in place of y', () => {
    // x far from y: the launcher refuses a y that overlaps the x it reads.
    const { launches } = run({ R: 8192, N: 4096, K: 4096, res: true, ptrs: { x: 1n << 32n } });
    expect(launches.map((l) => l.decl.name)).toEqual(['ts_gemm_128x128_bf16']);
    expect(launches[0].args).toEqual({ y: 0x4000n, x: 1n << 32n, w: 0x2000n, bias: 0n, res: 0x4000n, ws: 0n, counters: 0n, R: 8192, N: 4096, K: 4096, kTilesPerSplit: 128, glu: -1, rstd: 0n, rmsEps: -1, ...NO_ROPE });
  });

  it('passes it with split K to the merging tile kernel, or adds it in the separate reduce, not in the partials, after the bias', () => {
    const merged = run({ R: 1, N: 4096, K: 4096, res: true, bias: true, ptrs: { res: 0x8000n } }).launches;
    expect(merged.map((l) => l.decl.name)).toEqual(['ts_gemm_16x128_bf16']);
    expect(merged[0].args).toMatchObject({ y: 0x4000n, bias: 0x3000n, res: 0x8000n, ws: 0x100000n, counters: 0x5000n });
    const { launches } = run({ R: 1, N: 4096, K: 4096, res: true, bias: true, ptrs: { res: 0x8000n }, attrs: { gemmSplitMerge: 'separate' } });
    const [gemm, reduce] = launches;
    expect(gemm.args).toMatchObject({ y: 0x100000n, bias: 0n, res: 0n });
    expect(reduce.decl.name).toBe('ts_gemm_splitk_reduce_bf16');
    expect(reduce.args).toEqual({ y: 0x4000n, ws: 0x100000n, bias: 0x3000n, res: 0x8000n, R: 1, N: 4096, splits: 8, glu: -1, ...NO_ROPE });
  });

  it('passes it to the GEMV and the Hopper kernel, in both storage types', () => {
    const gemv = run({ R: 2, N: 64, K: 64, res: true, storage: 'f16', attrs: { gemmVariant: 'gemv' } }).launches;
    expect(gemv.map((l) => l.decl.name)).toEqual(['ts_gemv_r2_f16']);
    expect(gemv[0].args).toMatchObject({ y: 0x4000n, res: 0x4000n, bias: 0n });
    const sm90 = run({ R: 300, N: 4096, K: 4096, res: true, bias: true, attrs: { gemmVariant: 'sm90' }, ptrs: { x: 1n << 32n } }).launches;
    expect(sm90.map((l) => l.decl.name)).toEqual(['ts_gemm_sm90_bf16']);
    expect(sm90[0].args).toMatchObject({ y: 0x4000n, bias: 0x3000n, res: 0x4000n, M: 300, N: 4096, K: 4096, splits: 1 });
    // sm90s splitting K: the partials carry neither; the reduce adds both.
    const sm90s = run({ R: 256, N: 4096, K: 4096, res: true, bias: true, attrs: { gemmVariant: 'sm90s' }, ptrs: { x: 1n << 32n } }).launches;
    expect(sm90s.map((l) => l.decl.name)).toEqual(['ts_gemm_sm90_bf16_f32', 'ts_gemm_splitk_reduce_bf16']);
    expect(sm90s[0].args).toMatchObject({ y: 0x100000n, bias: 0n, res: 0n, splits: 4 });
    expect(sm90s[1].args).toEqual({ y: 0x4000n, ws: 0x100000n, bias: 0x3000n, res: 0x4000n, R: 256, N: 4096, splits: 4, glu: -1, ...NO_ROPE });
    // sm90p: its own entries, 128 x 128 tiles (w's box 128 rows), a persistent grid over them.
    const sm90p = run({ R: 1024, N: 4096, K: 4104, res: true, bias: true, storage: 'f16', attrs: { gemmVariant: 'sm90p' }, ptrs: { x: 1n << 32n } });
    expect(sm90p.launches.map((l) => l.decl.name)).toEqual(['ts_gemm_sm90p_f16']);
    expect(sm90p.launches[0].args).toMatchObject({ y: 0x4000n, bias: 0x3000n, res: 0x4000n, M: 1024, N: 4096, K: 4104, splits: 1, kTilesPerSplit: 65 });
    expect(sm90p.launches[0].launch).toEqual({ grid: [132, 1, 1], block: [384, 1, 1], sharedBytes: 6 * 32768 + 1024 + 96 });
    expect(sm90p.boxes).toEqual(['x 128 64', 'w 128 64']);
    expect(run({ R: 300, N: 4096, K: 64, attrs: { gemmVariant: 'sm90' } }).boxes).toEqual(['x 128 64', 'w 256 64']);
    // sm90k: its own entries, the partial-tile slots and the tile counters; bias and res in its
    // own epilogue (no reduce launch).
    const sm90k = run({ R: 256, N: 4096, K: 4096, res: true, bias: true, attrs: { gemmVariant: 'sm90k' }, ptrs: { x: 1n << 32n } });
    expect(sm90k.launches.map((l) => l.decl.name)).toEqual(['ts_gemm_sm90k_bf16']);
    expect(sm90k.launches[0].args).toMatchObject({ y: 0x4000n, bias: 0x3000n, res: 0x4000n, ws: 0x100000n, counters: 0x5000n, M: 256, N: 4096, K: 4096, kTilesPerBlock: 16 });
    expect(sm90k.launches[0].launch).toEqual({ grid: [128, 1, 1], block: [384, 1, 1], sharedBytes: 4 * 49152 + 1024 + 64 + 16 });
    expect(sm90k.scratch).toEqual([2 * 128 * 256 * 128 * 4]);
    expect(sm90k.boxes).toEqual(['x 128 64', 'w 256 64']);
    // sm90c: its own entries in clusters of two; w's box is half a tile (each block of the pair
    // multicasts its half); a cluster per pair of row tiles, at most the resident clusters.
    const sm90c = run({ R: 1000, N: 4096, K: 4104, res: true, bias: true, attrs: { gemmVariant: 'sm90c' }, maxClusters: 60, ptrs: { x: 1n << 32n } });
    expect(sm90c.launches.map((l) => l.decl.name)).toEqual(['ts_gemm_sm90c_bf16']);
    expect(sm90c.launches[0].args).toMatchObject({ y: 0x4000n, bias: 0x3000n, res: 0x4000n, M: 1000, N: 4096, K: 4104, splits: 1, kTilesPerSplit: 65 });
    // 8 row tiles = 4 pairs, x 16 column tiles: 64 pairs on the 60 clusters the device holds.
    expect(sm90c.launches[0].launch).toEqual({ grid: [120, 1, 1], block: [384, 1, 1], sharedBytes: 4 * 49152 + 1024 + 64, cluster: [2, 1, 1] });
    expect(sm90c.clusterQueries).toEqual([{ grid: [2, 1, 1], block: [384, 1, 1], sharedBytes: 4 * 49152 + 1024 + 64, cluster: [2, 1, 1] }]);
    expect(sm90c.boxes).toEqual(['x 128 64', 'w 128 64']);
    // Fewer pairs than clusters: one cluster a pair (3 row tiles make 2 pairs, the second with one
    // real tile); no occupancy query in the context: half the SMs.
    expect(run({ R: 300, N: 512, K: 64, attrs: { gemmVariant: 'sm90c' } }).launches[0].launch.grid).toEqual([8, 1, 1]);
    expect(run({ R: 300, N: 40960, K: 64, attrs: { gemmVariant: 'sm90c' } }).launches[0].launch.grid).toEqual([132, 1, 1]);
    expect(() => run({ R: 300, N: 40960, K: 64, attrs: { gemmVariant: 'sm90c' }, maxClusters: 0 })).toThrow(
      'ts_gemm_sm90c_bf16: the device can hold no cluster of 2 blocks with 197696 bytes of shared memory each',
    );
    // No tile shared between blocks: no workspace.
    expect(run({ R: 300, N: 5640, K: 200, attrs: { gemmVariant: 'sm90k' } }).scratch).toEqual([]);
  });

  it('sm90k hands out whole waves but the last, then gives every block the same k-tiles of the rest, at least 4, with slots only where tiles are shared (the stream-K plan)', async () => {
    const { gemmSm90kPlan, GEMM_SM90K_SLOT_BYTES } = await import('../../src/backend/cuda/ops/gemm.js');
    // gate_up at M 8192 on an H100: 7168 tiles (54.3 waves): 53 waves whole, then 172 tiles of 64
    // k-tiles as 84 a block on all 132 SMs.
    expect(gemmSm90kPlan(8192, 28672, 4096, 132)).toMatchObject({ tiles: 7168, dpTiles: 53 * 132, kTilesPerBlock: 84, streamKBlocks: 132, grid: 132 });
    expect(gemmSm90kPlan(256, 4096, 4096, 132)).toMatchObject({ tiles: 32, dpTiles: 0, kTilesPerBlock: 16, grid: 128, sharedTiles: 32 });
    expect(gemmSm90kPlan(1, 8, 64, 132)).toMatchObject({ tiles: 1, kTilesPerBlock: 1, grid: 1, sharedTiles: 0, workspaceBytes: 0 });
    expect(gemmSm90kPlan(300, 5640, 200, 132)).toMatchObject({ tiles: 69, kTilesPerBlock: 4, grid: 69, sharedTiles: 0, workspaceBytes: 0 });
    // Whole waves: sm90's launch.
    expect(gemmSm90kPlan(1024, 33 * 256, 4096, 132)).toMatchObject({ tiles: 264, dpTiles: 264, streamKBlocks: 0, grid: 132, workspaceBytes: 0 });
    for (const R of [1, 7, 130, 1000, 8192])
      for (const N of [8, 300, 4096, 28672])
        for (const K of [8, 64, 520, 4096, 14336]) {
          const p = gemmSm90kPlan(R, N, K, 132), kTiles = Math.ceil(K / 64), total = (p.tiles - p.dpTiles) * kTiles, what = `R ${R} N ${N} K ${K}`;
          expect(p.grid, what).toBeLessThanOrEqual(132);
          expect(p.dpTiles % 132, what).toBe(0);
          expect(p.tiles - p.dpTiles, what).toBeLessThan(2 * 132);
          expect(p.streamKBlocks, what).toBeLessThanOrEqual(p.grid);
          if (total > 0) {
            expect(p.kTilesPerBlock, what).toBeGreaterThanOrEqual(Math.min(4, kTiles));
            expect((p.streamKBlocks - 1) * p.kTilesPerBlock, what).toBeLessThan(total); // no stream-K block without work
            expect(p.streamKBlocks * p.kTilesPerBlock, what).toBeGreaterThanOrEqual(total);
          }
          if (p.dpTiles === 0) expect(p.grid, what).toBe(p.streamKBlocks);
          expect(p.workspaceBytes, what).toBe(p.sharedTiles > 0 ? 2 * p.streamKBlocks * GEMM_SM90K_SLOT_BYTES : 0);
        }
  });

  it('refuses an f32 y, a residual of another shape or type, and one that overlaps y without being it', () => {
    expect(() => run({ R: 2, N: 8, K: 32, res: true, out: 'f32' })).toThrow(/matmul_add: y must be bf16 \(x \[2, 32\] bf16, w \[8, 32\] bf16, res \[2, 8\] bf16, y \[2, 8\] f32\)/);
    expect(() => run({ R: 2, N: 8, K: 32, res: true, ptrs: { res: 0x4010n } })).toThrow(/matmul_add: y overlaps res without being it/);
    expect(run({ R: 2, N: 8, K: 32, res: true, ptrs: { res: 0x4020n } }).launches).toHaveLength(1); // 2 x 8 x 2 bytes: just past y
    expect(() => run({ R: 2, N: 8, K: 32, res: true, ptrs: { res: 0x5008n } })).toThrow(/matmul_add: res is not 16-byte aligned/);
    expect(() => run({ R: 2, N: 8, K: 8, res: true, ptrs: { x: 0x4000n } })).toThrow(/matmul_add: y overlaps x, which the GEMM still reads/);
    const ctx = (res: ReturnType<typeof tensor>): CudaOpContext =>
      ({
        inputs: [tensor([2, 32], 'bf16', 0x1000n), tensor([8, 32], 'bf16', 0x2000n), res],
        outputs: [tensor([2, 8], 'bf16', 0x4000n)],
        attrs: {},
        device: { multiprocessors: 132, computeCapability: [9, 0] },
        launch: () => {},
        scratch: () => 0x100000n,
        constant: () => 0n,
        counters: () => 0n,
      }) as unknown as CudaOpContext;
    expect(() => matmulAdd(ctx(tensor([2, 9], 'bf16', 0x4000n)))).toThrow(/matmul_add: res must be \[2, 8\] bf16/);
    expect(() => matmulAdd(ctx(tensor([2, 8], 'f16', 0x4000n)))).toThrow(/matmul_add: res \[2, 8\] is f16, but the other operands are bf16/);
    const short = ctx(tensor([2, 8], 'bf16', 0x4000n));
    short.inputs.pop();
    expect(() => matmulAdd(short)).toThrow(/matmul_add: expects 3 or 4 inputs, got 2/);
  });
});

describe('matmul_rope_kv launcher (RoPE and the KV write in the epilogue)', () => {
  // Llama-3-8B's q/k/v: 32 heads, 8 KV heads of 128; a cache of 100 blocks of 16 slots.
  const H = 32, KV = 8, HD = 128, K = 4096, N = (H + 2 * KV) * HD;
  const CACHE = [2, 100, 16, KV, HD];
  const ROPE = { rotaryDim: 128, theta: 500000, scaling: null };
  function runRope(opts: { R: number; attrs?: Attrs; q?: 'bf16' | 'f32'; cache?: 'bf16' | 'f16'; cachePtr?: bigint; positions?: 'i32' | 'f32' }) {
    const { R } = opts;
    const launches: Recorded[] = [];
    const cache = tensor(CACHE, opts.cache ?? 'bf16', opts.cachePtr ?? 0x800000n);
    const ctx: CudaOpContext = {
      inputs: [tensor([R, K], 'bf16', 0x1000n), tensor([N, K], 'bf16', 0x2000n), tensor([R], opts.positions ?? 'i32', 0x6000n), cache, tensor([R], 'i32', 0x7000n)],
      outputs: [tensor([R, H * HD], opts.q ?? 'bf16', 0x4000n), cache],
      attrs: { numHeads: H, numKvHeads: KV, headDim: HD, rope: ROPE, ...opts.attrs } as Attrs,
      step: { numTokens: R, numSeqs: 1, numLogitRows: 1, blockTableWidth: 1, maxContextLen: R, maxQueryLen: R },
      device: fakeDevice(132),
      launch: (decl, launch, args) => {
        packArgs(new DataView(new ArrayBuffer(4096)), decl, args);
        launches.push({ decl, launch, args });
      },
      constant: () => 0x9000n,
      counters: () => 0x5000n,
      scratch: () => 0x100000n,
      tensorMap2d: () => new Uint8Array(128),
      tensorMap: () => {
        throw new Error('no tensor maps expected');
      },
    };
    matmulRopeKv(ctx);
    return launches;
  }
  const ON = { ropePositions: 0x6000n, ropeSlots: 0x7000n, ropeInvFreq: 0x9000n, ropeCache: 0x800000n, ropeQCols: H * HD, ropeHeadDim: HD, ropeRotaryDim: 128, ropeNumSlots: 1600 };

  it('gives every rung that writes q the epilogue operands: positions, slots, inv_freq, the cache (its k half first), q width, dims, slots', () => {
    // Decode: the 16-row tile, K split 6 ways and merged in the launch.
    const [tile] = runRope({ R: 1 });
    expect(tile.decl.name).toBe('ts_gemm_16x128_bf16');
    expect(tile.args).toMatchObject({ y: 0x4000n, R: 1, N, K, glu: -1, ...ON });
    expect(runRope({ R: 1, attrs: { gemmVariant: 'gemv' } })[0].args).toMatchObject({ y: 0x4000n, N, ...ON });
    expect(runRope({ R: 256, attrs: { gemmVariant: 'sm90' } })[0].args).toMatchObject({ y: 0x4000n, splits: 1, ...ON });
    expect(runRope({ R: 256, attrs: { gemmVariant: 'sm90k' } })[0].args).toMatchObject({ y: 0x4000n, ...ON });
    // Without RoPE (GPT-2): no table, no rotary dims; the KV write still on.
    expect(runRope({ R: 1, attrs: { rope: null } })[0].args).toMatchObject({ ...ON, ropeInvFreq: 0n, ropeRotaryDim: 0 });
  });

  it('where the partials go to scratch, they are plain and the reduce runs the epilogue over pairs of columns', () => {
    const [partial, reduce] = runRope({ R: 1, attrs: { gemmSplitMerge: 'separate' } });
    expect([partial.decl.name, reduce.decl.name]).toEqual(['ts_gemm_16x128_bf16_f32', 'ts_gemm_splitk_reduce_bf16']);
    expect(partial.args).toMatchObject({ y: 0x100000n, glu: -1, ...NO_ROPE });
    expect(reduce.args).toEqual({ y: 0x4000n, ws: 0x100000n, bias: 0n, res: 0n, R: 1, N, splits: 6, glu: -1, ...ON });
    expect(reduce.launch.grid).toEqual([N / 2 / 256, 1, 1]);
    const [sm90Partial, sm90Reduce] = runRope({ R: 16, attrs: { gemmVariant: 'sm90s' } });
    expect(sm90Partial.args).toMatchObject({ y: 0x100000n, ...NO_ROPE });
    expect(sm90Reduce.args).toMatchObject({ y: 0x4000n, ...ON });
  });

  it('refuses an f32 q, a cache of another type or overlapping q, and positions that are not i32, naming the op', () => {
    expect(() => runRope({ R: 1, q: 'f32' })).toThrow(/matmul_rope_kv: q must be bf16, without a residual, and w's rows even/);
    expect(() => runRope({ R: 1, cache: 'f16' })).toThrow(/matmul_rope_kv: cache \[2, 100, 16, 8, 128\] f16 must be bf16 like x/);
    expect(() => runRope({ R: 1, cachePtr: 0x4000n })).toThrow(/matmul_rope_kv: the cache overlaps x or q/);
    expect(() => runRope({ R: 1, positions: 'f32' })).toThrow(/matmul_rope_kv.*positions/);
  });
});

describe('the GEMV variant', () => {
  it('runs only where asked and where it applies (R <= 8); the default stays the tile kernel', async () => {
    const { gemmVariant } = await import('../../src/backend/cuda/ops/gemm.js');
    expect(gemmVariant(1, undefined)).toBe('tiles');
    expect(gemmVariant(1, 'auto')).toBe('tiles');
    expect(gemmVariant(8, 'gemv')).toBe('gemv');
    expect(gemmVariant(9, 'gemv')).toBe('tiles');
    expect(gemmVariant(1, 'tiles')).toBe('tiles');
    expect(() => gemmVariant(1, 'fast')).toThrow('gemm variant must be auto, tiles, gemv, sm90, sm90s, sm90p, sm90k, sm90c or sm90pc, not fast');
    expect(gemmVariant(1, 'sm90k', 9)).toBe('sm90k');
    expect(gemmVariant(4096, 'sm90p', 9)).toBe('sm90p');
    expect(gemmVariant(4096, 'sm90p', 8)).toBe('tiles');
    expect(gemmVariant(4096, 'sm90', 9)).toBe('sm90');
    expect(gemmVariant(256, 'sm90s', 9)).toBe('sm90s');
    expect(gemmVariant(256, 'sm90s', 8)).toBe('tiles');
    expect(gemmVariant(1, 'sm90', 9)).toBe('sm90');
    expect(gemmVariant(4096, 'sm90', 8)).toBe('tiles'); // Ampere and Ada: no wgmma
  });

  it('keeps the Hopper kernel\'s launch constants in step with kernels/gemm_sm90.cu', async () => {
    const { GEMM_SM90, GEMM_SM90P, GEMM_SM90C, GEMM_SM90PC, gemmSm90Grid, gemmSm90cGrid } = await import('../../src/backend/cuda/ops/gemm.js');
    const num = (name: string) => Number(new RegExp(`\\b${name} = (\\d+)`).exec(SM90_SOURCE)![1]);
    // Cfg<SCHED>: BN and STAGES as "pingpong(SCHED) ? ping-pong (sm90p, sm90pc) : cooperative (sm90, sm90k, sm90c)".
    const cfg = (name: string, pp: boolean) => Number(new RegExp(`\\b${name} = pingpong\\(SCHED\\) \\? (\\d+) : (\\d+)`).exec(SM90_SOURCE)![pp ? 1 : 2]);
    expect(SM90_SOURCE).toContain('constexpr bool pingpong(int sched) { return sched == PING || sched == PING_MCAST; }');
    expect({ ...GEMM_SM90C, cluster: undefined }).toEqual({ ...GEMM_SM90, cluster: undefined });
    expect({ ...GEMM_SM90PC, cluster: undefined }).toEqual({ ...GEMM_SM90P, cluster: undefined });
    expect(gemmSm90cGrid(8192, 28672, 66)).toBe(132); // 32 x 112 pairs on 66 clusters
    expect(gemmSm90cGrid(1024, 2048, 66, GEMM_SM90PC.bn)).toBe(128); // 4 x 16 pairs of 128 x 128 tiles: 64 clusters
    expect([GEMM_SM90.bm, GEMM_SM90.bn, GEMM_SM90.bk, GEMM_SM90.stages, GEMM_SM90.threads]).toEqual([num('BM'), cfg('BN', false), num('BK'), cfg('STAGES', false), num('THREADS')]);
    expect([GEMM_SM90P.bm, GEMM_SM90P.bn, GEMM_SM90P.bk, GEMM_SM90P.stages, GEMM_SM90P.threads]).toEqual([num('BM'), cfg('BN', true), num('BK'), cfg('STAGES', true), num('THREADS')]);
    // Four 48 KiB stages (ping-pong: six of 32 KiB), 1 KiB of alignment slack, two barriers per
    // stage: within Hopper's 227 KiB.
    expect(GEMM_SM90.sharedBytes).toBe(4 * 49152 + 1024 + 64);
    expect(GEMM_SM90P.sharedBytes).toBe(6 * 32768 + 1024 + 96);
    expect(GEMM_SM90.sharedBytes).toBeLessThanOrEqual(227 * 1024);
    expect(GEMM_SM90P.sharedBytes).toBeLessThanOrEqual(227 * 1024);
    expect(gemmSm90Grid(1024, 4096, 132, 1, GEMM_SM90P.bn)).toBe(132); // 256 ping-pong tiles: two a block
    expect(gemmSm90Grid(1024, 4096, 132)).toBe(128); // 128 cooperative tiles
    expect(gemmSm90Grid(8192, 28672, 132)).toBe(132); // persistent: 64 x 112 tiles over 132 SMs
    expect(gemmSm90Grid(130, 264, 132)).toBe(4);
    expect(gemmSm90Grid(1, 1, 132)).toBe(1);
  });

  it('sm90s splits K where the tiles leave SMs idle, and only there (the cost model)', async () => {
    const { gemmSm90Plan, GEMM_SM90_MAX_SPLITS, GEMM_MAX_WORKSPACE_BYTES } = await import('../../src/backend/cuda/ops/gemm.js');
    const plan = (R: number, N: number, K: number, max?: number) => gemmSm90Plan(R, N, K, 132, 2, false, max);
    // Llama-3-8B projections on an H100: decode and small prefill split; full waves do not.
    expect(plan(1, 4096, 4096)).toMatchObject({ tiles: 16, splits: 5, kTilesPerSplit: 13, grid: 80 });
    expect(plan(256, 4096, 4096)).toMatchObject({ tiles: 32, splits: 4, kTilesPerSplit: 16, grid: 128, workspaceBytes: 4 * 256 * 4096 * 4 });
    expect(plan(256, 4096, 14336)).toMatchObject({ splits: 4, kTilesPerSplit: 56 });
    for (const [R, N, K] of [[1024, 4096, 4096], [8192, 28672, 4096], [4096, 6144, 4096], [1, 128256, 4096]]) expect(plan(R, N, K).splits, `${R} ${N} ${K}`).toBe(1);
    // The sm90 rung: never split, the same launch as before the split existed.
    expect(plan(256, 4096, 4096, 1)).toMatchObject({ splits: 1, kTilesPerSplit: 64, grid: 32, workspaceBytes: 0 });
    expect(plan(1, 8, 64)).toMatchObject({ splits: 1, kTilesPerSplit: 1 });
    // Every shape: the splits cover every k-tile, none is empty, the workspace stays bounded, and
    // the choice is no worse by the model than not splitting.
    for (const R of [1, 7, 64, 129, 256, 1000, 4096])
      for (const N of [8, 300, 4096, 28672])
        for (const K of [8, 64, 520, 4096, 14336]) {
          const p = plan(R, N, K), kTiles = Math.ceil(K / 64), what = `R ${R} N ${N} K ${K}`;
          expect(p.splits, what).toBeGreaterThanOrEqual(1);
          expect(p.splits, what).toBeLessThanOrEqual(GEMM_SM90_MAX_SPLITS);
          expect(p.splits * p.kTilesPerSplit, what).toBeGreaterThanOrEqual(kTiles);
          expect((p.splits - 1) * p.kTilesPerSplit, what).toBeLessThan(kTiles);
          expect(p.workspaceBytes, what).toBe(p.splits > 1 ? p.splits * R * N * 4 : 0);
          expect(p.workspaceBytes, what).toBeLessThanOrEqual(GEMM_MAX_WORKSPACE_BYTES);
          expect(p.grid, what).toBe(Math.min(p.tiles * p.splits, 132));
          expect(p.predictedUs, what).toBeLessThanOrEqual(plan(R, N, K, 1).predictedUs);
        }
  });

  it('launches one 256-thread block per 4 rows of w, with the entry for the next R in 1, 2, 4, 8', async () => {
    const { GEMV_KERNELS } = await import('../../src/backend/cuda/ops/gemm.js');
    for (const [R, N, maxR] of [[1, 4096, 1], [2, 6, 2], [3, 128256, 4], [8, 13, 8]] as const) {
      const { launches, scratch } = run({ R, N, K: 64, out: 'f32', attrs: { gemmVariant: 'gemv', outputDtype: 'f32' }, ptrs: { x: 0x1000n, w: 0x2000n, y: 0x3000n } });
      expect(scratch).toEqual([]); // the GEMV needs no scratch
      expect(launches.length).toBe(1);
      expect(launches[0].decl.name).toBe(GEMV_KERNELS[maxR].f32.name);
      expect(launches[0].launch.grid).toEqual([Math.ceil(N / 4), 1, 1]);
      expect(launches[0].launch.block).toEqual([256, 1, 1]);
      expect(launches[0].args).toEqual({ y: 0x3000n, x: 0x1000n, w: 0x2000n, bias: 0n, res: 0n, R, N, K: 64, glu: -1, rmsEps: -1, ...NO_ROPE });
    }
  });
});

describe('the GEMV kernel\'s K loop (a transcription of kernels/gemv.cu)', () => {
  // The kernel's loops: warp v takes 256-element steps v, v + 8, ...; full steps two at a time
  // (s and s + 8 while s + 8 < K / 256), then the rest one at a time, lanes past K idle.
  function coverage(K: number): Int32Array {
    const WARPS = 8, STEP = 256, seen = new Int32Array(K);
    const full = Math.floor(K / STEP);
    for (let warp = 0; warp < WARPS; warp++)
      for (let lane = 0; lane < 32; lane++) {
        let s = warp;
        for (; s + WARPS < full; s += 2 * WARPS)
          for (const k0 of [s * STEP + lane * 8, (s + WARPS) * STEP + lane * 8]) for (let e = 0; e < 8; e++) seen[k0 + e]++;
        for (; s * STEP < K; s += WARPS) {
          const k = s * STEP + lane * 8;
          if (k < K) for (let e = 0; e < 8; e++) seen[k + e]++;
        }
      }
    return seen;
  }

  it('reads every element of K exactly once, for K below, at and past the step and the pair of steps', () => {
    const source = readFileSync(path.join(import.meta.dirname, '../../kernels/gemv.cu'), 'utf8');
    // The transcription follows these lines of the kernel.
    expect(source).toContain('for (; s + WARPS < full; s += 2 * WARPS)');
    expect(source).toContain('for (; s * STEP < K; s += WARPS)');
    for (const K of [8, 64, 248, 256, 264, 2048, 2056, 4096, 4104, 8200, 14336, 28672]) {
      const seen = coverage(K);
      expect(seen.every((n) => n === 1), `K = ${K}`).toBe(true);
    }
  });
});
