// Paged attention: out = softmax(q k^T * scale) v over the paged KV cache; causal by absolute
// position, GQA, optional sliding window, variable query and context lengths per sequence.
//
// Shapes (T query rows, B sequences, H heads, KV kv heads, G = H / KV, hd = headDim, N cache
// blocks of bs tokens, S splits):
//   q           [T, H*hd] T             out       [T, H*hd] T   (T: bf16 or fp16, the entry's suffix)
//   cache       [2, N, bs, KV, hd] T (k half, then v half at N*bs*KV*hd elements)
//   queryStart  [B+1] i32   contextLens [B] i32   blockTables [B, W] i32
//   partO       [S, T, H, hd] f32       partML    [S, T, H] float2 (max in log2 units, sum)
// Sequence b owns rows queryStart[b] .. queryStart[b+1]; row i of b sits at position
// p = contextLens[b] - qLen + i and attends to max(0, p - window + 1) .. p (window <= 0: no
// window), or to the whole context when causal is 0 (encoder-style); head h reads kv head h / G.
//
// Work decomposition (both regimes run one template, attention_body):
//   A block owns (one sequence, one kv head, a tile of BM "packed rows", one KV split). Packed
//   row r of a sequence is (query token r / G, head kvHead * G + r % G): the G query heads of a
//   kv-head group share every K/V tile the block loads (GQA packing, as in FlashInfer).
//   K/V tiles of KT tokens are gathered through the block table with cp.async (16-byte
//   chunks, zero-filled past the range) into padded shared memory; QK^T and PV run on tensor
//   cores (mma.sync m16n8k16 T -> f32, operands by ldmatrix), online softmax in f32 (exp2
//   domain), masking by absolute position. K of tile j+1 loads during PV of tile j and V of
//   tile j during QK^T of tile j (FlashAttention-2's single-buffer overlap).
//   Warps are laid out WM x WN: WM warps split the packed rows (16 each), WN warps split each
//   K/V tile (KW tokens each) and keep their own softmax state, merged in shared memory at
//   the end.
//
// Variants (extern "C" entries; hd is a runtime multiple of 8 up to the bucket, the bucket
// being the smallest of 16, 32, 64, 128, 256 that holds it):
//   ts_attention_prefill_hd{16,32,64,128}_T: WM=4 WN=1, BM=64 rows, KT=64 tokens, 128 threads,
//     Q fragments in registers. Prefill and mixed steps; grid (ceil(maxQueryLen*G/BM), KV, B),
//     numSplits = 1: writes out directly. Blocks past their sequence's rows exit.
//   ts_attention_prefill_hd256_T: WM=2 WN=1, BM=32, KT=16, 64 threads, Q read from shared
//     memory each tile (to stay within 48 KiB and without spills).
//   ts_attention_decode_hd{16,32,64,128}_T: WM=1 WN=4, BM=16 (the G heads of one token),
//     KT=64 (16 per warp), 128 threads, Q in registers.
//   ts_attention_decode_hd256_T: WM=1 WN=2, BM=16, KT=32, 64 threads, Q in shared memory.
//     Decode steps (every qLen = 1); grid (ceil(G/16) * S, KV, B), blockIdx.x = mTile * S + split.
//     With S > 1 each split covers splitLen tokens of the sequence's range (the last one runs
//     to its end) and writes its unnormalised f32 accumulator, running max and sum to partO /
//     partML; with `counters` the last split of each (sequence, kv head, row tile) to finish
//     merges the S partials of its rows (the combine fused: one launch), else
//     ts_attention_combine_T merges them in a second launch.
//   ts_attention_combine_T: one warp per (sequence, head), looping over the sequence's rows (the
//     unfused rung, kept runnable: attrs.attentionCombine 'separate').
//   Scratch for S > 1: S * T * H * (hd + 2) * 4 bytes (partO, then partML).
// All shared memory is static and at most 48 KiB (no cuFuncSetAttribute needed).
//
// Bytes: 2*T*H*hd (q) + 2*T*H*hd (out) + 4*hd per (kv head, token in range) per block that
//   reads it (prefill: each of ceil(qLen*G/BM) row tiles re-reads its range; decode: once),
//   + with S > 1, 2 * 4 * S*T*H*(hd+2) (partials written and read back).
// FLOPs: 4*hd per (row, head, attended key) (QK^T and PV), plus masked work on diagonal tiles.
#include "mma.cuh"

namespace ts_attn {

constexpr unsigned FULL = 0xffffffffu;
constexpr float LOG2E = 1.4426950408889634f;

using ts::smem_u32;
using namespace ts::mma;

template <int HD, int WM, int WN, int KW, bool QREG>
struct Config {
  static_assert(HD % 16 == 0 && HD >= 16 && HD <= 256, "head-dim bucket");
  static_assert(KW % 16 == 0, "tokens per warp: a multiple of 16");
  static constexpr int BM = 16 * WM;       // packed rows per block
  static constexpr int KT = KW * WN;       // tokens per K/V tile
  static constexpr int NT = 32 * WM * WN;  // threads
  static constexpr int LD = HD + 8;        // 16-bit row stride in shared memory (16-byte pad: no ldmatrix conflicts)
  static constexpr int HDC = HD / 8;       // 16-byte chunks per row
  static constexpr int OLD = HD + 4;       // f32 row stride of the epilogue's accumulator
  static_assert(NT % HDC == 0, "the loaders give each thread one fixed chunk column");
  // Main loop: K tile, V tile, and Q (staged in the V tile when it fits, before the loop;
  // ahead of K and V otherwise; its own region when read from shared memory every tile).
  static constexpr int MAIN_ELEMS = QREG ? (BM <= KT ? 2 * KT * LD : (2 * KT > BM ? 2 * KT : BM) * LD) : (2 * KT + BM) * LD;
  static constexpr int MAIN_BYTES = 2 * MAIN_ELEMS;
  // Epilogue (reuses the same memory): f32 accumulator [BM][OLD], per-warp (max, sum) [WN][BM],
  // merged (max, sum) [BM].
  static constexpr int EPI_BYTES = 4 * (BM * OLD + 2 * WN * BM + 2 * BM);
  static constexpr int SMEM_BYTES = MAIN_BYTES > EPI_BYTES ? MAIN_BYTES : EPI_BYTES;
  static_assert(SMEM_BYTES <= 48 * 1024, "static shared memory is limited to 48 KiB");
};

// The merge of split-KV's partials for one (token, head) row th and its 8 columns from 8c, the
// splits whose m is -inf (no key) left out: acc = sum_s exp2(m_s - M) partO[s, th, 8c ..), in
// split order. Both the fused merge (attention_body) and ts_attention_combine_T use it. CG: read
// past L1, for the fused merge, which reads what other SMs wrote in the same launch; the
// standalone combine runs a launch later and reads plainly (ld.global.cg there made ptxas spill
// on sm_89).
template <bool CG>
TS_DEVICE void merge_columns(float (&acc)[8], const float* __restrict__ part_o, const float2* __restrict__ part_ml, int64_t split_stride,
                             int64_t th, int hd, int c, float M, int num_splits) {
#pragma unroll
  for (int i = 0; i < 8; i++) acc[i] = 0.f;
  for (int s = 0; s < num_splits; s++) {
    const float2 ml = CG ? __ldcg(part_ml + s * split_stride + th) : part_ml[s * split_stride + th];
    if (ml.x == -INFINITY) continue;
    const float w = exp2f(ml.x - M);
    const float4* src = reinterpret_cast<const float4*>(part_o + (s * split_stride + th) * hd + c * 8);
    const float4 x0 = CG ? __ldcg(src) : src[0], x1 = CG ? __ldcg(src + 1) : src[1];
    acc[0] += w * x0.x, acc[1] += w * x0.y, acc[2] += w * x0.z, acc[3] += w * x0.w;
    acc[4] += w * x1.x, acc[5] += w * x1.y, acc[6] += w * x1.z, acc[7] += w * x1.w;
  }
}

// SPLITS: the decode entries, which may split the context and then merge the splits (the prefill
// entries never do; leaving the merge out of them keeps their registers as they were).
template <int HD, int WM, int WN, int KW, bool QREG, bool SPLITS, class T>
TS_DEVICE void attention_body(T* __restrict__ out, float* __restrict__ part_o, float2* __restrict__ part_ml, int* __restrict__ counters,
                              const T* __restrict__ q, const T* __restrict__ cache,
                              const int32_t* __restrict__ query_start, const int32_t* __restrict__ context_lens,
                              const int32_t* __restrict__ block_tables, int num_tokens, int num_heads, int num_kv_heads,
                              int head_dim, int num_cache_blocks, int block_size_log2, int block_table_width, float scale,
                              int window, int num_splits, int split_len, int causal) {
  using C = Config<HD, WM, WN, KW, QREG>;
  constexpr int BM = C::BM, KT = C::KT, NT = C::NT, LD = C::LD, HDC = C::HDC, OLD = C::OLD;
  constexpr int RS = NT / HDC;  // rows a loader pass covers
  __shared__ __align__(16) unsigned char smem[C::SMEM_BYTES];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const int g = lane >> 2, t4 = lane & 3;  // mma fragment coordinates: row group, thread in group

  const int b = blockIdx.z, kvh = blockIdx.y;
  const int split = blockIdx.x % num_splits, m_tile = blockIdx.x / num_splits;
  const int q_begin = query_start[b];
  const int q_len = query_start[b + 1] - q_begin;
  const int ctx = context_lens[b];
  const int G = num_heads / num_kv_heads;
  const int rows = q_len * G;
  const int row_base = m_tile * BM;
  if (row_base >= rows) return;  // whole block: past this sequence's rows
  const int row_end = min(row_base + BM, rows);

  // The block's key range: the union of its rows' ranges, then this split's part of it.
  const int pos0 = ctx - q_len;  // position of the sequence's first query token
  const int p_first = pos0 + row_base / G, p_last = pos0 + (row_end - 1) / G;
  const int kv_lo = window > 0 ? max(0, p_first - window + 1) : 0;
  const int kv_hi = causal ? p_last + 1 : ctx;
  int kv_begin = kv_lo, kv_end = kv_hi;
  if (num_splits > 1) {
    kv_begin = kv_lo + split * split_len;
    if (split < num_splits - 1) kv_end = min(kv_hi, kv_begin + split_len);
  }
  const int num_tiles = kv_end > kv_begin ? (kv_end - kv_begin + KT - 1) / KT : 0;

  // This thread's two fragment rows (g and g + 8 of its warp's 16): keys [lo, hi).
  int lo0, hi0, lo1, hi1;
  {
    const int ra = row_base + 16 * wm + g, rb = ra + 8;
    const int pa = pos0 + ra / G, pb = pos0 + rb / G;
    lo0 = max(kv_begin, window > 0 ? pa - window + 1 : 0);
    lo1 = max(kv_begin, window > 0 ? pb - window + 1 : 0);
    hi0 = min(causal ? pa + 1 : ctx, kv_end);
    hi1 = min(causal ? pb + 1 : ctx, kv_end);
  }

  const int hd = head_dim, hdc = hd >> 3;
  const int ch_pad = ((hd + 15) >> 4) << 1;  // chunks up to the next multiple of 16 dims (zero-filled past hd)
  const int64_t slot_stride = static_cast<int64_t>(num_kv_heads) * hd;
  const int64_t q_stride = static_cast<int64_t>(num_heads) * hd;
  const T* k_base = cache + static_cast<int64_t>(kvh) * hd;
  const T* v_base = k_base + (static_cast<int64_t>(num_cache_blocks) << block_size_log2) * slot_stride;
  const int32_t* table = block_tables + static_cast<int64_t>(b) * block_table_width;
  const int bs_mask = (1 << block_size_log2) - 1;

  T* const ks_tile = reinterpret_cast<T*>(smem);
  T* const vs_tile = ks_tile + KT * LD;
  T* const qs_tile = QREG ? (BM <= KT ? vs_tile : ks_tile) : ks_tile + 2 * KT * LD;

  // Loaders: thread tid copies chunk column ld_c of rows ld_r, ld_r + RS, ...
  const int ld_c = tid % HDC, ld_r = tid / HDC;
  auto load_kv = [&](T* dst, const T* base, int j0) {
    if (ld_c >= ch_pad) return;
#pragma unroll
    for (int k = 0; k < (KT + RS - 1) / RS; k++) {
      const int lr = ld_r + k * RS;
      if (lr >= KT) break;
      const int j = j0 + lr;
      const T* src = base;
      int bytes = 0;
      if (j < kv_end && ld_c < hdc) {
        const int bi = j >> block_size_log2;
        if (bi < block_table_width) {
          const int blk = table[bi];
          if (static_cast<unsigned>(blk) < static_cast<unsigned>(num_cache_blocks)) {
            const int64_t slot = (static_cast<int64_t>(blk) << block_size_log2) + (j & bs_mask);
            src = base + slot * slot_stride + ld_c * 8;
            bytes = 16;
          }
        }
      }
      cp_async16(smem_u32(dst + lr * LD + ld_c * 8), src, bytes);
    }
  };
  auto load_q = [&](T* dst) {
    if (ld_c >= ch_pad) return;
#pragma unroll
    for (int k = 0; k < (BM + RS - 1) / RS; k++) {
      const int lr = ld_r + k * RS;
      if (lr >= BM) break;
      const int r = row_base + lr;
      const T* src = q;
      int bytes = 0;
      if (r < row_end && ld_c < hdc) {
        const int i = r / G, h = kvh * G + r % G;
        src = q + (q_begin + i) * q_stride + h * hd + ld_c * 8;
        bytes = 16;
      }
      cp_async16(smem_u32(dst + lr * LD + ld_c * 8), src, bytes);
    }
  };
  // A fragment of Q for dims [16 ks, 16 ks + 16) of this warp's rows.
  auto q_frag = [&](int ks, uint32_t (&a)[4]) {
    const int row = 16 * wm + (lane & 7) + ((lane >> 3) & 1) * 8, col = ks * 16 + (lane >> 4) * 8;
    ldsm_x4(smem_u32(qs_tile + row * LD + col), a[0], a[1], a[2], a[3]);
  };

  uint32_t qf[QREG ? HD / 16 : 1][4];
#pragma unroll
  for (int i = 0; i < (QREG ? HD / 16 : 1); i++) qf[i][0] = qf[i][1] = qf[i][2] = qf[i][3] = 0u;

  if constexpr (QREG && BM > KT) {
    load_q(qs_tile);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++)
      if (ks * 16 < hd) q_frag(ks, qf[ks]);
    __syncthreads();  // Q's staging area becomes K/V
    if (num_tiles > 0) load_kv(ks_tile, k_base, kv_begin);
    cp_async_commit();
  } else {
    load_q(qs_tile);
    if (num_tiles > 0) load_kv(ks_tile, k_base, kv_begin);
    cp_async_commit();
    if constexpr (QREG) {
      cp_async_wait<0>();
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < HD / 16; ks++)
        if (ks * 16 < hd) q_frag(ks, qf[ks]);
      // The first loop iteration's barrier precedes any V load over the staged Q.
    }
  }

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY;  // running max of scaled scores, log2 units (rows g, g + 8)
  float l0 = 0.f, l1 = 0.f;              // running sums (this thread's columns; quad-reduced at the end)
  const float scale_log2 = scale * LOG2E;

  for (int tile = 0; tile < num_tiles; tile++) {
    const int j0 = kv_begin + tile * KT;
    cp_async_wait<0>();
    __syncthreads();  // K(tile) visible; every warp done with V(tile - 1)
    load_kv(vs_tile, v_base, j0);
    cp_async_commit();

    const int jw0 = j0 + wn * KW, jw1 = jw0 + KW;  // this warp's tokens
    const bool active = __any_sync(FULL, (lo0 < jw1 && hi0 > jw0) || (lo1 < jw1 && hi1 > jw0));
    float s[KW / 8][4];
    if (active) {
#pragma unroll
      for (int i = 0; i < KW / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ks++) {
        if (ks * 16 < hd) {
          uint32_t a[4];
          if constexpr (QREG) {
            a[0] = qf[ks][0], a[1] = qf[ks][1], a[2] = qf[ks][2], a[3] = qf[ks][3];
          } else {
            q_frag(ks, a);
          }
#pragma unroll
          for (int np = 0; np < KW / 16; np++) {
            // Matrices: tokens +0..7 / dims +0..7, tokens +0..7 / dims +8..15, tokens +8..15 / dims
            // +0..7, tokens +8..15 / dims +8..15: B fragments of n-tiles 2np and 2np + 1.
            const int tok = wn * KW + np * 16 + (lane & 7) + ((lane >> 4) << 3);
            const int col = ks * 16 + ((lane >> 3) & 1) * 8;
            uint32_t b0, b1, b2, b3;
            ldsm_x4(smem_u32(ks_tile + tok * LD + col), b0, b1, b2, b3);
            mma<T>(s[2 * np], a, b0, b1);
            mma<T>(s[2 * np + 1], a, b2, b3);
          }
        }
      }
      // Scale, mask, online softmax. Element e of n-tile nt: row g (e < 2) or g + 8, token
      // jw0 + 8 nt + 2 t4 + (e & 1).
      const bool full = __all_sync(FULL, lo0 <= jw0 && hi0 >= jw1 && lo1 <= jw0 && hi1 >= jw1);
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < KW / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float v = s[nt][e] * scale_log2;
          if (!full) {
            const int j = jw0 + nt * 8 + 2 * t4 + (e & 1);
            const bool ok = e < 2 ? (j >= lo0 && j < hi0) : (j >= lo1 && j < hi1);
            v = ok ? v : -INFINITY;
          }
          s[nt][e] = v;
          if (e < 2) mx0 = fmaxf(mx0, v);
          else mx1 = fmaxf(mx1, v);
        }
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(FULL, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(FULL, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(FULL, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(FULL, mx1, 2));
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      // A row with nothing valid yet keeps max -inf: subtract 0 instead (exp2(-inf) = 0).
      const float mu0 = mn0 == -INFINITY ? 0.f : mn0, mu1 = mn1 == -INFINITY ? 0.f : mn1;
      const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1);
      m0 = mn0;
      m1 = mn1;
      float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < KW / 8; nt++) {
        s[nt][0] = exp2f(s[nt][0] - mu0);
        s[nt][1] = exp2f(s[nt][1] - mu0);
        s[nt][2] = exp2f(s[nt][2] - mu1);
        s[nt][3] = exp2f(s[nt][3] - mu1);
        rs0 += s[nt][0] + s[nt][1];
        rs1 += s[nt][2] + s[nt][3];
      }
      l0 = l0 * al0 + rs0;
      l1 = l1 * al1 + rs1;
#pragma unroll
      for (int nt = 0; nt < HD / 8; nt++) {
        o[nt][0] *= al0;
        o[nt][1] *= al0;
        o[nt][2] *= al1;
        o[nt][3] *= al1;
      }
    }

    cp_async_wait<0>();
    __syncthreads();  // V(tile) visible; every warp done with K(tile)
    if (tile + 1 < num_tiles) load_kv(ks_tile, k_base, j0 + KT);
    cp_async_commit();

    if (active) {
#pragma unroll
      for (int kk = 0; kk < KW / 16; kk++) {
        // P's accumulator layout for tokens [16 kk, 16 kk + 16) is the A layout of a k16 step.
        uint32_t a[4];
        a[0] = ts::pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        a[1] = ts::pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        a[2] = ts::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[3] = ts::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
          if (dp * 16 < hd) {
            // Transposed matrices: tokens +0..7 / dims +0..7, tokens +8..15 / dims +0..7,
            // tokens +0..7 / dims +8..15, tokens +8..15 / dims +8..15.
            const int tok = wn * KW + kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            const int col = dp * 16 + (lane >> 4) * 8;
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(smem_u32(vs_tile + tok * LD + col), b0, b1, b2, b3);
            mma<T>(o[2 * dp], a, b0, b1);
            mma<T>(o[2 * dp + 1], a, b2, b3);
          }
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the tiles' memory becomes the epilogue's

  // ---- epilogue: merge the WN warps' states of each row, normalise or write partials ----
  float* const obuf = reinterpret_cast<float*>(smem);
  float2* const warp_ml = reinterpret_cast<float2*>(obuf + BM * OLD);
  float2* const row_ml = warp_ml + WN * BM;
  l0 += __shfl_xor_sync(FULL, l0, 1);
  l0 += __shfl_xor_sync(FULL, l0, 2);
  l1 += __shfl_xor_sync(FULL, l1, 1);
  l1 += __shfl_xor_sync(FULL, l1, 2);
  const int lr0 = 16 * wm + g, lr1 = lr0 + 8;
  float M0 = m0, M1 = m1, L0 = l0, L1 = l1;
  if constexpr (WN > 1) {
    if (t4 == 0) {
      warp_ml[wn * BM + lr0] = make_float2(m0, l0);
      warp_ml[wn * BM + lr1] = make_float2(m1, l1);
    }
    __syncthreads();
    M0 = M1 = -INFINITY;
#pragma unroll
    for (int w = 0; w < WN; w++) {
      M0 = fmaxf(M0, warp_ml[w * BM + lr0].x);
      M1 = fmaxf(M1, warp_ml[w * BM + lr1].x);
    }
    L0 = L1 = 0.f;
#pragma unroll
    for (int w = 0; w < WN; w++) {
      const float2 a = warp_ml[w * BM + lr0], c = warp_ml[w * BM + lr1];
      if (a.x != -INFINITY) L0 += a.y * exp2f(a.x - M0);
      if (c.x != -INFINITY) L1 += c.y * exp2f(c.x - M1);
    }
    const float c0 = m0 == -INFINITY ? 0.f : exp2f(m0 - M0), c1 = m1 == -INFINITY ? 0.f : exp2f(m1 - M1);
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) {
      o[nt][0] *= c0;
      o[nt][1] *= c0;
      o[nt][2] *= c1;
      o[nt][3] *= c1;
    }
  }
#pragma unroll
  for (int w = 0; w < WN; w++) {
    if (wn == w) {
#pragma unroll
      for (int nt = 0; nt < HD / 8; nt++) {
        if (nt * 8 < hd) {
          float2* p0 = reinterpret_cast<float2*>(obuf + lr0 * OLD + nt * 8 + 2 * t4);
          float2* p1 = reinterpret_cast<float2*>(obuf + lr1 * OLD + nt * 8 + 2 * t4);
          if (w == 0) {
            *p0 = make_float2(o[nt][0], o[nt][1]);
            *p1 = make_float2(o[nt][2], o[nt][3]);
          } else {
            float2 x = *p0, y = *p1;
            x.x += o[nt][0], x.y += o[nt][1], y.x += o[nt][2], y.y += o[nt][3];
            *p0 = x;
            *p1 = y;
          }
        }
      }
    }
    if constexpr (WN > 1) __syncthreads();
  }
  if (wn == 0 && t4 == 0) {
    row_ml[lr0] = make_float2(M0, L0);
    row_ml[lr1] = make_float2(M1, L1);
  }
  __syncthreads();

  for (int idx = tid; idx < BM * HDC; idx += NT) {
    const int lr = idx / HDC, c = idx % HDC;
    const int r = row_base + lr;
    if (r >= row_end || c >= hdc) continue;
    const int tok = q_begin + r / G, h = kvh * G + r % G;
    if (tok >= num_tokens) continue;
    const float4 x0 = *reinterpret_cast<const float4*>(obuf + lr * OLD + c * 8);
    const float4 x1 = *reinterpret_cast<const float4*>(obuf + lr * OLD + c * 8 + 4);
    if (num_splits == 1) {
      const float L = row_ml[lr].y, inv = L > 0.f ? 1.f / L : 0.f;
      const float v[8] = {x0.x * inv, x0.y * inv, x0.z * inv, x0.w * inv, x1.x * inv, x1.y * inv, x1.z * inv, x1.w * inv};
      *reinterpret_cast<ts::vec8<T>*>(out + tok * q_stride + h * hd + c * 8) = ts::pack<T>(v);
    } else {
      float4* dst = reinterpret_cast<float4*>(part_o + ((static_cast<int64_t>(split) * num_tokens + tok) * num_heads + h) * hd + c * 8);
      dst[0] = x0;
      dst[1] = x1;
    }
  }
  if (num_splits > 1) {
    for (int lr = tid; lr < BM; lr += NT) {
      const int r = row_base + lr;
      if (r >= row_end) continue;
      const int tok = q_begin + r / G, h = kvh * G + r % G;
      if (tok >= num_tokens) continue;
      part_ml[(static_cast<int64_t>(split) * num_tokens + tok) * num_heads + h] = row_ml[lr];
    }
  }
  if (!SPLITS || num_splits == 1 || counters == nullptr) return;

  // The combine, fused: the last of the S splits of this (sequence, kv head, row tile) to finish
  // merges all of their partials for the block's rows, so a decode step is one launch. Each split
  // makes its partials visible before it arrives (every thread fences, then the block's barrier,
  // then one thread's atomic); the last arrival fences again before reading them, past L1 (other
  // SMs wrote them). The counter goes back to zero for the next launch. The columns are merged as
  // the standalone combine merges them (merge_columns), in split order: the same result whichever
  // split is last.
  __threadfence();
  __syncthreads();  // also: every thread is done with obuf and row_ml, whose memory is reused below
  int* const last_flag = reinterpret_cast<int*>(smem);
  float2* const merged = reinterpret_cast<float2*>(smem + 16);  // [BM]: (max, 1 / sum) of each row
  if (tid == 0) {
    const int counter = (b * num_kv_heads + kvh) * (gridDim.x / num_splits) + m_tile;
    const int last = atomicAdd(&counters[counter], 1) == num_splits - 1;
    if (last) {
      __threadfence();
      counters[counter] = 0;
    }
    *last_flag = last;
  }
  __syncthreads();
  if (!*last_flag) return;
  __threadfence();
  const int64_t split_stride = static_cast<int64_t>(num_tokens) * num_heads;
  for (int lr = tid; lr < BM; lr += NT) {
    const int r = row_base + lr;
    if (r >= row_end) continue;
    const int tok = q_begin + r / G, h = kvh * G + r % G;
    if (tok >= num_tokens) continue;
    const int64_t th = static_cast<int64_t>(tok) * num_heads + h;
    float M = -INFINITY, L = 0.f;
    for (int s = 0; s < num_splits; s++) M = fmaxf(M, __ldcg(part_ml + s * split_stride + th).x);
    for (int s = 0; s < num_splits; s++) {
      const float2 ml = __ldcg(part_ml + s * split_stride + th);
      if (ml.x != -INFINITY) L += ml.y * exp2f(ml.x - M);
    }
    merged[lr] = make_float2(M, L > 0.f ? 1.f / L : 0.f);
  }
  __syncthreads();
  for (int idx = tid; idx < BM * HDC; idx += NT) {
    const int lr = idx / HDC, c = idx % HDC;
    const int r = row_base + lr;
    if (r >= row_end || c >= hdc) continue;
    const int tok = q_begin + r / G, h = kvh * G + r % G;
    if (tok >= num_tokens) continue;
    const int64_t th = static_cast<int64_t>(tok) * num_heads + h;
    const float inv = merged[lr].y;
    float acc[8];
    merge_columns<true>(acc, part_o, part_ml, split_stride, th, hd, c, merged[lr].x, num_splits);
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] *= inv;
    *reinterpret_cast<ts::vec8<T>*>(out + tok * q_stride + h * hd + c * 8) = ts::pack<T>(acc);
  }
}

}  // namespace ts_attn

// Every attention entry has this parameter list (see the header for the shapes); one entry per
// (variant, storage type T): ..._bf16 and ..._f16.
#define TS_ATTENTION_ENTRY(NAME, T, HD, WM, WN, KW, QREG, SPLITS)                                                     \
  extern "C" __global__ void __launch_bounds__(32 * (WM) * (WN)) NAME(                                                 \
      T* __restrict__ out,                         /* [T, H*hd] */                                                     \
      float* __restrict__ part_o,                  /* [S, T, H, hd] f32, S > 1 only */                                 \
      float2* __restrict__ part_ml,                /* [S, T, H] (max log2, sum), S > 1 only */                         \
      int* __restrict__ counters,                  /* S > 1: [B, KV, mTiles] zeros, or null (no fused combine) */      \
      const T* __restrict__ q,                     /* [T, H*hd] */                                                     \
      const T* __restrict__ cache,                 /* [2, N, bs, KV, hd] */                                            \
      const int32_t* __restrict__ query_start,     /* [B+1] */                                                         \
      const int32_t* __restrict__ context_lens,    /* [B] */                                                           \
      const int32_t* __restrict__ block_tables,    /* [B, W] */                                                        \
      int num_tokens, int num_heads, int num_kv_heads, int head_dim, int num_cache_blocks, int block_size_log2,       \
      int block_table_width, float scale, int window, int num_splits, int split_len, int causal) {                    \
    ts::pdl_enter();                                                                                                   \
    ts_attn::attention_body<HD, WM, WN, KW, QREG, SPLITS>(out, part_o, part_ml, counters, q, cache, query_start,       \
                                                          context_lens, block_tables, num_tokens, num_heads,           \
                                                          num_kv_heads, head_dim, num_cache_blocks, block_size_log2,   \
                                                          block_table_width, scale, window, num_splits, split_len,     \
                                                          causal);                                                     \
  }
#define TS_ATTENTION_ENTRIES(NAME, HD, WM, WN, KW, QREG, SPLITS)          \
  TS_ATTENTION_ENTRY(NAME##_bf16, ts::bf16, HD, WM, WN, KW, QREG, SPLITS) \
  TS_ATTENTION_ENTRY(NAME##_f16, ts::f16, HD, WM, WN, KW, QREG, SPLITS)

TS_ATTENTION_ENTRIES(ts_attention_prefill_hd16, 16, 4, 1, 64, true, false)
TS_ATTENTION_ENTRIES(ts_attention_prefill_hd32, 32, 4, 1, 64, true, false)
TS_ATTENTION_ENTRIES(ts_attention_prefill_hd64, 64, 4, 1, 64, true, false)
TS_ATTENTION_ENTRIES(ts_attention_prefill_hd128, 128, 4, 1, 64, true, false)
TS_ATTENTION_ENTRIES(ts_attention_prefill_hd256, 256, 2, 1, 16, false, false)
TS_ATTENTION_ENTRIES(ts_attention_decode_hd16, 16, 1, 4, 16, true, true)
TS_ATTENTION_ENTRIES(ts_attention_decode_hd32, 32, 1, 4, 16, true, true)
TS_ATTENTION_ENTRIES(ts_attention_decode_hd64, 64, 1, 4, 16, true, true)
TS_ATTENTION_ENTRIES(ts_attention_decode_hd128, 128, 1, 4, 16, true, true)
TS_ATTENTION_ENTRIES(ts_attention_decode_hd256, 256, 1, 2, 16, false, true)

#undef TS_ATTENTION_ENTRY
#undef TS_ATTENTION_ENTRIES

// Merges S split partials: out[t, h] = sum_s w_s partO[s, t, h] / sum_s w_s l_s with
// w_s = exp2(m_s - max_s m_s); splits that saw no key (m_s = -inf) are skipped.
// One warp per (sequence, head), 4 warps per block; the warp walks the sequence's rows.
// Bytes: 4*S*T*H*(hd+2) read + 2*T*H*hd written; FLOPs: 2*S*T*H*hd.
namespace ts_attn {
template <class T>
TS_DEVICE void combine(T* __restrict__ out,               // [T, H*hd]
                       const float* __restrict__ part_o,  // [S, T, H, hd]
                       const float2* __restrict__ part_ml,  // [S, T, H]
                       const int32_t* __restrict__ query_start,  // [B+1]
                       int num_seqs, int num_tokens, int num_heads, int head_dim, int num_splits) {
  const int gw = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (gw >= num_seqs * num_heads) return;  // whole warp
  const int b = gw / num_heads, h = gw % num_heads;
  const int t_end = min(query_start[b + 1], num_tokens);
  const int64_t split_stride = static_cast<int64_t>(num_tokens) * num_heads;
  const int hdc = head_dim >> 3;
  for (int tok = query_start[b]; tok < t_end; tok++) {
    const int64_t th = static_cast<int64_t>(tok) * num_heads + h;
    float M = -INFINITY;
    for (int s = lane; s < num_splits; s += 32) M = fmaxf(M, part_ml[s * split_stride + th].x);
    M = ts::warp_max(M);
    float L = 0.f;
    for (int s = lane; s < num_splits; s += 32) {
      const float2 ml = part_ml[s * split_stride + th];
      if (ml.x != -INFINITY) L += ml.y * exp2f(ml.x - M);
    }
    L = ts::warp_sum(L);
    const float inv = L > 0.f ? 1.f / L : 0.f;
    for (int c = lane; c < hdc; c += 32) {
      float acc[8];
      merge_columns<false>(acc, part_o, part_ml, split_stride, th, head_dim, c, M, num_splits);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[i] *= inv;
      *reinterpret_cast<ts::vec8<T>*>(out + th * head_dim + c * 8) = ts::pack<T>(acc);
    }
  }
}
}  // namespace ts_attn

#define TS_COMBINE_ENTRY(T, SUFFIX)                                                                                   \
  extern "C" __global__ void __launch_bounds__(128)                                                                   \
      ts_attention_combine_##SUFFIX(T* __restrict__ out, const float* __restrict__ part_o,                            \
                                    const float2* __restrict__ part_ml, const int32_t* __restrict__ query_start,       \
                                    int num_seqs, int num_tokens, int num_heads, int head_dim, int num_splits) {      \
    ts::pdl_enter();                                                                                                   \
    ts_attn::combine(out, part_o, part_ml, query_start, num_seqs, num_tokens, num_heads, head_dim, num_splits);        \
  }
TS_COMBINE_ENTRY(ts::bf16, bf16)
TS_COMBINE_ENTRY(ts::f16, f16)
#undef TS_COMBINE_ENTRY
