// Layout probes for the Hopper kernels (sm_90a): one warpgroup, one wgmma product, no TMA and no
// pipeline, so that a wrong shared-memory descriptor or register fragment shows up on its own
// rather than as a wrong attention or GEMM output. tests/cuda/sm90_probe.test.ts (GPU tier)
// compares each with the product on the host from fresh random inputs. One more probe, of the
// cluster machinery (multicast TMA, arrivals on a peer's mbarrier), does the same for the GEMM's
// cluster rungs.
//
//   ts_sm90_probe_qk_bf16: s[64, 128] f32 = q[64, 128] k[128, 128]^T, both K-major in 128-byte
//     swizzled panels of 64 columns (kernels/attention_sm90.cu's QK^T, kernels/gemm_sm90.cu's
//     operands): 8 wgmma m64n128k16 steps over two panels.
//   ts_sm90_probe_pv_bf16: o[64, 128] f32 = p[64, 128] v[128, 128]: p as the register A fragment,
//     v MN-major (rows of 128 bytes along N, one per key; two 64-wide panels 128 rows apart),
//     through imm-trans-b, in 8 k16 steps whose descriptors start 16 rows (2048 bytes) apart:
//     kernels/attention_sm90.cu's PV at head dim 128, its tile of 128 keys and its descriptors.
//   ts_sm90_probe_pv64_bf16: o[64, 64] f32 = p[64, 128] v[128, 64]: the same at head dim 64 (one
//     panel, wgmma m64n64k16).
//   ts_sm90_probe_cluster_bf16: the cluster machinery alone (below).
// Inputs bf16 row-major in global memory; 128 threads; shared memory static (48 KiB at most).
// The fp16 forms of the same instructions read the same layouts (the PTX manual gives one for
// every 16-bit type), so the bf16 probes stand for both.
#include "sm90.cuh"

namespace ts_probe90 {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace ts::sm90;

// Row r (of `rows`) of a row-major [rows, cols] bf16 matrix (cols 64 or 128) into swizzled
// 64-column panels, `rows` rows apart.
TS_DEVICE void to_panels(uint8_t* dst, const ts::bf16* src, int rows, int cols = 128) {
  const int chunks = cols / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
    const int r = i / chunks, chunk = i % chunks;
    const uint4 v = *reinterpret_cast<const uint4*>(src + (size_t)r * cols + chunk * 8);
    *reinterpret_cast<uint4*>(dst + (chunk / 8) * rows * 128 + r * 128 + (((chunk % 8) ^ (r % 8)) << 4)) = v;
  }
}

// Fragment element 4i + e of an [64, N] accumulator (N = 2 * size of d): row 16 warp + lane / 4
// (+ 8 for e >= 2), column 8i + 2 (lane % 4) (+1).
template <int SIZE>
TS_DEVICE void store_fragment(float* out, const float (&d)[SIZE]) {
  constexpr int N = 2 * SIZE;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = 16 * warp + lane / 4;
#pragma unroll
  for (int i = 0; i < SIZE / 4; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) out[(size_t)(row + (e >= 2 ? 8 : 0)) * N + 8 * i + 2 * (lane % 4) + (e & 1)] = d[4 * i + e];
}

// o[64, 2 SIZE] = p[64, 128] v[128, 2 SIZE]: attention_sm90.cu's issue_pv on a tile of 128 keys.
template <int SIZE>
TS_DEVICE void pv_probe(float* o, const ts::bf16* p, const ts::bf16* v, uint8_t* sv) {
  constexpr int KEYS = 128;
  to_panels(sv, v, KEYS, 2 * SIZE);
  fence_async_shared();
  __syncthreads();
  // The A fragment of k-step kk, rows g and g + 8 of this warp's 16: columns 16 kk + 2 t4 (+1)
  // and 16 kk + 8 + 2 t4 (+1), as the kernel packs its S accumulator.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = 16 * warp + lane / 4, c = 2 * (lane % 4);
  auto at = [&](int r, int col) { return ts::to_f32(p[r * KEYS + col]); };
  uint32_t a[KEYS / 16][4];
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; kk++) {
    const int c0 = 16 * kk + c;
    a[kk][0] = ts::pack2<ts::bf16>(at(g, c0), at(g, c0 + 1));
    a[kk][1] = ts::pack2<ts::bf16>(at(g + 8, c0), at(g + 8, c0 + 1));
    a[kk][2] = ts::pack2<ts::bf16>(at(g, c0 + 8), at(g, c0 + 9));
    a[kk][3] = ts::pack2<ts::bf16>(at(g + 8, c0 + 8), at(g + 8, c0 + 9));
  }
  float d[SIZE];
#pragma unroll
  for (int i = 0; i < SIZE; i++) d[i] = 0.f;
  fence_regs(d);
  fence_regs(a);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; kk++) wgmma_rs_tb<ts::bf16>(d, a[kk], desc_mnmajor(sv + kk * 16 * 128, KEYS * 128));
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(d);
  store_fragment(o, d);
}

#endif

}  // namespace ts_probe90

extern "C" __global__ void __launch_bounds__(128) ts_sm90_probe_qk_bf16(float* __restrict__ s, const ts::bf16* __restrict__ q, const ts::bf16* __restrict__ k) {
  ts::pdl_enter();
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace ts::sm90;
  __shared__ __align__(1024) uint8_t sq[64 * 256];
  __shared__ __align__(1024) uint8_t sk[128 * 256];
  ts_probe90::to_panels(sq, q, 64);
  ts_probe90::to_panels(sk, k, 128);
  fence_async_shared();
  __syncthreads();
  float d[64];
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; kk++) {
    const int pn = kk / 4, off = 2 * (kk % 4);
    wgmma_ss_m64n128k16<ts::bf16>(d, desc_kmajor(sq + pn * 64 * 128) + off, desc_kmajor(sk + pn * 128 * 128) + off, kk > 0 ? 1 : 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(d);
  ts_probe90::store_fragment(s, d);
#else
  __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(128) ts_sm90_probe_pv_bf16(float* __restrict__ o, const ts::bf16* __restrict__ p, const ts::bf16* __restrict__ v) {
  ts::pdl_enter();
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ __align__(1024) uint8_t sv[128 * 256];
  ts_probe90::pv_probe<64>(o, p, v, sv);
#else
  __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(128) ts_sm90_probe_pv64_bf16(float* __restrict__ o, const ts::bf16* __restrict__ p, const ts::bf16* __restrict__ v) {
  ts::pdl_enter();
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ __align__(1024) uint8_t sv[128 * 128];
  ts_probe90::pv_probe<32>(o, p, v, sv);
#else
  __trap();
#endif
}

// ts_sm90_probe_cluster_bf16: the cluster machinery of the sm90c and sm90pc GEMMs on its own, no
// wgmma. Launched as one cluster of two blocks of 128 threads (cluster dimension (2, 1, 1)). Block
// r loads rows [64 r, 64 r + 64) of x [128, 64] bf16 through the tensor map (box 64 x 64, 128-byte
// swizzle) and multicasts them to the same place in both blocks; each block's barrier expects
// the whole 16 KiB, half of it from its peer. Each block then writes the tile it holds, the
// swizzle undone, to out[r] ([2, 128, 64] f32), and lane 0 of each warp arrives on the peer's
// second barrier (mapa + arrive.shared::cluster), which thread 0 waits on before setting
// flags[r] = 1. The closing cluster barrier keeps each block until its peer's arrivals landed.
extern "C" __global__ void __launch_bounds__(128) ts_sm90_probe_cluster_bf16(const __grid_constant__ CUtensorMap tm, float* __restrict__ out, int* __restrict__ flags) {
  ts::pdl_enter();
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace ts::sm90;
  __shared__ __align__(1024) uint8_t tile[128 * 128];
  __shared__ __align__(8) uint64_t bars[2];  // 0: the tile's bytes; 1: the peer's warps
  const uint32_t rank = cluster_ctarank();
  if (threadIdx.x == 0) {
    mbar_init(&bars[0], 1);
    mbar_init(&bars[1], 4);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  cluster_sync();
  if (threadIdx.x == 0) {
    mbar_arrive_expect_tx(&bars[0], 128 * 128);
    tma_load_2d_multicast(tile + rank * 64 * 128, &tm, &bars[0], 0, (int)rank * 64, 0x3);
  }
  mbar_wait(&bars[0], 0);
  for (int i = threadIdx.x; i < 128 * 64; i += 128) {
    const int r = i / 64, c = i % 64;
    const ts::bf16 v = *reinterpret_cast<const ts::bf16*>(tile + r * 128 + (((c / 8) ^ (r % 8)) << 4) + (c % 8) * 2);
    out[rank * 128 * 64 + i] = ts::to_f32(v);
  }
  if (threadIdx.x % 32 == 0) mbar_arrive_cluster(&bars[1], rank ^ 1u);
  if (threadIdx.x == 0) {
    mbar_wait(&bars[1], 0);
    flags[rank] = 1;
  }
  cluster_sync();
#else
  __trap();
#endif
}
