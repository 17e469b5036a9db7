/**
 * The cuBLASLt bridge through koffi, against a stand-in libcublasLt (tests/cuda/mock/
 * libcublaslt_mock.c, built here with the C compiler) that computes the product on the host:
 * our row-major y = x w^T comes out right through the column-major mapping for awkward shapes and
 * each output type, the recorded layouts and transposes are the documented mapping, algorithms are
 * read out of the heuristic's result structs by offset, and refusals name the call, the status and
 * the shape. "Device" memory comes from the stand-in libcuda. Skipped, saying so, where no C
 * compiler is found.
 */
import { tmpdir } from 'node:os';
import path from 'node:path';
import koffi from 'koffi';
import { afterAll, describe, expect, it } from 'vitest';
import { CublasLtError, HEURISTIC_RESULT_LAYOUT, loadCublasLt, type CublasLt, type LtDType, type LtGemmShape } from '../../src/backend/cuda/cublaslt.js';
import { loadDriver, type CudaDriver } from '../../src/backend/cuda/driver.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/util/dtype.js';
import { buildLtMock, buildMock } from './mock/mock.js';
import { mulberry32 } from '../helpers/random.js';

const ltPath = buildLtMock();
const cudaPath = ltPath ? buildMock() : null;
if (!ltPath || !cudaPath) console.log('cuBLASLt bridge: skipped: no C compiler to build the stand-in libcublasLt and libcuda');

/** mock_lt_last's fields, in order. */
const LAST_FIELDS = [
  'm', 'n', 'k', 'transa', 'transb', 'computeType', 'scaleType',
  'aType', 'aRows', 'aCols', 'aLd', 'bType', 'bRows', 'bCols', 'bLd',
  'cType', 'cRows', 'cCols', 'cLd', 'dType', 'dRows', 'dCols', 'dLd',
  'algo', 'workspaceBytes', 'prefWorkspaceBytes', 'requestedAlgos',
  'a', 'b', 'c', 'd', 'workspace', 'stream', 'matmuls',
] as const;

/** Deterministic values in ±[0.25, 1]: never zero, so a skipped term always shows. */
function random(seed: number): () => number {
  const u = mulberry32(seed);
  return () => {
    const x = u();
    return (x < 0.5 ? -1 : 1) * (0.25 + 1.5 * Math.abs(x - 0.5));
  };
}

/** n 16-bit values of `dtype` and what they hold, exactly. */
function randomHalves(n: number, dtype: 'bf16' | 'f16', rand: () => number): { bits: Uint16Array; values: Float32Array } {
  const src = Float32Array.from({ length: n }, rand);
  const bits = new Uint16Array(n);
  const values = new Float32Array(n);
  if (dtype === 'bf16') {
    f32ToBf16(src, bits);
    bf16ToF32(bits, values);
  } else {
    f32ToF16(src, bits);
    f16ToF32(bits, values);
  }
  return { bits, values };
}

const BYTES: Record<LtDType, number> = { bf16: 2, f16: 2, f32: 4 };

describe.skipIf(!ltPath || !cudaPath)('cuBLASLt bridge (stand-in libcublasLt)', () => {
  const saved = { lt: process.env.TESSERA_CUBLASLT, cuda: process.env.TESSERA_LIBCUDA };
  process.env.TESSERA_CUBLASLT = ltPath ?? '';
  process.env.TESSERA_LIBCUDA = cudaPath ?? '';
  const driver = (loadDriver() as { driver: CudaDriver }).driver;
  const loaded = loadCublasLt();
  const lt = (loaded as { lt: CublasLt }).lt;
  const mock = koffi.load(ltPath!);
  const mockLast = mock.func('int mock_lt_last(_Out_ int64_t *out, _Out_ double *scalars)');
  const setAlgos = mock.func('void mock_lt_set_algos(int count, unsigned int bad)');
  const failNext = mock.func('void mock_lt_fail(const char *call, int status)');
  const liveObjects = mock.func('int mock_lt_live()');
  const resultLayout = mock.func('void mock_lt_result_layout(_Out_ int *out)');
  const stream = driver.createStream();

  afterAll(() => {
    lt.dispose();
    for (const [key, value] of [['TESSERA_CUBLASLT', saved.lt], ['TESSERA_LIBCUDA', saved.cuda]] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  });

  function last(): Record<(typeof LAST_FIELDS)[number], number> & { alpha: number; beta: number } {
    const ints = new BigInt64Array(LAST_FIELDS.length), scalars = new Float64Array(2);
    expect(mockLast(ints, scalars)).toBe(LAST_FIELDS.length);
    const out = Object.fromEntries(LAST_FIELDS.map((name, i) => [name, Number(ints[i])]));
    return { ...(out as Record<(typeof LAST_FIELDS)[number], number>), alpha: scalars[0], beta: scalars[1] };
  }

  /** Runs the shape through plan and matmul on random inputs; returns y, the float64 reference and the pointers. */
  function run(shape: LtGemmShape, seed: number) {
    const { m: M, n: N, k: K } = shape;
    const rand = random(seed);
    const x = randomHalves(M * K, shape.in, rand), w = randomHalves(N * K, shape.in, rand);
    const ref = new Float64Array(M * N);
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let p = 0; p < K; p++) s += x.values[i * K + p] * w.values[j * K + p];
        ref[i * N + j] = s;
      }
    const ptr = { x: driver.malloc(x.bits.byteLength), w: driver.malloc(w.bits.byteLength), y: driver.malloc(M * N * BYTES[shape.out]), ws: driver.malloc(1 << 16) };
    driver.copyToDevice(ptr.x, x.bits);
    driver.copyToDevice(ptr.w, w.bits);
    // NaN everywhere first: an element left unwritten (or C read with beta = 0) shows.
    driver.memset32Async(ptr.y, 0x7fc07fc0, Math.ceil((M * N * BYTES[shape.out]) / 4), stream);
    const plan = lt.plan(shape, 1 << 16);
    lt.matmul(plan, ptr.y, ptr.x, ptr.w, ptr.ws, stream);
    driver.synchronize(stream);
    const y = new Float32Array(M * N);
    if (shape.out === 'f32') driver.copyToHost(y, ptr.y);
    else {
      const bits = new Uint16Array(M * N);
      driver.copyToHost(bits, ptr.y);
      (shape.out === 'bf16' ? bf16ToF32 : f16ToF32)(bits, y);
    }
    const recorded = last();
    lt.destroy(plan);
    for (const p of Object.values(ptr)) driver.free(p);
    return { y, ref, ptr, plan, recorded };
  }

  function relativeError(y: Float32Array, ref: Float64Array): number {
    let num = 0, den = 0;
    for (let i = 0; i < ref.length; i++) {
      num += (y[i] - ref[i]) ** 2;
      den += ref[i] ** 2;
    }
    return Math.sqrt(num / den);
  }

  it('loads the stand-in through TESSERA_CUBLASLT and reads its version', () => {
    expect('reason' in loaded ? loaded.reason : '').toBe('');
    expect(lt.libraryPath).toBe(ltPath);
    expect(lt.version).toBe(130100);
  });

  it('reads heuristic results with the layout the C compiler gives cublasLtMatmulHeuristicResult_t', () => {
    const out = new Int32Array(6);
    resultLayout(out);
    const R = HEURISTIC_RESULT_LAYOUT;
    expect([...out]).toEqual([R.bytes, R.algo, R.workspaceSize, R.state, R.wavesCount, 64]);
  });

  const SHAPES: LtGemmShape[] = [
    { m: 1, n: 33, k: 40, in: 'bf16', out: 'bf16' }, // decode: one row, odd N, K % 16 = 8
    { m: 1, n: 31, k: 13, in: 'bf16', out: 'f32' }, // odd K
    { m: 7, n: 129, k: 72, in: 'bf16', out: 'bf16' },
    { m: 5, n: 17, k: 200, in: 'bf16', out: 'f32' },
    { m: 16, n: 64, k: 1000, in: 'bf16', out: 'bf16' },
    { m: 3, n: 9, k: 24, in: 'f16', out: 'f16' },
    { m: 6, n: 11, k: 56, in: 'f16', out: 'f32' },
  ];

  for (const [i, shape] of SHAPES.entries()) {
    it(`computes y = x w^T for ${shape.m}x${shape.n}x${shape.k} ${shape.in}->${shape.out} through the column-major mapping`, () => {
      const { y, ref, ptr, plan, recorded } = run(shape, 1234 + i);
      expect(y.every(Number.isFinite)).toBe(true);
      expect(relativeError(y, ref)).toBeLessThan(shape.out === 'f32' ? 1e-5 : 1e-2);
      const inType = shape.in === 'bf16' ? 14 : 2;
      const outType = { bf16: 14, f16: 2, f32: 0 }[shape.out];
      const { m: M, n: N, k: K } = shape;
      expect(recorded).toMatchObject({
        m: N, n: M, k: K, transa: 1, transb: 0, computeType: 68, scaleType: 0,
        aType: inType, aRows: K, aCols: N, aLd: K,
        bType: inType, bRows: K, bCols: M, bLd: K,
        cType: outType, cRows: N, cCols: M, cLd: N,
        dType: outType, dRows: N, dCols: M, dLd: N,
        algo: 0, workspaceBytes: 1 << 16, prefWorkspaceBytes: 1 << 16, requestedAlgos: 1,
        a: Number(ptr.w), b: Number(ptr.x), c: Number(ptr.y), d: Number(ptr.y), workspace: Number(ptr.ws), stream: 3,
        alpha: 1, beta: 0,
      });
      expect(plan).toMatchObject({ shape, workspaceBytes: 1 << 16, algoCount: 1, algos: [{ workspaceBytes: 0, wavesCount: 1 }] });
    });
  }

  it('adds a C matrix with beta = 1 when given one (a residual in the epilogue), C read, y written', () => {
    const shape: LtGemmShape = { m: 3, n: 9, k: 24, in: 'bf16', out: 'bf16' };
    const rand = random(77);
    const x = randomHalves(3 * 24, 'bf16', rand), w = randomHalves(9 * 24, 'bf16', rand), c = randomHalves(3 * 9, 'bf16', rand);
    const ptr = { x: driver.malloc(x.bits.byteLength), w: driver.malloc(w.bits.byteLength), c: driver.malloc(c.bits.byteLength), y: driver.malloc(3 * 9 * 2), ws: driver.malloc(1 << 16) };
    driver.copyToDevice(ptr.x, x.bits);
    driver.copyToDevice(ptr.w, w.bits);
    driver.copyToDevice(ptr.c, c.bits);
    driver.memset32Async(ptr.y, 0x7fc07fc0, Math.ceil((3 * 9 * 2) / 4), stream);
    const plan = lt.plan(shape, 1 << 16);
    lt.matmul(plan, ptr.y, ptr.x, ptr.w, ptr.ws, stream, 0, ptr.c);
    driver.synchronize(stream);
    const bits = new Uint16Array(27), y = new Float32Array(27);
    driver.copyToHost(bits, ptr.y);
    bf16ToF32(bits, y);
    const ref = new Float64Array(27);
    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 9; j++) {
        let s = c.values[i * 9 + j];
        for (let p = 0; p < 24; p++) s += x.values[i * 24 + p] * w.values[j * 24 + p];
        ref[i * 9 + j] = s;
      }
    expect(relativeError(y, ref)).toBeLessThan(1e-2);
    expect(last()).toMatchObject({ c: Number(ptr.c), d: Number(ptr.y), alpha: 1, beta: 1 });
    lt.destroy(plan);
    for (const p of Object.values(ptr)) driver.free(p);
  });

  it('asks for several algorithms, skips failed results, and runs the one chosen by index', () => {
    const shape: LtGemmShape = { m: 2, n: 8, k: 16, in: 'bf16', out: 'f32' };
    setAlgos(4, 0b0010);
    try {
      // The stand-in's result i needs i * 4 KiB: with 10 KiB, results 0-2 fit and result 1 failed.
      const plan = lt.plan(shape, 10 << 10, 8);
      expect(last()).toMatchObject({ requestedAlgos: 8, prefWorkspaceBytes: 10 << 10 });
      expect(plan.algoCount).toBe(2);
      expect(plan.algos).toEqual([{ workspaceBytes: 0, wavesCount: 1 }, { workspaceBytes: 8192, wavesCount: 1.5 }]);
      const bufs = [driver.malloc(2 * 16 * 2), driver.malloc(8 * 16 * 2), driver.malloc(2 * 8 * 4), driver.malloc(10 << 10)];
      const [x, w, y, ws] = bufs;
      lt.matmul(plan, y, x, w, ws, stream, 1);
      expect(last()).toMatchObject({ algo: 2, workspaceBytes: 10 << 10 });
      expect(() => lt.matmul(plan, y, x, w, ws, stream, 2)).toThrow(/algo 2 is not one of the plan's 2 for 2x8x16 bf16->f32/);
      lt.destroy(plan);
      expect(() => lt.matmul(plan, y, x, w, ws, stream)).toThrow(/destroyed/);
      for (const p of bufs) driver.free(p);
    } finally {
      setAlgos(1, 0);
    }
  });

  it('a type pair cuBLASLt refuses raises a CublasLtError naming the call, the status and the shape', () => {
    let err: unknown;
    try {
      lt.plan({ m: 4, n: 8, k: 16, in: 'f16', out: 'bf16' }, 0);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CublasLtError);
    expect((err as Error).message).toBe('cuBLASLt cublasLtMatmulAlgoGetHeuristic failed with CUBLAS_STATUS_NOT_SUPPORTED (15) for 4x8x16 f16->bf16.');
    expect(err).toMatchObject({ call: 'cublasLtMatmulAlgoGetHeuristic', status: 15, statusName: 'CUBLAS_STATUS_NOT_SUPPORTED' });
  });

  it('a failing cublasLtMatmul names the call, the status and the shape', () => {
    const plan = lt.plan({ m: 1, n: 128256, k: 4096, in: 'bf16', out: 'bf16' }, 0);
    const p = driver.malloc(64);
    // The stand-in fails before it touches memory, so tiny buffers stand in for the real ones.
    failNext('cublasLtMatmul', 15);
    let err: unknown;
    try {
      lt.matmul(plan, p, p, p, 0n, stream);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CublasLtError);
    expect((err as Error).message).toBe('cuBLASLt cublasLtMatmul failed with CUBLAS_STATUS_NOT_SUPPORTED (15) for 1x128256x4096 bf16->bf16.');
    lt.destroy(plan);
    driver.free(p);
  });

  it('no algorithm, bad arguments and a failed setup throw errors naming the shape, and leak nothing', () => {
    const before = liveObjects() as number;
    setAlgos(0, 0);
    try {
      expect(() => lt.plan({ m: 1, n: 64, k: 32, in: 'bf16', out: 'bf16' }, 0)).toThrow('cuBLASLt has no algorithm for 1x64x32 bf16->bf16 within 0 bytes of workspace.');
    } finally {
      setAlgos(1, 0);
    }
    expect(liveObjects()).toBe(before);
    failNext('cublasLtMatrixLayoutCreate', 3);
    expect(() => lt.plan({ m: 2, n: 64, k: 32, in: 'bf16', out: 'f32' }, 0)).toThrow(
      'cuBLASLt cublasLtMatrixLayoutCreate failed with CUBLAS_STATUS_ALLOC_FAILED (3) for 2x64x32 bf16->f32.',
    );
    expect(liveObjects()).toBe(before);
    expect(() => lt.plan({ m: 0, n: 64, k: 32, in: 'bf16', out: 'bf16' }, 0)).toThrow('m, n and k must be positive integers (got 0x64x32 bf16->bf16)');
    expect(() => lt.plan({ m: 2, n: 64.5, k: 32, in: 'bf16', out: 'bf16' }, 0)).toThrow('(got 2x64.5x32 bf16->bf16)');
    expect(() => lt.plan({ m: 2, n: 64, k: 32, in: 'bf16', out: 'bf16' }, -1)).toThrow('workspaceBytes must be a non-negative integer');
  });

  it('destroy and dispose free every descriptor and layout', () => {
    const before = liveObjects() as number;
    const p1 = lt.plan({ m: 1, n: 8, k: 8, in: 'bf16', out: 'bf16' }, 0);
    const p2 = lt.plan({ m: 2, n: 8, k: 8, in: 'bf16', out: 'f32' }, 0);
    expect(liveObjects()).toBe(before + 8); // per plan: one matmul descriptor and three layouts (C and D share one)
    lt.destroy(p1);
    lt.destroy(p1);
    expect(liveObjects()).toBe(before + 4);
    const other = (loadCublasLt() as { lt: CublasLt }).lt;
    other.plan({ m: 1, n: 8, k: 8, in: 'bf16', out: 'bf16' }, 0);
    expect(liveObjects()).toBe(before + 9);
    other.dispose();
    expect(liveObjects()).toBe(before + 4);
    expect(() => other.plan({ m: 1, n: 8, k: 8, in: 'bf16', out: 'bf16' }, 0)).toThrow('after dispose()');
    lt.destroy(p2);
    expect(liveObjects()).toBe(before);
  });

  it('reports a missing library by its name', () => {
    const missing = path.join(tmpdir(), 'no-such-dir', 'libcublasLt.so.13');
    process.env.TESSERA_CUBLASLT = missing;
    try {
      const r = loadCublasLt();
      expect('reason' in r && r.reason).toContain(`TESSERA_CUBLASLT=${missing} could not be loaded`);
    } finally {
      process.env.TESSERA_CUBLASLT = ltPath!;
    }
  });
});
