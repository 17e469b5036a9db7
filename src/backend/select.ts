/**
 * Chooses the backend for --device auto|cpu|cuda. auto takes CUDA when a driver, a supported GPU
 * (compute capability 8.0 or newer) and the built kernels are present, else the CPU, and says why.
 * The CUDA backend is imported only when asked for, so the CPU path never loads the driver bridge.
 */
import { TesseraError } from '../errors.js';
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/backend.js';

export type DeviceChoice = 'auto' | 'cpu' | 'cuda';

export interface SelectedBackend {
  backend: Backend;
  /** Why this device: one line for the user. */
  reason: string;
}

export async function selectBackend(device: DeviceChoice): Promise<SelectedBackend> {
  switch (device) {
    case 'cpu':
      return { backend: new CpuBackend(), reason: 'cpu (asked for)' };
    case 'cuda': {
      const { CudaBackend } = await import('./cuda/backend.js');
      const backend = CudaBackend.create(0);
      return { backend, reason: `${backend.describe()} (asked for)` };
    }
    case 'auto': {
      let why: string;
      try {
        const { CudaBackend } = await import('./cuda/backend.js');
        const backend = CudaBackend.create(0);
        return { backend, reason: backend.describe() };
      } catch (err) {
        if (!(err instanceof TesseraError)) throw err;
        why = err.message.replace(/\.$/, '');
      }
      return { backend: new CpuBackend(), reason: `cpu (${why})` };
    }
    default:
      throw new TesseraError(`--device must be auto, cpu or cuda, not "${device as string}".`, 'invalid_input');
  }
}
