/** A Hopper-like device description, and helpers, for testing CUDA launchers on a machine without a GPU. */
import type { DeviceProperties } from '../../src/backend/cuda/driver.js';
import type { ArgValue, KernelDecl } from '../../src/backend/cuda/kernel_decl.js';
import type { DeviceTensor, Launch } from '../../src/backend/cuda/ops/types.js';

/** One launch a fake context recorded. */
export interface Recorded {
  decl: KernelDecl;
  launch: Launch;
  args: Record<string, ArgValue>;
}

export function tensor(shape: number[], dtype: DeviceTensor['dtype'], ptr: bigint): DeviceTensor {
  return { ptr, shape, dtype };
}

export function fakeDevice(multiprocessors = 132): DeviceProperties {
  return {
    ordinal: 0,
    name: 'fake',
    computeCapability: [9, 0],
    multiprocessors,
    l2CacheBytes: 0,
    maxSharedMemoryPerBlockOptin: 227 * 1024,
    totalMemoryBytes: 0,
    clockKHz: 0,
    memoryClockKHz: 0,
    memoryBusWidthBits: 0,
    driverVersion: 0,
  };
}
