/**
 * tools/gpu/run.sh, the one call a GPU session makes, run here against the stand-in libcuda and
 * libcublasLt: its stages, budget and bookkeeping, checked at no device time. The stand-in's
 * kernels compute nothing, so what is checked is the script's logic: a kernel fault in the
 * kernels stage is resumed past within the budget, a failed sm90 stage leaves the Hopper kernels
 * out of the benchmark, a stage with too little time left is skipped and says so, and
 * results.tgz holds what the stages wrote.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { KernelShapes } from '../../src/cli/bench_kernels.js';
import { buildLtMock, buildMock } from './mock/mock.js';

const root = path.resolve(import.meta.dirname, '../..');
const cudaPath = buildMock();
const ltPath = cudaPath ? buildLtMock() : null;
const tools = ['bash', 'timeout', 'tar'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = !cudaPath || !ltPath
  ? 'no C compiler to build the stand-in libraries'
  : !existsSync(path.join(root, 'dist/kernels/tessera.fatbin'))
    ? 'the kernels are not built (npm run build:kernels needs nvcc)'
    : tools.length > 0
      ? `missing ${tools.join(', ')}`
      : null;
if (skip) console.log(`tools/gpu/run.sh (stand-ins): skipped: ${skip}`);

const SHAPES: KernelShapes = {
  gemm: { m: [1, 3], projections: [{ model: 'toy', name: 'proj', n: 40, k: 32 }], ceiling: { m: 32, n: 32, k: 32 } },
  attention: { prefill: [{ heads: 4, kvHeads: 2, headDim: 64, batch: 1, seqlen: 20, causal: true }], decode: [], kvBlockSize: 16 },
  memoryBound: { rows: [4], hidden: [256], ops: ['rmsnorm'], rope: { heads: 4, kvHeads: 2, headDim: 64, kvBlockSize: 16 } },
};

/** Runs the script with these stages and budget; returns machine.txt's lines and a reader of results.tgz. */
function runScript(stages: string, budget: number, env: Record<string, string> = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-gpu-run-'));
  const shapes = path.join(dir, 'shapes.json');
  writeFileSync(shapes, JSON.stringify(SHAPES));
  const out = path.join(dir, 'out');
  const r = spawnSync('bash', [path.join(root, 'tools/gpu/run.sh')], {
    cwd: root,
    env: { ...process.env, OUT: out, STAGES: stages, BUDGET: String(budget), KERNEL_SHAPES: shapes, TESSERA_LIBCUDA: cudaPath!, TESSERA_CUBLASLT: ltPath!, ...env },
    encoding: 'utf8',
  });
  const extracted = path.join(dir, 'extracted');
  spawnSync('sh', ['-c', `mkdir -p "${extracted}" && tar -xzf "${out}/results.tgz" -C "${extracted}"`]);
  return {
    status: r.status,
    lines: readFileSync(path.join(out, 'machine.txt'), 'utf8').split('\n'),
    result: (name: string) => readFileSync(path.join(extracted, 'results', name), 'utf8'),
  };
}

describe.skipIf(skip !== null)('tools/gpu/run.sh on the stand-in libcuda', () => {
  it('resumes the kernels stage past a kernel fault, writes no choices from mismatched GEMMs, and packs the results', () => {
    const run = runScript('kernels tuned', 400, { MOCK_FAULT_KERNEL: 'ts_gemm_sm90' });
    expect(run.status).toBe(0);
    const stageLines = run.lines.filter((l) => / \+\d+s /.test(l)).map((l) => l.replace(/^\S+ \+\d+s /, ''));
    expect(stageLines[0]).toMatch(/^kernels: exit 3 in \d+ s \(limit 250 s\)/);
    // The resumed run finishes; it exits 1 because the stand-in's GEMMs wrote nothing (mismatch).
    expect(stageLines[1]).toMatch(/^kernels: exit 1 in \d+ s \(limit \d+ s\)/);
    expect(stageLines[2]).toMatch(/^choices: exit 1/);
    expect(stageLines[3]).toBe('tuned: skipped, no kernel choices were written');
    expect(stageLines[4]).toMatch(/^done: /);
    const report = JSON.parse(run.result('kernels.json'));
    expect(report.complete).toBe(true);
    expect(report.faults.map((f: { rung: string }) => f.rung)).toEqual(['matmul sm90']);
    expect(report.resumedFrom).toHaveLength(1);
    expect(report.results.find((r: { name: string }) => r.name === 'gemm toy proj M3 N40 K32 sm90').skipped).toContain('faulted or hung');
    expect(report.results.find((r: { name: string }) => r.name === 'rmsnorm R4 H256').tessera.medianMs).toBe(1.5);
    expect(run.result('kernels.txt')).toContain('stopped: a kernel fault in "gemm toy proj M1 N40 K32 sm90"');
  });

  it('leaves the sm90 kernels out of the benchmark when the sm90 stage failed, and skips what the budget cannot hold', () => {
    // The sm90 conformance cases fail on the stand-in (its kernels write nothing).
    const run = runScript('sm90 kernels torch', 300, { MOCK_FAULT_KERNEL: 'ts_gemm_sm90' });
    expect(run.status).toBe(0);
    const stageLines = run.lines.filter((l) => / \+\d+s /.test(l)).map((l) => l.replace(/^\S+ \+\d+s /, ''));
    expect(stageLines[0]).toMatch(/^sm90: exit 1 in \d+ s \(limit 150 s\) Tests \d+ failed/);
    expect(stageLines[1]).toBe('kernels: the sm90 kernels left out (the sm90 stage failed)');
    expect(stageLines[2]).toMatch(/^kernels: exit 1 /); // no fault: the sm90 GEMM never ran
    const report = JSON.parse(run.result('kernels.json'));
    expect(report.faults).toEqual([]);
    expect(report.results.map((r: { name: string }) => r.name).filter((n: string) => n.includes('sm90'))).toEqual([]);
    // torch wanted 45 s, and the kernels stage had taken all but the 150 s it keeps: it ran, or
    // it was skipped saying so; either way the script ended and said how long it took.
    expect(stageLines.some((l) => /^torch: (exit \d+|skipped, \d+ s of the 300 s budget left \(it needs 45\))/.test(l))).toBe(true);
    expect(stageLines[stageLines.length - 1]).toMatch(/^done: .*, \d+ s of 300$/);
  });
});
