/**
 * The device the GPU tiers of the test suite run on: the GPU when CudaBackend.probe() finds one;
 * otherwise the kernel emulator behind the stand-in libcuda (README.md here), which runs every
 * kernel's own source on the CPU through the real CUDA backend, so those tiers run on every
 * machine with a C++ compiler. The emulated device reports compute capability 9.0, so the
 * backend picks the Hopper kernels where it would on an H100 (TESSERA_EMULATOR_CC=80, 86 or 89
 * makes it one of those parts, with their SM counts and shared memory, and the mma.sync path).
 * TESSERA_EMULATOR=0 turns the emulator off (the tiers then skip, saying why).
 *
 * Choosing the emulator sets TESSERA_LIBCUDA, MOCK_EMU and MOCK_CC in this process, so every
 * CudaBackend created after it (in this test file's process) is emulated, and TESSERA_ARENA=split
 * (unless set), so that each planned activation is an allocation of its own, bounds-checked.
 */
import { CudaBackend } from '../../../src/backend/cuda/backend.js';
import { buildMock } from '../mock/mock.js';
import { buildEmulator } from './build.js';

export interface CudaTarget {
  /** Null when the tiers run; else why they are skipped. */
  skip: string | null;
  emulated: boolean;
  /** The device, for titles: the probe's description, and for the emulator, that it is one. */
  title: string;
}

let chosen: CudaTarget | null = null;

export function cudaTarget(): CudaTarget {
  if (chosen) return chosen;
  const real = CudaBackend.probe();
  if (real.ok) return (chosen = { skip: null, emulated: false, title: real.reason });
  const off = (why: string): CudaTarget => (chosen = { skip: `${real.reason}; ${why}`, emulated: false, title: '' });
  if (process.env.TESSERA_EMULATOR === '0') return off('the kernel emulator is off (TESSERA_EMULATOR=0)');
  const mock = buildMock();
  if (!mock) return off('no C compiler to build the stand-in libcuda the kernel emulator runs behind');
  let emu;
  try {
    emu = buildEmulator();
  } catch (err) {
    // The emulator's own test (tests/cuda/emulator.test.ts) fails on this; here the tiers skip.
    return off(`the kernel emulator did not build: ${(err as Error).message.split('\n')[0]}`);
  }
  if (!emu.path) return off(emu.skip!);
  process.env.TESSERA_LIBCUDA = mock;
  process.env.MOCK_EMU = emu.path;
  const cc = process.env.TESSERA_EMULATOR_CC ?? '90';
  if (!['80', '86', '89', '90'].includes(cc)) return off(`TESSERA_EMULATOR_CC=${cc}: the emulator is an sm_80, sm_86, sm_89 or sm_90 device`);
  process.env.MOCK_CC = cc;
  // Each planned activation in its own guarded allocation: a kernel writing past its output
  // faults in the emulator rather than overwriting the next buffer of the arena.
  process.env.TESSERA_ARENA ??= 'split';
  const probe = CudaBackend.probe();
  if (!probe.ok) return off(`the emulated device is not usable: ${probe.reason}`);
  return (chosen = { skip: null, emulated: true, title: `kernel emulator, no GPU: ${probe.reason}` });
}
