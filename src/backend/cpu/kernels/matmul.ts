/**
 * matmul: x[R, K] (f32), w[N, K] (nn.Linear layout) (, b[N]) -> y[R, N] = x w^T (+ b).
 * With attrs.rmsEps (a norm folded in: its weight is in w's columns), row r of the product is
 * scaled by rstd[r] = 1 / sqrt(mean(x[r]^2) + rmsEps) before the bias.
 * matmul_add: x, w, residual[R, N] (, b[N]) -> x w^T (+ b) + residual; y may be residual's buffer
 * (the planner computes it in place): each element of the residual is read just before the same
 * element of y is written.
 * Both operands are read along K contiguously. Four rows of x share each loaded weight, and
 * four independent partial sums per row keep the floating-point pipeline busy: about 4x the
 * naive loop in V8 at decode (R = 1) and more at prefill.
 */
import type { Attrs } from '../../../graph/ir.js';
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

/** The folded norm's row scales of x[rows, k] (attrs.rmsEps), or null without one. */
export function rowScales(x: Float32Array, rows: number, k: number, attrs: Attrs): Float32Array | null {
  const eps = attrs.rmsEps;
  if (eps === undefined) return null;
  const s = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = r * k; i < (r + 1) * k; i++) ss += x[i] * x[i];
    s[r] = 1 / Math.sqrt((k > 0 ? ss / k : 0) + (eps as number));
  }
  return s;
}

export function matmul({ inputs: [xt, wt, bt], output, attrs }: KernelArgs): void {
  const x = f32(xt), [rows, k] = xt.shape;
  matmulF32(x, f32(wt), f32(output), rows, wt.shape[0], k, bt ? f32(bt) : null, null, rowScales(x, rows, k, attrs));
}

export function matmulAdd({ inputs: [xt, wt, rt, bt], output, attrs }: KernelArgs): void {
  const x = f32(xt), [rows, k] = xt.shape;
  matmulF32(x, f32(wt), f32(output), rows, wt.shape[0], k, bt ? f32(bt) : null, f32(rt), rowScales(x, rows, k, attrs));
}

/** y = x w^T (* scale[row]) (+ bias) (+ res), each element in that order; res may be y. */
export function matmulF32(
  x: Float32Array,
  w: Float32Array,
  y: Float32Array,
  rows: number,
  n: number,
  k: number,
  bias: Float32Array | null = null,
  res: Float32Array | null = null,
  scale: Float32Array | null = null,
): void {
  const k4 = k & ~3;
  const store = (i: number, j: number, s: number): void => {
    if (scale) s *= scale[Math.floor(i / n)];
    if (bias) s += bias[j];
    y[i] = res ? s + res[i] : s;
  };
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const x0 = r * k, x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;
    for (let j = 0; j < n; j++) {
      const wj = j * k;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < k; i++) {
        const wv = w[wj + i];
        s0 += x[x0 + i] * wv;
        s1 += x[x1 + i] * wv;
        s2 += x[x2 + i] * wv;
        s3 += x[x3 + i] * wv;
      }
      store(r * n + j, j, s0);
      store((r + 1) * n + j, j, s1);
      store((r + 2) * n + j, j, s2);
      store((r + 3) * n + j, j, s3);
    }
  }
  for (; r < rows; r++) {
    const xr = r * k;
    for (let j = 0; j < n; j++) {
      const wj = j * k;
      let a = 0, b = 0, c = 0, d = 0;
      let i = 0;
      for (; i < k4; i += 4) {
        a += x[xr + i] * w[wj + i];
        b += x[xr + i + 1] * w[wj + i + 1];
        c += x[xr + i + 2] * w[wj + i + 2];
        d += x[xr + i + 3] * w[wj + i + 3];
      }
      for (; i < k; i++) a += x[xr + i] * w[wj + i];
      store(r * n + j, j, a + b + c + d);
    }
  }
}
