/**
 * The stand-in libcuda (libcuda_mock.c) for tests on machines without a GPU: built here with the
 * C compiler, loaded by the driver bridge through TESSERA_LIBCUDA (and a stand-in libcublasLt,
 * libcublaslt_mock.c, through TESSERA_CUBLASLT). Its launches record their
 * arguments and can call a JavaScript hook, where a test runs a model of the kernel on the
 * stand-in's "device" memory (host memory, reached through the same driver).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import koffi from 'koffi';
import { PARAM_LAYOUT, type KernelDecl } from '../../../src/backend/cuda/kernel_decl.js';

/**
 * Builds a stand-in library from its C source here; null (the caller skips, saying so) where there
 * is no C compiler. A compiler that rejects the source is an error, not a skip: the tiers that
 * need the stand-in must not pass by skipping.
 */
function buildStandIn(name: 'libcuda_mock' | 'libcublaslt_mock', defines: string[] = []): string | null {
  if (process.platform !== 'linux') return null;
  const out = path.join(mkdtempSync(path.join(tmpdir(), `tessera-${name}-`)), `${name}.so`);
  try {
    execFileSync(process.env.CC ?? 'cc', ['-shared', '-fPIC', '-O1', ...defines.map((d) => `-D${d}`), '-o', out, path.join(import.meta.dirname, `${name}.c`)], { stdio: 'pipe' });
    return out;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') return null;
    throw new Error(`the stand-in ${name}.c does not compile:\n${e.stderr?.toString() ?? e.message}`);
  }
}

/**
 * The stand-in libcuda (TESSERA_LIBCUDA); withoutTensorMaps leaves out cuTensorMapEncodeTiled, as
 * a driver older than CUDA 12 does, and withoutClusterLaunch cuLaunchKernelEx and
 * cuOccupancyMaxActiveClusters, as one older than CUDA 11.8 does.
 */
export const buildMock = (opts: { withoutTensorMaps?: boolean; withoutClusterLaunch?: boolean } = {}): string | null =>
  buildStandIn('libcuda_mock', [...(opts.withoutTensorMaps ? ['MOCK_NO_TENSOR_MAP'] : []), ...(opts.withoutClusterLaunch ? ['MOCK_NO_CLUSTER_LAUNCH'] : [])]);

/** The stand-in libcublasLt (TESSERA_CUBLASLT): computes the product on the host. */
export const buildLtMock = (): string | null => buildStandIn('libcublaslt_mock');

/** The inverse of packArgs: a launch's argument bytes read back by the declaration (a tensor map as its bytes). */
export function unpackArgs(bytes: Uint8Array, decl: KernelDecl): Record<string, number | bigint | Uint8Array> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Record<string, number | bigint | Uint8Array> = {};
  let offset = 0;
  for (const [name, type] of decl.params) {
    const { size, align } = PARAM_LAYOUT[type];
    offset = Math.ceil(offset / align) * align;
    if (type === 'ptr' || type === 'u64') out[name] = view.getBigUint64(offset, true);
    else if (type === 'i32') out[name] = view.getInt32(offset, true);
    else if (type === 'u32') out[name] = view.getUint32(offset, true);
    else if (type === 'tmap') out[name] = bytes.slice(offset, offset + size);
    else out[name] = view.getFloat32(offset, true);
    offset += size;
  }
  return out;
}

export interface LaunchRecord {
  name: string;
  grid: [number, number, number];
  block: [number, number, number];
  sharedBytes: number;
  /** Blocks per thread-block cluster: [1, 1, 1] for a launch without clusters. */
  cluster: [number, number, number];
  /** Launched with programmatic stream serialization (cuLaunchKernelEx): may overlap the kernel before it. */
  overlap: boolean;
  args: Uint8Array;
}

/**
 * Calls `hook` after every eager launch (not during graph capture) with what was launched.
 * Returns the function that removes it. An exception in the hook is kept and rethrown by that
 * function (it cannot cross the C frame).
 */
export function setLaunchHook(mockPath: string, hook: (launch: LaunchRecord) => void): () => void {
  const lib = koffi.load(mockPath);
  const proto = koffi.proto(`void TesseraMockLaunchHook_${Math.random().toString(36).slice(2)}(const char *name, uint32_t gridX)`);
  const setHook = lib.func('mock_set_launch_hook', 'void', [koffi.pointer(proto)]);
  const lastLaunch = lib.func('int mock_last_launch(_Out_ uint8_t *name, _Out_ uint32_t *geom, _Out_ uint8_t *args)');
  const lastCluster = lib.func('void mock_last_cluster(_Out_ uint32_t *cluster)');
  const lastOverlap = lib.func('int mock_last_overlap(void)');
  let failure: unknown = null;
  const cb = koffi.register(() => {
    if (failure) return;
    try {
      const name = new Uint8Array(128), geom = new Uint32Array(7), args = new Uint8Array(4096);
      const size = lastLaunch(name, geom, args) as number;
      const cluster = new Uint32Array(3);
      lastCluster(cluster);
      hook({
        name: new TextDecoder().decode(name.subarray(0, name.indexOf(0))),
        grid: [geom[0], geom[1], geom[2]],
        block: [geom[3], geom[4], geom[5]],
        sharedBytes: geom[6],
        cluster: [cluster[0], cluster[1], cluster[2]],
        overlap: (lastOverlap() as number) !== 0,
        args: args.slice(0, size),
      });
    } catch (err) {
      failure = err;
    }
  }, koffi.pointer(proto));
  setHook(cb);
  return () => {
    setHook(null);
    koffi.unregister(cb);
    if (failure) throw failure;
  };
}
