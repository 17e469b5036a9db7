/**
 * gather_rows(f(x, ...), idx) -> f(gather_rows(x, idx), ...) for a row-wise f (each output row
 * depends on the same row of its row-shaped inputs only): the rows no logit needs are never
 * computed. The logits gather (only the last row of each sequence needs logits in a prefill step)
 * moves up through the last layer's head norm, MLP, residual adds, post-attention norm and output
 * projection, and stops at attention, which needs every row. At 2,048 prompt tokens that skips
 * the last layer's O projection and MLP on 2,047 rows, and the final residual add is left
 * directly under the final norm, so fuse_add_norm makes them one add_rmsnorm.
 *
 * f moves only when every output of it is read by gathers of the same rows and is no graph
 * output; its weights, biases and other inputs that are not rows of x stay as they are.
 */
import type { Node } from '../../ir.js';
import type { OpName } from '../../ops.js';
import type { Rule } from '../rewrite.js';
import { usersOf } from '../rewrite.js';

/** Ops whose output row r is a function of row r of their row-shaped inputs alone. */
const ROW_WISE: ReadonlySet<OpName> = new Set<OpName>(['add', 'mul', 'silu', 'gelu', 'rmsnorm', 'layernorm', 'matmul', 'matmul_add', 'slice_cols', 'act_mul', 'matmul_glu', 'add_rmsnorm', 'add_layernorm']);

export const sinkGather: Rule = {
  name: 'sink_gather',
  doc: 'gather_rows(f(x, ...), idx) -> f(gather_rows(x, idx), ...) for row-wise f: only the rows that need logits are computed after the last attention',
  root: 'gather_rows',
  apply(gather, ctx) {
    const g = ctx.graph;
    const [x, idx] = gather.inputs;
    const p = g.producer(x);
    if (!p || !ROW_WISE.has(p.op)) return false;
    const rows = g.value(x).shape[0];
    if (typeof rows === 'number') return false; // a per-step row count only
    const gathers: Node[] = [];
    for (const out of p.outputs) {
      if (g.outputs.includes(out)) return false;
      for (const u of usersOf(ctx, out)) {
        if (u.op !== 'gather_rows' || u.inputs[0] !== out || u.inputs[1] !== idx) return false;
        gathers.push(u);
      }
    }
    const opts = { layer: p.layer, order: p.order };
    const inputs = p.inputs.map((v) => {
      const val = g.value(v);
      if (val.shape.length !== 2 || val.shape[0] !== rows || val.kind === 'weight' || val.kind === 'constant') return v;
      // One gather per value and index: reuse a live one.
      const existing = usersOf(ctx, v).find((u) => u.op === 'gather_rows' && u.inputs[1] === idx);
      return existing ? existing.outputs[0] : g.addNode('gather_rows', [v, idx], {}, { ...opts, label: `${val.name}[rows]` })[0];
    });
    const outs = g.addNode(p.op, inputs, p.attrs, { ...opts, label: p.label, outputLabels: p.outputs.slice(1).map((o) => g.value(o).name) });
    for (const u of gathers) g.replaceAllUses(u.outputs[0], outs[p.outputs.indexOf(u.inputs[0])]);
    return true;
  },
};
