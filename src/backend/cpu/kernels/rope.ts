/**
 * rope: x[T, H*hd], positions[T] -> rotate-half RoPE on the first rotaryDim of each head:
 *   (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), x1 = x[i], x2 = x[i + rotaryDim/2],
 *   angle = position * inv_freq[i]; the dims past rotaryDim pass through.
 */
import type { Attrs } from '../../../graph/ir.js';
import { ropeAttrs, ropeInvFreq } from '../../../graph/rope.js';
import type { KernelArgs } from '../tensor.js';
import { f32, i32 } from '../tensor.js';

const invFreqCache = new Map<string, Float32Array>();

/** cos/sin of one position for every rotary pair, as the reference computes them (f32). */
export class RopeAngles {
  readonly half: number;
  readonly rotaryDim: number;
  readonly cos: Float64Array;
  readonly sin: Float64Array;
  private readonly inv: Float32Array;

  constructor(attrs: Attrs) {
    const ra = ropeAttrs(attrs);
    const key = JSON.stringify(ra);
    let inv = invFreqCache.get(key);
    if (!inv) invFreqCache.set(key, (inv = ropeInvFreq(ra)));
    this.inv = inv;
    this.rotaryDim = ra.rotaryDim;
    this.half = ra.rotaryDim / 2;
    this.cos = new Float64Array(this.half);
    this.sin = new Float64Array(this.half);
  }

  at(position: number): void {
    for (let i = 0; i < this.half; i++) {
      const angle = Math.fround(position * this.inv[i]);
      this.cos[i] = Math.fround(Math.cos(angle));
      this.sin[i] = Math.fround(Math.sin(angle));
    }
  }

  /** Rotates one head of headDim values from x[xOff] into y[yOff] (x and y may be the same). */
  rotate(x: Float32Array, xOff: number, y: Float32Array, yOff: number, headDim: number): void {
    const { half, cos, sin } = this;
    for (let i = 0; i < half; i++) {
      const x1 = x[xOff + i], x2 = x[xOff + i + half];
      y[yOff + i] = x1 * cos[i] - x2 * sin[i];
      y[yOff + i + half] = x2 * cos[i] + x1 * sin[i];
    }
    if (x !== y || xOff !== yOff) for (let i = this.rotaryDim; i < headDim; i++) y[yOff + i] = x[xOff + i];
  }
}

export function rope({ inputs: [xt, pt], output, attrs }: KernelArgs): void {
  const x = f32(xt), pos = i32(pt), y = f32(output);
  const numHeads = attrs.numHeads as number, headDim = attrs.headDim as number;
  const angles = new RopeAngles(attrs);
  const width = numHeads * headDim;
  for (let t = 0; t < xt.shape[0]; t++) {
    angles.at(pos[t]);
    for (let h = 0; h < numHeads; h++) angles.rotate(x, t * width + h * headDim, y, t * width + h * headDim, headDim);
  }
}
