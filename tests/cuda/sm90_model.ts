/**
 * Hopper building blocks emulated in JavaScript, for the transcriptions of the sm90 kernels
 * (attention_sm90_model.test.ts, gemm_sm90_model.test.ts): shared memory as bf16 values at byte
 * addresses, the 128-byte swizzle TMA writes and wgmma reads, TMA tile boxes, wgmma reading its
 * operands through descriptors as the PTX manual's canonical layouts describe them, and the
 * warpgroup's accumulator fragments. What the hardware actually does with a descriptor is for the
 * layout probes (tests/cuda/sm90_probe.test.ts) to show on a GPU.
 */
import { f32ToBf16Bits } from '../../src/util/dtype.js';

export const bf16 = (x: number): number => {
  const bits = f32ToBf16Bits(x);
  return new Float32Array(new Uint32Array([bits << 16]).buffer)[0];
};

/** The 128-byte swizzle on a shared-memory byte address: 16-byte chunk bits [4, 7) ^= row bits [7, 10). */
export const swizzle = (addr: number): number => addr ^ (((addr >> 7) & 7) << 4);

/** Shared memory of `bytes`, one bf16 value per 2 bytes; NaN until written. */
export class Smem {
  readonly values: Float32Array;
  constructor(bytes: number) {
    this.values = new Float32Array(bytes / 2).fill(NaN);
  }
  ld(addr: number): number {
    return this.values[addr >> 1];
  }
  st(addr: number, v: number): void {
    this.values[addr >> 1] = v;
  }
  /**
   * A TMA box of `rows` x 64 bf16 (128-byte rows) at `dst` under the 128-byte swizzle; `at(r, c)`
   * is the element, 0 out of range. `dst` must start a 1024-byte atom.
   */
  box(dst: number, rows: number, at: (r: number, c: number) => number): void {
    if (dst % 1024) throw new Error(`a TMA box at ${dst} does not start a 1024-byte swizzle atom`);
    for (let r = 0; r < rows; r++) for (let c = 0; c < 64; c++) this.st(swizzle(dst + r * 128 + 2 * c), at(r, c));
  }
}

/** d[64 x n] (+)= A[64 x 16] B[n x 16]^T, both K-major (128-byte swizzle, SBO 1024) at these start addresses. */
export function wgmmaSS(smem: Smem, d: Float64Array, n: number, aStart: number, bStart: number, accumulate: boolean): void {
  for (let m = 0; m < 64; m++)
    for (let j = 0; j < n; j++) {
      let acc = accumulate ? d[m * n + j] : 0;
      for (let k = 0; k < 16; k++)
        acc += smem.ld(swizzle(aStart + (m % 8) * 128 + Math.floor(m / 8) * 1024 + 2 * k)) * smem.ld(swizzle(bStart + (j % 8) * 128 + Math.floor(j / 8) * 1024 + 2 * k));
      d[m * n + j] = acc;
    }
}

/** d[64 x n] += A[64 x 16] (given: the register operand) B[16 x n], B MN-major at bStart (128-byte swizzle, this LBO, SBO 1024). */
export function wgmmaRS(smem: Smem, d: Float64Array, n: number, A: Float64Array, bStart: number, lbo: number): void {
  for (let m = 0; m < 64; m++)
    for (let j = 0; j < n; j++) {
      let acc = d[m * n + j];
      for (let k = 0; k < 16; k++) acc += A[m * 16 + k] * smem.ld(swizzle(bStart + 2 * (j % 64) + Math.floor(j / 64) * lbo + (k % 8) * 128 + Math.floor(k / 8) * 1024));
      d[m * n + j] = acc;
    }
}

/** Accumulator fragment of warpgroup thread t (32 warp + lane): element 4i + e is at (accRow(t, e), accCol(t, i, e)). */
export const accRow = (t: number, e: number): number => 16 * (t >> 5) + ((t & 31) >> 2) + 8 * (e >> 1);
export const accCol = (t: number, i: number, e: number): number => 8 * i + 2 * (t & 3) + (e & 1);

/** The 64 x n matrix a wgmma leaves, scattered into each thread's accumulator registers. */
export function scatter(d: Float64Array, n: number, regs: Float64Array[]): void {
  for (let t = 0; t < 128; t++) for (let i = 0; i < n / 8; i++) for (let e = 0; e < 4; e++) regs[t][4 * i + e] = d[accRow(t, e) * n + accCol(t, i, e)];
}

/** The threads' accumulator registers gathered back into the 64 x n matrix. */
export function gatherAcc(regs: Float64Array[], n: number): Float64Array {
  const d = new Float64Array(64 * n);
  for (let t = 0; t < 128; t++) for (let i = 0; i < n / 8; i++) for (let e = 0; e < 4; e++) d[accRow(t, e) * n + accCol(t, i, e)] = regs[t][4 * i + e];
  return d;
}
