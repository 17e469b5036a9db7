/**
 * Prefix caching and n > 1 through the engine on the demo model: cached prefixes give the
 * same tokens as recomputation, forks share the prompt's blocks, and the pool always returns
 * to full.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SeqOutput } from '../../src/engine/engine.js';
import { Tessera } from '../../src/llm.js';
import { resolveSamplingParams } from '../../src/sampling/params.js';

let cached: Tessera;
let uncached: Tessera;
beforeAll(async () => {
  cached = await Tessera.load(undefined, { device: 'cpu', kvBlockSize: 8, maxNumSeqs: 8 });
  uncached = await Tessera.load(undefined, { device: 'cpu', kvBlockSize: 8, maxNumSeqs: 8, prefixCaching: false });
});
afterAll(async () => {
  await cached.close();
  await uncached.close();
});

/** Runs requests to the end through the engine; outputs by request id and sample index. */
async function run(llm: Tessera, requests: Array<{ id: string; prompt: number[]; n?: number; temperature?: number; seed?: number }>, maxTokens = 12) {
  const out = new Map<string, SeqOutput[]>();
  for (const r of requests)
    llm.engine.addRequest({
      requestId: r.id,
      promptIds: r.prompt,
      n: r.n,
      params: resolveSamplingParams({ temperature: r.temperature ?? 0, seed: r.seed ?? 0, maxTokens, ignoreEos: true }),
    });
  while (llm.engine.hasUnfinished) for (const o of await llm.engine.step()) (out.get(`${o.requestId}/${o.sampleIndex}`) ?? out.set(`${o.requestId}/${o.sampleIndex}`, []).get(`${o.requestId}/${o.sampleIndex}`)!).push(o);
  const bm = llm.engine.scheduler.blocks;
  expect(bm.numUsedBlocks).toBe(0);
  expect(bm.numFreeBlocks).toBe(bm.numBlocks);
  return out;
}

const tokensOf = (outs: SeqOutput[] | undefined) => (outs ?? []).map((o) => o.tokenId);

describe('prefix caching', () => {
  it('reuses a shared prefix and gives the same tokens as recomputing it', async () => {
    const system = cached.tokenizer.encode('Genesis 1:1 In the beginning God created the heaven and the earth. Genesis 1:2 ');
    const prompts = ['And the earth', 'And darkness', 'And the Spirit of God'].map((t) => [...system, ...cached.tokenizer.encode(t, { addSpecialTokens: false })]);
    const first = await run(cached, [{ id: 'a', prompt: prompts[0] }]);
    expect(first.get('a/0')![0].numCachedTokens).toBe(0);
    const prefillBefore = cached.engine.stats.prefillTokens;
    const later = await run(cached, prompts.map((p, i) => ({ id: `p${i}`, prompt: p })));
    const fullBlocks = Math.floor(system.length / 8) * 8;
    for (let i = 0; i < prompts.length; i++) expect(later.get(`p${i}/0`)![0].numCachedTokens, `prompt ${i}`).toBeGreaterThanOrEqual(fullBlocks);
    expect(cached.engine.stats.prefillTokens - prefillBefore).toBeLessThan(prompts.reduce((s, p) => s + p.length, 0) - 2 * fullBlocks);
    const reference = await run(uncached, prompts.map((p, i) => ({ id: `p${i}`, prompt: p })));
    for (let i = 0; i < prompts.length; i++) expect(tokensOf(later.get(`p${i}/0`))).toEqual(tokensOf(reference.get(`p${i}/0`)));
  });

  it('a prompt that is entirely cached recomputes only its tail and matches', async () => {
    const prompt = cached.tokenizer.encode('And God said, Let there be light: and there was light. And God saw');
    for (const cut of [0, 1, 7, 8, 9]) {
      const p = prompt.slice(0, prompt.length - cut);
      const again = await run(cached, [{ id: `x${cut}`, prompt: p }]);
      const ref = await run(uncached, [{ id: `x${cut}`, prompt: p }]);
      expect(tokensOf(again.get(`x${cut}/0`))).toEqual(tokensOf(ref.get(`x${cut}/0`)));
    }
  });
});

describe('n > 1', () => {
  it('greedy samples of one prompt are identical and share the prompt blocks', async () => {
    const prompt = cached.tokenizer.encode('Psalms 23:1 The LORD is my shepherd');
    const out = await run(cached, [{ id: 'g', prompt, n: 3 }]);
    const ref = await run(uncached, [{ id: 'g', prompt }]);
    for (const k of [0, 1, 2]) expect(tokensOf(out.get(`g/${k}`))).toEqual(tokensOf(ref.get('g/0')));
  });

  it('seeded samples differ per sample index, and are reproducible', async () => {
    const prompt = cached.tokenizer.encode('And it came to pass');
    const a = await run(cached, [{ id: 's', prompt, n: 3, temperature: 1, seed: 5 }], 24);
    const b = await run(uncached, [{ id: 's', prompt, n: 3, temperature: 1, seed: 5 }], 24);
    for (const k of [0, 1, 2]) expect(tokensOf(a.get(`s/${k}`))).toEqual(tokensOf(b.get(`s/${k}`)));
    expect(tokensOf(a.get('s/0'))).not.toEqual(tokensOf(a.get('s/1')));
    expect(tokensOf(a.get('s/1'))).not.toEqual(tokensOf(a.get('s/2')));
    // The first sample equals a single-sample request with the same seed.
    const single = await run(uncached, [{ id: 'one', prompt, temperature: 1, seed: 5 }], 24);
    expect(tokensOf(a.get('s/0'))).toEqual(tokensOf(single.get('one/0')));
  });
});

describe('n > 1 beyond max-num-seqs', () => {
  it('forks that outnumber max-num-seqs wait their turn instead of overflowing the step', async () => {
    const llm = await Tessera.load(undefined, { device: 'cpu', maxNumSeqs: 2 });
    try {
      const out = await run(llm, [
        { id: 'a', prompt: llm.tokenizer.encode('And'), n: 2 },
        { id: 'b', prompt: llm.tokenizer.encode('Thus'), n: 2 },
        { id: 'c', prompt: llm.tokenizer.encode('Lo'), n: 1 },
        { id: 'd', prompt: llm.tokenizer.encode('Behold'), n: 3 },
      ]);
      for (const key of ['a/0', 'a/1', 'b/0', 'b/1', 'c/0', 'd/0', 'd/1', 'd/2']) expect(out.get(key)?.length, key).toBe(12);
    } finally {
      await llm.close();
    }
  });
});
