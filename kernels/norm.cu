// Row normalizations (src/backend/cpu/kernels/norm.ts is the reference):
//   ts_rmsnorm_bf16        y = x / sqrt(mean(x^2) + eps) * w over each group of G = len(w) elements
//                          (G = N for the hidden state, G = headDim for Qwen3's per-head q/k norm)
//   ts_layernorm_bf16      y = (x - mean) / sqrt(var + eps) * w + b (biased variance, two passes)
//   ts_add_rmsnorm_bf16    sum = residual + delta (stored as bf16; sum may be the same pointer as
//                          residual), y = rmsnorm(sum) of the f32 sum, as the reference computes it
//   ts_add_layernorm_bf16  sum as above, y = layernorm(sum)
// A group of G contiguous elements is one "row" here: x[R, N] with w[G] is x[R N / G, G].
// Shapes: x, residual, delta, sum, y [rows, width] bf16; w, b [width] bf16; width = G.
// Bytes per element: rmsnorm/layernorm 2 read + 2 written; add_* 4 read + 4 written; the weights
// (and bias) once per row from L1/L2. FLOPs per element: ~4 (rms), ~7 (layer), +1 for add_*.
// Sums and arithmetic in f32; one rounding to bf16 per output (y, and the stored sum of add_*).
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

using ts::bf16;
using ts::bf16x8;

struct Args {
  bf16* y;
  bf16* sum;           // add_*: where residual + delta goes (may equal x)
  const bf16* x;       // the input, or the residual for add_*
  const bf16* delta;   // add_* only
  const bf16* w;
  const bf16* b;       // layernorm only
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

template <bool BLOCK>
TS_DEVICE void place(const Args& a, int& row, int& lane, int& lanes) {
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

// The row in registers: K vectors per thread, vector j = lane + k * lanes; packed bf16 for the
// plain norms, f32 for add_* (the norm is of the exact f32 sum, as in the reference).
template <int K, bool BLOCK, bool ADD, bool LAYER>
TS_DEVICE void rows_vec(const Args& a, float* scratch) {
  int row, lane, lanes;
  place<BLOCK>(a, row, lane, lanes);
  const bool valid = row < a.rows;
  const int nvec = a.width >> 3;
  const int64_t base = static_cast<int64_t>(row) * a.width;
  bf16x8 v[K];     // plain norms
  float s[K][8];   // add_*
  float s1 = 0.f;
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = lane + k * lanes;
    if (valid && j < nvec) {
      float f[8];
      if constexpr (ADD) {
        float d[8];
        ts::unpack(*reinterpret_cast<const bf16x8*>(a.x + base + 8 * j), f);
        ts::unpack(*reinterpret_cast<const bf16x8*>(a.delta + base + 8 * j), d);
#pragma unroll
        for (int e = 0; e < 8; e++) s[k][e] = f[e] += d[e];
        *reinterpret_cast<bf16x8*>(a.sum + base + 8 * j) = ts::pack(f);
      } else {
        v[k] = *reinterpret_cast<const bf16x8*>(a.x + base + 8 * j);
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
      ts::unpack(*reinterpret_cast<const bf16x8*>(a.w + 8 * j), w);
      if (LAYER) {
        float b[8];
        ts::unpack(*reinterpret_cast<const bf16x8*>(a.b + 8 * j), b);
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = (f[e] - mean) * rstd * w[e] + b[e];
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = f[e] * rstd * w[e];
      }
      *reinterpret_cast<bf16x8*>(a.y + base + 8 * j) = ts::pack(o);
    }
  }
}

// Any width: element i = lane + k * lanes, re-read from the inputs per pass (add_*: r + d again, in
// f32); the sum is written in the last pass, after every read of the residual it may overwrite.
template <bool BLOCK, bool ADD, bool LAYER>
TS_DEVICE void rows_scalar(const Args& a, float* scratch) {
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
      if (ADD) a.sum[base + i] = ts::to_bf16(f);
      float o = (f - mean) * rstd * ts::to_f32(a.w[i]);
      if (LAYER) o += ts::to_f32(a.b[i]);
      a.y[base + i] = ts::to_bf16(o);
    }
  }
}

template <bool ADD, bool LAYER>
TS_DEVICE void dispatch(const Args& a, int vecs) {
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

}  // namespace ts_norm

// y, x: [rows, width] bf16 (rows = R N / G, width = G); w: [width] bf16.
extern "C" __global__ void __launch_bounds__(512)
    ts_rmsnorm_bf16(ts::bf16* y, const ts::bf16* x, const ts::bf16* __restrict__ w, int rows, int width, float eps,
                    int lanes, int vecs) {
  const ts_norm::Args a = {y, nullptr, x, nullptr, w, nullptr, rows, width, eps, lanes};
  ts_norm::dispatch<false, false>(a, vecs);
}

// y, x: [rows, width] bf16; w, b: [width] bf16.
extern "C" __global__ void __launch_bounds__(512)
    ts_layernorm_bf16(ts::bf16* y, const ts::bf16* x, const ts::bf16* __restrict__ w, const ts::bf16* __restrict__ b,
                      int rows, int width, float eps, int lanes, int vecs) {
  const ts_norm::Args a = {y, nullptr, x, nullptr, w, b, rows, width, eps, lanes};
  ts_norm::dispatch<false, true>(a, vecs);
}

// sum, y, residual, delta: [rows, width] bf16 (sum may be residual); w: [width] bf16.
extern "C" __global__ void __launch_bounds__(512)
    ts_add_rmsnorm_bf16(ts::bf16* sum, ts::bf16* y, const ts::bf16* residual, const ts::bf16* delta,
                        const ts::bf16* __restrict__ w, int rows, int width, float eps, int lanes, int vecs) {
  const ts_norm::Args a = {y, sum, residual, delta, w, nullptr, rows, width, eps, lanes};
  ts_norm::dispatch<true, false>(a, vecs);
}

// sum, y, residual, delta: [rows, width] bf16 (sum may be residual); w, b: [width] bf16.
extern "C" __global__ void __launch_bounds__(512)
    ts_add_layernorm_bf16(ts::bf16* sum, ts::bf16* y, const ts::bf16* residual, const ts::bf16* delta,
                          const ts::bf16* __restrict__ w, const ts::bf16* __restrict__ b, int rows, int width, float eps,
                          int lanes, int vecs) {
  const ts_norm::Args a = {y, sum, residual, delta, w, b, rows, width, eps, lanes};
  ts_norm::dispatch<true, true>(a, vecs);
}
