// Load-time kernels: weights made or rearranged on the device, once.
// (each as _bf16 and _f16: T, the storage type)
//   ts_fill_uniform_T     out[i] = (2 u(seed, i) - 1) * bound, u from Philox4x32-10 exactly as the
//                         host's uniform(seed, 0, i) (src/sampling/philox.ts), so a synthetic
//                         checkpoint's weights are the same on the device and on the host
//   ts_fill_T             out[i] = value
//   ts_transpose_T        out[b, a] = in[a, b] (GPT-2's Conv1D weights), 32x32 tiles via shared memory
//   ts_pair_rows_T        out row 2j = in row j, out row 2j + 1 = in row half + j (in: [2 half, row]):
//                         the gate/up row pairs of matmul_glu's weight and bias
//   ts_rope_rows_T        in each of the first rot_rows / head_dim heads of head_dim rows, rows
//                         i and i + rotary_dim / 2 (i < rotary_dim / 2) of the head move to 2i and
//                         2i + 1; every other row stays (matmul_rope_kv's q and k rows: RoPE's
//                         rotation partners side by side in the GEMM's output)
//   ts_scale_cols_T       out[n, k] = w[n, k] g[k] (an RMS norm's weight folded into the GEMM after
//                         it), the product in f32 rounded once
// Bytes: 2 n written (fills); 4 a b moved (transpose, pair_rows, rope_rows). Run once at load.
#include "common.cuh"

namespace ts_transform {

__device__ __forceinline__ uint32_t philox_u0(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1) {
  uint32_t x0 = c0, x1 = c1, x2 = 0, x3 = 0;
#pragma unroll
  for (int r = 0; r < 10; r++) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, x0), lo0 = 0xD2511F53u * x0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, x2), lo1 = 0xCD9E8D57u * x2;
    x0 = hi1 ^ x1 ^ k0;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ k1;
    x3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return x0;
}

// out: [n] T; n < 2^32 (the counter is one 32-bit word, as on the host).
template <class T>
TS_DEVICE void fill_uniform(T* __restrict__ out, unsigned long long n, unsigned int seed_lo, unsigned int seed_hi, float bound) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) {
    const float u = (philox_u0(seed_lo, seed_hi, (uint32_t)i, 0u) >> 8) * (1.f / 16777216.f);
    out[i] = ts::from_f32<T>((2.f * u - 1.f) * bound);
  }
}

// out: [n] T.
template <class T>
TS_DEVICE void fill(T* __restrict__ out, unsigned long long n, float value) {
  const T v = ts::from_f32<T>(value);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) out[i] = v;
}

// in: [rows, cols] T -> out: [cols, rows] T. Block (32, 8), grid (ceil(cols/32), ceil(rows/32)).
template <class T>
TS_DEVICE void transpose(T* __restrict__ out, const T* __restrict__ in, int rows, int cols) {
  __shared__ T tile[32][33];
  const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
  for (int dy = threadIdx.y; dy < 32; dy += 8) {
    const int r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[dy][threadIdx.x] = in[(long long)r * cols + c];
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < 32; dy += 8) {
    const int c = c0 + dy, r = r0 + threadIdx.x;
    if (c < cols && r < rows) out[(long long)c * rows + r] = tile[threadIdx.x][dy];
  }
}

// in, out: [2 half, row] T (out row 2j = in row j, out row 2j + 1 = in row half + j). vec: row % 8
// == 0 and 16-byte aligned pointers, moved in 16-byte units; else element by element.
// Grid-stride over the output's units, so any grid covers it.
template <class T>
TS_DEVICE void pair_rows(T* __restrict__ out, const T* __restrict__ in, unsigned long long half, unsigned long long row, int vec) {
  const unsigned long long per_row = vec ? row / 8 : row, n = 2 * half * per_row;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned long long r = i / per_row, c = i - r * per_row;
    const unsigned long long src = ((r & 1) ? half + (r >> 1) : (r >> 1)) * per_row + c;
    if (vec) reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(in)[src];
    else out[i] = in[src];
  }
}

// in, out: [rows, row] T; the first rot_rows rows are heads of head_dim rows (rot_rows a multiple
// of head_dim, rotary_dim even and <= head_dim); out row h head_dim + 2i = in row h head_dim + i,
// out row h head_dim + 2i + 1 = in row h head_dim + rotary_dim / 2 + i, for i < rotary_dim / 2;
// all other rows as they are. vec as pair_rows'. Grid-stride over the output's units.
template <class T>
TS_DEVICE void rope_rows(T* __restrict__ out, const T* __restrict__ in, unsigned long long rows, unsigned long long row, int rot_rows,
                         int head_dim, int rotary_dim, int vec) {
  const unsigned long long per_row = vec ? row / 8 : row, n = rows * per_row;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned long long r = i / per_row, c = i - r * per_row;
    unsigned long long from = r;
    if (r < (unsigned long long)rot_rows) {
      const int d = static_cast<int>(r % head_dim);
      if (d < rotary_dim) from = r - d + ((d & 1) ? rotary_dim / 2 + (d >> 1) : (d >> 1));
    }
    const unsigned long long src = from * per_row + c;
    if (vec) reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(in)[src];
    else out[i] = in[src];
  }
}

// out, w: [rows, cols] T; g: [cols] T. Grid-stride over the elements.
template <class T>
TS_DEVICE void scale_cols(T* __restrict__ out, const T* __restrict__ w, const T* __restrict__ g, unsigned long long rows, int cols) {
  const unsigned long long n = rows * cols;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x)
    out[i] = ts::from_f32<T>(ts::to_f32(w[i]) * ts::to_f32(g[i % cols]));
}

}  // namespace ts_transform

#define TS_TRANSFORM_ENTRIES(T, SUFFIX)                                                                                     \
  extern "C" __global__ void ts_fill_uniform_##SUFFIX(T* __restrict__ out, unsigned long long n, unsigned int seed_lo,      \
                                                      unsigned int seed_hi, float bound) {                                  \
    ts::pdl_enter();                                                                                                        \
    ts_transform::fill_uniform(out, n, seed_lo, seed_hi, bound);                                                            \
  }                                                                                                                         \
  extern "C" __global__ void ts_fill_##SUFFIX(T* __restrict__ out, unsigned long long n, float value) {                     \
    ts::pdl_enter();                                                                                                        \
    ts_transform::fill(out, n, value);                                                                                      \
  }                                                                                                                         \
  extern "C" __global__ void ts_transpose_##SUFFIX(T* __restrict__ out, const T* __restrict__ in, int rows, int cols) {     \
    ts::pdl_enter();                                                                                                        \
    ts_transform::transpose(out, in, rows, cols);                                                                           \
  }                                                                                                                         \
  extern "C" __global__ void ts_pair_rows_##SUFFIX(T* __restrict__ out, const T* __restrict__ in, unsigned long long half,  \
                                                   unsigned long long row, int vec) {                                       \
    ts::pdl_enter();                                                                                                        \
    ts_transform::pair_rows(out, in, half, row, vec);                                                                       \
  }                                                                                                                         \
  extern "C" __global__ void ts_rope_rows_##SUFFIX(T* __restrict__ out, const T* __restrict__ in, unsigned long long rows,   \
                                                   unsigned long long row, int rot_rows, int head_dim, int rotary_dim,      \
                                                   int vec) {                                                               \
    ts::pdl_enter();                                                                                                        \
    ts_transform::rope_rows(out, in, rows, row, rot_rows, head_dim, rotary_dim, vec);                                       \
  }                                                                                                                         \
  extern "C" __global__ void ts_scale_cols_##SUFFIX(T* __restrict__ out, const T* __restrict__ w, const T* __restrict__ g,   \
                                                    unsigned long long rows, int cols) {                                    \
    ts::pdl_enter();                                                                                                        \
    ts_transform::scale_cols(out, w, g, rows, cols);                                                                        \
  }
TS_TRANSFORM_ENTRIES(ts::bf16, bf16)
TS_TRANSFORM_ENTRIES(ts::f16, f16)
