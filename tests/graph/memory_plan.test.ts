/**
 * Activation memory planning, by properties over random instances (seeded, so a failure
 * reproduces): planMemory on random sizes and lifetimes, and lower() on random DAGs of
 * elementwise ops, some with an in-place add_rmsnorm. In both, buffers alive at the same time
 * must not overlap, except an output an op declares in place of its input at that input's
 * last use.
 */
import { describe, expect, it } from 'vitest';
import { GraphBuilder, type Graph } from '../../src/graph/ir.js';
import { lower } from '../../src/graph/lower.js';
import { planMemory, type MemoryPlan, type PlanRequest } from '../../src/graph/memory_plan.js';
import { OPS } from '../../src/graph/ops.js';
import type { Program } from '../../src/graph/program.js';
import { mulberry32 as prng } from '../helpers/random.js';


/** An integer in [lo, hi]. */
const int = (u: () => number, lo: number, hi: number) => lo + Math.floor(u() * (hi - lo + 1));

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/** Violations of the plan's contract for these requests; empty when it holds. */
function violations(requests: PlanRequest[], plan: MemoryPlan, alignment: number): string[] {
  const bad: string[] = [];
  const size = (r: PlanRequest) => alignUp(r.size, alignment);
  if (plan.offsets.size !== requests.length) bad.push(`${plan.offsets.size} offsets for ${requests.length} requests`);
  let extent = 0;
  for (const r of requests) {
    const o = plan.offsets.get(r.id);
    if (o === undefined || !Number.isInteger(o) || o < 0 || o % alignment !== 0) bad.push(`offset ${o} of ${r.id} not aligned to ${alignment}`);
    else extent = Math.max(extent, o + size(r));
  }
  for (let i = 0; i < requests.length; i++) {
    for (let j = i + 1; j < requests.length; j++) {
      const a = requests[i], b = requests[j];
      if (a.start > b.end || b.start > a.end) continue;
      const oa = plan.offsets.get(a.id)!, ob = plan.offsets.get(b.id)!;
      if (oa < ob + size(b) && ob < oa + size(a)) bad.push(`${a.id} [${oa}, ${oa + size(a)}) and ${b.id} [${ob}, ${ob + size(b)}) overlap while both live`);
    }
  }
  const total = requests.reduce((s, r) => s + size(r), 0);
  if (plan.totalSize !== total) bad.push(`totalSize ${plan.totalSize} != ${total}`);
  if (plan.arenaSize !== extent) bad.push(`arenaSize ${plan.arenaSize} != the furthest buffer end ${extent}`);
  if (plan.arenaSize > total) bad.push(`arenaSize ${plan.arenaSize} > totalSize ${total}`);
  const steps = new Set(requests.flatMap((r) => [r.start, r.end]));
  for (const t of steps) {
    const live = requests.filter((r) => r.start <= t && t <= r.end).reduce((s, r) => s + size(r), 0);
    if (plan.arenaSize < live) bad.push(`arenaSize ${plan.arenaSize} < ${live} live at step ${t}`);
  }
  return bad;
}

describe('planMemory', () => {
  it('places 500 random instances without overlapping live buffers, between the peak live sum and the total', () => {
    let reused = 0;
    for (let seed = 1; seed <= 500; seed++) {
      const u = prng(seed);
      const n = int(u, 1, 40);
      const horizon = int(u, 1, 60);
      const alignment = [1, 8, 64, 64, 256][int(u, 0, 4)];
      // Sizes from tiny to large, many equal ones (the same activation shape recurs in a model).
      const sizes = [int(u, 1, 100), int(u, 1, 5000), 64, 128, 4096];
      const requests: PlanRequest[] = Array.from({ length: n }, (_, i) => {
        const start = int(u, 0, horizon);
        const end = u() < 0.2 ? horizon + 1 : Math.min(horizon + 1, start + int(u, 0, 12));
        // Ids need not be dense or ordered.
        return { id: 1000 - 7 * i, size: u() < 0.5 ? sizes[int(u, 0, 4)] : int(u, 1, 3000), start, end };
      });
      // The default alignment is 64.
      const plan = alignment === 64 && seed % 2 ? planMemory(requests) : planMemory(requests, alignment);
      expect(violations(requests, plan, alignment), `seed ${seed}: ${JSON.stringify(requests)}`).toEqual([]);
      if (plan.arenaSize < plan.totalSize) reused++;
    }
    // The property must not hold vacuously: most instances share memory.
    expect(reused).toBeGreaterThan(400);
  });

  it('reuses one slot for disjoint lifetimes and stacks overlapping ones', () => {
    const chain: PlanRequest[] = Array.from({ length: 5 }, (_, i) => ({ id: i, size: 100, start: i, end: i }));
    const a = planMemory(chain);
    expect([...a.offsets.values()]).toEqual([0, 0, 0, 0, 0]);
    expect(a).toMatchObject({ arenaSize: 128, totalSize: 640 });
    const together: PlanRequest[] = Array.from({ length: 3 }, (_, i) => ({ id: i, size: 64 * (i + 1), start: 0, end: 5 }));
    const b = planMemory(together);
    // Largest first: 192 at 0, 128 at 192, 64 at 320.
    expect([...b.offsets].sort((x, y) => x[0] - y[0])).toEqual([
      [0, 320],
      [1, 192],
      [2, 0],
    ]);
    expect(b).toMatchObject({ arenaSize: 384, totalSize: 384 });
  });

  it('fills the smallest gap that holds a buffer', () => {
    // Largest first: 0 at [0, 256), 1 at [256, 448) until step 2, 2 at [448, 576); 3 starts at
    // step 5, when only 0 and 2 are live, and takes the hole 1 left.
    const requests: PlanRequest[] = [
      { id: 0, size: 256, start: 0, end: 10 },
      { id: 1, size: 192, start: 0, end: 2 }, // at 256..448, dead after step 2
      { id: 2, size: 128, start: 0, end: 10 }, // at 448..576
      { id: 3, size: 64, start: 5, end: 10 }, // fits in 1's old place
    ];
    const plan = planMemory(requests);
    expect(plan.offsets.get(0)).toBe(0);
    expect(plan.offsets.get(1)).toBe(256);
    expect(plan.offsets.get(2)).toBe(448);
    expect(plan.offsets.get(3)).toBe(256);
    expect(plan.arenaSize).toBe(576);
  });

  it('the checker objects to bad plans (so the property test can fail)', () => {
    const requests: PlanRequest[] = [
      { id: 0, size: 64, start: 0, end: 1 },
      { id: 1, size: 100, start: 1, end: 2 },
    ];
    const good = planMemory(requests);
    expect(violations(requests, good, 64)).toEqual([]);
    expect(good).toMatchObject({ arenaSize: 192, totalSize: 192 });
    const plan = (offsets: Array<[number, number]>, arenaSize: number, totalSize = 192): MemoryPlan => ({ offsets: new Map(offsets), arenaSize, totalSize });
    expect(violations(requests, plan([[0, 0], [1, 0]], 128), 64)).toEqual([
      '0 [0, 64) and 1 [0, 128) overlap while both live',
      'arenaSize 128 < 192 live at step 1',
    ]);
    expect(violations(requests, plan([[0, 0], [1, 96]], 224), 64)).toEqual([
      'offset 96 of 1 not aligned to 64',
      'arenaSize 224 != the furthest buffer end 64',
      'arenaSize 224 > totalSize 192',
    ]);
    expect(violations(requests, plan([[0, 128], [1, 0]], 256, 200), 64)).toEqual([
      'totalSize 200 != 192',
      'arenaSize 256 != the furthest buffer end 192',
      'arenaSize 256 > totalSize 192',
    ]);
  });
});

// ---- lower() over random graphs ----

interface Spans {
  /** First call that writes and last call that reads each activation (calls.length: read after). */
  span: Map<number, [number, number]>;
}

function spansOf(program: Program, outputs: number[]): Spans {
  const span = new Map<number, [number, number]>();
  program.calls.forEach((c, i) => {
    for (const o of c.outputs) if (o.kind === 'activation') span.set(o.id, [i, i]);
    for (const o of c.inputs) if (o.kind === 'activation') span.get(o.id)![1] = i;
  });
  for (const id of outputs) span.get(id)![1] = program.calls.length;
  return { span };
}

/**
 * Pairs of activations alive at the same call whose arena ranges intersect. The one sanctioned
 * overlap: an op's declared in-place output at the same offset as its input, when that call is
 * the input's last read. Returns the violations and how many sanctioned pairs were seen.
 */
function overlaps(program: Program, outputs: number[]): { bad: string[]; inPlace: number } {
  const { span } = spansOf(program, outputs);
  const allowed = new Set<string>();
  program.calls.forEach((c, i) => {
    for (const [o, inp] of OPS[c.op].inplace ?? []) {
      const out = c.outputs[o], src = c.inputs[inp];
      if (out.kind === 'activation' && src.kind === 'activation' && span.get(src.id)![1] === i) allowed.add(`${src.id}:${out.id}`);
    }
  });
  const rows = (r: 'T' | 'S' | number) => (r === 'T' ? program.maxTokens : r === 'S' ? program.maxLogitRows : r);
  const bufs = program.activations;
  const bad: string[] = [];
  let inPlace = 0;
  for (let a = 0; a < bufs.length; a++) {
    for (let b = a + 1; b < bufs.length; b++) {
      const A = bufs[a], B = bufs[b];
      const [sa, ea] = span.get(A.id)!, [sb, eb] = span.get(B.id)!;
      if (sa > eb || sb > ea) continue;
      const endA = A.offset + rows(A.rows) * A.cols, endB = B.offset + rows(B.rows) * B.cols;
      if (!(A.offset < endB && B.offset < endA)) continue;
      if ((allowed.has(`${A.id}:${B.id}`) || allowed.has(`${B.id}:${A.id}`)) && A.offset === B.offset) {
        inPlace++;
        continue;
      }
      bad.push(`%${A.id} [${A.offset}, ${endA}) calls ${sa}..${ea} and %${B.id} [${B.offset}, ${endB}) calls ${sb}..${eb}`);
    }
  }
  return { bad, inPlace };
}

/** A random DAG of add/mul/silu (and, if asked, add_rmsnorm) over [T, n] activations. */
function randomGraph(seed: number, withNorm: boolean): Graph {
  const u = prng(seed);
  const b = new GraphBuilder();
  const widths = [int(u, 1, 6) * 8, int(u, 1, 6) * 8];
  const pool: number[][] = [[], []]; // live activations by width class
  const pick = (w: number) => pool[w][Math.min(pool[w].length - 1, Math.floor(Math.pow(u(), 0.5) * pool[w].length))];
  widths.forEach((d, w) => {
    for (let i = 0; i < int(u, 1, 3); i++) pool[w].push(b.op('embedding', [b.input(i % 2 ? 'positions' : 'tokenIds'), b.weight(`emb${w}.${i}`, [32, d])]));
  });
  const steps = int(u, 4, 40);
  for (let s = 0; s < steps; s++) {
    b.layer(s % 3);
    const w = int(u, 0, 1);
    const r = u();
    if (withNorm && r < 0.2) {
      const [sum, normed] = b.graph.addNode('add_rmsnorm', [pick(w), pick(w), b.weight(`norm${w}`, [widths[w]])], { eps: 1e-5 }, { label: `n${s}`, layer: s % 3 });
      pool[w].push(sum, normed);
    } else if (r < 0.3) {
      // Into the other width class.
      const o = 1 - w;
      pool[o].push(b.op('matmul', [pick(w), b.weight(`w${s}`, [widths[o], widths[w]])]));
    } else if (r < 0.6) pool[w].push(b.op('add', [pick(w), pick(w)]));
    else if (r < 0.85) pool[w].push(b.op('mul', [pick(w), pick(w)]));
    else pool[w].push(b.op('silu', [pick(w)]));
  }
  // The newest value of each class, and now and then an older one, are outputs (read after the
  // last call); some values end up unreachable and are not lowered.
  for (const p of pool) b.output(p[p.length - 1]);
  if (u() < 0.5) b.output(pick(int(u, 0, 1)));
  return b.graph;
}

describe('lower: activation placement on random graphs', () => {
  it('no two activations alive at the same call overlap, except declared in-place pairs', () => {
    let inPlace = 0, instances = 0, reused = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const withNorm = seed % 2 === 0;
      const g = randomGraph(seed, withNorm);
      const maxTokens = int(prng(seed * 7), 1, 64);
      const program = lower(g, { maxTokens, maxLogitRows: 4 });
      // Every activation a call touches has a buffer, aligned.
      const ids = new Set(program.activations.map((a) => a.id));
      for (const c of program.calls) for (const o of [...c.inputs, ...c.outputs]) if (o.kind === 'activation') expect(ids.has(o.id), `seed ${seed}: %${o.id}`).toBe(true);
      for (const a of program.activations) expect(a.offset % 64, `seed ${seed}`).toBe(0);
      const { bad, inPlace: n } = overlaps(program, g.outputs);
      expect(bad, `seed ${seed}`).toEqual([]);
      expect(program.arenaSize).toBeLessThanOrEqual(program.activationTotal);
      inPlace += n;
      instances++;
      if (program.arenaSize < program.activationTotal) reused++;
    }
    expect(instances).toBe(300);
    if (process.env.TESSERA_REPORT_DIFFS) console.log({ inPlace, reused });
    // Not vacuous: in-place sharing happens, and arenas reuse memory.
    expect(inPlace).toBeGreaterThan(20);
    expect(reused).toBeGreaterThan(250);
  });

  it('add_rmsnorm writes the sum in place of the residual at its last read, not otherwise', () => {
    const build = (residualReadLater: boolean) => {
      const b = new GraphBuilder();
      const r = b.op('embedding', [b.input('tokenIds'), b.weight('e', [32, 16])], {}, 'r');
      const d = b.op('silu', [r], {}, 'd');
      const [sum, normed] = b.graph.addNode('add_rmsnorm', [r, d, b.weight('n', [16])], { eps: 1e-5 }, { label: 'norm' });
      const y = b.op('mul', [normed, sum], {}, 'y');
      b.output(residualReadLater ? b.op('add', [y, r], {}, 'late') : y);
      return { g: b.graph, r, sum, normed };
    };
    for (const later of [false, true]) {
      const { g, r, sum, normed } = build(later);
      const program = lower(g, { maxTokens: 8, maxLogitRows: 1 });
      const at = (id: number) => program.activations.find((a) => a.id === id)!.offset;
      expect(at(sum) === at(r), `residual read later: ${later}`).toBe(!later);
      expect(at(normed)).not.toBe(at(r));
      expect(overlaps(program, g.outputs).bad).toEqual([]);
    }
  });

  it('the overlap check catches a shared buffer that is not a declared in-place pair', () => {
    const g = randomGraph(3, true);
    const program = lower(g, { maxTokens: 16, maxLogitRows: 4 });
    expect(overlaps(program, g.outputs).bad).toEqual([]);
    // Put two values that are alive together at one offset: the checker must object.
    const { span } = spansOf(program, g.outputs);
    const acts = program.activations;
    let broken: Program | null = null;
    for (let a = 0; a < acts.length && !broken; a++)
      for (let b = a + 1; b < acts.length && !broken; b++) {
        const [sa, ea] = span.get(acts[a].id)!, [sb, eb] = span.get(acts[b].id)!;
        if (sa <= eb && sb <= ea && acts[a].offset !== acts[b].offset)
          broken = { ...program, activations: acts.map((x, i) => (i === b ? { ...x, offset: acts[a].offset } : x)) };
      }
    expect(broken).not.toBeNull();
    expect(overlaps(broken!, g.outputs).bad.length).toBeGreaterThan(0);
  });
});
