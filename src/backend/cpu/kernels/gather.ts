/**
 * embedding: ids[R], table[V, D] -> table[ids] [R, D]  (an id outside [0, V) is a caller bug)
 * gather_rows: x[T, D], idx[S] -> x[idx] [S, D]
 */
import type { KernelArgs } from '../tensor.js';
import { f32, i32 } from '../tensor.js';

function gather(src: Float32Array, srcRows: number, idx: Int32Array, dst: Float32Array, width: number, what: string): void {
  for (let r = 0; r < idx.length; r++) {
    const row = idx[r];
    if (row < 0 || row >= srcRows) throw new Error(`${what}: index ${row} outside [0, ${srcRows})`);
    dst.set(src.subarray(row * width, (row + 1) * width), r * width);
  }
}

export function embedding({ inputs: [idsT, tableT], output }: KernelArgs): void {
  gather(f32(tableT), tableT.shape[0], i32(idsT), f32(output), tableT.shape[1], 'embedding');
}

export function gatherRows({ inputs: [xt, idxT], output }: KernelArgs): void {
  gather(f32(xt), xt.shape[0], i32(idxT), f32(output), xt.shape[1], 'gather_rows');
}
