/**
 * matmul: x[R, K] (f32), w[N, K] (nn.Linear layout) (, b[N]) -> y[R, N] = x w^T (+ b).
 * matmul_add: x, w, residual[R, N] (, b[N]) -> x w^T (+ b) + residual; y may be residual's buffer
 * (the planner computes it in place): each element of the residual is read just before the same
 * element of y is written.
 * Both operands are read along K contiguously. Four rows of x share each loaded weight, and
 * four independent partial sums per row keep the floating-point pipeline busy: about 4x the
 * naive loop in V8 at decode (R = 1) and more at prefill.
 */
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

export function matmul({ inputs: [xt, wt, bt], output }: KernelArgs): void {
  matmulF32(f32(xt), f32(wt), f32(output), xt.shape[0], wt.shape[0], xt.shape[1], bt ? f32(bt) : null);
}

export function matmulAdd({ inputs: [xt, wt, rt, bt], output }: KernelArgs): void {
  matmulF32(f32(xt), f32(wt), f32(output), xt.shape[0], wt.shape[0], xt.shape[1], bt ? f32(bt) : null, f32(rt));
}

/** y = x w^T (+ bias) (+ res), the sum of each element in that order; res may be y. */
export function matmulF32(x: Float32Array, w: Float32Array, y: Float32Array, rows: number, n: number, k: number, bias: Float32Array | null = null, res: Float32Array | null = null): void {
  const k4 = k & ~3;
  const store = (i: number, j: number, s: number): void => {
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
