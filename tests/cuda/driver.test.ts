/**
 * The driver bridge through koffi, against a stand-in libcuda (tests/cuda/mock/libcuda_mock.c,
 * built here with the C compiler): the signatures bind, out-parameters come back, copies round
 * trip, kernel arguments arrive packed as the declaration says, errors name the call and the
 * status. Skipped, saying so, where no C compiler is found.
 */
import path from 'node:path';
import koffi from 'koffi';
import { afterAll, describe, expect, it } from 'vitest';
import { CudaError, loadDriver, type CudaDriver } from '../../src/backend/cuda/driver.js';
import { packArgs, type KernelDecl } from '../../src/backend/cuda/kernel_decl.js';
import { buildMock, setLaunchHook } from './mock/mock.js';

const mockPath = buildMock();
if (!mockPath) console.log('cuda driver bridge: skipped: no C compiler to build the stand-in libcuda');

describe.skipIf(!mockPath)('CUDA driver bridge (stand-in libcuda)', () => {
  const saved = process.env.TESSERA_LIBCUDA;
  process.env.TESSERA_LIBCUDA = mockPath ?? '';
  const loaded = loadDriver();
  const driver = (loaded as { driver: CudaDriver }).driver;
  const mock = koffi.load(mockPath!);
  const lastLaunch = mock.func('int mock_last_launch(_Out_ uint8_t *name, _Out_ uint32_t *geom, _Out_ uint8_t *args)');
  afterAll(() => {
    if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
    else process.env.TESSERA_LIBCUDA = saved;
  });

  it('binds every symbol and reads the device through out-parameters', () => {
    expect('reason' in loaded ? loaded.reason : '').toBe('');
    const p = driver.properties(0);
    expect(p).toMatchObject({ name: 'Mock GPU', computeCapability: [9, 0], multiprocessors: 132, maxSharedMemoryPerBlockOptin: 232448, totalMemoryBytes: 80 * 2 ** 30, driverVersion: 13000 });
    expect(driver.memInfo()).toEqual({ freeBytes: 70 * 2 ** 30, totalBytes: 80 * 2 ** 30 });
    driver.usePrimaryContext(0);
  });

  it('round-trips memory through device pointers, async copies and memset', () => {
    const a = driver.malloc(64), b = driver.malloc(64);
    const src = Float32Array.from({ length: 16 }, (_, i) => i * 1.5);
    const stream = driver.createStream();
    driver.copyToDeviceAsync(a, src, 64, stream);
    driver.copyDeviceAsync(b, a, 64, stream);
    const back = new Float32Array(16);
    driver.copyToHost(back, b);
    expect(back).toEqual(src);
    driver.memset32Async(b, 0x7fc00000, 16, stream);
    driver.copyToHost(back, b);
    expect(back.every(Number.isNaN)).toBe(true);
    const pinned = driver.mallocHost(32);
    new Int32Array(pinned.buffer).set([1, 2, 3, 4, 5, 6, 7, 8]);
    driver.copyToDeviceAsync(a, pinned.ptr, 32, stream);
    const ints = new Int32Array(8);
    driver.copyToHost(ints, a);
    expect([...ints]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    driver.freeHost(pinned.ptr);
    driver.free(a);
    driver.free(b);
  });

  it('launches with the arguments packed as the declaration says', () => {
    const decl: KernelDecl = { name: 'ts_test', params: [['out', 'ptr'], ['n', 'i32'], ['scale', 'f32'], ['count', 'u64'], ['flag', 'u32']] };
    const args = { out: 0x1234_5678_9abcn, n: -3, scale: 0.5, count: 2n ** 40n, flag: 7 };
    const module = driver.loadModule(new Uint8Array(8));
    const fn = driver.getFunction(module, decl.name);
    driver.launch(fn, [3, 2, 1], [128, 1, 1], 4096, driver.createStream(), (view) => packArgs(view, decl, args));
    const name = new Uint8Array(128), geom = new Uint32Array(7), bytes = new Uint8Array(64);
    const size = lastLaunch(name, geom, bytes) as number;
    expect(new TextDecoder().decode(name.subarray(0, name.indexOf(0)))).toBe('ts_test');
    expect([...geom]).toEqual([3, 2, 1, 128, 1, 1, 4096]);
    const expected = new DataView(new ArrayBuffer(64));
    expect(size).toBe(packArgs(expected, decl, args));
    expect(size).toBe(28); // ptr 0-8, i32 8-12, f32 12-16, u64 16-24, u32 24-28: ends at the last parameter
    expect([...bytes.subarray(0, size)]).toEqual([...new Uint8Array(expected.buffer, 0, size)]);
  });

  it('captures, instantiates and replays a graph, and times with events', () => {
    const stream = driver.createStream();
    driver.beginCapture(stream);
    const exec = driver.endCapture(stream);
    driver.launchGraph(exec, stream);
    driver.destroyGraph(exec);
    const a = driver.createEvent(), b = driver.createEvent();
    driver.record(a, stream);
    driver.record(b, stream);
    expect(driver.elapsedMs(a, b)).toBeCloseTo(1.5, 5);
  });

  it('holds a capture to the driver rules: an allocation or a synchronization inside it fails and invalidates it', () => {
    // The stand-in enforces what CU_STREAM_CAPTURE_MODE_THREAD_LOCAL prohibits, so the backend's
    // own captures (the decode graphs of the tests below) are checked against it.
    const stream = driver.createStream();
    driver.beginCapture(stream);
    expect(() => driver.malloc(64)).toThrow('CUDA cuMemAlloc_v2 failed with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (900).');
    expect(() => driver.synchronize(stream)).toThrow(/CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED/);
    expect(() => driver.endCapture(stream)).toThrow(/cuStreamEndCapture failed with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED \(901\)/);
    // A clean capture after it is fine.
    driver.beginCapture(stream);
    driver.destroyGraph(driver.endCapture(stream));
  });

  it('a failing call throws a CudaError naming the call, the status and the op', () => {
    driver.currentOp = 'model.layers.0.attention';
    let err: unknown;
    try {
      driver.properties(3);
    } catch (e) {
      err = e;
    }
    driver.currentOp = null;
    expect(err).toBeInstanceOf(CudaError);
    expect((err as Error).message).toBe('CUDA cuDeviceGet failed with CUDA_ERROR_INVALID_DEVICE (101) while running model.layers.0.attention.');
  });
});

describe.skipIf(!mockPath)('CUDA backend bookkeeping (stand-in libcuda, kernels do nothing)', () => {
  it('loads a model, runs prefill and decode steps through graph capture and replay, and frees everything', async () => {
    const { existsSync } = await import('node:fs');
    const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
    if (!existsSync(fatbin)) return; // npm run build:kernels (nvcc) makes it; CI builds it first
    const saved = process.env.TESSERA_LIBCUDA;
    process.env.TESSERA_LIBCUDA = mockPath!;
    const { Tessera } = await import('../../src/llm.js');
    const counts = koffi.load(mockPath!).func('int mock_counts(_Out_ int *launches, _Out_ int *graphs)');
    try {
      for (const model of [undefined, 'synthetic:tiny-4k']) {
        const llm = await Tessera.load(model, { device: 'cuda', maxNumSeqs: 4 });
        expect(llm.info.device).toMatch(/^cuda:0 Mock GPU \(sm_90/);
        // The stand-in's kernels leave the logits at zero: greedy picks token 0 every step, which
        // is enough to drive prefill, eager decode, capture and replay of the decode graph.
        const r = await llm.complete('In the beginning', { temperature: 0, maxTokens: 6, ignoreEos: true });
        expect(r.tokenIds).toEqual([0, 0, 0, 0, 0, 0]);
        const launches = [0], graphs = [0];
        counts(launches, graphs);
        expect(launches[0]).toBeGreaterThan(0);
        expect(graphs[0]).toBeGreaterThan(0);
        await llm.close();
      }
    } finally {
      if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
      else process.env.TESSERA_LIBCUDA = saved;
    }
  });
});

describe.skipIf(!mockPath)('the storage type on the CUDA backend (stand-in libcuda)', () => {
  it('--dtype float16 (and auto for a float16 checkpoint) runs every kernel\'s fp16 entry; bfloat16 the bf16 one', async () => {
    const { existsSync, mkdtempSync, cpSync, readFileSync, writeFileSync, rmSync } = await import('node:fs');
    const os = await import('node:os');
    if (!existsSync(path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin'))) return;
    const saved = process.env.TESSERA_LIBCUDA;
    process.env.TESSERA_LIBCUDA = mockPath!;
    const { Tessera, DEMO_MODEL_DIR } = await import('../../src/llm.js');
    // The demo model as a float16 checkpoint would declare itself (the weights stay as stored).
    const f16Dir = mkdtempSync(path.join(os.tmpdir(), 'tessera-f16-'));
    cpSync(DEMO_MODEL_DIR, f16Dir, { recursive: true });
    const config = JSON.parse(readFileSync(path.join(f16Dir, 'config.json'), 'utf8'));
    writeFileSync(path.join(f16Dir, 'config.json'), JSON.stringify({ ...config, torch_dtype: 'float16' }));
    const run = async (model: string | undefined, dtype: 'auto' | 'bfloat16' | 'float16') => {
      const names = new Set<string>();
      const unhook = setLaunchHook(mockPath!, (l) => names.add(l.name));
      let computeDtype = '';
      try {
        const llm = await Tessera.load(model, { device: 'cuda', maxNumSeqs: 2, dtype });
        computeDtype = llm.info.computeDtype;
        await llm.complete('In the beginning', { temperature: 0, maxTokens: 3, ignoreEos: true });
        await llm.close();
      } finally {
        unhook();
      }
      return { names: [...names], computeDtype };
    };
    try {
      for (const [model, dtype, want] of [
        [undefined, 'float16', 'f16'],
        [f16Dir, 'auto', 'f16'],
        ['synthetic:tiny-4k', 'float16', 'f16'],
        [f16Dir, 'bfloat16', 'bf16'],
        [undefined, 'auto', 'bf16'],
      ] as const) {
        const { names, computeDtype } = await run(model, dtype);
        const label = `${model ?? 'demo'} --dtype ${dtype}`;
        expect(computeDtype, label).toBe(want === 'f16' ? 'float16' : 'bfloat16');
        // Every launch but sampling (f32 logits) names the storage type, and only that one.
        const typed = names.filter((n) => !n.startsWith('ts_sample_'));
        expect(typed.length, label).toBeGreaterThan(4);
        for (const n of typed) expect(n, label).toMatch(want === 'f16' ? /_f16(_f32)?$/ : /_bf16(_f32)?$/);
        expect(names.some((n) => n.startsWith('ts_gemm_') || n.startsWith('ts_gemv_')), label).toBe(true);
        expect(names.some((n) => n.startsWith('ts_attention_')), label).toBe(true);
      }
    } finally {
      rmSync(f16Dir, { recursive: true, force: true });
      if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
      else process.env.TESSERA_LIBCUDA = saved;
    }
  });
});

describe.skipIf(!mockPath)('tessera bench on the CUDA backend (stand-in libcuda)', () => {
  it('reports the device, the host share of a decode step and the weight reads against copy bandwidth', async () => {
    const { existsSync } = await import('node:fs');
    const { execFileSync } = await import('node:child_process');
    if (!existsSync(path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin'))) return;
    const bin = path.join(import.meta.dirname, '../../bin/tessera.js');
    const out = execFileSync(process.execPath, [bin, 'bench', '--device', 'cuda', '--prompt-tokens', '8', '--decode-tokens', '6', '--runs', '2', '--json'], {
      env: { ...process.env, TESSERA_LIBCUDA: mockPath! },
      encoding: 'utf8',
    });
    const report = JSON.parse(out);
    expect(report.device).toMatch(/^cuda:0 Mock GPU/);
    expect(report.sampling).toBe('device');
    expect(report.deviceInfo).toMatchObject({ name: 'Mock GPU', computeCapability: '9.0', multiprocessors: 132, driver: '13.0' });
    // The stand-in's events always say 1.5 ms: the figures are plumbing, not measurements.
    expect(report.decodeStepDeviceMs).toBe(1.5);
    expect(report.hostShareOfDecodeStep).toBeGreaterThanOrEqual(0);
    expect(report.hostShareOfDecodeStep).toBeLessThan(1);
    const copyBytes = 2 * 2 ** 30;
    expect(report.copyBandwidthGBs).toBeCloseTo(copyBytes / 1.5e-3 / 1e9, 0);
    expect(report.weightBytes).toBe(2 * 3215616);
    expect(report.weightReadPercentOfCopy).toBeCloseTo((100 * report.weightReadGBs) / report.copyBandwidthGBs, 0);
  });
});
