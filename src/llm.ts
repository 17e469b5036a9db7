/**
 * Tessera's library API:
 *
 *   const llm = await Tessera.load(dir);
 *   for await (const chunk of llm.generate('In the beginning', { maxTokens: 64 })) process.stdout.write(chunk.text);
 *
 * The front end holds the tokenizer and turns token ids into text (incremental detokenization,
 * stop strings); the engine core below it sees token ids only and runs continuous batching:
 * every concurrent generate() call shares the same steps.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LoadProgress, MemoryReport } from './backend/backend.js';
import { selectBackend, type DeviceChoice } from './backend/select.js';
import { LLMEngine, type SeqOutput } from './engine/engine.js';
import { StopStringFilter } from './engine/stop_strings.js';
import { TesseraError } from './errors.js';
import { openCheckpoint, type Checkpoint } from './formats/checkpoint.js';
import type { ModelConfig } from './formats/hf_config.js';
import type { Program } from './graph/program.js';
import { ModelRunner } from './runner/model_runner.js';
import { resolveSamplingParams, type SamplingParams } from './sampling/params.js';
import type { TokenLogprob } from './sampling/sampler.js';
import { BlockManager } from './scheduler/block_manager.js';
import { Scheduler } from './scheduler/scheduler.js';
import type { FinishReason } from './scheduler/sequence.js';
import { IncrementalDetokenizer } from './tokenizer/detokenizer.js';
import { TesseraTokenizer, type ChatMessage } from './tokenizer/tokenizer.js';
import { AsyncQueue } from './util/async_queue.js';

/** The demo model shipped in the package: a byte-level Llama trained on the King James Bible. */
export const DEMO_MODEL_DIR = fileURLToPath(new URL('../models/demo', import.meta.url));

export interface TesseraOptions {
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
  /** Bytes for the KV cache (default: room for maxNumSeqs full contexts, at most 1 GiB on the CPU). */
  kvCacheBytes?: number;
  onProgress?: (p: LoadProgress) => void;
}

export interface GenerateOptions extends Partial<SamplingParams> {
  signal?: AbortSignal;
}

export interface ChunkLogprob {
  tokenId: number;
  token: string;
  logprob: number;
  top?: Array<TokenLogprob & { token: string }>;
}

export interface GenerationChunk {
  /** New text since the previous chunk (may be empty while UTF-8 or a stop string is pending). */
  text: string;
  /** Token ids sampled since the previous chunk. */
  tokenIds: number[];
  logprobs?: ChunkLogprob[];
  finishReason: FinishReason | null;
  /** On the last chunk. */
  usage?: { promptTokens: number; completionTokens: number };
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  usage: { promptTokens: number; completionTokens: number };
}

export interface ModelInfo {
  dir: string;
  config: ModelConfig;
  device: string;
  numParameters: number;
  /** Stored dtype -> number of tensors. */
  dtypes: Record<string, number>;
  memory: MemoryReport;
  kvCacheBlocks: number;
  kvBlockSize: number;
  kvBytesPerToken: number;
  maxModelLen: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  unusedTensors: string[];
}

/** One in-flight request of the front end: detokenizer, stop strings, and the consumer's queue. */
class RequestStream {
  readonly queue: AsyncQueue<GenerationChunk>;
  private readonly detok: IncrementalDetokenizer;
  private readonly stops: StopStringFilter;
  private completionTokens = 0;

  constructor(
    readonly id: string,
    private readonly tokenizer: TesseraTokenizer,
    promptIds: number[],
    params: SamplingParams,
    onCancel: () => void,
  ) {
    this.queue = new AsyncQueue<GenerationChunk>(onCancel);
    this.detok = new IncrementalDetokenizer(tokenizer, { promptIds, skipSpecialTokens: true });
    this.stops = new StopStringFilter(params.stop);
  }

  /** Consumes one engine output; returns true if a stop string ended the request here. */
  onOutput(o: SeqOutput): boolean {
    const chunk: GenerationChunk = { text: '', tokenIds: [], finishReason: o.finishReason };
    let stoppedByString = false;
    const addText = (text: string) => {
      const r = this.stops.push(text);
      chunk.text += r.text;
      if (r.stopped) stoppedByString = true;
    };
    if (o.tokenId !== undefined) {
      this.completionTokens = o.numOutputTokens;
      chunk.tokenIds.push(o.tokenId);
      if (o.logprob !== undefined) chunk.logprobs = [this.logprobEntry(o)];
      if (!o.stoppedOnToken) addText(this.detok.push(o.tokenId));
    }
    if (chunk.finishReason !== null && !stoppedByString) {
      addText(this.detok.flush());
      if (!stoppedByString) chunk.text += this.stops.flush();
    }
    if (stoppedByString) chunk.finishReason = 'stop';
    if (chunk.finishReason !== null) {
      chunk.usage = { promptTokens: o.numPromptTokens, completionTokens: this.completionTokens };
      this.queue.push(chunk);
      this.queue.end();
    } else if (chunk.text || chunk.tokenIds.length) {
      this.queue.push(chunk);
    }
    return stoppedByString && o.finishReason === null;
  }

  private logprobEntry(o: SeqOutput): ChunkLogprob {
    const token = (id: number) => this.tokenizer.decode([id]);
    return {
      tokenId: o.tokenId!,
      token: token(o.tokenId!),
      logprob: o.logprob!,
      top: o.topLogprobs?.map((t) => ({ ...t, token: token(t.tokenId) })),
    };
  }

}

export class Tessera {
  private readonly streams = new Map<string, RequestStream>();
  private looping = false;
  private nextRequest = 0;
  private closed = false;

  private constructor(
    readonly checkpoint: Checkpoint,
    readonly tokenizer: TesseraTokenizer,
    readonly runner: ModelRunner,
    readonly engine: LLMEngine,
    readonly info: ModelInfo,
    /** Why this device was chosen, for the user. */
    readonly deviceReason: string,
  ) {}

  /** Loads a Hugging Face model directory (default: the demo model). */
  static async load(dir: string = DEMO_MODEL_DIR, opts: TesseraOptions = {}): Promise<Tessera> {
    const ckpt = await openCheckpoint(dir);
    try {
      const tokenizer = await TesseraTokenizer.load(dir);
      const { backend, reason } = await selectBackend(opts.device ?? 'auto');
      const settings = engineSettings(ckpt.config, opts);
      const runner = ModelRunner.prepare(ckpt, backend, {
        kvBlockSize: settings.kvBlockSize,
        maxNumBatchedTokens: settings.maxNumBatchedTokens,
        maxLogitRows: settings.maxLogitRows,
        fuse: opts.fuse,
      });
      const numBlocks = kvCacheBlocks(runner, settings, opts);
      await runner.load(opts.onProgress);
      backend.allocateKvCache(numBlocks);
      const blocks = new BlockManager(numBlocks, settings.kvBlockSize, { prefixCaching: opts.prefixCaching ?? true, cacheSalt: path.resolve(dir) });
      const scheduler = new Scheduler(
        { maxNumSeqs: settings.maxNumSeqs, maxNumBatchedTokens: settings.maxNumBatchedTokens, maxModelLen: settings.maxModelLen },
        blocks,
      );
      const engine = new LLMEngine(runner, scheduler, tokenizer.eosTokenIds);
      const info = describe(ckpt, runner, backend.describe(), numBlocks, settings);
      return new Tessera(ckpt, tokenizer, runner, engine, info, reason);
    } finally {
      await ckpt.weights.close();
    }
  }

  /**
   * Describes a model without reading its weights: architecture, parameters, dtypes, and the
   * memory it would need on the chosen device with these settings.
   */
  static async inspect(dir: string = DEMO_MODEL_DIR, opts: TesseraOptions = {}): Promise<ModelInfo> {
    const ckpt = await openCheckpoint(dir);
    try {
      const { backend } = await selectBackend(opts.device ?? 'auto');
      const settings = engineSettings(ckpt.config, opts);
      const runner = ModelRunner.prepare(ckpt, backend, {
        kvBlockSize: settings.kvBlockSize,
        maxNumBatchedTokens: settings.maxNumBatchedTokens,
        maxLogitRows: settings.maxLogitRows,
        fuse: opts.fuse,
      });
      const numBlocks = kvCacheBlocks(runner, settings, opts);
      return describe(ckpt, runner, backend.describe(), numBlocks, settings);
    } finally {
      await ckpt.weights.close();
    }
  }

  get config(): ModelConfig {
    return this.checkpoint.config;
  }

  /** Sampling defaults of this checkpoint (generation_config.json), under the caller's options. */
  samplingParams(opts: Partial<SamplingParams> = {}, fieldNames?: Partial<Record<keyof SamplingParams, string>>): SamplingParams {
    const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
    return resolveSamplingParams({ ...this.checkpoint.generationDefaults, ...given }, fieldNames);
  }

  /** Streams the continuation of a prompt (text, or token ids used as they are). */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): AsyncIterableIterator<GenerationChunk> {
    const promptIds = typeof prompt === 'string' ? this.tokenizer.encode(prompt) : [...prompt];
    return this.submit(promptIds, opts);
  }

  /** Streams the assistant's reply to a conversation, rendered through the checkpoint's chat template. */
  chat(messages: ChatMessage[], opts: GenerateOptions = {}): AsyncIterableIterator<GenerationChunk> {
    return this.submit(this.tokenizer.encodeChat(messages, { addGenerationPrompt: true }), opts);
  }

  /** Generates to the end and returns the whole text. */
  async complete(prompt: string | readonly number[], opts: GenerateOptions = {}): Promise<GenerationResult> {
    const result: GenerationResult = { text: '', tokenIds: [], finishReason: 'length', usage: { promptTokens: 0, completionTokens: 0 } };
    for await (const chunk of this.generate(prompt, opts)) {
      result.text += chunk.text;
      result.tokenIds.push(...chunk.tokenIds);
      if (chunk.finishReason) result.finishReason = chunk.finishReason;
      if (chunk.usage) result.usage = chunk.usage;
    }
    return result;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.streams.values()) s.queue.fail(new TesseraError('The model was closed.', 'aborted'));
    this.streams.clear();
    await this.runner.backend.dispose();
  }

  private submit(promptIds: number[], opts: GenerateOptions): AsyncIterableIterator<GenerationChunk> {
    if (this.closed) throw new TesseraError('The model was closed.', 'aborted');
    const { signal, ...sampling } = opts;
    const params = this.samplingParams(sampling);
    const id = `req-${this.nextRequest++}`;
    if (signal?.aborted) throw signal.reason ?? new TesseraError('The request was aborted.', 'aborted');
    const stream = new RequestStream(id, this.tokenizer, promptIds, params, () => this.cancel(id));
    this.engine.addRequest({ requestId: id, promptIds, params });
    this.streams.set(id, stream);
    if (signal) {
      const onAbort = () => {
        this.cancel(id);
        stream.queue.fail(signal.reason ?? new TesseraError('The request was aborted.', 'aborted'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      stream.queue.next = wrapNext(stream.queue, () => signal.removeEventListener('abort', onAbort));
    }
    void this.runLoop();
    return stream.queue;
  }

  private cancel(id: string): void {
    this.engine.abort(id);
    this.streams.delete(id);
  }

  private async runLoop(): Promise<void> {
    if (this.looping) return;
    this.looping = true;
    try {
      while (this.engine.hasUnfinished && !this.closed) {
        const outputs = await this.engine.step();
        for (const o of outputs) {
          const stream = this.streams.get(o.requestId);
          if (!stream) continue;
          if (stream.onOutput(o)) this.engine.abort(o.requestId);
          if (stream.queue.finished) this.streams.delete(o.requestId);
        }
        // Let I/O, new requests and aborts in between steps.
        await new Promise((resolve) => setImmediate(resolve));
      }
    } catch (err) {
      for (const [id, s] of this.streams) {
        this.engine.abort(id);
        s.queue.fail(err);
      }
      this.streams.clear();
    } finally {
      this.looping = false;
    }
  }
}

/** Removes the abort listener once the consumer has seen the end. */
function wrapNext<T>(queue: AsyncQueue<T>, cleanup: () => void): () => Promise<IteratorResult<T>> {
  const next = queue.next.bind(queue);
  return async () => {
    try {
      const r = await next();
      if (r.done) cleanup();
      return r;
    } catch (err) {
      cleanup();
      throw err;
    }
  };
}

interface EngineSettings {
  kvBlockSize: number;
  maxLogitRows: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxModelLen: number;
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) throw new TesseraError(`${name} must be a whole number >= 1; got ${value}.`, 'invalid_input');
  return v;
}

function engineSettings(config: ModelConfig, opts: TesseraOptions): EngineSettings {
  const maxModelLen = positiveInt(opts.maxModelLen, config.maxPositions, '--max-model-len');
  if (maxModelLen > config.maxPositions)
    throw new TesseraError(`--max-model-len ${maxModelLen} exceeds the model's max_position_embeddings (${config.maxPositions}).`, 'invalid_input');
  const maxNumSeqs = positiveInt(opts.maxNumSeqs, 32, '--max-num-seqs');
  return {
    kvBlockSize: positiveInt(opts.kvBlockSize, 16, '--kv-block-size'),
    maxNumSeqs,
    maxLogitRows: positiveInt(opts.maxLogitRows, maxNumSeqs, 'maxLogitRows'),
    maxNumBatchedTokens: positiveInt(opts.maxNumBatchedTokens, Math.max(1024, maxNumSeqs), '--max-num-batched-tokens'),
    maxModelLen,
  };
}

/** KV blocks for the pool: room for maxNumSeqs full contexts, capped (1 GiB on the CPU) or as given. */
function kvCacheBlocks(runner: ModelRunner, s: EngineSettings, opts: TesseraOptions): number {
  const bytesPerBlock = kvBytesPerBlock(runner.program);
  const blocksPerSeq = Math.ceil(s.maxModelLen / s.kvBlockSize);
  const budget = opts.kvCacheBytes ?? Math.min(1 << 30, blocksPerSeq * s.maxNumSeqs * bytesPerBlock);
  const numBlocks = Math.floor(budget / bytesPerBlock);
  if (numBlocks < blocksPerSeq)
    throw new TesseraError(
      `The KV cache (${budget} bytes) holds ${numBlocks * s.kvBlockSize} tokens, less than one ${s.maxModelLen}-token context; give it more memory or lower --max-model-len.`,
      'limit',
    );
  return numBlocks;
}

/** KV bytes of one block over all layers, at 4 bytes an element (the CPU backend's f32). */
function kvBytesPerBlock(program: Program): number {
  return program.states.reduce((sum, st) => sum + 2 * st.blockSize * st.numKvHeads * st.headDim * 4, 0);
}

function describe(ckpt: Checkpoint, runner: ModelRunner, device: string, numBlocks: number, s: EngineSettings): ModelInfo {
  let numParameters = 0;
  for (const w of runner.program.weights) if ('tensor' in w.source) numParameters += w.shape.reduce((a, d) => a * d, 1);
  const dtypes: Record<string, number> = {};
  for (const d of runner.weights.dtypes.values()) dtypes[d] = (dtypes[d] ?? 0) + 1;
  const bytesPerBlock = kvBytesPerBlock(runner.program);
  let weightElems = 0;
  for (const w of runner.program.weights) if (runner.program.calls.some((c) => c.inputs.some((o) => o.kind === 'weight' && o.name === w.name))) weightElems += w.shape.reduce((a, d) => a * d, 1);
  return {
    dir: ckpt.dir,
    config: ckpt.config,
    device,
    numParameters,
    dtypes,
    memory: { weightBytes: 4 * weightElems, activationBytes: 4 * runner.program.arenaSize, kvCacheBytes: numBlocks * bytesPerBlock },
    kvCacheBlocks: numBlocks,
    kvBlockSize: s.kvBlockSize,
    kvBytesPerToken: bytesPerBlock / s.kvBlockSize,
    maxModelLen: s.maxModelLen,
    maxNumSeqs: s.maxNumSeqs,
    maxNumBatchedTokens: s.maxNumBatchedTokens,
    unusedTensors: runner.weights.unused,
  };
}
