/** Chooses the backend for --device auto|cpu|cuda. */
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
    case 'auto':
      return { backend: new CpuBackend(), reason: 'cpu (this build has no CUDA backend yet)' };
    case 'cuda':
      throw new TesseraError('--device cuda: this build of Tessera has no CUDA backend yet; use --device cpu or auto.', 'unsupported');
    default:
      throw new TesseraError(`--device must be auto, cpu or cuda, not "${device as string}".`, 'invalid_input');
  }
}
