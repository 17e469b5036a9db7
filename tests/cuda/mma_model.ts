/**
 * Ampere's warp-level matrix instructions emulated in JavaScript, as the PTX manual lays out their
 * fragments, for the transcriptions of the mma.sync kernels (gemm_model.test.ts,
 * attention_model.test.ts). A register holding two bf16 is a [low, high] pair of numbers.
 */

/**
 * ldmatrix.sync.aligned.m8n8.x4(.trans).b16: lanes 8i..8i+7 give the byte addresses of the 8
 * rows of matrix i (8 b16 each); lane l receives, for each matrix, (row l / 4, columns 2 (l % 4)
 * and + 1), or with .trans (rows 2 (l % 4) and + 1, column l / 4). `read(byteAddress)` is one b16.
 */
export function ldmatrixX4(read: (byteAddress: number) => number, addr: readonly number[], trans = false): number[][][] {
  return Array.from({ length: 32 }, (_, lane) =>
    [0, 1, 2, 3].map((i) => {
      if (!trans) {
        const row = addr[8 * i + (lane >> 2)];
        return [read(row + 4 * (lane & 3)), read(row + 4 * (lane & 3) + 2)];
      }
      const col = 2 * (lane >> 2);
      return [read(addr[8 * i + 2 * (lane & 3)] + col), read(addr[8 * i + 2 * (lane & 3) + 1] + col)];
    }),
  );
}

/**
 * mma.sync.aligned.m16n8k16.row.col over a warp, accumulating into c: a[lane] = 4 registers (a0:
 * row g, k 2t + h; a1: row g + 8; a2: k + 8; a3: both), b0/b1[lane] = (k 2t + h, and 8 + 2t + h;
 * column g), c[lane] = 4 accumulators (row g for 0, 1 and g + 8 for 2, 3; column 2t + (e & 1)),
 * with g = lane / 4 and t = lane % 4.
 */
export function mmaM16n8k16(c: number[][], a: number[][][], b0: number[][], b1: number[][]): void {
  const A = Array.from({ length: 16 }, () => new Array<number>(16).fill(NaN));
  const B = Array.from({ length: 16 }, () => new Array<number>(8).fill(NaN));
  for (let lane = 0; lane < 32; lane++) {
    const g = lane >> 2, t = lane & 3;
    for (let h = 0; h < 2; h++) {
      A[g][2 * t + h] = a[lane][0][h];
      A[g + 8][2 * t + h] = a[lane][1][h];
      A[g][8 + 2 * t + h] = a[lane][2][h];
      A[g + 8][8 + 2 * t + h] = a[lane][3][h];
      B[2 * t + h][g] = b0[lane][h];
      B[8 + 2 * t + h][g] = b1[lane][h];
    }
  }
  for (let lane = 0; lane < 32; lane++) {
    const g = lane >> 2, t = lane & 3;
    for (let e = 0; e < 4; e++) {
      const row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      let s = c[lane][e];
      for (let k = 0; k < 16; k++) s += A[row][k] * B[k][col];
      c[lane][e] = s;
    }
  }
}
