/** Messages between the front end and the engine worker thread, and errors made portable. */
import type { LoadProgress } from '../backend/backend.js';
import { TesseraError, type TesseraErrorCode } from '../errors.js';
import type { EngineOptions, ModelInfo } from './build.js';
import type { EngineStats } from './core.js';
import type { EngineRequest, SeqOutput } from './engine.js';

export interface WorkerInit {
  dir: string;
  opts: EngineOptions;
  eosTokenIds: number[];
}

export interface PortableError {
  name: string;
  message: string;
  code?: TesseraErrorCode;
  stack?: string;
}

export type ToWorker = { t: 'add'; req: EngineRequest } | { t: 'abort'; requestId: string; sampleIndex?: number } | { t: 'close' };

export type FromWorker =
  | { t: 'progress'; progress: LoadProgress }
  | { t: 'ready'; info: ModelInfo }
  | { t: 'failed'; error: PortableError }
  | { t: 'outputs'; outputs: SeqOutput[]; stats: EngineStats }
  | { t: 'rejected'; requestId: string; error: PortableError }
  | { t: 'fatal'; error: PortableError }
  | { t: 'closed' };

export function toPortable(err: unknown): PortableError {
  if (err instanceof TesseraError) return { name: err.name, message: err.message, code: err.code };
  const e = err as Error;
  return { name: e?.name ?? 'Error', message: e?.message ?? String(err), stack: e?.stack };
}

export function fromPortable(p: PortableError): Error {
  if (p.name === 'TesseraError') return new TesseraError(p.message, p.code);
  const err = new Error(p.message);
  err.name = p.name;
  if (p.stack) err.stack = p.stack;
  return err;
}
