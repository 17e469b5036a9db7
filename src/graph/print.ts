/**
 * Text and Graphviz renderings of a graph, for `tessera graph` and the snapshot tests: the
 * per-step nodes grouped by layer, the load-time weight transforms apart, and a summary of the
 * kernels per step and per layer.
 */
import type { AttrValue, Graph, Node, Value } from './ir.js';
import { OPS } from './ops.js';

function fmtShape(v: Value): string {
  return `[${v.shape.join(',')}]`;
}

function fmtAttr(v: AttrValue): string {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return JSON.stringify(v);
  return `{${Object.entries(v).map(([k, x]) => `${k}:${fmtAttr(x)}`).join(',')}}`;
}

function ref(graph: Graph, id: number): string {
  const v = graph.value(id);
  switch (v.kind) {
    case 'weight':
      return `${v.name}${fmtShape(v)}`;
    case 'constant':
      return `${v.name}${fmtShape(v)}`;
    case 'input':
      return `@${v.name}`;
    case 'state':
      return v.producer === null ? `${v.name}` : `%${id}`;
    case 'activation':
      return `%${id}`;
  }
}

function fmtNode(graph: Graph, n: Node): string {
  const outs = n.outputs.map((o) => `%${o}${fmtShape(graph.value(o))}`).join(', ');
  const attrs = Object.entries(n.attrs)
    .filter(([, v]) => v !== null)
    .map(([k, v]) => `${k}=${fmtAttr(v)}`)
    .join(' ');
  return `${outs} = ${n.op}(${n.inputs.map((i) => ref(graph, i)).join(', ')})${attrs ? ` ${attrs}` : ''}  # ${n.label}`;
}

function isLoadTime(graph: Graph, n: Node): boolean {
  return n.outputs.every((o) => graph.value(o).kind === 'constant');
}

export interface GraphSummary {
  /** Kernel calls in one step (load-time transforms excluded). */
  kernelsPerStep: number;
  /** Kernel calls of one decoder layer (layer 0), by op. */
  layerKernels: Record<string, number>;
  loadTimeOps: number;
}

export function summarize(graph: Graph): GraphSummary {
  const nodes = graph.schedule();
  const step = nodes.filter((n) => !isLoadTime(graph, n));
  const layerKernels: Record<string, number> = {};
  for (const n of step) if (n.layer === 0) layerKernels[n.op] = (layerKernels[n.op] ?? 0) + 1;
  return { kernelsPerStep: step.length, layerKernels, loadTimeOps: nodes.length - step.length };
}

/** One line per node, grouped: load-time transforms, then per-step nodes by layer. */
export function graphToText(graph: Graph): string {
  const nodes = graph.schedule();
  const lines: string[] = [];
  const load = nodes.filter((n) => isLoadTime(graph, n));
  if (load.length) {
    lines.push('load time:');
    for (const n of load) lines.push(`  ${fmtNode(graph, n)}`);
  }
  let section: string | null = null;
  for (const n of nodes) {
    if (isLoadTime(graph, n)) continue;
    const name = n.layer === null ? 'model' : `layer ${n.layer}`;
    if (name !== section) {
      lines.push(`${name}:`);
      section = name;
    }
    lines.push(`  ${fmtNode(graph, n)}`);
  }
  lines.push(`outputs: ${graph.outputs.map((o) => `%${o}`).join(', ')}`);
  return lines.join('\n') + '\n';
}

/** Graphviz DOT: ops as boxes (per layer in clusters), values as edges; weights are left out. */
export function graphToDot(graph: Graph, title: string): string {
  const nodes = graph.schedule().filter((n) => !isLoadTime(graph, n));
  const esc = (s: string) => s.replace(/"/g, '\\"');
  const lines = [`digraph "${esc(title)}" {`, '  rankdir=TB; node [shape=box, fontname="Helvetica", fontsize=10]; edge [fontsize=8];'];
  const byLayer = new Map<string, Node[]>();
  for (const n of nodes) {
    const key = n.layer === null ? 'model' : String(n.layer);
    (byLayer.get(key) ?? byLayer.set(key, []).get(key)!).push(n);
  }
  for (const [key, group] of byLayer) {
    const inCluster = key !== 'model';
    if (inCluster) lines.push(`  subgraph cluster_${key} { label="layer ${key}"; style=rounded;`);
    for (const n of group) {
      const fused = OPS[n.op].fused === true;
      lines.push(`    n${n.id} [label="${esc(n.op)}\\n${esc(n.label)}"${fused ? ', style=filled, fillcolor="#e8f0ff"' : ''}];`);
    }
    if (inCluster) lines.push('  }');
  }
  const sources = new Set<string>();
  for (const n of nodes) {
    for (const i of n.inputs) {
      const v = graph.value(i);
      if (v.producer !== null && nodes.some((m) => m.id === v.producer)) lines.push(`  n${v.producer} -> n${n.id} [label="${esc(fmtShape(v))}"];`);
      else if (v.kind === 'input' || (v.kind === 'state' && v.producer === null)) {
        const id = `v_${v.name.replace(/\W/g, '_')}`;
        if (!sources.has(id)) {
          lines.push(`  ${id} [label="${esc(v.name)}", shape=ellipse];`);
          sources.add(id);
        }
        lines.push(`  ${id} -> n${n.id};`);
      }
    }
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}
