/**
 * tessera bench kernels: Tessera's kernels one op at a time on the GPU, beside the ceilings
 * measured in the same run (a large device-to-device copy; cuBLASLt's best large bf16 GEMM) and,
 * for GEMM, beside cuBLASLt on the same shape, in the same process and on the same stream.
 *
 * Method (the device tool's METHOD.md): random data filled on the device (never zeros); input
 * sets rotated so that the bytes one timed call reads exceed twice the L2; warm-up runs; an event
 * pair around every timed run; the median of at least 20. Each case's FLOPs and fewest bytes
 * (every input read once, every output written once) give its floor at the measured ceilings.
 * Our GEMM is checked against cuBLASLt's output on the same inputs. The cases come from
 * bench/kernel_shapes.json, which bench/torch_kernels.py reads too.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HostTensor, StepBatch } from '../backend/backend.js';
import type { Attrs } from '../graph/ir.js';
import { OPS, type OpName } from '../graph/ops.js';
import { choicesFileName, deriveChoices, type GemmResult, type KernelChoices } from '../backend/cuda/kernel_choices.js';
import { ATTENTION_VARIANTS, sm90AttentionRefusal } from '../backend/cuda/ops/attention.js';
import { GEMM_HOPPER_VARIANTS, GEMM_VARIANTS, GEMV_MAX_R, SM90S_UNSPLIT, TILES_UNSPLIT, gemmPlan, gemmSm90Plan, type GemmVariant } from '../backend/cuda/ops/gemm.js';
import { TesseraError } from '../errors.js';
import { bf16ToF32, f16ToF32 } from '../util/dtype.js';
import { median, percentile } from '../util/stats.js';
import { numberFlag, parse } from './args.js';

const HELP = `Usage: tessera bench kernels [options]

Times Tessera's CUDA kernels op by op against the copy bandwidth and cuBLASLt's best large GEMM
measured in the same run, and our GEMM against cuBLASLt shape by shape (needs a CUDA GPU).

      --family LIST              gemm, attention, memory (comma-separated; default all)
      --filter TEXT              only cases whose name contains TEXT
      --exclude TEXT             leave out cases whose name contains TEXT
      --skip-kernels LIST        leave out the cases of these kernels, comma-separated as
                                 "op variant" ("matmul sm90,attention sm90o"; bf16 and fp16)
      --runs N                   timed runs per case, at least 20 (default 30)
      --warmup N                 untimed runs first (default 5)
      --shapes FILE              case list (default bench/kernel_shapes.json)
      --out FILE                 write the JSON report there
      --write-choices DIR        derive this GPU's kernel choices from the run and write them to
                                 DIR/<gpu>.json (commit under kernels/choices/: the engine then
                                 runs the measured fastest GEMM variant per M)
      --choices-from FILE        with --write-choices: derive them from a saved report instead
                                 of running (no GPU needed)
      --time-limit SECONDS       start no case after this many seconds: the report says which
                                 cases were left (the GPU run's budget, tools/gpu/run.sh)
      --resume FILE              go on from a report a run left incomplete (its ceilings and
                                 results are kept; the cases it has are not run again, nor any
                                 case of a kernel that faulted or hung in it); with --out FILE
                                 the same file, rewritten as it goes
      --json                     print the JSON report instead of the table

With --out the report is rewritten after every case ("complete": false until the last, "running"
naming the case in progress), so a run cut short (a timeout, a hang) keeps what it measured. A
kernel fault ends the run at once, since the CUDA context cannot be used after one: the report
names the case ("stopped", "faults") and the exit status is 3; --resume then goes on past it.
The cases run in order of what they tell: Llama-3-8B's GEMMs, attention, the memory-bound ops,
then the larger model's GEMMs, the residual epilogue and fp16.`;

// ---- the case list (pure: tested without a GPU) ----

export interface KernelShapes {
  gemm: {
    m: number[];
    projections: Array<{ model: string; name: string; n: number; k: number }>;
    ceiling: { m: number; n: number; k: number };
    /** The fp16 cases: these models' projections at these M (bf16 runs every case). */
    f16?: { models: string[]; m: number[] };
    /**
     * matmul_add cases (the residual add in the GEMM epilogue): these projections of these models
     * at these M, beside cuBLASLt with the residual as C (beta = 1).
     */
    residual?: { models: string[]; names: string[]; m: number[] };
    /**
     * matmul_glu cases (SwiGLU in the GEMM epilogue, w's gate and up rows in pairs): these
     * projections (gate_up, N = 2I) of these models at these M, each beside silu_mul at [M, I],
     * the launch the epilogue saves (gluComparisons; cuBLASLt has no such epilogue).
     */
    glu?: { models: string[]; names: string[]; m: number[] };
    /**
     * matmul cases with an RMS norm folded in (attr rmsEps): these projections of these models at
     * these M, each beside rmsnorm at [M, K], the kernel the fold saves (normComparisons).
     */
    rms?: { models: string[]; names: string[]; m: number[] };
    /**
     * matmul_rope_kv cases (RoPE and the KV-cache write in the q/k/v GEMM's epilogue, heads as
     * memoryBound.rope): these projections of these models at these M, each beside
     * rope_kv_write at the same rows and heads, the kernel the epilogue saves (ropeComparisons).
     */
    rope?: { models: string[]; names: string[]; m: number[] };
  };
  attention: {
    prefill: Array<{ heads: number; kvHeads: number; headDim: number; batch: number; seqlen: number; causal: boolean }>;
    decode: Array<{ heads: number; kvHeads: number; headDim: number; batch: number; context: number }>;
    kvBlockSize: number;
  };
  memoryBound: { rows: number[]; hidden: number[]; ops: string[]; rope: { heads: number; kvHeads: number; headDim: number; kvBlockSize: number } };
}

export type Family = 'gemm' | 'attention' | 'memory';

/** One benchmark case: what it computes, its work, and how to build it on a backend. */
export interface KernelCase {
  family: Family;
  name: string;
  op: OpName;
  attrs: Attrs;
  /** Inputs: a shape filled on the device with uniform values, or host data (indices). */
  inputs: Array<{ shape: number[]; bound: number } | HostTensor>;
  outputShapes: number[][];
  step: StepBatch;
  flops: number;
  /** The fewest bytes the op must move through device memory. */
  bytes: number;
  /** Why this case is not run, when Tessera has no kernel for it. */
  unsupported?: string;
  /**
   * GEMM only: cuBLASLt's shape; with residual, input 2 is its C (y = x w^T + C); with glu, y is
   * [m, n / 2] gated. epilogueOnly: an epilogue cuBLASLt has not (the gated unit, a folded norm),
   * so it is not run beside; the case is compared with the kernels it saves instead.
   */
  gemm?: { m: number; n: number; k: number; residual?: boolean; glu?: boolean; epilogueOnly?: boolean };
  /** The storage type of the inputs and output (default bf16; f16 runs the kernels' fp16 entries). */
  dtype?: 'bf16' | 'f16';
  /**
   * A rung of a kernel ladder without an outside baseline in this process (attention): the case
   * it is checked against on the same inputs (its name; run earlier in the list, with the attrs
   * given here), and the speedup over it.
   */
  ladderBase?: { name: string; attrs: Attrs; rowWidth: number };
}

export function defaultShapesPath(): string {
  return fileURLToPath(new URL('../../bench/kernel_shapes.json', import.meta.url));
}

const i32 = (values: ArrayLike<number>, shape = [values.length]): HostTensor => ({ data: Int32Array.from(values), shape });

/** A step of `numSeqs` sequences with these query and context lengths and block tables. */
function attentionStep(queryLens: number[], contextLens: number[], tables: Int32Array, width: number): StepBatch {
  const queryStart = [0];
  for (const q of queryLens) queryStart.push(queryStart[queryStart.length - 1] + q);
  const tokens = queryStart[queryStart.length - 1];
  return {
    numTokens: tokens,
    numSeqs: queryLens.length,
    numLogitRows: queryLens.length,
    tokenIds: new Int32Array(tokens),
    positions: new Int32Array(tokens),
    slotMapping: new Int32Array(tokens).fill(-1),
    queryStart: Int32Array.from(queryStart),
    contextLens: Int32Array.from(contextLens),
    blockTables: tables,
    blockTableWidth: width,
    logitsIndices: Int32Array.from(queryStart.slice(1), (e) => e - 1),
  };
}

function rowsStep(rows: number): StepBatch {
  return attentionStep([rows], [rows], new Int32Array(1), 1);
}

/**
 * Block tables for `seqs` sequences of `context` tokens each: every sequence owns its blocks,
 * laid out in a fixed shuffled order (as a pool that has run for a while hands them out).
 */
function pagedTables(seqs: number, context: number, blockSize: number): { tables: Int32Array; width: number; blocks: number } {
  const width = Math.ceil(context / blockSize);
  const blocks = seqs * width;
  const order = Array.from({ length: blocks }, (_, i) => i);
  let state = 0x9e3779b9;
  for (let i = blocks - 1; i > 0; i--) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const j = state % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return { tables: Int32Array.from(order), width, blocks };
}

export function expandCases(shapes: KernelShapes, families: readonly Family[], filter = ''): KernelCase[] {
  const cases: KernelCase[] = [];
  // The first model's GEMMs first, the other models' after the memory family: a run cut by its
  // time limit has then measured every family at one model's shapes.
  const firstModel = shapes.gemm.projections[0]?.model;
  const gemm = families.includes('gemm') ? gemmCases(shapes, 'bf16') : [];
  const isFirst = (c: KernelCase) => c.name.startsWith(`gemm ${firstModel} `);
  cases.push(...gemm.filter(isFirst));
  if (families.includes('attention')) {
    const bs = shapes.attention.kvBlockSize;
    for (const a of shapes.attention.prefill) {
      const { tables, width, blocks } = pagedTables(a.batch, a.seqlen, bs);
      const tokens = a.batch * a.seqlen;
      const pairs = a.causal ? (a.seqlen * (a.seqlen + 1)) / 2 : a.seqlen * a.seqlen;
      const step = attentionStep(new Array(a.batch).fill(a.seqlen), new Array(a.batch).fill(a.seqlen), tables, width);
      const name = `attention prefill B${a.batch} S${a.seqlen} H${a.heads} KV${a.kvHeads} hd${a.headDim} ${a.causal ? 'causal' : 'full'}`;
      const attrs: Attrs = { numHeads: a.heads, numKvHeads: a.kvHeads, headDim: a.headDim, scale: 1 / Math.sqrt(a.headDim), slidingWindow: null, causal: a.causal };
      const base = {
        family: 'attention' as const,
        op: 'attention' as const,
        inputs: [
          { shape: [tokens, a.heads * a.headDim], bound: 1 },
          { shape: [2, blocks, bs, a.kvHeads, a.headDim], bound: 1 },
          i32(step.queryStart),
          i32(step.contextLens),
          i32(tables, [a.batch, width]),
        ],
        outputShapes: [[tokens, a.heads * a.headDim]],
        step,
        flops: 4 * a.batch * a.heads * a.headDim * pairs,
        bytes: 2 * (2 * tokens * a.heads * a.headDim + 2 * tokens * a.kvHeads * a.headDim),
      };
      // The ladder: the mma.sync kernel, then the Hopper kernel's two rungs (ping-pong; and the
      // softmax overlapped with the warpgroup's own PV), each checked against it (they need
      // compute capability 9 and head dim 64 or 128: benchKernels skips them elsewhere).
      cases.push({ ...base, name, attrs: { ...attrs, attentionVariant: 'tiles' } });
      const refusal = sm90AttentionRefusal({ regime: 'prefill', computeMajor: 9, headDim: a.headDim, blockSize: bs, numCacheBlocks: blocks });
      for (const variant of ['sm90', 'sm90o'] as const)
        cases.push({
          ...base,
          name: `${name} ${variant}`,
          attrs: { ...attrs, attentionVariant: variant },
          ...(refusal ? { unsupported: `the sm90 prefill kernel does not take it: ${refusal}` } : {}),
          ladderBase: { name, attrs: { ...attrs, attentionVariant: 'tiles' }, rowWidth: a.heads * a.headDim },
        });
    }
    for (const d of shapes.attention.decode) {
      const { tables, width, blocks } = pagedTables(d.batch, d.context, bs);
      const step = attentionStep(new Array(d.batch).fill(1), new Array(d.batch).fill(d.context), tables, width);
      const name = `attention decode B${d.batch} ctx${d.context} H${d.heads} KV${d.kvHeads} hd${d.headDim}`;
      const attrs: Attrs = { numHeads: d.heads, numKvHeads: d.kvHeads, headDim: d.headDim, scale: 1 / Math.sqrt(d.headDim), slidingWindow: null };
      const decodeCase = {
        family: 'attention' as const,
        name,
        op: 'attention' as const,
        attrs,
        inputs: [
          { shape: [d.batch, d.heads * d.headDim], bound: 1 },
          { shape: [2, blocks, bs, d.kvHeads, d.headDim], bound: 1 },
          i32(step.queryStart),
          i32(step.contextLens),
          i32(tables, [d.batch, width]),
        ],
        outputShapes: [[d.batch, d.heads * d.headDim]],
        step,
        flops: 4 * d.batch * d.heads * d.headDim * d.context,
        bytes: 2 * (2 * d.batch * d.context * d.kvHeads * d.headDim + 2 * d.batch * d.heads * d.headDim),
      };
      // The ladder: split-KV's merge fused into the last split's block (the default), and the
      // rung before it, the merge in a second launch, checked against it (where the plan does
      // not split the context the two are the same launch).
      cases.push(decodeCase, {
        ...decodeCase,
        name: `${name} combine`,
        attrs: { ...attrs, attentionCombine: 'separate' },
        ladderBase: { name, attrs, rowWidth: d.heads * d.headDim },
      });
    }
  }
  if (families.includes('memory')) {
    const mb = shapes.memoryBound;
    for (const op of mb.ops)
      for (const rows of mb.rows)
        for (const h of mb.hidden) {
          const c = memoryCase(op, rows, h, mb.rope);
          if (c) cases.push(c);
        }
    // silu_mul at the gated-unit cases' [M, I] (gemm.glu) and rmsnorm at the folded-norm cases'
    // [M, K] (gemm.rms): the kernels those epilogues save.
    const names = new Set(cases.map((c) => c.name));
    for (const [op, m, h] of [
      ...epilogueShapes(shapes, 'glu').map(([m, n]) => ['silu_mul', m, n / 2] as const),
      ...epilogueShapes(shapes, 'rms', 'k').map(([m, k]) => ['rmsnorm', m, k] as const),
      ...epilogueShapes(shapes, 'rope').map(([m]) => ['rope_kv_write', m, mb.rope.heads * mb.rope.headDim] as const),
    ]) {
      const c = memoryCase(op, m, h, mb.rope);
      if (c && !names.has(c.name)) {
        cases.push(c);
        names.add(c.name);
      }
    }
  }
  // Then the other models' GEMMs, the residual epilogue's cases (after the memory family, whose
  // norm cases its comparison needs), and the fp16 GEMM cases last: a run cut short by its time
  // limit loses these first.
  cases.push(...gemm.filter((c) => !isFirst(c)));
  if (families.includes('gemm'))
    cases.push(...residualCases(shapes), ...epilogueCases(shapes, 'glu'), ...epilogueCases(shapes, 'rms'), ...epilogueCases(shapes, 'rope'), ...gemmCases(shapes, 'f16'));
  return cases.filter((c) => c.name.includes(filter));
}

/**
 * The GEMM rungs timed at M rows: the GEMV where it applies (M <= 8), the ping-pong and cluster
 * Hopper kernels (sm90p, sm90c, sm90pc) where it does not (their 128-row tiles are the cooperative kernel's, and a
 * cluster's second row tile would be empty; at M <= 8 the contest is between the GEMV and the
 * rungs that spread K: sm90s and stream-K).
 */
function gemmLadder(m: number): GemmVariant[] {
  return m <= GEMV_MAX_R[GEMV_MAX_R.length - 1] ? ['tiles', 'gemv', 'sm90', 'sm90s', 'sm90k'] : ['tiles', 'sm90', 'sm90s', 'sm90p', 'sm90k', 'sm90c', 'sm90pc'];
}

/** The GEMM cases in one storage type: every projection x M in bf16; gemm.f16's subset in fp16. */
function gemmCases(shapes: KernelShapes, dtype: 'bf16' | 'f16'): KernelCase[] {
  const cases: KernelCase[] = [];
  const f16 = shapes.gemm.f16;
  for (const p of shapes.gemm.projections)
    for (const m of shapes.gemm.m) {
      if (dtype === 'f16' && !(f16 && f16.models.includes(p.model) && f16.m.includes(m))) continue;
      // The kernel-lab ladder: every variant that applies to the shape, each beside cuBLASLt
      // (the Hopper rungs need compute capability 9: benchKernels skips them elsewhere, and sm90s
      // where its plan does not split K, which is sm90's launch).
      // Where the tile kernel splits K (M <= 64 at most; left out at run time where its plan on
      // the GPU does not split), its rung before the split merge, the partials reduced by a
      // second kernel (` reduce`), is timed beside it.
      const variants: Array<GemmVariant | 'reduce'> = [...gemmLadder(m)];
      if (m <= 64) variants.splice(1, 0, 'reduce');
      for (const variant of variants)
        cases.push({
          family: 'gemm',
          name: `gemm ${p.model} ${p.name} M${m} N${p.n} K${p.k}${dtype === 'f16' ? ' f16' : ''}${variant === 'tiles' ? '' : ` ${variant}`}`,
          op: 'matmul',
          attrs: {
            ...(variant === 'reduce' ? { gemmVariant: 'tiles', gemmSplitMerge: 'separate' } : { gemmVariant: variant }),
            ...(dtype === 'f16' ? { storageDtype: 'f16' } : {}),
          },
          dtype,
          inputs: [{ shape: [m, p.k], bound: 1 }, { shape: [p.n, p.k], bound: 1 / Math.sqrt(p.k) }],
          outputShapes: [[m, p.n]],
          step: rowsStep(m),
          flops: 2 * m * p.n * p.k,
          bytes: 2 * (m * p.k + p.n * p.k + m * p.n),
          gemm: { m, n: p.n, k: p.k },
        });
    }
  return cases;
}

/**
 * The residual add in the epilogue (bf16): what matmul_add costs over matmul at the same shape,
 * and what it saves against add_rmsnorm (residualComparisons, with the memory family's rmsnorm
 * and add_rmsnorm cases at the hidden size).
 */
function residualCases(shapes: KernelShapes): KernelCase[] {
  const cases: KernelCase[] = [];
  const res = shapes.gemm.residual;
  const dtype = 'bf16';
  if (res)
    for (const p of shapes.gemm.projections)
      for (const m of res.m) {
        if (!res.models.includes(p.model) || !res.names.includes(p.name)) continue;
        const variants = gemmLadder(m);
        for (const variant of variants)
          cases.push({
            family: 'gemm',
            name: `gemm ${p.model} ${p.name} M${m} N${p.n} K${p.k} +res${variant === 'tiles' ? '' : ` ${variant}`}`,
            op: 'matmul_add',
            attrs: { gemmVariant: variant },
            dtype,
            inputs: [{ shape: [m, p.k], bound: 1 }, { shape: [p.n, p.k], bound: 1 / Math.sqrt(p.k) }, { shape: [m, p.n], bound: 1 }],
            outputShapes: [[m, p.n]],
            step: rowsStep(m),
            flops: 2 * m * p.n * p.k,
            bytes: 2 * (m * p.k + p.n * p.k + 2 * m * p.n),
            gemm: { m, n: p.n, k: p.k, residual: true },
          });
      }
  return cases;
}

/**
 * The epilogues cuBLASLt has not, in bf16, at the projections gemm.glu, gemm.rms and gemm.rope
 * name, each at its M with every rung (and the split-K reduce's where the tiles split):
 *   +glu   matmul_glu (silu): y [M, N / 2], the gated unit in the epilogue;
 *   +rms   matmul with an RMS norm of x folded in (rmsEps);
 *   +rope  matmul_rope_kv: q [M, H hd] rotated, k rotated and v written into a paged cache (heads
 *          as memoryBound.rope; a projection of another width is left out).
 * The memory family runs what each saves (silu_mul at [M, N / 2], rmsnorm at [M, K],
 * rope_kv_write at [M, H hd]): with the plain GEMM case, what the graph ran before
 * fuse_matmul_glu, fold_rmsnorm or fuse_matmul_rope_kv (gluComparisons, normComparisons,
 * ropeComparisons).
 */
function epilogueCases(shapes: KernelShapes, which: 'glu' | 'rms' | 'rope'): KernelCase[] {
  const cases: KernelCase[] = [];
  const sel = shapes.gemm[which];
  const rope = shapes.memoryBound.rope;
  if (sel)
    for (const p of shapes.gemm.projections)
      for (const m of sel.m) {
        if (!sel.models.includes(p.model) || !sel.names.includes(p.name)) continue;
        if (which === 'rope' && p.n !== (rope.heads + 2 * rope.kvHeads) * rope.headDim) continue;
        const variants: Array<GemmVariant | 'reduce'> = [...gemmLadder(m)];
        if (m <= 64) variants.splice(1, 0, 'reduce');
        const yCols = which === 'glu' ? p.n / 2 : which === 'rope' ? rope.heads * rope.headDim : p.n;
        for (const variant of variants) {
          const c: KernelCase = {
            family: 'gemm',
            name: `gemm ${p.model} ${p.name} M${m} N${p.n} K${p.k} +${which}${variant === 'tiles' ? '' : ` ${variant}`}`,
            op: which === 'glu' ? 'matmul_glu' : which === 'rope' ? 'matmul_rope_kv' : 'matmul',
            attrs: {
              ...(which === 'glu' ? { act: 'silu' } : which === 'rms' ? { rmsEps: 1e-5 } : {}),
              ...(variant === 'reduce' ? { gemmVariant: 'tiles', gemmSplitMerge: 'separate' } : { gemmVariant: variant }),
            },
            dtype: 'bf16',
            inputs: [{ shape: [m, p.k], bound: 1 }, { shape: [p.n, p.k], bound: 1 / Math.sqrt(p.k) }],
            outputShapes: [[m, yCols]],
            step: rowsStep(m),
            flops: 2 * m * p.n * p.k,
            bytes: 2 * (m * p.k + p.n * p.k + m * yCols),
            gemm: { m, n: p.n, k: p.k, ...(which === 'glu' ? { glu: true } : {}), epilogueOnly: true },
          };
          if (which === 'rope') {
            // Positions 0..M-1 into slots 0..M-1 of a cache one block larger: k and v [M, KV hd] each written.
            const ropeCase = memoryCase('rope_kv_write', m, rope.heads * rope.headDim, rope)!;
            const [, positions, cache, slots] = ropeCase.inputs;
            c.attrs = { ...c.attrs, numHeads: rope.heads, numKvHeads: rope.kvHeads, headDim: rope.headDim, rope: { rotaryDim: rope.headDim, theta: 500000, scaling: null } };
            c.inputs = [...c.inputs, positions, cache, slots];
            c.outputShapes = [[m, yCols], ropeCase.outputShapes[1]];
            c.step = ropeCase.step;
            c.bytes = 2 * (m * p.k + p.n * p.k + m * p.n) + 8 * m;
          }
          cases.push(c);
        }
      }
  return cases;
}

/** [M, N] (or [M, K]) of every case of gemm.glu, gemm.rms or gemm.rope. */
function epilogueShapes(shapes: KernelShapes, which: 'glu' | 'rms' | 'rope', dim: 'n' | 'k' = 'n'): Array<[number, number]> {
  const sel = shapes.gemm[which];
  if (!sel) return [];
  return shapes.gemm.projections.filter((p) => sel.models.includes(p.model) && sel.names.includes(p.name)).flatMap((p) => sel.m.map((m): [number, number] => [m, p[dim]]));
}

function memoryCase(op: string, r: number, h: number, rope: KernelShapes['memoryBound']['rope']): KernelCase | null {
  const base = { family: 'memory' as const, step: rowsStep(r), flops: 0 };
  switch (op) {
    case 'rmsnorm':
      return { ...base, name: `rmsnorm R${r} H${h}`, op: 'rmsnorm', attrs: { eps: 1e-5 }, inputs: [{ shape: [r, h], bound: 1 }, { shape: [h], bound: 1 }], outputShapes: [[r, h]], bytes: 2 * (2 * r * h + h) };
    case 'add_rmsnorm':
      return {
        ...base,
        name: `add_rmsnorm R${r} H${h}`,
        op: 'add_rmsnorm',
        attrs: { eps: 1e-5 },
        inputs: [{ shape: [r, h], bound: 1 }, { shape: [r, h], bound: 1 }, { shape: [h], bound: 1 }],
        outputShapes: [[r, h], [r, h]],
        bytes: 2 * (4 * r * h + h),
      };
    case 'add_layernorm':
      return {
        ...base,
        name: `add_layernorm R${r} H${h}`,
        op: 'add_layernorm',
        attrs: { eps: 1e-5 },
        inputs: [{ shape: [r, h], bound: 1 }, { shape: [r, h], bound: 1 }, { shape: [h], bound: 1 }, { shape: [h], bound: 1 }],
        outputShapes: [[r, h], [r, h]],
        bytes: 2 * (4 * r * h + 2 * h),
      };
    case 'silu_mul':
      return { ...base, name: `silu_mul R${r} H${h}`, op: 'act_mul', attrs: { act: 'silu' }, inputs: [{ shape: [r, 2 * h], bound: 4 }], outputShapes: [[r, h]], bytes: 2 * 3 * r * h };
    case 'rope_kv_write': {
      // Heads follow the hidden size at the shapes' head dim (h = heads * headDim).
      const hd = rope.headDim, heads = h / hd, kv = Math.max(1, Math.round((heads * rope.kvHeads) / rope.heads));
      if (!Number.isInteger(heads)) return null;
      const bs = rope.kvBlockSize, blocks = Math.ceil(r / bs) + 1;
      const step = rowsStep(r);
      step.positions = Int32Array.from({ length: r }, (_, i) => i);
      step.slotMapping = Int32Array.from({ length: r }, (_, i) => i);
      const width = (heads + 2 * kv) * hd;
      return {
        ...base,
        step,
        name: `rope_kv_write R${r} H${heads} KV${kv} hd${hd}`,
        op: 'rope_kv_write',
        attrs: { numHeads: heads, numKvHeads: kv, headDim: hd, rope: { rotaryDim: hd, theta: 500000, scaling: null }, qkNormEps: null },
        inputs: [{ shape: [r, width], bound: 1 }, i32(step.positions), { shape: [2, blocks, bs, kv, hd], bound: 1 }, i32(step.slotMapping)],
        outputShapes: [[r, heads * hd], [2, blocks, bs, kv, hd]],
        bytes: 2 * r * width + 8 * r + 2 * r * width,
      };
    }
    default:
      throw new TesseraError(`bench/kernel_shapes.json: unknown memory-bound op "${op}" (rmsnorm, add_rmsnorm, add_layernorm, silu_mul, rope_kv_write).`, 'invalid_input');
  }
}

/** Input sets to rotate among so one timed call reads more than twice the L2, within a memory budget. */
export function rotationSets(bytesPerCall: number, l2Bytes: number, budgetBytes: number, most = 16): number {
  const want = Math.ceil((2 * l2Bytes) / Math.max(1, bytesPerCall));
  const fit = Math.floor(budgetBytes / Math.max(1, bytesPerCall));
  return Math.max(1, Math.min(want, fit, most));
}

/** Relative error norm ||a - b|| / ||b||. */
export function relativeError(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

export interface Timing {
  medianMs: number;
  p10Ms: number;
  p90Ms: number;
}

export function timing(ms: number[]): Timing {
  const r = (x: number) => Number(x.toFixed(5));
  return { medianMs: r(median(ms)), p10Ms: r(percentile(ms, 10)), p90Ms: r(percentile(ms, 90)) };
}

/** What a case reached, against the ceilings. */
export function rates(c: Pick<KernelCase, 'flops' | 'bytes'>, ms: number, ceilings: { copyBytesPerS: number; gemmFlopsPerS: number | null }) {
  const s = ms / 1000;
  const tflops = c.flops / s / 1e12, gbs = c.bytes / s / 1e9;
  // The floor: the larger of the two times the ceilings allow.
  const floorS = Math.max(c.bytes / ceilings.copyBytesPerS, ceilings.gemmFlopsPerS ? c.flops / ceilings.gemmFlopsPerS : 0);
  return {
    tflops: Number(tflops.toFixed(2)),
    gbs: Number(gbs.toFixed(1)),
    percentOfCopy: Number(((100 * c.bytes) / s / ceilings.copyBytesPerS).toFixed(1)),
    percentOfGemm: ceilings.gemmFlopsPerS ? Number(((100 * c.flops) / s / ceilings.gemmFlopsPerS).toFixed(1)) : null,
    floorMs: Number((floorS * 1000).toFixed(5)),
  };
}

/** The residual epilogue against the add + norm fusion it replaces, at one GEMM shape and variant. */
export interface ResidualComparison {
  /** The GEMM case without the residual (its name without " +res"). */
  gemm: string;
  m: number;
  hidden: number;
  /** matmul_add + rmsnorm: the graph the passes make. */
  epilogueMs: number;
  /** matmul + add_rmsnorm: the graph without fuse_residual. */
  separateMs: number;
  /** separateMs / epilogueMs: above 1 the residual epilogue is the right default. */
  speedup: number;
}

/**
 * For every `+res` GEMM case whose output width is a hidden size the memory family ran at the
 * same rows: the time of matmul_add + rmsnorm against matmul + add_rmsnorm, all four measured in
 * this run. This is the decision fuse_residual takes before fuse_add_norm (docs/perf/gemm.md).
 */
export function residualComparisons(results: ReadonlyArray<{ name: string; tessera?: { medianMs: number } }>): ResidualComparison[] {
  const ms = new Map<string, number>();
  for (const r of results) if (r.tessera) ms.set(r.name, r.tessera.medianMs);
  const out: ResidualComparison[] = [];
  for (const [name, resMs] of ms) {
    const m = /^(gemm \S+ \S+ M(\d+) N(\d+) K\d+) \+res( gemv| sm90(?:pc|[spkc])?)?$/.exec(name);
    if (!m) continue;
    const gemm = m[1] + (m[4] ?? ''), rows = Number(m[2]), hidden = Number(m[3]);
    const plain = ms.get(gemm), norm = ms.get(`rmsnorm R${rows} H${hidden}`), addNorm = ms.get(`add_rmsnorm R${rows} H${hidden}`);
    if (plain === undefined || norm === undefined || addNorm === undefined) continue;
    const epilogueMs = resMs + norm, separateMs = plain + addNorm;
    out.push({ gemm, m: rows, hidden, epilogueMs: r5(epilogueMs), separateMs: r5(separateMs), speedup: Number((separateMs / epilogueMs).toFixed(3)) });
  }
  return out;
}

/** The gated-unit epilogue against the GEMM + silu_mul it replaces, at one shape and rung. */
export interface GluComparison {
  /** The plain GEMM case (the glu case's name without " +glu"). */
  gemm: string;
  m: number;
  inner: number;
  /** matmul_glu: the graph the passes make. */
  epilogueMs: number;
  /** matmul + silu_mul: the graph without fuse_matmul_glu. */
  separateMs: number;
  /** separateMs / epilogueMs: above 1 the gated epilogue is the right default. */
  speedup: number;
}

/**
 * Every timed `+<suffix>` GEMM case (any rung) whose plain GEMM case and companion (the kernel
 * the epilogue saves, named from M, N and K) were timed in the same run: the three medians.
 */
function epiloguePairs(
  results: ReadonlyArray<{ name: string; tessera?: { medianMs: number } }>,
  suffix: 'glu' | 'rms' | 'rope',
  companion: (m: number, n: number, k: number) => string,
): Array<{ gemm: string; m: number; n: number; k: number; epilogueMs: number; plainMs: number; companionMs: number }> {
  const ms = new Map<string, number>();
  for (const r of results) if (r.tessera) ms.set(r.name, r.tessera.medianMs);
  const re = new RegExp(`^(gemm \\S+ \\S+ M(\\d+) N(\\d+) K(\\d+)) \\+${suffix}( reduce| gemv| sm90(?:pc|[spkc])?)?$`);
  const out = [];
  for (const [name, epilogueMs] of ms) {
    const m = re.exec(name);
    if (!m) continue;
    const [rows, n, k] = [Number(m[2]), Number(m[3]), Number(m[4])];
    const gemm = m[1] + (m[5] ?? '');
    const plainMs = ms.get(gemm), companionMs = ms.get(companion(rows, n, k));
    if (plainMs !== undefined && companionMs !== undefined) out.push({ gemm, m: rows, n, k, epilogueMs, plainMs, companionMs });
  }
  return out;
}

const r5 = (x: number) => Number(x.toFixed(5));

/** For every `+glu` case whose plain GEMM case and silu_mul at [M, N / 2] ran: matmul_glu against matmul + silu_mul. */
export function gluComparisons(results: ReadonlyArray<{ name: string; tessera?: { medianMs: number } }>): GluComparison[] {
  return epiloguePairs(results, 'glu', (m, n) => `silu_mul R${m} H${n / 2}`).map((p) => {
    const separateMs = p.plainMs + p.companionMs;
    return { gemm: p.gemm, m: p.m, inner: p.n / 2, epilogueMs: r5(p.epilogueMs), separateMs: r5(separateMs), speedup: Number((separateMs / p.epilogueMs).toFixed(3)) };
  });
}

/** The folded norm against rmsnorm + the GEMM, at one shape and rung. */
export interface NormComparison {
  /** The plain GEMM case (the +rms case's name without " +rms"). */
  gemm: string;
  m: number;
  hidden: number;
  /** matmul with rmsEps: the graph the passes make. */
  foldedMs: number;
  /** rmsnorm + matmul: the graph without fold_rmsnorm. */
  separateMs: number;
  /** separateMs / foldedMs: above 1 the fold is the right default. */
  speedup: number;
}

/** For every `+rms` case whose plain GEMM case and rmsnorm at [M, K] ran: the GEMM with the norm folded in against rmsnorm + the plain GEMM. */
export function normComparisons(results: ReadonlyArray<{ name: string; tessera?: { medianMs: number } }>): NormComparison[] {
  return epiloguePairs(results, 'rms', (m, _n, k) => `rmsnorm R${m} H${k}`).map((p) => {
    const separateMs = p.plainMs + p.companionMs;
    return { gemm: p.gemm, m: p.m, hidden: p.k, foldedMs: r5(p.epilogueMs), separateMs: r5(separateMs), speedup: Number((separateMs / p.epilogueMs).toFixed(3)) };
  });
}

/** RoPE and the KV write in the q/k/v GEMM's epilogue against the plain GEMM + rope_kv_write, at one shape and rung. */
export interface RopeComparison {
  /** The plain GEMM case (the +rope case's name without " +rope"). */
  gemm: string;
  m: number;
  /** matmul_rope_kv: the graph the passes make. */
  epilogueMs: number;
  /** matmul + rope_kv_write: the graph without fuse_matmul_rope_kv. */
  separateMs: number;
  /** separateMs / epilogueMs: above 1 the epilogue is the right default. */
  speedup: number;
}

/** For every `+rope` case whose plain GEMM case and rope_kv_write over the same rows and heads ran: matmul_rope_kv against matmul + rope_kv_write. */
export function ropeComparisons(results: ReadonlyArray<{ name: string; tessera?: { medianMs: number } }>): RopeComparison[] {
  // rope_kv_write's cases by their rows and q/k/v width.
  const byShape = new Map<string, string>();
  for (const r of results) {
    const m = /^rope_kv_write R(\d+) H(\d+) KV(\d+) hd(\d+)$/.exec(r.name);
    if (m) byShape.set(`${m[1]} ${(Number(m[2]) + 2 * Number(m[3])) * Number(m[4])}`, r.name);
  }
  return epiloguePairs(results, 'rope', (m, n) => byShape.get(`${m} ${n}`) ?? '').map((p) => {
    const separateMs = p.plainMs + p.companionMs;
    return { gemm: p.gemm, m: p.m, epilogueMs: r5(p.epilogueMs), separateMs: r5(separateMs), speedup: Number((separateMs / p.epilogueMs).toFixed(3)) };
  });
}

/**
 * The kernel a case runs, as far as a fault goes: its op and variant ("matmul sm90", "attention
 * sm90o", "rmsnorm default"), and the storage type. After a case of it faults or hangs, a resumed
 * run skips the rest of its cases rather than losing its process again on each.
 */
export function rungOf(c: Pick<KernelCase, 'op' | 'attrs' | 'dtype'>): string {
  const variant = c.attrs.gemmVariant ?? c.attrs.attentionVariant ?? 'default';
  return `${c.op} ${String(variant)}${c.dtype === 'f16' ? ' f16' : ''}`;
}

/** A kernel fault or hang recorded in a report: the case, its rung, what the driver said. */
export interface Fault {
  case: string;
  rung: string;
  error: string;
}

/** What a resumed run takes from the report it goes on from. */
export interface Resume {
  ceilings: { copyGBs: number; gemmTFLOPs: number | null; gemmShape: { m: number; n: number; k: number } | null };
  results: Array<Record<string, unknown>>;
  faults: Fault[];
  /** Names of the cases not to run again: every case with a result. */
  done: Set<string>;
  /** Rungs that faulted or hung, and the case where. */
  faultedRungs: Map<string, string>;
  deviceName: string;
  resumedFrom: Array<Record<string, unknown>>;
}

/**
 * Reads a report to go on from. A case the report says was running (its process was stopped
 * mid-case: a hang, or the time limit of the process around it) is recorded as unfinished, a
 * fault of its rung. Throws a sentence naming the file when it is not a report.
 */
export function resumeFrom(file: string, text: string, cases: readonly KernelCase[]): Resume {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(text);
  } catch (err) {
    throw new TesseraError(`${file}: ${(err as Error).message.split('\n')[0]}`, 'invalid_input');
  }
  const ceilings = r?.ceilings as Resume['ceilings'] | undefined;
  if (!r || typeof r !== 'object' || !Array.isArray(r.results) || !r.device || !ceilings || typeof ceilings.copyGBs !== 'number')
    throw new TesseraError(`${file} is not a tessera bench kernels report (no device, ceilings or results); --resume needs the report of an earlier run.`, 'invalid_input');
  const byName = new Map(cases.map((c) => [c.name, c]));
  const results = (r.results as Array<Record<string, unknown>>).slice();
  const faults = Array.isArray(r.faults) ? (r.faults as Fault[]).slice() : [];
  if (typeof r.running === 'string' && !results.some((x) => x.name === r.running)) {
    const c = byName.get(r.running);
    const error = 'did not finish: its process was stopped while it ran (a hang, or the time limit of the process around it)';
    results.push({ family: c?.family ?? 'unknown', name: r.running, error, unfinished: true });
    faults.push({ case: r.running, rung: c ? rungOf(c) : r.running, error });
  }
  return {
    ceilings,
    results,
    faults,
    done: new Set(results.map((x) => String(x.name))),
    faultedRungs: new Map(faults.map((f) => [f.rung, f.case])),
    deviceName: String((r.device as Record<string, unknown>).name),
    resumedFrom: [...(Array.isArray(r.resumedFrom) ? (r.resumedFrom as Array<Record<string, unknown>>) : []), { file, date: r.date, results: (r.results as unknown[]).length, stopped: r.stopped ?? null }],
  };
}

/** One line: the GEMM variant per M and the prefill attention variant per head dim. */
export function describeChoices(c: KernelChoices): string {
  const gemm = c.gemm.map((e) => `M ${e.m} ${e.variant}`).join(', ');
  const attention = (c.attention ?? []).map((e) => `attention hd${e.headDim} ${e.variant}`).join(', ');
  return attention ? `${gemm}; ${attention}` : gemm;
}

// ---- running on the GPU ----

/**
 * Relative error between two bf16 (or f16) [rows, width] device outputs over their first and last
 * rows (up to 128 each: the tile edges are there), every column: the correctness check beside
 * each timing.
 */
function edgeRowsError(backend: { readBuffer(dst: ArrayBufferView, src: bigint): void }, ours: bigint, theirs: bigint, rows: number, width: number, dtype: 'bf16' | 'f16' = 'bf16'): number {
  const rowSets = rows <= 256 ? [[0, rows]] : [[0, 128], [rows - 128, rows]];
  const total = rowSets.reduce((sum, [r0, r1]) => sum + (r1 - r0) * width, 0);
  const oursBits = new Uint16Array(total), theirsBits = new Uint16Array(total);
  let at = 0;
  for (const [r0, r1] of rowSets) {
    const n = (r1 - r0) * width, offset = BigInt(2 * r0 * width);
    backend.readBuffer(oursBits.subarray(at, at + n), ours + offset);
    backend.readBuffer(theirsBits.subarray(at, at + n), theirs + offset);
    at += n;
  }
  const a = new Float32Array(total), b = new Float32Array(total);
  const widen = dtype === 'f16' ? f16ToF32 : bf16ToF32;
  widen(oursBits, a);
  widen(theirsBits, b);
  return relativeError(a, b);
}

export async function benchKernels(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      family: { type: 'string' },
      filter: { type: 'string' },
      exclude: { type: 'string' },
      'choices-from': { type: 'string' },
      runs: { type: 'string' },
      warmup: { type: 'string' },
      shapes: { type: 'string' },
      out: { type: 'string' },
      'write-choices': { type: 'string' },
      'time-limit': { type: 'string' },
      'skip-kernels': { type: 'string' },
      resume: { type: 'string' },
      json: { type: 'boolean' },
    },
    'bench kernels',
  );
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values['choices-from']) {
    if (!values['write-choices']) throw new TesseraError('--choices-from needs --write-choices DIR (where to write the table).', 'invalid_input');
    const from = values['choices-from'] as string;
    let saved: { date: string; device: Record<string, string | number>; results: GemmResult[] };
    try {
      saved = JSON.parse(readFileSync(from, 'utf8'));
    } catch (err) {
      throw new TesseraError(`${from}: ${(err as Error).message.split('\n')[0]}`, 'invalid_input');
    }
    if (!saved || typeof saved !== 'object' || !Array.isArray(saved.results) || !saved.device) throw new TesseraError(`${from} is not a tessera bench kernels report (no device or results).`, 'invalid_input');
    let choices: KernelChoices;
    try {
      choices = deriveChoices(saved, from);
    } catch (err) {
      throw new TesseraError((err as Error).message, 'invalid_input');
    }
    const file = path.join(values['write-choices'] as string, choicesFileName(String(saved.device.name)));
    await writeFile(file, JSON.stringify(choices, null, 1) + '\n');
    console.log(`wrote ${file}: ${describeChoices(choices)}`);
    return 0;
  }
  const runs = numberFlag(values, 'runs', true) ?? 30;
  const warmup = numberFlag(values, 'warmup', true) ?? 5;
  if (runs < 20) throw new TesseraError('--runs must be at least 20 (the median of fewer is noise).', 'invalid_input');
  const families = ((values.family as string | undefined) ?? 'gemm,attention,memory').split(',').map((f) => f.trim()) as Family[];
  for (const f of families) if (!['gemm', 'attention', 'memory'].includes(f)) throw new TesseraError(`--family takes gemm, attention and memory, not "${f}".`, 'invalid_input');
  const shapesPath = (values.shapes as string | undefined) ?? defaultShapesPath();
  let shapes: KernelShapes;
  try {
    shapes = JSON.parse(readFileSync(shapesPath, 'utf8')) as KernelShapes;
  } catch (err) {
    throw new TesseraError(`${shapesPath}: ${(err as Error).message.split('\n')[0]}`, 'invalid_input');
  }
  const exclude = values.exclude as string | undefined;
  const cases = expandCases(shapes, families, (values.filter as string | undefined) ?? '').filter((c) => !exclude || !c.name.includes(exclude));
  const skipKernels = new Set(((values['skip-kernels'] as string | undefined) ?? '').split(',').map((k) => k.trim().replace(/\s+/g, ' ')).filter((k) => k));
  // Any op of the IR with a variant the launchers know: a list made for the full case list (the
  // GPU run's) also holds for a smaller one.
  const variants = ['default', ...new Set<string>([...GEMM_VARIANTS, ...ATTENTION_VARIANTS])];
  for (const k of skipKernels) {
    const [op, variant, ...rest] = k.split(' ');
    if (!(op in OPS) || !variants.includes(variant) || rest.length > 0)
      throw new TesseraError(`--skip-kernels takes "op variant" pairs such as "matmul sm90" (an op of the IR; a variant of ${variants.join(', ')}), not "${k}".`, 'invalid_input');
  }
  const timeLimitS = numberFlag(values, 'time-limit');
  if (timeLimitS !== undefined && !(timeLimitS >= 0)) throw new TesseraError(`--time-limit takes seconds, 0 or more, not ${timeLimitS}.`, 'invalid_input');
  let resume: Resume | null = null;
  if (values.resume) {
    const file = values.resume as string;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new TesseraError(`--resume ${file}: ${(err as Error).message.split('\n')[0]}`, 'invalid_input');
    }
    resume = resumeFrom(file, text, cases);
  }
  const t0 = performance.now();

  const { CudaBackend } = await import('../backend/cuda/backend.js');
  const { CudaError } = await import('../backend/cuda/driver.js');
  const probe = CudaBackend.probe(0);
  if (!probe.ok) throw new TesseraError(`tessera bench kernels needs a CUDA GPU: ${probe.reason}`, 'device');
  const backend = CudaBackend.create(0);
  // Each kernel is timed as the libraries' are, alone: launched back to back with launch overlap
  // (programmatic dependent launch), one run's head would hide under the last one's tail, which
  // cuBLASLt's launches do not get. What the overlap buys is measured end to end, by tessera bench.
  backend.setLaunchOverlap(false);
  const { loadCublasLt } = await import('../backend/cuda/cublaslt.js');
  const ltLoaded = loadCublasLt();
  const lt = 'lt' in ltLoaded ? ltLoaded.lt : null;
  const log = (line: string) => {
    if (!values.json) console.log(line);
  };
  /** Set when a kernel faulted: the context is gone, so nothing is freed or run after it. */
  let lost: InstanceType<typeof CudaError> | null = null;
  try {
    const device = backend.profiler.device();
    if (resume && resume.deviceName !== device.name) throw new TesseraError(`--resume ${String(values.resume)} was measured on ${resume.deviceName}, not this ${device.name}; start a new report.`, 'invalid_input');
    const l2 = Number(device.l2CacheBytes) || 50 * 2 ** 20;
    log(`${device.name}, driver ${device.driver}, SM ${device.smClockMHz} MHz, memory ${device.memoryClockMHz} MHz; median of ${runs} runs after ${warmup} warm-up`);
    const wsBytes = 32 * 2 ** 20;
    const workspace = backend.allocBuffer(wsBytes);
    let copyBytesPerS: number;
    let gemmCeiling: { flopsPerS: number; shape: { m: number; n: number; k: number }; algo?: number } | null = null;
    if (resume) {
      // The ceilings of the run this one goes on from, so every figure in the report has one base.
      copyBytesPerS = resume.ceilings.copyGBs * 1e9;
      if (resume.ceilings.gemmTFLOPs !== null && resume.ceilings.gemmShape) gemmCeiling = { flopsPerS: resume.ceilings.gemmTFLOPs * 1e12, shape: resume.ceilings.gemmShape };
      log(`resuming ${String(values.resume)}: ${resume.done.size} cases done${resume.faults.length ? `; not run again: ${resume.faults.map((f) => `${f.rung} (faulted in ${f.case})`).join(', ')}` : ''}`);
      log(`copy bandwidth ${(copyBytesPerS / 1e9).toFixed(0)} GB/s, GEMM ceiling ${gemmCeiling ? (gemmCeiling.flopsPerS / 1e12).toFixed(0) : '-'} TFLOP/s (from that run)`);
    } else {
      copyBytesPerS = backend.profiler.copyBandwidth(2 ** 30, runs);
      log(`copy bandwidth ${(copyBytesPerS / 1e9).toFixed(0)} GB/s (1 GiB device to device, read + write)`);
      if (lt) {
        const { m, n, k } = shapes.gemm.ceiling;
        const c = backend.prepareOp('matmul', {}, [{ shape: [m, k], uniform: { seed: 1, bound: 1 } }, { shape: [n, k], uniform: { seed: 2, bound: 0.02 } }], [[m, n]], rowsStep(m));
        const plan = lt.plan({ m, n, k, in: 'bf16', out: 'bf16' }, wsBytes, 8);
        try {
          for (let algo = 0; algo < plan.algoCount; algo++) {
            const ms = median(backend.timeOnStream(() => lt.matmul(plan, c.outputs[0].ptr, c.inputs[0].ptr, c.inputs[1].ptr, workspace, backend.streamHandle, algo), warmup, runs));
            const flopsPerS = (2 * m * n * k) / (ms / 1000);
            if (!gemmCeiling || flopsPerS > gemmCeiling.flopsPerS) gemmCeiling = { flopsPerS, shape: { m, n, k }, algo };
          }
        } finally {
          lt.destroy(plan);
          c.dispose();
        }
        log(`GEMM ceiling ${(gemmCeiling!.flopsPerS / 1e12).toFixed(0)} TFLOP/s (cuBLASLt ${m}x${n}x${k} bf16, best of ${plan.algoCount} algorithms)`);
      } else log(`GEMM ceiling and baseline: skipped (${(ltLoaded as { reason: string }).reason})`);
    }
    const ceilings = { copyBytesPerS, gemmFlopsPerS: gemmCeiling?.flopsPerS ?? null };
    const budget = Math.min(8 * 2 ** 30, backend.memInfo().freeBytes / 4);

    const results: Array<Record<string, unknown>> = resume ? resume.results.slice() : [];
    const faults: Fault[] = resume ? resume.faults.slice() : [];
    const faultedRungs = new Map(resume?.faultedRungs ?? []);
    let running: string | null = null;
    let stopped: string | null = null;
    const makeReport = (complete: boolean) => ({
      complete,
      date: new Date().toISOString(),
      device,
      cublasLt: lt ? { version: lt.version, library: lt.libraryPath } : { unavailable: (ltLoaded as { reason: string }).reason },
      method: { runs, warmup, statistic: 'median of event-timed runs; inputs rotated among sets so one call reads > 2x L2; random uniform data filled on the device' },
      ceilings: {
        copyGBs: Number((copyBytesPerS / 1e9).toFixed(1)),
        gemmTFLOPs: gemmCeiling ? Number((gemmCeiling.flopsPerS / 1e12).toFixed(1)) : null,
        gemmShape: gemmCeiling?.shape ?? null,
      },
      shapes: shapesPath,
      running,
      stopped,
      faults,
      ...(resume ? { resumedFrom: resume.resumedFrom } : {}),
      results,
      residualEpilogue: residualComparisons(results as Array<{ name: string; tessera?: { medianMs: number } }>),
      gluEpilogue: gluComparisons(results as Array<{ name: string; tessera?: { medianMs: number } }>),
      normFold: normComparisons(results as Array<{ name: string; tessera?: { medianMs: number } }>),
      ropeEpilogue: ropeComparisons(results as Array<{ name: string; tessera?: { medianMs: number } }>),
    });
    const save = async (complete = false) => {
      if (values.out) await writeFile(values.out as string, JSON.stringify(makeReport(complete), null, 1) + '\n');
    };
    if (!values.json) console.log(`${'case'.padEnd(58)} ${'ms'.padStart(9)} ${'TFLOP/s'.padStart(8)} ${'GB/s'.padStart(7)} ${'%copy'.padStart(6)} ${'%gemm'.padStart(6)} ${'vs base'.padStart(8)}`);
    const major = Number(String(device.computeCapability).split('.')[0]);
    /** Each measured case's median, for the ladder rungs that compare with an earlier case. */
    const medians = new Map<string, number>();
    for (const r of results) {
      const t = r.tessera as { medianMs?: number } | undefined;
      if (typeof t?.medianMs === 'number') medians.set(String(r.name), t.medianMs);
    }
    const todo = cases.filter((c) => !resume?.done.has(c.name));
    for (const [index, c] of todo.entries()) {
      if (timeLimitS !== undefined && (performance.now() - t0) / 1000 > timeLimitS) {
        stopped = `--time-limit ${timeLimitS} s reached; ${todo.length - index} cases not run, from "${c.name}" on`;
        break;
      }
      // sm90s runs sm90's kernel: what leaves out or faulted one leaves out the other.
      const rungs = (x: KernelCase) => (x.attrs.gemmVariant === 'sm90s' ? [rungOf(x), rungOf({ ...x, attrs: { ...x.attrs, gemmVariant: 'sm90' } })] : [rungOf(x)]);
      const left = rungs({ ...c, dtype: 'bf16' }).find((r) => skipKernels.has(r));
      if (!c.unsupported && left !== undefined) c.unsupported = `left out (--skip-kernels ${left})`;
      const faulted = rungs(c).find((r) => faultedRungs.has(r));
      if (!c.unsupported && faulted !== undefined) c.unsupported = `not run: its kernel (${faulted}) faulted or hung in "${faultedRungs.get(faulted)}"`;
      if (!c.unsupported && GEMM_HOPPER_VARIANTS.includes(c.attrs.gemmVariant as GemmVariant) && major !== 9) c.unsupported = `the sm90 GEMM needs compute capability 9.0; this GPU is ${device.computeCapability}`;
      if (!c.unsupported && c.attrs.gemmVariant === 'sm90s' && c.gemm) {
        const g = c.gemm;
        if (gemmSm90Plan(g.m, g.n, g.k, Number(device.multiprocessors), g.glu ? 1 : 2, !!g.residual).splits === 1) c.unsupported = SM90S_UNSPLIT;
      }
      if (!c.unsupported && c.attrs.gemmSplitMerge === 'separate' && c.gemm && gemmPlan(c.gemm.m, c.gemm.n, c.gemm.k, Number(device.multiprocessors)).splits === 1) c.unsupported = TILES_UNSPLIT;
      if (!c.unsupported && (c.attrs.attentionVariant === 'sm90' || c.attrs.attentionVariant === 'sm90o') && major !== 9) c.unsupported = `the sm90 attention needs compute capability 9.0; this GPU is ${device.computeCapability}`;
      if (c.unsupported) {
        results.push({ family: c.family, name: c.name, skipped: c.unsupported });
        log(`${c.name.padEnd(58)} skipped: ${c.unsupported}`);
        continue;
      }
      running = c.name;
      await save();
      const record: Record<string, unknown> = { family: c.family, name: c.name, flops: c.flops, bytes: c.bytes };
      const sets = rotationSets(c.bytes, l2, budget);
      const prepared: ReturnType<typeof backend.prepareOp>[] = [];
      try {
        for (let s = 0; s < sets; s++)
          prepared.push(
            backend.prepareOp(
              c.op,
              c.attrs,
              c.inputs.map((t, i) => ('bound' in t ? { shape: t.shape, uniform: { seed: 1000 * s + i + 1, bound: t.bound } } : t)),
              c.outputShapes,
              c.step,
            ),
          );
        const ms = backend.timeOnStream((i) => prepared[i % sets].enqueue(), warmup, runs);
        const t = timing(ms);
        Object.assign(record, { sets, tessera: { ...t, ...rates(c, t.medianMs, ceilings) } });
        let line = `${c.name.padEnd(58)} ${t.medianMs.toFixed(4).padStart(9)}`;
        const r = rates(c, t.medianMs, ceilings);
        line += ` ${r.tflops.toFixed(1).padStart(8)} ${r.gbs.toFixed(0).padStart(7)} ${r.percentOfCopy.toFixed(1).padStart(6)} ${(r.percentOfGemm ?? NaN).toFixed(1).padStart(6)}`;
        if (c.gemm && lt && !c.gemm.epilogueOnly) {
          const g = c.gemm;
          const ys = prepared.map(() => backend.allocBuffer(2 * g.m * g.n));
          let plan: ReturnType<typeof lt.plan> | null = null;
          try {
            const dt = c.dtype ?? 'bf16';
            plan = lt.plan({ ...g, in: dt, out: dt }, wsBytes, 1);
            const p = plan;
            const cOf = (i: number) => (g.residual ? prepared[i % sets].inputs[2].ptr : null);
            const lms = backend.timeOnStream((i) => lt.matmul(p, ys[i % sets], prepared[i % sets].inputs[0].ptr, prepared[i % sets].inputs[1].ptr, workspace, backend.streamHandle, 0, cOf(i)), warmup, runs);
            const bt = timing(lms);
            const speedup = bt.medianMs / t.medianMs;
            Object.assign(record, { cublasLt: { ...bt, ...rates(c, bt.medianMs, ceilings) }, speedupVsCublasLt: Number(speedup.toFixed(3)) });
            line += ` ${speedup.toFixed(2).padStart(7)}x`;
            // Correctness beside speed: ours against cuBLASLt on the same inputs.
            prepared[0].poison();
            prepared[0].enqueue();
            const err = edgeRowsError(backend, prepared[0].outputs[0].ptr, ys[0], g.m, g.n, c.dtype);
            record.relativeErrorVsCublasLt = Number(err.toExponential(3));
            if (!(err < 1e-2)) line += `  MISMATCH ${err.toExponential(2)}`;
          } catch (err) {
            if (err instanceof CudaError && err.contextLost) throw err;
            // cuBLASLt refusing a shape is its failure, not ours: say so and go on.
            record.cublasLtError = (err as Error).message;
            line += `  cuBLASLt: ${(err as Error).message}`;
          } finally {
            if (!lost) {
              if (plan) lt.destroy(plan);
              for (const y of ys) backend.freeBuffer(y);
            }
          }
        }
        if (c.ladderBase) {
          const b = c.ladderBase;
          const baseMs = medians.get(b.name);
          if (baseMs !== undefined) {
            const speedup = baseMs / t.medianMs;
            record.speedupVsBase = Number(speedup.toFixed(3));
            line += ` ${speedup.toFixed(2).padStart(7)}x`;
          }
          // Correctness beside speed: this rung against the base on the same inputs (same seeds).
          const ref = backend.prepareOp(
            c.op,
            b.attrs,
            c.inputs.map((t, i) => ('bound' in t ? { shape: t.shape, uniform: { seed: i + 1, bound: t.bound } } : t)),
            c.outputShapes,
            c.step,
          );
          try {
            prepared[0].poison();
            prepared[0].enqueue();
            ref.poison();
            ref.enqueue();
            const err = edgeRowsError(backend, prepared[0].outputs[0].ptr, ref.outputs[0].ptr, c.outputShapes[0][0], b.rowWidth, c.dtype);
            record.relativeErrorVsBase = Number(err.toExponential(3));
            if (!(err < 1e-2)) line += `  MISMATCH vs ${b.name}: ${err.toExponential(2)}`;
          } finally {
            if (!lost) ref.dispose();
          }
        }
        medians.set(c.name, t.medianMs);
        log(line);
      } catch (err) {
        record.error = (err as Error).message;
        if (err instanceof CudaError && err.contextLost) {
          lost = err;
          record.contextLost = true;
          faults.push({ case: c.name, rung: rungOf(c), error: err.message });
          stopped = `a kernel fault in "${c.name}" (${err.statusName}): the CUDA context cannot be used after one; ${todo.length - index - 1} cases not run (--resume goes on past it)`;
        }
        log(`${c.name.padEnd(58)} error: ${(err as Error).message}`);
      } finally {
        if (!lost) for (const p of prepared) p.dispose();
      }
      results.push(record);
      running = null;
      await save();
      if (lost) break;
    }
    if (stopped) log(`stopped: ${stopped}`);
    if (!lost) backend.freeBuffer(workspace);
    const report = makeReport(stopped === null);
    for (const c of report.residualEpilogue)
      log(`residual epilogue, ${c.gemm}: matmul_add + rmsnorm ${c.epilogueMs.toFixed(4)} ms, matmul + add_rmsnorm ${c.separateMs.toFixed(4)} ms: ${c.speedup.toFixed(2)}x`);
    for (const c of report.gluEpilogue)
      log(`gated epilogue, ${c.gemm}: matmul_glu ${c.epilogueMs.toFixed(4)} ms, matmul + silu_mul ${c.separateMs.toFixed(4)} ms: ${c.speedup.toFixed(2)}x`);
    for (const c of report.normFold)
      log(`folded norm, ${c.gemm}: matmul with rmsEps ${c.foldedMs.toFixed(4)} ms, rmsnorm + matmul ${c.separateMs.toFixed(4)} ms: ${c.speedup.toFixed(2)}x`);
    for (const c of report.ropeEpilogue)
      log(`rope epilogue, ${c.gemm}: matmul_rope_kv ${c.epilogueMs.toFixed(4)} ms, matmul + rope_kv_write ${c.separateMs.toFixed(4)} ms: ${c.speedup.toFixed(2)}x`);
    const text = JSON.stringify(report, null, 1) + '\n';
    if (values.out) await writeFile(values.out as string, text);
    if (values['write-choices']) {
      const choices = deriveChoices({ date: report.date, device, results: results as unknown as GemmResult[] }, (values.out as string | undefined) ?? 'tessera bench kernels');
      const file = path.join(values['write-choices'] as string, choicesFileName(String(device.name)));
      await writeFile(file, JSON.stringify(choices, null, 1) + '\n');
      log(`wrote ${file}: ${describeChoices(choices)}`);
    }
    if (values.json) process.stdout.write(text);
    if (lost) return 3;
    const mismatch = (e: unknown) => typeof e === 'number' && !(e < 1e-2);
    return results.some((r) => r.error || mismatch(r.relativeErrorVsCublasLt) || mismatch(r.relativeErrorVsBase)) ? 1 : 0;
  } finally {
    // After a fault every driver call fails the same way: leave the teardown to the process's exit.
    if (!lost) {
      lt?.dispose();
      await backend.dispose();
    }
  }
}
