/**
 * Op conformance: every op of the IR, run through Backend.runOp on every backend present, against
 * the float64 reference in ./reference.ts. The CPU tier always runs. The CUDA tiers run on the
 * GPU when CudaBackend.probe() finds one; without one they run on the kernel emulator
 * (tests/cuda/emu: the kernels' own source compiled for the CPU, behind the stand-in libcuda, as
 * an sm_80 device, so the sm_90a kernels are not among them), and are skipped, with the reason
 * in their title and on the console, only where neither is possible. A tier's title says which.
 *
 * Inputs are fresh random data each run, from a seed taken from the clock and printed (set
 * TESSERA_CONFORMANCE_SEED to replay a run; every failure message names the seed and the case).
 * Floats are rounded to the backend's storage precision (bf16 on CUDA, and fp16 in the CUDA tier
 * that runs every op's fp16 entries) before the reference sees them, so the reference computes exactly what the backend was given. KV caches start random, so
 * a token written to the wrong slot, or a slot written that should not be, shows.
 *
 * Every element of every output is checked, and no output may be NaN: the CUDA backend poisons
 * its outputs with NaN before the launch (the CPU fills them with NaN too), so an element a kernel
 * never writes fails. KV caches are checked whole: elements the op writes against the reference,
 * all the others bit for bit against the cache the op was given.
 *
 * Tolerance of an element with reference value y:  |got - y| <= atol * max(1, s) + rtol * |y|
 *   f32 storage (CPU):  atol = 1e-4, rtol = 1e-4
 *   bf16 storage (CUDA): atol = 2e-2, rtol = 2e-2
 *   fp16 storage (CUDA): atol = 3e-3, rtol = 3e-3 (fp16 has 3 more mantissa bits: 8x finer)
 * s = 1 for elementwise ops, gathers and norms (their error is relative to the value: the rtol
 * term, with atol for values near zero). For reductions, s is the magnitude the rounding error
 * of a sum grows with, not the size of the result, which cancellation can make arbitrarily small:
 *   matmul:    s = sqrt(sum_k (x_k w_k)^2), the l2 norm of the K products = sqrt(K) * their RMS.
 *              Inputs are exact in the storage type, so the error comes from rounding partial
 *              sums, products or the output; independent roundings of relative size u on the
 *              K terms add up like a random walk, to about u * sqrt(K) * RMS(term).
 *   attention: s = S * sum_j p_j |v_jd - out_d| + sqrt(sum_j p_j^2 v_jd^2), S = scale *
 *              max_j ||q o k_j||_2: the scores are K = headDim reductions (the matmul rule, times
 *              the scale); an absolute error e in them changes the weights p_j by a relative e and
 *              the output by about e * sum_j p_j |v_jd - out_d|; rounding the weights or the
 *              values (bf16 P.V) adds a random walk of the terms p_j v_jd.
 * With the data drawn here (activations U(-2, 2), weights U(+-1/sqrt(K))) s is O(1) for either,
 * so the floor max(1, s) keeps the CPU's bound at about 1e-4 absolute.
 *
 * A kernel fault loses the CUDA context for the rest of the process (cuda.h: it "must be
 * terminated and relaunched"): the case that faulted fails with the driver's error, every CUDA
 * case after it in this file is skipped naming it, and, where TESSERA_FAULT_LOG names a file,
 * a line "storage<TAB>op<TAB>case<TAB>error" is appended there, so tools/gpu/run.sh can run the
 * suite again without that op.
 */
import { appendFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend, HostTensor, StepBatch } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/backend.js';
import { CPU_KERNELS } from '../../src/backend/cpu/kernels/index.js';
import type { RopeScaling } from '../../src/formats/hf_config.js';
import type { Attrs, AttrValue } from '../../src/graph/ir.js';
import { OPS, outputShapes, type OpName } from '../../src/graph/ops.js';
import { ropeInvFreq } from '../../src/graph/rope.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/util/dtype.js';
import { pagedLayout } from '../helpers/paged.js';
import * as ref from './reference.js';

// ---------------------------------------------------------------- seed, random data

const BASE_SEED = process.env.TESSERA_CONFORMANCE_SEED !== undefined ? Number(process.env.TESSERA_CONFORMANCE_SEED) >>> 0 : Date.now() % 2 ** 32 >>> 0;
console.log(`[conformance] seed ${BASE_SEED} (replay with TESSERA_CONFORMANCE_SEED=${BASE_SEED})`);

/** FNV-1a of a string: a case's seed from the run's seed and the case's name. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

type Storage = 'f32' | 'bf16' | 'f16';

/** Random data for one case (mulberry32), floats rounded to the backend's storage type. */
class Gen {
  private state: number;

  constructor(seed: number, private readonly storage: Storage) {
    this.state = seed >>> 0;
  }

  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** n floats uniform in [lo, hi), rounded to storage, never exactly zero. */
  floats(n: number, lo: number, hi: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let v = 0;
      while (v === 0) v = this.round(lo + (hi - lo) * this.next());
      out[i] = v;
    }
    return out;
  }

  private readonly one = new Float32Array(1);
  private readonly oneBits = new Uint16Array(1);

  private round(v: number): number {
    this.one[0] = v;
    if (this.storage === 'bf16') {
      f32ToBf16(this.one, this.oneBits);
      bf16ToF32(this.oneBits, this.one);
    } else if (this.storage === 'f16') {
      f32ToF16(this.one, this.oneBits);
      f16ToF32(this.oneBits, this.one);
    }
    return this.one[0];
  }

  /** Activations: U(-2, 2). */
  act(n: number): Float32Array {
    return this.floats(n, -2, 2);
  }

  /** Weights of a K-input layer: U(-1/sqrt(K), 1/sqrt(K)). */
  weights(n: number, k: number): Float32Array {
    const b = 1 / Math.sqrt(k);
    return this.floats(n, -b, b);
  }

  /** Norm weights around 1. */
  normWeights(n: number): Float32Array {
    return this.floats(n, 0.5, 1.5);
  }

  bias(n: number): Float32Array {
    return this.floats(n, -0.5, 0.5);
  }

  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }

  /** `count` distinct integers from [0, n), in random order. */
  distinct(count: number, n: number): number[] {
    if (count > n) throw new Error(`cannot draw ${count} distinct values from ${n}`);
    return this.shuffle(Array.from({ length: n }, (_, i) => i)).slice(0, count);
  }
}

// ---------------------------------------------------------------- cases

interface Expected {
  name: string;
  shape: number[];
  value: Float64Array;
  /** Reductions: the error magnitude per element (see the header). */
  scale?: Float64Array;
  /** KV caches: 1 where the op writes; elsewhere the output must equal the input exactly. */
  written?: Uint8Array;
}

interface Prepared {
  attrs: Attrs;
  inputs: HostTensor[];
  step: StepBatch;
  expect: Expected[];
  /** The shapes and settings, for messages. */
  what: string;
}

interface Case {
  op: OpName;
  name: string;
  /** Load-time ops: the CPU tier only (the CUDA backend runs them at load, not through runOp). */
  loadTime?: boolean;
  /**
   * Runs the CPU kernel with its in-place output aliasing the input it overwrites (OPS[op].inplace:
   * the residual of add_rmsnorm, add_layernorm and matmul_add), as the memory planner lays them
   * out: runOp always gives fresh outputs, so this goes to the kernel directly and runs on the CPU
   * tier only.
   */
  aliasSum?: boolean;
  prepare(g: Gen): Prepared;
}

const f = (data: Float32Array, shape: number[]): HostTensor => ({ data, shape });
const i32 = (data: ArrayLike<number>, shape: number[] = [data.length]): HostTensor => ({ data: Int32Array.from(data), shape });
const numel = (shape: readonly number[]) => shape.reduce((a, d) => a * d, 1);
const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** A step whose only use is to be well formed: `tokens` tokens of one sequence. */
function plainStep(tokens: number, extra: Partial<StepBatch> = {}): StepBatch {
  return {
    numTokens: tokens,
    numSeqs: 1,
    numLogitRows: 1,
    tokenIds: new Int32Array(tokens),
    positions: Int32Array.from({ length: tokens }, (_, i) => i),
    slotMapping: new Int32Array(tokens).fill(-1),
    queryStart: Int32Array.from([0, tokens]),
    contextLens: Int32Array.from([tokens]),
    blockTables: new Int32Array(1),
    blockTableWidth: 1,
    logitsIndices: Int32Array.from([Math.max(tokens - 1, 0)]),
    ...extra,
  };
}

const CASES: Case[] = [];
const add = (c: Case) => CASES.push(c);

// ---- load-time ops

for (const [a, b] of [[1, 8], [3, 24], [17, 264], [65, 520], [130, 72], [24, 1]]) {
  add({
    op: 'transpose',
    name: `${a}x${b}`,
    loadTime: true,
    prepare(g) {
      const x = g.act(a * b);
      return { attrs: {}, inputs: [f(x, [a, b])], step: plainStep(1), expect: [{ name: 'y', shape: [b, a], value: ref.transpose(x, a, b) }], what: `x ${fmt([a, b])}` };
    },
  });
}

for (const [shape, start, count] of [
  [[130, 72], 0, 1],
  [[65, 24], 17, 48],
  [[520], 264, 256],
  [[3, 8], 2, 1],
  [[24, 4, 8], 8, 8],
  [[1024, 32], 0, 1024],
] as Array<[number[], number, number]>) {
  add({
    op: 'slice_rows',
    name: `${fmt(shape)}[${start}:${start + count}]`,
    loadTime: true,
    prepare(g) {
      const x = g.act(numel(shape));
      return {
        attrs: { start, count },
        inputs: [f(x, shape)],
        step: plainStep(1),
        expect: [{ name: 'y', shape: [count, ...shape.slice(1)], value: ref.sliceRows(x, shape, start, count) }],
        what: `x ${fmt(shape)} start ${start} count ${count}`,
      };
    },
  });
}

for (const shapes of [[[17, 24]], [[1, 72], [3, 72], [65, 72]], [[8], [24], [264]], [[130, 8], [130, 8]], [[2, 4, 16], [5, 4, 16]]]) {
  add({
    op: 'concat_rows',
    name: shapes.map(fmt).join('+'),
    loadTime: true,
    prepare(g) {
      const parts = shapes.map((s) => g.act(numel(s)));
      const rows = shapes.reduce((s, sh) => s + sh[0], 0);
      return {
        attrs: {},
        inputs: parts.map((p, i) => f(p, shapes[i])),
        step: plainStep(1),
        expect: [{ name: 'y', shape: [rows, ...shapes[0].slice(1)], value: ref.concatRows(parts) }],
        what: `inputs ${shapes.map(fmt).join(', ')}`,
      };
    },
  });
}

for (const shape of [[2, 8], [6, 24], [520, 72], [264], [4, 3, 16]]) {
  add({
    op: 'pair_rows',
    name: fmt(shape),
    loadTime: true,
    prepare(g) {
      const x = g.act(numel(shape));
      return { attrs: {}, inputs: [f(x, shape)], step: plainStep(1), expect: [{ name: 'y', shape, value: ref.pairRows(x, shape) }], what: `x ${fmt(shape)}` };
    },
  });
}

for (const [shape, heads, hd, rd] of [
  [[48, 8], 4, 8, 8],
  [[64, 24], 6, 8, 4],
  [[40], 3, 8, 8],
  [[96, 3, 16], 4, 16, 10],
  [[32, 8], 2, 16, 0],
] as Array<[number[], number, number, number]>) {
  add({
    op: 'rope_rows',
    name: `${fmt(shape)} heads ${heads} hd ${hd} rot ${rd}`,
    loadTime: true,
    prepare(g) {
      const x = g.act(numel(shape));
      return {
        attrs: { heads, headDim: hd, rotaryDim: rd },
        inputs: [f(x, shape)],
        step: plainStep(1),
        expect: [{ name: 'y', shape, value: ref.ropeRows(x, shape, heads, hd, rd) }],
        what: `x ${fmt(shape)} heads ${heads} headDim ${hd} rotaryDim ${rd}`,
      };
    },
  });
}

for (const [n, k] of [[1, 8], [24, 72], [520, 264]]) {
  add({
    op: 'scale_cols',
    name: `[${n}, ${k}]`,
    loadTime: true,
    prepare(g) {
      const w = g.act(n * k), s = g.act(k);
      return { attrs: {}, inputs: [f(w, [n, k]), f(s, [k])], step: plainStep(1), expect: [{ name: 'y', shape: [n, k], value: ref.scaleCols(w, s) }], what: `w ${fmt([n, k])} g [${k}]` };
    },
  });
}

// ---- gathers

for (const [rows, vocab, d] of [[1, 50, 8], [3, 7, 24], [17, 300, 264], [130, 1000, 520], [65, 3, 72]]) {
  add({
    op: 'embedding',
    name: `R${rows} V${vocab} D${d}`,
    prepare(g) {
      const table = g.act(vocab * d);
      // Both ends of the vocabulary, repeats, and random ids.
      const ids = Array.from({ length: rows }, (_, i) => (i === 0 ? vocab - 1 : i === 1 ? 0 : i === 2 ? vocab - 1 : g.int(vocab)));
      return {
        attrs: {},
        inputs: [i32(ids), f(table, [vocab, d])],
        step: plainStep(rows, { tokenIds: Int32Array.from(ids) }),
        expect: [{ name: 'y', shape: [rows, d], value: ref.embedding(ids, table, vocab, d) }],
        what: `ids [${rows}] table ${fmt([vocab, d])}`,
      };
    },
  });
}

for (const [rows, d, picks] of [[1, 8, 1], [17, 264, 4], [130, 520, 65], [65, 24, 65], [3, 1024, 17]]) {
  add({
    op: 'gather_rows',
    name: `T${rows} D${d} S${picks}`,
    prepare(g) {
      const x = g.act(rows * d);
      const idx = Array.from({ length: picks }, (_, i) => (i === 0 ? rows - 1 : i === 1 ? 0 : g.int(rows)));
      if (picks === rows && rows > 3) for (let i = 0; i < picks; i++) idx[i] = rows - 1 - i; // a permutation
      return {
        attrs: {},
        inputs: [f(x, [rows, d]), i32(idx)],
        step: plainStep(rows, { numLogitRows: picks, logitsIndices: Int32Array.from(idx) }),
        expect: [{ name: 'y', shape: [picks, d], value: ref.gatherRows(x, rows, d, idx) }],
        what: `x ${fmt([rows, d])} idx [${picks}]`,
      };
    },
  });
}

// ---- matmul

/** A case's GEMM rung: a variant (gemmVariant), or 'separate' (the tile kernel's split-K reduced in a second launch). */
function gemmAttrs(variant: string | undefined): Record<string, string> {
  return variant === 'separate' ? { gemmSplitMerge: 'separate' } : variant ? { gemmVariant: variant } : {};
}

// [R, K, N, bias, f32 out, variant]. The GEMV (R <= 8) has its own cases: K below, at and past its
// 256-element step and 4096-element pair of steps, N not a multiple of its 4 rows per block. The
// Hopper kernel (sm90, on compute capability 9; the tile kernel elsewhere) too: M, N and K off its
// 128 x 256 x 64 tiles, K under one k-tile, more tiles than SMs (its persistent loop). Its split-K
// rung (sm90s) where the plan splits on an H100's 132 SMs (each case says how): a last split
// shorter than the others, bias and f32 output through the reduce, one tile split 16 ways. Its
// ping-pong rung (sm90p, 128 x 128 tiles): one tile with one consumer idle, more k-tiles than its
// 6-stage ring, and more tiles than twice the SMs, so that blocks alternate consumers over 2 and 3
// units each with the ring lapped in between. Its stream-K rung (sm90k; each case says how its
// k-tiles fall on an H100's 132 SMs): one tile in 16 pieces, blocks that end one shared tile and
// start the next (both of their slots), whole tiles only, and a wave of whole tiles handed out in
// turn before a stream-K part of whole and shared tiles. Its cluster rung (sm90c: two blocks on a
// pair of row tiles, w's tile multicast in halves; an H100 holds 66 such clusters): a pair whose
// second tile lies past M, more k-tiles than the 4-stage ring in both blocks, and more pairs than
// clusters, so that clusters walk on to a second pair after their first. Its ping-pong rung in
// clusters (sm90pc, 128 x 128 tiles): the same, with 138 pairs on 66 clusters so that the two
// consumers of each block alternate over 2 and 3 units. The tile kernel splits K where its tiles are
// fewer than the SMs (R 1 N 520, R 17, R 65 here) and merges the splits in the same launch;
// 'separate' runs the rung before that, the partials reduced by a second kernel.
for (const [r, k, n, bias, f32Out, variant] of [
  [1, 32, 8, false, false],
  [3, 72, 24, true, false],
  [17, 256, 264, false, false],
  [65, 1024, 520, true, false],
  [130, 256, 264, false, false],
  [1, 1024, 520, true, false],
  [130, 32, 8, true, false],
  [5, 72, 264, false, true],
  [17, 1024, 24, false, true],
  // 135 tiles of 128x128: enough to take the CUDA GEMM's large-tile configuration on 132 SMs.
  [300, 64, 5640, true, false],
  [1, 8, 1, false, false, 'gemv'],
  [1, 4104, 37, true, false, 'gemv'],
  [2, 264, 6, false, true, 'gemv'],
  [3, 4096, 9, false, false, 'gemv'],
  [5, 520, 262, true, false, 'gemv'],
  [8, 8200, 13, true, true, 'gemv'],
  [8, 96, 4, false, false, 'gemv'],
  [1, 520, 37, false, true, 'gemv'], // f32 y at each R bucket (1, 2, 4) and the storage type at 2
  [2, 264, 9, true, false, 'gemv'],
  [4, 1032, 13, false, true, 'gemv'],
  [300, 64, 5640, true, true], // the large tile with f32 y
  [1, 1032, 37, true, false], // 7 splits of 5 k-tiles (33: the last has 3), odd N: single-element partials
  [1, 1024, 520, true, false, 'separate'],
  [17, 1024, 24, false, true, 'separate'],
  [1, 64, 8, false, false, 'sm90'],
  [130, 72, 264, true, false, 'sm90'],
  [128, 256, 256, false, false, 'sm90'],
  [257, 8, 520, true, true, 'sm90'],
  [300, 200, 5640, false, false, 'sm90'],
  [1100, 64, 4100, true, false, 'sm90'],
  [17, 1032, 37, false, true, 'sm90'],
  [1, 4096, 256, false, false, 'sm90s'], // 1 tile x 16 splits of 4 k-tiles
  [130, 1032, 264, true, true, 'sm90s'], // 4 tiles x 9 splits of 2 (17 k-tiles: the last has 1)
  [17, 2056, 520, true, false, 'sm90s'], // 3 x 11 splits of 3 (33 k-tiles, the last of 3 a 8-wide one)
  [257, 1544, 300, false, false, 'sm90s'], // 6 x 9 splits of 3 (25 k-tiles)
  [300, 200, 5640, false, false, 'sm90s'], // no split: sm90's launch
  [1, 64, 8, false, false, 'sm90p'],
  [130, 72, 264, true, false, 'sm90p'],
  [257, 8, 520, true, true, 'sm90p'],
  [17, 1032, 37, false, true, 'sm90p'], // 17 k-tiles through 6 stages
  [20, 456, 33800, true, false, 'sm90p'], // 265 tiles of 8 k-tiles on 132 SMs: block 0 takes 3
  [1, 64, 8, false, false, 'sm90k'], // 1 k-tile, 1 block
  [1, 4096, 256, false, false, 'sm90k'], // 1 tile of 64 k-tiles, 16 blocks of 4
  [130, 1032, 264, true, true, 'sm90k'], // 4 tiles of 17 k-tiles, 17 blocks of 4: pieces of 5
  [257, 1544, 300, true, false, 'sm90k'], // 6 tiles of 25, 38 blocks of 4
  [300, 200, 5640, false, false, 'sm90k'], // 69 tiles of 4, 69 blocks of 4: no tile shared
  [130, 136, 34312, false, true, 'sm90k'], // 270 tiles: 132 whole, then 138 of 3 k-tiles over 104 blocks of 4
  [1, 64, 8, false, false, 'sm90c'], // one pair, its second row tile past M
  [130, 72, 264, true, false, 'sm90c'], // one pair of row tiles at 2 column tiles: 2 clusters
  [17, 1032, 37, false, true, 'sm90c'], // 17 k-tiles through 4 stages, in both blocks
  [257, 136, 8712, true, false, 'sm90c'], // 2 pairs x 35 column tiles = 70 pairs on 66 clusters
  [1, 64, 8, false, false, 'sm90pc'], // one pair, its second row tile past M; one consumer idle
  [17, 1032, 37, false, true, 'sm90pc'], // 17 k-tiles through 6 stages, in both blocks
  [257, 136, 8712, true, false, 'sm90pc'], // 2 pairs x 69 column tiles = 138 pairs on 66 clusters
] as Array<[number, number, number, boolean, boolean, ('gemv' | 'sm90' | 'sm90s' | 'sm90p' | 'sm90k' | 'sm90c' | 'sm90pc' | 'separate')?]>) {
  add({
    op: 'matmul',
    name: `R${r} K${k} N${n}${bias ? ' +bias' : ''}${f32Out ? ' f32 out' : ''}${variant ? ` ${variant}` : ''}`,
    prepare(g) {
      const x = g.act(r * k), w = g.weights(n * k, k), b = bias ? g.bias(n) : null;
      const inputs = [f(x, [r, k]), f(w, [n, k])];
      if (b) inputs.push(f(b, [n]));
      const y = ref.matmul(x, w, b, r, k, n);
      return {
        attrs: { ...(f32Out ? { outputDtype: 'f32' } : {}), ...gemmAttrs(variant) } as Attrs,
        inputs,
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, n], value: y.value, scale: y.scale }],
        what: `x ${fmt([r, k])} w ${fmt([n, k])}${b ? ` b [${n}]` : ''}${f32Out ? ' outputDtype f32' : ''}${variant ? ` variant ${variant}` : ''}`,
      };
    },
  });
}

// ---- matmul_add: the residual in the GEMM epilogue

// [R, K, N, bias, variant, aliased]: each GEMM path's epilogue (the tile kernel without and with
// split-K, whose last split or separate reduce adds the residual; the GEMV; the Hopper kernel),
// odd N (single-element stores), and on the CPU tier the sum written over the residual as the
// planner lays it out.
for (const [r, k, n, bias, variant, alias] of [
  [1, 32, 8, false],
  [3, 72, 24, true],
  [130, 256, 264, false],
  [1, 1024, 520, true],
  [17, 1024, 37, false],
  [1, 1024, 520, true, 'separate'],
  [17, 1024, 37, false, 'separate'],
  [300, 64, 5640, true],
  [1, 4104, 37, true, 'gemv'],
  [5, 520, 262, false, 'gemv'],
  [130, 72, 264, true, 'sm90'],
  [257, 200, 37, false, 'sm90'],
  [64, 2048, 200, true, 'sm90s'],
  [130, 1032, 264, false, 'sm90s'],
  [130, 72, 264, true, 'sm90p'],
  [257, 200, 37, false, 'sm90p'],
  [130, 1032, 264, true, 'sm90k'],
  [257, 200, 37, false, 'sm90k'],
  [130, 1032, 264, true, 'sm90c'],
  [257, 200, 37, false, 'sm90c'],
  [130, 72, 264, true, 'sm90pc'],
  [257, 200, 37, false, 'sm90pc'],
  [3, 264, 24, true, undefined, true],
  [130, 256, 264, false, undefined, true],
] as Array<[number, number, number, boolean, ('gemv' | 'sm90' | 'sm90s' | 'sm90p' | 'sm90k' | 'sm90c' | 'sm90pc' | 'separate')?, boolean?]>) {
  add({
    op: 'matmul_add',
    name: `R${r} K${k} N${n}${bias ? ' +bias' : ''}${variant ? ` ${variant}` : ''}${alias ? ' sum aliasing the residual' : ''}`,
    aliasSum: alias,
    prepare(g) {
      const x = g.act(r * k), w = g.weights(n * k, k), res = g.act(r * n), b = bias ? g.bias(n) : null;
      const inputs = [f(x, [r, k]), f(w, [n, k]), f(res, [r, n])];
      if (b) inputs.push(f(b, [n]));
      const y = ref.matmul(x, w, b, r, k, n);
      for (let i = 0; i < r * n; i++) y.value[i] += res[i];
      return {
        attrs: gemmAttrs(variant) as Attrs,
        inputs,
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, n], value: y.value, scale: y.scale }],
        what: `x ${fmt([r, k])} w ${fmt([n, k])} residual ${fmt([r, n])}${b ? ` b [${n}]` : ''}${variant ? ` variant ${variant}` : ''}${alias ? ' (sum written over the residual)' : ''}`,
      };
    },
  });
}

// ---- matmul_glu: the gated unit (SwiGLU, GeGLU) in the GEMM epilogue

// [R, K, I, act, bias, f32 out, variant]: w is [2I, K] in (gate, up) row pairs. Each GEMM path's
// epilogue: the tile kernel without and with split-K (its last split merges; 'separate': the
// reduce kernel gates), the large tile, the GEMV (a block's 4 rows are two pairs; I odd leaves
// the last block one pair), and every Hopper rung (sm90s's reduce gates; sm90k's last piece).
for (const [r, k, inner, act, bias, f32Out, variant] of [
  [1, 32, 4, 'silu', false, false],
  [3, 72, 12, 'gelu', true, false],
  [130, 256, 132, 'silu', false, false],
  [1, 1024, 260, 'silu', true, false],
  [17, 1024, 12, 'gelu_tanh', false, true],
  [1, 1024, 260, 'gelu', true, false, 'separate'],
  [17, 1024, 19, 'silu', false, false, 'separate'],
  [300, 64, 2820, 'silu', true, false],
  [1, 4104, 19, 'silu', true, false, 'gemv'],
  [5, 520, 131, 'gelu_tanh', false, true, 'gemv'],
  [8, 264, 2, 'silu', false, false, 'gemv'],
  [130, 72, 132, 'silu', true, false, 'sm90'],
  [257, 200, 19, 'gelu', false, false, 'sm90'],
  [130, 1032, 132, 'silu', true, true, 'sm90s'],
  [130, 72, 132, 'gelu_tanh', true, false, 'sm90p'],
  [130, 1032, 132, 'silu', true, false, 'sm90k'],
  [257, 136, 4356, 'silu', false, false, 'sm90c'],
  [257, 136, 4356, 'silu', true, false, 'sm90pc'],
] as Array<[number, number, number, ref.Act, boolean, boolean, ('gemv' | 'sm90' | 'sm90s' | 'sm90p' | 'sm90k' | 'sm90c' | 'sm90pc' | 'separate')?]>) {
  add({
    op: 'matmul_glu',
    name: `R${r} K${k} I${inner} ${act}${bias ? ' +bias' : ''}${f32Out ? ' f32 out' : ''}${variant ? ` ${variant}` : ''}`,
    prepare(g) {
      const n = 2 * inner;
      const x = g.act(r * k), w = g.weights(n * k, k), b = bias ? g.bias(n) : null;
      const inputs = [f(x, [r, k]), f(w, [n, k])];
      if (b) inputs.push(f(b, [n]));
      const y = ref.matmulGlu(x, w, b, r, k, inner, act);
      return {
        attrs: { act, ...(f32Out ? { outputDtype: 'f32' } : {}), ...gemmAttrs(variant) } as Attrs,
        inputs,
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, inner], value: y.value, scale: y.scale }],
        what: `x ${fmt([r, k])} w ${fmt([n, k])} in pairs${b ? ` b [${n}]` : ''} act ${act}${f32Out ? ' outputDtype f32' : ''}${variant ? ` variant ${variant}` : ''}`,
      };
    },
  });
}

// ---- an RMS norm folded into the GEMM (attr rmsEps)

// [op, R, K, N (matmul_glu: 2I), bias, variant]: where each rung gets its row scales: computed in
// the block (the GEMV; the 16-row tile, also with K split and merged, and the separate reduce's
// partials; the 32- and 64-row tiles up to 64 rows from their A fragments, unsplit or with the
// splits' sums merged, K off the 32-column k-tiles, odd N), or by ts_row_rstd before the launch
// (the 32- and 64-row tiles with the separate reduce or past 64 rows, the 128-row tile, every
// Hopper rung; sm90s's partials scaled before its reduce). Rows of x at very different scales,
// so a wrong row's scale shows.
for (const [op, r, k, n, bias, variant] of [
  ['matmul', 1, 32, 8, false],
  ['matmul', 3, 72, 24, true],
  ['matmul', 1, 1024, 520, true],
  ['matmul', 17, 1024, 24, false],
  ['matmul', 16, 1024, 264, true],
  ['matmul', 1, 1024, 520, false, 'separate'],
  ['matmul', 13, 520, 24, false, 'separate'],
  ['matmul', 65, 1024, 520, true],
  ['matmul', 33, 520, 264, true],
  ['matmul', 64, 64, 5640, false],
  ['matmul', 20, 4104, 37, false],
  ['matmul', 24, 1024, 520, false, 'separate'],
  ['matmul', 300, 64, 5640, false],
  ['matmul', 1, 4104, 37, true, 'gemv'],
  ['matmul', 5, 520, 262, false, 'gemv'],
  ['matmul', 130, 72, 264, true, 'sm90'],
  ['matmul', 130, 1032, 264, false, 'sm90s'],
  ['matmul', 130, 72, 264, true, 'sm90p'],
  ['matmul', 130, 1032, 264, true, 'sm90k'],
  ['matmul', 257, 136, 8712, false, 'sm90c'],
  ['matmul', 257, 136, 8712, true, 'sm90pc'],
  ['matmul_glu', 1, 1024, 520, false],
  ['matmul_glu', 130, 256, 264, true],
  ['matmul_glu', 40, 1024, 264, true],
  ['matmul_glu', 5, 520, 262, false, 'gemv'],
  ['matmul_glu', 130, 1032, 264, true, 'sm90s'],
] as Array<['matmul' | 'matmul_glu', number, number, number, boolean, ('gemv' | 'sm90' | 'sm90s' | 'sm90p' | 'sm90k' | 'sm90c' | 'sm90pc' | 'separate')?]>) {
  add({
    op,
    name: `R${r} K${k} N${n}${bias ? ' +bias' : ''} rms${variant ? ` ${variant}` : ''}`,
    prepare(g) {
      const eps = 1e-5;
      const x = g.act(r * k), w = g.weights(n * k, k), b = bias ? g.bias(n) : null;
      // Row r scaled by 2^(r % 5 - 2): rstd from 1/4 to 4 times a row's own.
      for (let i = 0; i < r; i++) for (let j = 0; j < k; j++) x[i * k + j] *= 2 ** ((i % 5) - 2);
      const inputs = [f(x, [r, k]), f(w, [n, k])];
      if (b) inputs.push(f(b, [n]));
      const y = op === 'matmul' ? ref.rmsMatmul(x, w, b, r, k, n, eps) : ref.matmulGlu(x, w, b, r, k, n / 2, 'silu', eps);
      return {
        attrs: { rmsEps: eps, ...(op === 'matmul_glu' ? { act: 'silu' } : {}), ...gemmAttrs(variant) } as Attrs,
        inputs,
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, op === 'matmul' ? n : n / 2], value: y.value, scale: y.scale }],
        what: `x ${fmt([r, k])} (rows at scales 1/4 to 4) w ${fmt([n, k])}${b ? ` b [${n}]` : ''} rmsEps ${eps}${variant ? ` variant ${variant}` : ''}`,
      };
    },
  });
}

// ---- elementwise

for (const [r, n, broadcast] of [
  [1, 8, false],
  [17, 264, false],
  [130, 520, false],
  [3, 24, true],
  [65, 264, true],
  [130, 8, true],
  [1, 520, true],
  // Widths off the 16-byte vectors: the flat kernel's scalar tail, the row kernel's scalar path.
  [3, 7, false],
  [5, 12, true],
] as Array<[number, number, boolean]>) {
  add({
    op: 'add',
    name: `${r}x${n}${broadcast ? ' + row' : ''}`,
    prepare(g) {
      const a = g.act(r * n), b = broadcast ? g.bias(n) : g.act(r * n);
      return {
        attrs: {},
        inputs: [f(a, [r, n]), f(b, broadcast ? [n] : [r, n])],
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, n], value: ref.add(a, b) }],
        what: `a ${fmt([r, n])} b ${fmt(broadcast ? [n] : [r, n])}`,
      };
    },
  });
}

for (const [r, n] of [[1, 8], [3, 24], [17, 264], [130, 520]]) {
  add({
    op: 'mul',
    name: `${r}x${n}`,
    prepare(g) {
      const a = g.act(r * n), b = g.act(r * n);
      return { attrs: {}, inputs: [f(a, [r, n]), f(b, [r, n])], step: plainStep(r), expect: [{ name: 'y', shape: [r, n], value: ref.mul(a, b) }], what: `a, b ${fmt([r, n])}` };
    },
  });
}

for (const [r, n, range] of [[1, 8, 2], [17, 264, 2], [65, 520, 2], [130, 24, 12], [1, 7, 2]]) {
  add({
    op: 'silu',
    name: `${r}x${n} U(+-${range})`,
    prepare(g) {
      const x = g.floats(r * n, -range, range);
      return { attrs: {}, inputs: [f(x, [r, n])], step: plainStep(r), expect: [{ name: 'y', shape: [r, n], value: ref.silu(x) }], what: `x ${fmt([r, n])} U(+-${range})` };
    },
  });
}

for (const approximate of ['none', 'tanh'] as const) {
  for (const [r, n, range] of [[1, 8, 2], [17, 264, 2], [130, 520, 2], [3, 24, 8], [1, 7, 2]]) {
    add({
      op: 'gelu',
      name: `${approximate} ${r}x${n} U(+-${range})`,
      prepare(g) {
        const x = g.floats(r * n, -range, range);
        return {
          attrs: { approximate },
          inputs: [f(x, [r, n])],
          step: plainStep(r),
          expect: [{ name: 'y', shape: [r, n], value: ref.gelu(x, approximate) }],
          what: `x ${fmt([r, n])} U(+-${range}) approximate ${approximate}`,
        };
      },
    });
  }
}

for (const act of ['silu', 'gelu', 'gelu_tanh'] as const) {
  for (const [r, inner] of [[1, 8], [17, 264], [65, 520], [130, 24], [3, 7], [1, 12]]) {
    add({
      op: 'act_mul',
      name: `${act} ${r}x2*${inner}`,
      prepare(g) {
        const gu = g.act(r * 2 * inner);
        return {
          attrs: { act },
          inputs: [f(gu, [r, 2 * inner])],
          step: plainStep(r),
          expect: [{ name: 'y', shape: [r, inner], value: ref.actMul(gu, r, inner, act) }],
          what: `gateUp ${fmt([r, 2 * inner])} act ${act}`,
        };
      },
    });
  }
}

for (const [r, c, start, count] of [[1, 24, 0, 8], [17, 520, 264, 256], [130, 264, 8, 24], [3, 72, 71, 1], [65, 1032, 520, 264]]) {
  add({
    op: 'slice_cols',
    name: `${r}x${c}[:, ${start}:${start + count}]`,
    prepare(g) {
      const x = g.act(r * c);
      return {
        attrs: { start, count },
        inputs: [f(x, [r, c])],
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, count], value: ref.sliceCols(x, r, c, start, count) }],
        what: `x ${fmt([r, c])} start ${start} count ${count}`,
      };
    },
  });
}

// ---- norms

for (const [r, n, group, eps] of [
  [1, 8, 8, 1e-6],
  [3, 24, 24, 1e-5],
  [17, 264, 264, 1e-6],
  [65, 520, 520, 1e-5],
  [130, 264, 264, 1e-6],
  [17, 256, 64, 1e-6],
  [3, 1024, 128, 1e-6],
  [5, 16, 8, 1e-6],
  [130, 96, 32, 1e-6],
  // Model widths: one block per row (block_sum) from 1032 on, 16-byte vectors up to 16384; past
  // that, and for widths that are not multiples of 8, the scalar path (team and block forms).
  [2, 4096, 4096, 1e-5],
  [3, 1032, 1032, 1e-6],
  [2, 16384, 16384, 1e-5],
  [2, 16392, 16392, 1e-5],
  [3, 36, 12, 1e-6],
  [3, 100, 100, 1e-6],
]) {
  add({
    op: 'rmsnorm',
    name: `${r}x${n}${group !== n ? ` groups of ${group}` : ''} eps ${eps}`,
    prepare(g) {
      const x = g.act(r * n), w = g.normWeights(group);
      return {
        attrs: { eps },
        inputs: [f(x, [r, n]), f(w, [group])],
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, n], value: ref.rmsnorm(x, w, eps) }],
        what: `x ${fmt([r, n])} w [${group}] eps ${eps}`,
      };
    },
  });
}

for (const [r, n, offset] of [[1, 8, 0], [3, 24, 0], [17, 264, 0], [130, 520, 0], [65, 72, 4], [2, 2048, 4], [2, 1100, 0]]) {
  add({
    op: 'layernorm',
    name: `${r}x${n}${offset ? ` mean ${offset}` : ''}`,
    prepare(g) {
      const x = g.floats(r * n, offset - 2, offset + 2), w = g.normWeights(n), b = g.bias(n);
      return {
        attrs: { eps: 1e-5 },
        inputs: [f(x, [r, n]), f(w, [n]), f(b, [n])],
        step: plainStep(r),
        expect: [{ name: 'y', shape: [r, n], value: ref.layernorm(x, w, b, 1e-5) }],
        what: `x ${fmt([r, n])} U(${offset - 2}, ${offset + 2}) eps 1e-5`,
      };
    },
  });
}

for (const kind of ['rmsnorm', 'layernorm'] as const) {
  for (const [r, n, alias] of [
    [1, 8, false],
    [3, 24, false],
    [17, 264, false],
    [65, 520, false],
    [130, 24, false],
    [2, 4096, false],
    [2, 1100, false],
    [3, 264, true],
    [130, 520, true],
  ] as Array<[number, number, boolean]>) {
    const op = kind === 'rmsnorm' ? 'add_rmsnorm' : 'add_layernorm';
    const eps = kind === 'rmsnorm' ? 1e-6 : 1e-5;
    add({
      op,
      name: `${r}x${n}${alias ? ' sum aliasing the residual' : ''}`,
      aliasSum: alias,
      prepare(g) {
        const res = g.act(r * n), delta = g.act(r * n), w = g.normWeights(n);
        const inputs = [f(res, [r, n]), f(delta, [r, n]), f(w, [n])];
        let out: { sum: Float64Array; normed: Float64Array };
        if (kind === 'rmsnorm') out = ref.addRmsnorm(res, delta, w, eps);
        else {
          const b = g.bias(n);
          inputs.push(f(b, [n]));
          out = ref.addLayernorm(res, delta, w, b, eps);
        }
        return {
          attrs: { eps },
          inputs,
          step: plainStep(r),
          expect: [
            { name: 'sum', shape: [r, n], value: out.sum },
            { name: 'normed', shape: [r, n], value: out.normed },
          ],
          what: `residual, delta ${fmt([r, n])} eps ${eps}${alias ? ' (sum written over residual)' : ''}`,
        };
      },
    });
  }
}

// ---- rope

const LLAMA3: RopeScaling = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };
const LINEAR: RopeScaling = { type: 'linear', factor: 4 };

function scalingName(s: RopeScaling | null): string {
  return s ? s.type : 'default';
}

for (const [tokens, heads, hd, rotaryDim, theta, scaling, maxPos] of [
  [1, 1, 8, 8, 10000, null, 1],
  [17, 4, 64, 64, 1e6, null, 4096],
  [3, 2, 64, 16, 10000, null, 2048],
  [65, 8, 128, 32, 10000, null, 8192],
  [17, 3, 32, 32, 10000, LINEAR, 16384],
  [130, 8, 128, 128, 500000, LLAMA3, 131072],
  [5, 12, 16, 16, 10000, null, 32768],
  [24, 2, 128, 64, 500000, LLAMA3, 65536],
] as Array<[number, number, number, number, number, RopeScaling | null, number]>) {
  add({
    op: 'rope',
    name: `T${tokens} H${heads} hd${hd} rot${rotaryDim} ${scalingName(scaling)} pos<${maxPos}`,
    prepare(g) {
      const x = g.act(tokens * heads * hd);
      const positions = Array.from({ length: tokens }, (_, i) => (i === 0 ? maxPos - 1 : i === 1 ? 0 : g.int(maxPos)));
      const def: ref.RopeDef = { rotaryDim, theta, scaling };
      return {
        attrs: { numHeads: heads, headDim: hd, rotaryDim, theta, scaling: scaling as unknown as AttrValue },
        inputs: [f(x, [tokens, heads * hd]), i32(positions)],
        step: plainStep(tokens, { positions: Int32Array.from(positions) }),
        expect: [{ name: 'y', shape: [tokens, heads * hd], value: ref.rope(x, positions, heads, hd, def) }],
        what: `x ${fmt([tokens, heads * hd])} heads ${heads} headDim ${hd} rotaryDim ${rotaryDim} theta ${theta} scaling ${JSON.stringify(scaling)} positions < ${maxPos}`,
      };
    },
  });
}

// ---- KV cache writes

/** `tokens` slots: distinct random slots of the pool, the listed token indices set to -1. */
function drawSlots(g: Gen, tokens: number, poolSlots: number, skip: (t: number) => boolean): number[] {
  const slots = g.distinct(tokens, poolSlots);
  return slots.map((s, t) => (skip(t) ? -1 : s));
}

for (const [tokens, kvHeads, hd, bs, blocks, skipEvery] of [
  [1, 1, 8, 4, 3, 0],
  [17, 2, 64, 16, 8, 5],
  [65, 8, 16, 4, 40, 0],
  [3, 4, 32, 16, 2, 1],
  [130, 4, 128, 16, 12, 7],
  [24, 1, 128, 4, 9, 3],
]) {
  add({
    op: 'kv_write',
    name: `T${tokens} KV${kvHeads} hd${hd} bs${bs} N${blocks}${skipEvery === 1 ? ' all slots -1' : skipEvery ? ` slot -1 every ${skipEvery} tokens` : ''}`,
    prepare(g) {
      const shape = [2, blocks, bs, kvHeads, hd];
      const cache = g.act(numel(shape));
      const k = g.act(tokens * kvHeads * hd), v = g.act(tokens * kvHeads * hd);
      const slots = drawSlots(g, tokens, blocks * bs, (t) => skipEvery > 0 && t % skipEvery === skipEvery - 1);
      const out = ref.kvWrite(cache, shape, k, v, slots);
      return {
        attrs: {},
        inputs: [f(k, [tokens, kvHeads * hd]), f(v, [tokens, kvHeads * hd]), f(cache, shape), i32(slots)],
        step: plainStep(tokens, { slotMapping: Int32Array.from(slots) }),
        expect: [{ name: 'cache', shape, value: out.cache, written: out.written }],
        what: `k, v ${fmt([tokens, kvHeads * hd])} cache ${fmt(shape)} slots ${slots.filter((s) => s < 0).length} of ${tokens} -1`,
      };
    },
  });
}

for (const [tokens, heads, kvHeads, hd, bs, blocks, rope, norm, skipEvery] of [
  [17, 4, 4, 64, 16, 4, { rotaryDim: 64, theta: 10000, scaling: null }, false, 0],
  [5, 8, 2, 128, 16, 3, { rotaryDim: 128, theta: 1e6, scaling: null }, true, 2],
  [65, 16, 2, 16, 4, 20, null, false, 0],
  [1, 2, 1, 32, 4, 2, { rotaryDim: 16, theta: 500000, scaling: LLAMA3 }, true, 0],
  [130, 12, 12, 64, 16, 10, null, false, 9],
  [3, 4, 1, 8, 4, 2, { rotaryDim: 8, theta: 10000, scaling: LINEAR }, true, 1],
  [24, 8, 4, 32, 4, 8, null, true, 4],
  [33, 8, 1, 128, 16, 3, { rotaryDim: 64, theta: 10000, scaling: null }, false, 0],
] as Array<[number, number, number, number, number, number, ref.RopeDef | null, boolean, number]>) {
  add({
    op: 'rope_kv_write',
    name:
      `T${tokens} H${heads} KV${kvHeads} hd${hd} bs${bs} ` +
      `${rope ? `rope rot${rope.rotaryDim} ${scalingName(rope.scaling)}` : 'rope null'}${norm ? ' q/k norm' : ''}` +
      `${skipEvery === 1 ? ' all slots -1' : skipEvery ? ` slot -1 every ${skipEvery} tokens` : ''}`,
    prepare(g) {
      const shape = [2, blocks, bs, kvHeads, hd];
      const width = (heads + 2 * kvHeads) * hd;
      const qkv = g.act(tokens * width);
      const cache = g.act(numel(shape));
      const positions = Array.from({ length: tokens }, () => g.int(40000));
      const slots = drawSlots(g, tokens, blocks * bs, (t) => skipEvery > 0 && t % skipEvery === skipEvery - 1);
      const qNorm = norm ? g.normWeights(hd) : null, kNorm = norm ? g.normWeights(hd) : null;
      const eps = norm ? 1e-6 : null;
      const inputs = [f(qkv, [tokens, width]), i32(positions), f(cache, shape), i32(slots)];
      if (qNorm && kNorm) inputs.push(f(qNorm, [hd]), f(kNorm, [hd]));
      const out = ref.ropeKvWrite(qkv, positions, cache, shape, slots, { numHeads: heads, numKvHeads: kvHeads, headDim: hd, rope, qkNormEps: eps }, qNorm, kNorm);
      return {
        attrs: { numHeads: heads, numKvHeads: kvHeads, headDim: hd, rope: rope as unknown as AttrValue, qkNormEps: eps },
        inputs,
        step: plainStep(tokens, { positions: Int32Array.from(positions), slotMapping: Int32Array.from(slots) }),
        expect: [
          { name: 'q', shape: [tokens, heads * hd], value: out.q },
          { name: 'cache', shape, value: out.cache, written: out.written },
        ],
        what: `qkv ${fmt([tokens, width])} cache ${fmt(shape)} rope ${JSON.stringify(rope)} qkNormEps ${eps} slots ${slots.filter((s) => s < 0).length} of ${tokens} -1`,
      };
    },
  });
}

// ---- matmul_rope_kv: RoPE and the KV write in the q/k/v GEMM's epilogue

// [T, K, H, KV, hd, rope, bias, rms, slot -1 every, variant]: w's q and k rows in rope_rows order
// (the op's contract), random positions to 40000 and slots in a pool of 3 blocks of 16 past T.
// Each rung's epilogue: the tile kernel with and without split-K (merged by its last split;
// 'separate': the reduce kernel writes), the large tiles, the GEMV, every Hopper rung; partial
// rotary dims, no RoPE (GPT-2), a bias, a folded norm, padding rows (slot -1).
for (const [t, k, heads, kvHeads, hd, rope, bias, rms, skipEvery, variant] of [
  [1, 64, 4, 2, 16, { rotaryDim: 16, theta: 10000, scaling: null }, false, false, 0],
  [5, 256, 8, 2, 64, { rotaryDim: 64, theta: 500000, scaling: LLAMA3 }, true, true, 2],
  [17, 520, 4, 4, 32, { rotaryDim: 16, theta: 10000, scaling: null }, false, true, 0],
  [1, 1024, 8, 1, 128, { rotaryDim: 128, theta: 1e6, scaling: null }, false, true, 0],
  [3, 1024, 4, 2, 64, { rotaryDim: 64, theta: 10000, scaling: LINEAR }, true, false, 0, 'separate'],
  [130, 72, 4, 2, 32, { rotaryDim: 32, theta: 10000, scaling: null }, true, true, 7],
  [300, 64, 12, 4, 64, { rotaryDim: 64, theta: 10000, scaling: null }, false, false, 0],
  [24, 64, 4, 4, 16, null, true, false, 5],
  [1, 1032, 8, 2, 64, { rotaryDim: 64, theta: 500000, scaling: null }, false, true, 0, 'gemv'],
  [6, 264, 2, 1, 16, { rotaryDim: 8, theta: 10000, scaling: null }, true, false, 3, 'gemv'],
  [130, 72, 4, 2, 32, { rotaryDim: 32, theta: 10000, scaling: null }, true, true, 0, 'sm90'],
  [130, 1032, 4, 2, 64, { rotaryDim: 64, theta: 10000, scaling: null }, false, true, 0, 'sm90s'],
  [130, 136, 4, 2, 32, { rotaryDim: 32, theta: 10000, scaling: null }, true, false, 4, 'sm90p'],
  [130, 1032, 8, 2, 64, { rotaryDim: 64, theta: 10000, scaling: null }, false, false, 0, 'sm90k'],
  [257, 136, 16, 4, 64, { rotaryDim: 64, theta: 10000, scaling: null }, true, true, 0, 'sm90c'],
  [257, 136, 16, 4, 64, { rotaryDim: 32, theta: 10000, scaling: null }, false, false, 9, 'sm90pc'],
] as Array<[number, number, number, number, number, ref.RopeDef | null, boolean, boolean, number, ('gemv' | 'sm90' | 'sm90s' | 'sm90p' | 'sm90k' | 'sm90c' | 'sm90pc' | 'separate')?]>) {
  add({
    op: 'matmul_rope_kv',
    name:
      `T${t} K${k} H${heads} KV${kvHeads} hd${hd} ${rope ? `rot${rope.rotaryDim} ${scalingName(rope.scaling)}` : 'rope null'}` +
      `${bias ? ' +bias' : ''}${rms ? ' rms' : ''}${skipEvery ? ` slot -1 every ${skipEvery}` : ''}${variant ? ` ${variant}` : ''}`,
    prepare(g) {
      const n = (heads + 2 * kvHeads) * hd;
      const bs = 16, blocks = Math.ceil(t / bs) + 3;
      const shape = [2, blocks, bs, kvHeads, hd];
      const x = g.act(t * k), w = g.weights(n * k, k), b = bias ? g.bias(n) : null;
      const cache = g.act(numel(shape));
      const positions = Array.from({ length: t }, () => g.int(40000));
      const slots = drawSlots(g, t, blocks * bs, (i) => skipEvery > 0 && i % skipEvery === skipEvery - 1);
      const eps = rms ? 1e-5 : undefined;
      const inputs = [f(x, [t, k]), f(w, [n, k]), i32(positions), f(cache, shape), i32(slots)];
      if (b) inputs.push(f(b, [n]));
      const out = ref.matmulRopeKv(x, w, b, t, k, positions, cache, shape, slots, { numHeads: heads, numKvHeads: kvHeads, headDim: hd, rope, rmsEps: eps });
      return {
        attrs: { numHeads: heads, numKvHeads: kvHeads, headDim: hd, rope: rope as unknown as AttrValue, ...(eps !== undefined ? { rmsEps: eps } : {}), ...gemmAttrs(variant) } as Attrs,
        inputs,
        step: plainStep(t, { positions: Int32Array.from(positions), slotMapping: Int32Array.from(slots) }),
        expect: [
          { name: 'q', shape: [t, heads * hd], value: out.q.value, scale: out.q.scale },
          { name: 'cache', shape, value: out.cache, written: out.written, scale: out.cacheScale },
        ],
        what: `x ${fmt([t, k])} w ${fmt([n, k])}${b ? ` b [${n}]` : ''} cache ${fmt(shape)} rope ${JSON.stringify(rope)}${eps !== undefined ? ` rmsEps ${eps}` : ''} slots ${slots.filter((s) => s < 0).length} of ${t} -1${variant ? ` variant ${variant}` : ''}`,
      };
    },
  });
}

// ---- attention

interface AttnCase {
  name: string;
  heads: number;
  kvHeads: number;
  hd: number;
  bs: number;
  /** [context length after this step's writes, new tokens] per sequence. */
  seqs: Array<[number, number]>;
  window?: number;
  scale?: number;
  /** false: every row attends to the whole context (encoder-style). */
  causal?: boolean;
  /** A rung of the Hopper prefill kernel (kernels/attention_sm90.cu) on compute capability 9; the mma.sync kernel elsewhere. */
  variant?: 'sm90' | 'sm90o';
  /** Decode split-KV's merge in a second launch (the unfused rung) instead of the last split's block. */
  combine?: 'separate';
}

for (const c of ([
  { name: 'one decode token, context 1', heads: 1, kvHeads: 1, hd: 8, bs: 4, seqs: [[1, 1]] },
  { name: 'pure decode, 5 sequences', heads: 8, kvHeads: 2, hd: 128, bs: 16, seqs: [[1, 1], [7, 1], [17, 1], [33, 1], [130, 1]] },
  { name: 'prefill, no cached prefix', heads: 4, kvHeads: 4, hd: 32, bs: 4, seqs: [[17, 17]] },
  { name: 'prefill after cached prefixes', heads: 8, kvHeads: 1, hd: 64, bs: 16, seqs: [[40, 13], [65, 65], [100, 36]] },
  { name: 'mixed prefill and decode, many blocks', heads: 4, kvHeads: 2, hd: 16, bs: 4, seqs: [[300, 1], [37, 37], [130, 3], [1, 1], [66, 2]] },
  { name: 'sliding window 8', heads: 4, kvHeads: 2, hd: 64, bs: 16, seqs: [[50, 1], [33, 20], [5, 5]], window: 8 },
  { name: 'sliding window 1', heads: 2, kvHeads: 1, hd: 32, bs: 4, seqs: [[9, 3], [1, 1]], window: 1 },
  { name: 'sliding window past the context', heads: 2, kvHeads: 2, hd: 16, bs: 4, seqs: [[20, 6], [3, 1]], window: 4096 },
  { name: 'sliding window 16, chunked prefill', heads: 8, kvHeads: 4, hd: 32, bs: 4, seqs: [[77, 30], [16, 1], [18, 18]], window: 16 },
  { name: 'GQA 8, long contexts', heads: 16, kvHeads: 2, hd: 8, bs: 16, seqs: [[513, 1], [260, 17]] },
  { name: 'long decode, 64 blocks', heads: 4, kvHeads: 2, hd: 128, bs: 16, seqs: [[1024, 1], [700, 1], [129, 1]] },
  { name: 'custom scale, GQA 4', heads: 8, kvHeads: 2, hd: 16, bs: 16, seqs: [[24, 24], [48, 3]], scale: 0.3 },
  { name: 'not causal, prefill', heads: 4, kvHeads: 2, hd: 64, bs: 16, seqs: [[77, 77], [5, 5]], causal: false },
  { name: 'not causal, after cached prefixes, GQA 8', heads: 16, kvHeads: 2, hd: 128, bs: 4, seqs: [[130, 33], [66, 1], [40, 40]], causal: false },
  // Head dim 256 (Gemma's) has its own variants in both regimes (32-row prefill tiles of 16 keys,
  // Q from shared memory); decode at hd 64 its own too, split over a long context.
  { name: 'prefill hd256 after a cached prefix, GQA 2', heads: 4, kvHeads: 2, hd: 256, bs: 16, seqs: [[70, 37], [33, 33]] },
  { name: 'decode hd256, split', heads: 4, kvHeads: 2, hd: 256, bs: 16, seqs: [[600, 1], [17, 1]] },
  { name: 'decode hd64, long context, split', heads: 8, kvHeads: 8, hd: 64, bs: 16, seqs: [[2000, 1], [90, 1]] },
  // Split-KV's merge runs in the last split of each row tile to finish (the splits of the short
  // sequences above see no key: m = -inf); three row tiles of MQA's 40 heads, each with its own
  // counter; and the unfused rung, a second launch.
  { name: 'decode MQA 40 heads, three row tiles, split', heads: 40, kvHeads: 1, hd: 64, bs: 16, seqs: [[900, 1], [300, 1]] },
  { name: 'long decode, 64 blocks, combine in a second launch', heads: 4, kvHeads: 2, hd: 128, bs: 16, seqs: [[1024, 1], [700, 1], [129, 1]], combine: 'separate' },
  { name: 'decode hd256, split, combine in a second launch', heads: 4, kvHeads: 2, hd: 256, bs: 16, seqs: [[600, 1], [17, 1]], combine: 'separate' },
  // The Hopper prefill kernel: 128 packed rows and 128-key tiles, so lengths off both; TMA boxes of
  // min(bs, 128) tokens (bs 8 to 256); GQA ratios that do not divide 128; windows and non-causal.
  { name: 'sm90 prefill hd128 GQA 4, lengths off the tiles', heads: 8, kvHeads: 2, hd: 128, bs: 16, seqs: [[300, 300], [77, 77], [1, 1]], variant: 'sm90' },
  { name: 'sm90 after cached prefixes, hd64, bs 8', heads: 4, kvHeads: 4, hd: 64, bs: 8, seqs: [[200, 70], [129, 1], [520, 130]], variant: 'sm90' },
  { name: 'sm90 sliding window 100, GQA 8, chunked', heads: 16, kvHeads: 2, hd: 128, bs: 32, seqs: [[400, 150], [64, 64]], window: 100, variant: 'sm90' },
  { name: 'sm90 not causal, hd64, bs 256', heads: 8, kvHeads: 2, hd: 64, bs: 256, seqs: [[300, 300], [50, 20]], causal: false, variant: 'sm90' },
  { name: 'sm90 GQA 16, eight tokens a block', heads: 16, kvHeads: 1, hd: 128, bs: 16, seqs: [[140, 140]], variant: 'sm90' },
  { name: 'sm90 GQA 3, hd64', heads: 6, kvHeads: 2, hd: 64, bs: 16, seqs: [[97, 97], [33, 10]], variant: 'sm90' },
] as AttnCase[]).flatMap((c) => (c.variant === 'sm90' ? [c, { ...c, name: c.name.replace(/^sm90/, 'sm90o'), variant: 'sm90o' as const }] : [c]))) {
  add({
    op: 'attention',
    name: c.name,
    prepare(g) {
      const { heads, kvHeads, hd, bs, seqs } = c;
      const { blocks, width, tables, queryStart, contextLens, tokens, slot } = pagedLayout(seqs, bs, (n) => g.distinct(n, n));
      const positions: number[] = [];
      const slotMapping: number[] = [];
      seqs.forEach(([ctx, q], b) => {
        for (let i = 0; i < q; i++) {
          const p = ctx - q + i;
          positions.push(p);
          slotMapping.push(slot(b, p));
        }
      });
      const shape = [2, blocks, bs, kvHeads, hd];
      const cache = g.act(numel(shape));
      const qv = g.act(tokens * heads * hd);
      const scale = c.scale ?? 1 / Math.sqrt(hd);
      const window = c.window ?? null;
      const causal = c.causal ?? true;
      const y = ref.attention(qv, cache, shape, queryStart, contextLens, tables, width, { numHeads: heads, numKvHeads: kvHeads, headDim: hd, scale, slidingWindow: window, causal });
      const step: StepBatch = {
        numTokens: tokens,
        numSeqs: seqs.length,
        numLogitRows: seqs.length,
        tokenIds: new Int32Array(tokens),
        positions: Int32Array.from(positions),
        slotMapping: Int32Array.from(slotMapping),
        queryStart: Int32Array.from(queryStart),
        contextLens: Int32Array.from(contextLens),
        blockTables: tables,
        blockTableWidth: width,
        logitsIndices: Int32Array.from(queryStart.slice(1), (e) => e - 1),
      };
      return {
        attrs: { numHeads: heads, numKvHeads: kvHeads, headDim: hd, scale, slidingWindow: window, ...(causal ? {} : { causal: false }), ...(c.variant ? { attentionVariant: c.variant } : {}), ...(c.combine ? { attentionCombine: c.combine } : {}) },
        inputs: [f(qv, [tokens, heads * hd]), f(cache, shape), i32(queryStart), i32(contextLens), i32(tables, [seqs.length, width])],
        step,
        expect: [{ name: 'y', shape: [tokens, heads * hd], value: y.value, scale: y.scale }],
        what:
          `q ${fmt([tokens, heads * hd])} H ${heads} KV ${kvHeads} hd ${hd} cache ${fmt(shape)} ` +
          `seqs (context, new) ${seqs.map(([a, b]) => `(${a}, ${b})`).join(' ')} window ${window} scale ${scale.toPrecision(4)}${causal ? '' : ' not causal'}`,
      };
    },
  });
}

// ---- the shared RoPE frequencies (no backend: every backend takes them from ropeInvFreq)

describe('rope frequencies: src/graph/rope.ts ropeInvFreq against their definition', () => {
  const defs: ref.RopeDef[] = [];
  for (const rotaryDim of [8, 16, 32, 64, 128])
    for (const theta of [10000, 500000, 1e6])
      for (const scaling of [null, LINEAR, LLAMA3, { ...LLAMA3, factor: 32, originalMaxPositions: 4096 } as RopeScaling]) defs.push({ rotaryDim, theta, scaling });
  it(`${defs.length} settings: rotaryDim 8..128, theta 1e4..1e6, default, linear and llama3 scaling`, () => {
    // ropeInvFreq works in f32 (a few roundings of 2^-24 each): relative 1e-6 is ample.
    let worst = 0;
    for (const def of defs) {
      const got = ropeInvFreq(def), want = ref.invFreq(def);
      expect(got.length, JSON.stringify(def)).toBe(want.length);
      for (let i = 0; i < want.length; i++) {
        const r = Math.abs(got[i] - want[i]) / (1e-6 * want[i]);
        if (!(r <= 1)) throw new Error(`ropeInvFreq ${JSON.stringify(def)}: inv_freq[${i}] = ${got[i]}, defined as ${want[i]}`);
        worst = Math.max(worst, r);
      }
    }
    console.log(`[conformance] ropeInvFreq   ${String(defs.length).padStart(3)} settings, worst error ${worst.toFixed(4)} of tolerance`);
  });
});

// ---------------------------------------------------------------- running and checking

interface Tolerance {
  atol: number;
  rtol: number;
}

const TOLERANCE: Record<Storage, Tolerance> = {
  f32: { atol: 1e-4, rtol: 1e-4 },
  bf16: { atol: 2e-2, rtol: 2e-2 },
  f16: { atol: 3e-3, rtol: 3e-3 },
};

function unravel(i: number, shape: readonly number[]): string {
  const idx: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(i % shape[d]);
    i = Math.floor(i / shape[d]);
  }
  return idx.join(', ');
}

/** Checks one output; returns its worst |error| / tolerance (untouched cache elements: exact). */
function compare(context: string, got: HostTensor, e: Expected, tol: Tolerance): number {
  if (got.shape.length !== e.shape.length || got.shape.some((d, i) => d !== e.shape[i]))
    throw new Error(`${context}: output ${e.name} has shape ${fmt(got.shape)}, expected ${fmt(e.shape)}`);
  if (got.data.length !== e.value.length) throw new Error(`${context}: output ${e.name} has ${got.data.length} elements, expected ${e.value.length}`);
  let worst = 0;
  let bad = 0, nan = 0, changed = 0;
  const examples: string[] = [];
  for (let i = 0; i < e.value.length; i++) {
    const g = got.data[i], w = e.value[i];
    let ratio: number;
    let allowed: number;
    if (Number.isNaN(g)) {
      nan++;
      ratio = Infinity;
      allowed = 0;
    } else if (e.written && !e.written[i]) {
      allowed = 0;
      ratio = g === w ? 0 : Infinity;
      if (ratio) changed++;
    } else {
      allowed = tol.atol * Math.max(1, e.scale ? e.scale[i] : 1) + tol.rtol * Math.abs(w);
      ratio = Math.abs(g - w) / allowed;
    }
    if (!(ratio <= 1)) {
      bad++;
      if (examples.length < 6) examples.push(`[${unravel(i, e.shape)}] got ${g} want ${w} (allowed ${allowed.toExponential(2)})`);
    }
    if (ratio > worst) worst = ratio;
  }
  if (bad)
    throw new Error(
      `${context}: output ${e.name} ${fmt(e.shape)}: ${bad} of ${e.value.length} elements wrong` +
        `${nan ? ` (${nan} NaN: never written?)` : ''}${changed ? ` (${changed} cache elements changed that the op must not write)` : ''}; ` +
        `first: ${examples.join('; ')}`,
    );
  return worst;
}

interface Tier {
  name: 'cpu' | 'cuda';
  storage: Storage;
  title: string;
  /** Why the tier is skipped, or null when it runs. */
  skip: string | null;
  create: () => Backend;
  /** Attrs every runOp of the tier gets besides the case's (the CUDA backend's storageDtype). */
  attrs?: Attrs;
}

async function cudaTier(storage: 'bf16' | 'f16'): Promise<Tier> {
  const base = { name: 'cuda' as const, storage, ...(storage === 'f16' ? { attrs: { storageDtype: 'f16' } } : {}) };
  try {
    const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
    const { cudaTarget } = await import('../cuda/emu/target.js');
    const target = cudaTarget();
    if (!target.skip) return { ...base, title: `cuda (${storage}): ${target.title}`, skip: null, create: () => CudaBackend.create() };
    return { ...base, title: `cuda (${storage}) tier skipped: ${target.skip}`, skip: target.skip, create: () => CudaBackend.create() };
  } catch (err) {
    const reason = `the CUDA backend could not be loaded: ${(err as Error).message.split('\n')[0]}`;
    return { ...base, title: `cuda (${storage}) tier skipped: ${reason}`, skip: reason, create: () => { throw new Error(reason); } };
  }
}

const TIERS: Tier[] = [{ name: 'cpu', storage: 'f32', title: 'cpu (f32)', skip: null, create: () => new CpuBackend() }, await cudaTier('bf16'), await cudaTier('f16')];
for (const t of TIERS) if (t.skip) console.log(`[conformance] ${t.name} (${t.storage}) tier skipped: ${t.skip}`);

const OP_ORDER = Object.keys(OPS) as OpName[];

/** The CUDA case that faulted in this process, once one has: nothing on the GPU runs after it. */
let contextLostIn: string | null = null;

for (const tier of TIERS) {
  const suite = tier.skip ? describe.skip : describe;
  suite(tier.title, () => {
    let backend: Backend;
    const stats = new Map<OpName, { cases: number; worst: number; where: string }>();

    beforeAll(() => {
      backend = tier.create();
    });

    afterAll(async () => {
      if (!(tier.name === 'cuda' && contextLostIn)) await backend?.dispose();
      const lines = OP_ORDER.filter((op) => stats.has(op)).map((op) => {
        const s = stats.get(op)!;
        return `[conformance ${tier.name} ${tier.storage}] ${op.padEnd(14)} ${String(s.cases).padStart(3)} cases, worst error ${s.worst.toFixed(4)} of tolerance (${s.where})`;
      });
      console.log(lines.join('\n'));
    });

    const cases = CASES.filter((c) => !(tier.name !== 'cpu' && (c.loadTime || c.aliasSum)));
    for (const op of OP_ORDER) {
      const mine = cases.filter((c) => c.op === op);
      if (mine.length === 0) continue;
      describe(op, () => {
        for (const c of mine) {
          it(c.name, async (ctx) => {
            // A macrotask turn per case. The emulated launches and the references are synchronous,
            // and awaiting settled promises never leaves the microtask queue, so without it a whole
            // tier runs as one turn of the event loop, and past 60 s vitest's worker times out
            // reporting progress ("Timeout calling onTaskUpdate") though every case passes.
            await new Promise<void>((resolve) => setImmediate(resolve));
            if (tier.name === 'cuda' && contextLostIn) ctx.skip(`the CUDA context was lost to a kernel fault in ${contextLostIn}`);
            const seed = hash32(`${BASE_SEED}|${c.op}|${c.name}`);
            const p = c.prepare(new Gen(seed, tier.storage));
            const context = `${tier.name} (${tier.storage}) ${c.op} [${c.name}] ${p.what}; seed ${BASE_SEED} (TESSERA_CONFORMANCE_SEED=${BASE_SEED})`;
            const shapes = outputShapes(OPS[c.op], p.inputs.map((t) => t.shape), p.attrs) as number[][];
            expect(shapes, `${context}: output shapes from ops.ts`).toEqual(p.expect.map((e) => e.shape));
            // The backend may update a state input in place: give it copies.
            const inputs = p.inputs.map((t): HostTensor => ({ data: t.data.slice(), shape: [...t.shape] }));
            let outputs: HostTensor[];
            if (c.aliasSum) {
              const [[o, i]] = OPS[c.op].inplace!;
              outputs = shapes.map((sh, k): HostTensor => (k === o ? inputs[i] : { data: new Float32Array(numel(sh)).fill(NaN), shape: sh }));
              CPU_KERNELS[c.op]({ inputs, output: outputs[0], outputs, attrs: p.attrs, step: p.step });
            } else {
              try {
                outputs = await backend.runOp(c.op, tier.attrs ? { ...p.attrs, ...tier.attrs } : p.attrs, inputs, shapes, p.step);
              } catch (err) {
                if (tier.name === 'cuda' && (err as { contextLost?: boolean }).contextLost === true) {
                  contextLostIn = `${tier.storage} ${c.op} [${c.name}]`;
                  const log = process.env.TESSERA_FAULT_LOG;
                  if (log) appendFileSync(log, `${tier.storage}\t${c.op}\t${c.name}\t${(err as Error).message}\n`);
                }
                throw err;
              }
            }
            expect(outputs.length, `${context}: number of outputs`).toBe(p.expect.length);
            let worst = 0;
            p.expect.forEach((e, i) => {
              worst = Math.max(worst, compare(context, outputs[i], e, TOLERANCE[tier.storage]));
            });
            const s = stats.get(c.op) ?? { cases: 0, worst: 0, where: '' };
            s.cases++;
            if (worst >= s.worst) {
              s.worst = worst;
              s.where = c.name;
            }
            stats.set(c.op, s);
          });
        }
      });
    }
  });
}
