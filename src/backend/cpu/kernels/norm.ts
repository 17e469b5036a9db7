/**
 * rmsnorm: each group of G elements of x[R, N]: x / sqrt(mean(x^2) + eps) * w[G]
 *   (G = N for the hidden state; G = headDim for Qwen3's per-head q/k norm).
 * layernorm: (x - mean) / sqrt(var + eps) * w + b over each row, biased variance.
 * Sums accumulate in double precision.
 */
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

export function rmsnorm({ inputs: [xt, wt], output, attrs }: KernelArgs): void {
  const x = f32(xt), w = f32(wt), y = f32(output);
  const g = w.length;
  const eps = attrs.eps as number;
  for (let base = 0; base < y.length; base += g) {
    let ss = 0;
    for (let i = 0; i < g; i++) ss += x[base + i] * x[base + i];
    const inv = 1 / Math.sqrt(ss / g + eps);
    for (let i = 0; i < g; i++) y[base + i] = x[base + i] * inv * w[i];
  }
}

export function layernorm({ inputs: [xt, wt, bt], output, attrs }: KernelArgs): void {
  const x = f32(xt), w = f32(wt), b = f32(bt), y = f32(output);
  const n = w.length;
  const eps = attrs.eps as number;
  for (let base = 0; base < y.length; base += n) {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += x[base + i];
    const mean = sum / n;
    let sq = 0;
    for (let i = 0; i < n; i++) {
      const d = x[base + i] - mean;
      sq += d * d;
    }
    const inv = 1 / Math.sqrt(sq / n + eps);
    for (let i = 0; i < n; i++) y[base + i] = (x[base + i] - mean) * inv * w[i] + b[i];
  }
}
