/**
 * add(r, matmul(x, w (, b))) -> matmul_add(x, w, r (, b)): the residual add moves into the GEMM's
 * epilogue, which reads r and writes the sum in r's place.
 *
 * Why before fuse_add_norm, which would otherwise take the same add into add_rmsnorm: per element
 * of the hidden state (2-byte storage), GEMM + add_rmsnorm moves 10 bytes (the GEMM writes d;
 * the norm reads r and d and writes the sum and the normed row), matmul_add + rmsnorm moves 8
 * (the GEMM reads r and writes the sum; the norm reads it and writes the normed row). Same two
 * launches. The rule takes a plain sum of two [R, N] activations only: not a bias broadcast, not
 * a matmul output that anything else reads, and not a residual that is the GEMM's own x.
 */
import type { Rule } from '../rewrite.js';
import { onlyUsedBy, producerOf } from '../rewrite.js';

export const fuseMatmulAdd: Rule = {
  name: 'fuse_matmul_add',
  doc: 'add(r, matmul(x, w (, b))) -> matmul_add(x, w, r (, b)): the residual read in the GEMM epilogue, the sum written in place of r',
  root: 'add',
  apply(add, ctx) {
    const g = ctx.graph;
    const [a, b] = add.inputs;
    const shape = g.value(add.outputs[0]).shape;
    // The delta is the operand a matmul produced for this add alone; the second operand first
    // (add(residual, delta) is how the model builders write it).
    for (const [r, d] of [
      [a, b],
      [b, a],
    ]) {
      const mm = producerOf(ctx, d, 'matmul');
      if (!mm || !onlyUsedBy(ctx, d, add)) continue;
      const rv = g.value(r);
      if (rv.kind !== 'activation' || rv.shape.length !== 2 || rv.shape[0] !== shape[0] || rv.shape[1] !== shape[1]) continue;
      const [x, w, bias] = mm.inputs;
      // Not add(x, matmul(x, w)): the sum would overwrite x while the GEMM still reads it.
      if (r === x) continue;
      const [sum] = g.addNode('matmul_add', bias === undefined ? [x, w, r] : [x, w, r, bias], mm.attrs, { label: mm.label, layer: mm.layer, order: add.order });
      g.value(sum).name = add.label;
      g.replaceAllUses(add.outputs[0], sum);
      return true;
    }
    return false;
  },
};
