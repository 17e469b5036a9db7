/**
 * rmsnorm(add(r, d), w) -> add_rmsnorm(r, d, w), and the same for layernorm: the residual sum and
 * its norm in one pass over the row; the sum keeps serving the residual stream's other readers
 * and may be written in place of r.
 */
import type { Rule } from '../rewrite.js';
import { cols, producerOf } from '../rewrite.js';

function fuse(kind: 'rmsnorm' | 'layernorm'): Rule {
  return {
    name: `fuse_add_${kind}`,
    doc: `${kind}(add(r, d), ...) -> add_${kind}(r, d, ...) returning (r + d, ${kind}(r + d)): one pass, the sum in place of r`,
    root: kind,
    apply(norm, ctx) {
      const g = ctx.graph;
      const [s, ...params] = norm.inputs;
      const add = producerOf(ctx, s, 'add');
      if (!add) return false;
      const [r, d] = add.inputs;
      // A whole-row norm of a plain sum (not a bias broadcast, not Qwen3's per-head norm).
      if (g.value(d).shape.length !== 2 || g.value(params[0]).shape[0] !== cols(g, s)) return false;
      if (g.value(r).kind !== 'activation' || g.value(d).kind !== 'activation') return false;
      const [sum, normed] = g.addNode(`add_${kind}`, [r, d, ...params], norm.attrs, {
        label: norm.label,
        layer: norm.layer,
        order: add.order,
        outputLabels: [norm.label],
      });
      g.value(sum).name = add.label;
      g.replaceAllUses(s, sum);
      g.replaceAllUses(norm.outputs[0], normed);
      return true;
    },
  };
}

export const fuseAddRmsnorm = fuse('rmsnorm');
export const fuseAddLayernorm = fuse('layernorm');
