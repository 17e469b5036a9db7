/**
 * kernels/attention.cu (the mma.sync paged attention every step runs by default) transcribed: a
 * JavaScript model that moves the data as the kernel does and multiplies with the fragments of
 * ldmatrix (plain and .trans) and mma.sync m16n8k16 as the PTX manual lays them out, run on the
 * launch the host plans (planAttention: variant, grid, splits) and checked against the float64
 * reference with P and the outputs unrounded, so one key wrongly in or out of a row shows. Every
 * cache slot outside a context holds NaN. It covers each variant of the source (prefill and
 * decode, Q in registers or shared memory, the head-dim buckets with a runtime head dim under the
 * bucket), the block's key range and each row's, the block-table lookups and zero fills, the
 * staging of Q over the V tile, the warp votes that skip or do not mask a tile, the online
 * softmax, the merge of the WN warps of a row, split-KV partials and the combine kernel.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DECODE_VARIANTS, PREFILL_VARIANTS, planAttention } from '../../src/backend/cuda/ops/attention.js';
import * as ref from '../conformance/reference.js';
import { pagedLayout, poolWithNaNOutside, shuffledBlocks } from '../helpers/paged.js';
import { mulberry32 } from '../helpers/random.js';
import { ldmatrixX4, mmaM16n8k16 } from './mma_model.js';
import { bf16 } from './sm90_model.js';

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/attention.cu'), 'utf8');
const LOG2E = 1.4426950408889634;

/** The template arguments of each entry: [HD, WM, WN, KW, QREG]. */
const ENTRIES = new Map(
  [...SOURCE.matchAll(/^TS_ATTENTION_ENTRIES\((\w+), (\d+), (\d+), (\d+), (\d+), (true|false), (true|false)\)/gm)].map((m) => [`${m[1]}_bf16`, { HD: +m[2], WM: +m[3], WN: +m[4], KW: +m[5], QREG: m[6] === 'true' }]),
);

interface Inputs {
  q: Float32Array;
  cache: Float32Array;
  N: number;
  bs: number;
  H: number;
  KV: number;
  hd: number;
  queryStart: number[];
  contextLens: number[];
  tables: Int32Array;
  width: number;
  scale: number;
  window: number;
  causal: boolean;
}

/** One block of attention_body<HD, WM, WN, KW, QREG>; writes out (numSplits 1) or the partials. */
function block(cfg: { HD: number; WM: number; WN: number; KW: number; QREG: boolean }, a: Inputs, bz: number, kvh: number, bx: number, numSplits: number, splitLen: number, out: Float64Array, partO: Float64Array, partML: Float64Array): void {
  const { HD, WM, WN, KW, QREG } = cfg;
  const BM = 16 * WM, KT = KW * WN, NT = 32 * WM * WN, LD = HD + 8, HDC = HD / 8, RS = NT / HDC;
  const MAIN_ELEMS = QREG ? (BM <= KT ? 2 * KT * LD : Math.max(2 * KT, BM) * LD) : (2 * KT + BM) * LD;
  const smem = new Float64Array(MAIN_ELEMS).fill(NaN); // bf16 elements
  const read = (byteAddr: number) => smem[byteAddr >> 1];
  const { H, KV, hd, bs } = a;
  const T = a.queryStart[a.queryStart.length - 1];
  const split = bx % numSplits, mTile = Math.floor(bx / numSplits);
  const qBegin = a.queryStart[bz], qLen = a.queryStart[bz + 1] - qBegin, ctx = a.contextLens[bz];
  const G = H / KV, rows = qLen * G, rowBase = mTile * BM;
  if (rowBase >= rows) return;
  const rowEnd = Math.min(rowBase + BM, rows);
  const pos0 = ctx - qLen, pFirst = pos0 + Math.floor(rowBase / G), pLast = pos0 + Math.floor((rowEnd - 1) / G);
  const kvLo = a.window > 0 ? Math.max(0, pFirst - a.window + 1) : 0;
  const kvHi = a.causal ? pLast + 1 : ctx;
  let kvBegin = kvLo, kvEnd = kvHi;
  if (numSplits > 1) {
    kvBegin = kvLo + split * splitLen;
    if (split < numSplits - 1) kvEnd = Math.min(kvHi, kvBegin + splitLen);
  }
  const numTiles = kvEnd > kvBegin ? Math.ceil((kvEnd - kvBegin) / KT) : 0;
  const hdc = hd >> 3, chPad = ((hd + 15) >> 4) << 1;
  const log2bs = Math.log2(bs), slotStride = KV * hd;
  const ks = 0, vs = KT * LD, qs = QREG ? (BM <= KT ? vs : ks) : ks + 2 * KT * LD; // element offsets

  const loadKv = (dst: number, half: 0 | 1, j0: number) => {
    for (let tid = 0; tid < NT; tid++) {
      const ldC = tid % HDC, ldR = Math.floor(tid / HDC);
      if (ldC >= chPad) continue;
      for (let lr = ldR; lr < KT; lr += RS) {
        const j = j0 + lr;
        let src = -1;
        if (j < kvEnd && ldC < hdc) {
          const bi = j >> log2bs;
          if (bi < a.width) {
            const blk = a.tables[bz * a.width + bi];
            if (blk >= 0 && blk < a.N) src = half * a.N * bs * slotStride + ((blk << log2bs) + (j & (bs - 1))) * slotStride + kvh * hd + ldC * 8;
          }
        }
        for (let e = 0; e < 8; e++) smem[dst + lr * LD + ldC * 8 + e] = src < 0 ? 0 : a.cache[src + e];
      }
    }
  };
  const loadQ = (dst: number) => {
    for (let tid = 0; tid < NT; tid++) {
      const ldC = tid % HDC, ldR = Math.floor(tid / HDC);
      if (ldC >= chPad) continue;
      for (let lr = ldR; lr < BM; lr += RS) {
        const r = rowBase + lr;
        const ok = r < rowEnd && ldC < hdc;
        const src = ok ? (qBegin + Math.floor(r / G)) * H * hd + (kvh * G + (r % G)) * hd + ldC * 8 : -1;
        for (let e = 0; e < 8; e++) smem[dst + lr * LD + ldC * 8 + e] = ok ? a.q[src + e] : 0;
      }
    }
  };
  const qFrag = (wm: number, kstep: number) =>
    ldmatrixX4(
      read,
      Array.from({ length: 32 }, (_, lane) => 2 * (qs + (16 * wm + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kstep * 16 + (lane >> 4) * 8)),
    );

  // Per warp and lane: the Q fragments, O, the running max and sum of rows g and g + 8, their key ranges.
  const warps = Array.from({ length: WM * WN }, (_, warp) => {
    const wm = warp % WM, wn = Math.floor(warp / WM);
    return {
      wm,
      wn,
      qf: [] as number[][][][],
      o: Array.from({ length: HD / 8 }, () => Array.from({ length: 32 }, () => [0, 0, 0, 0])), // [n-tile][lane][e]
      s: [] as number[][][],
      m: Array.from({ length: 32 }, () => [-Infinity, -Infinity]),
      l: Array.from({ length: 32 }, () => [0, 0]),
      range: Array.from({ length: 32 }, (_, lane) => {
        const ra = rowBase + 16 * wm + (lane >> 2), rb = ra + 8;
        const pa = pos0 + Math.floor(ra / G), pb = pos0 + Math.floor(rb / G);
        return [
          [Math.max(kvBegin, a.window > 0 ? pa - a.window + 1 : 0), Math.min(a.causal ? pa + 1 : ctx, kvEnd)],
          [Math.max(kvBegin, a.window > 0 ? pb - a.window + 1 : 0), Math.min(a.causal ? pb + 1 : ctx, kvEnd)],
        ];
      }),
      active: false,
    };
  });
  const loadQFrags = () => {
    for (const w of warps) w.qf = Array.from({ length: HD / 16 }, (_, kstep) => (kstep * 16 < hd ? qFrag(w.wm, kstep) : []));
  };
  if (QREG && BM > KT) {
    loadQ(qs);
    loadQFrags();
    if (numTiles > 0) loadKv(ks, 0, kvBegin); // over Q's staging area, after the fragments were read
  } else {
    loadQ(qs);
    if (numTiles > 0) loadKv(ks, 0, kvBegin);
    if (QREG) loadQFrags();
  }
  const scaleLog2 = a.scale * LOG2E;

  for (let tile = 0; tile < numTiles; tile++) {
    const j0 = kvBegin + tile * KT;
    loadKv(vs, 1, j0);
    // QK^T and the softmax, every warp (the barrier before: K(tile) landed).
    for (const w of warps) {
      const jw0 = j0 + w.wn * KW, jw1 = jw0 + KW;
      w.active = w.range.some(([[lo0, hi0], [lo1, hi1]]) => (lo0 < jw1 && hi0 > jw0) || (lo1 < jw1 && hi1 > jw0));
      if (!w.active) continue;
      w.s = Array.from({ length: KW / 8 }, () => Array.from({ length: 32 }, () => [0, 0, 0, 0]));
      for (let kstep = 0; kstep < HD / 16; kstep++) {
        if (kstep * 16 >= hd) continue;
        const A = QREG ? w.qf[kstep] : qFrag(w.wm, kstep);
        for (let np = 0; np < KW / 16; np++) {
          const b = ldmatrixX4(read, Array.from({ length: 32 }, (_, lane) => 2 * (ks + (w.wn * KW + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kstep * 16 + ((lane >> 3) & 1) * 8)));
          mmaM16n8k16(w.s[2 * np], A, b.map((r) => r[0]), b.map((r) => r[1]));
          mmaM16n8k16(w.s[2 * np + 1], A, b.map((r) => r[2]), b.map((r) => r[3]));
        }
      }
      const full = w.range.every(([[lo0, hi0], [lo1, hi1]]) => lo0 <= jw0 && hi0 >= jw1 && lo1 <= jw0 && hi1 >= jw1);
      const mx = Array.from({ length: 32 }, (_, lane) => {
        const [[lo0, hi0], [lo1, hi1]] = w.range[lane];
        const t4 = lane & 3;
        const m = [-Infinity, -Infinity];
        for (let nt = 0; nt < KW / 8; nt++)
          for (let e = 0; e < 4; e++) {
            let v = w.s[nt][lane][e] * scaleLog2;
            if (!full) {
              const j = jw0 + nt * 8 + 2 * t4 + (e & 1);
              const ok = e < 2 ? j >= lo0 && j < hi0 : j >= lo1 && j < hi1;
              v = ok ? v : -Infinity;
            }
            w.s[nt][lane][e] = v;
            m[e >> 1] = Math.max(m[e >> 1], v);
          }
        return m;
      });
      for (let lane = 0; lane < 32; lane++) {
        const quad = [lane, lane ^ 1, lane ^ 2, lane ^ 3];
        for (const h of [0, 1]) {
          const mn = Math.max(w.m[lane][h], ...quad.map((u) => mx[u][h]));
          const mu = mn === -Infinity ? 0 : mn;
          const al = 2 ** (w.m[lane][h] - mu);
          w.m[lane][h] = mn;
          let rs = 0;
          for (let nt = 0; nt < KW / 8; nt++)
            for (const e of [2 * h, 2 * h + 1]) {
              w.s[nt][lane][e] = 2 ** (w.s[nt][lane][e] - mu);
              rs += w.s[nt][lane][e];
            }
          w.l[lane][h] = w.l[lane][h] * al + rs;
          for (let nt = 0; nt < HD / 8; nt++) for (const e of [2 * h, 2 * h + 1]) w.o[nt][lane][e] *= al;
        }
      }
    }
    // The barrier: V(tile) landed, every warp done with K(tile): the next K loads.
    if (tile + 1 < numTiles) loadKv(ks, 0, j0 + KT);
    for (const w of warps) {
      if (!w.active) continue;
      for (let kk = 0; kk < KW / 16; kk++) {
        // P's accumulator layout for tokens [16 kk, 16 kk + 16) as the A operand of a k16 step.
        const A = Array.from({ length: 32 }, (_, lane) => [
          [w.s[2 * kk][lane][0], w.s[2 * kk][lane][1]],
          [w.s[2 * kk][lane][2], w.s[2 * kk][lane][3]],
          [w.s[2 * kk + 1][lane][0], w.s[2 * kk + 1][lane][1]],
          [w.s[2 * kk + 1][lane][2], w.s[2 * kk + 1][lane][3]],
        ]);
        for (let dp = 0; dp < HD / 16; dp++) {
          if (dp * 16 >= hd) continue;
          const b = ldmatrixX4(read, Array.from({ length: 32 }, (_, lane) => 2 * (vs + (w.wn * KW + kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8)), true);
          mmaM16n8k16(w.o[2 * dp], A, b.map((r) => r[0]), b.map((r) => r[1]));
          mmaM16n8k16(w.o[2 * dp + 1], A, b.map((r) => r[2]), b.map((r) => r[3]));
        }
      }
    }
  }

  // The epilogue: each row's WN warp states merged, then normalised (or written as partials).
  const obuf = Array.from({ length: BM }, () => new Array<number>(HD).fill(NaN));
  const rowML = new Array<[number, number]>(BM);
  const lq = (w: (typeof warps)[number], lane: number, h: number) => [lane, lane ^ 1, lane ^ 2, lane ^ 3].reduce((sum, u) => sum + w.l[u][h], 0);
  for (let wm = 0; wm < WM; wm++)
    for (let lane = 0; lane < 32; lane++)
      for (const h of [0, 1]) {
        const lr = 16 * wm + (lane >> 2) + 8 * h;
        const states = warps.filter((w) => w.wm === wm).sort((x, y) => x.wn - y.wn);
        let M = states[0].m[lane][h], L = lq(states[0], lane, h);
        if (WN > 1) {
          M = Math.max(...states.map((w) => w.m[lane][h]));
          L = 0;
          for (const w of states) if (w.m[lane][h] !== -Infinity) L += lq(w, lane, h) * 2 ** (w.m[lane][h] - M);
        }
        for (const w of states) {
          const c = WN > 1 ? (w.m[lane][h] === -Infinity ? 0 : 2 ** (w.m[lane][h] - M)) : 1;
          for (let nt = 0; nt < HD / 8; nt++) {
            if (nt * 8 >= hd) continue;
            for (const e of [0, 1]) {
              const col = nt * 8 + 2 * (lane & 3) + e, v = w.o[nt][lane][2 * h + e] * c;
              obuf[lr][col] = w.wn === 0 ? v : obuf[lr][col] + v;
            }
          }
        }
        if ((lane & 3) === 0) rowML[lr] = [M, L];
      }
  for (let lr = 0; lr < BM; lr++) {
    const r = rowBase + lr;
    if (r >= rowEnd) continue;
    const tok = qBegin + Math.floor(r / G), h = kvh * G + (r % G);
    if (tok >= T) continue;
    for (let d = 0; d < hdc * 8; d++) {
      if (numSplits === 1) {
        const L = rowML[lr][1];
        out[(tok * H + h) * hd + d] = obuf[lr][d] * (L > 0 ? 1 / L : 0);
      } else partO[((split * T + tok) * H + h) * hd + d] = obuf[lr][d];
    }
    if (numSplits > 1) partML.set(rowML[lr], 2 * ((split * T + tok) * H + h));
  }
}

/** The merge of the splits: ts_attention_combine_bf16, and the fused merge the last split of a row tile runs (the same sums; unrounded). */
function combine(out: Float64Array, partO: Float64Array, partML: Float64Array, a: Inputs, numSplits: number): void {
  const T = a.queryStart[a.queryStart.length - 1], H = a.H, hd = a.hd;
  for (let b = 0; b + 1 < a.queryStart.length; b++)
    for (let h = 0; h < H; h++)
      for (let tok = a.queryStart[b]; tok < Math.min(a.queryStart[b + 1], T); tok++) {
        const th = tok * H + h;
        const ml = (s: number) => [partML[2 * (s * T * H + th)], partML[2 * (s * T * H + th) + 1]];
        let M = -Infinity;
        for (let s = 0; s < numSplits; s++) M = Math.max(M, ml(s)[0]);
        let L = 0;
        for (let s = 0; s < numSplits; s++) if (ml(s)[0] !== -Infinity) L += ml(s)[1] * 2 ** (ml(s)[0] - M);
        const inv = L > 0 ? 1 / L : 0;
        for (let d = 0; d < (hd >> 3) * 8; d++) {
          let acc = 0;
          for (let s = 0; s < numSplits; s++) {
            const [m] = ml(s);
            if (m === -Infinity) continue;
            acc += 2 ** (m - M) * partO[(s * T * H + th) * hd + d];
          }
          out[th * hd + d] = acc * inv;
        }
      }
}

interface Case {
  heads: number;
  kvHeads: number;
  hd: number;
  bs: number;
  seqs: Array<[number, number]>;
  window?: number;
  causal?: boolean;
  /** Multiprocessors the plan fills (fewer: fewer decode splits). */
  sms?: number;
}

function run(c: Case, seed: number) {
  const rnd = mulberry32(seed);
  const { heads: H, kvHeads: KV, hd, bs, seqs } = c;
  const L = pagedLayout(seqs, bs, shuffledBlocks(rnd));
  const cache = poolWithNaNOutside(L, bs, KV, hd, () => bf16(rnd() * 4 - 2));
  const q = Float32Array.from({ length: L.tokens * H * hd }, () => bf16(rnd() * 4 - 2));
  const a: Inputs = { q, cache, N: L.blocks, bs, H, KV, hd, queryStart: L.queryStart, contextLens: L.contextLens, tables: L.tables, width: L.width, scale: 1 / Math.sqrt(hd), window: c.window ?? 0, causal: c.causal ?? true };
  const plan = planAttention({
    numTokens: L.tokens,
    numSeqs: seqs.length,
    numHeads: H,
    numKvHeads: KV,
    headDim: hd,
    maxContextLen: Math.max(...L.contextLens),
    maxQueryLen: Math.max(...seqs.map(([, n]) => n)),
    slidingWindow: c.window ?? null,
    multiprocessors: c.sms ?? 132,
  })!;
  const cfg = ENTRIES.get(plan.variant.decl.name)!;
  const got = new Float64Array(L.tokens * H * hd).fill(NaN);
  const partO = new Float64Array(plan.numSplits * L.tokens * H * hd).fill(NaN);
  const partML = new Float64Array(2 * plan.numSplits * L.tokens * H).fill(NaN);
  for (let bz = 0; bz < plan.grid[2]; bz++)
    for (let kvh = 0; kvh < plan.grid[1]; kvh++) for (let bx = 0; bx < plan.grid[0]; bx++) block(cfg, a, bz, kvh, bx, plan.numSplits, plan.splitLen, got, partO, partML);
  if (plan.numSplits > 1) combine(got, partO, partML, a, plan.numSplits);
  const want = ref.attention(q, cache, [2, L.blocks, bs, KV, hd], L.queryStart, L.contextLens, L.tables, L.width, { numHeads: H, numKvHeads: KV, headDim: hd, scale: a.scale, slidingWindow: c.window ?? null, causal: c.causal ?? true });
  return { got, want, plan };
}

const CASES: Array<[string, Case]> = [
  ['prefill hd128 GQA 4, lengths off the tiles', { heads: 8, kvHeads: 2, hd: 128, bs: 16, seqs: [[150, 150], [77, 77], [1, 1]] }],
  ['prefill after cached prefixes, hd 80 in the 128 bucket', { heads: 4, kvHeads: 2, hd: 80, bs: 4, seqs: [[90, 30], [40, 40]] }],
  ['prefill sliding window 20, GQA 8, hd 32', { heads: 16, kvHeads: 2, hd: 32, bs: 8, seqs: [[100, 60], [16, 16]], window: 20 }],
  ['prefill not causal, hd 16', { heads: 2, kvHeads: 1, hd: 16, bs: 4, seqs: [[37, 37], [9, 5]], causal: false }],
  ['prefill hd256 (Q in shared memory)', { heads: 2, kvHeads: 1, hd: 256, bs: 16, seqs: [[70, 40]] }],
  ['decode, 4 sequences, no split', { heads: 8, kvHeads: 2, hd: 64, bs: 16, seqs: [[1, 1], [33, 1], [130, 1], [200, 1]], sms: 1 }],
  ['decode, long context, split-KV and combine', { heads: 4, kvHeads: 1, hd: 128, bs: 16, seqs: [[700, 1]] }],
  ['decode hd 40, GQA 20 over two row tiles, window 300, split-KV', { heads: 20, kvHeads: 1, hd: 40, bs: 8, seqs: [[500, 1], [90, 1]], window: 300 }],
  ['decode hd256 (Q in shared memory), split-KV', { heads: 2, kvHeads: 2, hd: 256, bs: 16, seqs: [[300, 1]] }],
];

describe('kernels/attention.cu transcribed (JavaScript model of its data movement and mma.sync fragments)', () => {
  it('is a transcription of the current source: the variants the host plans and the lines the model follows', () => {
    for (const v of [...PREFILL_VARIANTS, ...DECODE_VARIANTS]) expect(ENTRIES.has(v.decl.name), v.decl.name).toBe(true);
    for (const line of [
      'const int kv_lo = window > 0 ? max(0, p_first - window + 1) : 0;',
      'const int kv_hi = causal ? p_last + 1 : ctx;',
      'const int row = 16 * wm + (lane & 7) + ((lane >> 3) & 1) * 8, col = ks * 16 + (lane >> 4) * 8;',
      'const int tok = wn * KW + np * 16 + (lane & 7) + ((lane >> 4) << 3);',
      'const int col = ks * 16 + ((lane >> 3) & 1) * 8;',
      'const int tok = wn * KW + kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;',
      'const int col = dp * 16 + (lane >> 4) * 8;',
      'ldsm_x4_t(smem_u32(vs_tile + tok * LD + col), b0, b1, b2, b3);',
      'const bool ok = e < 2 ? (j >= lo0 && j < hi0) : (j >= lo1 && j < hi1);',
      'a[1] = ts::pack2<T>(s[2 * kk][2], s[2 * kk][3]);',
      'a[2] = ts::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);',
      'T* const qs_tile = QREG ? (BM <= KT ? vs_tile : ks_tile) : ks_tile + 2 * KT * LD;',
    ])
      expect(SOURCE, line).toContain(line);
  });

  CASES.forEach(([name, c], k) =>
    it(`${name}: equals the float64 reference to rounding noise with P and the output unrounded`, () => {
      const { got, want, plan } = run(c, 11 + k);
      if (name.includes('split-KV')) expect(plan.numSplits).toBeGreaterThan(1);
      if (name.includes('no split')) expect(plan.numSplits).toBe(1);
      let worst = 0;
      for (let i = 0; i < got.length; i++) {
        expect(Number.isNaN(got[i]), `element ${i} never written or NaN`).toBe(false);
        worst = Math.max(worst, Math.abs(got[i] - want.value[i]) / (1 + Math.abs(want.value[i])));
      }
      expect(worst).toBeLessThan(1e-9);
    }),
  );
});
