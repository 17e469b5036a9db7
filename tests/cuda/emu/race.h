// The race check (TESSERA_EMU_RACECHECK=1, tests/cuda/emu/build.ts): every access the kernels
// make to shared memory is checked against the happens-before order that their synchronisation
// gives, so a missing barrier shows even when the emulator's schedule happened to run the two
// accesses in a harmless order. Without EMU_RACECHECK every hook is empty. This file holds the
// state the block and launch structures keep (runtime.cpp includes it inside its namespace,
// before them); race_check.h the checks, included after them.
//
// The model is a vector clock per thread of the running cluster (FastTrack's epochs over them):
// - a thread's accesses between two of its synchronisation operations share one epoch;
// - an arrival (__syncthreads, bar.sync / bar.arrive, mbarrier.arrive, barrier.cluster.arrive,
//   __syncwarp, a warpgroup's wgmma collectives, and a thread's exit, which counts as arriving at
//   the block and cluster barriers) releases the thread's clock into the barrier and starts a new
//   epoch; completing the barrier publishes what it gathered, and each waiter acquires it;
// - shuffles, votes and mma.sync order nothing (the PTX memory model gives them no ordering:
//   __syncwarp does).
// Shared memory keeps, per byte, the epoch of its last write and of up to two reads since, the
// ones not ordered before each other. A write must come after the last write and every recorded
// read; a read after the last write. Otherwise the launch fails, naming both threads and the
// address. Copies that land asynchronously are attributed as the device orders them: cp.async
// poisons its destination as a write by the issuing thread when issued and writes it again when
// that thread's wait lands it (other threads see it after a barrier that thread passes later);
// a TMA load writes its destination as the issuing thread when issued (so a stage overwritten
// before every reader released it is a race) and lands as data no thread wrote (a read before
// the barrier's wait reads its poison, which the results show); ldmatrix reads each row as the
// lane that gave its address; a wgmma reads its operands in shared memory when its wait_group
// runs, as the warpgroup (whose threads meet there).
// The async proxy (wgmma's operand reads, TMA's writes) must also find the last write of a byte
// fenced for it: a thread's store followed, in that thread, by fence.proxy.async. And a read must
// find its byte written since the block started (by a thread, a copy or a TMA load).
//
// Global memory is not checked: blocks run one after another here, and the kernels' cross-block
// hand-offs (split-K partials, counters) are exercised only through the block order the schedule
// permutes, their __threadfence not at all.
#pragma once

#if EMU_RACECHECK
namespace race {

int nt;  // threads in the running cluster
uint64_t stamp = 1;  // bumped at every cluster start: older sync state is empty

// What a barrier gathers: the clocks released into its phase in progress, and the last four
// phases' published clocks (a waiter acquires the phase it waited for). Plain data: the blocks
// that hold these are calloc'ed.
struct Sync {
  uint64_t stamp;
  uint32_t* v;  // [acc | snap 0..3], nt each
  size_t cap;
  uint32_t* acc() { return v; }
  uint32_t* snap(uint64_t phase) { return v + static_cast<size_t>(nt) * (1 + phase % 4); }
};

}  // namespace race

#define RACE(...) __VA_ARGS__
#else
#define RACE(...)
#endif
