/**
 * The CPU backend: runs a Program with the reference kernels, in f32, on the calling thread.
 * Weights are widened to f32 at load; activations live in one arena planned by lowering;
 * the KV pool is one Float32Array per layer in the paged layout the CUDA backend uses.
 */
import os from 'node:os';
import { lastTransformReaders, type Operand, type Program } from '../../graph/program.js';
import type { Attrs } from '../../graph/ir.js';
import { OPS, type OpName } from '../../graph/ops.js';
import { median } from '../../util/stats.js';
import type { Backend, BackendProfiler, HostTensor, KvBudgetRequest, LoadLimits, LoadProgress, MemoryReport, StepBatch, WeightSource } from '../backend.js';
import { CPU_KERNELS } from './kernels/index.js';
import type { CpuTensor } from './tensor.js';

const INPUT_FIELDS = {
  tokenIds: 'tokenIds',
  positions: 'positions',
  slotMapping: 'slotMapping',
  logitsIndices: 'logitsIndices',
  queryStart: 'queryStart',
  contextLens: 'contextLens',
  blockTables: 'blockTables',
} as const satisfies Record<string, keyof StepBatch>;

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;
  readonly elementBytes = 4;
  private program: Program | null = null;
  private weights = new Map<string, CpuTensor>();
  private arena = new Float32Array(0);
  private kv = new Map<string, { data: Float32Array; shape: number[] }>();

  describe(): string {
    return 'cpu (f32 reference kernels, 1 thread)';
  }

  /** The host's memory bandwidth stands for the device's; steps have no device time apart from their wall time. */
  readonly profiler: BackendProfiler = {
    device: () => ({ name: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, memoryBytes: os.totalmem(), node: process.version }),
    timeSteps: () => {},
    lastStepMs: () => null,
    copyBandwidth: (bytes, runs) => {
      const n = Math.max(1, Math.floor(bytes / 8));
      const src = new Float64Array(n).fill(1.5), dst = new Float64Array(n);
      dst.set(src);
      const seconds: number[] = [];
      for (let r = 0; r < runs; r++) {
        const t0 = performance.now();
        dst.set(src);
        seconds.push((performance.now() - t0) / 1000);
      }
      return (2 * 8 * n) / median(seconds);
    },
  };

  async load(program: Program, source: WeightSource, _limits: LoadLimits, onProgress?: (p: LoadProgress) => void): Promise<void> {
    this.program = program;
    const used = new Set<string>();
    for (const call of program.calls) for (const o of call.inputs) if (o.kind === 'weight') used.add(o.name);
    const bytes = (shape: number[]) => 4 * shape.reduce((a, d) => a * d, 1);
    const totalBytes = program.weights.reduce((s, w) => s + ('tensor' in w.source ? bytes(w.shape) : 0), 0);
    // A tensor no call reads goes once the last transform that reads it has run.
    const lastReader = lastTransformReaders(program.weights);
    let loadedBytes = 0;
    for (const [i, w] of program.weights.entries()) {
      let data: Float32Array;
      if ('tensor' in w.source) {
        data = await source.readF32(w.source.tensor);
        loadedBytes += data.byteLength;
        onProgress?.({ loadedBytes, totalBytes, name: w.name });
      } else {
        data = new Float32Array(w.shape.reduce((a, d) => a * d, 1));
        const inputs = w.source.inputs.map((n) => this.weights.get(n)!);
        const output = { data, shape: w.shape };
        CPU_KERNELS[w.source.op]({ inputs, output, outputs: [output], attrs: w.source.attrs, step: EMPTY_STEP });
        for (const name of w.source.inputs) if (lastReader.get(name) === i && !used.has(name)) this.weights.delete(name);
      }
      this.weights.set(w.name, { data, shape: w.shape });
    }
    // Raw tensors that only fed load-time transforms are no longer needed.
    for (const name of [...this.weights.keys()]) if (!used.has(name)) this.weights.delete(name);
    this.arena = new Float32Array(program.arenaSize);
  }

  /** On the CPU: what was asked, else room for every full context up to 1 GiB. */
  kvCacheBudget(req: KvBudgetRequest): number {
    return req.requestedBytes ?? Math.min(1 << 30, req.fullBytes);
  }

  async runOp(op: OpName, attrs: Attrs, inputs: HostTensor[], outputShapes: number[][], step: StepBatch): Promise<HostTensor[]> {
    const spec = OPS[op];
    // A state output is the op's KV-cache input, updated in place.
    const state = spec.stateOutputs ? inputs.find((t) => t.shape.length === 5) : undefined;
    const outputs = outputShapes.map((shape, i): HostTensor => {
      if (spec.stateOutputs?.includes(i)) return state!;
      return { data: new Float32Array(shape.reduce((a, d) => a * d, 1)).fill(NaN), shape };
    });
    CPU_KERNELS[op]({ inputs, output: outputs[0], outputs, attrs, step });
    return outputs;
  }

  kvBytesPerBlock(): number {
    return this.requireProgram().states.reduce((s, st) => s + 2 * st.blockSize * st.numKvHeads * st.headDim * 4, 0);
  }

  allocateKvCache(numBlocks: number): void {
    this.kv.clear();
    for (const st of this.requireProgram().states) {
      const shape = [2, numBlocks, st.blockSize, st.numKvHeads, st.headDim];
      this.kv.set(st.name, { data: new Float32Array(shape.reduce((a, d) => a * d, 1)), shape });
    }
  }

  copyBlocks(pairs: Array<[number, number]>): void {
    for (const { data, shape } of this.kv.values()) {
      const blockElems = shape[2] * shape[3] * shape[4];
      const half = data.length / 2;
      for (const [src, dst] of pairs) {
        for (const base of [0, half]) data.copyWithin(base + dst * blockElems, base + src * blockElems, base + (src + 1) * blockElems);
      }
    }
  }

  async execute(step: StepBatch): Promise<Float32Array> {
    const program = this.requireProgram();
    if (this.kv.size === 0) throw new Error('execute before allocateKvCache');
    if (step.numTokens > program.maxTokens) throw new Error(`step has ${step.numTokens} tokens; the program was planned for ${program.maxTokens}`);
    if (step.numLogitRows > program.maxLogitRows) throw new Error(`step wants ${step.numLogitRows} logit rows; planned for ${program.maxLogitRows}`);
    const buffers = new Map(program.activations.map((b) => [b.id, b]));
    const rowsOf = (r: 'T' | 'S' | number) => (r === 'T' ? step.numTokens : r === 'S' ? step.numLogitRows : r);
    const resolve = (o: Operand): CpuTensor => {
      switch (o.kind) {
        case 'weight':
          return this.weights.get(o.name)!;
        case 'state':
          return this.kv.get(o.name)!;
        case 'input': {
          const data = step[INPUT_FIELDS[o.name as keyof typeof INPUT_FIELDS]] as Int32Array;
          const shape = o.name === 'blockTables' ? [step.numSeqs, step.blockTableWidth] : [data.length];
          return { data, shape };
        }
        case 'activation': {
          const b = buffers.get(o.id)!;
          const rows = rowsOf(b.rows);
          return { data: this.arena.subarray(b.offset, b.offset + rows * b.cols), shape: [rows, b.cols] };
        }
      }
    };
    for (const call of program.calls) {
      const outputs = call.outputs.map(resolve);
      CPU_KERNELS[call.op]({ inputs: call.inputs.map(resolve), output: outputs[0], outputs, attrs: call.attrs, step });
    }
    return (resolve(program.logits).data as Float32Array).slice();
  }

  memory(): MemoryReport {
    let weightBytes = 0;
    for (const w of this.weights.values()) weightBytes += w.data.byteLength;
    let kvCacheBytes = 0;
    for (const k of this.kv.values()) kvCacheBytes += k.data.byteLength;
    return { weightBytes, activationBytes: this.arena.byteLength, kvCacheBytes };
  }


  async dispose(): Promise<void> {
    this.weights.clear();
    this.kv.clear();
    this.arena = new Float32Array(0);
    this.program = null;
  }

  private requireProgram(): Program {
    if (!this.program) throw new Error('the CPU backend has no program loaded');
    return this.program;
  }
}

const EMPTY_STEP: StepBatch = {
  numTokens: 0,
  numSeqs: 0,
  numLogitRows: 0,
  tokenIds: new Int32Array(0),
  positions: new Int32Array(0),
  slotMapping: new Int32Array(0),
  queryStart: new Int32Array(1),
  contextLens: new Int32Array(0),
  blockTables: new Int32Array(0),
  blockTableWidth: 0,
  logitsIndices: new Int32Array(0),
};
