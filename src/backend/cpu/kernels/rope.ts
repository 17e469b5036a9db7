/**
 * rope: x[T, H*hd], positions[T] -> rotate-half RoPE on the first rotaryDim of each head:
 *   (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), x1 = x[i], x2 = x[i + rotaryDim/2],
 *   angle = position * inv_freq[i]; the dims past rotaryDim pass through.
 */
import { ropeAttrs, ropeInvFreq } from '../../../graph/rope.js';
import type { KernelArgs } from '../tensor.js';
import { f32, i32 } from '../tensor.js';

const invFreqCache = new Map<string, Float32Array>();

export function rope({ inputs: [xt, pt], output, attrs }: KernelArgs): void {
  const x = f32(xt), pos = i32(pt), y = f32(output);
  const numHeads = attrs.numHeads as number, headDim = attrs.headDim as number;
  const ra = ropeAttrs(attrs);
  const key = JSON.stringify(ra);
  let inv = invFreqCache.get(key);
  if (!inv) invFreqCache.set(key, (inv = ropeInvFreq(ra)));
  const half = ra.rotaryDim / 2;
  const cos = new Float64Array(half), sin = new Float64Array(half);
  const width = numHeads * headDim;
  for (let t = 0; t < xt.shape[0]; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(pos[t] * inv[i]);
      cos[i] = Math.fround(Math.cos(angle));
      sin[i] = Math.fround(Math.sin(angle));
    }
    for (let h = 0; h < numHeads; h++) {
      const base = t * width + h * headDim;
      for (let i = 0; i < half; i++) {
        const x1 = x[base + i], x2 = x[base + i + half];
        y[base + i] = x1 * cos[i] - x2 * sin[i];
        y[base + i + half] = x2 * cos[i] + x1 * sin[i];
      }
      for (let i = ra.rotaryDim; i < headDim; i++) y[base + i] = x[base + i];
    }
  }
}
