// Elementwise kernels (src/backend/cpu/kernels/elementwise.ts and fused.ts are the reference):
// (each as _bf16 and _f16: T, the storage type)
//   ts_add_T            y = a + b, same shape                  a, b, y: [n]
//   ts_mul_T            y = a * b, same shape                  a, b, y: [n]
//   ts_add_bias_T       y[r, c] = a[r, c] + b[c]               a, y: [rows, cols]; b: [cols]
//   ts_act_T            y = act(x)                             x, y: [n]
//   ts_act_mul_T        y[r, c] = act(gu[r, c]) * gu[r, cols + c]   gu: [rows, 2 cols]; y: [rows, cols]
//   ts_slice_cols_T     y[r, c] = x[r, start + c]              x: [rows, cols]; y: [rows, count]
// act: 0 silu, 1 gelu (erf), 2 gelu_tanh: common.cuh's ts::act, which the GEMM epilogues' gated
//   unit (matmul_glu) shares.
// Bytes: 2 bytes per element read per input and 2 written (act_mul: 4 read, 2 written per output
// element; the bias once per row from L1/L2). FLOPs: 1 per element (add, mul), ~10-20 (act).
// Arithmetic in f32, one rounding to T per output.
// Variants: `vec` 1 = 16-byte vectors (the host checks widths and 16-byte aligned pointers; the flat
// kernels handle n % 8 with a scalar tail), 0 = scalar loads for any width or alignment. Flat
// kernels are grid-stride loops; the row kernels run a 2-D grid (x over columns, y over rows) with
// grid-stride loops in both. Every output element is written by the thread that read its inputs,
// so y may be the same buffer as an input.
#include "common.cuh"

namespace ts_ew {

using ts::act;
using ts::kGeluErf;
using ts::kGeluTanh;
using ts::kSilu;

struct Add {
  TS_DEVICE float operator()(float a, float b) const { return a + b; }
};
struct Mul {
  TS_DEVICE float operator()(float a, float b) const { return a * b; }
};
template <int ACT>
struct Unary {
  TS_DEVICE float operator()(float a, float) const { return act<ACT>(a); }
};

template <class T>
TS_DEVICE ts::vec8<T> load8(const T* p) {
  return *reinterpret_cast<const ts::vec8<T>*>(p);
}
template <class T>
TS_DEVICE void store8(T* p, const ts::vec8<T>& v) {
  *reinterpret_cast<ts::vec8<T>*>(p) = v;
}

// y[i] = f(a[i], b[i]) for i < n (b unused, and may be null, for unary f).
template <bool BINARY, class T, class F>
TS_DEVICE void flat(T* y, const T* a, const T* b, unsigned long long n, int vec, F f) {
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  const unsigned long long tid = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned long long nv = vec ? n / 8 : 0;
  for (unsigned long long i = tid; i < nv; i += stride) {
    float x[8], z[8];
    ts::unpack(load8(a + 8 * i), x);
    if constexpr (BINARY) {
      ts::unpack(load8(b + 8 * i), z);
#pragma unroll
      for (int e = 0; e < 8; e++) x[e] = f(x[e], z[e]);
    } else {
      // Four at a time: with all eight of the erf GELU's erfcf unrolled, ptxas (CUDA 13, sm_86
      // and sm_89) spills a register around them; four keep everything in registers.
#pragma unroll 4
      for (int e = 0; e < 8; e++) x[e] = f(x[e], 0.f);
    }
    store8(y + 8 * i, ts::pack<T>(x));
  }
  for (unsigned long long i = nv * 8 + tid; i < n; i += stride)
    y[i] = ts::from_f32<T>(f(ts::to_f32(a[i]), BINARY ? ts::to_f32(b[i]) : 0.f));
}

// The rows handled by this thread: r = first, first + step, ... < rows; units c likewise.
#define TS_EW_ROWS(r, rows) \
  for (int r = blockIdx.y * blockDim.y + threadIdx.y; r < (rows); r += gridDim.y * blockDim.y)
#define TS_EW_COLS(c, units) \
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < (units); c += gridDim.x * blockDim.x)

template <int ACT, class T>
TS_DEVICE void act_mul(T* y, const T* gu, int rows, int cols, int vec) {
  const int units = vec ? cols / 8 : cols;
  TS_EW_ROWS(r, rows) {
    const T* g = gu + static_cast<int64_t>(r) * 2 * cols;
    const T* u = g + cols;
    T* o = y + static_cast<int64_t>(r) * cols;
    TS_EW_COLS(c, units) {
      if (vec) {
        float gv[8], uv[8];
        ts::unpack(load8(g + 8 * c), gv);
        ts::unpack(load8(u + 8 * c), uv);
#pragma unroll
        for (int e = 0; e < 8; e++) gv[e] = act<ACT>(gv[e]) * uv[e];
        store8(o + 8 * c, ts::pack<T>(gv));
      } else {
        o[c] = ts::from_f32<T>(act<ACT>(ts::to_f32(g[c])) * ts::to_f32(u[c]));
      }
    }
  }
}

template <class T>
TS_DEVICE void act(T* y, const T* x, unsigned long long n, int act, int vec) {
  switch (act) {
    case kSilu: flat<false>(y, x, static_cast<const T*>(nullptr), n, vec, Unary<kSilu>{}); break;
    case kGeluTanh: flat<false>(y, x, static_cast<const T*>(nullptr), n, vec, Unary<kGeluTanh>{}); break;
    default: flat<false>(y, x, static_cast<const T*>(nullptr), n, vec, Unary<kGeluErf>{}); break;
  }
}

template <class T>
TS_DEVICE void add_bias(T* y, const T* a, const T* __restrict__ b, int rows, int cols, int vec) {
  const int units = vec ? cols / 8 : cols;
  TS_EW_ROWS(r, rows) {
    const int64_t base = static_cast<int64_t>(r) * cols;
    TS_EW_COLS(c, units) {
      if (vec) {
        float x[8], z[8];
        ts::unpack(load8(a + base + 8 * c), x);
        ts::unpack(load8(b + 8 * c), z);
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] += z[e];
        store8(y + base + 8 * c, ts::pack<T>(x));
      } else {
        y[base + c] = ts::from_f32<T>(ts::to_f32(a[base + c]) + ts::to_f32(b[c]));
      }
    }
  }
}

template <class T>
TS_DEVICE void act_mul_any(T* y, const T* gu, int rows, int cols, int act, int vec) {
  switch (act) {
    case kSilu: act_mul<kSilu>(y, gu, rows, cols, vec); break;
    case kGeluTanh: act_mul<kGeluTanh>(y, gu, rows, cols, vec); break;
    default: act_mul<kGeluErf>(y, gu, rows, cols, vec); break;
  }
}

template <class T>
TS_DEVICE void slice_cols(T* __restrict__ y, const T* __restrict__ x, int rows, int cols, int start, int count, int vec) {
  const int units = vec ? count / 8 : count;
  TS_EW_ROWS(r, rows) {
    const T* src = x + static_cast<int64_t>(r) * cols + start;
    T* dst = y + static_cast<int64_t>(r) * count;
    TS_EW_COLS(c, units) {
      if (vec) store8(dst + 8 * c, load8(src + 8 * c));
      else dst[c] = src[c];
    }
  }
}

}  // namespace ts_ew

// T: the storage type (bf16 or fp16), one entry per type.
//   add, mul: y, a, b [n] T          act: y, x [n] T; act 0 silu, 1 gelu (erf), 2 gelu_tanh
//   add_bias: y, a [rows, cols] T; b [cols] T; vec: cols % 8 == 0
//   act_mul: y [rows, cols] T; gu [rows, 2 cols] T (gate | up); vec: cols % 8 == 0
//   slice_cols: y [rows, count] T; x [rows, cols] T; vec: cols, start and count % 8 == 0
#define TS_EW_ENTRIES(T, SUFFIX)                                                                                             \
  extern "C" __global__ void __launch_bounds__(256)                                                                          \
      ts_add_##SUFFIX(T* y, const T* a, const T* b, unsigned long long n, int vec) {                                         \
    ts::pdl_enter();                                                                                                         \
    ts_ew::flat<true>(y, a, b, n, vec, ts_ew::Add{});                                                                        \
  }                                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256)                                                                          \
      ts_mul_##SUFFIX(T* y, const T* a, const T* b, unsigned long long n, int vec) {                                         \
    ts::pdl_enter();                                                                                                         \
    ts_ew::flat<true>(y, a, b, n, vec, ts_ew::Mul{});                                                                        \
  }                                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256) ts_act_##SUFFIX(T* y, const T* x, unsigned long long n, int act, int vec) { \
    ts::pdl_enter();                                                                                                         \
    ts_ew::act(y, x, n, act, vec);                                                                                           \
  }                                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256)                                                                          \
      ts_add_bias_##SUFFIX(T* y, const T* a, const T* __restrict__ b, int rows, int cols, int vec) {                         \
    ts::pdl_enter();                                                                                                         \
    ts_ew::add_bias(y, a, b, rows, cols, vec);                                                                               \
  }                                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256) ts_act_mul_##SUFFIX(T* y, const T* gu, int rows, int cols, int act, int vec) { \
    ts::pdl_enter();                                                                                                         \
    ts_ew::act_mul_any(y, gu, rows, cols, act, vec);                                                                         \
  }                                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256)                                                                          \
      ts_slice_cols_##SUFFIX(T* __restrict__ y, const T* __restrict__ x, int rows, int cols, int start, int count, int vec) { \
    ts::pdl_enter();                                                                                                         \
    ts_ew::slice_cols(y, x, rows, cols, start, count, vec);                                                                  \
  }

TS_EW_ENTRIES(ts::bf16, bf16)
TS_EW_ENTRIES(ts::f16, f16)

#undef TS_EW_ROWS
#undef TS_EW_COLS
