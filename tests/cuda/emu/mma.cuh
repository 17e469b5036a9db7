// The emulator's kernels/mma.cuh: the same building blocks with the same signatures (cp.async,
// ldmatrix plain and transposed, mma.sync m16n8k16 bf16/fp16 -> f32), computed by the CUDA
// execution model in cuda_emu.h. Fragment layouts are the PTX manual's:
//   ldmatrix: lanes 8i..8i+7 give the row addresses of matrix i; lane l gets, in register i, row
//     l/4 of matrix i at columns 2(l%4), 2(l%4)+1 (transposed: rows 2(l%4), 2(l%4)+1 at column l/4).
//   mma m16n8k16 (g = l/4, t = l%4): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..],
//     a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; c0, c1 = C[g][2t, 2t+1],
//     c2, c3 = C[g+8][2t, 2t+1].
#pragma once
#include "common.cuh"

namespace ts {
namespace mma {

inline void cp_async16(uint32_t dst, const void* src, int src_bytes) { emu::cp_async(dst, src, 16, src_bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int PENDING>
inline void cp_async_wait() {
  emu::cp_async_wait(PENDING);
}

namespace detail {
struct LdsmCtx { bool trans; };
// Its reads are the lanes' own (ldsm below), not the last lane's that runs this.
__attribute__((no_sanitize_thread)) inline void ldsm_compute(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx) {
  const bool trans = static_cast<const LdsmCtx*>(ctx)->trans;
  (void)lanes;
  const uint16_t* row[32];  // lane r's row: row r % 8 of matrix r / 8, 8 values
  for (int r = 0; r < 32; r++) row[r] = static_cast<const uint16_t*>(emu::shared_ptr(in[r][0], 16));
  for (int l = 0; l < 32; l++) {
    for (int m = 0; m < 4; m++) {
      // Plain: row l/4, columns 2(l%4), 2(l%4)+1. Transposed: rows 2(l%4), 2(l%4)+1, column l/4.
      const uint16_t lo = trans ? row[8 * m + 2 * (l & 3)][l >> 2] : row[8 * m + (l >> 2)][2 * (l & 3)];
      const uint16_t hi = trans ? row[8 * m + 2 * (l & 3) + 1][l >> 2] : row[8 * m + (l >> 2)][2 * (l & 3) + 1];
      out[l][m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}
inline void ldsm(const char* what, bool trans, uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  if (addr % 16) emu::fail("%s: row address 0x%x is not 16-byte aligned", what, addr);
  emu::race_shared(addr, 16, false);  // this lane's row
  uint32_t out[4];
  const LdsmCtx c{trans};
  emu::collective(what, 0xffffffffu, &addr, 1, out, 4, ldsm_compute, &c);
  r0 = out[0], r1 = out[1], r2 = out[2], r3 = out[3];
}

template <class T>
inline float elem(uint32_t w, int hi) {
  const uint16_t h = static_cast<uint16_t>(hi ? w >> 16 : w & 0xffffu);
  return std::is_same<T, bf16>::value ? emu::bf16_to_f32(h) : emu::f16_to_f32(h);
}
// in[l] = {a0..a3, b0, b1, c0..c3 (f32 bits)}; out[l] = d0..d3.
template <class T>
inline void mma_compute(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx) {
  (void)lanes;
  (void)ctx;
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; l++) {
    const int g = l >> 2, t = l & 3;
    for (int e = 0; e < 2; e++) {
      A[g][2 * t + e] = elem<T>(in[l][0], e);
      A[g + 8][2 * t + e] = elem<T>(in[l][1], e);
      A[g][2 * t + 8 + e] = elem<T>(in[l][2], e);
      A[g + 8][2 * t + 8 + e] = elem<T>(in[l][3], e);
      B[2 * t + e][g] = elem<T>(in[l][4], e);
      B[2 * t + 8 + e][g] = elem<T>(in[l][5], e);
      C[g][2 * t + e] = emu::bits_f32(in[l][6 + e]);
      C[g + 8][2 * t + e] = emu::bits_f32(in[l][8 + e]);
    }
  }
  for (int l = 0; l < 32; l++) {
    const int g = l >> 2, t = l & 3;
    for (int r = 0; r < 2; r++)
      for (int e = 0; e < 2; e++) {
        const int row = g + 8 * r, col = 2 * t + e;
        float acc = C[row][col];  // f32 accumulation, as the tensor cores (products of 16-bit values are exact)
        for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
        out[l][2 * r + e] = emu::f32_bits(acc);
      }
  }
}
}  // namespace detail

inline void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) { detail::ldsm("ldmatrix.x4", false, addr, r0, r1, r2, r3); }
inline void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) { detail::ldsm("ldmatrix.x4.trans", true, addr, r0, r1, r2, r3); }

template <class T>
inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  uint32_t in[10] = {a[0], a[1], a[2], a[3], b0, b1, emu::f32_bits(c[0]), emu::f32_bits(c[1]), emu::f32_bits(c[2]), emu::f32_bits(c[3])}, out[4];
  emu::collective("mma.sync.m16n8k16", 0xffffffffu, in, 10, out, 4, detail::mma_compute<T>);
  for (int i = 0; i < 4; i++) c[i] = emu::bits_f32(out[i]);
}

}  // namespace mma
}  // namespace ts
