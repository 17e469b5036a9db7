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
