/**
 * The block manager: a property test over random allocate / append / fork / free sequences
 * with shared prefixes (so cache hits, evictions and copy-on-write all happen), and the exact
 * rules of prefix caching.
 */
import { describe, expect, it } from 'vitest';
import { BlockManager, type BlockOwner } from '../../src/scheduler/block_manager.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function owner(tokens: number[]): BlockOwner {
  return { tokenIds: tokens, blockTable: [], blockHashes: [], numComputedTokens: 0 };
}

/** Admits an owner as the scheduler does: cached prefix first, then fresh blocks for the rest. */
function admit(bm: BlockManager, o: BlockOwner): boolean {
  bm.acquireCachedPrefix(o);
  if (!bm.grow(o.blockTable, o.tokenIds.length)) {
    bm.returnCachedPrefix(o);
    return false;
  }
  o.numComputedTokens = o.tokenIds.length;
  bm.commitFullBlocks(o);
  return true;
}

describe('block manager property', () => {
  it.each([1, 2, 3, 4, 5])('keeps free + cached + used == total and exact reference counts (seed %i)', (seed) => {
    const r = rng(seed);
    const bs = 4;
    const bm = new BlockManager(24, bs);
    const owners: BlockOwner[] = [];
    const prefixes = Array.from({ length: 3 }, () => Array.from({ length: 10 }, () => Math.floor(r() * 5)));
    let hits = 0, copies = 0, evictions = 0, forks = 0;
    for (let step = 0; step < 2000; step++) {
      const op = r();
      if (op < 0.3) {
        const prefix = prefixes[Math.floor(r() * prefixes.length)];
        const tokens = [...prefix.slice(0, 1 + Math.floor(r() * prefix.length)), ...Array.from({ length: Math.floor(r() * 6) }, () => Math.floor(r() * 5))];
        const o = owner(tokens);
        const cachedBefore = bm.numCachedBlocks, freeBefore = bm.numFreeBlocks - bm.numCachedBlocks;
        if (admit(bm, o)) {
          owners.push(o);
          if (o.blockHashes.length && bm.hitTokens) hits++;
          if (freeBefore === 0 && bm.numCachedBlocks < cachedBefore) evictions++;
        }
      } else if (op < 0.6 && owners.length) {
        // Append a token: copy the block it lands in if shared, grow if needed, commit.
        const o = owners[Math.floor(r() * owners.length)];
        const pos = o.tokenIds.length;
        const index = Math.floor(pos / bs);
        const shared = index < o.blockTable.length && bm.refCount(o.blockTable[index]) > 1;
        if (bm.numFreeBlocks < (shared ? 1 : 0) + bm.blocksNeeded(o.blockTable, pos + 1)) continue;
        if (shared && bm.copyOnWrite(o.blockTable, index)) copies++;
        (o.tokenIds as number[]).push(Math.floor(r() * 5));
        expect(bm.grow(o.blockTable, pos + 1)).toBe(true);
        o.numComputedTokens = pos + 1;
        bm.commitFullBlocks(o);
      } else if (op < 0.7 && owners.length) {
        const p = owners[Math.floor(r() * owners.length)];
        owners.push({ tokenIds: [...p.tokenIds], blockTable: bm.fork(p.blockTable), blockHashes: [...p.blockHashes], numComputedTokens: p.numComputedTokens });
        forks++;
      } else if (owners.length) {
        const o = owners.splice(Math.floor(r() * owners.length), 1)[0];
        bm.release(o.blockTable);
      }
      bm.checkInvariants(owners);
      // Every owned block holds the tokens its owner put there: a block shared by two owners
      // (a cache hit or a fork) covers the same tokens in both.
      const content = new Map<number, string>();
      for (const o of owners)
        o.blockTable.forEach((b, i) => {
          const full = (i + 1) * bs <= o.numComputedTokens;
          if (!full || bm.refCount(b) === 1) return;
          const text = o.tokenIds.slice(i * bs, (i + 1) * bs).join(',');
          const seen = content.get(b);
          if (seen !== undefined) expect(text, `block ${b}`).toBe(seen);
          content.set(b, text);
        });
    }
    for (const o of owners) bm.release(o.blockTable);
    bm.checkInvariants([]);
    expect(bm.numUsedBlocks).toBe(0);
    expect(bm.numFreeBlocks).toBe(24);
    expect(hits).toBeGreaterThan(0);
    expect(copies).toBeGreaterThan(0);
    expect(forks).toBeGreaterThan(0);
    expect(evictions).toBeGreaterThan(0);
  });
});

describe('prefix caching', () => {
  it('shares full blocks of a common prefix and always leaves one token to compute', () => {
    const bm = new BlockManager(16, 4);
    const a = owner([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(admit(bm, a)).toBe(true);
    expect(a.blockHashes.length).toBe(2);
    const b = owner([1, 2, 3, 4, 5, 6, 7, 8, 42]);
    expect(bm.acquireCachedPrefix(b)).toBe(8);
    expect(b.blockTable).toEqual(a.blockTable.slice(0, 2));
    expect(bm.refCount(a.blockTable[0])).toBe(2);
    // A prompt that is exactly the cached blocks recomputes its last block.
    const c = owner([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(bm.acquireCachedPrefix(c)).toBe(4);
    // A different first block shares nothing, even if later blocks match.
    const d = owner([9, 9, 9, 9, 5, 6, 7, 8, 1]);
    expect(bm.acquireCachedPrefix(d)).toBe(0);
    expect(bm.hitTokens).toBe(12);
    expect(bm.queriedTokens).toBe(10 + 9 + 8 + 9);
  });

  it('keeps released blocks cached and evicts the tail of a prefix first, only when nothing is free', () => {
    const bm = new BlockManager(4, 2);
    const a = owner([1, 2, 3, 4, 0]);
    expect(admit(bm, a)).toBe(true); // blocks 0, 1 (full, hashed) and 2 (partial)
    const [head, second, partial] = a.blockTable;
    bm.release(a.blockTable);
    expect([bm.numUsedBlocks, bm.numCachedBlocks, bm.numFreeBlocks]).toEqual([0, 2, 4]);
    const b = owner([7, 7, 7, 7, 0]);
    expect(admit(bm, b)).toBe(true); // takes the two free blocks, then evicts one cached block
    expect(b.blockTable).toContain(partial);
    expect(b.blockTable).toContain(second);
    expect(b.blockTable).not.toContain(head);
    expect(bm.numCachedBlocks).toBe(1);
    const c = owner([1, 2, 3, 4, 9]);
    expect(bm.acquireCachedPrefix(c)).toBe(2);
    expect(c.blockTable).toEqual([head]);
    bm.checkInvariants([b, c]);
  });

  it('does not share across cache salts or with caching off', () => {
    for (const bm of [new BlockManager(8, 2, { prefixCaching: false }), new BlockManager(8, 2, { cacheSalt: 'model-a' })]) {
      const a = owner([1, 2, 3, 4, 5]);
      admit(bm, a);
      const other = bm.prefixCaching ? new BlockManager(8, 2, { cacheSalt: 'model-b' }) : bm;
      const b = owner([1, 2, 3, 4, 5]);
      expect(other.acquireCachedPrefix(b)).toBe(0);
    }
  });

  it('copy-on-write gives a writer a private block and leaves the other owner the original', () => {
    const bm = new BlockManager(8, 4);
    const a = owner([1, 2, 3, 4, 5, 6]);
    admit(bm, a);
    const b = { ...a, tokenIds: [...a.tokenIds], blockTable: bm.fork(a.blockTable), blockHashes: [...a.blockHashes] };
    expect(bm.refCount(a.blockTable[1])).toBe(2);
    const copy = bm.copyOnWrite(b.blockTable, 1);
    expect(copy).toEqual([a.blockTable[1], b.blockTable[1]]);
    expect(b.blockTable[0]).toBe(a.blockTable[0]);
    expect(bm.refCount(a.blockTable[1])).toBe(1);
    expect(bm.copyOnWrite(a.blockTable, 1)).toBeNull();
    bm.checkInvariants([a, b]);
  });
});
