// Embedding and row gathers: out[r, :] = table[ids[r], :].
//   ids: [R] i32, table: [V, D] bf16, out: [R, D] bf16. D % 8 == 0.
// Bytes: 2 R D read + 2 R D written (+ 4 R); no FLOPs. One block per row, 16-byte accesses.
#include "common.cuh"

extern "C" __global__ void ts_gather_rows_bf16(ts::bf16* __restrict__ out, const int32_t* __restrict__ ids,
                                               const ts::bf16* __restrict__ table, int num_rows, int width, int table_rows) {
  const int r = blockIdx.x;
  if (r >= num_rows) return;
  const int id = ids[r];
  // An id outside the table is a caller bug; write zeros rather than read out of bounds.
  const bool valid = id >= 0 && id < table_rows;
  const ts::bf16x8* src = reinterpret_cast<const ts::bf16x8*>(table + static_cast<int64_t>(id) * width);
  ts::bf16x8* dst = reinterpret_cast<ts::bf16x8*>(out + static_cast<int64_t>(r) * width);
  for (int i = threadIdx.x; i < width / 8; i += blockDim.x) {
    ts::bf16x8 v = {};
    if (valid) v = src[i];
    dst[i] = v;
  }
}
