/**
 * kernels/gemm.cu (the mma.sync tile kernel every matmul runs by default) transcribed: a
 * JavaScript model that moves the data as the kernel does and multiplies with the fragments of
 * mma.sync m16n8k16 as the PTX manual lays them out, checked exactly against the host product
 * (f32 output: f64 sums here, no rounding but the inputs'). It covers the block order (groups of
 * GROUP_M row tiles), each thread's cp.async chunks (rows per pass, the XOR swizzle of 64-byte
 * rows, zero-fill past R, N and K), the STAGES-deep ring (every iteration reads the k-tile it
 * expects, and no load lands in the stage being read), ldmatrix.x4 row addresses per lane
 * (lane_a_offset, lane_b_offset) and the registers they fill, the warp tiles, split-K with its
 * reduce, bias, the residual read in place of y (matmul_add), and the masked stores, for each of
 * the four tile configurations the launcher
 * picks from (ops/gemm.ts). What the hardware does is for the GPU tier of the conformance suite.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../helpers/random.js';
import { ldmatrixX4, mmaM16n8k16 } from './mma_model.js';
import { bf16 } from './sm90_model.js';

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/gemm.cu'), 'utf8');

// kernels/gemm.cu's constants and helpers.
const BK = 32, ROW_BYTES = BK * 2, ROW_CHUNKS = BK / 8, GROUP_M = 8;
const tileOffset = (r: number, c: number) => r * ROW_BYTES + ((c ^ ((r >> 1) & 3)) << 4);
const laneAOffset = (lane: number, kk: number) => tileOffset(lane & 15, kk * 2 + (lane >> 4));
const laneBOffset = (lane: number, kk: number) => tileOffset((lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1));
function blockTile(pid: number, tilesM: number, tilesN: number): [number, number] {
  const span = GROUP_M * tilesN, group = Math.floor(pid / span), firstM = group * GROUP_M;
  const groupM = Math.min(tilesM - firstM, GROUP_M), local = pid - group * span;
  return [firstM + (local % groupM), Math.floor(local / groupM)];
}

/** The TS_GEMM_ENTRIES configurations: [BM, BN, WARPS_M, WARPS_N, STAGES]. */
const CONFIGS: Record<string, [number, number, number, number, number]> = {
  '16x128': [16, 128, 1, 4, 4],
  '32x128': [32, 128, 1, 4, 4],
  '64x128': [64, 128, 2, 2, 4],
  '128x128': [128, 128, 2, 4, 3],
};

/**
 * One launch of ts_gemm_<config> over grid (tiles, 1, splits). Split (splits > 1), each block
 * writes its partial tile to ws[z]; then either the last split of each tile to arrive (an order
 * drawn per tile from `seed`) merges them, in split order, with the bias and the residual, in the
 * same launch (merge 'fused', the default), or ts_gemm_splitk_reduce does it in a second launch
 * ('separate'). With `res`, y starts as the residual and whatever writes y reads each element of
 * it just before writing it: the in-place matmul_add.
 */
function gemmModel(
  config: string,
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array | null,
  res: Float32Array | null,
  R: number,
  N: number,
  K: number,
  kTilesPerSplit: number,
  merge: 'fused' | 'separate' = 'fused',
  seed = 1,
): Float64Array {
  const [BM, BN, WARPS_M, WARPS_N, STAGES] = CONFIGS[config];
  const THREADS = WARPS_M * WARPS_N * 32, WTM = BM / WARPS_M, WTN = BN / WARPS_N, MT = WTM / 16, NT = WTN / 8;
  const A_BYTES = BM * ROW_BYTES, STAGE_BYTES = (BM + BN) * ROW_BYTES;
  const ROWS_PER_PASS = THREADS / ROW_CHUNKS;
  const A_PASSES = Math.ceil(BM / ROWS_PER_PASS), B_PASSES = Math.ceil(BN / ROWS_PER_PASS);
  const tilesM = Math.ceil(R / BM), tilesN = Math.ceil(N / BN), kTiles = Math.ceil(K / BK);
  const splits = Math.ceil(kTiles / kTilesPerSplit);
  const out = new Float64Array(splits * R * N).fill(NaN); // y, or the split partials ws[splits, R, N]
  if (splits === 1 && res) out.set(res); // y is the residual's buffer
  const written = new Uint8Array(splits * R * N);
  /** The y elements each tile's blocks hold (the same for every split of the tile). */
  const tileElements = Array.from({ length: tilesM * tilesN }, () => [] as number[]);
  for (let z = 0; z < splits; z++)
    for (let pid = 0; pid < tilesM * tilesN; pid++) {
      const [tm, tn] = blockTile(pid, tilesM, tilesN);
      const m0 = tm * BM, n0 = tn * BN;
      const ktBegin = z * kTilesPerSplit, ktEnd = Math.min(kTiles, ktBegin + kTilesPerSplit), nK = Math.max(0, ktEnd - ktBegin);
      const smem = new Float64Array((STAGES * STAGE_BYTES) / 2).fill(NaN);
      const read = (addr: number) => smem[addr >> 1];
      const holds = new Array<number>(STAGES).fill(-1); // the k-tile each stage holds
      let reading = -1;
      const loadTile = (stage: number, kt: number) => {
        if (stage === reading) throw new Error(`k-tile ${kt} loads into stage ${stage} while it is read`);
        holds[stage] = kt;
        for (let tid = 0; tid < THREADS; tid++) {
          const ldRow = Math.floor(tid / ROW_CHUNKS), ldK = (tid % ROW_CHUNKS) * 8;
          const base = stage * STAGE_BYTES + tileOffset(ldRow, tid % ROW_CHUNKS);
          const k0 = kt * BK, kOk = k0 + ldK < K;
          const copy = (dst: number, ok: boolean, src: Float32Array, row: number) => {
            for (let e = 0; e < 8; e++) smem[(dst >> 1) + e] = ok ? src[row * K + k0 + ldK + e] : 0;
          };
          for (let p = 0; p < A_PASSES; p++) {
            const row = ldRow + p * ROWS_PER_PASS;
            if (BM % ROWS_PER_PASS === 0 || row < BM) copy(base + p * ROWS_PER_PASS * ROW_BYTES, kOk && m0 + row < R, x, m0 + row);
          }
          for (let p = 0; p < B_PASSES; p++) {
            const row = ldRow + p * ROWS_PER_PASS;
            if (BN % ROWS_PER_PASS === 0 || row < BN) copy(base + A_BYTES + p * ROWS_PER_PASS * ROW_BYTES, kOk && n0 + row < N, w, n0 + row);
          }
        }
      };
      const acc = Array.from({ length: WARPS_M * WARPS_N }, () => Array.from({ length: MT }, () => Array.from({ length: NT }, () => Array.from({ length: 32 }, () => [0, 0, 0, 0]))));
      for (let s = 0; s < STAGES - 1; s++) if (s < nK) loadTile(s, ktBegin + s);
      let readStage = 0, writeStage = STAGES - 1;
      for (let t = 0; t < nK; t++) {
        reading = readStage;
        if (t + STAGES - 1 < nK) loadTile(writeStage, ktBegin + t + STAGES - 1);
        expect(holds[readStage], `iteration ${t} reads stage ${readStage}`).toBe(ktBegin + t);
        const base = readStage * STAGE_BYTES;
        for (let warp = 0; warp < WARPS_M * WARPS_N; warp++) {
          const wm = Math.floor(warp / WARPS_N), wn = warp % WARPS_N;
          for (let kk = 0; kk < 2; kk++) {
            const aOff = (lane: number) => wm * WTM * ROW_BYTES + laneAOffset(lane, kk);
            const bOff = (lane: number) => A_BYTES + wn * WTN * ROW_BYTES + laneBOffset(lane, kk);
            const a = Array.from({ length: MT }, (_, mi) => ldmatrixX4(read, Array.from({ length: 32 }, (_, l) => base + aOff(l) + mi * 16 * ROW_BYTES)));
            const b = Array.from({ length: NT / 2 }, (_, nj) => ldmatrixX4(read, Array.from({ length: 32 }, (_, l) => base + bOff(l) + nj * 16 * ROW_BYTES)));
            for (let mi = 0; mi < MT; mi++)
              for (let ni = 0; ni < NT; ni++) {
                const frag = b[ni >> 1];
                mmaM16n8k16(acc[warp][mi][ni], a[mi], frag.map((r) => r[(ni & 1) * 2]), frag.map((r) => r[(ni & 1) * 2 + 1]));
              }
          }
        }
        readStage = readStage === STAGES - 1 ? 0 : readStage + 1;
        writeStage = writeStage === STAGES - 1 ? 0 : writeStage + 1;
      }
      // The epilogue (bias and residual only without split-K: the partials go to the reduce without them).
      const withBias = splits === 1 ? bias : null;
      const withRes = splits === 1 && res !== null;
      for (let warp = 0; warp < WARPS_M * WARPS_N; warp++) {
        const wm = Math.floor(warp / WARPS_N), wn = warp % WARPS_N;
        for (let lane = 0; lane < 32; lane++) {
          const g = lane >> 2, tg = lane & 3;
          for (let ni = 0; ni < NT; ni++) {
            const col = n0 + wn * WTN + ni * 8 + tg * 2;
            if (col >= N) continue;
            for (let mi = 0; mi < MT; mi++)
              for (let h = 0; h < 2; h++) {
                const row = m0 + wm * WTM + mi * 16 + g + h * 8;
                if (row >= R) continue;
                const at = z * R * N + row * N + col;
                for (let e = 0; e < (col + 1 < N ? 2 : 1); e++) {
                  if (z === 0) tileElements[pid].push(row * N + col + e);
                  if (written[at + e]) throw new Error(`y[${row}, ${col + e}] written twice`);
                  written[at + e] = 1;
                  out[at + e] = acc[warp][mi][ni][lane][2 * h + e] + (withBias ? withBias[col + e] : 0) + (withRes ? out[at + e] : 0);
                }
              }
          }
        }
      }
    }
  if (splits === 1) return out;
  if (merge === 'fused') {
    // Each tile's splits arrive on its counter in a drawn order; the one that finds splits - 1
    // before it merges: for each element, the sum over q of its own partial (q == z) or ws[q]'s,
    // in split order, then the bias and the residual; it resets the counter.
    const rnd = mulberry32(seed);
    const counters = new Int32Array(tilesM * tilesN);
    const y = res ? Float64Array.from(res) : new Float64Array(R * N).fill(NaN);
    const yWritten = new Uint8Array(R * N);
    // The merging block's own accumulators: the values it stored in ws[z] before it counted.
    const ownPartial = (z: number, i: number) => out[z * R * N + i];
    for (let pid = 0; pid < tilesM * tilesN; pid++) {
      const order = Array.from({ length: splits }, (_, z) => z);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rnd() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
      for (const z of order) {
        const last = counters[pid]++ === splits - 1;
        if (!last) continue;
        counters[pid] = 0;
        for (const i of tileElements[pid]) {
          let s = 0;
          for (let q = 0; q < splits; q++) s += q === z ? ownPartial(z, i) : out[q * R * N + i];
          if (yWritten[i]) throw new Error(`y element ${i} merged twice`);
          yWritten[i] = 1;
          y[i] = s + (bias ? bias[i % N] : 0) + (res ? y[i] : 0);
        }
      }
    }
    expect([...counters].every((c) => c === 0), 'every counter back at zero').toBe(true);
    return y;
  }
  // ts_gemm_splitk_reduce: y = sum over z of ws[z] (+ bias) (+ res, y's own buffer), splits in order.
  const y = res ? Float64Array.from(res) : new Float64Array(R * N);
  for (let i = 0; i < R * N; i++) {
    let s = 0;
    for (let z = 0; z < splits; z++) s += out[z * R * N + i];
    y[i] = s + (bias ? bias[i % N] : 0) + (res ? y[i] : 0);
  }
  return y;
}

describe('kernels/gemm.cu transcribed (JavaScript model of its data movement and mma.sync fragments)', () => {
  it('is a transcription of the current source: the same constants, configurations and address arithmetic', () => {
    for (const line of [
      'constexpr int BK = 32;',
      'constexpr int GROUP_M = 8;',
      'return static_cast<uint32_t>(r * ROW_BYTES + ((c ^ ((r >> 1) & 3)) << 4));',
      'return tile_offset(lane & 15, kk * 2 + (lane >> 4));',
      'return tile_offset((lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1));',
      'const uint32_t ld_dst = tile_offset(ld_row, tid % ROW_CHUNKS);',
      'mma<T>(acc[mi][ni], a[mi], b[ni / 2][(ni & 1) * 2], b[ni / 2][(ni & 1) * 2 + 1]);',
      'const int row = m0 + wm * WTM + mi * 16 + g + h * 8;',
      'int read_stage = 0, write_stage = STAGES - 1;',
      'const int64_t at = static_cast<int64_t>(row) * N + col;',
      'const float2 r = ts::load2_f32(res + at);',
      'store2(y + at, v0, v1);',
      'if (res != nullptr) s += ts::to_f32(res[i]);',
      'if (ws == nullptr) y += static_cast<int64_t>(blockIdx.z) * RN;',
      'float* p = ws + z * RN + static_cast<int64_t>(row) * N + col;',
      'const int last = atomicAdd(&counters[blockIdx.x], 1) == splits - 1;',
      'counters[blockIdx.x] = 0;',
      'const float* p = ws + static_cast<int64_t>(row) * N + col;',
      'for (int q = 0; q < splits; q++, p += RN) {',
      'if (q == z) {',
    ])
      expect(SOURCE, line).toContain(line);
    const entries = [...SOURCE.matchAll(/^TS_GEMM_ENTRIES\(((\d+), (\d+)), (\d+), (\d+), (\d+), \d+\)/gm)].map((m) => [m[1].replace(', ', 'x'), m.slice(2, 7).map(Number)]);
    expect(Object.fromEntries(entries)).toEqual(CONFIGS);
  });

  const shapes: Array<[string, number, number, number, boolean, number, boolean]> = [
    // [config, R, N, K, bias, k-tiles per split, residual]
    ['16x128', 1, 40, 32, false, 1, false],
    ['16x128', 13, 130, 200, true, 2, true],
    ['32x128', 29, 257, 96, true, 100, false],
    ['32x128', 29, 257, 96, false, 100, true],
    ['64x128', 70, 136, 264, false, 3, false],
    ['128x128', 130, 129, 72, true, 100, true],
    ['128x128', 200, 300, 520, false, 5, false],
  ];
  for (const [config, R, N, K, withBias, perSplit, withRes] of shapes)
    it(`${config}: R ${R}, N ${N}, K ${K}${withBias ? ', bias' : ''}${withRes ? ', residual in place' : ''}${Math.ceil(K / BK / perSplit) > 1 ? `, ${Math.ceil(K / BK / perSplit)}-way split-K` : ''}: every element equals the product`, () => {
      const rnd = mulberry32(R * 31 + N * 7 + K + (withRes ? 1 : 0));
      const x = Float32Array.from({ length: R * K }, () => bf16(rnd() * 2 - 1));
      const w = Float32Array.from({ length: N * K }, () => bf16(rnd() * 2 - 1));
      const bias = withBias ? Float32Array.from({ length: N }, () => bf16(rnd() * 2 - 1)) : null;
      const res = withRes ? Float32Array.from({ length: R * N }, () => bf16(rnd() * 8 - 4)) : null;
      const merges = Math.ceil(K / BK / perSplit) > 1 ? (['fused', 'separate'] as const) : (['fused'] as const);
      for (const merge of merges)
        for (const seed of merge === 'fused' ? [1, 2, 3] : [1]) {
          const y = gemmModel(config, x, w, bias, res, R, N, K, perSplit, merge, seed);
          let worst = 0;
          for (let r = 0; r < R; r++)
            for (let c = 0; c < N; c++) {
              let want = (bias ? bias[c] : 0) + (res ? res[r * N + c] : 0);
              for (let k = 0; k < K; k++) want += x[r * K + k] * w[c * K + k];
              expect(Number.isNaN(y[r * N + c]), `${merge}: y[${r}, ${c}]`).toBe(false);
              worst = Math.max(worst, Math.abs(y[r * N + c] - want));
            }
          expect(worst, merge).toBeLessThan(1e-9);
        }
    });
});
