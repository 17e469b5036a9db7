/**
 * kernels/attention_sm90.cu transcribed: a JavaScript model that moves the data as the kernel
 * does and computes what it computes, run against the float64 reference of the conformance suite.
 * It checks the kernel's indexing without a GPU: the tile range of each block, the block-table
 * lookups and TMA box coordinates (the pool as [2 N bs, KV, hd], boxes of min(bs, 128) tokens,
 * out-of-range tokens read as zeros), the 128-byte swizzle of the boxes and of the Q stores, the
 * wgmma operands read through their descriptors (K-major for Q and K, MN-major for V, with the
 * kernel's start addresses, LBO and SBO, per the PTX canonical layouts), the accumulator and
 * A-operand register fragments, the masks, the online softmax in its two halves, the zeroed V
 * tail and the output stores. Rounding follows the kernel: bf16 inputs, bf16 P, f32 accumulation
 * (here f64, well inside the tolerance), bf16 output.
 *
 * What it cannot check is that the hardware reads descriptors as the PTX manual describes; the
 * layout probes (tests/cuda/sm90_probe.test.ts) do that on a Hopper GPU.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as ref from '../conformance/reference.js';
import { pagedLayout, poolWithNaNOutside, shuffledBlocks } from '../helpers/paged.js';
import { mulberry32 } from '../helpers/random.js';
import { Smem, accRow, bf16, gatherAcc, scatter, wgmmaRS, wgmmaSS } from './sm90_model.js';

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/attention_sm90.cu'), 'utf8');
const SM90_HEADER = readFileSync(path.join(import.meta.dirname, '../../kernels/sm90.cuh'), 'utf8');

const BM = 128, KT = 128, STAGES = 2;
const LOG2E = 1.4426950408889634;

interface Case {
  heads: number;
  kvHeads: number;
  hd: 64 | 128;
  bs: number;
  seqs: Array<[number, number]>; // [context after the step, new tokens]
  window?: number;
  causal?: boolean;
}

/**
 * Builds the op's inputs (as the conformance suite does), runs the model kernel, returns both
 * outputs. `exact`: P and the output are not rounded to bf16, so the model must equal the float64
 * reference to rounding noise and a single key wrongly in or out of a row shows.
 */
function runCase(c: Case, seed: number, exact: boolean) {
  const rnd = mulberry32(seed);
  const { heads: H, kvHeads: KV, hd: HD, bs, seqs } = c;
  const G = H / KV;
  const layout = pagedLayout(seqs, bs, shuffledBlocks(rnd));
  const { blocks: N, width, tables, queryStart, contextLens, tokens: T } = layout;
  const shape = [2, N, bs, KV, HD];
  const cache = poolWithNaNOutside(layout, bs, KV, HD, () => bf16(rnd() * 4 - 2));
  const q = Float32Array.from({ length: T * H * HD }, () => bf16(rnd() * 4 - 2));
  const scale = 1 / Math.sqrt(HD);
  const window = c.window ?? 0;
  const causal = c.causal ?? true;
  const want = ref.attention(q, cache, shape, queryStart, contextLens, tables, width, { numHeads: H, numKvHeads: KV, headDim: HD, scale, slidingWindow: window || null, causal });
  const got = new Float32Array(T * H * HD).fill(NaN);
  const maxQ = Math.max(...seqs.map(([, n]) => n));
  const gridX = Math.ceil((maxQ * G) / BM);
  for (let b = 0; b < seqs.length; b++)
    for (let kvh = 0; kvh < KV; kvh++)
      for (let bx = 0; bx < gridX; bx++) block({ b, kvh, mt: gridX - 1 - bx, H, KV, HD, bs, N, scale, window, causal, round: exact ? (x) => x : bf16, q, cache, queryStart, contextLens, tables, width, out: got });
  return { got, want, T, H, HD };
}

interface BlockArgs {
  b: number;
  kvh: number;
  mt: number;
  H: number;
  KV: number;
  HD: number;
  bs: number;
  N: number;
  scale: number;
  window: number;
  causal: boolean;
  /** bf16 rounding of P and the output (identity for the exact check). */
  round: (x: number) => number;
  q: Float32Array;
  cache: Float32Array;
  queryStart: number[];
  contextLens: number[];
  tables: Int32Array;
  width: number;
  out: Float32Array;
}

/**
 * One thread block, as prefill<HD, OVERLAP>: both rungs compute the same values in the same order
 * (OVERLAP only changes when the scores half of the softmax runs relative to the PV in flight).
 */
function block(a: BlockArgs): void {
  const { b, kvh, H, KV, HD, bs } = a;
  const PANELS = HD / 64;
  const Q_BYTES = BM * HD * 2, TILE_BYTES = KT * HD * 2, STAGE_BYTES = 2 * TILE_BYTES;
  const smem = new Smem(Q_BYTES + STAGES * STAGE_BYTES);
  const st = (addr: number, v: number) => smem.st(addr, v);
  const G = H / KV;
  const q0 = a.queryStart[b], qLen = a.queryStart[b + 1] - q0, ctx = a.contextLens[b];
  const rows = qLen * G;
  const r0 = a.mt * BM;
  if (r0 >= rows) return;
  const rLast = Math.min(r0 + BM, rows) - 1;
  const posFirst = ctx - qLen + Math.floor(r0 / G), posLast = ctx - qLen + Math.floor(rLast / G);
  const lo = a.window > 0 ? Math.max(0, posFirst - a.window + 1) : 0;
  const hi = a.causal ? Math.min(ctx, posLast + 1) : ctx;
  const jLo = Math.floor(lo / KT), nTiles = Math.ceil(hi / KT) - jLo;
  expect(nTiles).toBeGreaterThanOrEqual(1);

  // ---- the producer: block-table lookups and TMA boxes of {64, 1, ch} ----
  const log2bs = Math.log2(bs), ch = Math.min(bs, KT), chunks = KT / ch, lastCol = (ctx - 1) >> log2bs;
  const tokens = 2 * a.N * bs;
  // Box {64, 1, ch} of the pool seen as [2 N bs, KV, hd] at (c0, c1, c2): ch tokens of one head.
  const tma3d = (dst: number, c0: number, c1: number, c2: number) =>
    smem.box(dst, ch, (r, c) => (c2 + r >= 0 && c2 + r < tokens ? a.cache[((c2 + r) * KV + c1) * HD + c0 + c] : 0));
  const load = (j: number) => {
    const s = j % STAGES, tok0 = (jLo + j) * KT;
    const coords = Array.from({ length: chunks }, (_, lane) => {
      const tok = tok0 + lane * ch;
      const col = Math.min(tok >> log2bs, lastCol);
      expect(col).toBeLessThan(a.width);
      return a.tables[b * a.width + col] * bs + (tok & (bs - 1));
    });
    const sK = Q_BYTES + s * STAGE_BYTES, sV = sK + TILE_BYTES;
    for (let c = 0; c < chunks; c++) for (let pn = 0; pn < PANELS; pn++) tma3d(sK + pn * KT * 128 + c * ch * 128, pn * 64, kvh, coords[c]);
    for (let c = 0; c < chunks; c++) for (let pn = 0; pn < PANELS; pn++) tma3d(sV + pn * KT * 128 + c * ch * 128, pn * 64, kvh, a.N * bs + coords[c]);
  };

  // ---- wgmma operands from registers ----
  /** The A operand of k-step kk from the threads' packed P registers: reg r, half h = row g + 8 (r & 1), column 2 t4 + h + 8 (r >> 1). */
  const aFromRegs = (pf: number[][][], kk: number) => {
    const A = new Float64Array(64 * 16).fill(NaN);
    for (let t = 0; t < 128; t++)
      for (let r = 0; r < 4; r++)
        for (let h = 0; h < 2; h++) A[(16 * (t >> 5) + ((t & 31) >> 2) + 8 * (r & 1)) * 16 + 2 * (t & 3) + h + 8 * (r >> 1)] = pf[t][kk][2 * r + h];
    expect(A.every((v) => !Number.isNaN(v)), 'the fragments cover the A operand').toBe(true);
    return A;
  };

  // ---- the consumers ----
  for (let cw = 0; cw < 2; cw++) {
    // Q rows cw*64 .. +63 into the swizzled panels, as the kernel's stores.
    for (let i = 0; i < 64 * (HD / 8); i++) {
      const rl = cw * 64 + Math.floor(i / (HD / 8)), chunk = i % (HD / 8), r = r0 + rl;
      const addr = (chunk >> 3) * (BM * 128) + rl * 128 + (((chunk & 7) ^ (rl & 7)) << 4);
      for (let e = 0; e < 8; e++) st(addr + 2 * e, r < rows ? a.q[(q0 + Math.floor(r / G)) * H * HD + (kvh * G + (r % G)) * HD + chunk * 8 + e] : 0);
    }
  }
  const state = [0, 1].map((cw) => ({
    o: Array.from({ length: 128 }, () => new Float64Array(HD / 2)),
    s: Array.from({ length: 128 }, () => new Float64Array(64)),
    pf: Array.from({ length: 128 }, () => Array.from({ length: KT / 16 }, () => new Array<number>(8).fill(NaN))),
    m: Array.from({ length: 128 }, () => [-Infinity, -Infinity]),
    l: Array.from({ length: 128 }, () => [0, 0]),
    alpha: Array.from({ length: 128 }, () => [1, 1]),
    cw,
  }));
  type State = (typeof state)[number];
  const scaleLog2 = a.scale * LOG2E;
  const pos = (cw: number, t: number, e: number) => ctx - qLen + Math.floor((r0 + cw * 64 + accRow(t, e)) / G);

  const issueQk = (S: State, stage: number) => {
    const d = new Float64Array(64 * 128);
    const kBase = Q_BYTES + stage * STAGE_BYTES, qBase = S.cw * 64 * 128;
    for (let kk = 0; kk < HD / 16; kk++) {
      const pn = kk >> 2, off = 32 * (kk % 4);
      wgmmaSS(smem, d, 128, qBase + pn * BM * 128 + off, kBase + pn * KT * 128 + off, kk > 0);
    }
    scatter(d, 128, S.s);
  };
  const issuePv = (S: State, stage: number) => {
    const vBase = Q_BYTES + stage * STAGE_BYTES + TILE_BYTES;
    const d = gatherAcc(S.o, HD);
    for (let kk = 0; kk < KT / 16; kk++) wgmmaRS(smem, d, HD, aFromRegs(S.pf, kk), vBase + kk * 16 * 128, KT * 128);
    scatter(d, HD, S.o);
  };
  const zeroVTail = (stage: number, from: number) => {
    const sV = Q_BYTES + stage * STAGE_BYTES + TILE_BYTES;
    for (let i = 0; i < (KT - from) * PANELS * 8; i++) {
      const row = from + Math.floor(i / (PANELS * 8)), rest = i % (PANELS * 8);
      for (let e = 0; e < 8; e++) st(sV + (rest >> 3) * KT * 128 + row * 128 + (rest & 7) * 16 + 2 * e, 0);
    }
  };
  const waitV = (j: number) => {
    const from = ctx - (jLo + j) * KT;
    if (from < KT) zeroVTail(j % STAGES, from);
  };
  const scores = (S: State, j: number) => {
    const key0 = (jLo + j) * KT;
    const mx: number[][] = [];
    for (let t = 0; t < 128; t++) {
      const [pA, pB] = [pos(S.cw, t, 0), pos(S.cw, t, 2)];
      const whole = key0 + KT <= ctx && (!a.causal || key0 + KT - 1 <= pA) && (a.window <= 0 || key0 > pB - a.window);
      const m = [-Infinity, -Infinity];
      for (let i = 0; i < 64; i++) {
        let v = S.s[t][i] * scaleLog2;
        if (!whole) {
          const key = key0 + 8 * (i >> 2) + 2 * (t & 3) + (i & 1);
          const p = i & 2 ? pB : pA;
          const ok = key < ctx && (!a.causal || key <= p) && (a.window <= 0 || key > p - a.window);
          v = ok ? v : -Infinity;
        }
        S.s[t][i] = v;
        m[(i >> 1) & 1] = Math.max(m[(i >> 1) & 1], v);
      }
      mx.push(m);
    }
    for (let t = 0; t < 128; t++) {
      const quad = [t ^ 0, t ^ 1, t ^ 2, t ^ 3].map((u) => mx[u]);
      for (const h of [0, 1]) {
        const rowMax = Math.max(...quad.map((m) => m[h]));
        const nw = Math.max(S.m[t][h], rowMax);
        const base = nw === -Infinity ? 0 : nw;
        S.alpha[t][h] = 2 ** (S.m[t][h] - base);
        S.m[t][h] = nw;
        S.l[t][h] *= S.alpha[t][h];
        for (let i = 0; i < 64; i++)
          if (((i >> 1) & 1) === h) {
            S.s[t][i] = 2 ** (S.s[t][i] - base);
            S.l[t][h] += S.s[t][i];
          }
      }
    }
  };
  const finish = (S: State) => {
    for (let t = 0; t < 128; t++) {
      for (let i = 0; i < HD / 2; i++) S.o[t][i] *= S.alpha[t][(i >> 1) & 1];
      for (let kk = 0; kk < KT / 16; kk++) for (let x = 0; x < 8; x++) S.pf[t][kk][x] = a.round(S.s[t][8 * kk + x]);
    }
  };

  // The loop, both consumers in their turn (the protocol is model-checked elsewhere; here the
  // order of the data: tile j's K and V are in stage j % 2 until tile j + 2 reuses it).
  load(0);
  if (nTiles > 1) load(1);
  for (const S of state) {
    issueQk(S, 0);
    scores(S, 0);
    finish(S);
  }
  for (let j = 1; j < nTiles; j++) {
    const stg = j % STAGES, prev = (j - 1) % STAGES;
    waitV(j - 1);
    for (const S of state) {
      // Both groups read the operands as issued: S_j from K_j, O += P_{j-1} V_{j-1}.
      issueQk(S, stg);
      issuePv(S, prev);
      scores(S, j);
      finish(S);
    }
    if (j + 1 < nTiles) load(j + 1); // into the stage tile j - 1 freed
  }
  waitV(nTiles - 1);
  for (const S of state) issuePv(S, (nTiles - 1) % STAGES);

  // ---- the epilogue: row sums across the quad, O / l as bf16 ----
  for (const S of state)
    for (let t = 0; t < 128; t++) {
      const quad = [t ^ 0, t ^ 1, t ^ 2, t ^ 3];
      for (const half of [0, 1]) {
        const r = r0 + S.cw * 64 + accRow(t, 2 * half);
        if (r >= rows) continue;
        const l = quad.reduce((sum, u) => sum + S.l[u][half], 0);
        const inv = l > 0 ? 1 / l : 0;
        const dst = (q0 + Math.floor(r / G)) * H * HD + (kvh * G + (r % G)) * HD + 2 * (t & 3);
        for (let i = 0; i < HD / 8; i++) {
          a.out[dst + 8 * i] = a.round(S.o[t][4 * i + 2 * half] * inv);
          a.out[dst + 8 * i + 1] = a.round(S.o[t][4 * i + 2 * half + 1] * inv);
        }
      }
    }
}

const CASES: Array<[string, Case]> = [
  ['hd128 GQA 4, lengths off the tiles', { heads: 8, kvHeads: 2, hd: 128, bs: 16, seqs: [[300, 300], [77, 77], [1, 1]] }],
  ['after cached prefixes, hd64, bs 8', { heads: 4, kvHeads: 4, hd: 64, bs: 8, seqs: [[200, 70], [129, 1], [300, 130]] }],
  ['sliding window 100, GQA 8, bs 32', { heads: 16, kvHeads: 2, hd: 128, bs: 32, seqs: [[400, 150], [64, 64]], window: 100 }],
  ['not causal, hd64, bs 256', { heads: 4, kvHeads: 2, hd: 64, bs: 256, seqs: [[300, 300], [50, 20]], causal: false }],
  ['GQA 3, hd64', { heads: 6, kvHeads: 2, hd: 64, bs: 16, seqs: [[97, 97], [33, 10]] }],
  // A window over a tile (200 > 128): some tiles are whole for one row and cut for the next.
  ['sliding window 200, one long sequence', { heads: 2, kvHeads: 2, hd: 64, bs: 16, seqs: [[400, 400]], window: 200 }],
];

describe('kernels/attention_sm90.cu transcribed (JavaScript model of its data movement and arithmetic)', () => {
  it('is a transcription of the current source: the same constants and the lines the model follows', () => {
    for (const line of [
      'constexpr int BM = 128;',
      'constexpr int KT = 128;',
      'constexpr int STAGES = 2;',
      'const int lo = p.window > 0 ? max(0, posFirst - p.window + 1) : 0;',
      'const int hi = p.causal ? min(ctx, posLast + 1) : ctx;',
      'coord = table[min(tok >> p.blockSizeLog2, lastCol)] * bs + (tok & (bs - 1));',
      'tma_load_3d(sK + pn * KT * 128 + c * ch * 128, &tmKV, &kFull[s], pn * 64, kvh, t);',
      'tma_load_3d(sV + pn * KT * 128 + c * ch * 128, &tmKV, &vFull[s], pn * 64, kvh, p.vOffset + t);',
      '*reinterpret_cast<uint4*>(sQ + (chunk / 8) * (BM * 128) + rl * 128 + (((chunk % 8) ^ (rl % 8)) << 4)) = v;',
      'wgmma_ss_m64n128k16<T>(s, desc_kmajor(qBase + pn * BM * 128) + off, desc_kmajor(kBase + pn * KT * 128) + off, kk > 0 ? 1 : 0);',
      'wgmma_rs_tb<T>(o, pf[kk], desc_mnmajor(vBase + kk * 16 * 128, KT * 128));',
      '*reinterpret_cast<uint4*>(sV + (rest / 8) * KT * 128 + row * 128 + (rest % 8) * 16) = make_uint4(0, 0, 0, 0);',
      'const bool whole = key0 + KT <= ctx && (!p.causal || key0 + KT - 1 <= posA) && (p.window <= 0 || key0 > posB - p.window);',
      'const bool ok = key < ctx && (!p.causal || key <= pos) && (p.window <= 0 || key > pos - p.window);',
      'for (int r = 0; r < 4; r++) pf[kk][r] = ts::pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);',
    ])
      expect(SOURCE, line).toContain(line);
    // The descriptors the model reads through: SBO 1024 for both, LBO the panel distance for V.
    expect(SM90_HEADER).toContain('return ((uint64_t)(smem_u32(p) & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) | (1ull << 62);');
    expect(SM90_HEADER).toContain('return ((uint64_t)(smem_u32(p) & 0x3FFFF) >> 4) | ((uint64_t)(panelBytes >> 4) << 16) | ((1024ull >> 4) << 32) | (1ull << 62);');
  });

  CASES.forEach(([name, c], k) => {
    it(`${name}: equals the float64 reference to rounding noise with P and the output unrounded`, () => {
      const { got, want } = runCase(c, 1 + k, true);
      let worst = 0;
      for (let i = 0; i < got.length; i++) {
        expect(Number.isNaN(got[i]), `element ${i} never written or NaN`).toBe(false);
        worst = Math.max(worst, Math.abs(got[i] - want.value[i]) / (1 + Math.abs(want.value[i])));
      }
      expect(worst).toBeLessThan(1e-6); // f32 output storage; one key wrongly in or out is ~1e-3
    });
  });

  it('with the kernel\'s bf16 P and output, within the conformance suite\'s bf16 tolerance', () => {
    const { got, want } = runCase(CASES[0][1], 1, false);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want.value[i]) / (2e-2 * Math.max(1, want.scale ? want.scale[i] : 1) + 2e-2 * Math.abs(want.value[i])));
    expect(worst).toBeLessThan(1);
    expect(worst).toBeGreaterThan(0); // the roundings are there
  });
});
