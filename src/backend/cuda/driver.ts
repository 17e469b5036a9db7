/**
 * The CUDA driver API through koffi: no native build step, and only libcuda (the driver) is
 * needed at run time. Symbols are bound by their versioned names, as CUDA 13's cuda.h maps them
 * (cuMemAlloc -> cuMemAlloc_v2, cuStreamDestroy -> cuStreamDestroy_v2, ...); the primary context
 * is used, so cuCtxCreate (now _v4) is never needed. Every failing call throws a CudaError that
 * names the call, cuGetErrorName's answer, and the op being run.
 */
import koffi from 'koffi';
import { TesseraError } from '../../errors.js';

/** A device pointer (CUdeviceptr), as a bigint. */
export type DevPtr = bigint;
/** Opaque driver handles (CUcontext, CUmodule, CUfunction, CUstream, CUevent, CUgraph, CUgraphExec). */
export type Handle = unknown;

export class CudaError extends TesseraError {
  constructor(
    readonly call: string,
    readonly status: number,
    readonly statusName: string,
    readonly op: string | null,
  ) {
    super(`CUDA ${call} failed with ${statusName} (${status})${op ? ` while running ${op}` : ''}.`, 'device');
    this.name = 'CudaError';
  }
}

export const CU_DEVICE_ATTRIBUTE = {
  CLOCK_RATE: 13,
  MULTIPROCESSOR_COUNT: 16,
  MEMORY_CLOCK_RATE: 36,
  GLOBAL_MEMORY_BUS_WIDTH: 37,
  L2_CACHE_SIZE: 38,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;
export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
const CU_STREAM_NON_BLOCKING = 1;
const CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
const CU_EVENT_DEFAULT = 0;
const CU_LAUNCH_PARAM_BUFFER_POINTER = 1n;
const CU_LAUNCH_PARAM_BUFFER_SIZE = 2n;
const CU_LAUNCH_PARAM_END = 0n;
/** Largest packed kernel-argument buffer (the driver's limit is 4 KiB). */
const ARG_BUFFER_BYTES = 4096;

const SIGNATURES = {
  cuInit: 'int cuInit(unsigned int flags)',
  cuDriverGetVersion: 'int cuDriverGetVersion(_Out_ int *version)',
  cuDeviceGetCount: 'int cuDeviceGetCount(_Out_ int *count)',
  cuDeviceGet: 'int cuDeviceGet(_Out_ int *device, int ordinal)',
  cuDeviceGetName: 'int cuDeviceGetName(_Out_ uint8_t *name, int len, int dev)',
  cuDeviceGetAttribute: 'int cuDeviceGetAttribute(_Out_ int *value, int attrib, int dev)',
  cuDeviceTotalMem_v2: 'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int dev)',
  cuDevicePrimaryCtxRetain: 'int cuDevicePrimaryCtxRetain(_Out_ CUctx *pctx, int dev)',
  cuDevicePrimaryCtxRelease_v2: 'int cuDevicePrimaryCtxRelease_v2(int dev)',
  cuCtxSetCurrent: 'int cuCtxSetCurrent(CUctx ctx)',
  cuCtxSynchronize: 'int cuCtxSynchronize()',
  cuMemGetInfo_v2: 'int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)',
  cuMemAlloc_v2: 'int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)',
  cuMemFree_v2: 'int cuMemFree_v2(uint64_t dptr)',
  cuMemAllocHost_v2: 'int cuMemAllocHost_v2(_Out_ void **pp, size_t bytes)',
  cuMemFreeHost: 'int cuMemFreeHost(void *p)',
  cuMemcpyHtoD_v2: 'int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t bytes)',
  cuMemcpyDtoH_v2: 'int cuMemcpyDtoH_v2(_Out_ void *dst, uint64_t src, size_t bytes)',
  cuMemcpyHtoDAsync_v2: 'int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, CUstream stream)',
  cuMemcpyDtoHAsync_v2: 'int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, CUstream stream)',
  cuMemcpyDtoDAsync_v2: 'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, CUstream stream)',
  cuMemsetD32Async: 'int cuMemsetD32Async(uint64_t dst, unsigned int value, size_t count, CUstream stream)',
  cuModuleLoadData: 'int cuModuleLoadData(_Out_ CUmodule *module, const void *image)',
  cuModuleUnload: 'int cuModuleUnload(CUmodule module)',
  cuModuleGetFunction: 'int cuModuleGetFunction(_Out_ CUfunction *fn, CUmodule module, const char *name)',
  cuFuncSetAttribute: 'int cuFuncSetAttribute(CUfunction fn, int attrib, int value)',
  cuFuncGetAttribute: 'int cuFuncGetAttribute(_Out_ int *value, int attrib, CUfunction fn)',
  cuLaunchKernel:
    'int cuLaunchKernel(CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, CUstream stream, void **params, void **extra)',
  cuStreamCreate: 'int cuStreamCreate(_Out_ CUstream *stream, unsigned int flags)',
  cuStreamSynchronize: 'int cuStreamSynchronize(CUstream stream)',
  cuStreamDestroy_v2: 'int cuStreamDestroy_v2(CUstream stream)',
  cuEventCreate: 'int cuEventCreate(_Out_ CUevent *event, unsigned int flags)',
  cuEventRecord: 'int cuEventRecord(CUevent event, CUstream stream)',
  cuEventSynchronize: 'int cuEventSynchronize(CUevent event)',
  cuEventElapsedTime: 'int cuEventElapsedTime(_Out_ float *ms, CUevent start, CUevent end)',
  cuEventDestroy_v2: 'int cuEventDestroy_v2(CUevent event)',
  cuStreamBeginCapture_v2: 'int cuStreamBeginCapture_v2(CUstream stream, int mode)',
  cuStreamEndCapture: 'int cuStreamEndCapture(CUstream stream, _Out_ CUgraph *graph)',
  cuGraphInstantiateWithFlags: 'int cuGraphInstantiateWithFlags(_Out_ CUgraphExec *exec, CUgraph graph, uint64_t flags)',
  cuGraphLaunch: 'int cuGraphLaunch(CUgraphExec exec, CUstream stream)',
  cuGraphExecDestroy: 'int cuGraphExecDestroy(CUgraphExec exec)',
  cuGraphDestroy: 'int cuGraphDestroy(CUgraph graph)',
  cuGetErrorName: 'int cuGetErrorName(int status, _Out_ const char **name)',
} as const;

type Fn = (...args: unknown[]) => number;
type Bound = Record<keyof typeof SIGNATURES, Fn>;

export interface DeviceProperties {
  ordinal: number;
  name: string;
  computeCapability: [number, number];
  multiprocessors: number;
  l2CacheBytes: number;
  maxSharedMemoryPerBlockOptin: number;
  totalMemoryBytes: number;
  clockKHz: number;
  memoryClockKHz: number;
  memoryBusWidthBits: number;
  driverVersion: number;
}

/** Library names tried in order; TESSERA_LIBCUDA names another (a driver in an odd place, or a test double). */
function libcudaNames(): string[] {
  if (process.env.TESSERA_LIBCUDA) return [process.env.TESSERA_LIBCUDA];
  return process.platform === 'win32' ? ['nvcuda.dll'] : ['libcuda.so.1', 'libcuda.so'];
}

let handleTypesDeclared = false;

/** The driver, loaded; or why it could not be (for --device auto to report). */
export function loadDriver(): { driver: CudaDriver } | { reason: string } {
  const LIBCUDA = libcudaNames();
  let lib: koffi.IKoffiLib | null = null;
  let lastError = '';
  for (const name of LIBCUDA) {
    try {
      lib = koffi.load(name);
      break;
    } catch (err) {
      lastError = (err as Error).message;
    }
  }
  if (!lib) return { reason: `no CUDA driver (${LIBCUDA[0]} could not be loaded: ${lastError.split('\n')[0]})` };
  try {
    return { driver: new CudaDriver(lib) };
  } catch (err) {
    return { reason: `the CUDA driver could not be used: ${(err as Error).message}` };
  }
}

export class CudaDriver {
  private readonly fn: Bound;
  /** The op being run, named in errors. */
  currentOp: string | null = null;
  private readonly argBuffer: unknown;
  private readonly argView: DataView;
  private readonly sizeCell: unknown;
  private readonly sizeView: DataView;
  private readonly extra: BigUint64Array;

  constructor(lib: koffi.IKoffiLib) {
    // koffi's type names are global: declare the handle types once per process.
    if (!handleTypesDeclared) {
      for (const t of ['CUctx', 'CUmodule', 'CUfunction', 'CUstream', 'CUevent', 'CUgraph', 'CUgraphExec']) koffi.pointer(t, koffi.opaque());
      handleTypesDeclared = true;
    }
    const fn = {} as Bound;
    for (const [name, sig] of Object.entries(SIGNATURES)) fn[name as keyof Bound] = lib.func(sig) as unknown as Fn;
    this.fn = fn;
    this.check('cuInit', fn.cuInit(0));
    // Kernel arguments are packed into one stable buffer and passed through `extra`
    // (CU_LAUNCH_PARAM_BUFFER_POINTER), so a launch allocates nothing.
    this.argBuffer = koffi.alloc('uint8_t', ARG_BUFFER_BYTES);
    this.argView = new DataView(koffi.view(this.argBuffer, ARG_BUFFER_BYTES));
    this.sizeCell = koffi.alloc('uint64_t', 1);
    this.sizeView = new DataView(koffi.view(this.sizeCell, 8));
    this.extra = new BigUint64Array([CU_LAUNCH_PARAM_BUFFER_POINTER, koffi.address(this.argBuffer), CU_LAUNCH_PARAM_BUFFER_SIZE, koffi.address(this.sizeCell), CU_LAUNCH_PARAM_END]);
  }

  errorName(status: number): string {
    const out: [string | null] = [null];
    return this.fn.cuGetErrorName(status, out) === 0 && out[0] ? out[0] : `CUDA error ${status}`;
  }

  check(call: string, status: number): void {
    if (status !== 0) throw new CudaError(call, status, this.errorName(status), this.currentOp);
  }

  private outInt(call: keyof Bound, ...args: unknown[]): number {
    const out = [0];
    this.check(call, this.fn[call](out, ...args));
    return out[0];
  }

  private outHandle(call: keyof Bound, ...args: unknown[]): Handle {
    const out: [Handle] = [null];
    this.check(call, this.fn[call](out, ...args));
    return out[0];
  }

  driverVersion(): number {
    return this.outInt('cuDriverGetVersion');
  }

  deviceCount(): number {
    return this.outInt('cuDeviceGetCount');
  }

  properties(ordinal: number): DeviceProperties {
    const dev = this.outInt('cuDeviceGet', ordinal);
    const nameBuf = new Uint8Array(256);
    this.check('cuDeviceGetName', this.fn.cuDeviceGetName(nameBuf, nameBuf.length, dev));
    const attr = (a: number) => this.outInt('cuDeviceGetAttribute', a, dev);
    const total = [0];
    this.check('cuDeviceTotalMem_v2', this.fn.cuDeviceTotalMem_v2(total, dev));
    return {
      ordinal,
      name: new TextDecoder().decode(nameBuf.subarray(0, nameBuf.indexOf(0))),
      computeCapability: [attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MAJOR), attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MINOR)],
      multiprocessors: attr(CU_DEVICE_ATTRIBUTE.MULTIPROCESSOR_COUNT),
      l2CacheBytes: attr(CU_DEVICE_ATTRIBUTE.L2_CACHE_SIZE),
      maxSharedMemoryPerBlockOptin: attr(CU_DEVICE_ATTRIBUTE.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
      totalMemoryBytes: Number(total[0]),
      clockKHz: attr(CU_DEVICE_ATTRIBUTE.CLOCK_RATE),
      memoryClockKHz: attr(CU_DEVICE_ATTRIBUTE.MEMORY_CLOCK_RATE),
      memoryBusWidthBits: attr(CU_DEVICE_ATTRIBUTE.GLOBAL_MEMORY_BUS_WIDTH),
      driverVersion: this.driverVersion(),
    };
  }

  /** Makes the device's primary context current on this thread. */
  usePrimaryContext(ordinal: number): Handle {
    const dev = this.outInt('cuDeviceGet', ordinal);
    const ctx = this.outHandle('cuDevicePrimaryCtxRetain', dev);
    this.check('cuCtxSetCurrent', this.fn.cuCtxSetCurrent(ctx));
    return ctx;
  }

  releasePrimaryContext(ordinal: number): void {
    this.check('cuDevicePrimaryCtxRelease_v2', this.fn.cuDevicePrimaryCtxRelease_v2(ordinal));
  }

  memInfo(): { freeBytes: number; totalBytes: number } {
    const free = [0], total = [0];
    this.check('cuMemGetInfo_v2', this.fn.cuMemGetInfo_v2(free, total));
    return { freeBytes: Number(free[0]), totalBytes: Number(total[0]) };
  }

  malloc(bytes: number): DevPtr {
    const out = [0n];
    this.check('cuMemAlloc_v2', this.fn.cuMemAlloc_v2(out, Math.max(bytes, 1)));
    return BigInt(out[0]);
  }

  free(ptr: DevPtr): void {
    this.check('cuMemFree_v2', this.fn.cuMemFree_v2(ptr));
  }

  /** Page-locked host memory of `bytes`, viewed as an ArrayBuffer (for async copies). */
  mallocHost(bytes: number): { ptr: unknown; buffer: ArrayBuffer } {
    const ptr = this.outHandle('cuMemAllocHost_v2', bytes);
    return { ptr, buffer: koffi.view(ptr, bytes) };
  }

  freeHost(ptr: unknown): void {
    this.check('cuMemFreeHost', this.fn.cuMemFreeHost(ptr));
  }

  copyToDevice(dst: DevPtr, src: ArrayBufferView): void {
    this.check('cuMemcpyHtoD_v2', this.fn.cuMemcpyHtoD_v2(dst, src, src.byteLength));
  }

  copyToHost(dst: ArrayBufferView, src: DevPtr): void {
    this.check('cuMemcpyDtoH_v2', this.fn.cuMemcpyDtoH_v2(dst, src, dst.byteLength));
  }

  copyToDeviceAsync(dst: DevPtr, src: ArrayBufferView | unknown, bytes: number, stream: Handle): void {
    this.check('cuMemcpyHtoDAsync_v2', this.fn.cuMemcpyHtoDAsync_v2(dst, src, bytes, stream));
  }

  copyToHostAsync(dst: ArrayBufferView | unknown, src: DevPtr, bytes: number, stream: Handle): void {
    this.check('cuMemcpyDtoHAsync_v2', this.fn.cuMemcpyDtoHAsync_v2(dst, src, bytes, stream));
  }

  copyDeviceAsync(dst: DevPtr, src: DevPtr, bytes: number, stream: Handle): void {
    this.check('cuMemcpyDtoDAsync_v2', this.fn.cuMemcpyDtoDAsync_v2(dst, src, bytes, stream));
  }

  /** Fills `count` 32-bit words at dst with `value` (e.g. a NaN pattern to poison outputs). */
  memset32Async(dst: DevPtr, value: number, count: number, stream: Handle): void {
    this.check('cuMemsetD32Async', this.fn.cuMemsetD32Async(dst, value >>> 0, count, stream));
  }

  loadModule(image: Uint8Array): Handle {
    return this.outHandle('cuModuleLoadData', image);
  }

  unloadModule(module: Handle): void {
    this.check('cuModuleUnload', this.fn.cuModuleUnload(module));
  }

  getFunction(module: Handle, name: string): Handle {
    return this.outHandle('cuModuleGetFunction', module, name);
  }

  setMaxDynamicSharedMemory(fn: Handle, bytes: number): void {
    this.check('cuFuncSetAttribute', this.fn.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes));
  }

  /**
   * Launches `fn` with arguments already packed by `pack` into the argument buffer (C layout:
   * each value at an offset aligned to its size).
   */
  launch(fn: Handle, grid: [number, number, number], block: [number, number, number], sharedBytes: number, stream: Handle, pack: (view: DataView) => number): void {
    const size = pack(this.argView);
    if (size > ARG_BUFFER_BYTES) throw new Error(`kernel arguments of ${size} bytes exceed ${ARG_BUFFER_BYTES}`);
    this.sizeView.setBigUint64(0, BigInt(size), true);
    this.check('cuLaunchKernel', this.fn.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], sharedBytes, stream, null, this.extra));
  }

  createStream(): Handle {
    return this.outHandle('cuStreamCreate', CU_STREAM_NON_BLOCKING);
  }

  synchronize(stream: Handle): void {
    this.check('cuStreamSynchronize', this.fn.cuStreamSynchronize(stream));
  }

  destroyStream(stream: Handle): void {
    this.check('cuStreamDestroy_v2', this.fn.cuStreamDestroy_v2(stream));
  }

  createEvent(): Handle {
    return this.outHandle('cuEventCreate', CU_EVENT_DEFAULT);
  }

  record(event: Handle, stream: Handle): void {
    this.check('cuEventRecord', this.fn.cuEventRecord(event, stream));
  }

  /** Milliseconds between two recorded events (waits for the second). */
  elapsedMs(start: Handle, end: Handle): number {
    this.check('cuEventSynchronize', this.fn.cuEventSynchronize(end));
    const out = [0];
    this.check('cuEventElapsedTime', this.fn.cuEventElapsedTime(out, start, end));
    return out[0];
  }

  destroyEvent(event: Handle): void {
    this.check('cuEventDestroy_v2', this.fn.cuEventDestroy_v2(event));
  }

  beginCapture(stream: Handle): void {
    this.check('cuStreamBeginCapture_v2', this.fn.cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  }

  /** Ends capture and instantiates the graph; returns the executable graph. */
  endCapture(stream: Handle): Handle {
    // cuStreamEndCapture takes its out-parameter last.
    const out: [Handle] = [null];
    this.check('cuStreamEndCapture', this.fn.cuStreamEndCapture(stream, out));
    const graph = out[0];
    try {
      return this.outHandle('cuGraphInstantiateWithFlags', graph, 0n);
    } finally {
      this.check('cuGraphDestroy', this.fn.cuGraphDestroy(graph));
    }
  }

  launchGraph(exec: Handle, stream: Handle): void {
    this.check('cuGraphLaunch', this.fn.cuGraphLaunch(exec, stream));
  }

  destroyGraph(exec: Handle): void {
    this.check('cuGraphExecDestroy', this.fn.cuGraphExecDestroy(exec));
  }
}
