/**
 * The graph IR: a model written once as a DAG of named ops over values.
 *
 * Values carry shapes whose dimensions are numbers or per-step symbols:
 *   T  tokens in the step (all sequences' new tokens, packed)
 *   S  rows that need logits (usually one per sequence that samples)
 *   B  sequences in the step;  B+1  their prefix offsets
 *   M  block-table width (max KV blocks per sequence)
 *   N  KV blocks in the pool
 * A node has one or more outputs (a fused residual-add + norm returns the new residual and the
 * normed value). Side effects are data: kv_write returns the updated cache, which attention
 * consumes, so the order is explicit. Passes rewrite the graph in place: they add nodes, redirect
 * uses and leave the old nodes unreachable; only nodes the outputs reach are ever lowered.
 */
import { OPS, outputShapes, type OpName } from './ops.js';

export type SymbolicDim = 'T' | 'S' | 'B' | 'B+1' | 'M' | 'N';
export type Dim = number | SymbolicDim;
export type DType = 'float' | 'i32';

/**
 * input: per-step data from the runner (token ids, positions, slot mapping, ...);
 * weight: a checkpoint tensor; state: the paged KV cache of one layer;
 * activation: computed per step; constant: computed once at load from weights only.
 */
export type ValueKind = 'input' | 'weight' | 'state' | 'activation' | 'constant';

export type AttrValue = number | string | boolean | null | number[] | { [k: string]: AttrValue };
export type Attrs = Record<string, AttrValue>;

export interface Value {
  id: number;
  kind: ValueKind;
  shape: Dim[];
  dtype: DType;
  /** inputs, weights and states: the name the runner or checkpoint knows it by; others: a label. */
  name: string;
  /** The node that computes it (activations, constants, updated states), and which output it is. */
  producer: number | null;
  outputIndex: number;
}

export interface Node {
  id: number;
  op: OpName;
  inputs: number[];
  outputs: number[];
  attrs: Attrs;
  /** Human-readable name, e.g. model.layers.3.self_attn.q_proj. */
  label: string;
  /** The decoder layer it belongs to, or null (embedding, head). */
  layer: number | null;
  /** Position in program order; a fused node takes the position of the node it replaces. */
  order: number;
}

/** Step inputs the runner provides, by name; their shapes are fixed by the runner's contract. */
export const STEP_INPUTS = {
  tokenIds: ['T'],
  positions: ['T'],
  slotMapping: ['T'],
  logitsIndices: ['S'],
  queryStart: ['B+1'],
  contextLens: ['B'],
  blockTables: ['B', 'M'],
} as const satisfies Record<string, Dim[]>;
export type StepInputName = keyof typeof STEP_INPUTS;

export interface NodeOptions {
  label?: string;
  layer?: number | null;
  order?: number;
  /** Labels of the outputs after the first (default: label.1, label.2, ...). */
  outputLabels?: string[];
}

export class Graph {
  readonly values: Value[] = [];
  readonly nodes: Node[] = [];
  readonly outputs: number[] = [];
  private nextOrder = 0;

  value(id: number): Value {
    const v = this.values[id];
    if (!v) throw new Error(`graph has no value ${id}`);
    return v;
  }

  node(id: number): Node {
    const n = this.nodes[id];
    if (!n) throw new Error(`graph has no node ${id}`);
    return n;
  }

  byKind(kind: ValueKind): Value[] {
    return this.values.filter((v) => v.kind === kind);
  }

  producer(valueId: number): Node | null {
    const p = this.value(valueId).producer;
    return p === null ? null : this.node(p);
  }

  addValue(kind: ValueKind, shape: Dim[], dtype: DType, name: string, producer: number | null = null, outputIndex = 0): number {
    const id = this.values.length;
    this.values.push({ id, kind, shape, dtype, name, producer, outputIndex });
    return id;
  }

  /** Adds a node after checking its inputs against the op's schema; returns its output ids. */
  addNode(op: OpName, inputs: number[], attrs: Attrs = {}, opts: NodeOptions = {}): number[] {
    const spec = OPS[op];
    const label = opts.label ?? `${op}.${this.nodes.length}`;
    let shapes: Dim[][];
    try {
      shapes = outputShapes(spec, inputs.map((i) => this.value(i).shape), attrs);
    } catch (err) {
      throw new Error(`${op} (${label}): ${(err as Error).message}`);
    }
    const allConstant = inputs.every((i) => {
      const k = this.value(i).kind;
      return k === 'weight' || k === 'constant';
    });
    const nodeId = this.nodes.length;
    const outputs = shapes.map((shape, i) => {
      const kind: ValueKind = spec.stateOutputs?.includes(i) ? 'state' : allConstant ? 'constant' : 'activation';
      const name = i === 0 ? label : (opts.outputLabels?.[i - 1] ?? `${label}.${i}`);
      return this.addValue(kind, shape, spec.dtype ?? 'float', name, nodeId, i);
    });
    const order = opts.order ?? this.nextOrder++;
    this.nodes.push({ id: nodeId, op, inputs, outputs, attrs, label, layer: opts.layer ?? null, order });
    return outputs;
  }

  /** Redirects every use of `from` (node inputs and graph outputs) to `to`. */
  replaceAllUses(from: number, to: number): void {
    if (from === to) return;
    for (const n of this.nodes) n.inputs = n.inputs.map((i) => (i === from ? to : i));
    for (let i = 0; i < this.outputs.length; i++) if (this.outputs[i] === from) this.outputs[i] = to;
  }

  /** The nodes the outputs depend on. */
  liveNodeIds(): Set<number> {
    const live = new Set<number>();
    const stack = [...this.outputs];
    while (stack.length) {
      const p = this.value(stack.pop()!).producer;
      if (p === null || live.has(p)) continue;
      live.add(p);
      stack.push(...this.node(p).inputs);
    }
    return live;
  }

  /** Live consumers of each value, by value id. */
  users(): Map<number, Node[]> {
    const users = new Map<number, Node[]>();
    for (const id of this.liveNodeIds()) {
      const n = this.node(id);
      for (const i of n.inputs) {
        const list = users.get(i);
        if (list) list.push(n);
        else users.set(i, [n]);
      }
    }
    return users;
  }

  /** Live nodes in a topological order that follows `order` wherever dependencies allow. */
  schedule(): Node[] {
    const live = [...this.liveNodeIds()].map((id) => this.node(id));
    const pending = new Map<number, number>();
    const dependents = new Map<number, Node[]>();
    for (const n of live) {
      const deps = new Set(n.inputs.map((i) => this.value(i).producer).filter((p): p is number => p !== null));
      pending.set(n.id, deps.size);
      for (const d of deps) (dependents.get(d) ?? dependents.set(d, []).get(d)!).push(n);
    }
    const ready = live.filter((n) => pending.get(n.id) === 0);
    const out: Node[] = [];
    while (ready.length) {
      // The ready node earliest in program order; graphs are small, a linear scan is enough.
      let best = 0;
      for (let i = 1; i < ready.length; i++) if (ready[i].order < ready[best].order || (ready[i].order === ready[best].order && ready[i].id < ready[best].id)) best = i;
      const n = ready.splice(best, 1)[0];
      out.push(n);
      for (const d of dependents.get(n.id) ?? []) {
        const left = pending.get(d.id)! - 1;
        pending.set(d.id, left);
        if (left === 0) ready.push(d);
      }
    }
    if (out.length !== live.length) throw new Error('graph has a cycle');
    return out;
  }
}

/** Builds a model graph op by op; the current layer tags every node added. */
export class GraphBuilder {
  readonly graph = new Graph();
  private readonly inputsByName = new Map<string, number>();
  private readonly weightsByName = new Map<string, number>();
  private currentLayer: number | null = null;

  /** Tags the nodes added from now on with a decoder layer (null: outside the layers). */
  layer(l: number | null): void {
    this.currentLayer = l;
  }

  /** A per-step input; asking twice returns the same value. */
  input(name: StepInputName): number {
    const known = this.inputsByName.get(name);
    if (known !== undefined) return known;
    const id = this.graph.addValue('input', [...STEP_INPUTS[name]], 'i32', name);
    this.inputsByName.set(name, id);
    return id;
  }

  /** A checkpoint tensor of the given shape; asking twice returns the same value. */
  weight(name: string, shape: number[]): number {
    const known = this.weightsByName.get(name);
    if (known !== undefined) {
      const v = this.graph.value(known);
      if (v.shape.join() !== shape.join()) throw new Error(`weight ${name} declared as [${v.shape}] and [${shape}]`);
      return known;
    }
    const id = this.graph.addValue('weight', shape, 'float', name);
    this.weightsByName.set(name, id);
    return id;
  }

  /** The paged KV cache of one layer: [2 (k, v), N blocks, blockSize, numKvHeads, headDim]. */
  kvCache(layer: number, blockSize: number, numKvHeads: number, headDim: number): number {
    return this.graph.addValue('state', [2, 'N', blockSize, numKvHeads, headDim], 'float', `kv.${layer}`);
  }

  /** Adds a single-output op and returns its output. */
  op(op: OpName, inputs: number[], attrs: Attrs = {}, label?: string): number {
    const outs = this.graph.addNode(op, inputs, attrs, { label, layer: this.currentLayer });
    if (outs.length !== 1) throw new Error(`${op} has ${outs.length} outputs; use the graph's addNode`);
    return outs[0];
  }

  output(value: number): void {
    this.graph.outputs.push(value);
  }
}
