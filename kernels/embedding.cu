// Embedding and row gathers: out[r, :] = table[ids[r], :].
//   ids: [R] i32, table: [V, D] T, out: [R, D] T (T = bf16 or fp16: ts_gather_rows_bf16 / _f16).
//   D % 8 == 0.
// Bytes: 2 R D read + 2 R D written (+ 4 R); no FLOPs. One block per row, 16-byte accesses.
#include "common.cuh"

namespace ts_embedding {

template <class T>
TS_DEVICE void gather_rows(T* __restrict__ out, const int32_t* __restrict__ ids, const T* __restrict__ table, int num_rows,
                           int width, int table_rows) {
  const int r = blockIdx.x;
  if (r >= num_rows) return;
  const int id = ids[r];
  // An id outside the table is a caller bug; write zeros rather than read out of bounds.
  const bool valid = id >= 0 && id < table_rows;
  const ts::vec8<T>* src = reinterpret_cast<const ts::vec8<T>*>(table + static_cast<int64_t>(id) * width);
  ts::vec8<T>* dst = reinterpret_cast<ts::vec8<T>*>(out + static_cast<int64_t>(r) * width);
  for (int i = threadIdx.x; i < width / 8; i += blockDim.x) {
    ts::vec8<T> v = {};
    if (valid) v = src[i];
    dst[i] = v;
  }
}

}  // namespace ts_embedding

#define TS_GATHER_ENTRY(T, SUFFIX)                                                                                    \
  extern "C" __global__ void ts_gather_rows_##SUFFIX(T* __restrict__ out, const int32_t* __restrict__ ids,             \
                                                     const T* __restrict__ table, int num_rows, int width, int table_rows) { \
    ts::pdl_enter();                                                                                                  \
    ts_embedding::gather_rows(out, ids, table, num_rows, width, table_rows);                                          \
  }
TS_GATHER_ENTRY(ts::bf16, bf16)
TS_GATHER_ENTRY(ts::f16, f16)
