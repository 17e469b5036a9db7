/**
 * matmul(rmsnorm(x, g), w, ...) -> matmul(x, scale_cols(w, g), ...) with attr rmsEps (and the
 * same for matmul_glu): the norm moves into the GEMM.
 *
 * Why: rmsnorm(x)[r] w^T = rstd[r] (x[r] o g) w^T = rstd[r] x[r] (w o g)^T, with rstd[r] =
 * 1 / sqrt(mean(x[r]^2) + eps). The weight g goes into w's columns once, at load; the per-row
 * scale rstd is a reduction over the same x row the GEMM reads anyway, and multiplies the row of
 * the product in the epilogue. Each Llama layer's two norms (before q/k/v and before gate/up)
 * and the final one (before lm_head) stop being kernels of their own: at decode 65 launches less
 * in a Llama-3-8B step, and at prefill the normed copy of x is neither written nor read.
 *
 * Only a norm over whole rows (g as long as the row), read by that one GEMM as its x, whose weight
 * no other op reads: a tied embedding table (the lm_head of tied models) keeps its norm, since
 * folding would store a second copy of the table.
 *
 * The product is the same up to rounding: the storage type rounds w o g instead of the normed x.
 */
import type { Rule } from '../rewrite.js';
import { cols, isConstant, producerOf, usersOf } from '../rewrite.js';

export const foldRmsnorm: Rule = {
  name: 'fold_rmsnorm',
  doc: 'matmul|matmul_glu(rmsnorm(x, g), w, ...) -> the same GEMM of x and scale_cols(w, g) with rmsEps: the norm weight in w at load, the row scale in the epilogue',
  root: 'rmsnorm',
  apply(norm, ctx) {
    const g = ctx.graph;
    const [x, weight] = norm.inputs;
    const y = norm.outputs[0];
    const users = usersOf(ctx, y);
    if (users.length !== 1 || g.outputs.includes(y)) return false;
    const [mm] = users;
    if ((mm.op !== 'matmul' && mm.op !== 'matmul_glu') || mm.inputs[0] !== y || mm.inputs.slice(1).includes(y) || mm.attrs.rmsEps !== undefined) return false;
    // A norm over whole rows (not Qwen3's per-head one), with a constant weight.
    if (!isConstant(g, weight) || g.value(weight).shape[0] !== cols(g, x)) return false;
    const w = mm.inputs[1];
    if (!isConstant(g, w) || usersOf(ctx, w).length !== 1) return false;
    if (producerOf(ctx, w, 'scale_cols')) return false;
    const opts = { layer: mm.layer, order: mm.order };
    const [ws] = g.addNode('scale_cols', [w, weight], {}, { ...opts, label: `${g.value(w).name}.norm_folded` });
    const [out] = g.addNode(mm.op, [x, ws, ...mm.inputs.slice(2)], { ...mm.attrs, rmsEps: norm.attrs.eps }, { ...opts, label: mm.label });
    g.value(out).name = g.value(mm.outputs[0]).name;
    g.replaceAllUses(mm.outputs[0], out);
    return true;
  },
};
