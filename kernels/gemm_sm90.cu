// Hopper GEMM (sm_90a) for the `matmul` op: y[M, N] = x[M, K] · w[N, K]^T (+ bias[N]), bf16 in, f32
// accumulate, y bf16 or f32. Same operands as kernels/gemm.cu; a third variant beside its tile
// kernel and kernels/gemv.cu, for prefill-sized M where the tensor cores bound the time.
//
// Why: mma.sync issues from one warp at a time with operands through registers, which caps it
// far under Hopper's tensor-core rate. Here the operands stay in shared memory: the copy engine
// (TMA) loads them and the warpgroup MMA (wgmma) reads them asynchronously, so the issuing warps
// keep only accumulators.
//
//   x: [M, K] bf16 row-major, through the tensor map tmX (box 128 rows x 64 columns, 128-byte swizzle)
//   w: [N, K] bf16 row-major, through tmW (box 256 rows x 64 columns, 128-byte swizzle)
//   bias: [N] bf16 or null; y: [M, N] bf16 or f32, row-major
// Any M, N >= 1; K % 8 == 0 (16-byte rows, a tensor map's stride rule); the maps' out-of-range
// rows and columns read as zeros, so tile edges need no code in the main loop.
//
// Block: 384 threads, three warpgroups, one 128 x 256 tile of y at a time (persistent: grid = the
// SMs, tiles taken in order, grouped by 8 along M so concurrent blocks share weight tiles in L2).
//  - warpgroup 0, the producer: gives up registers (setmaxnreg 40) and one thread issues, per
//    k-tile of 64, two TMA loads (x 128 x 64, w 256 x 64: 48 KiB) into a STAGES-deep ring of
//    shared buffers, each stage guarded by a `full` mbarrier (transaction bytes) and an `empty`
//    one (consumers' arrivals);
//  - warpgroups 1 and 2, the consumers (setmaxnreg 232): rows 0-63 and 64-127 of the tile; per
//    k-tile, 4 k-steps of two wgmma m64n128k16 (columns 0-127 and 128-255), 128 f32 accumulators a
//    thread. One k-tile's wgmma group stays in flight while the next is issued; a stage is
//    released to the producer once the group that read it has completed.
// Epilogue: each consumer thread adds the bias and stores its accumulator fragments straight to
// y (pairs of columns where they are aligned), masked at M and N.
//
// Shared layout (128-byte swizzle, as TMA writes it and wgmma reads it): a tile row is 64 bf16 =
// 128 bytes; 16-byte chunk c of row r sits at chunk c ^ (r % 8); 8 rows make a 1024-byte atom,
// which is the descriptors' stride byte offset. Every stage's buffers start on 1024 bytes.
//
// FLOPs 2 M N K; bytes at least 2 (M K + N K) + (2 | 4) M N. Shared memory: 4 stages x 48 KiB +
// 1 KiB of alignment slack + barriers; one block per SM.
#include <cuda.h>

#include "common.cuh"

namespace ts_sm90 {

constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4;
constexpr int THREADS = 384;
constexpr int GROUP_M = 8;
constexpr int A_BYTES = BM * BK * 2;  // 16 KiB
constexpr int B_BYTES = BN * BK * 2;  // 32 KiB
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
// Dynamic shared memory the launcher asks for (ops/gemm.ts: GEMM_SM90_SHARED_BYTES).
constexpr int SHARED_BYTES = STAGES * STAGE_BYTES + 1024 + 2 * STAGES * 8;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

TS_DEVICE uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

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

// A box of the tensor map at (column c0, row c1) into shared memory; completes `bar`'s bytes.
TS_DEVICE void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_u32(dst)),
               "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
               : "memory");
}

// Shared-memory matrix descriptor for a K-major operand in the 128-byte swizzle: start address,
// leading byte offset (unused by this swizzle: 1), stride byte offset 1024 (one 8-row atom),
// swizzle mode 1 = 128 B in bits 62-63. Addresses and offsets are in 16-byte units.
TS_DEVICE uint64_t smem_desc(const void* p) {
  const uint64_t addr = smem_u32(p);
  return ((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}

TS_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
TS_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
TS_DEVICE void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// d (64 x 128 f32 fragment of the warpgroup) (+)= A (64 x 16 from descA) · B (16 x 128 from descB);
// accumulate = 0 overwrites d. Both operands K-major (no transpose).
TS_DEVICE void wgmma_m64n128k16(float (&d)[64], uint64_t descA, uint64_t descB, int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred acc;\n"
      "setp.ne.b32 acc, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7,\n"
      "%8, %9, %10, %11, %12, %13, %14, %15,\n"
      "%16, %17, %18, %19, %20, %21, %22, %23,\n"
      "%24, %25, %26, %27, %28, %29, %30, %31,\n"
      "%32, %33, %34, %35, %36, %37, %38, %39,\n"
      "%40, %41, %42, %43, %44, %45, %46, %47,\n"
      "%48, %49, %50, %51, %52, %53, %54, %55,\n"
      "%56, %57, %58, %59, %60, %61, %62, %63\n"
      "}, %64, %65, acc, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        
      : "l"(descA), "l"(descB), "r"(accumulate));
}

TS_DEVICE void store2(ts::bf16* y, int row, int col, int N, float v0, float v1) {
  ts::bf16* p = y + (size_t)row * N + col;
  if (col + 1 < N && (N % 2) == 0) {
    *reinterpret_cast<ts::bf16x2*>(p) = __floats2bfloat162_rn(v0, v1);
  } else {
    p[0] = ts::to_bf16(v0);
    if (col + 1 < N) p[1] = ts::to_bf16(v1);
  }
}

TS_DEVICE void store2(float* y, int row, int col, int N, float v0, float v1) {
  float* p = y + (size_t)row * N + col;
  if (col + 1 < N && (N % 2) == 0) {
    *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
  } else {
    p[0] = v0;
    if (col + 1 < N) p[1] = v1;
  }
}

// Tile t of the persistent order -> (row tile, column tile), GROUP_M row tiles at a time.
TS_DEVICE void tile_coords(int t, int tilesM, int tilesN, int& tm, int& tn) {
  const int per_group = GROUP_M * tilesN;
  const int first = (t / per_group) * GROUP_M;
  const int rows = min(tilesM - first, GROUP_M);
  tm = first + (t % per_group) % rows;
  tn = (t % per_group) / rows;
}

template <typename OUT_T>
__device__ __forceinline__ void gemm(const CUtensorMap& tmX, const CUtensorMap& tmW, OUT_T* __restrict__ y, const ts::bf16* __restrict__ bias, int M, int N,
                                     int K) {
  extern __shared__ uint8_t raw[];
  // 1024-byte alignment for the swizzle atoms.
  uint8_t* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * STAGE_BYTES);
  uint64_t* empty = full + STAGES;

  const int wg = threadIdx.x / 128;
  const int tilesM = (M + BM - 1) / BM, tilesN = (N + BN - 1) / BN, tiles = tilesM * tilesN;
  const int kTiles = (K + BK - 1) / BK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) {
      mbar_init(&full[s], 1);         // the producer's arrive, plus the TMA bytes
      mbar_init(&empty[s], 2 * 128);  // every consumer thread
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x != 0) return;
    int stage = 0;
    uint32_t phase = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int tm, tn;
      tile_coords(t, tilesM, tilesN, tm, tn);
      for (int kt = 0; kt < kTiles; kt++) {
        mbar_wait(&empty[stage], phase ^ 1);
        uint8_t* a = smem + stage * STAGE_BYTES;
        mbar_arrive_expect_tx(&full[stage], STAGE_BYTES);
        tma_load_2d(a, &tmX, &full[stage], kt * BK, tm * BM);
        tma_load_2d(a + A_BYTES, &tmW, &full[stage], kt * BK, tn * BN);
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int cw = wg - 1;  // which 64 rows of the tile
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  float acc[2][64];
  int stage = 0;
  uint32_t phase = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int tm, tn;
    tile_coords(t, tilesM, tilesN, tm, tn);
    int prev = -1;
    for (int kt = 0; kt < kTiles; kt++) {
      mbar_wait(&full[stage], phase);
      const uint8_t* a = smem + stage * STAGE_BYTES + cw * 64 * 128;
      const uint8_t* b = smem + stage * STAGE_BYTES + A_BYTES;
      const uint64_t da = smem_desc(a), db0 = smem_desc(b), db1 = smem_desc(b + 128 * 128);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        // 16 bf16 of K = 32 bytes = 2 descriptor units further along each swizzled row.
        const int accumulate = (kt > 0 || kk > 0) ? 1 : 0;
        wgmma_m64n128k16(acc[0], da + 2 * kk, db0 + 2 * kk, accumulate);
        wgmma_m64n128k16(acc[1], da + 2 * kk, db1 + 2 * kk, accumulate);
      }
      wgmma_commit();
      // Keep this k-tile's group in flight; the previous one has now completed: free its stage.
      wgmma_wait<1>();
      if (prev >= 0) mbar_arrive(&empty[prev]);
      prev = stage;
      if (++stage == STAGES) {
        stage = 0;
        phase ^= 1;
      }
    }
    wgmma_wait<0>();
    if (prev >= 0) mbar_arrive(&empty[prev]);

    // Fragment layout of m64nNk16 (f32): element 4i + e of a thread is row 16 warp + lane / 4
    // (+ 8 for e >= 2), column 8 i + 2 (lane % 4) (+ 1 for odd e).
    const int row0 = tm * BM + cw * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
      for (int i = 0; i < 16; i++) {
        const int col = tn * BN + h * 128 + i * 8 + 2 * (lane % 4);
        if (col >= N) continue;
        float b0 = 0.f, b1 = 0.f;
        if (bias) {
          b0 = ts::to_f32(bias[col]);
          if (col + 1 < N) b1 = ts::to_f32(bias[col + 1]);
        }
        if (row0 < M) store2(y, row0, col, N, acc[h][4 * i] + b0, acc[h][4 * i + 1] + b1);
        if (row0 + 8 < M) store2(y, row0 + 8, col, N, acc[h][4 * i + 2] + b0, acc[h][4 * i + 3] + b1);
      }
  }
}

#endif  // sm_90a

}  // namespace ts_sm90

// One entry per y dtype. Parameters, in order (ops/gemm.ts: GEMM_SM90_PARAMS). Built for every
// architecture (one fatbin); only the sm_90a code has a body: elsewhere the launcher never picks it
// and the entry traps.
#define TS_GEMM_SM90_ENTRY(NAME, OUT_T)                                                                                        \
  extern "C" __global__ void __launch_bounds__(ts_sm90::THREADS, 1)                                                             \
      NAME(const __grid_constant__ CUtensorMap tmX, /* x [M, K] bf16: box 128 x 64, 128-byte swizzle */                          \
           const __grid_constant__ CUtensorMap tmW, /* w [N, K] bf16: box 256 x 64, 128-byte swizzle */                          \
           OUT_T* __restrict__ y,                   /* [M, N] */                                                                \
           const ts::bf16* __restrict__ bias,       /* [N] bf16, or null */                                                     \
           int M, int N, int K) {                                                                                               \
    TS_GEMM_SM90_BODY(OUT_T)                                                                                                    \
  }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TS_GEMM_SM90_BODY(OUT_T) ts_sm90::gemm<OUT_T>(tmX, tmW, y, bias, M, N, K);
#else
#define TS_GEMM_SM90_BODY(OUT_T) __trap();
#endif

TS_GEMM_SM90_ENTRY(ts_gemm_sm90_bf16, ts::bf16)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_f32, float)

#undef TS_GEMM_SM90_ENTRY
#undef TS_GEMM_SM90_BODY
