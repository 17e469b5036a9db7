/** The front end's handle on an engine running in a worker thread (see core_worker.ts). */
import { Worker } from 'node:worker_threads';
import type { LoadProgress } from '../backend/backend.js';
import type { EngineOptions, ModelInfo } from './build.js';
import { checkFits, type EngineCore, type EngineStats } from './core.js';
import type { EngineRequest, SeqOutput } from './engine.js';
import { fromPortable, type FromWorker, type ToWorker, type WorkerInit } from './worker_protocol.js';

/**
 * The worker's entry point. Run from the compiled package it sits next to this file; run from
 * the TypeScript sources (tests), Node cannot load a .ts worker, so the compiled copy in dist/
 * is used (the test setup builds it first).
 */
function workerEntry(): URL {
  const here = new URL(import.meta.url);
  return here.pathname.endsWith('.ts') ? new URL('../../dist/engine/core_worker.js', here) : new URL('./core_worker.js', here);
}

const EMPTY_STATS: EngineStats = { running: 0, waiting: 0, kvBlocksUsed: 0, kvBlocksTotal: 0, prefixQueriedTokens: 0, prefixHitTokens: 0, prefillTokens: 0, steps: 0 };

export class WorkerCore implements EngineCore {
  onOutputs: (outputs: SeqOutput[]) => void = () => {};
  onFatal: (err: unknown) => void = () => {};
  private lastStats: EngineStats;

  private constructor(
    private readonly worker: Worker,
    readonly info: ModelInfo,
  ) {
    this.lastStats = { ...EMPTY_STATS, kvBlocksTotal: info.kvCacheBlocks };
    worker.on('message', (m: FromWorker) => {
      switch (m.t) {
        case 'outputs':
          this.lastStats = m.stats;
          if (m.outputs.length) this.onOutputs(m.outputs);
          break;
        case 'rejected':
          // The front end checks limits first, so a rejection here is a bug or a race with close.
          this.onFatal(fromPortable(m.error));
          break;
        case 'fatal':
          this.onFatal(fromPortable(m.error));
          break;
      }
    });
    worker.on('error', (err) => this.onFatal(err));
  }

  static start(init: WorkerInit, onProgress?: (p: LoadProgress) => void): Promise<WorkerCore> {
    const worker = new Worker(workerEntry(), { workerData: init });
    return new Promise((resolve, reject) => {
      const onMessage = (m: FromWorker) => {
        if (m.t === 'progress') onProgress?.(m.progress);
        else if (m.t === 'ready') {
          cleanup();
          resolve(new WorkerCore(worker, m.info));
        } else if (m.t === 'failed') {
          cleanup();
          void worker.terminate();
          reject(fromPortable(m.error));
        }
      };
      const onError = (err: Error) => {
        cleanup();
        reject(err);
      };
      const onExit = (code: number) => {
        cleanup();
        reject(new Error(`the engine worker exited with code ${code} while loading`));
      };
      const cleanup = () => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
  }

  add(req: EngineRequest): void {
    checkFits(this.info, req);
    this.post({ t: 'add', req });
  }

  abort(requestId: string, sampleIndex?: number): void {
    this.post({ t: 'abort', requestId, sampleIndex });
  }

  stats(): EngineStats {
    return this.lastStats;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      const done = () => resolve();
      this.worker.once('exit', done);
      this.worker.on('message', (m: FromWorker) => m.t === 'closed' && done());
    });
    this.post({ t: 'close' });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, 5000)))]);
    clearTimeout(timer);
    await this.worker.terminate();
  }

  private post(m: ToWorker): void {
    this.worker.postMessage(m);
  }
}

export type { EngineOptions };
