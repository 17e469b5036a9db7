/**
 * The engine core: one step = scheduler.schedule() -> runner.execute() -> sample -> update.
 * It speaks token ids only (text lives in the front end), so it can run in its own thread.
 */
import { randomInt } from 'node:crypto';
import type { ModelRunner } from '../runner/model_runner.js';
import type { SamplingParams } from '../sampling/params.js';
import { sampleToken, type SampleContext, type SampleResult, type TokenLogprob } from '../sampling/sampler.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { Sequence, type FinishReason } from '../scheduler/sequence.js';

export interface EngineRequest {
  requestId: string;
  promptIds: readonly number[];
  params: SamplingParams;
  /** Independent samples of the same prompt: one prefill, then forks sharing its KV blocks. */
  n?: number;
  /** Lower runs first (default 0). */
  priority?: number;
}

/** What one step produced for one sequence. */
export interface SeqOutput {
  requestId: string;
  sampleIndex: number;
  /** The token sampled this step (absent when the sequence ended without sampling, e.g. aborted). */
  tokenId?: number;
  logprob?: number;
  topLogprobs?: TokenLogprob[];
  finishReason: FinishReason | null;
  /** The last token is a stop token (EOS or a stop id), not text. */
  stoppedOnToken: boolean;
  numPromptTokens: number;
  numOutputTokens: number;
  /** Prompt tokens whose KV came from the prefix cache. */
  numCachedTokens: number;
}

export interface EngineConfig {
  /**
   * Sample on the device when the backend can (default true): only token ids and asked-for
   * logprobs cross to the host instead of every logit row. Steps that fork an n > 1 request
   * sample on the host (its samples draw from one logits row).
   */
  deviceSampling?: boolean;
}

export class LLMEngine {
  private readonly requests = new Map<string, { seqs: Sequence[]; seed: number; n: number; skipped: Set<number> }>();
  private nextSeqId = 0;
  /** Whether steps sample on the device. */
  readonly deviceSampling: boolean;

  constructor(
    readonly runner: ModelRunner,
    readonly scheduler: Scheduler,
    /** The checkpoint's EOS ids. */
    readonly eosTokenIds: readonly number[],
    config: EngineConfig = {},
  ) {
    this.deviceSampling = (config.deviceSampling ?? true) && runner.samplesOnDevice;
  }

  get hasUnfinished(): boolean {
    return this.scheduler.hasUnfinished;
  }

  /** Queues a request; throws a TesseraError if it can never run (too long for the context or pool). */
  addRequest(req: EngineRequest): void {
    if (this.requests.has(req.requestId)) throw new Error(`request ${req.requestId} already exists`);
    const seed = req.params.seed ?? randomInt(0, 2 ** 48 - 1);
    const n = req.n ?? 1;
    if (!Number.isSafeInteger(n) || n < 1) throw new Error(`n must be >= 1, got ${n}`);
    const seq = new Sequence(this.nextSeqId++, req.requestId, req.promptIds, req.params, 0, performance.now(), req.priority ?? 0);
    this.scheduler.add(seq);
    this.requests.set(req.requestId, { seqs: [seq], seed, n, skipped: new Set() });
  }

  /**
   * Ends a request (or one sample of it) at once and frees its KV blocks; returns false if it was
   * not running. A sample not forked yet is simply never created.
   */
  abort(requestId: string, sampleIndex?: number): boolean {
    const req = this.requests.get(requestId);
    if (!req) return false;
    // Before the fork, sample 0 carries the whole request: ending it ends every sample.
    const unforked = req.seqs.length + req.skipped.size < req.n;
    if (sampleIndex === undefined || req.n === 1 || (sampleIndex === 0 && unforked)) {
      for (const seq of req.seqs) this.scheduler.finish(seq, 'abort');
      this.requests.delete(requestId);
      return true;
    }
    const seq = req.seqs.find((s) => s.sampleIndex === sampleIndex);
    if (seq) this.finishSeq(seq, 'abort');
    else req.skipped.add(sampleIndex);
    return true;
  }

  async step(): Promise<SeqOutput[]> {
    const plan = this.scheduler.schedule();
    if (plan.scheduled.length === 0) return [];
    if (this.deviceSampling && !plan.scheduled.some(({ seq, sample }) => sample && this.forksNow(seq))) {
      const rows = plan.scheduled.filter((s) => s.sample).map(({ seq }) => this.contextOf(seq, this.requests.get(seq.requestId)!.seed));
      const results = await this.runner.executeSampled(plan.scheduled, plan.blockCopies, rows);
      const outputs: SeqOutput[] = [];
      let row = 0;
      for (const { seq, numNewTokens, sample } of plan.scheduled) {
        // A sequence aborted while the step ran keeps its row but produces nothing.
        const result = sample ? results[row++] : null;
        if (seq.isFinished) continue;
        this.scheduler.commit(seq, numNewTokens);
        if (result) outputs.push(this.accept(seq, result));
      }
      return outputs;
    }
    const logits = await this.runner.execute(plan.scheduled, plan.blockCopies);
    const vocab = this.runner.vocabSize;
    const outputs: SeqOutput[] = [];
    let row = 0;
    for (const { seq, numNewTokens, sample } of plan.scheduled) {
      const rowLogits = sample ? logits.subarray(row * vocab, ++row * vocab) : null;
      if (seq.isFinished) continue;
      this.scheduler.commit(seq, numNewTokens);
      if (!rowLogits) continue;
      const req = this.requests.get(seq.requestId)!;
      // The first sample of an n > 1 request forks the siblings: one prefill, shared blocks, and
      // each sibling draws its own first token from the same logits.
      const targets = [seq];
      if (this.forksNow(seq)) {
        for (let k = req.seqs.length; k < req.n; k++) {
          if (req.skipped.has(k)) continue;
          const child = this.scheduler.fork(seq, this.nextSeqId++, k);
          req.seqs.push(child);
          targets.push(child);
        }
      }
      for (const target of targets) {
        const result = sampleToken(targets.length > 1 ? rowLogits.slice() : rowLogits, this.contextOf(target, req.seed));
        outputs.push(this.accept(target, result));
      }
    }
    return outputs;
  }

  /** Per-engine counters for metrics. */
  get stats(): { kvBlocksUsed: number; kvBlocksTotal: number; prefixQueriedTokens: number; prefixHitTokens: number; prefillTokens: number } {
    const b = this.scheduler.blocks;
    return { kvBlocksUsed: b.numUsedBlocks, kvBlocksTotal: b.numBlocks, prefixQueriedTokens: b.queriedTokens, prefixHitTokens: b.hitTokens, prefillTokens: this.scheduler.numPrefillTokens };
  }

  /** Whether sampling `seq` now forks the other samples of its n > 1 request. */
  private forksNow(seq: Sequence): boolean {
    const req = this.requests.get(seq.requestId);
    return !!req && req.seqs.length + req.skipped.size < req.n && seq.sampleIndex === 0 && seq.numOutputTokens === 0;
  }

  private contextOf(seq: Sequence, seed: number): SampleContext {
    return { params: seq.params, tokenIds: seq.tokenIds, outputCounts: seq.outputCounts, seed, stream: seq.sampleIndex, counter: seq.numOutputTokens };
  }

  /** Appends a sampled token and decides whether the sequence ends. */
  private accept(seq: Sequence, result: SampleResult): SeqOutput {
    seq.appendToken(result.tokenId);
    const stoppedOnToken = this.isStopToken(seq, result.tokenId);
    let finish: FinishReason | null = null;
    if (stoppedOnToken) finish = 'stop';
    else if (seq.numOutputTokens >= seq.params.maxTokens || seq.numTokens >= this.scheduler.config.maxModelLen) finish = 'length';
    if (finish) this.finishSeq(seq, finish);
    return {
      requestId: seq.requestId,
      sampleIndex: seq.sampleIndex,
      tokenId: result.tokenId,
      logprob: result.logprob,
      topLogprobs: result.topLogprobs,
      finishReason: finish,
      stoppedOnToken,
      numPromptTokens: seq.numPromptTokens,
      numOutputTokens: seq.numOutputTokens,
      numCachedTokens: seq.numCachedTokens,
    };
  }

  private isStopToken(seq: Sequence, id: number): boolean {
    if (seq.params.stopTokenIds.includes(id)) return true;
    return !seq.params.ignoreEos && this.eosTokenIds.includes(id);
  }

  private finishSeq(seq: Sequence, reason: FinishReason): void {
    this.scheduler.finish(seq, reason);
    const req = this.requests.get(seq.requestId);
    if (req && req.seqs.length + req.skipped.size === req.n && req.seqs.every((s) => s.isFinished)) this.requests.delete(seq.requestId);
  }
}
