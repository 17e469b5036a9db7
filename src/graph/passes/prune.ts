/**
 * Dead-code elimination: a new graph with only the nodes the outputs need, numbered in program
 * order, and only the values they touch. Rewrites leave replaced nodes unreachable; this drops
 * them, so a printed graph shows what will run.
 */
import { Graph } from '../ir.js';

export function prune(graph: Graph): Graph {
  const nodes = graph.schedule();
  const out = new Graph();
  const valueMap = new Map<number, number>();
  const mapValue = (id: number): number => {
    let mapped = valueMap.get(id);
    if (mapped === undefined) {
      const v = graph.value(id);
      mapped = out.addValue(v.kind, [...v.shape], v.dtype, v.name);
      valueMap.set(id, mapped);
    }
    return mapped;
  };
  nodes.forEach((n, order) => {
    const inputs = n.inputs.map(mapValue);
    const id = out.nodes.length;
    const outputs = n.outputs.map((o, i) => {
      const mapped = mapValue(o);
      const v = out.value(mapped);
      v.producer = id;
      v.outputIndex = i;
      return mapped;
    });
    out.nodes.push({ ...n, id, inputs, outputs, order });
  });
  out.outputs.push(...graph.outputs.map(mapValue));
  return out;
}
