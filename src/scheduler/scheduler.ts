/**
 * The scheduler decides, each step, which sequences run and how many tokens each computes.
 * A token budget per step: running sequences first (one decode token each, or the next chunk
 * of a prompt), then waiting sequences' prompts in chunks, first come first served. When the
 * KV pool runs out, the newest running sequence is preempted: its blocks are freed and it is
 * recomputed later, so the engine never deadlocks for lack of KV memory.
 */
import { TesseraError } from '../errors.js';
import type { BlockManager } from './block_manager.js';
import type { FinishReason, Sequence } from './sequence.js';

export interface SchedulerConfig {
  /** Sequences running at once, at most. */
  maxNumSeqs: number;
  /** Tokens computed per step, at most (the sum over sequences). */
  maxNumBatchedTokens: number;
  /** Tokens per sequence (prompt + output), at most. */
  maxModelLen: number;
}

export interface ScheduledSeq {
  seq: Sequence;
  /** Tokens computed this step, starting at seq.numComputedTokens. */
  numNewTokens: number;
  /** The chunk reaches the end of the known tokens: sample the next one. */
  sample: boolean;
}

export interface SchedulerOutput {
  scheduled: ScheduledSeq[];
  numBatchedTokens: number;
  preempted: Sequence[];
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];

  constructor(
    readonly config: SchedulerConfig,
    readonly blocks: BlockManager,
  ) {
    if (config.maxNumBatchedTokens < config.maxNumSeqs)
      throw new TesseraError(`max-num-batched-tokens (${config.maxNumBatchedTokens}) must be at least max-num-seqs (${config.maxNumSeqs}).`, 'invalid_input');
  }

  /** Queues a sequence; a prompt that can never run is refused here, not left waiting forever. */
  add(seq: Sequence): void {
    const { maxModelLen } = this.config;
    if (seq.numPromptTokens === 0) throw new TesseraError('The prompt is empty; give at least one token.', 'invalid_input');
    if (seq.numPromptTokens >= maxModelLen)
      throw new TesseraError(`The prompt has ${seq.numPromptTokens} tokens; this model's context is ${maxModelLen} tokens, which must also leave room for output.`, 'limit');
    const worstCase = Math.min(seq.numPromptTokens + seq.params.maxTokens, maxModelLen);
    const blocksNeeded = this.blocks.blocksForTokens(worstCase);
    if (blocksNeeded > this.blocks.numBlocks)
      throw new TesseraError(
        `The request needs up to ${worstCase} tokens (${blocksNeeded} KV blocks) but the KV cache holds ${this.blocks.numBlocks} blocks of ${this.blocks.blockSize} tokens; lower max_tokens or give the cache more memory.`,
        'limit',
      );
    seq.status = 'waiting';
    this.waiting.push(seq);
  }

  get hasUnfinished(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): SchedulerOutput {
    let budget = this.config.maxNumBatchedTokens;
    const scheduled: ScheduledSeq[] = [];
    const preempted: Sequence[] = [];

    // Running sequences, oldest first: decodes, and prompts already partly computed.
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const seq = this.running[i];
      const n = Math.min(seq.numUncomputedTokens, budget);
      let fits = this.blocks.grow(seq.blockTable, seq.numComputedTokens + n);
      while (!fits) {
        const victim = this.running[this.running.length - 1];
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
        fits = this.blocks.grow(seq.blockTable, seq.numComputedTokens + n);
      }
      if (!fits) break;
      scheduled.push({ seq, numNewTokens: n, sample: seq.numComputedTokens + n === seq.numTokens });
      budget -= n;
    }

    // Waiting prompts, first come first served; none while running ones are being preempted.
    while (preempted.length === 0 && budget > 0 && this.waiting.length > 0 && this.running.length < this.config.maxNumSeqs) {
      const seq = this.waiting[0];
      const n = Math.min(seq.numUncomputedTokens, budget);
      if (!this.blocks.grow(seq.blockTable, seq.numComputedTokens + n)) break;
      this.waiting.shift();
      seq.status = 'running';
      this.running.push(seq);
      scheduled.push({ seq, numNewTokens: n, sample: seq.numComputedTokens + n === seq.numTokens });
      budget -= n;
    }
    return { scheduled, numBatchedTokens: this.config.maxNumBatchedTokens - budget, preempted };
  }

  /** Ends a sequence and frees its blocks at once. */
  finish(seq: Sequence, reason: FinishReason): void {
    if (seq.isFinished) return;
    seq.status = 'finished';
    seq.finishReason = reason;
    this.blocks.release(seq.blockTable);
    if (!remove(this.running, seq)) remove(this.waiting, seq);
  }

  private preempt(seq: Sequence): void {
    remove(this.running, seq);
    this.blocks.release(seq.blockTable);
    seq.numComputedTokens = 0;
    seq.numPreemptions++;
    seq.status = 'waiting';
    this.waiting.unshift(seq);
  }
}

function remove<T>(list: T[], item: T): boolean {
  const i = list.indexOf(item);
  if (i < 0) return false;
  list.splice(i, 1);
  return true;
}
