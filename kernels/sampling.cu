// Sampling on the device: one token per row of logits, with the semantics of the host sampler
// (src/sampling/sampler.ts sampleToken; the host side and the parameter layout are in
// src/backend/cuda/ops/sampling.ts). Only token ids (and logprobs when asked) go back to the host.
//
//   ts_sample_f32   one block of NT = 512 threads per row; grid = [S]; 35.75 KiB static shared memory
//
// Shapes:
//   logits          f32 [S, V] row-major, V < 2^22; OVERWRITTEN with the penalized logits (like
//                   the host sampler, which treats its logits as scratch): sample a row once
//   params          RowParams [S] (96 bytes each, layout below and in ops/sampling.ts)
//   ids             i32 [N]  CSR token ids: a row's distinct prompt+output ids (repetition
//                   penalty) at [repStart, repStart + repCount) and its distinct output ids at
//                   [outStart, outStart + outCount)
//   counts          i32 [N]  counts[j] = times ids[j] occurs in the output (output ranges only)
//   outTokens       i32 [S]
//   outLogprobs     f32 [S]  log_softmax(penalized logits)[token]; NaN where logprobs are off
//   outTopIds       i32 [S, maxTopN]  top-n ids by (logit desc, id asc); -1 past n
//   outTopLogprobs  f32 [S, maxTopN]  their logprobs; -inf past n
// (outTopIds and outTopLogprobs are only touched when maxTopN > 0.)
//
// Per row, in order (each step is the host's, on the same values):
//  1. penalties, in double exactly as the host rounds them: repetition over the distinct
//     prompt+output ids (l > 0 ? l / p : l * p), then presence + frequency * count over the output
//     ids; each result rounded once to f32 and stored back into the row. Bit-exact.
//  2. max pass: the largest (logit, -id), i.e. the argmax with ties to the lowest id, and the max.
//     A NaN logit (a numerically broken model) is stored back as -inf here, as the host treats it.
//     Temperature 0 (or a row whose max is not finite) takes the argmax and stops here.
//  3. the draw, u = (philox4x32_10(key = (seedLo, seedHi), counter = (counter, stream, 0, 0)).x >> 8)
//     / 2^24, over the candidates in the host's order. Order: key(i) = (fkey(l_i) << 32) | ~i, a
//     u64 whose descending order is (logit desc, id asc) exactly (fkey: the order-preserving u32
//     image of the f32, -0 folded into +0). A "cut" c names a prefix of that order: i is in it iff
//     key(i) >= c (the prefix up to and including the candidate whose key is c). Two paths:
//     LIST (the host's candidate list has at most CAP = 2048 entries: V <= CAP, or 0 < topK <= CAP):
//       the candidates (all V, or the top k found by the count select below and gathered) go to
//       shared memory, bitonic-sorted by key (descending) unless the host walks them in id order
//       (no truncation), and the host's drawTruncated runs on them in double with the host's exact
//       sequence of roundings: p_i = exp((l_i - max) * (1 / T)), the min-p test p_i / sum <
//       minP * (p_0 / sum) and p_i / sum in parallel; the four left folds (sum; top-p's cumulative
//       sum, stopping at the first >= topP; kept; the walk target -= p_i until < 0) on one thread in
//       the host's order. Equal to the host but for the last ulp of exp (CUDA's vs V8's).
//     ROW (longer lists: top-p / min-p / no truncation with V > CAP, or topK > CAP): masses are
//       fixed point, q_i = round(p_i * 2^42) with p_i = __expf((l_i - max) * f32(1 / T)); integer
//       sums are exact and independent of order (deterministic), and sum q <= V * 2^42 < 2^64.
//       Selections are radix selects over fkey (4 passes of 8 bits; 256-bin shared histograms of
//       counts or masses, restricted to the candidates of a cut and to the digits fixed so far),
//       which find the exact logit value at which a cumulative count or mass crosses a threshold
//       in the host's order; the ties at that value are split in id order (the j-th tie, j from
//       the count or from the common mass of the ties; the lowest tie id comes free from the last
//       pass, any other from one id-ordered scan):
//         no truncation: sum = sum q over V, T = floor(u * sum); one id-ordered block scan finds
//           the first id whose inclusive prefix exceeds T (the host walks in id order here).
//         top-k: count select of the k-th candidate -> cut Ck.   sum = sum q over Ck.
//         min-p: min fkey over Ck with q_i >= ceil(minP * 2^42) -> value cut Cm.
//         top-p: mass select over Ck of the first candidate whose inclusive mass >= ceil(topP * sum)
//           -> cut Cp.   The kept set is the shortest of Ck, Cm, Cp (a prefix: the largest cut).
//         draw: kept = sum q over the kept cut; T = floor(u * kept) computed exactly (u = m / 2^24,
//           T = (m * kept) >> 24 in 88-bit arithmetic); mass select of the first candidate whose
//           inclusive mass > T.
//       Agreement: ROW decisions carry __expf's ~1e-7 relative error, so one can differ from the
//       host's only when a cumulative sum (or p_i / minP) lies within ~1e-6 relative of its
//       threshold (tests/cuda/sampling.test.ts measures this on 5000 random rows: 6, all exact
//       coincidences of tied values with topP at 1e-16, where the host's own result is rounding).
//  4. logprobs (logprobs >= 0): lse = max + log(sum exp(l - max)) (double exp for V <= CAP, else
//     f32 __expf with Kahan sums per thread and a double tree); logprob = l_token - lse; top-n
//     (n <= 20) by a count select of the n-th entry of the order, a gather and a rank sort.
//
// Cost per row (one SM; a "pass" reads the row, V * 4 bytes from L2 or HBM, and spends ~5-40
// instructions per element: the radix passes after the first only test a prefix; mass passes add
// an __expf and warp-aggregated shared atomics, one per distinct bin per warp, up to 3 rounds):
//   penalties: O(prompt + output ids).  max: 1 pass.  greedy: nothing more.
//   LIST, V <= CAP: 1 read + a bitonic sort of <= 2048 keys (66 steps) + up to 4 folds of <= n
//     dependent double adds on one thread (n = k or V; microseconds for k ~ 50, up to ~100 us for
//     n = 2048 on GPUs with slow FP64).
//   LIST, top-k: 4 passes (+1 partial id-ordered scan when the k-th value is tied and the cut is
//     not its lowest id) + 1 gather pass + the above with n = k.
//   ROW: no truncation 2 passes (sum; a scan that stops at the drawn id); top-p alone 9-11 (sum,
//     select 4(+1), select 4(+1)); every filter ~16.
//   logprobs: +1 pass; top-n +5.  FLOPs are negligible next to the bytes.
// Variants: none (one kernel for every parameter combination; the per-row branches are uniform
// across the block).
#include "common.cuh"

namespace ts_sampling {

using u32 = unsigned int;
using u64 = unsigned long long;

constexpr int NT = 512;            // threads per block (one block per row): 72-80 registers of 128
constexpr int NWARP = NT / 32;
constexpr int CAP = 2048;          // longest candidate list kept in shared memory (LIST path)
constexpr int ITEMS = CAP / NT;    // list entries per thread
constexpr int UNROLL = 4;          // row elements loaded per thread before they are processed
constexpr int MAX_TOP = 32;        // top-n logprobs at most (the API allows 20)
constexpr u32 FULL = 0xffffffffu;
constexpr float QSCALE = 4398046511104.f;  // 2^42: fixed-point scale of masses (ROW path)

// One row's parameters, 96 bytes (ops/sampling.ts packs them; keep the two in step).
struct RowParams {
  double temperature;        //  0  0 = greedy
  double topP;               //  8  1 = off
  double minP;               // 16  0 = off
  double repetitionPenalty;  // 24  1 = off
  double presencePenalty;    // 32
  double frequencyPenalty;   // 40
  int topK;                  // 48  <= 0 or >= V: off
  int logprobs;              // 52  -1 = off, else top-n count (0..20)
  u32 seedLo;                // 56  seed & 0xffffffff
  u32 seedHi;                // 60  floor(seed / 2^32)
  u32 stream;                // 64  which of the request's n samples
  u32 counter;               // 68  output index of this draw
  int repStart;              // 72  repetition ids: ids[repStart, repStart + repCount)
  int repCount;              // 76
  int outStart;              // 80  output ids and counts: [outStart, outStart + outCount)
  int outCount;              // 84
  int reserved0;             // 88
  int reserved1;             // 92
};
static_assert(sizeof(RowParams) == 96, "RowParams must match ops/sampling.ts");

struct Smem {
  union {
    u64 keys[CAP];     // LIST path: candidate keys,
    double pd[CAP];    // then their probabilities
  };
  double pr[CAP];      // LIST path: probabilities / sum (top-p)
  u64 hist[256];       // radix select: count or mass per digit
  u32 minId[256];      // radix select, last pass: lowest id per bin
  u64 top[MAX_TOP];    // top-n gather
  u64 redU64[NWARP];
  double redD[NWARP];
  u32 redU32[NWARP];
  int redI[NWARP];
  u64 selAbove;
  u64 selW;
  double bD[2];
  int selBin;
  int found;
  u32 cnt;
};

// ---- Philox4x32-10 (Salmon et al., SC'11), as src/sampling/philox.ts -------------------------

__host__ __device__ inline u32 mulhi32(u32 a, u32 b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<u32>((static_cast<unsigned long long>(a) * b) >> 32);
#endif
}

// Four u32 from key (k0, k1) and counter (c0..c3): 10 rounds, the key bumped after each.
__host__ __device__ inline uint4 philox4x32_10(u32 k0, u32 k1, u32 c0, u32 c1, u32 c2, u32 c3) {
  const u32 M0 = 0xd2511f53u, M1 = 0xcd9e8d57u, W0 = 0x9e3779b9u, W1 = 0xbb67ae85u;
  u32 x0 = c0, x1 = c1, x2 = c2, x3 = c3;
#pragma unroll
  for (int round = 0; round < 10; round++) {
    const u32 hi0 = mulhi32(M0, x0), lo0 = M0 * x0;
    const u32 hi1 = mulhi32(M1, x2), lo1 = M1 * x2;
    x0 = hi1 ^ x1 ^ k0;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ k1;
    x3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return make_uint4(x0, x1, x2, x3);
}

// ---- order keys -------------------------------------------------------------------------------

// Order-preserving u32 image of an f32 (larger float, larger key); -0 is folded into +0 (the host
// compares -0 and +0 equal). Integer-only, so denormals keep their order under ftz.
TS_DEVICE u32 fkey(float l) {
  u32 b = __float_as_uint(l);
  if ((b & 0x7fffffffu) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
TS_DEVICE float fval(u32 k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }
// Descending u64 order = (logit desc, id asc).
TS_DEVICE u64 okey(u32 f, int i) { return (static_cast<u64>(f) << 32) | static_cast<u32>(~static_cast<u32>(i)); }
TS_DEVICE int okey_id(u64 o) { return static_cast<int>(~static_cast<u32>(o)); }
TS_DEVICE u32 okey_f(u64 o) { return static_cast<u32>(o >> 32); }

// Fixed-point mass of a logit (ROW path): round(exp((l - max) / T) * 2^42), in [0, 2^42].
struct Mass {
  float mx, invT;
  TS_DEVICE u64 operator()(float l) const { return __float2ull_rn(__expf((l - mx) * invT) * QSCALE); }
};

// ---- reductions and scans ---------------------------------------------------------------------

struct OpAdd {
  template <typename T>
  TS_DEVICE T operator()(T a, T b) const { return a + b; }
};
struct OpMax {
  template <typename T>
  TS_DEVICE T operator()(T a, T b) const { return a > b ? a : b; }
};
struct OpMin {
  template <typename T>
  TS_DEVICE T operator()(T a, T b) const { return a < b ? a : b; }
};

template <typename T, typename Op>
TS_DEVICE T warp_all(T x, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(FULL, x, o));
  return x;
}

// Reduction over the block in a fixed order (deterministic); every thread gets the result.
template <typename T, typename Op>
TS_DEVICE T block_all(T x, Op op, T identity, T* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_all(x, op);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = x;
  __syncthreads();
  return warp_all(lane < NWARP ? red[lane] : identity, op);
}

// Adds w to hist[bin] (bin < 0: nothing); with trackMin also lowers minId[bin] to i. Every lane of
// the warp calls it. Warp-aggregated: up to ROUNDS times, the lanes sharing the bin of the first
// lane still pending add their weights with one atomic (masses <= 2^42 are summed as two 21-bit
// halves by redux.sync, < 2^26 each over 32 lanes); what remains adds lane by lane. The first
// radix pass, where most logits share a handful of top-byte bins, is what this is for.
template <bool MASS>
TS_DEVICE void hist_add(Smem& s, int bin, u64 w, int i, bool trackMin) {
  constexpr int ROUNDS = 3;
  const int lane = threadIdx.x & 31;
  bool pending = bin >= 0;
#pragma unroll
  for (int round = 0; round < ROUNDS; round++) {
    const u32 pend = __ballot_sync(FULL, pending);
    if (pend == 0) return;  // uniform over the warp
    const int leader = __ffs(pend) - 1;
    const int b = __shfl_sync(FULL, bin, leader);
    const bool mine = pending && bin == b;
    u64 t;
    if (MASS) {
      const u32 hi = __reduce_add_sync(FULL, mine ? static_cast<u32>(w >> 21) : 0u);
      const u32 lo = __reduce_add_sync(FULL, mine ? static_cast<u32>(w & 0x1fffffull) : 0u);
      t = (static_cast<u64>(hi) << 21) + lo;
    } else {
      t = static_cast<u64>(__popc(__ballot_sync(FULL, mine)));
    }
    const u32 mn = trackMin ? __reduce_min_sync(FULL, mine ? static_cast<u32>(i) : FULL) : 0u;
    if (lane == leader) {
      atomicAdd(&s.hist[b], t);
      if (trackMin) atomicMin(&s.minId[b], mn);
    }
    pending = pending && !mine;
  }
  if (pending) {
    atomicAdd(&s.hist[bin], w);
    if (trackMin) atomicMin(&s.minId[bin], static_cast<u32>(i));
  }
}

// ---- passes over the row ----------------------------------------------------------------------

// One pass over a row of V logits: each thread loads UNROLL elements (i = base + u NT + tid; `fill`
// past V) before it processes them, so UNROLL loads are in flight per thread. f(l, i) runs for
// every u, i in range or not: warp-collective bodies need every lane, the others check i < V.
template <typename F>
TS_DEVICE void row_pass(const float* row, int V, float fill, F&& f) {
  const int tid = threadIdx.x;
#pragma unroll 1
  for (int base = 0; base < V; base += NT * UNROLL) {
    float l[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int i = base + u * NT + tid;
      l[u] = i < V ? row[i] : fill;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; u++) f(l[u], base + u * NT + tid);
  }
}

// Sum of q over the candidates of `cut`.
TS_DEVICE u64 mass_sum(const float* row, int V, u64 cut, const Mass& m, Smem& s) {
  u64 acc = 0;
  row_pass(row, V, 0.f, [&](float l, int i) {
    if (i < V && okey(fkey(l), i) >= cut) acc += m(l);
  });
  return block_all(acc, OpAdd(), 0ull, s.redU64);
}

// The j-th (0-based) candidate of `cut` in id order whose fkey is v; -1 if there is none.
TS_DEVICE int nth_tie(const float* row, int V, u32 v, u64 cut, u32 j, Smem& s) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __syncthreads();
  if (tid == 0) s.found = -1;
  u32 run = 0;
#pragma unroll 1
  for (int base = 0; base < V; base += NT) {
    const int i = base + tid;
    bool p = false;
    if (i < V) {
      const u32 f = fkey(row[i]);
      p = f == v && okey(f, i) >= cut;
    }
    const u32 bal = __ballot_sync(FULL, p);
    if (lane == 0) s.redU32[warp] = __popc(bal);
    __syncthreads();
    const u32 wc = lane < NWARP ? s.redU32[lane] : 0u;
    u32 wi = wc;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u32 y = __shfl_up_sync(FULL, wi, o);
      if (lane >= o) wi += y;
    }
    const u32 wexcl = __shfl_sync(FULL, wi - wc, warp);
    const u32 total = __shfl_sync(FULL, wi, 31);
    if (p && run + wexcl + __popc(bal & ((1u << lane) - 1u)) == j) s.found = i;
    run += total;
    __syncthreads();
    if (run > j) break;  // uniform: every thread has the same run
  }
  return s.found;
}

// Id-order walk (ROW path without truncation): the first id whose inclusive prefix of q exceeds T.
TS_DEVICE int id_walk(const float* row, int V, u64 T, const Mass& m, Smem& s) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __syncthreads();
  if (tid == 0) s.found = -1;
  u64 run = 0;
#pragma unroll 1
  for (int base = 0; base < V; base += NT) {
    const int i = base + tid;
    const u64 w = i < V ? m(row[i]) : 0ull;
    u64 incl = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u64 y = __shfl_up_sync(FULL, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) s.redU64[warp] = incl;
    __syncthreads();
    const u64 wt = lane < NWARP ? s.redU64[lane] : 0ull;
    u64 wi = wt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u64 y = __shfl_up_sync(FULL, wi, o);
      if (lane >= o) wi += y;
    }
    const u64 wexcl = __shfl_sync(FULL, wi - wt, warp);
    const u64 total = __shfl_sync(FULL, wi, 31);
    const u64 S = run + wexcl + incl;  // inclusive prefix at i
    if (i < V && S > T && S - w <= T) s.found = i;
    run += total;
    __syncthreads();
    if (run > T) break;
  }
  return s.found;
}

struct Sel {
  u64 key;     // the selected candidate's order key
  u64 before;  // count or mass of the candidates before it
};

// Among the candidates of `cut` in the host's order, the first whose inclusive cumulative weight
// (1 per candidate, or its mass q) is >= T (STRICT: > T). Requires T >= 1 when not STRICT, and
// a crossing to exist (T <= total, STRICT: T < total); otherwise it falls back to the first
// candidate with weight.
template <bool MASS, bool STRICT>
TS_DEVICE Sel radix_select(const float* row, int V, u64 cut, u64 T, const Mass& m, Smem& s) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  u32 prefix = 0, pmask = 0;
  u64 above = 0, binW = 0;
  int bin = 0;
#pragma unroll 1
  for (int shift = 24; shift >= 0; shift -= 8) {
    const bool last = shift == 0;
    __syncthreads();  // the previous user of hist/minId is done
    if (tid < 256) {
      s.hist[tid] = 0;
      s.minId[tid] = FULL;
    }
    __syncthreads();
    row_pass(row, V, 0.f, [&](float l, int i) {
      int b = -1;
      u64 w = 0;
      if (i < V) {
        const u32 f = fkey(l);
        if ((f & pmask) == prefix && okey(f, i) >= cut) {
          b = static_cast<int>((f >> shift) & 255u);
          w = MASS ? m(l) : 1ull;
        }
      }
      hist_add<MASS>(s, b, w, i, last);  // every lane: it is warp-collective
    });
    __syncthreads();
    if (warp == 0) {
      // Lane L holds bins 255 - 8L .. 248 - 8L (descending), so lanes run in the host's order.
      u64 h[8], tot = 0;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        h[j] = s.hist[255 - (lane * 8 + j)];
        tot += h[j];
      }
      u64 incl = tot;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(FULL, incl, o);
        if (lane >= o) incl += y;
      }
      u64 c = above + (incl - tot);
      int hitBin = -1, anyBin = -1;
      u64 hitAbove = 0, hitW = 0, anyAbove = 0, anyW = 0;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const bool has = h[j] > 0;
        const bool hit = STRICT ? (c + h[j] > T) : (c + h[j] >= T);
        if (hitBin < 0 && has && hit) {
          hitBin = 255 - (lane * 8 + j);
          hitAbove = c;
          hitW = h[j];
        }
        if (anyBin < 0 && has) {
          anyBin = 255 - (lane * 8 + j);
          anyAbove = c;
          anyW = h[j];
        }
        c += h[j];
      }
      const u32 hits = __ballot_sync(FULL, hitBin >= 0);
      const u32 anys = __ballot_sync(FULL, anyBin >= 0);
      const int src = hits ? __ffs(hits) - 1 : (anys ? __ffs(anys) - 1 : 0);
      if (lane == src) {
        if (hits) {
          s.selBin = hitBin;
          s.selAbove = hitAbove;
          s.selW = hitW;
        } else if (anys) {
          s.selBin = anyBin;
          s.selAbove = anyAbove;
          s.selW = anyW;
        } else {
          s.selBin = 0;
          s.selAbove = above;
          s.selW = 0;
        }
      }
    }
    __syncthreads();
    bin = s.selBin;
    above = s.selAbove;
    binW = s.selW;
    prefix |= static_cast<u32>(bin) << shift;
    pmask |= 255u << shift;
  }
  // prefix is now the exact fkey v of the crossing; above = weight of candidates with fkey > v;
  // binW = weight of the candidates with fkey == v (the ties), each of weight `unit`.
  const u64 unit = MASS ? m(fval(prefix)) : 1ull;
  u64 j = 0;
  if (unit > 0) {
    const u64 need = T > above ? T - above : 0ull;
    j = STRICT ? need / unit : (need > 0 ? (need - 1) / unit : 0ull);
    const u64 nties = binW / unit;
    if (nties > 0 && j > nties - 1) j = nties - 1;
  }
  int id = static_cast<int>(s.minId[bin]);
  if (j > 0) {
    const int t = nth_tie(row, V, prefix, cut, static_cast<u32>(j), s);
    if (t >= 0) id = t;
  }
  return {okey(prefix, id), above + j * unit};
}

// Appends the candidates of `cut` to dst (capacity cap) in any order; returns how many there are.
TS_DEVICE int gather(const float* row, int V, u64 cut, u64* dst, int cap, Smem& s) {
  const int tid = threadIdx.x, lane = tid & 31;
  __syncthreads();
  if (tid == 0) s.cnt = 0;
  __syncthreads();
#pragma unroll 1
  for (int base = 0; base < V; base += NT) {
    const int i = base + tid;
    u64 o = 0;
    bool p = false;
    if (i < V) {
      o = okey(fkey(row[i]), i);
      p = o >= cut;
    }
    const u32 bal = __ballot_sync(FULL, p);
    if (bal) {
      const int leader = __ffs(bal) - 1;
      u32 pos0 = 0;
      if (lane == leader) pos0 = atomicAdd(&s.cnt, static_cast<u32>(__popc(bal)));
      pos0 = __shfl_sync(FULL, pos0, leader);
      const u32 pos = pos0 + __popc(bal & ((1u << lane) - 1u));
      if (p && pos < static_cast<u32>(cap)) dst[pos] = o;
    }
  }
  __syncthreads();
  const int n = static_cast<int>(s.cnt);
  return n < cap ? n : cap;
}

// Sorts keys[0, P) descending (P a power of two, <= CAP).
TS_DEVICE void bitonic_desc(u64* keys, int P) {
  __syncthreads();
#pragma unroll 1
  for (int k = 2; k <= P; k <<= 1) {
#pragma unroll 1
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = threadIdx.x; t < P / 2; t += NT) {
        const int i = ((t & ~(j - 1)) << 1) | (t & (j - 1));  // bit j of i is 0
        const u64 a = keys[i], b = keys[i + j];
        const bool desc = (i & k) == 0;
        if (desc ? a < b : a > b) {
          keys[i] = b;
          keys[i + j] = a;
        }
      }
      __syncthreads();
    }
  }
}

// ---- the two sampling paths -------------------------------------------------------------------

// LIST: keys[0, n) are the host's candidate list in the host's order. Returns the token. The
// host's algorithm on the list, in double, with its exact sequence of roundings: the per-entry
// values (p_i, p_i / sum, the min-p test) in parallel, the four left folds of drawTruncated (sum,
// top-p's cumulative sum, kept, the inverse-CDF walk) on one thread in the host's order.
TS_DEVICE int list_draw(int n, float mx, const RowParams* P, u32 m24, Smem& s) {
  const int tid = threadIdx.x;
  const double invT = __ddiv_rn(1.0, P->temperature);
  const double mxd = static_cast<double>(mx);
  const double minP = P->minP, topP = P->topP;
  double p[ITEMS];
  int id[ITEMS];
#pragma unroll
  for (int k = 0; k < ITEMS; k++) {
    const int e = tid * ITEMS + k;
    p[k] = 0.0;
    id[k] = 0;
    if (e < n) {
      const u64 o = s.keys[e];
      p[k] = exp(__dmul_rn(__dsub_rn(static_cast<double>(fval(okey_f(o))), mxd), invT));
      id[k] = okey_id(o);
    }
  }
  __syncthreads();  // every key is read before pd (the same storage) is written
#pragma unroll
  for (int k = 0; k < ITEMS; k++)
    if (tid * ITEMS + k < n) s.pd[tid * ITEMS + k] = p[k];
  __syncthreads();
  if (tid == 0) {
    double sum = 0.0;
    for (int e = 0; e < n; e++) sum += s.pd[e];
    s.bD[0] = sum;
  }
  __syncthreads();
  const double sum = s.bD[0];
  int keep = n;
  if (minP > 0.0) {
    // The host drops from the tail while p_i / sum < minP * (p_0 / sum), keeping at least one:
    // keep = 1 + the last index that passes.
    const double thr = __dmul_rn(minP, __ddiv_rn(s.pd[0], sum));
    int last = 0;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
      const int e = tid * ITEMS + k;
      if (e < n && !(__ddiv_rn(p[k], sum) < thr)) last = e + 1;
    }
    last = block_all(last, OpMax(), 0, s.redI);
    keep = last > 1 ? last : 1;
  }
  if (topP < 1.0) {
#pragma unroll
    for (int k = 0; k < ITEMS; k++)
      if (tid * ITEMS + k < n) s.pr[tid * ITEMS + k] = __ddiv_rn(p[k], sum);
    __syncthreads();
  }
  if (tid == 0) {
    if (topP < 1.0) {
      double cum = 0.0;
      for (int e = 0; e < keep; e++) {
        cum += s.pr[e];
        if (cum >= topP) {
          keep = e + 1;
          break;
        }
      }
    }
    double kept = 0.0;
    for (int e = 0; e < keep; e++) kept += s.pd[e];
    double target = __dmul_rn(static_cast<double>(m24) * 0x1p-24, kept);
    int chosen = keep - 1;
    for (int e = 0; e < keep; e++) {
      target -= s.pd[e];
      if (target < 0.0) {
        chosen = e;
        break;
      }
    }
    s.found = chosen;
  }
  __syncthreads();
  const int chosen = s.found;
  __syncthreads();
#pragma unroll
  for (int k = 0; k < ITEMS; k++)
    if (tid * ITEMS + k == chosen) s.found = id[k];
  __syncthreads();
  return s.found;
}

// floor(m24 / 2^24 * kept), exactly (m24 < 2^24, kept < 2^64).
TS_DEVICE u64 scale_u24(u64 kept, u32 m24) {
  const u64 lo = kept * m24, hi = __umul64hi(kept, static_cast<u64>(m24));
  return (hi << 40) | (lo >> 24);
}

// ROW: fixed-point masses and radix selects over the whole row. Returns the token.
TS_DEVICE int row_draw(const float* row, int V, float mx, u64 maxKey, bool truncK, bool sorted, const RowParams* P,
                       u32 m24, Smem& s) {
  // 1 / T in f32, held finite so that the max keeps (0 * invT) = 0 and mass 2^42.
  const double invTd = __ddiv_rn(1.0, P->temperature);
  const Mass m{mx, invTd < 3.0e38 ? static_cast<float>(invTd) : 3.0e38f};
  if (!sorted) {
    const u64 sum = mass_sum(row, V, 0ull, m, s);
    const int t = id_walk(row, V, scale_u24(sum, m24), m, s);
    return t >= 0 ? t : okey_id(maxKey);
  }
  u64 cutK = 0;
  if (truncK) cutK = radix_select<false, false>(row, V, 0ull, static_cast<u64>(P->topK), m, s).key;
  const u64 sum = mass_sum(row, V, cutK, m, s);
  u64 cut = cutK, kept = sum;  // the kept cut and its mass (known while it is Ck or Cp)
  bool known = true;
  if (P->minP > 0.0) {
    const u64 qmin = static_cast<u64>(ceil(P->minP * 4398046511104.0));
    u32 fmin = FULL;
    row_pass(row, V, 0.f, [&](float l, int i) {
      if (i < V) {
        const u32 f = fkey(l);
        if (f < fmin && okey(f, i) >= cutK && m(l) >= qmin) fmin = f;
      }
    });
    fmin = block_all(fmin, OpMin(), FULL, s.redU32);
    // None passes (minP > 1 only): the host keeps its first candidate.
    const u64 cutM = fmin == FULL ? maxKey : (static_cast<u64>(fmin) << 32);
    if (cutM > cut) {
      cut = cutM;
      known = false;
    }
  }
  if (P->topP < 1.0) {
    u64 T = static_cast<u64>(ceil(P->topP * static_cast<double>(sum)));
    if (T < 1) T = 1;
    if (T > sum) T = sum;
    const Sel sp = radix_select<true, false>(row, V, cutK, T, m, s);
    if (sp.key >= cut) {
      cut = sp.key;
      kept = sp.before + m(fval(okey_f(sp.key)));
      known = true;
    }
  }
  if (!known) kept = mass_sum(row, V, cut, m, s);
  return okey_id(radix_select<true, true>(row, V, cut, scale_u24(kept, m24), m, s).key);
}

TS_DEVICE void apply_penalties(float* row, int V, const RowParams* P, const int* ids, const int* counts) {
  const double rp = P->repetitionPenalty;
  if (rp != 1.0) {
    const int start = P->repStart, n = P->repCount;
    for (int j = threadIdx.x; j < n; j += NT) {
      const int id = ids[start + j];
      if (id >= 0 && id < V) {
        const double l = static_cast<double>(row[id]);
        row[id] = __double2float_rn(l > 0.0 ? __ddiv_rn(l, rp) : __dmul_rn(l, rp));
      }
    }
    __syncthreads();
  }
  const double pp = P->presencePenalty, fp = P->frequencyPenalty;
  if (pp != 0.0 || fp != 0.0) {
    const int start = P->outStart, n = P->outCount;
    for (int j = threadIdx.x; j < n; j += NT) {
      const int id = ids[start + j];
      if (id >= 0 && id < V) {
        const double d = __dadd_rn(pp, __dmul_rn(fp, static_cast<double>(counts[start + j])));
        row[id] = __double2float_rn(__dsub_rn(static_cast<double>(row[id]), d));
      }
    }
    __syncthreads();
  }
}

TS_DEVICE bool finite_f32(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

}  // namespace ts_sampling

extern "C" __global__ void __launch_bounds__(ts_sampling::NT, 1)
    ts_sample_f32(float* logits, int vocab, const void* params, const int* ids, const int* counts, int* outTokens,
                  float* outLogprobs, int* outTopIds, float* outTopLogprobs, int maxTopN) {
  ts::pdl_enter();
  using namespace ts_sampling;
  __shared__ Smem s;
  const int r = blockIdx.x, tid = threadIdx.x, V = vocab;
  const RowParams* P = static_cast<const RowParams*>(params) + r;
  float* row = logits + static_cast<size_t>(r) * static_cast<size_t>(V > 0 ? V : 0);
  if (V <= 0) {
    if (tid == 0) outTokens[r] = 0;
    return;
  }

  apply_penalties(row, V, P, ids, counts);

  // Max pass: the largest order key is the argmax (ties to the lowest id). A NaN becomes -inf in
  // the row (a bit test: fast math may drop l != l); the block_all barrier below orders that
  // store before every later pass reads the row.
  u64 best = 0;
  row_pass(row, V, 0.f, [&](float l, int i) {
    if (i < V) {
      if ((__float_as_uint(l) & 0x7fffffffu) > 0x7f800000u) row[i] = l = -INFINITY;
      const u64 o = okey(fkey(l), i);
      if (o > best) best = o;
    }
  });
  best = block_all(best, OpMax(), 0ull, s.redU64);
  const float mx = fval(okey_f(best));
  int tok = okey_id(best);

  if (P->temperature != 0.0 && finite_f32(mx)) {
    const u32 m24 = philox4x32_10(P->seedLo, P->seedHi, P->counter, P->stream, 0u, 0u).x >> 8;
    const int k = P->topK;
    const bool truncK = k > 0 && k < V;
    const bool sorted = truncK || P->topP < 1.0 || P->minP > 0.0;
    if (V <= CAP) {
      int Pn = 1;
      while (Pn < V) Pn <<= 1;
      __syncthreads();
      for (int e = tid; e < Pn; e += NT) s.keys[e] = e < V ? okey(fkey(row[e]), e) : 0ull;
      if (sorted) bitonic_desc(s.keys, Pn);
      __syncthreads();
      tok = list_draw(truncK ? k : V, mx, P, m24, s);
    } else if (truncK && k <= CAP) {
      const Mass none{0.f, 0.f};
      const u64 cutK = radix_select<false, false>(row, V, 0ull, static_cast<u64>(k), none, s).key;
      const int n = gather(row, V, cutK, s.keys, CAP, s);
      int Pn = 1;
      while (Pn < n) Pn <<= 1;
      for (int e = n + tid; e < Pn; e += NT) s.keys[e] = 0ull;
      bitonic_desc(s.keys, Pn);
      tok = list_draw(n, mx, P, m24, s);
    } else {
      tok = row_draw(row, V, mx, best, truncK, sorted, P, m24, s);
    }
  }
  if (tid == 0) outTokens[r] = tok;

  // Logprobs of the penalized logits (before temperature).
  const int lp = P->logprobs;
  if (lp >= 0) {
    const double mxd = static_cast<double>(mx);
    double part = 0.0;
    if (V <= CAP) {
      for (int i = tid; i < V; i += NT) part += exp(__dsub_rn(static_cast<double>(row[i]), mxd));
    } else {
      float acc = 0.f, comp = 0.f;  // Kahan; past V the fill -inf adds exp(-inf) = 0
      row_pass(row, V, -INFINITY, [&](float l, int) {
        const float y = __expf(l - mx) - comp;
        const float t = acc + y;
        comp = (t - acc) - y;
        acc = t;
      });
      part = static_cast<double>(acc) - static_cast<double>(comp);
    }
    const double lse = __dadd_rn(mxd, log(block_all(part, OpAdd(), 0.0, s.redD)));
    if (tid == 0 && outLogprobs) outLogprobs[r] = static_cast<float>(__dsub_rn(static_cast<double>(row[tok]), lse));
    int n = lp < V ? lp : V;
    if (n > maxTopN) n = maxTopN;
    if (n > MAX_TOP) n = MAX_TOP;
    if (n > 0 && outTopIds && outTopLogprobs) {
      const Mass none{0.f, 0.f};
      const u64 cutN = radix_select<false, false>(row, V, 0ull, static_cast<u64>(n), none, s).key;
      const int got = gather(row, V, cutN, s.top, MAX_TOP, s);
      if (tid < got) {
        const u64 o = s.top[tid];
        int rank = 0;
        for (int t = 0; t < got; t++) rank += s.top[t] > o ? 1 : 0;
        const size_t at = static_cast<size_t>(r) * maxTopN + rank;
        outTopIds[at] = okey_id(o);
        outTopLogprobs[at] = static_cast<float>(__dsub_rn(static_cast<double>(fval(okey_f(o))), lse));
      }
      for (int t = got + tid; t < maxTopN; t += NT) {
        outTopIds[static_cast<size_t>(r) * maxTopN + t] = -1;
        outTopLogprobs[static_cast<size_t>(r) * maxTopN + t] = -INFINITY;
      }
      return;
    }
  } else if (tid == 0 && outLogprobs) {
    outLogprobs[r] = __int_as_float(0x7fc00000);
  }
  if (maxTopN > 0 && outTopIds && outTopLogprobs)
    for (int t = tid; t < maxTopN; t += NT) {
      outTopIds[static_cast<size_t>(r) * maxTopN + t] = -1;
      outTopLogprobs[static_cast<size_t>(r) * maxTopN + t] = -INFINITY;
    }
}
