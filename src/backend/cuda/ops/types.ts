/**
 * What a CUDA op launcher gets: device tensors for its operands (shapes for this step), the
 * call's attrs, the step's inputs on the device, and a way to launch a declared kernel.
 * Each IR op has one launcher (ops/*.ts), registered by name in ops/index.ts.
 */
import type { Attrs } from '../../../graph/ir.js';
import type { DevPtr, DeviceProperties } from '../driver.js';
import type { ArgValue, KernelDecl } from '../kernel_decl.js';
import type { GemmVariant } from './gemm.js';

export type DeviceDType = 'bf16' | 'f16' | 'f32' | 'i32';

/**
 * The 16-bit type weights, activations and the KV cache are stored in on the device: bf16, or
 * fp16 for checkpoints made in it (CudaBackend's `dtype`). Arithmetic is f32 either way.
 */
export type StorageDType = 'bf16' | 'f16';

export function isStorage(dtype: DeviceDType): dtype is StorageDType {
  return dtype === 'bf16' || dtype === 'f16';
}

/** Bytes of one element. */
export function elementBytes(dtype: DeviceDType): number {
  return dtype === 'bf16' || dtype === 'f16' ? 2 : 4;
}

export interface DeviceTensor {
  ptr: DevPtr;
  shape: number[];
  dtype: DeviceDType;
}

/** The step's sizes on the host (for grids) and its inputs on the device. */
export interface DeviceStep {
  numTokens: number;
  numSeqs: number;
  numLogitRows: number;
  blockTableWidth: number;
  /** Longest context (tokens in the cache) of any sequence in the step: bounds attention's work. */
  maxContextLen: number;
  /** Longest query (new tokens) of any sequence in the step. */
  maxQueryLen: number;
}

export interface Launch {
  grid: [number, number, number];
  block: [number, number, number];
  /** Dynamic shared memory in bytes. */
  sharedBytes?: number;
  /**
   * Blocks per thread-block cluster (sm_90+), each dimension dividing the grid's, at most 8 in all.
   * Absent or [1, 1, 1]: an ordinary launch.
   */
  cluster?: [number, number, number];
}

export interface CudaOpContext {
  /** The measured GEMM variant for M rows on this GPU (kernels/choices), or null: the launcher's default. */
  gemmChoice?(M: number): GemmVariant | null;
  /** The measured prefill attention variant for this head dim on this GPU (kernels/choices), or null: the launcher's default. */
  attentionChoice?(headDim: number): 'tiles' | 'sm90' | 'sm90o' | null;
  inputs: DeviceTensor[];
  outputs: DeviceTensor[];
  attrs: Attrs;
  step: DeviceStep;
  device: DeviceProperties;
  /** Launches `decl` on the backend's stream with `args` (every declared parameter). */
  launch(decl: KernelDecl, launch: Launch, args: Record<string, ArgValue>): void;
  /**
   * How many clusters of `launch.cluster` blocks (default [1, 1, 1]) of `decl`, with this block
   * and shared memory, can be resident at once (cuOccupancyMaxActiveClusters): what a persistent
   * cluster kernel sizes its grid by. Optional so that a test's context may leave it out.
   */
  maxActiveClusters?(decl: KernelDecl, launch: Launch): number;
  /** A device copy of a small constant table, made once per distinct key (e.g. RoPE inv_freq). */
  constant(key: string, make: () => Float32Array): DevPtr;
  /**
   * `n` i32 counters, zero when the launch starts; the launch must leave them zero (the last
   * block to arrive on each resets it: stream-K's tile counters, decode attention's split
   * counters). One area the backend makes before the first step, shared by every op, so that no
   * step allocates for them; more than it holds is an error.
   */
  counters(n: number): DevPtr;
  /** Device scratch of at least `bytes`, valid during this call only. */
  scratch(bytes: number): DevPtr;
  /** A TMA tensor map of a row-major bf16/f16/f32 matrix tensor (made once per distinct tensor, box and swizzle, then reused). */
  tensorMap2d(t: DeviceTensor, box: [rows: number, cols: number], swizzle: 'none' | '32B' | '64B' | '128B'): Uint8Array;
  /** A TMA tensor map of a bf16/f16/f32 tensor seen as the row-major `shape` (a reshape; outermost first), box outermost first. */
  tensorMap(t: DeviceTensor, shape: readonly number[], box: readonly number[], swizzle: 'none' | '32B' | '64B' | '128B'): Uint8Array;
}

export type CudaOp = (ctx: CudaOpContext) => void;

export function ceilDiv(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}
