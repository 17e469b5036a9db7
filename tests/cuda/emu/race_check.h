// The race check's functions (race.h): included by runtime.cpp after its block and launch
// structures, which they read.
#pragma once

#if EMU_RACECHECK
namespace race {

constexpr int GID_BITS = 13;  // a cluster's threads: 8 blocks of 1024
constexpr uint64_t GID_MASK = (1ull << GID_BITS) - 1;
constexpr uint64_t ASYNC = 1ull << 63;  // an epoch's flag: a write by the async proxy (a TMA load)

std::vector<uint32_t> vcs;  // nt x nt: row g is thread g's clock of every thread
// Per thread: its own clock at its last fence.proxy.async (0: none yet). The fence starts a new
// epoch, so its writes before the fence have clocks up to this and those after it above.
std::vector<uint32_t> fenced;

// Per byte of a window: the last write's epoch and up to two reads since (0: none).
struct Cell {
  uint64_t w, r0, r1;
};
Cell* shadow[MAX_CLUSTER];
// Per byte of a window: 1 once anything wrote it in this block (a store, a copy, a TMA load).
unsigned char* written[MAX_CLUSTER];

inline uint32_t* vc(int g) { return vcs.data() + static_cast<size_t>(g) * nt; }
inline int gid(const emu::Thread& t) { return t.cta * B.n + static_cast<int>(t.linear); }
inline uint64_t epoch(int g) { return (static_cast<uint64_t>(vc(g)[g]) << GID_BITS) | static_cast<uint64_t>(g); }
inline uint32_t clock_of(uint64_t e) { return static_cast<uint32_t>((e & ~ASYNC) >> GID_BITS); }
inline bool ordered(uint64_t e, int g) {
  const int t = static_cast<int>(e & GID_MASK);
  return t == g || vc(g)[t] >= clock_of(e);
}
inline void join(uint32_t* into, const uint32_t* from) {
  for (int i = 0; i < nt; i++) into[i] = from[i] > into[i] ? from[i] : into[i];
}
inline Sync& fresh(Sync& s) {
  if (s.stamp != stamp) {
    const size_t n = static_cast<size_t>(nt) * 5;
    if (s.cap < n) {
      free(s.v);
      s.v = static_cast<uint32_t*>(malloc(n * sizeof(uint32_t)));
      if (!s.v) {
        fprintf(stderr, "kernel emulator: cannot allocate the race check's barrier clocks\n");
        abort();
      }
      s.cap = n;
    }
    memset(s.v, 0, n * sizeof(uint32_t));
    s.stamp = stamp;
  }
  return s;
}

// The barrier clocks of mbarrier `m`, in whichever block of the cluster holds it.
Sync& mbar_sync(const MBar& m) {
  for (int r = 0; r < B.csize; r++) {
    Cta& c = *B.ctas[r];
    if (&m >= c.mbars && &m < c.mbars + MAX_MBARS) return c.mbar_sync[&m - c.mbars];
  }
  abort();  // every MBar lives in a block of the cluster
}

// A cluster starts: every thread knows only itself; every barrier is empty.
void begin_cluster(int threads) {
  nt = threads;
  vcs.assign(static_cast<size_t>(nt) * nt, 0);
  for (int g = 0; g < nt; g++) vc(g)[g] = 1;
  fenced.assign(static_cast<size_t>(nt), 0);
  stamp++;
}

// Block `rank`'s window at `off` (+bytes): no access recorded; `landed`: written by no thread (a
// TMA load's data), else not written at all (a block's start).
void clear(int rank, size_t off, size_t bytes, bool landed = false) {
  if (!shadow[rank]) {
    shadow[rank] = static_cast<Cell*>(calloc(DYN_MAX, sizeof(Cell)));
    written[rank] = static_cast<unsigned char*>(calloc(DYN_MAX, 1));
    if (!shadow[rank] || !written[rank]) {
      fprintf(stderr, "kernel emulator: cannot allocate the race check's shadow memory\n");
      abort();
    }
  }
  memset(shadow[rank] + off, 0, bytes * sizeof(Cell));
  memset(written[rank] + off, landed ? 1 : 0, bytes);
}

void release(Sync& s) {
  const int g = gid(*emu::cur);
  join(fresh(s).acc(), vc(g));
  vc(g)[g]++;
}
void publish(Sync& s, uint64_t phase) {
  fresh(s);
  memcpy(s.snap(phase), s.acc(), sizeof(uint32_t) * nt);
  memset(s.acc(), 0, sizeof(uint32_t) * nt);
}
void acquire(Sync& s, uint64_t phase) { join(vc(gid(*emu::cur)), fresh(s).snap(phase)); }
// The last thread to arrive takes in what the others released before it does its part.
void acquire_pending(Sync& s) { join(vc(gid(*emu::cur)), fresh(s).acc()); }
// fence.proxy.async by the running thread: its shared-memory writes so far may be read by the
// async proxy (wgmma, TMA) once a barrier orders them.
void proxy_fence() {
  const int g = gid(*emu::cur);
  fenced[g] = vc(g)[g];
  vc(g)[g]++;
}

const char* thread_name(int g, char* buf, size_t len) {
  const int lin = g % B.n, rank = g / B.n;
  const unsigned x = static_cast<unsigned>(lin) % emu::block_dim.x, y = static_cast<unsigned>(lin) / emu::block_dim.x % emu::block_dim.y,
                 z = static_cast<unsigned>(lin) / (emu::block_dim.x * emu::block_dim.y);
  if (B.csize > 1) snprintf(buf, len, "thread (%u,%u,%u) of the cluster's block of rank %d", x, y, z, rank);
  else snprintf(buf, len, "thread (%u,%u,%u)", x, y, z);
  return buf;
}

[[noreturn]] void report(int rank, size_t off, uint64_t earlier, bool earlier_write, bool now_write, int g) {
  char a[96], b[96];
  emu::fail("shared memory race at shared address 0x%zx%s: %s %s it and %s %s it with nothing ordering the two (a missing __syncthreads, named barrier, mbarrier wait or __syncwarp)",
            off, B.csize > 1 && rank != emu::cur->cta ? " of a peer block" : "", thread_name(static_cast<int>(earlier & GID_MASK), a, sizeof a),
            earlier_write ? "wrote" : "read", thread_name(g, b, sizeof b), now_write ? "writes" : "reads");
}

[[noreturn]] void report_proxy(int rank, size_t off, uint64_t w, bool now_write, int g) {
  char a[96], b[96];
  emu::fail("shared memory at shared address 0x%zx%s: %s wrote it and %s for %s with no fence.proxy.async by the writer after its write (the async proxy need not see a "
            "generic-proxy write without one, whatever barrier orders them)",
            off, B.csize > 1 && rank != emu::cur->cta ? " of a peer block" : "", thread_name(static_cast<int>(w & GID_MASK), a, sizeof a),
            now_write ? "a TMA load overwrites it" : "a wgmma reads it", thread_name(g, b, sizeof b));
}

[[noreturn]] void report_unwritten(int rank, size_t off, bool async, int g) {
  char a[96];
  emu::fail("%s reads shared memory at shared address 0x%zx%s that nothing wrote since the block started", async ? "a wgmma" : thread_name(g, a, sizeof a), off,
            B.csize > 1 && rank != emu::cur->cta ? " of a peer block" : "");
}

// Thread g reads or writes `bytes` at offset `off` of block `rank`'s window; `async`: through the
// async proxy (a wgmma's operand read, a TMA load's write), which sees a write by the generic
// proxy (a thread's store, cp.async) only after the writer's fence.proxy.async.
void check(int rank, size_t off, size_t bytes, bool write, int g, bool async = false) {
  Cell* cells = shadow[rank];
  if (!cells) return;
  const uint64_t e = epoch(g) | (async && write ? ASYNC : 0);
  for (size_t i = off; i < off + bytes && i < DYN_MAX; i++) {
    Cell& c = cells[i];
    if (c.w && !ordered(c.w, g)) report(rank, i, c.w, true, write, g);
    if (async && c.w && !(c.w & ASYNC) && fenced[c.w & GID_MASK] < clock_of(c.w)) report_proxy(rank, i, c.w, write, g);
    if (!write && !written[rank][i]) report_unwritten(rank, i, async, g);
    if (write) {
      written[rank][i] = 1;
      if (c.r0 && !ordered(c.r0, g)) report(rank, i, c.r0, false, true, g);
      if (c.r1 && !ordered(c.r1, g)) report(rank, i, c.r1, false, true, g);
      c.w = e;
      c.r0 = c.r1 = 0;
      continue;
    }
    if (c.r0 == e || c.r1 == e) continue;
    // Keep the reads not ordered before this one (they are what a later write must follow).
    const bool r0_before = !c.r0 || ordered(c.r0, g), r1_before = !c.r1 || ordered(c.r1, g);
    if (r0_before) {
      c.r0 = e;
      if (r1_before) c.r1 = 0;
    } else {
      c.r1 = e;  // both concurrent with this read: the second gives way
    }
  }
}

// An access by the running thread at a host address: checked if it lies in a window of the cluster.
inline void access(const void* p, size_t bytes, bool write, bool async = false) {
  if (!emu::cur || !nt) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (int r = 0; r < B.csize; r++) {
    const uintptr_t w = reinterpret_cast<uintptr_t>(B.ctas[r]->window);
    if (a - w < DYN_MAX) {
      check(r, a - w, bytes, write, gid(*emu::cur), async);
      return;
    }
  }
}

}  // namespace race

#endif
