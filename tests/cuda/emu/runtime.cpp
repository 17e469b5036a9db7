// The emulator's runtime: the block scheduler (one fiber per CUDA thread), barriers, warp
// collectives, the shared window and cp.async, and emu_launch, which the stand-in libcuda calls
// for a kernel launch when the emulator is loaded (tests/cuda/mock/libcuda_mock.c, MOCK_EMU).
#include "cuda_emu.h"
#include "emu_half_types.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <setjmp.h>
#include <pthread.h>
#include <signal.h>
#include <ucontext.h>
#include <time.h>
#include <string_view>
#include <vector>

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
unsigned char* dyn_smem;
namespace {
// A block's shared window: 227 KiB, the most a block may have (sm_90). Dynamic shared memory from
// the bottom, the static declarations' slots from the top down (a launch's two must not meet: the
// driver's limit on their sum), so every shared address is below 227 KiB, as on the device
// (wgmma descriptors hold 18 bits of it). Each block of a cluster has its own window; the static
// slots sit at the same addresses in every one.
constexpr size_t DYN_MAX = 227 * 1024, STATIC_MAX = 48 * 1024, MAX_STATIC_IDS = 4096;
size_t static_used;
uint32_t static_slot[MAX_STATIC_IDS];  // offset in the window + 1; 0: not allocated this launch
int static_ids_used[MAX_STATIC_IDS], n_static_ids_used;
int next_static_id;
}  // namespace

namespace {

#include "race.h"

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

// An mbarrier, by its shared address: the arrivals a phase expects, those still pending, the
// transaction bytes outstanding, the parity of the phase in progress, and the TMA loads that
// complete bytes on it, not landed yet.
struct Cta;
struct Tma {
  Cta* cta;  // the block whose shared memory it lands in
  uint32_t dst;
  const uint64_t* map;
  int coords[5], rank;
};
struct MBar {
  uint32_t addr, count, pending, phase;
  int64_t tx;
  uint64_t gen;  // bumped on anything a waiter must look at again (a phase completing, a load queued)
  Tma loads[64];
  int n_loads;
};
constexpr int MAX_MBARS = 64;

struct NamedBarrier {
  int arrived, count;
  uint64_t gen;
};

// A warpgroup's wgmma operations issued and not yet landed, oldest first.
struct WgOp {
  int n, group;  // group: -1 until committed
  bool rs, accumulate, trans_b, bf16;
  uint64_t desc_a, desc_b;
  float* d[128];
  uint32_t a[128][4];
};
// An accumulator in flight: a thread's register array that pending operations write. Its value
// lives here while they run, in order; the registers hold NaN until the wait that lands the last
// of them (reading them before is undefined on the device).
struct Acc {
  float* d;
  int floats;
  float val[64];
};
constexpr int MAX_WG_OPS = 40, MAX_WARPGROUPS = MAX_THREADS / 128, MAX_ACCS = 4;
struct Warpgroup {
  int arrived;
  uint64_t gen;
  const char* what;
  WgOp ops[MAX_WG_OPS];
  int n_ops;
  int groups[64], n_groups;  // committed group ids not yet waited for, oldest first
  int next_group;
  Acc acc[128][MAX_ACCS];
  int n_acc[128];
};

// A block: its threads, their collectives and barriers, its shared window and sm_90a state.
struct Cta {
  Thread threads[MAX_THREADS];
  unsigned char* stacks[MAX_THREADS];
  Thread::Copy* copy_rings[MAX_THREADS];
  Warp warps[MAX_THREADS / 32];
  int live;
  int bar_arrived;
  uint64_t bar_gen;
  dim3 idx;
  unsigned char* window;  // DYN_MAX bytes, 1024-byte aligned
  MBar mbars[MAX_MBARS];
  int n_mbars;
  NamedBarrier named[16];
  Warpgroup warpgroups[MAX_WARPGROUPS];
  RACE(race::Sync bar_sync; race::Sync named_sync[16]; race::Sync mbar_sync[MAX_MBARS]; race::Sync warp_sync[MAX_THREADS / 32][SLOTS];
       race::Sync wg_sync[MAX_WARPGROUPS];)
};

// The launch: the blocks of the cluster running now (one block without clusters) and what they share.
constexpr int MAX_CLUSTER = 8;
struct Launch {
  int n;  // threads a block
  Cta* ctas[MAX_CLUSTER];
  int csize;     // blocks a cluster
  dim3 cluster;  // the cluster's shape
  Cta* cta;      // the running thread's block
  // barrier.cluster: arrivals in the phase in progress, the phase, the cluster's live threads.
  int cluster_arrived, cluster_live;
  uint64_t cluster_gen;
  uint64_t progress;
  void* sched_sp;
  void (*body)(const void*);
  const void* body_ctx;
  const char* kernel;
  size_t dyn_bytes;
  Limits limits;
  char error[1024];
  bool failed;
  bool illegal;     // the failure was an access outside every allocation (CUDA_ERROR_ILLEGAL_ADDRESS)
  bool misaligned;  // ... a misaligned access (CUDA_ERROR_MISALIGNED_ADDRESS)
  jmp_buf fail_jump;  // in the scheduler's context
  RACE(race::Sync cluster_sync;)
} B;
inline Cta& C() { return *B.cta; }
int rank_of(const Cta& c) {
  int r = 0;
  while (r < B.csize - 1 && B.ctas[r] != &c) r++;
  return r;
}

#include "race_check.h"

pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;

[[noreturn]] void fiber_main() {
  B.body(B.body_ctx);
  // Outstanding cp.async copies complete when the thread exits (nothing waits for them).
  cp_async_wait(0);
  cur->done = true;
  Cta& c = C();
  // An exit counts as arriving at the block's and the cluster's barriers.
  RACE(race::release(c.bar_sync); race::release(B.cluster_sync);)
  c.live--;
  B.cluster_live--;
  B.progress++;
  if (c.live > 0 && c.bar_arrived > 0 && c.bar_arrived >= c.live) {
    // The threads still alive are all at the barrier: exited threads count as arrived.
    RACE(race::publish(c.bar_sync, c.bar_gen);)
    c.bar_arrived = 0;
    c.bar_gen++;
  }
  if (B.cluster_live > 0 && B.cluster_arrived > 0 && B.cluster_arrived >= B.cluster_live) {
    // barrier.cluster waits for the non-exited threads only.
    RACE(race::publish(B.cluster_sync, B.cluster_gen);)
    B.cluster_arrived = 0;
    B.cluster_gen++;
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
  Cta& c = C();
  const uint64_t gen = c.bar_gen;
  RACE(race::release(c.bar_sync);)
  c.bar_arrived++;
  B.progress++;
  if (c.bar_arrived == c.live) {
    RACE(race::publish(c.bar_sync, gen); race::acquire(c.bar_sync, gen);)
    c.bar_arrived = 0;
    c.bar_gen++;
    return;
  }
  wait_for(&c.bar_gen, gen, "__syncthreads");
  RACE(race::acquire(c.bar_sync, gen);)
}

void collective(const char* what, unsigned mask, const uint32_t* in, int n_in, uint32_t* out, int n_out, CollectiveFn fn, const void* ctx) {
  const unsigned l = lane();
  Warp& w = C().warps[cur->linear >> 5];
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
  // Of the warp collectives, __syncwarp alone orders memory (race.h).
  RACE(const bool orders = strcmp(what, "__syncwarp") == 0; race::Sync& rs = C().warp_sync[cur->linear >> 5][s]; if (orders) race::release(rs);)
  const uint64_t phase = w.gen[s];
  r.arrived++;
  B.progress++;
  if (r.arrived == __builtin_popcount(mask)) {
    RACE(if (orders) { race::publish(rs, phase); race::acquire(rs, phase); })
    // The last lane computes every lane's result into that thread's own storage, so that a later
    // collective cannot overwrite a result before its lane has read it.
    uint32_t results[32][12];
    fn(r.in, results, mask, ctx);
    for (unsigned i = 0; i < 32; i++)
      if ((mask >> i) & 1u) memcpy(C().threads[first + i].result, results[i], sizeof results[i]);
    r.arrived = 0;
    w.gen[s]++;
  } else {
    wait_for(&w.gen[s], phase, what);
    RACE(if (orders) race::acquire(rs, phase);)
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
  const unsigned char* window = C().window;
  if (c < window || c >= window + DYN_MAX) fail("a generic pointer converted to a shared address is not in the block's shared memory");
  return static_cast<uint32_t>(c - window);
}

namespace {
// Shared address `addr` (+bytes) in block `c`'s window.
void* shared_ptr_in(Cta& c, uint32_t addr, int bytes) {
  const size_t end = static_cast<size_t>(addr) + static_cast<size_t>(bytes);
  const bool dynamic = addr < DYN_MAX - static_used;
  if (dynamic ? end > B.dyn_bytes : end > DYN_MAX)
    fail("shared address 0x%x (+%d bytes) is outside the block's shared memory (%zu dynamic bytes launched, %zu static)", addr, bytes, B.dyn_bytes, static_used);
  return c.window + addr;
}
}  // namespace

void* shared_ptr(uint32_t addr, int bytes) { return shared_ptr_in(C(), addr, bytes); }

int new_shared_id() { return next_static_id++; }

void* static_shared(int id, size_t bytes, size_t align) {
  if (id < 0 || static_cast<size_t>(id) >= MAX_STATIC_IDS) fail("static __shared__ declaration %d: too many declarations", id);
  if (!static_slot[id]) {
    if (static_used + bytes + align > DYN_MAX) fail("static __shared__ declarations need more than the window has");
    const size_t start = (DYN_MAX - static_used - bytes) & ~(align - 1);
    const size_t used = DYN_MAX - start;
    if (used > STATIC_MAX) fail("static __shared__ declarations need more than %zu bytes (the most a block may declare)", STATIC_MAX);
    if (B.dyn_bytes + used > B.limits.block_max)
      fail("%zu bytes of static and %zu of dynamic shared memory exceed the %zu a block may have", used, B.dyn_bytes, B.limits.block_max);
    // The driver's limit on a function's dynamic shared memory is 48 KiB less its static shared
    // memory unless raised through cuFuncSetAttribute (which takes a raise only while it and the
    // static part fit in what a block may have): a launch past it fails on a device.
    if (B.limits.dynamic_max <= STATIC_MAX ? B.dyn_bytes + used > STATIC_MAX : B.limits.dynamic_max + used > B.limits.block_max)
      fail("%zu bytes of static and %zu of dynamic shared memory: past the function's limit on dynamic shared memory (%zu less the static part%s)", used,
           B.dyn_bytes, B.limits.dynamic_max, B.limits.dynamic_max <= STATIC_MAX ? "; raise it with cuFuncSetAttribute" : "");
    static_used = used;
    for (int r = 0; r < B.csize; r++) memset(B.ctas[r]->window + start, 0xff, bytes);  // the running blocks' poison (later ones: run_cluster)
    RACE(for (int r = 0; r < B.csize; r++) race::clear(r, start, bytes);)
    static_slot[id] = static_cast<uint32_t>(start + 1);
    static_ids_used[n_static_ids_used++] = id;
  }
  return C().window + static_slot[id] - 1;
}

void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes) {
  if (dst % bytes || reinterpret_cast<uintptr_t>(src) % bytes) fail("cp.async: addresses must be %d-byte aligned (shared 0x%x, global %p)", bytes, dst, src);
  if (src_bytes < 0 || src_bytes > bytes) fail("cp.async: src-size %d is not in 0..%d", src_bytes, bytes);
  if (cur->n_copies == MAX_COPIES) fail("cp.async: more than %d copies in flight", MAX_COPIES);
  void* d = shared_ptr(dst, bytes);
  // Until the wait that covers it, the destination holds nothing defined: poison, so that a read
  // by any thread before then (a missing wait or barrier) shows.
  memset(d, 0xff, static_cast<size_t>(bytes));
  RACE(race::access(d, static_cast<size_t>(bytes), true);)
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
    RACE(race::access(c.dst, static_cast<size_t>(c.bytes), true);)
  }
  memmove(cur->copies, cur->copies + end, sizeof(Thread::Copy) * (cur->n_copies - end));
  cur->n_copies -= end;
  for (int g = land; g < cur->n_groups; g++) cur->group_end[g - land] = cur->group_end[g] - end;
  cur->n_groups -= land;
}

// ---- sm_90a -----------------------------------------------------------------------------------

namespace {


MBar* find_mbar_in(Cta& c, uint32_t addr, const char* what) {
  for (int i = 0; i < c.n_mbars; i++)
    if (c.mbars[i].addr == addr) return &c.mbars[i];
  if (&c != B.cta) fail("%s: shared address 0x%x of the cluster's block of rank %d is not an initialized mbarrier", what, addr, rank_of(c));
  fail("%s: shared address 0x%x is not an initialized mbarrier", what, addr);
}
MBar* find_mbar(uint32_t addr, const char* what) { return find_mbar_in(C(), addr, what); }

uint32_t swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

void complete_if_done(MBar& m) {
  if (m.pending == 0 && m.tx == 0) {
    RACE(race::publish(race::mbar_sync(m), m.phase);)
    m.phase ^= 1u;
    m.pending = m.count;
    m.gen++;
    B.progress++;
  }
}

// Copies a TMA box into shared memory (the stand-in's tensor map encoding, libcuda_mock.c).
int64_t tma_copy(const Tma& t, bool poison_only) {
  const uint64_t* w = t.map;
  if (w[14] != 0x4b434f4d50414d54ull) fail("TMA: the tensor map was not made by the stand-in libcuda's cuTensorMapEncodeTiled");
  const int rank = static_cast<int>((w[11] >> 44) & 0xf), dtype = static_cast<int>((w[11] >> 20) & 0xff);
  const int interleave = static_cast<int>((w[11] >> 28) & 0xf), swz = static_cast<int>((w[11] >> 32) & 0xf);
  if (rank != t.rank) fail("TMA: a %dD load through a rank-%d tensor map", t.rank, rank);
  if (interleave != 0) fail("TMA: interleaved layouts are not modelled");
  const int elem = dtype == 6 || dtype == 9 ? 2 : dtype == 7 ? 4 : 0;
  if (!elem) fail("TMA: data type %d is not modelled", dtype);
  if (swz != 0 && swz != 3) fail("TMA: swizzle mode %d is not modelled (none and 128B are)", swz);
  uint64_t dims[5], strides[5] = {static_cast<uint64_t>(elem), 0, 0, 0, 0};
  int box[5];
  int64_t bytes = elem;
  for (int i = 0; i < rank; i++) {
    dims[i] = w[1 + i];
    if (i > 0) strides[i] = w[6 + i - 1];
    box[i] = static_cast<int>((w[10] >> (12 * i)) & 0xfff);
    if (((w[11] >> (4 * i)) & 0xf) != 1) fail("TMA: element strides other than 1 are not modelled");
    bytes *= box[i];
  }
  if (t.dst % 128) fail("TMA: shared destination 0x%x is not 128-byte aligned", t.dst);
  if (swz == 3 && box[0] * elem > 128) fail("TMA: a 128B-swizzled box row is %d bytes, more than 128", box[0] * elem);
  unsigned char* base = static_cast<unsigned char*>(shared_ptr_in(*t.cta, t.dst, static_cast<int>(bytes)));
  if (poison_only) {
    memset(base, 0xff, static_cast<size_t>(bytes));
    RACE(race::access(base, static_cast<size_t>(bytes), true, true);)  // the async proxy's write, for the issuing thread
    return bytes;
  }
  RACE(race::clear(rank_of(*t.cta), t.dst, static_cast<size_t>(bytes), true);)  // lands as data no thread wrote
  const unsigned char* g = reinterpret_cast<const unsigned char*>(w[0]);
  int64_t n = bytes / elem;
  for (int64_t i = 0; i < n; i++) {
    int64_t rest = i, offset = 0;
    bool inside = true;
    for (int d = 0; d < rank; d++) {
      const int64_t c = t.coords[d] + rest % box[d];
      rest /= box[d];
      if (c < 0 || static_cast<uint64_t>(c) >= dims[d]) inside = false;
      else offset += c * static_cast<int64_t>(strides[d]);
    }
    const uint32_t logical = t.dst + static_cast<uint32_t>(i * elem);
    unsigned char* out = t.cta->window + (swz == 3 ? swizzle128(logical) : logical);
    if (inside) memcpy(out, g + offset, static_cast<size_t>(elem));
    else memset(out, 0, static_cast<size_t>(elem));  // out of bounds reads as zero
  }
  return bytes;
}

void land_loads(MBar& m) {
  for (int i = 0; i < m.n_loads; i++) m.tx -= tma_copy(m.loads[i], false);
  if (m.n_loads) {
    m.n_loads = 0;
    complete_if_done(m);
  }
}

// Every thread of the caller's warpgroup meets here; the last to arrive runs `last(g)`.
template <class F>
void warpgroup_meet(const char* what, F last) {
  if (B.n % 128) fail("%s: the block's %d threads are not whole warpgroups", what, B.n);
  Warpgroup& g = C().warpgroups[cur->linear / 128];
  if (g.arrived == 0) g.what = what;
  else if (g.what != what) fail("%s met %s in the same warpgroup: its threads diverged", what, g.what);
  const uint64_t gen = g.gen;
  RACE(race::Sync& rs = C().wg_sync[cur->linear / 128];)
  g.arrived++;
  B.progress++;
  if (g.arrived == 128) {
    // The last thread does the warpgroup's part (a wgmma's operand reads) having taken in the
    // others' clocks, and before its own release, so the others' clocks cover it.
    RACE(race::acquire_pending(rs);)
    last(g);
    RACE(race::release(rs); race::publish(rs, gen);)
    g.arrived = 0;
    g.gen++;
  } else {
    RACE(race::release(rs);)
    wait_for(&g.gen, gen, what);
    RACE(race::acquire(rs, gen);)
  }
}

float elem16(const unsigned char* p, bool bf16) {
  uint16_t h;
  memcpy(&h, p, 2);
  return bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}

// A 16-bit operand element through a 128B-swizzled descriptor: rows of 64 values (128 bytes), 8
// rows to a 1024-byte atom, SBO between atoms along the rows, LBO between 64-wide panels.
float desc_elem(uint64_t desc, int row, int col, bool bf16) {
  if ((desc >> 62) != 1) fail("wgmma: descriptor swizzle mode %u is not modelled (128B is)", static_cast<unsigned>(desc >> 62));
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fff) << 4, lbo = static_cast<uint32_t>((desc >> 16) & 0x3fff) << 4,
                 sbo = static_cast<uint32_t>((desc >> 32) & 0x3fff) << 4;
  const uint32_t logical = start + (row / 8) * sbo + (row % 8) * 128 + (col / 64) * lbo + (col % 64) * 2;
  const unsigned char* p = static_cast<const unsigned char*>(shared_ptr(swizzle128(logical), 2));
  RACE(race::access(p, 2, false, true);)
  return elem16(p, bf16);
}

Acc* find_acc(Warpgroup& g, int t, const float* d) {
  for (int i = 0; i < g.n_acc[t]; i++)
    if (g.acc[t][i].d == d) return &g.acc[t][i];
  return nullptr;
}

void run_op(Warpgroup& g, WgOp& op) {
  // A [64][16], B [16][n], read now (shared memory must still hold them: the wait covers them).
  float A[64][16], Bm[16][128];
  if (op.rs) {
    for (int t = 0; t < 128; t++) {
      const int w = t / 32, l = t % 32, r = 16 * w + l / 4, k = 2 * (l % 4);
      for (int e = 0; e < 2; e++) {
        const uint16_t* a = reinterpret_cast<const uint16_t*>(op.a[t]);
        const auto f = [&](int i) { return op.bf16 ? bf16_to_f32(a[2 * i + e]) : f16_to_f32(a[2 * i + e]); };
        A[r][k + e] = f(0), A[r + 8][k + e] = f(1), A[r][k + 8 + e] = f(2), A[r + 8][k + 8 + e] = f(3);
      }
    }
  } else {
    for (int m = 0; m < 64; m++)
      for (int k = 0; k < 16; k++) A[m][k] = desc_elem(op.desc_a, m, k, op.bf16);  // K-major: row m
  }
  for (int k = 0; k < 16; k++)
    for (int c = 0; c < op.n; c++) Bm[k][c] = op.trans_b ? desc_elem(op.desc_b, k, c, op.bf16) : desc_elem(op.desc_b, c, k, op.bf16);
  for (int t = 0; t < 128; t++) {
    const int w = t / 32, l = t % 32;
    float* v = find_acc(g, t, op.d[t])->val;
    for (int i = 0; i < op.n / 8; i++)
      for (int e = 0; e < 4; e++) {
        const int row = 16 * w + l / 4 + 8 * (e >> 1), col = 8 * i + 2 * (l % 4) + (e & 1), idx = 4 * i + e;
        float acc = op.accumulate ? v[idx] : 0.f;
        for (int k = 0; k < 16; k++) acc += A[row][k] * Bm[k][col];
        v[idx] = acc;
      }
  }
}

}  // namespace

void mbar_init(uint32_t bar, uint32_t count) {
  if (bar % 8) fail("mbarrier.init: shared address 0x%x is not 8-byte aligned", bar);
  if (count == 0 || count > (1u << 20) - 1) fail("mbarrier.init: count %u is not in 1..2^20-1", count);
  Cta& c = C();
  MBar* m = nullptr;
  for (int i = 0; i < c.n_mbars; i++)
    if (c.mbars[i].addr == bar) m = &c.mbars[i];
  if (!m) {
    if (c.n_mbars == MAX_MBARS) fail("more than %d mbarriers in a block", MAX_MBARS);
    m = &c.mbars[c.n_mbars++];
  }
  *m = MBar{};
  m->addr = bar;
  m->count = m->pending = count;
  B.progress++;
}

namespace {
void arrive_on(MBar& m, uint32_t tx_bytes, const char* what) {
  if (m.pending == 0) fail("%s: more arrivals than the %u the phase expects", what, m.count);
  RACE(race::release(race::mbar_sync(m));)
  m.tx += tx_bytes;
  m.pending--;
  B.progress++;
  complete_if_done(m);
}
// The cluster's block of rank `rank`, which must not have exited (its shared memory is gone then).
Cta& peer(unsigned rank, const char* what) {
  if (rank >= static_cast<unsigned>(B.csize)) fail("%s: block rank %u is not in the cluster of %d", what, rank, B.csize);
  Cta& c = *B.ctas[rank];
  if (c.live == 0) fail("%s: the cluster's block of rank %u has exited (a cluster barrier before exiting keeps its shared memory for its peers)", what, rank);
  return c;
}
}  // namespace

void mbar_arrive(uint32_t bar, uint32_t tx_bytes) { arrive_on(*find_mbar(bar, "mbarrier.arrive"), tx_bytes, "mbarrier.arrive"); }

void mbar_arrive_remote(uint32_t bar, unsigned rank) {
  const char* what = "mbarrier.arrive.shared::cluster";
  arrive_on(*find_mbar_in(peer(rank, what), bar, what), 0, what);
}

void mbar_wait(uint32_t bar, uint32_t parity) {
  MBar& m = *find_mbar(bar, "mbarrier.try_wait.parity");
  // The phase of this parity has completed once the phase in progress has the other parity.
  while (m.phase == (parity & 1u)) {
    land_loads(m);
    if (m.phase != (parity & 1u)) break;
    wait_for(&m.gen, m.gen, "mbarrier.try_wait.parity");
  }
  RACE(race::acquire(race::mbar_sync(m), parity & 1u);)
}

namespace {
void queue_load(Cta& c, uint32_t dst, const uint64_t* map, uint32_t bar, const int* coords, int rank, const char* what) {
  MBar& m = *find_mbar_in(c, bar, what);
  if (m.n_loads == 64) fail("%s: more than 64 loads in flight on one mbarrier", what);
  Tma t{&c, dst, map, {0, 0, 0, 0, 0}, rank};
  for (int i = 0; i < rank; i++) t.coords[i] = coords[i];
  // The destination holds nothing defined until the load completes: poison it; the data lands
  // when a thread of that block waits on the barrier (a read before that wait shows).
  tma_copy(t, true);
  m.loads[m.n_loads++] = t;
  m.gen++;  // a waiter looks again: it lands the load
  B.progress++;
}
}  // namespace

void tma_load(uint32_t dst, const uint64_t* map, uint32_t bar, const int* coords, int rank) { queue_load(C(), dst, map, bar, coords, rank, "cp.async.bulk.tensor"); }

void tma_load_multicast(uint32_t dst, const uint64_t* map, uint32_t bar, const int* coords, int rank, uint16_t mask) {
  const char* what = "cp.async.bulk.tensor.multicast::cluster";
  if (mask == 0 || (mask >> B.csize) != 0) fail("%s: cta mask 0x%x names blocks the cluster of %d does not have", what, mask, B.csize);
  for (int r = 0; r < B.csize; r++)
    if ((mask >> r) & 1u) queue_load(peer(static_cast<unsigned>(r), what), dst, map, bar, coords, rank, what);
}

unsigned cluster_rank() { return static_cast<unsigned>(cur->cta); }
unsigned cluster_size() { return static_cast<unsigned>(B.csize); }

void cluster_arrive() {
  if (cur->cluster_arrived) fail("barrier.cluster.arrive: a second arrival before barrier.cluster.wait");
  cur->cluster_arrived = true;
  cur->cluster_phase = B.cluster_gen;
  RACE(race::release(B.cluster_sync);)
  B.cluster_arrived++;
  B.progress++;
  if (B.cluster_arrived == B.cluster_live) {
    RACE(race::publish(B.cluster_sync, B.cluster_gen);)
    B.cluster_arrived = 0;
    B.cluster_gen++;
  }
}

void cluster_wait() {
  if (!cur->cluster_arrived) fail("barrier.cluster.wait without barrier.cluster.arrive");
  cur->cluster_arrived = false;
  wait_for(&B.cluster_gen, cur->cluster_phase, "barrier.cluster.wait");
  RACE(race::acquire(B.cluster_sync, cur->cluster_phase);)
}

void named_barrier(int id, int threads, bool wait) {
  const char* what = wait ? "bar.sync" : "bar.arrive";
  if (id < 1 || id > 15) fail("%s: barrier id %d is not in 1..15 (0 is __syncthreads')", what, id);
  if (threads <= 0 || threads % 32 || threads > B.n) fail("%s %d: a thread count of %d is not a multiple of 32 within the block", what, id, threads);
  NamedBarrier& b = C().named[id];
  if (b.arrived == 0) b.count = threads;
  else if (b.count != threads) fail("%s %d: thread counts %d and %d meet", what, id, b.count, threads);
  const uint64_t gen = b.gen;
  RACE(race::Sync& rs = C().named_sync[id]; race::release(rs);)
  b.arrived++;
  B.progress++;
  if (b.arrived == b.count) {
    RACE(race::publish(rs, gen); if (wait) race::acquire(rs, gen);)
    b.arrived = 0;
    b.gen++;
    return;
  }
  if (wait) {
    wait_for(&b.gen, gen, what);
    RACE(race::acquire(rs, gen);)
  }
}

void wgmma(float* d, int n, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, bool accumulate, bool trans_b, bool bf16) {
  Warpgroup& g = C().warpgroups[cur->linear / 128];
  const int t = static_cast<int>(cur->linear % 128);
  if (g.arrived == 0) {
    if (g.n_ops == MAX_WG_OPS) fail("wgmma: more than %d operations in flight in a warpgroup", MAX_WG_OPS);
    WgOp& op = g.ops[g.n_ops];
    op.n = n, op.group = -1, op.rs = a != nullptr, op.accumulate = accumulate, op.trans_b = trans_b, op.bf16 = bf16;
    op.desc_a = desc_a, op.desc_b = desc_b;
  } else if (g.what == std::string_view("wgmma.mma_async")) {
    const WgOp& op = g.ops[g.n_ops];
    if (op.n != n || op.rs != (a != nullptr) || op.accumulate != accumulate || op.trans_b != trans_b || op.bf16 != bf16 || op.desc_a != desc_a || op.desc_b != desc_b)
      fail("wgmma: the warpgroup's threads issued different operations (shape, operands or descriptors)");
  }
  WgOp& op = g.ops[g.n_ops];
  op.d[t] = d;
  if (a) memcpy(op.a[t], a, sizeof op.a[t]);
  if (!find_acc(g, t, d)) {
    // The first pending operation on these registers: their value goes in flight.
    if (g.n_acc[t] == MAX_ACCS) fail("wgmma: more than %d accumulator arrays in flight in one thread", MAX_ACCS);
    Acc& e = g.acc[t][g.n_acc[t]++];
    e.d = d;
    e.floats = n / 2;
    memcpy(e.val, d, sizeof(float) * (n / 2));
    for (int i = 0; i < n / 2; i++) d[i] = __builtin_nanf("");
  } else if (find_acc(g, t, d)->floats != n / 2) {
    fail("wgmma: accumulators of %d and %d floats at one address", find_acc(g, t, d)->floats, n / 2);
  }
  warpgroup_meet("wgmma.mma_async", [](Warpgroup& w) { w.n_ops++; });
}

void wgmma_commit() {
  warpgroup_meet("wgmma.commit_group", [](Warpgroup& w) {
    if (w.n_groups == 64) fail("wgmma.commit_group: more than 64 groups in flight");
    const int id = w.next_group++;
    for (int i = 0; i < w.n_ops; i++)
      if (w.ops[i].group < 0) w.ops[i].group = id;
    w.groups[w.n_groups++] = id;
  });
}

void wgmma_wait(int pending) {
  const int keep = pending;
  warpgroup_meet("wgmma.wait_group", [keep](Warpgroup& w) {
    int done = 0;
    while (w.n_groups > keep) {
      const int id = w.groups[0];
      memmove(w.groups, w.groups + 1, sizeof(int) * (w.n_groups - 1));
      w.n_groups--;
      for (int i = done; i < w.n_ops && w.ops[i].group == id; i++, done++) run_op(w, w.ops[i]);
    }
    if (!done) return;
    memmove(w.ops, w.ops + done, sizeof(WgOp) * (w.n_ops - done));
    w.n_ops -= done;
    // Accumulators no pending operation writes any more land in their registers.
    for (int t = 0; t < 128; t++)
      for (int i = 0; i < w.n_acc[t];) {
        Acc& e = w.acc[t][i];
        bool pending = false;
        for (int j = 0; j < w.n_ops && !pending; j++) pending = w.ops[j].d[t] == e.d;
        if (pending) {
          i++;
          continue;
        }
        memcpy(e.d, e.val, sizeof(float) * e.floats);
        e = w.acc[t][--w.n_acc[t]];
      }
  });
}

namespace {

// The schedule: an xorshift64* stream seeded per launch from TESSERA_EMU_SCHEDULE (default 1)
// and the launch's index in this process; each round shuffles the thread order from it.
// TESSERA_EMU_SCHEDULE=0 restores the plain order (ascending, then descending, alternately).
// True while a kernel thread (a fiber) runs, false in the scheduler: the fault handler only
// redirects a fiber.
volatile bool in_fiber;
uint64_t schedule_state;
uint64_t schedule_seed;
bool schedule_plain;
int order[MAX_THREADS * MAX_CLUSTER];
void schedule_begin(uint64_t launch_index) {
  const char* e = getenv("TESSERA_EMU_SCHEDULE");
  schedule_seed = e && *e ? strtoull(e, nullptr, 10) : 1;
  schedule_plain = schedule_seed == 0;
  schedule_state = (schedule_seed * 0x9E3779B97F4A7C15ull) ^ (launch_index + 1) * 0xD1B54A32D192ED03ull;
  if (!schedule_state) schedule_state = 1;
}
uint64_t schedule_next() {
  schedule_state ^= schedule_state >> 12;
  schedule_state ^= schedule_state << 25;
  schedule_state ^= schedule_state >> 27;
  return schedule_state * 0x2545F4914F6CDD1Dull;
}
void schedule_order(int n, int round) {
  if (schedule_plain) {
    const bool down = round & 1;
    for (int k = 0; k < n; k++) order[k] = down ? n - 1 - k : k;
    return;
  }
  for (int k = 0; k < n; k++) order[k] = k;
  for (int k = n - 1; k > 0; k--) {
    const int j = static_cast<int>(schedule_next() % static_cast<uint64_t>(k + 1));
    const int t = order[k];
    order[k] = order[j];
    order[j] = t;
  }
}

// The order blocks run in: the GPU promises none, so besides the threads' order the schedule
// permutes the blocks, i -> (a i + c) mod n with a coprime to n (a bijection drawn per launch; the
// plain schedule keeps the ascending order). Code that needs one block to run before another, or
// a "last block to arrive" that is always the highest, meets other orders.
struct BlockOrder {
  uint64_t n, a, c;
  uint64_t operator()(uint64_t i) const { return (static_cast<unsigned __int128>(a) * i + c) % n; }
};
BlockOrder block_order(uint64_t n) {
  if (schedule_plain || n < 2) return BlockOrder{n ? n : 1, 1, 0};
  uint64_t a = schedule_next() % n;
  const auto gcd = [](uint64_t x, uint64_t y) {
    while (y) {
      const uint64_t t = x % y;
      x = y;
      y = t;
    }
    return x;
  };
  while (a == 0 || gcd(a, n) != 1) a = (a + 1) % n;
  return BlockOrder{n, a, schedule_next() % n};
}

// Makes block `c` ready to run as the cluster's block `rank` at grid index `idx`: its threads'
// fibers, its poisoned window, fresh barriers and warpgroups; false (B.error set) if a fiber stack
// cannot be mapped.
bool start_block(Cta& c, int rank, dim3 idx) {
  const int n = B.n;
  c.idx = idx;
  // Poison what the block can see: 0xff bytes, NaN in every float view.
  memset(c.window, 0xff, B.dyn_bytes);
  memset(c.window + DYN_MAX - static_used, 0xff, static_used);
  RACE(race::clear(rank, 0, B.dyn_bytes); race::clear(rank, DYN_MAX - static_used, static_used);)
  for (int i = 0; i < n; i++) {
    Thread& t = c.threads[i];
    t.linear = static_cast<unsigned>(i);
    t.tid = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
    t.cta = rank;
    t.cluster_arrived = false;
    t.done = false;
    t.waiting = nullptr;
    t.wait_gen = nullptr;
    t.n_copies = 0;
    t.n_groups = 0;
    if (!c.stacks[i]) {
      void* m = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) {
        snprintf(B.error, sizeof B.error, "%s: cannot map a fiber stack", B.kernel);
        return false;
      }
      mprotect(m, 4096, PROT_NONE);  // a guard page: overflowing the stack faults
      c.stacks[i] = static_cast<unsigned char*>(m);
      c.copy_rings[i] = static_cast<Thread::Copy*>(calloc(MAX_COPIES, sizeof(Thread::Copy)));
    }
    t.copies = c.copy_rings[i];
    fiber_start(t, c.stacks[i]);
  }
  for (int w = 0; w < (n + 31) / 32; w++)
    for (int i = 0; i < SLOTS; i++) c.warps[w].slot[i].arrived = 0;
  c.n_mbars = 0;
  memset(c.named, 0, sizeof c.named);
  for (int w = 0; w < (n + 127) / 128; w++) {
    Warpgroup& g = c.warpgroups[w];
    g.arrived = 0;
    g.n_ops = 0;
    g.n_groups = 0;
    g.next_group = 0;
    memset(g.n_acc, 0, sizeof g.n_acc);
  }
  c.live = n;
  c.bar_arrived = 0;
  return true;
}

// Runs one cluster (one block without clusters) to completion, its blocks' threads together;
// false (B.error set) on a failure or a deadlock. idx: each block's grid index, by rank.
bool run_cluster(const dim3* idx) {
  const int n = B.n, total = n * B.csize;
  RACE(race::begin_cluster(total);)
  for (int r = 0; r < B.csize; r++)
    if (!start_block(*B.ctas[r], r, idx[r])) return false;
  B.cluster_live = total;
  B.cluster_arrived = 0;
  // The blocks of a cluster are resident together, but nothing says how far each has got: under a
  // drawn schedule one block of the cluster starts late, held until the others cannot move or for
  // a drawn number of rounds, so a block that reaches into a peer before the peer has set up (its
  // barriers initialized, a cluster barrier missing) meets a peer that has not.
  int late = -1, late_rounds = 0;
  if (B.csize > 1 && !schedule_plain) {
    late = static_cast<int>(schedule_next() % static_cast<uint64_t>(B.csize));
    late_rounds = 1 + static_cast<int>(schedule_next() % 64);
  }
  // Each round visits the threads in a fresh pseudo-random order (schedule_order), so code relying
  // on an order the device does not promise (a missing barrier, a producer assumed to run first,
  // a block of the cluster assumed to be ahead of another) meets many interleavings across a test
  // run, reproducibly.
  for (int round = 0; B.cluster_live > 0; round++) {
    const uint64_t before = B.progress;
    if (late >= 0 && round >= late_rounds) late = -1;
    schedule_order(total, round);
    for (int k = 0; k < total; k++) {
      if (order[k] / n == late) continue;
      Cta& c = *B.ctas[order[k] / n];
      Thread& t = c.threads[order[k] % n];
      if (t.done || (t.wait_gen && *t.wait_gen == t.wait_val)) continue;
      B.cta = &c;
      block_idx = c.idx;
      dyn_smem = c.window;
      cur = &t;
      in_fiber = true;
      emu_switch(&B.sched_sp, t.sp);
      in_fiber = false;
      if (B.failed) {
        cur = nullptr;
        return false;
      }
    }
    cur = nullptr;
    if (B.progress == before && late >= 0) {
      late = -1;  // the others wait for it: it starts now
      continue;
    }
    if (B.progress == before) {
      int len = snprintf(B.error, sizeof B.error, "%s: block (%u,%u,%u) deadlocked:", B.kernel, idx[0].x, idx[0].y, idx[0].z);
      if (B.csize > 1) len = snprintf(B.error, sizeof B.error, "%s: the cluster of block (%u,%u,%u) deadlocked:", B.kernel, idx[0].x, idx[0].y, idx[0].z);
      int shown = 0;
      for (int r = 0; r < B.csize; r++)
        for (int i = 0; i < n && len < static_cast<int>(sizeof B.error) - 80; i++) {
          const Thread& t = B.ctas[r]->threads[i];
          if (t.done) continue;
          if (shown++ >= 6) continue;
          if (B.csize > 1) len += snprintf(B.error + len, sizeof B.error - len, " block %d", r);
          len += snprintf(B.error + len, sizeof B.error - len, " thread %d waits at %s;", i, t.waiting ? t.waiting : "?");
        }
      snprintf(B.error + len, sizeof B.error - len, " %d of %d threads still running (%d exited)", B.cluster_live, total, total - B.cluster_live);
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
// TESSERA_EMU_PROFILE=<path> (with a '/'): a line per launch appended to that file, "<seconds>
// <blocks> <kernel>" (test workers may end without running atexit handlers); 0 when not set so.
FILE* profile_file() {
  static FILE* f = [] {
    const char* where = getenv("TESSERA_EMU_PROFILE");
    FILE* opened = where && strchr(where, '/') ? fopen(where, "a") : nullptr;
    if (opened) setvbuf(opened, nullptr, _IOLBF, 0);
    return opened;
  }();
  return f;
}
void record(const char* kernel, double seconds, long blocks) {
  if (FILE* f = profile_file()) {
    fprintf(f, "%.6f %ld %s\n", seconds, blocks, kernel);
    return;
  }
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

namespace {
// Global memory faults. The stand-in libcuda guards every device allocation with inaccessible
// pages, so a kernel's access past an allocation's end (or before its start), or through a null
// or wild pointer, raises SIGSEGV in the fiber that made it. While a launch runs, the handler
// takes such a fault in a fiber and makes the fiber continue in illegal_access() instead of
// retrying the access: that records the failure as fail() does, and the launch returns -2
// (CUDA_ERROR_ILLEGAL_ADDRESS). The kernels are compiled with -fsanitize=alignment trapping
// (tests/cuda/emu/build.ts): a load or store through a pointer misaligned for its type (a uint4 at
// an address not a multiple of 16, as a GPU would refuse with CUDA_ERROR_MISALIGNED_ADDRESS)
// raises SIGILL, taken the same way into misaligned_access() (-3). Any other SIGSEGV, SIGBUS or
// SIGILL goes to the handler that was there.
int (*describe_address)(uint64_t, char*, size_t);
struct sigaction old_segv, old_bus, old_ill;
pthread_t launch_thread;
volatile uintptr_t fault_addr;
volatile bool in_launch, in_illegal_access;
unsigned char alt_stack[64 * 1024];

[[noreturn]] void illegal_access() {
  in_illegal_access = true;
  char where[200] = "";
  if (describe_address) describe_address(fault_addr, where, sizeof where);
  B.illegal = true;
  fail("illegal address 0x%llx: %s", static_cast<unsigned long long>(fault_addr), describe_address ? where : "outside the stand-in's memory");
}

[[noreturn]] void misaligned_access() {
  in_illegal_access = true;
  B.misaligned = true;
  fail("misaligned address: a load or store through a pointer not aligned to its type's size (a 16-byte vector at an address not a multiple of 16)");
}

void on_fault(int sig, siginfo_t* info, void* ctx) {
  if (in_launch && in_fiber && cur && !in_illegal_access && pthread_equal(pthread_self(), launch_thread)) {
    fault_addr = reinterpret_cast<uintptr_t>(info->si_addr);
    auto* uc = static_cast<ucontext_t*>(ctx);
    // Continue in illegal_access() on the fiber's own stack, below the red zone, as if called.
    greg_t sp = uc->uc_mcontext.gregs[REG_RSP];
    sp = ((sp - 256) & ~static_cast<greg_t>(15)) - 8;
    uc->uc_mcontext.gregs[REG_RSP] = sp;
    uc->uc_mcontext.gregs[REG_RIP] = reinterpret_cast<greg_t>(sig == SIGILL ? &misaligned_access : &illegal_access);
    return;
  }
  const struct sigaction& old = sig == SIGBUS ? old_bus : sig == SIGILL ? old_ill : old_segv;
  if (old.sa_flags & SA_SIGINFO) {
    old.sa_sigaction(sig, info, ctx);
  } else if (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN) {
    // Restore the default and return: the access faults again, and the process ends as it would have.
    signal(sig, SIG_DFL);
  } else {
    old.sa_handler(sig);
  }
}

// Installs the fault handler (and an alternate stack for it) for one launch; restores both after.
struct FaultGuard {
  stack_t old_stack;
  FaultGuard() {
    stack_t st{};
    st.ss_sp = alt_stack;
    st.ss_size = sizeof alt_stack;
    sigaltstack(&st, &old_stack);
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    sigaction(SIGILL, &sa, &old_ill);
    launch_thread = pthread_self();
    in_illegal_access = false;
    in_launch = true;
  }
  ~FaultGuard() {
    in_launch = false;
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaction(SIGILL, &old_ill, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};
}  // namespace

// Runs body(ctx) as every thread of every block of the grid; 0, or -1 with the message in err
// (-2: an access outside every allocation).
int launch_grid(const char* kernel, dim3 grid, dim3 block, dim3 cluster, size_t dyn_bytes, Limits limits, void (*body)(const void*), const void* ctx, char* err, size_t err_len) {
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
  // Clusters (cuLaunchKernelEx's cluster dimension): at most 8 blocks (the portable size), whole
  // clusters in every dimension of the grid.
  const uint64_t csize = static_cast<uint64_t>(cluster.x) * cluster.y * cluster.z;
  if (csize == 0 || csize > MAX_CLUSTER || grid.x % cluster.x || grid.y % cluster.y || grid.z % cluster.z) {
    snprintf(err, err_len, "%s: cluster (%u,%u,%u) does not divide grid (%u,%u,%u) or has more than %d blocks", kernel, cluster.x, cluster.y, cluster.z, grid.x, grid.y, grid.z, MAX_CLUSTER);
    pthread_mutex_unlock(&launch_lock);
    return -1;
  }
  for (uint64_t r = 0; r < csize; r++) {
    if (B.ctas[r]) continue;
    B.ctas[r] = static_cast<Cta*>(calloc(1, sizeof(Cta)));
    B.ctas[r]->window = static_cast<unsigned char*>(aligned_alloc(1024, DYN_MAX));
    if (!B.ctas[r]->window) {
      snprintf(err, err_len, "%s: cannot allocate a block's shared window", kernel);
      pthread_mutex_unlock(&launch_lock);
      return -1;
    }
  }
  B.csize = static_cast<int>(csize);
  B.cluster = cluster;
  B.cta = B.ctas[0];
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
  B.illegal = false;
  B.misaligned = false;
  B.error[0] = 0;
  grid_dim = grid;
  block_dim = block;
  static uint64_t launches;
  schedule_begin(launches++);
  const double t0 = now();
  {
    FaultGuard guard;
    // The clusters, in the order the schedule draws; a cluster's blocks run together, rank r at
    // (x, y, z) = (r % cx, r / cx % cy, r / (cx cy)) within the cluster, as %cluster_ctarank counts.
    const dim3 cgrid{grid.x / cluster.x, grid.y / cluster.y, grid.z / cluster.z};
    const uint64_t clusters = static_cast<uint64_t>(cgrid.x) * cgrid.y * cgrid.z;
    const BlockOrder order_of = block_order(clusters);
    for (uint64_t i = 0; i < clusters && rc == 0; i++) {
      const uint64_t b = order_of(i);
      const dim3 ci{static_cast<unsigned>(b % cgrid.x), static_cast<unsigned>(b / cgrid.x % cgrid.y), static_cast<unsigned>(b / (static_cast<uint64_t>(cgrid.x) * cgrid.y))};
      dim3 idx[MAX_CLUSTER];
      for (unsigned r = 0; r < csize; r++)
        idx[r] = dim3{ci.x * cluster.x + r % cluster.x, ci.y * cluster.y + r / cluster.x % cluster.y, ci.z * cluster.z + r / (cluster.x * cluster.y)};
      block_idx = idx[0];
      if (!run_cluster(idx)) {
        // The schedule, to reproduce it: launches are counted per process.
        if (schedule_plain) snprintf(err, err_len, "%s", B.error);
        else snprintf(err, err_len, "%s (schedule %llu, launch %llu of this process)", B.error, static_cast<unsigned long long>(schedule_seed), static_cast<unsigned long long>(launches - 1));
        rc = B.illegal ? -2 : B.misaligned ? -3 : -1;
      }
    }
  }
  record(kernel, now() - t0, static_cast<long>(grid.x) * grid.y * grid.z);
  pthread_mutex_unlock(&launch_lock);
  return rc;
}

}  // namespace emu

// The stand-in libcuda's account of an address (which allocation it missed, and by how much),
// for the message of an illegal access.
extern "C" __attribute__((visibility("default"))) void emu_set_describe_address(int (*fn)(uint64_t, char*, size_t)) { emu::describe_address = fn; }

// ---- the race check's hooks (race.h) ----------------------------------------------------------
// An access at a host address by the running thread (the instrumentation's hooks below).
void emu::race_host_access(const void* p, size_t bytes, bool write) {
  (void)p, (void)bytes, (void)write;
  RACE(race::access(p, bytes, write);)
}
void emu::race_proxy_fence() { RACE(race::proxy_fence();) }
// A shared-memory access the emulated hardware makes for a thread (ldmatrix's rows, by the lane
// that gave each address).
void emu::race_shared(uint32_t addr, int bytes, bool write) {
  (void)addr, (void)bytes, (void)write;
  RACE(race::access(shared_ptr(addr, bytes), static_cast<size_t>(bytes), write);)
}

#if EMU_RACECHECK
// The kernels are compiled with -fsanitize=thread (build.ts), which calls these on every load and
// store; the runtime is not, and these check the accesses that land in shared memory (race.h).
// No ThreadSanitizer runtime is linked: the emulator's fibers are its threads.
extern "C" {
#define EMU_TSAN_ACCESS(n)                                                                         \
  void __tsan_read##n(void* p) { emu::race_host_access(p, n, false); }                             \
  void __tsan_write##n(void* p) { emu::race_host_access(p, n, true); }                             \
  void __tsan_unaligned_read##n(void* p) { emu::race_host_access(p, n, false); }                   \
  void __tsan_unaligned_write##n(void* p) { emu::race_host_access(p, n, true); }
EMU_TSAN_ACCESS(1)
EMU_TSAN_ACCESS(2)
EMU_TSAN_ACCESS(4)
EMU_TSAN_ACCESS(8)
EMU_TSAN_ACCESS(16)
#undef EMU_TSAN_ACCESS
void __tsan_read_range(void* p, unsigned long n) { emu::race_host_access(p, n, false); }
void __tsan_write_range(void* p, unsigned long n) { emu::race_host_access(p, n, true); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}
#endif
