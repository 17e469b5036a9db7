/** The CPU backend's kernel for each op of the IR, by op name: the reference every backend matches. */
import type { OpName } from '../../../graph/ops.js';
import type { CpuKernel } from '../tensor.js';
import { attention, kvWrite } from './attention.js';
import { add, gelu, mul, silu } from './elementwise.js';
import { embedding, gatherRows } from './gather.js';
import { actMul, matmulGlu, matmulRopeKv, ropeKvWrite, sliceCols } from './fused.js';
import { matmul, matmulAdd } from './matmul.js';
import { addLayernorm, addRmsnorm, layernorm, rmsnorm } from './norm.js';
import { rope } from './rope.js';
import { concatRows, pairRows, ropeRows, scaleCols, sliceRows, transpose } from './transforms.js';

export const CPU_KERNELS: Record<OpName, CpuKernel> = {
  transpose,
  slice_rows: sliceRows,
  concat_rows: concatRows,
  pair_rows: pairRows,
  rope_rows: ropeRows,
  scale_cols: scaleCols,
  embedding,
  matmul,
  add,
  mul,
  silu,
  gelu,
  rmsnorm,
  layernorm,
  rope,
  kv_write: kvWrite,
  attention,
  gather_rows: gatherRows,
  matmul_add: matmulAdd,
  slice_cols: sliceCols,
  add_rmsnorm: addRmsnorm,
  add_layernorm: addLayernorm,
  act_mul: actMul,
  matmul_glu: matmulGlu,
  rope_kv_write: ropeKvWrite,
  matmul_rope_kv: matmulRopeKv,
};
