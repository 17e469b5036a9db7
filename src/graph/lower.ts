/**
 * Lowering: graph -> Program. Drops nodes the outputs do not need, turns load-time subgraphs
 * into weight specs evaluated once at load, orders the per-step calls, and plans activation
 * memory by liveness into one arena sized for the largest step.
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

/** Node ids the outputs depend on, in graph order. */
export function liveNodes(graph: Graph): number[] {
  const needed = new Set<number>();
  const stack = [...graph.outputs];
  while (stack.length) {
    const v = graph.value(stack.pop()!);
    if (v.producer === null || needed.has(v.producer)) continue;
    needed.add(v.producer);
    stack.push(...graph.node(v.producer).inputs);
  }
  return graph.nodes.filter((n) => needed.has(n.id)).map((n) => n.id);
}

export function lower(graph: Graph, opts: LowerOptions): Program {
  const weights: WeightSpec[] = [];
  const weightNames = new Set<string>();
  const calls: KernelCall[] = [];
  const states: StateSpec[] = [];
  const stateOf = new Map<number, string>(); // state value id -> storage name
  const callValues: number[] = []; // output value id of each call

  const addWeight = (v: Value): string => {
    if (!weightNames.has(v.name)) {
      weightNames.add(v.name);
      weights.push({ name: v.name, shape: v.shape as number[], source: { tensor: v.name } });
    }
    return v.name;
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
      case 'state': {
        let name = stateOf.get(id);
        if (name === undefined) {
          name = v.name;
          stateOf.set(id, name);
          const [, , blockSize, numKvHeads, headDim] = v.shape as number[];
          states.push({ name, layer: Number(v.name.split('.')[1]), blockSize, numKvHeads, headDim });
        }
        return { kind: 'state', name };
      }
      case 'activation':
        return { kind: 'activation', id };
    }
  };

  for (const nodeId of liveNodes(graph)) {
    const node = graph.node(nodeId);
    const out = graph.value(node.output);
    const spec = OPS[node.op];
    if (out.kind === 'constant') {
      if (spec.category !== 'load') throw new Error(`${out.name}: ${node.op} over weights only must be a load-time op`);
      const inputs = node.inputs.map((i) => {
        const v = graph.value(i);
        return v.kind === 'weight' ? addWeight(v) : v.name;
      });
      weights.push({ name: out.name, shape: out.shape as number[], source: { op: node.op, attrs: node.attrs, inputs } });
      weightNames.add(out.name);
      continue;
    }
    if (spec.category === 'load') throw new Error(`${out.name}: load-time op ${node.op} over per-step values`);
    const inputs = node.inputs.map(operand);
    let output: Operand;
    if (out.kind === 'state') {
      // A state op updates its cache in place: the output aliases the cache input.
      const cache = node.inputs.find((i) => graph.value(i).kind === 'state')!;
      const name = (operand(cache) as { name: string }).name;
      stateOf.set(node.output, name);
      output = { kind: 'state', name };
    } else {
      output = { kind: 'activation', id: node.output };
    }
    calls.push({ op: node.op, attrs: node.attrs, inputs, output, label: out.name });
    callValues.push(node.output);
  }

  // Liveness: from the call that writes an activation to the last call that reads it.
  const lastUse = new Map<number, number>();
  calls.forEach((call, i) => {
    for (const o of call.inputs) if (o.kind === 'activation') lastUse.set(o.id, i);
  });
  const rowsOf = (v: Value): 'T' | 'S' | number => {
    const r = v.shape[0];
    if (r === 'T' || r === 'S' || typeof r === 'number') return r;
    throw new Error(`${v.name}: activation rows must be T, S or fixed, not ${r}`);
  };
  const maxRows = (rows: 'T' | 'S' | number) => (rows === 'T' ? opts.maxTokens : rows === 'S' ? opts.maxLogitRows : rows);
  const requests: PlanRequest[] = [];
  const buffers: ActivationBuffer[] = [];
  calls.forEach((call, i) => {
    if (call.output.kind !== 'activation') return;
    const v = graph.value(call.output.id);
    const rows = rowsOf(v);
    const cols = v.shape.slice(1).reduce<number>((a, d) => a * (d as number), 1);
    const end = graph.outputs.includes(v.id) ? calls.length : (lastUse.get(v.id) ?? i);
    requests.push({ id: v.id, size: maxRows(rows) * cols, start: i, end });
    buffers.push({ id: v.id, rows, cols, offset: 0 });
  });
  const plan = planMemory(requests);
  for (const b of buffers) b.offset = plan.offsets.get(b.id)!;

  const logitsId = graph.outputs[0];
  const logitsValue = graph.value(logitsId);
  return {
    calls,
    activations: buffers,
    arenaSize: plan.arenaSize,
    activationTotal: plan.totalSize,
    weights,
    states: states.sort((a, b) => a.layer - b.layer),
    logits: { kind: 'activation', id: logitsId },
    vocabSize: logitsValue.shape[1] as number,
    maxTokens: opts.maxTokens,
    maxLogitRows: opts.maxLogitRows,
  };
}
