/** Elementwise ops on f32: add (with row broadcast for biases), mul, silu, gelu. */
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

export function add({ inputs: [at, bt], output }: KernelArgs): void {
  const a = f32(at), b = f32(bt), y = f32(output);
  const n = y.length;
  if (bt.shape.length === 1 && at.shape.length > 1) {
    const cols = b.length;
    for (let i = 0; i < n; i += cols) for (let j = 0; j < cols; j++) y[i + j] = a[i + j] + b[j];
  } else {
    for (let i = 0; i < n; i++) y[i] = a[i] + b[i];
  }
}

export function mul({ inputs: [at, bt], output }: KernelArgs): void {
  const a = f32(at), b = f32(bt), y = f32(output);
  for (let i = 0; i < y.length; i++) y[i] = a[i] * b[i];
}

export function silu({ inputs: [xt], output }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  for (let i = 0; i < y.length; i++) y[i] = x[i] / (1 + Math.exp(-x[i]));
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

export function gelu({ inputs: [xt], output, attrs }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  if (attrs.approximate === 'tanh') {
    for (let i = 0; i < y.length; i++) {
      const v = x[i];
      y[i] = 0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)));
    }
  } else {
    for (let i = 0; i < y.length; i++) y[i] = 0.5 * x[i] * (1 + erf(x[i] / Math.SQRT2));
  }
}

/**
 * erf to about 1e-12: JavaScript has no Math.erf. Maclaurin series near zero, and the
 * continued fraction of erfc (evaluated backwards) in the tails.
 */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax, sum = ax;
    const x2 = ax * ax;
    for (let n = 1; n < 60; n++) {
      term *= -x2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    const r = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -r : r;
  }
  if (ax > 6) return x < 0 ? -1 : 1;
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
  let f = ax;
  for (let n = 60; n >= 1; n--) f = ax + n / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return x < 0 ? erfc - 1 : 1 - erfc;
}
