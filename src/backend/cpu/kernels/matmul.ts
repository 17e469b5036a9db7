/**
 * matmul: x[R, K] (f32), w[N, K] (nn.Linear layout) (, b[N]) -> y[R, N] = x w^T (+ b).
 * Both operands are read along K contiguously. Four rows of x share each loaded weight, and
 * four independent partial sums per row keep the floating-point pipeline busy: about 4x the
 * naive loop in V8 at decode (R = 1) and more at prefill.
 */
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

export function matmul({ inputs: [xt, wt, bt], output }: KernelArgs): void {
  const y = f32(output);
  const rows = xt.shape[0], n = wt.shape[0];
  matmulF32(f32(xt), f32(wt), y, rows, n, xt.shape[1]);
  if (bt) {
    const b = f32(bt);
    for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) y[r * n + j] += b[j];
  }
}

export function matmulF32(x: Float32Array, w: Float32Array, y: Float32Array, rows: number, n: number, k: number): void {
  const k4 = k & ~3;
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
      y[r * n + j] = s0;
      y[(r + 1) * n + j] = s1;
      y[(r + 2) * n + j] = s2;
      y[(r + 3) * n + j] = s3;
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
      y[r * n + j] = a + b + c + d;
    }
  }
}
