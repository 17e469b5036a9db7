// Load-time kernels: weights made or rearranged on the device, once.
//   ts_fill_uniform_bf16  out[i] = (2 u(seed, i) - 1) * bound, u from Philox4x32-10 exactly as the
//                         host's uniform(seed, 0, i) (src/sampling/philox.ts), so a synthetic
//                         checkpoint's weights are the same on the device and on the host
//   ts_fill_bf16          out[i] = value
//   ts_transpose_bf16     out[b, a] = in[a, b] (GPT-2's Conv1D weights), 32x32 tiles via shared memory
// Bytes: 2 n written (fills); 4 a b moved (transpose). Run once at load.
#include "common.cuh"

namespace {

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

}  // namespace

// out: [n] bf16; n < 2^32 (the counter is one 32-bit word, as on the host).
extern "C" __global__ void ts_fill_uniform_bf16(ts::bf16* __restrict__ out, unsigned long long n, unsigned int seed_lo,
                                                unsigned int seed_hi, float bound) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) {
    const float u = (philox_u0(seed_lo, seed_hi, (uint32_t)i, 0u) >> 8) * (1.f / 16777216.f);
    out[i] = ts::to_bf16((2.f * u - 1.f) * bound);
  }
}

// out: [n] bf16.
extern "C" __global__ void ts_fill_bf16(ts::bf16* __restrict__ out, unsigned long long n, float value) {
  const ts::bf16 v = ts::to_bf16(value);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) out[i] = v;
}

// in: [rows, cols] bf16 -> out: [cols, rows] bf16. Block (32, 8), grid (ceil(cols/32), ceil(rows/32)).
extern "C" __global__ void ts_transpose_bf16(ts::bf16* __restrict__ out, const ts::bf16* __restrict__ in, int rows, int cols) {
  __shared__ ts::bf16 tile[32][33];
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
