/**
 * TMA tensor maps on the host, against the stand-in libcuda (tests/cuda/mock/libcuda_mock.c),
 * which records cuTensorMapEncodeTiled's arguments and writes them into the map: what
 * encodeTensorMap2d asks the driver for, what it refuses before asking, how a map travels as a
 * by-value kernel argument, and the CUDA backend's cache of maps. Skipped, saying so, where no C
 * compiler is found.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { describe, expect, it } from 'vitest';
import { CudaError, loadDriver, type CudaDriver, type TensorMap2d } from '../../src/backend/cuda/driver.js';
import { packArgs, type KernelDecl } from '../../src/backend/cuda/kernel_decl.js';
import { buildMock, unpackArgs } from './mock/mock.js';

const mockPath = buildMock();
const oldMockPath = mockPath && buildMock({ withoutTensorMaps: true });
if (!mockPath) console.log('cuda tensor maps: skipped: no C compiler to build the stand-in libcuda');

/** Runs `f` with TESSERA_LIBCUDA set to `lib`, restoring it afterwards. */
function withLibcuda<T>(lib: string, f: () => T): T {
  const saved = process.env.TESSERA_LIBCUDA;
  process.env.TESSERA_LIBCUDA = lib;
  try {
    return f();
  } finally {
    if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
    else process.env.TESSERA_LIBCUDA = saved;
  }
}

const words = (map: Uint8Array) => [...new BigUint64Array(map.buffer, map.byteOffset, 16)];
/** The stand-in's map (libcuda_mock.c's layout): address, the first two dims, the row stride, dtype. */
const head = (map: Uint8Array) => {
  const w = words(map);
  return [w[0], w[1], w[2], w[6]];
};
const dtypeOf = (map: Uint8Array) => (words(map)[11] >> 20n) & 0xffn;

describe.skipIf(!mockPath)('TMA tensor maps (stand-in libcuda)', () => {
  const loaded = withLibcuda(mockPath!, loadDriver);
  const driver = (loaded as { driver: CudaDriver }).driver;
  const mock = koffi.load(mockPath!);
  const lastTensorMap = mock.func('int mock_last_tensor_map(_Out_ int *ints, _Out_ uint64_t *words, _Out_ uint32_t *box)');
  const lastLaunch = mock.func('int mock_last_launch(_Out_ uint8_t *name, _Out_ uint32_t *geom, _Out_ uint8_t *args)');
  /** What the stand-in was last asked for, and how many calls it has answered. */
  const recorded = () => {
    const ints = new Int32Array(6), q = new BigUint64Array(10), box = new Uint32Array(10);
    const calls = lastTensorMap(ints, q, box) as number;
    const [dtype, rank, interleave, swizzle, l2Promotion, oobFill] = ints;
    return { calls, dtype, rank, interleave, swizzle, l2Promotion, oobFill, address: q[0], globalDim: [...q.subarray(1, 6)], globalStrides: [...q.subarray(6, 10)], boxDim: [...box.subarray(0, 5)], elementStrides: [...box.subarray(5, 10)] };
  };
  const matrix = driver.malloc(300 * 8192);
  const base: TensorMap2d = { dtype: 'bf16', address: matrix, rows: 300, cols: 4096, rowStrideBytes: 8192, boxRows: 64, boxCols: 64, swizzle: '128B' };

  it('binds cuTensorMapEncodeTiled', () => {
    expect('reason' in loaded ? loaded.reason : '').toBe('');
    expect(driver.hasTensorMaps).toBe(true);
  });

  it('asks the driver for dims innermost first, the row stride, the box, unit element strides and the enums of cuda.h', () => {
    const map = driver.encodeTensorMap2d(base);
    const r = recorded();
    // CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9, INTERLEAVE_NONE = 0, SWIZZLE_128B = 3, L2_PROMOTION_L2_128B = 2 (the default), FLOAT_OOB_FILL_NONE = 0.
    expect(r).toMatchObject({ dtype: 9, rank: 2, interleave: 0, swizzle: 3, l2Promotion: 2, oobFill: 0, address: matrix });
    expect(r.globalDim).toEqual([4096n, 300n, 0n, 0n, 0n]);
    expect(r.globalStrides).toEqual([8192n, 0n, 0n, 0n]);
    expect(r.boxDim).toEqual([64, 64, 0, 0, 0]);
    expect(r.elementStrides).toEqual([1, 1, 0, 0, 0]);
    // The map is the driver's 128 bytes, in an array of its own.
    expect(map).toBeInstanceOf(Uint8Array);
    expect(map.byteLength).toBe(128);
    expect(map.buffer.byteLength).toBe(128);
    // The stand-in's layout (libcuda_mock.c): dims, strides, boxes at 12 bits each, then element
    // strides at 4 bits each with dtype 9, interleave 0, swizzle 3, l2 2, OOB fill 0 and rank 2.
    const packed = 1n | (1n << 4n) | (9n << 20n) | (3n << 32n) | (2n << 36n) | (2n << 44n);
    expect(words(map)).toEqual([matrix, 4096n, 300n, 0n, 0n, 0n, 8192n, 0n, 0n, 0n, 64n | (64n << 12n), packed, 0n, 0n, 0x4b434f4d50414d54n, BigInt(r.calls)]);
    const again = driver.encodeTensorMap2d(base);
    expect(again).not.toBe(map);
    expect(words(map)[15]).toBe(BigInt(r.calls)); // not overwritten by the next call
  });

  it('maps each dtype, swizzle and L2 promotion to its cuda.h value', () => {
    const cases: Array<[Partial<TensorMap2d>, { dtype: number; swizzle: number; l2Promotion: number }]> = [
      [{ dtype: 'f32', cols: 2048, boxCols: 16, swizzle: '64B', l2Promotion: '256B' }, { dtype: 7, swizzle: 2, l2Promotion: 3 }],
      [{ dtype: 'f16', boxCols: 16, swizzle: '32B', l2Promotion: '64B' }, { dtype: 6, swizzle: 1, l2Promotion: 1 }],
      [{ dtype: 'bf16', boxCols: 256, swizzle: 'none', l2Promotion: 'none' }, { dtype: 9, swizzle: 0, l2Promotion: 0 }],
    ];
    for (const [patch, want] of cases) {
      driver.encodeTensorMap2d({ ...base, ...patch });
      expect(recorded()).toMatchObject(want);
    }
  });

  it('refuses what the driver would, naming the field, before calling it', () => {
    const cases: Array<[Partial<TensorMap2d>, RegExp]> = [
      [{ address: matrix + 8n }, /^encodeTensorMap2d: address must be 16-byte aligned/],
      [{ rows: 0 }, /rows must be an integer in 1\.\.2\^32, not 0/],
      [{ cols: 1.5 }, /cols must be an integer/],
      [{ rowStrideBytes: 8200 }, /rowStrideBytes must be a multiple of 16 below 2\^40, not 8200/],
      [{ rowStrideBytes: 2 ** 40 }, /rowStrideBytes must be a multiple of 16 below 2\^40/],
      [{ rowStrideBytes: 4096 }, /rowStrideBytes must hold a row of 4096 bf16 \(8192 bytes\)/],
      [{ boxRows: 257 }, /boxRows must be an integer in 1\.\.256, not 257/],
      [{ boxCols: 0 }, /boxCols must be an integer in 1\.\.256/],
      [{ boxCols: 12 }, /boxCols times the element size \(2\) must be a multiple of 16 bytes, not 12/],
      [{ boxCols: 128, swizzle: '128B' }, /boxCols times the element size \(2\) must be at most the 128B swizzle span, not 128/],
      [{ boxCols: 32, swizzle: '32B' }, /32B swizzle span/],
      [{ dtype: 'f32', cols: 2048, boxCols: 32, swizzle: '64B' }, /times the element size \(4\) must be at most the 64B swizzle span/],
      [{ swizzle: '16B' as TensorMap2d['swizzle'] }, /swizzle must be/],
      [{ l2Promotion: '512B' as TensorMap2d['l2Promotion'] }, /l2Promotion must be/],
      [{ dtype: 'i32' as TensorMap2d['dtype'] }, /dtype must be bf16, f16 or f32, not i32/],
    ];
    const before = recorded().calls;
    for (const [patch, message] of cases) expect(() => driver.encodeTensorMap2d({ ...base, ...patch }), String(message)).toThrow(message);
    expect(recorded().calls).toBe(before);
    // The limits themselves pass: a 256-row box, a 128-byte row under the 128B swizzle.
    expect(() => driver.encodeTensorMap2d({ ...base, boxRows: 256, boxCols: 64, swizzle: '128B' })).not.toThrow();
  });

  it('encodes a rank-3 view (the KV pool as {hd, kv heads, tokens}) with its strides and box, innermost first', () => {
    // [2, 64 blocks, 16 tokens, 8 kv heads, 128] bf16 seen as {128, 8, 2 * 64 * 16}.
    const pool = driver.malloc(2 * 64 * 16 * 8 * 128 * 2);
    try {
      const spec = { dtype: 'bf16' as const, address: pool, dims: [128, 8, 2048], strideBytes: [256, 2048], box: [64, 1, 16], swizzle: '128B' as const };
      const map = driver.encodeTensorMap(spec);
      const r = recorded();
      expect(r).toMatchObject({ dtype: 9, rank: 3, interleave: 0, swizzle: 3, l2Promotion: 2, oobFill: 0, address: pool });
      expect(r.globalDim).toEqual([128n, 8n, 2048n, 0n, 0n]);
      expect(r.globalStrides).toEqual([256n, 2048n, 0n, 0n]);
      expect(r.boxDim).toEqual([64, 1, 16, 0, 0]);
      expect(r.elementStrides).toEqual([1, 1, 1, 0, 0]);
      expect(map.byteLength).toBe(128);
      const before = r.calls;
      const cases: Array<[Partial<typeof spec>, RegExp]> = [
        [{ dims: [128, 8, 2048, 1, 1, 1] }, /^encodeTensorMap: dims must have 1 to 5 entries, not 6/],
        [{ strideBytes: [256] }, /strideBytes must have rank - 1 = 2 entries, not 1/],
        [{ box: [64, 1] }, /box must have rank = 3 entries, not 2/],
        [{ dims: [128, 0, 2048] }, /dims\[1\] must be an integer in 1\.\.2\^32, not 0/],
        [{ strideBytes: [200, 2048] }, /strideBytes\[0\] must be a multiple of 16 below 2\^40, not 200/],
        [{ strideBytes: [128, 2048] }, /strideBytes\[0\] must step over dimension 0 \(256 bytes\), not 128/],
        [{ strideBytes: [256, 1024] }, /strideBytes\[1\] must step over dimension 1 \(2048 bytes\), not 1024/],
        [{ box: [64, 1, 300] }, /box\[2\] must be an integer in 1\.\.256, not 300/],
        [{ box: [128, 1, 16] }, /box\[0\] times the element size \(2\) must be at most the 128B swizzle span, not 128/],
        [{ address: pool + 8n }, /address must be 16-byte aligned/],
      ];
      for (const [patch, message] of cases) expect(() => driver.encodeTensorMap({ ...spec, ...patch }), String(message)).toThrow(message);
      expect(recorded().calls).toBe(before);
    } finally {
      driver.free(pool);
    }
  });

  it('a refusal by the driver throws a CudaError naming cuTensorMapEncodeTiled and the op', () => {
    driver.currentOp = 'model.layers.0.mlp.down';
    let err: unknown;
    try {
      driver.encodeTensorMap2d({ ...base, address: 0n }); // the stand-in, like the driver, refuses a null address
    } catch (e) {
      err = e;
    } finally {
      driver.currentOp = null;
    }
    expect(err).toBeInstanceOf(CudaError);
    expect((err as CudaError).call).toBe('cuTensorMapEncodeTiled');
    expect((err as Error).message).toBe('CUDA cuTensorMapEncodeTiled failed with CUDA_ERROR_INVALID_VALUE (1) while running model.layers.0.mlp.down.');
  });

  it('packs a tensor map argument at a 128-aligned offset with zeroed padding, and the launch gets exactly those bytes', () => {
    const map = driver.encodeTensorMap2d(base);
    const decl: KernelDecl = { name: 'ts_tmap_test', params: [['out', 'ptr'], ['n', 'i32'], ['map', 'tmap'], ['scale', 'f32']] };
    const args = { out: 0x1234_5678_9abcn, n: -3, map, scale: 0.5 };
    const module = driver.loadModule(new Uint8Array(8));
    const stream = driver.createStream();
    // Leave non-zero bytes where the padding will be, to show they are cleared.
    const dirty: KernelDecl = { name: 'ts_dirty', params: Array.from({ length: 40 }, (_, i) => [`a${i}`, 'u64'] as const) };
    driver.launch(driver.getFunction(module, dirty.name), [1, 1, 1], [32, 1, 1], 0, stream, (view) => packArgs(view, dirty, Object.fromEntries(dirty.params.map(([n]) => [n, 2n ** 64n - 1n]))));
    driver.launch(driver.getFunction(module, decl.name), [1, 1, 1], [128, 1, 1], 0, stream, (view) => packArgs(view, decl, args));
    const name = new Uint8Array(128), geom = new Uint32Array(7), bytes = new Uint8Array(4096);
    const size = lastLaunch(name, geom, bytes) as number;
    expect(new TextDecoder().decode(name.subarray(0, name.indexOf(0)))).toBe('ts_tmap_test');
    // ptr 0-8, i32 8-12, padding 12-128, tmap 128-256, f32 256-260: the size ends at the last parameter.
    expect(size).toBe(260);
    const expected = new Uint8Array(512);
    expect(packArgs(new DataView(expected.buffer), decl, args)).toBe(size);
    expect([...bytes.subarray(0, size)]).toEqual([...expected.subarray(0, size)]);
    expect(bytes.subarray(12, 128).every((b) => b === 0)).toBe(true);
    expect([...bytes.subarray(128, 256)]).toEqual([...map]);
    expect(new DataView(bytes.buffer).getFloat32(256, true)).toBe(0.5);
    const back = unpackArgs(bytes.subarray(0, size), decl);
    expect(back).toEqual({ out: 0x1234_5678_9abcn, n: -3, map, scale: 0.5 });
  });

  it('packArgs takes a tensor map only as 128 bytes, and bytes only for a tensor map', () => {
    const decl: KernelDecl = { name: 'ts_tmap_test', params: [['map', 'tmap'], ['n', 'i32']] };
    const view = new DataView(new ArrayBuffer(512));
    expect(() => packArgs(view, decl, { map: new Uint8Array(64), n: 1 })).toThrow('ts_tmap_test: argument map must be a tensor map of 128 bytes (Uint8Array), not 64 bytes');
    expect(() => packArgs(view, decl, { map: 5n, n: 1 })).toThrow('ts_tmap_test: argument map must be a tensor map of 128 bytes (Uint8Array), not bigint');
    expect(() => packArgs(view, decl, { map: new Uint8Array(128), n: new Uint8Array(128) })).toThrow('ts_tmap_test: argument n is a i32, not bytes');
    // A map first needs no padding: 128 + 4 bytes.
    expect(packArgs(view, decl, { map: new Uint8Array(128), n: 1 })).toBe(132);
    expect(() => packArgs(new DataView(new ArrayBuffer(128)), decl, { map: new Uint8Array(128), n: 1 })).toThrow('ts_tmap_test: arguments do not fit the 128-byte argument buffer');
  });
});

describe.skipIf(!oldMockPath)('a driver without cuTensorMapEncodeTiled (stand-in libcuda)', () => {
  it('loads and works for everything else; a tensor map says the driver is too old', () => {
    const loaded = withLibcuda(oldMockPath!, loadDriver);
    expect('reason' in loaded ? loaded.reason : '').toBe('');
    const driver = (loaded as { driver: CudaDriver }).driver;
    expect(driver.properties(0).name).toBe('Mock GPU');
    expect(driver.hasTensorMaps).toBe(false);
    const ptr = driver.malloc(256);
    expect(() => driver.encodeTensorMap2d({ dtype: 'bf16', address: ptr, rows: 8, cols: 64, rowStrideBytes: 128, boxRows: 8, boxCols: 64, swizzle: '128B' })).toThrow(
      'The CUDA driver (13.0) is too old for TMA tensor maps: it has no cuTensorMapEncodeTiled (CUDA 12.0 or newer).',
    );
    driver.free(ptr);
  });
});

describe.skipIf(!mockPath)('the CUDA backend\'s tensor map cache (stand-in libcuda)', () => {
  const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');

  it('returns the same map for the same tensor, box and swizzle, and a new one when any of them differs', async () => {
    if (!existsSync(fatbin)) return; // npm run build:kernels (nvcc) makes it; CudaBackend.create needs it
    const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
    const backend = withLibcuda(mockPath!, () => CudaBackend.create());
    const counted = koffi.load(mockPath!).func('int mock_last_tensor_map(_Out_ int *ints, _Out_ uint64_t *words, _Out_ uint32_t *box)');
    const calls = () => counted(new Int32Array(6), new BigUint64Array(10), new Uint32Array(10)) as number;
    try {
      const ptr = backend.allocBuffer(64 * 128 * 4);
      const t = { ptr, shape: [64, 128], dtype: 'bf16' as const };
      const first = backend.tensorMap2d(t, [64, 64], '128B');
      const n = calls();
      expect(backend.tensorMap2d({ ...t, shape: [64, 128] }, [64, 64], '128B')).toBe(first);
      expect(calls()).toBe(n); // a hit asks the driver nothing
      expect([...head(first), words(first)[10]]).toEqual([ptr, 128n, 64n, 256n, 64n | (64n << 12n)]); // and the box

      // Another shape at the same address (a freed tensor's memory reused) is another map.
      const shorter = backend.tensorMap2d({ ...t, shape: [32, 128] }, [64, 64], '128B');
      expect(shorter).not.toBe(first);
      expect(head(shorter)).toEqual([ptr, 128n, 32n, 256n]);
      const f32 = backend.tensorMap2d({ ...t, dtype: 'f32' }, [64, 32], '128B');
      expect(head(f32)).toEqual([ptr, 128n, 64n, 512n]);
      expect(dtypeOf(f32)).toBe(7n);
      expect(backend.tensorMap2d(t, [32, 64], '128B')).not.toBe(first);
      expect(backend.tensorMap2d(t, [64, 32], '64B')).not.toBe(first);
      expect(backend.tensorMap2d(t, [64, 64], '128B')).toBe(first);
      expect(() => backend.tensorMap2d({ ptr, shape: [64, 128], dtype: 'i32' }, [64, 64], '128B')).toThrow('tensorMap2d: a tensor map needs a 2-D bf16, f16 or f32 matrix, not [64, 128] i32');
      expect(() => backend.tensorMap2d({ ...t, shape: [2, 32, 128] }, [64, 64], '128B')).toThrow('not [2, 32, 128] bf16');

      // A reshaped view: [2, 4, 16, 2, 64] (a small KV pool) as [128 tokens, 2 kv heads, 64].
      const pool = { ptr, shape: [2, 4, 16, 2, 64], dtype: 'bf16' as const };
      const view = backend.tensorMap(pool, [128, 2, 64], [16, 1, 64], '128B');
      expect(words(view).slice(0, 3)).toEqual([ptr, 64n, 2n]);
      const r = { ints: new Int32Array(6), q: new BigUint64Array(10), box: new Uint32Array(10) };
      counted(r.ints, r.q, r.box);
      expect(r.ints[1]).toBe(3);
      expect([...r.q.subarray(1, 4)]).toEqual([64n, 2n, 128n]);
      expect([...r.q.subarray(6, 8)]).toEqual([128n, 256n]);
      expect([...r.box.subarray(0, 3)]).toEqual([64, 1, 16]);
      expect(backend.tensorMap(pool, [128, 2, 64], [16, 1, 64], '128B')).toBe(view);
      expect(backend.tensorMap(pool, [128, 2, 64], [8, 1, 64], '128B')).not.toBe(view);
      expect(() => backend.tensorMap(pool, [100, 2, 64], [16, 1, 64], '128B')).toThrow('tensorMap: view [100, 2, 64] with box [16, 1, 64] does not reshape [2, 4, 16, 2, 64] bf16');
      expect(() => backend.tensorMap({ ...pool, dtype: 'i32' }, [128, 2, 64], [16, 1, 64], '128B')).toThrow('needs a bf16, f16 or f32 tensor');
      backend.freeBuffer(ptr);
    } finally {
      await backend.dispose();
    }
  });
});
