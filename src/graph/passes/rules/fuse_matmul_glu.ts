/**
 * act_mul(matmul(x, w (, b))) -> matmul_glu(x, pair_rows(w) (, pair_rows(b))): the gated unit
 * (SwiGLU, GeGLU) moves into the GEMM's epilogue.
 *
 * Why: act_mul reads the merged gate/up output [R, 2I] the GEMM just wrote and writes [R, I], a
 * launch of its own per layer. In the epilogue the gate and the up value of an output are both
 * in registers, in f32, if they are neighbouring columns of the GEMM: every GEMM fragment layout
 * (mma.sync, wgmma, the GEMV's per-block rows) gives one thread columns 2j and 2j + 1 together.
 * So the weight rows are interleaved once at load (pair_rows: row 2j gate j, row 2j + 1 up j),
 * and the GEMM writes act(gate) * up directly: one launch less per layer, and at prefill a write
 * and a read of the [R, 2I] activations less (at decode the launch is what it saves).
 *
 * The product is the same up to rounding: gate and up are no longer rounded to the storage type
 * before the activation (one rounding per output instead of three).
 */
import type { Rule } from '../rewrite.js';
import { isConstant, onlyUsedBy, producerOf } from '../rewrite.js';

export const fuseMatmulGlu: Rule = {
  name: 'fuse_matmul_glu',
  doc: 'act_mul(matmul(x, w (, b))) -> matmul_glu(x, pair_rows(w) (, pair_rows(b))): gate and up rows interleaved at load, act(gate) * up in the GEMM epilogue',
  root: 'act_mul',
  apply(am, ctx) {
    const g = ctx.graph;
    const z = am.inputs[0];
    const mm = producerOf(ctx, z, 'matmul');
    if (!mm || !onlyUsedBy(ctx, z, am)) return false;
    // The weights (and bias) must be constants: they are rearranged once, at load.
    if (!mm.inputs.slice(1).every((i) => isConstant(g, i))) return false;
    // A matmul asked for another output type (the logits' f32) is not a gate/up projection.
    if (mm.attrs.outputDtype !== undefined) return false;
    const [x, w, bias] = mm.inputs;
    const opts = { layer: mm.layer, order: mm.order };
    const [wp] = g.addNode('pair_rows', [w], {}, { ...opts, label: `${g.value(w).name}.glu_pairs` });
    const inputs = [x, wp];
    if (bias !== undefined) inputs.push(g.addNode('pair_rows', [bias], {}, { ...opts, label: `${g.value(bias).name}.glu_pairs` })[0]);
    const [out] = g.addNode('matmul_glu', inputs, { ...mm.attrs, act: am.attrs.act }, { ...opts, label: mm.label });
    g.value(out).name = am.label;
    g.replaceAllUses(am.outputs[0], out);
    return true;
  },
};
