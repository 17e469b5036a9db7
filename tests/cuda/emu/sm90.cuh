// The emulator's kernels/sm90.cuh: the same Hopper building blocks with the same signatures,
// run by the emulator's runtime (runtime.cpp, "sm_90a"): mbarriers with arrival counts,
// transaction bytes and phases; TMA loads that poison their destination when issued and land,
// completing their bytes, when a thread waits on their barrier; named barriers; and wgmma as a
// warpgroup collective whose results reach the accumulator registers only at the
// wgmma.wait_group that covers them (the registers hold NaN until then). The descriptor and
// fragment layouts are those kernels/sm90.cuh documents.
#pragma once
#include <cuda.h>

#include "common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace ts {
namespace sm90 {

using ts::smem_u32;

inline void mbar_init(uint64_t* bar, uint32_t count) { emu::mbar_init(smem_u32(bar), count); }
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) { emu::mbar_arrive(smem_u32(bar), bytes); }
inline void mbar_arrive(uint64_t* bar) { emu::mbar_arrive(smem_u32(bar), 0); }
inline void mbar_wait(uint64_t* bar, uint32_t parity) { emu::mbar_wait(smem_u32(bar), parity); }

inline void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
  const int c[5] = {c0, c1, 0, 0, 0};
  emu::tma_load(smem_u32(dst), map->opaque, smem_u32(bar), c, 2);
}
inline void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2) {
  const int c[5] = {c0, c1, c2, 0, 0};
  emu::tma_load(smem_u32(dst), map->opaque, smem_u32(bar), c, 3);
}

inline uint32_t cluster_ctarank() { return emu::cluster_rank(); }
inline uint32_t cluster_nctarank() { return emu::cluster_size(); }
inline void cluster_arrive() { emu::cluster_arrive(); }
inline void cluster_wait() { emu::cluster_wait(); }
inline void cluster_sync() {
  emu::cluster_arrive();
  emu::cluster_wait();
}
inline void mbar_arrive_cluster(uint64_t* bar, uint32_t cta) { emu::mbar_arrive_remote(smem_u32(bar), cta); }
inline void tma_load_2d_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, uint16_t ctaMask) {
  const int c[5] = {c0, c1, 0, 0, 0};
  emu::tma_load_multicast(smem_u32(dst), map->opaque, smem_u32(bar), c, 2, ctaMask);
}

inline void named_sync(int id, int threads) { emu::named_barrier(id, threads, true); }
inline void named_arrive(int id, int threads) { emu::named_barrier(id, threads, false); }
inline void fence_async_shared() { emu::race_proxy_fence(); }

// Descriptors as kernels/sm90.cuh builds them (the encoding is the one the emulated wgmma reads).
inline uint64_t desc_kmajor(const void* p) {
  return ((uint64_t)(smem_u32(p) & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}
inline uint64_t desc_mnmajor(const void* p, uint32_t panelBytes) {
  return ((uint64_t)(smem_u32(p) & 0x3FFFF) >> 4) | ((uint64_t)(panelBytes >> 4) << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}

inline void wgmma_fence() {}
inline void wgmma_commit() { emu::wgmma_commit(); }
template <int N>
inline void wgmma_wait() {
  emu::wgmma_wait(N);
}
template <int N>
inline void fence_regs(float (&)[N]) {}
template <int N>
inline void fence_regs(uint32_t (&)[N][4]) {}

template <class T>
inline constexpr bool is_bf16() {
  return std::is_same<T, bf16>::value;
}
// d (64 x 128) (+)= A (64 x 16, descA, K-major) * B (16 x 128, descB, K-major).
template <class T>
inline void wgmma_ss_m64n128k16(float (&d)[64], uint64_t descA, uint64_t descB, int accumulate) {
  emu::wgmma(d, 128, nullptr, descA, descB, accumulate != 0, false, is_bf16<T>());
}
// d (64 x N) += A (64 x 16 from registers) * B (16 x N, descB, MN-major).
template <class T>
inline void wgmma_rs_m64n128k16_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t descB) {
  emu::wgmma(d, 128, a, 0, descB, true, true, is_bf16<T>());
}
template <class T>
inline void wgmma_rs_m64n64k16_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t descB) {
  emu::wgmma(d, 64, a, 0, descB, true, true, is_bf16<T>());
}
template <class T>
inline void wgmma_rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t descB) {
  wgmma_rs_m64n128k16_tb<T>(d, a, descB);
}
template <class T>
inline void wgmma_rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t descB) {
  wgmma_rs_m64n64k16_tb<T>(d, a, descB);
}

}  // namespace sm90
}  // namespace ts

#endif  // sm_90a
