/**
 * tessera bench kernels without a GPU: the case list built from bench/kernel_shapes.json (every
 * case a valid call of its op, with the FLOPs and fewest bytes its roofline needs), the rotation
 * of input sets, the rates against the ceilings, and a scaled-down copy of every case run
 * through the CPU backend's op against a float64 computation of the same case.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { HostTensor } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/backend.js';
import { defaultShapesPath, expandCases, gluComparisons, normComparisons, rates, relativeError, residualComparisons, ropeComparisons, rotationSets, type KernelShapes } from '../../src/cli/bench_kernels.js';
import { OPS, outputShapes } from '../../src/graph/ops.js';

const shapes = JSON.parse(readFileSync(defaultShapesPath(), 'utf8')) as KernelShapes;

describe('bench kernels: the cases', () => {
  const cases = expandCases(shapes, ['gemm', 'attention', 'memory']);

  it('covers every projection at every M, every attention case and every memory-bound op', () => {
    const gemm = cases.filter((c) => c.family === 'gemm' && c.dtype === 'bf16' && c.op === 'matmul' && c.attrs.rmsEps === undefined);
    // Every M with the tile kernel and the Hopper kernel's rungs (sm90, sm90s: left out at run
    // time where its plan does not split, sm90k), M <= 8 with the GEMV as well, and M > 8 with the
    // ping-pong and cluster Hopper kernels (sm90p, sm90c, sm90pc) instead; M <= 64 with the tile
    // kernel's split reduced in a second launch (` reduce`) too.
    const gemmRungs = (m: number) => (m <= 8 ? 5 : 7);
    expect(gemm.length).toBe(shapes.gemm.projections.length * shapes.gemm.m.reduce((n, m) => n + gemmRungs(m) + (m <= 64 ? 1 : 0), 0));
    const reduce = gemm.filter((c) => c.name.endsWith(' reduce'));
    expect(reduce.length).toBe(shapes.gemm.projections.length * shapes.gemm.m.filter((m) => m <= 64).length);
    for (const c of reduce) expect(c.attrs, c.name).toEqual({ gemmVariant: 'tiles', gemmSplitMerge: 'separate' });
    for (const v of ['sm90p', 'sm90c', 'sm90pc']) expect(gemm.filter((c) => c.attrs.gemmVariant === v).every((c) => c.gemm!.m > 8 && c.name.endsWith(` ${v}`))).toBe(true);
    expect(gemm.filter((c) => c.attrs.gemmVariant === 'sm90c').length).toBe(shapes.gemm.projections.length * shapes.gemm.m.filter((m) => m > 8).length);
    // The residual epilogue: gemm.residual's projections at its M, the same ladder, cuBLASLt given
    // the residual as C; 2 bytes more per output element read than the plain product.
    const res = shapes.gemm.residual!;
    const withRes = cases.filter((c) => c.op === 'matmul_add');
    const resProjections = shapes.gemm.projections.filter((p) => res.models.includes(p.model) && res.names.includes(p.name));
    expect(resProjections.map((p) => p.name)).toEqual(['o', 'down']);
    expect(withRes.length).toBe(resProjections.length * res.m.reduce((n, m) => n + gemmRungs(m), 0));
    for (const c of withRes) {
      expect(c.name, c.name).toMatch(/ K\d+ \+res( gemv| sm90(?:pc|[spkc])?)?$/);
      expect(c.gemm!.residual).toBe(true);
      expect(c.inputs[2]).toEqual({ shape: [c.gemm!.m, c.gemm!.n], bound: 1 });
      const plain = cases.find((p) => p.op === 'matmul' && p.name === c.name.replace(' +res', ''))!;
      expect(c.bytes - plain.bytes, c.name).toBe(2 * c.gemm!.m * c.gemm!.n);
      expect(c.flops).toBe(plain.flops);
    }
    expect(withRes.map((c) => c.name)).toContain('gemm llama-3-8b down M8192 N4096 K14336 +res sm90');
    // After every memory-bound case (the comparison needs them), before the fp16 ones.
    const firstRes = cases.indexOf(withRes[0]);
    expect(cases.slice(firstRes, firstRes + withRes.length)).toEqual(withRes);
    expect(Math.max(...cases.map((c, i) => (c.family === 'memory' ? i : -1)))).toBeLessThan(firstRes);
    // The gated unit in the epilogue: gemm.glu's gate_up at its M, the same ladder (and the
    // tile kernel's separate reduce where it splits), y [M, N / 2]: half the plain product's output
    // bytes; no cuBLASLt (it has no such epilogue). After the residual cases, before fp16.
    const glu = shapes.gemm.glu!;
    const withGlu = cases.filter((c) => c.op === 'matmul_glu');
    const gluProjections = shapes.gemm.projections.filter((p) => glu.models.includes(p.model) && glu.names.includes(p.name));
    expect(gluProjections.map((p) => p.name)).toEqual(['gate_up']);
    expect(withGlu.length).toBe(gluProjections.length * glu.m.reduce((n, m) => n + gemmRungs(m) + (m <= 64 ? 1 : 0), 0));
    for (const c of withGlu) {
      expect(c.name, c.name).toMatch(/ K\d+ \+glu( reduce| gemv| sm90(?:pc|[spkc])?)?$/);
      expect(c.gemm!.glu).toBe(true);
      expect(c.attrs.act).toBe('silu');
      expect(c.outputShapes).toEqual([[c.gemm!.m, c.gemm!.n / 2]]);
      const plain = cases.find((p) => p.op === 'matmul' && p.dtype === 'bf16' && p.name === c.name.replace(' +glu', ''))!;
      expect(plain.bytes - c.bytes, c.name).toBe(c.gemm!.m * c.gemm!.n);
      expect(c.flops).toBe(plain.flops);
      // silu_mul at [M, I], in the memory family.
      expect(cases.filter((a) => a.family === 'memory' && a.name === `silu_mul R${c.gemm!.m} H${c.gemm!.n / 2}`), c.name).toHaveLength(1);
    }
    expect(withGlu.map((c) => c.name)).toContain('gemm llama-3-8b gate_up M1 N28672 K4096 +glu reduce');
    const firstGlu = cases.indexOf(withGlu[0]);
    expect(firstGlu).toBe(firstRes + withRes.length);
    expect(cases.slice(firstGlu, firstGlu + withGlu.length)).toEqual(withGlu);
    // Llama-3-8B's plain GEMMs come first, then attention and the memory-bound ops, then the
    // 70B GEMMs: a run cut by its time limit has every family at one model's shapes.
    const rank = (c: (typeof cases)[number]) =>
      c.family === 'gemm' && c.op === 'matmul' && c.dtype === 'bf16' && c.attrs.rmsEps === undefined ? (c.name.startsWith('gemm llama-3-8b ') ? 0 : 3) : c.family === 'attention' ? 1 : c.family === 'memory' ? 2 : 4;
    const ranks = cases.map(rank);
    expect(ranks).toEqual([...ranks].sort((a, b) => a - b));
    expect(new Set(ranks)).toEqual(new Set([0, 1, 2, 3, 4]));
    // And the fp16 cases: gemm.f16's models and M, the same ladder, named and flagged for the fp16 entries.
    const f16 = cases.filter((c) => c.family === 'gemm' && c.dtype === 'f16');
    const f16Projections = shapes.gemm.projections.filter((p) => shapes.gemm.f16!.models.includes(p.model)).length;
    expect(f16.length).toBe(f16Projections * shapes.gemm.f16!.m.reduce((n, m) => n + gemmRungs(m) + (m <= 64 ? 1 : 0), 0));
    for (const c of f16) {
      expect(c.attrs.storageDtype, c.name).toBe('f16');
      expect(c.name, c.name).toMatch(/ K\d+ f16( reduce| gemv| sm90(?:pc|[spkc])?)?$/);
    }
    expect(f16.map((c) => c.name)).toContain('gemm llama-3-8b qkv M8192 N6144 K4096 f16 sm90');
    // Last in the run, so that a run cut short by its time limit loses them before any bf16 case.
    expect(cases.findIndex((c) => c.dtype === 'f16')).toBe(cases.length - f16.length);
    expect(gemm.filter((c) => c.attrs.gemmVariant === 'gemv').every((c) => c.gemm!.m <= 8 && c.name.endsWith(' gemv'))).toBe(true);
    expect(gemm.map((c) => c.name)).toContain('gemm llama-3-70b gate_up M8192 N57344 K8192');
    // Every prefill case three times (the mma.sync kernel, then the two Hopper rungs checked against
    // it), every decode case twice (split-KV's merge fused, then in a second launch, checked against it).
    expect(cases.filter((c) => c.family === 'attention').length).toBe(3 * shapes.attention.prefill.length + 2 * shapes.attention.decode.length);
    const separate = cases.filter((c) => c.attrs.attentionCombine === 'separate');
    expect(separate.length).toBe(shapes.attention.decode.length);
    for (const r of separate) {
      expect(r.name, r.name).toMatch(/^attention decode .* combine$/);
      expect(r.ladderBase!.name).toBe(r.name.slice(0, -' combine'.length));
      expect(cases.find((c) => c.name === r.ladderBase!.name)!.attrs.attentionCombine).toBeUndefined();
    }
    const rungs = cases.filter((c) => c.attrs.attentionVariant === 'sm90' || c.attrs.attentionVariant === 'sm90o');
    expect(rungs.length).toBe(2 * shapes.attention.prefill.length);
    for (const r of rungs) {
      const suffix = ` ${r.attrs.attentionVariant as string}`;
      expect(r.name.endsWith(suffix), r.name).toBe(true);
      expect(r.ladderBase!.name).toBe(r.name.slice(0, -suffix.length));
      expect(cases.find((c) => c.name === r.ladderBase!.name)!.attrs.attentionVariant).toBe('tiles');
    }
    // hd 256 has no sm90 kernel: the rung is listed and says why it is skipped.
    expect(cases.find((c) => c.name === 'attention prefill B1 S8192 H16 KV16 hd256 causal sm90')!.unsupported).toBe('the sm90 prefill kernel does not take it: head dim 256 is not 64 or 128');
    expect(cases.find((c) => c.name === 'attention prefill B1 S8192 H32 KV8 hd128 causal sm90')!.unsupported).toBeUndefined();
    for (const op of shapes.memoryBound.ops) expect(cases.some((c) => c.name.startsWith(`${op} `)), op).toBe(true);
    expect(expandCases(shapes, ['gemm'], 'lm_head M1 ').map((c) => c.name)).toEqual([
      'gemm llama-3-8b lm_head M1 N128256 K4096',
      'gemm llama-3-8b lm_head M1 N128256 K4096 reduce', // left out at run time: 1002 tiles, no split
      'gemm llama-3-8b lm_head M1 N128256 K4096 gemv',
      'gemm llama-3-8b lm_head M1 N128256 K4096 sm90',
      'gemm llama-3-8b lm_head M1 N128256 K4096 sm90s',
      'gemm llama-3-8b lm_head M1 N128256 K4096 sm90k',
      'gemm llama-3-70b lm_head M1 N128256 K8192',
      'gemm llama-3-70b lm_head M1 N128256 K8192 reduce',
      'gemm llama-3-70b lm_head M1 N128256 K8192 gemv',
      'gemm llama-3-70b lm_head M1 N128256 K8192 sm90',
      'gemm llama-3-70b lm_head M1 N128256 K8192 sm90s',
      'gemm llama-3-70b lm_head M1 N128256 K8192 sm90k',
      'gemm llama-3-8b lm_head M1 N128256 K4096 f16',
      'gemm llama-3-8b lm_head M1 N128256 K4096 f16 reduce',
      'gemm llama-3-8b lm_head M1 N128256 K4096 f16 gemv',
      'gemm llama-3-8b lm_head M1 N128256 K4096 f16 sm90',
      'gemm llama-3-8b lm_head M1 N128256 K4096 f16 sm90s',
      'gemm llama-3-8b lm_head M1 N128256 K4096 f16 sm90k',
    ]);
  });

  it('gives each case inputs its op accepts and the output shapes the op infers', () => {
    for (const c of cases) {
      const inferred = outputShapes(OPS[c.op], c.inputs.map((t) => t.shape), c.attrs);
      expect(inferred, c.name).toEqual(c.outputShapes);
      if (c.op === 'attention') {
        const [, , queryStart, contextLens, tables] = c.inputs as HostTensor[];
        expect(queryStart.data[queryStart.data.length - 1]).toBe(c.step.numTokens);
        expect([...contextLens.data]).toEqual([...c.step.contextLens]);
        // Every block of the pool is owned by exactly one sequence.
        const owned = [...tables.data].sort((a, b) => a - b);
        expect(owned).toEqual(Array.from({ length: c.inputs[1].shape[1] }, (_, i) => i));
      }
    }
  });

  it('counts FLOPs and the fewest bytes as the roofline needs them', () => {
    const qkv = cases.find((c) => c.name === 'gemm llama-3-8b qkv M1 N6144 K4096')!;
    expect(qkv.flops).toBe(2 * 6144 * 4096);
    expect(qkv.bytes).toBe(2 * (4096 + 6144 * 4096 + 6144));
    const causal = cases.find((c) => c.name === 'attention prefill B1 S8192 H32 KV8 hd128 causal')!;
    expect(causal.flops).toBe(4 * 32 * 128 * ((8192 * 8193) / 2));
    const full = cases.find((c) => c.name === 'attention prefill B1 S8192 H32 KV8 hd128 full')!;
    expect(full.flops).toBe(4 * 32 * 128 * 8192 * 8192);
    expect(full.attrs.causal).toBe(false);
    expect(causal.attrs.causal).toBe(true);
    const decode = cases.find((c) => c.name === 'attention decode B1 ctx32768 H32 KV8 hd128')!;
    expect(decode.bytes).toBe(2 * (2 * 32768 * 8 * 128 + 2 * 32 * 128));
    expect(cases.find((c) => c.name === 'add_rmsnorm R4096 H4096')!.bytes).toBe(2 * (4 * 4096 * 4096 + 4096));
    expect(cases.find((c) => c.name === 'silu_mul R4096 H8192')!.bytes).toBe(2 * 3 * 4096 * 8192);
  });

  it('rotates enough input sets to read past twice the L2, within the memory budget', () => {
    const l2 = 50 * 2 ** 20;
    expect(rotationSets(2 ** 30, l2, 2 ** 33)).toBe(1);
    expect(rotationSets(10 * 2 ** 20, l2, 2 ** 33)).toBe(10);
    expect(rotationSets(2 ** 10, l2, 2 ** 33)).toBe(16);
    expect(rotationSets(10 * 2 ** 20, l2, 30 * 2 ** 20)).toBe(3);
  });

  it('rates a case against the measured ceilings and gives its floor', () => {
    const r = rates({ flops: 1e12, bytes: 1e9 }, 2, { copyBytesPerS: 3e12, gemmFlopsPerS: 8e14 });
    expect(r.tflops).toBe(500);
    expect(r.gbs).toBe(500);
    expect(r.percentOfCopy).toBeCloseTo(16.7, 1);
    expect(r.percentOfGemm).toBe(62.5);
    expect(r.floorMs).toBe(1.25);
    expect(relativeError(Float32Array.of(1, 2, 3), Float32Array.of(1, 2, 3))).toBe(0);
  });
});

describe('bench kernels: the residual epilogue against add + norm, from one run', () => {
  const t = (name: string, medianMs: number) => ({ name, tessera: { medianMs } });

  it('adds matmul_add + rmsnorm and matmul + add_rmsnorm at the same rows and hidden size, per variant', () => {
    const got = residualComparisons([
      t('gemm llama-3-8b o M256 N4096 K4096', 0.03),
      t('gemm llama-3-8b o M256 N4096 K4096 +res', 0.031),
      t('gemm llama-3-8b o M256 N4096 K4096 sm90', 0.02),
      t('gemm llama-3-8b o M256 N4096 K4096 +res sm90', 0.0205),
      t('rmsnorm R256 H4096', 0.004),
      t('add_rmsnorm R256 H4096', 0.006),
      // No norm cases at 16 rows: no comparison there.
      t('gemm llama-3-8b o M16 N4096 K4096', 0.02),
      t('gemm llama-3-8b o M16 N4096 K4096 +res', 0.02),
      { name: 'gemm llama-3-8b o M4096 N4096 K4096 +res' }, // skipped or failed: no timing
    ]);
    expect(got).toEqual([
      { gemm: 'gemm llama-3-8b o M256 N4096 K4096', m: 256, hidden: 4096, epilogueMs: 0.035, separateMs: 0.036, speedup: 1.029 },
      { gemm: 'gemm llama-3-8b o M256 N4096 K4096 sm90', m: 256, hidden: 4096, epilogueMs: 0.0245, separateMs: 0.026, speedup: 1.061 },
    ]);
  });

  it('the shapes pair every +res case at 256 and 4096 rows with norm cases of its hidden size', () => {
    const shapes = JSON.parse(readFileSync(defaultShapesPath(), 'utf8')) as KernelShapes;
    const names = expandCases(shapes, ['gemm', 'memory']).map((c) => c.name);
    const fake = names.map((name) => t(name, 1));
    const pairs = residualComparisons(fake);
    // o and down at M 256 and 4096, each variant (tiles, sm90, sm90s, sm90p, sm90k, sm90c, sm90pc).
    expect(pairs.map((p) => p.gemm).sort()).toEqual(
      ['o', 'down'].flatMap((p) => [256, 4096].flatMap((m) => ['', ' sm90', ' sm90s', ' sm90p', ' sm90k', ' sm90c', ' sm90pc'].map((v) => `gemm llama-3-8b ${p} M${m} N4096 K${p === 'o' ? 4096 : 14336}${v}`))).sort(),
    );
    expect(pairs.every((p) => p.speedup === 1)).toBe(true);
  });
});

describe('bench kernels: the gated-unit epilogue against GEMM + silu_mul, from one run', () => {
  const t = (name: string, medianMs: number) => ({ name, tessera: { medianMs } });

  it('adds matmul + silu_mul at [M, N / 2] per rung, against matmul_glu', () => {
    const got = gluComparisons([
      t('gemm llama-3-8b gate_up M1 N28672 K4096', 0.08),
      t('gemm llama-3-8b gate_up M1 N28672 K4096 +glu', 0.081),
      t('gemm llama-3-8b gate_up M1 N28672 K4096 reduce', 0.085),
      t('gemm llama-3-8b gate_up M1 N28672 K4096 +glu reduce', 0.086),
      t('silu_mul R1 H14336', 0.004),
      // No silu_mul at 16 rows: no comparison there.
      t('gemm llama-3-8b gate_up M16 N28672 K4096', 0.09),
      t('gemm llama-3-8b gate_up M16 N28672 K4096 +glu', 0.09),
      { name: 'gemm llama-3-8b gate_up M8192 N28672 K4096 +glu' },
    ]);
    expect(got).toEqual([
      { gemm: 'gemm llama-3-8b gate_up M1 N28672 K4096', m: 1, inner: 14336, epilogueMs: 0.081, separateMs: 0.084, speedup: 1.037 },
      { gemm: 'gemm llama-3-8b gate_up M1 N28672 K4096 reduce', m: 1, inner: 14336, epilogueMs: 0.086, separateMs: 0.089, speedup: 1.035 },
    ]);
  });

  it('the shapes pair every +glu case with its plain GEMM case and silu_mul', () => {
    const names = expandCases(shapes, ['gemm', 'memory']).map((c) => c.name);
    const pairs = gluComparisons(names.map((name) => t(name, 1)));
    expect(pairs.length).toBe(names.filter((n) => n.includes(' +glu')).length);
    expect(pairs.every((p) => p.speedup === 2)).toBe(true);
  });
});

describe('bench kernels: the folded norm against rmsnorm + GEMM, from one run', () => {
  const t = (name: string, medianMs: number) => ({ name, tessera: { medianMs } });

  it('adds rmsnorm at [M, K] and the plain GEMM per rung, against the GEMM with the norm folded in', () => {
    expect(
      normComparisons([
        t('gemm llama-3-8b qkv M1 N6144 K4096', 0.02),
        t('gemm llama-3-8b qkv M1 N6144 K4096 +rms', 0.0205),
        t('gemm llama-3-8b qkv M1 N6144 K4096 gemv', 0.018),
        t('gemm llama-3-8b qkv M1 N6144 K4096 +rms gemv', 0.0182),
        t('rmsnorm R1 H4096', 0.003),
        t('gemm llama-3-8b qkv M16 N6144 K4096 +rms', 0.02),
      ]),
    ).toEqual([
      { gemm: 'gemm llama-3-8b qkv M1 N6144 K4096', m: 1, hidden: 4096, foldedMs: 0.0205, separateMs: 0.023, speedup: 1.122 },
      { gemm: 'gemm llama-3-8b qkv M1 N6144 K4096 gemv', m: 1, hidden: 4096, foldedMs: 0.0182, separateMs: 0.021, speedup: 1.154 },
    ]);
  });

  it('the shapes pair every +rms case with its plain GEMM case and rmsnorm, and run it without cuBLASLt', () => {
    const cases = expandCases(shapes, ['gemm', 'memory']);
    const rms = cases.filter((c) => c.name.includes(' +rms'));
    expect(rms.length).toBe(shapes.gemm.rms!.m.reduce((n, m) => n + (m <= 8 ? 5 : 7) + (m <= 64 ? 1 : 0), 0));
    for (const c of rms) {
      expect([c.op, c.attrs.rmsEps, c.gemm!.epilogueOnly], c.name).toEqual(['matmul', 1e-5, true]);
    }
    const pairs = normComparisons(cases.map((c) => t(c.name, 1)));
    expect(pairs.length).toBe(rms.length);
    expect(pairs.every((p) => p.speedup === 2)).toBe(true);
  });
});

describe('bench kernels: RoPE and the KV write in the q/k/v epilogue against GEMM + rope_kv_write, from one run', () => {
  const t = (name: string, medianMs: number) => ({ name, tessera: { medianMs } });

  it('adds rope_kv_write over the same rows and heads and the plain GEMM per rung, against matmul_rope_kv', () => {
    expect(
      ropeComparisons([
        t('gemm llama-3-8b qkv M1 N6144 K4096', 0.02),
        t('gemm llama-3-8b qkv M1 N6144 K4096 +rope', 0.0201),
        t('gemm llama-3-8b qkv M1 N6144 K4096 sm90k', 0.03),
        t('gemm llama-3-8b qkv M1 N6144 K4096 +rope sm90k', 0.031),
        t('rope_kv_write R1 H32 KV8 hd128', 0.0025),
        // Other heads (another q/k/v width): not this GEMM's companion.
        t('rope_kv_write R16 H64 KV8 hd128', 0.003),
        t('gemm llama-3-8b qkv M16 N6144 K4096', 0.02),
        t('gemm llama-3-8b qkv M16 N6144 K4096 +rope', 0.02),
      ]),
    ).toEqual([
      { gemm: 'gemm llama-3-8b qkv M1 N6144 K4096', m: 1, epilogueMs: 0.0201, separateMs: 0.0225, speedup: 1.119 },
      { gemm: 'gemm llama-3-8b qkv M1 N6144 K4096 sm90k', m: 1, epilogueMs: 0.031, separateMs: 0.0325, speedup: 1.048 },
    ]);
  });

  it('the shapes pair every +rope case with its plain GEMM case and rope_kv_write, and run it as matmul_rope_kv into a cache without cuBLASLt', () => {
    const cases = expandCases(shapes, ['gemm', 'memory']);
    const rope = cases.filter((c) => c.name.includes(' +rope'));
    expect(rope.length).toBe(shapes.gemm.rope!.m.reduce((n, m) => n + (m <= 8 ? 5 : 7) + (m <= 64 ? 1 : 0), 0));
    for (const c of rope) {
      expect([c.op, c.attrs.numHeads, c.attrs.numKvHeads, c.attrs.headDim, c.gemm!.epilogueOnly], c.name).toEqual(['matmul_rope_kv', 32, 8, 128, true]);
      const m = c.gemm!.m;
      expect(c.outputShapes, c.name).toEqual([[m, 4096], [2, Math.ceil(m / 16) + 1, 16, 8, 128]]);
      expect([...(c.step.slotMapping as Int32Array)], c.name).toEqual(Array.from({ length: m }, (_, i) => i));
    }
    const pairs = ropeComparisons(cases.map((c) => t(c.name, 1)));
    expect(pairs.length).toBe(rope.length);
    expect(pairs.every((p) => p.speedup === 2)).toBe(true);
  });
});

describe('bench kernels: every case runs through the CPU backend at a small size', () => {
  const small: KernelShapes = {
    gemm: {
      m: [1, 5],
      projections: [
        { model: 'toy', name: 'proj', n: 24, k: 16 },
        { model: 'toy', name: 'qkv', n: 128, k: 16 },
      ],
      ceiling: { m: 8, n: 8, k: 8 },
      glu: { models: ['toy'], names: ['proj'], m: [1] },
      rms: { models: ['toy'], names: ['proj'], m: [1] },
      // qkv is memoryBound.rope's 4 + 2 x 2 heads of 16; proj's 24 columns are not, and are left out.
      rope: { models: ['toy'], names: ['proj', 'qkv'], m: [1] },
    },
    attention: {
      prefill: [
        { heads: 4, kvHeads: 2, headDim: 16, batch: 2, seqlen: 9, causal: true },
        { heads: 4, kvHeads: 2, headDim: 16, batch: 2, seqlen: 9, causal: false },
      ],
      decode: [{ heads: 4, kvHeads: 1, headDim: 16, batch: 3, context: 21 }],
      kvBlockSize: 4,
    },
    memoryBound: { rows: [3], hidden: [32], ops: ['rmsnorm', 'add_rmsnorm', 'add_layernorm', 'silu_mul', 'rope_kv_write'], rope: { heads: 4, kvHeads: 2, headDim: 16, kvBlockSize: 4 } },
  };

  it('produces finite outputs of the declared shapes from random inputs', async () => {
    const cpu = new CpuBackend();
    let seed = 7;
    const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
    const cases = expandCases(small, ['gemm', 'attention', 'memory']);
    // Two projections at M 1 and 5, each with the tiles, its separate reduce, the GEMV and the
    // Hopper kernel's three rungs, and the same six as matmul_glu and as matmul with a folded norm
    // at M 1 (proj), and as matmul_rope_kv (qkv); prefill three times (the sm90 rungs), decode
    // twice (the combine's rungs); the memory ops, silu_mul at the gated unit's [1, 12], rmsnorm
    // at the folded norm's [1, 16] and rope_kv_write at one row of 4 heads.
    expect(cases.length).toBe(24 + 6 + 6 + 6 + 8 + 5 + 3);
    for (const c of cases) {
      const inputs: HostTensor[] = c.inputs.map((t) => ('bound' in t ? { data: Float32Array.from({ length: t.shape.reduce((a, d) => a * d, 1) }, () => rnd() * t.bound), shape: t.shape } : t));
      const outs = await cpu.runOp(c.op, c.attrs, inputs, c.outputShapes, c.step);
      outs.forEach((o, i) => {
        expect(o.shape, c.name).toEqual(c.outputShapes[i]);
        expect(o.data.every(Number.isFinite), c.name).toBe(true);
      });
      if (c.op === 'matmul') {
        const [x, w] = inputs, [m, k] = x.shape, n = w.shape[0];
        const ref = new Float32Array(m * n);
        for (let i = 0; i < m; i++) {
          let ss = 0;
          for (let t = 0; t < k; t++) ss += x.data[i * k + t] ** 2;
          const scale = c.attrs.rmsEps === undefined ? 1 : 1 / Math.sqrt(ss / k + (c.attrs.rmsEps as number));
          for (let j = 0; j < n; j++) {
            let acc = 0;
            for (let t = 0; t < k; t++) acc += x.data[i * k + t] * w.data[j * k + t];
            ref[i * n + j] = acc * scale;
          }
        }
        expect(relativeError(outs[0].data as Float32Array, ref)).toBeLessThan(1e-6);
      }
      if (c.op === 'matmul_glu') {
        const [x, w] = inputs, [m, k] = x.shape, half = w.shape[0] / 2;
        const ref = new Float32Array(m * half);
        for (let i = 0; i < m; i++)
          for (let j = 0; j < half; j++) {
            let g = 0, u = 0;
            for (let t = 0; t < k; t++) {
              g += x.data[i * k + t] * w.data[2 * j * k + t];
              u += x.data[i * k + t] * w.data[(2 * j + 1) * k + t];
            }
            ref[i * half + j] = (g / (1 + Math.exp(-g))) * u;
          }
        expect(relativeError(outs[0].data as Float32Array, ref), c.name).toBeLessThan(1e-5);
      }
    }
  });
});

describe('tools/plot_kernels.mjs', () => {
  it('draws one bar per measured case with its target line, and skips families with no results', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, writeFileSync, readdirSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-plot-'));
    const report = {
      date: '2026-11-25T00:00:00Z',
      device: { name: 'Test GPU', driver: '13.0' },
      ceilings: { copyGBs: 3000, gemmTFLOPs: 800 },
      results: [
        { family: 'gemm', name: 'gemm llama-3-8b qkv M1 N6144 K4096', tessera: { tflops: 2, percentOfCopy: 80 }, speedupVsCublasLt: 1.12 },
        { family: 'gemm', name: 'gemm llama-3-8b o M1 N4096 K4096', tessera: { tflops: 2, percentOfCopy: 70 }, speedupVsCublasLt: 0.87 },
        { family: 'memory', name: 'rmsnorm R4096 H4096', tessera: { percentOfCopy: 88.5 } },
        { family: 'attention', name: 'attention prefill B1 S8192 H32 KV8 hd128 full', skipped: 'causal only' },
      ],
    };
    writeFileSync(path.join(dir, 'r.json'), JSON.stringify(report));
    execFileSync(process.execPath, [path.join(import.meta.dirname, '../../tools/plot_kernels.mjs'), path.join(dir, 'r.json'), dir]);
    expect(readdirSync(dir).sort()).toEqual(['gemm.svg', 'memory_bound.svg', 'r.json']);
    const gemm = readFileSync(path.join(dir, 'gemm.svg'), 'utf8');
    expect(gemm.match(/<rect x=/g)!.length).toBe(2);
    expect(gemm).toContain('llama-3-8b qkv M1 N6144 K4096');
    expect(gemm).toContain('target 1x');
    expect(gemm).toContain('fill="#d5703a"'); // the bar under its target stands out
  });
});

describe('tessera bench kernels: bad input and no GPU', () => {
  it('says in one sentence what is wrong and exits 1', async () => {
    const { spawnSync } = await import('node:child_process');
    const path = await import('node:path');
    const bin = path.join(import.meta.dirname, '../../bin/tessera.js');
    const run = (...args: string[]) => spawnSync(process.execPath, [bin, 'bench', 'kernels', ...args], { encoding: 'utf8', env: { ...process.env, TESSERA_LIBCUDA: '/nonexistent/libcuda.so.1' } });
    for (const [args, sentence] of [
      [['--runs', '5'], 'tessera: --runs must be at least 20 (the median of fewer is noise).\n'],
      [['--family', 'gemv'], 'tessera: --family takes gemm, attention and memory, not "gemv".\n'],
      [['--shapes', '/nonexistent/shapes.json'], /^tessera: \/nonexistent\/shapes\.json: ENOENT[^\n]*\n$/],
      [[], /^tessera: tessera bench kernels needs a CUDA GPU: [^\n]*\/nonexistent\/libcuda\.so\.1[^\n]*\.\n$/],
      [['--choices-from', '/nonexistent/r.json'], 'tessera: --choices-from needs --write-choices DIR (where to write the table).\n'],
      [['--choices-from', '/nonexistent/r.json', '--write-choices', '/tmp'], /^tessera: \/nonexistent\/r\.json: ENOENT[^\n]*\n$/],
    ] as Array<[string[], string | RegExp]>) {
      const r = run(...args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      if (typeof sentence === 'string') expect(r.stderr).toBe(sentence);
      else expect(r.stderr).toMatch(sentence);
    }
  });
});

describe('tessera bench kernels --choices-from: choices from a saved report, no GPU', () => {
  it('writes the GPU\'s table from the report, and refuses a file that is not a report', async () => {
    const { spawnSync } = await import('node:child_process');
    const bin = path.join(import.meta.dirname, '../../bin/tessera.js');
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-choices-from-'));
    const report = {
      complete: false,
      date: '2026-11-25T00:00:00Z',
      device: { name: 'NVIDIA H100 80GB HBM3', computeCapability: '9.0', driver: '13.0' },
      results: [
        { family: 'gemm', name: 'gemm llama-3-8b o M1 N4096 K4096', tessera: { medianMs: 0.02 }, relativeErrorVsCublasLt: 1e-3 },
        { family: 'gemm', name: 'gemm llama-3-8b o M1 N4096 K4096 gemv', tessera: { medianMs: 0.01 }, relativeErrorVsCublasLt: 1e-3 },
        { family: 'attention', name: 'attention prefill B1 S8192 H32 KV8 hd128 causal', tessera: { medianMs: 2 } },
        { family: 'attention', name: 'attention prefill B1 S8192 H32 KV8 hd128 causal sm90', tessera: { medianMs: 1 }, relativeErrorVsBase: 2e-3 },
      ],
    };
    writeFileSync(path.join(dir, 'r.json'), JSON.stringify(report));
    const r = spawnSync(process.execPath, [bin, 'bench', 'kernels', '--choices-from', path.join(dir, 'r.json'), '--write-choices', dir], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`wrote ${path.join(dir, 'nvidia-h100-80gb-hbm3.json')}: M 1 gemv; attention hd128 sm90\n`);
    const table = JSON.parse(readFileSync(path.join(dir, 'nvidia-h100-80gb-hbm3.json'), 'utf8'));
    expect(table).toMatchObject({ gpu: 'NVIDIA H100 80GB HBM3', source: path.join(dir, 'r.json'), gemm: [{ m: 1, variant: 'gemv' }], attention: [{ headDim: 128, variant: 'sm90' }] });
    writeFileSync(path.join(dir, 'bad.json'), JSON.stringify({ results: 3 }));
    const bad = spawnSync(process.execPath, [bin, 'bench', 'kernels', '--choices-from', path.join(dir, 'bad.json'), '--write-choices', dir], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toBe(`tessera: ${path.join(dir, 'bad.json')} is not a tessera bench kernels report (no device or results).\n`);
    writeFileSync(path.join(dir, 'empty.json'), JSON.stringify({ ...report, results: [] }));
    const empty = spawnSync(process.execPath, [bin, 'bench', 'kernels', '--choices-from', path.join(dir, 'empty.json'), '--write-choices', dir], { encoding: 'utf8' });
    expect(empty.status).toBe(1);
    expect(empty.stderr).toBe(`tessera: ${path.join(dir, 'empty.json')}: no GEMM result that matched cuBLASLt; no choices to write\n`);
  });
});
