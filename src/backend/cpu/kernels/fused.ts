/**
 * Fused ops made by the graph passes, over packed inputs:
 *   act_mul: gateUp[R, 2I] -> act(gateUp[:, :I]) * gateUp[:, I:]
 *   matmul_glu: x[R, K], w[2I, K] in (gate, up) row pairs (, b[2I]) -> act(gate) * up: [R, I]
 *   rope_kv_write: qkv[T, (H + 2 KV) hd] -> q rotated [T, H hd]; k rotated and v into the cache
 *     at slots[t]; with qkNormEps, RMSNorm over each head of q and k (weights [hd]) before RoPE;
 *     with rope null (GPT-2), no rotation
 *   matmul_rope_kv: x[T, K], w[(H + 2 KV) hd, K] with q/k rows in rope_rows order, positions,
 *     cache, slots (, b) -> q rotated [T, H hd]; k rotated and v into the cache at slots[t]: the
 *     GEMM, then each pair of columns (2i, 2i + 1) of a q or k head's rotary dims rotated as
 *     rope's (i, i + rotaryDim / 2)
 *   slice_cols: x[R, C] -> x[:, start : start + count]
 */
import type { Attrs } from '../../../graph/ir.js';
import type { CpuTensor, KernelArgs } from '../tensor.js';
import { f32, i32 } from '../tensor.js';
import { erf } from './elementwise.js';
import { matmulF32, rowScales } from './matmul.js';
import { rmsnormGroup } from './norm.js';
import { RopeAngles } from './rope.js';

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/** act(g) for act in silu, gelu (erf), gelu_tanh. */
function activation(act: string): (g: number) => number {
  if (act === 'silu') return (g) => g / (1 + Math.exp(-g));
  if (act === 'gelu_tanh') return (g) => 0.5 * g * (1 + Math.tanh(SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)));
  return (g) => 0.5 * g * (1 + erf(g / Math.SQRT2));
}

export function actMul({ inputs: [gt], output, attrs }: KernelArgs): void {
  const gu = f32(gt), y = f32(output);
  const width = output.shape[1];
  const a = activation(attrs.act as string);
  for (let r = 0; r < output.shape[0]; r++) {
    const src = r * 2 * width, dst = r * width;
    for (let i = 0; i < width; i++) y[dst + i] = a(gu[src + i]) * gu[src + width + i];
  }
}

/** The GEMM's product rows into a scratch buffer (matmul_glu, matmul_rope_kv), reused across calls (it only grows). */
let productScratch = new Float32Array(0);

/**
 * x w^T (+ b) (RMS-normed with attrs.rmsEps) up to 64 rows of x at a time, so the scratch stays
 * small at prefill: each chunk's product rows z [rs, N] go to `each` with the chunk's first row.
 */
function productChunks(xt: CpuTensor, wt: CpuTensor, bt: CpuTensor | undefined, attrs: Attrs, each: (z: Float32Array, r0: number, rs: number) => void): void {
  const rows = xt.shape[0], n = wt.shape[0], k = xt.shape[1];
  const chunk = Math.min(rows, 64);
  if (productScratch.length < chunk * n) productScratch = new Float32Array(chunk * n);
  const x = f32(xt), w = f32(wt), b = bt ? f32(bt) : null;
  const scales = rowScales(x, rows, k, attrs);
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const rs = Math.min(chunk, rows - r0);
    const z = productScratch.subarray(0, rs * n);
    matmulF32(x.subarray(r0 * k, (r0 + rs) * k), w, z, rs, n, k, b, null, scales ? scales.subarray(r0, r0 + rs) : null);
    each(z, r0, rs);
  }
}

export function matmulGlu({ inputs: [xt, wt, bt], output, attrs }: KernelArgs): void {
  const n = wt.shape[0], half = n / 2;
  const y = f32(output);
  const a = activation(attrs.act as string);
  productChunks(xt, wt, bt, attrs, (z, r0, rs) => {
    for (let r = 0; r < rs; r++) {
      const src = r * n, dst = (r0 + r) * half;
      for (let j = 0; j < half; j++) y[dst + j] = a(z[src + 2 * j]) * z[src + 2 * j + 1];
    }
  });
}

export function matmulRopeKv({ inputs, outputs: [qt, cacheOut], attrs }: KernelArgs): void {
  const [xt, wt, posT, cacheT, slotsT, bt] = inputs;
  if (cacheOut.data !== cacheT.data) throw new Error('matmul_rope_kv must update its cache in place');
  const n = wt.shape[0];
  const heads = attrs.numHeads as number, kvHeads = attrs.numKvHeads as number, hd = attrs.headDim as number;
  const qCols = heads * hd, kvCols = kvHeads * hd;
  const q = f32(qt), cache = f32(cacheT);
  const pos = i32(posT), slots = i32(slotsT);
  const angles = attrs.rope ? new RopeAngles(attrs.rope as Attrs) : null;
  const half = angles ? angles.half : 0;
  const vHalf = cache.length / 2;
  productChunks(xt, wt, bt, attrs, (z, r0, rs) => {
    for (let r = 0; r < rs; r++) {
      const t = r0 + r, row = r * n;
      if (angles) {
        angles.at(pos[t]);
        // Columns 2i and 2i + 1 of each q and k head: rope's pair (i, i + rotaryDim / 2), w's rows in rope_rows order.
        for (let h = 0; h < heads + kvHeads; h++)
          for (let i = 0; i < half; i++) {
            const at = row + h * hd + 2 * i, x1 = z[at], x2 = z[at + 1];
            z[at] = x1 * angles.cos[i] - x2 * angles.sin[i];
            z[at + 1] = x2 * angles.cos[i] + x1 * angles.sin[i];
          }
      }
      q.set(z.subarray(row, row + qCols), t * qCols);
      const slot = slots[t];
      if (slot < 0) continue;
      const dst = slot * kvCols;
      if (dst + kvCols > vHalf) throw new Error(`matmul_rope_kv: slot ${slot} is outside the cache`);
      cache.set(z.subarray(row + qCols, row + qCols + kvCols), dst);
      cache.set(z.subarray(row + qCols + kvCols, row + n), vHalf + dst);
    }
  });
}

export function sliceCols({ inputs: [xt], output, attrs }: KernelArgs): void {
  const x = f32(xt), y = f32(output);
  const cols = xt.shape[1], start = attrs.start as number, count = attrs.count as number;
  for (let r = 0; r < output.shape[0]; r++) y.set(x.subarray(r * cols + start, r * cols + start + count), r * count);
}

export function ropeKvWrite({ inputs, outputs: [qt, cacheOut], attrs }: KernelArgs): void {
  const [qkvT, posT, cacheT, slotsT, qNormT, kNormT] = inputs;
  const qkv = f32(qkvT), pos = i32(posT), cache = f32(cacheT), slots = i32(slotsT), q = f32(qt);
  if (cacheOut.data !== cacheT.data) throw new Error('rope_kv_write must update its cache in place');
  const heads = attrs.numHeads as number, kvHeads = attrs.numKvHeads as number, hd = attrs.headDim as number;
  const eps = attrs.qkNormEps as number | null;
  const angles = attrs.rope ? new RopeAngles(attrs.rope as Attrs) : null;
  const width = (heads + 2 * kvHeads) * hd;
  const kvWidth = kvHeads * hd;
  const vHalf = cache.length / 2;
  const scratch = new Float32Array(hd);
  /** Optional per-head norm of src[off..off+hd) into scratch, then rotation into dst. */
  const prepare = (off: number, norm: Float32Array | null, dst: Float32Array, dstOff: number) => {
    let src = qkv, srcOff = off;
    if (norm && eps !== null) {
      rmsnormGroup(qkv, off, norm, eps, scratch, 0);
      src = scratch;
      srcOff = 0;
    }
    if (angles) angles.rotate(src, srcOff, dst, dstOff, hd);
    else dst.set(src.subarray(srcOff, srcOff + hd), dstOff);
  };
  const qNorm = qNormT ? f32(qNormT) : null, kNorm = kNormT ? f32(kNormT) : null;
  for (let t = 0; t < qkvT.shape[0]; t++) {
    angles?.at(pos[t]);
    const row = t * width;
    for (let h = 0; h < heads; h++) prepare(row + h * hd, qNorm, q, (t * heads + h) * hd);
    const slot = slots[t];
    if (slot < 0) continue;
    const dst = slot * kvWidth;
    if (dst + kvWidth > vHalf) throw new Error(`rope_kv_write: slot ${slot} is outside the cache`);
    for (let h = 0; h < kvHeads; h++) prepare(row + (heads + h) * hd, kNorm, cache, dst + h * hd);
    cache.set(qkv.subarray(row + (heads + kvHeads) * hd, row + width), vHalf + dst);
  }
}
