/**
 * The KV block manager: which of the pool's fixed-size blocks each sequence owns. It sees block
 * ids and token ids only, never tensors.
 *
 * - Reference counts: a block shared by several sequences (a cached prefix, a fork) is freed
 *   when the last owner lets go.
 * - Prefix caching: a full block is identified by a hash chained through the previous block's
 *   hash, seeded with the model's identity, so two sequences with the same first k blocks of
 *   tokens share those k blocks. A block whose last owner leaves keeps its contents and its hash
 *   ("cached") and is reused by the next sequence with that prefix; cached blocks are evicted,
 *   least recently released first, only when no free block is left.
 * - Copy-on-write: a forked sequence shares its parent's blocks; before either writes into a
 *   shared block, it gets a private copy (the caller copies the contents on the device).
 * Every block is in exactly one of three states: free (no owner, no hash), cached (no owner,
 * hashed, evictable) or used (refCount > 0).
 */
import { createHash } from 'node:crypto';

export interface BlockManagerOptions {
  /** Reuse full blocks across sequences with the same prefix (default true). */
  prefixCaching?: boolean;
  /** Identity of the model (and adapter) whose KV these blocks hold; seeds every hash chain. */
  cacheSalt?: string;
}

/** What a block-holding sequence exposes to the manager. */
export interface BlockOwner {
  readonly tokenIds: readonly number[];
  blockTable: number[];
  /** Hashes of the owner's full blocks whose KV is computed, in order. */
  blockHashes: string[];
  numComputedTokens: number;
}

export class BlockManager {
  readonly prefixCaching: boolean;
  private readonly refCounts: Int32Array;
  private readonly hashOf: (string | null)[];
  private readonly blockByHash = new Map<string, number>();
  /** Free blocks (no owner, no hash), popped from the end. */
  private readonly freeList: number[] = [];
  /** Cached blocks (no owner, hashed) in release order: the first is evicted first. */
  private readonly cachedLru = new Map<number, true>();
  private readonly rootHash: string;
  /** Prompt tokens looked up in the cache, and how many were found (for the hit rate). */
  queriedTokens = 0;
  hitTokens = 0;

  constructor(
    readonly numBlocks: number,
    readonly blockSize: number,
    opts: BlockManagerOptions = {},
  ) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new Error(`numBlocks must be >= 1, got ${numBlocks}`);
    this.prefixCaching = opts.prefixCaching ?? true;
    this.refCounts = new Int32Array(numBlocks);
    this.hashOf = new Array(numBlocks).fill(null);
    for (let b = numBlocks - 1; b >= 0; b--) this.freeList.push(b);
    this.rootHash = createHash('sha256').update(`tessera-kv:${opts.cacheSalt ?? ''}`).digest('hex').slice(0, 32);
  }

  /** Blocks that can be handed out now: free plus evictable cached ones. */
  get numFreeBlocks(): number {
    return this.freeList.length + this.cachedLru.size;
  }

  /** Blocks with at least one owner. */
  get numUsedBlocks(): number {
    return this.numBlocks - this.freeList.length - this.cachedLru.size;
  }

  /** Unowned blocks that still hold a cached prefix. */
  get numCachedBlocks(): number {
    return this.cachedLru.size;
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


  /** Appends blocks to `table` until it holds numTokens tokens; false (and no change) if the pool is short. */
  grow(table: number[], numTokens: number): boolean {
    const need = this.blocksNeeded(table, numTokens);
    if (need > this.numFreeBlocks) return false;
    for (let i = 0; i < need; i++) table.push(this.takeBlock());
    return true;
  }

  /** Drops one reference to each block of `table` and empties it. */
  release(table: number[]): void {
    // Release the tail first, so a shared prefix's later blocks are evicted before its head.
    for (let i = table.length - 1; i >= 0; i--) {
      const b = table[i];
      if (this.refCounts[b] <= 0) throw new Error(`block ${b} released more often than held`);
      if (--this.refCounts[b] > 0) continue;
      if (this.hashOf[b] !== null) this.cachedLru.set(b, true);
      else this.freeList.push(b);
    }
    table.length = 0;
  }

  /** Another owner for every block of `table` (a fork): the returned table shares them. */
  fork(table: readonly number[]): number[] {
    for (const b of table) this.refCounts[b]++;
    return [...table];
  }

  /**
   * Makes table[index] private before a write: if it is shared, it is replaced by a fresh block
   * and [source, copy] is returned for the caller to copy the contents; null if already private.
   * Throws if no block is free (the caller checks numFreeBlocks first).
   */
  copyOnWrite(table: number[], index: number): [number, number] | null {
    const src = table[index];
    if (this.refCounts[src] === 1) return null;
    if (this.numFreeBlocks === 0) throw new Error('copy-on-write with no free block');
    const dst = this.takeBlock();
    this.refCounts[src]--;
    table[index] = dst;
    return [src, dst];
  }

  /**
   * Finds the owner's longest prefix of full blocks that are cached, takes a reference to each and
   * puts them in its (empty) block table. At least one token is always left to compute, so the
   * prompt's last position yields logits. Returns the number of tokens found.
   */
  acquireCachedPrefix(owner: BlockOwner): number {
    if (owner.blockTable.length !== 0) throw new Error('acquireCachedPrefix on a sequence that holds blocks');
    const maxBlocks = Math.floor((owner.tokenIds.length - 1) / this.blockSize);
    this.queriedTokens += owner.tokenIds.length;
    if (!this.prefixCaching) return 0;
    const hashes: string[] = [];
    let parent = this.rootHash;
    for (let i = 0; i < maxBlocks; i++) {
      const h = this.hashBlock(parent, owner.tokenIds, i);
      const block = this.blockByHash.get(h);
      if (block === undefined) break;
      hashes.push(h);
      parent = h;
      if (this.refCounts[block]++ === 0) this.cachedLru.delete(block);
      owner.blockTable.push(block);
    }
    owner.blockHashes = hashes;
    const tokens = hashes.length * this.blockSize;
    owner.numComputedTokens = tokens;
    this.hitTokens += tokens;
    return tokens;
  }

  /** Gives back a prefix taken by acquireCachedPrefix when admission failed, as if never asked. */
  returnCachedPrefix(owner: BlockOwner): void {
    this.queriedTokens -= owner.tokenIds.length;
    this.hitTokens -= owner.blockHashes.length * this.blockSize;
    this.release(owner.blockTable);
    owner.blockHashes = [];
    owner.numComputedTokens = 0;
  }

  /** Registers the hashes of the owner's blocks that became full and computed since the last call. */
  commitFullBlocks(owner: BlockOwner): void {
    if (!this.prefixCaching) return;
    const full = Math.floor(owner.numComputedTokens / this.blockSize);
    for (let i = owner.blockHashes.length; i < full; i++) {
      const parent = i === 0 ? this.rootHash : owner.blockHashes[i - 1];
      const h = this.hashBlock(parent, owner.tokenIds, i);
      owner.blockHashes.push(h);
      const block = owner.blockTable[i];
      // The first block computed with a prefix keeps the hash; a duplicate stays anonymous.
      if (!this.blockByHash.has(h) && this.hashOf[block] === null) {
        this.blockByHash.set(h, block);
        this.hashOf[block] = h;
      }
    }
  }

  /** Consistency of the three states and the hash maps; throws on the first violation (tests). */
  checkInvariants(owners: Iterable<BlockOwner>): void {
    const counted = new Int32Array(this.numBlocks);
    for (const o of owners) for (const b of o.blockTable) counted[b]++;
    const inFree = new Set(this.freeList);
    if (inFree.size !== this.freeList.length) throw new Error('a block is in the free list twice');
    for (let b = 0; b < this.numBlocks; b++) {
      if (counted[b] !== this.refCounts[b]) throw new Error(`block ${b}: refCount ${this.refCounts[b]} but ${counted[b]} owners`);
      const states = Number(inFree.has(b)) + Number(this.cachedLru.has(b)) + Number(this.refCounts[b] > 0);
      if (states !== 1) throw new Error(`block ${b} is in ${states} states`);
      if (inFree.has(b) && this.hashOf[b] !== null) throw new Error(`free block ${b} has a hash`);
      if (this.cachedLru.has(b) && this.hashOf[b] === null) throw new Error(`cached block ${b} has no hash`);
      const h = this.hashOf[b];
      if (h !== null && this.blockByHash.get(h) !== b) throw new Error(`block ${b}'s hash maps elsewhere`);
    }
    if (this.freeList.length + this.cachedLru.size + this.numUsedBlocks !== this.numBlocks) throw new Error('free + cached + used != total');
  }

  private takeBlock(): number {
    let b = this.freeList.pop();
    if (b === undefined) {
      // Evict the least recently released cached block.
      b = this.cachedLru.keys().next().value as number;
      this.cachedLru.delete(b);
      this.blockByHash.delete(this.hashOf[b]!);
      this.hashOf[b] = null;
    }
    this.refCounts[b] = 1;
    return b;
  }

  private hashBlock(parent: string, tokens: readonly number[], index: number): string {
    const start = index * this.blockSize;
    const ids = Int32Array.from(tokens.slice(start, start + this.blockSize));
    return createHash('sha256').update(parent).update(new Uint8Array(ids.buffer)).digest('hex').slice(0, 32);
  }
}
