/**
 * Activation memory planning: place buffers with known lifetimes into one arena so that no two
 * buffers alive at the same time overlap. Greedy best-fit: largest buffers first, each at the
 * smallest gap (between already-placed buffers whose lifetimes intersect) that holds it.
 */

export interface PlanRequest {
  /** Caller's id for the buffer. */
  id: number;
  /** Size in elements. */
  size: number;
  /** Lifetime, inclusive: the first and last step (call index) that touch the buffer. */
  start: number;
  end: number;
}

export interface MemoryPlan {
  /** Offset of each buffer in elements, by id. */
  offsets: Map<number, number>;
  /** Arena size in elements. */
  arenaSize: number;
  /** Sum of all buffer sizes: what the arena would be without reuse. */
  totalSize: number;
}

export function planMemory(requests: PlanRequest[], alignment = 64): MemoryPlan {
  const align = (n: number) => Math.ceil(n / alignment) * alignment;
  const order = [...requests].sort((a, b) => b.size - a.size || a.start - b.start || a.id - b.id);
  const placed: { offset: number; size: number; start: number; end: number }[] = [];
  const offsets = new Map<number, number>();
  let arenaSize = 0;
  for (const r of order) {
    const size = align(r.size);
    const live = placed.filter((p) => p.start <= r.end && r.start <= p.end).sort((a, b) => a.offset - b.offset);
    let best = -1;
    let bestGap = Infinity;
    let cursor = 0;
    for (const p of live) {
      const gap = p.offset - cursor;
      if (gap >= size && gap < bestGap) {
        best = cursor;
        bestGap = gap;
      }
      cursor = Math.max(cursor, p.offset + p.size);
    }
    const offset = best >= 0 ? best : cursor;
    placed.push({ offset, size, start: r.start, end: r.end });
    offsets.set(r.id, offset);
    arenaSize = Math.max(arenaSize, offset + size);
  }
  return { offsets, arenaSize, totalSize: requests.reduce((s, r) => s + align(r.size), 0) };
}
