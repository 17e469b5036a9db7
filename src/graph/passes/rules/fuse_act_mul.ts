/**
 * mul(act(gu[:, :I]), gu[:, I:]) -> act_mul(gu) for act in silu, gelu: SwiGLU/GeGLU over the
 * merged gate/up output in one pass, instead of an activation kernel and a multiply kernel.
 */
import type { Rule } from '../rewrite.js';
import { cols, onlyUsedBy, producerOf } from '../rewrite.js';

export const fuseActMul: Rule = {
  name: 'fuse_act_mul',
  doc: 'mul(silu|gelu(slice_cols(z, 0, I)), slice_cols(z, I, I)) -> act_mul(z): the same products in one pass',
  root: 'mul',
  apply(mul, ctx) {
    const g = ctx.graph;
    for (const [a, b] of [mul.inputs, [...mul.inputs].reverse()]) {
      const act = producerOf(ctx, a, 'silu') ?? producerOf(ctx, a, 'gelu');
      if (!act || !onlyUsedBy(ctx, a, mul)) continue;
      const gate = producerOf(ctx, act.inputs[0], 'slice_cols');
      const up = producerOf(ctx, b, 'slice_cols');
      if (!gate || !up || gate.inputs[0] !== up.inputs[0] || !onlyUsedBy(ctx, act.inputs[0], act)) continue;
      const z = gate.inputs[0];
      const width = gate.attrs.count as number;
      if (gate.attrs.start !== 0 || up.attrs.start !== width || up.attrs.count !== width || cols(g, z) !== 2 * width) continue;
      const kind = act.op === 'silu' ? 'silu' : act.attrs.approximate === 'tanh' ? 'gelu_tanh' : 'gelu';
      const [out] = g.addNode('act_mul', [z], { act: kind }, { label: mul.label, layer: mul.layer, order: mul.order });
      g.replaceAllUses(mul.outputs[0], out);
      return true;
    }
    return false;
  },
};
