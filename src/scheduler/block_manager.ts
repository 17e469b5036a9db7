/**
 * The KV block manager: which of the pool's fixed-size blocks each sequence owns. It sees block
 * ids and token counts only. Blocks are reference-counted so that shared blocks (prefix caching,
 * forks) free exactly when the last owner lets go.
 */

export class BlockManager {
  private readonly freeBlocks: number[] = [];
  private readonly refCounts: Int32Array;

  constructor(
    readonly numBlocks: number,
    readonly blockSize: number,
  ) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new Error(`numBlocks must be >= 1, got ${numBlocks}`);
    this.refCounts = new Int32Array(numBlocks);
    // Pop from the end: hand out low ids first, which keeps small runs easy to read.
    for (let b = numBlocks - 1; b >= 0; b--) this.freeBlocks.push(b);
  }

  get numFreeBlocks(): number {
    return this.freeBlocks.length;
  }

  get numUsedBlocks(): number {
    return this.numBlocks - this.freeBlocks.length;
  }

  blocksForTokens(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  refCount(block: number): number {
    return this.refCounts[block];
  }

  /** Blocks that must be added to `table` for it to hold numTokens tokens. */
  blocksNeeded(table: readonly number[], numTokens: number): number {
    return Math.max(0, this.blocksForTokens(numTokens) - table.length);
  }

  canGrow(table: readonly number[], numTokens: number): boolean {
    return this.blocksNeeded(table, numTokens) <= this.freeBlocks.length;
  }

  /** Appends fresh blocks to `table` until it holds numTokens tokens; false (and no change) if the pool is short. */
  grow(table: number[], numTokens: number): boolean {
    const need = this.blocksNeeded(table, numTokens);
    if (need > this.freeBlocks.length) return false;
    for (let i = 0; i < need; i++) {
      const b = this.freeBlocks.pop()!;
      this.refCounts[b] = 1;
      table.push(b);
    }
    return true;
  }

  /** Drops one reference to each block of `table` and empties it. */
  release(table: number[]): void {
    for (const b of table) {
      if (this.refCounts[b] <= 0) throw new Error(`block ${b} released more often than held`);
      if (--this.refCounts[b] === 0) this.freeBlocks.push(b);
    }
    table.length = 0;
  }
}
