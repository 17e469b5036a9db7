// GEMV path of the `matmul` and `matmul_add` ops for decode: y[R, N] = x[R, K] · w[N, K]^T
// (+ bias[N]) (+ res[R, N]) for R <= 8,
// bf16 or fp16 operands (T), f32 accumulation, y T or f32. Same operands and layout as kernels/gemm.cu.
//
// Why a second kernel: at R <= 8 the product is a stream of the weights (2 N K bytes) with a few
// FLOPs per byte, so what counts is keeping enough loads in flight to run HBM at full rate, not
// the tensor cores. The tile kernel's 16-row tiles waste 15/16 of their mma work at R = 1 and need
// split-K (a second launch and a pass over f32 partials) to put enough blocks on the SMs; here
// every block owns 4 rows of w outright and its 8 warps split K among themselves.
//
//   x:    [R, K] T row-major; R <= MAXR (the entry's r1, r2, r4 or r8), K % 8 == 0
//   w:    [N, K] T (nn.Linear layout)
//   bias: [N] T or null
//   res:  [R, N] T or null, added before the store; may be y (read and written by one thread)
//   y:    [R, N] T or f32; with glu (an activation code, not GLU_NONE: the `matmul_glu` op) w's rows
//         are (gate, up) pairs, N is even, res null and y is [R, N / 2], y[r, j] = act(gate) * up
//         (common.cuh ts::glu): a block's 4 rows are two whole pairs
//   rope_*: the `matmul_rope_kv` op (rope.cuh RopeKv; rope_cache null: off): y [R, q_cols] T, k
//         and v into the cache; the pair threads of glu, each through ts::rope_kv_pair
//   rms_eps: >= 0 for an RMS norm of x folded in (the `rmsEps` attr: the norm's weight is already
//         in w's columns): y = rstd[r] * (x w^T)[r, n] (+ bias), rstd[r] = 1 / sqrt(mean_k x[r, k]^2
//         + eps), the sum of squares from the x elements each lane's steps read (again, from L1,
//         after the loop: in the loop it cost the loads' registers); < 0: none
// Every pointer 16-byte aligned (the launcher checks).
//
// Block: 256 threads (8 warps) for ROWS = 4 consecutive rows of w, n0 = 4 blockIdx.x. K is cut
// into steps of 256 elements (32 lanes x 8 values = one 512-byte run of a row); warp v takes steps
// v, v + 8, ..., so the 8 warps read 4 KiB of each row side by side. Per step a lane loads 16
// bytes of each of the 4 rows (streaming loads: w is read once) and 16 bytes of each of the R
// rows of x (read-only path: x is small and every block reads it, so it stays in L1/L2), and
// accumulates R x 4 dot products in f32. Two steps go together so 8 independent 16-byte weight
// loads per lane, 32 KiB per block, are in flight before the first FMA. Then each warp reduces its
// lanes with shuffles, the 8 warps' partials meet in shared memory, and R x 4 threads add the
// bias and the residual and store. Rows past R or N read the last valid row (in bounds) and are never stored.
//
// Bytes: 2 N K (w) + 2 R K per block from L2 (x) + R N (2 | 4) (y). FLOPs: 2 R N K.
// Grid: ceil(N / 4) blocks: 1024 for N = 4096, 32,064 for Llama-3's lm_head.
#include "rope.cuh"

namespace ts_gemv {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int ROWS = 4;    // rows of w per block
constexpr int STEP = 256;  // K elements a warp covers per step

template <class T>
TS_DEVICE ts::vec8<T> load_stream(const T* p) {
  // Streaming (evict-first) load: each weight is read once per product.
  const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
  return *reinterpret_cast<const ts::vec8<T>*>(&v);
}

template <class T>
TS_DEVICE ts::vec8<T> load_cached(const T* p) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  return *reinterpret_cast<const ts::vec8<T>*>(&v);
}

TS_DEVICE void store(ts::bf16* p, float v) { *p = ts::from_f32<ts::bf16>(v); }
TS_DEVICE void store(ts::f16* p, float v) { *p = ts::from_f32<ts::f16>(v); }
TS_DEVICE void store(float* p, float v) { *p = v; }

template <int MAXR, class T, typename OUT_T>
__device__ __forceinline__ void gemv_block(OUT_T* y, const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ bias, const T* res, int R, int N, int K, int glu, float rms_eps,
                                           const ts::RopeKv<T>& rk) {
  // The warps' partial dot products, then (folded norm) their partial sums of x^2 per row.
  __shared__ float part[WARPS][MAXR * ROWS + MAXR];
  const bool rms = rms_eps >= 0.f;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = blockIdx.x * ROWS;
  // Rows of w past N read row N - 1 instead (in bounds, never stored): no branch in the loads.
  const T* wrow[ROWS];
#pragma unroll
  for (int j = 0; j < ROWS; j++) wrow[j] = w + (size_t)min(n0 + j, N - 1) * K;

  // While the kernel before this one ends (programmatic dependent launch, common.cuh): the lines
  // of this warp's first two steps of each row into L2, one prefetch per 128-byte line (lanes 0,
  // 8, 16, 24). A prefetch reads no value, so it may come before the wait; x, the output of the
  // kernel before, is read only after it.
  if ((lane & 7) == 0) {
#pragma unroll
    for (int t = 0; t < 2; t++) {
      const int k = (warp + t * WARPS) * STEP + lane * 8;
      if (k < K)
#pragma unroll
        for (int j = 0; j < ROWS; j++) ts::prefetch_l2(wrow[j] + k);
    }
  }
  ts::pdl_enter();

  float acc[MAXR][ROWS], ssq[MAXR];
#pragma unroll
  for (int r = 0; r < MAXR; r++) {
    ssq[r] = 0.f;
#pragma unroll
    for (int j = 0; j < ROWS; j++) acc[r][j] = 0.f;
  }

  // Rows of x past R read row R - 1 instead (never stored): the loop has no branch on R.
  const T* xrow[MAXR];
#pragma unroll
  for (int r = 0; r < MAXR; r++) xrow[r] = x + (size_t)min(r, R - 1) * K;

  // One step: a lane's 8 elements of each row of w against the same 8 of each row of x.
  auto fma_step = [&](const float (&wf)[ROWS][8], int k) {
#pragma unroll
    for (int r = 0; r < MAXR; r++) {
      float xf[8];
      ts::unpack(load_cached(xrow[r] + k), xf);
#pragma unroll
      for (int j = 0; j < ROWS; j++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[r][j] = fmaf(xf[e], wf[j][e], acc[r][j]);
    }
  };

  // Steps whose 256 elements are all inside K, two per iteration: the 8 weight loads of both
  // are issued before the first FMA, so each lane has 128 bytes in flight.
  const int full = K / STEP;
  int s = warp;
  for (; s + WARPS < full; s += 2 * WARPS) {
    const int k0 = s * STEP + lane * 8, k1 = k0 + WARPS * STEP;
    ts::vec8<T> w0[ROWS], w1[ROWS];
#pragma unroll
    for (int j = 0; j < ROWS; j++) w0[j] = load_stream(wrow[j] + k0);
#pragma unroll
    for (int j = 0; j < ROWS; j++) w1[j] = load_stream(wrow[j] + k1);
    float wf[ROWS][8];
#pragma unroll
    for (int j = 0; j < ROWS; j++) ts::unpack(w0[j], wf[j]);
    fma_step(wf, k0);
#pragma unroll
    for (int j = 0; j < ROWS; j++) ts::unpack(w1[j], wf[j]);
    fma_step(wf, k1);
  }
  // The rest (at most one full step per warp, and the ragged last step): lanes past K idle.
  for (; s * STEP < K; s += WARPS) {
    const int k = s * STEP + lane * 8;
    if (k < K) {  // K % 8 == 0: a lane's 8 elements are all in or all out
      float wf[ROWS][8];
#pragma unroll
      for (int j = 0; j < ROWS; j++) ts::unpack(load_stream(wrow[j] + k), wf[j]);
      fma_step(wf, k);
    }
  }

  // The folded norm's sums of squares: each lane's own x elements again, the ones its steps read
  // (from L1: just loaded). Apart from the loop above, which keeps its registers for the loads
  // in flight.
  if (rms)
    for (int t = warp; t * STEP < K; t += WARPS) {
      const int k = t * STEP + lane * 8;
      if (k < K)
#pragma unroll
        for (int r = 0; r < MAXR; r++) {
          float xf[8];
          ts::unpack(load_cached(xrow[r] + k), xf);
#pragma unroll
          for (int e = 0; e < 8; e++) ssq[r] = fmaf(xf[e], xf[e], ssq[r]);
        }
    }

#pragma unroll
  for (int r = 0; r < MAXR; r++)
#pragma unroll
    for (int j = 0; j < ROWS; j++) {
      const float v = ts::warp_sum(acc[r][j]);
      if (lane == 0) part[warp][r * ROWS + j] = v;
    }
  if (rms)
#pragma unroll
    for (int r = 0; r < MAXR; r++) {
      const float v = ts::warp_sum(ssq[r]);
      if (lane == 0) part[warp][MAXR * ROWS + r] = v;
    }
  __syncthreads();
  // Row r's folded norm scale (1 without one): every warp's share of its sum of squares.
  auto row_scale = [&](int r) {
    if (!rms) return 1.f;
    float ss = 0.f;
#pragma unroll
    for (int v = 0; v < WARPS; v++) ss += part[v][MAXR * ROWS + r];
    return rsqrtf((K > 0 ? ss / K : 0.f) + rms_eps);
  };
  if (glu != ts::GLU_NONE || rk.cache != nullptr) {
    // A thread per (row of x, pair of w's rows): n0 is a multiple of 4 and N is even, so a pair
    // that starts inside N ends there.
    if (threadIdx.x < MAXR * ROWS / 2) {
      const int r = threadIdx.x / (ROWS / 2), j = 2 * (threadIdx.x % (ROWS / 2)), n = n0 + j;
      if (r < R && n < N) {
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int v = 0; v < WARPS; v++) {
          s0 += part[v][r * ROWS + j];
          s1 += part[v][r * ROWS + j + 1];
        }
        const float scale = row_scale(r);
        s0 *= scale;
        s1 *= scale;
        if (bias) {
          s0 += ts::to_f32(bias[n]);
          s1 += ts::to_f32(bias[n + 1]);
        }
        if constexpr (std::is_same<OUT_T, T>::value) {
          if (rk.cache != nullptr) {
            ts::rope_kv_pair(rk, y, N, r, n, s0, s1);
            return;
          }
        }
        store(y + (size_t)r * (N / 2) + n / 2, ts::glu(glu, s0, s1));
      }
    }
    return;
  }
  if (threadIdx.x < MAXR * ROWS) {
    const int r = threadIdx.x / ROWS, j = threadIdx.x % ROWS, n = n0 + j;
    if (r < R && n < N) {
      float sum = 0.f;
#pragma unroll
      for (int v = 0; v < WARPS; v++) sum += part[v][threadIdx.x];
      sum *= row_scale(r);
      if (bias) sum += ts::to_f32(bias[n]);
      if (res) sum += ts::to_f32(res[(size_t)r * N + n]);
      store(y + (size_t)r * N + n, sum);
    }
  }
}

}  // namespace ts_gemv

// One entry per (largest R, storage type T, y dtype): ts_gemv_r<MAXR>_<T>, y T, and
// ts_gemv_r<MAXR>_<T>_f32, y f32. Parameters, in order (ops/gemm.ts: GEMV_PARAMS):
#define TS_GEMV_ENTRY(NAME, MAXR, T, OUT_T)                                                                   \
  extern "C" __global__ void __launch_bounds__(ts_gemv::THREADS)                                            \
      NAME(OUT_T* y,                    /* [R, N], may be res */                                            \
           const T* __restrict__ x,     /* [R, K], R <= MAXR */                                             \
           const T* __restrict__ w,     /* [N, K] */                                                        \
           const T* __restrict__ bias,  /* [N], or null */                                                  \
           const T* res,                /* [R, N] added before the store, or null */                        \
           int R, int N, int K,                                                                             \
           int glu,      /* GLU_NONE, or the gated unit's activation: y [R, N / 2] */                       \
           float rms_eps, /* >= 0: x's rows' RMS norm folded in, the scale computed here; < 0: none */      \
           TS_ROPE_KV_PARAMS(T)) {                                                                          \
    ts_gemv::gemv_block<MAXR, T, OUT_T>(y, x, w, bias, res, R, N, K, glu, rms_eps, TS_ROPE_KV_ARGS(T));     \
  }
#define TS_GEMV_ENTRIES(MAXR)                                                  \
  TS_GEMV_ENTRY(ts_gemv_r##MAXR##_bf16, MAXR, ts::bf16, ts::bf16)              \
  TS_GEMV_ENTRY(ts_gemv_r##MAXR##_bf16_f32, MAXR, ts::bf16, float)             \
  TS_GEMV_ENTRY(ts_gemv_r##MAXR##_f16, MAXR, ts::f16, ts::f16)                 \
  TS_GEMV_ENTRY(ts_gemv_r##MAXR##_f16_f32, MAXR, ts::f16, float)

TS_GEMV_ENTRIES(1)
TS_GEMV_ENTRIES(2)
TS_GEMV_ENTRIES(4)
TS_GEMV_ENTRIES(8)

#undef TS_GEMV_ENTRY
#undef TS_GEMV_ENTRIES
