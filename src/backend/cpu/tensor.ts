/** What a CPU kernel sees: a typed-array view and its concrete shape for this step. */
import type { Attrs } from '../../graph/ir.js';
import type { StepBatch } from '../backend.js';

export interface CpuTensor {
  data: Float32Array | Int32Array;
  shape: number[];
}

export interface KernelArgs {
  inputs: CpuTensor[];
  /** The first output; ops with several outputs read `outputs`. */
  output: CpuTensor;
  outputs: CpuTensor[];
  attrs: Attrs;
  step: StepBatch;
}

export type CpuKernel = (args: KernelArgs) => void;

export function f32(t: CpuTensor): Float32Array {
  return t.data as Float32Array;
}

export function i32(t: CpuTensor): Int32Array {
  return t.data as Int32Array;
}
