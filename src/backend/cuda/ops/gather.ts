/** embedding and gather_rows: one kernel, ts_gather_rows_<bf16|f16> (kernels/embedding.cu). */
import { forStorage, type KernelDecl } from '../kernel_decl.js';
import { aligned16, storageOf } from './elementwise.js';
import type { CudaOp, CudaOpContext } from './types.js';

export const GATHER_ROWS: KernelDecl = {
  name: 'ts_gather_rows_bf16',
  params: [
    ['out', 'ptr'],
    ['ids', 'ptr'],
    ['table', 'ptr'],
    ['numRows', 'i32'],
    ['width', 'i32'],
    ['tableRows', 'i32'],
  ],
};

function gather(ctx: CudaOpContext, idsIndex: number, tableIndex: number): void {
  const ids = ctx.inputs[idsIndex], table = ctx.inputs[tableIndex], out = ctx.outputs[0];
  const numRows = out.shape[0], width = out.shape[1];
  if (numRows === 0) return;
  if (width % 8 !== 0) throw new Error(`gather: width ${width} is not a multiple of 8`);
  if (table.shape[1] !== width) throw new Error(`gather: the table's rows are ${table.shape[1]} wide, the output's ${width}`);
  // The kernel moves rows in 16-byte vectors only (kernels/embedding.cu).
  if (!aligned16(out.ptr, table.ptr)) throw new Error('gather: the table and the output must be 16-byte aligned');
  const dtype = storageOf('gather', [
    ['table', table],
    ['output', out],
  ]);
  ctx.launch(forStorage(GATHER_ROWS, dtype), { grid: [numRows, 1, 1], block: [Math.min(256, Math.max(32, width / 8)), 1, 1] }, {
    out: out.ptr,
    ids: ids.ptr,
    table: table.ptr,
    numRows,
    width,
    tableRows: table.shape[0],
  });
}

/** embedding(ids[R], table[V, D]) */
export const embedding: CudaOp = (ctx) => gather(ctx, 0, 1);
/** gather_rows(x[T, D], idx[S]) */
export const gatherRows: CudaOp = (ctx) => gather(ctx, 1, 0);

export const DECLS = [GATHER_ROWS];
