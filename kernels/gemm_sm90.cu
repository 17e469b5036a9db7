// Hopper GEMM (sm_90a) for the `matmul` and `matmul_add` ops: y[M, N] = x[M, K] · w[N, K]^T
// (+ bias[N]) (+ res[M, N]), T bf16 or fp16, f32 accumulate, y T or f32. Entries per schedule
// (below): ts_gemm_sm90_<T> (cooperative), ts_gemm_sm90p_<T> (ping-pong), ts_gemm_sm90k_<T>
// (stream-K), ts_gemm_sm90c_<T> (cooperative in clusters of two, w multicast), ts_gemm_sm90pc_<T>
// (ping-pong in clusters of two), each with a _f32 twin for y f32. Same operands as
// kernels/gemm.cu; beside its tile kernel and kernels/gemv.cu, for prefill-sized M where the tensor
// cores bound the time.
//
// Why: mma.sync issues from one warp at a time with operands through registers, which caps it
// far under Hopper's tensor-core rate. Here the operands stay in shared memory: the copy engine
// (TMA) loads them and the warpgroup MMA (wgmma) reads them asynchronously, so the issuing warps
// keep only accumulators.
//
//   x: [M, K] T row-major, through the tensor map tmX (box 128 rows x 64 columns, 128-byte swizzle)
//   w: [N, K] T row-major, through tmW (box BN rows x 64 columns, 128-byte swizzle: BN 256, or 128
//      for the ping-pong entries; half a tile, for the cluster entries: 128 or 64 rows)
//   bias: [N] T or null; res: [M, N] T or null (may be y: each element is read by the thread that
//   writes it); y: [M, N] T or f32, row-major
// Any M, N >= 1; K % 8 == 0 (16-byte rows, a tensor map's stride rule); the maps' out-of-range
// rows and columns read as zeros, so tile edges need no code in the main loop.
//
// Block: 384 threads, three warpgroups, persistent (grid at most the SMs). Its work is a walk
// (Walk below) of pieces, each a 128 x BN tile of y and a range of its k-tiles. Cooperative and
// ping-pong: units blockIdx.x, + gridDim.x, ...; with `splits` = 1 a unit is a whole tile; with
// splits > 1 (the `sm90s` rung: too few tiles to fill the SMs, ops/gemm.ts gemmSm90Plan) split s
// takes k-tiles [s kTilesPerSplit, (s + 1) kTilesPerSplit) and writes its f32 partial to
// y + s M N (y is then the [splits, M, N] workspace, bias and res null), which
// ts_gemm_splitk_reduce_* sums; units run split-major. Stream-K: see STREAMK below. Tiles are
// numbered in groups of 8 along M, so blocks running at once share weight tiles in L2.
//  - warpgroup 0, the producer: gives up registers (setmaxnreg 40) and one thread issues, per
//    k-tile of 64, two TMA loads (x 128 x 64, w BN x 64) into a STAGES-deep ring of shared
//    buffers, each stage guarded by a `full` mbarrier (transaction bytes) and an `empty` one
//    (consumers' arrivals);
//  - warpgroups 1 and 2, the consumers (setmaxnreg 232), per k-tile 4 k-steps of two wgmma
//    m64n128k16: cooperative and stream-K, each consumer 64 rows of a 128 x 256 tile (columns
//    0-127 and 128-255); ping-pong, each consumer a whole 128 x 128 tile (rows 0-63 and 64-127).
//    128 f32 accumulators a thread; one k-tile's wgmma group stays in flight while the next is
//    issued, and a stage is released to the producer once the group that read it has completed.
// Epilogue: each consumer thread adds the bias and the residual and stores its accumulator
// fragments straight to y (pairs of columns where they are aligned), masked at M and N. With
// `glu` (an activation code, not GLU_NONE: the `matmul_glu` op; N even, res null, splits 1) w's
// rows are (gate, up) pairs and each pair of columns is one output, y [M, N / 2] = act(gate) * up.
// With `rope_cache` set (the `matmul_rope_kv` op, rope.cuh; N even, res null, splits 1, y T) each
// pair of columns is one rotary pair of a q or k head (or two dims past it, or of a v head):
// rotated, then q stored to y [M, q_cols] and k and v into the paged cache at slots[row].
// With `rstd` ([M] f32, from ts_row_rstd_*: an RMS norm of x folded in, its weight already in
// w's columns) each row's accumulators are scaled by rstd[row] first, split partials included.
//
// Shared layout (128-byte swizzle, as TMA writes it and wgmma reads it): a tile row is 64 values =
// 128 bytes; 16-byte chunk c of row r sits at chunk c ^ (r % 8); 8 rows make a 1024-byte atom,
// which is the descriptors' stride byte offset. Every stage's buffers start on 1024 bytes.
//
// FLOPs 2 M N K; bytes at least 2 (M K + N K) + (2 | 4) M N (+ 2 M N for res). Shared memory: 4 stages x 48 KiB +
// 1 KiB of alignment slack + barriers (ping-pong: 6 stages x 32 KiB); one block per SM.
#include "rope.cuh"
#include "sm90.cuh"

namespace ts_sm90 {

constexpr int BM = 128, BK = 64;
constexpr int THREADS = 384;
constexpr int GROUP_M = 8;
constexpr int A_BYTES = BM * BK * 2;  // 16 KiB

// The schedules (the entries' SCHED):
//  - COOP, cooperative (ts_gemm_sm90_*): both consumers work on every unit, a 128 x 256 tile, rows
//    0-63 and 64-127; 4 stages of x 128 x 64 and w 256 x 64 (48 KiB);
//  - PING, ping-pong (ts_gemm_sm90p_*): each consumer takes every other unit of the block, a 128 x
//    128 tile of its own, and their main loops alternate, so one's epilogue runs under the other's
//    main loop; 6 stages of x 128 x 64 and w 128 x 64 (32 KiB);
//  - STREAMK, stream-K (ts_gemm_sm90k_*): COOP's tiles and consumers; the first dpTiles tiles go
//    to the blocks in turn as whole tiles (COOP's order: the tiles in flight at once are
//    neighbours and share operands in L2), then block b takes the k-tiles [b per, (b + 1) per) of
//    the remaining tiles' tile-major (tile, k-tile) sequence, so every block ends with the same
//    work whatever the tile count. A tile whose k-tiles fall to several blocks is finished by the
//    last of them to arrive (below);
//  - MCAST, cooperative in clusters of two (ts_gemm_sm90c_*, launched with cluster dimension
//    (2, 1, 1)): COOP's tiles and consumers; the cluster takes units of two row tiles that share
//    a column tile (block rank r the row tile 2 p + r of unit p, in COOP's order over the pairs),
//    and each block's producer loads its own x tile and half of the shared w tile, the w half
//    multicast to both blocks. A k-tile brings the 48 KiB stage to each block for 32 KiB read
//    through L2 (COOP: 48). A stage is refilled only when the consumers of both blocks have
//    released it: every consumer warp arrives on the `empty` barrier of each block of the cluster;
//  - PING_MCAST, ping-pong in clusters of two (ts_gemm_sm90pc_*): PING's tiles, ring and turns
//    with MCAST's pairs of row tiles, each block's producer multicasting half of the 128-row w
//    tile (24 KiB of L2 reads a k-tile for a 32 KiB stage; PING: 32).
enum Sched { COOP = 0, PING = 1, STREAMK = 2, MCAST = 3, PING_MCAST = 4 };
__host__ __device__ constexpr bool pingpong(int sched) { return sched == PING || sched == PING_MCAST; }
__host__ __device__ constexpr bool multicast(int sched) { return sched == MCAST || sched == PING_MCAST; }
template <int SCHED>
struct Cfg {
  static constexpr int BN = pingpong(SCHED) ? 128 : 256;
  static constexpr int STAGES = pingpong(SCHED) ? 6 : 4;
  static constexpr int B_BYTES = BN * BK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  // Dynamic shared memory the launcher asks for (ops/gemm.ts: GEMM_SM90, GEMM_SM90P): the stages,
  // alignment slack, the full and empty barriers, and (STREAMK) the last-arrival flag.
  static constexpr int SHARED_BYTES = STAGES * STAGE_BYTES + 1024 + 2 * STAGES * 8 + (SCHED == STREAMK ? 16 : 0);
};
// Named barriers (0 is __syncthreads'). PING: consumer c waits on ORDER_BAR + c before its main
// loop, and the other consumer arrives on it after its own. STREAMK: the two consumers meet on
// CONSUMERS_BAR around a partial tile's arrival.
constexpr int ORDER_BAR = 1, CONSUMERS_BAR = 1;
// STREAMK: a partial tile's f32 accumulators, in fragment order (float4 i of consumer thread c at
// i * 256 + c, coalesced), two slots a block: 0 for the tile its range starts in, 1 for the one
// it ends in.
constexpr int SLOT_FLOATS = 256 * 128;

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

// y[row, col / 2] = act(v0) * v1: a (gate, up) pair of columns, N even (glu, not GLU_NONE).
template <typename OUT_T>
TS_DEVICE void store_glu(OUT_T* y, int row, int col, int N, int glu, float v0, float v1) {
  put(y + (size_t)row * (N / 2) + col / 2, ts::glu(glu, v0, v1));
}

// Tile t of the persistent order -> (row tile, column tile), GROUP_M row tiles at a time.
TS_DEVICE void tile_coords(int t, int tilesM, int tilesN, int& tm, int& tn) {
  const int per_group = GROUP_M * tilesN;
  const int first = (t / per_group) * GROUP_M;
  const int rows = min(tilesM - first, GROUP_M);
  tm = first + (t % per_group) % rows;
  tn = (t % per_group) / rows;
}

// One piece of work: a tile (tm, tn) and its k-tiles [k0, k1), the K split it writes (COOP/PING
// with splits > 1), and the tile's index in the persistent order.
struct Work {
  int tile, tm, tn, split, k0, k1;
};

// The block's work in order, the same walk for the producer and the consumers. COOP and PING: units
// blockIdx.x, + gridDim.x, ...; a unit is a tile and a range of K, split-major. STREAMK: whole
// tiles blockIdx.x, + gridDim.x, ... below dpTiles, then the k-tiles [dpTiles kTiles + blockIdx.x
// per, ... + per) of the tile-major (tile, k-tile) space, cut at tile boundaries.
template <int SCHED>
struct Walk {
  int tiles, tilesM, tilesN, kTiles, per, u, dpTiles;
  int step, rank;  // units step by the grid (multicast: by the clusters); rank: the block in its cluster
  long long it, end;
  TS_DEVICE Walk(int tiles_, int tilesM_, int tilesN_, int kTiles_, int splits, int per_, int dpTiles_)
      : tiles(tiles_), tilesM(tilesM_), tilesN(tilesN_), kTiles(kTiles_), per(per_), u(blockIdx.x), dpTiles(dpTiles_), step(gridDim.x), rank(0) {
    if (multicast(SCHED)) {
      // Units are pairs of row tiles; both blocks of a cluster walk the same units.
      const int csize = (int)cluster_nctarank();
      rank = (int)cluster_ctarank();
      u = blockIdx.x / csize;
      step = gridDim.x / csize;
      tilesM = (tilesM_ + csize - 1) / csize;
      tiles = tilesM * tilesN;
    }
    if (SCHED == STREAMK) {
      it = (long long)dpTiles * kTiles + (long long)blockIdx.x * per;
      end = min((long long)tiles * kTiles, it + per);
    } else {
      it = 0;
      end = (long long)tiles * splits;  // the units
    }
  }
  // Whether next() has another piece of work to give.
  TS_DEVICE bool more() const { return SCHED == STREAMK ? u < dpTiles || it < end : u < end; }
  TS_DEVICE bool next(Work& w) {
    if (!more()) return false;
    if (SCHED == STREAMK && u < dpTiles) {
      w.tile = u;
      w.k0 = 0;
      w.k1 = kTiles;
      w.split = 0;
      u += step;
    } else if (SCHED == STREAMK) {
      w.tile = (int)(it / kTiles);
      w.k0 = (int)(it % kTiles);
      w.k1 = (int)min((long long)kTiles, w.k0 + (end - it));
      w.split = 0;
      it += w.k1 - w.k0;
    } else {
      w.split = u / tiles;
      w.tile = u % tiles;
      w.k0 = w.split * per;
      w.k1 = min(kTiles, w.k0 + per);
      u += step;
    }
    tile_coords(w.tile, tilesM, tilesN, w.tm, w.tn);
    // Multicast: the pair's row tile for this block; past the last row tile when the pair has one
    // (the producer loads the last real tile's x there; its rows are never stored).
    if (multicast(SCHED)) w.tm = w.tm * (int)cluster_nctarank() + rank;
    return true;
  }
};

template <class T, typename OUT_T, int SCHED>
__device__ __forceinline__ void gemm(const CUtensorMap& tmX, const CUtensorMap& tmW, OUT_T* y, const T* __restrict__ bias, const T* res, float* ws,
                                     int* counters, int M, int N, int K, int splits, int kTilesPerSplit, int dpTiles, int glu,
                                     const float* rstd, const ts::RopeKv<T>& rk) {
  using C = Cfg<SCHED>;
  constexpr bool PP = pingpong(SCHED), MC = multicast(SCHED);
  constexpr int BN = C::BN, STAGES = C::STAGES, STAGE_BYTES = C::STAGE_BYTES;
  extern __shared__ uint8_t raw[];
  // 1024-byte alignment for the swizzle atoms.
  uint8_t* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * STAGE_BYTES);
  uint64_t* empty = full + STAGES;
  int* last_flag = reinterpret_cast<int*>(empty + STAGES);  // STREAMK

  const int wg = threadIdx.x / 128;
  const int tilesM = (M + BM - 1) / BM, tilesN = (N + BN - 1) / BN, tiles = tilesM * tilesN;
  const int kTiles = (K + BK - 1) / BK;
  // The launcher's plan leaves no unit an empty k range (COOP/PING) and no block an empty range
  // of k-tiles (STREAMK: kTilesPerSplit is the k-tiles per block after the dpTiles whole tiles).

  // Multicast: the blocks of the cluster (cmask: all of them) and this one's rank.
  const int csize = MC ? (int)cluster_nctarank() : 1, crank = MC ? (int)cluster_ctarank() : 0;
  const uint16_t cmask = (uint16_t)((1u << csize) - 1);
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) {
      mbar_init(&full[s], 1);  // the producer's arrive, plus the TMA bytes
      // Every thread of the warpgroup(s) reading it; MC: one lane of each warp reading it, of
      // each block of the cluster.
      mbar_init(&empty[s], (MC ? (PP ? 4 : 8) * csize : PP ? 128 : 2 * 128));
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // Multicast: no block may arrive on, or load into, a peer's barriers before the peer initialized them.
  if (MC) cluster_sync();
  else __syncthreads();

  Walk<SCHED> walk(tiles, tilesM, tilesN, kTiles, splits, kTilesPerSplit, dpTiles);
  Work w;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x != 0) return;
    int stage = 0;
    uint32_t phase = 0;
    while (walk.next(w)) {
      for (int kt = w.k0; kt < w.k1; kt++) {
        mbar_wait(&empty[stage], phase ^ 1);
        uint8_t* a = smem + stage * STAGE_BYTES;
        // The whole stage's bytes: with multicast they include the w part the peers multicast,
        // which may land before this arrival (the phase cannot complete while it is pending).
        mbar_arrive_expect_tx(&full[stage], STAGE_BYTES);
        // Multicast: a pair's second row tile past M loads the last real one instead (its rows
        // are never stored), so that no box lies wholly outside the tensor.
        tma_load_2d(a, &tmX, &full[stage], kt * BK, (MC ? min(w.tm, tilesM - 1) : w.tm) * BM);
        if (MC) {
          // This block's share of w's tile (tmW's box: BN / csize rows), to the same place in every block.
          const int rows = BN / csize;
          tma_load_2d_multicast(a + A_BYTES + crank * rows * 128, &tmW, &full[stage], kt * BK, w.tn * BN + crank * rows, cmask);
        } else {
          tma_load_2d(a + A_BYTES, &tmW, &full[stage], kt * BK, w.tn * BN);
        }
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    if (MC) {
      // The block stays until the consumers of every block of the cluster have released its last
      // STAGES stages: their arrivals land on this block's barriers, which go when it exits.
      // (A stage never filled passes at once, as on the first lap.)
      for (int i = 0; i < STAGES; i++) {
        mbar_wait(&empty[stage], phase ^ 1);
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int cw = wg - 1;  // COOP/STREAMK: which 64 rows of the tile; PING: which units
  const int ct = threadIdx.x - 128;  // the consumer thread, 0-255
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  float acc[2][64];
  // Releases a stage: every consumer thread arrives; multicast: lane r of each consumer warp arrives
  // for its warp on block r of the cluster, whose producer multicasts into this block's stage too.
  const auto release = [&](int s) {
    if (!MC) mbar_arrive(&empty[s]);
    else if (lane < csize) mbar_arrive_cluster(&empty[s], (uint32_t)lane);
  };
  // The ring position of the block's next k-tile: both consumers walk all of the block's work,
  // so in ping-pong each steps over the other's k-tiles.
  int pos = 0;
  for (int j = 0; walk.next(w); j++) {
    if (PP && (j & 1) != cw) {
      pos += w.k1 - w.k0;
      continue;
    }
    // Ping-pong: the main loops take turns. Not only for the overlap: the ring holds the other
    // consumer's k-tiles between this one's, and a `full` barrier's parity names a phase only
    // within one lap of the ring; waiting on a stage STAGES or more k-tiles ahead of the last one
    // consumed would see an older phase of the same parity as completed.
    if (PP && j > 0) named_sync(ORDER_BAR + cw, 256);
    OUT_T* out = y + (size_t)w.split * M * N;  // split 0 (or no split): y itself
    int prev = -1;
    for (int kt = w.k0; kt < w.k1; kt++, pos++) {
      const int stage = pos % STAGES;
      mbar_wait(&full[stage], (pos / STAGES) & 1);
      const uint8_t* a = smem + stage * STAGE_BYTES;
      const uint8_t* b = a + A_BYTES;
      // COOP/STREAMK: this consumer's 64 rows against the two 128-column halves of w's tile.
      // PING: rows 0-63 and 64-127 against the whole 128 columns.
      const uint64_t da0 = desc_kmajor(PP ? a : a + cw * 64 * 128), da1 = desc_kmajor(PP ? a + 64 * 128 : a + cw * 64 * 128);
      const uint64_t db0 = desc_kmajor(b), db1 = desc_kmajor(PP ? b : b + 128 * 128);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        // 16 values of K = 32 bytes = 2 descriptor units further along each swizzled row.
        const int accumulate = (kt > w.k0 || kk > 0) ? 1 : 0;
        wgmma_ss_m64n128k16<T>(acc[0], da0 + 2 * kk, db0 + 2 * kk, accumulate);
        wgmma_ss_m64n128k16<T>(acc[1], da1 + 2 * kk, db1 + 2 * kk, accumulate);
      }
      wgmma_commit();
      // Keep this k-tile's group in flight; the previous one has now completed: free its stage.
      wgmma_wait<1>();
      if (prev >= 0) release(prev);
      prev = stage;
    }
    // Every k-tile of this unit has been waited for: the other consumer's main loop may start
    // (its next unit follows this one in the ring), under this one's last group and epilogue.
    if (PP && walk.more()) named_arrive(ORDER_BAR + (cw ^ 1), 256);
    wgmma_wait<0>();
    fence_regs(acc[0]);
    fence_regs(acc[1]);
    if (prev >= 0) release(prev);

    // Fragment layout of m64nNk16 (f32): element 4i + e of a thread is row 16 warp + lane / 4
    // (+ 8 for e >= 2), column 8 i + 2 (lane % 4) (+ 1 for odd e). acc[h] is rows 64 h (PING)
    // or columns 128 h (COOP, STREAMK) of the tile.
    if (SCHED == STREAMK && !(w.k0 == 0 && w.k1 == kTiles)) {
      // A piece of a tile other blocks also work on. Every piece stores its accumulators in its
      // block's slot; the last to arrive on the tile's counter sums all the pieces' slots in
      // block order (the same sum whatever the arrival order) and stores the tile. Rows past M
      // are neither stored nor read (a thread's float4 holds rows r and r + 8: kept while r < M).
      const long long first = (long long)(w.tile - dpTiles) * kTiles;  // in the stream-K sequence
      const int b0 = (int)(first / kTilesPerSplit), pieces = (int)((first + kTiles - 1) / kTilesPerSplit) - b0 + 1;
      const bool rowValid = w.tm * BM + cw * 64 + warp * 16 + lane / 4 < M;
      const auto slot = [&](int blk) {
        const int startTile = dpTiles + (int)((long long)blk * kTilesPerSplit / kTiles);
        return reinterpret_cast<float4*>(ws + ((size_t)blk * 2 + (w.tile == startTile ? 0 : 1)) * SLOT_FLOATS) + ct;
      };
      float4* mine = slot(blockIdx.x);
      if (rowValid) {
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
          for (int i = 0; i < 16; i++) mine[(h * 16 + i) * 256] = make_float4(acc[h][4 * i], acc[h][4 * i + 1], acc[h][4 * i + 2], acc[h][4 * i + 3]);
      }
      __threadfence();  // the slot before the arrival, for the block that finishes the tile
      named_sync(CONSUMERS_BAR, 256);
      if (ct == 0) {
        const int last = atomicAdd(&counters[w.tile], 1) == pieces - 1;
        if (last) {
          __threadfence();         // acquire: the other pieces' slots, after their release above
          counters[w.tile] = 0;    // every piece has arrived: ready for the next launch
        }
        *last_flag = last;
      }
      named_sync(CONSUMERS_BAR, 256);
      if (!*last_flag) continue;
      __threadfence();
      if (rowValid) {
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
          for (int i = 0; i < 16; i++) {
            float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int p = 0; p < pieces; p++) {
              const float4 v = __ldcg(slot(b0 + p) + (h * 16 + i) * 256);  // past L1: other SMs wrote it
              sum.x += v.x;
              sum.y += v.y;
              sum.z += v.z;
              sum.w += v.w;
            }
            acc[h][4 * i] = sum.x;
            acc[h][4 * i + 1] = sum.y;
            acc[h][4 * i + 2] = sum.z;
            acc[h][4 * i + 3] = sum.w;
          }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int row0 = w.tm * BM + (PP ? h : cw) * 64 + warp * 16 + lane / 4;
      // The folded norm's scale of the thread's two rows (1 without one).
      const float rs0 = rstd != nullptr && row0 < M ? rstd[row0] : 1.f, rs8 = rstd != nullptr && row0 + 8 < M ? rstd[row0 + 8] : 1.f;
#pragma unroll
      for (int i = 0; i < 16; i++) {
        const int col = w.tn * BN + (PP ? 0 : h * 128) + i * 8 + 2 * (lane % 4);
        if (col >= N) continue;
        float b0 = 0.f, b1 = 0.f;
        if (bias) {
          b0 = ts::to_f32(bias[col]);
          if (col + 1 < N) b1 = ts::to_f32(bias[col + 1]);
        }
        const float v0 = fmaf(acc[h][4 * i], rs0, b0), v1 = fmaf(acc[h][4 * i + 1], rs0, b1);
        const float v2 = fmaf(acc[h][4 * i + 2], rs8, b0), v3 = fmaf(acc[h][4 * i + 3], rs8, b1);
        if constexpr (std::is_same<OUT_T, T>::value) {
          if (rk.cache != nullptr) {  // N even: each pair one rotary pair, or two dims past it
            if (row0 < M) ts::rope_kv_pair(rk, out, N, row0, col, v0, v1);
            if (row0 + 8 < M) ts::rope_kv_pair(rk, out, N, row0 + 8, col, v2, v3);
            continue;
          }
        }
        if (glu != ts::GLU_NONE) {
          if (row0 < M) store_glu(out, row0, col, N, glu, v0, v1);
          if (row0 + 8 < M) store_glu(out, row0 + 8, col, N, glu, v2, v3);
          continue;
        }
        if (row0 < M) store2(out, res, row0, col, N, v0, v1);
        if (row0 + 8 < M) store2(out, res, row0 + 8, col, N, v2, v3);
      }
    }
  }
}

#endif  // sm_90a

}  // namespace ts_sm90

// One entry per (schedule, storage type T, y dtype). Parameters, in order (ops/gemm.ts:
// GEMM_SM90_PARAMS, GEMM_SM90K_PARAMS). Built for every architecture (one fatbin); only the sm_90a
// code has a body: elsewhere the launcher never picks it and the entry traps.
#define TS_GEMM_SM90_ENTRY(NAME, T, OUT_T, SCHED)                                                                              \
  extern "C" __global__ void __launch_bounds__(ts_sm90::THREADS, 1)                                                             \
      NAME(const __grid_constant__ CUtensorMap tmX, /* x [M, K] T: box 128 x 64, 128-byte swizzle */                             \
           const __grid_constant__ CUtensorMap tmW, /* w [N, K] T: box BN (clusters: BN / 2) x 64, 128-byte swizzle */           \
           OUT_T* y,                                /* [M, N], may be res */                                                    \
           const T* __restrict__ bias,              /* [N], or null */                                                          \
           const T* res,                            /* [M, N] added in the epilogue, or null */                                 \
           int M, int N, int K,                                                                                                 \
           int splits,         /* K splits: 1, or > 1 with y the f32 [splits, M, N] workspace */                                \
           int kTilesPerSplit, /* k-tiles of 64 per split */                                                                    \
           int glu,            /* GLU_NONE, or the gated unit's activation: y [M, N / 2] (splits 1) */                          \
           const float* rstd,  /* [M] f32: x's rows' folded RMS norm scale, or null */                                          \
           TS_ROPE_KV_PARAMS(T)) /* rope.cuh: q/k/v with RoPE and the KV write (splits 1), or rope_cache null */                 \
  {                                                                                                                             \
    ts::pdl_enter();                                                                                                            \
    TS_GEMM_SM90_BODY(T, OUT_T, SCHED, nullptr, nullptr, splits, kTilesPerSplit, 0)                                             \
  }

// Stream-K: no K splits; dpTiles whole tiles first, then kTilesPerBlock k-tiles a block; ws holds
// two partial-tile slots (SLOT_FLOATS f32) per block, counters one int per tile, zero before the
// launch and zero again after it.
#define TS_GEMM_SM90K_ENTRY(NAME, T, OUT_T)                                                                                    \
  extern "C" __global__ void __launch_bounds__(ts_sm90::THREADS, 1)                                                             \
      NAME(const __grid_constant__ CUtensorMap tmX, /* x [M, K] T: box 128 x 64, 128-byte swizzle */                             \
           const __grid_constant__ CUtensorMap tmW, /* w [N, K] T: box 256 x 64, 128-byte swizzle */                             \
           OUT_T* y,                                /* [M, N], may be res */                                                    \
           const T* __restrict__ bias,              /* [N], or null */                                                          \
           const T* res,                            /* [M, N] added in the epilogue, or null */                                 \
           float* ws,                               /* [gridDim.x, 2, SLOT_FLOATS] f32 */                                       \
           int* counters,                           /* [tiles] i32 */                                                           \
           int M, int N, int K,                                                                                                 \
           int dpTiles,        /* tiles done whole, in turn, before the stream-K part */                                        \
           int kTilesPerBlock, /* k-tiles of the stream-K part per block */                                                     \
           int glu,            /* GLU_NONE, or the gated unit's activation: y [M, N / 2] */                                     \
           const float* rstd,  /* [M] f32: x's rows' folded RMS norm scale, or null */                                          \
           TS_ROPE_KV_PARAMS(T)) /* rope.cuh: q/k/v with RoPE and the KV write, or rope_cache null */                            \
  {                                                                                                                             \
    ts::pdl_enter();                                                                                                            \
    TS_GEMM_SM90_BODY(T, OUT_T, ts_sm90::STREAMK, ws, counters, 1, kTilesPerBlock, dpTiles)                                     \
  }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TS_GEMM_SM90_BODY(T, OUT_T, SCHED, WS, COUNTERS, SPLITS, PER, DP) \
  ts_sm90::gemm<T, OUT_T, SCHED>(tmX, tmW, y, bias, res, WS, COUNTERS, M, N, K, SPLITS, PER, DP, glu, rstd, TS_ROPE_KV_ARGS(T));
#else
#define TS_GEMM_SM90_BODY(T, OUT_T, SCHED, WS, COUNTERS, SPLITS, PER, DP) __trap();
#endif

TS_GEMM_SM90_ENTRY(ts_gemm_sm90_bf16, ts::bf16, ts::bf16, ts_sm90::COOP)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_bf16_f32, ts::bf16, float, ts_sm90::COOP)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_f16, ts::f16, ts::f16, ts_sm90::COOP)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90_f16_f32, ts::f16, float, ts_sm90::COOP)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90p_bf16, ts::bf16, ts::bf16, ts_sm90::PING)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90p_bf16_f32, ts::bf16, float, ts_sm90::PING)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90p_f16, ts::f16, ts::f16, ts_sm90::PING)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90p_f16_f32, ts::f16, float, ts_sm90::PING)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90c_bf16, ts::bf16, ts::bf16, ts_sm90::MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90c_bf16_f32, ts::bf16, float, ts_sm90::MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90c_f16, ts::f16, ts::f16, ts_sm90::MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90c_f16_f32, ts::f16, float, ts_sm90::MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90pc_bf16, ts::bf16, ts::bf16, ts_sm90::PING_MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90pc_bf16_f32, ts::bf16, float, ts_sm90::PING_MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90pc_f16, ts::f16, ts::f16, ts_sm90::PING_MCAST)
TS_GEMM_SM90_ENTRY(ts_gemm_sm90pc_f16_f32, ts::f16, float, ts_sm90::PING_MCAST)
TS_GEMM_SM90K_ENTRY(ts_gemm_sm90k_bf16, ts::bf16, ts::bf16)
TS_GEMM_SM90K_ENTRY(ts_gemm_sm90k_bf16_f32, ts::bf16, float)
TS_GEMM_SM90K_ENTRY(ts_gemm_sm90k_f16, ts::f16, ts::f16)
TS_GEMM_SM90K_ENTRY(ts_gemm_sm90k_f16_f32, ts::f16, float)

#undef TS_GEMM_SM90_ENTRY
#undef TS_GEMM_SM90K_ENTRY
#undef TS_GEMM_SM90_BODY
