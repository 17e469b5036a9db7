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

/**
 * Statuses after which the context is unusable: every later call in the process returns the
 * same error (cuda.h: a kernel fault or a device-side assert; "the process must be terminated
 * and relaunched"). ILLEGAL_ADDRESS, LAUNCH_TIMEOUT, ASSERT, HARDWARE_STACK_ERROR,
 * ILLEGAL_INSTRUCTION, MISALIGNED_ADDRESS, INVALID_ADDRESS_SPACE, INVALID_PC, LAUNCH_FAILED,
 * TENSOR_MEMORY_LEAK.
 */
const CONTEXT_LOST = new Set([700, 702, 710, 714, 715, 716, 717, 718, 719, 721]);

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

  /** True for a kernel fault: nothing more can run in this process (CONTEXT_LOST). */
  get contextLost(): boolean {
    return CONTEXT_LOST.has(this.status);
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

/**
 * CUlaunchConfig as cuda.h (CUDA 13.0) lays it out on a 64-bit host: seven unsigned ints
 * (gridDimX..Z, blockDimX..Z, sharedMemBytes) end at 28 and the pointer after them is aligned to
 * 8, so hStream is at 32, attrs at 40, numAttrs at 48, and the struct is 56 bytes (checked with
 * offsetof against the header). Its CUlaunchAttributes follow it in the same buffer, 72 bytes each:
 * int id, padding to 8, then a 64-byte value union; a cluster dimension is {x, y, z} at 8, the
 * programmatic stream serialization flag an int at 8.
 */
const LAUNCH_CONFIG = { grid: 0, block: 12, sharedMemBytes: 24, hStream: 32, attrs: 40, numAttrs: 48, bytes: 56 } as const;
const LAUNCH_ATTRIBUTE = { id: 0, value: 8, bytes: 72 } as const;
/** Attributes a launch may carry: a cluster dimension and programmatic stream serialization. */
const MAX_LAUNCH_ATTRIBUTES = 2;
/**
 * CUlaunchAttributeID (cuda.h): CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4,
 * CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6.
 */
const CU_LAUNCH_ATTRIBUTE = { clusterDimension: 4, programmaticStreamSerialization: 6 } as const;
/** The largest cluster every Hopper part launches without CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED. */
const MAX_PORTABLE_CLUSTER_BLOCKS = 8;

// cuTensorMapEncodeTiled's enums, as cuda.h (CUDA 13.0) numbers them.
/** CUtensorMapDataType (cuda.h): CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, _FLOAT32 = 7, _BFLOAT16 = 9. */
const CU_TENSOR_MAP_DATA_TYPE = { f16: 6, f32: 7, bf16: 9 } as const;
/** CUtensorMapInterleave (cuda.h): CU_TENSOR_MAP_INTERLEAVE_NONE = 0. */
const CU_TENSOR_MAP_INTERLEAVE_NONE = 0;
/** CUtensorMapSwizzle (cuda.h): CU_TENSOR_MAP_SWIZZLE_NONE = 0, _32B = 1, _64B = 2, _128B = 3. */
const CU_TENSOR_MAP_SWIZZLE = { none: 0, '32B': 1, '64B': 2, '128B': 3 } as const;
/** CUtensorMapL2promotion (cuda.h): CU_TENSOR_MAP_L2_PROMOTION_NONE = 0, _L2_64B = 1, _L2_128B = 2, _L2_256B = 3. */
const CU_TENSOR_MAP_L2_PROMOTION = { none: 0, '64B': 1, '128B': 2, '256B': 3 } as const;
/** CUtensorMapFloatOOBfill (cuda.h): CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0 (out-of-bounds elements read as zero). */
const CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0;
/** sizeof(CUtensorMap): CU_TENSOR_MAP_NUM_QWORDS (16) 64-bit words. */
export const TENSOR_MAP_BYTES = 128;
/**
 * Where the driver writes a tensor map: cuTensorMapEncodeTiled wants 64-byte alignment, and CUDA
 * 13's cuda.h declares CUtensorMap alignas(128); 128 satisfies both.
 */
const TENSOR_MAP_ALIGN = 128;
const ELEMENT_BYTES = { bf16: 2, f16: 2, f32: 4 } as const;

export type TensorMapSwizzle = keyof typeof CU_TENSOR_MAP_SWIZZLE;
export type TensorMapL2Promotion = keyof typeof CU_TENSOR_MAP_L2_PROMOTION;

/** What encodeTensorMap2d describes: a row-major [rows, cols] matrix and the box one TMA load brings. */
export interface TensorMap2d {
  dtype: keyof typeof CU_TENSOR_MAP_DATA_TYPE;
  address: DevPtr;
  rows: number;
  cols: number;
  rowStrideBytes: number;
  boxRows: number;
  boxCols: number;
  swizzle: TensorMapSwizzle;
  /** Default '128B'. */
  l2Promotion?: TensorMapL2Promotion;
}

/**
 * What encodeTensorMap describes: a tensor of rank 1..5 given innermost dimension first, its byte
 * strides (dims 1..rank-1; the innermost is one element) and the box one TMA load brings.
 */
export interface TensorMapNd {
  dtype: keyof typeof CU_TENSOR_MAP_DATA_TYPE;
  address: DevPtr;
  dims: number[];
  strideBytes: number[];
  box: number[];
  swizzle: TensorMapSwizzle;
  /** Default '128B'. */
  l2Promotion?: TensorMapL2Promotion;
}

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

/**
 * Symbols newer than the oldest driver Tessera runs on: bound if present, so an older driver (or
 * a stand-in without them) still loads and only the feature that needs them fails, saying why.
 * globalAddress is a device address (void * in cuda.h), passed as the 64-bit integer it is.
 */
const OPTIONAL_SIGNATURES = {
  // CUDA 12.0.
  cuTensorMapEncodeTiled:
    'int cuTensorMapEncodeTiled(void *tensorMap, int dataType, uint32_t rank, uint64_t globalAddress, const uint64_t *globalDim, const uint64_t *globalStrides, const uint32_t *boxDim, const uint32_t *elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill)',
  // CUDA 11.8 (thread-block clusters run on sm_90, which needs CUDA 12). The CUlaunchConfig is
  // built by hand in a buffer of the driver's (LAUNCH_CONFIG), so it is passed as a plain pointer.
  cuLaunchKernelEx: 'int cuLaunchKernelEx(const void *config, CUfunction fn, void **params, void **extra)',
  cuOccupancyMaxActiveClusters: 'int cuOccupancyMaxActiveClusters(_Out_ int *numClusters, CUfunction fn, const void *config)',
} as const;

type Fn = (...args: unknown[]) => number;
type Bound = Record<keyof typeof SIGNATURES, Fn>;
type OptionalBound = Partial<Record<keyof typeof OPTIONAL_SIGNATURES, Fn>>;

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
  private readonly optional: OptionalBound = {};
  /** The op being run, named in errors. */
  currentOp: string | null = null;
  private readonly argBuffer: unknown;
  private readonly argView: DataView;
  private readonly sizeCell: unknown;
  private readonly sizeView: DataView;
  private readonly extra: BigUint64Array;
  /** Host memory the driver writes tensor maps into (held so it stays allocated), and its aligned start. */
  private readonly tensorMapMemory: unknown;
  private readonly tensorMapPtr: unknown;
  /** Host memory holding one CUlaunchConfig and its CUlaunchAttributes (held so it stays allocated), its aligned start, and a view of them. */
  private readonly launchConfigMemory: unknown;
  private readonly launchConfigPtr: unknown;
  private readonly launchConfigView: DataView;

  constructor(lib: koffi.IKoffiLib) {
    // koffi's type names are global: declare the handle types once per process.
    if (!handleTypesDeclared) {
      for (const t of ['CUctx', 'CUmodule', 'CUfunction', 'CUstream', 'CUevent', 'CUgraph', 'CUgraphExec']) koffi.pointer(t, koffi.opaque());
      handleTypesDeclared = true;
    }
    const fn = {} as Bound;
    for (const [name, sig] of Object.entries(SIGNATURES)) fn[name as keyof Bound] = lib.func(sig) as unknown as Fn;
    this.fn = fn;
    for (const [name, sig] of Object.entries(OPTIONAL_SIGNATURES)) {
      try {
        this.optional[name as keyof OptionalBound] = lib.func(sig) as unknown as Fn;
      } catch {
        // Not exported by this driver: the feature reports it when used.
      }
    }
    this.check('cuInit', fn.cuInit(0));
    // Kernel arguments are packed into one stable buffer and passed through `extra`
    // (CU_LAUNCH_PARAM_BUFFER_POINTER), so a launch allocates nothing.
    this.argBuffer = koffi.alloc('uint8_t', ARG_BUFFER_BYTES);
    this.argView = new DataView(koffi.view(this.argBuffer, ARG_BUFFER_BYTES));
    this.sizeCell = koffi.alloc('uint64_t', 1);
    this.sizeView = new DataView(koffi.view(this.sizeCell, 8));
    this.extra = new BigUint64Array([CU_LAUNCH_PARAM_BUFFER_POINTER, koffi.address(this.argBuffer), CU_LAUNCH_PARAM_BUFFER_SIZE, koffi.address(this.sizeCell), CU_LAUNCH_PARAM_END]);
    // koffi.alloc promises no alignment: the start is rounded up, and the rounded address made a
    // pointer again by reading it back from a 64-bit cell.
    this.tensorMapMemory = koffi.alloc('uint8_t', TENSOR_MAP_BYTES + TENSOR_MAP_ALIGN);
    const align = BigInt(TENSOR_MAP_ALIGN);
    const aligned = ((koffi.address(this.tensorMapMemory) + align - 1n) / align) * align;
    this.tensorMapPtr = koffi.decode(new BigUint64Array([aligned]), 'void *');
    // cuLaunchKernelEx's launches fill in the same CUlaunchConfig each time (8-byte aligned, as
    // its pointers are); its attrs point at the attributes right after it.
    const configBytes = LAUNCH_CONFIG.bytes + MAX_LAUNCH_ATTRIBUTES * LAUNCH_ATTRIBUTE.bytes;
    this.launchConfigMemory = koffi.alloc('uint8_t', configBytes + 8);
    const configAddress = ((koffi.address(this.launchConfigMemory) + 7n) / 8n) * 8n;
    this.launchConfigPtr = koffi.decode(new BigUint64Array([configAddress]), 'void *');
    this.launchConfigView = new DataView(koffi.view(this.launchConfigPtr, configBytes));
    new Uint8Array(this.launchConfigView.buffer, this.launchConfigView.byteOffset, configBytes).fill(0);
    this.launchConfigView.setBigUint64(LAUNCH_CONFIG.attrs, configAddress + BigInt(LAUNCH_CONFIG.bytes), true);
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
   * each value at an offset aligned to its alignment, a tensor map's to 128); `pack` returns the
   * size, the end of the last parameter.
   */
  launch(fn: Handle, grid: [number, number, number], block: [number, number, number], sharedBytes: number, stream: Handle, pack: (view: DataView) => number): void {
    this.packArguments(pack);
    this.check('cuLaunchKernel', this.fn.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], sharedBytes, stream, null, this.extra));
  }

  /**
   * Launches `fn` as `launch` does, through cuLaunchKernelEx with the attributes `options` asks
   * for: `cluster`, thread-block clusters of that many blocks (sm_90 and newer); `overlap`,
   * programmatic stream serialization (sm_90 and newer): the kernel may start while the one
   * before it in the stream is still running, once every block of that one has called
   * `griddepcontrol.launch_dependents` or exited, and waits for it with `griddepcontrol.wait`
   * (kernels/common.cuh). Launched so, a kernel that reads or writes global memory before its
   * wait races with the kernel before it.
   */
  launchEx(
    fn: Handle,
    grid: [number, number, number],
    block: [number, number, number],
    sharedBytes: number,
    stream: Handle,
    pack: (view: DataView) => number,
    options: { cluster?: [number, number, number]; overlap?: boolean },
  ): void {
    const cluster = options.cluster ?? null, overlap = options.overlap === true;
    const launchEx = this.optional.cuLaunchKernelEx;
    if (!launchEx) throw this.tooOld('cuLaunchKernelEx', cluster ? 'thread-block clusters need' : 'programmatic dependent launch needs');
    this.writeLaunchConfig('launchEx', grid, block, cluster, sharedBytes, stream, overlap);
    this.packArguments(pack);
    this.check('cuLaunchKernelEx', launchEx(this.launchConfigPtr, fn, null, this.extra));
  }

  /**
   * How many clusters of `cluster` blocks of `fn` can be resident at once with this block size and
   * dynamic shared memory (cuOccupancyMaxActiveClusters): what a persistent kernel sizes its grid by.
   */
  maxActiveClusters(fn: Handle, grid: [number, number, number], block: [number, number, number], cluster: [number, number, number], sharedBytes: number): number {
    const occupancy = this.optional.cuOccupancyMaxActiveClusters;
    if (!occupancy) throw this.tooOld('cuOccupancyMaxActiveClusters', 'thread-block clusters need');
    // The stream plays no part in the answer.
    this.writeLaunchConfig('maxActiveClusters', grid, block, cluster, sharedBytes, null, false);
    const out = [0];
    this.check('cuOccupancyMaxActiveClusters', occupancy(out, fn, this.launchConfigPtr));
    return out[0];
  }

  /** Packs a launch's arguments into the buffer `extra` passes (CU_LAUNCH_PARAM_BUFFER_POINTER) and records their size. */
  private packArguments(pack: (view: DataView) => number): void {
    const size = pack(this.argView);
    if (size > ARG_BUFFER_BYTES) throw new Error(`kernel arguments of ${size} bytes exceed ${ARG_BUFFER_BYTES}`);
    this.sizeView.setBigUint64(0, BigInt(size), true);
  }

  /** Whether the driver can launch thread-block clusters and size them (cuLaunchKernelEx and cuOccupancyMaxActiveClusters, CUDA 11.8). */
  get hasClusterLaunch(): boolean {
    return this.optional.cuLaunchKernelEx !== undefined && this.optional.cuOccupancyMaxActiveClusters !== undefined;
  }

  /** Whether the driver has cuLaunchKernelEx (CUDA 11.8), which launch attributes need. */
  get hasLaunchEx(): boolean {
    return this.optional.cuLaunchKernelEx !== undefined;
  }

  /** `needs`: what the call is for, with its verb ("thread-block clusters need"). */
  private tooOld(call: string, needs: string): TesseraError {
    const v = this.driverVersion();
    return new TesseraError(`The CUDA driver (${Math.floor(v / 1000)}.${(v % 1000) / 10}) lacks ${call}: ${needs} CUDA 12 or newer.`, 'device');
  }

  /**
   * Fills the CUlaunchConfig buffer and its attributes (a cluster dimension when `cluster` is
   * given, then programmatic stream serialization when `overlap`), after checking the cluster
   * against the grid here so that a mistake names its field (the driver says only
   * CUDA_ERROR_INVALID_CLUSTER_SIZE).
   */
  private writeLaunchConfig(
    method: string,
    grid: [number, number, number],
    block: [number, number, number],
    cluster: [number, number, number] | null,
    sharedBytes: number,
    stream: Handle,
    overlap: boolean,
  ): void {
    if (cluster !== null) {
      if (!Array.isArray(cluster) || cluster.length !== 3) throw new Error(`${method}: cluster must be [x, y, z], not ${JSON.stringify(cluster)}`);
      for (let i = 0; i < 3; i++) {
        if (!Number.isInteger(cluster[i]) || cluster[i] < 1) throw new Error(`${method}: cluster[${i}] must be a positive integer, not ${cluster[i]}`);
        if (grid[i] % cluster[i] !== 0) throw new Error(`${method}: grid[${i}] (${grid[i]}) must be a multiple of cluster[${i}] (${cluster[i]})`);
      }
      const blocks = cluster[0] * cluster[1] * cluster[2];
      if (blocks > MAX_PORTABLE_CLUSTER_BLOCKS) throw new Error(`${method}: cluster [${cluster.join(', ')}] has ${blocks} blocks; at most ${MAX_PORTABLE_CLUSTER_BLOCKS} are allowed`);
    }
    const v = this.launchConfigView;
    for (let i = 0; i < 3; i++) {
      v.setUint32(LAUNCH_CONFIG.grid + 4 * i, grid[i], true);
      v.setUint32(LAUNCH_CONFIG.block + 4 * i, block[i], true);
    }
    v.setUint32(LAUNCH_CONFIG.sharedMemBytes, sharedBytes, true);
    v.setBigUint64(LAUNCH_CONFIG.hStream, stream === null || stream === undefined ? 0n : koffi.address(stream), true);
    let n = 0;
    const attribute = (id: number): number => {
      const at = LAUNCH_CONFIG.bytes + n++ * LAUNCH_ATTRIBUTE.bytes;
      new Uint8Array(v.buffer, v.byteOffset + at, LAUNCH_ATTRIBUTE.bytes).fill(0);
      v.setInt32(at + LAUNCH_ATTRIBUTE.id, id, true);
      return at + LAUNCH_ATTRIBUTE.value;
    };
    if (cluster !== null) {
      const at = attribute(CU_LAUNCH_ATTRIBUTE.clusterDimension);
      for (let i = 0; i < 3; i++) v.setUint32(at + 4 * i, cluster[i], true);
    }
    if (overlap) v.setInt32(attribute(CU_LAUNCH_ATTRIBUTE.programmaticStreamSerialization), 1, true);
    v.setUint32(LAUNCH_CONFIG.numAttrs, n, true);
  }

  /** Whether the driver can encode TMA tensor maps (cuTensorMapEncodeTiled, CUDA 12.0). */
  get hasTensorMaps(): boolean {
    return this.optional.cuTensorMapEncodeTiled !== undefined;
  }

  /** A 2-D tiled tensor map (CUtensorMap, 128 bytes) for TMA loads of a row-major [rows, cols] matrix. */
  encodeTensorMap2d(m: TensorMap2d): Uint8Array {
    const bad = (field: string, rule: string, value: unknown) => new Error(`encodeTensorMap2d: ${field} ${rule}, not ${String(value)}`);
    const isInt = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
    const elementBytes = this.checkTensorMapKinds(m, bad);
    // The driver's documented limits, checked here so that a mistake names its field.
    if (typeof m.address !== 'bigint' || m.address % 16n !== 0n) throw bad('address', 'must be 16-byte aligned', m.address);
    if (!isInt(m.rows, 1, 2 ** 32)) throw bad('rows', 'must be an integer in 1..2^32', m.rows);
    if (!isInt(m.cols, 1, 2 ** 32)) throw bad('cols', 'must be an integer in 1..2^32', m.cols);
    if (!isInt(m.rowStrideBytes, 16, 2 ** 40 - 1) || m.rowStrideBytes % 16 !== 0) throw bad('rowStrideBytes', 'must be a multiple of 16 below 2^40', m.rowStrideBytes);
    if (m.rowStrideBytes < m.cols * elementBytes) throw bad('rowStrideBytes', `must hold a row of ${m.cols} ${m.dtype} (${m.cols * elementBytes} bytes)`, m.rowStrideBytes);
    if (!isInt(m.boxRows, 1, 256)) throw bad('boxRows', 'must be an integer in 1..256', m.boxRows);
    if (!isInt(m.boxCols, 1, 256)) throw bad('boxCols', 'must be an integer in 1..256', m.boxCols);
    this.checkBoxRow(m, m.boxCols, elementBytes, (rule, v) => bad('boxCols', rule, v));
    return this.encodeTiled(m, [m.cols, m.rows], [m.rowStrideBytes], [m.boxCols, m.boxRows]);
  }

  /**
   * A tiled tensor map of rank 1..5 (dims innermost first): for views a 2-D map cannot express,
   * such as the KV pool seen as {headDim, kvHeads, tokens} with a box of one head.
   */
  encodeTensorMap(m: TensorMapNd): Uint8Array {
    const bad = (field: string, rule: string, value: unknown) => new Error(`encodeTensorMap: ${field} ${rule}, not ${String(value)}`);
    const isInt = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
    const elementBytes = this.checkTensorMapKinds(m, bad);
    if (typeof m.address !== 'bigint' || m.address % 16n !== 0n) throw bad('address', 'must be 16-byte aligned', m.address);
    const rank = m.dims.length;
    if (!isInt(rank, 1, 5)) throw bad('dims', 'must have 1 to 5 entries', `${rank}`);
    if (m.strideBytes.length !== rank - 1) throw bad('strideBytes', `must have rank - 1 = ${rank - 1} entries`, `${m.strideBytes.length}`);
    if (m.box.length !== rank) throw bad('box', `must have rank = ${rank} entries`, `${m.box.length}`);
    m.dims.forEach((d, i) => {
      if (!isInt(d, 1, 2 ** 32)) throw bad(`dims[${i}]`, 'must be an integer in 1..2^32', d);
    });
    m.strideBytes.forEach((st, i) => {
      if (!isInt(st, 16, 2 ** 40 - 1) || st % 16 !== 0) throw bad(`strideBytes[${i}]`, 'must be a multiple of 16 below 2^40', st);
      const inner = i === 0 ? m.dims[0] * elementBytes : m.strideBytes[i - 1] * m.dims[i];
      if (st < inner) throw bad(`strideBytes[${i}]`, `must step over dimension ${i} (${inner} bytes)`, st);
    });
    m.box.forEach((b, i) => {
      if (!isInt(b, 1, 256)) throw bad(`box[${i}]`, 'must be an integer in 1..256', b);
    });
    this.checkBoxRow(m, m.box[0], elementBytes, (rule, v) => bad('box[0]', rule, v));
    return this.encodeTiled(m, m.dims, m.strideBytes, m.box);
  }

  private checkTensorMapKinds(m: { dtype: string; swizzle: string; l2Promotion?: string }, bad: (field: string, rule: string, value: unknown) => Error): number {
    const l2Promotion = m.l2Promotion ?? '128B';
    if (!Object.hasOwn(ELEMENT_BYTES, m.dtype)) throw bad('dtype', 'must be bf16, f16 or f32', m.dtype);
    if (!Object.hasOwn(CU_TENSOR_MAP_SWIZZLE, m.swizzle)) throw bad('swizzle', "must be 'none', '32B', '64B' or '128B'", m.swizzle);
    if (!Object.hasOwn(CU_TENSOR_MAP_L2_PROMOTION, l2Promotion)) throw bad('l2Promotion', "must be 'none', '64B', '128B' or '256B'", l2Promotion);
    return ELEMENT_BYTES[m.dtype as keyof typeof ELEMENT_BYTES];
  }

  /** The box's innermost row: whole 16-byte units, and within the swizzle span. */
  private checkBoxRow(m: { swizzle: TensorMapSwizzle }, boxInner: number, elementBytes: number, bad: (rule: string, value: unknown) => Error): void {
    const boxRowBytes = boxInner * elementBytes;
    if (boxRowBytes % 16 !== 0) throw bad(`times the element size (${elementBytes}) must be a multiple of 16 bytes`, boxInner);
    const span = { none: Infinity, '32B': 32, '64B': 64, '128B': 128 }[m.swizzle];
    if (boxRowBytes > span) throw bad(`times the element size (${elementBytes}) must be at most the ${m.swizzle} swizzle span`, boxInner);
  }

  private encodeTiled(m: { dtype: keyof typeof CU_TENSOR_MAP_DATA_TYPE; address: DevPtr; swizzle: TensorMapSwizzle; l2Promotion?: TensorMapL2Promotion }, dims: number[], strideBytes: number[], box: number[]): Uint8Array {
    const encode = this.optional.cuTensorMapEncodeTiled;
    if (!encode) {
      const v = this.driverVersion();
      throw new TesseraError(`The CUDA driver (${Math.floor(v / 1000)}.${(v % 1000) / 10}) is too old for TMA tensor maps: it has no cuTensorMapEncodeTiled (CUDA 12.0 or newer).`, 'device');
    }
    const out = new Uint8Array(koffi.view(this.tensorMapPtr, TENSOR_MAP_BYTES));
    out.fill(0);
    const status = encode(
      this.tensorMapPtr,
      CU_TENSOR_MAP_DATA_TYPE[m.dtype],
      dims.length,
      m.address,
      new BigUint64Array(dims.map(BigInt)), // innermost dimension first
      new BigUint64Array(strideBytes.length > 0 ? strideBytes.map(BigInt) : [0n]), // rank - 1 strides (the innermost is one element)
      new Uint32Array(box),
      new Uint32Array(dims.length).fill(1),
      CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE[m.swizzle],
      CU_TENSOR_MAP_L2_PROMOTION[m.l2Promotion ?? '128B'],
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
    );
    this.check('cuTensorMapEncodeTiled', status);
    return out.slice();
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
