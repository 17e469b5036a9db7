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
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDriver, type CudaDriver } from '../../src/backend/cuda/driver.js';
import { SAMPLE_F32, type PackedSampling, type SamplingOutputs } from '../../src/backend/cuda/ops/sampling.js';
import type { SeqOutput } from '../../src/engine/engine.js';
import { Tessera } from '../../src/llm.js';
import { resolveSamplingParams, type SamplingParams } from '../../src/sampling/params.js';
import { sampleToken } from '../../src/sampling/sampler.js';
import { buildMock, setLaunchHook, unpackArgs, type LaunchRecord } from './mock/mock.js';
import { modelKernel } from './sampling_model.js';

const mockPath = buildMock();
const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
const skip = !mockPath ? 'no C compiler to build the stand-in libcuda' : !existsSync(fatbin) ? 'the kernels are not built (npm run build:kernels needs nvcc)' : null;
if (skip) console.log(`device sampling through the engine: skipped: ${skip}`);

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** One sampling launch as the hook saw it: the logits it wrote (before penalties) and the rows. */
interface SampledLaunch {
  logits: Float32Array;
  vocab: number;
  rows: number;
}

/** The hook's ts_sample_f32: random logits into the buffer, then the kernel's model on them. */
function sampleKernelHook(driver: CudaDriver, launches: SampledLaunch[]): (l: LaunchRecord) => void {
  const rnd = mulberry32(2024);
  return (l) => {
    if (l.name !== SAMPLE_F32.name) return;
    const a = unpackArgs(l.args, SAMPLE_F32);
    const rows = l.grid[0], vocab = Number(a.vocab), maxTopN = Number(a.maxTopN);
    expect(l.block[0]).toBe(512);
    const logits = Float32Array.from({ length: rows * vocab }, () => (rnd() - 0.5) * 8);
    launches.push({ logits: logits.slice(), vocab, rows });
    const params = new Uint8Array(rows * 96);
    driver.copyToHost(params, a.params as bigint);
    const view = new DataView(params.buffer);
    let n = 1;
    for (let r = 0; r < rows; r++) n = Math.max(n, view.getInt32(r * 96 + 72, true) + view.getInt32(r * 96 + 76, true), view.getInt32(r * 96 + 80, true) + view.getInt32(r * 96 + 84, true));
    const ids = new Int32Array(n), counts = new Int32Array(n);
    driver.copyToHost(ids, a.ids as bigint);
    driver.copyToHost(counts, a.counts as bigint);
    const packed: PackedSampling = { params: params.buffer, ids, counts, rows, maxTopN };
    const out: SamplingOutputs = { tokens: new Int32Array(rows), logprobs: new Float32Array(rows), topIds: new Int32Array(rows * maxTopN), topLogprobs: new Float32Array(rows * maxTopN) };
    for (let r = 0; r < rows; r++) modelKernel(logits, vocab, packed, r, out);
    driver.copyToDevice(a.logits as bigint, logits);
    driver.copyToDevice(a.outTokens as bigint, out.tokens);
    driver.copyToDevice(a.outLogprobs as bigint, out.logprobs);
    if (maxTopN > 0) {
      driver.copyToDevice(a.outTopIds as bigint, out.topIds);
      driver.copyToDevice(a.outTopLogprobs as bigint, out.topLogprobs);
    }
  };
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
    const remove = setLaunchHook(mockPath!, sampleKernelHook(driver, launches));
    const steps: SeqOutput[][] = [];
    try {
      params.forEach((p, i) => llm.engine.addRequest({ requestId: `r${i}`, promptIds: prompts[i], params: p }));
      while (llm.engine.hasUnfinished) {
        const outs = await llm.engine.step();
        if (outs.length) steps.push(outs);
      }
    } finally {
      remove();
    }
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
    const remove = setLaunchHook(mockPath!, sampleKernelHook(driver, launches));
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
