/**
 * The synchronization protocol of kernels/attention_sm90.cu, model-checked on the CPU, as
 * sm90_pipeline.test.ts does for the GEMM: one producer thread fills a 2-stage ring of K and V
 * tiles (K and V of a stage complete on their own `full` mbarriers and are released on their own
 * `empty` ones, each taking both consumers' arrival), and two consumer warpgroups take turns issuing their wgmma groups
 * through named barriers 3 and 4 (bar.sync by the one whose turn it is, bar.arrive by the other;
 * 256 threads each, so one arrival per warpgroup here). The consumers follow the kernel's code:
 * tile 0's QK^T alone, then QK^T of tile j with PV of tile j - 1 as one group, then the last PV;
 * consumer 1 opens with an arrive on barrier 3 and does not pass the turn after its last group.
 * When the last tile runs past the context, both consumers zero its V tail between them and meet
 * on named barrier 5 (bar.sync by both) after its vFull and before the last PV.
 *
 * The sm90o rung issues S_j and PV_{j-1} as two groups and releases K_j when the first completes
 * (wait_group 1), V_{j-1} when the second does; both rungs are checked.
 *
 * Checked under random interleavings with TMA bytes landing late: no deadlock; the producer never
 * overwrites a K or V buffer a wgmma group may still read; every group reads the tile it expects
 * (K of j, V of j - 1) after it landed; the two consumers' groups strictly alternate, starting with
 * consumer 0; and every named barrier ends with no arrival pending (a stray bar.arrive would leave
 * the barrier half full for whatever uses it next). Deliberate protocol errors are caught.
 */
import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../helpers/random.js';
import { MBarrier } from './mbarrier_model.js';

const STAGES = 2;

/** A named barrier of `count` arrivals (bar.sync waits for its generation to complete; bar.arrive does not). */
class NamedBarrier {
  arrived = 0;
  generation = 0;
  constructor(readonly count: number) {}
  /** Arrives; returns the generation to wait out (bar.sync). */
  arrive(): number {
    const g = this.generation;
    if (++this.arrived === this.count) {
      this.arrived = 0;
      this.generation++;
    }
    return g;
  }
}

interface Bugs {
  /** Consumer 1 also passes the turn after its last group. */
  extraArrive?: boolean;
  /** Consumer 1 does not open with an arrive on barrier 3. */
  noOpening?: boolean;
  /** A consumer releases the stage right after issuing, before its group completed. */
  releaseEarly?: boolean;
}

type Buf = `${'K' | 'V'}${number}`;

/**
 * overlap: the sm90o rung, where S_j and PV_{j-1} are separate groups and K_j is released when the
 * first completes. tail: the last tile's V has rows past the context (barrier 5).
 */
function simulate(seed: number, nTiles: number, bugs: Bugs = {}, overlap = false, tail = false) {
  const rnd = mulberry32(seed);
  const kFull = Array.from({ length: STAGES }, () => new MBarrier(1));
  const vFull = Array.from({ length: STAGES }, () => new MBarrier(1));
  const kEmpty = Array.from({ length: STAGES }, () => new MBarrier(2));
  const vEmpty = Array.from({ length: STAGES }, () => new MBarrier(2));
  const turn = [new NamedBarrier(2), new NamedBarrier(2)]; // ids 3 and 4
  const tailBar = new NamedBarrier(2); // id 5
  const content = new Map<Buf, string | null>();
  const inFlight: Array<{ buf: Buf; bar: MBarrier; label: string }> = [];
  const reading = [new Set<Buf>(), new Set<Buf>()];
  const reads: string[][] = [[], []];
  const issues: number[] = [];

  function* producer(): Generator<void> {
    for (let j = 0; j < nTiles; j++) {
      const s = j % STAGES, phase = Math.floor(j / STAGES) & 1;
      for (const kind of ['K', 'V'] as const) {
        while (!(kind === 'K' ? kEmpty : vEmpty)[s].done(phase ^ 1)) yield;
        const buf: Buf = `${kind}${s}`;
        for (const r of reading) if (r.has(buf)) throw new Error(`producer overwrites ${kind} of stage ${s} while a wgmma reads it`);
        (kind === 'K' ? kFull : vFull)[s].arriveExpectTx(1);
        content.set(buf, null);
        inFlight.push({ buf, bar: (kind === 'K' ? kFull : vFull)[s], label: `${kind}${j}` });
        yield;
      }
    }
  }

  function* consumer(cw: number): Generator<void> {
    const sync = function* (): Generator<void> {
      const g = turn[cw].arrive();
      while (turn[cw].generation === g) yield;
    };
    const passTurn = () => turn[1 - cw].arrive();
    const read = (buf: Buf, want: string) => {
      if (content.get(buf) !== want) throw new Error(`consumer ${cw} reads ${buf} holding ${content.get(buf)}, expected ${want}`);
      reading[cw].add(buf);
      reads[cw].push(want);
    };
    const complete = () => reading[cw].clear(); // wgmma.wait_group 0

    if (cw === 1 && !bugs.noOpening) turn[0].arrive();
    for (let j = 0; j <= nTiles; j++) {
      const last = j === nTiles;
      const st = j % STAGES, prev = (j + STAGES - 1) % STAGES;
      if (!last) while (!kFull[st].done(Math.floor(j / STAGES) & 1)) yield;
      if (j > 0) while (!vFull[prev].done(Math.floor((j - 1) / STAGES) & 1)) yield;
      if (tail && j === nTiles) {
        // zero_v_tail: each consumer its half of the rows, then both meet before either's PV.
        const g = tailBar.arrive();
        while (tailBar.generation === g) yield;
      }
      yield* sync();
      issues.push(cw);
      if (!last) read(`K${st}`, `K${j}`);
      if (j > 0) read(`V${prev}`, `V${j - 1}`);
      if (!(last && cw === 1) || bugs.extraArrive) passTurn();
      // Release K_j (read by this group's QK^T) and V_{j-1} (read by its PV) once the group completed.
      const releaseK = () => {
        if (!last) kEmpty[st].arrive();
      };
      const releaseV = () => {
        if (j > 0) vEmpty[prev].arrive();
      };
      if (bugs.releaseEarly) {
        releaseK();
        releaseV();
      }
      yield; // the groups run
      if (overlap && !last) {
        // wait_group 1: S_j has completed, PV_{j-1} may still run; the scores part of the softmax.
        reading[cw].delete(`K${st}`);
        if (!bugs.releaseEarly) releaseK();
        yield;
        complete();
        if (!bugs.releaseEarly) releaseV();
      } else {
        complete();
        if (!bugs.releaseEarly) {
          releaseK();
          releaseV();
        }
      }
      yield; // softmax
    }
  }

  const agents = [producer(), consumer(0), consumer(1)];
  const finished = [false, false, false];
  for (let steps = 0; steps < 1_000_000; steps++) {
    if (finished.every(Boolean) && inFlight.length === 0) {
      const pending = [...turn, tailBar].map((b, i) => (b.arrived ? `barrier ${3 + i} has ${b.arrived} arrival pending` : '')).filter(Boolean);
      if (pending.length) throw new Error(pending.join('; '));
      return { reads, issues };
    }
    if (inFlight.length && rnd() < 0.3) {
      const { buf, bar, label } = inFlight.splice(Math.floor(rnd() * inFlight.length), 1)[0];
      content.set(buf, label);
      bar.completeTx(1);
      continue;
    }
    const live = agents.map((_, i) => i).filter((i) => !finished[i]);
    const a = live[Math.floor(rnd() * live.length)];
    if (agents[a].next().done) finished[a] = true;
  }
  throw new Error(`deadlock (seed ${seed}): producer ${finished[0] ? 'done' : 'waiting'}, consumers ${finished[1]} ${finished[2]}`);
}

describe('the sm90 prefill attention protocol (model of kernels/attention_sm90.cu)', () => {
  it('never deadlocks or overwrites a live tile, reads K of j and V of j - 1 in each group, alternates the consumers, and leaves no arrival pending (with a V tail or not)', () => {
    for (let seed = 1; seed <= 600; seed++) {
      const nTiles = 1 + (seed % 7);
      const { reads, issues } = simulate(seed, nTiles, {}, seed % 2 === 0, seed % 3 === 0);
      const want = ['K0'];
      for (let j = 1; j < nTiles; j++) want.push(`K${j}`, `V${j - 1}`);
      want.push(`V${nTiles - 1}`);
      expect(reads[0], `seed ${seed}`).toEqual(want);
      expect(reads[1], `seed ${seed}`).toEqual(want);
      expect(issues, `seed ${seed}`).toEqual(Array.from({ length: 2 * (nTiles + 1) }, (_, i) => i % 2));
    }
  });

  it('catches protocol errors: a stray arrive, a missing opening arrive, an early release', () => {
    expect(() => simulate(1, 3, { extraArrive: true })).toThrow('barrier 3 has 1 arrival pending');
    expect(() => simulate(1, 3, { noOpening: true })).toThrow(/deadlock/);
    expect(() => simulate(1, 3, { extraArrive: true }, true)).toThrow('barrier 3 has 1 arrival pending');
    const messages = new Set<string>();
    for (let seed = 1; seed <= 60; seed++) {
      try {
        simulate(seed, 5, { releaseEarly: true }, seed % 2 === 0);
      } catch (err) {
        messages.add((err as Error).message.replace(/\d+/g, 'N'));
      }
    }
    expect([...messages].some((m) => /producer overwrites [KV] of stage N while a wgmma reads it/.test(m))).toBe(true);
  });
});
