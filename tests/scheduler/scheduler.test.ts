import { describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { resolveSamplingParams } from '../../src/sampling/params.js';
import { BlockManager } from '../../src/scheduler/block_manager.js';
import { Scheduler, type SchedulerConfig } from '../../src/scheduler/scheduler.js';
import { Sequence } from '../../src/scheduler/sequence.js';

let nextId = 0;
function seq(promptLen: number, maxTokens = 16): Sequence {
  return new Sequence(nextId++, `r${nextId}`, Array.from({ length: promptLen }, (_, i) => i % 200), resolveSamplingParams({ maxTokens }));
}

function make(numBlocks: number, blockSize: number, config: Partial<SchedulerConfig> = {}) {
  const blocks = new BlockManager(numBlocks, blockSize);
  const scheduler = new Scheduler({ maxNumSeqs: 8, maxNumBatchedTokens: 64, maxModelLen: 256, ...config }, blocks);
  return { blocks, scheduler };
}

/** What the engine does after a step: count computed tokens, append a token where sampled, finish at maxTokens. */
function completeStep(scheduler: Scheduler): number {
  const out = scheduler.schedule();
  for (const { seq: s, numNewTokens, sample } of out.scheduled) {
    s.numComputedTokens += numNewTokens;
    if (sample) {
      s.appendToken(1);
      if (s.numOutputTokens >= s.params.maxTokens) scheduler.finish(s, 'length');
    }
  }
  return out.scheduled.length;
}

describe('block manager', () => {
  it('grows tables by whole blocks, refuses without partial change, and frees on release', () => {
    const bm = new BlockManager(4, 16);
    const a: number[] = [];
    expect(bm.grow(a, 17)).toBe(true);
    expect(a).toEqual([0, 1]);
    expect(bm.grow(a, 32)).toBe(true);
    expect(a.length).toBe(2);
    const b: number[] = [];
    expect(bm.grow(b, 49)).toBe(false);
    expect(b).toEqual([]);
    expect(bm.numFreeBlocks).toBe(2);
    bm.release(a);
    expect(a).toEqual([]);
    expect(bm.numFreeBlocks).toBe(4);
    expect(() => bm.release([0])).toThrow(/released more often than held/);
  });
});

describe('scheduler', () => {
  it('prefills a long prompt in chunks of the token budget and samples only at the end', () => {
    const { scheduler } = make(64, 4, { maxNumBatchedTokens: 8 });
    const s = seq(20);
    scheduler.add(s);
    const chunks: Array<[number, boolean]> = [];
    for (let i = 0; i < 3; i++) {
      const out = scheduler.schedule();
      expect(out.scheduled.length).toBe(1);
      chunks.push([out.scheduled[0].numNewTokens, out.scheduled[0].sample]);
      s.numComputedTokens += out.scheduled[0].numNewTokens;
    }
    expect(chunks).toEqual([[8, false], [8, false], [4, true]]);
    expect(s.blockTable.length).toBe(5);
  });

  it('schedules decodes first, then fills the budget with prompt chunks', () => {
    const { scheduler } = make(64, 4, { maxNumBatchedTokens: 10 });
    const running = [seq(3), seq(3), seq(3)];
    for (const s of running) scheduler.add(s);
    completeStep(scheduler); // the three prompts (9 tokens)
    const late = seq(30);
    scheduler.add(late);
    const out = scheduler.schedule();
    expect(out.scheduled.map((x) => [x.seq.seqId, x.numNewTokens])).toEqual([
      ...running.map((s) => [s.seqId, 1]),
      [late.seqId, 7],
    ]);
    expect(out.numBatchedTokens).toBe(10);
  });

  it('holds at most maxNumSeqs running', () => {
    const { scheduler } = make(64, 4, { maxNumSeqs: 2 });
    for (let i = 0; i < 5; i++) scheduler.add(seq(4));
    expect(scheduler.schedule().scheduled.length).toBe(2);
    expect(scheduler.running.length).toBe(2);
    expect(scheduler.waiting.length).toBe(3);
  });

  it('preempts the newest sequence when blocks run out, recomputes it, and finishes everything', () => {
    // 6 blocks of 4 tokens; three sequences that each grow to 8 tokens (2 blocks) once all
    // three are running the pool is full and the next block must come from a preemption.
    const { scheduler, blocks } = make(6, 4);
    const seqs = [seq(3, 9), seq(3, 9), seq(3, 9)];
    for (const s of seqs) scheduler.add(s);
    let preemptions = 0;
    for (let step = 0; step < 200 && scheduler.hasUnfinished; step++) {
      const before = seqs.reduce((n, s) => n + s.numPreemptions, 0);
      completeStep(scheduler);
      preemptions += seqs.reduce((n, s) => n + s.numPreemptions, 0) - before;
      expect(blocks.numFreeBlocks + blocks.numUsedBlocks).toBe(6);
    }
    expect(scheduler.hasUnfinished).toBe(false);
    expect(preemptions).toBeGreaterThan(0);
    for (const s of seqs) {
      expect(s.finishReason).toBe('length');
      expect(s.numOutputTokens).toBe(9);
    }
    expect(blocks.numFreeBlocks).toBe(6);
  });

  it('refuses a prompt that cannot fit the context or the pool, with a sentence', () => {
    const { scheduler } = make(4, 4, { maxModelLen: 32 });
    expect(() => scheduler.add(seq(32))).toThrow(TesseraError);
    expect(() => scheduler.add(seq(32))).toThrow(/prompt has 32 tokens; this model's context is 32 tokens/);
    expect(() => scheduler.add(seq(10, 10))).toThrow(/needs up to 20 tokens \(5 KV blocks\) but the KV cache holds 4 blocks of 4 tokens/);
    expect(() => scheduler.add(seq(0))).toThrow(/prompt is empty/);
    expect(scheduler.hasUnfinished).toBe(false);
  });

  it('frees a finished or aborted sequence at once, waiting or running', () => {
    const { scheduler, blocks } = make(8, 4, { maxNumSeqs: 1 });
    const a = seq(6);
    const b = seq(6);
    scheduler.add(a);
    scheduler.add(b);
    scheduler.schedule();
    expect(blocks.numUsedBlocks).toBe(2);
    scheduler.finish(b, 'abort');
    expect(scheduler.waiting.length).toBe(0);
    scheduler.finish(a, 'abort');
    expect(blocks.numFreeBlocks).toBe(8);
    expect(a.finishReason).toBe('abort');
    expect(scheduler.hasUnfinished).toBe(false);
  });
});
