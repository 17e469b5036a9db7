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

  it('no kernel spills or uses a stack frame on any architecture', () => {
    const bad: string[] = [];
    for (const [kernel, byArch] of Object.entries(report.kernels as Record<string, Record<string, { stackBytes: number; spillStoreBytes: number; spillLoadBytes: number }>>))
      for (const [arch, r] of Object.entries(byArch)) if (r.stackBytes || r.spillStoreBytes || r.spillLoadBytes) bad.push(`${kernel} ${arch}`);
    expect(bad).toEqual([]);
  });
});
