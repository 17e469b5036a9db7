/**
 * The paged KV cache and attention over it.
 *
 * cache: [2 (k, v), N blocks, blockSize, numKvHeads, headDim] f32. A token's slot is
 * block * blockSize + offset; a sequence's block table lists its blocks in order.
 *
 * kv_write: k, v [T, KV*hd], slots[T] -> cache[0|1, slot] = k|v[t]  (slot < 0: padding, skipped)
 * attention: q [T, H*hd]; sequence b owns query rows queryStart[b] .. queryStart[b+1] and has
 *   contextLens[b] tokens in the cache, the new ones last. Query row i of b sits at position
 *   p = contextLen - qLen + i and attends to positions max(0, p - window + 1) .. p (causal),
 *   or .. contextLen - 1 with attrs.causal false (encoder-style, for the kernel benchmark);
 *   head h reading kv head h / (H / KV) (GQA). softmax(q k^T * scale) v, in double precision.
 */
import type { KernelArgs } from '../tensor.js';
import { f32, i32 } from '../tensor.js';

export function kvWrite({ inputs: [kt, vt, cacheT, slotsT], output }: KernelArgs): void {
  const k = f32(kt), v = f32(vt), cache = f32(cacheT), slots = i32(slotsT);
  if (output.data !== cacheT.data) throw new Error('kv_write must update its cache in place');
  const width = kt.shape[1];
  const half = cache.length / 2; // start of the v half
  for (let t = 0; t < kt.shape[0]; t++) {
    const slot = slots[t];
    if (slot < 0) continue;
    const dst = slot * width;
    if (dst + width > half) throw new Error(`kv_write: slot ${slot} is outside the cache`);
    cache.set(k.subarray(t * width, (t + 1) * width), dst);
    cache.set(v.subarray(t * width, (t + 1) * width), half + dst);
  }
}

export function attention({ inputs: [qt, cacheT, qsT, clT, btT], output, attrs, step }: KernelArgs): void {
  const q = f32(qt), cache = f32(cacheT), y = f32(output);
  const queryStart = i32(qsT), contextLens = i32(clT), blockTables = i32(btT);
  const numHeads = attrs.numHeads as number, numKvHeads = attrs.numKvHeads as number, hd = attrs.headDim as number;
  const scale = attrs.scale as number;
  const window = (attrs.slidingWindow as number | null) ?? Infinity;
  const causal = attrs.causal !== false;
  const blockSize = cacheT.shape[2];
  const tableWidth = step.blockTableWidth;
  const group = numHeads / numKvHeads;
  const qWidth = numHeads * hd, kvWidth = numKvHeads * hd;
  const vBase = cache.length / 2;
  let scores = new Float64Array(256);
  const acc = new Float64Array(hd);

  for (let b = 0; b < contextLens.length; b++) {
    const qBegin = queryStart[b], qLen = queryStart[b + 1] - qBegin, ctx = contextLens[b];
    const table = b * tableWidth;
    if (ctx > scores.length) scores = new Float64Array(ctx);
    for (let i = 0; i < qLen; i++) {
      const p = ctx - qLen + i;
      const lo = Math.max(0, p - window + 1);
      const hi = causal ? p : ctx - 1;
      for (let h = 0; h < numHeads; h++) {
        const qOff = (qBegin + i) * qWidth + h * hd;
        const kvh = Math.floor(h / group);
        let max = -Infinity;
        for (let j = lo; j <= hi; j++) {
          const slot = blockTables[table + Math.floor(j / blockSize)] * blockSize + (j % blockSize);
          const kOff = slot * kvWidth + kvh * hd;
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[qOff + d] * cache[kOff + d];
          s *= scale;
          scores[j] = s;
          if (s > max) max = s;
        }
        let sum = 0;
        acc.fill(0);
        for (let j = lo; j <= hi; j++) {
          const e = Math.exp(scores[j] - max);
          sum += e;
          const slot = blockTables[table + Math.floor(j / blockSize)] * blockSize + (j % blockSize);
          const vOff = vBase + slot * kvWidth + kvh * hd;
          for (let d = 0; d < hd; d++) acc[d] += e * cache[vOff + d];
        }
        const out = (qBegin + i) * qWidth + h * hd;
        for (let d = 0; d < hd; d++) y[out + d] = acc[d] / sum;
      }
    }
  }
}
