#!/usr/bin/env node
// npm run build:kernels: compiles kernels/tessera.cu with nvcc into one fatbin (cubins for sm_80,
// sm_86, sm_89, sm_90a and compute_80 PTX for newer GPUs) at dist/kernels/tessera.fatbin, and
// keeps what the checks need under build/kernels/:
//   resources.json  ptxas's report per kernel and architecture (registers, shared memory, stack, spills)
//   entries.json    each extern "C" entry's PTX parameter types, to check against src/backend/cuda/kernels.ts
//   tessera.ptx     the compute_80 PTX (the one the fatbin ships)
//   tessera_sm90a.ptx  the sm_90a build's PTX, where tests/cuda/declarations.test.ts checks
//                   the launch-dependency waits (kernels/common.cuh)
// Fails on a spill or a stack frame in any kernel. Without nvcc it says so and exits 0: the CPU
// backend needs none of this.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = path.join(root, 'kernels', 'tessera.cu');
const buildDir = path.join(root, 'build', 'kernels');
const distDir = path.join(root, 'dist', 'kernels');
const ARCHS = ['sm_80', 'sm_86', 'sm_89', 'sm_90a'];
const FLAGS = ['-std=c++17', '-O3', '--use_fast_math', '-lineinfo', '-Xptxas', '-warn-spills'];

const nvcc = process.env.NVCC ?? 'nvcc';
const probe = spawnSync(nvcc, ['--version'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0) {
  console.log(`build:kernels: ${nvcc} not found; the CUDA kernels are not built (the CPU backend does not need them).`);
  process.exit(0);
}
mkdirSync(buildDir, { recursive: true });
mkdirSync(distDir, { recursive: true });

// --threads 0: the four architectures compile in parallel (ptxas's report is printed per
// architecture, whole, so the parse below reads the same as a serial build's).
const gencode = ARCHS.flatMap((a) => ['-gencode', `arch=${a.replace('sm_', 'compute_')},code=${a === 'sm_80' ? '[sm_80,compute_80]' : a}`]);
// --keep: each architecture's PTX, which the fatbin build makes on the way, is kept (in a
// temporary folder, with the other intermediate files) rather than made again.
const t0 = Date.now();
const keep = mkdtempSync(path.join(tmpdir(), 'tessera-kernels-'));
const fatbin = spawnSync(nvcc, [...FLAGS, '--threads', '0', '-fatbin', ...gencode, '-Xptxas', '-v', '--keep', '--keep-dir', keep, src, '-o', path.join(distDir, 'tessera.fatbin')], {
  encoding: 'utf8',
  cwd: root,
});
if (fatbin.status === 0) {
  copyFileSync(path.join(keep, 'tessera.compute_80.ptx'), path.join(buildDir, 'tessera.ptx'));
  copyFileSync(path.join(keep, 'tessera.compute_90a.ptx'), path.join(buildDir, 'tessera_sm90a.ptx'));
}
rmSync(keep, { recursive: true, force: true });
if (fatbin.status !== 0) {
  process.stderr.write(fatbin.stderr);
  console.error('build:kernels: nvcc failed.');
  process.exit(1);
}

// ptxas -v: "Compiling entry function 'k' for 'sm_80'", "N bytes stack frame, N bytes spill stores,
// N bytes spill loads", "Used N registers, used N barriers, N bytes smem, ...".
const resources = {};
let current = null;
for (const line of fatbin.stderr.split('\n')) {
  let m = /Compiling entry function '(\w+)' for '(\w+)'/.exec(line);
  if (m) {
    current = { kernel: m[1], arch: m[2], registers: 0, smemBytes: 0, stackBytes: 0, spillStoreBytes: 0, spillLoadBytes: 0, barriers: 0 };
    (resources[current.kernel] ??= {})[current.arch] = current;
    continue;
  }
  if (!current) continue;
  if ((m = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line))) {
    current.stackBytes = +m[1];
    current.spillStoreBytes = +m[2];
    current.spillLoadBytes = +m[3];
  }
  if ((m = /Used (\d+) registers/.exec(line))) current.registers = +m[1];
  if ((m = /used (\d+) barriers/.exec(line))) current.barriers = +m[1];
  if ((m = /(\d+) bytes smem/.exec(line))) current.smemBytes = +m[1];
}

// PTX entries: ".visible .entry name(\n .param .u64 name_param_0, ...)". A scalar is its type
// ("u64"); a by-value aggregate such as a CUtensorMap (".param .align 128 .b8 name_param_2[128]")
// is "align128.b8[128]".
const ptx = readFileSync(path.join(buildDir, 'tessera.ptx'), 'utf8');
const entries = {};
for (const m of ptx.matchAll(/\.visible \.entry (\w+)\(([^)]*)\)/g)) {
  entries[m[1]] = [...m[2].matchAll(/\.param\s+(?:\.align\s+(\d+)\s+)?\.(\w+)[^,[]*(?:\[(\d+)\])?/g)].map(
    (p) => (p[1] ? `align${p[1]}.` : '') + p[2] + (p[3] ? `[${p[3]}]` : ''),
  );
}

const report = { nvcc: probe.stdout.trim().split('\n').pop(), archs: ARCHS, date: new Date().toISOString(), kernels: resources };
writeFileSync(path.join(buildDir, 'resources.json'), JSON.stringify(report, null, 1) + '\n');
writeFileSync(path.join(distDir, 'resources.json'), JSON.stringify(report, null, 1) + '\n');
writeFileSync(path.join(buildDir, 'entries.json'), JSON.stringify(entries, null, 1) + '\n');

const bad = [];
for (const [kernel, byArch] of Object.entries(resources))
  for (const r of Object.values(byArch))
    if (r.stackBytes || r.spillStoreBytes || r.spillLoadBytes) bad.push(`${kernel} on ${r.arch}: ${r.stackBytes} B stack, ${r.spillStoreBytes} B spill stores, ${r.spillLoadBytes} B spill loads`);
const count = Object.keys(entries).length;
console.log(`build:kernels: ${count} kernels for ${ARCHS.join(', ')} + compute_80 PTX in ${((Date.now() - t0) / 1000).toFixed(1)}s -> dist/kernels/tessera.fatbin`);
if (bad.length) {
  console.error(`build:kernels: kernels that spill or use a stack frame:\n  ${bad.join('\n  ')}`);
  process.exit(1);
}
