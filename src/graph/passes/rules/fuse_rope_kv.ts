/**
 * The attention prologue over a merged q/k/v projection z:
 *   q = rope(norm?(z[:, q])), kv_write(rope(norm?(z[:, k])), z[:, v]) -> rope_kv_write(z, ...)
 * returning q and the updated cache: one pass reads z once, rotates q and k (after Qwen3's
 * per-head norm when present) and writes k and v into their cache slots. GPT-2 (no RoPE) gets
 * the same op with rope null.
 */
import type { Attrs, Node } from '../../ir.js';
import type { Rule, RewriteContext } from '../rewrite.js';
import { cols, onlyUsedBy, producerOf, usersOf } from '../rewrite.js';

interface Chain {
  slice: Node;
  rope: Node | null;
  norm: Node | null;
  /** The nodes between the slice and the consumer, which must have no other readers. */
  inner: number[];
}

/** Walks consumer-side input `v` back through an optional rope and per-head rmsnorm to a slice. */
function chain(ctx: RewriteContext, v: number, headDim: number): Chain | null {
  const inner: number[] = [];
  let value = v;
  const rope = producerOf(ctx, value, 'rope');
  if (rope) {
    inner.push(value);
    value = rope.inputs[0];
  }
  const norm = producerOf(ctx, value, 'rmsnorm');
  if (norm) {
    if (ctx.graph.value(norm.inputs[1]).shape[0] !== headDim) return null;
    inner.push(value);
    value = norm.inputs[0];
  }
  const slice = producerOf(ctx, value, 'slice_cols');
  if (!slice) return null;
  inner.push(value);
  return { slice, rope, norm, inner };
}

function ropeOf(rope: Node | null): Attrs | null {
  if (!rope) return null;
  const { rotaryDim, theta, scaling } = rope.attrs;
  return { rotaryDim, theta, scaling };
}

export const fuseRopeKvWrite: Rule = {
  name: 'fuse_rope_kv_write',
  doc: 'slice q/k/v of a merged projection, per-head norm, rope, kv_write -> rope_kv_write(qkv): one pass, same values',
  root: 'kv_write',
  apply(write, ctx) {
    const g = ctx.graph;
    const [kIn, vIn, cache, slots] = write.inputs;
    const attention = usersOf(ctx, write.outputs[0]);
    if (attention.length !== 1 || attention[0].op !== 'attention') return false;
    const attn = attention[0];
    const { numHeads: heads, numKvHeads: kvHeads, headDim: hd } = attn.attrs as { numHeads: number; numKvHeads: number; headDim: number };
    const q = chain(ctx, attn.inputs[0], hd);
    const k = chain(ctx, kIn, hd);
    const v = producerOf(ctx, vIn, 'slice_cols');
    if (!q || !k || !v) return false;
    const z = q.slice.inputs[0];
    if (k.slice.inputs[0] !== z || v.inputs[0] !== z || cols(g, z) !== (heads + 2 * kvHeads) * hd) return false;
    if (q.slice.attrs.start !== 0 || k.slice.attrs.start !== heads * hd || v.attrs.start !== (heads + kvHeads) * hd) return false;
    if (!!q.rope !== !!k.rope || !!q.norm !== !!k.norm) return false;
    // The fused op rotates heads of the attention's size; a rope over other heads is another op.
    if ((q.rope && q.rope.attrs.headDim !== hd) || (k.rope && k.rope.attrs.headDim !== hd)) return false;
    const rope = ropeOf(q.rope);
    if (JSON.stringify(rope) !== JSON.stringify(ropeOf(k.rope))) return false;
    if (q.rope && q.rope.inputs[1] !== k.rope!.inputs[1]) return false;
    if (q.norm && q.norm.attrs.eps !== k.norm!.attrs.eps) return false;
    // Every intermediate must feed only this chain, or removing it would change another reader.
    if (!q.inner.every((val, i) => onlyUsedBy(ctx, val, i === 0 ? attn : g.producer(q.inner[i - 1])!))) return false;
    if (!k.inner.every((val, i) => onlyUsedBy(ctx, val, i === 0 ? write : g.producer(k.inner[i - 1])!))) return false;
    if (!onlyUsedBy(ctx, vIn, write)) return false;

    const positions = q.rope ? q.rope.inputs[1] : g.values.find((x) => x.kind === 'input' && x.name === 'positions')?.id;
    if (positions === undefined) return false;
    const inputs = [z, positions, cache, slots];
    if (q.norm) inputs.push(q.norm.inputs[1], k.norm!.inputs[1]);
    const layerPrefix = write.label.replace(/\.kv_write$/, '');
    const [qOut, cacheOut] = g.addNode(
      'rope_kv_write',
      inputs,
      { numHeads: heads, numKvHeads: kvHeads, headDim: hd, rope, qkNormEps: q.norm ? (q.norm.attrs.eps as number) : null },
      { label: `${layerPrefix}.rope_kv_write`, layer: write.layer, order: write.order, outputLabels: [write.label] },
    );
    attn.inputs[0] = qOut;
    g.replaceAllUses(write.outputs[0], cacheOut);
    return true;
  },
};
