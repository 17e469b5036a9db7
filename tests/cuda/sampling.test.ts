/**
 * Device sampling (kernels/sampling.cu, src/backend/cuda/ops/sampling.ts), on the CPU: the packed
 * layout, the launch, the read-back, and the JavaScript model of the kernel's algorithm
 * (sampling_model.ts: both paths, step by step) checked against the host sampler's sampleToken.
 * The GPU is not needed: this proves the algorithm; the kernel is its transcription.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  LIST_CAP,
  PARAM_OFFSETS,
  ROW_BYTES,
  SAMPLE_F32,
  SAMPLING_THREADS,
  launchSampling,
  packSamplingRows,
  readSamplingResults,
  type SamplingOutputs,
  type SamplingRow,
} from '../../src/backend/cuda/ops/sampling.js';
import { resolveSamplingParams, type SamplingParams } from '../../src/sampling/params.js';
import { sampleToken } from '../../src/sampling/sampler.js';
import { ROW_NEAR, expectSame, hostMargin, mulberry32, pick, randomLogits, randomRow } from './sampling_cases.js';
import { RowModel, fkey, fval, modelSample, okey, okeyF, type MassFn } from './sampling_model.js';

const KERNEL = readFileSync(path.join(import.meta.dirname, '../../kernels/sampling.cu'), 'utf8');

/**
 * Runs `cases` random rows of vocabulary sizes `vocabs` through the model and the host sampler.
 * With `near` (ROW path), a token may differ only where hostMargin < ROW_NEAR; those are counted.
 */
function compareRandom(seed: number, cases: number, vocabs: readonly number[], cap: number, near = false): Map<string, number> {
  const rnd = mulberry32(seed);
  const paths = new Map<string, number>();
  const count = (key: string) => paths.set(key, (paths.get(key) ?? 0) + 1);
  for (let c = 0; c < cases; c++) {
    const V = pick(rnd, vocabs);
    const logits = randomLogits(rnd, V);
    const row = randomRow(rnd, V);
    const host = sampleToken(Float32Array.from(logits), row);
    const { results, traces } = modelSample([{ logits, row }], cap);
    const p = row.params;
    const what = `case ${c}: V=${V} T=${p.temperature} k=${p.topK} p=${p.topP} minP=${p.minP} rep=${p.repetitionPenalty} pres=${p.presencePenalty} freq=${p.frequencyPenalty} lp=${p.logprobs}`;
    count(traces[0].path + (traces[0].tiePasses > 0 ? '+ties' : ''));
    if (near && results[0].tokenId !== host.tokenId) {
      const margin = hostMargin(logits, row);
      expect(margin, `${what}: differs ${results[0].tokenId} vs host ${host.tokenId} away from any threshold`).toBeLessThan(ROW_NEAR);
      count('near');
      continue;
    }
    expectSame(results[0], host, what);
  }
  return paths;
}

// ---------------------------------------------------------------------------------------------

describe('device sampling: packed layout', () => {
  it('has the documented byte offsets, in step with the kernel struct RowParams', () => {
    expect(ROW_BYTES).toBe(96);
    expect(PARAM_OFFSETS).toEqual({
      temperature: 0,
      topP: 8,
      minP: 16,
      repetitionPenalty: 24,
      presencePenalty: 32,
      frequencyPenalty: 40,
      topK: 48,
      logprobs: 52,
      seedLo: 56,
      seedHi: 60,
      stream: 64,
      counter: 68,
      repStart: 72,
      repCount: 76,
      outStart: 80,
      outCount: 84,
    });
    // The kernel's struct: each field's C offset (from the types) equals its comment and the table.
    const body = /struct RowParams \{([\s\S]*?)\n\};/.exec(KERNEL)![1];
    const size = { double: 8, int: 4, u32: 4 } as Record<string, number>;
    const names: Record<string, keyof typeof PARAM_OFFSETS> = { repetitionPenalty: 'repetitionPenalty', presencePenalty: 'presencePenalty', frequencyPenalty: 'frequencyPenalty' };
    let offset = 0;
    const seen: string[] = [];
    for (const m of body.matchAll(/^\s*(double|int|u32)\s+(\w+);\s*\/\/\s*(\d+)/gm)) {
      expect(Number(m[3]), `comment offset of ${m[2]}`).toBe(offset);
      const field = names[m[2]] ?? (m[2] as keyof typeof PARAM_OFFSETS);
      if (field in PARAM_OFFSETS) expect(PARAM_OFFSETS[field], m[2]).toBe(offset);
      seen.push(m[2]);
      offset += size[m[1]];
    }
    expect(offset).toBe(ROW_BYTES);
    expect(seen.filter((n) => !n.startsWith('reserved')).length).toBe(Object.keys(PARAM_OFFSETS).length);
    expect(/constexpr int NT = (\d+);/.exec(KERNEL)![1]).toBe(String(SAMPLING_THREADS));
    expect(/constexpr int CAP = (\d+);/.exec(KERNEL)![1]).toBe(String(LIST_CAP));
  });

  it('packs parameters, seeds and the CSR ids and counts of each row', () => {
    const rows: SamplingRow[] = [
      { params: resolveSamplingParams({}), seed: 2 ** 40 + 5, stream: 2, counter: 17, tokenIds: [4, 4, 1], outputCounts: new Map([[4, 1]]) },
      {
        params: resolveSamplingParams({ temperature: 0.7, topK: 50, topP: 0.9, minP: 0.05, repetitionPenalty: 1.2, presencePenalty: 0.5, frequencyPenalty: -0.25, logprobs: 5 }),
        seed: 123456789,
        stream: 0,
        counter: 3,
        tokenIds: [5, 3, 5, 9, 3, 7],
        outputCounts: new Map([
          [9, 2],
          [3, 1],
        ]),
      },
      { params: resolveSamplingParams({ temperature: 0, topK: -1, repetitionPenalty: 0.5, logprobs: 0 }), seed: 0, stream: 1, counter: 0, tokenIds: [8, 8], outputCounts: new Map([[8, 2]]) },
      { params: resolveSamplingParams({ frequencyPenalty: 1 }), seed: 2 ** 53 - 1, stream: 3, counter: 4000000000, tokenIds: [1, 2], outputCounts: new Map([[2, 3]]) },
    ];
    const packed = packSamplingRows(rows);
    expect(packed.rows).toBe(4);
    expect(packed.params.byteLength).toBe(4 * 96);
    expect(packed.maxTopN).toBe(5);
    // Row 0: penalties off, so empty ranges; seed split into u32 halves.
    // Row 1: distinct prompt+output ids in first-seen order, then its output (id, count) pairs.
    // Row 2: repetition only. Row 3: frequency only.
    expect(Array.from(packed.ids)).toEqual([5, 3, 9, 7, 9, 3, 8, 2]);
    expect(Array.from(packed.counts)).toEqual([0, 0, 0, 0, 2, 1, 0, 3]);
    const v = new DataView(packed.params);
    const at = (r: number) => r * 96;
    expect([v.getFloat64(at(0) + 0, true), v.getFloat64(at(0) + 8, true), v.getFloat64(at(0) + 16, true), v.getFloat64(at(0) + 24, true)]).toEqual([1, 1, 0, 1]);
    expect([v.getInt32(at(0) + 48, true), v.getInt32(at(0) + 52, true)]).toEqual([0, -1]);
    expect([v.getUint32(at(0) + 56, true), v.getUint32(at(0) + 60, true), v.getUint32(at(0) + 64, true), v.getUint32(at(0) + 68, true)]).toEqual([5, 256, 2, 17]);
    expect([72, 76, 80, 84].map((o) => v.getInt32(at(0) + o, true))).toEqual([0, 0, 0, 0]);

    expect([0, 8, 16, 24, 32, 40].map((o) => v.getFloat64(at(1) + o, true))).toEqual([0.7, 0.9, 0.05, 1.2, 0.5, -0.25]);
    expect([v.getInt32(at(1) + 48, true), v.getInt32(at(1) + 52, true)]).toEqual([50, 5]);
    expect([v.getUint32(at(1) + 56, true), v.getUint32(at(1) + 60, true)]).toEqual([123456789, 0]);
    expect([72, 76, 80, 84].map((o) => v.getInt32(at(1) + o, true))).toEqual([0, 4, 4, 2]);

    expect(v.getFloat64(at(2) + 0, true)).toBe(0);
    expect([v.getInt32(at(2) + 48, true), v.getInt32(at(2) + 52, true)]).toEqual([0, 0]);
    expect([72, 76, 80, 84].map((o) => v.getInt32(at(2) + o, true))).toEqual([6, 1, 7, 0]);

    expect([v.getUint32(at(3) + 56, true), v.getUint32(at(3) + 60, true), v.getUint32(at(3) + 68, true)]).toEqual([0xffffffff, 2 ** 21 - 1, 4000000000]);
    expect([72, 76, 80, 84].map((o) => v.getInt32(at(3) + o, true))).toEqual([7, 0, 7, 1]);
    for (let r = 0; r < 4; r++) expect([v.getInt32(at(r) + 88, true), v.getInt32(at(r) + 92, true)]).toEqual([0, 0]);
  });

  it('pads empty CSR arrays to one entry and rejects what the kernel cannot take', () => {
    const packed = packSamplingRows([{ params: resolveSamplingParams({}), seed: 1, stream: 0, counter: 0, tokenIds: [1, 2], outputCounts: new Map() }]);
    expect(Array.from(packed.ids)).toEqual([0]);
    expect(Array.from(packed.counts)).toEqual([0]);
    const bad = (x: Partial<SamplingRow>) => () => packSamplingRows([{ params: resolveSamplingParams({}), seed: 1, stream: 0, counter: 0, tokenIds: [], outputCounts: new Map(), ...x }]);
    expect(bad({ seed: -1 })).toThrow(/seed/);
    expect(bad({ counter: 2 ** 32 })).toThrow(/counter/);
    expect(bad({ stream: 1.5 })).toThrow(/stream/);
  });
});

describe('device sampling: launch and read-back', () => {
  it('declares the kernel as its C signature', () => {
    const sig = /ts_sample_f32\(([^)]*)\)/.exec(KERNEL)![1];
    const params = sig.split(',').map((p) => {
      const m = /^\s*(.*?)\s*(\w+)\s*$/.exec(p)!;
      return [m[2], m[1].includes('*') ? 'ptr' : m[1] === 'int' ? 'i32' : m[1]] as const;
    });
    expect(params).toEqual(SAMPLE_F32.params.map(([n, t]) => [n, t]));
  });

  it('launches one 512-thread block per row with every argument', () => {
    const calls: unknown[] = [];
    const base = { logits: 0x1000n, vocab: 50000, params: 0x2000n, ids: 0x3000n, counts: 0x4000n, outTokens: 0x5000n, outLogprobs: 0x6000n, outTopIds: 0x7000n, outTopLogprobs: 0x8000n, scratch: () => 0n, smCount: 132 };
    launchSampling((decl, launch, args) => calls.push([decl.name, launch, args]), { ...base, rows: 3, maxTopN: 4 });
    launchSampling((decl, launch, args) => calls.push([decl.name, launch, args]), { ...base, rows: 2, maxTopN: 0 });
    launchSampling(() => calls.push('none'), { ...base, rows: 0, maxTopN: 0 });
    expect(calls).toEqual([
      ['ts_sample_f32', { grid: [3, 1, 1], block: [512, 1, 1] }, { logits: 0x1000n, vocab: 50000, params: 0x2000n, ids: 0x3000n, counts: 0x4000n, outTokens: 0x5000n, outLogprobs: 0x6000n, outTopIds: 0x7000n, outTopLogprobs: 0x8000n, maxTopN: 4 }],
      ['ts_sample_f32', { grid: [2, 1, 1], block: [512, 1, 1] }, { logits: 0x1000n, vocab: 50000, params: 0x2000n, ids: 0x3000n, counts: 0x4000n, outTokens: 0x5000n, outLogprobs: 0x6000n, outTopIds: 0n, outTopLogprobs: 0n, maxTopN: 0 }],
    ]);
    expect(() => launchSampling(() => {}, { ...base, rows: 1, vocab: 2 ** 22, maxTopN: 0 })).toThrow(/vocab/);
  });

  it('reads back the host sampler shape of result', () => {
    const p = (logprobs: number | null) => ({ params: resolveSamplingParams({ logprobs }) });
    const out: SamplingOutputs = {
      tokens: Int32Array.from([7, 8, 9]),
      logprobs: Float32Array.from([NaN, -0.5, -1.5]),
      topIds: Int32Array.from([-1, -1, -1, 8, 2, -1, 9, 1, 4]),
      topLogprobs: Float32Array.from([-Infinity, -Infinity, -Infinity, -0.5, -2, -Infinity, -1.5, -1.75, -2]),
    };
    expect(readSamplingResults([p(null), p(2), p(3)], out, 3)).toEqual([
      { tokenId: 7 },
      { tokenId: 8, logprob: -0.5, topLogprobs: [{ tokenId: 8, logprob: -0.5 }, { tokenId: 2, logprob: -2 }] },
      { tokenId: 9, logprob: -1.5, topLogprobs: [{ tokenId: 9, logprob: -1.5 }, { tokenId: 1, logprob: -1.75 }, { tokenId: 4, logprob: -2 }] },
    ]);
    expect(readSamplingResults([p(0)], { ...out, topIds: new Int32Array(0), topLogprobs: new Float32Array(0) }, 0)).toEqual([{ tokenId: 7, logprob: NaN }]);
  });
});

describe('device sampling: the radix select of the model', () => {
  it('finds the first candidate whose cumulative count or mass reaches T (or exceeds it), for every T', () => {
    const rnd = mulberry32(5);
    for (let c = 0; c < 60; c++) {
      const V = pick(rnd, [1, 2, 9, 40, 130]);
      // Few distinct values: long tie runs; weights depend on the value only, as masses do.
      const row = Float32Array.from({ length: V }, () => pick(rnd, [-Infinity, -7.5, -1, -0, 0, 0.5, 3, 1e-30, -1e-30]));
      const weight: MassFn = (l) => (l === -Infinity ? 0n : BigInt(1 + (Math.abs(Math.round(l * 2)) % 5)));
      const order = Array.from({ length: V }, (_, i) => okey(fkey(row[i]), i)).sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
      const cut = rnd() < 0.5 ? 0n : order[Math.floor(rnd() * V)];
      const cands = order.filter((o) => o >= cut);
      for (const mass of [null, weight]) {
        const w = (o: bigint) => (mass ? mass(fval(okeyF(o))) : 1n);
        const total = cands.reduce((a, o) => a + w(o), 0n);
        for (const strict of [false, true]) {
          for (let T = strict ? 0n : 1n; strict ? T < total : T <= total; T++) {
            let S = 0n, want = -1n, before = 0n;
            for (const o of cands) {
              if (strict ? S + w(o) > T : S + w(o) >= T) {
                want = o;
                before = S;
                break;
              }
              S += w(o);
            }
            const m = new RowModel(row, { path: 'row', tiePasses: 0 });
            expect(m.radixSelect(mass, strict, cut, T), `case ${c} ${mass ? 'mass' : 'count'} ${strict ? '>' : '>='} T=${T}`).toEqual({ key: want, before });
          }
        }
      }
    }
  });
});

describe('device sampling: the kernel algorithm (JavaScript model) equals sampleToken', () => {
  it('on the host sampler tests own boundary cases (LIST path)', () => {
    const probs = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    const cases: [number[], Partial<SamplingParams>][] = [
      [probs, { topP: 0.75 }],
      [probs, { topP: 0.8 }],
      [probs, { topP: 0.81 }],
      [probs, { topP: 0.95 }],
      [probs, { minP: 0.25 }],
      [probs, { minP: 0.7 }],
      [[1, 4, 2, 3, 0], { topK: 2 }],
      [[1, 5, 3, 5], { temperature: 0 }],
      [[0, Math.log(2), Math.log(5), -Infinity], { temperature: 2 }],
      [[1.25, 1.25, 1.25, 1.25], { topP: 0.5 }],
      [[1.25, 1.25, 1.25, 1.25], { topK: 3, topP: 0.5 }],
    ];
    for (const [logits, given] of cases)
      for (let counter = 0; counter < 300; counter++) {
        const row: SamplingRow = { params: resolveSamplingParams(given), seed: 42, stream: 0, counter, tokenIds: [], outputCounts: new Map() };
        const host = sampleToken(Float32Array.from(logits), row);
        expectSame(modelSample([{ logits: Float32Array.from(logits), row }]).results[0], host, `${JSON.stringify(given)} counter ${counter}`);
      }
  });

  it('on rows with NaN, +inf or only -inf logits: NaN counts as -inf; a non-finite max takes the argmax', () => {
    const base = [0.5, 2, 1, -1, 0.25, 0.1, -3];
    const rows: Array<[string, number[], number]> = [
      ['a NaN', [0.5, 2, 1, -1, 0.25, NaN, 0.1], 1],
      ['NaN first', [NaN, 2, 1, -1, 0.25, 0.1, -3], 1],
      ['+inf', [0.5, 2, Infinity, -1, 0.25, 0.1, Infinity], 2],
      ['all -inf', base.map(() => -Infinity), 0],
      ['all NaN', base.map(() => NaN), 0],
      ['-inf and NaN', [-Infinity, NaN, -Infinity, NaN, -Infinity, -Infinity, NaN], 0],
    ];
    for (const [what, logits, greedy] of rows)
      for (const given of [{ temperature: 0 }, { temperature: 1 }, { temperature: 1, topK: 3 }, { temperature: 0.7, topP: 0.5, minP: 0.1 }] as Partial<SamplingParams>[])
        for (let counter = 0; counter < 40; counter++) {
          const row: SamplingRow = { params: resolveSamplingParams({ ...given, logprobs: 2 }), seed: 7, stream: 0, counter, tokenIds: [1, 5], outputCounts: new Map([[5, 1]]) };
          const host = sampleToken(Float32Array.from(logits), row);
          // Only the first row's finite logits can be drawn; the others have no distribution.
          if (what !== 'a NaN' && what !== 'NaN first') expect(host.tokenId, `${what} ${JSON.stringify(given)}`).toBe(greedy);
          expect(host.tokenId === 5 && what === 'a NaN', 'a NaN is never drawn').toBe(false);
          for (const cap of [LIST_CAP, 2]) expectSame(modelSample([{ logits: Float32Array.from(logits), row }], cap).results[0], host, `${what} ${JSON.stringify(given)} counter ${counter} cap ${cap}`);
        }
  });

  it('on random rows with ties, LIST path (V <= CAP, or top-k <= CAP)', () => {
    const paths = compareRandom(1, 700, [1, 2, 3, 7, 64, 300, 1000], LIST_CAP);
    expect(paths.get('list')).toBeGreaterThan(300);
  });

  it('on random rows with ties, LIST path with a radix-selected top-k (V > CAP)', () => {
    const rnd = mulberry32(7);
    let n = 0;
    for (let c = 0; c < 80; c++) {
      const V = pick(rnd, [40, 300, 999]);
      const logits = randomLogits(rnd, V);
      if (!logits.some((x) => Number.isFinite(x))) logits[0] = 0;
      const row = randomRow(rnd, V);
      row.params.temperature = pick(rnd, [0.5, 1, 1.4]);
      row.params.topK = pick(rnd, [1, 3, 10, Math.floor(V / 3)]);
      const host = sampleToken(Float32Array.from(logits), row);
      // cap = topK: V > cap sends the row to the radix select + gather + sort of the LIST path.
      const { results, traces } = modelSample([{ logits, row }], row.params.topK);
      expect(traces[0].path).toBe('list');
      expectSame(results[0], host, `case ${c}`);
      n++;
    }
    expect(n).toBe(80);
  });

  it('on random rows with ties, ROW path (fixed-point masses and radix selects)', () => {
    const paths = compareRandom(2, 500, [1, 2, 5, 33, 250, 700], 0, true);
    expect(paths.get('row')! + (paths.get('row+ties') ?? 0)).toBeGreaterThan(200);
    expect(paths.get('row+ties')).toBeGreaterThan(5);
    // Near-threshold rows (structured ties whose cumulative sum lands on topP exactly) are rare.
    expect(paths.get('near') ?? 0).toBeLessThanOrEqual(5);
  });

  it('past CAP with the kernel own path choice (top-k <= CAP: LIST after a radix select; else ROW; f32 Kahan lse)', () => {
    const rnd = mulberry32(4);
    const paths = new Map<string, number>();
    for (let c = 0; c < 16; c++) {
      const V = pick(rnd, [LIST_CAP + 1, 3000]);
      const logits = randomLogits(rnd, V);
      if (!logits.some((x) => Number.isFinite(x))) logits[0] = 0;
      const row = randomRow(rnd, V);
      row.params.temperature = c % 4 === 0 ? 0 : pick(rnd, [0.6, 1, 1.3]);
      row.params.topK = c % 2 === 0 ? pick(rnd, [7, 50, LIST_CAP]) : 0;
      row.params.logprobs = pick(rnd, [0, 3, 20]);
      const host = sampleToken(Float32Array.from(logits), row);
      const { results, traces } = modelSample([{ logits, row }]);
      paths.set(traces[0].path, (paths.get(traces[0].path) ?? 0) + 1);
      if (traces[0].path === 'row' && results[0].tokenId !== host.tokenId) {
        expect(hostMargin(logits, row), `case ${c}`).toBeLessThan(ROW_NEAR);
        continue;
      }
      expectSame(results[0], host, `case ${c}: V=${V} k=${row.params.topK} p=${row.params.topP} minP=${row.params.minP}`);
    }
    expect([...paths.keys()].sort()).toEqual(['greedy', 'list', 'row']);
  });

  it('on several rows at once, each with its own parameters and CSR ranges', () => {
    const rnd = mulberry32(3);
    for (const cap of [LIST_CAP, 0]) {
      const V = 120;
      const rows = Array.from({ length: 12 }, () => ({ logits: randomLogits(rnd, V), row: randomRow(rnd, V) }));
      for (const r of rows) if (!r.logits.some((x) => Number.isFinite(x))) r.logits[0] = 0;
      const { results } = modelSample(rows, cap);
      rows.forEach((r, i) => expectSame(results[i], sampleToken(Float32Array.from(r.logits), r.row), `cap ${cap} row ${i}`));
    }
  });
});
