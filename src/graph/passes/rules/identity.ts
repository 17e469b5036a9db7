/** Identity ops that the other rewrites leave behind, replaced by their input. */
import type { Rule } from '../rewrite.js';
import { cols, producerOf } from '../rewrite.js';

export const fullSlice: Rule = {
  name: 'full_slice',
  doc: 'slice_cols(x, 0, all columns) -> x',
  root: 'slice_cols',
  apply(node, ctx) {
    const x = node.inputs[0];
    if (node.attrs.start !== 0 || node.attrs.count !== cols(ctx.graph, x)) return false;
    ctx.graph.replaceAllUses(node.outputs[0], x);
    return true;
  },
};

export const concatOfSlices: Rule = {
  name: 'concat_of_slices',
  doc: 'concat_rows(slice_rows(w, 0, a), slice_rows(w, a, b), ...) covering all of w -> w (GPT-2 c_attn split and merged again)',
  root: 'concat_rows',
  apply(node, ctx) {
    let source: number | null = null;
    let next = 0;
    for (const input of node.inputs) {
      const slice = producerOf(ctx, input, 'slice_rows');
      if (!slice || (source !== null && slice.inputs[0] !== source) || slice.attrs.start !== next) return false;
      source = slice.inputs[0];
      next += slice.attrs.count as number;
    }
    if (source === null || next !== ctx.graph.value(source).shape[0]) return false;
    ctx.graph.replaceAllUses(node.outputs[0], source);
    return true;
  },
};

export const doubleTranspose: Rule = {
  name: 'double_transpose',
  doc: 'transpose(transpose(w)) -> w',
  root: 'transpose',
  apply(node, ctx) {
    const inner = producerOf(ctx, node.inputs[0], 'transpose');
    if (!inner) return false;
    ctx.graph.replaceAllUses(node.outputs[0], inner.inputs[0]);
    return true;
  },
};
