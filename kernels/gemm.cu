// GEMM, the `matmul` and `matmul_add` ops: y[R, N] = x[R, K] · w[N, K]^T (+ bias[N]) (+ res[R, N]),
// operands of storage type T (bf16 or fp16), f32 accumulation, output T (projections) or f32 (the
// logits). Tensor cores through mma.sync m16n8k16 (sm_80 and later: the same code on Ampere and Hopper).
//
//   x:    [R, K] T, row-major (activations: R = T tokens or S logit rows)
//   w:    [N, K] T, nn.Linear layout; row n of w is column n of the mma's "col" B operand as is
//   bias: [N] T or null
//   res:  [R, N] T or null: the residual stream, added in the epilogue (matmul_add); it may be y
//         itself (the sum written in place): each element is read by the thread that then writes
//         it, so res and y carry no __restrict__
//   y:    [R, N] T or f32 (entries ts_gemm_<tile>_<T>: y T; ts_gemm_<tile>_<T>_f32: y f32)
//   glu:  GLU_NONE, or an activation code (common.cuh ts::act) for the `matmul_glu` op: w's rows
//         are (gate, up) pairs (rows 2j and 2j + 1, interleaved at load), N is even, and y is
//         [R, N / 2] with y[r, j] = act(gate) * up of the pair's two columns (+ bias each), which
//         one thread holds side by side in its accumulator fragment; res null
//   rstd, rms_eps: an RMS norm of x folded in (the `rmsEps` attr of matmul and matmul_glu: the
//         norm's weight is already in w's columns), y = rstd[r] * (x w^T)[r, n] (+ bias) with
//         rstd[r] = 1 / sqrt(mean_k x[r, k]^2 + eps): with rms_eps >= 0 the block computes its
//         rows' rstd from x (the 16-, 32- and 64-row tiles: from the A fragments of the main
//         loop, the splits' sums merged with their partial tiles, ws then holding [splits]
//         [gridDim.x][BM] f32 more; the launcher asks only where the weights bound the time,
//         R <= 64; the 16-row tile writing partials for the separate reduce reads its rows from
//         L2 while the prologue's copies are in flight, in 4 BM (WARPS + 1) bytes of shared
//         memory past the stages that the launcher adds), else read from rstd [R] f32
//         (ts_row_rstd_*, before the launch), or null: no norm
//   rope_*: the `matmul_rope_kv` op (rope.cuh RopeKv; rope_cache null: off): N = q_cols + 2 kv_cols
//         columns of q, k and v heads, y [R, q_cols] T gets the rotated q, and k (rotated) and v
//         go into the layer's paged cache at slots[r]; each pair of columns is one rotary pair,
//         in one thread's fragment (ts::rope_kv_pair); res null, y not f32
// Any R >= 1 and N >= 1; K % 8 == 0 (16-byte rows); every pointer 16-byte aligned (the launcher,
// src/backend/cuda/ops/gemm.ts, checks). Tile edges in M, N and K are zero-filled on load and
// bounds-checked on store.
//
// FLOPs: 2 R N K. Bytes from DRAM at least 2 R K + 2 N K + 2 N + R N (2 | 4) (+ 2 R N for res); through L2 x is read
// ceil(N / BN) times and w ceil(R / BM) times. Split-K adds 4 R N splits bytes written and read back.
//
// Block: a BM x BN tile of y; BK = 32 per stage. Global -> shared with 16-byte cp.async.cg in a
// STAGES-deep ring (one commit group per k-tile); shared -> registers with ldmatrix.x4; a warp owns
// a (BM / WARPS_M) x (BN / WARPS_N) sub-tile of f32 accumulators. Shared rows are 64 bytes (4
// chunks of 16 B); chunk c of row r lives at chunk c ^ ((r >> 1) & 3), so the 8 row addresses of
// each ldmatrix phase hit 8 different 16-byte bank groups (no conflicts), and so do cp.async writes.
// Epilogue: + bias, + res, convert, store straight from the accumulator fragments (pairs of columns
// when N is even, single elements otherwise), rows >= R and columns >= N masked; with glu, each
// pair of columns is one gated output (the SwiGLU / GeGLU of the MLP without the gate/up
// activations' round trip through memory or the act_mul launch).
//
// Block order: blockIdx.x is the tile index in groups of GROUP_M = 8 row tiles; inside a group the
// row tile varies fastest, so consecutive blocks read the same weight tile (it stays in L2) and a
// wave touches only ~8 row tiles of x. blockIdx.z is the K split.
//
// Variants (the launcher picks one from R, N, K and the SM count: gemmPlan in ops/gemm.ts):
//   ts_gemm_16x128_*             R <= 16 (decode):       4 warps (1 x 4), warp tile 16 x 32, 4 stages, 36 KiB
//   ts_gemm_32x128_*             16 < R <= 32 (decode):  4 warps (1 x 4), warp tile 32 x 32, 4 stages, 40 KiB
//   ts_gemm_64x128_*             32 < R <= 64, and R > 64 when 128 x 128 tiles would be fewer than the SMs
//                                                         4 warps (2 x 2), warp tile 32 x 64, 4 stages, 48 KiB
//   ts_gemm_128x128_*            prefill: R > 64 with ceil(R / 128) ceil(N / 128) >= SMs
//                                                         8 warps (2 x 4), warp tile 64 x 32, 3 stages, 48 KiB
// When the tiles are fewer than the SMs (twice the SMs for the 16- and 32-row tiles), K is split over
// blockIdx.z (up to 8 ways, >= 4 k-tiles each): each split writes its f32 partial tile to ws[splits, R, N]
// and the last of a tile's splits to arrive sums them and finishes y (one launch). The rung before it:
//   ts_gemm_splitk_reduce_*      y = sum over z of ws[z] (+ bias) (+ res), after the _f32 entry of the tile
//                                config wrote the partials without bias or res (two launches).
// Llama-3-8B (K = 4096, down K = 14336) on 132 SMs: decode R = 1 runs 16x128 with QKV N = 6144 as 48
// tiles x 6 splits, O and down N = 4096 as 32 x 8, gate/up N = 28672 as 224 x 2, lm_head N = 128256 as
// 1002 tiles; prefill runs 128x128 without splits from R = 65 for gate/up and lm_head and from R = 513
// for N = 4096 (64x128 below that; R = 8192: 2048 to 64128 tiles).
// Dynamic shared memory stays <= 48 KiB: no cuFuncSetAttribute needed.
#include "mma.cuh"
#include "rope.cuh"

namespace ts_gemm {

constexpr int BK = 32;              // K elements per stage
constexpr int ROW_BYTES = BK * 2;   // one tile row in shared memory: 4 chunks of 16 bytes
constexpr int ROW_CHUNKS = BK / 8;  // 16-byte chunks per tile row
constexpr int GROUP_M = 8;          // row tiles per rasterization group

// Byte offset of 16-byte chunk c (0..3) of row r in a [rows][BK] 16-bit tile (XOR swizzle).
__host__ __device__ constexpr uint32_t tile_offset(int r, int c) {
  return static_cast<uint32_t>(r * ROW_BYTES + ((c ^ ((r >> 1) & 3)) << 4));
}

// ldmatrix.x4 row address of `lane` for the 16 x 16 A fragment at k step kk (0 or 1), relative to
// the fragment's first row (a multiple of 8, so the swizzle term depends on the lane only).
// Matrices: 0 = rows 0-7 / k 0-7, 1 = rows 8-15 / k 0-7, 2 = rows 0-7 / k 8-15, 3 = rows 8-15 / k 8-15,
// which land in the registers a0..a3 of mma.m16n8k16's A operand.
__host__ __device__ constexpr uint32_t lane_a_offset(int lane, int kk) {
  return tile_offset(lane & 15, kk * 2 + (lane >> 4));
}

// ldmatrix.x4 row address of `lane` for two n8 B fragments (16 rows of w) at k step kk. Matrices:
// 0 = n 0-7 / k 0-7, 1 = n 0-7 / k 8-15, 2 = n 8-15 / k 0-7, 3 = n 8-15 / k 8-15, i.e. b0, b1 of
// the first n8 tile and b0, b1 of the second.
__host__ __device__ constexpr uint32_t lane_b_offset(int lane, int kk) {
  return tile_offset((lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1));
}

// Block `pid` -> (row tile, column tile): groups of GROUP_M row tiles, row tile fastest in a group.
__host__ __device__ inline void block_tile(int pid, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int span = GROUP_M * tiles_n;
  const int group = pid / span;
  const int first_m = group * GROUP_M;
  const int group_m = tiles_m - first_m < GROUP_M ? tiles_m - first_m : GROUP_M;
  const int local = pid - group * span;
  tm = first_m + local % group_m;
  tn = local / group_m;
}

using ts::smem_u32;
using namespace ts::mma;

template <class T>
TS_DEVICE void store1(T* p, float v) {
  *p = ts::from_f32<T>(v);
}
TS_DEVICE void store1(float* p, float v) { *p = v; }
// Two adjacent columns; p is 4-byte (16-bit T) or 8-byte (f32) aligned.
template <class T>
TS_DEVICE void store2(T* p, float v0, float v1) {
  *reinterpret_cast<ts::pair_t<T>*>(p) = ts::pair_from_f32<T>(v0, v1);
}
TS_DEVICE void store2(float* p, float v0, float v1) { *reinterpret_cast<float2*>(p) = make_float2(v0, v1); }

// One block of the GEMM; the block covers k-tiles [blockIdx.z * k_tiles_per_split,
// + k_tiles_per_split) clamped to K. With K split (gridDim.z > 1): given ws and counters, the
// splits are merged in this launch (see the epilogue) and y is the product; without them, y is
// the f32 partials [splits, R, N], offset by blockIdx.z * R * N, for splitk_reduce.
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, class T, typename OutT>
TS_DEVICE void gemm_block(OutT* y, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, const T* res, float* ws,
                          int* counters, int R, int N, int K, int k_tiles_per_split, int glu, const float* rstd, float rms_eps,
                          const ts::RopeKv<T>& rk) {
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  constexpr int MT = WTM / 16, NT = WTN / 8;              // mma tiles per warp
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be a multiple of 16 x 16");
  static_assert(STAGES >= 2, "need at least double buffering");
  constexpr int A_BYTES = BM * ROW_BYTES, STAGE_BYTES = (BM + BN) * ROW_BYTES;

  extern __shared__ __align__(128) unsigned char ts_gemm_smem[];
  const uint32_t smem = smem_u32(ts_gemm_smem);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;

  int tm, tn;
  block_tile(blockIdx.x, (R + BM - 1) / BM, (N + BN - 1) / BN, tm, tn);
  const int m0 = tm * BM, n0 = tn * BN;

  const int k_tiles = (K + BK - 1) / BK;
  const int kt_begin = blockIdx.z * k_tiles_per_split;
  const int kt_end = min(k_tiles, kt_begin + k_tiles_per_split);
  const int n_k = max(0, kt_end - kt_begin);
  const int64_t RN = static_cast<int64_t>(R) * N;
  if (ws == nullptr) y += static_cast<int64_t>(blockIdx.z) * RN;  // split-K partials for a separate reduce

  // Loads: thread tid copies chunk tid % 4 of tile rows tid / 4 + p * ROWS_PER_PASS (p = 0, 1, ...).
  // ROWS_PER_PASS is a multiple of 8, so every pass has the same swizzled column and the same
  // global k offset. Rows past BM / BN are not this thread's; rows past R / N are zero-filled.
  constexpr int ROWS_PER_PASS = THREADS / ROW_CHUNKS;
  static_assert(ROWS_PER_PASS % 8 == 0, "passes must keep the swizzle phase");
  constexpr int A_PASSES = (BM + ROWS_PER_PASS - 1) / ROWS_PER_PASS, B_PASSES = (BN + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
  const int ld_row = tid / ROW_CHUNKS, ld_k = (tid % ROW_CHUNKS) * 8;
  const uint32_t ld_dst = tile_offset(ld_row, tid % ROW_CHUNKS);
  const T* a_src = x + static_cast<int64_t>(m0 + ld_row) * K + ld_k;  // only read when in bounds
  const T* b_src = w + static_cast<int64_t>(n0 + ld_row) * K + ld_k;
  const int64_t pass_stride = static_cast<int64_t>(ROWS_PER_PASS) * K;

  // While the kernel before this one ends (programmatic dependent launch, common.cuh): the w rows
  // of the prologue's k-tiles into L2, one prefetch per 64-byte row of a k-tile (from the thread
  // that copies its first chunk). A prefetch reads no value, so it may come before the wait; x,
  // the output of the kernel before, is read only after it. At decode a block's w tile is nearly
  // all of its bytes.
  if (tid % ROW_CHUNKS == 0) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
      const int k0 = (kt_begin + s) * BK;
      if (s < n_k && k0 < K) {
#pragma unroll
        for (int p = 0; p < B_PASSES; p++) {
          const int row = ld_row + p * ROWS_PER_PASS;
          if ((BN % ROWS_PER_PASS == 0 || row < BN) && n0 + row < N) ts::prefetch_l2(b_src + p * pass_stride + k0);
        }
      }
    }
  }
  ts::pdl_enter();

  // Issues the copies of k-tile kt into `stage` (no commit).
  auto load_tile = [&](int stage, int kt) {
    const uint32_t base = smem + stage * STAGE_BYTES + ld_dst;
    const int k0 = kt * BK;
    const bool k_ok = k0 + ld_k < K;
#pragma unroll
    for (int p = 0; p < A_PASSES; p++) {
      const int row = ld_row + p * ROWS_PER_PASS;
      if (BM % ROWS_PER_PASS == 0 || row < BM) {
        const bool ok = k_ok && m0 + row < R;
        cp_async16(base + p * ROWS_PER_PASS * ROW_BYTES, ok ? a_src + p * pass_stride + k0 : x, ok ? 16 : 0);
      }
    }
#pragma unroll
    for (int p = 0; p < B_PASSES; p++) {
      const int row = ld_row + p * ROWS_PER_PASS;
      if (BN % ROWS_PER_PASS == 0 || row < BN) {
        const bool ok = k_ok && n0 + row < N;
        cp_async16(base + A_BYTES + p * ROWS_PER_PASS * ROW_BYTES, ok ? b_src + p * pass_stride + k0 : w, ok ? 16 : 0);
      }
    }
  };

  // ldmatrix addresses of this lane inside a stage, per k step: warp row base (a multiple of 16)
  // * ROW_BYTES + the swizzled lane offset; the MT / NT sub-tiles add 16 rows each.
  uint32_t a_frag_off[2], b_frag_off[2];
#pragma unroll
  for (int kk = 0; kk < 2; kk++) {
    a_frag_off[kk] = (wm * WTM) * ROW_BYTES + lane_a_offset(lane, kk);
    b_frag_off[kk] = A_BYTES + (wn * WTN) * ROW_BYTES + lane_b_offset(lane, kk);
  }

  float acc[MT][NT][4];
#pragma unroll
  for (int mi = 0; mi < MT; mi++)
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;

  // Prologue: k-tiles 0 .. STAGES-2, one commit group each (empty past the end), so that commit
  // group j always holds k-tile j.
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < n_k) load_tile(s, kt_begin + s);
    cp_async_commit();
  }

  // The folded RMS norm's rstd of this block's rows where its K split goes to a separate reduce
  // (rms_eps >= 0, the 16-row tile writing partials: each split sees a part of K only, and the
  // partials are scaled already), while the prologue's copies fly: every thread takes 8 elements
  // of each 8 THREADS of every row (16-byte loads through the read-only path: x is small and
  // L2-resident; at R = 1 that is 4 loads a thread for K = 4096, one L2 round trip under the
  // copies' HBM one), the warps' sums meet in shared memory past the stages (the launcher asked
  // for 4 BM (WARPS + 1) bytes more), and srstd[r] is the row's scale. Rows past R are never
  // stored. Otherwise the sums come from the A fragments (below): every block reading its rows
  // whole from L2 costs the 16-row tile 128 KiB a block at R = 16 (K = 4096).
  float* const srstd = reinterpret_cast<float*>(ts_gemm_smem + STAGES * STAGE_BYTES);
  const bool l2_rms = BM <= 16 && rms_eps >= 0.f && ws == nullptr && gridDim.z > 1;
  if (l2_rms) {
    constexpr int WARPS = THREADS / 32;
    float* const spart = srstd + BM;  // [WARPS][BM]
    float ss[BM];
#pragma unroll
    for (int r = 0; r < BM; r++) {
      ss[r] = 0.f;
      if (m0 + r < R) {
        const T* xr = x + static_cast<int64_t>(m0 + r) * K;
#pragma unroll 4
        for (int k = tid * 8; k < K; k += THREADS * 8) {
          float f[8];
          ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(xr + k), f);
#pragma unroll
          for (int e = 0; e < 8; e++) ss[r] = fmaf(f[e], f[e], ss[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < BM; r++) {
      const float v = ts::warp_sum(ss[r]);
      if (lane == 0) spart[warp * BM + r] = v;
    }
    __syncthreads();
    if (tid < BM) {
      float sum = 0.f;
#pragma unroll
      for (int v = 0; v < WARPS; v++) sum += spart[v * BM + tid];
      srstd[tid] = rsqrtf((K > 0 ? sum / K : 0.f) + rms_eps);
    }
    __syncthreads();
  }

  // The folded RMS norm's sums of squares of this thread's epilogue rows (rms_eps >= 0 in the 16-,
  // 32- and 64-row tiles, which the launcher gives it only where the weights bound the time,
  // R <= 64, and but for l2_rms): from the A fragments the thread loads for its mma anyway, rows g
  // and g + 8 of each 16-row sub-tile, which are the rows its accumulators hold; the 4 lanes of a
  // quad cover a k step's 16 columns between them. Over this block's k-tiles only: with K split,
  // the splits' sums meet in the merge below.
  constexpr bool FRAG_RMS = BM <= 64;
  const bool frag_rms = FRAG_RMS && rms_eps >= 0.f && !l2_rms;
  float ssq[MT][2];
#pragma unroll
  for (int mi = 0; mi < MT; mi++) ssq[mi][0] = ssq[mi][1] = 0.f;

  int read_stage = 0, write_stage = STAGES - 1;
  for (int t = 0; t < n_k; t++) {
    // Groups committed so far: STAGES - 1 + t; allowing STAGES - 2 pending means groups 0..t
    // (k-tiles 0..t) have landed for this thread; the barrier makes them visible to all and
    // guarantees every warp is done with the stage consumed in iteration t - 1.
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (t + STAGES - 1 < n_k) load_tile(write_stage, kt_begin + t + STAGES - 1);
    cp_async_commit();

    const uint32_t base = smem + read_stage * STAGE_BYTES;
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
      uint32_t a[MT][4];
      uint32_t b[NT / 2][4];
#pragma unroll
      for (int mi = 0; mi < MT; mi++) ldsm_x4(base + a_frag_off[kk] + mi * 16 * ROW_BYTES, a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
#pragma unroll
      for (int nj = 0; nj < NT / 2; nj++) ldsm_x4(base + b_frag_off[kk] + nj * 16 * ROW_BYTES, b[nj][0], b[nj][1], b[nj][2], b[nj][3]);
#pragma unroll
      for (int mi = 0; mi < MT; mi++)
#pragma unroll
        for (int ni = 0; ni < NT; ni++) mma<T>(acc[mi][ni], a[mi], b[ni / 2][(ni & 1) * 2], b[ni / 2][(ni & 1) * 2 + 1]);
      if constexpr (FRAG_RMS) {
        if (frag_rms) {
          // a0, a2: row g, k 2 tg, 2 tg + 1 and 2 tg + 8, 2 tg + 9; a1, a3: the same of row g + 8.
#pragma unroll
          for (int mi = 0; mi < MT; mi++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
              const float2 lo = ts::word_f32x2<T>(a[mi][h]), hi = ts::word_f32x2<T>(a[mi][h + 2]);
              ssq[mi][h] = fmaf(lo.x, lo.x, fmaf(lo.y, lo.y, fmaf(hi.x, hi.x, fmaf(hi.y, hi.y, ssq[mi][h]))));
            }
        }
      }
    }
    read_stage = read_stage == STAGES - 1 ? 0 : read_stage + 1;
    write_stage = write_stage == STAGES - 1 ? 0 : write_stage + 1;
  }
  cp_async_wait<0>();

  // Epilogue. Accumulator fragment: c0, c1 = row g, columns 2 tg, 2 tg + 1; c2, c3 = row g + 8.
  const int g = lane >> 2, tg = lane & 3;
  const bool pairs = (N & 1) == 0;
  if (frag_rms)
#pragma unroll
    for (int mi = 0; mi < MT; mi++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        ssq[mi][h] += __shfl_xor_sync(0xffffffffu, ssq[mi][h], 1);
        ssq[mi][h] += __shfl_xor_sync(0xffffffffu, ssq[mi][h], 2);
      }

  // K split and merged in this launch (ws given): each split stores its partial tile in ws[z],
  // makes it visible (every thread fences, the block meets at a barrier, one thread counts the
  // arrival on the tile's counter), and the split that arrives last sums every split's partial
  // into its accumulators, in split order, reading the others' past L1 (other SMs wrote them):
  // the same sum, bit for bit, whichever split is last, and the same as the separate reduce
  // (splitk_reduce) makes. Its epilogue below then adds the bias and the residual and stores y.
  // The counter goes back to zero for the next launch. This saves the reduce's launch, which
  // at decode is one kernel more for every split projection.
  if (ws != nullptr) {
    const int z = blockIdx.z, splits = gridDim.z;
    // f(mi, ni, h, row, col) for each pair of this thread's accumulators inside y.
    auto each_pair = [&](auto&& f) {
#pragma unroll
      for (int ni = 0; ni < NT; ni++) {
        const int col = n0 + wn * WTN + ni * 8 + tg * 2;
        if (col >= N) continue;
#pragma unroll
        for (int mi = 0; mi < MT; mi++)
#pragma unroll
          for (int h = 0; h < 2; h++) {
            const int row = m0 + wm * WTM + mi * 16 + g + h * 8;
            if (row < R) f(mi, ni, h, row, col);
          }
      }
    };
    // With the fragment sums of squares: this split's, one writer a row, after every split's
    // partial tiles ([splits][gridDim.x][BM] f32: the launcher sized ws for them).
    float* const ssq_ws = ws + static_cast<int64_t>(splits) * RN;
    if (frag_rms && wn == 0 && tg == 0)
#pragma unroll
      for (int mi = 0; mi < MT; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) ssq_ws[(static_cast<int64_t>(z) * gridDim.x + blockIdx.x) * BM + wm * WTM + mi * 16 + g + h * 8] = ssq[mi][h];
    each_pair([&](int mi, int ni, int h, int row, int col) {
      float* p = ws + z * RN + static_cast<int64_t>(row) * N + col;
      if (pairs) {
        store2(p, acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
      } else {
        store1(p, acc[mi][ni][2 * h]);
        if (col + 1 < N) store1(p + 1, acc[mi][ni][2 * h + 1]);
      }
    });
    __threadfence();
    __syncthreads();  // also: every warp is done with the stages, whose first word holds the flag
    // The flag in the dynamic shared memory, not a static __shared__ int: with the stages' 48 KiB
    // that would pass the 48 KiB a function may have without cuFuncSetAttribute.
    int* const merge_here = reinterpret_cast<int*>(ts_gemm_smem);
    if (tid == 0) {
      const int last = atomicAdd(&counters[blockIdx.x], 1) == splits - 1;
      if (last) {
        __threadfence();
        counters[blockIdx.x] = 0;
      }
      *merge_here = last;
    }
    __syncthreads();
    if (!*merge_here) return;
    __threadfence();
    each_pair([&](int mi, int ni, int h, int row, int col) {
      const float* p = ws + static_cast<int64_t>(row) * N + col;
      float s0 = 0.f, s1 = 0.f;
      for (int q = 0; q < splits; q++, p += RN) {
        if (q == z) {
          s0 += acc[mi][ni][2 * h];
          s1 += acc[mi][ni][2 * h + 1];
        } else if (pairs) {
          const float2 v = __ldcg(reinterpret_cast<const float2*>(p));
          s0 += v.x;
          s1 += v.y;
        } else {
          s0 += __ldcg(p);
          if (col + 1 < N) s1 += __ldcg(p + 1);
        }
      }
      acc[mi][ni][2 * h] = s0;
      acc[mi][ni][2 * h + 1] = s1;
    });
    if (frag_rms)  // every split's sum of squares of the thread's rows, in split order
#pragma unroll
      for (int mi = 0; mi < MT; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          float sum = 0.f;
          for (int q = 0; q < splits; q++)
            sum += q == z ? ssq[mi][h] : __ldcg(ssq_ws + (static_cast<int64_t>(q) * gridDim.x + blockIdx.x) * BM + wm * WTM + mi * 16 + g + h * 8);
          ssq[mi][h] = sum;
        }
  }

  // Each of this thread's rows' norm scale (1 without a folded norm).
  float rs[MT][2];
#pragma unroll
  for (int mi = 0; mi < MT; mi++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int r = wm * WTM + mi * 16 + g + h * 8;
      rs[mi][h] = l2_rms                            ? srstd[r]
                  : frag_rms                        ? rsqrtf((K > 0 ? ssq[mi][h] / K : 0.f) + rms_eps)
                  : (rstd != nullptr && m0 + r < R) ? rstd[m0 + r]
                                                    : 1.f;
    }

#pragma unroll
  for (int ni = 0; ni < NT; ni++) {
    const int col = n0 + wn * WTN + ni * 8 + tg * 2;
    if (col >= N) continue;
    const bool has1 = col + 1 < N;
    float bias0 = 0.f, bias1 = 0.f;
    if (bias != nullptr) {
      bias0 = ts::to_f32(bias[col]);
      if (has1) bias1 = ts::to_f32(bias[col + 1]);
    }
#pragma unroll
    for (int mi = 0; mi < MT; mi++) {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int row = m0 + wm * WTM + mi * 16 + g + h * 8;
        if (row >= R) continue;
        float v0 = fmaf(acc[mi][ni][2 * h], rs[mi][h], bias0), v1 = fmaf(acc[mi][ni][2 * h + 1], rs[mi][h], bias1);
        const int64_t at = static_cast<int64_t>(row) * N + col;
        if constexpr (std::is_same<OutT, T>::value) {
          if (rk.cache != nullptr) {  // N even: the pair is one rotary pair, or two dims past it
            ts::rope_kv_pair(rk, y, N, row, col, v0, v1);
            continue;
          }
        }
        if (glu != ts::GLU_NONE) {  // N even: the pair is (gate, up) of output col / 2
          store1(y + static_cast<int64_t>(row) * (N >> 1) + (col >> 1), ts::glu(glu, v0, v1));
        } else if (pairs) {
          if (res != nullptr) {
            const float2 r = ts::load2_f32(res + at);
            v0 += r.x;
            v1 += r.y;
          }
          store2(y + at, v0, v1);
        } else {
          if (res != nullptr) v0 += ts::to_f32(res[at]);
          store1(y + at, v0);
          if (has1) {
            if (res != nullptr) v1 += ts::to_f32(res[at + 1]);
            store1(y + at + 1, v1);
          }
        }
      }
    }
  }
}

// y[r, n] = sum over z of ws[z, r, n] (+ bias[n]) (+ res[r, n]), splits summed in order; res may be y.
// With glu (N even, res null): y[r, j] = glu(the sums at columns 2j and 2j + 1), y [R, N / 2].
// With rk on (N even, res null, y T): each pair of sums through ts::rope_kv_pair (y [R, q_cols]).
// The separate reduce: the tile kernel merges its splits itself when given ws (the default); this
// stays runnable as the rung before it (attrs.gemmSplitMerge 'separate').
template <class T, typename OutT>
TS_DEVICE void splitk_reduce(OutT* y, const float* __restrict__ ws, const T* __restrict__ bias, const T* res, int R, int N,
                             int splits, int glu, const ts::RopeKv<T>& rk) {
  const int64_t total = static_cast<int64_t>(R) * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (glu != ts::GLU_NONE || rk.cache != nullptr) {
    for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < total / 2; o += stride) {
      const int64_t i = 2 * o;  // the pair's first column: N even, so both are in one row
      float s0 = 0.f, s1 = 0.f;
      for (int z = 0; z < splits; z++) {
        s0 += ws[z * total + i];
        s1 += ws[z * total + i + 1];
      }
      if (bias != nullptr) {
        s0 += ts::to_f32(bias[i % N]);
        s1 += ts::to_f32(bias[i % N + 1]);
      }
      if constexpr (std::is_same<OutT, T>::value) {
        if (rk.cache != nullptr) {
          ts::rope_kv_pair(rk, y, N, static_cast<int>(i / N), static_cast<int>(i % N), s0, s1);
          continue;
        }
      }
      store1(y + o, ts::glu(glu, s0, s1));
    }
    return;
  }
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    float s = 0.f;
    for (int z = 0; z < splits; z++) s += ws[z * total + i];
    if (bias != nullptr) s += ts::to_f32(bias[i % N]);
    if (res != nullptr) s += ts::to_f32(res[i]);
    store1(y + i, s);
  }
}

}  // namespace ts_gemm

// One entry per (tile config, storage type T, output dtype): ts_gemm_<BM>x<BN>_<T> writes T,
// ts_gemm_<BM>x<BN>_<T>_f32 writes f32 (the logits, and split-K partials). Parameters, in order
// (ops/gemm.ts: GEMM_PARAMS):
#define TS_GEMM_ENTRY(NAME, T, OUT_T, BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS)                                \
  extern "C" __global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, MIN_BLOCKS)                                   \
      NAME(OUT_T* y,                    /* [R, N] OUT_T, or [splits, R, N] f32 split-K partials; may be res */        \
           const T* __restrict__ x,     /* [R, K] */                                                                  \
           const T* __restrict__ w,     /* [N, K] */                                                                  \
           const T* __restrict__ bias,  /* [N], or null */                                                            \
           const T* res,                /* [R, N] added in the epilogue, or null */                                   \
           float* ws,                   /* split K merged here: f32 partials [splits, R, N]; or null */               \
           int* counters,               /* with ws: [tiles] i32, zero before the launch and after it */               \
           int R, int N, int K, int k_tiles_per_split, /* k-tiles (of 32) per blockIdx.z */                            \
           int glu,              /* GLU_NONE, or the gated unit's activation: y [R, N / 2] */                          \
           const float* rstd,    /* [R] f32: x's rows' folded RMS norm scale, or null */                              \
           float rms_eps, /* >= 0 (16- to 64-row tiles): the block computes its rows' scale; < 0: rstd */           \
           TS_ROPE_KV_PARAMS(T)) {                                                                                     \
    ts_gemm::gemm_block<BM, BN, WARPS_M, WARPS_N, STAGES, T, OUT_T>(y, x, w, bias, res, ws, counters, R, N, K,        \
                                                                    k_tiles_per_split, glu, rstd, rms_eps,            \
                                                                    TS_ROPE_KV_ARGS(T));                              \
  }
#define TS_GEMM_ENTRIES(BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS)                                                          \
  TS_GEMM_ENTRY(ts_gemm_##BM##x##BN##_bf16, ts::bf16, ts::bf16, BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS)               \
  TS_GEMM_ENTRY(ts_gemm_##BM##x##BN##_bf16_f32, ts::bf16, float, BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS)              \
  TS_GEMM_ENTRY(ts_gemm_##BM##x##BN##_f16, ts::f16, ts::f16, BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS)                  \
  TS_GEMM_ENTRY(ts_gemm_##BM##x##BN##_f16_f32, ts::f16, float, BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS)

TS_GEMM_ENTRIES(16, 128, 1, 4, 4, 4)
TS_GEMM_ENTRIES(32, 128, 1, 4, 4, 4)
TS_GEMM_ENTRIES(64, 128, 2, 2, 4, 3)
TS_GEMM_ENTRIES(128, 128, 2, 4, 3, 2)

#undef TS_GEMM_ENTRY
#undef TS_GEMM_ENTRIES

// Split-K finish: y[R, N] = sum_z ws[z, R, N] (+ bias) (+ res). Grid-stride over R * N elements.
//   y: [R, N] T (ts_gemm_splitk_reduce_<T>) or f32 (..._<T>_f32), may be res; ws: [splits, R, N] f32;
//   bias: [N] T, or null; res: [R, N] T, or null; glu: GLU_NONE, or y [R, N / 2] gated (res null);
//   rope_*: rope.cuh's RopeKv (cache null: off), else y [R, q_cols] T and k, v into the cache
#define TS_REDUCE_ENTRY(NAME, T, OUT_T)                                                                                     \
  extern "C" __global__ void NAME(OUT_T* y, const float* __restrict__ ws, const T* __restrict__ bias, const T* res, int R, \
                                  int N, int splits, int glu, TS_ROPE_KV_PARAMS(T)) {                                       \
    ts::pdl_enter();                                                                                                        \
    ts_gemm::splitk_reduce(y, ws, bias, res, R, N, splits, glu, TS_ROPE_KV_ARGS(T));                                        \
  }
TS_REDUCE_ENTRY(ts_gemm_splitk_reduce_bf16, ts::bf16, ts::bf16)
TS_REDUCE_ENTRY(ts_gemm_splitk_reduce_bf16_f32, ts::bf16, float)
TS_REDUCE_ENTRY(ts_gemm_splitk_reduce_f16, ts::f16, ts::f16)
TS_REDUCE_ENTRY(ts_gemm_splitk_reduce_f16_f32, ts::f16, float)
#undef TS_REDUCE_ENTRY
