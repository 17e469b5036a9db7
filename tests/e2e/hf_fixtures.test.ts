/**
 * Tiny random checkpoints of every architecture against Hugging Face transformers
 * (tools/make_hf_fixtures.py, run where transformers is installed): the same greedy tokens on
 * every backend present, and prompt logits within tolerance (f32 on the CPU, bf16 on CUDA; CUDA
 * runs again with --dtype float16, the kernels' fp16 entries, within the same bound).
 * Skipped, with a line saying so, while the fixtures have not been made.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cudaTarget } from '../cuda/emu/target.js';
import { Tessera } from '../../src/llm.js';
import { SequenceDriver } from '../helpers/forward.js';

const ROOT = path.join(import.meta.dirname, '../fixtures/hf');
const fixtures = existsSync(ROOT) ? readdirSync(ROOT).filter((d) => existsSync(path.join(ROOT, d, 'reference.json'))) : [];
if (fixtures.length === 0) console.log('hf fixtures: skipped: tests/fixtures/hf has none yet (python3 tools/make_hf_fixtures.py, where transformers is installed)');
// On the GPU, or without one on the kernel emulator (tests/cuda/emu); only while there are fixtures.
const cuda = fixtures.length > 0 ? cudaTarget() : { skip: 'no fixtures', emulated: false, title: '' };
const devices: Array<'cpu' | 'cuda' | 'cuda float16'> = cuda.skip === null ? ['cpu', 'cuda', 'cuda float16'] : ['cpu'];
if (cuda.skip && fixtures.length > 0) console.log(`hf fixtures: CUDA tier skipped: ${cuda.skip}`);
if (cuda.emulated) console.log(`hf fixtures: CUDA tier on the ${cuda.title}`);

describe.skipIf(fixtures.length === 0).each(devices)('%s vs transformers', (device) => {
  for (const name of fixtures) {
    it(`${name}: prompt logits and greedy tokens`, async () => {
      const ref = JSON.parse(readFileSync(path.join(ROOT, name, 'reference.json'), 'utf8')) as { prompt_ids: number[]; greedy_ids: number[]; prompt_logits: number[][] };
      const llm = await Tessera.load(path.join(ROOT, name), { device: device === 'cpu' ? 'cpu' : 'cuda', ...(device === 'cuda float16' ? { dtype: 'float16' as const } : {}), maxLogitRows: 128, kvBlockSize: 4 });
      try {
        const logits = await new SequenceDriver(llm, ref.prompt_ids).prefill();
        const vocab = ref.prompt_logits[0].length;
        const tol = device === 'cpu' ? 1e-3 : 5e-2;
        let worst = 0;
        ref.prompt_logits.forEach((row, t) => row.forEach((x, v) => (worst = Math.max(worst, Math.abs(logits[t * vocab + v] - x) / (1 + Math.abs(x))))));
        expect(worst).toBeLessThanOrEqual(tol);
        const r = await llm.complete(ref.prompt_ids, { temperature: 0, maxTokens: ref.greedy_ids.length, ignoreEos: true });
        expect(r.tokenIds).toEqual(ref.greedy_ids);
      } finally {
        await llm.close();
      }
    });
  }
});
