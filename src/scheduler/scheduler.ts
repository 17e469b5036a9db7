/**
 * The scheduler decides, each step, which sequences run and how many tokens each computes.
 * A token budget per step: running sequences first (one decode token each, or the next chunk
 * of a prompt), then waiting prompts in chunks, by priority and then arrival. A prompt's cached
 * prefix (full blocks another sequence computed) is taken from the block manager instead of
 * recomputed. When the KV pool runs out, the lowest-priority, newest running sequence is
 * preempted: its blocks are freed and it is recomputed later, so the engine never deadlocks for
 * lack of KV memory.
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
  /** KV blocks to copy (all layers) before the step runs: copy-on-write of shared blocks. */
  blockCopies: Array<[number, number]>;
}

/** Whether a request of this size can ever run; a sentence naming the limit if not. */
export function checkRequestFits(numPromptTokens: number, maxTokens: number, limits: { maxModelLen: number; numBlocks: number; blockSize: number }): void {
  const { maxModelLen, numBlocks, blockSize } = limits;
  if (numPromptTokens === 0) throw new TesseraError('The prompt is empty; give at least one token.', 'invalid_input');
  if (numPromptTokens >= maxModelLen)
    throw new TesseraError(`The prompt has ${numPromptTokens} tokens; this model's context is ${maxModelLen} tokens, which must also leave room for output.`, 'limit');
  const worstCase = Math.min(numPromptTokens + maxTokens, maxModelLen);
  const blocksNeeded = Math.ceil(worstCase / blockSize);
  if (blocksNeeded > numBlocks)
    throw new TesseraError(
      `The request needs up to ${worstCase} tokens (${blocksNeeded} KV blocks) but the KV cache holds ${numBlocks} blocks of ${blockSize} tokens; lower max_tokens or give the cache more memory.`,
      'limit',
    );
}

/** Orders sequences: lower priority value first, then earlier arrival, then lower id. */
function before(a: Sequence, b: Sequence): boolean {
  return a.priority !== b.priority ? a.priority < b.priority : a.arrivalTime !== b.arrivalTime ? a.arrivalTime < b.arrivalTime : a.seqId < b.seqId;
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  /** Prompt tokens computed by prefill since start (cached prefixes excluded). */
  numPrefillTokens = 0;

  constructor(
    readonly config: SchedulerConfig,
    readonly blocks: BlockManager,
  ) {
    if (config.maxNumBatchedTokens < config.maxNumSeqs)
      throw new TesseraError(`max-num-batched-tokens (${config.maxNumBatchedTokens}) must be at least max-num-seqs (${config.maxNumSeqs}).`, 'invalid_input');
  }

  /** Queues a sequence; a prompt that can never run is refused here, not left waiting forever. */
  add(seq: Sequence): void {
    checkRequestFits(seq.numPromptTokens, seq.params.maxTokens, { ...this.config, numBlocks: this.blocks.numBlocks, blockSize: this.blocks.blockSize });
    seq.status = 'waiting';
    this.enqueue(seq);
  }

  get hasUnfinished(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): SchedulerOutput {
    let budget = this.config.maxNumBatchedTokens;
    const scheduled: ScheduledSeq[] = [];
    const preempted: Sequence[] = [];
    const blockCopies: Array<[number, number]> = [];

    // Running sequences in priority order: decodes, and prompts already partly computed. The
    // forks of n > 1 requests can make more sequences run than maxNumSeqs; at most that many
    // are scheduled in one step (the program is planned for that many logit rows).
    this.running.sort((a, b) => (before(a, b) ? -1 : 1));
    for (let i = 0; i < this.running.length && budget > 0 && scheduled.length < this.config.maxNumSeqs; i++) {
      const seq = this.running[i];
      const n = Math.min(seq.numUncomputedTokens, budget);
      while (!this.canWrite(seq, n)) {
        const victim = this.running[this.running.length - 1];
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
      }
      if (seq.status !== 'running') break;
      this.prepareWrite(seq, n, blockCopies);
      scheduled.push({ seq, numNewTokens: n, sample: seq.numComputedTokens + n === seq.numTokens });
      budget -= n;
    }

    // Waiting prompts in order; none while running ones are being preempted.
    while (preempted.length === 0 && budget > 0 && this.waiting.length > 0 && this.running.length < this.config.maxNumSeqs) {
      const seq = this.waiting[0];
      if (seq.blockTable.length === 0) seq.numCachedTokens = this.blocks.acquireCachedPrefix(seq);
      const n = Math.min(seq.numUncomputedTokens, budget);
      if (!this.blocks.grow(seq.blockTable, seq.numComputedTokens + n)) {
        this.blocks.returnCachedPrefix(seq);
        seq.numCachedTokens = 0;
        break;
      }
      this.waiting.shift();
      seq.status = 'running';
      this.running.push(seq);
      scheduled.push({ seq, numNewTokens: n, sample: seq.numComputedTokens + n === seq.numTokens });
      budget -= n;
    }
    for (const s of scheduled) if (s.seq.numComputedTokens < s.seq.numPromptTokens) this.numPrefillTokens += Math.min(s.numNewTokens, s.seq.numPromptTokens - s.seq.numComputedTokens);
    return { scheduled, numBatchedTokens: this.config.maxNumBatchedTokens - budget, preempted, blockCopies };
  }

  /** After a step: n more tokens of `seq` are in the cache; full blocks become shareable. */
  commit(seq: Sequence, n: number): void {
    seq.numComputedTokens += n;
    this.blocks.commitFullBlocks(seq);
  }

  /** A running sibling of `seq` that shares its blocks (n > 1); it runs from the next step. */
  fork(seq: Sequence, seqId: number, sampleIndex: number): Sequence {
    const child = seq.fork(seqId, sampleIndex);
    child.blockTable = this.blocks.fork(seq.blockTable);
    child.status = 'running';
    this.running.push(child);
    return child;
  }

  /** Ends a sequence and frees its blocks at once. */
  finish(seq: Sequence, reason: FinishReason): void {
    if (seq.isFinished) return;
    seq.status = 'finished';
    seq.finishReason = reason;
    this.blocks.release(seq.blockTable);
    if (!remove(this.running, seq)) remove(this.waiting, seq);
  }

  /** Blocks the next n tokens of `seq` need: new ones, plus private copies of shared ones it writes into. */
  private canWrite(seq: Sequence, n: number): boolean {
    return this.blocks.blocksNeeded(seq.blockTable, seq.numComputedTokens + n) + this.sharedWrites(seq, n) <= this.blocks.numFreeBlocks;
  }

  private sharedWrites(seq: Sequence, n: number): number {
    let shared = 0;
    const last = Math.min(seq.blockTable.length, this.blocks.blocksForTokens(seq.numComputedTokens + n));
    for (let i = Math.floor(seq.numComputedTokens / this.blocks.blockSize); i < last; i++) if (this.blocks.refCount(seq.blockTable[i]) > 1) shared++;
    return shared;
  }

  private prepareWrite(seq: Sequence, n: number, copies: Array<[number, number]>): void {
    const last = Math.min(seq.blockTable.length, this.blocks.blocksForTokens(seq.numComputedTokens + n));
    for (let i = Math.floor(seq.numComputedTokens / this.blocks.blockSize); i < last; i++) {
      const copy = this.blocks.copyOnWrite(seq.blockTable, i);
      if (copy) copies.push(copy);
    }
    if (!this.blocks.grow(seq.blockTable, seq.numComputedTokens + n)) throw new Error('grow failed after canWrite');
  }

  private preempt(seq: Sequence): void {
    remove(this.running, seq);
    this.blocks.release(seq.blockTable);
    seq.numComputedTokens = 0;
    seq.blockHashes = [];
    seq.numPreemptions++;
    seq.status = 'waiting';
    this.enqueue(seq);
  }

  private enqueue(seq: Sequence): void {
    let i = this.waiting.length;
    while (i > 0 && before(seq, this.waiting[i - 1])) i--;
    this.waiting.splice(i, 0, seq);
  }
}

function remove<T>(list: T[], item: T): boolean {
  const i = list.indexOf(item);
  if (i < 0) return false;
  list.splice(i, 1);
  return true;
}
