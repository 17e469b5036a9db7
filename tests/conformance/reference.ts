/**
 * An independent float64 reference of every op of the IR, for the conformance suite: plain
 * loops written from the op definitions in src/graph/ops.ts, sharing no code with any backend
 * (nothing here imports src/backend). The only shared piece is ropeInvFreq (src/graph/rope.ts):
 * the RoPE frequencies are part of the op's definition, and every backend must use the same ones.
 *
 * Inputs are whatever the backend saw (already rounded to its storage precision); every result
 * is a Float64Array. Reductions (matmul, attention) also return `scale`: per output element, the
 * magnitude an honest rounding error of that element scales with (see ops.test.ts for the rule).
 *
 * Layouts (row-major):
 *   activations [R, C];  weights [N, K] (nn.Linear);  KV cache [2 (k, v), N blocks, bs, KV, hd]
 *   slot s = block * bs + offset addresses cache[0|1, block, offset, :, :]
 */
import type { RopeScaling } from '../../src/formats/hf_config.js';
import { ropeInvFreq } from '../../src/graph/rope.js';

export type Vec = ArrayLike<number>;

export interface Reduction {
  value: Float64Array;
  /** Per element: the magnitude its rounding error scales with (>= 0). */
  scale: Float64Array;
}

export interface CacheUpdate {
  /** The whole cache after the op. */
  cache: Float64Array;
  /** 1 where the op wrote the element, 0 where it must be unchanged. */
  written: Uint8Array;
}

// ---------------------------------------------------------------- load-time ops

/** x[a, b] -> [b, a]. */
export function transpose(x: Vec, a: number, b: number): Float64Array {
  const y = new Float64Array(a * b);
  for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) y[j * a + i] = x[i * b + j];
  return y;
}

/** x[rows, ...rest] -> x[start : start + count, ...rest]. */
export function sliceRows(x: Vec, shape: readonly number[], start: number, count: number): Float64Array {
  let rowSize = 1;
  for (let i = 1; i < shape.length; i++) rowSize *= shape[i];
  const y = new Float64Array(count * rowSize);
  for (let r = 0; r < count; r++) for (let c = 0; c < rowSize; c++) y[r * rowSize + c] = x[(start + r) * rowSize + c];
  return y;
}

/** Inputs with the same trailing dims, stacked along the first. */
export function concatRows(parts: readonly Vec[]): Float64Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const y = new Float64Array(n);
  let o = 0;
  for (const p of parts) for (let i = 0; i < p.length; i++) y[o++] = p[i];
  return y;
}

/** x[2I, ...] -> row 2j = x row j, row 2j + 1 = x row I + j. */
export function pairRows(x: Vec, shape: readonly number[]): Float64Array {
  const row = shape.slice(1).reduce((a, d) => a * d, 1), half = shape[0] / 2;
  const y = new Float64Array(x.length);
  for (let j = 0; j < half; j++)
    for (let c = 0; c < row; c++) {
      y[2 * j * row + c] = x[j * row + c];
      y[(2 * j + 1) * row + c] = x[(half + j) * row + c];
    }
  return y;
}

// ---------------------------------------------------------------- gathers

/** ids[R] into table[V, D] -> [R, D]. */
export function embedding(ids: Vec, table: Vec, vocab: number, d: number): Float64Array {
  const y = new Float64Array(ids.length * d);
  for (let r = 0; r < ids.length; r++) {
    const id = ids[r];
    if (id < 0 || id >= vocab) throw new Error(`reference embedding: id ${id} outside [0, ${vocab})`);
    for (let c = 0; c < d; c++) y[r * d + c] = table[id * d + c];
  }
  return y;
}

/** x[T, D], idx[S] -> x[idx]: [S, D]. */
export function gatherRows(x: Vec, rows: number, d: number, idx: Vec): Float64Array {
  const y = new Float64Array(idx.length * d);
  for (let s = 0; s < idx.length; s++) {
    const r = idx[s];
    if (r < 0 || r >= rows) throw new Error(`reference gather_rows: index ${r} outside [0, ${rows})`);
    for (let c = 0; c < d; c++) y[s * d + c] = x[r * d + c];
  }
  return y;
}

// ---------------------------------------------------------------- matmul

/**
 * y[r, n] = sum_k x[r, k] w[n, k] (+ b[n]). scale[r, n] = sqrt(sum_k (x[r, k] w[n, k])^2): the
 * l2 norm of the K products, i.e. sqrt(K) times their RMS.
 */
export function matmul(x: Vec, w: Vec, bias: Vec | null, rows: number, k: number, n: number): Reduction {
  const value = new Float64Array(rows * n);
  const scale = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      let sq = 0;
      for (let i = 0; i < k; i++) {
        const p = x[r * k + i] * w[j * k + i];
        s += p;
        sq += p * p;
      }
      value[r * n + j] = s + (bias ? bias[j] : 0);
      scale[r * n + j] = Math.sqrt(sq);
    }
  }
  return { value, scale };
}

/** rstd[r] = 1 / sqrt(mean(x[r]^2) + eps): the row scale of an RMS norm folded into a GEMM (attr rmsEps). */
export function rowRstd(x: Vec, rows: number, k: number, eps: number): Float64Array {
  const s = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < k; i++) ss += x[r * k + i] * x[r * k + i];
    s[r] = 1 / Math.sqrt((k > 0 ? ss / k : 0) + eps);
  }
  return s;
}

/** matmul with rmsEps: rstd[r] (x w^T)[r, n] (+ b[n]); the scale of the product's error is rstd[r] times matmul's. */
export function rmsMatmul(x: Vec, w: Vec, bias: Vec | null, rows: number, k: number, n: number, eps: number): Reduction {
  const z = matmul(x, w, null, rows, k, n);
  const s = rowRstd(x, rows, k, eps);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < n; j++) {
      z.value[r * n + j] = z.value[r * n + j] * s[r] + (bias ? bias[j] : 0);
      z.scale[r * n + j] *= s[r];
    }
  return z;
}

/** w[N, K] o g[K] along the columns (scale_cols). */
export function scaleCols(w: Vec, g: Vec): Float64Array {
  const y = new Float64Array(w.length);
  for (let i = 0; i < w.length; i++) y[i] = w[i] * g[i % g.length];
  return y;
}

// ---------------------------------------------------------------- elementwise

/** a[R, N] + b: b of the same size, or b[N] added to every row. */
export function add(a: Vec, b: Vec): Float64Array {
  const y = new Float64Array(a.length);
  const n = b.length;
  if (a.length % n !== 0) throw new Error('reference add: b does not divide a');
  for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i % n];
  return y;
}

export function mul(a: Vec, b: Vec): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i] * b[i];
  return y;
}

export function siluScalar(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * erf(x) = 2/sqrt(pi) exp(-x^2) sum_{n>=0} 2^n x^(2n+1) / (1*3*...*(2n+1)): every term has the
 * sign of x, so the series has no cancellation, and it converges for every x (to about 1e-16 in
 * far fewer than 200 terms for |x| <= 6). Past |x| = 6, erf is +-1 in double precision.
 */
export function erfScalar(x: number): number {
  const ax = Math.abs(x);
  if (ax >= 6) return Math.sign(x);
  let term = ax;
  let sum = ax;
  for (let n = 1; n < 400; n++) {
    term *= (2 * ax * ax) / (2 * n + 1);
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  const r = (2 / Math.sqrt(Math.PI)) * Math.exp(-ax * ax) * sum;
  return x < 0 ? -r : r;
}

export function geluErfScalar(x: number): number {
  return 0.5 * x * (1 + erfScalar(x / Math.SQRT2));
}

export function geluTanhScalar(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

export function silu(x: Vec): Float64Array {
  return Float64Array.from(x as ArrayLike<number>, siluScalar);
}

/** approximate: 'none' (erf) or 'tanh'. */
export function gelu(x: Vec, approximate: 'none' | 'tanh'): Float64Array {
  return Float64Array.from(x as ArrayLike<number>, approximate === 'tanh' ? geluTanhScalar : geluErfScalar);
}

export type Act = 'silu' | 'gelu' | 'gelu_tanh';

/** gateUp[R, 2I] -> act(gateUp[:, :I]) * gateUp[:, I:]. */
export function actMul(gu: Vec, rows: number, inner: number, act: Act): Float64Array {
  const f = act === 'silu' ? siluScalar : act === 'gelu' ? geluErfScalar : geluTanhScalar;
  const y = new Float64Array(rows * inner);
  for (let r = 0; r < rows; r++) for (let i = 0; i < inner; i++) y[r * inner + i] = f(gu[r * 2 * inner + i]) * gu[r * 2 * inner + inner + i];
  return y;
}

/** The activation's slope, by a central difference in f64 (for the error scale of a gated product). */
function slope(f: (x: number) => number, x: number): number {
  const h = 1e-5 * Math.max(1, Math.abs(x));
  return (f(x + h) - f(x - h)) / (2 * h);
}

/**
 * matmul_glu: x[R, K], w[2I, K] in (gate, up) row pairs (, b[2I]) -> act(g) * u, g and u the
 * products of rows 2j and 2j + 1. scale: how the reductions' error scales s_g, s_u (matmul's)
 * carry through the product, |act'(g) u| s_g + |act(g)| s_u.
 */
export function matmulGlu(x: Vec, w: Vec, bias: Vec | null, rows: number, k: number, inner: number, act: Act, rmsEps?: number): Reduction {
  const f = act === 'silu' ? siluScalar : act === 'gelu' ? geluErfScalar : geluTanhScalar;
  const z = rmsEps === undefined ? matmul(x, w, bias, rows, k, 2 * inner) : rmsMatmul(x, w, bias, rows, k, 2 * inner, rmsEps);
  const value = new Float64Array(rows * inner);
  const scale = new Float64Array(rows * inner);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < inner; j++) {
      const gi = r * 2 * inner + 2 * j;
      const g = z.value[gi], u = z.value[gi + 1];
      value[r * inner + j] = f(g) * u;
      scale[r * inner + j] = Math.abs(slope(f, g) * u) * z.scale[gi] + Math.abs(f(g)) * z.scale[gi + 1];
    }
  return { value, scale };
}

/** x[R, C] -> x[:, start : start + count]. */
export function sliceCols(x: Vec, rows: number, cols: number, start: number, count: number): Float64Array {
  const y = new Float64Array(rows * count);
  for (let r = 0; r < rows; r++) for (let c = 0; c < count; c++) y[r * count + c] = x[r * cols + start + c];
  return y;
}

// ---------------------------------------------------------------- norms

/** Each consecutive group of G = w.length elements: x / sqrt(mean(x^2) + eps) * w. */
export function rmsnorm(x: Vec, w: Vec, eps: number): Float64Array {
  const g = w.length;
  if (x.length % g !== 0) throw new Error('reference rmsnorm: group does not divide x');
  const y = new Float64Array(x.length);
  for (let base = 0; base < x.length; base += g) {
    let ss = 0;
    for (let i = 0; i < g; i++) ss += x[base + i] * x[base + i];
    const r = 1 / Math.sqrt(ss / g + eps);
    for (let i = 0; i < g; i++) y[base + i] = x[base + i] * r * w[i];
  }
  return y;
}

/** Each row of N = w.length: (x - mean) / sqrt(var + eps) * w + b, biased variance. */
export function layernorm(x: Vec, w: Vec, b: Vec, eps: number): Float64Array {
  const n = w.length;
  const y = new Float64Array(x.length);
  for (let base = 0; base < x.length; base += n) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[base + i];
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (x[base + i] - mean) ** 2;
    v /= n;
    const r = 1 / Math.sqrt(v + eps);
    for (let i = 0; i < n; i++) y[base + i] = (x[base + i] - mean) * r * w[i] + b[i];
  }
  return y;
}

/** (sum = residual + delta, rmsnorm(sum) * w). */
export function addRmsnorm(residual: Vec, delta: Vec, w: Vec, eps: number): { sum: Float64Array; normed: Float64Array } {
  const sum = add(residual, delta);
  return { sum, normed: rmsnorm(sum, w, eps) };
}

/** (sum = residual + delta, layernorm(sum) * w + b). */
export function addLayernorm(residual: Vec, delta: Vec, w: Vec, b: Vec, eps: number): { sum: Float64Array; normed: Float64Array } {
  const sum = add(residual, delta);
  return { sum, normed: layernorm(sum, w, b, eps) };
}

// ---------------------------------------------------------------- rope

export interface RopeDef {
  rotaryDim: number;
  theta: number;
  scaling: RopeScaling | null;
}

/**
 * inv_freq from its definition, in float64, to check the shared ropeInvFreq against (the
 * reference rotations use ropeInvFreq itself, so a fault there would otherwise go unseen):
 *   default: theta^(-2i / rotaryDim), i < rotaryDim / 2;  linear: that / factor;
 *   llama3 (HF _compute_llama3_parameters): wavelength 2 pi / f; below originalMax / highFreqFactor
 *   kept, above originalMax / lowFreqFactor divided by factor, between blended linearly in
 *   s = (originalMax / wavelength - lowFreqFactor) / (highFreqFactor - lowFreqFactor):
 *   (1 - s) f / factor + s f.
 */
export function invFreq(def: RopeDef): Float64Array {
  const half = def.rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const f = Math.pow(def.theta, (-2 * i) / def.rotaryDim);
    const sc = def.scaling;
    if (!sc) inv[i] = f;
    else if (sc.type === 'linear') inv[i] = f / sc.factor;
    else {
      const wavelength = (2 * Math.PI) / f;
      if (wavelength < sc.originalMaxPositions / sc.highFreqFactor) inv[i] = f;
      else if (wavelength > sc.originalMaxPositions / sc.lowFreqFactor) inv[i] = f / sc.factor;
      else {
        const smooth = (sc.originalMaxPositions / wavelength - sc.lowFreqFactor) / (sc.highFreqFactor - sc.lowFreqFactor);
        inv[i] = (1 - smooth) * (f / sc.factor) + smooth * f;
      }
    }
  }
  return inv;
}

/**
 * Rotate-half RoPE of one head in place on y (a copy of the head): for i < rotaryDim / 2,
 * (x[i], x[i + rotaryDim/2]) -> (x1 cos a - x2 sin a, x2 cos a + x1 sin a) with a the f32
 * product position * inv_freq[i] (the angle is defined in f32, as the reference models compute
 * it: an f64 angle differs by up to 2^-24 * position); cos and sin are taken in double.
 */
function rotateHead(head: Float64Array, position: number, inv: Float32Array, rotaryDim: number): void {
  const half = rotaryDim / 2;
  for (let i = 0; i < half; i++) {
    const a = Math.fround(position * inv[i]);
    const c = Math.cos(a), s = Math.sin(a);
    const x1 = head[i], x2 = head[i + half];
    head[i] = x1 * c - x2 * s;
    head[i + half] = x2 * c + x1 * s;
  }
}

/** x[T, H * hd], positions[T] -> each head rotated on its first rotaryDim dims, the rest as is. */
export function rope(x: Vec, positions: Vec, numHeads: number, headDim: number, def: RopeDef): Float64Array {
  const inv = ropeInvFreq(def);
  const tokens = positions.length;
  const width = numHeads * headDim;
  const y = new Float64Array(tokens * width);
  const head = new Float64Array(headDim);
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < numHeads; h++) {
      const off = t * width + h * headDim;
      for (let d = 0; d < headDim; d++) head[d] = x[off + d];
      rotateHead(head, positions[t], inv, def.rotaryDim);
      y.set(head, off);
    }
  }
  return y;
}

// ---------------------------------------------------------------- KV cache

/** cache [2, N, bs, KV, hd]: index of k (half 0) or v (half 1) of (slot, kv head, d). */
function cacheIndex(shape: readonly number[], half: 0 | 1, slot: number, kvh: number, d: number): number {
  const [, n, bs, kv, hd] = shape;
  return (((half * n * bs + slot) * kv + kvh) * hd) + d;
}

/** cache with k[t] and v[t] at slots[t]; slot -1 skips the token. */
export function kvWrite(cache: Vec, shape: readonly number[], k: Vec, v: Vec, slots: Vec): CacheUpdate {
  const [, n, bs, kv, hd] = shape;
  const out = Float64Array.from(cache as ArrayLike<number>);
  const written = new Uint8Array(out.length);
  const width = kv * hd;
  for (let t = 0; t < slots.length; t++) {
    const slot = slots[t];
    if (slot === -1) continue;
    if (slot < 0 || slot >= n * bs) throw new Error(`reference kv_write: slot ${slot} outside the cache`);
    for (let h = 0; h < kv; h++)
      for (let d = 0; d < hd; d++) {
        const ik = cacheIndex(shape, 0, slot, h, d), iv = cacheIndex(shape, 1, slot, h, d);
        out[ik] = k[t * width + h * hd + d];
        out[iv] = v[t * width + h * hd + d];
        written[ik] = written[iv] = 1;
      }
  }
  return { cache: out, written };
}

export interface RopeKvWriteDef {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rope: RopeDef | null;
  qkNormEps: number | null;
}

/**
 * qkv[T, (H + 2 KV) hd] = [q heads | k heads | v heads] per row. q: each head RMS-normed by qNorm
 * (when qkNormEps is set), then rotated (when rope is set) -> [T, H hd]. k: the same with kNorm,
 * written with v into the cache at slots[t] (-1: not written; q is still produced).
 */
export function ropeKvWrite(
  qkv: Vec,
  positions: Vec,
  cache: Vec,
  shape: readonly number[],
  slots: Vec,
  def: RopeKvWriteDef,
  qNorm: Vec | null,
  kNorm: Vec | null,
): { q: Float64Array } & CacheUpdate {
  const { numHeads: H, numKvHeads: KV, headDim: hd } = def;
  const T = positions.length;
  const width = (H + 2 * KV) * hd;
  const inv = def.rope ? ropeInvFreq(def.rope) : null;
  const q = new Float64Array(T * H * hd);
  const k = new Float64Array(T * KV * hd);
  const v = new Float64Array(T * KV * hd);
  const head = new Float64Array(hd);
  const prepare = (off: number, norm: Vec | null, pos: number): void => {
    for (let d = 0; d < hd; d++) head[d] = qkv[off + d];
    if (def.qkNormEps !== null) {
      if (!norm) throw new Error('reference rope_kv_write: qkNormEps without norm weights');
      const normed = rmsnorm(head, norm, def.qkNormEps);
      head.set(normed);
    }
    if (inv && def.rope) rotateHead(head, pos, inv, def.rope.rotaryDim);
  };
  for (let t = 0; t < T; t++) {
    const row = t * width;
    for (let h = 0; h < H; h++) {
      prepare(row + h * hd, qNorm, positions[t]);
      q.set(head, (t * H + h) * hd);
    }
    for (let h = 0; h < KV; h++) {
      prepare(row + (H + h) * hd, kNorm, positions[t]);
      k.set(head, (t * KV + h) * hd);
      for (let d = 0; d < hd; d++) v[(t * KV + h) * hd + d] = qkv[row + (H + KV + h) * hd + d];
    }
  }
  return { q, ...kvWrite(cache, shape, k, v, slots) };
}

export interface MatmulRopeKvDef {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rope: RopeDef | null;
  rmsEps?: number;
}

/** w's row of each output row of rope_rows: in the first `heads` heads, row 2i of a head is row i, row 2i + 1 row i + rotaryDim / 2. */
export function ropeRowSource(r: number, heads: number, headDim: number, rotaryDim: number): number {
  if (r >= heads * headDim || r % headDim >= rotaryDim) return r;
  const d = r % headDim;
  return r - d + (d % 2 === 0 ? d / 2 : rotaryDim / 2 + (d - 1) / 2);
}

/** rope_rows: x[N, ...] with the first `heads` heads' rotary rows reordered (ropeRowSource). */
export function ropeRows(x: Vec, shape: readonly number[], heads: number, headDim: number, rotaryDim: number): Float64Array {
  const row = shape.slice(1).reduce((a, d) => a * d, 1);
  const y = new Float64Array(x.length);
  for (let r = 0; r < shape[0]; r++) {
    const src = ropeRowSource(r, heads, headDim, rotaryDim);
    for (let c = 0; c < row; c++) y[r * row + c] = x[src * row + c];
  }
  return y;
}

/**
 * matmul_rope_kv: z = x w^T (+ b) (RMS-normed with rmsEps), w's q and k rows in rope_rows order;
 * each q and k head's columns (2i, 2i + 1), i < rotaryDim / 2, rotated as rope's pair (i, i +
 * rotaryDim / 2) by positions[t]; q [T, H hd] out, k and v into the cache at slots[t] (k in
 * that order). The error scale of a rotated value is |cos| s1 + |sin| s2 of its two sums'.
 */
export function matmulRopeKv(
  x: Vec,
  w: Vec,
  bias: Vec | null,
  rows: number,
  k: number,
  positions: Vec,
  cache: Vec,
  shape: readonly number[],
  slots: Vec,
  def: MatmulRopeKvDef,
): { q: Reduction; cacheScale: Float64Array } & CacheUpdate {
  const { numHeads: H, numKvHeads: KV, headDim: hd } = def;
  const n = (H + 2 * KV) * hd;
  const z = def.rmsEps === undefined ? matmul(x, w, bias, rows, k, n) : rmsMatmul(x, w, bias, rows, k, n, def.rmsEps);
  const inv = def.rope ? ropeInvFreq(def.rope) : null;
  const half = def.rope ? def.rope.rotaryDim / 2 : 0;
  for (let t = 0; t < rows; t++)
    for (let h = 0; h < H + KV; h++)
      for (let i = 0; i < half; i++) {
        const at = t * n + h * hd + 2 * i;
        const a = Math.fround(positions[t] * inv![i]);
        const c = Math.cos(a), s = Math.sin(a);
        const [x1, x2, s1, s2] = [z.value[at], z.value[at + 1], z.scale[at], z.scale[at + 1]];
        z.value[at] = x1 * c - x2 * s;
        z.value[at + 1] = x2 * c + x1 * s;
        z.scale[at] = Math.abs(c) * s1 + Math.abs(s) * s2;
        z.scale[at + 1] = Math.abs(c) * s2 + Math.abs(s) * s1;
      }
  const qCols = H * hd, kvCols = KV * hd;
  const q = { value: new Float64Array(rows * qCols), scale: new Float64Array(rows * qCols) };
  const kv = { k: new Float64Array(rows * kvCols), v: new Float64Array(rows * kvCols), ks: new Float64Array(rows * kvCols), vs: new Float64Array(rows * kvCols) };
  for (let t = 0; t < rows; t++) {
    q.value.set(z.value.subarray(t * n, t * n + qCols), t * qCols);
    q.scale.set(z.scale.subarray(t * n, t * n + qCols), t * qCols);
    kv.k.set(z.value.subarray(t * n + qCols, t * n + qCols + kvCols), t * kvCols);
    kv.ks.set(z.scale.subarray(t * n + qCols, t * n + qCols + kvCols), t * kvCols);
    kv.v.set(z.value.subarray(t * n + qCols + kvCols, (t + 1) * n), t * kvCols);
    kv.vs.set(z.scale.subarray(t * n + qCols + kvCols, (t + 1) * n), t * kvCols);
  }
  const update = kvWrite(cache, shape, kv.k, kv.v, slots);
  // The same writes of the sums' error scales (1 where nothing is written: those are exact).
  const cacheScale = kvWrite(new Float64Array(cache.length).fill(1), shape, kv.ks, kv.vs, slots).cache;
  return { q, ...update, cacheScale };
}

export interface AttentionDef {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  scale: number;
  slidingWindow: number | null;
  /** false: every row attends to the whole context (default true: up to its own position). */
  causal?: boolean;
}

/**
 * Paged attention. Sequence b owns query rows queryStart[b] .. queryStart[b+1] and has
 * contextLens[b] tokens in the cache, its new tokens last: query row i sits at position
 * p = contextLen - qLen + i and attends to positions max(0, p - W + 1) .. p (W = the sliding
 * window, or all), or to the whole context 0 .. contextLen - 1 when def.causal is false. Position j of sequence b is at slot blockTables[b, j / bs] * bs + j % bs.
 * Head h reads kv head h / (H / KV). out = softmax(scale q k^T) v.
 *
 * scale (the error magnitude) of out[t, h, d], with p_j the attention weights and
 * S = scale * max_j ||q o k_j||_2 (the matmul rule applied to the scores):
 *   S * sum_j p_j |v_jd - out_d|   (an error e in the scores moves out by ~ e * this)
 * + sqrt(sum_j p_j^2 v_jd^2)       (rounding the weights or the values: a random walk)
 */
export function attention(
  q: Vec,
  cache: Vec,
  shape: readonly number[],
  queryStart: Vec,
  contextLens: Vec,
  blockTables: Vec,
  tableWidth: number,
  def: AttentionDef,
): Reduction {
  const { numHeads: H, numKvHeads: KV, headDim: hd } = def;
  const bs = shape[2];
  const T = queryStart[queryStart.length - 1];
  const value = new Float64Array(T * H * hd);
  const errScale = new Float64Array(T * H * hd);
  const group = H / KV;
  for (let b = 0; b < contextLens.length; b++) {
    const q0 = queryStart[b], qLen = queryStart[b + 1] - q0, ctx = contextLens[b];
    if (qLen > ctx) throw new Error(`reference attention: sequence ${b} has ${qLen} new tokens but context ${ctx}`);
    const slotOf = (j: number): number => blockTables[b * tableWidth + Math.floor(j / bs)] * bs + (j % bs);
    for (let i = 0; i < qLen; i++) {
      const p = ctx - qLen + i;
      const lo = def.slidingWindow === null ? 0 : Math.max(0, p - def.slidingWindow + 1);
      const hi = def.causal === false ? ctx - 1 : p;
      const n = hi - lo + 1;
      const slots = Array.from({ length: n }, (_, j) => slotOf(lo + j));
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / group);
        const qOff = ((q0 + i) * H + h) * hd;
        const scores = new Float64Array(n);
        let maxProd = 0;
        for (let j = 0; j < n; j++) {
          let s = 0;
          let sq = 0;
          for (let d = 0; d < hd; d++) {
            const prod = q[qOff + d] * cache[cacheIndex(shape, 0, slots[j], kvh, d)];
            s += prod;
            sq += prod * prod;
          }
          scores[j] = s * def.scale;
          maxProd = Math.max(maxProd, Math.sqrt(sq));
        }
        const m = Math.max(...scores);
        let z = 0;
        for (let j = 0; j < n; j++) z += Math.exp(scores[j] - m);
        const weights = scores.map((s) => Math.exp(s - m) / z);
        const S = Math.abs(def.scale) * maxProd;
        for (let d = 0; d < hd; d++) {
          let o = 0;
          for (let j = 0; j < n; j++) o += weights[j] * cache[cacheIndex(shape, 1, slots[j], kvh, d)];
          let spread = 0;
          let walk = 0;
          for (let j = 0; j < n; j++) {
            const vj = cache[cacheIndex(shape, 1, slots[j], kvh, d)];
            spread += weights[j] * Math.abs(vj - o);
            walk += (weights[j] * vj) ** 2;
          }
          value[qOff + d] = o;
          errScale[qOff + d] = S * spread + Math.sqrt(walk);
        }
      }
    }
  }
  return { value, scale: errScale };
}
