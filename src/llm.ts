/**
 * Tessera's library API:
 *
 *   const llm = await Tessera.load(dir);
 *   for await (const chunk of llm.generate('In the beginning', { maxTokens: 64 })) process.stdout.write(chunk.text);
 *
 * The front end holds the tokenizer and turns token ids into text (incremental detokenization,
 * stop strings). The engine core below it sees token ids only and runs continuous batching, in
 * this thread or (engineThread: 'worker') in a worker thread of its own: every concurrent
 * request shares the same steps.
 */
import { fileURLToPath } from 'node:url';
import type { LoadProgress } from './backend/backend.js';
import { buildEngine, inspectModel, type EngineOptions, type ModelInfo } from './engine/build.js';
import { InProcessCore, type EngineCore, type EngineStats } from './engine/core.js';
import type { LLMEngine, SeqOutput } from './engine/engine.js';
import { StopStringFilter } from './engine/stop_strings.js';
import { WorkerCore } from './engine/worker_core.js';
import { TesseraError } from './errors.js';
import { openCheckpoint } from './formats/checkpoint.js';
import { isSynthetic } from './formats/synthetic.js';
import type { ModelConfig } from './formats/hf_config.js';
import type { ModelRunner } from './runner/model_runner.js';
import { resolveSamplingParams, type SamplingParams } from './sampling/params.js';
import type { TokenLogprob } from './sampling/sampler.js';
import type { FinishReason } from './scheduler/sequence.js';
import { IncrementalDetokenizer } from './tokenizer/detokenizer.js';
import { TesseraTokenizer, type ChatMessage } from './tokenizer/tokenizer.js';
import { AsyncQueue } from './util/async_queue.js';

export type { ModelInfo, EngineOptions, EngineStats };

/** The demo model shipped in the package: a byte-level Llama trained on the King James Bible. */
export const DEMO_MODEL_DIR = fileURLToPath(new URL('../models/demo', import.meta.url));

export interface TesseraOptions extends EngineOptions {
  /** 'main' (default) steps the engine on this thread; 'worker' gives it a thread of its own. */
  engineThread?: 'main' | 'worker';
  onProgress?: (p: LoadProgress) => void;
}

export interface GenerateOptions extends Partial<SamplingParams> {
  signal?: AbortSignal;
}

export interface SubmitOptions extends GenerateOptions {
  /** Independent samples of the prompt (one prefill, shared KV blocks). */
  n?: number;
  /** Lower runs first (default 0). */
  priority?: number;
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
  /** On the last chunk of a sample. */
  usage?: { promptTokens: number; completionTokens: number; cachedPromptTokens: number };
}

/** A chunk of one of a request's samples. */
export interface SampleChunk extends GenerationChunk {
  index: number;
}

/** A submitted request: its chunks (all samples, interleaved) and a way to end it. */
export interface RequestHandle extends AsyncIterableIterator<SampleChunk> {
  readonly id: string;
  readonly numPromptTokens: number;
  abort(): void;
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  usage: { promptTokens: number; completionTokens: number; cachedPromptTokens: number };
}

/** The text side of one sample: detokenizer and stop strings. */
class SampleStream {
  private readonly detok: IncrementalDetokenizer;
  private readonly stops: StopStringFilter;
  finished = false;

  constructor(
    readonly index: number,
    private readonly tokenizer: TesseraTokenizer,
    promptIds: number[],
    params: SamplingParams,
  ) {
    this.detok = new IncrementalDetokenizer(tokenizer, { promptIds, skipSpecialTokens: true });
    this.stops = new StopStringFilter(params.stop);
  }

  /** Turns one engine output into a chunk; `stoppedByString` asks the caller to end the sample. */
  consume(o: SeqOutput): { chunk: SampleChunk; stoppedByString: boolean } {
    const chunk: SampleChunk = { index: this.index, text: '', tokenIds: [], finishReason: o.finishReason };
    let stoppedByString = false;
    const addText = (text: string) => {
      const r = this.stops.push(text);
      chunk.text += r.text;
      if (r.stopped) stoppedByString = true;
    };
    if (o.tokenId !== undefined) {
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
      this.finished = true;
      chunk.usage = { promptTokens: o.numPromptTokens, completionTokens: o.numOutputTokens, cachedPromptTokens: o.numCachedTokens };
    }
    return { chunk, stoppedByString: stoppedByString && o.finishReason === null };
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

/** A request in flight on the front end. */
class PendingRequest {
  readonly queue: AsyncQueue<SampleChunk>;
  readonly samples: SampleStream[];

  constructor(
    readonly id: string,
    tokenizer: TesseraTokenizer,
    promptIds: number[],
    params: SamplingParams,
    n: number,
    onCancel: () => void,
  ) {
    this.queue = new AsyncQueue<SampleChunk>(onCancel);
    this.samples = Array.from({ length: n }, (_, i) => new SampleStream(i, tokenizer, promptIds, params));
  }

  get done(): boolean {
    return this.samples.every((s) => s.finished);
  }
}

export class Tessera {
  private readonly pending = new Map<string, PendingRequest>();
  private nextRequest = 0;
  private closed = false;

  private constructor(
    readonly tokenizer: TesseraTokenizer,
    readonly core: EngineCore,
    private readonly generationDefaults: Partial<SamplingParams>,
  ) {
    core.onOutputs = (outputs) => this.dispatch(outputs);
    core.onFatal = (err) => this.failAll(err);
  }

  /** Loads a Hugging Face model directory (default: the demo model). */
  static async load(dir: string = DEMO_MODEL_DIR, opts: TesseraOptions = {}): Promise<Tessera> {
    const { engineThread = 'main', onProgress, ...engineOpts } = opts;
    const ckpt = await openCheckpoint(dir);
    await ckpt.weights.close();
    // Synthetic models have no files; they use the demo model's byte-level tokenizer.
    const tokenizer = await TesseraTokenizer.load(isSynthetic(dir) ? DEMO_MODEL_DIR : dir);
    let core: EngineCore;
    if (engineThread === 'worker') {
      core = await WorkerCore.start({ dir, opts: engineOpts, eosTokenIds: tokenizer.eosTokenIds }, onProgress);
    } else {
      const built = await buildEngine(dir, engineOpts, tokenizer.eosTokenIds, onProgress);
      core = new InProcessCore(built.engine, built.info);
    }
    return new Tessera(tokenizer, core, ckpt.generationDefaults);
  }

  /** Describes a model without reading its weights: architecture, parameters, dtypes, memory. */
  static inspect(dir: string = DEMO_MODEL_DIR, opts: EngineOptions = {}): Promise<ModelInfo> {
    return inspectModel(dir, opts);
  }

  get info(): ModelInfo {
    return this.core.info;
  }

  get config(): ModelConfig {
    return this.core.info.config;
  }

  /** The engine itself, when it runs on this thread (benchmarks and tests). */
  get engine(): LLMEngine {
    if (!(this.core instanceof InProcessCore)) throw new Error('the engine runs in a worker thread');
    return this.core.engine;
  }

  get runner(): ModelRunner {
    return this.engine.runner;
  }

  /** Counters of the engine: running and waiting requests, KV blocks, prefix-cache hits. */
  stats(): EngineStats {
    return this.core.stats();
  }

  /** Requests submitted and not finished. */
  get numInFlight(): number {
    return this.pending.size;
  }

  /** Sampling defaults of this checkpoint (generation_config.json), under the caller's options. */
  samplingParams(opts: Partial<SamplingParams> = {}, fieldNames?: Partial<Record<keyof SamplingParams, string>>): SamplingParams {
    const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
    return resolveSamplingParams({ ...this.generationDefaults, ...given }, fieldNames);
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
    const result: GenerationResult = { text: '', tokenIds: [], finishReason: 'length', usage: { promptTokens: 0, completionTokens: 0, cachedPromptTokens: 0 } };
    for await (const chunk of this.generate(prompt, opts)) {
      result.text += chunk.text;
      result.tokenIds.push(...chunk.tokenIds);
      if (chunk.finishReason) result.finishReason = chunk.finishReason;
      if (chunk.usage) result.usage = chunk.usage;
    }
    return result;
  }

  /**
   * Submits token ids: n samples whose chunks arrive interleaved (each with its index). Throws a
   * TesseraError at once for invalid options or a request that cannot fit the context or pool.
   */
  submit(promptIds: number[], opts: SubmitOptions = {}): RequestHandle {
    if (this.closed) throw new TesseraError('The model was closed.', 'aborted');
    const { signal, n = 1, priority, ...sampling } = opts;
    if (!Number.isSafeInteger(n) || n < 1 || n > 64) throw new TesseraError(`n must be a whole number from 1 to 64; got ${n}.`, 'invalid_input');
    const params = this.samplingParams(sampling);
    if (signal?.aborted) throw signal.reason ?? new TesseraError('The request was aborted.', 'aborted');
    const id = `req-${this.nextRequest++}`;
    const request = new PendingRequest(id, this.tokenizer, promptIds, params, n, () => this.cancel(id));
    this.core.add({ requestId: id, promptIds, params, n, priority });
    this.pending.set(id, request);
    const handle = request.queue as AsyncQueue<SampleChunk> & { id: string; numPromptTokens: number; abort(): void };
    Object.assign(handle, { id, numPromptTokens: promptIds.length, abort: () => handle.return() });
    if (signal) {
      const onAbort = () => {
        this.cancel(id);
        request.queue.fail(signal.reason ?? new TesseraError('The request was aborted.', 'aborted'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      request.queue.onSettle(() => signal.removeEventListener('abort', onAbort));
    }
    return handle;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.failAll(new TesseraError('The model was closed.', 'aborted'));
    await this.core.close();
  }

  private dispatch(outputs: SeqOutput[]): void {
    for (const o of outputs) {
      const request = this.pending.get(o.requestId);
      if (!request) continue;
      const sample = request.samples[o.sampleIndex];
      if (sample.finished) continue;
      const { chunk, stoppedByString } = sample.consume(o);
      if (stoppedByString) this.core.abort(o.requestId, o.sampleIndex);
      if (chunk.text || chunk.tokenIds.length || chunk.finishReason) request.queue.push(chunk);
      if (request.done) {
        request.queue.end();
        this.pending.delete(o.requestId);
      }
    }
  }

  private cancel(id: string): void {
    if (!this.pending.delete(id)) return;
    this.core.abort(id);
  }

  private failAll(err: unknown): void {
    for (const [id, r] of this.pending) {
      this.core.abort(id);
      r.queue.fail(err);
    }
    this.pending.clear();
  }
}
