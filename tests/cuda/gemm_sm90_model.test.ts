/**
 * kernels/gemm_sm90.cu transcribed: a JavaScript model that moves the data as the kernel does
 * (the persistent order of work units, split-major, tiles grouped by GROUP_M; each unit's k range
 * when K is split and its f32 partial, summed by the reduce with the bias and residual; the TMA boxes of x [128 x 64] and w [256 x 64]
 * at (k tile, row tile) with zeros out of range, each consumer's 64 rows, the two 128-column
 * halves of the w box, the k-steps as +32 bytes on the descriptors' start addresses, the
 * accumulator fragments, the bias, the residual read in place of y, and the masked stores) and checks it against the product on
 * the host, exactly (f32 output, no rounding but f64 sums). The mbarrier protocol is checked in
 * sm90_pipeline.test.ts; what the hardware does with the descriptors, by the layout probes.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../helpers/random.js';
import { Smem, accCol, accRow, bf16, scatter, wgmmaSS } from './sm90_model.js';

const SOURCE = readFileSync(path.join(import.meta.dirname, '../../kernels/gemm_sm90.cu'), 'utf8');

// kernels/gemm_sm90.cu's constants.
const BM = 128, BN = 256, BK = 64, GROUP_M = 8;
const A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;

/** tile_coords: tile t of the persistent order -> (row tile, column tile). */
function tileCoords(t: number, tilesM: number, tilesN: number): [number, number] {
  const perGroup = GROUP_M * tilesN;
  const first = Math.floor(t / perGroup) * GROUP_M;
  const rows = Math.min(tilesM - first, GROUP_M);
  return [first + ((t % perGroup) % rows), Math.floor((t % perGroup) / rows)];
}

/**
 * The launch over a grid of `grid` persistent blocks: y[M, N] = x[M, K] w[N, K]^T (+ bias) (+ res),
 * with y the residual's own buffer when there is one (matmul_add in place). With `splits` > 1 the
 * kernel writes f32 partials [splits, M, N] (no bias, no residual) and the reduce sums them.
 */
function gemmModel(x: Float32Array, w: Float32Array, bias: Float32Array | null, res: Float32Array | null, M: number, N: number, K: number, grid: number, splits = 1, kTilesPerSplit = Math.ceil(K / BK)): Float64Array {
  if (splits > 1) {
    const ws = kernelModel(x, w, null, null, M, N, K, grid, splits, kTilesPerSplit);
    const y = new Float64Array(M * N);
    for (let i = 0; i < M * N; i++) {
      let sum = 0;
      for (let s = 0; s < splits; s++) sum += ws[s * M * N + i];
      y[i] = sum + (bias ? bias[i % N] : 0) + (res ? res[i] : 0);
    }
    return y;
  }
  return kernelModel(x, w, bias, res, M, N, K, grid, 1, kTilesPerSplit);
}

/** The kernel alone: y, or with splits > 1 the workspace of partials, each split's slab at split M N. */
function kernelModel(x: Float32Array, w: Float32Array, bias: Float32Array | null, res: Float32Array | null, M: number, N: number, K: number, grid: number, splits: number, kTilesPerSplit: number): Float64Array {
  const y = res ? Float64Array.from(res) : new Float64Array(splits * M * N).fill(NaN);
  const written = new Uint8Array(splits * M * N);
  const tilesM = Math.ceil(M / BM), tilesN = Math.ceil(N / BN), tiles = tilesM * tilesN;
  const kTiles = Math.ceil(K / BK);
  for (let blockIdx = 0; blockIdx < grid; blockIdx++)
    for (let u = blockIdx; u < tiles * splits; u += grid) {
      // unit_coords
      const split = Math.floor(u / tiles);
      const [tm, tn] = tileCoords(u % tiles, tilesM, tilesN);
      const k0 = split * kTilesPerSplit, k1 = Math.min(kTiles, k0 + kTilesPerSplit);
      expect(k1 > k0, `unit ${u}: an empty k range`).toBe(true);
      const out = split * M * N;
      const acc = [0, 1].map(() => [0, 1].map(() => new Float64Array(64 * 128))); // [consumer][half]
      for (let kt = k0; kt < k1; kt++) {
        // The producer: two boxes into one stage (x at (kt*BK, tm*BM), w at (kt*BK, tn*BN)).
        const smem = new Smem(A_BYTES + B_BYTES);
        smem.box(0, BM, (r, c) => (tm * BM + r < M && kt * BK + c < K ? x[(tm * BM + r) * K + kt * BK + c] : 0));
        smem.box(A_BYTES, BN, (r, c) => (tn * BN + r < N && kt * BK + c < K ? w[(tn * BN + r) * K + kt * BK + c] : 0));
        for (let cw = 0; cw < 2; cw++) {
          const a = cw * 64 * 128, b0 = A_BYTES, b1 = A_BYTES + 128 * 128;
          for (let kk = 0; kk < BK / 16; kk++) {
            const accumulate = kt > k0 || kk > 0;
            wgmmaSS(smem, acc[cw][0], 128, a + 32 * kk, b0 + 32 * kk, accumulate);
            wgmmaSS(smem, acc[cw][1], 128, a + 32 * kk, b1 + 32 * kk, accumulate);
          }
        }
      }
      // The epilogue: each thread's fragments, plus the bias, masked at M and N.
      for (let cw = 0; cw < 2; cw++) {
        const regs = [0, 1].map((h) => {
          const r = Array.from({ length: 128 }, () => new Float64Array(64));
          scatter(acc[cw][h], 128, r);
          return r;
        });
        for (let thread = 0; thread < 128; thread++) {
          const row0 = tm * BM + cw * 64 + accRow(thread, 0);
          for (let h = 0; h < 2; h++)
            for (let i = 0; i < 16; i++) {
              const col = tn * BN + h * 128 + accCol(thread, i, 0);
              if (col >= N) continue;
              const b0 = bias ? bias[col] : 0, b1 = bias && col + 1 < N ? bias[col + 1] : 0;
              const store = (row: number, v0: number, v1: number) => {
                if (row >= M) return;
                const at = out + row * N + col;
                for (const [e, v] of (col + 1 < N ? [[0, v0 + b0], [1, v1 + b1]] : [[0, v0 + b0]]) as Array<[number, number]>) {
                  if (written[at + e]) throw new Error(`y[${row}, ${col + e}] written twice`);
                  written[at + e] = 1;
                  y[at + e] = v + (res ? y[at + e] : 0);
                }
              };
              store(row0, regs[h][thread][4 * i], regs[h][thread][4 * i + 1]);
              store(row0 + 8, regs[h][thread][4 * i + 2], regs[h][thread][4 * i + 3]);
            }
        }
      }
    }
  return y;
}

describe('kernels/gemm_sm90.cu transcribed (JavaScript model of its data movement)', () => {
  it('is a transcription of the current source: the same constants and the lines the model follows', () => {
    for (const line of [
      // The cooperative schedule (COOP; PING and STREAMK share these lines with their own terms).
      'constexpr int BM = 128, BK = 64;',
      'static constexpr int BN = pingpong(SCHED) ? 128 : 256;',
      'static constexpr int STAGES = pingpong(SCHED) ? 6 : 4;',
      'constexpr int GROUP_M = 8;',
      'tm = first + (t % per_group) % rows;',
      'w.split = u / tiles;',
      'w.tile = u % tiles;',
      'w.k0 = w.split * per;',
      'w.k1 = min(kTiles, w.k0 + per);',
      'u += step;',
      'step(gridDim.x), rank(0) {',
      'tile_coords(w.tile, tilesM, tilesN, w.tm, w.tn);',
      'for (int kt = w.k0; kt < w.k1; kt++) {',
      'for (int kt = w.k0; kt < w.k1; kt++, pos++) {',
      'const int accumulate = (kt > w.k0 || kk > 0) ? 1 : 0;',
      'OUT_T* out = y + (size_t)w.split * M * N;  // split 0 (or no split): y itself',
      'tn = (t % per_group) / rows;',
      'tma_load_2d(a, &tmX, &full[stage], kt * BK, (MC ? min(w.tm, tilesM - 1) : w.tm) * BM);',
      'tma_load_2d(a + A_BYTES, &tmW, &full[stage], kt * BK, w.tn * BN);',
      'const uint8_t* a = smem + stage * STAGE_BYTES;',
      'const uint64_t da0 = desc_kmajor(PP ? a : a + cw * 64 * 128), da1 = desc_kmajor(PP ? a + 64 * 128 : a + cw * 64 * 128);',
      'const uint64_t db0 = desc_kmajor(b), db1 = desc_kmajor(PP ? b : b + 128 * 128);',
      'wgmma_ss_m64n128k16<T>(acc[0], da0 + 2 * kk, db0 + 2 * kk, accumulate);',
      'wgmma_ss_m64n128k16<T>(acc[1], da1 + 2 * kk, db1 + 2 * kk, accumulate);',
      'const int row0 = w.tm * BM + (PP ? h : cw) * 64 + warp * 16 + lane / 4;',
      'const int col = w.tn * BN + (PP ? 0 : h * 128) + i * 8 + 2 * (lane % 4);',
      // Without a folded norm rs0 is 1, and fmaf(a, 1, b) is a + b exactly: the model adds.
      'const float v0 = fmaf(acc[h][4 * i], rs0, b0), v1 = fmaf(acc[h][4 * i + 1], rs0, b1);',
      'if (row0 < M) store2(out, res, row0, col, N, v0, v1);',
      'const float2 r = ts::load2_f32(res + at);',
    ])
      expect(SOURCE, line).toContain(line);
  });

  it('the persistent order visits every tile once, GROUP_M row tiles at a time', () => {
    for (const [tilesM, tilesN] of [[1, 1], [3, 5], [8, 2], [9, 4], [17, 3], [64, 501]]) {
      const seen = new Set<string>();
      for (let t = 0; t < tilesM * tilesN; t++) {
        const [tm, tn] = tileCoords(t, tilesM, tilesN);
        expect(tm < tilesM && tn < tilesN && tm >= 0 && tn >= 0).toBe(true);
        seen.add(`${tm},${tn}`);
        // Within a group the row tile runs fastest: the blocks running at once share column tiles
        // (weights reused from L2); the next column tile starts again at the group's first row tile.
        if (t % (GROUP_M * tilesN) !== 0) {
          const [pm, pn] = tileCoords(t - 1, tilesM, tilesN);
          const first = Math.floor(t / (GROUP_M * tilesN)) * GROUP_M;
          expect((tn === pn && tm === pm + 1) || (tn === pn + 1 && tm === first), `t ${t}`).toBe(true);
        }
      }
      expect(seen.size).toBe(tilesM * tilesN);
    }
  });

  for (const [M, N, K, withBias, grid, withRes, splits, kps] of [
    [1, 64, 8, false, 1, false],
    [130, 72, 136, true, 3, false],
    [257, 300, 200, true, 2, true],
    [128, 256, 64, false, 1, false],
    [70, 257, 64, false, 2, true],
    [130, 72, 520, true, 5, true, 3, 3], // 9 k-tiles, 3 splits of 3; 6 tiles over 5 blocks
    [1, 300, 456, false, 4, false, 4, 2], // 8 k-tiles (the last 8 wide), 4 splits of 2
  ] as Array<[number, number, number, boolean, number, boolean, number?, number?]>)
    it(`M ${M}, N ${N}, K ${K}${withBias ? ', bias' : ''}${withRes ? ', residual in place' : ''}, ${grid} persistent block(s)${splits ? `, K split ${splits} ways` : ''}: every element equals the product`, () => {
      const rnd = mulberry32(M * 7 + N * 13 + K);
      const x = Float32Array.from({ length: M * K }, () => bf16(rnd() * 2 - 1));
      const w = Float32Array.from({ length: N * K }, () => bf16(rnd() * 2 - 1));
      const bias = withBias ? Float32Array.from({ length: N }, () => bf16(rnd() * 2 - 1)) : null;
      const res = withRes ? Float32Array.from({ length: M * N }, () => bf16(rnd() * 8 - 4)) : null;
      const y = gemmModel(x, w, bias, res, M, N, K, grid, splits, kps);
      let worst = 0;
      for (let r = 0; r < M; r++)
        for (let c = 0; c < N; c++) {
          let want = (bias ? bias[c] : 0) + (res ? res[r * N + c] : 0);
          for (let k = 0; k < K; k++) want += x[r * K + k] * w[c * K + k];
          expect(Number.isNaN(y[r * N + c]), `y[${r}, ${c}] never written`).toBe(false);
          worst = Math.max(worst, Math.abs(y[r * N + c] - want));
        }
      expect(worst).toBeLessThan(1e-9);
    });
});
