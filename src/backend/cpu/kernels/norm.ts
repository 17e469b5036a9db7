/**
 * rmsnorm: each group of G elements of x[R, N]: x / sqrt(mean(x^2) + eps) * w[G]
 *   (G = N for the hidden state; G = headDim for Qwen3's per-head q/k norm).
 * layernorm: (x - mean) / sqrt(var + eps) * w + b over each row, biased variance.
 * add_rmsnorm / add_layernorm: sum = residual + delta (written in place of residual when the
 *   planner shares their buffer), then the norm of sum. Sums accumulate in double precision.
 */
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

/** y[yOff + i] = x[xOff + i] / rms * w[i] for i < w.length. */
export function rmsnormGroup(x: Float32Array, xOff: number, w: Float32Array, eps: number, y: Float32Array, yOff: number): void {
  const g = w.length;
  let ss = 0;
  for (let i = 0; i < g; i++) ss += x[xOff + i] * x[xOff + i];
  const inv = 1 / Math.sqrt(ss / g + eps);
  for (let i = 0; i < g; i++) y[yOff + i] = x[xOff + i] * inv * w[i];
}

function layernormRow(x: Float32Array, off: number, w: Float32Array, b: Float32Array, eps: number, y: Float32Array): void {
  const n = w.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += x[off + i];
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) {
    const d = x[off + i] - mean;
    sq += d * d;
  }
  const inv = 1 / Math.sqrt(sq / n + eps);
  for (let i = 0; i < n; i++) y[off + i] = (x[off + i] - mean) * inv * w[i] + b[i];
}

export function rmsnorm({ inputs: [xt, wt], output, attrs }: KernelArgs): void {
  const x = f32(xt), w = f32(wt), y = f32(output);
  for (let base = 0; base < y.length; base += w.length) rmsnormGroup(x, base, w, attrs.eps as number, y, base);
}

export function layernorm({ inputs: [xt, wt, bt], output, attrs }: KernelArgs): void {
  const x = f32(xt), w = f32(wt), b = f32(bt), y = f32(output);
  for (let base = 0; base < y.length; base += w.length) layernormRow(x, base, w, b, attrs.eps as number, y);
}

function addInto(r: Float32Array, d: Float32Array, sum: Float32Array): void {
  for (let i = 0; i < sum.length; i++) sum[i] = r[i] + d[i];
}

export function addRmsnorm({ inputs: [rt, dt, wt], outputs: [st, yt], attrs }: KernelArgs): void {
  const sum = f32(st), w = f32(wt), y = f32(yt);
  addInto(f32(rt), f32(dt), sum);
  for (let base = 0; base < y.length; base += w.length) rmsnormGroup(sum, base, w, attrs.eps as number, y, base);
}

export function addLayernorm({ inputs: [rt, dt, wt, bt], outputs: [st, yt], attrs }: KernelArgs): void {
  const sum = f32(st), w = f32(wt), b = f32(bt), y = f32(yt);
  addInto(f32(rt), f32(dt), sum);
  for (let base = 0; base < y.length; base += w.length) layernormRow(sum, base, w, b, attrs.eps as number, y);
}
