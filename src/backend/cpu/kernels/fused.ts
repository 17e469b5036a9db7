/**
 * Fused ops made by the graph passes, over packed inputs:
 *   act_mul: gateUp[R, 2I] -> act(gateUp[:, :I]) * gateUp[:, I:]
 *   rope_kv_write: qkv[T, (H + 2 KV) hd] -> q rotated [T, H hd]; k rotated and v into the cache
 *     at slots[t]; with qkNormEps, RMSNorm over each head of q and k (weights [hd]) before RoPE;
 *     with rope null (GPT-2), no rotation
 *   slice_cols: x[R, C] -> x[:, start : start + count]
 */
import type { Attrs } from '../../../graph/ir.js';
import type { KernelArgs } from '../tensor.js';
import { f32, i32 } from '../tensor.js';
import { erf } from './elementwise.js';
import { rmsnormGroup } from './norm.js';
import { RopeAngles } from './rope.js';

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

export function actMul({ inputs: [gt], output, attrs }: KernelArgs): void {
  const gu = f32(gt), y = f32(output);
  const width = output.shape[1];
  const act = attrs.act as string;
  for (let r = 0; r < output.shape[0]; r++) {
    const src = r * 2 * width, dst = r * width;
    for (let i = 0; i < width; i++) {
      const g = gu[src + i];
      let a: number;
      if (act === 'silu') a = g / (1 + Math.exp(-g));
      else if (act === 'gelu_tanh') a = 0.5 * g * (1 + Math.tanh(SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)));
      else a = 0.5 * g * (1 + erf(g / Math.SQRT2));
      y[dst + i] = a * gu[src + width + i];
    }
  }
}

export function sliceCols({ inputs: [xt], output, attrs }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  const cols = xt.shape[1], start = attrs.start as number, count = attrs.count as number;
  for (let r = 0; r < output.shape[0]; r++) y.set(x.subarray(r * cols + start, r * cols + start + count), r * count);
}

export function ropeKvWrite({ inputs, outputs: [qt, cacheOut], attrs }: KernelArgs): void {
  const [qkvT, posT, cacheT, slotsT, qNormT, kNormT] = inputs;
  const qkv = f32(qkvT), pos = i32(posT), cache = f32(cacheT), slots = i32(slotsT), q = f32(qt);
  if (cacheOut.data !== cacheT.data) throw new Error('rope_kv_write must update its cache in place');
  const heads = attrs.numHeads as number, kvHeads = attrs.numKvHeads as number, hd = attrs.headDim as number;
  const eps = attrs.qkNormEps as number | null;
  const angles = attrs.rope ? new RopeAngles(attrs.rope as Attrs) : null;
  const width = (heads + 2 * kvHeads) * hd;
  const kvWidth = kvHeads * hd;
  const vHalf = cache.length / 2;
  const scratch = new Float32Array(hd);
  /** Optional per-head norm of src[off..off+hd) into scratch, then rotation into dst. */
  const prepare = (off: number, norm: Float32Array | null, dst: Float32Array, dstOff: number) => {
    let src = qkv, srcOff = off;
    if (norm && eps !== null) {
      rmsnormGroup(qkv, off, norm, eps, scratch, 0);
      src = scratch;
      srcOff = 0;
    }
    if (angles) angles.rotate(src, srcOff, dst, dstOff, hd);
    else dst.set(src.subarray(srcOff, srcOff + hd), dstOff);
  };
  const qNorm = qNormT ? f32(qNormT) : null, kNorm = kNormT ? f32(kNormT) : null;
  for (let t = 0; t < qkvT.shape[0]; t++) {
    angles?.at(pos[t]);
    const row = t * width;
    for (let h = 0; h < heads; h++) prepare(row + h * hd, qNorm, q, (t * heads + h) * hd);
    const slot = slots[t];
    if (slot < 0) continue;
    const dst = slot * kvWidth;
    if (dst + kvWidth > vHalf) throw new Error(`rope_kv_write: slot ${slot} is outside the cache`);
    for (let h = 0; h < kvHeads; h++) prepare(row + (heads + h) * hd, kNorm, cache, dst + h * hd);
    cache.set(qkv.subarray(row + (heads + kvHeads) * hd, row + width), vHalf + dst);
  }
}
