/**
 * The Hopper layout probes (kernels/sm90_probe.cu, src/backend/cuda/sm90_probe.ts): on a Hopper
 * GPU, each probe's single wgmma product against the float64 product of the same bf16 inputs, so
 * the descriptors and fragments of the sm90 attention and GEMM are checked on their own. Without
 * one, the same tier runs on the kernel emulator (tests/cuda/emu), whose wgmma models the layouts
 * kernels/sm90.cuh documents: there it checks the probe kernels and the emulator agree, not the
 * hardware. And the stand-in libcuda runs the harness end to end (upload, launch, read back,
 * compare) with a launch hook that does the product, and a hook with a layout error shows the
 * probe catches it.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { CudaDriver } from '../../src/backend/cuda/driver.js';
import { loadDriver } from '../../src/backend/cuda/driver.js';
import { SM90_PROBES, SM90_PROBE_SHAPES, probeReference, runSm90ClusterProbe, runSm90Probe, type Sm90Probe } from '../../src/backend/cuda/sm90_probe.js';
import { bf16ToF32 } from '../../src/util/dtype.js';
import { mulberry32 } from '../helpers/random.js';
import { cudaTarget } from './emu/target.js';
import { buildMock, setLaunchHook, unpackArgs } from './mock/mock.js';

const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
const target = cudaTarget();
const gpu = target.skip === null && !target.emulated;
const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
const gpuSkip = target.skip;
const mockPath = gpu ? null : buildMock();
const standInSkip = gpu ? 'a GPU is present: its tier runs the probes themselves' : !mockPath ? 'no C compiler to build the stand-in libcuda' : !existsSync(fatbin) ? 'the kernels are not built (npm run build:kernels needs nvcc)' : null;
if (gpuSkip) console.log(`sm90 layout probes: GPU tier skipped: ${gpuSkip}`);
if (standInSkip) console.log(`sm90 layout probes: stand-in tier skipped: ${standInSkip}`);

describe.skipIf(gpuSkip !== null)(`sm90 layout probes on ${target.emulated ? 'the kernel emulator' : 'the GPU'}`, () => {
  it('match the float64 product on fresh random inputs (Hopper only)', async () => {
    const backend = CudaBackend.create();
    try {
      const cc = backend.profiler.device().computeCapability;
      if (!String(cc).startsWith('9.')) {
        console.log(`sm90 layout probes: compute capability ${cc} is not Hopper; nothing to probe`);
        return;
      }
      const random = mulberry32(Date.now() >>> 0);
      for (const kind of ['qk', 'pv', 'pv64'] as const)
        for (let run = 0; run < 3; run++) {
          const r = runSm90Probe(backend, kind, random);
          expect(r.firstBad, `${kind}: ${JSON.stringify(r)}`).toBeNull();
          expect(r.maxAbsReference).toBeGreaterThan(0.5);
        }
    } finally {
      await backend.dispose();
    }
  });

  it('the cluster probe: both blocks of a cluster hold the whole tile, half of it from each block\'s multicast, and each saw its peer\'s arrivals (Hopper only)', async () => {
    const backend = CudaBackend.create();
    try {
      const cc = backend.profiler.device().computeCapability;
      if (!String(cc).startsWith('9.')) {
        console.log(`sm90 cluster probe: compute capability ${cc} is not Hopper; nothing to probe`);
        return;
      }
      const random = mulberry32(Date.now() >>> 0);
      for (let run = 0; run < 3; run++) {
        const r = runSm90ClusterProbe(backend, random);
        expect(r, JSON.stringify(r)).toEqual({ blocks: [{ wrong: 0, first: null }, { wrong: 0, first: null }], flags: [1, 1] });
      }
    } finally {
      await backend.dispose();
    }
  });
});

/** A stand-in for the probe kernels: reads the launch's inputs, writes `product` (optionally scrambled). */
function productHook(driver: CudaDriver, scramble: boolean) {
  return (l: { name: string; args: Uint8Array }) => {
    const kind = (Object.keys(SM90_PROBES) as Sm90Probe[]).find((k) => SM90_PROBES[k].name === l.name);
    if (!kind) return;
    const a = unpackArgs(l.args, SM90_PROBES[kind]);
    const [outName, aName, bName] = SM90_PROBES[kind].params.map(([n]) => n);
    const { m, n, k } = SM90_PROBE_SHAPES[kind];
    const aBits = new Uint16Array(m * k), bBits = new Uint16Array(n * k);
    driver.copyToHost(aBits, a[aName] as bigint);
    driver.copyToHost(bBits, a[bName] as bigint);
    const x = new Float32Array(m * k), y = new Float32Array(n * k);
    bf16ToF32(aBits, x);
    bf16ToF32(bBits, y);
    const out = Float32Array.from(probeReference(kind, x, y));
    // A layout error of the kind a wrong descriptor makes: two 8-column groups of row 9 swapped.
    if (scramble) for (let j = 0; j < 8; j++) [out[9 * n + j], out[9 * n + 8 + j]] = [out[9 * n + 8 + j], out[9 * n + j]];
    driver.copyToDevice(a[outName] as bigint, out);
  };
}

describe.skipIf(standInSkip !== null)('sm90 layout probes: the harness (stand-in libcuda)', () => {
  it('uploads, launches one warpgroup, reads back and compares; a layout error is reported where it is', async () => {
    // This tier's own stand-in, without the emulator: the hooks alone write the outputs.
    const saved = process.env.TESSERA_LIBCUDA, savedEmu = process.env.MOCK_EMU;
    process.env.TESSERA_LIBCUDA = mockPath!;
    delete process.env.MOCK_EMU;
    try {
      const driver = (loadDriver() as { driver: CudaDriver }).driver;
      const backend = CudaBackend.create();
      try {
        const random = mulberry32(7);
        for (const kind of ['qk', 'pv', 'pv64'] as const) {
          let remove = setLaunchHook(mockPath!, productHook(driver, false));
          const good = runSm90Probe(backend, kind, random);
          remove();
          expect(good.firstBad, kind).toBeNull();
          expect(good.maxAbsError, kind).toBeLessThan(1e-4);
          expect(good.maxAbsReference, kind).toBeGreaterThan(0.5);
          remove = setLaunchHook(mockPath!, productHook(driver, true));
          const bad = runSm90Probe(backend, kind, random);
          remove();
          expect(bad.firstBad, kind).toMatchObject({ row: 9 });
          expect(bad.firstBad!.col).toBeLessThan(16);
        }
        // No launch at all (the output stays NaN-poisoned) cannot pass either.
        const none = runSm90Probe(backend, 'pv', random);
        expect(none.maxAbsError).toBe(Infinity);
        expect(none.firstBad).toMatchObject({ row: 0, col: 0 });
      } finally {
        await backend.dispose();
      }
    } finally {
      if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
      else process.env.TESSERA_LIBCUDA = saved;
      if (savedEmu !== undefined) process.env.MOCK_EMU = savedEmu;
    }
  });
});
