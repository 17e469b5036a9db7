/**
 * The library API over the demo model on the CPU: streaming, stop conditions, seeds, aborts,
 * and continuous batching that does not change greedy results.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { Tessera, type GenerationChunk } from '../../src/llm.js';

let llm: Tessera;
beforeAll(async () => {
  llm = await Tessera.load(undefined, { device: 'cpu', maxNumSeqs: 16, kvBlockSize: 8 });
});
afterAll(async () => {
  await llm.close();
});

async function collect(it: AsyncIterable<GenerationChunk>): Promise<GenerationChunk[]> {
  const chunks: GenerationChunk[] = [];
  for await (const c of it) chunks.push(c);
  return chunks;
}

function poolIsFull(): boolean {
  const bm = llm.engine.scheduler.blocks;
  return bm.numFreeBlocks === bm.numBlocks && !llm.engine.hasUnfinished;
}

describe('generate', () => {
  it('streams chunks whose text and ids add up to the final result, and reports usage', async () => {
    const chunks = await collect(llm.generate('And God said', { temperature: 0, maxTokens: 24, ignoreEos: true }));
    const last = chunks[chunks.length - 1];
    expect(last.finishReason).toBe('length');
    expect(chunks.slice(0, -1).every((c) => c.finishReason === null)).toBe(true);
    const ids = chunks.flatMap((c) => c.tokenIds);
    expect(ids.length).toBe(24);
    expect(last.usage).toEqual({ promptTokens: llm.tokenizer.encode("And God said").length, completionTokens: 24, cachedPromptTokens: 0 });
    expect(chunks.map((c) => c.text).join('')).toBe(llm.tokenizer.decode(ids, { skipSpecialTokens: true }));
    expect(poolIsFull()).toBe(true);
  });

  it('greedy output does not depend on what else is in the batch', async () => {
    const prompt = 'In the beginning';
    const alone = await llm.complete(prompt, { temperature: 0, maxTokens: 32, ignoreEos: true });
    const others = ['Genesis 2:', 'And the LORD', 'Blessed are', 'Psalms 23:1 ', 'And it came to pass', 'Verily', 'Thou shalt', 'Let there be'];
    const results = await Promise.all([
      ...Array.from({ length: 15 }, (_, i) => llm.complete(others[i % others.length] + ' '.repeat(i), { temperature: 0.9, seed: i, maxTokens: 20 + i })),
      llm.complete(prompt, { temperature: 0, maxTokens: 32, ignoreEos: true }),
    ]);
    expect(results[15].tokenIds).toEqual(alone.tokenIds);
    expect(poolIsFull()).toBe(true);
  });

  it('a seed makes sampling reproducible, alone or batched', async () => {
    const opts = { temperature: 1, topP: 0.9, seed: 1234, maxTokens: 24, ignoreEos: true };
    const a = await llm.complete('And', opts);
    const [b] = await Promise.all([llm.complete('And', opts), llm.complete('Thus', { ...opts, seed: 9 })]);
    expect(b.tokenIds).toEqual(a.tokenIds);
    const c = await llm.complete('And', { ...opts, seed: 1235 });
    expect(c.tokenIds).not.toEqual(a.tokenIds);
  });

  it('stops at a stop string, which is not part of the text', async () => {
    const free = await llm.complete('And God said', { temperature: 0, maxTokens: 40, ignoreEos: true });
    const stop = free.text.slice(10, 13);
    const cut = free.text.indexOf(stop);
    const stopped = await llm.complete('And God said', { temperature: 0, maxTokens: 40, ignoreEos: true, stop: [stop] });
    expect(stopped.finishReason).toBe('stop');
    expect(stopped.text).toBe(free.text.slice(0, cut));
    expect(poolIsFull()).toBe(true);
  });

  it('stops on a stop token id, which is not part of the text', async () => {
    const free = await llm.complete('And God said', { temperature: 0, maxTokens: 30, ignoreEos: true });
    const stopId = free.tokenIds[5];
    const first = free.tokenIds.indexOf(stopId);
    const stopped = await llm.complete('And God said', { temperature: 0, maxTokens: 30, stopTokenIds: [stopId] });
    expect(stopped.finishReason).toBe('stop');
    expect(stopped.tokenIds).toEqual(free.tokenIds.slice(0, first + 1));
    expect(stopped.text).toBe(llm.tokenizer.decode(free.tokenIds.slice(0, first)));
  });

  it('ends with length at the context limit, even when max tokens asks for more', async () => {
    const maxLen = llm.info.maxModelLen;
    const prompt = llm.tokenizer.encode('And').concat(Array(maxLen - 10).fill(32));
    const r = await llm.complete(prompt, { temperature: 0, maxTokens: 1000, ignoreEos: true });
    expect(r.finishReason).toBe('length');
    expect(prompt.length + r.tokenIds.length).toBe(maxLen);
  });

  it('refuses a prompt as long as the context with a sentence', () => {
    const prompt = Array(llm.info.maxModelLen).fill(65);
    expect(() => llm.generate(prompt)).toThrow(TesseraError);
    expect(() => llm.generate(prompt)).toThrow(/context is \d+ tokens/);
    expect(poolIsFull()).toBe(true);
  });

  it('an AbortSignal ends the stream with its reason and frees the request at once', async () => {
    const ac = new AbortController();
    const seen: GenerationChunk[] = [];
    const run = (async () => {
      for await (const c of llm.generate('In the beginning', { temperature: 0, maxTokens: 200, ignoreEos: true, signal: ac.signal })) {
        seen.push(c);
        if (seen.length === 3) ac.abort(new Error('user went away'));
      }
    })();
    await expect(run).rejects.toThrow('user went away');
    expect(seen.length).toBe(3);
    expect(poolIsFull()).toBe(true);
  });

  it('breaking out of the loop aborts the request', async () => {
    let n = 0;
    for await (const c of llm.generate('In the beginning', { temperature: 0, maxTokens: 200, ignoreEos: true })) {
      if (c.tokenIds.length && ++n === 2) break;
    }
    await new Promise((r) => setImmediate(r));
    expect(poolIsFull()).toBe(true);
  });

  it('an already aborted signal throws before any work', () => {
    const ac = new AbortController();
    ac.abort(new Error('too late'));
    expect(() => llm.generate('x', { signal: ac.signal })).toThrow('too late');
  });

  it('returns logprobs with tokens when asked', async () => {
    const chunks = await collect(llm.generate('And', { temperature: 0, maxTokens: 4, ignoreEos: true, logprobs: 3 }));
    const lps = chunks.flatMap((c) => c.logprobs ?? []);
    expect(lps.length).toBe(4);
    for (const lp of lps) {
      expect(lp.top!.length).toBe(3);
      expect(lp.top![0].tokenId).toBe(lp.tokenId);
      expect(lp.top![0].logprob).toBeCloseTo(lp.logprob, 6);
      expect(lp.logprob).toBeLessThanOrEqual(0);
      expect(lp.top![1].logprob).toBeLessThanOrEqual(lp.top![0].logprob);
    }
  });

  it('chat renders the template and answers', async () => {
    const r = await collect(llm.chat([{ role: 'user', content: 'Genesis 1:1' }], { temperature: 0, maxTokens: 16 }));
    expect(r[r.length - 1].finishReason).not.toBeNull();
    expect(r.flatMap((c) => c.tokenIds).length).toBeGreaterThan(0);
  });
});
