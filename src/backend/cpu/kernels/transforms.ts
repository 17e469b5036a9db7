/** Load-time weight transforms: transpose (GPT-2 Conv1D), slice_rows (split c_attn), concat_rows, pair_rows (gate/up pairs for matmul_glu), rope_rows (RoPE partners side by side for matmul_rope_kv), scale_cols (a norm weight folded into a GEMM). */
import type { KernelArgs } from '../tensor.js';
import { f32 } from '../tensor.js';

export function transpose({ inputs: [xt], output }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  const [a, b] = xt.shape;
  for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) y[j * a + i] = x[i * b + j];
}

export function sliceRows({ inputs: [xt], output, attrs }: KernelArgs): void {
  const rowSize = xt.shape.slice(1).reduce((p, d) => p * d, 1);
  const start = (attrs.start as number) * rowSize;
  f32(output).set(f32(xt).subarray(start, start + (attrs.count as number) * rowSize));
}

export function concatRows({ inputs, output }: KernelArgs): void {
  let offset = 0;
  for (const t of inputs) {
    f32(output).set(f32(t), offset);
    offset += t.data.length;
  }
}

/** Row 2j of the output is row j of x, row 2j + 1 is row I + j ([2I, ...]). */
export function pairRows({ inputs: [xt], output }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  const rowSize = xt.shape.slice(1).reduce((p, d) => p * d, 1);
  const half = xt.shape[0] / 2;
  for (let j = 0; j < half; j++) {
    y.set(x.subarray(j * rowSize, (j + 1) * rowSize), 2 * j * rowSize);
    y.set(x.subarray((half + j) * rowSize, (half + j + 1) * rowSize), (2 * j + 1) * rowSize);
  }
}

/** The source row of each output row of rope_rows: in the first `heads` heads, row 2i of a head is its row i and row 2i + 1 its row i + rotaryDim / 2 (i < rotaryDim / 2). */
export function ropeRowSource(r: number, heads: number, headDim: number, rotaryDim: number): number {
  if (r >= heads * headDim) return r;
  const d = r % headDim;
  if (d >= rotaryDim) return r;
  return r - d + (d % 2 === 0 ? d / 2 : rotaryDim / 2 + (d - 1) / 2);
}

export function ropeRows({ inputs: [xt], output, attrs }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  const rowSize = xt.shape.slice(1).reduce((p, d) => p * d, 1);
  const heads = attrs.heads as number, hd = attrs.headDim as number, rd = attrs.rotaryDim as number;
  for (let r = 0; r < xt.shape[0]; r++) {
    const src = ropeRowSource(r, heads, hd, rd);
    y.set(x.subarray(src * rowSize, (src + 1) * rowSize), r * rowSize);
  }
}

/** y[n, k] = w[n, k] * g[k]. */
export function scaleCols({ inputs: [wt, gt], output }: KernelArgs): void {
  const w = f32(wt), g = f32(gt), y = f32(output);
  const k = g.length;
  for (let i = 0; i < w.length; i++) y[i] = w[i] * g[i % k];
}
