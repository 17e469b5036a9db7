/**
 * The op set of the IR: for each op, its inputs, attributes and output shapes, checked when a
 * node is added. Every op has a CPU reference kernel under the same name (backend/cpu/kernels),
 * and every backend implements the same set.
 *
 * Shapes are row-major; "rows" is T (tokens) or S (logit rows), or a number for weights.
 * Categories:
 *   load     weight-layout transforms, evaluated once when weights load, never per step
 *   compute  per-step work on activations
 *   state    updates the paged KV cache and returns it
 * The model builders emit only the unfused ops; the fused ones (matmul with bias, matmul_add,
 * slice_cols, add_rmsnorm, add_layernorm, act_mul, matmul_glu, rope_kv_write, matmul_rope_kv, and
 * the rmsEps attr of matmul, matmul_glu and matmul_rope_kv) come from the passes in
 * graph/passes.
 */
import type { Attrs, DType, Dim } from './ir.js';

export type OpCategory = 'load' | 'compute' | 'state';

export interface OpSpec {
  category: OpCategory;
  /** Output dtype; 'float' unless given. */
  dtype?: DType;
  /** Checks the input shapes and attrs; returns the output shape. Throws with a reason. */
  shape?(inputs: Dim[][], attrs: Attrs): Dim[];
  /** For ops with several outputs, instead of shape. */
  shapes?(inputs: Dim[][], attrs: Attrs): Dim[][];
  /** Outputs that are the updated KV cache: they alias the op's state input. */
  stateOutputs?: number[];
  /** [output, input] pairs: the output may reuse the input's buffer when that is its last use. */
  inplace?: Array<[number, number]>;
  /** Made by a fusion pass from several unfused ops. */
  fused?: boolean;
  /** One line for `tessera graph`: what the op computes. */
  doc: string;
}

export function outputShapes(spec: OpSpec, inputs: Dim[][], attrs: Attrs): Dim[][] {
  if (spec.shapes) return spec.shapes(inputs, attrs);
  return [spec.shape!(inputs, attrs)];
}

function need(cond: boolean, message: string): asserts cond {
  if (!cond) throw new Error(message);
}

function fmt(shape: Dim[]): string {
  return `[${shape.join(', ')}]`;
}

function arity(inputs: Dim[][], n: number): void {
  need(inputs.length === n, `expects ${n} inputs, got ${inputs.length}`);
}

function matrix(shape: Dim[], what: string): [Dim, Dim] {
  need(shape.length === 2, `${what} must be 2-D, got ${fmt(shape)}`);
  return [shape[0], shape[1]];
}

function sameShape(a: Dim[], b: Dim[], what: string): void {
  need(a.length === b.length && a.every((d, i) => d === b[i]), `${what}: shapes ${fmt(a)} and ${fmt(b)} differ`);
}

function num(attrs: Attrs, key: string): number {
  const v = attrs[key];
  need(typeof v === 'number' && Number.isFinite(v), `attr ${key} must be a number`);
  return v;
}

/**
 * matmul's and matmul_glu's operands x[R, K], w[N, K] (, b[N]) and optional rmsEps (absent, or
 * the folded norm's eps, a number >= 0): [R, N].
 */
function gemmShape(inputs: Dim[][], attrs: Attrs): [Dim, Dim] {
  const eps = attrs.rmsEps;
  need(eps === undefined || (typeof eps === 'number' && eps >= 0), `attr rmsEps must be a number >= 0, got ${String(eps)}`);
  need(inputs.length === 2 || inputs.length === 3, `expects 2 or 3 inputs, got ${inputs.length}`);
  const [r, k] = matrix(inputs[0], 'x');
  const [n, k2] = matrix(inputs[1], 'w');
  need(k === k2, `x ${fmt(inputs[0])} and w ${fmt(inputs[1])} disagree on K`);
  if (inputs.length === 3) need(inputs[2].length === 1 && inputs[2][0] === n, `bias ${fmt(inputs[2])} does not match N = ${n}`);
  return [r, n];
}

const unary = (doc: string): OpSpec => ({
  category: 'compute',
  doc,
  shape(inputs) {
    arity(inputs, 1);
    return inputs[0];
  },
});

const SPECS = {
  // ---- load-time weight transforms ----
  transpose: {
    category: 'load',
    doc: 'w[a, b] -> [b, a] (GPT-2 Conv1D weights are stored [in, out])',
    shape(inputs) {
      arity(inputs, 1);
      const [a, b] = matrix(inputs[0], 'input');
      return [b, a];
    },
  },
  slice_rows: {
    category: 'load',
    doc: 'w[a, ...] -> w[start : start + count, ...] (splits a fused weight)',
    shape(inputs, attrs) {
      arity(inputs, 1);
      const [rows, ...rest] = inputs[0];
      const start = num(attrs, 'start');
      const count = num(attrs, 'count');
      need(typeof rows === 'number' && start >= 0 && count > 0 && start + count <= rows, `rows [${start}, ${start + count}) outside ${fmt(inputs[0])}`);
      return [count, ...rest];
    },
  },
  concat_rows: {
    category: 'load',
    doc: 'w0[a0, ...], w1[a1, ...], ... -> [a0 + a1 + ..., ...] (merges sibling weights)',
    shape(inputs) {
      need(inputs.length >= 1, 'expects at least one input');
      const rest = inputs[0].slice(1);
      let rows = 0;
      for (const s of inputs) {
        need(typeof s[0] === 'number', `rows of ${fmt(s)} must be fixed`);
        sameShape(s.slice(1), rest, 'trailing dims');
        rows += s[0] as number;
      }
      return [rows, ...rest];
    },
  },

  pair_rows: {
    category: 'load',
    doc: 'w[2I, ...] -> rows 0, I, 1, I + 1, ...: row 2j is w[j], row 2j + 1 is w[I + j] (gate/up pairs for matmul_glu)',
    shape(inputs) {
      arity(inputs, 1);
      const rows = inputs[0][0];
      need(typeof rows === 'number' && rows % 2 === 0 && rows > 0, `rows of ${fmt(inputs[0])} must be fixed and even`);
      return inputs[0];
    },
  },

  rope_rows: {
    category: 'load',
    doc: 'w[N, ...] -> in each of the first `heads` heads of headDim rows, rows i and i + rotaryDim / 2 (i < rotaryDim / 2) moved to 2i and 2i + 1; other rows kept (the q/k rows of matmul_rope_kv)',
    shape(inputs, attrs) {
      arity(inputs, 1);
      const rows = inputs[0][0];
      const heads = num(attrs, 'heads'), hd = num(attrs, 'headDim'), rd = num(attrs, 'rotaryDim');
      need(Number.isInteger(heads) && heads >= 0 && Number.isInteger(hd) && hd > 0, `heads ${heads} and headDim ${hd} must be whole, headDim > 0`);
      need(Number.isInteger(rd) && rd >= 0 && rd % 2 === 0 && rd <= hd, `rotaryDim ${rd} must be even and at most headDim ${hd}`);
      need(typeof rows === 'number' && rows >= heads * hd, `rows of ${fmt(inputs[0])} must be fixed and at least heads * headDim = ${heads * hd}`);
      return inputs[0];
    },
  },
  scale_cols: {
    category: 'load',
    doc: 'w[N, K], g[K] -> w[n, k] g[k] (an RMS norm weight folded into the GEMM after it)',
    shape(inputs) {
      arity(inputs, 2);
      const [, k] = matrix(inputs[0], 'w');
      need(inputs[1].length === 1 && inputs[1][0] === k, `scale ${fmt(inputs[1])} does not match the columns of ${fmt(inputs[0])}`);
      return inputs[0];
    },
  },

  // ---- per-step compute ----
  embedding: {
    category: 'compute',
    doc: 'ids[R] i32, table[V, D] -> table[ids]: [R, D]',
    shape(inputs) {
      arity(inputs, 2);
      need(inputs[0].length === 1, `ids must be 1-D, got ${fmt(inputs[0])}`);
      const [, d] = matrix(inputs[1], 'table');
      return [inputs[0][0], d];
    },
  },
  matmul: {
    category: 'compute',
    doc: 'x[R, K], w[N, K] (, b[N]) -> x w^T (+ b): [R, N] (weights in nn.Linear layout; bias in the epilogue); with attr rmsEps, x / sqrt(mean(x^2) + rmsEps) in place of x (a norm folded in, its weight in w)',
    shape(inputs, attrs) {
      return gemmShape(inputs, attrs);
    },
  },
  slice_cols: {
    category: 'compute',
    doc: 'x[R, C] -> x[:, start : start + count] (a part of a merged matmul output)',
    shape(inputs, attrs) {
      arity(inputs, 1);
      const [r, c] = matrix(inputs[0], 'x');
      const start = num(attrs, 'start');
      const count = num(attrs, 'count');
      need(typeof c === 'number' && start >= 0 && count > 0 && start + count <= c, `columns [${start}, ${start + count}) outside ${fmt(inputs[0])}`);
      return [r, count];
    },
  },
  add: {
    category: 'compute',
    doc: 'a[R, N] + b[R, N], or + b[N] broadcast over rows (bias)',
    shape(inputs) {
      arity(inputs, 2);
      const [a, b] = inputs;
      if (b.length === 1) need(a[a.length - 1] === b[0], `bias ${fmt(b)} does not match ${fmt(a)}`);
      else sameShape(a, b, 'add');
      return a;
    },
  },
  mul: {
    category: 'compute',
    doc: 'a[R, N] * b[R, N], elementwise',
    shape(inputs) {
      arity(inputs, 2);
      sameShape(inputs[0], inputs[1], 'mul');
      return inputs[0];
    },
  },
  silu: unary('x * sigmoid(x)'),
  gelu: unary("gelu(x); attr approximate: 'none' (erf) or 'tanh'"),
  rmsnorm: {
    category: 'compute',
    doc: 'x[R, N], w[G] -> each group of G: x / sqrt(mean(x^2) + eps) * w (G = N, or headDim for q/k norm)',
    shape(inputs, attrs) {
      arity(inputs, 2);
      const [, n] = matrix(inputs[0], 'x');
      need(inputs[1].length === 1, `weight must be 1-D, got ${fmt(inputs[1])}`);
      const g = inputs[1][0];
      need(typeof n === 'number' && typeof g === 'number' && n % g === 0, `weight ${fmt(inputs[1])} does not divide ${fmt(inputs[0])}`);
      num(attrs, 'eps');
      return inputs[0];
    },
  },
  layernorm: {
    category: 'compute',
    doc: 'x[R, N], w[N], b[N] -> (x - mean) / sqrt(var + eps) * w + b',
    shape(inputs, attrs) {
      arity(inputs, 3);
      const [, n] = matrix(inputs[0], 'x');
      need(inputs[1].length === 1 && inputs[1][0] === n, `weight ${fmt(inputs[1])} does not match ${fmt(inputs[0])}`);
      need(inputs[2].length === 1 && inputs[2][0] === n, `bias ${fmt(inputs[2])} does not match ${fmt(inputs[0])}`);
      num(attrs, 'eps');
      return inputs[0];
    },
  },
  rope: {
    category: 'compute',
    doc: 'x[T, H*hd], positions[T] -> rotate-half RoPE on the first rotaryDim of each head',
    shape(inputs, attrs) {
      arity(inputs, 2);
      const [t, width] = matrix(inputs[0], 'x');
      need(inputs[1].length === 1 && inputs[1][0] === t, `positions ${fmt(inputs[1])} do not match ${fmt(inputs[0])}`);
      const heads = num(attrs, 'numHeads');
      const hd = num(attrs, 'headDim');
      need(width === heads * hd, `width ${width} != numHeads ${heads} * headDim ${hd}`);
      need(num(attrs, 'rotaryDim') <= hd, 'rotaryDim exceeds headDim');
      num(attrs, 'theta');
      return inputs[0];
    },
  },
  kv_write: {
    category: 'state',
    stateOutputs: [0],
    doc: 'k[T, KV*hd], v[T, KV*hd], cache[2, N, bs, KV, hd], slots[T] -> cache with token t at slot slots[t]',
    shape(inputs) {
      arity(inputs, 4);
      const [k, v, cache, slots] = inputs;
      sameShape(k, v, 'k and v');
      need(cache.length === 5 && cache[0] === 2, `cache must be [2, N, bs, KV, hd], got ${fmt(cache)}`);
      need(k[1] === (cache[3] as number) * (cache[4] as number), `k ${fmt(k)} does not match cache ${fmt(cache)}`);
      need(slots.length === 1 && slots[0] === k[0], `slot mapping ${fmt(slots)} does not match ${fmt(k)}`);
      return cache;
    },
  },
  attention: {
    category: 'compute',
    doc: 'q[T, H*hd] over the paged cache (causal unless attrs.causal is false, GQA, optional sliding window) -> [T, H*hd]',
    shape(inputs, attrs) {
      arity(inputs, 5);
      const [q, cache] = inputs;
      const heads = num(attrs, 'numHeads');
      const kvHeads = num(attrs, 'numKvHeads');
      const hd = num(attrs, 'headDim');
      need(heads % kvHeads === 0, `numHeads ${heads} is not a multiple of numKvHeads ${kvHeads}`);
      need(q[1] === heads * hd, `q ${fmt(q)} != numHeads * headDim`);
      need(cache.length === 5 && cache[3] === kvHeads && cache[4] === hd, `cache ${fmt(cache)} does not match the heads`);
      num(attrs, 'scale');
      return q;
    },
  },
  gather_rows: {
    category: 'compute',
    doc: 'x[T, D], idx[S] -> x[idx]: [S, D] (the rows that need logits)',
    shape(inputs) {
      arity(inputs, 2);
      const [, d] = matrix(inputs[0], 'x');
      need(inputs[1].length === 1, `indices must be 1-D, got ${fmt(inputs[1])}`);
      return [inputs[1][0], d];
    },
  },

  // ---- fused ops, made by the passes ----
  matmul_add: {
    category: 'compute',
    fused: true,
    doc: 'x[R, K], w[N, K], residual[R, N] (, b[N]) -> x w^T (+ b) + residual: [R, N], the residual read in the GEMM epilogue and overwritten in place',
    inplace: [[0, 2]],
    shape(inputs) {
      need(inputs.length === 3 || inputs.length === 4, `expects 3 or 4 inputs, got ${inputs.length}`);
      const [r, k] = matrix(inputs[0], 'x');
      const [n, k2] = matrix(inputs[1], 'w');
      need(k === k2, `x ${fmt(inputs[0])} and w ${fmt(inputs[1])} disagree on K`);
      sameShape(inputs[2], [r, n], 'residual and x w^T');
      if (inputs.length === 4) need(inputs[3].length === 1 && inputs[3][0] === n, `bias ${fmt(inputs[3])} does not match N = ${n}`);
      return [r, n];
    },
  },
  add_rmsnorm: {
    category: 'compute',
    fused: true,
    doc: 'residual[R, N], delta[R, N], w[N] -> (sum = residual + delta, rmsnorm(sum) * w); sum in place of residual',
    inplace: [[0, 0]],
    shapes(inputs, attrs) {
      arity(inputs, 3);
      sameShape(inputs[0], inputs[1], 'residual and delta');
      const [, n] = matrix(inputs[0], 'residual');
      need(inputs[2].length === 1 && inputs[2][0] === n, `weight ${fmt(inputs[2])} does not match ${fmt(inputs[0])}`);
      num(attrs, 'eps');
      return [inputs[0], inputs[0]];
    },
  },
  add_layernorm: {
    category: 'compute',
    fused: true,
    doc: 'residual[R, N], delta[R, N], w[N], b[N] -> (sum = residual + delta, layernorm(sum) * w + b); sum in place',
    inplace: [[0, 0]],
    shapes(inputs, attrs) {
      arity(inputs, 4);
      sameShape(inputs[0], inputs[1], 'residual and delta');
      const [, n] = matrix(inputs[0], 'residual');
      need(inputs[2].length === 1 && inputs[2][0] === n && inputs[3].length === 1 && inputs[3][0] === n, 'weight and bias must be [N]');
      num(attrs, 'eps');
      return [inputs[0], inputs[0]];
    },
  },
  act_mul: {
    category: 'compute',
    fused: true,
    doc: "gateUp[R, 2I] -> act(gateUp[:, :I]) * gateUp[:, I:]: [R, I]; act: 'silu', 'gelu' or 'gelu_tanh'",
    shape(inputs, attrs) {
      arity(inputs, 1);
      const [r, c] = matrix(inputs[0], 'gateUp');
      need(typeof c === 'number' && c % 2 === 0, `gateUp width ${c} must be even`);
      need(['silu', 'gelu', 'gelu_tanh'].includes(attrs.act as string), `unknown act ${String(attrs.act)}`);
      return [r, c / 2];
    },
  },
  matmul_glu: {
    category: 'compute',
    fused: true,
    doc: "x[R, K], w[2I, K] (, b[2I]) in (gate, up) row pairs -> act(x w[2j]^T (+ b[2j])) * (x w[2j+1]^T (+ b[2j+1])): [R, I], the gated unit in the GEMM epilogue; act: 'silu', 'gelu' or 'gelu_tanh'; rmsEps as matmul's",
    shape(inputs, attrs) {
      const [r, n] = gemmShape(inputs, attrs);
      need(typeof n === 'number' && n % 2 === 0, `w ${fmt(inputs[1])} must have an even number of rows (gate, up pairs)`);
      need(['silu', 'gelu', 'gelu_tanh'].includes(attrs.act as string), `unknown act ${String(attrs.act)}`);
      return [r, n / 2];
    },
  },
  rope_kv_write: {
    category: 'compute',
    fused: true,
    doc: 'qkv[T, (H + 2 KV) hd], positions, cache, slots (, qNorm[hd], kNorm[hd]) -> (q rotated [T, H hd], cache with k rotated and v written)',
    stateOutputs: [1],
    shapes(inputs, attrs) {
      const qkNorm = attrs.qkNormEps !== null && attrs.qkNormEps !== undefined;
      arity(inputs, qkNorm ? 6 : 4);
      const [qkv, positions, cache, slots] = inputs;
      const heads = num(attrs, 'numHeads');
      const kvHeads = num(attrs, 'numKvHeads');
      const hd = num(attrs, 'headDim');
      const [t, width] = matrix(qkv, 'qkv');
      need(width === (heads + 2 * kvHeads) * hd, `qkv width ${width} != (numHeads + 2 numKvHeads) headDim`);
      need(positions.length === 1 && positions[0] === t && slots.length === 1 && slots[0] === t, 'positions and slots must be [T]');
      need(cache.length === 5 && cache[0] === 2 && cache[3] === kvHeads && cache[4] === hd, `cache ${fmt(cache)} does not match the heads`);
      if (qkNorm) need(inputs[4][0] === hd && inputs[5][0] === hd, 'q/k norm weights must be [headDim]');
      return [[t, heads * hd], cache];
    },
  },
  matmul_rope_kv: {
    category: 'compute',
    fused: true,
    doc: 'x[T, K], w[(H + 2 KV) hd, K] (q/k rows in rope_rows order), positions, cache, slots (, b) -> (q rotated [T, H hd], cache with k rotated and v written): the q/k/v GEMM with RoPE and the KV write in its epilogue; rope null: no rotation; rmsEps as matmul\'s',
    stateOutputs: [1],
    shapes(inputs, attrs) {
      need(inputs.length === 5 || inputs.length === 6, `expects 5 or 6 inputs, got ${inputs.length}`);
      const [t, n] = gemmShape([inputs[0], inputs[1], ...inputs.slice(5)], attrs);
      const [, , positions, cache, slots] = inputs;
      const heads = num(attrs, 'numHeads');
      const kvHeads = num(attrs, 'numKvHeads');
      const hd = num(attrs, 'headDim');
      need(hd % 2 === 0, `headDim ${hd} must be even (the epilogue's column pairs)`);
      need(n === (heads + 2 * kvHeads) * hd, `w rows ${n} != (numHeads + 2 numKvHeads) headDim`);
      const rope = attrs.rope as Attrs | null | undefined;
      need(rope !== undefined && typeof rope === 'object', 'attr rope must be an object or null');
      if (rope) {
        const rd = rope.rotaryDim;
        need(typeof rd === 'number' && rd >= 0 && rd % 2 === 0 && rd <= hd, `rope.rotaryDim ${String(rd)} must be even and at most headDim ${hd}`);
      }
      need(positions.length === 1 && positions[0] === t && slots.length === 1 && slots[0] === t, 'positions and slots must be [T]');
      need(cache.length === 5 && cache[0] === 2 && cache[3] === kvHeads && cache[4] === hd, `cache ${fmt(cache)} does not match the heads`);
      return [[t, heads * hd], cache];
    },
  },
} satisfies Record<string, OpSpec>;

export type OpName = keyof typeof SPECS;
export const OPS: Record<OpName, OpSpec> = SPECS;
