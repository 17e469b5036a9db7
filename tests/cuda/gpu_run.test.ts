/**
 * tools/gpu/run.sh, the one call a GPU session makes, run here against the stand-in libcuda and
 * libcublasLt: its stages, budget and bookkeeping, checked at no device time. The stand-in's
 * kernels compute nothing, so what is checked is the script's logic: a kernel fault in the
 * kernels stage is resumed past within the budget, the conformance stage runs again past each
 * fault without the op that faulted, the Hopper kernels that failed the sm90 stage are left out
 * of the benchmark, and results.tgz holds what the stages wrote.
 */
import { spawn, spawnSync } from 'node:child_process';
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

/**
 * Runs the script with these stages and budget (asynchronously: a minute of spawnSync would
 * starve the test worker's link to vitest); returns machine.txt's lines and a reader of results.tgz.
 */
async function runScript(stages: string, budget: number, env: Record<string, string> = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-gpu-run-'));
  const shapes = path.join(dir, 'shapes.json');
  writeFileSync(shapes, JSON.stringify(SHAPES));
  const out = path.join(dir, 'out');
  const child = spawn('bash', [path.join(root, 'tools/gpu/run.sh')], {
    cwd: root,
    env: { ...process.env, OUT: out, STAGES: stages, BUDGET: String(budget), KERNEL_SHAPES: shapes, TESSERA_LIBCUDA: cudaPath!, TESSERA_CUBLASLT: ltPath!, ...env },
    stdio: 'ignore',
  });
  const status = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  const extracted = path.join(dir, 'extracted');
  spawnSync('sh', ['-c', `mkdir -p "${extracted}" && tar -xzf "${out}/results.tgz" -C "${extracted}"`]);
  return {
    status,
    lines: readFileSync(path.join(out, 'machine.txt'), 'utf8').split('\n'),
    result: (name: string) => readFileSync(path.join(extracted, 'results', name), 'utf8'),
  };
}

describe.skipIf(skip !== null)('tools/gpu/run.sh on the stand-in libcuda', { timeout: 300_000 }, () => {
  it('resumes the kernels stage past a kernel fault, writes no choices from mismatched GEMMs, and packs the results', async () => {
    const run = await runScript('kernels tuned', 400, { MOCK_FAULT_KERNEL: 'ts_gemm_sm90_' });
    expect(run.status).toBe(0);
    const stageLines = run.lines.filter((l) => / \+\d+s /.test(l)).map((l) => l.replace(/^\S+ \+\d+s /, ''));
    // The budget less the 150 s kept for tuned and torch, less the second or two the script took
    // to get there (more on a loaded machine).
    expect(stageLines[0]).toMatch(/^kernels: exit 3 in \d+ s \(limit (24\d|250) s\)/);
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

  it('runs the conformance stage again past each kernel fault, and leaves the Hopper kernels that failed it out of the benchmark', async () => {
    // The stand-in's kernels write nothing, so every sm90 case fails; the staged fault is the
    // Hopper GEMM's, which matmul, matmul_add, matmul_glu and matmul_rope_kv all launch: each loses
    // the context once.
    const run = await runScript('sm90 kernels torch', 400, { MOCK_FAULT_KERNEL: 'ts_gemm_sm90_' });
    expect(run.status).toBe(0);
    const stageLines = run.lines.filter((l) => / \+\d+s /.test(l)).map((l) => l.replace(/^\S+ \+\d+s /, ''));
    expect(stageLines.slice(0, 10)).toEqual([
      expect.stringMatching(/^sm90: exit 1 in \d+ s \(limit 150 s\) Tests \d+ failed \| \d+ skipped/),
      'sm90: again without matmul (a kernel fault there lost the CUDA context)',
      expect.stringMatching(/^sm90: exit 1 in \d+ s \(limit 150 s\) Tests \d+ failed/),
      'sm90: again without matmul, matmul_add (a kernel fault there lost the CUDA context)',
      expect.stringMatching(/^sm90: exit 1 in \d+ s \(limit 150 s\) Tests \d+ failed/),
      'sm90: again without matmul, matmul_add, matmul_glu (a kernel fault there lost the CUDA context)',
      expect.stringMatching(/^sm90: exit 1 in \d+ s \(limit 150 s\) Tests \d+ failed/),
      'sm90: again without matmul, matmul_add, matmul_glu, matmul_rope_kv (a kernel fault there lost the CUDA context)',
      expect.stringMatching(/^sm90: exit 1 in \d+ s \(limit 150 s\) Tests \d+ failed/),
      'kernels: left out, as the sm90 stage failed them: attention sm90,attention sm90o,matmul sm90,matmul_add sm90,matmul_glu sm90,matmul_rope_kv sm90',
    ]);
    const faults = run.result('faults.tsv').trim().split('\n').map((l) => l.split('\t').slice(0, 2).join(' '));
    expect(faults).toEqual(['bf16 matmul', 'bf16 matmul_add', 'bf16 matmul_glu', 'bf16 matmul_rope_kv']);
    expect(run.result('sm90.txt')).toContain('the CUDA context was lost to a kernel fault in bf16 matmul [');
    expect(stageLines[10]).toMatch(/^kernels: exit 1 /); // no fault: the sm90 GEMM never ran
    const report = JSON.parse(run.result('kernels.json'));
    expect(report.faults).toEqual([]);
    // The rungs the sm90 stage failed are left out (sm90s runs sm90's kernel); stream-K, whose
    // cases the stage never reached after the fault, has entries of its own and runs.
    const hopper = report.results.filter((r: { name: string }) => r.name.includes('sm90') && !r.name.endsWith(' sm90k'));
    expect(hopper.length).toBeGreaterThan(0);
    for (const r of hopper) expect(r.skipped, r.name).toMatch(/^left out \(--skip-kernels (matmul|matmul_add|matmul_glu|matmul_rope_kv|attention) sm90o?\)$/);
    const streamK = report.results.filter((r: { name: string }) => r.name.endsWith(' sm90k'));
    expect(streamK.length).toBeGreaterThan(0);
    for (const r of streamK) expect(r.skipped, r.name).toBeUndefined();
    // torch wanted 45 s, and the kernels stage had taken all but the 150 s it keeps: it ran, or
    // it was skipped saying so; either way the script ended and said how long it took.
    expect(stageLines.some((l) => /^torch: (exit \d+|skipped, \d+ s of the 400 s budget left \(it needs 45\))/.test(l))).toBe(true);
    expect(stageLines[stageLines.length - 1]).toMatch(/^done: .*, \d+ s of 400$/);
  });
});

/** tools/gpu/profile_cases.tsv's lines: name, family, filter, kernel pattern. */
function profileCases(): string[][] {
  return readFileSync(path.join(root, 'tools/gpu/profile_cases.tsv'), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.split('\t'));
}

describe('tools/gpu/profile_cases.tsv: the kernels the profile stage profiles', () => {
  it('selects benchmark cases of the default shapes, and names kernels the backend declares', async () => {
    const { expandCases, defaultShapesPath } = await import('../../src/cli/bench_kernels.js');
    const { ALL_DECLS } = await import('../../src/backend/cuda/ops/index.js');
    const { withStorageTwins } = await import('../../src/backend/cuda/kernel_decl.js');
    const shapes = JSON.parse(readFileSync(defaultShapesPath(), 'utf8')) as KernelShapes;
    const names = withStorageTwins(ALL_DECLS).map((d) => d.name);
    const lines = profileCases();
    expect(lines.length).toBeGreaterThanOrEqual(10);
    for (const [name, family, filter, kernel] of lines) {
      expect([name, family, filter, kernel].every(Boolean), name).toBe(true);
      const cases = expandCases(shapes, [family as 'gemm' | 'attention' | 'memory'], filter).filter((c) => !c.name.includes(' f16'));
      expect(cases.length, `${name}: --filter "${filter}"`).toBeGreaterThan(0);
      if (kernel.startsWith('^ts_')) expect(names.filter((n) => new RegExp(kernel).test(n)), `${name}: ${kernel}`).toHaveLength(1);
    }
  });
});

describe.skipIf(skip !== null)('tools/gpu/run.sh: the profile stage (a stand-in ncu)', { timeout: 120_000 }, () => {
  it('runs ncu once a line of profile_cases.tsv, on the bench case with its kernel, and packs what it wrote', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-ncu-'));
    const log = path.join(dir, 'calls.txt');
    const ncu = path.join(dir, 'ncu');
    // Records its arguments, one call a line, and writes a details line as ncu's CSV would.
    writeFileSync(ncu, `#!/usr/bin/env bash\necho "$*" >> "${log}"\necho '"ID","Kernel Name","Metric Name","Metric Value"'\n`, { mode: 0o755 });
    const run = await runScript('profile', 300, { NCU: ncu });
    expect(run.status).toBe(0);
    expect(run.lines.some((l) => /profile: exit 0 in \d+ s/.test(l)), run.lines.join('\n')).toBe(true);
    const calls = readFileSync(log, 'utf8').trim().split('\n');
    const lines = profileCases();
    expect(calls).toHaveLength(lines.length);
    lines.forEach(([name, family, filter, kernel], i) => {
      expect(calls[i]).toContain(`--clock-control none --target-processes all -k regex:${kernel} --launch-skip 1 --launch-count 1`);
      expect(calls[i]).toContain(`node bin/tessera.js bench kernels --family ${family} --filter ${filter} --exclude  f16 --runs 20 --warmup 1`);
      expect(run.result(`ncu/${name}.csv`)).toContain('"Metric Value"');
    });
    expect(run.result('profile.txt')).toContain(`${lines[0][0]}: exit 0 (1 csv lines)`);
  });
});
