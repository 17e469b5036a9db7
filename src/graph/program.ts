/**
 * A Program: what lowering makes of a graph, and what a backend executes. An ordered list of
 * kernel calls over planned buffers; the per-step sizes (T tokens, S logit rows, B sequences)
 * are parameters of each execution.
 */
import type { Attrs } from './ir.js';
import type { OpName } from './ops.js';

/** Where a kernel operand lives. */
export type Operand =
  | { kind: 'activation'; id: number }
  | { kind: 'weight'; name: string }
  | { kind: 'input'; name: string }
  | { kind: 'state'; name: string };

export interface KernelCall {
  op: OpName;
  attrs: Attrs;
  inputs: Operand[];
  outputs: Operand[];
  /** Human-readable name of the node, e.g. model.layers.3.self_attn.q_proj. */
  label: string;
  /** Decoder layer, or null. */
  layer: number | null;
}

/**
 * An activation value: rows (T or S, or fixed) x cols elements at an offset of the arena. Values
 * computed in place of another (a fused residual update) share its offset.
 */
export interface ActivationBuffer {
  id: number;
  rows: 'T' | 'S' | number;
  cols: number;
  /** Offset in elements into the arena. */
  offset: number;
}

/**
 * A weight as the backend stores it: either a checkpoint tensor, or computed once at load from
 * other weights by a load-time op (transpose, slice, concat). `inputs` precede it in the list.
 */
export interface WeightSpec {
  name: string;
  shape: number[];
  source: { tensor: string } | { op: OpName; attrs: Attrs; inputs: string[] };
}

/** A KV-cache state: [2, numBlocks, blockSize, numKvHeads, headDim]. */
export interface StateSpec {
  name: string;
  layer: number;
  blockSize: number;
  numKvHeads: number;
  headDim: number;
}

export interface Program {
  calls: KernelCall[];
  activations: ActivationBuffer[];
  /** Arena size in elements, planned for maxTokens and maxLogitRows. */
  arenaSize: number;
  /** Sum of activation sizes without reuse, for reporting. */
  activationTotal: number;
  weights: WeightSpec[];
  states: StateSpec[];
  /** The logits: an activation [S, vocabSize]. */
  logits: Operand & { kind: 'activation' };
  vocabSize: number;
  maxTokens: number;
  maxLogitRows: number;
}

/**
 * For each weight a load-time transform reads, the index in `weights` of the last transform that
 * reads it: a tensor no call reads can be freed right after that one (CpuBackend.load,
 * CudaBackend.load), so a layer's raw gate and up weights, their concatenation, its pairs and its
 * norm-scaled copy are not all held at once through the whole load.
 */
export function lastTransformReaders(weights: readonly WeightSpec[]): Map<string, number> {
  const last = new Map<string, number>();
  weights.forEach((w, i) => {
    if (!('tensor' in w.source)) for (const name of w.source.inputs) last.set(name, i);
  });
  return last;
}
