// Row normalizations (src/backend/cpu/kernels/norm.ts is the reference):
// Each entry comes as _bf16 and _f16 (T, the storage type).
//   ts_rmsnorm_T           y = x / sqrt(mean(x^2) + eps) * w over each group of G = len(w) elements
//                          (G = N for the hidden state, G = headDim for Qwen3's per-head q/k norm)
//   ts_layernorm_T         y = (x - mean) / sqrt(var + eps) * w + b (biased variance, two passes)
//   ts_add_rmsnorm_T       sum = residual + delta (stored as T; sum may be the same pointer as
//                          residual), y = rmsnorm(sum) of the f32 sum, as the reference computes it
//   ts_add_layernorm_T     sum as above, y = layernorm(sum)
//   ts_row_rstd_T          rstd[r] = 1 / sqrt(mean(x[r]^2) + eps) in f32: an RMS norm folded into the
//                          GEMM after it (matmul's rmsEps, ops/gemm.ts), whose epilogue scales row
//                          r by it; a warp a row, 16-byte loads (K % 8 == 0, x 16-byte aligned)
// A group of G contiguous elements is one "row" here: x[R, N] with w[G] is x[R N / G, G].
// Shapes: x, residual, delta, sum, y [rows, width] T; w, b [width] T; width = G; T = bf16 or fp16.
// Bytes per element: rmsnorm/layernorm 2 read + 2 written; add_* 4 read + 4 written; the weights
// (and bias) once per row from L1/L2. FLOPs per element: ~4 (rms), ~7 (layer), +1 for add_*.
// Sums and arithmetic in f32; one rounding to T per output (y, and the stored sum of add_*).
//
// Variants, chosen by the host (src/backend/cuda/ops/norm.ts) through two parameters:
//   lanes  0: one block per row (block_sum); 1..32 (power of two): a team of `lanes` consecutive
//          threads per row (shuffle sums), blockDim.x / lanes rows per block
//   vecs   1, 2, 4: width % 8 == 0 and 16-byte aligned pointers; each thread keeps `vecs`
//          16-byte vectors of its row in registers between the reductions and the write
//          (lanes * vecs * 8 >= width, or blockDim.x * vecs * 8 >= width with lanes = 0;
//          blockDim.x <= 512, so rows up to 16384 wide stay in registers)
//          0: scalar path for any width, re-reading the row (from L1/L2) per pass; add_* writes
//          the sum in its last pass, each element after that thread's reads of it
// In place: every element is read before it is written, by the thread that writes it.
#include "common.cuh"

namespace ts_norm {

template <class T>
struct Args {
  T* y;
  T* sum;           // add_*: where residual + delta goes (may equal x)
  const T* x;       // the input, or the residual for add_*
  const T* delta;   // add_* only
  const T* w;
  const T* b;       // layernorm only
  int rows;
  int width;
  float eps;
  int lanes;
};

// Sum over the row's team: the whole block (BLOCK) or `lanes` consecutive lanes of a warp. Every
// thread of the block (BLOCK) or of the warp calls it, whether its row is valid or not.
template <bool BLOCK>
TS_DEVICE float team_sum(float x, int lanes, float* scratch) {
  if constexpr (BLOCK) {
    return ts::block_sum(x, scratch);
  } else {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      if (o < lanes) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
  }
}

template <bool BLOCK, class T>
TS_DEVICE void place(const Args<T>& a, int& row, int& lane, int& lanes) {
  if (BLOCK) {
    row = blockIdx.x;
    lane = threadIdx.x;
    lanes = blockDim.x;
  } else {
    lanes = a.lanes;
    row = blockIdx.x * (blockDim.x / lanes) + threadIdx.x / lanes;
    lane = threadIdx.x % lanes;
  }
}

// The row in registers: K vectors per thread, vector j = lane + k * lanes; packed T for the
// plain norms, f32 for add_* (the norm is of the exact f32 sum, as in the reference).
template <int K, bool BLOCK, bool ADD, bool LAYER, class T>
TS_DEVICE void rows_vec(const Args<T>& a, float* scratch) {
  int row, lane, lanes;
  place<BLOCK>(a, row, lane, lanes);
  const bool valid = row < a.rows;
  const int nvec = a.width >> 3;
  const int64_t base = static_cast<int64_t>(row) * a.width;
  ts::vec8<T> v[K];     // plain norms
  float s[K][8];   // add_*
  float s1 = 0.f;
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = lane + k * lanes;
    if (valid && j < nvec) {
      float f[8];
      if constexpr (ADD) {
        float d[8];
        ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(a.x + base + 8 * j), f);
        ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(a.delta + base + 8 * j), d);
#pragma unroll
        for (int e = 0; e < 8; e++) s[k][e] = f[e] += d[e];
        *reinterpret_cast<ts::vec8<T>*>(a.sum + base + 8 * j) = ts::pack<T>(f);
      } else {
        v[k] = *reinterpret_cast<const ts::vec8<T>*>(a.x + base + 8 * j);
        ts::unpack(v[k], f);
      }
#pragma unroll
      for (int e = 0; e < 8; e++) s1 += LAYER ? f[e] : f[e] * f[e];
    }
  }
  const float n = static_cast<float>(a.width);
  s1 = team_sum<BLOCK>(s1, lanes, scratch);
  float mean = 0.f, rstd;
  if (LAYER) {
    mean = s1 / n;
    float s2 = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++) {
      const int j = lane + k * lanes;
      if (valid && j < nvec) {
        float f[8];
        if constexpr (ADD) {
#pragma unroll
          for (int e = 0; e < 8; e++) f[e] = s[k][e];
        } else {
          ts::unpack(v[k], f);
        }
#pragma unroll
        for (int e = 0; e < 8; e++) s2 += (f[e] - mean) * (f[e] - mean);
      }
    }
    s2 = team_sum<BLOCK>(s2, lanes, scratch);
    rstd = rsqrtf(s2 / n + a.eps);
  } else {
    rstd = rsqrtf(s1 / n + a.eps);
  }
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = lane + k * lanes;
    if (valid && j < nvec) {
      float f[8], w[8], o[8];
      if constexpr (ADD) {
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = s[k][e];
      } else {
        ts::unpack(v[k], f);
      }
      ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(a.w + 8 * j), w);
      if (LAYER) {
        float b[8];
        ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(a.b + 8 * j), b);
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = (f[e] - mean) * rstd * w[e] + b[e];
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = f[e] * rstd * w[e];
      }
      *reinterpret_cast<ts::vec8<T>*>(a.y + base + 8 * j) = ts::pack<T>(o);
    }
  }
}

// Any width: element i = lane + k * lanes, re-read from the inputs per pass (add_*: r + d again, in
// f32); the sum is written in the last pass, after every read of the residual it may overwrite.
template <bool BLOCK, bool ADD, bool LAYER, class T>
TS_DEVICE void rows_scalar(const Args<T>& a, float* scratch) {
  int row, lane, lanes;
  place<BLOCK>(a, row, lane, lanes);
  const bool valid = row < a.rows;
  const int64_t base = static_cast<int64_t>(row) * a.width;
  auto load = [&](int i) {
    float f = ts::to_f32(a.x[base + i]);
    if (ADD) f += ts::to_f32(a.delta[base + i]);
    return f;
  };
  float s1 = 0.f;
  if (valid) {
    for (int i = lane; i < a.width; i += lanes) {
      const float f = load(i);
      s1 += LAYER ? f : f * f;
    }
  }
  const float n = static_cast<float>(a.width);
  s1 = team_sum<BLOCK>(s1, lanes, scratch);
  float mean = 0.f, rstd;
  if (LAYER) {
    mean = s1 / n;
    float s2 = 0.f;
    if (valid) {
      for (int i = lane; i < a.width; i += lanes) {
        const float d = load(i) - mean;
        s2 += d * d;
      }
    }
    s2 = team_sum<BLOCK>(s2, lanes, scratch);
    rstd = rsqrtf(s2 / n + a.eps);
  } else {
    rstd = rsqrtf(s1 / n + a.eps);
  }
  if (valid) {
    for (int i = lane; i < a.width; i += lanes) {
      const float f = load(i);
      if (ADD) a.sum[base + i] = ts::from_f32<T>(f);
      float o = (f - mean) * rstd * ts::to_f32(a.w[i]);
      if (LAYER) o += ts::to_f32(a.b[i]);
      a.y[base + i] = ts::from_f32<T>(o);
    }
  }
}

template <bool ADD, bool LAYER, class T>
TS_DEVICE void dispatch(const Args<T>& a, int vecs) {
  __shared__ float scratch[32];
  if (a.lanes == 0) {
    switch (vecs) {
      case 1: rows_vec<1, true, ADD, LAYER>(a, scratch); break;
      case 2: rows_vec<2, true, ADD, LAYER>(a, scratch); break;
      case 4: rows_vec<4, true, ADD, LAYER>(a, scratch); break;
      default: rows_scalar<true, ADD, LAYER>(a, scratch); break;
    }
  } else {
    switch (vecs) {
      case 1: rows_vec<1, false, ADD, LAYER>(a, scratch); break;
      case 2: rows_vec<2, false, ADD, LAYER>(a, scratch); break;
      case 4: rows_vec<4, false, ADD, LAYER>(a, scratch); break;
      default: rows_scalar<false, ADD, LAYER>(a, scratch); break;
    }
  }
}

template <class T>
TS_DEVICE void row_rstd(float* __restrict__ rstd, const T* __restrict__ x, int rows, int K, float eps) {
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += gridDim.x * warps) {
    const T* xr = x + (size_t)r * K;
    float ss = 0.f;
    for (int k = lane * 8; k < K; k += 256) {
      float f[8];
      ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(xr + k), f);
#pragma unroll
      for (int e = 0; e < 8; e++) ss = fmaf(f[e], f[e], ss);
    }
    ss = ts::warp_sum(ss);
    if (lane == 0) rstd[r] = rsqrtf((K > 0 ? ss / K : 0.f) + eps);
  }
}

}  // namespace ts_norm

// y, x: [rows, width] T (rows = R N / G, width = G); w, b: [width] T; sum, residual, delta:
// [rows, width] T (sum may be residual).
#define TS_NORM_ENTRIES(T, SUFFIX)                                                                                          \
  extern "C" __global__ void __launch_bounds__(512)                                                                         \
      ts_rmsnorm_##SUFFIX(T* y, const T* x, const T* __restrict__ w, int rows, int width, float eps, int lanes, int vecs) { \
    ts::pdl_enter();                                                                                                        \
    const ts_norm::Args<T> a = {y, nullptr, x, nullptr, w, nullptr, rows, width, eps, lanes};                               \
    ts_norm::dispatch<false, false>(a, vecs);                                                                               \
  }                                                                                                                         \
  extern "C" __global__ void __launch_bounds__(512)                                                                         \
      ts_layernorm_##SUFFIX(T* y, const T* x, const T* __restrict__ w, const T* __restrict__ b, int rows, int width,        \
                            float eps, int lanes, int vecs) {                                                               \
    ts::pdl_enter();                                                                                                        \
    const ts_norm::Args<T> a = {y, nullptr, x, nullptr, w, b, rows, width, eps, lanes};                                     \
    ts_norm::dispatch<false, true>(a, vecs);                                                                                \
  }                                                                                                                         \
  extern "C" __global__ void __launch_bounds__(512)                                                                         \
      ts_add_rmsnorm_##SUFFIX(T* sum, T* y, const T* residual, const T* delta, const T* __restrict__ w, int rows,           \
                              int width, float eps, int lanes, int vecs) {                                                  \
    ts::pdl_enter();                                                                                                        \
    const ts_norm::Args<T> a = {y, sum, residual, delta, w, nullptr, rows, width, eps, lanes};                              \
    ts_norm::dispatch<true, false>(a, vecs);                                                                                \
  }                                                                                                                         \
  extern "C" __global__ void __launch_bounds__(512)                                                                         \
      ts_add_layernorm_##SUFFIX(T* sum, T* y, const T* residual, const T* delta, const T* __restrict__ w,                   \
                                const T* __restrict__ b, int rows, int width, float eps, int lanes, int vecs) {             \
    ts::pdl_enter();                                                                                                        \
    const ts_norm::Args<T> a = {y, sum, residual, delta, w, b, rows, width, eps, lanes};                                    \
    ts_norm::dispatch<true, true>(a, vecs);                                                                                 \
  }                                                                                                                         \
  extern "C" __global__ void __launch_bounds__(256)                                                                         \
      ts_row_rstd_##SUFFIX(float* __restrict__ rstd, const T* __restrict__ x, int rows, int K, float eps) {                 \
    ts::pdl_enter();                                                                                                        \
    ts_norm::row_rstd(rstd, x, rows, K, eps);                                                                               \
  }

TS_NORM_ENTRIES(ts::bf16, bf16)
TS_NORM_ENTRIES(ts::f16, f16)
