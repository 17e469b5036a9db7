/**
 * Lowering: graph -> Program. Schedules the nodes the outputs need, turns load-time subgraphs
 * into weight specs evaluated once at load, and plans activation memory by liveness into one
 * arena sized for the largest step. An output the op may compute in place of an input (the
 * residual of a fused add + norm) shares that input's buffer when the call is its last reader.
 */
import type { Graph, Value } from './ir.js';
import { planMemory, type PlanRequest } from './memory_plan.js';
import { OPS } from './ops.js';
import type { ActivationBuffer, KernelCall, Operand, Program, StateSpec, WeightSpec } from './program.js';

export interface LowerOptions {
  /** Largest T a step may have (the token budget). */
  maxTokens: number;
  /** Largest S a step may have (rows that need logits). */
  maxLogitRows: number;
}

export function lower(graph: Graph, opts: LowerOptions): Program {
  const weights: WeightSpec[] = [];
  const weightNames = new Set<string>();
  const calls: KernelCall[] = [];
  const states: StateSpec[] = [];
  const stateOf = new Map<number, string>(); // state value id -> storage name

  const addWeight = (v: Value): string => {
    if (!weightNames.has(v.name)) {
      weightNames.add(v.name);
      weights.push({ name: v.name, shape: v.shape as number[], source: { tensor: v.name } });
    }
    return v.name;
  };

  const stateName = (id: number): string => {
    let name = stateOf.get(id);
    if (name === undefined) {
      const v = graph.value(id);
      name = v.name;
      stateOf.set(id, name);
      const [, , blockSize, numKvHeads, headDim] = v.shape as number[];
      states.push({ name, layer: Number(v.name.split('.')[1]), blockSize, numKvHeads, headDim });
    }
    return name;
  };

  const operand = (id: number): Operand => {
    const v = graph.value(id);
    switch (v.kind) {
      case 'weight':
        return { kind: 'weight', name: addWeight(v) };
      case 'constant':
        return { kind: 'weight', name: v.name };
      case 'input':
        return { kind: 'input', name: v.name };
      case 'state':
        return { kind: 'state', name: stateName(id) };
      case 'activation':
        return { kind: 'activation', id };
    }
  };

  for (const node of graph.schedule()) {
    const outs = node.outputs.map((o) => graph.value(o));
    const spec = OPS[node.op];
    if (outs.every((v) => v.kind === 'constant')) {
      if (spec.category !== 'load' || outs.length !== 1) throw new Error(`${node.label}: ${node.op} over weights only must be a load-time op`);
      const inputs = node.inputs.map((i) => {
        const v = graph.value(i);
        return v.kind === 'weight' ? addWeight(v) : v.name;
      });
      weights.push({ name: outs[0].name, shape: outs[0].shape as number[], source: { op: node.op, attrs: node.attrs, inputs } });
      weightNames.add(outs[0].name);
      continue;
    }
    if (spec.category === 'load') throw new Error(`${node.label}: load-time op ${node.op} over per-step values`);
    const inputs = node.inputs.map(operand);
    const outputs = node.outputs.map((id, i): Operand => {
      if (!spec.stateOutputs?.includes(i)) return { kind: 'activation', id };
      // A state output updates its cache in place: it aliases the op's state input.
      const cache = node.inputs.find((x) => graph.value(x).kind === 'state');
      if (cache === undefined) throw new Error(`${node.label}: state output without a state input`);
      const name = stateName(cache);
      stateOf.set(id, name);
      return { kind: 'state', name };
    });
    calls.push({ op: node.op, attrs: node.attrs, inputs, outputs, label: node.label, layer: node.layer });
  }

  return { ...planActivations(graph, calls, opts), calls, weights, states: states.sort((a, b) => a.layer - b.layer), ...logitsOf(graph), maxTokens: opts.maxTokens, maxLogitRows: opts.maxLogitRows };
}

function logitsOf(graph: Graph): Pick<Program, 'logits' | 'vocabSize'> {
  const id = graph.outputs[0];
  return { logits: { kind: 'activation', id }, vocabSize: graph.value(id).shape[1] as number };
}

/** Liveness, in-place reuse and arena placement of the activations. */
function planActivations(graph: Graph, calls: KernelCall[], opts: LowerOptions): Pick<Program, 'activations' | 'arenaSize' | 'activationTotal'> {
  const lastUse = new Map<number, number>();
  calls.forEach((call, i) => {
    for (const o of call.inputs) if (o.kind === 'activation') lastUse.set(o.id, i);
  });
  for (const id of graph.outputs) lastUse.set(id, calls.length);
  const rowsOf = (v: Value): 'T' | 'S' | number => {
    const r = v.shape[0];
    if (r === 'T' || r === 'S' || typeof r === 'number') return r;
    throw new Error(`${v.name}: activation rows must be T, S or fixed, not ${r}`);
  };
  const colsOf = (v: Value) => v.shape.slice(1).reduce<number>((a, d) => a * (d as number), 1);

  // Buffer groups: a value computed in place joins the group of the input it overwrites.
  const groupOf = new Map<number, number>();
  const groups: Array<{ rows: 'T' | 'S' | number; cols: number; start: number; end: number }> = [];
  calls.forEach((call, i) => {
    call.outputs.forEach((o, k) => {
      if (o.kind !== 'activation') return;
      const v = graph.value(o.id);
      const end = lastUse.get(o.id) ?? i;
      const pair = OPS[call.op].inplace?.find(([out]) => out === k);
      const src = pair ? call.inputs[pair[1]] : undefined;
      if (src?.kind === 'activation' && lastUse.get(src.id) === i && groupOf.has(src.id)) {
        const g = groupOf.get(src.id)!;
        if (groups[g].rows === rowsOf(v) && groups[g].cols === colsOf(v)) {
          groupOf.set(o.id, g);
          groups[g].end = Math.max(groups[g].end, end);
          return;
        }
      }
      groupOf.set(o.id, groups.length);
      groups.push({ rows: rowsOf(v), cols: colsOf(v), start: i, end });
    });
  });
  const maxRows = (rows: 'T' | 'S' | number) => (rows === 'T' ? opts.maxTokens : rows === 'S' ? opts.maxLogitRows : rows);
  const requests: PlanRequest[] = groups.map((g, id) => ({ id, size: maxRows(g.rows) * g.cols, start: g.start, end: g.end }));
  const plan = planMemory(requests);
  const activations: ActivationBuffer[] = [...groupOf].map(([id, g]) => ({ id, rows: groups[g].rows, cols: groups[g].cols, offset: plan.offsets.get(g)! }));
  return { activations, arenaSize: plan.arenaSize, activationTotal: plan.totalSize };
}
