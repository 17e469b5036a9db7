// Hopper GEMM (sm_90a) for the `matmul` and `matmul_add` ops: y[M, N] = x[M, K] · w[N, K]^T
// (+ bias[N]) (+ res[M, N]), T in (bf16 or
// fp16: ts_gemm_sm90_<T>, and ts_gemm_sm90_<T>_f32 for y f32), f32 accumulate, y T or f32. Same operands as kernels/gemm.cu; a third variant beside its tile
// kernel and kernels/gemv.cu, for prefill-sized M where the tensor cores bound the time.
//
// Why: mma.sync issues from one warp at a time with operands through registers, which caps it
// far under Hopper's tensor-core rate. Here the operands stay in shared memory: the copy engine
// (TMA) loads them and the warpgroup MMA (wgmma) reads them asynchronously, so the issuing warps
// keep only accumulators.
//
//   x: [M, K] T row-major, through the tensor map tmX (box 128 rows x 64 columns, 128-byte swizzle)
//   w: [N, K] T row-major, through tmW (box 256 rows x 64 columns, 128-byte swizzle)
//   bias: [N] T or null; res: [M, N] T or null (may be y: each element is read by the thread that
//   writes it); y: [M, N] T or f32, row-major
// Any M, N >= 1; K % 8 == 0 (16-byte rows, a tensor map's stride rule); the maps' out-of-range
// rows and columns read as zeros, so tile edges need no code in the main loop.
//
// Block: 384 threads, three warpgroups, one work unit at a time (persistent: grid = the SMs, units
// taken in order). A unit is a 128 x 256 tile of y and a range of K: with `splits` = 1 the whole
// of K, and y written as above; with splits > 1 (the `sm90s` rung: too few tiles to fill the SMs,
// ops/gemm.ts gemmSm90Plan) split s takes k-tiles [s kTilesPerSplit, (s + 1) kTilesPerSplit) and
// writes its f32 partial to y + s M N (y is then the [splits, M, N] workspace, bias and res null),
// which ts_gemm_splitk_reduce_* sums. Units run split-major: the tiles of one split first, grouped
// by 8 along M so concurrent blocks share weight tiles in L2.
//  - warpgroup 0, the producer: gives up registers (setmaxnreg 40) and one thread issues, per
//    k-tile of 64, two TMA loads (x 128 x 64, w 256 x 64: 48 KiB) into a STAGES-deep ring of
//    shared buffers, each stage guarded by a `full` mbarrier (transaction bytes) and an `empty`
//    one (consumers' arrivals);
//  - warpgroups 1 and 2, the consumers (setmaxnreg 232): rows 0-63 and 64-127 of the tile; per
//    k-tile, 4 k-steps of two wgmma m64n128k16 (columns 0-127 and 128-255), 128 f32 accumulators a
//    thread. One k-tile's wgmma group stays in flight while the next is issued; a stage is
//    released to the producer once the group that read it has completed.
// Epilogue: each consumer thread adds the bias and the residual and stores its accumulator
// fragments straight to y (pairs of columns where they are aligned), masked at M and N.
//
// Shared layout (128-byte swizzle, as TMA writes it and wgmma reads it): a tile row is 64 values =
// 128 bytes; 16-byte chunk c of row r sits at chunk c ^ (r % 8); 8 rows make a 1024-byte atom,
// which is the descriptors' stride byte offset. Every stage's buffers start on 1024 bytes.
//
// FLOPs 2 M N K; bytes at least 2 (M K + N K) + (2 | 4) M N (+ 2 M N for res). Shared memory: 4 stages x 48 KiB +
// 1 KiB of alignment slack + barriers; one block per SM.
#include "sm90.cuh"

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

using namespace ts::sm90;

TS_DEVICE void put(ts::bf16* p, float v) { *p = ts::from_f32<ts::bf16>(v); }
TS_DEVICE void put(ts::f16* p, float v) { *p = ts::from_f32<ts::f16>(v); }
TS_DEVICE void put(float* p, float v) { *p = v; }
template <class T>
TS_DEVICE void put2(T* p, float v0, float v1) {
  *reinterpret_cast<ts::pair_t<T>*>(p) = ts::pair_from_f32<T>(v0, v1);
}
TS_DEVICE void put2(float* p, float v0, float v1) { *reinterpret_cast<float2*>(p) = make_float2(v0, v1); }

// y[row, col] and [row, col + 1] (where col + 1 < N) = v0, v1 (+ res there), as one pair when aligned.
template <class T, typename OUT_T>
TS_DEVICE void store2(OUT_T* y, const T* res, int row, int col, int N, float v0, float v1) {
  const size_t at = (size_t)row * N + col;
  if (col + 1 < N && (N % 2) == 0) {
    if (res) {
      const float2 r = ts::load2_f32(res + at);
      v0 += r.x;
      v1 += r.y;
    }
    put2(y + at, v0, v1);
  } else {
    if (res) v0 += ts::to_f32(res[at]);
    put(y + at, v0);
    if (col + 1 < N) {
      if (res) v1 += ts::to_f32(res[at + 1]);
      put(y + at + 1, v1);
    }
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

// Work unit u -> its tile (tm, tn) and k-tile range [k0, k1).
TS_DEVICE void unit_coords(int u, int tiles, int tilesM, int tilesN, int kTiles, int kTilesPerSplit, int& tm, int& tn, int& split, int& k0,
                           int& k1) {
  split = u / tiles;
  tile_coords(u % tiles, tilesM, tilesN, tm, tn);
  k0 = split * kTilesPerSplit;
  k1 = min(kTiles, k0 + kTilesPerSplit);
}

template <class T, typename OUT_T>
__device__ __forceinline__ void gemm(const CUtensorMap& tmX, const CUtensorMap& tmW, OUT_T* y, const T* __restrict__ bias, const T* res, int M,
                                     int N, int K, int splits, int kTilesPerSplit) {
  extern __shared__ uint8_t raw[];
  // 1024-byte alignment for the swizzle atoms.
  uint8_t* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * STAGE_BYTES);
  uint64_t* empty = full + STAGES;

  const int wg = threadIdx.x / 128;
  const int tilesM = (M + BM - 1) / BM, tilesN = (N + BN - 1) / BN, tiles = tilesM * tilesN;
  const int kTiles = (K + BK - 1) / BK;
  const int units = tiles * splits;  // the launcher's plan leaves no unit an empty k range

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
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
      int tm, tn, split, k0, k1;
      unit_coords(u, tiles, tilesM, tilesN, kTiles, kTilesPerSplit, tm, tn, split, k0, k1);
      for (int kt = k0; kt < k1; kt++) {
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
  for (int u = blockIdx.x; u < units; u += gridDim.x) {
    int tm, tn, split, k0, k1;
    unit_coords(u, tiles, tilesM, tilesN, kTiles, kTilesPerSplit, tm, tn, split, k0, k1);
    OUT_T* out = y + (size_t)split * M * N;  // split 0 (or no split): y itself
    int prev = -1;
    for (int kt = k0; kt < k1; kt++) {
      mbar_wait(&full[stage], phase);
      const uint8_t* a = smem + stage * STAGE_BYTES + cw * 64 * 128;
      const uint8_t* b = smem + stage * STAGE_BYTES + A_BYTES;
      const uint64_t da = desc_kmajor(a), db0 = desc_kmajor(b), db1 = desc_kmajor(b + 128 * 128);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        // 16 values of K = 32 bytes = 2 descriptor units further along each swizzled row.
        const int accumulate = (kt > k0 || kk > 0) ? 1 : 0;
        wgmma_ss_m64n128k16<T>(acc[0], da + 2 * kk, db0 + 2 * kk, accumulate);
        wgmma_ss_m64n128k16<T>(acc[1], da + 2 * kk, db1 + 2 * kk, accumulate);
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
    fence_regs(acc[0]);
    fence_regs(acc[1]);
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
        if (row0 < M) store2(out, res, row0, col, N, acc[h][4 * i] + b0, acc[h][4 * i + 1] + b1);
        if (row0 + 8 < M) store2(out, res, row0 + 8, col, N, acc[h][4 * i + 2] + b0, acc[h][4 * i + 3] + b1);
      }
  }
}

#endif  // sm_90a

}  // namespace ts_sm90

// One entry per (storage type T, y dtype). Parameters, in order (ops/gemm.ts: GEMM_SM90_PARAMS).
// Built for every architecture (one fatbin); only the sm_90a code has a body: elsewhere the
// launcher never picks it and the entry traps.
#define TS_GEMM_SM90_ENTRY(NAME, T, OUT_T)                                                                                     \
  extern "C" __global__ void __launch_bounds__(ts_sm90::THREADS, 1)                                                             \
      NAME(const __grid_constant__ CUtensorMap tmX, /* x [M, K] T: box 128 x 64, 128-byte swizzle */                             \
           const __grid_constant__ CUtensorMap tmW, /* w [N, K] T: box 256 x 64, 128-byte swizzle */                             \
           OUT_T* y,                                /* [M, N], may be res */                                                    \
           const T* __restrict__ bias,              /* [N], or null */                                                          \
           const T* res,                            /* [M, N] added in the epilogue, or null */                                 \
           int M, int N, int K,                                                                                                 \
           int splits,         /* K splits: 1, or > 1 with y the f32 [splits, M, N] workspace */                                \
           int kTilesPerSplit) /* k-tiles of 64 per split */                                                                    \
  {                                                                                                                             \
    TS_GEMM_SM90_BODY(T, OUT_T)                                                                                                 \
  }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TS_GEMM_SM90_BODY(T, OUT_T) ts_sm90::gemm<T, OUT_T>(tmX, tmW, y, bias, res, M, N, K, splits, kTilesPerSplit);
#else
#define TS_GEMM_SM90_BODY(T, OUT_T) __trap();
#endif

TS_GEMM_SM90_ENTRY(ts_gemm_sm90_bf16, ts::bf16, ts::bf16)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_bf16_f32, ts::bf16, float)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_f16, ts::f16, ts::f16)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_f16_f32, ts::f16, float)

#undef TS_GEMM_SM90_ENTRY
#undef TS_GEMM_SM90_BODY
