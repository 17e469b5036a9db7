/**
 * Launching the emulator's own check kernels (selftest.cu) from a test file: call
 * useEmulator() inside a describe block; it loads the stand-in libcuda with the given emulator
 * library as that describe's beforeAll, frees what the tests uploaded and restores the
 * environment in its afterAll, and gives one-block launches and the emulator's failure sentence.
 */
import { afterAll, beforeAll, expect } from 'vitest';
import koffi from 'koffi';
import { loadDriver, type CudaDriver, type DevPtr, type Handle } from '../../../src/backend/cuda/driver.js';
import { packArgs, type ArgValue, type ParamType } from '../../../src/backend/cuda/kernel_decl.js';

export interface EmulatorHarness {
  /** Set by the beforeAll: valid inside the tests. */
  driver: CudaDriver;
  module: Handle;
  stream: Handle;
  upload(data: ArrayBufferView): DevPtr;
  download<A extends Int32Array | Uint32Array | Float32Array>(out: A, p: DevPtr): A;
  /** One block of `threads` threads, synchronized. */
  launch(name: string, params: Array<[string, ParamType]>, args: Record<string, ArgValue>, threads: number, sharedBytes?: number): void;
  /** Runs a launch that must fail with `error`; returns the emulator's sentence and clears the fault. */
  failure(fn: () => void, error?: string): string;
}

/** mockPath: the stand-in libcuda; emuPath: the emulator library; cc: the device's compute capability ('80', '90'); schedule: TESSERA_EMU_SCHEDULE for the tests. */
export function useEmulator(mockPath: string, emuPath: string, cc: string, schedule?: string): EmulatorHarness {
  const allocations: DevPtr[] = [];
  const keys = ['TESSERA_LIBCUDA', 'MOCK_EMU', 'MOCK_CC', 'TESSERA_EMU_SCHEDULE'] as const;
  const saved = new Map(keys.map((k) => [k, process.env[k]]));
  let lib: koffi.IKoffiLib;

  const h: EmulatorHarness = {
    driver: undefined as unknown as CudaDriver,
    module: undefined as unknown as Handle,
    stream: undefined as unknown as Handle,
    upload(data) {
      const p = h.driver.malloc(Math.max(data.byteLength, 16));
      allocations.push(p);
      h.driver.copyToDevice(p, data);
      return p;
    },
    download(out, p) {
      h.driver.copyToHost(out, p);
      return out;
    },
    launch(name, params, args, threads, sharedBytes = 0) {
      const fn = h.driver.getFunction(h.module, name);
      h.driver.launch(fn, [1, 1, 1], [threads, 1, 1], sharedBytes, h.stream, (view) => packArgs(view, { name, params }, args));
      h.driver.synchronize(h.stream);
    },
    failure(fn, error = 'CUDA_ERROR_LAUNCH_FAILED') {
      expect(fn).toThrow(new RegExp(error));
      const message = lib.func('const char *mock_emu_error(void)')() as string;
      lib.func('void mock_clear_fault(void)')();
      return message;
    },
  };

  beforeAll(() => {
    if (schedule !== undefined) process.env.TESSERA_EMU_SCHEDULE = schedule;
    process.env.TESSERA_LIBCUDA = mockPath;
    process.env.MOCK_EMU = emuPath;
    process.env.MOCK_CC = cc;
    const loaded = loadDriver();
    if ('reason' in loaded) throw new Error(loaded.reason);
    h.driver = loaded.driver;
    h.driver.usePrimaryContext(0);
    h.module = h.driver.loadModule(new Uint8Array(16));
    h.stream = h.driver.createStream();
    lib = koffi.load(mockPath);
  });
  afterAll(() => {
    for (const p of allocations) h.driver.free(p);
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  return h;
}
