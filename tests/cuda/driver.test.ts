/**
 * The driver bridge through koffi, against a stand-in libcuda (tests/cuda/mock/libcuda_mock.c,
 * built here with the C compiler): the signatures bind, out-parameters come back, copies round
 * trip, kernel arguments arrive packed as the declaration says, errors name the call and the
 * status. Skipped, saying so, where no C compiler is found.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { afterAll, describe, expect, it } from 'vitest';
import { CudaError, loadDriver, type CudaDriver } from '../../src/backend/cuda/driver.js';
import { loadTransientBytes } from '../../src/backend/cuda/backend.js';
import { packArgs, type KernelDecl } from '../../src/backend/cuda/kernel_decl.js';
import { buildMock, setLaunchHook } from './mock/mock.js';

const mockPath = buildMock();
const noClusterMockPath = mockPath && buildMock({ withoutClusterLaunch: true });
if (!mockPath) console.log('cuda driver bridge: skipped: no C compiler to build the stand-in libcuda');

describe.skipIf(!mockPath)('CUDA driver bridge (stand-in libcuda)', () => {
  const saved = process.env.TESSERA_LIBCUDA;
  process.env.TESSERA_LIBCUDA = mockPath ?? '';
  const loaded = loadDriver();
  const driver = (loaded as { driver: CudaDriver }).driver;
  const mock = koffi.load(mockPath!);
  const lastLaunch = mock.func('int mock_last_launch(_Out_ uint8_t *name, _Out_ uint32_t *geom, _Out_ uint8_t *args)');
  const lastClusterOf = mock.func('void mock_last_cluster(_Out_ uint32_t *cluster)');
  const lastCluster = () => {
    const c = new Uint32Array(3);
    lastClusterOf(c);
    return [...c];
  };
  const counts = mock.func('int mock_counts(_Out_ int *launches, _Out_ int *graphs)');
  const launchCount = () => {
    const launches = [0], graphs = [0];
    counts(launches, graphs);
    return launches[0];
  };
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

  it('launches a thread-block cluster through cuLaunchKernelEx; a plain launch is a cluster of one', () => {
    expect(driver.hasClusterLaunch).toBe(true);
    const decl: KernelDecl = { name: 'ts_cluster_test', params: [['out', 'ptr'], ['n', 'i32']] };
    const args = { out: 0xabcd_ef00n, n: 42 };
    const fn = driver.getFunction(driver.loadModule(new Uint8Array(8)), decl.name);
    const stream = driver.createStream();
    driver.launchEx(fn, [8, 3, 2], [256, 1, 1], 2048, stream, (view) => packArgs(view, decl, args), { cluster: [2, 1, 2] });
    const name = new Uint8Array(128), geom = new Uint32Array(7), bytes = new Uint8Array(64);
    const size = lastLaunch(name, geom, bytes) as number;
    expect(new TextDecoder().decode(name.subarray(0, name.indexOf(0)))).toBe('ts_cluster_test');
    expect([...geom]).toEqual([8, 3, 2, 256, 1, 1, 2048]);
    expect(lastCluster()).toEqual([2, 1, 2]);
    const expected = new DataView(new ArrayBuffer(64));
    expect(size).toBe(12);
    expect(size).toBe(packArgs(expected, decl, args));
    expect([...bytes.subarray(0, size)]).toEqual([...new Uint8Array(expected.buffer, 0, size)]);
    // The config buffer is reused: a second cluster launch replaces every field of the first.
    driver.launchEx(fn, [4, 1, 1], [128, 2, 1], 0, stream, (view) => packArgs(view, decl, args), { cluster: [4, 1, 1] });
    lastLaunch(name, geom, bytes);
    expect([...geom]).toEqual([4, 1, 1, 128, 2, 1, 0]);
    expect(lastCluster()).toEqual([4, 1, 1]);
    driver.launch(fn, [3, 1, 1], [64, 1, 1], 0, stream, (view) => packArgs(view, decl, args));
    lastLaunch(name, geom, bytes);
    expect([...geom]).toEqual([3, 1, 1, 64, 1, 1, 0]);
    expect(lastCluster()).toEqual([1, 1, 1]);
  });

  it('launchEx carries programmatic stream serialization, alone or beside a cluster; a driver that refuses it fails naming the call', () => {
    expect(driver.hasLaunchEx).toBe(true);
    const decl: KernelDecl = { name: 'ts_overlap_test', params: [['out', 'ptr'], ['n', 'i32']] };
    const args = { out: 0x1000n, n: 7 };
    const fn = driver.getFunction(driver.loadModule(new Uint8Array(8)), decl.name);
    const stream = driver.createStream();
    const pack = (view: DataView) => packArgs(view, decl, args);
    const lastOverlap = mock.func('int mock_last_overlap(void)');
    const overlapLaunches = mock.func('int mock_overlap_launches(void)');
    const name = new Uint8Array(128), geom = new Uint32Array(7), bytes = new Uint8Array(64);
    const before = overlapLaunches() as number;
    driver.launchEx(fn, [5, 1, 1], [128, 1, 1], 1024, stream, pack, { overlap: true });
    lastLaunch(name, geom, bytes);
    expect([...geom]).toEqual([5, 1, 1, 128, 1, 1, 1024]);
    expect([lastOverlap(), lastCluster()]).toEqual([1, [1, 1, 1]]);
    // Both attributes in one config; then the cluster alone (the buffer's second slot unused).
    driver.launchEx(fn, [6, 1, 1], [128, 1, 1], 0, stream, pack, { cluster: [2, 1, 1], overlap: true });
    expect([lastOverlap(), lastCluster()]).toEqual([1, [2, 1, 1]]);
    driver.launchEx(fn, [6, 1, 1], [128, 1, 1], 0, stream, pack, { cluster: [3, 1, 1] });
    expect([lastOverlap(), lastCluster()]).toEqual([0, [3, 1, 1]]);
    driver.launch(fn, [6, 1, 1], [128, 1, 1], 0, stream, pack);
    expect([lastOverlap(), lastCluster()]).toEqual([0, [1, 1, 1]]);
    expect((overlapLaunches() as number) - before).toBe(2);
    process.env.MOCK_NO_PDL = '1';
    try {
      expect(() => driver.launchEx(fn, [5, 1, 1], [128, 1, 1], 0, stream, pack, { overlap: true })).toThrow(/CUDA cuLaunchKernelEx failed with CUDA_ERROR_NOT_SUPPORTED \(801\)/);
    } finally {
      delete process.env.MOCK_NO_PDL;
    }
  });

  it('refuses a cluster that does not divide the grid, or is empty or too large, naming the field', () => {
    const decl: KernelDecl = { name: 'ts_cluster_test', params: [['n', 'i32']] };
    const fn = driver.getFunction(driver.loadModule(new Uint8Array(8)), decl.name);
    const stream = driver.createStream();
    const pack = (view: DataView) => packArgs(view, decl, { n: 1 });
    const before = launchCount();
    expect(() => driver.launchEx(fn, [3, 1, 1], [128, 1, 1], 0, stream, pack, { cluster: [2, 1, 1] })).toThrow('launchEx: grid[0] (3) must be a multiple of cluster[0] (2)');
    expect(() => driver.launchEx(fn, [4, 6, 1], [128, 1, 1], 0, stream, pack, { cluster: [1, 4, 1] })).toThrow('launchEx: grid[1] (6) must be a multiple of cluster[1] (4)');
    expect(() => driver.launchEx(fn, [4, 1, 1], [128, 1, 1], 0, stream, pack, { cluster: [0, 1, 1] })).toThrow('launchEx: cluster[0] must be a positive integer, not 0');
    expect(() => driver.launchEx(fn, [4, 1, 1], [128, 1, 1], 0, stream, pack, { cluster: [2, 1.5, 1] })).toThrow('launchEx: cluster[1] must be a positive integer, not 1.5');
    expect(() => driver.launchEx(fn, [16, 16, 1], [128, 1, 1], 0, stream, pack, { cluster: [4, 4, 1] })).toThrow('launchEx: cluster [4, 4, 1] has 16 blocks; at most 8 are allowed');
    expect(() => driver.maxActiveClusters(fn, [9, 1, 1], [128, 1, 1], [2, 1, 1], 0)).toThrow('maxActiveClusters: grid[0] (9) must be a multiple of cluster[0] (2)');
    expect(launchCount()).toBe(before); // none reached the driver

    // The stand-in itself, called with a hand-built CUlaunchConfig (56 bytes: grid, block and
    // shared memory, the stream at 32, attrs at 40, numAttrs at 48) and one CUlaunchAttribute
    // (72 bytes: the id, then the cluster at 8), refuses the same launches with
    // CUDA_ERROR_INVALID_CLUSTER_SIZE.
    const launchEx = mock.func('int cuLaunchKernelEx(void *config, void *fn, void **params, void **extra)');
    const occupancy = mock.func('int cuOccupancyMaxActiveClusters(_Out_ int *n, void *fn, void *config)');
    const memory = koffi.alloc('uint64_t', (56 + 72) / 8);
    const view = new DataView(koffi.view(memory, 56 + 72));
    const config = (grid: number[], cluster: number[] | null) => {
      new Uint8Array(view.buffer, view.byteOffset, 56 + 72).fill(0);
      grid.forEach((g, i) => view.setUint32(4 * i, g, true));
      [128, 1, 1].forEach((b, i) => view.setUint32(12 + 4 * i, b, true));
      view.setBigUint64(40, koffi.address(memory) + 56n, true);
      view.setUint32(48, cluster ? 1 : 0, true);
      view.setInt32(56, 4, true); // CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
      cluster?.forEach((c, i) => view.setUint32(64 + 4 * i, c, true));
      return memory;
    };
    const argCell = koffi.alloc('uint8_t', 8), sizeCell = koffi.alloc('uint64_t', 1);
    new DataView(koffi.view(sizeCell, 8)).setBigUint64(0, 4n, true);
    const extra = new BigUint64Array([1n, koffi.address(argCell), 2n, koffi.address(sizeCell), 0n]);
    expect(launchEx(config([3, 1, 1], [2, 1, 1]), fn, null, extra)).toBe(912);
    expect(launchEx(config([16, 16, 1], [4, 4, 1]), fn, null, extra)).toBe(912);
    expect(launchCount()).toBe(before);
    expect(driver.errorName(912)).toBe('CUDA_ERROR_INVALID_CLUSTER_SIZE');
    view.setBigUint64(32, 0x7n, true); // not a stream of the stand-in's
    expect(launchEx(memory, fn, null, extra)).toBe(400);
    expect(launchEx(config([4, 2, 1], [2, 2, 1]), fn, null, extra)).toBe(0);
    expect(lastCluster()).toEqual([2, 2, 1]);
    expect(launchCount()).toBe(before + 1);
    // Without the attribute, cuLaunchKernelEx is a plain launch and occupancy has no cluster to size.
    expect(launchEx(config([3, 1, 1], null), fn, null, extra)).toBe(0);
    expect(lastCluster()).toEqual([1, 1, 1]);
    const n = [0];
    expect(occupancy(n, fn, config([2, 1, 1], null))).toBe(912);
    expect(occupancy(n, fn, config([16, 1, 1], [16, 1, 1]))).toBe(912);
    expect(occupancy(n, fn, config([4, 1, 1], [4, 1, 1]))).toBe(0);
    expect(n[0]).toBe(33); // 132 SMs / 4
  });

  it('sizes a grid of clusters: cuOccupancyMaxActiveClusters on 132 SMs (compute capability 9.0)', () => {
    const fn = driver.getFunction(driver.loadModule(new Uint8Array(8)), 'ts_cluster_test');
    expect(driver.maxActiveClusters(fn, [132, 1, 1], [256, 1, 1], [2, 1, 1], 0)).toBe(66);
    expect(driver.maxActiveClusters(fn, [4, 2, 1], [384, 1, 1], [1, 2, 1], 0)).toBe(66);
    expect(driver.maxActiveClusters(fn, [8, 1, 1], [256, 1, 1], [8, 1, 1], 100_000)).toBe(16);
    expect(driver.maxActiveClusters(fn, [1, 1, 1], [256, 1, 1], [1, 1, 1], 0)).toBe(132);
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

describe.skipIf(!noClusterMockPath)('a driver without cuLaunchKernelEx (stand-in libcuda)', () => {
  it('loads and launches as before; a cluster launch or its occupancy says the driver is too old', () => {
    const saved = process.env.TESSERA_LIBCUDA;
    process.env.TESSERA_LIBCUDA = noClusterMockPath!;
    const loaded = loadDriver();
    if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
    else process.env.TESSERA_LIBCUDA = saved;
    expect('reason' in loaded ? loaded.reason : '').toBe('');
    const driver = (loaded as { driver: CudaDriver }).driver;
    expect(driver.hasClusterLaunch).toBe(false);
    const decl: KernelDecl = { name: 'ts_cluster_test', params: [['n', 'i32']] };
    const fn = driver.getFunction(driver.loadModule(new Uint8Array(8)), decl.name);
    const stream = driver.createStream();
    driver.launch(fn, [2, 1, 1], [128, 1, 1], 0, stream, (view) => packArgs(view, decl, { n: 1 }));
    expect(() => driver.launchEx(fn, [2, 1, 1], [128, 1, 1], 0, stream, (view) => packArgs(view, decl, { n: 1 }), { cluster: [2, 1, 1] })).toThrow(
      'The CUDA driver (13.0) lacks cuLaunchKernelEx: thread-block clusters need CUDA 12 or newer.',
    );
    expect(() => driver.maxActiveClusters(fn, [2, 1, 1], [128, 1, 1], [2, 1, 1], 0)).toThrow(
      'The CUDA driver (13.0) lacks cuOccupancyMaxActiveClusters: thread-block clusters need CUDA 12 or newer.',
    );
    expect(driver.hasLaunchEx).toBe(false);
    expect(() => driver.launchEx(fn, [2, 1, 1], [128, 1, 1], 0, stream, (view) => packArgs(view, decl, { n: 1 }), { overlap: true })).toThrow(
      'The CUDA driver (13.0) lacks cuLaunchKernelEx: programmatic dependent launch needs CUDA 12 or newer.',
    );
  });
});

describe.skipIf(!mockPath)('cluster launches through the CUDA backend (stand-in libcuda)', () => {
  it('a Launch with a cluster of more than one block goes through cuLaunchKernelEx; maxActiveClusters asks the driver', async () => {
    const { existsSync } = await import('node:fs');
    if (!existsSync(path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin'))) return; // CudaBackend.create needs it
    const saved = process.env.TESSERA_LIBCUDA;
    process.env.TESSERA_LIBCUDA = mockPath!;
    const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
    let backend: ReturnType<typeof CudaBackend.create> | null = null;
    try {
      backend = CudaBackend.create();
      const mock = koffi.load(mockPath!);
      const lastLaunch = mock.func('int mock_last_launch(_Out_ uint8_t *name, _Out_ uint32_t *geom, _Out_ uint8_t *args)');
      const lastClusterOf = mock.func('void mock_last_cluster(_Out_ uint32_t *cluster)');
      const last = () => {
        const name = new Uint8Array(128), geom = new Uint32Array(7), cluster = new Uint32Array(3);
        lastLaunch(name, geom, new Uint8Array(4096));
        lastClusterOf(cluster);
        return { grid: [...geom.subarray(0, 3)], cluster: [...cluster] };
      };
      const decl: KernelDecl = { name: 'ts_backend_cluster_test', params: [['n', 'i32']] };
      backend.launchKernel(decl, { grid: [6, 1, 1], block: [128, 1, 1], cluster: [2, 1, 1] }, { n: 1 });
      expect(last()).toEqual({ grid: [6, 1, 1], cluster: [2, 1, 1] });
      // A cluster of one block, or none, is an ordinary cuLaunchKernel (which the TypeScript
      // validation of clusters never sees: grid 5 is no multiple of anything but 1 and 5).
      backend.launchKernel(decl, { grid: [5, 1, 1], block: [128, 1, 1], cluster: [1, 1, 1] }, { n: 1 });
      expect(last()).toEqual({ grid: [5, 1, 1], cluster: [1, 1, 1] });
      backend.launchKernel(decl, { grid: [6, 1, 1], block: [128, 1, 1], cluster: [2, 1, 1] }, { n: 1 });
      backend.launchKernel(decl, { grid: [5, 1, 1], block: [128, 1, 1] }, { n: 1 });
      expect(last()).toEqual({ grid: [5, 1, 1], cluster: [1, 1, 1] });
      expect(() => backend!.launchKernel(decl, { grid: [5, 1, 1], block: [128, 1, 1], cluster: [2, 1, 1] }, { n: 1 })).toThrow('launchEx: grid[0] (5) must be a multiple of cluster[0] (2)');
      expect(backend.maxActiveClusters(decl, { grid: [132, 1, 1], block: [256, 1, 1], cluster: [2, 1, 1], sharedBytes: 200_000 })).toBe(66);
      expect(backend.maxActiveClusters(decl, { grid: [132, 1, 1], block: [256, 1, 1] })).toBe(132);
    } finally {
      await backend?.dispose();
      if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
      else process.env.TESSERA_LIBCUDA = saved;
    }
  });
});

describe.skipIf(!mockPath)('launch overlap (programmatic dependent launch) through the CUDA backend (stand-in libcuda)', () => {
  const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
  /** Opens a backend with `env` set, launches one kernel, and says what it found and whether the launch overlapped. */
  const open = async (env: Record<string, string>, mock = mockPath!) => {
    const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
    const saved = Object.fromEntries(['TESSERA_LIBCUDA', ...Object.keys(env)].map((k) => [k, process.env[k]]));
    Object.assign(process.env, { TESSERA_LIBCUDA: mock }, env);
    const backend = CudaBackend.create();
    try {
      const lib = koffi.load(mock);
      const lastOverlap = lib.func('int mock_last_overlap(void)');
      const decl: KernelDecl = { name: 'ts_overlap_backend_test', params: [['n', 'i32']] };
      const launched = () => {
        backend.launchKernel(decl, { grid: [4, 1, 1], block: [128, 1, 1] }, { n: 1 });
        return (lastOverlap() as number) === 1;
      };
      const first = { note: backend.launchOverlapNote, overlapped: launched(), profiler: backend.profiler.launchOverlap!() };
      backend.setLaunchOverlap(false);
      const off = launched(), noteOff = backend.launchOverlapNote;
      backend.setLaunchOverlap(true);
      return { ...first, afterOff: off, noteOff, afterOn: launched() };
    } finally {
      await backend.dispose();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  };

  it('is on for sm_90 (checked at open with a captured pair of launches), and can be turned off and on again', async () => {
    if (!existsSync(fatbin)) return; // CudaBackend.create needs it
    const r = await open({});
    expect(r).toEqual({
      note: 'launch overlap (programmatic dependent launch) on',
      overlapped: true,
      profiler: { on: true, available: true, note: 'launch overlap (programmatic dependent launch) on' },
      afterOff: false,
      noteOff: 'launch overlap (programmatic dependent launch) off: turned off for this measurement',
      afterOn: true,
    });
  });

  it('is off, saying why, under TESSERA_PDL=0, on an sm_80 or sm_89 GPU, where the driver refuses it, and where it lacks cuLaunchKernelEx', async () => {
    if (!existsSync(fatbin)) return;
    const off = (note: string) => ({ note, overlapped: false, profiler: { on: false, available: false, note }, afterOff: false, noteOff: note, afterOn: false });
    expect(await open({ TESSERA_PDL: '0' })).toEqual(off('launch overlap (programmatic dependent launch) off: TESSERA_PDL=0'));
    for (const cc of ['80', '89'])
      expect(await open({ MOCK_CC: cc })).toEqual(off(`launch overlap (programmatic dependent launch) off: the kernels wait for their predecessor only in the sm_90a build, and this GPU is sm_${cc}`));
    expect(await open({ MOCK_NO_PDL: '1' })).toEqual(
      off('launch overlap (programmatic dependent launch) off: the driver refused it (CUDA cuLaunchKernelEx failed with CUDA_ERROR_NOT_SUPPORTED (801))'),
    );
    expect(await open({}, noClusterMockPath!)).toEqual(off('launch overlap (programmatic dependent launch) off: the driver lacks cuLaunchKernelEx'));
    const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
    process.env.TESSERA_PDL = 'yes';
    try {
      expect(() => CudaBackend.create()).toThrow('TESSERA_PDL must be 0 or 1, not "yes".');
    } finally {
      delete process.env.TESSERA_PDL;
    }
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

describe.skipIf(!mockPath)('TESSERA_ARENA=split (stand-in libcuda, kernels do nothing)', () => {
  it('gives each planned activation buffer an allocation of its own, and refuses a layout it does not know', async () => {
    const { existsSync } = await import('node:fs');
    if (!existsSync(path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin'))) return;
    const saved = { lib: process.env.TESSERA_LIBCUDA, arena: process.env.TESSERA_ARENA };
    process.env.TESSERA_LIBCUDA = mockPath!;
    const { Tessera } = await import('../../src/llm.js');
    const allocs = koffi.load(mockPath!).func('int mock_allocs(void)');
    const load = async (arena: string) => {
      process.env.TESSERA_ARENA = arena;
      const before = allocs() as number;
      const llm = await Tessera.load(undefined, { device: 'cuda', maxNumSeqs: 2 });
      const made = (allocs() as number) - before;
      const r = await llm.complete('In the beginning', { temperature: 0, maxTokens: 3, ignoreEos: true });
      const bytes = llm.info.memory.activationBytes;
      await llm.close();
      return { made, bytes, tokens: r.tokenIds.length };
    };
    try {
      const one = await load('one'), split = await load('split');
      // The arena (one allocation) becomes a buffer per planned offset (8 in the demo model's
      // plan today), which together take at least the arena's bytes (no reuse between them).
      expect(split.made - one.made).toBeGreaterThanOrEqual(4);
      expect(split.bytes).toBeGreaterThanOrEqual(one.bytes);
      expect([one.tokens, split.tokens]).toEqual([3, 3]);
      process.env.TESSERA_ARENA = 'tiles';
      await expect(Tessera.load(undefined, { device: 'cuda', maxNumSeqs: 2 })).rejects.toThrow('TESSERA_ARENA must be one or split, not "tiles".');
    } finally {
      for (const [k, v] of [['TESSERA_LIBCUDA', saved.lib], ['TESSERA_ARENA', saved.arena]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
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
    // The demo model's 3,215,616 parameters less its 8 layer norms' weights (4 layers x 2 x 256):
    // folded into the GEMMs after them, they are not read in a step of their own.
    expect(report.weightBytes).toBe(2 * (3215616 - 8 * 256));
    expect(report.weightReadPercentOfCopy).toBeCloseTo((100 * report.weightReadGBs) / report.copyBandwidthGBs, 0);
    // One launch per program call in a decode step (split-K and split-KV merged in their own
    // launches, nothing else beside them), and the sampling kernel's.
    expect(report.launchesPerDecodeStep).toBe(report.kernelsPerStep + 1);
    // Launch overlap is on (sm_90): the decode runs were made again without it, in the same process.
    expect(report.launchOverlap).toBe('launch overlap (programmatic dependent launch) on');
    expect(report.decodeTokensPerSecondWithoutOverlap).toBeGreaterThan(0);
    expect(report.decodeStepDeviceMsWithoutOverlap).toBe(1.5);
    expect(report.overlapSpeedup).toBeCloseTo(report.decodeTokensPerSecond / report.decodeTokensPerSecondWithoutOverlap, 2);
    const off = JSON.parse(
      execFileSync(process.execPath, [bin, 'bench', '--device', 'cuda', '--prompt-tokens', '8', '--decode-tokens', '4', '--runs', '1', '--json'], {
        env: { ...process.env, TESSERA_LIBCUDA: mockPath!, TESSERA_PDL: '0' },
        encoding: 'utf8',
      }),
    );
    expect(off.launchOverlap).toBe('launch overlap (programmatic dependent launch) off: TESSERA_PDL=0');
    expect([off.decodeTokensPerSecondWithoutOverlap, off.decodeStepDeviceMsWithoutOverlap, off.overlapSpeedup]).toEqual([null, null, null]);
  });
});

describe('the load-time memory check', () => {
  it('counts the most bytes the transforms\' inputs hold at once, each freed after its last reader', () => {
    const t = (name: string, shape: number[]) => ({ name, shape, source: { tensor: name } });
    const op = (name: string, shape: number[], inputs: string[]) => ({ name, shape, source: { op: 'concat_rows' as const, attrs: {}, inputs } });
    // A layer's gate and up (4 KiB each in bf16) merged, paired, scaled; then another layer's.
    const weights = [
      t('g0', [2, 1024]),
      t('u0', [2, 1024]),
      op('gu0', [4, 1024], ['g0', 'u0']),
      op('p0', [4, 1024], ['gu0']),
      t('n0', [1024]),
      op('s0', [4, 1024], ['p0', 'n0']),
      t('g1', [2, 1024]),
      t('u1', [2, 1024]),
      op('gu1', [4, 1024], ['g1', 'u1']),
    ] as unknown as Parameters<typeof loadTransientBytes>[0];
    // At gu0: g0, u0 (4 KiB each) and gu0 (8 KiB) = 16 KiB; after it g0 and u0 go. At s0: p0 (8
    // KiB) and n0 (2 KiB), then both go. gu1 is used: g1, u1 = 8 KiB.
    expect(loadTransientBytes(weights, new Set(['s0', 'gu1']), 2)).toBe(16 * 1024);
    expect(loadTransientBytes(weights, new Set(['s0', 'gu1']), 4)).toBe(32 * 1024);
    expect(loadTransientBytes(weights.slice(0, 2), new Set(['g0', 'u0']), 2)).toBe(0);
  });

  it.skipIf(!mockPath)('a GPU without room for the model: one sentence with what it needs and what is free, exit 1', async () => {
    const { existsSync } = await import('node:fs');
    const { spawnSync } = await import('node:child_process');
    if (!existsSync(path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin'))) return;
    const bin = path.join(import.meta.dirname, '../../bin/tessera.js');
    const r = spawnSync(process.execPath, [bin, 'generate', '--device', 'cuda', '--max-tokens', '2', 'Hello'], {
      env: { ...process.env, TESSERA_LIBCUDA: mockPath!, MOCK_FREE_BYTES: String(1 << 20) },
      encoding: 'utf8',
    });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(/^tessera: The model needs \d+\.\d\d GiB on the GPU \(\d+\.\d\d GiB of weights, \d+\.\d\d GiB of activations\) but 0\.00 GiB of 80\.00 GiB are free; lower --max-num-batched-tokens or use a larger GPU\.$/);
  });
});
