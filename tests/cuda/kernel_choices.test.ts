/**
 * Measured kernel choices (src/backend/cuda/kernel_choices.ts): deriving a table from a kernel
 * benchmark report, finding and checking a GPU's table, picking a GEMM variant for M, and the
 * CUDA backend following its table on the stand-in libcuda (the launch hook sees which GEMM
 * kernels run), reporting which table it uses.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { chooseAttention, chooseGemm, choicesFileName, deriveChoices, loadChoices, type GemmResult, type KernelChoices } from '../../src/backend/cuda/kernel_choices.js';
import { buildMock, setLaunchHook } from './mock/mock.js';

const device = { name: 'NVIDIA H100 80GB HBM3', computeCapability: '9.0', driver: '13.0' };
const gemm = (name: string, ms: number, err: number | null = 1e-3): GemmResult => ({ family: 'gemm', name: `gemm llama-3-8b ${name}`, tessera: { medianMs: ms }, relativeErrorVsCublasLt: err });

describe('kernel choices: the table', () => {
  it('names a GPU model\'s file', () => {
    expect(choicesFileName('NVIDIA H100 80GB HBM3')).toBe('nvidia-h100-80gb-hbm3.json');
    expect(choicesFileName('Mock GPU')).toBe('mock-gpu.json');
  });

  it('takes per M the variant with the least summed time, among results that matched cuBLASLt', () => {
    const report = {
      date: '2026-11-25T00:00:00Z',
      device,
      results: [
        gemm('qkv M1 N6144 K4096', 0.03),
        gemm('qkv M1 N6144 K4096 gemv', 0.02),
        gemm('qkv M1 N6144 K4096 sm90', 0.05),
        gemm('o M1 N4096 K4096', 0.02),
        gemm('o M1 N4096 K4096 gemv', 0.015),
        gemm('o M1 N4096 K4096 sm90', 0.04),
        // M 4096: sm90 is fastest on qkv but wrong on o, so o's sm90 does not count and sm90 is
        // no candidate there (not measured correct on every shape).
        gemm('qkv M4096 N6144 K4096', 0.5),
        gemm('qkv M4096 N6144 K4096 sm90', 0.3),
        gemm('o M4096 N4096 K4096', 0.35),
        gemm('o M4096 N4096 K4096 sm90', 0.2, 0.5),
        { family: 'gemm', name: 'gemm llama-3-8b down M16 N4096 K14336 sm90', skipped: 'needs compute capability 9.0' },
        { family: 'attention', name: 'attention decode B1 ctx4096 H32 KV8 hd128', tessera: { medianMs: 0.01 } },
      ],
    };
    const t = deriveChoices(report, 'bench/results/kernels-h100.json');
    expect(t.gpu).toBe('NVIDIA H100 80GB HBM3');
    expect(t.gemm).toEqual([
      { m: 1, variant: 'gemv', ms: { tiles: 0.05, gemv: 0.035, sm90: 0.09 } },
      { m: 4096, variant: 'tiles', ms: { tiles: 0.85 } },
    ]);
    expect(() => deriveChoices({ ...report, results: [gemm('o M1 N4096 K4096', 0.1, null)] }, 'r.json')).toThrow('r.json: no GEMM result that matched cuBLASLt');
  });

  it('counts sm90s at sm90\'s time where the benchmark left it out as the same launch, and not where it failed', async () => {
    const { SM90S_UNSPLIT } = await import('../../src/backend/cuda/ops/gemm.js');
    const report = {
      date: '2026-12-07T00:00:00Z',
      device,
      results: [
        // M 256: sm90s splits both shapes and wins.
        gemm('qkv M256 N6144 K4096', 0.06),
        gemm('qkv M256 N6144 K4096 sm90', 0.05),
        gemm('qkv M256 N6144 K4096 sm90s', 0.03),
        gemm('o M256 N4096 K4096', 0.05),
        gemm('o M256 N4096 K4096 sm90', 0.045),
        gemm('o M256 N4096 K4096 sm90s', 0.02),
        // M 1024: qkv does not split (sm90s is sm90's launch there); o's split is faster.
        gemm('qkv M1024 N6144 K4096', 0.2),
        gemm('qkv M1024 N6144 K4096 sm90', 0.1),
        { family: 'gemm', name: 'gemm llama-3-8b qkv M1024 N6144 K4096 sm90s', skipped: SM90S_UNSPLIT },
        gemm('o M1024 N4096 K4096', 0.15),
        gemm('o M1024 N4096 K4096 sm90', 0.09),
        gemm('o M1024 N4096 K4096 sm90s', 0.07),
        // M 4096: sm90s's split of o did not match cuBLASLt, so it is no candidate at that M.
        gemm('qkv M4096 N6144 K4096', 0.5),
        gemm('qkv M4096 N6144 K4096 sm90', 0.3),
        { family: 'gemm', name: 'gemm llama-3-8b qkv M4096 N6144 K4096 sm90s', skipped: SM90S_UNSPLIT },
        gemm('o M4096 N4096 K4096', 0.35),
        gemm('o M4096 N4096 K4096 sm90', 0.2),
        gemm('o M4096 N4096 K4096 sm90s', 0.1, 0.5),
      ],
    };
    expect(deriveChoices(report, 'r.json').gemm).toEqual([
      { m: 256, variant: 'sm90s', ms: { tiles: 0.11, sm90: 0.095, sm90s: 0.05 } },
      { m: 1024, variant: 'sm90s', ms: { tiles: 0.35, sm90: 0.19, sm90s: 0.17 } },
      { m: 4096, variant: 'sm90', ms: { tiles: 0.85, sm90: 0.5 } },
    ]);
  });

  it('takes per head dim the prefill attention variant with the least summed time, sm90 only where it matched the mma.sync kernel', () => {
    const attn = (name: string, ms: number, err?: number | null): GemmResult => ({ family: 'attention', name: `attention prefill ${name}`, tessera: { medianMs: ms }, ...(err !== undefined ? { relativeErrorVsBase: err } : {}) });
    const report = {
      date: '2026-11-25T00:00:00Z',
      device,
      results: [
        gemm('qkv M1 N6144 K4096', 0.03),
        attn('B1 S8192 H32 KV8 hd128 causal', 2.0),
        attn('B1 S8192 H32 KV8 hd128 causal sm90', 1.0, 2e-3),
        attn('B1 S8192 H32 KV8 hd128 full', 4.0),
        attn('B1 S8192 H32 KV8 hd128 full sm90', 2.2, 3e-3),
        attn('B1 S8192 H32 KV8 hd128 causal sm90o', 0.9, 2e-3),
        attn('B1 S8192 H32 KV8 hd128 full sm90o', 2.0, 3e-3),
        // hd 64: sm90 faster but wrong on one case, so not a candidate.
        attn('B1 S8192 H32 KV32 hd64 causal', 1.5),
        attn('B1 S8192 H32 KV32 hd64 causal sm90', 0.8, 0.4),
        attn('B4 S2048 H32 KV32 hd64 causal', 0.5),
        attn('B4 S2048 H32 KV32 hd64 causal sm90', 0.3, 1e-3),
        { family: 'attention', name: 'attention prefill B1 S8192 H16 KV16 hd256 causal sm90', skipped: 'head dim 256 is not 64 or 128' },
        attn('B1 S8192 H16 KV16 hd256 causal', 3.0),
        { family: 'attention', name: 'attention decode B1 ctx4096 H32 KV8 hd128', tessera: { medianMs: 0.01 } },
      ],
    };
    const t = deriveChoices(report, 'r.json');
    expect(t.attention).toEqual([
      { headDim: 64, variant: 'tiles', ms: { tiles: 2.0 } },
      { headDim: 128, variant: 'sm90o', ms: { tiles: 6.0, sm90: 3.2, sm90o: 2.9 } },
      { headDim: 256, variant: 'tiles', ms: { tiles: 3.0 } },
    ]);
    expect([64, 128, 256, 80].map((hd) => chooseAttention(t, hd))).toEqual(['tiles', 'sm90o', 'tiles', null]);
    expect(chooseAttention(null, 128)).toBeNull();
    expect(chooseAttention({ ...t, attention: undefined }, 128)).toBeNull();
  });

  it('picks the entry of the largest measured M not above a step\'s M', () => {
    const t = { gemm: [{ m: 1, variant: 'gemv' }, { m: 16, variant: 'tiles' }, { m: 1024, variant: 'sm90' }] } as KernelChoices;
    expect([1, 2, 15, 16, 17, 1023, 1024, 9000].map((m) => chooseGemm(t, m))).toEqual(['gemv', 'gemv', 'gemv', 'tiles', 'tiles', 'tiles', 'sm90', 'sm90']);
    expect(chooseGemm(null, 5)).toBeNull();
  });

  it('loads a GPU\'s table only when it is there, well formed and for the same compute capability', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-choices-'));
    expect(loadChoices('NVIDIA H100 80GB HBM3', '9.0', dir).note).toMatch(/^no measured kernel choices for NVIDIA H100 80GB HBM3 .*; defaults$/);
    const file = path.join(dir, 'nvidia-h100-80gb-hbm3.json');
    writeFileSync(file, '{');
    expect(loadChoices('NVIDIA H100 80GB HBM3', '9.0', dir).note).toMatch(/is not valid JSON/);
    const table: KernelChoices = { gpu: 'NVIDIA H100 80GB HBM3', computeCapability: '9.0', driver: '13.0', date: '2026-11-25T00:00:00Z', source: 'r.json', gemm: [{ m: 1, variant: 'gemv', ms: {} }, { m: 256, variant: 'sm90', ms: {} }] };
    writeFileSync(file, JSON.stringify({ ...table, gemm: [table.gemm[1], table.gemm[0]] }));
    expect(loadChoices('NVIDIA H100 80GB HBM3', '9.0', dir).note).toMatch(/does not hold an ascending gemm table/);
    writeFileSync(file, JSON.stringify(table));
    expect(loadChoices('NVIDIA H100 80GB HBM3', '8.0', dir).note).toMatch(/measured on compute capability 9\.0, not 8\.0; defaults$/);
    const ok = loadChoices('NVIDIA H100 80GB HBM3', '9.0', dir);
    expect(ok.choices).toEqual(table);
    expect(ok.note).toBe('kernel choices measured on NVIDIA H100 80GB HBM3 (2026-11-25, nvidia-h100-80gb-hbm3.json)');
  });
});

const mockPath = buildMock();
describe.skipIf(!mockPath)('kernel choices: the CUDA backend follows its GPU\'s table (stand-in libcuda)', () => {
  it('runs the GEMV for decode and the tile kernel for prefill when the table says so, and reports the table', async () => {
    const { existsSync } = await import('node:fs');
    if (!existsSync(path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin'))) return;
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-choices-'));
    const table: KernelChoices = { gpu: 'Mock GPU', computeCapability: '9.0', driver: '13.0', date: '2026-11-25T00:00:00Z', source: 'test', gemm: [{ m: 1, variant: 'gemv', ms: {} }, { m: 2, variant: 'tiles', ms: {} }] };
    writeFileSync(path.join(dir, 'mock-gpu.json'), JSON.stringify(table));
    const saved = { lib: process.env.TESSERA_LIBCUDA, dir: process.env.TESSERA_KERNEL_CHOICES };
    process.env.TESSERA_LIBCUDA = mockPath!;
    process.env.TESSERA_KERNEL_CHOICES = dir;
    const { Tessera } = await import('../../src/llm.js');
    const llm = await Tessera.load(undefined, { device: 'cuda', maxNumSeqs: 1 });
    const names: string[] = [];
    const remove = setLaunchHook(mockPath!, (l) => {
      if (/^ts_gem[mv]_/.test(l.name)) names.push(l.name);
    });
    try {
      expect(llm.info.kernelChoices).toBe('kernel choices measured on Mock GPU (2026-11-25, mock-gpu.json)');
      await llm.complete('In the beginning', { temperature: 0, maxTokens: 2, ignoreEos: true });
      // Prefill (17 rows): the tile kernel; the first decode step (1 row, eager): the GEMV.
      const decodeStart = names.findIndex((n) => n.startsWith('ts_gemv_'));
      expect(decodeStart).toBeGreaterThan(0);
      expect(names.slice(0, decodeStart).every((n) => n.startsWith('ts_gemm_'))).toBe(true);
      expect(names.slice(decodeStart).every((n) => n.startsWith('ts_gemv_r1_'))).toBe(true);
    } finally {
      remove();
      await llm.close();
      for (const [k, v] of [['TESSERA_LIBCUDA', saved.lib], ['TESSERA_KERNEL_CHOICES', saved.dir]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('refuses a TESSERA_GEMM or TESSERA_ATTENTION it does not know, in one sentence, before opening the GPU', async () => {
    const { CudaBackend } = await import('../../src/backend/cuda/backend.js');
    const { isTesseraError } = await import('../../src/errors.js');
    const saved = { lib: process.env.TESSERA_LIBCUDA, gemm: process.env.TESSERA_GEMM, attention: process.env.TESSERA_ATTENTION };
    process.env.TESSERA_LIBCUDA = mockPath!;
    try {
      for (const [name, value, sentence] of [
        ['TESSERA_GEMM', 'fast', 'TESSERA_GEMM must be auto, tiles, gemv, sm90, sm90s, sm90p, sm90k, sm90c or sm90pc, not "fast".'],
        ['TESSERA_ATTENTION', 'fa3', 'TESSERA_ATTENTION must be auto, tiles, sm90 or sm90o, not "fa3".'],
      ] as const) {
        delete process.env.TESSERA_GEMM;
        delete process.env.TESSERA_ATTENTION;
        process.env[name] = value;
        let err: unknown;
        try {
          CudaBackend.create();
        } catch (e) {
          err = e;
        }
        expect(isTesseraError(err), name).toBe(true);
        expect((err as Error).message).toBe(sentence);
        expect(CudaBackend.probe()).toEqual({ ok: false, reason: sentence });
      }
    } finally {
      for (const [k, v] of [['TESSERA_LIBCUDA', saved.lib], ['TESSERA_GEMM', saved.gemm], ['TESSERA_ATTENTION', saved.attention]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
