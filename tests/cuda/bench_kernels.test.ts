/**
 * tessera bench kernels end to end on the stand-in libcuda and libcublasLt: the ceilings, every
 * case of a small shapes file through the CUDA backend's launchers, cuBLASLt on the same inputs,
 * the report. The stand-in's kernels compute nothing and its events always say 1.5 ms, so this
 * checks the plumbing, and that the correctness check beside the timing catches a GEMM that
 * wrote nothing (the run exits 1); the figures themselves need a GPU.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { KernelShapes } from '../../src/cli/bench_kernels.js';
import { SM90S_UNSPLIT, TILES_UNSPLIT } from '../../src/backend/cuda/ops/gemm.js';
import { buildEmulator } from './emu/build.js';
import { buildLtMock, buildMock } from './mock/mock.js';

const cudaPath = buildMock();
const ltPath = cudaPath ? buildLtMock() : null;
const fatbin = path.join(import.meta.dirname, '../../dist/kernels/tessera.fatbin');
const skip = !cudaPath || !ltPath ? 'no C compiler to build the stand-in libraries' : !existsSync(fatbin) ? 'the kernels are not built (npm run build:kernels needs nvcc)' : null;
if (skip) console.log(`tessera bench kernels (stand-ins): skipped: ${skip}`);

const tessera = path.join(import.meta.dirname, '../../bin/tessera.js');

/** A small case list: two M of one projection (every GEMM variant), a prefill pair, one decode, two memory ops. */
const SMALL: KernelShapes = {
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

type Report = {
  complete: boolean;
  running: string | null;
  stopped: string | null;
  faults: Array<{ case: string; rung: string; error: string }>;
  resumedFrom?: Array<{ file: string; results: number; stopped: string | null }>;
  ceilings: { copyGBs: number };
  results: Array<{ name: string; skipped?: string; error?: string; contextLost?: boolean; unfinished?: boolean; tessera?: { medianMs: number } }>;
};

function benchDir(): { dir: string; shapes: string; out: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-bench-kernels-'));
  writeFileSync(path.join(dir, 'shapes.json'), JSON.stringify(SMALL));
  return { dir, shapes: path.join(dir, 'shapes.json'), out: path.join(dir, 'report.json') };
}

function bench(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [tessera, 'bench', 'kernels', '--runs', '20', ...args], {
    env: { ...process.env, TESSERA_LIBCUDA: cudaPath!, TESSERA_CUBLASLT: ltPath!, ...env },
    encoding: 'utf8',
  });
}

const ALL_SMALL = [
  'gemm toy proj M1 N40 K32',
  'gemm toy proj M1 N40 K32 reduce',
  'gemm toy proj M1 N40 K32 gemv',
  'gemm toy proj M1 N40 K32 sm90',
  'gemm toy proj M1 N40 K32 sm90s',
  'gemm toy proj M1 N40 K32 sm90k',
  'gemm toy proj M3 N40 K32',
  'gemm toy proj M3 N40 K32 reduce',
  'gemm toy proj M3 N40 K32 gemv',
  'gemm toy proj M3 N40 K32 sm90',
  'gemm toy proj M3 N40 K32 sm90s',
  'gemm toy proj M3 N40 K32 sm90k',
  'attention prefill B1 S20 H4 KV2 hd64 causal',
  'attention prefill B1 S20 H4 KV2 hd64 causal sm90',
  'attention prefill B1 S20 H4 KV2 hd64 causal sm90o',
  'attention prefill B1 S20 H4 KV2 hd64 full',
  'attention prefill B1 S20 H4 KV2 hd64 full sm90',
  'attention prefill B1 S20 H4 KV2 hd64 full sm90o',
  'attention decode B2 ctx40 H4 KV1 hd128',
  'attention decode B2 ctx40 H4 KV1 hd128 combine',
  'add_rmsnorm R4 H256',
  'silu_mul R4 H256',
  'rope_kv_write R4 H4 KV2 hd64',
];

describe.skipIf(skip !== null)('tessera bench kernels within a GPU call: faults, hangs, time limits (stand-in libcuda)', () => {
  it('stops at a kernel fault, naming the case (exit 3), and --resume goes on past it without that kernel', () => {
    const { out, shapes } = benchDir();
    const r = bench(['--shapes', shapes, '--out', out], { MOCK_FAULT_KERNEL: 'ts_gemm_sm90_' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(3);
    expect(r.stdout).toContain('stopped: a kernel fault in "gemm toy proj M1 N40 K32 sm90" (CUDA_ERROR_ILLEGAL_ADDRESS)');
    const first = JSON.parse(readFileSync(out, 'utf8')) as Report;
    expect(first.complete).toBe(false);
    expect(first.running).toBeNull();
    expect(first.results.map((x) => x.name)).toEqual(ALL_SMALL.slice(0, 4));
    expect(first.results[3]).toMatchObject({ contextLost: true });
    expect(first.results[3].error).toContain('CUDA_ERROR_ILLEGAL_ADDRESS (700)');
    expect(first.faults).toEqual([{ case: 'gemm toy proj M1 N40 K32 sm90', rung: 'matmul sm90', error: first.results[3].error }]);
    expect(first.stopped).toContain(`${ALL_SMALL.length - 4} cases not run`);

    // Left out by name: both Hopper attention rungs and the GEMV, in bf16 (and fp16, were there any).
    const { out: out2 } = benchDir();
    const left = bench(['--shapes', shapes, '--out', out2, '--skip-kernels', 'attention sm90, attention  sm90o,matmul gemv']);
    expect(left.stderr).toBe('');
    const skipped = (JSON.parse(readFileSync(out2, 'utf8')) as Report).results.filter((x) => x.skipped).map((x) => [x.name, x.skipped]);
    // (sm90s and the tile kernel at K 32 do not split: sm90s is the same launch as sm90, the
    // tile kernel's ` reduce` rung the same as the tile case, each left out as such.)
    expect(skipped).toEqual(
      ALL_SMALL.filter((n) => / (gemv|sm90s|reduce)$/.test(n) || (n.startsWith('attention') && / sm90o?$/.test(n))).map((n) => [
        n,
        n.endsWith(' sm90s') ? SM90S_UNSPLIT : n.endsWith(' reduce') ? TILES_UNSPLIT : `left out (--skip-kernels ${n.startsWith('gemm') ? 'matmul gemv' : `attention ${n.split(' ').pop()}`})`,
      ]),
    );

    // Without the fault staged, from the same report: the rest, but not the sm90 GEMM again.
    const again = bench(['--shapes', shapes, '--out', out, '--resume', out]);
    expect(again.stderr).toBe('');
    expect(again.stdout).toContain('resuming');
    expect(again.stdout).toContain('not run again: matmul sm90 (faulted in gemm toy proj M1 N40 K32 sm90)');
    const second = JSON.parse(readFileSync(out, 'utf8')) as Report;
    expect(second.complete).toBe(true);
    expect(second.stopped).toBeNull();
    expect(second.ceilings).toEqual(first.ceilings);
    expect(second.resumedFrom).toEqual([expect.objectContaining({ file: out, results: 4, stopped: first.stopped })]);
    expect(second.results.map((x) => x.name)).toEqual(ALL_SMALL);
    // The other sm90 case, and sm90s (the same kernel) at both M, are not run again.
    const notAgain = second.results.filter((x) => / sm90s?$/.test(x.name) && x.name.startsWith('gemm') && x.name !== 'gemm toy proj M1 N40 K32 sm90');
    expect(notAgain.map((x) => x.name)).toEqual(['gemm toy proj M1 N40 K32 sm90s', 'gemm toy proj M3 N40 K32 sm90', 'gemm toy proj M3 N40 K32 sm90s']);
    for (const x of notAgain) expect(x.skipped, x.name).toBe('not run: its kernel (matmul sm90) faulted or hung in "gemm toy proj M1 N40 K32 sm90"');
    for (const x of second.results.slice(4))
      if (x.name.endsWith(' reduce')) expect(x.skipped, x.name).toBe(TILES_UNSPLIT);
      else if (!notAgain.includes(x)) expect(x.tessera?.medianMs, x.name).toBe(1.5);
  });

  it('a hang leaves the case it was in as "running"; --resume records it unfinished and skips its kernel', async () => {
    const { out, shapes } = benchDir();
    const child = spawn(process.execPath, [tessera, 'bench', 'kernels', '--runs', '20', '--shapes', shapes, '--out', out], {
      env: { ...process.env, TESSERA_LIBCUDA: cudaPath!, TESSERA_CUBLASLT: ltPath!, MOCK_HANG_KERNEL: 'ts_attention_prefill_sm90o' },
      stdio: 'ignore',
    });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    const hung = 'attention prefill B1 S20 H4 KV2 hd64 causal sm90o';
    const deadline = Date.now() + 30_000;
    let seen: Report | null = null;
    while (Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      try {
        seen = JSON.parse(readFileSync(out, 'utf8')) as Report;
      } catch {
        continue; // not written yet, or caught mid-write
      }
      if (seen.running === hung) break;
    }
    child.kill('SIGKILL'); // what timeout -s KILL does to it on the GPU machine
    await exited;
    expect(seen?.running).toBe(hung);

    const r = bench(['--shapes', shapes, '--out', out, '--resume', out]);
    expect(r.stderr).toBe('');
    const report = JSON.parse(readFileSync(out, 'utf8')) as Report;
    expect(report.complete).toBe(true);
    expect(report.results.map((x) => x.name)).toEqual(ALL_SMALL);
    const unfinished = report.results.find((x) => x.name === hung)!;
    expect(unfinished.unfinished).toBe(true);
    expect(unfinished.error).toMatch(/^did not finish/);
    expect(report.faults).toEqual([{ case: hung, rung: 'attention sm90o', error: unfinished.error }]);
    expect(report.results.find((x) => x.name === 'attention prefill B1 S20 H4 KV2 hd64 full sm90o')!.skipped).toContain('faulted or hung in');
    expect(report.results.find((x) => x.name === 'attention prefill B1 S20 H4 KV2 hd64 full sm90')!.tessera?.medianMs).toBe(1.5);
    expect(r.status).toBe(1); // the hang is a failure of the run
  });

  it('--time-limit starts no case past it and says which were left; --resume refuses a file that is not a report', () => {
    const { out, shapes, dir } = benchDir();
    const r = bench(['--shapes', shapes, '--out', out, '--time-limit', '0']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as Report;
    expect(report.complete).toBe(false);
    expect(report.results).toEqual([]);
    expect(report.stopped).toBe(`--time-limit 0 s reached; ${ALL_SMALL.length} cases not run, from "gemm toy proj M1 N40 K32" on`);

    writeFileSync(path.join(dir, 'other.json'), '{"results": []}');
    const bad = bench(['--shapes', shapes, '--resume', path.join(dir, 'other.json')]);
    expect(bad.status).toBe(1);
    expect(bad.stderr.trim()).toBe(`tessera: ${path.join(dir, 'other.json')} is not a tessera bench kernels report (no device, ceilings or results); --resume needs the report of an earlier run.`);
    const negative = bench(['--shapes', shapes, '--time-limit=-5']);
    expect(negative.status).toBe(1);
    expect(negative.stderr.trim()).toBe('tessera: --time-limit takes seconds, 0 or more, not -5.');
    const typo = bench(['--shapes', shapes, '--skip-kernels', 'matmul sm90,attention sm91']);
    expect(typo.status).toBe(1);
    expect(typo.stderr.trim()).toBe('tessera: --skip-kernels takes "op variant" pairs such as "matmul sm90" (an op of the IR; a variant of default, tiles, gemv, sm90, sm90s, sm90p, sm90k, sm90c, sm90pc, sm90o), not "attention sm91".');
  });
});

describe.skipIf(skip !== null)('tessera bench kernels (stand-in libcuda and libcublasLt)', () => {
  it('measures the ceilings, runs every case beside cuBLASLt and reports a GEMM that wrote nothing', () => {
    const { shapes, out } = benchDir();
    const r = bench(['--shapes', shapes, '--out', out]);
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
    expect([...byName.keys()]).toEqual(ALL_SMALL);
    for (const x of results) {
      expect(x.error, x.name).toBeUndefined();
      if (x.name.endsWith(' sm90s') || x.name.endsWith(' reduce')) {
        expect(x.skipped, x.name).toBe(x.name.endsWith(' sm90s') ? SM90S_UNSPLIT : TILES_UNSPLIT); // K 32: one k-tile, nothing to split
        continue;
      }
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

// On the kernel emulator the kernels compute, so the benchmark's own checks meet real outputs:
// every GEMM rung against cuBLASLt (the stand-in computes the product on the host), and the
// Hopper attention rungs against the mma.sync kernel, as they will on a GPU. A false mismatch
// there would keep a rung out of the measured choices.
const emu = !skip && process.env.TESSERA_EMULATOR !== '0' ? buildEmulator() : null;
const emuSkip = skip ?? (process.env.TESSERA_EMULATOR === '0' ? 'the kernel emulator is off (TESSERA_EMULATOR=0)' : emu!.skip);

/**
 * `tessera bench kernels --family <families>` over `shapes` on the emulator, the fp16 cases left
 * out; asynchronously (half a minute of spawnSync would starve this worker's link to vitest).
 * Resolves to the exit status, stderr and the report file.
 */
async function benchOnEmulator(shapes: KernelShapes, families: string, prefix: string): Promise<{ status: number | null; stderr: string; out: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  writeFileSync(path.join(dir, 'shapes.json'), JSON.stringify(shapes));
  const out = path.join(dir, 'report.json');
  const child = spawn(process.execPath, [tessera, 'bench', 'kernels', '--runs', '20', '--family', families, '--exclude', ' f16', '--shapes', path.join(dir, 'shapes.json'), '--out', out], {
    env: { ...process.env, TESSERA_LIBCUDA: cudaPath!, TESSERA_CUBLASLT: ltPath!, MOCK_EMU: emu!.path!, MOCK_CC: '90' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const status = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  return { status, stderr, out };
}

describe.skipIf(emuSkip !== null)('tessera bench kernels on the kernel emulator (sm_90): the checks against cuBLASLt and the base rung', () => {
  it('finds every GEMM rung (tiles, gemv, sm90, sm90s splitting K, sm90p, sm90k, sm90c, sm90pc) equal to cuBLASLt, the Hopper attention rungs equal to the mma.sync kernel, and decode with its merge in a second launch equal to the fused one', async () => {
    const shapes: KernelShapes = {
      gemm: { m: [1, 130], projections: [{ model: 'toy', name: 'proj', n: 264, k: 1024 }], ceiling: { m: 64, n: 64, k: 64 } },
      attention: { prefill: [{ heads: 4, kvHeads: 2, headDim: 64, batch: 1, seqlen: 150, causal: true }], decode: [{ heads: 8, kvHeads: 2, headDim: 64, batch: 1, context: 1500 }], kvBlockSize: 16 },
      memoryBound: { rows: [], hidden: [], ops: [], rope: { heads: 4, kvHeads: 2, headDim: 64, kvBlockSize: 16 } },
    };
    const { status, stderr, out } = await benchOnEmulator(shapes, 'gemm,attention', 'tessera-bench-kernels-emu-');
    expect(stderr).toBe('');
    expect(status).toBe(0);
    type Result = { name: string; skipped?: string; error?: string; relativeErrorVsCublasLt?: number | null; relativeErrorVsBase?: number | null };
    const results = (JSON.parse(readFileSync(out, 'utf8')) as { results: Result[] }).results;
    const gemm = results.filter((x) => x.name.startsWith('gemm'));
    // M 1: tiles, its split merged in a second launch (reduce), gemv, sm90, sm90s, sm90k; M 130:
    // tiles, sm90, sm90s, sm90p, sm90k, sm90c, sm90pc; the fp16 cases left out.
    expect(gemm.map((x) => x.name.replace('gemm toy proj ', ''))).toEqual([
      'M1 N264 K1024',
      'M1 N264 K1024 reduce',
      'M1 N264 K1024 gemv',
      'M1 N264 K1024 sm90',
      'M1 N264 K1024 sm90s',
      'M1 N264 K1024 sm90k',
      'M130 N264 K1024',
      'M130 N264 K1024 sm90',
      'M130 N264 K1024 sm90s',
      'M130 N264 K1024 sm90p',
      'M130 N264 K1024 sm90k',
      'M130 N264 K1024 sm90c',
      'M130 N264 K1024 sm90pc',
    ]);
    for (const x of gemm) {
      expect(x.error ?? x.skipped, x.name).toBeUndefined(); // sm90s splits K at both M here
      expect(x.relativeErrorVsCublasLt, x.name).toBeLessThan(1e-3);
    }
    const rungs = results.filter((x) => / (sm90o?|combine)$/.test(x.name) && x.name.startsWith('attention'));
    // The Hopper prefill rungs against the mma.sync kernel; decode's merge in a second launch
    // against the merge fused into the last split's block (the plan splits 1500 keys).
    expect(rungs.map((x) => x.name.replace(/^attention \w+ /, ''))).toEqual(['B1 S150 H4 KV2 hd64 causal sm90', 'B1 S150 H4 KV2 hd64 causal sm90o', 'B1 ctx1500 H8 KV2 hd64 combine']);
    for (const x of rungs) expect(x.relativeErrorVsBase, x.name).toBeLessThan(1e-2);
  }, 180_000);

  it('times matmul_rope_kv at every rung into a paged cache beside rope_kv_write, and reports ropeEpilogue', async () => {
    // q/k/v of 4 heads and 2 KV heads of 64: N = 512.
    const shapes: KernelShapes = {
      gemm: { m: [1, 20], projections: [{ model: 'toy', name: 'qkv', n: 512, k: 64 }], ceiling: { m: 64, n: 64, k: 64 }, rope: { models: ['toy'], names: ['qkv'], m: [1, 20] } },
      attention: { prefill: [], decode: [], kvBlockSize: 16 },
      memoryBound: { rows: [], hidden: [], ops: [], rope: { heads: 4, kvHeads: 2, headDim: 64, kvBlockSize: 16 } },
    };
    const { status, stderr, out } = await benchOnEmulator(shapes, 'gemm,memory', 'tessera-bench-kernels-rope-');
    expect(stderr).toBe('');
    expect(status).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as {
      results: Array<{ name: string; skipped?: string; error?: string; tessera?: { medianMs: number } }>;
      ropeEpilogue: Array<{ gemm: string; m: number; speedup: number }>;
    };
    const rope = report.results.filter((x) => x.name.includes(' +rope'));
    // M 1: tiles, its separate reduce, gemv, sm90, sm90s, sm90k; M 20: tiles, reduce, sm90, sm90s, sm90p, sm90k, sm90c, sm90pc.
    expect(rope).toHaveLength(14);
    for (const x of rope) {
      if (x.skipped) expect(x.skipped, x.name).toMatch(/the same launch as|does not split/);
      else expect([x.error, typeof x.tessera?.medianMs], x.name).toEqual([undefined, 'number']);
    }
    expect(report.results.map((x) => x.name)).toEqual(expect.arrayContaining(['rope_kv_write R1 H4 KV2 hd64', 'rope_kv_write R20 H4 KV2 hd64']));
    // Every timed +rope case beside its plain GEMM and rope_kv_write.
    expect(report.ropeEpilogue.length).toBe(rope.filter((x) => x.tessera).length);
    expect(report.ropeEpilogue.map((c) => c.m).sort((a, b) => a - b)[0]).toBe(1);
  }, 180_000);
});
