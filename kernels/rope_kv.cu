// Rotary embeddings and KV-cache writes (src/backend/cpu/kernels/rope.ts, attention.ts kv_write and
// fused.ts rope_kv_write are the reference):
// (each entry as _bf16 and _f16: T, the storage type)
//   ts_rope_T              y[t, h] = rope(x[t, h], positions[t]) for each of H heads of headDim
//   ts_kv_write_T          cache_k[slots[t]] = k[t], cache_v[slots[t]] = v[t]  (slot < 0: skipped)
//   ts_rope_kv_write_T     qkv[t] = (q heads | k heads | v heads): q[t, h] = rope(norm?(q head h)),
//                          cache_k[slots[t], h] = rope(norm?(k head h)), cache_v[slots[t], h] = v head h
//                          (q is written for every token; k and v only where 0 <= slot < numSlots:
//                          -1 is the runner's padding; a slot past the pool, which the CPU reference
//                          refuses, is skipped here rather than written out of bounds)
// rope: rotate-half on the first rotaryDim dims of a head, pairs (i, i + rotaryDim/2):
//   (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), angle = f32(position * inv_freq[i]); the dims past
//   rotaryDim pass through. cos and sin of the f32 angle (rope.cuh ts::sincos_f32) are evaluated in double (Cody-Waite
//   reduction by pi/2, Taylor polynomials) and rounded to f32, as the host reference does with
//   Math.cos/Math.sin: --use_fast_math would otherwise make sincosf the approximate __sincosf,
//   whose error grows with the angle. Once per (token, frequency), into shared memory.
// norm (Qwen3 q/k norm, qkNormEps not null): x / sqrt(mean(x^2) + eps) * w[hd] per head, in f32,
//   before the rotation, without rounding in between.
// Shapes: x, y [T, H hd]; qkv [T, (H + 2 KV) hd]; q [T, H hd]; k, v [T, KV hd]; positions, slots [T]
//   i32; inv_freq [rotaryDim / 2] f32; q_norm, k_norm [hd]; all T but the i32 and f32; cache_k, cache_v: the two halves of
//   one layer's cache [2, numBlocks, blockSize, KV, hd], each [numSlots = numBlocks blockSize, KV, hd].
// Bytes: rope 4 T H hd; kv_write 8 T KV hd; rope_kv_write 2 T (H + 2 KV) hd read + the same written.
// FLOPs: ~6 per rotated pair (plus ~3 per element with the norm), ~40 double ops per (t, frequency).
// Variants (`vec`): 1 = 16-byte vectors (hd % 8 == 0, rotaryDim % 16 == 0, aligned pointers; kv_write:
// KV hd % 8 == 0), 0 = one element at a time for any size. One block per token; in the rope kernels a
// team of `lanes` (power of two <= 32) consecutive threads per head, blockDim.x / lanes heads at a
// time. Each rotated pair and each passed-through element is read and written by one thread, so
// ts_rope_T may run in place.
#include "rope.cuh"

namespace ts_rope {

// Sum over `lanes` consecutive lanes; every lane of the warp calls it.
TS_DEVICE float team_sum(float x, int lanes) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < lanes) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <int V, class T>
TS_DEVICE void load(const T* p, float f[V]) {
  if constexpr (V == 8) {
    ts::unpack(*reinterpret_cast<const ts::vec8<T>*>(p), f);
  } else {
#pragma unroll
    for (int e = 0; e < V; e++) f[e] = ts::to_f32(p[e]);
  }
}

template <int V, class T>
TS_DEVICE void store(T* p, const float f[V]) {
  if constexpr (V == 8) {
    *reinterpret_cast<ts::vec8<T>*>(p) = ts::pack<T>(f);
  } else {
#pragma unroll
    for (int e = 0; e < V; e++) p[e] = ts::from_f32<T>(f[e]);
  }
}

template <class T>
struct Args {
  T* q;                   // [T, H hd]
  T* cache_k;             // [numSlots, KV, hd]
  T* cache_v;             // [numSlots, KV, hd]
  const T* src;           // [T, (H + 2 KV) hd]
  const int32_t* positions;  // [T]
  const int32_t* slots;      // [T]; null when KV == 0
  const float* inv_freq;  // [rotary_dim / 2]; null when rotary_dim == 0
  const T* q_norm;        // [hd]; null unless norm
  const T* k_norm;        // [hd]; null unless norm
  int num_heads, num_kv_heads, head_dim, rotary_dim, num_slots, lanes;
  float eps;
  int norm;
};

// One token (blockIdx.x): the cos/sin table into shared memory, then the H + 2 KV heads by teams.
template <int V, class T>
TS_DEVICE void token(const Args<T>& a, float* table) {
  const int t = blockIdx.x;
  const int half = a.rotary_dim >> 1;
  float* cos_t = table;
  float* sin_t = table + half;
  if (half > 0) {
    const float p = static_cast<float>(a.positions[t]);
    for (int i = threadIdx.x; i < half; i += blockDim.x) ts::sincos_f32(__fmul_rn(p, a.inv_freq[i]), &sin_t[i], &cos_t[i]);
    __syncthreads();
  }
  const int hd = a.head_dim, H = a.num_heads, KV = a.num_kv_heads;
  const int heads = H + 2 * KV;
  const T* row = a.src + static_cast<int64_t>(t) * heads * hd;
  const int slot = KV > 0 ? a.slots[t] : -1;
  const bool write_kv = slot >= 0 && slot < a.num_slots;
  const int lanes = a.lanes, lane = threadIdx.x % lanes, teams = blockDim.x / lanes;
  const int chunks = hd / V;
  // Every thread runs the same number of iterations, so the team sums see whole warps.
  for (int h0 = 0; h0 < heads; h0 += teams) {
    const int h = h0 + static_cast<int>(threadIdx.x) / lanes;
    const bool is_q = h < H, is_k = !is_q && h < H + KV;
    const bool rotated = is_q || is_k;  // q and k heads: norm and rope; v heads: copied
    const bool active = h < heads && (is_q || write_kv);
    const T* x = row + static_cast<int64_t>(h) * hd;
    const T* w = is_q ? a.q_norm : a.k_norm;
    const bool normed = a.norm && rotated;
    float scale = 1.f;
    if (a.norm) {
      float ss = 0.f;
      if (active && rotated) {
        for (int c = lane; c < chunks; c += lanes) {
          float f[V];
          load<V>(x + c * V, f);
#pragma unroll
          for (int e = 0; e < V; e++) ss += f[e] * f[e];
        }
      }
      ss = team_sum(ss, lanes);
      scale = rsqrtf(ss / static_cast<float>(hd) + a.eps);
    }
    if (!active) continue;
    T* y;
    if (is_q) y = a.q + (static_cast<int64_t>(t) * H + h) * hd;
    else if (is_k) y = a.cache_k + (static_cast<int64_t>(slot) * KV + (h - H)) * hd;
    else y = a.cache_v + (static_cast<int64_t>(slot) * KV + (h - H - KV)) * hd;
    const int rh = rotated ? half : 0;  // rotary pairs in this head
    for (int c = lane; c < rh / V; c += lanes) {
      const int i = c * V;
      float lo[V], hi[V];
      load<V>(x + i, lo);
      load<V>(x + rh + i, hi);
      if (normed) {
        float wl[V], wh[V];
        load<V>(w + i, wl);
        load<V>(w + rh + i, wh);
#pragma unroll
        for (int e = 0; e < V; e++) {
          lo[e] = lo[e] * scale * wl[e];
          hi[e] = hi[e] * scale * wh[e];
        }
      }
#pragma unroll
      for (int e = 0; e < V; e++) {
        const float cv = cos_t[i + e], sv = sin_t[i + e];
        const float x1 = lo[e], x2 = hi[e];
        lo[e] = x1 * cv - x2 * sv;
        hi[e] = x2 * cv + x1 * sv;
      }
      store<V>(y + i, lo);
      store<V>(y + rh + i, hi);
    }
    // Dims past the rotary part (all of them for v heads or without rope): norm only.
    for (int c = 2 * rh / V + lane; c < chunks; c += lanes) {
      const int i = c * V;
      float f[V];
      load<V>(x + i, f);
      if (normed) {
        float wv[V];
        load<V>(w + i, wv);
#pragma unroll
        for (int e = 0; e < V; e++) f[e] = f[e] * scale * wv[e];
      }
      store<V>(y + i, f);
    }
  }
}

template <class T>
TS_DEVICE void run(const Args<T>& a, int vec) {
  extern __shared__ float ts_rope_table[];  // [2 rotary_dim / 2]: cos, then sin
  if (vec) token<8>(a, ts_rope_table);
  else token<1>(a, ts_rope_table);
}

// y, x: [T, H hd] (y may be x); positions: [T] i32; inv_freq: [rotaryDim / 2] f32 (null if
// rotaryDim is 0).
template <class T>
TS_DEVICE void rope(T* y, const T* x, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq, int num_heads,
                    int head_dim, int rotary_dim, int lanes, int vec) {
  Args<T> a = {};
  a.q = y;
  a.src = x;
  a.positions = positions;
  a.inv_freq = inv_freq;
  a.num_heads = num_heads;
  a.num_kv_heads = 0;  // no k or v heads: slots and the cache are never read
  a.head_dim = head_dim;
  a.rotary_dim = rotary_dim;
  a.lanes = lanes;
  a.norm = 0;
  run(a, vec);
}

// cache_k, cache_v: [numSlots, width] (the k and v halves of one layer's cache); k, v: [T, width]
// (width = KV hd); slots: [T] i32.
template <class T>
TS_DEVICE void kv_write(T* __restrict__ cache_k, T* __restrict__ cache_v, const T* __restrict__ k, const T* __restrict__ v,
                        const int32_t* __restrict__ slots, int width, int num_slots, int vec) {
  const int t = blockIdx.x;
  const int slot = slots[t];
  if (slot < 0 || slot >= num_slots) return;
  const int64_t src = static_cast<int64_t>(t) * width, dst = static_cast<int64_t>(slot) * width;
  if (vec) {
    for (int i = threadIdx.x; i < width / 8; i += blockDim.x) {
      reinterpret_cast<ts::vec8<T>*>(cache_k + dst)[i] = reinterpret_cast<const ts::vec8<T>*>(k + src)[i];
      reinterpret_cast<ts::vec8<T>*>(cache_v + dst)[i] = reinterpret_cast<const ts::vec8<T>*>(v + src)[i];
    }
  } else {
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
      cache_k[dst + i] = k[src + i];
      cache_v[dst + i] = v[src + i];
    }
  }
}

// q: [T, H hd]; cache_k, cache_v: [numSlots, KV, hd]; qkv: [T, (H + 2 KV) hd]; positions, slots:
// [T] i32; inv_freq: [rotaryDim / 2] f32 (null and rotaryDim 0 without rope); q_norm, k_norm: [hd]
// (null and norm 0 without q/k norm).
template <class T>
TS_DEVICE void rope_kv_write(T* __restrict__ q, T* __restrict__ cache_k, T* __restrict__ cache_v, const T* __restrict__ qkv,
                             const int32_t* __restrict__ positions, const int32_t* __restrict__ slots,
                             const float* __restrict__ inv_freq, const T* __restrict__ q_norm, const T* __restrict__ k_norm,
                             int num_heads, int num_kv_heads, int head_dim, int rotary_dim, int num_slots, float eps, int norm,
                             int lanes, int vec) {
  Args<T> a = {};
  a.q = q;
  a.cache_k = cache_k;
  a.cache_v = cache_v;
  a.src = qkv;
  a.positions = positions;
  a.slots = slots;
  a.inv_freq = inv_freq;
  a.q_norm = q_norm;
  a.k_norm = k_norm;
  a.num_heads = num_heads;
  a.num_kv_heads = num_kv_heads;
  a.head_dim = head_dim;
  a.rotary_dim = rotary_dim;
  a.num_slots = num_slots;
  a.lanes = lanes;
  a.eps = eps;
  a.norm = norm;
  run(a, vec);
}

}  // namespace ts_rope

// T (bf16 or fp16), one entry per type; shapes above. Grid T (tokens); the rope kernels take a
// block that is a multiple of 32 (and of lanes) and rotaryDim * 4 bytes of dynamic shared memory.
#define TS_ROPE_ENTRIES(T, SUFFIX)                                                                                          \
  extern "C" __global__ void __launch_bounds__(256)                                                                         \
      ts_rope_##SUFFIX(T* y, const T* x, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,         \
                       int num_heads, int head_dim, int rotary_dim, int lanes, int vec) {                                   \
    ts::pdl_enter();                                                                                                        \
    ts_rope::rope(y, x, positions, inv_freq, num_heads, head_dim, rotary_dim, lanes, vec);                                  \
  }                                                                                                                         \
  extern "C" __global__ void __launch_bounds__(256)                                                                         \
      ts_kv_write_##SUFFIX(T* __restrict__ cache_k, T* __restrict__ cache_v, const T* __restrict__ k,                       \
                           const T* __restrict__ v, const int32_t* __restrict__ slots, int width, int num_slots, int vec) { \
    ts::pdl_enter();                                                                                                        \
    ts_rope::kv_write(cache_k, cache_v, k, v, slots, width, num_slots, vec);                                                \
  }                                                                                                                         \
  extern "C" __global__ void __launch_bounds__(256)                                                                         \
      ts_rope_kv_write_##SUFFIX(T* __restrict__ q, T* __restrict__ cache_k, T* __restrict__ cache_v,                        \
                                const T* __restrict__ qkv, const int32_t* __restrict__ positions,                           \
                                const int32_t* __restrict__ slots, const float* __restrict__ inv_freq,                      \
                                const T* __restrict__ q_norm, const T* __restrict__ k_norm, int num_heads,                  \
                                int num_kv_heads, int head_dim, int rotary_dim, int num_slots, float eps, int norm,         \
                                int lanes, int vec) {                                                                       \
    ts::pdl_enter();                                                                                                        \
    ts_rope::rope_kv_write(q, cache_k, cache_v, qkv, positions, slots, inv_freq, q_norm, k_norm, num_heads, num_kv_heads,   \
                           head_dim, rotary_dim, num_slots, eps, norm, lanes, vec);                                         \
  }

TS_ROPE_ENTRIES(ts::bf16, bf16)
TS_ROPE_ENTRIES(ts::f16, f16)
