/** Load-time kernels (kernels/transform.cu): weights made or rearranged on the device once, in the storage type (kernel_decl.forStorage). */
import type { KernelDecl } from '../kernel_decl.js';

export const FILL_UNIFORM: KernelDecl = {
  name: 'ts_fill_uniform_bf16',
  params: [
    ['out', 'ptr'],
    ['n', 'u64'],
    ['seedLo', 'u32'],
    ['seedHi', 'u32'],
    ['bound', 'f32'],
  ],
};

export const FILL: KernelDecl = {
  name: 'ts_fill_bf16',
  params: [
    ['out', 'ptr'],
    ['n', 'u64'],
    ['value', 'f32'],
  ],
};

export const TRANSPOSE: KernelDecl = {
  name: 'ts_transpose_bf16',
  params: [
    ['out', 'ptr'],
    ['input', 'ptr'],
    ['rows', 'i32'],
    ['cols', 'i32'],
  ],
};

/** out row 2j = input row j, out row 2j + 1 = input row half + j (matmul_glu's gate/up pairs); vec: row % 8 == 0, 16-byte units. */
export const PAIR_ROWS: KernelDecl = {
  name: 'ts_pair_rows_bf16',
  params: [
    ['out', 'ptr'],
    ['input', 'ptr'],
    ['half', 'u64'],
    ['row', 'u64'],
    ['vec', 'i32'],
  ],
};

/** matmul_rope_kv's q/k rows: in the first rotRows / headDim heads, rows i and i + rotaryDim / 2 of a head to 2i and 2i + 1; vec as PAIR_ROWS. */
export const ROPE_ROWS: KernelDecl = {
  name: 'ts_rope_rows_bf16',
  params: [
    ['out', 'ptr'],
    ['input', 'ptr'],
    ['rows', 'u64'],
    ['row', 'u64'],
    ['rotRows', 'i32'],
    ['headDim', 'i32'],
    ['rotaryDim', 'i32'],
    ['vec', 'i32'],
  ],
};

/** out[n, k] = w[n, k] g[k]: an RMS norm's weight folded into the GEMM after it. */
export const SCALE_COLS: KernelDecl = {
  name: 'ts_scale_cols_bf16',
  params: [
    ['out', 'ptr'],
    ['w', 'ptr'],
    ['g', 'ptr'],
    ['rows', 'u64'],
    ['cols', 'i32'],
  ],
};

export const DECLS = [FILL_UNIFORM, FILL, TRANSPOSE, PAIR_ROWS, ROPE_ROWS, SCALE_COLS];
