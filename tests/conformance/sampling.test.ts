/**
 * Sampling on the device (kernels/sampling.cu) against the host sampler, row by row: random
 * logits (ties, masks, flat rows) and random parameters (greedy, temperature, top-k, top-p,
 * min-p, penalties, logprobs), vocabularies from a few tokens to Llama-3's 128,256, through
 * CudaBackend.sampleLogits, the path the engine's executeSampled takes.
 *
 * Tiers: the kernel itself, on the GPU, or without one on the kernel emulator (tests/cuda/emu;
 * skipped, saying why, where neither is possible), and the stand-in libcuda, whose launch hook
 * runs the JavaScript model of the kernel (tests/cuda/sampling_model.ts) on the uploaded
 * buffers, which checks the model against the host sampler.
 * Where the kernel's f32 ROW path (vocabularies over 2048 without a small top-k) meets a
 * threshold within ROW_NEAR of the host's own decision, a different token is allowed and counted.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CudaBackend } from '../../src/backend/cuda/backend.js';
import { loadDriver, type CudaDriver } from '../../src/backend/cuda/driver.js';
import { LIST_CAP, type SamplingRow } from '../../src/backend/cuda/ops/sampling.js';
import { sampleToken } from '../../src/sampling/sampler.js';
import { cudaTarget } from '../cuda/emu/target.js';
import { buildMock, setLaunchHook } from '../cuda/mock/mock.js';
import { samplingKernelHook, type SampledLaunch } from '../cuda/mock/sampling_hook.js';
import { ROW_NEAR, expectSame, hostMargin, mulberry32, pick, randomLogits, randomRow } from '../cuda/sampling_cases.js';

interface Tier {
  name: string;
  skip: string | null;
  /** Launches of rows of these vocabulary sizes. */
  vocabs: number[];
  launches: number;
  setup?: () => () => void;
}

const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
const { CudaBackend: Cuda } = await import('../../src/backend/cuda/backend.js');
const target = cudaTarget();
const mockPath = target.skip === null && !target.emulated ? null : buildMock();

const tiers: Tier[] = [
  { name: target.emulated ? 'cuda (kernel emulator)' : 'cuda', skip: target.skip, vocabs: [7, 264, 2048, 2049, 32000, 151936, 128256], launches: target.emulated ? 30 : 60 },
  {
    name: 'stand-in libcuda (JavaScript model of the kernel)',
    skip: target.skip === null && !target.emulated ? 'a GPU is present: its tier runs the kernel itself' : !mockPath ? 'no C compiler to build the stand-in libcuda' : !existsSync(fatbin) ? 'the kernels are not built (npm run build:kernels needs nvcc)' : null,
    vocabs: [7, 264, 3000],
    launches: 12,
    setup: () => {
      // This tier's own stand-in, without the emulator: the hook's model alone writes the outputs.
      const saved = { lib: process.env.TESSERA_LIBCUDA, emu: process.env.MOCK_EMU };
      process.env.TESSERA_LIBCUDA = mockPath!;
      delete process.env.MOCK_EMU;
      const driver = (loadDriver() as { driver: CudaDriver }).driver;
      const launches: SampledLaunch[] = [];
      const remove = setLaunchHook(mockPath!, samplingKernelHook(driver, launches));
      return () => {
        remove();
        for (const [k, v] of [['TESSERA_LIBCUDA', saved.lib], ['MOCK_EMU', saved.emu]] as const) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      };
    },
  },
];
for (const t of tiers) if (t.skip) console.log(`[conformance sampling] ${t.name} tier skipped: ${t.skip}`);

for (const tier of tiers) {
  describe.skipIf(tier.skip !== null)(`device sampling equals the host sampler: ${tier.name}`, () => {
    let backend: CudaBackend;
    let teardown: (() => void) | undefined;
    beforeAll(() => {
      teardown = tier.setup?.();
      backend = Cuda.create();
    });
    afterAll(async () => {
      await backend?.dispose();
      teardown?.();
    });

    it('draws the host sampler\'s token and logprobs for every row, in batches of rows', async () => {
      // Fresh cases every run; the seed is in every message, to replay a failure.
      const seed = Date.now() >>> 0;
      const rnd = mulberry32(seed);
      const paths = { exact: 0, near: 0 };
      for (let launch = 0; launch < tier.launches; launch++) {
        const V = pick(rnd, tier.vocabs);
        const rows = 1 + Math.floor(rnd() * 6);
        const logits = new Float32Array(rows * V);
        const ctx: SamplingRow[] = [];
        for (let r = 0; r < rows; r++) {
          const row = randomLogits(rnd, V);
          if (!row.some((x) => Number.isFinite(x))) row[0] = 0;
          logits.set(row, r * V);
          ctx.push(randomRow(rnd, V));
        }
        const got = await backend.sampleLogits(logits.slice(), V, ctx);
        expect(got.length).toBe(rows);
        for (let r = 0; r < rows; r++) {
          const row = logits.subarray(r * V, (r + 1) * V);
          const host = sampleToken(Float32Array.from(row), ctx[r]);
          const p = ctx[r].params;
          const what = `seed ${seed} launch ${launch} row ${r}: V=${V} T=${p.temperature} k=${p.topK} p=${p.topP} minP=${p.minP} rep=${p.repetitionPenalty} pres=${p.presencePenalty} freq=${p.frequencyPenalty} lp=${p.logprobs}`;
          const rowPath = V > LIST_CAP && !(p.topK > 0 && p.topK <= LIST_CAP);
          if (rowPath && got[r].tokenId !== host.tokenId) {
            expect(hostMargin(row, ctx[r]), `${what}: device ${got[r].tokenId} vs host ${host.tokenId} away from any threshold`).toBeLessThan(ROW_NEAR);
            paths.near++;
            continue;
          }
          expectSame(got[r], host, what);
          paths.exact++;
        }
      }
      console.log(`[conformance sampling] ${tier.name}: ${paths.exact} rows equal, ${paths.near} within ${ROW_NEAR} of a threshold`);
      expect(paths.exact).toBeGreaterThan(0);
    });
  });
}
