// The emulator's 16-bit storage types (bf16 and fp16) and their conversions, standing in for
// cuda_bf16.h and cuda_fp16.h when the kernels are compiled for the CPU (tests/cuda/emu). Bit
// layouts and rounding are the device's: round to nearest even, f16 overflowing to +-inf,
// subnormals kept.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>

namespace emu {
inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(0x7fff);  // NaN, as the device writes it
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(0x7fff);
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                             // below 2^-14: a subnormal (or zero)
    const uint32_t m = static_cast<uint32_t>(nearbyintf(bits_f32(ax) * 16777216.0f));  // units of 2^-24, ties to even
    return static_cast<uint16_t>(sign | m);
  }
  const uint32_t r = ax - 0x38000000u;  // rebias the exponent (127 -> 15)
  return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return bits_f32(sign) + (sign ? -1.f : 1.f) * static_cast<float>(m) * 5.9604644775390625e-8f;
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0u));  // a NaN stays quiet
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}
}  // namespace emu

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(emu::f32_to_bf16(f)) {}
  operator float() const { return emu::bf16_to_f32(__x); }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(emu::f32_to_f16(f)) {}
  operator float() const { return emu::f16_to_f32(__x); }
};
struct alignas(4) __half2 {
  __half x, y;
};

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }

inline float __bfloat162float(__nv_bfloat16 h) { return emu::bf16_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(emu::f32_to_bf16(f)); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }

inline float __half2float(__half h) { return emu::f16_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return __ushort_as_half(emu::f32_to_f16(f)); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
