/**
 * rmsnorm, layernorm, add_rmsnorm, add_layernorm: kernels/norm.cu. A group of G = len(w)
 * contiguous elements is one kernel row: x[R, N] with w[G] runs as [R N / G, G].
 */
import { forStorage, type KernelDecl } from '../kernel_decl.js';
import type { CudaOp, CudaOpContext, DeviceTensor } from './types.js';
import { ceilDiv } from './types.js';
import { aligned16, fmtShape, nextPow2, numel, roundUp, storageOf } from './elementwise.js';

export const RMSNORM: KernelDecl = {
  name: 'ts_rmsnorm_bf16',
  params: [
    ['y', 'ptr'],
    ['x', 'ptr'],
    ['w', 'ptr'],
    ['rows', 'i32'],
    ['width', 'i32'],
    ['eps', 'f32'],
    ['lanes', 'i32'],
    ['vecs', 'i32'],
  ],
};

export const LAYERNORM: KernelDecl = {
  name: 'ts_layernorm_bf16',
  params: [
    ['y', 'ptr'],
    ['x', 'ptr'],
    ['w', 'ptr'],
    ['b', 'ptr'],
    ['rows', 'i32'],
    ['width', 'i32'],
    ['eps', 'f32'],
    ['lanes', 'i32'],
    ['vecs', 'i32'],
  ],
};

export const ADD_RMSNORM: KernelDecl = {
  name: 'ts_add_rmsnorm_bf16',
  params: [
    ['sum', 'ptr'],
    ['y', 'ptr'],
    ['residual', 'ptr'],
    ['delta', 'ptr'],
    ['w', 'ptr'],
    ['rows', 'i32'],
    ['width', 'i32'],
    ['eps', 'f32'],
    ['lanes', 'i32'],
    ['vecs', 'i32'],
  ],
};

export const ADD_LAYERNORM: KernelDecl = {
  name: 'ts_add_layernorm_bf16',
  params: [
    ['sum', 'ptr'],
    ['y', 'ptr'],
    ['residual', 'ptr'],
    ['delta', 'ptr'],
    ['w', 'ptr'],
    ['b', 'ptr'],
    ['rows', 'i32'],
    ['width', 'i32'],
    ['eps', 'f32'],
    ['lanes', 'i32'],
    ['vecs', 'i32'],
  ],
};

/** How norm.cu runs `rows` rows of `width`: see the kernel file's header for lanes and vecs. */
export interface NormPlan {
  /** 0: one block per row; 1..32: threads per row (a power of two). */
  lanes: number;
  /** 16-byte vectors per thread kept in registers (1, 2, 4), or 0 for the scalar path. */
  vecs: number;
  grid: number;
  block: number;
}

/** Largest block the norm kernels are compiled for (__launch_bounds__). */
export const NORM_MAX_BLOCK = 512;

/**
 * The launch for rows of `width` elements; `vector`: width % 8 == 0 and 16-byte aligned pointers.
 * Rows of up to 1024 elements get a team of lanes (at most a warp) each, wider ones a block each;
 * the vector path keeps the row in registers up to 16384 elements, the scalar path takes the rest.
 */
export function planNorm(rows: number, width: number, vector: boolean): NormPlan {
  const teams = (lanes: number, vecs: number): NormPlan => {
    const block = Math.min(256, roundUp(rows * lanes, 32));
    return { lanes, vecs, block, grid: ceilDiv(rows, block / lanes) };
  };
  if (vector) {
    const nvec = width / 8;
    if (nvec <= 128) {
      const lanes = Math.min(32, nextPow2(nvec));
      return teams(lanes, nextPow2(ceilDiv(nvec, lanes)));
    }
    for (const [maxThreads, vecs] of [
      [256, 1],
      [256, 2],
      [256, 4],
      [NORM_MAX_BLOCK, 4],
    ]) {
      const threads = ceilDiv(nvec, vecs);
      if (threads <= maxThreads) return { lanes: 0, vecs, block: roundUp(threads, 32), grid: rows };
    }
  }
  if (width <= 1024) return teams(Math.min(32, nextPow2(ceilDiv(width, 4))), 0);
  return { lanes: 0, vecs: 0, block: Math.min(NORM_MAX_BLOCK, roundUp(ceilDiv(width, 8), 32)), grid: rows };
}

function runNorm(ctx: CudaOpContext, op: string, add: boolean, layer: boolean): void {
  const ins = ctx.inputs;
  const x = ins[0];
  const delta = add ? ins[1] : null;
  const w = ins[add ? 2 : 1];
  const b = layer ? ins[add ? 3 : 2] : null;
  const [sum, y] = add ? [ctx.outputs[0], ctx.outputs[1]] : [null, ctx.outputs[0]];
  const tensors: Array<[string, DeviceTensor | null]> = [
    ['x', x],
    ['delta', delta],
    ['weight', w],
    ['bias', b],
    ['sum', sum],
    ['output', y],
  ];
  const dtype = storageOf(op, tensors);
  const total = numel(x.shape);
  const width = w.shape.length === 1 ? w.shape[0] : 0;
  const cols = x.shape[x.shape.length - 1];
  if (width <= 0 || cols % width !== 0) throw new Error(`${op}: weight ${fmtShape(w)} does not divide the rows of ${fmtShape(x)}`);
  if (b && (b.shape.length !== 1 || b.shape[0] !== width)) throw new Error(`${op}: bias ${fmtShape(b)} does not match weight ${fmtShape(w)}`);
  for (const t of [delta, sum, y])
    if (t && numel(t.shape) !== total) throw new Error(`${op}: ${fmtShape(t)} does not match ${fmtShape(x)}`);
  const rows = total / width;
  if (rows === 0) return;
  const ptrs = tensors.filter(([, t]) => t !== null).map(([, t]) => t!.ptr);
  const plan = planNorm(rows, width, width % 8 === 0 && aligned16(...ptrs));
  const eps = ctx.attrs.eps as number;
  const common = { w: w.ptr, rows, width, eps, lanes: plan.lanes, vecs: plan.vecs };
  const launch = { grid: [plan.grid, 1, 1] as [number, number, number], block: [plan.block, 1, 1] as [number, number, number] };
  if (add && layer) ctx.launch(forStorage(ADD_LAYERNORM, dtype), launch, { sum: sum!.ptr, y: y.ptr, residual: x.ptr, delta: delta!.ptr, b: b!.ptr, ...common });
  else if (add) ctx.launch(forStorage(ADD_RMSNORM, dtype), launch, { sum: sum!.ptr, y: y.ptr, residual: x.ptr, delta: delta!.ptr, ...common });
  else if (layer) ctx.launch(forStorage(LAYERNORM, dtype), launch, { y: y.ptr, x: x.ptr, b: b!.ptr, ...common });
  else ctx.launch(forStorage(RMSNORM, dtype), launch, { y: y.ptr, x: x.ptr, ...common });
}

/** rmsnorm(x[R, N], w[G]), G divides N */
export const rmsnorm: CudaOp = (ctx) => runNorm(ctx, 'rmsnorm', false, false);
/** layernorm(x[R, N], w[N], b[N]) */
export const layernorm: CudaOp = (ctx) => runNorm(ctx, 'layernorm', false, true);
/** add_rmsnorm(residual[R, N], delta[R, N], w[N]) -> (sum, y); sum may be residual's buffer */
export const addRmsnorm: CudaOp = (ctx) => runNorm(ctx, 'add_rmsnorm', true, false);
/** add_layernorm(residual[R, N], delta[R, N], w[N], b[N]) -> (sum, y); sum may be residual's buffer */
export const addLayernorm: CudaOp = (ctx) => runNorm(ctx, 'add_layernorm', true, true);

/** rstd[r] = 1 / sqrt(mean(x[r]^2) + eps), f32 (kernels/norm.cu): an RMS norm folded into the GEMM after it, for the GEMM rungs that do not compute it themselves (ops/gemm.ts). */
export const ROW_RSTD: KernelDecl = {
  name: 'ts_row_rstd_bf16',
  params: [
    ['rstd', 'ptr'],
    ['x', 'ptr'],
    ['rows', 'i32'],
    ['K', 'i32'],
    ['eps', 'f32'],
  ],
};

export const DECLS = [RMSNORM, LAYERNORM, ADD_RMSNORM, ADD_LAYERNORM, ROW_RSTD];
