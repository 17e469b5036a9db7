/**
 * A JavaScript model of ts_sample_f32 (kernels/sampling.cu), step by step: order keys, radix
 * selects with their histograms and tie rules, fixed-point masses, the LIST path's block trees
 * and scans. tests/cuda/sampling.test.ts checks it against the host sampler; the stand-in libcuda
 * runs it as the kernel when the CUDA backend is tested without a GPU.
 */
import {
  LIST_CAP,
  PARAM_OFFSETS,
  ROW_BYTES,
  SAMPLING_THREADS,
  packSamplingRows,
  readSamplingResults,
  type PackedSampling,
  type SamplingOutputs,
  type SamplingRow,
} from '../../src/backend/cuda/ops/sampling.js';
import { philox4x32 } from '../../src/sampling/philox.js';
import type { SampleResult } from '../../src/sampling/sampler.js';

// ---------------------------------------------------------------------------------------------
// The model of ts_sample_f32. Names follow the kernel.
// ---------------------------------------------------------------------------------------------

export const NT = SAMPLING_THREADS;
const NWARP = NT / 32;
const MAX_TOP = 32;
const QSCALE = 2 ** 42;

export const f32 = new Float32Array(1);
const bits = new Uint32Array(f32.buffer);
const fround = Math.fround;

export function fkey(l: number): number {
  f32[0] = l;
  let b = bits[0];
  if ((b & 0x7fffffff) === 0) b = 0;
  return b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
}
export function fval(k: number): number {
  bits[0] = k & 0x80000000 ? k & 0x7fffffff : ~k >>> 0;
  return f32[0];
}
export const okey = (f: number, i: number): bigint => (BigInt(f) << 32n) | BigInt(~i >>> 0);
export const okeyId = (o: bigint): number => ~Number(o & 0xffffffffn);
export const okeyF = (o: bigint): number => Number(o >> 32n);

/** __float2ull_rn */
function roundHalfEven(x: number): number {
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The warp butterfly then the tree over warp leaders of block_all (every lane gets the same). */
function blockSum(perThread: Float64Array): number {
  const butterfly = (xs: number[]): number => {
    let cur = xs.slice();
    for (let o = 16; o > 0; o >>= 1) cur = cur.map((x, l) => x + cur[l ^ o]);
    return cur[0];
  };
  // Lanes past the last warp read the identity (0).
  const leaders: number[] = new Array(32).fill(0);
  for (let w = 0; w < NWARP; w++) leaders[w] = butterfly(Array.from(perThread.subarray(w * 32, w * 32 + 32)));
  return butterfly(leaders);
}

interface RowView {
  temperature: number;
  topP: number;
  minP: number;
  rp: number;
  pp: number;
  fp: number;
  topK: number;
  logprobs: number;
  seedLo: number;
  seedHi: number;
  stream: number;
  counter: number;
  repStart: number;
  repCount: number;
  outStart: number;
  outCount: number;
}

export function readRow(packed: PackedSampling, r: number): RowView {
  const v = new DataView(packed.params, r * ROW_BYTES, ROW_BYTES);
  const O = PARAM_OFFSETS;
  return {
    temperature: v.getFloat64(O.temperature, true),
    topP: v.getFloat64(O.topP, true),
    minP: v.getFloat64(O.minP, true),
    rp: v.getFloat64(O.repetitionPenalty, true),
    pp: v.getFloat64(O.presencePenalty, true),
    fp: v.getFloat64(O.frequencyPenalty, true),
    topK: v.getInt32(O.topK, true),
    logprobs: v.getInt32(O.logprobs, true),
    seedLo: v.getUint32(O.seedLo, true),
    seedHi: v.getUint32(O.seedHi, true),
    stream: v.getUint32(O.stream, true),
    counter: v.getUint32(O.counter, true),
    repStart: v.getInt32(O.repStart, true),
    repCount: v.getInt32(O.repCount, true),
    outStart: v.getInt32(O.outStart, true),
    outCount: v.getInt32(O.outCount, true),
  };
}

export type MassFn = (l: number) => bigint;

/** Trace of which path and selections ran (for coverage checks). */
export interface Trace {
  path: 'greedy' | 'list' | 'row';
  tiePasses: number;
}

export class RowModel {
  constructor(
    readonly row: Float32Array,
    readonly trace: Trace,
  ) {}

  get V(): number {
    return this.row.length;
  }

  /** radix_select<MASS, STRICT> */
  radixSelect(mass: MassFn | null, strict: boolean, cut: bigint, T: bigint): { key: bigint; before: bigint } {
    const { row, V } = this;
    let prefix = 0, pmask = 0, above = 0n, binW = 0n, bin = 0;
    let minId: number[] = [];
    for (let shift = 24; shift >= 0; shift -= 8) {
      const hist: bigint[] = new Array(256).fill(0n);
      minId = new Array(256).fill(0xffffffff);
      for (let i = 0; i < V; i++) {
        const f = fkey(row[i]);
        if ((f & pmask) >>> 0 === prefix && okey(f, i) >= cut) {
          const b = (f >>> shift) & 255;
          hist[b] += mass ? mass(row[i]) : 1n;
          if (shift === 0) minId[b] = Math.min(minId[b], i);
        }
      }
      let c = above, hit = -1, hitAbove = 0n, hitW = 0n, any = -1, anyAbove = 0n, anyW = 0n;
      for (let b = 255; b >= 0; b--) {
        const h = hist[b];
        if (h > 0n) {
          if (hit < 0 && (strict ? c + h > T : c + h >= T)) [hit, hitAbove, hitW] = [b, c, h];
          if (any < 0) [any, anyAbove, anyW] = [b, c, h];
        }
        c += h;
      }
      if (hit >= 0) [bin, above, binW] = [hit, hitAbove, hitW];
      else if (any >= 0) [bin, above, binW] = [any, anyAbove, anyW];
      else [bin, binW] = [0, 0n];
      prefix = (prefix | (bin << shift)) >>> 0;
      pmask = (pmask | (255 << shift)) >>> 0;
    }
    const unit = mass ? mass(fval(prefix)) : 1n;
    let j = 0n;
    if (unit > 0n) {
      const need = T > above ? T - above : 0n;
      j = strict ? need / unit : need > 0n ? (need - 1n) / unit : 0n;
      const nties = binW / unit;
      if (nties > 0n && j > nties - 1n) j = nties - 1n;
    }
    let id = minId[bin];
    if (j > 0n) {
      this.trace.tiePasses++;
      const t = this.nthTie(prefix, cut, Number(j));
      if (t >= 0) id = t;
    }
    return { key: okey(prefix, id), before: above + j * unit };
  }

  nthTie(v: number, cut: bigint, j: number): number {
    let seen = 0;
    for (let i = 0; i < this.V; i++) {
      const f = fkey(this.row[i]);
      if (f === v && okey(f, i) >= cut) {
        if (seen === j) return i;
        seen++;
      }
    }
    return -1;
  }

  gatherSorted(cut: bigint): bigint[] {
    const out: bigint[] = [];
    for (let i = 0; i < this.V; i++) {
      const o = okey(fkey(this.row[i]), i);
      if (o >= cut) out.push(o);
    }
    return out.sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
  }

  massSum(cut: bigint, mass: MassFn): bigint {
    let s = 0n;
    for (let i = 0; i < this.V; i++) if (okey(fkey(this.row[i]), i) >= cut) s += mass(this.row[i]);
    return s;
  }
}

/**
 * list_draw: keys are the host's candidate list in the host's order. Per-entry values in parallel
 * on the device, the four folds (sum, top-p cumulative, kept, walk) on one thread, in this order.
 */
function listDraw(keys: bigint[], mx: number, P: RowView, m24: number): number {
  const n = keys.length;
  const invT = 1 / P.temperature;
  const p = keys.map((k) => Math.exp((fval(okeyF(k)) - mx) * invT));
  let sum = 0;
  for (let e = 0; e < n; e++) sum += p[e];
  let keep = n;
  if (P.minP > 0) {
    const thr = P.minP * (p[0] / sum);
    let last = 0; // block max of e + 1 over the entries that pass
    for (let e = 0; e < n; e++) if (!(p[e] / sum < thr)) last = e + 1;
    keep = last > 1 ? last : 1;
  }
  if (P.topP < 1) {
    let cum = 0;
    for (let e = 0; e < keep; e++) {
      cum += p[e] / sum;
      if (cum >= P.topP) {
        keep = e + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let e = 0; e < keep; e++) kept += p[e];
  let target = m24 * 2 ** -24 * kept;
  for (let e = 0; e < keep; e++) {
    target -= p[e];
    if (target < 0) return okeyId(keys[e]);
  }
  return okeyId(keys[keep - 1]);
}

/** row_draw */
function rowDraw(m: RowModel, mx: number, maxKey: bigint, truncK: boolean, sorted: boolean, P: RowView, m24: number): number {
  const invTd = 1 / P.temperature;
  const invTf = fround(invTd < 3.0e38 ? invTd : 3.0e38);
  const mass: MassFn = (l) => BigInt(roundHalfEven(fround(Math.exp(fround(fround(l - mx) * invTf))) * QSCALE));
  const scaleU24 = (kept: bigint) => (kept * BigInt(m24)) >> 24n;
  if (!sorted) {
    const T = scaleU24(m.massSum(0n, mass));
    let S = 0n;
    for (let i = 0; i < m.V; i++) {
      const w = mass(m.row[i]);
      S += w;
      if (S > T && S - w <= T) return i;
    }
    return okeyId(maxKey);
  }
  const cutK = truncK ? m.radixSelect(null, false, 0n, BigInt(P.topK)).key : 0n;
  const sum = m.massSum(cutK, mass);
  let cut = cutK, kept = sum, known = true;
  if (P.minP > 0) {
    const qmin = BigInt(Math.ceil(P.minP * QSCALE));
    let fmin = 0xffffffff;
    for (let i = 0; i < m.V; i++) {
      const f = fkey(m.row[i]);
      if (f < fmin && okey(f, i) >= cutK && mass(m.row[i]) >= qmin) fmin = f;
    }
    const cutM = fmin === 0xffffffff ? maxKey : BigInt(fmin) << 32n;
    if (cutM > cut) [cut, known] = [cutM, false];
  }
  if (P.topP < 1) {
    let T = BigInt(Math.ceil(P.topP * Number(sum)));
    if (T < 1n) T = 1n;
    if (T > sum) T = sum;
    const sp = m.radixSelect(mass, false, cutK, T);
    if (sp.key >= cut) [cut, kept, known] = [sp.key, sp.before + mass(fval(okeyF(sp.key))), true];
  }
  if (!known) kept = m.massSum(cut, mass);
  return okeyId(m.radixSelect(mass, true, cut, scaleU24(kept)).key);
}

/**
 * ts_sample_f32 on row r of `logits` (f32 [S, V]; overwritten with the penalized logits, as on the
 * device), writing the kernel's outputs. `cap` stands for CAP in the path choice only (a smaller
 * one sends rows down the ROW path).
 */
export function modelKernel(logits: Float32Array, V: number, packed: PackedSampling, r: number, out: SamplingOutputs, cap = LIST_CAP): Trace {
  const P = readRow(packed, r);
  const row = logits.subarray(r * V, (r + 1) * V);
  const trace: Trace = { path: 'greedy', tiePasses: 0 };
  const m = new RowModel(row, trace);
  // Penalties, in double with one rounding to f32 (the Float32Array store).
  if (P.rp !== 1)
    for (let j = P.repStart; j < P.repStart + P.repCount; j++) {
      const id = packed.ids[j];
      if (id >= 0 && id < V) row[id] = row[id] > 0 ? row[id] / P.rp : row[id] * P.rp;
    }
  if (P.pp !== 0 || P.fp !== 0)
    for (let j = P.outStart; j < P.outStart + P.outCount; j++) {
      const id = packed.ids[j];
      if (id >= 0 && id < V) row[id] = row[id] - (P.pp + P.fp * packed.counts[j]);
    }
  let best = 0n;
  for (let i = 0; i < V; i++) {
    if (Number.isNaN(row[i])) row[i] = -Infinity; // as the kernel's max pass stores it
    const o = okey(fkey(row[i]), i);
    if (o > best) best = o;
  }
  const mx = fval(okeyF(best));
  let tok = okeyId(best);
  if (P.temperature !== 0 && Number.isFinite(mx)) {
    const m24 = philox4x32(P.seedLo, P.seedHi, P.counter, P.stream, 0, 0)[0] >>> 8;
    const k = P.topK;
    const truncK = k > 0 && k < V;
    const sorted = truncK || P.topP < 1 || P.minP > 0;
    if (V <= cap) {
      trace.path = 'list';
      const keys = Array.from({ length: V }, (_, i) => okey(fkey(row[i]), i));
      if (sorted) keys.sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
      tok = listDraw(keys.slice(0, truncK ? k : V), mx, P, m24);
    } else if (truncK && k <= cap) {
      trace.path = 'list';
      tok = listDraw(m.gatherSorted(m.radixSelect(null, false, 0n, BigInt(k)).key), mx, P, m24);
    } else {
      trace.path = 'row';
      tok = rowDraw(m, mx, best, truncK, sorted, P, m24);
    }
  }
  out.tokens[r] = tok;
  const maxTopN = packed.maxTopN;
  for (let t = 0; t < maxTopN; t++) {
    out.topIds[r * maxTopN + t] = -1;
    out.topLogprobs[r * maxTopN + t] = -Infinity;
  }
  if (P.logprobs < 0) {
    out.logprobs[r] = NaN;
    return trace;
  }
  // lse: per-thread strided sums, then the block tree (double exp for V <= CAP, else f32 Kahan).
  const part = new Float64Array(NT);
  for (let t = 0; t < NT; t++) {
    if (V <= LIST_CAP) {
      let acc = 0;
      for (let i = t; i < V; i += NT) acc += Math.exp(row[i] - mx);
      part[t] = acc;
    } else {
      let acc = 0, comp = 0;
      for (let i = t; i < V; i += NT) {
        const y = fround(fround(Math.exp(fround(row[i] - mx))) - comp);
        const s = fround(acc + y);
        comp = fround(fround(s - acc) - y);
        acc = s;
      }
      part[t] = acc - comp;
    }
  }
  const lse = mx + Math.log(blockSum(part));
  out.logprobs[r] = row[tok] - lse;
  const n = Math.min(P.logprobs, V, maxTopN, MAX_TOP);
  if (n > 0) {
    const top = m.gatherSorted(m.radixSelect(null, false, 0n, BigInt(n)).key);
    top.forEach((o, rank) => {
      out.topIds[r * maxTopN + rank] = okeyId(o);
      out.topLogprobs[r * maxTopN + rank] = fval(okeyF(o)) - lse;
    });
  }
  return trace;
}

/** The whole launch: pack, run every row, read back. */
export function modelSample(rows: { logits: Float32Array; row: SamplingRow }[], cap = LIST_CAP): { results: SampleResult[]; traces: Trace[] } {
  const V = rows[0].logits.length;
  const packed = packSamplingRows(rows.map((x) => x.row));
  const logits = new Float32Array(rows.length * V);
  rows.forEach((x, r) => logits.set(x.logits, r * V));
  const out: SamplingOutputs = {
    tokens: new Int32Array(rows.length),
    logprobs: new Float32Array(rows.length),
    topIds: new Int32Array(rows.length * packed.maxTopN),
    topLogprobs: new Float32Array(rows.length * packed.maxTopN),
  };
  const traces = rows.map((_, r) => modelKernel(logits, V, packed, r, out, cap));
  return { results: readSamplingResults(rows.map((x) => x.row), out, packed.maxTopN), traces };
}

