// The CUDA execution model for Tessera's kernels compiled for the CPU (force-included before each
// kernel source; see tests/cuda/emu/README.md). Every CUDA thread of a block is a fiber of one OS
// thread; a fiber runs until it must wait (__syncthreads, a warp collective, the end of the
// kernel) and then yields to the block's scheduler (runtime.cpp). Warp collectives (shuffles,
// votes, reductions, ldmatrix, mma) rendezvous all the lanes the mask names and are computed by
// the last lane to arrive, so a collective reached by only some of its lanes, or a
// __syncthreads some threads never reach, is a reported deadlock, never a silent result.
// Shared memory is one window (dynamic part, then the static declarations' slots), poisoned with
// 0xff bytes (NaN as floats) before each block; cp.async copies land only at the
// cp.async.wait_group that covers them.
#pragma once
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <type_traits>
#include <limits>

// ---- declaration specifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// build.ts rewrites every __shared__ declaration onto the shared window; one it could not parse
// fails to compile here rather than silently becoming per-thread.
#define __shared__ __shared___declaration_not_rewritten_for_the_emulator
#define __constant__ static
#define __grid_constant__

// ---- vector types ----
struct alignas(4) uint1_ { unsigned x; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace emu {

// One CUDA thread.
struct Thread {
  void* sp;             // saved stack pointer while switched out
  uint3 tid;            // threadIdx
  unsigned linear;      // its index in the block
  int cta;              // its block's rank in the cluster (0 without clusters)
  bool cluster_arrived; // barrier.cluster.arrive made, its wait not yet
  uint64_t cluster_phase;  // the cluster barrier's phase it arrived on
  bool done;
  const char* waiting;  // what it waits at (for a deadlock report), null while running
  // While waiting: the scheduler resumes it only once *wait_gen differs from wait_val.
  const volatile uint64_t* wait_gen;
  uint64_t wait_val;
  uint32_t result[12];  // its words of the last collective it took part in
  // cp.async: copies issued since the last commit, then committed groups, oldest first.
  struct Copy { void* dst; const void* src; int bytes, src_bytes; };
  Copy* copies;         // ring of pending copies
  int n_copies;
  int group_end[64];    // for each committed group (oldest first), its end in copies
  int n_groups;
};

extern Thread* cur;
extern dim3 block_idx, block_dim, grid_dim;
// The dynamic part of the running thread's block's shared window (each block of a cluster has
// its own window; the scheduler points this at the running block's).
extern unsigned char* dyn_smem;
// A static __shared__ declaration's id: each template instantiation of a declaration takes its
// own (the rewrite keeps it in a function-local static), as each has its own storage on the device.
int new_shared_id();
// The slot of static __shared__ declaration `id` for this launch (allocated on first use).
void* static_shared(int id, size_t bytes, size_t align);
struct Limits {
  size_t dynamic_max, block_max;
};

// Suspends the current thread until the scheduler runs it again.
void yield();
// Ends the launch with an error (the message names the kernel, block and thread).
[[noreturn]] void fail(const char* fmt, ...);
// Block-wide barrier.
void syncthreads();
// A warp collective: `in` (n 32-bit words) from this lane; the last lane of `mask` to arrive runs
// `compute(ins, outs)` over all 32 lanes' words; `out` gets this lane's result words.
typedef void (*CollectiveFn)(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx);
void collective(const char* what, unsigned mask, const uint32_t* in, int n_in, uint32_t* out, int n_out, CollectiveFn fn, const void* ctx = nullptr);
// Shared-window address <-> pointer.
uint32_t shared_addr(const void* p);
void* shared_ptr(uint32_t addr, int bytes);
// cp.async.
void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

inline uint32_t lane() { return cur->linear & 31u; }

// The race check (race.h; no-ops unless built with it): an access at a shared address that the
// emulated hardware makes for the running thread, and one at a host address (the hook the
// compiler's instrumentation calls).
void race_shared(uint32_t addr, int bytes, bool write);
// fence.proxy.async by the running thread (the async proxy may then see its writes).
void race_proxy_fence();
void race_host_access(const void* p, size_t bytes, bool write);

// ---- sm_90a (runtime.cpp): mbarriers and TMA, by shared address; named barriers; wgmma ----
void mbar_init(uint32_t bar, uint32_t count);
// Arrives, first adding `tx_bytes` to the transaction bytes the phase waits for.
void mbar_arrive(uint32_t bar, uint32_t tx_bytes);
void mbar_wait(uint32_t bar, uint32_t parity);
// A TMA tile load (rank 2..5, coordinates innermost first) through the stand-in's tensor map.
void tma_load(uint32_t dst, const uint64_t* map, uint32_t bar, const int* coords, int rank);
void named_barrier(int id, int threads, bool wait);
// One thread's part of a warpgroup's wgmma: d (n / 2 floats) (+)= A (64 x 16: from the
// descriptor, or from `a`, the m64nNk16 register fragment) * B (16 x n from the descriptor,
// K-major, or MN-major with trans_b).
void wgmma(float* d, int n, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, bool accumulate, bool trans_b, bool bf16);
void wgmma_commit();
void wgmma_wait(int pending);
// Thread-block clusters: the blocks of a cluster run together, each with its own shared window at
// the same shared addresses. The block's rank in its cluster and the cluster's size in blocks;
// barrier.cluster.arrive / wait (every non-exited thread of the cluster); an mbarrier arrival on
// the barrier at shared address `bar` of the cluster's block `rank` (mapa + arrive.shared::cluster);
// a TMA load multicast to the blocks of `mask`, each at `dst` and completing bytes on its own
// barrier at `bar`.
unsigned cluster_rank();
unsigned cluster_size();
void cluster_arrive();
void cluster_wait();
void mbar_arrive_remote(uint32_t bar, unsigned rank);
void tma_load_multicast(uint32_t dst, const uint64_t* map, uint32_t bar, const int* coords, int rank, uint16_t mask);

template <class T>
inline void to_words(const T& v, uint32_t* w) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
  memcpy(w, &v, sizeof(T));
}
template <class T>
inline T from_words(const uint32_t* w) {
  T v;
  memcpy(&v, w, sizeof(T));
  return v;
}

enum ShflKind { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
struct ShflCtx { int kind; int width; int words; };
void shfl_compute(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx);

template <class T>
inline T shfl(const char* what, int kind, unsigned mask, T v, int arg, int width) {
  uint32_t in[3] = {0, 0, static_cast<uint32_t>(arg)}, out[2];
  to_words(v, in);
  const ShflCtx c{kind, width, static_cast<int>(sizeof(T) / 4)};
  collective(what, mask, in, 3, out, 2, shfl_compute, &c);
  return from_words<T>(out);
}

enum VoteKind { VOTE_BALLOT, VOTE_ANY, VOTE_ALL, RED_ADD_U32, RED_MIN_U32, RED_MAX_U32, RED_MIN_I32, RED_MAX_I32 };
void vote_compute(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx);
inline uint32_t vote(const char* what, int kind, unsigned mask, uint32_t v) {
  uint32_t out;
  collective(what, mask, &v, 1, &out, 1, vote_compute, &kind);
  return out;
}

}  // namespace emu

#define threadIdx (::emu::cur->tid)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::vote("__syncwarp", emu::VOTE_ANY, mask, 0); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) { return emu::shfl("__shfl_sync", emu::SHFL_IDX, mask, v, src, width); }
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) { return emu::shfl("__shfl_up_sync", emu::SHFL_UP, mask, v, static_cast<int>(d), width); }
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) { return emu::shfl("__shfl_down_sync", emu::SHFL_DOWN, mask, v, static_cast<int>(d), width); }
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) { return emu::shfl("__shfl_xor_sync", emu::SHFL_XOR, mask, v, m, width); }
inline unsigned __ballot_sync(unsigned mask, int p) { return emu::vote("__ballot_sync", emu::VOTE_BALLOT, mask, p != 0); }
inline int __any_sync(unsigned mask, int p) { return static_cast<int>(emu::vote("__any_sync", emu::VOTE_ANY, mask, p != 0)); }
inline int __all_sync(unsigned mask, int p) { return static_cast<int>(emu::vote("__all_sync", emu::VOTE_ALL, mask, p != 0)); }
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return emu::vote("__reduce_add_sync", emu::RED_ADD_U32, mask, v); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return emu::vote("__reduce_min_sync", emu::RED_MIN_U32, mask, v); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return emu::vote("__reduce_max_sync", emu::RED_MAX_U32, mask, v); }
inline int __reduce_min_sync(unsigned mask, int v) { return static_cast<int>(emu::vote("__reduce_min_sync", emu::RED_MIN_I32, mask, static_cast<uint32_t>(v))); }
inline int __reduce_max_sync(unsigned mask, int v) { return static_cast<int>(emu::vote("__reduce_max_sync", emu::RED_MAX_I32, mask, static_cast<uint32_t>(v))); }

// ---- address spaces ----
inline size_t __cvta_generic_to_shared(const void* p) { return emu::shared_addr(p); }
inline size_t __cvta_generic_to_global(const void* p) { return reinterpret_cast<size_t>(p); }

// ---- integer and bit intrinsics ----
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) { return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64); }
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; memcpy(&x, &f, 4); return x; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double d) { long long x; memcpy(&x, &d, 8); return x; }

// ---- floating-point intrinsics (the emulator computes them exactly or with the libm; the device's
// fast approximations are within the tolerances the tests use) ----
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.f : x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
// Explicitly rounded operations must not be contracted into an fma.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
inline double __ddiv_rn(double a, double b) { volatile double r = a / b; return r; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __double2float_rn(double d) { return static_cast<float>(d); }
inline unsigned long long __float2ull_rn(float f) {
  if (f != f) return 0x8000000000000000ull;
  const float r = nearbyintf(f);
  if (r <= 0.f) return 0;
  if (r >= 18446744073709551616.f) return ~0ull;
  return static_cast<unsigned long long>(r);
}
// Float -> 32-bit integer conversions saturate, and NaN gives 0 (PTX cvt).
template <class I>
inline I emu_saturate(double r) {
  if (r != r) return 0;
  if (r <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (r >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return static_cast<I>(r);
}
inline int __float2int_rn(float f) { return emu_saturate<int>(nearbyint(static_cast<double>(f))); }
inline int __float2int_rz(float f) { return emu_saturate<int>(trunc(static_cast<double>(f))); }
inline int __float2int_rd(float f) { return emu_saturate<int>(floor(static_cast<double>(f))); }
inline int __float2int_ru(float f) { return emu_saturate<int>(ceil(static_cast<double>(f))); }
inline unsigned __float2uint_rn(float f) { return emu_saturate<unsigned>(nearbyint(static_cast<double>(f))); }
inline unsigned __float2uint_rz(float f) { return emu_saturate<unsigned>(trunc(static_cast<double>(f))); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }

// CUDA's overloaded device min/max (any arithmetic mix, as the usual conversions give); the
// floating-point ones are fmin/fmax (a NaN operand yields the other).
template <class A, class B, class = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type min(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  if (std::is_floating_point<C>::value) return static_cast<C>(fmin(static_cast<C>(a), static_cast<C>(b)));
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B, class = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type max(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  if (std::is_floating_point<C>::value) return static_cast<C>(fmax(static_cast<C>(a), static_cast<C>(b)));
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// ---- memory ----
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
[[noreturn]] inline void __trap() { emu::fail("__trap()"); }
inline void __threadfence() {}
inline void __threadfence_block() {}

// Atomics: the block's threads are fibers of one OS thread and an atomic never yields, so a
// plain read-modify-write is atomic here. The race check leaves them out (atomics do not race
// with each other).
#define EMU_ATOMIC template <class T> inline __attribute__((no_sanitize_thread))
EMU_ATOMIC T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
EMU_ATOMIC T atomicSub(T* p, T v) { const T old = *p; *p = old - v; return old; }
EMU_ATOMIC T atomicMin(T* p, T v) { const T old = *p; *p = v < old ? v : old; return old; }
EMU_ATOMIC T atomicMax(T* p, T v) { const T old = *p; *p = v > old ? v : old; return old; }
EMU_ATOMIC T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
EMU_ATOMIC T atomicCAS(T* p, T cmp, T v) { const T old = *p; if (old == cmp) *p = v; return old; }
EMU_ATOMIC T atomicOr(T* p, T v) { const T old = *p; *p = old | v; return old; }
EMU_ATOMIC T atomicAnd(T* p, T v) { const T old = *p; *p = old & v; return old; }
#undef EMU_ATOMIC
