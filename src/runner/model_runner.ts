/**
 * The model runner: owns the compiled Program on a backend and turns what the scheduler chose
 * into a StepBatch (token ids, positions, slot mapping, block tables, prefix offsets), runs it,
 * and hands back the logits of the rows that sample.
 */
import type { Backend, LoadLimits, LoadProgress, StepBatch } from '../backend/backend.js';
import type { Checkpoint } from '../formats/checkpoint.js';
import type { ModelConfig } from '../formats/hf_config.js';
import type { Graph } from '../graph/ir.js';
import { lower } from '../graph/lower.js';
import { buildModelGraph } from '../graph/models/index.js';
import { optimize } from '../graph/passes/index.js';
import type { Program } from '../graph/program.js';
import type { SampleContext, SampleResult } from '../sampling/sampler.js';
import type { ScheduledSeq } from '../scheduler/scheduler.js';
import { bindWeights, type BoundWeights } from './weights.js';

export interface RunnerOptions {
  kvBlockSize: number;
  /** Token budget of one step: the Program's T is planned for it. */
  maxNumBatchedTokens: number;
  /** Logit rows of one step at most (one per sampling sequence). */
  maxLogitRows: number;
  /** Run the fusion passes (default); false runs the graph as the model builder wrote it. */
  fuse?: boolean;
}

export class ModelRunner {
  private constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    readonly graph: Graph,
    readonly program: Program,
    readonly weights: BoundWeights,
    readonly kvBlockSize: number,
  ) {}

  /** Builds, lowers and binds the model; checks every weight before reading any. */
  static prepare(ckpt: Checkpoint, backend: Backend, opts: RunnerOptions): ModelRunner {
    const built = buildModelGraph(ckpt.config, { kvBlockSize: opts.kvBlockSize });
    const graph = opts.fuse === false ? built : optimize(built).graph;
    const program = lower(graph, { maxTokens: opts.maxNumBatchedTokens, maxLogitRows: opts.maxLogitRows });
    const weights = bindWeights(program, ckpt);
    return new ModelRunner(ckpt.config, backend, graph, program, weights, opts.kvBlockSize);
  }

  async load(limits: LoadLimits, onProgress?: (p: LoadProgress) => void): Promise<void> {
    await this.backend.load(this.program, this.weights, limits, onProgress);
  }

  get vocabSize(): number {
    return this.program.vocabSize;
  }

  /** Packs one step. Rows that sample get logits, in the order of `scheduled`. */
  prepare(scheduled: readonly ScheduledSeq[], allLogits = false): StepBatch {
    const numSeqs = scheduled.length;
    let numTokens = 0;
    let width = 1;
    for (const s of scheduled) {
      numTokens += s.numNewTokens;
      width = Math.max(width, s.seq.blockTable.length);
    }
    const tokenIds = new Int32Array(numTokens);
    const positions = new Int32Array(numTokens);
    const slotMapping = new Int32Array(numTokens);
    const queryStart = new Int32Array(numSeqs + 1);
    const contextLens = new Int32Array(numSeqs);
    const blockTables = new Int32Array(numSeqs * width);
    const logitRows: number[] = [];
    const bs = this.kvBlockSize;
    let row = 0;
    scheduled.forEach(({ seq, numNewTokens, sample }, b) => {
      queryStart[b] = row;
      const start = seq.numComputedTokens;
      for (let i = 0; i < numNewTokens; i++, row++) {
        const pos = start + i;
        tokenIds[row] = seq.tokenIds[pos];
        positions[row] = pos;
        slotMapping[row] = seq.blockTable[Math.floor(pos / bs)] * bs + (pos % bs);
        if (allLogits) logitRows.push(row);
      }
      if (sample && !allLogits) logitRows.push(row - 1);
      contextLens[b] = start + numNewTokens;
      blockTables.set(seq.blockTable, b * width);
    });
    queryStart[numSeqs] = row;
    return {
      numTokens,
      numSeqs,
      numLogitRows: logitRows.length,
      tokenIds,
      positions,
      slotMapping,
      queryStart,
      contextLens,
      blockTables,
      blockTableWidth: width,
      logitsIndices: Int32Array.from(logitRows),
    };
  }

  /** Runs one step (after its copy-on-write block copies); logits [S, vocab] for the sampling rows. */
  execute(scheduled: readonly ScheduledSeq[], blockCopies: ReadonlyArray<[number, number]> = []): Promise<Float32Array> {
    if (blockCopies.length) this.backend.copyBlocks([...blockCopies]);
    return this.backend.execute(this.prepare(scheduled));
  }

  /** Whether the backend samples on the device (executeSampled). */
  get samplesOnDevice(): boolean {
    return typeof this.backend.executeSampled === 'function';
  }

  /** Runs one step and samples on the device: rows[i] for the i-th sampling sequence of `scheduled`. */
  executeSampled(scheduled: readonly ScheduledSeq[], blockCopies: ReadonlyArray<[number, number]>, rows: readonly SampleContext[]): Promise<SampleResult[]> {
    if (!this.backend.executeSampled) throw new Error(`the ${this.backend.name} backend does not sample on the device`);
    if (blockCopies.length) this.backend.copyBlocks([...blockCopies]);
    return this.backend.executeSampled(this.prepare(scheduled), rows);
  }
}
