/**
 * tessera check (src/cli/check.ts): every op of a model's Program on the GPU against the CPU
 * backend on the GPU op's own inputs. On the GPU, or without one on the kernel emulator
 * (tests/cuda/emu); skipped, saying why, only where neither is possible.
 *  - every supported architecture's tiny checkpoint, bf16 and fp16: every op within tolerance;
 *  - a broken kernel is named: with matmul_glu computing gelu for the model's silu on the GPU,
 *    exactly its outputs fail (the ops after it are judged on the inputs they were given, so
 *    they pass);
 *  - the command itself: the table, --json, and one sentence where it cannot run.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CUDA_OPS } from '../../src/backend/cuda/ops/index.js';
import { CHECK_TOLERANCE, checkModel, compareOutput } from '../../src/cli/check.js';
import { DEMO_MODEL_DIR, Tessera } from '../../src/llm.js';
import { runCli } from '../cli/helpers.js';
import { cudaTarget } from '../cuda/emu/target.js';
import { VARIANTS, uniform, writeTinyCheckpoint, type TinyDir } from '../helpers/tiny_checkpoint.js';

const target = cudaTarget();
if (target.skip) console.log(`tessera check: skipped: ${target.skip}`);

describe('compareOutput', () => {
  it('measures each element\'s error against its magnitude plus the output\'s RMS, and fails non-finite GPU values', () => {
    const t = (...v: number[]) => ({ data: Float32Array.from(v), shape: [v.length] });
    const rms = Math.sqrt((1 + 4 + 16) / 3);
    expect(compareOutput(t(1, -2, 4.1), t(1, -2, 4), 0.03)).toMatchObject({ maxAbsRef: 4, nonFinite: 0, ok: true });
    expect(compareOutput(t(1, -2, 4.1), t(1, -2, 4), 0.03).relError).toBeCloseTo(0.1 / (4 + rms), 6);
    // The same absolute error on a smaller element weighs more.
    expect(compareOutput(t(1, -2.1, 4), t(1, -2, 4), 0.03).relError).toBeCloseTo(0.1 / (2 + rms), 6);
    expect(compareOutput(t(1, -1.5, 4), t(1, -2, 4), 0.03)).toMatchObject({ maxAbsError: 0.5, ok: false });
    expect(compareOutput(t(NaN, 2), t(1, 2), 0.03)).toMatchObject({ nonFinite: 1, ok: false });
    expect(compareOutput(t(Infinity, 2), t(1, 2), 0.03)).toMatchObject({ nonFinite: 1, ok: false });
    // A slot the CPU left NaN (a cache slot neither side wrote) is not compared.
    expect(compareOutput(t(7, 2), t(NaN, 2), 0.03)).toMatchObject({ nonFinite: 0, relError: 0, ok: true });
    expect(compareOutput(t(0, 0), t(0, 0), 0.03)).toMatchObject({ relError: 0, ok: true });
    expect(compareOutput(t(1e-3, 0), t(0, 0), 0.03)).toMatchObject({ relError: Infinity, ok: false });
  });
});

describe.skipIf(target.skip !== null)(`tessera check on CUDA${target.emulated ? ' (kernel emulator)' : ''}`, () => {
  describe.each(VARIANTS.flatMap((v) => (['bfloat16', 'float16'] as const).map((d) => [v, d] as const)))('%s (%s)', (variant, dtype) => {
    let tiny: TinyDir;
    let llm: Tessera;
    beforeAll(async () => {
      tiny = await writeTinyCheckpoint(variant);
      llm = await Tessera.load(tiny.dir, { device: 'cuda', dtype, kvBlockSize: 4, maxNumSeqs: 2 });
    });
    afterAll(async () => {
      await llm?.close();
      await tiny?.remove();
    });

    it('every op of the prefill and of 3 decode steps of two sequences of different lengths is within tolerance of the CPU backend on its inputs', async () => {
      const u = uniform(VARIANTS.indexOf(variant) + 7);
      const prompt = Array.from({ length: 21 }, () => Math.floor(u() * 256));
      const report = await checkModel(llm, [prompt, prompt.slice(5)], 3);
      expect(report.promptTokens).toEqual([21, 16]);
      expect(report.steps.map((s) => s.tokens)).toEqual([37, 2, 2, 2]);
      for (const s of report.steps) expect(s.next).toHaveLength(2);
      expect(report.failures.map((f) => `${f.step} ${f.label}: ${f.relError}`)).toEqual([]);
      expect(report.ok).toBe(true);
      expect(report.tolerance).toBe(CHECK_TOLERANCE[dtype === 'float16' ? 'f16' : 'bf16']);
      expect(report.steps.map((s) => s.step)).toEqual(['prefill', 'decode 1', 'decode 2', 'decode 3']);
      const ops = report.ops.map((o) => o.op);
      for (const op of ['embedding', 'matmul', 'attention']) expect(ops, op).toContain(op);
      // Each step checks every call of the Program (one output each, two for rope_kv_write).
      const counts = new Set(report.steps.map((s) => s.checks));
      expect(counts.size).toBe(1);
      // The errors are the 16-bit roundings, well inside the bound, and not all zero.
      const worst = Math.max(...report.ops.map((o) => o.worst.relError));
      expect(worst).toBeGreaterThan(0);
      expect(worst).toBeLessThan(report.tolerance / 3);
    }, 120_000);
  });

  it('names the broken op: matmul_glu computing gelu for silu fails on exactly its own outputs', async () => {
    const llm = await Tessera.load(DEMO_MODEL_DIR, { device: 'cuda', kvBlockSize: 16, maxNumSeqs: 2 });
    const matmulGlu = CUDA_OPS.matmul_glu;
    CUDA_OPS.matmul_glu = (ctx) => {
      expect(ctx.attrs.act).toBe('silu');
      matmulGlu({ ...ctx, attrs: { ...ctx.attrs, act: 'gelu' } });
    };
    try {
      const report = await checkModel(llm, [llm.tokenizer.encode('Once upon a time')], 1);
      expect(report.ok).toBe(false);
      expect(new Set(report.failures.map((f) => f.op))).toEqual(new Set(['matmul_glu']));
      // Every gated-unit GEMM call of both steps (the demo model has 4 layers).
      expect(report.failures.map((f) => `${f.step} ${f.label}`)).toEqual(
        ['prefill', 'decode 1'].flatMap((s) => [0, 1, 2, 3].map((l) => `${s} model.layers.${l}.mlp.gate_proj+up_proj`)),
      );
      expect(report.failures[0].relError).toBeGreaterThan(0.3);
    } finally {
      CUDA_OPS.matmul_glu = matmulGlu;
      await llm.close();
    }
  }, 120_000);

  it('tessera check prints a line a step and the worst output of each op, and --json the report', async () => {
    const text = await runCli(['check', '--decode-steps', '2', 'In the beginning']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stderr).toMatch(/tessera check: every op on cuda:0 .* against the CPU backend on the same inputs \(2 sequences of (\d+), (\d+) prompt tokens, 2 decode steps\)/);
    const [, a, b] = /sequences of (\d+), (\d+) prompt/.exec(text.stderr)!;
    expect(Number(a) - Number(b)).toBe(3);
    const lines = text.stdout.split('\n');
    expect(lines.filter((l) => /^(prefill|decode \d) +\d+ tokens +\d+ outputs +worst \d/.test(l))).toHaveLength(3);
    for (const op of ['embedding', 'rmsnorm', 'matmul', 'matmul_add', 'matmul_rope_kv', 'attention', 'matmul_glu']) expect(text.stdout, op).toMatch(new RegExp(`^  ${op} +\\d+ outputs +\\S+  ok  `, 'm'));
    expect(lines.at(-2)).toMatch(/^all \d+ outputs within tolerance \(0.03125, bf16\)$/);
    const json = await runCli(['check', '--decode-steps', '1', '--json']);
    expect(json.code, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout);
    expect(report).toMatchObject({ ok: true, storage: 'bf16', failures: [] });
    expect(report.steps).toHaveLength(2);
    const one = await runCli(['check', '--decode-steps', '1', '--seqs', '1', '--json']);
    expect(one.code, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout).promptTokens).toHaveLength(1);
  }, 120_000);
});

describe('tessera check: what it refuses', () => {
  it('says in one sentence that it needs a GPU backend, and checks its flags', async () => {
    const cpu = await runCli(['check', '--device', 'cpu']);
    expect(cpu.code).toBe(1);
    expect(cpu.stderr.trim()).toMatch(/^tessera: tessera check compares a GPU backend with the CPU backend; this model runs on cpu \(asked for\)\. Run it where there is a GPU \(--device cuda\)\.$/m);
    for (const [args, message] of [
      [['--decode-steps', '300'], 'tessera: --decode-steps must be 0 to 256, not 300.'],
      [['--decode-steps', 'x'], 'tessera: --decode-steps takes a whole number, not "x".'],
      [['a', 'b'], 'tessera: tessera check takes one prompt, not 2 (quote it).'],
      [['--seqs', '0'], 'tessera: --seqs must be 1 to 16, not 0.'],
    ] as const) {
      const r = await runCli(['check', ...args]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr.trim()).toBe(message);
    }
  });
});
