// Hopper prefill attention (sm_90a) for the `attention` op: the same operands and semantics as
// kernels/attention.cu's prefill entries (paged KV cache, causal by absolute position or not,
// GQA, sliding window, variable query and context lengths), for head dims 64 and 128, in the
// FlashAttention-3 manner: the copy engine (TMA) brings K/V tiles, wgmma multiplies from shared
// memory, warpgroups specialise, and one warpgroup's softmax runs while the other's GEMMs do.
//
// Why a second kernel: kernels/attention.cu issues mma.sync from registers fed by ldmatrix,
// which holds prefill near FlashAttention-2's share of Hopper's tensor-core rate. Here QK^T reads
// both operands from shared memory and PV reads P from registers and V from shared memory, so
// the issuing warps keep only the S, P and O fragments. docs/perf/attention.md works the design
// out piece by piece; its numbers are there.
//
// Shapes (T query rows, B sequences, H heads, KV kv heads, G = H / KV, hd = HD, N cache blocks of
// bs tokens; T the storage type, bf16 or fp16):
//   q [T, H*hd] T (plain 16-byte loads: Q is read once per block), out [T, H*hd] T,
//   cache [2, N, bs, KV, hd] T through the tensor map tmKV: a 3-D view {hd, KV, 2*N*bs}
//   (innermost first; strides hd*2 and KV*hd*2 bytes), box {64, 1, CH} with CH = min(bs, KT),
//   128-byte swizzle. K of token t of cache block n is at {d, kvh, n*bs + t}, V at
//   {d, kvh, vOffset + n*bs + t} with vOffset = N*bs.
//   queryStart [B+1], contextLens [B], blockTables [B, W] i32, as the op gives them.
// Host-side rules (ops/attention.ts, sm90AttentionRefusal): hd is 64 or 128, bs a power of two
// of at least 8 (so every TMA box lands on a 1024-byte swizzle atom), 2*N*bs < 2^31.
//
// Block: 384 threads, one sequence x kv head x 128 packed rows (row r = (token r / G, head
// kvh*G + r % G), GQA packing as in kernels/attention.cu). Grid (ceil(maxQueryLen*G / 128), KV, B).
//  - warpgroup 0, the producer: gives up registers (setmaxnreg 40); its first warp reads the
//    block table (lane c: the cache block of the tile's chunk c) and lane 0 issues the TMA boxes
//    of each K/V tile of KT = 128 tokens into a 2-stage ring. K and V of a stage complete on
//    their own mbarriers (kFull, vFull), so QK^T starts before V has landed, and are released on
//    their own (kEmpty, vEmpty): K_j is free once the group of QK_j has completed, a whole group
//    before V_j, so K_{j+1} loads while group j and softmax j run.
//  - warpgroups 1 and 2, the consumers (setmaxnreg 232): packed rows 0-63 and 64-127 of the
//    block. Each loads its Q rows into shared memory once (swizzled as TMA would), then for each
//    tile j issues, as one wgmma group, S_j = Q K_j^T (m64n128k16 over hd) and O += P_{j-1} V_{j-1}
//    (m64nHDk16, P from registers as the A operand, V MN-major through imm-trans-b), waits, and
//    runs the online softmax of S_j (f32, exp2 with the scale's log2 folded in, masking by
//    absolute position) while the other consumer's group runs: the two take turns issuing
//    through named barriers 3 and 4 (FlashAttention-3's ping-pong schedule). After the last
//    tile: the last PV, the row sums across each quad, O / l stored as T.
//    Row tiles run longest first (blockIdx.x counts down the causal diagonal), so the last wave
//    holds the shortest blocks.
// Rows past their sequence's query compute on zero Q and are not stored. Keys past the context
// (a tile's tail) are masked; V rows past the context are zeroed in shared memory before PV, as
// those cache slots may hold anything and 0 * NaN is NaN on the tensor cores too.
//
// Shared memory (1024-byte aligned): Q 128 x hd, then STAGES x (K KT x hd, V KT x hd), T in
// 128-byte-swizzled panels of 64 columns (16-byte chunk c of row r at chunk c ^ (r % 8)), then the
// mbarriers. hd 128: 32 + 2 x 64 KiB = 160 KiB (+ 1 KiB alignment slack); hd 64: 80 KiB.
//
// FLOPs: 4*hd per (row, head, attended key), as the mma.sync kernel; bytes: q, out, and K/V of
// each block's key range once per block of 128 packed rows.
#include "sm90.cuh"

namespace ts_attn90 {

constexpr int BM = 128;  // packed rows per block (64 per consumer warpgroup)
constexpr int KT = 128;  // keys per K/V tile
constexpr int STAGES = 2;
constexpr int THREADS = 384;

// Dynamic shared memory the launcher asks for (ops/attention.ts: ATTENTION_SM90.sharedBytes).
template <int HD>
struct Layout {
  static constexpr int PANELS = HD / 64;
  static constexpr int Q_BYTES = BM * HD * 2;
  static constexpr int TILE_BYTES = KT * HD * 2;  // one K or one V tile
  static constexpr int STAGE_BYTES = 2 * TILE_BYTES;
  static constexpr int BARRIER_OFFSET = Q_BYTES + STAGES * STAGE_BYTES;
  static constexpr int SHARED_BYTES = BARRIER_OFFSET + 4 * STAGES * 8 + 1024;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace ts::sm90;

constexpr float LOG2E = 1.4426950408889634f;

template <class T>
struct Params {
  T* out;
  const T* q;
  const int* queryStart;
  const int* contextLens;
  const int* blockTables;
  int numHeads, numKvHeads, blockSizeLog2, blockTableWidth, vOffset;
  float scale;
  int window, causal;
};

template <int HD, bool OVERLAP, class T>
__device__ __forceinline__ void prefill(const CUtensorMap& tmKV, const Params<T>& p) {
  using L = Layout<HD>;
  extern __shared__ uint8_t raw[];
  uint8_t* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
  uint8_t* sQ = smem;
  uint64_t* kFull = reinterpret_cast<uint64_t*>(smem + L::BARRIER_OFFSET);
  uint64_t* vFull = kFull + STAGES;
  uint64_t* kEmpty = vFull + STAGES;
  uint64_t* vEmpty = kEmpty + STAGES;

  const int b = blockIdx.z, kvh = blockIdx.y, mt = gridDim.x - 1 - blockIdx.x;
  const int G = p.numHeads / p.numKvHeads;
  const int q0 = p.queryStart[b], qLen = p.queryStart[b + 1] - q0, ctx = p.contextLens[b];
  const int rows = qLen * G;  // packed rows of this sequence and kv head
  const int r0 = mt * BM;
  if (r0 >= rows) return;  // the whole block, before any barrier
  const int rLast = min(r0 + BM, rows) - 1;
  const int posFirst = ctx - qLen + r0 / G, posLast = ctx - qLen + rLast / G;
  // The block's keys: [lo, hi), in tiles of KT aligned to KT (a multiple of the TMA chunk).
  const int lo = p.window > 0 ? max(0, posFirst - p.window + 1) : 0;
  const int hi = p.causal ? min(ctx, posLast + 1) : ctx;
  const int jLo = lo / KT, nTiles = (hi + KT - 1) / KT - jLo;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) {
      mbar_init(&kFull[s], 1);     // the producer's arrive, plus the TMA bytes
      mbar_init(&vFull[s], 1);
      mbar_init(&kEmpty[s], 256);  // every consumer thread
      mbar_init(&vEmpty[s], 256);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x >= 32) return;
    // Warp 0: lane c reads the cache block of chunk c of each tile; lane 0 issues the boxes.
    const int lane = threadIdx.x;
    const int bs = 1 << p.blockSizeLog2;
    const int ch = min(bs, KT), chunks = KT / ch;
    const int lastCol = (ctx - 1) >> p.blockSizeLog2;  // chunks past the context reuse it (masked)
    const int* table = p.blockTables + (size_t)b * p.blockTableWidth;
    for (int j = 0; j < nTiles; j++) {
      const int s = j % STAGES;
      const uint32_t phase = (j / STAGES) & 1;
      const int tok0 = (jLo + j) * KT;
      int coord = 0;
      if (lane < chunks) {
        const int tok = tok0 + lane * ch;
        coord = table[min(tok >> p.blockSizeLog2, lastCol)] * bs + (tok & (bs - 1));
      }
      mbar_wait(&kEmpty[s], phase ^ 1);
      uint8_t* sK = smem + L::Q_BYTES + s * L::STAGE_BYTES;
      uint8_t* sV = sK + L::TILE_BYTES;
      for (int c = 0; c < chunks; c++) {
        const int t = __shfl_sync(0xffffffffu, coord, c);
        if (lane == 0) {
          if (c == 0) mbar_arrive_expect_tx(&kFull[s], L::TILE_BYTES);
#pragma unroll
          for (int pn = 0; pn < L::PANELS; pn++) tma_load_3d(sK + pn * KT * 128 + c * ch * 128, &tmKV, &kFull[s], pn * 64, kvh, t);
        }
      }
      mbar_wait(&vEmpty[s], phase ^ 1);
      for (int c = 0; c < chunks; c++) {
        const int t = __shfl_sync(0xffffffffu, coord, c);
        if (lane == 0) {
          if (c == 0) mbar_arrive_expect_tx(&vFull[s], L::TILE_BYTES);
#pragma unroll
          for (int pn = 0; pn < L::PANELS; pn++) tma_load_3d(sV + pn * KT * 128 + c * ch * 128, &tmKV, &vFull[s], pn * 64, kvh, p.vOffset + t);
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int cw = wg - 1;
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const size_t rowStride = (size_t)p.numHeads * HD;

  // Q rows cw*64 .. +63 of the block into the swizzled panels (zeros past the sequence).
  for (int i = tid; i < 64 * (HD / 8); i += 128) {
    const int rl = cw * 64 + i / (HD / 8), chunk = i % (HD / 8);
    const int r = r0 + rl;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < rows) v = *reinterpret_cast<const uint4*>(p.q + (size_t)(q0 + r / G) * rowStride + (size_t)(kvh * G + r % G) * HD + chunk * 8);
    *reinterpret_cast<uint4*>(sQ + (chunk / 8) * (BM * 128) + rl * 128 + (((chunk % 8) ^ (rl % 8)) << 4)) = v;
  }
  fence_async_shared();
  named_sync(1 + cw, 128);

  // This thread's two rows (fragment rows g and g + 8 of its warp) and their positions.
  const int rA = r0 + cw * 64 + warp * 16 + lane / 4, rB = rA + 8;
  const int posA = ctx - qLen + rA / G, posB = ctx - qLen + rB / G;
  const int t4 = lane % 4;
  const float scaleLog2 = p.scale * LOG2E;

  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; i++) o[i] = 0.f;
  float s[64];
  uint32_t pf[KT / 16][4];
  float mA = -INFINITY, mB = -INFINITY, lA = 0.f, lB = 0.f;

  const uint8_t* qBase = sQ + cw * 64 * 128;
  if (cw == 1) named_arrive(3, 256);  // consumer 0 issues first

  // Zeroes V rows [from, KT) of a stage: cache slots past the context. Both consumers read the
  // whole stage, so they share the work (alternate 16-byte chunks) and meet on named barrier 5
  // before either multiplies: each consumer zeroing it all would have both write every chunk
  // unordered while the other's wgmma may read it.
  auto zero_v_tail = [&](int stage, int from) {
    uint8_t* sV = smem + L::Q_BYTES + stage * L::STAGE_BYTES + L::TILE_BYTES;
    for (int i = cw * 128 + tid; i < (KT - from) * L::PANELS * 8; i += 256) {
      const int row = from + i / (L::PANELS * 8), rest = i % (L::PANELS * 8);
      *reinterpret_cast<uint4*>(sV + (rest / 8) * KT * 128 + row * 128 + (rest % 8) * 16) = make_uint4(0, 0, 0, 0);
    }
    fence_async_shared();
    named_sync(5, 256);
  };

  auto issue_qk = [&](int stage) {
    const uint8_t* kBase = smem + L::Q_BYTES + stage * L::STAGE_BYTES;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
      const int pn = kk / 4, off = 2 * (kk % 4);  // 16 columns = 32 bytes = 2 descriptor units
      wgmma_ss_m64n128k16<T>(s, desc_kmajor(qBase + pn * BM * 128) + off, desc_kmajor(kBase + pn * KT * 128) + off, kk > 0 ? 1 : 0);
    }
  };
  auto issue_pv = [&](int stage) {
    const uint8_t* vBase = smem + L::Q_BYTES + stage * L::STAGE_BYTES + L::TILE_BYTES;
#pragma unroll
    for (int kk = 0; kk < KT / 16; kk++) wgmma_rs_tb<T>(o, pf[kk], desc_mnmajor(vBase + kk * 16 * 128, KT * 128));
  };
  // V of tile j has landed; rows past the context zeroed.
  auto wait_v = [&](int j) {
    mbar_wait(&vFull[j % STAGES], (j / STAGES) & 1);
    const int from = ctx - (jLo + j) * KT;
    if (from < KT) zero_v_tail(j % STAGES, from);
  };
  // Online softmax of S_j, first part: mask, row max, l rescaled, S = exp2(S - max) and summed
  // into l. Touches neither O nor P: with OVERLAP it runs while the previous tile's PV does.
  float alphaA = 1.f, alphaB = 1.f;
  auto scores = [&](int j) {
    const int key0 = (jLo + j) * KT;
    const bool whole = key0 + KT <= ctx && (!p.causal || key0 + KT - 1 <= posA) && (p.window <= 0 || key0 > posB - p.window);
    float mxA = -INFINITY, mxB = -INFINITY;
#pragma unroll
    for (int i = 0; i < 64; i++) {
      float v = s[i] * scaleLog2;
      if (!whole) {
        const int key = key0 + 8 * (i / 4) + 2 * t4 + (i & 1);
        const int pos = (i & 2) ? posB : posA;
        const bool ok = key < ctx && (!p.causal || key <= pos) && (p.window <= 0 || key > pos - p.window);
        v = ok ? v : -INFINITY;
      }
      s[i] = v;
      if (i & 2) mxB = fmaxf(mxB, v);
      else mxA = fmaxf(mxA, v);
    }
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, o2));
      mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, o2));
    }
    const float newA = fmaxf(mA, mxA), newB = fmaxf(mB, mxB);
    const float baseA = newA == -INFINITY ? 0.f : newA, baseB = newB == -INFINITY ? 0.f : newB;
    alphaA = exp2f(mA - baseA);
    alphaB = exp2f(mB - baseB);
    mA = newA;
    mB = newB;
    lA *= alphaA;
    lB *= alphaB;
#pragma unroll
    for (int i = 0; i < 64; i++) {
      s[i] = exp2f(s[i] - ((i & 2) ? baseB : baseA));
      if (i & 2) lB += s[i];
      else lA += s[i];
    }
  };
  // Second part, once the previous PV has completed: O rescaled, P packed as the next PV's A
  // operand (k-step kk, tokens 16kk..16kk+15, is accumulator elements 8kk..8kk+7 in pairs).
  auto finish = [&]() {
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] *= (i & 2) ? alphaB : alphaA;
#pragma unroll
    for (int kk = 0; kk < KT / 16; kk++)
#pragma unroll
      for (int r = 0; r < 4; r++) pf[kk][r] = ts::pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
  };

  // Tile 0: S_0 alone. Tiles 1..n-1: S_j and O += P_{j-1} V_{j-1} as one group. Then the last PV.
  // Every group is issued in this consumer's turn (named barrier 3 + cw), and the turn passed on
  // right after; consumer 1 does not pass it after its last group, so each sync meets one arrive.
  mbar_wait(&kFull[0], 0);
  named_sync(3 + cw, 256);
  wgmma_fence();
  issue_qk(0);
  wgmma_commit();
  named_arrive(4 - cw, 256);
  wgmma_wait<0>();
  fence_regs(s);
  mbar_arrive(&kEmpty[0]);  // K_0 is no longer read
  scores(0);
  finish();
  for (int j = 1; j < nTiles; j++) {
    const int st = j % STAGES, prevSt = (j - 1) % STAGES;
    mbar_wait(&kFull[st], (j / STAGES) & 1);
    wait_v(j - 1);
    named_sync(3 + cw, 256);
    fence_regs(o);
    fence_regs(pf);
    wgmma_fence();
    issue_qk(st);
    if constexpr (OVERLAP) wgmma_commit();  // S_j as a group of its own, completing first
    issue_pv(prevSt);
    wgmma_commit();
    named_arrive(4 - cw, 256);
    if constexpr (OVERLAP) {
      // S_j is ready while O += P_{j-1} V_{j-1} still runs: its softmax overlaps that GEMM.
      wgmma_wait<1>();
      fence_regs(s);
      mbar_arrive(&kEmpty[st]);  // K_j is no longer read
      scores(j);
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(pf);
      mbar_arrive(&vEmpty[prevSt]);  // nor V_{j-1}
    } else {
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(s);
      mbar_arrive(&kEmpty[st]);
      mbar_arrive(&vEmpty[prevSt]);
      scores(j);
    }
    finish();
  }
  wait_v(nTiles - 1);
  named_sync(3 + cw, 256);
  fence_regs(o);
  fence_regs(pf);
  wgmma_fence();
  issue_pv((nTiles - 1) % STAGES);
  wgmma_commit();
  if (cw == 0) named_arrive(4, 256);
  wgmma_wait<0>();
  fence_regs(o);
  mbar_arrive(&vEmpty[(nTiles - 1) % STAGES]);

#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    lA += __shfl_xor_sync(0xffffffffu, lA, o2);
    lB += __shfl_xor_sync(0xffffffffu, lB, o2);
  }
  const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
  // Fragment element 4i + e: column 8i + 2 t4 (+1 for odd e), row A for e < 2, row B otherwise.
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int r = half ? rB : rA;
    if (r >= rows) continue;
    const float inv = half ? invB : invA;
    T* dst = p.out + (size_t)(q0 + r / G) * rowStride + (size_t)(kvh * G + r % G) * HD + 2 * t4;
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
      *reinterpret_cast<ts::pair_t<T>*>(dst + 8 * i) = ts::pair_from_f32<T>(o[4 * i + 2 * half] * inv, o[4 * i + 2 * half + 1] * inv);
  }
}

#endif  // sm_90a

}  // namespace ts_attn90

// One entry per (rung, head dim, storage type T: _bf16 or _f16). Parameters, in order
// (ops/attention.ts: ATTENTION_SM90_PARAMS). Built for every architecture (one fatbin); only the
// sm_90a code has a body: elsewhere the launcher never picks it and the entry traps.
#define TS_ATTN_SM90_ENTRY(NAME, T, HD, OVERLAP)                                                                                \
  extern "C" __global__ void __launch_bounds__(ts_attn90::THREADS, 1)                                                      \
      NAME(const __grid_constant__ CUtensorMap tmKV, /* cache viewed {hd, KV, 2 N bs}: box {64, 1, min(bs, 128)}, 128B swizzle */ \
           T* __restrict__ out, const T* __restrict__ q, const int* __restrict__ queryStart,                                \
           const int* __restrict__ contextLens, const int* __restrict__ blockTables, int numHeads, int numKvHeads,           \
           int blockSizeLog2, int blockTableWidth, int vOffset, float scale, int window, int causal) {                      \
    ts::pdl_enter();                                                                                                         \
    TS_ATTN_SM90_BODY(T, HD, OVERLAP)                                                                                        \
  }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TS_ATTN_SM90_BODY(T, HD, OVERLAP)                                                                                       \
  ts_attn90::prefill<HD, OVERLAP>(tmKV, ts_attn90::Params<T>{out, q, queryStart, contextLens, blockTables, numHeads, numKvHeads, \
                                                             blockSizeLog2, blockTableWidth, vOffset, scale, window, causal});
#else
#define TS_ATTN_SM90_BODY(T, HD, OVERLAP) __trap();
#endif
#define TS_ATTN_SM90_ENTRIES(NAME, HD, OVERLAP)         \
  TS_ATTN_SM90_ENTRY(NAME##_bf16, ts::bf16, HD, OVERLAP) \
  TS_ATTN_SM90_ENTRY(NAME##_f16, ts::f16, HD, OVERLAP)

TS_ATTN_SM90_ENTRIES(ts_attention_prefill_sm90_hd64, 64, false)
TS_ATTN_SM90_ENTRIES(ts_attention_prefill_sm90_hd128, 128, false)
TS_ATTN_SM90_ENTRIES(ts_attention_prefill_sm90o_hd64, 64, true)
TS_ATTN_SM90_ENTRIES(ts_attention_prefill_sm90o_hd128, 128, true)

#undef TS_ATTN_SM90_ENTRY
#undef TS_ATTN_SM90_ENTRIES
#undef TS_ATTN_SM90_BODY
