/**
 * EngineCore: what the front end (tokenizer, detokenizer, HTTP) sees of the engine, whether it
 * runs in this thread (InProcessCore) or in a worker thread (WorkerCore). Requests go in as
 * token ids; outputs come back as token ids, in batches, one batch per step.
 */
import type { ModelInfo } from './build.js';
import type { EngineRequest, LLMEngine, SeqOutput } from './engine.js';
import { checkRequestFits } from '../scheduler/scheduler.js';

export interface EngineStats {
  running: number;
  waiting: number;
  kvBlocksUsed: number;
  kvBlocksTotal: number;
  /** Prompt tokens looked up in the prefix cache and found there, since start. */
  prefixQueriedTokens: number;
  prefixHitTokens: number;
  /** Prompt tokens prefilled (cached prefixes excluded), since start. */
  prefillTokens: number;
  steps: number;
}

export interface EngineCore {
  readonly info: ModelInfo;
  /** Queues a request; throws a TesseraError at once if it can never fit the context or the pool. */
  add(req: EngineRequest): void;
  /** Ends a request (or one of its samples) and frees its blocks. */
  abort(requestId: string, sampleIndex?: number): void;
  /** The latest counters (in a worker: as of the last step it reported). */
  stats(): EngineStats;
  /** Receives each step's outputs. */
  onOutputs: (outputs: SeqOutput[]) => void;
  /** Receives an error that ended the engine loop; every request in flight is lost. */
  onFatal: (err: unknown) => void;
  close(): Promise<void>;
}

/** Checks a request against the engine's limits before it is queued anywhere. */
export function checkFits(info: ModelInfo, req: EngineRequest): void {
  checkRequestFits(req.promptIds.length, req.params.maxTokens, { maxModelLen: info.maxModelLen, numBlocks: info.kvCacheBlocks, blockSize: info.kvBlockSize });
}

export function engineStats(engine: LLMEngine, steps: number): EngineStats {
  const s = engine.stats;
  return {
    running: engine.scheduler.running.length,
    waiting: engine.scheduler.waiting.length,
    kvBlocksUsed: s.kvBlocksUsed,
    kvBlocksTotal: s.kvBlocksTotal,
    prefixQueriedTokens: s.prefixQueriedTokens,
    prefixHitTokens: s.prefixHitTokens,
    prefillTokens: s.prefillTokens,
    steps,
  };
}

/**
 * Runs the engine loop on this thread: steps while there is work, yielding to the event loop
 * between steps so new requests and aborts get in.
 */
export class InProcessCore implements EngineCore {
  onOutputs: (outputs: SeqOutput[]) => void = () => {};
  onFatal: (err: unknown) => void = () => {};
  private looping = false;
  private closed = false;
  private steps = 0;

  constructor(
    readonly engine: LLMEngine,
    readonly info: ModelInfo,
  ) {}

  add(req: EngineRequest): void {
    checkFits(this.info, req);
    this.engine.addRequest(req);
    void this.loop();
  }

  abort(requestId: string, sampleIndex?: number): void {
    this.engine.abort(requestId, sampleIndex);
  }

  stats(): EngineStats {
    return engineStats(this.engine, this.steps);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.engine.runner.backend.dispose();
  }

  private async loop(): Promise<void> {
    if (this.looping) return;
    this.looping = true;
    try {
      while (this.engine.hasUnfinished && !this.closed) {
        const outputs = await this.engine.step();
        this.steps++;
        if (outputs.length) this.onOutputs(outputs);
        await new Promise((resolve) => setImmediate(resolve));
      }
    } catch (err) {
      this.onFatal(err);
    } finally {
      this.looping = false;
    }
  }
}
