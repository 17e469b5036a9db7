// The emulator's runtime: the block scheduler (one fiber per CUDA thread), barriers, warp
// collectives, the shared window and cp.async, and emu_launch, which the stand-in libcuda calls
// for a kernel launch when the emulator is loaded (tests/cuda/mock/libcuda_mock.c, MOCK_EMU).
#include "cuda_emu.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <setjmp.h>
#include <pthread.h>
#include <time.h>

#if !defined(__x86_64__)
#error "the kernel emulator's fiber switch is written for x86-64"
#endif

// Saves the callee-saved registers and the FP control words on the current stack, stores the
// stack pointer in *save and continues on the stack `next` (as saved by the same function).
extern "C" void emu_switch(void** save, void* next);
asm(R"(
.text
.globl emu_switch
.hidden emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch, .-emu_switch
)");

namespace emu {

Thread* cur;
dim3 block_idx, block_dim, grid_dim;
namespace {
// The shared window: dynamic shared memory (up to 227 KiB, the most a block may have on sm_90),
// then the static declarations' slots.
constexpr size_t DYN_MAX = 227 * 1024, STATIC_MAX = 48 * 1024, MAX_STATIC_IDS = 4096;
__attribute__((aligned(1024))) unsigned char window[DYN_MAX + STATIC_MAX];
size_t static_used;
uint32_t static_slot[MAX_STATIC_IDS];  // offset in the window + 1; 0: not allocated this launch
int static_ids_used[MAX_STATIC_IDS], n_static_ids_used;
int next_static_id;
}  // namespace
extern unsigned char* const dyn_smem = window;

namespace {

constexpr size_t STACK_BYTES = 512 * 1024;
constexpr int MAX_THREADS = 1024;
constexpr int MAX_COPIES = 4096;

// A collective in progress in a warp: the lanes of `mask` that have arrived, and their words.
// Lanes of disjoint masks may hold collectives at the same time (sm_70+ lanes wait only for their
// own mask), so a warp has a few.
struct Rendezvous {
  int arrived;
  unsigned mask;
  const char* what;
  uint32_t in[32][12];
};
constexpr int SLOTS = 4;
struct Warp {
  Rendezvous slot[SLOTS];
  uint64_t gen[SLOTS];  // bumped when the slot's collective completes
};

struct Block {
  Thread threads[MAX_THREADS];
  unsigned char* stacks[MAX_THREADS];
  Thread::Copy* copy_rings[MAX_THREADS];
  Warp warps[MAX_THREADS / 32];
  int n, live;
  int bar_arrived;
  uint64_t bar_gen;
  uint64_t progress;
  void* sched_sp;
  void (*body)(const void*);
  const void* body_ctx;
  const char* kernel;
  size_t dyn_bytes;
  Limits limits;
  char error[1024];
  bool failed;
  jmp_buf fail_jump;  // in the scheduler's context
} B;

pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;

[[noreturn]] void fiber_main() {
  B.body(B.body_ctx);
  // Outstanding cp.async copies complete when the thread exits (nothing waits for them).
  cp_async_wait(0);
  cur->done = true;
  B.live--;
  B.progress++;
  if (B.live > 0 && B.bar_arrived > 0 && B.bar_arrived >= B.live) {
    // The threads still alive are all at the barrier: exited threads count as arrived.
    B.bar_arrived = 0;
    B.bar_gen++;
  }
  emu_switch(&cur->sp, B.sched_sp);
  __builtin_unreachable();
}

void fiber_start(Thread& t, unsigned char* stack) {
  // The frame emu_switch "returns" into fiber_main with: FP control words, six callee-saved
  // registers, the return address, and above it one slot (fiber_main's own return address, never
  // used), so that fiber_main starts as a called function does, with rsp = 8 mod 16.
  uint64_t* top = reinterpret_cast<uint64_t*>(stack + STACK_BYTES) - 2;  // 16-byte aligned
  uint64_t* sp = top - 9;
  sp[8] = 0;
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  uint64_t ctl = mxcsr | (static_cast<uint64_t>(fpucw) << 32);
  sp[0] = ctl;
  for (int i = 1; i <= 6; i++) sp[i] = 0;
  sp[7] = reinterpret_cast<uint64_t>(&fiber_main);
  t.sp = sp;
}

const char* kernel_where() {
  static char buf[160];
  if (!cur) return "";
  snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", block_idx.x, block_idx.y, block_idx.z, cur->tid.x, cur->tid.y, cur->tid.z);
  return buf;
}

}  // namespace

void yield() { emu_switch(&cur->sp, B.sched_sp); }

namespace {
// Suspends the current thread until *gen moves past `seen` (the scheduler does not resume it before).
void wait_for(const uint64_t* gen, uint64_t seen, const char* what) {
  cur->waiting = what;
  cur->wait_gen = gen;
  cur->wait_val = seen;
  while (*gen == seen) yield();
  cur->wait_gen = nullptr;
  cur->waiting = nullptr;
}
}  // namespace

void fail(const char* fmt, ...) {
  char msg[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(B.error, sizeof B.error, "%s: %s: %s", B.kernel, kernel_where(), msg);
  B.failed = true;
  // Back to the scheduler, which abandons the block's fibers (their stacks are reused).
  emu_switch(&cur->sp, B.sched_sp);
  __builtin_unreachable();
}

void syncthreads() {
  const uint64_t gen = B.bar_gen;
  B.bar_arrived++;
  B.progress++;
  if (B.bar_arrived == B.live) {
    B.bar_arrived = 0;
    B.bar_gen++;
    return;
  }
  wait_for(&B.bar_gen, gen, "__syncthreads");
}

void collective(const char* what, unsigned mask, const uint32_t* in, int n_in, uint32_t* out, int n_out, CollectiveFn fn, const void* ctx) {
  const unsigned l = lane();
  Warp& w = B.warps[cur->linear >> 5];
  // Lanes that exist in this warp (the block's last warp may be partial).
  const unsigned first = cur->linear & ~31u, count = static_cast<unsigned>(B.n) - first < 32 ? static_cast<unsigned>(B.n) - first : 32u;
  const unsigned exists = count == 32 ? 0xffffffffu : (1u << count) - 1u;
  if (!((mask >> l) & 1u)) fail("%s: lane %u calls it with mask 0x%08x, which leaves it out", what, l, mask);
  if (mask & ~exists) fail("%s: mask 0x%08x names lanes the block does not have", what, mask);
  // Join the collective of this mask in progress, or start one; a collective in progress whose
  // mask overlaps this one but differs, or that is another operation, means the lanes diverged.
  int s = -1, free_slot = -1;
  for (int i = 0; i < SLOTS; i++) {
    const Rendezvous& r = w.slot[i];
    if (r.arrived == 0) {
      if (free_slot < 0) free_slot = i;
      continue;
    }
    if (r.mask == mask && r.what == what) s = i;
    else if (r.mask & mask)
      fail("%s (mask 0x%08x) met %s (mask 0x%08x) in the same warp: the lanes diverged", what, mask, r.what, r.mask);
  }
  if (s < 0) {
    if (free_slot < 0) fail("%s: more than %d collectives in progress in one warp", what, SLOTS);
    s = free_slot;
    w.slot[s].mask = mask;
    w.slot[s].what = what;
  }
  Rendezvous& r = w.slot[s];
  memcpy(r.in[l], in, sizeof(uint32_t) * n_in);
  r.arrived++;
  B.progress++;
  if (r.arrived == __builtin_popcount(mask)) {
    // The last lane computes every lane's result into that thread's own storage, so that a later
    // collective cannot overwrite a result before its lane has read it.
    uint32_t results[32][12];
    fn(r.in, results, mask, ctx);
    for (unsigned i = 0; i < 32; i++)
      if ((mask >> i) & 1u) memcpy(B.threads[first + i].result, results[i], sizeof results[i]);
    r.arrived = 0;
    w.gen[s]++;
  } else {
    wait_for(&w.gen[s], w.gen[s], what);
  }
  memcpy(out, cur->result, sizeof(uint32_t) * n_out);
}

void shfl_compute(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx) {
  const ShflCtx& c = *static_cast<const ShflCtx*>(ctx);
  const unsigned w = static_cast<unsigned>(c.width);
  if (w < 1 || w > 32 || (w & (w - 1)) != 0) fail("shuffle width %d is not a power of two in 1..32", c.width);
  for (unsigned l = 0; l < 32; l++) {
    if (!((lanes >> l) & 1u)) continue;
    // PTX shfl: source j, valid when within the segment's bounds (unsigned lane arithmetic; an
    // invalid source gives the lane its own value).
    // The lane operand's low five bits count, as in PTX's b[4:0].
    const unsigned b = in[l][2] & 31u, base = l & ~(w - 1), last = base + w - 1;
    unsigned src;
    switch (c.kind) {
      case SHFL_IDX: src = base | (b & (w - 1)); break;
      case SHFL_UP: src = b > l || l - b < base ? l : l - b; break;
      case SHFL_DOWN: src = l + b > last ? l : l + b; break;
      default: src = (l ^ b) > last ? l : l ^ b; break;
    }
    if (!((lanes >> src) & 1u)) {
      // Reading a lane outside the mask is undefined on the device: poison it.
      out[l][0] = out[l][1] = 0x7fc00bad;
      continue;
    }
    out[l][0] = in[src][0];
    out[l][1] = c.words == 2 ? in[src][1] : 0;
  }
}

void vote_compute(const uint32_t (*in)[12], uint32_t (*out)[12], unsigned lanes, const void* ctx) {
  const int kind = *static_cast<const int*>(ctx);
  uint32_t ballot = 0, sum = 0, umin = ~0u, umax = 0;
  int32_t imin = INT32_MAX, imax = INT32_MIN;
  for (int l = 0; l < 32; l++) {
    if (!((lanes >> l) & 1u)) continue;
    const uint32_t v = in[l][0];
    if (v) ballot |= 1u << l;
    sum += v;
    umin = v < umin ? v : umin;
    umax = v > umax ? v : umax;
    imin = static_cast<int32_t>(v) < imin ? static_cast<int32_t>(v) : imin;
    imax = static_cast<int32_t>(v) > imax ? static_cast<int32_t>(v) : imax;
  }
  uint32_t r;
  switch (kind) {
    case VOTE_BALLOT: r = ballot; break;
    case VOTE_ANY: r = ballot != 0; break;
    case VOTE_ALL: r = ballot == lanes; break;
    case RED_ADD_U32: r = sum; break;
    case RED_MIN_U32: r = umin; break;
    case RED_MAX_U32: r = umax; break;
    case RED_MIN_I32: r = static_cast<uint32_t>(imin); break;
    default: r = static_cast<uint32_t>(imax); break;
  }
  for (int l = 0; l < 32; l++)
    if ((lanes >> l) & 1u) out[l][0] = r;
}

uint32_t shared_addr(const void* p) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < window || c >= window + sizeof window) fail("a generic pointer converted to a shared address is not in shared memory");
  return static_cast<uint32_t>(c - window);
}

void* shared_ptr(uint32_t addr, int bytes) {
  const size_t end = static_cast<size_t>(addr) + static_cast<size_t>(bytes);
  const bool dynamic = addr < DYN_MAX;
  if (dynamic ? end > B.dyn_bytes : end > DYN_MAX + static_used)
    fail("shared address 0x%x (+%d bytes) is outside the block's shared memory (%zu dynamic bytes launched, %zu static)", addr, bytes, B.dyn_bytes, static_used);
  return window + addr;
}

int new_shared_id() { return next_static_id++; }

void* static_shared(int id, size_t bytes, size_t align) {
  if (id < 0 || static_cast<size_t>(id) >= MAX_STATIC_IDS) fail("static __shared__ declaration %d: too many declarations", id);
  if (!static_slot[id]) {
    const size_t offset = (static_used + align - 1) & ~(align - 1);
    if (offset + bytes > STATIC_MAX) fail("static __shared__ declarations need more than %zu bytes (the most a block may declare)", STATIC_MAX);
    if (B.dyn_bytes + offset + bytes > B.limits.block_max)
      fail("%zu bytes of static and %zu of dynamic shared memory exceed the %zu a block may have", offset + bytes, B.dyn_bytes, B.limits.block_max);
    static_used = offset + bytes;
    memset(window + DYN_MAX + offset, 0xff, bytes);  // this block's poison (later blocks: run_block)
    static_slot[id] = static_cast<uint32_t>(offset + 1);
    static_ids_used[n_static_ids_used++] = id;
  }
  return window + DYN_MAX + static_slot[id] - 1;
}

void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes) {
  if (dst % bytes || reinterpret_cast<uintptr_t>(src) % bytes) fail("cp.async: addresses must be %d-byte aligned (shared 0x%x, global %p)", bytes, dst, src);
  if (src_bytes < 0 || src_bytes > bytes) fail("cp.async: src-size %d is not in 0..%d", src_bytes, bytes);
  if (cur->n_copies == MAX_COPIES) fail("cp.async: more than %d copies in flight", MAX_COPIES);
  void* d = shared_ptr(dst, bytes);
  // Until the wait that covers it, the destination holds nothing defined: poison, so that a read
  // by any thread before then (a missing wait or barrier) shows.
  memset(d, 0xff, static_cast<size_t>(bytes));
  cur->copies[cur->n_copies++] = Thread::Copy{d, src, bytes, src_bytes};
}

void cp_async_commit() {
  if (cur->n_groups == 64) fail("cp.async: more than 64 commit groups in flight");
  cur->group_end[cur->n_groups++] = cur->n_copies;
}

void cp_async_wait(int pending) {
  // Groups older than the newest `pending` land now (copies not yet committed stay in flight:
  // wait_group covers committed groups only).
  const int land = cur->n_groups - pending;
  if (land <= 0) return;
  const int end = cur->group_end[land - 1];
  for (int i = 0; i < end; i++) {
    const Thread::Copy& c = cur->copies[i];
    memset(c.dst, 0, static_cast<size_t>(c.bytes));
    if (c.src_bytes) memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  }
  memmove(cur->copies, cur->copies + end, sizeof(Thread::Copy) * (cur->n_copies - end));
  cur->n_copies -= end;
  for (int g = land; g < cur->n_groups; g++) cur->group_end[g - land] = cur->group_end[g] - end;
  cur->n_groups -= land;
}

namespace {

// Runs one block to completion; false (B.error set) on a failure or a deadlock.
bool run_block() {
  const int n = B.n;
  // Poison what the block can see: 0xff bytes, NaN in every float view.
  memset(window, 0xff, B.dyn_bytes);
  memset(window + DYN_MAX, 0xff, static_used);
  for (int i = 0; i < n; i++) {
    Thread& t = B.threads[i];
    t.linear = static_cast<unsigned>(i);
    t.tid = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
    t.done = false;
    t.waiting = nullptr;
    t.wait_gen = nullptr;
    t.n_copies = 0;
    t.n_groups = 0;
    if (!B.stacks[i]) {
      void* m = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) {
        snprintf(B.error, sizeof B.error, "%s: cannot map a fiber stack", B.kernel);
        return false;
      }
      mprotect(m, 4096, PROT_NONE);  // a guard page: overflowing the stack faults
      B.stacks[i] = static_cast<unsigned char*>(m);
      B.copy_rings[i] = static_cast<Thread::Copy*>(calloc(MAX_COPIES, sizeof(Thread::Copy)));
    }
    t.copies = B.copy_rings[i];
    fiber_start(t, B.stacks[i]);
  }
  for (int w = 0; w < (n + 31) / 32; w++)
    for (int i = 0; i < SLOTS; i++) B.warps[w].slot[i].arrived = 0;
  B.live = n;
  B.bar_arrived = 0;
  // Rounds alternate direction, so that code relying on an order the device does not promise
  // (a missing barrier) meets a different interleaving.
  for (int round = 0; B.live > 0; round++) {
    const uint64_t before = B.progress;
    for (int k = 0; k < n; k++) {
      const int i = round & 1 ? n - 1 - k : k;
      Thread& t = B.threads[i];
      if (t.done || (t.wait_gen && *t.wait_gen == t.wait_val)) continue;
      cur = &t;
      emu_switch(&B.sched_sp, t.sp);
      if (B.failed) {
        cur = nullptr;
        return false;
      }
    }
    cur = nullptr;
    if (B.progress == before) {
      int len = snprintf(B.error, sizeof B.error, "%s: block (%u,%u,%u) deadlocked:", B.kernel, block_idx.x, block_idx.y, block_idx.z);
      int shown = 0;
      for (int i = 0; i < n && len < static_cast<int>(sizeof B.error) - 80; i++) {
        const Thread& t = B.threads[i];
        if (t.done) continue;
        if (shown++ < 6) len += snprintf(B.error + len, sizeof B.error - len, " thread %d waits at %s;", i, t.waiting ? t.waiting : "?");
      }
      snprintf(B.error + len, sizeof B.error - len, " %d of %d threads still running (%d exited)", B.live, n, n - B.live);
      return false;
    }
  }
  return true;
}

}  // namespace

namespace {
// TESSERA_EMU_PROFILE=1: at exit, the time spent per kernel (to keep the emulated tiers quick).
struct Profile {
  const char* kernel;
  double seconds;
  long launches, blocks;
};
Profile profile[256];
int n_profile;
void print_profile() {
  double total = 0;
  for (int i = 0; i < n_profile; i++) total += profile[i].seconds;
  fprintf(stderr, "[kernel emulator] %.2f s in %d kernels\n", total, n_profile);
  for (int i = 0; i < n_profile; i++)
    fprintf(stderr, "[kernel emulator] %8.3f s %6ld launches %9ld blocks  %s\n", profile[i].seconds, profile[i].launches, profile[i].blocks, profile[i].kernel);
}
void record(const char* kernel, double seconds, long blocks) {
  static bool on = [] {
    const char* e = getenv("TESSERA_EMU_PROFILE");
    if (e && *e && strcmp(e, "0") != 0) atexit(print_profile);
    return e && *e && strcmp(e, "0") != 0;
  }();
  if (!on) return;
  int i = 0;
  while (i < n_profile && strcmp(profile[i].kernel, kernel) != 0) i++;
  if (i == n_profile) {
    if (n_profile == 256) return;
    profile[n_profile++] = Profile{strdup(kernel), 0, 0, 0};
  }
  profile[i].seconds += seconds;
  profile[i].launches++;
  profile[i].blocks += blocks;
}
double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
}  // namespace

// Runs body(ctx) as every thread of every block of the grid; 0, or -1 with the message in err.
int launch_grid(const char* kernel, dim3 grid, dim3 block, size_t dyn_bytes, Limits limits, void (*body)(const void*), const void* ctx, char* err, size_t err_len) {
  pthread_mutex_lock(&launch_lock);
  const size_t threads = static_cast<size_t>(block.x) * block.y * block.z;
  int rc = 0;
  // The device's launch limits (cuLaunchKernel refuses what breaks them).
  if (threads == 0 || threads > MAX_THREADS || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    snprintf(err, err_len, "%s: invalid launch geometry grid (%u,%u,%u) block (%u,%u,%u)", kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    pthread_mutex_unlock(&launch_lock);
    return -1;
  }
  if (dyn_bytes > limits.dynamic_max || dyn_bytes > limits.block_max || dyn_bytes > DYN_MAX) {
    snprintf(err, err_len, "%s: %zu bytes of dynamic shared memory, more than the function may launch with (%zu; a block may have %zu)", kernel, dyn_bytes,
             limits.dynamic_max, limits.block_max);
    pthread_mutex_unlock(&launch_lock);
    return -1;
  }
  B.n = static_cast<int>(threads);
  B.body = body;
  B.body_ctx = ctx;
  B.kernel = kernel;
  B.dyn_bytes = dyn_bytes;
  B.limits = limits;
  static_used = 0;
  for (int i = 0; i < n_static_ids_used; i++) static_slot[static_ids_used[i]] = 0;
  n_static_ids_used = 0;
  B.failed = false;
  B.error[0] = 0;
  grid_dim = grid;
  block_dim = block;
  const double t0 = now();
  for (unsigned z = 0; z < grid.z && rc == 0; z++)
    for (unsigned y = 0; y < grid.y && rc == 0; y++)
      for (unsigned x = 0; x < grid.x && rc == 0; x++) {
        block_idx = dim3{x, y, z};
        if (!run_block()) {
          snprintf(err, err_len, "%s", B.error);
          rc = -1;
        }
      }
  record(kernel, now() - t0, static_cast<long>(grid.x) * grid.y * grid.z);
  pthread_mutex_unlock(&launch_lock);
  return rc;
}

}  // namespace emu
