/**
 * The rewrite engine: a pass is a list of small rules, each matching a pattern rooted at one op
 * and rewriting it. A pass sweeps the live nodes in program order and applies its rules until
 * none matches. Rules add nodes and redirect uses; what they replace becomes unreachable and is
 * dropped by prune().
 */
import type { Graph, Node } from '../ir.js';
import type { OpName } from '../ops.js';

export interface RewriteContext {
  graph: Graph;
  /** Live consumers of each value, current as of the rule's call. */
  users: Map<number, Node[]>;
}

export interface Rule {
  name: string;
  /** One line: what it matches and why the rewrite computes the same thing. */
  doc: string;
  /** The op of the node a match starts from. */
  root: OpName;
  /** Rewrites the match rooted at `node`; returns whether the graph changed. */
  apply(node: Node, ctx: RewriteContext): boolean;
}

export interface Pass {
  name: string;
  rules: Rule[];
}

export interface PassReport {
  pass: string;
  /** Applications per rule. */
  rewrites: Record<string, number>;
}

export function runPass(graph: Graph, pass: Pass): PassReport {
  const rewrites: Record<string, number> = Object.fromEntries(pass.rules.map((r) => [r.name, 0]));
  for (let sweep = 0; ; sweep++) {
    if (sweep > 10_000) throw new Error(`pass ${pass.name} does not converge`);
    let changed = false;
    let live = graph.liveNodeIds();
    let users = graph.users();
    for (const node of graph.schedule()) {
      if (!live.has(node.id)) continue;
      for (const rule of pass.rules) {
        if (rule.root !== node.op || !rule.apply(node, { graph, users })) continue;
        rewrites[rule.name]++;
        changed = true;
        live = graph.liveNodeIds();
        users = graph.users();
        break;
      }
    }
    if (!changed) return { pass: pass.name, rewrites };
  }
}

// ---- small helpers shared by the rules ----

/** The node producing `value` if it is a live `op` node. */
export function producerOf(ctx: RewriteContext, value: number, op: OpName): Node | null {
  const p = ctx.graph.producer(value);
  return p && p.op === op ? p : null;
}

export function usersOf(ctx: RewriteContext, value: number): Node[] {
  return ctx.users.get(value) ?? [];
}

/** True when `value`'s only consumer is `node`. */
export function onlyUsedBy(ctx: RewriteContext, value: number, node: Node): boolean {
  const u = usersOf(ctx, value);
  return u.length === 1 && u[0] === node && !ctx.graph.outputs.includes(value);
}

export function isConstant(graph: Graph, value: number): boolean {
  const k = graph.value(value).kind;
  return k === 'weight' || k === 'constant';
}

export function cols(graph: Graph, value: number): number {
  return graph.value(value).shape[1] as number;
}
