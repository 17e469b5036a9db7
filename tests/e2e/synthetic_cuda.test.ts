/**
 * Synthetic checkpoints on the CUDA backend, the path `tessera bench --model synthetic:llama-3-8b`
 * takes on a GPU: the weights are made on the device by ts_fill_uniform / ts_fill (never read
 * from files), and must be the host recipe's (src/formats/synthetic.ts) bit for bit, so that a
 * synthetic model is the same model on every backend:
 *  - the fill kernels against the recipe, in both storage types, every element;
 *  - synthetic:tiny-4k end to end: prefill logits at every position and decode logits over the
 *    paged cache against the CPU backend's, within the 16-bit tolerance (a fill that drew other
 *    numbers would miss by the logits' own size).
 * On the GPU, or without one on the kernel emulator (tests/cuda/emu).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CudaBackend } from '../../src/backend/cuda/backend.js';
import { forStorage } from '../../src/backend/cuda/kernel_decl.js';
import { FILL, FILL_UNIFORM } from '../../src/backend/cuda/ops/transform.js';
import { openCheckpoint } from '../../src/formats/checkpoint.js';
import type { SyntheticWeights } from '../../src/formats/synthetic.js';
import { Tessera } from '../../src/llm.js';
import { f32ToBf16Bits, f32ToF16Bits } from '../../src/util/dtype.js';
import { cudaTarget } from '../cuda/emu/target.js';
import { uniform } from '../helpers/tiny_checkpoint.js';
import { SequenceDriver, argmax } from '../helpers/forward.js';

const target = cudaTarget();
if (target.skip) console.log(`synthetic checkpoints on CUDA: skipped: ${target.skip}`);

const MODEL = 'synthetic:tiny-4k';

describe.skipIf(target.skip !== null)(`synthetic weights made on the device${target.emulated ? ' (kernel emulator)' : ''}`, () => {
  let backend: CudaBackend;
  let weights: SyntheticWeights;
  beforeAll(async () => {
    backend = CudaBackend.create();
    weights = (await openCheckpoint(MODEL)).weights as SyntheticWeights;
  });
  afterAll(async () => {
    await backend?.dispose();
  });

  for (const dtype of ['bf16', 'f16'] as const)
    it(`ts_fill_uniform and ts_fill (${dtype}) write the host recipe's values, rounded to ${dtype}, bit for bit`, async () => {
      const bits = dtype === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
      // A matrix (uniform, its name's seed) and a norm (ones): the two recipes there are.
      for (const name of ['model.embed_tokens.weight', 'model.layers.2.mlp.down_proj.weight', 'model.norm.weight']) {
        const want = await weights.readF32(name);
        const n = want.length;
        const recipe = weights.recipe(name);
        const buf = backend.allocBuffer(2 * n);
        try {
          // Poisoned first (0xffff: NaN in both types), so an element the fill skips shows.
          backend.writeBuffer(buf, new Uint16Array(n).fill(0xffff));
          // The launch the backend makes for it (CudaBackend.fillOnDevice).
          const launch = { grid: [Math.min(Math.ceil(n / 256), 65535), 1, 1] as [number, number, number], block: [256, 1, 1] as [number, number, number] };
          if (recipe.kind === 'ones') backend.launchKernel(forStorage(FILL, dtype), launch, { out: buf, n: BigInt(n), value: 1 });
          else backend.launchKernel(forStorage(FILL_UNIFORM, dtype), launch, { out: buf, n: BigInt(n), seedLo: recipe.seed >>> 0, seedHi: Math.floor(recipe.seed / 2 ** 32) >>> 0, bound: recipe.bound });
          const got = new Uint16Array(n);
          backend.readBuffer(got, buf);
          let mismatches = 0, first = -1;
          for (let i = 0; i < n; i++)
            if (got[i] !== bits(want[i])) {
              mismatches++;
              if (first < 0) first = i;
            }
          expect(mismatches, `${name}: ${mismatches} of ${n} differ, first at ${first}: got 0x${got[first]?.toString(16)}, recipe 0x${first >= 0 ? bits(want[first]).toString(16) : ''}`).toBe(0);
          if (recipe.kind === 'uniform') expect(new Set(got).size, name).toBeGreaterThan(1000); // random, not a constant (bf16 has ~2100 values in the range)
        } finally {
          backend.freeBuffer(buf);
        }
      }
    });
});

describe.skipIf(target.skip !== null)(`${MODEL} on CUDA${target.emulated ? ' (kernel emulator)' : ''} against the CPU backend`, () => {
  const PROMPT = 24, STEPS = 4;
  let cpu: Tessera;
  let cuda: Tessera;
  beforeAll(async () => {
    cpu = await Tessera.load(MODEL, { device: 'cpu', maxNumSeqs: 1, maxLogitRows: 32 });
    cuda = await Tessera.load(MODEL, { device: 'cuda', maxNumSeqs: 1, maxLogitRows: 32 });
  });
  afterAll(async () => {
    await cpu?.close();
    await cuda?.close();
  });

  it('prefill logits at every position, then decode logits over the paged cache, within the 16-bit tolerance', async () => {
    const u = uniform(42);
    const prompt = Array.from({ length: PROMPT }, () => Math.floor(u() * 256));
    const v = cpu.runner.vocabSize;
    expect(cuda.runner.vocabSize).toBe(v);
    const a = new SequenceDriver(cpu, prompt), b = new SequenceDriver(cuda, prompt);
    /** |cuda - cpu| <= 0.02 (1 + max |cpu|) per row: bf16 keeps 8 bits; the logits are ~0.3 in size. */
    const check = (want: Float32Array, got: Float32Array, what: string) => {
      expect(got.length, what).toBe(want.length);
      for (let r = 0; r < want.length / v; r++) {
        let err = 0, scale = 0;
        for (let i = r * v; i < (r + 1) * v; i++) {
          err = Math.max(err, Math.abs(got[i] - want[i]));
          scale = Math.max(scale, Math.abs(want[i]));
        }
        expect(scale, `${what} row ${r}: logits of some size`).toBeGreaterThan(0.05);
        expect(err, `${what} row ${r}`).toBeLessThanOrEqual(0.02 * (1 + scale));
        // And far tighter than a different model would be: under a tenth of the logits' size.
        expect(err, `${what} row ${r}`).toBeLessThan(0.1 * scale);
      }
    };
    const want = await a.prefill();
    check(want, await b.prefill(), 'prefill');
    let next = argmax(want.subarray((PROMPT - 1) * v, PROMPT * v));
    for (let i = 0; i < STEPS; i++) {
      const w = await a.decode(next);
      check(w, await b.decode(next), `decode step ${i}`);
      next = argmax(w);
    }
  });
});
