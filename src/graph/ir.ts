/**
 * The graph IR: a model written once as a DAG of named ops over values.
 *
 * Values carry shapes whose dimensions are numbers or per-step symbols:
 *   T  tokens in the step (all sequences' new tokens, packed)
 *   S  rows that need logits (usually one per sequence that samples)
 *   B  sequences in the step;  B+1  their prefix offsets
 *   M  block-table width (max KV blocks per sequence)
 *   N  KV blocks in the pool
 * Every node has exactly one output value. Side effects (the KV-cache write) are expressed as
 * data: kv_write returns the updated cache, which attention consumes, so the order is explicit.
 */
import { OPS, type OpName } from './ops.js';

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
  /** The node that computes it (activations and constants). */
  producer: number | null;
}

export interface Node {
  id: number;
  op: OpName;
  inputs: number[];
  output: number;
  attrs: Attrs;
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

export class Graph {
  readonly values: Value[] = [];
  readonly nodes: Node[] = [];
  readonly outputs: number[] = [];

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

  /** Consumers of each value, by id. */
  users(): Map<number, Node[]> {
    const users = new Map<number, Node[]>();
    for (const n of this.nodes) for (const i of n.inputs) (users.get(i) ?? users.set(i, []).get(i)!).push(n);
    return users;
  }
}

/** Builds a graph op by op, checking each op's input shapes through its schema. */
export class GraphBuilder {
  readonly graph = new Graph();
  private readonly inputsByName = new Map<string, number>();
  private readonly weightsByName = new Map<string, number>();

  private addValue(kind: ValueKind, shape: Dim[], dtype: DType, name: string, producer: number | null): number {
    const id = this.graph.values.length;
    this.graph.values.push({ id, kind, shape, dtype, name, producer });
    return id;
  }

  /** A per-step input; asking twice returns the same value. */
  input(name: StepInputName): number {
    const known = this.inputsByName.get(name);
    if (known !== undefined) return known;
    const id = this.addValue('input', [...STEP_INPUTS[name]], 'i32', name, null);
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
    const id = this.addValue('weight', shape, 'float', name, null);
    this.weightsByName.set(name, id);
    return id;
  }

  /** The paged KV cache of one layer: [2 (k, v), N blocks, blockSize, numKvHeads, headDim]. */
  kvCache(layer: number, blockSize: number, numKvHeads: number, headDim: number): number {
    return this.addValue('state', [2, 'N', blockSize, numKvHeads, headDim], 'float', `kv.${layer}`, null);
  }

  op(op: OpName, inputs: number[], attrs: Attrs = {}, label?: string): number {
    const spec = OPS[op];
    const shapes = inputs.map((i) => this.graph.value(i).shape);
    let shape: Dim[];
    try {
      shape = spec.shape(shapes, attrs);
    } catch (err) {
      throw new Error(`${op}${label ? ` (${label})` : ''}: ${(err as Error).message}`);
    }
    const allConstant = inputs.every((i) => {
      const k = this.graph.value(i).kind;
      return k === 'weight' || k === 'constant';
    });
    const kind: ValueKind = spec.category === 'state' ? 'state' : allConstant ? 'constant' : 'activation';
    const nodeId = this.graph.nodes.length;
    const out = this.addValue(kind, shape, spec.dtype ?? 'float', label ?? `${op}.${nodeId}`, nodeId);
    this.graph.nodes.push({ id: nodeId, op, inputs, output: out, attrs });
    return out;
  }

  output(value: number): void {
    this.graph.outputs.push(value);
  }
}
