/**
 * The default optimization pipeline, in order. Each pass runs its rules to a fixed point.
 *   fold_bias        bias adds into GEMM epilogues (before merging, so biases merge too)
 *   merge_siblings   Q/K/V and gate/up GEMMs that share an input become one
 *   simplify         identity ops left behind (GPT-2's c_attn split and re-merged)
 *   sink_gather      the logits gather up through the row-wise ops after the last attention
 *                    (before fuse, so the final residual add meets the final norm)
 *   fuse_residual    residual adds of a GEMM's output into its epilogue (before fuse, which would
 *                    take them into add + norm: the epilogue moves 8 bytes per element, not 10)
 *   fuse             act * mul, the residual adds left + norm, q/k norm + RoPE + KV write
 *   fuse_glu         the act * mul just made into its gate/up GEMM's epilogue (weights paired
 *                    at load)
 *   fold_norm        each RMS norm read by one GEMM alone into that GEMM (its weight into w's
 *                    columns at load, the row scale in the epilogue)
 *   fuse_rope        each rope_kv_write into the q/k/v GEMM before it (after fold_norm, so the
 *                    GEMM it takes has its norm already; q/k weight rows reordered at load)
 *   prune            drops what the rewrites made unreachable
 */
import type { Graph } from '../ir.js';
import { prune } from './prune.js';
import { runPass, type Pass, type PassReport } from './rewrite.js';
import { foldBias } from './rules/fold_bias.js';
import { fuseActMul } from './rules/fuse_act_mul.js';
import { fuseMatmulAdd } from './rules/fuse_matmul_add.js';
import { fuseMatmulGlu } from './rules/fuse_matmul_glu.js';
import { fuseMatmulRopeKv } from './rules/fuse_matmul_rope_kv.js';
import { foldRmsnorm } from './rules/fold_rmsnorm.js';
import { fuseAddLayernorm, fuseAddRmsnorm } from './rules/fuse_add_norm.js';
import { fuseRopeKvWrite } from './rules/fuse_rope_kv.js';
import { concatOfSlices, doubleTranspose, fullSlice } from './rules/identity.js';
import { mergeSiblings } from './rules/merge_siblings.js';
import { sinkGather } from './rules/sink_gather.js';

export const DEFAULT_PASSES: Pass[] = [
  { name: 'fold_bias', rules: [foldBias] },
  { name: 'merge_siblings', rules: [mergeSiblings] },
  { name: 'simplify', rules: [fullSlice, concatOfSlices, doubleTranspose] },
  { name: 'sink_gather', rules: [sinkGather] },
  { name: 'fuse_residual', rules: [fuseMatmulAdd] },
  { name: 'fuse', rules: [fuseActMul, fuseAddRmsnorm, fuseAddLayernorm, fuseRopeKvWrite] },
  { name: 'fuse_glu', rules: [fuseMatmulGlu] },
  { name: 'fold_norm', rules: [foldRmsnorm] },
  { name: 'fuse_rope', rules: [fuseMatmulRopeKv] },
];

export interface OptimizeResult {
  graph: Graph;
  reports: PassReport[];
}

/** Runs the passes on `graph` (which is modified) and returns the pruned result. */
export function optimize(graph: Graph, passes: Pass[] = DEFAULT_PASSES): OptimizeResult {
  const reports = passes.map((p) => runPass(graph, p));
  return { graph: prune(graph), reports };
}
