// Kernels that check the emulator itself (tests/cuda/emulator.test.ts); compiled into the
// emulator only, never into Tessera's fatbin.
#include "mma.cuh"
#include "sm90.cuh"

namespace {
constexpr unsigned FULL = 0xffffffffu;
}

// Eight collectives per thread: out[8 tid + k].
extern "C" __global__ void ts_emu_selftest_collectives(int* out) {
  const int tid = threadIdx.x;
  int* o = out + 8 * tid;
  o[0] = __shfl_sync(FULL, tid * 10, 5);
  o[1] = __shfl_xor_sync(FULL, tid, 1);
  o[2] = __shfl_up_sync(FULL, tid, 3);
  o[3] = __shfl_down_sync(FULL, tid, 2, 8);
  o[4] = __shfl_xor_sync(FULL, tid, 4, 4);
  o[5] = static_cast<int>(__ballot_sync(FULL, tid % 3 == 0));
  o[6] = static_cast<int>(__reduce_add_sync(FULL, static_cast<unsigned>(tid)));
  o[7] = __any_sync(FULL, tid == 40);
}

// One warp. Lane l gives the ldmatrix row `rows[l]` (in 16-bit elements) of a 512-element tile
// copied from `tile_in` to shared memory; ld_out[8 l ..] gets the four registers of ldmatrix.x4,
// then of .x4.trans. With the fragments a[4 l ..], b[2 l ..], c[4 l ..], d[4 l ..] gets mma's.
template <class T>
__device__ void selftest_mma(uint32_t* ld_out, float* d, const uint16_t* tile_in, const int* rows, const uint32_t* a, const uint32_t* b, const float* c) {
  __shared__ __align__(16) uint16_t tile[512];
  const int l = threadIdx.x;
  for (int i = l; i < 512; i += 32) tile[i] = tile_in[i];
  __syncthreads();
  uint32_t r[4];
  ts::mma::ldsm_x4(ts::smem_u32(tile + rows[l]), r[0], r[1], r[2], r[3]);
  for (int i = 0; i < 4; i++) ld_out[8 * l + i] = r[i];
  ts::mma::ldsm_x4_t(ts::smem_u32(tile + rows[l]), r[0], r[1], r[2], r[3]);
  for (int i = 0; i < 4; i++) ld_out[8 * l + 4 + i] = r[i];
  float acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  const uint32_t af[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  ts::mma::mma<T>(acc, af, b[2 * l], b[2 * l + 1]);
  for (int i = 0; i < 4; i++) d[4 * l + i] = acc[i];
}
extern "C" __global__ void ts_emu_selftest_mma_bf16(uint32_t* ld_out, float* d, const uint16_t* tile_in, const int* rows, const uint32_t* a, const uint32_t* b, const float* c) {
  selftest_mma<ts::bf16>(ld_out, d, tile_in, rows, a, b, c);
}
extern "C" __global__ void ts_emu_selftest_mma_f16(uint32_t* ld_out, float* d, const uint16_t* tile_in, const int* rows, const uint32_t* a, const uint32_t* b, const float* c) {
  selftest_mma<ts::f16>(ld_out, d, tile_in, rows, a, b, c);
}

// cp.async: two commit groups per thread (the second copies 8 of 16 bytes); out[5 t ..] reads
// shared memory before any wait, after wait_group 1, and after wait_group 0.
extern "C" __global__ void ts_emu_selftest_cp_async(float* out, const float* in) {
  __shared__ __align__(16) float buf[2][128];
  const int t = threadIdx.x;
  ts::mma::cp_async16(ts::smem_u32(&buf[0][4 * t]), in + 4 * t, 16);
  ts::mma::cp_async_commit();
  ts::mma::cp_async16(ts::smem_u32(&buf[1][4 * t]), in + 128 + 4 * t, 8);
  ts::mma::cp_async_commit();
  out[5 * t] = buf[0][4 * t];  // nothing has landed: the poison
  ts::mma::cp_async_wait<1>();
  out[5 * t + 1] = buf[0][4 * t];  // group 0 has
  out[5 * t + 2] = buf[1][4 * t];  // group 1 has not
  ts::mma::cp_async_wait<0>();
  out[5 * t + 3] = buf[1][4 * t];      // copied
  out[5 * t + 4] = buf[1][4 * t + 3];  // zero-filled past src-size
}

// Thread 31 writes shared memory that every thread then reads, with or without a barrier between.
extern "C" __global__ void ts_emu_selftest_barrier(int* out, int with_barrier) {
  __shared__ int s;
  if (threadIdx.x == 31) s = 7;
  if (with_barrier) __syncthreads();
  out[threadIdx.x] = s;
}

// Half the threads exit before a barrier the other half waits at.
extern "C" __global__ void ts_emu_selftest_exit(int* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Faults the emulator must report.
extern "C" __global__ void ts_emu_selftest_partial_shfl(int* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(FULL, 1, 1);
}
extern "C" __global__ void ts_emu_selftest_diverged(int* out) {
  if ((threadIdx.x & 31) < 16) out[0] = static_cast<int>(__ballot_sync(FULL, 1));
  else out[1] = __any_sync(FULL, 1);
}
extern "C" __global__ void ts_emu_selftest_unaligned_ldsm(int* out) {
  __shared__ __align__(16) uint16_t tile[512];
  uint32_t r0, r1, r2, r3;
  ts::mma::ldsm_x4(ts::smem_u32(tile + 8 * threadIdx.x + 1), r0, r1, r2, r3);
  out[threadIdx.x] = static_cast<int>(r0 + r1 + r2 + r3);
}

// Odd and even lanes shuffle among themselves at the same time (disjoint masks: legal on sm_70+).
extern "C" __global__ void ts_emu_selftest_disjoint(int* out) {
  const int l = threadIdx.x;
  if (l & 1) out[l] = __shfl_xor_sync(0xaaaaaaaau, l, 2);
  else out[l] = __shfl_xor_sync(0x55555555u, l, 2);
}

// A full-warp ballot, then one over the low half: each lane keeps its own results.
extern "C" __global__ void ts_emu_selftest_votes(unsigned* out) {
  const int l = threadIdx.x;
  const unsigned all = __ballot_sync(FULL, l % 4 == 0);
  unsigned half = 0;
  if (l < 16) half = __ballot_sync(0xffffu, 1);
  out[2 * l] = all;
  out[2 * l + 1] = half;
}

// Thread 1 reads what thread 0 copies with cp.async, after a barrier but before thread 0 waits
// (the emulator's round after the barrier runs thread 1 first).
extern "C" __global__ void ts_emu_selftest_cp_async_race(float* out, const float* in) {
  __shared__ __align__(16) float buf[4];
  if (threadIdx.x == 0) {
    ts::mma::cp_async16(ts::smem_u32(buf), in, 16);
    ts::mma::cp_async_commit();
  }
  __syncthreads();
  if (threadIdx.x == 1) out[0] = buf[0];
  if (threadIdx.x == 0) ts::mma::cp_async_wait<0>();
}

// Thread `who` of the block reads (write = 0) or writes in[at] (in has n floats); every thread
// writes its own element of out. A read or write past the allocation's end faults.
extern "C" __global__ void ts_emu_selftest_global(float* out, float* in, int at, int who, int write) {
  float v = 0.f;
  if (threadIdx.x == static_cast<unsigned>(who)) {
    if (write) in[at] = 1.f;
    else v = in[at];
  }
  out[threadIdx.x] = v;
}

// Thread 3 loads a 16-byte vector from in + offset bytes (in is 16-byte aligned); every thread
// writes its out element. An offset that is not a multiple of 16 is a misaligned access.
extern "C" __global__ void ts_emu_selftest_misaligned(unsigned* out, const unsigned char* in, int offset) {
  unsigned v = 0;
  if (threadIdx.x == 3) v = reinterpret_cast<const uint4*>(in + offset)->y;
  out[threadIdx.x] = v;
}

// Clusters of two blocks of 64 threads. The second warp of each block exits at once (a cluster
// barrier waits for the threads that have not exited). Thread 0 initializes the block's mbarrier
// for 32 arrivals; after a cluster barrier (with_sync; without it a block may reach its peer
// before the peer's barrier exists) every thread of the first warp arrives on the peer's barrier,
// and thread 0 waits for its own to complete: out[4 b ..] = rank, cluster size, 1 once completed.
// The closing cluster barrier keeps each block until its peer's arrivals on it have landed.
extern "C" __global__ void ts_emu_selftest_cluster(int* out, int with_sync) {
  __shared__ __align__(8) uint64_t bar;
  const unsigned rank = ts::sm90::cluster_ctarank();
  int* o = out + 4 * blockIdx.x;
  if (threadIdx.x >= 32) return;
  if (threadIdx.x == 0) {
    ts::sm90::mbar_init(&bar, 32);
    o[0] = static_cast<int>(rank);
    o[1] = static_cast<int>(ts::sm90::cluster_nctarank());
  }
  if (with_sync) ts::sm90::cluster_sync();
  else __syncwarp();
  ts::sm90::mbar_arrive_cluster(&bar, rank ^ 1u);
  if (threadIdx.x == 0) {
    ts::sm90::mbar_wait(&bar, 0);
    o[2] = 1;
  }
  ts::sm90::cluster_sync();
}

// ---- the race check (race.h; tests/cuda/racecheck.test.ts) ----
// Each takes `ordered`: 1 puts in the synchronisation the pattern needs, 0 leaves it out. Without
// it the race check fails the launch, naming both threads, even where the values come out right.

// Two threads write the same value to one word with nothing ordering them; every thread reads it
// after a barrier. The values are right on any schedule: only the race check sees it.
extern "C" __global__ void ts_emu_selftest_race_same_value(int* out, int ordered) {
  __shared__ int s;
  const int t = threadIdx.x;
  if (t == 3) s = 5;
  if (ordered) __syncthreads();
  if (t == 17) s = 5;
  __syncthreads();
  out[t] = s;
}

// Each thread reads its neighbour's word and then overwrites its own: without the barrier between,
// a thread may overwrite a word its neighbour has yet to read (write after read).
extern "C" __global__ void ts_emu_selftest_race_war(int* out, int ordered) {
  __shared__ int s[64];
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  const int v = s[(t + 1) % blockDim.x];
  if (ordered) __syncthreads();
  s[t] = 2 * v;
  __syncthreads();
  out[t] = s[t];
}

// One warp: each lane writes a word and reads the mirror lane's, after __syncwarp (ordered) or
// after a shuffle, which orders no memory.
extern "C" __global__ void ts_emu_selftest_race_syncwarp(int* out, int ordered) {
  __shared__ int s[32];
  const int l = threadIdx.x;
  s[31 - l] = 0;  // written before the barrier: what races below is the second write
  __syncthreads();
  s[l] = l + 1;
  if (ordered) __syncwarp();
  else out[32 + l] = __shfl_sync(FULL, l, 0);
  out[l] = s[31 - l];
}

// A one-stage ring on mbarriers: thread 0 fills the stage twice, warp 1 reads it after each fill
// and releases it on `empty`, which the second fill waits for. Unordered, the readers release the
// stage before reading it (the values still come out right here: a reader does not yield between
// its arrival and its read).
extern "C" __global__ void ts_emu_selftest_race_mbarrier(int* out, int ordered) {
  __shared__ __align__(8) uint64_t full;
  __shared__ __align__(8) uint64_t empty;
  __shared__ int stage[32];
  const int t = threadIdx.x;
  if (t == 0) {
    ts::sm90::mbar_init(&full, 1);
    ts::sm90::mbar_init(&empty, 32);
  }
  __syncthreads();
  if (t < 32) {
    if (t == 0)
      for (int round = 0; round < 2; round++) {
        if (round == 1) ts::sm90::mbar_wait(&empty, 0);
        for (int i = 0; i < 32; i++) stage[i] = 100 * round + i;
        ts::sm90::mbar_arrive(&full);
      }
    return;
  }
  int sum = 0;
  for (int round = 0; round < 2; round++) {
    ts::sm90::mbar_wait(&full, round);
    if (!ordered) ts::sm90::mbar_arrive(&empty);
    sum += stage[t - 32];
    if (ordered) ts::sm90::mbar_arrive(&empty);
  }
  out[t - 32] = sum;
}

// Warp 0 writes, then arrives at named barrier 1; warp 1 waits there (ordered) and reads.
extern "C" __global__ void ts_emu_selftest_race_named(int* out, int ordered) {
  __shared__ int s[32];
  const int t = threadIdx.x;
  if (t >= 32) s[t - 32] = 0;  // written before the barrier: what races below is the second write
  __syncthreads();
  if (t < 32) {
    s[t] = 3 * t;
    if (ordered) ts::sm90::named_arrive(1, 64);
    return;
  }
  if (ordered) ts::sm90::named_sync(1, 64);
  out[t - 32] = s[t - 32];
}

// ldmatrix reads each 16-byte row as the lane that gave its address: warp 1 writes the rows
// warp 0 loads, before (ordered) or without a barrier.
extern "C" __global__ void ts_emu_selftest_race_ldmatrix(uint32_t* out, int ordered) {
  __shared__ __align__(16) uint16_t tile[256];
  const int t = threadIdx.x;
  for (int i = t; i < 256; i += 64) tile[i] = 0;  // written before the barrier: what races is the second write
  __syncthreads();
  if (t >= 32)
    for (int i = t - 32; i < 256; i += 32) tile[i] = static_cast<uint16_t>(i);
  if (ordered) __syncthreads();
  if (t < 32) {
    uint32_t r[4];
    ts::mma::ldsm_x4(ts::smem_u32(tile + 8 * t), r[0], r[1], r[2], r[3]);
    out[t] = r[0] ^ r[1] ^ r[2] ^ r[3];
  }
}

// One warpgroup writes a wgmma's operands (A 64 x 16, B 16 x 128, bf16 ones, 128B-swizzled rows of
// 64 values) with ordinary stores, then (ordered) fences them for the async proxy, then meets at a
// barrier and multiplies: out[t] = the thread's first accumulator, 16. Without the fence the
// barrier alone does not make the stores visible to the wgmma.
extern "C" __global__ void ts_emu_selftest_race_proxy(float* out, int ordered) {
  __shared__ __align__(1024) uint16_t a[64 * 64];
  __shared__ __align__(1024) uint16_t b[128 * 64];
  const int t = threadIdx.x;
  for (int i = t; i < 64 * 64; i += 128) a[i] = 0x3f80;
  for (int i = t; i < 128 * 64; i += 128) b[i] = 0x3f80;
  if (ordered) ts::sm90::fence_async_shared();
  __syncthreads();
  float d[64];
  ts::sm90::wgmma_fence();
  ts::sm90::wgmma_ss_m64n128k16<ts::bf16>(d, ts::sm90::desc_kmajor(a), ts::sm90::desc_kmajor(b), 0);
  ts::sm90::wgmma_commit();
  ts::sm90::wgmma_wait<0>();
  out[t] = d[0];
}

// Every thread reads a word of shared memory that (ordered) the block wrote before a barrier, or
// that nothing wrote: fmaxf(NaN, 0) is 0, so the poison does not show in the values.
extern "C" __global__ void ts_emu_selftest_race_unwritten(float* out, int ordered) {
  __shared__ float s[32];
  const int t = threadIdx.x;
  if (ordered) s[t] = 1.f;
  __syncthreads();
  out[t] = fmaxf(s[(t + 1) % 32], 0.f);
}
