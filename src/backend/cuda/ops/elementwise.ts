/**
 * add, mul, silu, gelu, act_mul, slice_cols: kernels/elementwise.cu. Also the small helpers the
 * other memory-bound launchers (norm.ts, rope_kv.ts) share: element counts, alignment, dtypes.
 */
import type { DevPtr } from '../driver.js';
import { forStorage, type KernelDecl } from '../kernel_decl.js';
import type { CudaOp, CudaOpContext, DeviceDType, DeviceTensor, StorageDType } from './types.js';
import { ceilDiv, isStorage } from './types.js';

// ---- shared helpers ----

export function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

export function roundUp(n: number, m: number): number {
  return ceilDiv(n, m) * m;
}

/** Every pointer 16-byte aligned (the vector paths' 8-element accesses). */
export function aligned16(...ptrs: DevPtr[]): boolean {
  return ptrs.every((p) => BigInt(p) % 16n === 0n);
}

export function fmtShape(t: DeviceTensor): string {
  return `[${t.shape.join(', ')}]`;
}

export function expectDType(op: string, what: string, t: DeviceTensor, dtype: DeviceDType): void {
  if (t.dtype !== dtype) throw new Error(`${op}: ${what} ${fmtShape(t)} is ${t.dtype}, expected ${dtype}`);
}

/**
 * The storage type (bf16 or fp16) the given operands share, which picks the kernel's entry
 * (kernel_decl.forStorage); an operand of another dtype, or a mix, is a launcher bug.
 */
export function storageOf(op: string, operands: ReadonlyArray<readonly [what: string, t: DeviceTensor | null | undefined]>): StorageDType {
  let dtype: StorageDType | null = null;
  for (const [what, t] of operands) {
    if (!t) continue;
    if (!isStorage(t.dtype)) throw new Error(`${op}: ${what} ${fmtShape(t)} is ${t.dtype}, expected bf16 or f16`);
    if (dtype && t.dtype !== dtype) throw new Error(`${op}: ${what} ${fmtShape(t)} is ${t.dtype}, but the other operands are ${dtype}`);
    dtype = t.dtype;
  }
  if (!dtype) throw new Error(`${op}: no operand gives the storage type`);
  return dtype;
}

/** Blocks for a grid-stride loop over `items` with 256-thread blocks: enough to fill the device. */
function flatGrid(ctx: CudaOpContext, items: number): number {
  const sms = ctx.device.multiprocessors || 132;
  return Math.max(1, Math.min(ceilDiv(items, 256), sms * 16));
}

/**
 * The 2-D launch of the row kernels: block (bx, by) = 256 threads, bx = min(256, nextPow2(units))
 * threads across a row's units, by rows per block; grid-stride loops cover what the grid does not.
 */
export function plan2d(rows: number, units: number): { grid: [number, number, number]; block: [number, number, number] } {
  const bx = Math.min(256, nextPow2(units));
  const by = 256 / bx;
  return { grid: [Math.min(ceilDiv(units, bx), 0x7fffffff), Math.min(ceilDiv(rows, by), 65535), 1], block: [bx, by, 1] };
}

// ---- kernels ----

export const ADD: KernelDecl = {
  name: 'ts_add_bf16',
  params: [
    ['y', 'ptr'],
    ['a', 'ptr'],
    ['b', 'ptr'],
    ['n', 'u64'],
    ['vec', 'i32'],
  ],
};

export const MUL: KernelDecl = {
  name: 'ts_mul_bf16',
  params: [
    ['y', 'ptr'],
    ['a', 'ptr'],
    ['b', 'ptr'],
    ['n', 'u64'],
    ['vec', 'i32'],
  ],
};

export const ADD_BIAS: KernelDecl = {
  name: 'ts_add_bias_bf16',
  params: [
    ['y', 'ptr'],
    ['a', 'ptr'],
    ['b', 'ptr'],
    ['rows', 'i32'],
    ['cols', 'i32'],
    ['vec', 'i32'],
  ],
};

export const ACT: KernelDecl = {
  name: 'ts_act_bf16',
  params: [
    ['y', 'ptr'],
    ['x', 'ptr'],
    ['n', 'u64'],
    ['act', 'i32'],
    ['vec', 'i32'],
  ],
};

export const ACT_MUL: KernelDecl = {
  name: 'ts_act_mul_bf16',
  params: [
    ['y', 'ptr'],
    ['gateUp', 'ptr'],
    ['rows', 'i32'],
    ['cols', 'i32'],
    ['act', 'i32'],
    ['vec', 'i32'],
  ],
};

export const SLICE_COLS: KernelDecl = {
  name: 'ts_slice_cols_bf16',
  params: [
    ['y', 'ptr'],
    ['x', 'ptr'],
    ['rows', 'i32'],
    ['cols', 'i32'],
    ['start', 'i32'],
    ['count', 'i32'],
    ['vec', 'i32'],
  ],
};

/** The kernels' `act` codes. */
export const ACT_CODE = { silu: 0, gelu: 1, gelu_tanh: 2 } as const;

export function actCode(op: string, act: unknown): number {
  if (act === 'silu' || act === 'gelu' || act === 'gelu_tanh') return ACT_CODE[act];
  throw new Error(`${op}: unknown activation ${String(act)}`);
}

function flat(ctx: CudaOpContext, op: string, decl: KernelDecl, y: DeviceTensor, ins: DeviceTensor[], extra: Record<string, number>): void {
  const n = numel(y.shape);
  const dtype = storageOf(op, [['output', y], ...ins.map((t) => ['input', t] as const)]);
  for (const t of ins) {
    if (numel(t.shape) !== n) throw new Error(`${op}: input ${fmtShape(t)} does not match output ${fmtShape(y)}`);
  }
  if (n === 0) return;
  const vec = aligned16(y.ptr, ...ins.map((t) => t.ptr)) ? 1 : 0;
  const args: Record<string, number | bigint> = { y: y.ptr, n, vec, ...extra };
  if (ins.length === 2) {
    args.a = ins[0].ptr;
    args.b = ins[1].ptr;
  } else {
    args.x = ins[0].ptr;
  }
  ctx.launch(forStorage(decl, dtype), { grid: [flatGrid(ctx, vec ? ceilDiv(n, 8) : n), 1, 1], block: [256, 1, 1] }, args);
}

/** add(a[R, N], b[R, N]) or add(a[R, N], b[N]) with b broadcast over rows (a bias). */
export const add: CudaOp = (ctx) => {
  const [a, b] = ctx.inputs, y = ctx.outputs[0];
  if (b.shape.length === 1 && a.shape.length > 1) {
    const cols = b.shape[0];
    const dtype = storageOf('add', [
      ['a', a],
      ['bias', b],
      ['output', y],
    ]);
    if (a.shape[a.shape.length - 1] !== cols || numel(y.shape) !== numel(a.shape))
      throw new Error(`add: bias ${fmtShape(b)} does not broadcast over ${fmtShape(a)} -> ${fmtShape(y)}`);
    const rows = numel(a.shape) / cols;
    if (rows === 0 || cols === 0) return;
    const vec = cols % 8 === 0 && aligned16(y.ptr, a.ptr, b.ptr) ? 1 : 0;
    ctx.launch(forStorage(ADD_BIAS, dtype), plan2d(rows, vec ? cols / 8 : cols), { y: y.ptr, a: a.ptr, b: b.ptr, rows, cols, vec });
    return;
  }
  flat(ctx, 'add', ADD, y, [a, b], {});
};

/** mul(a[R, N], b[R, N]) */
export const mul: CudaOp = (ctx) => flat(ctx, 'mul', MUL, ctx.outputs[0], [ctx.inputs[0], ctx.inputs[1]], {});

/** silu(x) */
export const silu: CudaOp = (ctx) => flat(ctx, 'silu', ACT, ctx.outputs[0], [ctx.inputs[0]], { act: ACT_CODE.silu });

/** gelu(x); attrs.approximate 'tanh' or 'none' (erf) */
export const gelu: CudaOp = (ctx) =>
  flat(ctx, 'gelu', ACT, ctx.outputs[0], [ctx.inputs[0]], { act: ctx.attrs.approximate === 'tanh' ? ACT_CODE.gelu_tanh : ACT_CODE.gelu });

/** act_mul(gateUp[R, 2I]) -> act(gateUp[:, :I]) * gateUp[:, I:]: [R, I]; attrs.act silu, gelu, gelu_tanh */
export const actMul: CudaOp = (ctx) => {
  const gu = ctx.inputs[0], y = ctx.outputs[0];
  const dtype = storageOf('act_mul', [
    ['gateUp', gu],
    ['output', y],
  ]);
  const act = actCode('act_mul', ctx.attrs.act);
  if (gu.shape.length !== 2 || y.shape.length !== 2 || gu.shape[0] !== y.shape[0] || gu.shape[1] !== 2 * y.shape[1])
    throw new Error(`act_mul: gateUp ${fmtShape(gu)} does not match output ${fmtShape(y)}`);
  const [rows, cols] = y.shape;
  if (rows === 0 || cols === 0) return;
  const vec = cols % 8 === 0 && aligned16(y.ptr, gu.ptr) ? 1 : 0;
  ctx.launch(forStorage(ACT_MUL, dtype), plan2d(rows, vec ? cols / 8 : cols), { y: y.ptr, gateUp: gu.ptr, rows, cols, act, vec });
};

/** slice_cols(x[R, C]) -> x[:, start : start + count] */
export const sliceCols: CudaOp = (ctx) => {
  const x = ctx.inputs[0], y = ctx.outputs[0];
  const dtype = storageOf('slice_cols', [
    ['input', x],
    ['output', y],
  ]);
  const start = ctx.attrs.start as number, count = ctx.attrs.count as number;
  if (x.shape.length !== 2 || y.shape.length !== 2) throw new Error(`slice_cols: expects 2-D tensors, got ${fmtShape(x)} -> ${fmtShape(y)}`);
  const [rows, cols] = x.shape;
  if (!(start >= 0 && count >= 0 && start + count <= cols) || y.shape[0] !== rows || y.shape[1] !== count)
    throw new Error(`slice_cols: columns [${start}, ${start + count}) of ${fmtShape(x)} do not make ${fmtShape(y)}`);
  if (rows === 0 || count === 0) return;
  const vec = cols % 8 === 0 && start % 8 === 0 && count % 8 === 0 && aligned16(y.ptr, x.ptr) ? 1 : 0;
  ctx.launch(forStorage(SLICE_COLS, dtype), plan2d(rows, vec ? count / 8 : count), { y: y.ptr, x: x.ptr, rows, cols, start, count, vec });
};

export const DECLS = [ADD, MUL, ADD_BIAS, ACT, ACT_MUL, SLICE_COLS];
