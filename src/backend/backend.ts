/**
 * What every backend provides: load a Program's weights once, hold the paged KV pool, and run
 * one step of the Program over a StepBatch. The runner builds StepBatches; the scheduler and
 * block manager never see a backend.
 */
import type { Attrs } from '../graph/ir.js';
import type { OpName } from '../graph/ops.js';
import type { Program } from '../graph/program.js';
import type { SampleContext, SampleResult } from '../sampling/sampler.js';

/**
 * One step's inputs, packed. T tokens from B sequences; S rows need logits.
 *   tokenIds, positions, slotMapping: [T]  (slot = block * blockSize + offset; -1 = skip)
 *   queryStart: [B + 1] prefix offsets of each sequence's tokens in the packed rows
 *   contextLens: [B] tokens in the cache for each sequence after this step's writes
 *   blockTables: [B, blockTableWidth] KV blocks of each sequence, in order (unused: 0)
 *   logitsIndices: [S] packed rows whose logits are wanted
 */
export interface StepBatch {
  numTokens: number;
  numSeqs: number;
  numLogitRows: number;
  tokenIds: Int32Array;
  positions: Int32Array;
  slotMapping: Int32Array;
  queryStart: Int32Array;
  contextLens: Int32Array;
  blockTables: Int32Array;
  blockTableWidth: number;
  logitsIndices: Int32Array;
}

/** Reads checkpoint tensors by the graph's names, widened to f32. */
export interface WeightSource {
  readF32(name: string): Promise<Float32Array>;
  /** For synthetic weights: how to make the tensor on the device instead of reading it. */
  recipe?(name: string): { kind: 'ones' } | { kind: 'uniform'; seed: number; bound: number } | null;
}

/** Sizes a backend plans its per-step buffers for. */
export interface LoadLimits {
  maxNumSeqs: number;
  maxModelLen: number;
  kvBlockSize: number;
  /**
   * The 16-bit type a GPU backend keeps weights, activations and the KV cache in (default bf16;
   * f16 for checkpoints made in float16). The CPU backend computes in f32 whatever this says.
   */
  storage?: 'bf16' | 'f16';
}

/** A tensor on the host, for running single ops (the conformance suite). */
export interface HostTensor {
  data: Float32Array | Int32Array;
  shape: number[];
}

/** One op of a step as executeChecked ran it: its inputs as they were before it ran, and its outputs. */
export interface CheckedCall {
  /** The call's index in the Program, and its label (the graph node it came from). */
  index: number;
  label: string;
  op: OpName;
  attrs: Attrs;
  /** On the host: floats widened to f32 from the device's storage type, step inputs as i32. */
  inputs: HostTensor[];
  outputs: HostTensor[];
  /** Each output's type on the device ('bf16', 'f16', 'f32'). */
  outputDtypes: string[];
}

export interface KvBudgetRequest {
  /** Bytes the caller asked for (--kv-cache-memory), if any. */
  requestedBytes?: number;
  /** Fraction of the device's memory Tessera may use in all (--gpu-memory-utilization). */
  memoryUtilization?: number;
  /** Bytes for maxNumSeqs full contexts: more is never needed. */
  fullBytes: number;
}

export interface LoadProgress {
  /** Weight bytes on the device so far and in all. */
  loadedBytes: number;
  totalBytes: number;
  name: string;
}

export interface MemoryReport {
  weightBytes: number;
  activationBytes: number;
  kvCacheBytes: number;
}

/** What benchmarks ask of a backend beyond running steps. */
export interface BackendProfiler {
  /** The device for a report: name, driver, clocks, memory. */
  device(): Record<string, string | number>;
  /** From now on, times every step on the device (costs an event pair per step). */
  timeSteps(on: boolean): void;
  /** Milliseconds the device spent on the last timed step; null when none was timed. */
  lastStepMs(): number | null;
  /** Optional: kernel launches the last step made (a replayed graph's included, sampling's too); null before any. */
  lastStepLaunches?(): number | null;
  /**
   * Copy bandwidth in bytes per second, counting the bytes read and the bytes written: the median
   * of `runs` copies of one `bytes` buffer to another (device to device on a GPU).
   */
  copyBandwidth(bytes: number, runs: number): number;
  /**
   * Optional: whether each kernel may start while the kernel before it drains (a GPU's
   * programmatic dependent launch), whether this device allows it, and one line saying which.
   */
  launchOverlap?(): { on: boolean; available: boolean; note: string };
  /** Optional: turns launch overlap on (where available) or off, so a run can measure both. */
  setLaunchOverlap?(on: boolean): void;
}

export interface Backend {
  readonly name: 'cpu' | 'cuda';
  /** Bytes of one activation or KV-cache element (4 for the CPU's f32, 2 for bf16). */
  readonly elementBytes: number;
  /** One line: the device, e.g. "cpu (f32, 1 thread)". */
  describe(): string;
  /** Which measured kernel choices the backend runs with (a GPU backend's kernels/choices table), for reports. */
  readonly kernelChoicesNote?: string;
  /** Whether a GPU backend launches kernels overlapped (programmatic dependent launch), or why not, for reports. */
  readonly launchOverlapNote?: string;
  /** Uploads every weight the Program needs and allocates its activation arena and step buffers. */
  load(program: Program, weights: WeightSource, limits: LoadLimits, onProgress?: (p: LoadProgress) => void): Promise<void>;
  /** Bytes the KV pool may take now (after load). */
  kvCacheBudget(req: KvBudgetRequest): number;
  /** Bytes one KV block takes, summed over layers (k and v). */
  kvBytesPerBlock(): number;
  /** Allocates the KV pool: numBlocks blocks per layer. */
  allocateKvCache(numBlocks: number): void;
  /** Copies whole KV blocks (copy-on-write), all layers: pairs of [src, dst]. */
  copyBlocks(pairs: Array<[number, number]>): void;
  /** Runs the Program over one step; returns logits [S, vocab], row-major, on the host. */
  execute(batch: StepBatch): Promise<Float32Array>;
  /**
   * Optional: runs the step and samples on the device, rows[i] drawing from logit row i with the
   * host sampler's semantics (src/sampling/sampler.ts); only the results cross to the host.
   * A backend without it has the engine sample execute()'s logits on the host.
   */
  executeSampled?(batch: StepBatch, rows: readonly SampleContext[]): Promise<SampleResult[]>;
  /**
   * Optional (a GPU backend): runs the step eagerly, one op at a time, stopping after each to hand
   * `check` its inputs (as they were before it ran) and outputs on the host; returns the logits as
   * execute does. For `tessera check`, which runs each op again on the CPU backend with the same
   * inputs and compares.
   */
  executeChecked?(batch: StepBatch, check: (call: CheckedCall) => Promise<void>): Promise<Float32Array>;
  memory(): MemoryReport;
  readonly profiler: BackendProfiler;
  /**
   * Runs one op on host tensors (float inputs are converted to the backend's storage type, and
   * outputs back to f32). A state input (a KV cache) is updated and returned as the op's state
   * output. For the conformance suite.
   */
  runOp(op: OpName, attrs: Attrs, inputs: HostTensor[], outputShapes: number[][], step: StepBatch): Promise<HostTensor[]>;
  dispose(): Promise<void>;
}
