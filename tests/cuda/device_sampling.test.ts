/**
 * Sampling on the device through the whole engine, without a GPU: the CUDA backend runs on the
 * stand-in libcuda, whose launch hook plays the model's last layer (it writes random logits) and
 * then runs the JavaScript model of ts_sample_f32 (sampling_model.ts) on the buffers the backend
 * uploaded. Every token and logprob the engine reports must be what the host sampler draws from
 * those logits with the request's seed, stream, counter and history: this checks the engine's
 * rows, the packing and upload, the launch's arguments and the read-back together. The kernel
 * itself needs a GPU (the CUDA conformance tier); its algorithm is checked in sampling.test.ts.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDriver, type CudaDriver } from '../../src/backend/cuda/driver.js';
import type { SeqOutput } from '../../src/engine/engine.js';
import { Tessera } from '../../src/llm.js';
import { resolveSamplingParams, type SamplingParams } from '../../src/sampling/params.js';
import { sampleToken } from '../../src/sampling/sampler.js';
import { buildMock, setLaunchHook } from './mock/mock.js';
import { samplingKernelHook, type SampledLaunch } from './mock/sampling_hook.js';
import { mulberry32 } from './sampling_cases.js';

const mockPath = buildMock();
const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
const skip = !mockPath ? 'no C compiler to build the stand-in libcuda' : !existsSync(fatbin) ? 'the kernels are not built (npm run build:kernels needs nvcc)' : null;
if (skip) console.log(`device sampling through the engine: skipped: ${skip}`);

/** The stand-in's model kernels compute nothing: the hook makes up each launch's logits. */
function randomLogits(): (rows: number, vocab: number) => Float32Array {
  const rnd = mulberry32(2024);
  return (rows, vocab) => Float32Array.from({ length: rows * vocab }, () => (rnd() - 0.5) * 8);
}

describe.skipIf(skip !== null)('device sampling through the engine (stand-in libcuda)', () => {
  const saved = process.env.TESSERA_LIBCUDA;
  let llm: Tessera;
  let driver: CudaDriver;
  beforeAll(async () => {
    process.env.TESSERA_LIBCUDA = mockPath!;
    driver = (loadDriver() as { driver: CudaDriver }).driver;
    llm = await Tessera.load(undefined, { device: 'cuda', maxNumSeqs: 4, maxNumBatchedTokens: 16 });
  });
  afterAll(async () => {
    await llm?.close();
    if (saved === undefined) delete process.env.TESSERA_LIBCUDA;
    else process.env.TESSERA_LIBCUDA = saved;
  });

  it('draws what the host sampler draws from the same logits, row for row, across batched steps', async () => {
    expect(llm.engine.deviceSampling).toBe(true);
    const given: Array<Partial<SamplingParams>> = [
      { temperature: 0.8, topK: 20, repetitionPenalty: 1.3, logprobs: 3, seed: 11 },
      { temperature: 1, topP: 0.9, presencePenalty: 0.4, frequencyPenalty: 0.2, seed: 2 ** 40 + 3 },
      { temperature: 0, logprobs: 0, seed: 5 },
      { temperature: 0.7, minP: 0.05, topK: 5, logprobs: 20, seed: 99 },
    ];
    const prompts = ['In the beginning', 'And God said, Let there be light', 'The LORD is my shepherd; I shall not want.', 'Amen'].map((t) => llm.tokenizer.encode(t));
    const params = given.map((g, i) => resolveSamplingParams({ ...g, maxTokens: 5 + i, ignoreEos: true }));
    const launches: SampledLaunch[] = [];
    const remove = setLaunchHook(mockPath!, samplingKernelHook(driver, launches, randomLogits()));
    const steps: SeqOutput[][] = [];
    const allocs = koffi.load(mockPath!).func('int mock_allocs()');
    const allocsPerStep: number[] = [];
    try {
      params.forEach((p, i) => llm.engine.addRequest({ requestId: `r${i}`, promptIds: prompts[i], params: p }));
      while (llm.engine.hasUnfinished) {
        const before = allocs() as number;
        const outs = await llm.engine.step();
        allocsPerStep.push((allocs() as number) - before);
        if (outs.length) steps.push(outs);
      }
    } finally {
      remove();
    }
    // Weights, arena, KV pool, step and sampling buffers come from load; the first step makes the
    // kernels' constant tables and scratch; no step after it allocates (decode included, with the
    // penalties' token lists growing every step).
    expect(allocsPerStep.slice(1).every((n) => n === 0), `allocations per step: ${allocsPerStep.join(' ')}`).toBe(true);
    // One launch per step that sampled, its rows in the order of the step's outputs.
    expect(launches.length).toBe(steps.length);
    expect(steps.some((s) => s.length > 1)).toBe(true); // the long prompt's chunks ran beside decodes
    const history = prompts.map((p) => [...p]);
    const counts = prompts.map(() => new Map<number, number>());
    let checked = 0;
    steps.forEach((outs, k) => {
      const launch = launches[k];
      expect(launch.rows).toBe(outs.length);
      outs.forEach((o, r) => {
        const i = Number(o.requestId.slice(1));
        const p = params[i];
        const expected = sampleToken(launch.logits.slice(r * launch.vocab, (r + 1) * launch.vocab), {
          params: p,
          tokenIds: history[i],
          outputCounts: counts[i],
          seed: p.seed!,
          stream: 0,
          counter: o.numOutputTokens - 1,
        });
        expect(o.tokenId, `step ${k} row ${r} (${o.requestId})`).toBe(expected.tokenId);
        if (p.logprobs === null) expect(o.logprob).toBeUndefined();
        else expect(o.logprob!).toBeCloseTo(expected.logprob!, 5);
        expect(o.topLogprobs?.map((t) => t.tokenId)).toEqual(expected.topLogprobs?.map((t) => t.tokenId));
        history[i].push(o.tokenId!);
        counts[i].set(o.tokenId!, (counts[i].get(o.tokenId!) ?? 0) + 1);
        checked++;
      });
    });
    expect(checked).toBe(params.reduce((s, p) => s + p.maxTokens, 0));
  });

  it('samples the step that forks an n > 1 request on the host, and its later steps on the device', async () => {
    const launches: SampledLaunch[] = [];
    const remove = setLaunchHook(mockPath!, samplingKernelHook(driver, launches, randomLogits()));
    let stepsWithOutput = 0, forkStep = -1;
    try {
      llm.engine.addRequest({ requestId: 'fork', promptIds: llm.tokenizer.encode('Jesus wept.'), n: 3, params: resolveSamplingParams({ temperature: 1, seed: 1, maxTokens: 4, ignoreEos: true }) });
      while (llm.engine.hasUnfinished) {
        const outs = await llm.engine.step();
        if (!outs.length) continue;
        if (outs.length === 3 && outs.every((o) => o.numOutputTokens === 1)) forkStep = stepsWithOutput;
        stepsWithOutput++;
      }
    } finally {
      remove();
    }
    expect(forkStep).toBe(0);
    expect(stepsWithOutput).toBe(4);
    expect(launches.map((l) => l.rows)).toEqual([3, 3, 3]);
  });
});
