/** add(matmul(x, w), b[N]) -> matmul(x, w, b): the same sum, done in the GEMM's epilogue. */
import type { Rule } from '../rewrite.js';
import { isConstant, onlyUsedBy, producerOf } from '../rewrite.js';

export const foldBias: Rule = {
  name: 'fold_bias',
  doc: 'add(matmul(x, w), b[N]) -> matmul(x, w, b): the bias add moves into the GEMM epilogue',
  root: 'add',
  apply(add, ctx) {
    const [y, b] = add.inputs;
    const mm = producerOf(ctx, y, 'matmul');
    const g = ctx.graph;
    if (!mm || mm.inputs.length !== 2 || !onlyUsedBy(ctx, y, add)) return false;
    if (g.value(b).shape.length !== 1 || !isConstant(g, b)) return false;
    const [out] = g.addNode('matmul', [...mm.inputs, b], mm.attrs, { label: mm.label, layer: mm.layer, order: mm.order });
    g.replaceAllUses(add.outputs[0], out);
    return true;
  },
};
