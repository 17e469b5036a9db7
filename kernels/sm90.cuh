// Hopper (sm_90a) building blocks shared by kernels/gemm_sm90.cu and kernels/attention_sm90.cu:
// mbarriers, TMA loads, named barriers, proxy fences, wgmma shared-memory descriptors and the
// wgmma forms they use. Everything is inside the sm_90a guard: other architectures compile the
// entries' trap bodies only.
#pragma once
#include <cuda.h>

#include "common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace ts {
namespace sm90 {

using ts::smem_u32;

// ---- mbarriers (PTX: a phase completes when its pending arrivals and transaction bytes reach 0)

TS_DEVICE void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}

TS_DEVICE void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}

TS_DEVICE void mbar_arrive(uint64_t* bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory"); }

// Spins until the phase of `bar` with this parity has completed (labels are local to the braces).
TS_DEVICE void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred ready;\n"
      "waiting:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 ready, [%0], %1;\n"
      "@!ready bra waiting;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

// ---- TMA: a box of the tensor map at the given coordinates (innermost first) into shared
// memory; completes `bar`'s transaction bytes.

TS_DEVICE void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_u32(dst)),
               "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
               : "memory");
}

TS_DEVICE void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
}

// ---- thread-block clusters (a launch with a cluster dimension; kernels/gemm_sm90.cu's sm90c)

TS_DEVICE uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
TS_DEVICE uint32_t cluster_nctarank() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
}
// Every non-exited thread of the cluster arrives, then waits (not .aligned: warps whose other
// lanes have exited call it too). Release / acquire order shared memory across the cluster.
TS_DEVICE void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
TS_DEVICE void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }
TS_DEVICE void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

// Arrives on the mbarrier at the same shared offset as `bar` in the cluster's block `cta` (mapa
// maps the address into that block's window).
TS_DEVICE void mbar_arrive_cluster(uint64_t* bar, uint32_t cta) {
  asm volatile(
      "{\n"
      ".reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote];\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(cta)
      : "memory");
}

// A TMA box written to `dst` in every block of the cluster that `ctaMask` names, each completing
// bytes on its own mbarrier at `bar`'s offset.
TS_DEVICE void tma_load_2d_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, uint16_t ctaMask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar)), "h"(ctaMask)
      : "memory");
}

// ---- named barriers (id 0 is __syncthreads'), and the generic-to-async proxy fence: shared
// memory written by ordinary stores is visible to wgmma's reads only after it.

TS_DEVICE void named_sync(int id, int threads) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory"); }
TS_DEVICE void named_arrive(int id, int threads) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory"); }
TS_DEVICE void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// ---- wgmma shared-memory descriptors, 128-byte swizzle (16-byte chunk c of row r at c ^ (r % 8);
// 8 rows of 128 bytes make a 1024-byte atom). Addresses and offsets in 16-byte units; swizzle mode
// 1 (128 B) in bits 62-63.

// K-major operand: rows of 64 16-bit values along K; stride byte offset 1024 (the next 8 rows), leading
// byte offset unused by this swizzle (1).
TS_DEVICE uint64_t desc_kmajor(const void* p) {
  return ((uint64_t)(smem_u32(p) & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}

// MN-major operand (B with imm-trans-b = 1): rows of 64 16-bit values along N, one row per k; leading byte
// offset = the distance between 64-wide N panels, stride byte offset 1024 (the next 8 k).
TS_DEVICE uint64_t desc_mnmajor(const void* p, uint32_t panelBytes) {
  return ((uint64_t)(smem_u32(p) & 0x3FFFF) >> 4) | ((uint64_t)(panelBytes >> 4) << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}

TS_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
TS_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
TS_DEVICE void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins registers an in-flight wgmma reads or writes: the compiler may not move their reads or
// writes across this point (a wgmma's outputs are defined only after its group completed, and
// its register inputs must not change before).
template <int N>
TS_DEVICE void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
TS_DEVICE void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; i++)
#pragma unroll
    for (int k = 0; k < 4; k++) asm volatile("" : "+r"(r[i][k])::"memory");
}

#define TS_F8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define TS_D32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define TS_D64                                                                                                                      \
  TS_D32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, " \
         "%56, %57, %58, %59, %60, %61, %62, %63"

// The wgmma forms below are templates on the operands' storage type T (bf16 or fp16); the
// instruction differs only in its type suffix.
#define TS_WGMMA_SPECIALIZE(FN, PARAMS, BODY) \
  template <>                                 \
  TS_DEVICE void FN<bf16> PARAMS {            \
    BODY("bf16")                              \
  }                                           \
  template <>                                 \
  TS_DEVICE void FN<f16> PARAMS {             \
    BODY("f16")                               \
  }

// d (64 x 128 f32 fragment of the warpgroup) (+)= A (64 x 16, descA) * B (16 x 128, descB), both
// K-major; accumulate = 0 overwrites d. Fragment element 4i + e of a thread: row 16 warp + lane / 4
// (+ 8 for e >= 2), column 8i + 2 (lane % 4) (+ 1 for odd e).
template <class T>
TS_DEVICE void wgmma_ss_m64n128k16(float (&d)[64], uint64_t descA, uint64_t descB, int accumulate);
#define TS_WGMMA_SS_128(TYPE)                                                                                \
  asm volatile(                                                                                              \
      "{\n"                                                                                                  \
      ".reg .pred acc;\n"                                                                                    \
      "setp.ne.b32 acc, %66, 0;\n"                                                                           \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" TS_D64 "}, %64, %65, acc, 1, 1, 0, 0;\n" \
      "}\n"                                                                                                  \
      : TS_F8(d, 0), TS_F8(d, 8), TS_F8(d, 16), TS_F8(d, 24), TS_F8(d, 32), TS_F8(d, 40), TS_F8(d, 48), TS_F8(d, 56) \
      : "l"(descA), "l"(descB), "r"(accumulate));
TS_WGMMA_SPECIALIZE(wgmma_ss_m64n128k16, (float (&d)[64], uint64_t descA, uint64_t descB, int accumulate), TS_WGMMA_SS_128)

// d (64 x N f32) += A (64 x 16 T from registers: the m64nNk16 A fragment, four T pairs: rows g
// and g + 8 of the warp's 16, columns 2 t4 and 8 + 2 t4) * B (16 x N, MN-major, descB).
template <class T>
TS_DEVICE void wgmma_rs_m64n128k16_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t descB);
#define TS_WGMMA_RS_128(TYPE)                                                                                                   \
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" TS_D64 "}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n" \
               : TS_F8(d, 0), TS_F8(d, 8), TS_F8(d, 16), TS_F8(d, 24), TS_F8(d, 32), TS_F8(d, 40), TS_F8(d, 48), TS_F8(d, 56)     \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB));
TS_WGMMA_SPECIALIZE(wgmma_rs_m64n128k16_tb, (float (&d)[64], const uint32_t (&a)[4], uint64_t descB), TS_WGMMA_RS_128)

template <class T>
TS_DEVICE void wgmma_rs_m64n64k16_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t descB);
#define TS_WGMMA_RS_64(TYPE)                                                                                                    \
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" TS_D32 "}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"  \
               : TS_F8(d, 0), TS_F8(d, 8), TS_F8(d, 16), TS_F8(d, 24)                                                         \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB));
TS_WGMMA_SPECIALIZE(wgmma_rs_m64n64k16_tb, (float (&d)[32], const uint32_t (&a)[4], uint64_t descB), TS_WGMMA_RS_64)

// By accumulator size, for code templated on the head dim.
template <class T>
TS_DEVICE void wgmma_rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t descB) {
  wgmma_rs_m64n128k16_tb<T>(d, a, descB);
}
template <class T>
TS_DEVICE void wgmma_rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t descB) {
  wgmma_rs_m64n64k16_tb<T>(d, a, descB);
}

#undef TS_WGMMA_SPECIALIZE
#undef TS_WGMMA_SS_128
#undef TS_WGMMA_RS_128
#undef TS_WGMMA_RS_64
#undef TS_F8
#undef TS_D32
#undef TS_D64

}  // namespace sm90
}  // namespace ts

#endif  // sm_90a
