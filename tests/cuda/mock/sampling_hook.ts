/**
 * The stand-in libcuda's ts_sample_f32: a launch hook that reads the launch's buffers through the
 * driver, runs the JavaScript model of the kernel (../sampling_model.ts) on every row and writes
 * the outputs back, as the kernel would. `logitsFor`, when given, first replaces the logits (the
 * stand-in's model kernels compute nothing, so an engine test makes them up here).
 */
import type { CudaDriver } from '../../../src/backend/cuda/driver.js';
import { PARAM_OFFSETS, ROW_BYTES, SAMPLE_F32, SAMPLING_THREADS, type PackedSampling, type SamplingOutputs } from '../../../src/backend/cuda/ops/sampling.js';
import { modelKernel } from '../sampling_model.js';
import { unpackArgs, type LaunchRecord } from './mock.js';

export interface SampledLaunch {
  /** The logits as the kernel found them (before penalties). */
  logits: Float32Array;
  vocab: number;
  rows: number;
}

export function samplingKernelHook(driver: CudaDriver, launches: SampledLaunch[], logitsFor?: (rows: number, vocab: number) => Float32Array): (l: LaunchRecord) => void {
  return (l) => {
    if (l.name !== SAMPLE_F32.name) return;
    if (l.block[0] !== SAMPLING_THREADS) throw new Error(`ts_sample_f32 launched with ${l.block[0]} threads`);
    const a = unpackArgs(l.args, SAMPLE_F32);
    const rows = l.grid[0], vocab = Number(a.vocab), maxTopN = Number(a.maxTopN);
    let logits: Float32Array;
    if (logitsFor) {
      logits = logitsFor(rows, vocab);
      driver.copyToDevice(a.logits as bigint, logits);
    } else {
      logits = new Float32Array(rows * vocab);
      driver.copyToHost(logits, a.logits as bigint);
    }
    launches.push({ logits: logits.slice(), vocab, rows });
    const params = new Uint8Array(rows * ROW_BYTES);
    driver.copyToHost(params, a.params as bigint);
    const view = new DataView(params.buffer);
    const O = PARAM_OFFSETS;
    let n = 1;
    for (let r = 0; r < rows; r++) {
      const at = (off: number) => view.getInt32(r * ROW_BYTES + off, true);
      n = Math.max(n, at(O.repStart) + at(O.repCount), at(O.outStart) + at(O.outCount));
    }
    const ids = new Int32Array(n), counts = new Int32Array(n);
    driver.copyToHost(ids, a.ids as bigint);
    driver.copyToHost(counts, a.counts as bigint);
    const packed: PackedSampling = { params: params.buffer, ids, counts, rows, maxTopN };
    const out: SamplingOutputs = { tokens: new Int32Array(rows), logprobs: new Float32Array(rows), topIds: new Int32Array(rows * maxTopN), topLogprobs: new Float32Array(rows * maxTopN) };
    for (let r = 0; r < rows; r++) modelKernel(logits, vocab, packed, r, out);
    driver.copyToDevice(a.logits as bigint, logits);
    driver.copyToDevice(a.outTokens as bigint, out.tokens);
    driver.copyToDevice(a.outLogprobs as bigint, out.logprobs);
    if (maxTopN > 0) {
      driver.copyToDevice(a.outTopIds as bigint, out.topIds);
      driver.copyToDevice(a.outTopLogprobs as bigint, out.topLogprobs);
    }
  };
}
