/**
 * Building an engine from a model directory: settings, the runner on a backend, the KV pool
 * sized from memory, the block manager, the scheduler. Shared by the in-process engine and the
 * engine worker thread.
 */
import path from 'node:path';
import type { LoadProgress, MemoryReport } from '../backend/backend.js';
import { selectBackend, type DeviceChoice } from '../backend/select.js';
import { TesseraError } from '../errors.js';
import { openCheckpoint, type Checkpoint } from '../formats/checkpoint.js';
import { isSynthetic } from '../formats/synthetic.js';
import type { ModelConfig } from '../formats/hf_config.js';
import type { Program } from '../graph/program.js';
import { ModelRunner } from '../runner/model_runner.js';
import { BlockManager } from '../scheduler/block_manager.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { LLMEngine } from './engine.js';

export interface EngineOptions {
  device?: DeviceChoice;
  /** Tokens per KV-cache block (default 16). */
  kvBlockSize?: number;
  /** Sequences in one step, at most (default 32). */
  maxNumSeqs?: number;
  /** Tokens computed in one step, at most: prompts longer than this are prefilled in chunks (default 1024). */
  maxNumBatchedTokens?: number;
  /** Context length, at most the checkpoint's (default: the checkpoint's). */
  maxModelLen?: number;
  /** Run the graph's fusion passes (default true). */
  fuse?: boolean;
  /** Share the KV blocks of common prompt prefixes across requests (default true). */
  prefixCaching?: boolean;
  /** Rows of logits one step can return (default maxNumSeqs; more for prompt logprobs). */
  maxLogitRows?: number;
  /** Bytes for the KV cache (default: on the CPU room for maxNumSeqs full contexts up to 1 GiB; on a GPU what --gpu-memory-utilization leaves). */
  kvCacheBytes?: number;
  /** Fraction of the GPU's memory Tessera may use in all: weights, activations and KV cache (default 0.9). */
  gpuMemoryUtilization?: number;
  /** Sample on the device when the backend can (default true); false samples on the host. */
  deviceSampling?: boolean;
  /**
   * The 16-bit type a GPU keeps weights, activations and the KV cache in: auto (default) is
   * float16 for a float16 checkpoint and bfloat16 otherwise. The CPU computes in float32 always.
   */
  dtype?: 'auto' | 'bfloat16' | 'float16';
}

/** What --dtype takes. */
export const DTYPE_CHOICES = ['auto', 'bfloat16', 'float16'] as const;

export interface ModelInfo {
  dir: string;
  config: ModelConfig;
  device: string;
  /** Why this device was chosen, for the user. */
  deviceReason: string;
  /** Which measured kernel choices run (GPU backends), or null. */
  kernelChoices: string | null;
  /** Whether kernels launch overlapped (programmatic dependent launch), or why not (GPU backends), or null. */
  launchOverlap: string | null;
  numParameters: number;
  /** Stored dtype -> number of tensors. */
  dtypes: Record<string, number>;
  /** Bytes of the weights as stored in the checkpoint. */
  storedBytes: number;
  memory: MemoryReport;
  /** What the device computes in: float32 on the CPU; on a GPU the storage type (f32 accumulation). */
  computeDtype: string;
  kvCacheBlocks: number;
  kvBlockSize: number;
  kvBytesPerToken: number;
  maxModelLen: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  unusedTensors: string[];
}

export interface BuiltEngine {
  engine: LLMEngine;
  runner: ModelRunner;
  checkpoint: Checkpoint;
  info: ModelInfo;
}

interface EngineSettings {
  storage: 'bf16' | 'f16';
  kvBlockSize: number;
  maxLogitRows: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxModelLen: number;
}

/** Loads the weights and builds the engine; `eosTokenIds` come from the tokenizer's files. */
export async function buildEngine(dir: string, opts: EngineOptions, eosTokenIds: number[], onProgress?: (p: LoadProgress) => void): Promise<BuiltEngine> {
  const ckpt = await openCheckpoint(dir);
  try {
    const { backend, reason } = await selectBackend(opts.device ?? 'auto');
    const settings = engineSettings(ckpt.config, opts);
    const runner = prepareRunner(ckpt, backend, settings, opts);
    await runner.load({ maxNumSeqs: settings.maxNumSeqs, maxModelLen: settings.maxModelLen, kvBlockSize: settings.kvBlockSize, storage: settings.storage }, onProgress);
    const numBlocks = kvCacheBlocks(runner, settings, opts, (full) => backend.kvCacheBudget({ requestedBytes: opts.kvCacheBytes, memoryUtilization: opts.gpuMemoryUtilization, fullBytes: full }));
    backend.allocateKvCache(numBlocks);
    const blocks = new BlockManager(numBlocks, settings.kvBlockSize, { prefixCaching: opts.prefixCaching ?? true, cacheSalt: isSynthetic(dir) ? dir : path.resolve(dir) });
    const scheduler = new Scheduler({ maxNumSeqs: settings.maxNumSeqs, maxNumBatchedTokens: settings.maxNumBatchedTokens, maxModelLen: settings.maxModelLen }, blocks);
    const engine = new LLMEngine(runner, scheduler, eosTokenIds, { deviceSampling: opts.deviceSampling });
    return { engine, runner, checkpoint: ckpt, info: describe(ckpt, runner, backend.describe(), reason, numBlocks, settings) };
  } finally {
    await ckpt.weights.close();
  }
}

/** Describes a model without reading its weights. */
export async function inspectModel(dir: string, opts: EngineOptions): Promise<ModelInfo> {
  const ckpt = await openCheckpoint(dir);
  try {
    const { backend, reason } = await selectBackend(opts.device ?? 'auto');
    const settings = engineSettings(ckpt.config, opts);
    const runner = prepareRunner(ckpt, backend, settings, opts);
    // Without loading, the pool is estimated as on the CPU: what was asked, else full contexts up to 1 GiB.
    const numBlocks = kvCacheBlocks(runner, settings, opts, (full) => opts.kvCacheBytes ?? Math.min(1 << 30, full));
    return describe(ckpt, runner, backend.describe(), reason, numBlocks, settings);
  } finally {
    await ckpt.weights.close();
  }
}

function prepareRunner(ckpt: Checkpoint, backend: Parameters<typeof ModelRunner.prepare>[1], s: EngineSettings, opts: EngineOptions): ModelRunner {
  return ModelRunner.prepare(ckpt, backend, { kvBlockSize: s.kvBlockSize, maxNumBatchedTokens: s.maxNumBatchedTokens, maxLogitRows: s.maxLogitRows, fuse: opts.fuse });
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) throw new TesseraError(`${name} must be a whole number >= 1; got ${value}.`, 'invalid_input');
  return v;
}

function engineSettings(config: ModelConfig, opts: EngineOptions): EngineSettings {
  const maxModelLen = positiveInt(opts.maxModelLen, config.maxPositions, '--max-model-len');
  if (maxModelLen > config.maxPositions)
    throw new TesseraError(`--max-model-len ${maxModelLen} exceeds the model's max_position_embeddings (${config.maxPositions}).`, 'invalid_input');
  const maxNumSeqs = positiveInt(opts.maxNumSeqs, 32, '--max-num-seqs');
  const dtype = opts.dtype ?? 'auto';
  if (!DTYPE_CHOICES.includes(dtype)) throw new TesseraError(`--dtype must be ${DTYPE_CHOICES.join(', ')}, not "${String(dtype)}".`, 'invalid_input');
  return {
    storage: dtype === 'float16' || (dtype === 'auto' && config.dtype === 'float16') ? 'f16' : 'bf16',
    kvBlockSize: positiveInt(opts.kvBlockSize, 16, '--kv-block-size'),
    maxNumSeqs,
    maxLogitRows: positiveInt(opts.maxLogitRows, maxNumSeqs, 'maxLogitRows'),
    maxNumBatchedTokens: positiveInt(opts.maxNumBatchedTokens, Math.max(1024, maxNumSeqs), '--max-num-batched-tokens'),
    maxModelLen,
  };
}

/**
 * KV blocks for the pool: as many as the budget holds, at most room for maxNumSeqs full contexts.
 * Without an explicit --kv-cache-memory the pool holds at least one full context if that fits.
 */
function kvCacheBlocks(runner: ModelRunner, s: EngineSettings, opts: EngineOptions, budgetFor: (fullBytes: number) => number): number {
  const bytesPerBlock = kvBytesPerBlock(runner.program, runner.backend.elementBytes);
  const blocksPerSeq = Math.ceil(s.maxModelLen / s.kvBlockSize);
  const fullBlocks = blocksPerSeq * s.maxNumSeqs;
  let budget = budgetFor(fullBlocks * bytesPerBlock);
  if (opts.kvCacheBytes === undefined && runner.backend.name === 'cpu') budget = Math.max(budget, blocksPerSeq * bytesPerBlock);
  const numBlocks = Math.min(fullBlocks, Math.floor(budget / bytesPerBlock));
  if (numBlocks < blocksPerSeq)
    throw new TesseraError(
      `The KV cache (${budget} bytes) holds ${numBlocks * s.kvBlockSize} tokens, less than one ${s.maxModelLen}-token context; give it more memory or lower --max-model-len.`,
      'limit',
    );
  return numBlocks;
}

/** KV bytes of one block over all layers (k and v). */
function kvBytesPerBlock(program: Program, elementBytes: number): number {
  return program.states.reduce((sum, st) => sum + 2 * st.blockSize * st.numKvHeads * st.headDim * elementBytes, 0);
}

function describe(ckpt: Checkpoint, runner: ModelRunner, device: string, deviceReason: string, numBlocks: number, s: EngineSettings): ModelInfo {
  const { program } = runner;
  let numParameters = 0;
  for (const w of program.weights) if ('tensor' in w.source) numParameters += w.shape.reduce((a, d) => a * d, 1);
  const dtypes: Record<string, number> = {};
  for (const d of runner.weights.dtypes.values()) dtypes[d] = (dtypes[d] ?? 0) + 1;
  const bytes = runner.backend.elementBytes;
  const bytesPerBlock = kvBytesPerBlock(program, bytes);
  const usedWeights = new Set(program.calls.flatMap((c) => c.inputs.filter((o) => o.kind === 'weight').map((o) => o.name)));
  const weightElems = program.weights.filter((w) => usedWeights.has(w.name)).reduce((s2, w) => s2 + w.shape.reduce((a, d) => a * d, 1), 0);
  return {
    dir: ckpt.dir,
    config: ckpt.config,
    device,
    deviceReason,
    kernelChoices: runner.backend.kernelChoicesNote ?? null,
    launchOverlap: runner.backend.launchOverlapNote ?? null,
    numParameters,
    dtypes,
    storedBytes: runner.weights.storedBytes,
    memory: { weightBytes: bytes * weightElems, activationBytes: bytes * program.arenaSize, kvCacheBytes: numBlocks * bytesPerBlock },
    computeDtype: runner.backend.name === 'cpu' ? 'float32' : s.storage === 'f16' ? 'float16' : 'bfloat16',
    kvCacheBlocks: numBlocks,
    kvBlockSize: s.kvBlockSize,
    kvBytesPerToken: bytesPerBlock / s.kvBlockSize,
    maxModelLen: s.maxModelLen,
    maxNumSeqs: s.maxNumSeqs,
    maxNumBatchedTokens: s.maxNumBatchedTokens,
    unusedTensors: runner.weights.unused,
  };
}
