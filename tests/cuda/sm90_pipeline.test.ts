/**
 * The synchronization protocol of kernels/gemm_sm90.cu, model-checked on the CPU: one producer
 * thread and two consumer warpgroups share a ring of STAGES shared-memory stages through `full`
 * and `empty` mbarriers (PTX semantics: a phase completes when its pending arrivals and
 * transaction bytes reach zero; try_wait.parity(P) succeeds once the phase of parity P has
 * completed, so on a fresh barrier parity 1 succeeds at once). The model follows the kernel's
 * loops line by line (the same stage and phase bookkeeping, the wgmma group kept in flight and
 * the stage released after wait_group 1, the persistent tile loop) under random interleavings
 * with TMA bytes landing late, and checks that nothing deadlocks, that the producer never
 * overwrites a stage a wgmma may still read, and that every k-tile is read after its own load
 * landed, exactly once by each consumer. A protocol error here would hang or corrupt the kernel.
 *
 * The ping-pong entries (ts_gemm_sm90p_*) run the same ring with the consumers on alternate tiles:
 * each steps its ring position over the other's k-tiles, waits for its turn (a named barrier the
 * other consumer arrives on once its main loop has waited for its last k-tile) and releases
 * stages alone (empty barriers of one warpgroup's arrivals).
 *
 * The cluster entries (ts_gemm_sm90c_*, sm90pc's ring is sm90p's with the same multicast) run
 * two blocks of the cooperative schedule on a pair of row tiles: each producer loads its own x
 * and multicasts its half of w into both blocks' stage, completing bytes on each block's own
 * `full` barrier (possibly before that block's producer expected them), and every consumer
 * releases a stage on both blocks' `empty` barriers. simulateCluster checks the same properties
 * across the pair, and that no block exits while its peer still arrives on or loads into it.
 */
import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../helpers/random.js';
import { MBarrier } from './mbarrier_model.js';

/** Deliberate protocol errors, to show the model catches them. */
interface Bugs {
  /** The producer waits on the empty barrier's phase parity instead of phase ^ 1. */
  wrongParity?: boolean;
  /** A consumer releases a stage right after issuing its wgmma, before the group completes. */
  releaseEarly?: boolean;
  /** Ping-pong without the turn-taking: a consumer waits on its tile's first stage at once. */
  noOrder?: boolean;
}

/** One run of the kernel's protocol; returns what each consumer read, in order. */
function simulate(seed: number, STAGES: number, tiles: number, kTiles: number, bugs: Bugs = {}, pingpong = false): string[][] {
  const rnd = mulberry32(seed);
  const full = Array.from({ length: STAGES }, () => new MBarrier(1));
  const empty = Array.from({ length: STAGES }, () => new MBarrier(pingpong ? 1 : 2));
  /** Ping-pong: the tile whose main loop may start (the named barriers' turn). */
  let turn = 0;
  /** What each stage holds (the k-tile loaded into it), and loads still in flight. */
  const content: Array<string | null> = new Array(STAGES).fill(null);
  const inFlight: Array<{ stage: number; label: string }> = [];
  /** Per consumer: stages its in-flight wgmma groups read. */
  const reading = [new Set<number>(), new Set<number>()];
  const reads: string[][] = [[], []];

  // The producer, as the kernel's loop: wait empty(phase ^ 1), expect tx, two TMA loads, advance.
  function* producer(): Generator<void> {
    let stage = 0, phase = 0;
    for (let t = 0; t < tiles; t++)
      for (let kt = 0; kt < kTiles; kt++) {
        while (!empty[stage].done(bugs.wrongParity ? phase : phase ^ 1)) yield;
        for (const c of reading) if (c.has(stage)) throw new Error(`producer overwrites stage ${stage} while a wgmma reads it`);
        full[stage].arriveExpectTx(2);
        inFlight.push({ stage, label: `${t}:${kt}` }, { stage, label: `${t}:${kt}` });
        content[stage] = null;
        if (++stage === STAGES) {
          stage = 0;
          phase ^= 1;
        }
        yield;
      }
  }

  // A consumer warpgroup, as the kernel's loop: wait full(phase), issue (reads the stage until the
  // group completes), commit, wait_group 1 (the previous group completes), release prev.
  // Ping-pong: the ring position pos (stage pos % STAGES, phase pos / STAGES) steps over the other
  // consumer's tiles; a tile's main loop waits for its turn, and hands the turn on after its last
  // full wait.
  function* consumer(me: number): Generator<void> {
    let stage = 0, phase = 0;
    for (let t = 0; t < tiles; t++) {
      if (pingpong && t % 2 !== me) {
        const pos = stage + STAGES * phase + kTiles;
        stage = pos % STAGES;
        phase = Math.floor(pos / STAGES) % 2;
        continue;
      }
      if (pingpong && !bugs.noOrder) while (turn !== t) yield;
      let prev = -1;
      for (let kt = 0; kt < kTiles; kt++) {
        while (!full[stage].done(phase)) yield;
        if (pingpong && kt === kTiles - 1) turn = t + 1;
        const label = content[stage];
        if (label !== `${t}:${kt}`) throw new Error(`consumer ${me} reads stage ${stage} holding ${label}, expected ${t}:${kt}`);
        reading[me].add(stage);
        reads[me].push(label);
        if (bugs.releaseEarly) {
          empty[stage].arrive();
          yield;
          reading[me].delete(stage);
          if (++stage === STAGES) {
            stage = 0;
            phase ^= 1;
          }
          continue;
        }
        yield; // the group runs asynchronously
        // wait_group 1: every group but this one has completed.
        if (prev >= 0) {
          reading[me].delete(prev);
          empty[prev].arrive();
        }
        prev = stage;
        if (++stage === STAGES) {
          stage = 0;
          phase ^= 1;
        }
        yield;
      }
      // wait_group 0, release the last stage, then the epilogue.
      if (prev >= 0) {
        reading[me].delete(prev);
        empty[prev].arrive();
      }
      yield;
    }
  }

  const agents = [producer(), consumer(0), consumer(1)];
  const finished = [false, false, false];
  for (let steps = 0; steps < 1_000_000; steps++) {
    if (finished.every(Boolean) && inFlight.length === 0) return reads;
    // TMA bytes land in their own time (in order per stage, as the model needs only the count).
    if (inFlight.length && rnd() < 0.3) {
      const i = Math.floor(rnd() * inFlight.length);
      const { stage, label } = inFlight.splice(i, 1)[0];
      if (!inFlight.some((l) => l.stage === stage)) content[stage] = label;
      full[stage].completeTx(1);
      continue;
    }
    const live = agents.map((_, i) => i).filter((i) => !finished[i]);
    if (live.length === 0) continue;
    const a = live[Math.floor(rnd() * live.length)];
    if (agents[a].next().done) finished[a] = true;
  }
  throw new Error(`deadlock (seed ${seed}): producer ${finished[0] ? 'done' : 'waiting'}, consumers ${finished[1]} ${finished[2]}`);
}

/** Deliberate errors in the cluster protocol. */
interface ClusterBugs {
  /** Consumers release only their own block's stage (empty barriers of the block's own consumers). */
  localRelease?: boolean;
  /** The producer does not wait out the last releases before its block exits. */
  noTail?: boolean;
}

/**
 * The cluster entries' protocol: blocks 0 and 1, each a producer and two consumers, walking the
 * same `units` of `kTiles` k-tiles through rings of STAGES stages. Returns what each block's
 * consumers read (both read the same).
 */
function simulateCluster(seed: number, STAGES: number, units: number, kTiles: number, bugs: ClusterBugs = {}): string[][] {
  const rnd = mulberry32(seed);
  const blocks = [0, 1];
  // full: the producer's arrival plus 3 loads (its x, and both halves of w); empty: both
  // consumers of both blocks (the kernel counts one lane a warp: 8 warps x 2 blocks).
  const full = blocks.map(() => Array.from({ length: STAGES }, () => new MBarrier(1)));
  const empty = blocks.map(() => Array.from({ length: STAGES }, () => new MBarrier(bugs.localRelease ? 2 : 4)));
  /** What each part of each stage holds: x, w half 0, w half 1. */
  const content = blocks.map(() => Array.from({ length: STAGES }, () => ({ x: '', w0: '', w1: '' }) as Record<'x' | 'w0' | 'w1', string>));
  const inFlight: Array<{ block: number; stage: number; part: 'x' | 'w0' | 'w1'; label: string }> = [];
  const reading = blocks.map(() => [new Set<number>(), new Set<number>()]);
  const reads: string[][] = [[], []];
  const exited = [false, false];
  const live = (b: number, what: string) => {
    if (exited[b]) throw new Error(`${what} on block ${b}, which has exited`);
  };

  function* producer(b: number): Generator<void> {
    let stage = 0, phase = 0;
    const advance = () => {
      if (++stage === STAGES) {
        stage = 0;
        phase ^= 1;
      }
    };
    for (let u = 0; u < units; u++)
      for (let kt = 0; kt < kTiles; kt++) {
        while (!empty[b][stage].done(phase ^ 1)) yield;
        // Its x lands in its own block, its half of w in both.
        for (const t of blocks)
          for (const c of reading[t]) if (c.has(stage)) throw new Error(`producer ${b} overwrites stage ${stage} of block ${t} while a wgmma reads it`);
        full[b][stage].arriveExpectTx(3);
        const label = `${u}:${kt}`, w = `w${b}` as 'w0' | 'w1';
        content[b][stage].x = '';
        inFlight.push({ block: b, stage, part: 'x', label });
        for (const t of blocks) {
          live(t, `producer ${b}'s multicast`);
          content[t][stage][w] = '';
          inFlight.push({ block: t, stage, part: w, label });
        }
        advance();
        yield;
      }
    // The tail: every stage released by both blocks' consumers before the block may exit.
    if (!bugs.noTail)
      for (let i = 0; i < STAGES; i++) {
        while (!empty[b][stage].done(phase ^ 1)) yield;
        advance();
      }
  }

  function* consumer(b: number, me: number): Generator<void> {
    let stage = 0, phase = 0, prev = -1;
    const release = (s: number) => {
      reading[b][me].delete(s);
      for (const t of bugs.localRelease ? [b] : blocks) {
        live(t, `consumer ${me} of block ${b}'s release`);
        empty[t][s].arrive();
      }
    };
    for (let u = 0; u < units; u++) {
      prev = -1;
      for (let kt = 0; kt < kTiles; kt++) {
        while (!full[b][stage].done(phase)) yield;
        const label = `${u}:${kt}`, c = content[b][stage];
        if (c.x !== label || c.w0 !== label || c.w1 !== label) throw new Error(`consumer ${me} of block ${b} reads stage ${stage} holding ${JSON.stringify(c)}, expected ${label}`);
        reading[b][me].add(stage);
        if (me === 0) reads[b].push(label);
        yield; // the group runs asynchronously
        if (prev >= 0) release(prev);
        prev = stage;
        if (++stage === STAGES) {
          stage = 0;
          phase ^= 1;
        }
        yield;
      }
      if (prev >= 0) release(prev);
      yield;
    }
  }

  const agents = blocks.flatMap((b) => [{ b, gen: producer(b) }, { b, gen: consumer(b, 0) }, { b, gen: consumer(b, 1) }]);
  const finished = agents.map(() => false);
  for (let steps = 0; steps < 2_000_000; steps++) {
    for (const b of blocks) if (!exited[b] && agents.every((a, i) => a.b !== b || finished[i])) exited[b] = true;
    if (finished.every(Boolean) && inFlight.length === 0) return reads;
    if (inFlight.length && rnd() < 0.3) {
      const i = Math.floor(rnd() * inFlight.length);
      const { block, stage, part, label } = inFlight.splice(i, 1)[0];
      live(block, `a load's landing`);
      content[block][stage][part] = label;
      full[block][stage].completeTx(1);
      continue;
    }
    const ready = agents.map((_, i) => i).filter((i) => !finished[i]);
    if (ready.length === 0) continue;
    const a = ready[Math.floor(rnd() * ready.length)];
    if (agents[a].gen.next().done) finished[a] = true;
  }
  throw new Error(`deadlock (seed ${seed})`);
}

describe('the sm90 GEMM pipeline protocol (model of kernels/gemm_sm90.cu)', () => {
  it('never deadlocks, never overwrites a stage being read, and reads every k-tile after it landed, once per consumer', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const tiles = 1 + (seed % 3), kTiles = 1 + (seed % 9);
      const reads = simulate(seed, 4, tiles, kTiles);
      const want = Array.from({ length: tiles * kTiles }, (_, i) => `${Math.floor(i / kTiles)}:${i % kTiles}`);
      expect(reads[0], `seed ${seed}`).toEqual(want);
      expect(reads[1], `seed ${seed}`).toEqual(want);
    }
  });

  it('catches protocol errors: a wrong wait parity deadlocks, an early release lets a load overwrite a live stage', () => {
    // The same model with a deliberate error must fail, or it proves nothing.
    expect(() => simulate(1, 4, 2, 8, { wrongParity: true })).toThrow(/deadlock/);
    const messages = new Set<string>();
    for (let seed = 1; seed <= 40; seed++) {
      try {
        simulate(seed, 4, 2, 8, { releaseEarly: true });
      } catch (err) {
        messages.add((err as Error).message.replace(/\d+/g, 'N'));
      }
    }
    expect([...messages]).toContain('producer overwrites stage N while a wgmma reads it');
  });

  it('ping-pong (sm90p): each consumer reads its own tiles\' k-tiles, in order, after they landed, with more k-tiles than stages', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const tiles = 1 + (seed % 5), kTiles = 1 + (seed % 13);
      const reads = simulate(seed, 6, tiles, kTiles, {}, true);
      for (const me of [0, 1]) {
        const want = Array.from({ length: tiles * kTiles }, (_, i) => [Math.floor(i / kTiles), i % kTiles]).filter(([t]) => t % 2 === me).map(([t, k]) => `${t}:${k}`);
        expect(reads[me], `seed ${seed} consumer ${me}`).toEqual(want);
      }
    }
  });

  it('ping-pong needs its turns: without them a consumer takes a stage a lap early (a full barrier\'s parity names a phase only within one lap)', () => {
    const messages = new Set<string>();
    for (let seed = 1; seed <= 40; seed++) {
      try {
        simulate(seed, 6, 3, 13, { noOrder: true }, true);
      } catch (err) {
        messages.add((err as Error).message.replace(/\d+/g, 'N'));
      }
    }
    expect([...messages].some((m) => /^consumer N reads stage N holding .*, expected N:N$/.test(m)), [...messages].join('; ')).toBe(true);
    // The model fails for the turns' absence, not for the option: at 4 k-tiles a tile on 6 stages,
    // the stage a consumer first waits on was last loaded for its own previous tile, so there the
    // parity cannot mislead and the run without turns is right.
    expect(() => simulate(1, 6, 3, 4, { noOrder: true }, true)).not.toThrow();
  });

  it('clusters (sm90c): both blocks read every k-tile whole (their x, both halves of w) after it landed, nothing overwrites a stage either block reads, no block exits early', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const units = 1 + (seed % 3), kTiles = 1 + (seed % 9);
      const reads = simulateCluster(seed, 4, units, kTiles);
      const want = Array.from({ length: units * kTiles }, (_, i) => `${Math.floor(i / kTiles)}:${i % kTiles}`);
      expect(reads[0], `seed ${seed}`).toEqual(want);
      expect(reads[1], `seed ${seed}`).toEqual(want);
    }
  });

  it('clusters need the cross-block releases and the tail: without them a multicast overwrites a stage the peer reads, or a block exits under its peer', () => {
    const messages = new Set<string>();
    for (let seed = 1; seed <= 60; seed++) {
      try {
        simulateCluster(seed, 4, 2, 9, { localRelease: true });
      } catch (err) {
        messages.add((err as Error).message.replace(/\d+/g, 'N'));
      }
    }
    expect([...messages].some((m) => /^producer N overwrites stage N of block N while a wgmma reads it$|^consumer N of block N reads stage N holding/.test(m)), [...messages].join('; ')).toBe(true);
    messages.clear();
    for (let seed = 1; seed <= 60; seed++) {
      try {
        simulateCluster(seed, 4, 1, 3, { noTail: true });
      } catch (err) {
        messages.add((err as Error).message.replace(/\d+/g, 'N'));
      }
    }
    expect([...messages].some((m) => /which has exited$/.test(m)), [...messages].join('; ')).toBe(true);
  });
});
