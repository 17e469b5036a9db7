/**
 * matmul(x, w1 (, b1)), matmul(x, w2 (, b2)), ... in one layer -> one matmul(x, [w1; w2; ...])
 * with slice_cols for each: x is read once and the GEMM is wider (Q/K/V, gate/up). The
 * concatenated weights are a load-time op, so the copy happens once.
 */
import type { Node } from '../../ir.js';
import type { Rule } from '../rewrite.js';
import { isConstant, usersOf } from '../rewrite.js';

/** "model.layers.0.self_attn.q_proj" + ".k_proj" + ".v_proj" -> "model.layers.0.self_attn.q_proj+k_proj+v_proj" */
function mergedLabel(labels: string[]): string {
  const parts = labels.map((l) => l.split('.'));
  let common = 0;
  while (parts.every((p) => p.length > common + 1 && p[common] === parts[0][common])) common++;
  return [...parts[0].slice(0, common), parts.map((p) => p.slice(common).join('.')).join('+')].join('.');
}

export const mergeSiblings: Rule = {
  name: 'merge_sibling_matmuls',
  doc: 'matmuls of one layer that read the same x -> one matmul over concatenated weights, then column slices',
  root: 'matmul',
  apply(mm, ctx) {
    const g = ctx.graph;
    const x = mm.inputs[0];
    const hasBias = mm.inputs.length === 3;
    if (mm.layer === null || g.value(x).kind !== 'activation') return false;
    const siblings = usersOf(ctx, x).filter(
      (n: Node) =>
        n.op === 'matmul' &&
        n.inputs[0] === x &&
        n.layer === mm.layer &&
        n.inputs.length === mm.inputs.length &&
        n.inputs.slice(1).every((i) => isConstant(g, i)),
    );
    if (siblings.length < 2) return false;
    siblings.sort((a, b) => a.order - b.order);
    const label = mergedLabel(siblings.map((n) => n.label));
    const order = siblings[0].order;
    const layer = mm.layer;
    const [w] = g.addNode('concat_rows', siblings.map((n) => n.inputs[1]), {}, { label: `${label}.weight`, layer, order });
    const inputs = [x, w];
    if (hasBias) inputs.push(g.addNode('concat_rows', siblings.map((n) => n.inputs[2]), {}, { label: `${label}.bias`, layer, order })[0]);
    const [merged] = g.addNode('matmul', inputs, {}, { label, layer, order });
    let start = 0;
    for (const n of siblings) {
      const count = g.value(n.outputs[0]).shape[1] as number;
      const [part] = g.addNode('slice_cols', [merged], { start, count }, { label: n.label, layer, order: n.order });
      g.replaceAllUses(n.outputs[0], part);
      start += count;
    }
    return true;
  },
};
