/** The engine in a worker thread gives what the in-process engine gives, and ends cleanly. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { Tessera, type SampleChunk } from '../../src/llm.js';

let inProcess: Tessera;
let worker: Tessera;
beforeAll(async () => {
  inProcess = await Tessera.load(undefined, { device: 'cpu' });
  worker = await Tessera.load(undefined, { device: 'cpu', engineThread: 'worker' });
});
afterAll(async () => {
  await inProcess.close();
  await worker.close();
});

describe('engine worker thread', () => {
  it('generates the same greedy and seeded tokens as the in-process engine', async () => {
    for (const opts of [{ temperature: 0 }, { temperature: 0.9, seed: 3 }]) {
      const a = await inProcess.complete('And God said', { ...opts, maxTokens: 24, ignoreEos: true });
      const b = await worker.complete('And God said', { ...opts, maxTokens: 24, ignoreEos: true });
      expect(b.tokenIds).toEqual(a.tokenIds);
      expect(b.text).toBe(a.text);
    }
  });

  it('runs n samples and concurrent requests, and reports its counters', async () => {
    const ids = worker.tokenizer.encode('In the beginning');
    const handle = worker.submit(ids, { n: 3, temperature: 0.8, seed: 11, maxTokens: 10, ignoreEos: true });
    const others = [worker.complete('Thou shalt', { maxTokens: 8 }), worker.complete('Blessed', { maxTokens: 8 })];
    const bySample = new Map<number, number[]>();
    for await (const c of handle as AsyncIterable<SampleChunk>) bySample.set(c.index, [...(bySample.get(c.index) ?? []), ...c.tokenIds]);
    await Promise.all(others);
    expect([...bySample.keys()].sort()).toEqual([0, 1, 2]);
    for (const tokens of bySample.values()) expect(tokens.length).toBe(10);
    await new Promise((r) => setTimeout(r, 20));
    const s = worker.stats();
    expect(s.steps).toBeGreaterThan(0);
    expect(s.kvBlocksUsed).toBe(0);
    expect(s.running + s.waiting).toBe(0);
    expect(worker.numInFlight).toBe(0);
  });

  it('aborts from the front end free the request in the worker', async () => {
    const ac = new AbortController();
    const run = (async () => {
      let n = 0;
      for await (const c of worker.generate('And', { maxTokens: 200, ignoreEos: true, signal: ac.signal })) if (c.tokenIds.length && ++n === 3) ac.abort(new Error('stop'));
    })();
    await expect(run).rejects.toThrow('stop');
    await new Promise((r) => setTimeout(r, 50));
    expect(worker.stats().kvBlocksUsed).toBe(0);
    expect(worker.numInFlight).toBe(0);
  });

  it('refuses a request that cannot fit on the front end, with a sentence', () => {
    expect(() => worker.generate(Array(worker.info.maxModelLen).fill(65))).toThrow(TesseraError);
  });

  it('the engine is not reachable across the thread', () => {
    expect(() => worker.engine).toThrow(/worker thread/);
  });
});
