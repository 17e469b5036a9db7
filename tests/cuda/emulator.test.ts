/**
 * The kernel emulator (tests/cuda/emu) checked on its own: it builds wherever there is a C++
 * compiler and holds every kernel the CUDA backend declares but the sm_90a ones; its collectives,
 * ldmatrix and mma agree with the JavaScript model of the PTX manual's fragments
 * (mma_model.ts, written independently of it); cp.async lands at the wait that covers it; shared
 * memory starts poisoned; and it reports the faults it is there to catch (a collective some lanes
 * never reach, lanes meeting different collectives, a misaligned ldmatrix, arguments of the
 * wrong size, a global access outside every allocation) as one sentence naming the kernel, block
 * and thread.
 */
import { describe, expect, it } from 'vitest';
import { packArgs, type ParamType } from '../../src/backend/cuda/kernel_decl.js';
import { ALL_DECLS } from '../../src/backend/cuda/ops/index.js';
import { buildEmulator } from './emu/build.js';
import { useEmulator } from './emu/harness.js';
import { bf16ToF32, f16ToF32, f32ToBf16Bits, f32ToF16Bits } from '../../src/util/dtype.js';
import { buildMock } from './mock/mock.js';
import { ldmatrixX4, mmaM16n8k16 } from './mma_model.js';

const off = process.env.TESSERA_EMULATOR === '0';
const mockPath = off ? null : buildMock();
// The plain build, without the race check (TESSERA_EMU_RACECHECK): some checks here race on purpose
// to show what the schedule alone makes of a missing barrier (tests/cuda/racecheck.test.ts has the
// race check's own).
const emu = mockPath ? buildEmulator({ racecheck: false }) : { path: null, skip: 'no C compiler', kernels: [] };
const skip = off ? 'the kernel emulator is off (TESSERA_EMULATOR=0)' : !mockPath ? 'no C compiler to build the stand-in libcuda' : emu.skip;
if (skip) console.log(`kernel emulator: skipped: ${skip}`);

describe.skipIf(skip !== null)('kernel emulator', () => {
  // The plain schedule (ascending, then descending rounds), which the order-specific checks
  // below are written for; the shuffled default has its own test.
  const h = useEmulator(mockPath!, emu.path!, '80', '0');
  const { upload, download, launch, failure } = h;

  it('holds every kernel the CUDA backend declares, the sm_90a ones included', () => {
    const declared = ALL_DECLS.map((d) => d.name);
    const have = new Set(emu.kernels);
    expect(declared.filter((n) => !have.has(n))).toEqual([]);
    // Every kernel with a bf16 entry has an fp16 one, but the layout probes (bf16 only).
    const f16 = declared.filter((n) => n.includes('_bf16') && !n.startsWith('ts_sm90_probe')).map((n) => n.replace('_bf16', '_f16'));
    expect(f16.filter((n) => !have.has(n))).toEqual([]);
  });

  it('computes shuffles (with widths), votes and reductions as the PTX manual does', () => {
    const out = upload(new Int32Array(64 * 8).fill(-99));
    launch('ts_emu_selftest_collectives', [['out', 'ptr']], { out }, 64);
    const got = download(new Int32Array(64 * 8), out);
    for (let t = 0; t < 64; t++) {
      const wb = t & ~31, l = t & 31;
      const seg = (w: number) => l & ~(w - 1);
      let ballot = 0, sum = 0;
      for (let i = 0; i < 32; i++) {
        if ((wb + i) % 3 === 0) ballot |= 1 << i;
        sum += wb + i;
      }
      const want = [
        (wb + 5) * 10,
        wb + (l ^ 1),
        l >= 3 ? t - 3 : t,
        l + 2 < seg(8) + 8 ? t + 2 : t,
        (l ^ 4) < seg(4) + 4 ? wb + (l ^ 4) : t,
        ballot | 0,
        sum,
        wb === 32 ? 1 : 0,
      ];
      expect([...got.subarray(8 * t, 8 * t + 8)], `thread ${t}`).toEqual(want);
    }
  });

  for (const dtype of ['bf16', 'f16'] as const) {
    it(`agrees with the JavaScript fragment model on ldmatrix (plain, .trans) and mma.m16n8k16 (${dtype})`, () => {
      let seed = dtype === 'bf16' ? 7 : 11;
      const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
      // 16-bit values of the storage type, as bits and as numbers.
      const toBits = (x: number) => (dtype === 'bf16' ? f32ToBf16Bits(x) : f32ToF16Bits(x));
      const one = new Float32Array(1);
      const fromBits = (b: number) => ((dtype === 'bf16' ? bf16ToF32 : f16ToF32)(Uint16Array.of(b), one), one[0]);
      const tile = Uint16Array.from({ length: 512 }, () => toBits(rnd() * 4 - 2));
      const rowSlots = Array.from({ length: 63 }, (_, i) => 8 * i).sort(() => rnd() - 0.5);
      const rows = Int32Array.from(rowSlots.slice(0, 32));
      const aBits = Uint32Array.from({ length: 128 }, () => toBits(rnd() * 2 - 1) | (toBits(rnd() * 2 - 1) << 16));
      const bBits = Uint32Array.from({ length: 64 }, () => toBits(rnd() * 2 - 1) | (toBits(rnd() * 2 - 1) << 16));
      const c = Float32Array.from({ length: 128 }, () => rnd() * 8 - 4);
      const ld = upload(new Uint32Array(256)), d = upload(new Float32Array(128));
      launch(
        `ts_emu_selftest_mma_${dtype}`,
        [['ld_out', 'ptr'], ['d', 'ptr'], ['tile_in', 'ptr'], ['rows', 'ptr'], ['a', 'ptr'], ['b', 'ptr'], ['c', 'ptr']],
        { ld_out: ld, d, tile_in: upload(tile), rows: upload(rows), a: upload(aBits), b: upload(bBits), c: upload(c) },
        32,
      );
      const ldGot = download(new Uint32Array(256), ld), dGot = download(new Float32Array(128), d);
      const read = (byte: number) => tile[byte / 2];
      const addr = [...rows].map((r) => 2 * r);
      for (const [trans, off] of [[false, 0], [true, 4]] as const) {
        const want = ldmatrixX4(read, addr, trans);
        for (let l = 0; l < 32; l++)
          for (let i = 0; i < 4; i++) expect(ldGot[8 * l + off + i], `lane ${l} register ${i}${trans ? ' (.trans)' : ''}`).toBe((want[l][i][0] | (want[l][i][1] << 16)) >>> 0);
      }
      const pair = (w: number) => [fromBits(w & 0xffff), fromBits(w >>> 16)];
      const acc = Array.from({ length: 32 }, (_, l) => [...c.subarray(4 * l, 4 * l + 4)]);
      mmaM16n8k16(
        acc,
        Array.from({ length: 32 }, (_, l) => [0, 1, 2, 3].map((i) => pair(aBits[4 * l + i]))),
        Array.from({ length: 32 }, (_, l) => pair(bBits[2 * l])),
        Array.from({ length: 32 }, (_, l) => pair(bBits[2 * l + 1])),
      );
      for (let l = 0; l < 32; l++) for (let i = 0; i < 4; i++) expect(dGot[4 * l + i], `lane ${l} d${i}`).toBeCloseTo(acc[l][i], 4);
    });
  }

  it('lands a cp.async only at the wait_group that covers its group, zero-filling past src-size', () => {
    const input = Float32Array.from({ length: 256 }, (_, i) => i + 1);
    const out = upload(new Float32Array(32 * 5));
    launch('ts_emu_selftest_cp_async', [['out', 'ptr'], ['in', 'ptr']], { out, in: upload(input) }, 32);
    const got = download(new Float32Array(32 * 5), out);
    for (let t = 0; t < 32; t++) {
      const [before, g0, g1Early, g1, filled] = got.subarray(5 * t, 5 * t + 5);
      expect(before, `thread ${t}: read before any wait`).toBeNaN();
      expect(g0).toBe(input[4 * t]);
      expect(g1Early, `thread ${t}: group 1 read after wait_group 1`).toBeNaN();
      expect(g1).toBe(input[128 + 4 * t]);
      expect(filled).toBe(0);
    }
  });

  it('runs collectives of disjoint masks in one warp at the same time, each lane keeping its result', () => {
    const out = upload(new Int32Array(32));
    launch('ts_emu_selftest_disjoint', [['out', 'ptr']], { out }, 32);
    expect([...download(new Int32Array(32), out)]).toEqual(Array.from({ length: 32 }, (_, l) => l ^ 2));
    const votes = upload(new Uint32Array(64));
    launch('ts_emu_selftest_votes', [['out', 'ptr']], { out: votes }, 32);
    const got = download(new Uint32Array(64), votes);
    for (let l = 0; l < 32; l++) expect([got[2 * l], got[2 * l + 1]], `lane ${l}`).toEqual([0x11111111, l < 16 ? 0xffff : 0]);
  });

  it('poisons a cp.async destination until the issuing thread waits, so another thread reading it early sees NaN', () => {
    const out = upload(new Float32Array(1));
    launch('ts_emu_selftest_cp_async_race', [['out', 'ptr'], ['in', 'ptr']], { out, in: upload(Float32Array.of(1, 2, 3, 4)) }, 32);
    expect(download(new Float32Array(1), out)[0]).toBeNaN();
  });

  it('starts shared memory poisoned, so a missing barrier shows; a barrier makes the write visible', () => {
    const out = upload(new Int32Array(32));
    launch('ts_emu_selftest_barrier', [['out', 'ptr'], ['with_barrier', 'i32']], { out, with_barrier: 0 }, 32);
    const without = download(new Int32Array(32), out);
    expect(without[0], 'thread 0 reads before thread 31 writes').toBe(-1);
    launch('ts_emu_selftest_barrier', [['out', 'ptr'], ['with_barrier', 'i32']], { out, with_barrier: 1 }, 32);
    expect([...download(new Int32Array(32), out)]).toEqual(new Array(32).fill(7));
  });

  it('shuffles the thread order every round by default: a missing barrier shows in some launches, not all, and a failure names its schedule', () => {
    process.env.TESSERA_EMU_SCHEDULE = '7';
    try {
      const out = upload(new Int32Array(32));
      const seen = new Set<number>();
      for (let i = 0; i < 40; i++) {
        launch('ts_emu_selftest_barrier', [['out', 'ptr'], ['with_barrier', 'i32']], { out, with_barrier: 0 }, 32);
        seen.add(download(new Int32Array(32), out)[0]);
      }
      expect([...seen].sort((a, b) => a - b), 'thread 0 saw the poison in some launches and thread 31\'s write in others').toEqual([-1, 7]);
      for (let i = 0; i < 5; i++) {
        launch('ts_emu_selftest_barrier', [['out', 'ptr'], ['with_barrier', 'i32']], { out, with_barrier: 1 }, 32);
        expect([...download(new Int32Array(32), out)]).toEqual(new Array(32).fill(7));
      }
      const msg = failure(() => launch('ts_emu_selftest_diverged', [['out', 'ptr']], { out: upload(new Int32Array(2)) }, 32));
      expect(msg).toMatch(/the lanes diverged \(schedule 7, launch \d+ of this process\)$/);
    } finally {
      process.env.TESSERA_EMU_SCHEDULE = '0';
    }
  });

  it('runs the blocks of a cluster together: rank and size, cluster barriers over the threads that have not exited, arrivals on a peer\'s mbarrier', () => {
    const params: Array<[string, ParamType]> = [['out', 'ptr'], ['with_sync', 'i32']];
    const out = upload(new Int32Array(16));
    const run = (withSync: number) => {
      const fn = h.driver.getFunction(h.module, 'ts_emu_selftest_cluster');
      h.driver.launchEx(fn, [4, 1, 1], [64, 1, 1], 0, h.stream, (view) => packArgs(view, { name: 'ts_emu_selftest_cluster', params }, { out, with_sync: withSync }), { cluster: [2, 1, 1] });
      h.driver.synchronize(h.stream);
    };
    run(1);
    expect([...download(new Int32Array(16), out)]).toEqual([0, 2, 1, 0, 1, 2, 1, 0, 0, 2, 1, 0, 1, 2, 1, 0]);
    // Under a drawn schedule one block of each cluster starts late: without the cluster barrier
    // after the initialization, the other block arrives on a barrier its peer has not made yet
    // (in the launches where the late block is the one arrived on).
    process.env.TESSERA_EMU_SCHEDULE = '3';
    try {
      const messages: string[] = [];
      for (let i = 0; i < 12 && messages.length === 0; i++) {
        try {
          run(0);
        } catch {
          messages.push(failure(() => {
            throw new Error('CUDA_ERROR_LAUNCH_FAILED');
          }));
        }
      }
      expect(messages[0]).toMatch(
        /^ts_emu_selftest_cluster: block \([0-3],0,0\) thread \(\d+,0,0\): mbarrier\.arrive\.shared::cluster: shared address 0x[0-9a-f]+ of the cluster's block of rank [01] is not an initialized mbarrier \(schedule 3, launch \d+ of this process\)$/,
      );
      for (let i = 0; i < 4; i++) {
        run(1);
        expect([...download(new Int32Array(16), out)]).toEqual([0, 2, 1, 0, 1, 2, 1, 0, 0, 2, 1, 0, 1, 2, 1, 0]);
      }
    } finally {
      process.env.TESSERA_EMU_SCHEDULE = '0';
    }
  });

  it('counts exited threads as arrived at a barrier', () => {
    const out = upload(new Int32Array(32));
    launch('ts_emu_selftest_exit', [['out', 'ptr']], { out }, 32);
    expect([...download(new Int32Array(32), out).subarray(0, 16)]).toEqual(new Array(16).fill(1));
  });

  it('reports a collective that some lanes of the mask never reach as a deadlock', () => {
    const msg = failure(() => launch('ts_emu_selftest_partial_shfl', [['out', 'ptr']], { out: upload(new Int32Array(32)) }, 32));
    expect(msg).toMatch(/^ts_emu_selftest_partial_shfl: block \(0,0,0\) deadlocked: thread 0 waits at __shfl_xor_sync;/);
  });

  it('reports lanes meeting different collectives', () => {
    const msg = failure(() => launch('ts_emu_selftest_diverged', [['out', 'ptr']], { out: upload(new Int32Array(2)) }, 32));
    expect(msg).toMatch(/^ts_emu_selftest_diverged: block \(0,0,0\) thread \(\d+,0,0\): (__any_sync|__ballot_sync) .* met (__ballot_sync|__any_sync) .*the lanes diverged/);
  });

  it('reports a misaligned ldmatrix row address', () => {
    const msg = failure(() => launch('ts_emu_selftest_unaligned_ldsm', [['out', 'ptr']], { out: upload(new Int32Array(32)) }, 32));
    expect(msg).toMatch(/ldmatrix\.x4: row address 0x[0-9a-f]+ is not 16-byte aligned/);
  });

  it('refuses dynamic shared memory past 48 KiB unless the function was allowed more, as the driver does', () => {
    const msg = failure(() => launch('ts_emu_selftest_exit', [['out', 'ptr']], { out: upload(new Int32Array(32)) }, 32, 64 * 1024));
    expect(msg).toBe('ts_emu_selftest_exit: 65536 bytes of dynamic shared memory, more than the function may launch with (49152; a block may have 166912)');
    const fn = h.driver.getFunction(h.module, 'ts_emu_selftest_exit');
    h.driver.setMaxDynamicSharedMemory(fn, 64 * 1024);
    const out = upload(new Int32Array(32));
    h.driver.launch(fn, [1, 1, 1], [32, 1, 1], 64 * 1024, h.stream, (view) => packArgs(view, { name: 'ts_emu_selftest_exit', params: [['out', 'ptr']] }, { out }));
    h.driver.synchronize(h.stream);
    expect(download(new Int32Array(32), out)[0]).toBe(1);
  });

  it('refuses static shared memory beside 48 KiB of dynamic unless the function was allowed more, as the driver does', () => {
    // ts_emu_selftest_barrier declares a static __shared__ int: with 48 KiB of dynamic shared
    // memory the two pass the 48 KiB a function may have without cuFuncSetAttribute.
    const params: Array<[string, ParamType]> = [['out', 'ptr'], ['with_barrier', 'i32']];
    const msg = failure(() => launch('ts_emu_selftest_barrier', params, { out: upload(new Int32Array(32)), with_barrier: 1 }, 32, 48 * 1024));
    expect(msg).toMatch(
      /^ts_emu_selftest_barrier: block \(0,0,0\) thread \(\d+,0,0\): 4 bytes of static and 49152 of dynamic shared memory: past the function's limit on dynamic shared memory \(49152 less the static part; raise it with cuFuncSetAttribute\)/,
    );
    launch('ts_emu_selftest_barrier', params, { out: upload(new Int32Array(32)), with_barrier: 1 }, 32, 48 * 1024 - 16);
    const fn = h.driver.getFunction(h.module, 'ts_emu_selftest_barrier');
    h.driver.setMaxDynamicSharedMemory(fn, 64 * 1024);
    const out = upload(new Int32Array(32));
    h.driver.launch(fn, [1, 1, 1], [32, 1, 1], 48 * 1024, h.stream, (view) => packArgs(view, { name: 'ts_emu_selftest_barrier', params }, { out, with_barrier: 1 }));
    h.driver.synchronize(h.stream);
    expect(download(new Int32Array(32), out)[0]).toBe(7);
  });

  describe('global memory: every allocation ends at an inaccessible page', () => {
    const params: Array<[string, ParamType]> = [['out', 'ptr'], ['in', 'ptr'], ['at', 'i32'], ['who', 'i32'], ['write', 'i32']];
    /** A fresh 1024-float allocation (4096 bytes: its end is the guard page's start). */
    const fresh = () => upload(Float32Array.from({ length: 1024 }, (_, i) => i));
    const illegal = (fn: () => void): string => failure(fn, 'CUDA_ERROR_ILLEGAL_ADDRESS');

    it('reads and writes inside it as before', () => {
      const inp = fresh(), out = upload(new Float32Array(64));
      launch('ts_emu_selftest_global', params, { out, in: inp, at: 1023, who: 5, write: 0 }, 64);
      expect(download(new Float32Array(64), out)[5]).toBe(1023);
      launch('ts_emu_selftest_global', params, { out, in: inp, at: 1023, who: 5, write: 1 }, 64);
      expect(download(new Float32Array(1024), inp)[1023]).toBe(1);
    });

    it('reports a read one element past the end as an illegal address, naming the thread and the allocation', () => {
      const inp = fresh();
      const msg = illegal(() => launch('ts_emu_selftest_global', params, { out: upload(new Float32Array(64)), in: inp, at: 1024, who: 37, write: 0 }, 64));
      expect(msg).toBe(`ts_emu_selftest_global: block (0,0,0) thread (37,0,0): illegal address 0x${(inp + 4096n).toString(16)}: 0 bytes past the end of the 4096-byte allocation at 0x${inp.toString(16)}`);
    });

    it('reports a write before the start, and goes on launching after the fault is cleared', () => {
      const inp = fresh();
      const msg = illegal(() => launch('ts_emu_selftest_global', params, { out: upload(new Float32Array(64)), in: inp, at: -1, who: 0, write: 1 }, 64));
      expect(msg).toMatch(/thread \(0,0,0\): illegal address 0x[0-9a-f]+: 4 bytes before the start of the 4096-byte allocation at 0x/);
      const out = upload(new Float32Array(64));
      launch('ts_emu_selftest_global', params, { out, in: inp, at: 7, who: 63, write: 0 }, 64);
      expect(download(new Float32Array(64), out)[63]).toBe(7);
    });

    it('reports a 16-byte vector access at an address that is not a multiple of 16 as a misaligned address', () => {
      const params: Array<[string, ParamType]> = [['out', 'ptr'], ['in', 'ptr'], ['offset', 'i32']];
      const inp = upload(Uint32Array.from({ length: 64 }, (_, i) => i)), out = upload(new Uint32Array(32));
      launch('ts_emu_selftest_misaligned', params, { out, in: inp, offset: 32 }, 32);
      expect(download(new Uint32Array(32), out)[3]).toBe(9); // word 8 + 1
      const message = failure(() => launch('ts_emu_selftest_misaligned', params, { out, in: inp, offset: 36 }, 32), 'CUDA_ERROR_MISALIGNED_ADDRESS');
      expect(message).toBe('ts_emu_selftest_misaligned: block (0,0,0) thread (3,0,0): misaligned address: a load or store through a pointer not aligned to its type\'s size (a 16-byte vector at an address not a multiple of 16)');
    });

    it('reports a null pointer', () => {
      const msg = illegal(() => launch('ts_emu_selftest_global', params, { out: upload(new Float32Array(64)), in: 0n, at: 2, who: 1, write: 0 }, 64));
      expect(msg).toBe('ts_emu_selftest_global: block (0,0,0) thread (1,0,0): illegal address 0x8: no allocation holds it');
    });
  });

  it('refuses a launch whose argument bytes are not the kernel\'s', () => {
    const msg = failure(() => launch('ts_emu_selftest_exit', [['out', 'ptr'], ['extra', 'i32']], { out: upload(new Int32Array(32)), extra: 1 }, 32));
    expect(msg).toBe('ts_emu_selftest_exit: the launch passed 12 bytes of arguments; the kernel takes 8');
  });
});
