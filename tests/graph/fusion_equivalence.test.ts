/**
 * The fusion passes change how a model runs, never what it computes: every tiny architecture is
 * loaded twice on the CPU, fused (the default) and unfused, and the same prompt gives the same
 * logits at every prefill position and over greedy decode steps on the paged cache (within f32
 * rounding of a different summation order: bias in the GEMM epilogue, one wider GEMM), and the
 * same greedy tokens through llm.complete. The fused Program must also be smaller.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Program } from '../../src/graph/program.js';
import { Tessera } from '../../src/llm.js';
import { SequenceDriver, argmax, maxAbsDiff } from '../helpers/forward.js';
import { VARIANTS, uniform, writeTinyCheckpoint, type TinyDir, type Variant } from '../helpers/tiny_checkpoint.js';

const TOL = 1e-5;
const PROMPT_LEN = 40;
const STEPS = 8;
const KV_BLOCK = 4;

/** Kernel calls per step (= summarize().kernelsPerStep of the graphs, see passes.test.ts). */
const CALLS: Record<Variant, { fused: number; unfused: number }> = {
  llama: { fused: 15, unfused: 38 },
  llama3: { fused: 14, unfused: 38 },
  mistral: { fused: 14, unfused: 38 },
  qwen2: { fused: 15, unfused: 44 },
  qwen3: { fused: 17, unfused: 42 },
  gpt2: { fused: 22, unfused: 44 },
  gpt2_bare: { fused: 22, unfused: 44 },
};

function randomPrompt(seed: number, length: number): number[] {
  const u = uniform(seed);
  return Array.from({ length }, () => Math.floor(u() * 256));
}

const observed: Record<string, { prefill: number; decode: number; arena: [number, number]; calls: [number, number] }> = {};

afterAll(() => {
  // TESSERA_REPORT_DIFFS=1 prints the largest differences seen, for reports.
  if (process.env.TESSERA_REPORT_DIFFS) console.log(JSON.stringify(observed, null, 1));
});

describe.each(VARIANTS)('%s: fused vs unfused', (variant) => {
  const prompt = randomPrompt(500 + VARIANTS.indexOf(variant), PROMPT_LEN);
  let tiny: TinyDir;
  let fused: Tessera;
  let unfused: Tessera;

  beforeAll(async () => {
    tiny = await writeTinyCheckpoint(variant);
    const opts = { device: 'cpu', kvBlockSize: KV_BLOCK, maxLogitRows: 128 } as const;
    fused = await Tessera.load(tiny.dir, { ...opts, fuse: true });
    unfused = await Tessera.load(tiny.dir, { ...opts, fuse: false });
  });
  afterAll(async () => {
    await fused?.close();
    await unfused?.close();
    await tiny?.remove();
  });

  it('the fused program has fewer calls, fused ops only there, and an arena no larger', () => {
    const f: Program = fused.runner.program, u: Program = unfused.runner.program;
    expect([f.calls.length, u.calls.length]).toEqual([CALLS[variant].fused, CALLS[variant].unfused]);
    expect(f.calls.length).toBeLessThan(u.calls.length);
    expect(f.arenaSize).toBeLessThanOrEqual(u.arenaSize);
    const fusedOps = new Set(['add_rmsnorm', 'add_layernorm', 'act_mul', 'matmul_glu', 'rope_kv_write', 'matmul_rope_kv']);
    expect(u.calls.filter((c) => fusedOps.has(c.op))).toEqual([]);
    // RoPE and the KV write in the q/k/v GEMM's epilogue, but after Qwen3's per-head q/k norm.
    expect(f.calls.filter((c) => c.op === (variant === 'qwen3' ? 'rope_kv_write' : 'matmul_rope_kv'))).toHaveLength(2);
    expect(f.calls.filter((c) => c.op === 'kv_write' || c.op === 'rope')).toEqual([]);
    // Same model, same states, same vocabulary.
    expect(f.states).toEqual(u.states);
    expect(f.vocabSize).toBe(u.vocabSize);
    expect([f.maxTokens, f.maxLogitRows]).toEqual([u.maxTokens, u.maxLogitRows]);
    observed[variant] = { ...observed[variant], arena: [f.arenaSize, u.arenaSize], calls: [f.calls.length, u.calls.length] };
  });

  it(`the same logits at every prefill position and over ${STEPS} greedy decode steps (within ${TOL})`, async () => {
    const a = new SequenceDriver(fused, prompt);
    const b = new SequenceDriver(unfused, prompt);
    const v = a.vocab;
    expect(b.vocab).toBe(v);
    let la = await a.prefill();
    let lb = await b.prefill();
    expect(la.length).toBe(PROMPT_LEN * v);
    const prefill = maxAbsDiff(la, lb);
    expect(prefill, 'prefill').toBeLessThanOrEqual(TOL);
    for (let p = 0; p < PROMPT_LEN; p++) expect(argmax(la.subarray(p * v, (p + 1) * v)), `position ${p}`).toBe(argmax(lb.subarray(p * v, (p + 1) * v)));
    la = la.slice(la.length - v);
    lb = lb.slice(lb.length - v);
    let decode = 0;
    for (let i = 0; i < STEPS; i++) {
      const token = argmax(la);
      expect(argmax(lb), `greedy token ${i}`).toBe(token);
      la = await a.decode(token);
      lb = await b.decode(token);
      expect(la.length).toBe(v);
      decode = Math.max(decode, maxAbsDiff(la, lb));
      expect(decode, `decode step ${i}`).toBeLessThanOrEqual(TOL);
    }
    // Not vacuous: the logits are O(1) and vary.
    expect(Math.max(...la.map(Math.abs))).toBeGreaterThan(0.1);
    observed[variant] = { ...observed[variant], prefill, decode };
  });

  it('llm.complete generates the same greedy tokens', async () => {
    const opts = { temperature: 0, maxTokens: STEPS, ignoreEos: true };
    const [a, b] = [await fused.complete(prompt, opts), await unfused.complete(prompt, opts)];
    expect(a.tokenIds).toHaveLength(STEPS);
    expect(a.tokenIds).toEqual(b.tokenIds);
    expect(a.usage).toEqual(b.usage);
  });
});
