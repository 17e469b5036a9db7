/**
 * The demo model against its independent PyTorch reference (tools/demo_model.py via
 * tools/make_golden.py): tokenization, logits at every prompt position and at 32 greedy decode
 * steps within 1e-3, and the same greedy tokens through the whole engine.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../src/formats/safetensors.js';
import { DEMO_MODEL_DIR, Tessera } from '../../src/llm.js';
import { SequenceDriver, argmax, maxAbsDiff } from '../helpers/forward.js';

const FIXTURES = process.env.TESSERA_GOLDEN_DIR ?? path.join(import.meta.dirname, '../fixtures/demo');
const MODEL = process.env.TESSERA_GOLDEN_MODEL ?? DEMO_MODEL_DIR;
const TOLERANCE = 1e-3;

interface GoldenCase {
  name: string;
  text?: string;
  messages?: Array<{ role: string; content: string }>;
  prompt_ids: number[];
  greedy_ids: number[];
}
const golden = JSON.parse(readFileSync(path.join(FIXTURES, 'golden.json'), 'utf8')) as { steps: number; cases: GoldenCase[] };

describe.each([4, 16])('demo model vs PyTorch reference (KV block size %i)', (kvBlockSize) => {
  let llm: Tessera;
  let ref: SafetensorsFile;
  beforeAll(async () => {
    llm = await Tessera.load(MODEL, { device: 'cpu', kvBlockSize, maxNumSeqs: 4, maxLogitRows: 256 });
    ref = await SafetensorsFile.open(path.join(FIXTURES, 'golden.safetensors'));
  });
  afterAll(async () => {
    await ref.close();
    await llm.close();
  });

  for (const c of golden.cases) {
    it(`${c.name}: tokenizes to the reference ids`, () => {
      const ids = c.messages ? llm.tokenizer.encodeChat(c.messages, { addGenerationPrompt: true }) : llm.tokenizer.encode(c.text!);
      expect(ids).toEqual(c.prompt_ids);
    });

    it(`${c.name}: prompt logits and ${golden.steps} greedy decode steps match`, async () => {
      const driver = new SequenceDriver(llm, c.prompt_ids);
      const promptLogits = await driver.prefill();
      expect(maxAbsDiff(promptLogits, await ref.readF32(`${c.name}.prompt_logits`))).toBeLessThanOrEqual(TOLERANCE);
      const stepRef = await ref.readF32(`${c.name}.step_logits`);
      const v = driver.vocab;
      let logits = promptLogits.subarray(promptLogits.length - v);
      for (let i = 0; i < golden.steps; i++) {
        expect(maxAbsDiff(logits, stepRef.subarray(i * v, (i + 1) * v)), `step ${i}`).toBeLessThanOrEqual(TOLERANCE);
        const token = argmax(logits);
        expect(token, `greedy token ${i}`).toBe(c.greedy_ids[i]);
        logits = await driver.decode(token);
      }
    });

    it(`${c.name}: the engine generates the reference greedy tokens`, async () => {
      const result = await llm.complete(c.prompt_ids, { temperature: 0, maxTokens: golden.steps, ignoreEos: true });
      expect(result.tokenIds).toEqual(c.greedy_ids);
    });
  }
});
