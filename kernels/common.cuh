// Shared device helpers for Tessera's kernels: storage types, 16-byte vector access, warp and
// block reductions. Storage is bf16 or fp16 (every kernel that reads or writes it is a template
// on the storage type T, with one entry per type: `_bf16` and `_f16`); arithmetic and
// accumulation are f32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define TS_DEVICE __device__ __forceinline__

namespace ts {

using bf16 = __nv_bfloat16;
using bf16x2 = __nv_bfloat162;
using f16 = __half;
using f16x2 = __half2;

// A storage type's pair (two values in one 32-bit register, lo in the low half).
template <class T>
struct pair_of;
template <>
struct pair_of<bf16> {
  using type = bf16x2;
};
template <>
struct pair_of<f16> {
  using type = f16x2;
};
template <class T>
using pair_t = typename pair_of<T>::type;

// 8 values of a 16-bit storage type: one 16-byte load or store. Held as a uint4 so that a copy
// through a vec8 pointer is one 128-bit access (ld/st.global.v4): a struct of four bf16x2/half2,
// whose copy operations are user-defined, is copied member by member as four 32-bit accesses.
// raw.x holds values 0 and 1 (0 in the low half), raw.y 2 and 3, and so on.
template <class T>
struct alignas(16) vec8 {
  uint4 raw;
};

TS_DEVICE float to_f32(bf16 x) { return __bfloat162float(x); }
TS_DEVICE float to_f32(f16 x) { return __half2float(x); }
TS_DEVICE float2 to_f32x2(bf16x2 x) { return __bfloat1622float2(x); }
TS_DEVICE float2 to_f32x2(f16x2 x) { return __half22float2(x); }

// Two adjacent values of T at p (4-byte aligned) as floats.
template <class T>
TS_DEVICE float2 load2_f32(const T* p) {
  return to_f32x2(*reinterpret_cast<const pair_t<T>*>(p));
}

// f32 -> storage type T, rounded to nearest even (f16 saturates to +-inf past 65504, as a cast does).
template <class T>
TS_DEVICE T from_f32(float x);
template <>
TS_DEVICE bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
TS_DEVICE f16 from_f32<f16>(float x) { return __float2half_rn(x); }

template <class T>
TS_DEVICE pair_t<T> pair_from_f32(float lo, float hi);
template <>
TS_DEVICE bf16x2 pair_from_f32<bf16>(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
template <>
TS_DEVICE f16x2 pair_from_f32<f16>(float lo, float hi) { return __floats2half2_rn(lo, hi); }

// Two floats as one register of two T (lo in the low half), as mma and wgmma operands take them.
template <class T>
TS_DEVICE uint32_t pack2(float lo, float hi) {
  const pair_t<T> v = pair_from_f32<T>(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A shared-memory pointer as the 32-bit address PTX's shared-space instructions take.
TS_DEVICE uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// Two values of T packed in a 32-bit word (lo in the low half) as floats, exactly, from the bits
// (no address taken of a local: that can put it on the stack).
template <class T>
TS_DEVICE float2 word_f32x2(uint32_t w);
template <>
TS_DEVICE float2 word_f32x2<bf16>(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
template <>
TS_DEVICE float2 word_f32x2<f16>(uint32_t w) {
  return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu))), __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16))));
}

// By value: unpacking from a pointer (`unpack(*reinterpret_cast<const vec8<T>*>(p), f)`) then
// copies the 16 bytes in one load before the conversions.
template <class T>
TS_DEVICE void unpack(const vec8<T> p, float out[8]) {
  const float2 a = word_f32x2<T>(p.raw.x), b = word_f32x2<T>(p.raw.y), c = word_f32x2<T>(p.raw.z), d = word_f32x2<T>(p.raw.w);
  out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
  out[4] = c.x, out[5] = c.y, out[6] = d.x, out[7] = d.y;
}

template <class T>
TS_DEVICE vec8<T> pack(const float in[8]) {
  vec8<T> p;
  p.raw = make_uint4(pack2<T>(in[0], in[1]), pack2<T>(in[2], in[3]), pack2<T>(in[4], in[5]), pack2<T>(in[6], in[7]));
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

// ---- programmatic dependent launch (sm_90) ----------------------------------------------------
// On Hopper the backend launches every kernel with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_-
// SERIALIZATION (src/backend/cuda/backend.ts, `launchOverlap`): a kernel's blocks may then be
// scheduled while the kernel before it in the stream is still running, once every block of that
// one has called pdl_launch_dependents (or exited). A decode step is some 300 kernels of a few
// microseconds each, and this hides the gap between each kernel's last wave and the next one's
// first, where the GPU otherwise idles.
//
// The rule every entry keeps (tests/cuda/declarations.test.ts checks it in the sm_90a PTX): every
// thread calls pdl_wait before its first global memory access, so nothing is read before the
// kernel before it has finished and its writes are visible, and nothing is written that it may
// still read. Only L2 prefetches (prefetch_l2: hints, no values) come before it. Since every
// kernel waits for the one before it, that one waited for its own predecessor: the order is
// transitive. Launched without the attribute (other GPUs, TESSERA_PDL=0, cuBLASLt's kernels
// before ours), the wait returns at once and the trigger does nothing.
//
// Built for sm_90 and newer only: the compute_80 PTX that a newer GPU would JIT has neither, so
// the backend turns the attribute on for sm_90 alone.
TS_DEVICE void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel's blocks be scheduled (it gives no memory ordering: the next kernel's
// pdl_wait does). Called right after pdl_wait: the next kernel then starts once this one's last
// block is resident, and at most one kernel waits behind a running one.
TS_DEVICE void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both, at the top of an entry.
TS_DEVICE void pdl_enter() {
  pdl_wait();
  pdl_launch_dependents();
}

// A hint that brings the 128-byte line holding p into L2; it reads no value, so it may come
// before pdl_wait (the decode GEMV streams its first weights in while the kernel before it ends).
TS_DEVICE void prefetch_l2(const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(p)) : "memory");
#endif
}

// The activations, one formulation for every kernel that applies one (elementwise.cu's act and
// act_mul, the GEMM epilogues' gated unit). Codes as ops/elementwise.ts ACT_CODE:
//   0 silu       x sigmoid(x)
//   1 gelu       0.5 x (1 + erf(x / sqrt 2)), as 0.5 x erfc(-x / sqrt 2): the negative tail keeps
//                its relative accuracy
//   2 gelu_tanh  0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), as x sigmoid(2u): the
//                same function, without tanh's absolute error where 1 + tanh(u) is small
enum Act { kSilu = 0, kGeluErf = 1, kGeluTanh = 2 };

template <int ACT>
TS_DEVICE float act(float x) {
  if constexpr (ACT == kSilu) {
    return x / (1.f + __expf(-x));
  } else if constexpr (ACT == kGeluTanh) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.f + __expf(-2.f * u));
  } else {
    return 0.5f * x * erfcf(-0.7071067811865476f * x);
  }
}

// The activation by its code, for kernels that take it as a parameter (one branch, uniform over
// the launch).
TS_DEVICE float act(int code, float x) {
  return code == kSilu ? act<kSilu>(x) : code == kGeluTanh ? act<kGeluTanh>(x) : act<kGeluErf>(x);
}

// A gated linear unit's output from its gate and up values: act(gate) * up. The GEMM epilogues
// take `glu`, an activation code, or GLU_NONE for a plain product.
constexpr int GLU_NONE = -1;
TS_DEVICE float glu(int code, float gate, float up) { return act(code, gate) * up; }

}  // namespace ts
