/**
 * Host-side logic of the memory-bound CUDA launchers (ops/norm.ts, ops/elementwise.ts,
 * ops/rope_kv.ts), no GPU: the launch plans cover every element within the kernels' limits
 * (__launch_bounds__, whole warps, grid.y), and each launcher passes its kernel the arguments it
 * declares, picks the vector or scalar path from widths and alignment, launches nothing for zero
 * rows and names the op when it refuses a shape.
 */
import { describe, expect, it } from 'vitest';
import { ropeAttrs, ropeInvFreq } from '../../src/graph/rope.js';
import type { Attrs } from '../../src/graph/ir.js';
import { packArgs, type ArgValue, type KernelDecl } from '../../src/backend/cuda/kernel_decl.js';
import * as ew from '../../src/backend/cuda/ops/elementwise.js';
import * as norm from '../../src/backend/cuda/ops/norm.js';
import * as rk from '../../src/backend/cuda/ops/rope_kv.js';
import type { CudaOp, CudaOpContext, DeviceDType, DeviceTensor, Launch } from '../../src/backend/cuda/ops/types.js';
import { fakeDevice } from './fake_device.js';

interface Recorded {
  decl: KernelDecl;
  launch: Launch;
  args: Record<string, ArgValue>;
}

let nextPtr = 0x7f0000000000n;
function tensor(shape: number[], dtype: DeviceDType = 'bf16', misalign = 0): DeviceTensor {
  const ptr = nextPtr + BigInt(misalign);
  nextPtr += 1n << 24n;
  return { ptr, shape, dtype };
}

function run(op: CudaOp, inputs: DeviceTensor[], outputs: DeviceTensor[], attrs: Attrs = {}): { launches: Recorded[]; constants: Map<string, Float32Array> } {
  const launches: Recorded[] = [];
  const constants = new Map<string, Float32Array>();
  const ctx: CudaOpContext = {
    inputs,
    outputs,
    attrs,
    step: { numTokens: 0, numSeqs: 0, numLogitRows: 0, blockTableWidth: 0, maxContextLen: 0, maxQueryLen: 0 },
    device: fakeDevice(),
    launch(decl, launch, args) {
      // Every declared argument and nothing else, as the real launch packs them.
      packArgs(new DataView(new ArrayBuffer(512)), decl, args);
      const threads = launch.block[0] * launch.block[1] * launch.block[2];
      expect(threads % 32).toBe(0);
      expect(threads).toBeLessThanOrEqual(decl.name.includes('norm') ? norm.NORM_MAX_BLOCK : 256);
      expect(launch.grid[1]).toBeLessThanOrEqual(65535);
      launches.push({ decl, launch, args });
    },
    constant(key, make) {
      constants.set(key, make());
      return 0x10000n + BigInt(constants.size) * 256n;
    },
    counters() {
      throw new Error('no arrival counters expected');
    },
    scratch() {
      throw new Error('no scratch expected');
    },
    tensorMap2d() {
      throw new Error('no tensor maps expected');
    },
    tensorMap() {
      throw new Error('no tensor maps expected');
    },
  };
  op(ctx);
  return { launches, constants };
}

const isPow2 = (n: number) => n >= 1 && (n & (n - 1)) === 0;

describe('planNorm', () => {
  const widths = [1, 3, 7, 8, 12, 16, 24, 36, 40, 64, 96, 128, 200, 256, 640, 1000, 1024, 1032, 1100, 2048, 2560, 3072, 4096, 5120, 8192, 12288, 16384, 16392, 20000, 65536];
  for (const width of widths) {
    for (const vector of [true, false]) {
      if (vector && width % 8 !== 0) continue;
      it(`covers rows of ${width} (${vector ? 'vector' : 'scalar'})`, () => {
        for (const rows of [1, 2, 3, 7, 33, 1000]) {
          const p = norm.planNorm(rows, width, vector);
          expect(p.block % 32).toBe(0);
          expect(p.block).toBeLessThanOrEqual(norm.NORM_MAX_BLOCK);
          if (p.lanes > 0) {
            expect(isPow2(p.lanes) && p.lanes <= 32).toBe(true);
            expect(p.block % p.lanes).toBe(0);
            expect(p.grid * (p.block / p.lanes)).toBeGreaterThanOrEqual(rows);
            if (p.vecs > 0) {
              expect([1, 2, 4]).toContain(p.vecs);
              expect(p.lanes * p.vecs * 8).toBeGreaterThanOrEqual(width);
            }
          } else {
            expect(p.grid).toBe(rows);
            if (p.vecs > 0) {
              expect([1, 2, 4]).toContain(p.vecs);
              expect(p.block * p.vecs * 8).toBeGreaterThanOrEqual(width);
            }
          }
          if (!vector) expect(p.vecs).toBe(0);
        }
      });
    }
  }
  it('keeps common hidden sizes in registers', () => {
    for (const width of [2048, 4096, 5120, 8192, 16384]) expect(norm.planNorm(4, width, true).vecs).toBeGreaterThan(0);
    expect(norm.planNorm(4, 128, true)).toMatchObject({ lanes: 16, vecs: 1 });
  });
});

describe('norm launchers', () => {
  it('rmsnorm over groups of G runs R N / G rows of G', () => {
    const x = tensor([5, 64]), w = tensor([16]), y = tensor([5, 64]);
    const { launches } = run(norm.rmsnorm, [x, w], [y], { eps: 1e-6 });
    expect(launches).toHaveLength(1);
    expect(launches[0].decl).toBe(norm.RMSNORM);
    expect(launches[0].args).toMatchObject({ y: y.ptr, x: x.ptr, w: w.ptr, rows: 20, width: 16, eps: 1e-6 });
    expect(launches[0].args.vecs).toBeGreaterThan(0);
  });
  it('takes the scalar path for odd widths and misaligned pointers', () => {
    expect(run(norm.rmsnorm, [tensor([3, 36]), tensor([12])], [tensor([3, 36])], { eps: 1e-5 }).launches[0].args.vecs).toBe(0);
    expect(run(norm.rmsnorm, [tensor([3, 64], 'bf16', 2), tensor([64])], [tensor([3, 64])], { eps: 1e-5 }).launches[0].args.vecs).toBe(0);
  });
  it('add_rmsnorm and add_layernorm pass the sum buffer, which may be the residual', () => {
    const r = tensor([4, 256]), d = tensor([4, 256]), w = tensor([256]), b = tensor([256]), y = tensor([4, 256]);
    const a = run(norm.addRmsnorm, [r, d, w], [r, y], { eps: 1e-5 }).launches[0];
    expect(a.decl).toBe(norm.ADD_RMSNORM);
    expect(a.args).toMatchObject({ sum: r.ptr, residual: r.ptr, delta: d.ptr, y: y.ptr, rows: 4, width: 256 });
    const l = run(norm.addLayernorm, [r, d, w, b], [tensor([4, 256]), y], { eps: 1e-5 }).launches[0];
    expect(l.decl).toBe(norm.ADD_LAYERNORM);
    expect(l.args).toMatchObject({ b: b.ptr, rows: 4, width: 256 });
  });
  it('launches nothing for zero rows and refuses mismatched weights', () => {
    expect(run(norm.layernorm, [tensor([0, 64]), tensor([64]), tensor([64])], [tensor([0, 64])], { eps: 1e-5 }).launches).toHaveLength(0);
    expect(() => run(norm.rmsnorm, [tensor([2, 64]), tensor([24])], [tensor([2, 64])], { eps: 1e-5 })).toThrow(/rmsnorm.*\[24\].*\[2, 64\]/);
    expect(() => run(norm.layernorm, [tensor([2, 64]), tensor([64]), tensor([32])], [tensor([2, 64])], { eps: 1e-5 })).toThrow(/layernorm: bias/);
  });
});

describe('elementwise launchers', () => {
  it('add: same shape flat, a 1-D bias over rows', () => {
    const a = tensor([7, 40]), b = tensor([7, 40]), y = tensor([7, 40]);
    const flat = run(ew.add, [a, b], [y]).launches[0];
    expect(flat.decl).toBe(ew.ADD);
    expect(flat.args).toMatchObject({ n: 280, vec: 1 });
    const bias = tensor([40]);
    const bl = run(ew.add, [a, bias], [y]).launches[0];
    expect(bl.decl).toBe(ew.ADD_BIAS);
    expect(bl.args).toMatchObject({ rows: 7, cols: 40, vec: 1 });
    expect(run(ew.add, [tensor([4, 12]), tensor([12])], [tensor([4, 12])]).launches[0].args.vec).toBe(0);
    expect(() => run(ew.add, [a, tensor([24])], [y])).toThrow(/add: bias/);
  });
  it('silu and gelu pick the activation code', () => {
    expect(run(ew.silu, [tensor([2, 8])], [tensor([2, 8])]).launches[0].args.act).toBe(ew.ACT_CODE.silu);
    expect(run(ew.gelu, [tensor([2, 8])], [tensor([2, 8])], { approximate: 'tanh' }).launches[0].args.act).toBe(ew.ACT_CODE.gelu_tanh);
    expect(run(ew.gelu, [tensor([2, 8])], [tensor([2, 8])], { approximate: 'none' }).launches[0].args.act).toBe(ew.ACT_CODE.gelu);
    expect(run(ew.mul, [tensor([0, 8]), tensor([0, 8])], [tensor([0, 8])]).launches).toHaveLength(0);
  });
  it('act_mul and slice_cols', () => {
    const gu = tensor([6, 192]), y = tensor([6, 96]);
    const am = run(ew.actMul, [gu], [y], { act: 'gelu_tanh' }).launches[0];
    expect(am.args).toMatchObject({ rows: 6, cols: 96, act: ew.ACT_CODE.gelu_tanh, vec: 1 });
    expect(() => run(ew.actMul, [gu], [y], { act: 'relu' })).toThrow(/act_mul: unknown activation relu/);
    expect(run(ew.actMul, [tensor([3, 24])], [tensor([3, 12])], { act: 'silu' }).launches[0].args.vec).toBe(0);
    const sc = run(ew.sliceCols, [tensor([5, 96])], [tensor([5, 16])], { start: 32, count: 16 }).launches[0];
    expect(sc.args).toMatchObject({ rows: 5, cols: 96, start: 32, count: 16, vec: 1 });
    expect(run(ew.sliceCols, [tensor([5, 96])], [tensor([5, 12])], { start: 4, count: 12 }).launches[0].args.vec).toBe(0);
    expect(() => run(ew.sliceCols, [tensor([5, 96])], [tensor([5, 16])], { start: 90, count: 16 })).toThrow(/slice_cols/);
  });
  it('plan2d covers rows and units with 256-thread blocks', () => {
    for (const [rows, units] of [[1, 1], [3, 5], [100000, 7], [8192, 1792], [1, 100000]]) {
      const { grid, block } = ew.plan2d(rows, units);
      expect(block[0] * block[1]).toBe(256);
      expect(grid[0] * block[0]).toBeGreaterThanOrEqual(units);
      expect(grid[1]).toBeLessThanOrEqual(65535);
    }
  });
});

describe('rope and kv launchers', () => {
  const llama3 = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64 };
  it('rope: the inv_freq table of graph/rope.ts, vectors when the halves split into 8s', () => {
    const attrs = { numHeads: 4, headDim: 128, rotaryDim: 128, theta: 500000, scaling: llama3 };
    const x = tensor([3, 512]), pos = tensor([3], 'i32'), y = tensor([3, 512]);
    const { launches, constants } = run(rk.rope, [x, pos], [y], attrs);
    expect([...constants.values()][0]).toEqual(ropeInvFreq(ropeAttrs(attrs)));
    expect(launches[0].launch).toMatchObject({ grid: [3, 1, 1], sharedBytes: 128 * 4 });
    expect(launches[0].args).toMatchObject({ numHeads: 4, headDim: 128, rotaryDim: 128, vec: 1 });
    const partial = run(rk.rope, [tensor([3, 64]), pos], [tensor([3, 64])], { numHeads: 4, headDim: 16, rotaryDim: 8, theta: 1e4 });
    expect(partial.launches[0].args.vec).toBe(0);
    expect(() => run(rk.rope, [x, pos], [y], { ...attrs, rotaryDim: 7 })).toThrow(/rope: rotaryDim 7/);
  });
  it('planRope: whole warps, teams of a power of two', () => {
    for (const hd of [8, 16, 64, 80, 96, 128, 256])
      for (const heads of [1, 3, 8, 48, 100])
        for (const rot of [0, 8, 16, 32, hd]) {
          if (rot > hd) continue;
          const p = rk.planRope(heads, hd, rot, true);
          expect(isPow2(p.lanes) && p.lanes <= 32).toBe(true);
          expect(p.block % 32).toBe(0);
          expect(p.block).toBeLessThanOrEqual(256);
          expect(p.block % p.lanes).toBe(0);
          expect(p.vec).toBe(hd % 8 === 0 && rot % 16 === 0 ? 1 : 0);
        }
  });
  it('kv_write: the k and v halves of the cache, updated in place', () => {
    const cache = tensor([2, 4, 16, 2, 64]);
    const k = tensor([5, 128]), v = tensor([5, 128]), slots = tensor([5], 'i32');
    const { launches } = run(rk.kvWrite, [k, v, cache, slots], [cache]);
    expect(launches[0].args).toMatchObject({ cacheK: cache.ptr, cacheV: cache.ptr + BigInt(4 * 16 * 2 * 64 * 2), width: 128, numSlots: 64, vec: 1 });
    expect(() => run(rk.kvWrite, [k, v, cache, slots], [tensor([2, 4, 16, 2, 64])])).toThrow(/in place/);
  });
  it('rope_kv_write: optional q/k norm and rope', () => {
    const cache = tensor([2, 4, 4, 2, 16]);
    const qkv = tensor([3, 128]), pos = tensor([3], 'i32'), slots = tensor([3], 'i32'), q = tensor([3, 64]);
    const qn = tensor([16]), kn = tensor([16]);
    const rope = { rotaryDim: 16, theta: 1e6, scaling: null };
    const withNorm = run(rk.ropeKvWrite, [qkv, pos, cache, slots, qn, kn], [q, cache], { numHeads: 4, numKvHeads: 2, headDim: 16, rope, qkNormEps: 1e-6 });
    expect(withNorm.launches[0].args).toMatchObject({ qNorm: qn.ptr, kNorm: kn.ptr, norm: 1, eps: 1e-6, rotaryDim: 16, numSlots: 16, vec: 1 });
    const gpt2 = run(rk.ropeKvWrite, [qkv, pos, cache, slots], [q, cache], { numHeads: 4, numKvHeads: 2, headDim: 16, rope: null, qkNormEps: null });
    expect(gpt2.launches[0].args).toMatchObject({ qNorm: 0n, kNorm: 0n, norm: 0, invFreq: 0n, rotaryDim: 0 });
    expect(gpt2.launches[0].launch.sharedBytes).toBe(0);
    expect(run(rk.ropeKvWrite, [tensor([0, 128]), pos, cache, slots], [tensor([0, 64]), cache], { numHeads: 4, numKvHeads: 2, headDim: 16, rope, qkNormEps: null }).launches).toHaveLength(0);
    expect(() => run(rk.ropeKvWrite, [qkv, pos, cache, slots], [q, cache], { numHeads: 4, numKvHeads: 2, headDim: 16, rope, qkNormEps: 1e-6 })).toThrow(/rope_kv_write: q\/k norm/);
  });
});
