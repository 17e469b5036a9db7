/**
 * The Hopper layout probes (kernels/sm90_probe.cu): one warpgroup computing one product with the
 * shared-memory descriptors and register fragments kernels/attention_sm90.cu and
 * kernels/gemm_sm90.cu use, without TMA or a pipeline. Run on a Hopper GPU they say whether the
 * layouts alone are right, so a failing attention or GEMM case can be told apart from a layout
 * error. `runSm90Probe` uploads fresh random bf16 inputs, launches, and compares with the
 * product computed here in float64 from the same bf16 values.
 */
import { bf16ToF32, f32ToBf16 } from '../../util/dtype.js';
import type { KernelDecl } from './kernel_decl.js';
import type { DevPtr } from './driver.js';
import type { DeviceTensor, Launch } from './ops/types.js';

export type Sm90Probe = 'qk' | 'pv' | 'pv64';

/**
 * Each probe's product: out[m, n] = a[m, k] b (qk: b is [n, k] used transposed; pv, pv64: b is
 * [k, n], the attention's P V over a tile of 128 keys at head dim 128 and 64).
 */
export const SM90_PROBE_SHAPES: Record<Sm90Probe, { m: number; n: number; k: number }> = {
  qk: { m: 64, n: 128, k: 128 },
  pv: { m: 64, n: 128, k: 128 },
  pv64: { m: 64, n: 64, k: 128 },
};

export const SM90_PROBES: Record<Sm90Probe, KernelDecl> = {
  qk: { name: 'ts_sm90_probe_qk_bf16', params: [['s', 'ptr'], ['q', 'ptr'], ['k', 'ptr']] },
  pv: { name: 'ts_sm90_probe_pv_bf16', params: [['o', 'ptr'], ['p', 'ptr'], ['v', 'ptr']] },
  pv64: { name: 'ts_sm90_probe_pv64_bf16', params: [['o', 'ptr'], ['p', 'ptr'], ['v', 'ptr']] },
};

/**
 * The cluster probe (ts_sm90_probe_cluster_bf16): one cluster of two blocks, each multicasting
 * half of a [128, 64] bf16 tile (tensor map box 64 x 64, 128-byte swizzle) into both, then writing
 * what it holds to out[block] [128, 64] f32 and setting flags[block] once its peer's warps arrived
 * on its barrier.
 */
export const SM90_CLUSTER_PROBE: KernelDecl = {
  name: 'ts_sm90_probe_cluster_bf16',
  params: [
    ['tm', 'tmap'],
    ['out', 'ptr'],
    ['flags', 'ptr'],
  ],
};

export const SM90_PROBE_DECLS: KernelDecl[] = [...Object.values(SM90_PROBES), SM90_CLUSTER_PROBE];

/** What runSm90Probe needs of the CUDA backend (CudaBackend provides it). */
export interface ProbeDevice {
  allocBuffer(bytes: number): DevPtr;
  freeBuffer(ptr: DevPtr): void;
  writeBuffer(dst: DevPtr, src: ArrayBufferView): void;
  readBuffer(dst: ArrayBufferView, src: DevPtr): void;
  launchKernel(decl: KernelDecl, launch: Launch, args: Record<string, bigint | number | Uint8Array>): void;
  tensorMap2d(t: DeviceTensor, box: [rows: number, cols: number], swizzle: '128B'): Uint8Array;
}

/** out = a b^T (qk: b is [n, k]) or a b (pv: b is [k, n]), in float64 from the given values. */
export function probeReference(kind: Sm90Probe, a: Float32Array, b: Float32Array): Float64Array {
  const { m, n, k } = SM90_PROBE_SHAPES[kind];
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let t = 0; t < k; t++) acc += a[i * k + t] * (kind === 'qk' ? b[j * k + t] : b[t * n + j]);
      out[i * n + j] = acc;
    }
  return out;
}

export interface ProbeResult {
  probe: Sm90Probe;
  /** Largest |ours - reference| over the output, and the reference's largest |value|. */
  maxAbsError: number;
  maxAbsReference: number;
  /** The first element off by more than the tolerance: where a layout error shows. */
  firstBad: { row: number; col: number; got: number; want: number } | null;
}

/** Runs one probe on fresh uniform [-1, 1) inputs from `random` (a [0, 1) generator). */
export function runSm90Probe(device: ProbeDevice, kind: Sm90Probe, random: () => number): ProbeResult {
  const { m, n, k } = SM90_PROBE_SHAPES[kind];
  const aLen = m * k, bLen = kind === 'qk' ? n * k : k * n;
  const aBits = new Uint16Array(aLen), bBits = new Uint16Array(bLen);
  f32ToBf16(Float32Array.from({ length: aLen }, () => 2 * random() - 1), aBits);
  f32ToBf16(Float32Array.from({ length: bLen }, () => 2 * random() - 1), bBits);
  const a = new Float32Array(aLen), b = new Float32Array(bLen);
  bf16ToF32(aBits, a);
  bf16ToF32(bBits, b);
  const want = probeReference(kind, a, b);
  const dA = device.allocBuffer(2 * aLen), dB = device.allocBuffer(2 * bLen), dOut = device.allocBuffer(4 * m * n);
  try {
    device.writeBuffer(dA, aBits);
    device.writeBuffer(dB, bBits);
    device.writeBuffer(dOut, new Float32Array(m * n).fill(NaN));
    const decl = SM90_PROBES[kind];
    const [outName, aName, bName] = decl.params.map(([name]) => name);
    device.launchKernel(decl, { grid: [1, 1, 1], block: [128, 1, 1] }, { [outName]: dOut, [aName]: dA, [bName]: dB });
    const got = new Float32Array(m * n);
    device.readBuffer(got, dOut);
    let maxAbsError = 0, maxAbsReference = 0;
    let firstBad: ProbeResult['firstBad'] = null;
    // f32 accumulation of k bf16 products of values below 1: a few ulps of the sum at most.
    const tolerance = 1e-5 * k;
    for (let i = 0; i < m * n; i++) {
      const err = Math.abs(got[i] - want[i]);
      maxAbsReference = Math.max(maxAbsReference, Math.abs(want[i]));
      if (!(err <= maxAbsError)) maxAbsError = Number.isNaN(err) ? Infinity : Math.max(maxAbsError, err);
      if (!(err <= tolerance) && !firstBad) firstBad = { row: Math.floor(i / n), col: i % n, got: got[i], want: want[i] };
    }
    return { probe: kind, maxAbsError, maxAbsReference, firstBad };
  } finally {
    device.freeBuffer(dA);
    device.freeBuffer(dB);
    device.freeBuffer(dOut);
  }
}

export interface ClusterProbeResult {
  /** Per block: elements of its tile that differ from x (NaN counts), and the first of them. */
  blocks: Array<{ wrong: number; first: { row: number; col: number; got: number; want: number } | null }>;
  /** Per block: whether its peer's four warps arrived on its barrier. */
  flags: number[];
}

/**
 * Runs the cluster probe on a fresh random tile: both blocks must hold all of it (each half came
 * from a different block's multicast) and both flags must be set.
 */
export function runSm90ClusterProbe(device: ProbeDevice, random: () => number): ClusterProbeResult {
  const rows = 128, cols = 64;
  const bits = new Uint16Array(rows * cols);
  f32ToBf16(Float32Array.from({ length: rows * cols }, () => 2 * random() - 1), bits);
  const x = new Float32Array(rows * cols);
  bf16ToF32(bits, x);
  const dX = device.allocBuffer(2 * rows * cols), dOut = device.allocBuffer(4 * 2 * rows * cols), dFlags = device.allocBuffer(16);
  try {
    device.writeBuffer(dX, bits);
    device.writeBuffer(dOut, new Float32Array(2 * rows * cols).fill(NaN));
    device.writeBuffer(dFlags, new Int32Array(4));
    const tm = device.tensorMap2d({ ptr: dX, shape: [rows, cols], dtype: 'bf16' }, [64, 64], '128B');
    device.launchKernel(SM90_CLUSTER_PROBE, { grid: [2, 1, 1], block: [128, 1, 1], cluster: [2, 1, 1] }, { tm, out: dOut, flags: dFlags });
    const got = new Float32Array(2 * rows * cols), flags = new Int32Array(4);
    device.readBuffer(got, dOut);
    device.readBuffer(flags, dFlags);
    const blocks = [0, 1].map((b) => {
      let wrong = 0;
      let first: ClusterProbeResult['blocks'][number]['first'] = null;
      for (let i = 0; i < rows * cols; i++) {
        const g = got[b * rows * cols + i];
        if (g === x[i]) continue;
        wrong++;
        first ??= { row: Math.floor(i / cols), col: i % cols, got: g, want: x[i] };
      }
      return { wrong, first };
    });
    return { blocks, flags: [flags[0], flags[1]] };
  } finally {
    device.freeBuffer(dX);
    device.freeBuffer(dOut);
    device.freeBuffer(dFlags);
  }
}
