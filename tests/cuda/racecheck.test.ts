/**
 * The kernel emulator's race check (tests/cuda/emu/race.h), on its own check kernels: each
 * pattern with the synchronisation it needs runs and gives the right values; without it, the
 * launch fails with one sentence naming the shared address and both threads, under every
 * schedule, including where the values come out right anyway (two threads writing the same value;
 * readers that release a stage before reading it). The barriers it must see are each of the
 * kernels' kinds: __syncthreads, __syncwarp (a shuffle orders nothing), mbarriers, named barriers,
 * and cp.async's and ldmatrix's accesses as the lanes' own; and a wgmma reading stores that no
 * fence.proxy.async made visible to the async proxy; and a read of shared memory nothing wrote.
 *
 * Tessera's kernels under the race check: `npm run test:race` runs the op conformance suite's
 * CUDA tiers on the race-checking emulator, at sm_90 and sm_80.
 */
import { describe, expect, it } from 'vitest';
import type { ParamType } from '../../src/backend/cuda/kernel_decl.js';
import { buildEmulator } from './emu/build.js';
import { useEmulator } from './emu/harness.js';
import { buildMock } from './mock/mock.js';

const off = process.env.TESSERA_EMULATOR === '0';
const mockPath = off ? null : buildMock();
const emu = mockPath ? buildEmulator({ racecheck: true }) : { path: null, skip: 'no C compiler', kernels: [] };
const skip = off ? 'the kernel emulator is off (TESSERA_EMULATOR=0)' : !mockPath ? 'no C compiler to build the stand-in libcuda' : emu.skip;
if (skip) console.log(`kernel emulator race check: skipped: ${skip}`);

// The reporting thread is the later access's; which of the two comes first depends on the schedule.
const RACE = /^ts_emu_selftest_race_\w+: block \(0,0,0\) thread \((\d+),0,0\): shared memory race at shared address 0x[0-9a-f]+: thread \((\d+),0,0\) (?:wrote|read) it and thread \((\d+),0,0\) (?:writes|reads) it with nothing ordering the two/;

describe.skipIf(skip !== null)('kernel emulator race check', () => {
  const { upload, download, launch, failure } = useEmulator(mockPath!, emu.path!, '90');
  const params: Array<[string, ParamType]> = [['out', 'ptr'], ['ordered', 'i32']];
  /**
   * Under the plain schedule and two drawn ones: `ordered` gives `expected`; unordered is a race
   * between two threads for which `pair(first, second)` holds.
   */
  const check = (kernel: string, threads: number, outWords: number, expected: number[], pair: (a: number, b: number) => boolean) => {
    for (const schedule of ['0', '1', '9']) {
      process.env.TESSERA_EMU_SCHEDULE = schedule;
      const out = upload(new Int32Array(outWords));
      launch(`ts_emu_selftest_race_${kernel}`, params, { out, ordered: 1 }, threads);
      expect([...download(new Int32Array(expected.length), out)], `schedule ${schedule}`).toEqual(expected);
      const msg = failure(() => launch(`ts_emu_selftest_race_${kernel}`, params, { out, ordered: 0 }, threads));
      const m = RACE.exec(msg);
      expect(m, `schedule ${schedule}: ${msg}`).not.toBeNull();
      const [reporter, first, second] = m!.slice(1).map(Number);
      expect(reporter, msg).toBe(second);
      expect(first !== second && pair(first, second), msg).toBe(true);
    }
  };

  it('sees two threads writing the same value with nothing between, which no value shows', () => {
    check('same_value', 32, 32, new Array(32).fill(5), (a, b) => a + b === 20 && a * b === 51);
  });

  it('sees a write after a read of the same word by another thread, with no barrier between', () => {
    const n = 64;
    check('war', n, n, Array.from({ length: n }, (_, t) => 2 * ((t + 1) % n)), (a, b) => (a + 1) % n === b || (b + 1) % n === a);
  });

  it('takes __syncwarp as ordering a warp\'s shared memory, and a shuffle as ordering none', () => {
    check('syncwarp', 32, 64, Array.from({ length: 32 }, (_, l) => 32 - l), (a, b) => a + b === 31);
  });

  it('orders an mbarrier ring: readers that release the stage before reading it race with the next fill, though the values come out right', () => {
    check('mbarrier', 64, 32, Array.from({ length: 32 }, (_, i) => 100 + 2 * i), (a, b) => Math.min(a, b) === 0 && Math.max(a, b) >= 32);
  });

  it('orders through a named barrier that one warp arrives at and another waits at', () => {
    check('named', 64, 32, Array.from({ length: 32 }, (_, i) => 3 * i), (a, b) => Math.abs(a - b) === 32);
  });

  it('reads each ldmatrix row as the lane that gave its address', () => {
    // Row l (8 values from 8 l) gives lane l's registers; each lane's XOR of its four words.
    const rows = Array.from({ length: 32 }, (_, l) => Array.from({ length: 8 }, (_, i) => 8 * l + i));
    const expected = Array.from({ length: 32 }, (_, l) => {
      let x = 0;
      for (let m = 0; m < 4; m++) {
        const row = rows[8 * m + (l >> 2)];
        x ^= (row[2 * (l & 3)] | (row[2 * (l & 3) + 1] << 16)) >>> 0;
      }
      return x | 0;
    });
    check('ldmatrix', 64, 32, expected, (a, b) => Math.min(a, b) < 32 && Math.max(a, b) >= 32);
  });

  /** Under two schedules: `ordered` gives `expected` (floats); unordered fails with `message`. */
  const checkFloat = (kernel: string, threads: number, expected: number, message: RegExp) => {
    for (const schedule of ['0', '1']) {
      process.env.TESSERA_EMU_SCHEDULE = schedule;
      const out = upload(new Float32Array(threads));
      launch(kernel, params, { out, ordered: 1 }, threads);
      expect([...download(new Float32Array(threads), out)]).toEqual(new Array(threads).fill(expected));
      expect(failure(() => launch(kernel, params, { out, ordered: 0 }, threads))).toMatch(message);
    }
  };

  it('requires fence.proxy.async between a thread\'s stores and a wgmma that reads them, barrier or not', () => {
    checkFloat(
      'ts_emu_selftest_race_proxy',
      128,
      16,
      /^ts_emu_selftest_race_proxy: block \(0,0,0\) thread \(\d+,0,0\): shared memory at shared address 0x[0-9a-f]+: thread \(\d+,0,0\) wrote it and a wgmma reads it for thread \(\d+,0,0\) with no fence\.proxy\.async by the writer after its write/,
    );
  });

  it('sees a read of shared memory that nothing wrote, where the poison does not show', () => {
    checkFloat(
      'ts_emu_selftest_race_unwritten',
      32,
      1,
      /^ts_emu_selftest_race_unwritten: block \(0,0,0\) thread \((\d+),0,0\): thread \(\1,0,0\) reads shared memory at shared address 0x[0-9a-f]+ that nothing wrote since the block started/,
    );
  });

  it('takes a cp.async copy as written by its thread when that thread\'s wait lands it: another thread reading it first races', () => {
    process.env.TESSERA_EMU_SCHEDULE = '0';
    const msg = failure(() =>
      launch('ts_emu_selftest_cp_async_race', [['out', 'ptr'], ['in', 'ptr']], { out: upload(new Float32Array(1)), in: upload(Float32Array.of(1, 2, 3, 4)) }, 32),
    );
    expect(msg).toMatch(/^ts_emu_selftest_cp_async_race: block \(0,0,0\) thread \(0,0,0\): shared memory race at shared address 0x[0-9a-f]+: thread \(1,0,0\) read it and thread \(0,0,0\) writes it/);
    // Its own reads of what it has in flight are no race (ts_emu_selftest_cp_async reads the poison).
    const out = upload(new Float32Array(5 * 32));
    launch('ts_emu_selftest_cp_async', [['out', 'ptr'], ['in', 'ptr']], { out, in: upload(new Float32Array(256).fill(1)) }, 32);
  });
});
