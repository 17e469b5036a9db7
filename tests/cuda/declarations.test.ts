/**
 * Every kernel's TypeScript declaration against the compiled PTX: the same entry points, the
 * same parameter types in the same order; and ptxas's report: no spills, no stack frame. Needs
 * `npm run build:kernels` (nvcc, no GPU); without nvcc the check is skipped and says so.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PTX_PARAM_TYPE } from '../../src/backend/cuda/kernel_decl.js';
import { ALL_DECLS } from '../../src/backend/cuda/ops/index.js';

const BUILD = path.join(import.meta.dirname, '../../build/kernels');
const built = existsSync(path.join(BUILD, 'entries.json'));
if (!built) console.log('cuda declarations: skipped: build/kernels/entries.json is missing (npm run build:kernels needs nvcc)');

describe.skipIf(!built)('CUDA kernel declarations vs PTX', () => {
  const entries: Record<string, string[]> = built ? JSON.parse(readFileSync(path.join(BUILD, 'entries.json'), 'utf8')) : {};
  const report = built ? JSON.parse(readFileSync(path.join(BUILD, 'resources.json'), 'utf8')) : { kernels: {} };

  it('declares every compiled entry point exactly once', () => {
    const declared = ALL_DECLS.map((d) => d.name).sort();
    expect(new Set(declared).size).toBe(declared.length);
    expect(declared).toEqual(Object.keys(entries).sort());
  });

  for (const decl of ALL_DECLS) {
    it(`${decl.name} has the PTX parameter list of its declaration`, () => {
      expect(entries[decl.name], `${decl.name} is not in the PTX`).toBeDefined();
      expect(decl.params.map(([, t]) => PTX_PARAM_TYPE[t])).toEqual(entries[decl.name]);
    });
  }

  it('the memory-bound kernels move their vectors in single 16-byte accesses', () => {
    // A vec8 copied as four bf16x2/half2 pairs compiles to four 32-bit accesses (ld.global.v2.u16,
    // st.global.u32) for each 16-byte vector: four times the memory instructions of the one
    // ld/st.global.v4 these kernels are written for (kernels/common.cuh, vec8).
    const ptx = readFileSync(path.join(BUILD, 'tessera.ptx'), 'utf8');
    const bodies = new Map<string, string>();
    for (const m of ptx.matchAll(/^\.visible \.entry (\w+)\(([\s\S]*?)^\}/gm)) bodies.set(m[1], m[2]);
    const names = [...bodies.keys()].filter((n) => /^ts_(rmsnorm|layernorm|add_rmsnorm|add_layernorm|add|mul|act|act_mul|add_bias|slice_cols|gather_rows|rope|kv_write|rope_kv_write)_(bf16|f16)$/.test(n));
    expect(names.length).toBe(28);
    const split: string[] = [];
    for (const n of names) {
      const body = bodies.get(n)!;
      if (!/ld\.global(\.nc)?\.v4\./.test(body) || !/st\.global\.v4\./.test(body) || /ld\.global(\.nc)?\.v2\.u16|st\.global\.u32/.test(body)) split.push(n);
    }
    expect(split).toEqual([]);
  });

  it('the Hopper kernels hand registers between warpgroups within what ptxas gave their entry', () => {
    // setmaxnreg.inc waits until the block's pool has the registers: the pool is the entry's count
    // times its threads, and a pool smaller than the producer's setmaxnreg.dec target plus the
    // consumers' inc targets would hang the kernel rather than fail it. One producer warpgroup
    // and two consumers of 128 threads each (THREADS = 384 in both files).
    const sm90 = report.kernels as Record<string, Record<string, { registers: number }>>;
    for (const [file, prefix] of [
      ['gemm_sm90.cu', 'ts_gemm_sm90_'],
      ['attention_sm90.cu', 'ts_attention_prefill_sm90'],
    ]) {
      const src = readFileSync(path.join(import.meta.dirname, '../../kernels', file), 'utf8');
      expect(src, file).toMatch(/constexpr int THREADS = 384;/);
      const dec = Number(/setmaxnreg\.dec\.sync\.aligned\.u32 (\d+);/.exec(src)![1]);
      const inc = Number(/setmaxnreg\.inc\.sync\.aligned\.u32 (\d+);/.exec(src)![1]);
      for (const n of [dec, inc]) expect(n % 8 === 0 && n >= 24 && n <= 256, `${file}: setmaxnreg ${n}`).toBe(true);
      const entries = Object.keys(sm90).filter((k) => k.startsWith(prefix));
      expect(entries.length, file).toBeGreaterThan(0);
      for (const k of entries) expect(sm90[k].sm_90a.registers * 384, `${k}: ${sm90[k].sm_90a.registers} registers x 384 threads`).toBeGreaterThanOrEqual(128 * dec + 256 * inc);
    }
  });

  it('every sm_90a entry waits for the kernel before it before it touches global memory, on every path', () => {
    // On sm_90 every kernel is launched to start while the kernel before it drains (programmatic
    // dependent launch, kernels/common.cuh): its griddepcontrol.wait is all that keeps it from
    // reading that kernel's output early or overwriting what that kernel still reads. Before the
    // wait only parameter loads and L2 prefetches (hints: no value is read) may come, no exit or
    // trap, and no branch past the wait; after it, the trigger that lets the next kernel start.
    const ptx = readFileSync(path.join(BUILD, 'tessera_sm90a.ptx'), 'utf8');
    const bodies = new Map<string, string>();
    for (const m of ptx.matchAll(/^\.visible \.entry (\w+)\(([\s\S]*?)^\}/gm)) bodies.set(m[1], m[2]);
    expect([...bodies.keys()].sort()).toEqual(Object.keys(entries).sort());
    const bad: string[] = [];
    for (const [name, body] of bodies) {
      const at = body.indexOf('griddepcontrol.wait;');
      if (at < 0) {
        bad.push(`${name}: no griddepcontrol.wait`);
        continue;
      }
      if (body.indexOf('griddepcontrol.launch_dependents;', at) < 0) bad.push(`${name}: no griddepcontrol.launch_dependents after the wait`);
      const lines = body
        .slice(0, at)
        .split('\n')
        .map((l) => l.replace(/\/\/.*$/, '').trim())
        .filter((l) => l && !l.startsWith('.') && l !== '{' && l !== '}');
      const labels = new Set(lines.filter((l) => l.endsWith(':')).map((l) => l.slice(0, -1)));
      for (const l of lines) {
        if (l.endsWith(':')) continue;
        const op = l.replace(/^@!?%\w+\s+/, '').split(/\s/)[0];
        const branch = /^bra(\.uni)?$/.test(op) ? /(\$?\w+);$/.exec(l)?.[1] : undefined;
        if (/^(ld|st|ldu|atom|red|cp|mbarrier|tex|suld|sust|multimem|ldmatrix|stmatrix|wgmma|tensormap)\./.test(op) && !op.startsWith('ld.param')) bad.push(`${name}: ${l} before the wait`);
        else if (/^(ret|exit|trap)\b/.test(op)) bad.push(`${name}: ${l} before the wait`);
        else if (branch !== undefined && !labels.has(branch)) bad.push(`${name}: ${l} jumps past the wait`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('no kernel spills or uses a stack frame on any architecture', () => {
    const bad: string[] = [];
    for (const [kernel, byArch] of Object.entries(report.kernels as Record<string, Record<string, { stackBytes: number; spillStoreBytes: number; spillLoadBytes: number }>>))
      for (const [arch, r] of Object.entries(byArch)) if (r.stackBytes || r.spillStoreBytes || r.spillLoadBytes) bad.push(`${kernel} ${arch}`);
    expect(bad).toEqual([]);
  });
});
