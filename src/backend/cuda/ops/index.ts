/**
 * The CUDA backend's launcher for each per-step op of the IR, by op name. Load-time ops
 * (transpose, slice_rows, concat_rows, pair_rows, rope_rows, scale_cols) run once in CudaBackend.load, not here.
 */
import { SM90_PROBE_DECLS } from '../sm90_probe.js';
import type { OpName } from '../../../graph/ops.js';
import { withStorageTwins, type KernelDecl } from '../kernel_decl.js';
import * as attention from './attention.js';
import * as elementwise from './elementwise.js';
import * as gather from './gather.js';
import * as gemm from './gemm.js';
import * as norm from './norm.js';
import * as ropeKv from './rope_kv.js';
import * as sampling from './sampling.js';
import * as transform from './transform.js';
import type { CudaOp } from './types.js';

type StepOp = Exclude<OpName, 'transpose' | 'slice_rows' | 'concat_rows' | 'pair_rows' | 'rope_rows' | 'scale_cols'>;

export const CUDA_OPS: Record<StepOp, CudaOp> & Partial<Record<OpName, CudaOp>> = {
  embedding: gather.embedding,
  gather_rows: gather.gatherRows,
  matmul: gemm.matmul,
  matmul_add: gemm.matmulAdd,
  matmul_glu: gemm.matmulGlu,
  matmul_rope_kv: gemm.matmulRopeKv,
  attention: attention.attention,
  rmsnorm: norm.rmsnorm,
  layernorm: norm.layernorm,
  add_rmsnorm: norm.addRmsnorm,
  add_layernorm: norm.addLayernorm,
  add: elementwise.add,
  mul: elementwise.mul,
  silu: elementwise.silu,
  gelu: elementwise.gelu,
  act_mul: elementwise.actMul,
  slice_cols: elementwise.sliceCols,
  rope: ropeKv.rope,
  kv_write: ropeKv.kvWrite,
  rope_kv_write: ropeKv.ropeKvWrite,
};

/** Every kernel the host can launch (each storage-typed one for bf16 and fp16), for the check against the compiled PTX. */
export const ALL_DECLS: KernelDecl[] = [
  ...SM90_PROBE_DECLS,
  ...withStorageTwins([...gather.DECLS, ...gemm.DECLS, ...attention.DECLS, ...norm.DECLS, ...elementwise.DECLS, ...ropeKv.DECLS, ...sampling.DECLS, ...transform.DECLS]),
];
