/**
 * tessera bench kernels end to end on the stand-in libcuda and libcublasLt: the ceilings, every
 * case of a small shapes file through the CUDA backend's launchers, cuBLASLt on the same inputs,
 * the report. The stand-in's kernels compute nothing and its events always say 1.5 ms, so this
 * checks the plumbing, and that the correctness check beside the timing catches a GEMM that
 * wrote nothing (the run exits 1); the figures themselves need a GPU.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { KernelShapes } from '../../src/cli/bench_kernels.js';
import { buildLtMock, buildMock } from './mock/mock.js';

const cudaPath = buildMock();
const ltPath = cudaPath ? buildLtMock() : null;
const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
const skip = !cudaPath || !ltPath ? 'no C compiler to build the stand-in libraries' : !existsSync(fatbin) ? 'the kernels are not built (npm run build:kernels needs nvcc)' : null;
if (skip) console.log(`tessera bench kernels (stand-ins): skipped: ${skip}`);

describe.skipIf(skip !== null)('tessera bench kernels (stand-in libcuda and libcublasLt)', () => {
  it('measures the ceilings, runs every case beside cuBLASLt and reports a GEMM that wrote nothing', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-bench-kernels-'));
    const shapes: KernelShapes = {
      gemm: { m: [1, 3], projections: [{ model: 'toy', name: 'proj', n: 40, k: 32 }], ceiling: { m: 32, n: 32, k: 32 } },
      attention: {
        prefill: [
          { heads: 4, kvHeads: 2, headDim: 64, batch: 1, seqlen: 20, causal: true },
          { heads: 4, kvHeads: 2, headDim: 64, batch: 1, seqlen: 20, causal: false },
        ],
        decode: [{ heads: 4, kvHeads: 1, headDim: 128, batch: 2, context: 40 }],
        kvBlockSize: 16,
      },
      memoryBound: { rows: [4], hidden: [256], ops: ['add_rmsnorm', 'silu_mul', 'rope_kv_write'], rope: { heads: 4, kvHeads: 2, headDim: 64, kvBlockSize: 16 } },
    };
    writeFileSync(path.join(dir, 'shapes.json'), JSON.stringify(shapes));
    const out = path.join(dir, 'report.json');
    const r = spawnSync(process.execPath, [path.join(import.meta.dirname, '../../bin/tessera.js'), 'bench', 'kernels', '--shapes', path.join(dir, 'shapes.json'), '--runs', '20', '--out', out], {
      env: { ...process.env, TESSERA_LIBCUDA: cudaPath!, TESSERA_CUBLASLT: ltPath! },
      encoding: 'utf8',
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^Mock GPU, driver 13\.0/);
    expect(r.stdout).toContain('GEMM ceiling');
    expect(r.stdout).toContain('MISMATCH');
    const report = JSON.parse(readFileSync(out, 'utf8'));
    expect(report.device.name).toBe('Mock GPU');
    expect(report.method.runs).toBe(20);
    expect(report.ceilings.copyGBs).toBeCloseTo((2 * 2 ** 30) / 1.5e-3 / 1e9, 0);
    expect(report.ceilings.gemmTFLOPs).toBeCloseTo((2 * 32 ** 3) / 1.5e-3 / 1e12, 1);
    expect(report.cublasLt.library).toBe(ltPath);
    type Result = { name: string; skipped?: string; error?: string; sets?: number; tessera?: { medianMs: number }; cublasLt?: { medianMs: number }; speedupVsCublasLt?: number; relativeErrorVsCublasLt?: number | null };
    const results = report.results as Result[];
    const byName = new Map(results.map((x) => [x.name, x]));
    expect([...byName.keys()]).toEqual([
      'gemm toy proj M1 N40 K32',
      'gemm toy proj M1 N40 K32 gemv',
      'gemm toy proj M1 N40 K32 sm90',
      'gemm toy proj M3 N40 K32',
      'gemm toy proj M3 N40 K32 gemv',
      'gemm toy proj M3 N40 K32 sm90',
      'attention prefill B1 S20 H4 KV2 hd64 causal',
      'attention prefill B1 S20 H4 KV2 hd64 causal sm90',
      'attention prefill B1 S20 H4 KV2 hd64 causal sm90o',
      'attention prefill B1 S20 H4 KV2 hd64 full',
      'attention prefill B1 S20 H4 KV2 hd64 full sm90',
      'attention prefill B1 S20 H4 KV2 hd64 full sm90o',
      'attention decode B2 ctx40 H4 KV1 hd128',
      'add_rmsnorm R4 H256',
      'silu_mul R4 H256',
      'rope_kv_write R4 H4 KV2 hd64',
    ]);
    for (const x of results) {
      expect(x.error, x.name).toBeUndefined();
      expect(x.skipped, x.name).toBeUndefined();
      expect(x.tessera!.medianMs, x.name).toBe(1.5);
      expect(x.sets, x.name).toBe(16); // tiny inputs: the most sets, to read past the L2
    }
    const gemm = byName.get('gemm toy proj M3 N40 K32')!;
    expect(gemm.cublasLt!.medianMs).toBe(1.5);
    expect(gemm.speedupVsCublasLt).toBe(1);
    // Our GEMM "ran" on the stand-in and wrote nothing: its NaN-poisoned output cannot match.
    expect(gemm.relativeErrorVsCublasLt).toBeNull();
    // The attention ladder's sm90 rung: timed against the mma.sync rung before it and checked
    // against its output on the same inputs (both NaN-poisoned here: no match).
    const rung = byName.get('attention prefill B1 S20 H4 KV2 hd64 causal sm90') as Result & { speedupVsBase?: number; relativeErrorVsBase?: number | null };
    expect(rung.speedupVsBase).toBe(1);
    expect(rung.relativeErrorVsBase).toBeNull();
    expect(r.stdout).toContain('MISMATCH vs attention prefill B1 S20 H4 KV2 hd64 causal');
  });
});
