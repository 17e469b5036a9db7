/** A Hopper-like device description for testing CUDA launchers on a machine without a GPU. */
import type { DeviceProperties } from '../../src/backend/cuda/driver.js';

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
