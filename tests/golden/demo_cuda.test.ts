/**
 * The demo model on the CUDA backend (bf16 weights and activations, f32 accumulation; and again
 * with --dtype float16, the kernels' fp16 entries) against its PyTorch reference (f32): logits at
 * every prompt position and at each decode step fed the reference's own tokens, within a bf16
 * tolerance (fp16 is finer, so the same bound holds); greedy tokens through the engine equal to the
 * reference's up to the first step where the reference's two best logits are closer than that
 * tolerance (past a near tie, bf16 may rightly pick the other); and sampling on the device giving
 * the same tokens as sampling on the host, for seeded random requests batched together.
 * Without a GPU it runs on the kernel emulator (tests/cuda/emu: the kernels' own source on the
 * CPU behind the stand-in libcuda, an sm_80 device), and is skipped, with a line saying why, only
 * where neither is possible.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SeqOutput } from '../../src/engine/engine.js';
import { SafetensorsFile } from '../../src/formats/safetensors.js';
import { DEMO_MODEL_DIR, Tessera } from '../../src/llm.js';
import { resolveSamplingParams } from '../../src/sampling/params.js';
import { cudaTarget } from '../cuda/emu/target.js';
import { SequenceDriver } from '../helpers/forward.js';

const FIXTURES = path.join(import.meta.dirname, '../fixtures/demo');
const golden = JSON.parse(readFileSync(path.join(FIXTURES, 'golden.json'), 'utf8')) as { steps: number; cases: Array<{ name: string; prompt_ids: number[]; greedy_ids: number[] }> };
const target = cudaTarget();
if (target.skip) console.log(`demo model on CUDA: skipped: ${target.skip}`);
else console.log(`demo model on CUDA: ${target.title}`);

/** |cuda - ref| <= BF16_REL * (1 + max |ref| of the row): bf16 keeps 8 bits of mantissa. */
const BF16_REL = 0.02;

function rowError(got: Float32Array, ref: Float32Array): { err: number; tol: number; gap: number } {
  let err = 0, scale = 0, best = -Infinity, second = -Infinity;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(got[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
    if (ref[i] > best) [second, best] = [best, ref[i]];
    else if (ref[i] > second) second = ref[i];
  }
  return { err, tol: BF16_REL * (1 + scale), gap: best - second };
}

describe.skipIf(target.skip !== null).each(['bfloat16', 'float16'] as const)(`demo model on CUDA${target.emulated ? ' (kernel emulator)' : ''} (%s) vs its PyTorch reference`, (dtype) => {
  let llm: Tessera;
  let ref: SafetensorsFile;
  beforeAll(async () => {
    llm = await Tessera.load(DEMO_MODEL_DIR, { device: 'cuda', dtype, kvBlockSize: 16, maxNumSeqs: 8, maxLogitRows: 256 });
    expect(llm.info.computeDtype).toBe(dtype);
    ref = await SafetensorsFile.open(path.join(FIXTURES, 'golden.safetensors'));
  });
  afterAll(async () => {
    await ref?.close();
    await llm?.close();
  });

  for (const c of golden.cases) {
    it(`${c.name}: prompt and teacher-forced decode logits within the bf16 tolerance; greedy tokens up to a near tie`, async () => {
      const driver = new SequenceDriver(llm, c.prompt_ids);
      const v = driver.vocab;
      const prompt = await driver.prefill();
      const promptRef = await ref.readF32(`${c.name}.prompt_logits`);
      for (let t = 0; t < c.prompt_ids.length; t++) {
        const { err, tol } = rowError(prompt.subarray(t * v, (t + 1) * v), promptRef.subarray(t * v, (t + 1) * v));
        expect(err, `prompt position ${t}`).toBeLessThanOrEqual(tol);
      }
      const stepRef = await ref.readF32(`${c.name}.step_logits`);
      let logits = prompt.subarray(prompt.length - v);
      let tied = -1;
      for (let i = 0; i < golden.steps; i++) {
        const { err, tol, gap } = rowError(logits, stepRef.subarray(i * v, (i + 1) * v));
        expect(err, `decode step ${i}`).toBeLessThanOrEqual(tol);
        if (tied < 0 && gap < 2 * tol) tied = i;
        logits = await driver.decode(c.greedy_ids[i]);
      }
      const result = await llm.complete(c.prompt_ids, { temperature: 0, maxTokens: golden.steps, ignoreEos: true });
      const upTo = tied < 0 ? golden.steps : tied;
      expect(result.tokenIds.slice(0, upTo), `greedy tokens before the first near tie (step ${tied})`).toEqual(c.greedy_ids.slice(0, upTo));
    });
  }

  it('samples the same tokens on the device as on the host, for seeded requests batched together', async () => {
    const host = await Tessera.load(DEMO_MODEL_DIR, { device: 'cuda', dtype, kvBlockSize: 16, maxNumSeqs: 8, deviceSampling: false });
    try {
      expect(llm.engine.deviceSampling).toBe(true);
      expect(host.engine.deviceSampling).toBe(false);
      const prompts = ['In the beginning', 'And God said', 'The LORD is my shepherd', 'Blessed are the meek', 'Jesus wept.'].map((t) => llm.tokenizer.encode(t));
      const params = [
        { temperature: 0.8, topK: 40, seed: 1 },
        { temperature: 1, topP: 0.9, repetitionPenalty: 1.2, seed: 2 },
        { temperature: 0.7, minP: 0.05, presencePenalty: 0.5, frequencyPenalty: 0.3, logprobs: 3, seed: 3 },
        { temperature: 0, logprobs: 0, seed: 4 },
        { temperature: 1.3, seed: 5 },
      ].map((p) => resolveSamplingParams({ ...p, maxTokens: 48, ignoreEos: true }));
      const run = async (t: Tessera) => {
        const out = new Map<string, SeqOutput[]>();
        params.forEach((p, i) => t.engine.addRequest({ requestId: `r${i}`, promptIds: prompts[i], params: p }));
        while (t.engine.hasUnfinished) for (const o of await t.engine.step()) (out.get(o.requestId) ?? out.set(o.requestId, []).get(o.requestId)!).push(o);
        return out;
      };
      const [onDevice, onHost] = [await run(llm), await run(host)];
      for (let i = 0; i < params.length; i++) {
        const d = onDevice.get(`r${i}`)!, h = onHost.get(`r${i}`)!;
        expect(d.map((o) => o.tokenId), `request ${i}`).toEqual(h.map((o) => o.tokenId));
        d.forEach((o, k) => {
          if (h[k].logprob !== undefined) expect(o.logprob!, `request ${i} token ${k}`).toBeCloseTo(h[k].logprob!, 4);
        });
      }
    } finally {
      await host.close();
    }
  });
});
