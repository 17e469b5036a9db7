import { describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { openCheckpoint } from '../../src/formats/checkpoint.js';
import { Tessera } from '../../src/llm.js';

describe('synthetic checkpoints', () => {
  it('synthetic:llama-3-8b has Llama-3-8B shape and parameter count, without reading anything', async () => {
    const info = await Tessera.inspect('synthetic:llama-3-8b');
    expect(info.numParameters).toBe(8_030_261_248);
    expect(info.config).toMatchObject({ hiddenSize: 4096, numLayers: 32, numHeads: 32, numKvHeads: 8, headDim: 128, vocabSize: 128256, tieWordEmbeddings: false });
    expect(info.dtypes).toEqual({ BF16: 291 });
  });

  it('draws the same weights for the same name, ones for norms, within the bound', async () => {
    const ckpt = await openCheckpoint('synthetic:tiny-4k');
    const a = await ckpt.weights.readF32('model.layers.1.mlp.up_proj.weight');
    const b = await ckpt.weights.readF32('model.layers.1.mlp.up_proj.weight');
    const c = await ckpt.weights.readF32('model.layers.1.mlp.gate_proj.weight');
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    const bound = 0.02 * Math.sqrt(3);
    expect(a.reduce((m, x) => Math.max(m, Math.abs(x)), 0)).toBeLessThanOrEqual(bound);
    const std = Math.sqrt(a.reduce((s, x) => s + x * x, 0) / a.length);
    expect(std).toBeGreaterThan(0.019);
    expect(std).toBeLessThan(0.021);
    expect([...(await ckpt.weights.readF32('model.norm.weight'))].every((x) => x === 1)).toBe(true);
  });

  it('runs end to end with the byte-level tokenizer and a 4k context', async () => {
    const llm = await Tessera.load('synthetic:tiny-4k', { device: 'cpu', maxNumSeqs: 2 });
    try {
      expect(llm.info.maxModelLen).toBe(4096);
      const r = await llm.complete(Array(1500).fill(65), { temperature: 0, maxTokens: 4, ignoreEos: true });
      expect(r.tokenIds.length).toBe(4);
    } finally {
      await llm.close();
    }
  });

  it('names the presets when given an unknown one', async () => {
    await expect(Tessera.inspect('synthetic:gpt-5')).rejects.toThrow(TesseraError);
    await expect(Tessera.inspect('synthetic:gpt-5')).rejects.toThrow(/presets are synthetic:llama-3-8b, synthetic:tiny-4k/);
  });
});
