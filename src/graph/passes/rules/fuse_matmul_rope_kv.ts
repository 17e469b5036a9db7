/**
 * rope_kv_write(matmul(x, w (, b)), positions, cache, slots) -> matmul_rope_kv(x, rope_rows(w),
 * positions, cache, slots (, rope_rows(b))): RoPE and the KV-cache write move into the q/k/v
 * GEMM's epilogue.
 *
 * Why: rope_kv_write reads the merged q/k/v output [T, (H + 2 KV) hd] the GEMM just wrote, a
 * launch of its own per layer (at decode a few microseconds for a few KiB). Rotate-half RoPE pairs
 * dim i of a head with dim i + rotaryDim / 2, which no GEMM fragment holds in one thread. But
 * attention reads q and k only through q . k, which a permutation of a head's dims applied to both
 * leaves unchanged. So the q and k rows of w are reordered once at load (rope_rows: dims i and
 * i + rotaryDim / 2 become rows 2i and 2i + 1), the partners are then neighbouring columns, which
 * every GEMM fragment layout gives one thread together (as for matmul_glu's gate/up pairs), and
 * the epilogue rotates them, stores q, and writes k and v into the cache at slots[t]. The cache
 * holds k in that order; the same program writes and reads it (every program of an engine is
 * made by the same passes), and v is not permuted, so attention's output is the same.
 *
 * Not fused: Qwen3's per-head q/k norm before RoPE (a reduction over a head's columns, across
 * threads: rope_kv_write stays), a GEMM with another reader of its output or of its weights (the
 * reordered copy would be a second one), or one asked for another output type.
 *
 * The result is the same up to rounding: q and k are rotated before they are rounded to the
 * storage type, not after (one rounding instead of two).
 */
import type { Attrs } from '../../ir.js';
import type { Rule } from '../rewrite.js';
import { isConstant, onlyUsedBy, producerOf, usersOf } from '../rewrite.js';

export const fuseMatmulRopeKv: Rule = {
  name: 'fuse_matmul_rope_kv',
  doc: 'rope_kv_write(matmul(x, w (, b)), ...) -> matmul_rope_kv(x, rope_rows(w), ...): q/k rows reordered at load so rotation partners are neighbouring columns; RoPE and the KV write in the GEMM epilogue',
  root: 'rope_kv_write',
  apply(rk, ctx) {
    const g = ctx.graph;
    const a = rk.attrs as { numHeads: number; numKvHeads: number; headDim: number; rope: Attrs | null; qkNormEps: number | null };
    if (a.qkNormEps !== null && a.qkNormEps !== undefined) return false;
    if (a.headDim % 2 !== 0) return false;
    const [z, positions, cache, slots] = rk.inputs;
    const mm = producerOf(ctx, z, 'matmul');
    if (!mm || !onlyUsedBy(ctx, z, rk) || g.outputs.includes(z)) return false;
    if (mm.attrs.outputDtype !== undefined) return false;
    const [x, w, bias] = mm.inputs;
    // The weights (and bias) are reordered once, at load: constants read by this GEMM alone.
    if (!mm.inputs.slice(1).every((i) => isConstant(g, i) && usersOf(ctx, i).length === 1)) return false;
    const rotaryDim = a.rope ? (a.rope.rotaryDim as number) : 0;
    const opts = { layer: mm.layer, order: mm.order };
    const reorder = (v: number): number =>
      rotaryDim === 0 ? v : g.addNode('rope_rows', [v], { heads: a.numHeads + a.numKvHeads, headDim: a.headDim, rotaryDim }, { ...opts, label: `${g.value(v).name}.rope_rows` })[0];
    const inputs = [x, reorder(w), positions, cache, slots];
    if (bias !== undefined) inputs.push(reorder(bias));
    const [q, cacheOut] = g.addNode(
      'matmul_rope_kv',
      inputs,
      { ...mm.attrs, numHeads: a.numHeads, numKvHeads: a.numKvHeads, headDim: a.headDim, rope: a.rope },
      { ...opts, label: mm.label, outputLabels: [g.value(rk.outputs[1]).name] },
    );
    g.value(q).name = g.value(rk.outputs[0]).name;
    g.replaceAllUses(rk.outputs[0], q);
    g.replaceAllUses(rk.outputs[1], cacheOut);
    return true;
  },
};
