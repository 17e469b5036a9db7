// RoPE pieces shared by rope_kv.cu and the GEMM epilogues (the `matmul_rope_kv` op): the f32
// sine and cosine every rotation uses, and the epilogue that rotates a q/k/v projection's output
// and writes k and v into the paged cache.
#pragma once
#include <type_traits>

#include "common.cuh"

namespace ts {

// sin and cos of an f32 angle, rounded to f32 (|angle| < 2^30). r = angle - n pi/2 with pi/2 as a
// double-double: n P1 is exact inside the fma, so r is good to ~1e-16; Taylor on |r| <= pi/4 to
// ~2e-14. Results equal f32(sin(angle)), f32(cos(angle)) except in near-ties of the f32 rounding.
TS_DEVICE void sincos_f32(float angle, float* s, float* c) {
  const double x = angle;
  const double n = rint(x * 0.63661977236758134308);
  double r = fma(-n, 1.5707963267948966192e+00, x);
  r = fma(-n, 6.123233995736766036e-17, r);
  const double r2 = r * r;
  double sp = 1.0 / 6227020800.0;
  sp = fma(sp, r2, -1.0 / 39916800.0);
  sp = fma(sp, r2, 1.0 / 362880.0);
  sp = fma(sp, r2, -1.0 / 5040.0);
  sp = fma(sp, r2, 1.0 / 120.0);
  sp = fma(sp, r2, -1.0 / 6.0);
  const double sn = fma(sp * r2, r, r);
  double cp = -1.0 / 87178291200.0;
  cp = fma(cp, r2, 1.0 / 479001600.0);
  cp = fma(cp, r2, -1.0 / 3628800.0);
  cp = fma(cp, r2, 1.0 / 40320.0);
  cp = fma(cp, r2, -1.0 / 720.0);
  cp = fma(cp, r2, 1.0 / 24.0);
  cp = fma(cp, r2, -0.5);
  const double cs = fma(cp, r2, 1.0);
  const int q = static_cast<int>(static_cast<long long>(n) & 3);
  const double sv = q == 0 ? sn : q == 1 ? cs : q == 2 ? -sn : -cs;
  const double cv = q == 0 ? cs : q == 1 ? -sn : q == 2 ? -cs : sn;
  *s = __double2float_rn(sv);
  *c = __double2float_rn(cv);
}

// The same for the GEMM epilogue below, which evaluates one angle per rotary pair of every q and k
// head (rope_kv.cu evaluates one per token and frequency, 40 times fewer for Llama-3-8B, and can
// afford sincos_f32's ~45 double operations; the q/k/v GEMM's epilogue at prefill could not: at
// 64 FP64 lanes an SM that is ~18% of a 128 x 128 tile's main loop). The reduction stays in double
// (4 operations: r = angle - n pi/2 good to ~1e-16 for |angle| < 2^30, positions and inv_freq
// give at most ~1.3e5), then r in f32 and f32 minimax polynomials on |r| <= pi/4 (Cephes' sinf and
// cosf coefficients): within 1 ulp of f32(sin(angle)), f32(cos(angle)) over 150,000 random angles
// to 1.3e5 (an f32 model of it against double sin and cos), far below the bf16 or fp16 rounding of
// the rotated values.
TS_DEVICE void sincos_f32_fast(float angle, float* s, float* c) {
  const double x = angle;
  const double n = rint(x * 0.63661977236758134308);
  double rd = fma(-n, 1.5707963267948966192e+00, x);
  rd = fma(-n, 6.123233995736766036e-17, rd);
  const float r = static_cast<float>(rd), z = r * r;
  const float sn = fmaf(fmaf(fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f) * z, r, r);
  const float cs = fmaf(fmaf(fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f), z, 4.166664568298827e-2f) * z, z, fmaf(-0.5f, z, 1.f));
  const int q = static_cast<int>(static_cast<long long>(n) & 3);
  *s = q == 0 ? sn : q == 1 ? cs : q == 2 ? -sn : -cs;
  *c = q == 0 ? cs : q == 1 ? -sn : q == 2 ? -cs : sn;
}

// The q/k/v GEMM's RoPE + KV-write epilogue (`matmul_rope_kv`: src/graph/passes/rules/
// fuse_matmul_rope_kv.ts says why). The GEMM's N columns are [q heads | k heads | v heads] of
// head_dim each, N = q_cols + 2 kv_cols. In the q and k heads the weight's rows were reordered at
// load (the `rope_rows` op) so that RoPE's rotation partners (dims i and i + rotary_dim / 2) are
// the neighbouring columns 2i and 2i + 1, which one thread holds side by side in every GEMM
// fragment layout. The permutation is shared by q and k, so q . k, all attention reads of the
// cache, is unchanged; the cache holds k in that order, written and read by the same program.
// Kernels take it as the `rope_*` parameters (ops/gemm.ts ROPE_KV_PARAMS); cache null: off.
template <class T>
struct RopeKv {
  const int32_t* positions;  // [R] i32: each row's position
  const int32_t* slots;      // [R] i32: each row's cache slot; -1 (padding) or past the pool: not written
  const float* inv_freq;     // [rotary_dim / 2] f32, or null (rotary_dim 0: no rotation, GPT-2)
  T* cache;                  // the layer's cache: k [num_slots, kv_cols], then v [num_slots, kv_cols]; null: off
  int q_cols;                // H head_dim: the output y is [R, q_cols]
  int head_dim, rotary_dim, num_slots;
};

// The pair of columns (col, col + 1) of row `row`, col even, with their f32 values v0 and v1
// (bias and norm scale applied): rotated by positions[row] inv_freq[i] when they are rotary pair i
// of a q or k head, as (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) (rope_kv.cu's formula; sin
// and cos from sincos_f32_fast), then stored: q columns into y [R, q_cols], k and v columns into
// the cache at slots[row].
template <class T>
TS_DEVICE void rope_kv_pair(const RopeKv<T>& a, T* y, int N, int row, int col, float v0, float v1) {
  const int kv_cols = (N - a.q_cols) >> 1;
  const int d = col % a.head_dim;  // even, like head_dim: col + 1 is in the same head
  if (col < a.q_cols + kv_cols && d < a.rotary_dim) {
    float s, c;
    sincos_f32_fast(__fmul_rn(static_cast<float>(a.positions[row]), a.inv_freq[d >> 1]), &s, &c);
    const float x1 = v0, x2 = v1;
    v0 = x1 * c - x2 * s;
    v1 = x2 * c + x1 * s;
  }
  T* p;
  if (col < a.q_cols) {
    p = y + static_cast<int64_t>(row) * a.q_cols + col;
  } else {
    const int slot = a.slots[row];
    if (slot < 0 || slot >= a.num_slots) return;
    const int c = col - a.q_cols;
    p = c < kv_cols ? a.cache + static_cast<int64_t>(slot) * kv_cols + c
                    : a.cache + (static_cast<int64_t>(a.num_slots) + slot) * kv_cols + (c - kv_cols);
  }
  *reinterpret_cast<pair_t<T>*>(p) = pair_from_f32<T>(v0, v1);
}

}  // namespace ts

// The kernels' parameters for it, in order, and the struct they make (T: the storage type).
#define TS_ROPE_KV_PARAMS(T)                                                                                      \
  const int32_t *rope_positions, /* [R] i32, or null */                                                           \
      const int32_t *rope_slots,   /* [R] i32, or null */                                                         \
      const float *rope_inv_freq,  /* [rotary_dim / 2] f32, or null */                                            \
      T *rope_cache,               /* the layer's KV cache: k half, then v half; null: a plain epilogue */         \
      int rope_q_cols, int rope_head_dim, int rope_rotary_dim, int rope_num_slots
#define TS_ROPE_KV_ARGS(T) \
  ts::RopeKv<T> { rope_positions, rope_slots, rope_inv_freq, rope_cache, rope_q_cols, rope_head_dim, rope_rotary_dim, rope_num_slots }
