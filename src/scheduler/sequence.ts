/**
 * A sequence: the token ids of one generation (prompt, then output) and where it stands.
 * The scheduler and block manager see only this: ids, counts and block ids.
 */
import type { SamplingParams } from '../sampling/params.js';

export type SequenceStatus = 'waiting' | 'running' | 'finished';
export type FinishReason = 'stop' | 'length' | 'abort';

export class Sequence {
  readonly tokenIds: number[];
  readonly numPromptTokens: number;
  /** Tokens whose keys and values are in the cache. */
  numComputedTokens = 0;
  /** KV blocks holding this sequence's tokens, in order. */
  blockTable: number[] = [];
  /** Hashes of its full, computed blocks (prefix caching). */
  blockHashes: string[] = [];
  /** Prompt tokens found in the prefix cache when it was admitted. */
  numCachedTokens = 0;
  status: SequenceStatus = 'waiting';
  finishReason: FinishReason | null = null;
  /** How often each token id occurs in the output, for presence and frequency penalties. */
  readonly outputCounts = new Map<number, number>();
  /** Times this sequence was preempted (and its cache recomputed). */
  numPreemptions = 0;

  constructor(
    readonly seqId: number,
    readonly requestId: string,
    promptIds: readonly number[],
    readonly params: SamplingParams,
    /** Index among the request's n samples; part of the sampling stream. */
    readonly sampleIndex = 0,
    readonly arrivalTime = performance.now(),
    /** Lower runs first; ties go to the earlier arrival. */
    readonly priority = 0,
  ) {
    this.tokenIds = [...promptIds];
    this.numPromptTokens = promptIds.length;
  }

  get numTokens(): number {
    return this.tokenIds.length;
  }

  get numOutputTokens(): number {
    return this.tokenIds.length - this.numPromptTokens;
  }

  get lastTokenId(): number {
    return this.tokenIds[this.tokenIds.length - 1];
  }

  /** Tokens known but not yet in the cache: the rest of the prompt, or the last sampled token. */
  get numUncomputedTokens(): number {
    return this.tokenIds.length - this.numComputedTokens;
  }

  get isFinished(): boolean {
    return this.status === 'finished';
  }

  /** A sibling that shares everything so far (tokens, computed count, blocks by the caller). */
  fork(seqId: number, sampleIndex: number): Sequence {
    const prompt = this.tokenIds.slice(0, this.numPromptTokens);
    const child = new Sequence(seqId, this.requestId, prompt, this.params, sampleIndex, this.arrivalTime, this.priority);
    for (let i = this.numPromptTokens; i < this.tokenIds.length; i++) child.appendToken(this.tokenIds[i]);
    child.numComputedTokens = this.numComputedTokens;
    child.blockHashes = [...this.blockHashes];
    child.numCachedTokens = this.numCachedTokens;
    child.status = this.status;
    return child;
  }

  appendToken(id: number): void {
    this.tokenIds.push(id);
    this.outputCounts.set(id, (this.outputCounts.get(id) ?? 0) + 1);
  }
}
