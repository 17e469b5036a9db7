// Shared device helpers for Tessera's kernels: storage types, 16-byte vector access, warp and
// block reductions. Storage is bf16 (or fp16); arithmetic and accumulation are f32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define TS_DEVICE __device__ __forceinline__

namespace ts {

using bf16 = __nv_bfloat16;
using bf16x2 = __nv_bfloat162;

// 8 bf16 values: one 16-byte load or store.
struct alignas(16) bf16x8 {
  bf16x2 v[4];
};

TS_DEVICE float to_f32(bf16 x) { return __bfloat162float(x); }
TS_DEVICE bf16 to_bf16(float x) { return __float2bfloat16_rn(x); }

// Two floats as one register of two bf16 (lo in the low half), as mma and wgmma operands take them.
TS_DEVICE uint32_t pack_bf16x2(float lo, float hi) {
  const bf16x2 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A shared-memory pointer as the 32-bit address PTX's shared-space instructions take.
TS_DEVICE uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

TS_DEVICE void unpack(const bf16x8& p, float out[8]) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __bfloat1622float2(p.v[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

TS_DEVICE bf16x8 pack(const float in[8]) {
  bf16x8 p;
#pragma unroll
  for (int i = 0; i < 4; i++) p.v[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  return p;
}

TS_DEVICE float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

TS_DEVICE float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the block; every thread gets the result. `scratch`: 32 floats of shared memory.
TS_DEVICE float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : 0.f;
  return warp_sum(x);
}

TS_DEVICE float block_max(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(x);
}

TS_DEVICE float silu(float x) { return x / (1.f + __expf(-x)); }
TS_DEVICE float gelu_tanh(float x) { return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))); }
TS_DEVICE float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.7071067811865476f)); }

}  // namespace ts
