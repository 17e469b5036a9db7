/**
 * Drives a loaded model one sequence at a time below the scheduler: prefill with logits at every
 * position, then single-token decode steps, over the paged cache. For golden tests.
 */
import type { Tessera } from '../../src/llm.js';
import { resolveSamplingParams } from '../../src/sampling/params.js';
import { BlockManager } from '../../src/scheduler/block_manager.js';
import { Sequence } from '../../src/scheduler/sequence.js';

export class SequenceDriver {
  private readonly seq: Sequence;
  private readonly blocks: BlockManager;

  constructor(
    private readonly llm: Tessera,
    promptIds: number[],
  ) {
    this.seq = new Sequence(0, 'golden', promptIds, resolveSamplingParams({ temperature: 0 }));
    this.blocks = new BlockManager(llm.info.kvCacheBlocks, llm.info.kvBlockSize);
    // Take the low half of the pool first, so block ids and positions differ.
    this.blocks.grow([], Math.floor(llm.info.kvCacheBlocks / 2) * llm.info.kvBlockSize);
  }

  get vocab(): number {
    return this.llm.runner.vocabSize;
  }

  /** Logits [P, V] at every prompt position. */
  async prefill(): Promise<Float32Array> {
    const n = this.seq.numTokens;
    if (!this.blocks.grow(this.seq.blockTable, n)) throw new Error('pool too small');
    const batch = this.llm.runner.prepare([{ seq: this.seq, numNewTokens: n, sample: true }], true);
    const logits = await this.llm.runner.backend.execute(batch);
    this.seq.numComputedTokens = n;
    return logits;
  }

  /** Appends a token and returns the logits [V] after it. */
  async decode(tokenId: number): Promise<Float32Array> {
    this.seq.appendToken(tokenId);
    if (!this.blocks.grow(this.seq.blockTable, this.seq.numTokens)) throw new Error('pool too small');
    const batch = this.llm.runner.prepare([{ seq: this.seq, numNewTokens: 1, sample: true }]);
    const logits = await this.llm.runner.backend.execute(batch);
    this.seq.numComputedTokens++;
    return logits;
  }
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** The sampler's own argmax (ties to the lowest id). */
export { argmax } from '../../src/sampling/sampler.js';
