/**
 * The paged layout of a test step: sequences given as [context after the step, new tokens], their
 * cache blocks handed out in a shuffled order (as a pool that has run a while does), a few blocks
 * nobody owns, and a block-table width one past the longest (the unused entry reads 0).
 */
export interface PagedLayout {
  /** Cache blocks in the pool. */
  blocks: number;
  /** Block-table width, and the tables [sequences, width]. */
  width: number;
  tables: Int32Array;
  queryStart: number[];
  contextLens: number[];
  /** New tokens in the step (queryStart's last entry). */
  tokens: number;
  /** The cache slot of position p of sequence b. */
  slot(b: number, p: number): number;
}

/** `permutation(n)`: the order n blocks are handed out in (a permutation of 0..n-1). */
export function pagedLayout(seqs: ReadonlyArray<readonly [number, number]>, blockSize: number, permutation: (n: number) => ArrayLike<number>): PagedLayout {
  const need = seqs.map(([ctx]) => Math.ceil(ctx / blockSize));
  const width = Math.max(...need) + 1;
  const blocks = need.reduce((a, b) => a + b, 0) + 3;
  const perm = permutation(blocks);
  const tables = new Int32Array(seqs.length * width);
  let next = 0;
  seqs.forEach((_, b) => {
    for (let i = 0; i < need[b]; i++) tables[b * width + i] = perm[next++];
  });
  const queryStart = [0];
  for (const [, q] of seqs) queryStart.push(queryStart[queryStart.length - 1] + q);
  return {
    blocks,
    width,
    tables,
    queryStart,
    contextLens: seqs.map(([ctx]) => ctx),
    tokens: queryStart[seqs.length],
    slot: (b, p) => tables[b * width + Math.floor(p / blockSize)] * blockSize + (p % blockSize),
  };
}

/** A shuffled order of n blocks from `random` (a [0, 1) generator), for pagedLayout. */
export function shuffledBlocks(random: () => number): (n: number) => number[] {
  return (n) => {
    const perm = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
    return perm;
  };
}

/**
 * A KV pool [2, blocks, blockSize, kvHeads, headDim] whose slots inside each sequence's context hold
 * `value()` and every other slot NaN: pool memory past a context may hold anything, and nothing of
 * it may reach an attention output (0 * NaN is NaN on tensor cores too).
 */
export function poolWithNaNOutside(layout: PagedLayout, blockSize: number, kvHeads: number, headDim: number, value: () => number): Float32Array {
  const row = kvHeads * headDim;
  const cache = new Float32Array(2 * layout.blocks * blockSize * row).fill(NaN);
  layout.contextLens.forEach((ctx, b) => {
    for (let p = 0; p < ctx; p++) for (let half = 0; half < 2; half++) for (let i = 0; i < row; i++) cache[(half * layout.blocks * blockSize + layout.slot(b, p)) * row + i] = value();
  });
  return cache;
}
