/**
 * The CUDA backend: runs a Program with Tessera's kernels (dist/kernels/tessera.fatbin) through
 * the driver API. Weights live on the device in the storage type, bf16 or fp16 (LoadLimits.storage;
 * uploaded once, or made there for synthetic checkpoints), as do the activations and the KV cache; activations in one arena planned by lowering; the logits in an f32 buffer of
 * their own; the KV pool in one allocation sized after everything else. Each step uploads its
 * inputs in one copy. Decode steps are padded to a batch-size and context bucket and replayed from
 * a CUDA graph captured on the bucket's second use (the first runs eagerly, which also sizes the
 * scratch memory and creates constant tables outside the capture). On sm_90 every kernel is
 * launched with programmatic dependent launch (launchOverlap): each one's blocks start while the
 * kernel before it drains, and wait for it in the kernel (kernels/common.cuh).
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { TesseraError } from '../../errors.js';
import type { Attrs } from '../../graph/ir.js';
import { OPS, type OpName } from '../../graph/ops.js';
import { lastTransformReaders, type Operand, type Program } from '../../graph/program.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../util/dtype.js';
import { median } from '../../util/stats.js';
import type { SampleContext, SampleResult } from '../../sampling/sampler.js';
import type { Backend, BackendProfiler, CheckedCall, HostTensor, KvBudgetRequest, LoadLimits, LoadProgress, MemoryReport, StepBatch, WeightSource } from '../backend.js';
import { loadDriver, type CudaDriver, type DeviceProperties, type DevPtr, type Handle, type TensorMapSwizzle } from './driver.js';
import { forStorage, packArgs, type ArgValue, type KernelDecl } from './kernel_decl.js';
import { chooseAttention, chooseGemm, loadChoices, type KernelChoices } from './kernel_choices.js';
import { CUDA_OPS } from './ops/index.js';
import { ATTENTION_VARIANTS } from './ops/attention.js';
import { GEMM_VARIANTS } from './ops/gemm.js';
import { elementBytes, type CudaOpContext, type DeviceStep, type DeviceTensor, type Launch, type StorageDType } from './ops/types.js';
import { MAX_TOP_N, ROW_BYTES, launchSampling, packSamplingRows, readSamplingResults, samplingOutputBytes, type PackedSampling } from './ops/sampling.js';
import { FILL, FILL_UNIFORM, PAIR_ROWS, ROPE_ROWS, SCALE_COLS, TRANSPOSE } from './ops/transform.js';

/** Where the fatbin is: next to the compiled backend (dist/), or dist/ when run from the sources. */
function fatbinPath(): string {
  const here = new URL(import.meta.url);
  const rel = here.pathname.endsWith('.ts') ? '../../../dist/kernels/tessera.fatbin' : '../../kernels/tessera.fatbin';
  return fileURLToPath(new URL(rel, here));
}

/** A quiet NaN in every element of a 32-bit word, per dtype (for poisoning outputs before a launch). */
const NAN_WORD: Record<DeviceTensor['dtype'], number> = { bf16: 0x7fc07fc0, f16: 0x7e007e00, f32: 0x7fc00000, i32: 0x7fc00000 };

/** f32 host data as the storage type's 16-bit patterns, and back. */
function toStorage(dtype: StorageDType, data: Float32Array): Uint16Array {
  const bits = new Uint16Array(data.length);
  (dtype === 'f16' ? f32ToF16 : f32ToBf16)(data, bits);
  return bits;
}
function fromStorage(dtype: StorageDType, bits: Uint16Array, out: Float32Array): void {
  (dtype === 'f16' ? f16ToF32 : bf16ToF32)(bits, out);
}
/** Tensor maps kept (oldest dropped first): eager steps of ever new token counts would add entries forever. */
const TENSOR_MAP_CACHE_ENTRIES = 4096;
/**
 * Arrival counters the backend keeps (1 MiB of i32): stream-K's one per tile (lm_head at 8192
 * rows has 32064 tiles) and decode attention's one per (sequence, kv head, row tile), which split
 * only below 4 blocks an SM.
 */
const COUNTERS = 1 << 18;

/** Batch sizes decode graphs are captured for (padded up to the next). */
const BATCH_BUCKETS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512];

interface Allocation {
  ptr: DevPtr;
  bytes: number;
}

/** An input of prepareOp: host data, or a tensor of the storage type filled on the device with uniform values in [-bound, bound). */
export type OpInput = HostTensor | { shape: number[]; uniform: { seed: number; bound: number } };

/** One op's device tensors and how to run it (CudaBackend.prepareOp). */
export interface PreparedOp {
  readonly inputs: readonly DeviceTensor[];
  readonly outputs: readonly DeviceTensor[];
  /** Enqueues the op's kernels on the backend's stream. */
  enqueue(): void;
  /** Enqueues NaN fills of the outputs (not of a state updated in place). */
  poison(): void;
  /** Waits for the stream and copies the outputs to the host as f32. */
  download(): HostTensor[];
  /** Waits for the stream and frees the op's tensors. */
  dispose(): void;
}

/** A device buffer with a pinned host buffer of the same size. */
interface StagedBuffer {
  device: DevPtr;
  host: { ptr: unknown; buffer: ArrayBuffer };
  bytes: number;
}

export interface CudaProbe {
  ok: boolean;
  /** One line: the device chosen, or why CUDA cannot be used. */
  reason: string;
}

export class CudaBackend implements Backend {
  readonly name = 'cuda' as const;
  readonly elementBytes = 2;
  private readonly functions = new Map<string, { fn: Handle; sharedBytes: number }>();
  /** maxActiveClusters' answers by kernel, block, shared memory and cluster: asked of the driver once each (they do not change). */
  private readonly clusterOccupancy = new Map<string, number>();
  private readonly allocations: Allocation[] = [];
  private program: Program | null = null;
  private weights = new Map<string, DeviceTensor>();
  private arena: DevPtr = 0n;
  /**
   * TESSERA_ARENA=split: each planned activation buffer (by its arena offset) in an allocation of
   * its own instead of one arena. For the tests on the kernel emulator, whose stand-in libcuda
   * guards every allocation: a kernel that writes past its output then faults there, where in the
   * arena it would overwrite its neighbour unseen. Null: the one arena (the default).
   */
  private splitArena: Map<number, DevPtr> | null = null;
  /** CudaOpContext.counters' area (0n until made). */
  private counterArea: DevPtr = 0n;
  /** The activations' device bytes: the arena, or the split buffers together. */
  private activationBytes = 0;
  private logits: DevPtr = 0n;
  private kvPool: DevPtr = 0n;
  private kv = new Map<string, DeviceTensor>();
  private numBlocks = 0;
  private limits: LoadLimits | null = null;
  private stepDevice: DevPtr = 0n;
  private stepHost: { ptr: unknown; buffer: ArrayBuffer } | null = null;
  private stepLayout = { tokenIds: 0, positions: 0, slotMapping: 0, queryStart: 0, contextLens: 0, blockTables: 0, logitsIndices: 0, bytes: 0, maxWidth: 0 };
  private logitsHost: { ptr: unknown; buffer: ArrayBuffer } | null = null;
  /** Device sampling's inputs and outputs: a device buffer and a pinned twin each, grown as needed. */
  private samplingIn: StagedBuffer | null = null;
  private samplingOut: StagedBuffer | null = null;
  private scratchBuf: Allocation | null = null;
  private scratchUsed = 0;
  private capturing = false;
  private readonly constants = new Map<string, DevPtr>();
  private readonly tensorMaps = new Map<string, Uint8Array>();
  private readonly graphs = new Map<string, Handle | 'eager-once'>();
  private weightBytes = 0;
  /** The storage type of weights, activations and the KV cache (LoadLimits.storage). */
  private storage: StorageDType = 'bf16';
  /**
   * Whether kernels are launched with programmatic stream serialization (kernels/common.cuh): on
   * sm_90 unless TESSERA_PDL=0 or the driver refused it at open (launchOverlapNote says which),
   * and whether it can be.
   */
  private overlap = false;
  private overlapAvailable = false;
  /** Why launch overlap is not available here ('' while setUpLaunchOverlap has not run or found it available). */
  private overlapUnavailable = '';
  /**
   * Kernel launches: all so far, the count at the start of the step in progress, the launches a
   * replayed graph holds (captured launches are counted once, when captured), the last step's
   * total, and each decode graph's launches by bucket.
   */
  private launches = 0;
  private stepLaunchBase = 0;
  private stepReplayed = 0;
  private stepLaunches: number | null = null;
  private readonly graphLaunches = new Map<string, number>();
  /** Events around each step while steps are timed, and the last step's device time. */
  private stepEvents: [Handle, Handle] | null = null;
  private stepMs: number | null = null;

  /** The measured kernel choices for this GPU model (kernels/choices), and a line saying which. */
  readonly kernelChoices: KernelChoices | null;
  readonly kernelChoicesNote: string;

  private constructor(
    private readonly driver: CudaDriver,
    readonly device: DeviceProperties,
    private readonly module: Handle,
    private readonly stream: Handle,
  ) {
    const { choices, note } = loadChoices(device.name, device.computeCapability.join('.'));
    this.kernelChoices = choices;
    this.kernelChoicesNote = note;
  }

  /** Whether CUDA can run here, without keeping anything open. */
  static probe(ordinal = 0): CudaProbe {
    try {
      const b = CudaBackend.create(ordinal);
      const reason = b.describe();
      void b.dispose();
      return { ok: true, reason };
    } catch (err) {
      return { ok: false, reason: (err as Error).message };
    }
  }

  /** Opens device `ordinal`; a missing driver, GPU, kernel build or an unsupported GPU is one sentence. */
  static create(ordinal = 0): CudaBackend {
    checkVariantEnv();
    const loaded = loadDriver();
    if ('reason' in loaded) throw new TesseraError(`CUDA is not available: ${loaded.reason}.`, 'device');
    const driver = loaded.driver;
    const count = driver.deviceCount();
    if (count === 0) throw new TesseraError('CUDA is not available: the driver sees no GPU.', 'device');
    if (ordinal >= count) throw new TesseraError(`CUDA device ${ordinal} does not exist; this machine has ${count}.`, 'device');
    const props = driver.properties(ordinal);
    const [major, minor] = props.computeCapability;
    if (major < 8)
      throw new TesseraError(`${props.name} is compute capability ${major}.${minor}; Tessera's CUDA kernels need 8.0 (Ampere) or newer.`, 'unsupported');
    const path = fatbinPath();
    if (!existsSync(path)) throw new TesseraError(`The CUDA kernels are not built (${path} is missing); run npm run build:kernels (it needs nvcc).`, 'device');
    driver.usePrimaryContext(ordinal);
    const module = driver.loadModule(readFileSync(path));
    const backend = new CudaBackend(driver, props, module, driver.createStream());
    backend.setUpLaunchOverlap();
    return backend;
  }

  /**
   * Programmatic dependent launch: every kernel in kernels/ waits for the kernel before it with
   * griddepcontrol.wait before it touches global memory (kernels/common.cuh, checked in the PTX
   * by tests/cuda/declarations.test.ts), so each may be launched to start while that one drains.
   * Only the sm_90a build has the wait: a newer GPU runs the compute_80 PTX, which lacks it, so
   * the attribute is for compute capability 9.0 alone. A fill and two launches with it behind it
   * are captured into a graph and replayed here (the same cuLaunchKernelEx call as an eager
   * launch, and the decode graphs' path; a launch with it behind a copy or fill, as sampling's
   * and the conformance suite's are), so a driver that refuses it turns it off now, saying why,
   * rather than failing the first step.
   */
  private setUpLaunchOverlap(): void {
    const [major, minor] = this.device.computeCapability;
    if (process.env.TESSERA_PDL === '0') {
      this.overlapUnavailable = 'TESSERA_PDL=0';
      return;
    }
    if (major !== 9 || minor !== 0) {
      this.overlapUnavailable = `the kernels wait for their predecessor only in the sm_90a build, and this GPU is sm_${major}${minor}`;
      return;
    }
    if (!this.driver.hasLaunchEx) {
      this.overlapUnavailable = 'the driver lacks cuLaunchKernelEx';
      return;
    }
    const n = 256;
    const buf = this.alloc(2 * n);
    this.overlap = true;
    try {
      const fill = (value: number) => this.launchDecl(forStorage(FILL, 'bf16'), { grid: [1, 1, 1], block: [256, 1, 1] }, { out: buf, n: BigInt(n), value });
      this.driver.beginCapture(this.stream);
      let failure: unknown = null;
      try {
        this.driver.memset32Async(buf, 0, n / 2, this.stream);
        fill(1);
        fill(2);
      } catch (err) {
        failure = err;
      }
      const exec = this.driver.endCapture(this.stream);
      try {
        if (failure) throw failure;
        this.driver.launchGraph(exec, this.stream);
        this.driver.synchronize(this.stream);
      } finally {
        this.driver.destroyGraph(exec);
      }
      this.overlapAvailable = true;
    } catch (err) {
      this.overlap = false;
      this.overlapUnavailable = `the driver refused it (${(err as Error).message.replace(/\.$/, '')})`;
    } finally {
      this.release(buf);
    }
  }

  /** One line: launch overlap on, or off and why. */
  get launchOverlapNote(): string {
    const what = 'launch overlap (programmatic dependent launch)';
    if (this.overlap) return `${what} on`;
    return `${what} off: ${this.overlapAvailable ? 'turned off for this measurement' : this.overlapUnavailable}`;
  }

  /**
   * Turns launch overlap on (where setUpLaunchOverlap found it available) or off, for a
   * measurement with and without it in one process. The decode graphs are captured again.
   */
  setLaunchOverlap(on: boolean): void {
    const next = on && this.overlapAvailable;
    if (next === this.overlap) return;
    this.driver.synchronize(this.stream);
    this.destroyGraphs();
    this.overlap = next;
  }

  describe(): string {
    const d = this.device;
    return `cuda:${d.ordinal} ${d.name} (sm_${d.computeCapability.join('')}, ${d.multiprocessors} SMs, ${(d.totalMemoryBytes / 2 ** 30).toFixed(0)} GiB, driver ${Math.floor(d.driverVersion / 1000)}.${(d.driverVersion % 1000) / 10})`;
  }

  readonly profiler: BackendProfiler = {
    device: () => {
      const d = this.device;
      return {
        name: d.name,
        computeCapability: d.computeCapability.join('.'),
        multiprocessors: d.multiprocessors,
        memoryBytes: d.totalMemoryBytes,
        l2CacheBytes: d.l2CacheBytes,
        driver: `${Math.floor(d.driverVersion / 1000)}.${(d.driverVersion % 1000) / 10}`,
        smClockMHz: d.clockKHz / 1000,
        memoryClockMHz: d.memoryClockKHz / 1000,
        memoryBusWidthBits: d.memoryBusWidthBits,
        // Double data rate: two transfers per memory clock.
        peakBandwidthFromClocksGBs: Number(((2 * d.memoryClockKHz * 1e3 * d.memoryBusWidthBits) / 8 / 1e9).toFixed(1)),
      };
    },
    timeSteps: (on) => {
      if (on && !this.stepEvents) this.stepEvents = [this.driver.createEvent(), this.driver.createEvent()];
      if (!on && this.stepEvents) {
        for (const e of this.stepEvents) this.driver.destroyEvent(e);
        this.stepEvents = null;
      }
      this.stepMs = null;
    },
    lastStepMs: () => this.stepMs,
    lastStepLaunches: () => this.stepLaunches,
    launchOverlap: () => ({ on: this.overlap, available: this.overlapAvailable, note: this.launchOverlapNote }),
    setLaunchOverlap: (on) => this.setLaunchOverlap(on),
    copyBandwidth: (bytes, runs) => {
      const { freeBytes } = this.driver.memInfo();
      const n = Math.max(4, Math.floor(Math.min(bytes, freeBytes / 4) / 256) * 256);
      const src = this.alloc(n), dst = this.alloc(n);
      const [start, end] = [this.driver.createEvent(), this.driver.createEvent()];
      try {
        this.driver.memset32Async(src, 0x3f800000, n / 4, this.stream);
        this.driver.copyDeviceAsync(dst, src, n, this.stream);
        const ms: number[] = [];
        for (let r = 0; r < runs; r++) {
          this.driver.record(start, this.stream);
          this.driver.copyDeviceAsync(dst, src, n, this.stream);
          this.driver.record(end, this.stream);
          this.driver.synchronize(this.stream);
          ms.push(this.driver.elapsedMs(start, end));
        }
        return (2 * n) / (median(ms) / 1000);
      } finally {
        this.driver.destroyEvent(start);
        this.driver.destroyEvent(end);
        this.release(src);
        this.release(dst);
      }
    },
  };

  /** Marks the start of a timed step (before its inputs are uploaded). */
  private stepStarted(): void {
    if (this.stepEvents) this.driver.record(this.stepEvents[0], this.stream);
    this.stepLaunchBase = this.launches;
    this.stepReplayed = 0;
  }

  /** Marks its end (after its outputs are queued for download); call, then synchronize, then stepTimed. */
  private stepEnded(): void {
    if (this.stepEvents) this.driver.record(this.stepEvents[1], this.stream);
    this.stepLaunches = this.launches - this.stepLaunchBase + this.stepReplayed;
  }

  private stepTimed(): void {
    if (this.stepEvents) this.stepMs = this.driver.elapsedMs(this.stepEvents[0], this.stepEvents[1]);
  }

  // ---- memory ----

  private alloc(bytes: number): DevPtr {
    const ptr = this.driver.malloc(bytes);
    this.allocations.push({ ptr, bytes });
    return ptr;
  }

  private release(ptr: DevPtr): void {
    const i = this.allocations.findIndex((a) => a.ptr === ptr);
    if (i < 0) return;
    this.driver.free(ptr);
    this.allocations.splice(i, 1);
  }

  async load(program: Program, source: WeightSource, limits: LoadLimits, onProgress?: (p: LoadProgress) => void): Promise<void> {
    this.program = program;
    this.limits = limits;
    this.storage = limits.storage ?? 'bf16';
    const numel = (shape: number[]) => shape.reduce((a, d) => a * d, 1);
    const used = new Set<string>();
    for (const call of program.calls) for (const o of call.inputs) if (o.kind === 'weight') used.add(o.name);
    const weightBytes = program.weights.filter((w) => used.has(w.name)).reduce((s, w) => s + 2 * numel(w.shape), 0);
    // TESSERA_ARENA=split: a buffer per distinct offset, of the largest size planned there.
    const split = process.env.TESSERA_ARENA === 'split' ? new Map<number, number>() : null;
    if (split)
      for (const b of program.activations) {
        if (b.id === program.logits.id) continue;
        const rows = b.rows === 'T' ? program.maxTokens : b.rows === 'S' ? program.maxLogitRows : b.rows;
        split.set(b.offset, Math.max(split.get(b.offset) ?? 0, 2 * rows * b.cols));
      }
    const arenaBytes = split ? [...split.values()].reduce((a, n) => a + n, 0) : 2 * program.arenaSize;
    const logitsBytes = 4 * program.maxLogitRows * program.vocabSize;
    const { freeBytes, totalBytes } = this.driver.memInfo();
    // A tensor no call reads is freed after the last transform that reads it; the most such
    // tensors hold at once is what the load needs beyond the weights.
    const lastReader = lastTransformReaders(program.weights);
    const transientBytes = loadTransientBytes(program.weights, used, 2);
    const needBytes = weightBytes + Math.max(arenaBytes + logitsBytes, transientBytes);
    if (needBytes > freeBytes) {
      const loading = transientBytes > arenaBytes + logitsBytes ? ` while loading: ${gib(weightBytes)} of weights and ${gib(transientBytes)} at most of checkpoint tensors they are made from` : ` (${gib(weightBytes)} of weights, ${gib(arenaBytes + logitsBytes)} of activations)`;
      throw new TesseraError(
        `The model needs ${gib(needBytes)} on the GPU${loading} but ${gib(freeBytes)} of ${gib(totalBytes)} are free; lower --max-num-batched-tokens or use a larger GPU.`,
        'limit',
      );
    }
    const totalTensorBytes = program.weights.reduce((s, w) => s + ('tensor' in w.source ? 2 * numel(w.shape) : 0), 0);
    let loadedBytes = 0;
    for (const [i, w] of program.weights.entries()) {
      this.driver.currentOp = `loading ${w.name}`;
      const n = numel(w.shape);
      const ptr = this.alloc(2 * n);
      const tensor: DeviceTensor = { ptr, shape: w.shape, dtype: this.storage };
      if ('tensor' in w.source) {
        const recipe = source.recipe?.(w.source.tensor) ?? null;
        if (recipe) this.fillOnDevice(tensor, recipe);
        else {
          this.driver.copyToDevice(ptr, toStorage(this.storage, await source.readF32(w.source.tensor)));
        }
        loadedBytes += 2 * n;
        onProgress?.({ loadedBytes, totalBytes: totalTensorBytes, name: w.name });
      } else {
        this.loadTimeOp(w.source.op, w.source.attrs, w.source.inputs.map((name) => this.weights.get(name)!), tensor);
        const done = w.source.inputs.filter((name) => lastReader.get(name) === i && !used.has(name) && this.weights.has(name));
        if (done.length > 0) {
          // The transform reads them on the stream: it finishes before they go.
          this.driver.synchronize(this.stream);
          for (const name of new Set(done)) {
            this.release(this.weights.get(name)!.ptr);
            this.weights.delete(name);
          }
        }
      }
      this.weights.set(w.name, tensor);
    }
    this.driver.synchronize(this.stream);
    // Tensors that only fed load-time transforms are freed.
    for (const [name, t] of this.weights)
      if (!used.has(name)) {
        this.release(t.ptr);
        this.weights.delete(name);
      }
    this.weightBytes = [...this.weights.values()].reduce((s, t) => s + 2 * numel(t.shape), 0);
    this.activationBytes = arenaBytes;
    if (split) {
      this.arena = 0n;
      this.splitArena = new Map([...split].map(([offset, bytes]) => [offset, this.alloc(Math.max(bytes, 16))]));
    } else {
      this.splitArena = null;
      this.arena = this.alloc(Math.max(arenaBytes, 16));
    }
    this.tensorMaps.clear();
    this.logits = this.alloc(logitsBytes);
    this.logitsHost = this.driver.mallocHost(logitsBytes);
    this.counters(0); // made now, not in a step
    this.allocateStepBuffers(program, limits);
    this.allocateSamplingBuffers(program, limits);
    this.driver.currentOp = null;
  }

  private fillOnDevice(t: DeviceTensor, recipe: { kind: 'ones' } | { kind: 'uniform'; seed: number; bound: number }): void {
    const n = t.shape.reduce((a, d) => a * d, 1);
    if (n === 0) return;
    const launch = { grid: [Math.min(Math.ceil(n / 256), 65535), 1, 1], block: [256, 1, 1] } as Launch;
    const dtype = t.dtype as StorageDType;
    if (recipe.kind === 'ones') this.launchDecl(forStorage(FILL, dtype), launch, { out: t.ptr, n: BigInt(n), value: 1 });
    else this.launchDecl(forStorage(FILL_UNIFORM, dtype), launch, { out: t.ptr, n: BigInt(n), seedLo: recipe.seed >>> 0, seedHi: Math.floor(recipe.seed / 2 ** 32) >>> 0, bound: recipe.bound });
  }

  /** transpose, pair_rows, rope_rows and scale_cols by kernel; slice_rows and concat_rows by device copies. */
  private loadTimeOp(op: OpName, attrs: Attrs, inputs: DeviceTensor[], out: DeviceTensor): void {
    const rowBytes = (t: DeviceTensor) => 2 * t.shape.slice(1).reduce((a, d) => a * d, 1);
    switch (op) {
      case 'transpose': {
        const [rows, cols] = inputs[0].shape;
        if (rows === 0 || cols === 0) return;
        // 32-row tiles over grid.y (at most 65535 of them).
        if (Math.ceil(rows / 32) > 65535) throw new TesseraError(`transpose: ${rows} rows is more than the kernel's grid takes (${65535 * 32}).`, 'invalid_checkpoint');
        this.launchDecl(forStorage(TRANSPOSE, out.dtype as StorageDType), { grid: [Math.ceil(cols / 32), Math.ceil(rows / 32), 1], block: [32, 8, 1] }, { out: out.ptr, input: inputs[0].ptr, rows, cols });
        return;
      }
      case 'slice_rows': {
        const rb = rowBytes(inputs[0]);
        this.driver.copyDeviceAsync(out.ptr, inputs[0].ptr + BigInt((attrs.start as number) * rb), (attrs.count as number) * rb, this.stream);
        return;
      }
      case 'pair_rows': {
        const half = inputs[0].shape[0] / 2, row = inputs[0].shape.slice(1).reduce((a, d) => a * d, 1);
        const units = 2 * half * (row % 8 === 0 ? row / 8 : row);
        if (units === 0) return;
        this.launchDecl(forStorage(PAIR_ROWS, out.dtype as StorageDType), { grid: [Math.min(Math.ceil(units / 256), 65535), 1, 1], block: [256, 1, 1] }, {
          out: out.ptr,
          input: inputs[0].ptr,
          half: BigInt(half),
          row: BigInt(row),
          vec: row % 8 === 0 ? 1 : 0,
        });
        return;
      }
      case 'rope_rows': {
        const rows = inputs[0].shape[0], row = inputs[0].shape.slice(1).reduce((a, d) => a * d, 1);
        const vec = row % 8 === 0 ? 1 : 0;
        const units = rows * (vec ? row / 8 : row);
        if (units === 0) return;
        this.launchDecl(forStorage(ROPE_ROWS, out.dtype as StorageDType), { grid: [Math.min(Math.ceil(units / 256), 65535), 1, 1], block: [256, 1, 1] }, {
          out: out.ptr,
          input: inputs[0].ptr,
          rows: BigInt(rows),
          row: BigInt(row),
          rotRows: (attrs.heads as number) * (attrs.headDim as number),
          headDim: attrs.headDim as number,
          rotaryDim: attrs.rotaryDim as number,
          vec,
        });
        return;
      }
      case 'scale_cols': {
        const [rows, cols] = inputs[0].shape;
        if (rows === 0 || cols === 0) return;
        this.launchDecl(forStorage(SCALE_COLS, out.dtype as StorageDType), { grid: [Math.min(Math.ceil((rows * cols) / 256), 65535), 1, 1], block: [256, 1, 1] }, {
          out: out.ptr,
          w: inputs[0].ptr,
          g: inputs[1].ptr,
          rows: BigInt(rows),
          cols,
        });
        return;
      }
      case 'concat_rows': {
        let offset = 0n;
        for (const t of inputs) {
          const bytes = 2 * t.shape.reduce((a, d) => a * d, 1);
          this.driver.copyDeviceAsync(out.ptr + offset, t.ptr, bytes, this.stream);
          offset += BigInt(bytes);
        }
        return;
      }
      default:
        throw new Error(`${op} is not a load-time op`);
    }
  }

  /** One device buffer for a step's inputs, and its pinned host twin, sized for the largest step. */
  private allocateStepBuffers(program: Program, limits: LoadLimits): void {
    const maxSeqs = Math.max(limits.maxNumSeqs, 1);
    const maxWidth = Math.ceil(limits.maxModelLen / limits.kvBlockSize);
    const maxRows = Math.max(program.maxTokens, bucketOf(maxSeqs));
    const fields: Array<[keyof typeof this.stepLayout, number]> = [
      ['tokenIds', maxRows],
      ['positions', maxRows],
      ['slotMapping', maxRows],
      ['queryStart', maxRows + 1],
      ['contextLens', maxRows],
      ['blockTables', maxRows * maxWidth],
      ['logitsIndices', Math.max(program.maxLogitRows, bucketOf(maxSeqs))],
    ];
    let offset = 0;
    for (const [name, count] of fields) {
      (this.stepLayout as Record<string, number>)[name] = offset;
      offset += Math.ceil((4 * count) / 256) * 256;
    }
    this.stepLayout.bytes = offset;
    this.stepLayout.maxWidth = maxWidth;
    this.stepDevice = this.alloc(offset);
    this.stepHost = this.driver.mallocHost(offset);
  }

  kvBytesPerBlock(): number {
    const p = this.requireProgram();
    return p.states.reduce((s, st) => s + 2 * st.blockSize * st.numKvHeads * st.headDim * 2, 0);
  }

  /** What was asked, else what --gpu-memory-utilization (default 0.9) of the device leaves now. */
  kvCacheBudget(req: KvBudgetRequest): number {
    if (req.requestedBytes !== undefined) return req.requestedBytes;
    const { freeBytes, totalBytes } = this.driver.memInfo();
    const keep = totalBytes * (1 - (req.memoryUtilization ?? 0.9));
    // Room for the scratch of attention and sampling, and the driver's own needs.
    const reserve = 256 * 2 ** 20;
    return Math.max(0, Math.min(req.fullBytes, freeBytes - keep - reserve));
  }

  allocateKvCache(numBlocks: number): void {
    const program = this.requireProgram();
    if (this.kvPool) this.release(this.kvPool);
    this.kv.clear();
    this.tensorMaps.clear();
    this.destroyGraphs();
    this.numBlocks = numBlocks;
    const bytes = numBlocks * this.kvBytesPerBlock();
    this.kvPool = this.alloc(bytes);
    let offset = 0n;
    for (const st of program.states) {
      const shape = [2, numBlocks, st.blockSize, st.numKvHeads, st.headDim];
      this.kv.set(st.name, { ptr: this.kvPool + offset, shape, dtype: this.storage });
      offset += BigInt(2 * shape.reduce((a, d) => a * d, 1));
    }
  }

  copyBlocks(pairs: Array<[number, number]>): void {
    for (const t of this.kv.values()) {
      const [, n, bs, kvh, hd] = t.shape;
      const blockBytes = 2 * bs * kvh * hd;
      for (const half of [0, 1])
        for (const [src, dst] of pairs) {
          const base = t.ptr + BigInt(half * n * blockBytes);
          this.driver.copyDeviceAsync(base + BigInt(dst * blockBytes), base + BigInt(src * blockBytes), blockBytes, this.stream);
        }
    }
  }

  // ---- running ----

  private fn(decl: KernelDecl, sharedBytes: number): Handle {
    let entry = this.functions.get(decl.name);
    if (!entry) {
      entry = { fn: this.driver.getFunction(this.module, decl.name), sharedBytes: 48 * 1024 };
      this.functions.set(decl.name, entry);
    }
    if (sharedBytes > entry.sharedBytes) {
      if (sharedBytes > this.device.maxSharedMemoryPerBlockOptin)
        throw new Error(`${decl.name} wants ${sharedBytes} bytes of shared memory; ${this.device.name} allows ${this.device.maxSharedMemoryPerBlockOptin}`);
      this.driver.setMaxDynamicSharedMemory(entry.fn, sharedBytes);
      entry.sharedBytes = sharedBytes;
    }
    return entry.fn;
  }

  private launchDecl(decl: KernelDecl, launch: Launch, args: Record<string, ArgValue>): void {
    const shared = launch.sharedBytes ?? 0;
    const fn = this.fn(decl, shared);
    if (launch.grid.some((g) => g < 1) || launch.block.some((b) => b < 1)) throw new Error(`${decl.name}: empty launch ${JSON.stringify(launch)}`);
    const pack = (view: DataView) => packArgs(view, decl, args);
    // A cluster of one block is no cluster; without an attribute the launch is cuLaunchKernel's,
    // which every driver has.
    const cluster = launch.cluster && launch.cluster[0] * launch.cluster[1] * launch.cluster[2] > 1 ? launch.cluster : undefined;
    if (cluster || this.overlap) this.driver.launchEx(fn, launch.grid, launch.block, shared, this.stream, pack, { cluster, overlap: this.overlap });
    else this.driver.launch(fn, launch.grid, launch.block, shared, this.stream, pack);
    this.launches++;
  }

  /**
   * CudaOpContext.maxActiveClusters, and for kernel labs and probes as launchKernel is: the
   * function resolved (and its shared memory limit raised) as launchDecl does.
   */
  maxActiveClusters(decl: KernelDecl, launch: Launch): number {
    const shared = launch.sharedBytes ?? 0, cluster = launch.cluster ?? [1, 1, 1];
    const key = `${decl.name} ${launch.block.join(',')} ${shared} ${cluster.join(',')}`;
    let n = this.clusterOccupancy.get(key);
    if (n === undefined) {
      n = this.driver.maxActiveClusters(this.fn(decl, shared), launch.grid, launch.block, cluster, shared);
      this.clusterOccupancy.set(key, n);
    }
    return n;
  }

  private scratch(bytes: number): DevPtr {
    const aligned = Math.ceil(bytes / 256) * 256;
    if (!this.scratchBuf || this.scratchUsed + aligned > this.scratchBuf.bytes) {
      if (this.capturing) throw new Error(`scratch of ${bytes} bytes requested during graph capture beyond the warm-up size`);
      // Grow (between steps only: the previous buffer may still be read by queued kernels). The
      // captured graphs point at the old buffer, so they are captured again.
      this.driver.synchronize(this.stream);
      this.destroyGraphs();
      const next = Math.max(aligned + this.scratchUsed, 2 * (this.scratchBuf?.bytes ?? 0), 16 * 2 ** 20);
      if (this.scratchBuf) this.release(this.scratchBuf.ptr);
      this.scratchBuf = { ptr: this.alloc(next), bytes: next };
      this.scratchUsed = 0;
    }
    const ptr = this.scratchBuf.ptr + BigInt(this.scratchUsed);
    this.scratchUsed += aligned;
    return ptr;
  }

  /**
   * CudaOpContext.counters: one zeroed area of COUNTERS i32, made at load (or at the first op
   * outside the engine), every kernel that counts arrivals leaving it zero.
   */
  private counters(n: number): DevPtr {
    if (!Number.isInteger(n) || n < 0 || n > COUNTERS) throw new Error(`${n} arrival counters requested; the backend keeps ${COUNTERS}`);
    if (this.counterArea === 0n) {
      if (this.capturing) throw new Error('the arrival counters first requested during graph capture');
      this.counterArea = this.alloc(4 * COUNTERS);
      this.driver.copyToDevice(this.counterArea, new Int32Array(COUNTERS));
    }
    return this.counterArea;
  }

  private constant(key: string, make: () => Float32Array): DevPtr {
    let ptr = this.constants.get(key);
    if (ptr === undefined) {
      if (this.capturing) throw new Error(`constant ${key} first requested during graph capture`);
      const data = make();
      ptr = this.alloc(data.byteLength);
      this.driver.copyToDevice(ptr, data);
      this.constants.set(key, ptr);
    }
    return ptr;
  }

  /** Writes the step's inputs into the pinned staging buffer (row stride of block tables = `width`). */
  private stageStep(batch: StepBatch, width: number): void {
    const host = this.stepHost!.buffer;
    const L = this.stepLayout;
    const put = (offset: number, data: Int32Array) => new Int32Array(host, offset, data.length).set(data);
    put(L.tokenIds, batch.tokenIds);
    put(L.positions, batch.positions);
    put(L.slotMapping, batch.slotMapping);
    put(L.queryStart, batch.queryStart);
    put(L.contextLens, batch.contextLens);
    put(L.logitsIndices, batch.logitsIndices);
    const tables = new Int32Array(host, L.blockTables, batch.numSeqs * width);
    tables.fill(0);
    for (let b = 0; b < batch.numSeqs; b++) tables.set(batch.blockTables.subarray(b * batch.blockTableWidth, (b + 1) * batch.blockTableWidth), b * width);
  }

  private stepTensor(name: string, batch: { numTokens: number; numSeqs: number; numLogitRows: number }, width: number): DeviceTensor {
    const L = this.stepLayout as Record<string, number>;
    const shapes: Record<string, number[]> = {
      tokenIds: [batch.numTokens],
      positions: [batch.numTokens],
      slotMapping: [batch.numTokens],
      queryStart: [batch.numSeqs + 1],
      contextLens: [batch.numSeqs],
      blockTables: [batch.numSeqs, width],
      logitsIndices: [batch.numLogitRows],
    };
    return { ptr: this.stepDevice + BigInt(L[name]), shape: shapes[name], dtype: 'i32' };
  }

  /** Enqueues every call of the Program for this step. */
  private enqueue(step: DeviceStep): void {
    const program = this.requireProgram();
    const resolve = this.resolver(step);
    this.scratchUsed = 0;
    for (const call of program.calls) {
      this.driver.currentOp = call.label;
      const op = CUDA_OPS[call.op];
      if (!op) throw new Error(`the CUDA backend has no kernel for ${call.op}`);
      op(this.context(call.inputs.map(resolve), call.outputs.map(resolve), call.attrs, step));
    }
    this.driver.currentOp = null;
  }

  /**
   * executeChecked: the step eagerly (no CUDA graph, no padding to a batch bucket), synchronizing
   * after every op to download what it read and wrote. Slow by design: every input, weights and
   * the layer's KV cache included, crosses to the host once per op.
   */
  async executeChecked(batch: StepBatch, check: (call: CheckedCall) => Promise<void>): Promise<Float32Array> {
    const program = this.requireProgram();
    if (batch.numTokens > program.maxTokens) throw new Error(`step has ${batch.numTokens} tokens; the program was planned for ${program.maxTokens}`);
    const { maxContextLen, maxQueryLen } = stepExtent(batch);
    const step: DeviceStep = { numTokens: batch.numTokens, numSeqs: batch.numSeqs, numLogitRows: batch.numLogitRows, blockTableWidth: batch.blockTableWidth, maxContextLen, maxQueryLen };
    this.stageStep(batch, batch.blockTableWidth);
    this.driver.copyToDeviceAsync(this.stepDevice, this.stepHost!.ptr, this.stepLayout.bytes, this.stream);
    const resolve = this.resolver(step);
    this.scratchUsed = 0;
    for (const [index, call] of program.calls.entries()) {
      const op = CUDA_OPS[call.op];
      if (!op) throw new Error(`the CUDA backend has no kernel for ${call.op}`);
      const inputs = call.inputs.map(resolve), outputs = call.outputs.map(resolve);
      this.driver.synchronize(this.stream);
      const before = inputs.map((t) => this.download(t));
      this.driver.currentOp = call.label;
      op(this.context(inputs, outputs, call.attrs, step));
      this.driver.synchronize(this.stream);
      this.driver.currentOp = null;
      await check({ index, label: call.label, op: call.op, attrs: call.attrs, inputs: before, outputs: outputs.map((t) => this.download(t)), outputDtypes: outputs.map((t) => t.dtype) });
    }
    const vocab = program.vocabSize;
    const logits = new Float32Array(batch.numLogitRows * vocab);
    this.driver.copyToHost(logits, this.logits);
    return logits;
  }

  /** A device tensor on the host (after the stream is synchronized): floats as f32, i32 as is. */
  private download(t: DeviceTensor): HostTensor {
    const n = t.shape.reduce((a, d) => a * d, 1);
    if (t.dtype === 'i32') {
      const out = new Int32Array(n);
      if (n > 0) this.driver.copyToHost(out, t.ptr);
      return { data: out, shape: [...t.shape] };
    }
    const out = new Float32Array(n);
    if (n === 0) return { data: out, shape: [...t.shape] };
    if (t.dtype === 'f32') this.driver.copyToHost(out, t.ptr);
    else {
      const bits = new Uint16Array(n);
      this.driver.copyToHost(bits, t.ptr);
      fromStorage(t.dtype, bits, out);
    }
    return { data: out, shape: [...t.shape] };
  }

  /** The device tensor of each Program operand for this step. */
  private resolver(step: DeviceStep): (o: Operand) => DeviceTensor {
    const program = this.requireProgram();
    const buffers = new Map(program.activations.map((b) => [b.id, b]));
    const rowsOf = (r: 'T' | 'S' | number) => (r === 'T' ? step.numTokens : r === 'S' ? step.numLogitRows : r);
    return (o: Operand): DeviceTensor => {
      switch (o.kind) {
        case 'weight':
          return this.weights.get(o.name)!;
        case 'state':
          return this.kv.get(o.name)!;
        case 'input':
          return this.stepTensor(o.name, step, step.blockTableWidth);
        case 'activation': {
          const b = buffers.get(o.id)!;
          const shape = [rowsOf(b.rows), b.cols];
          if (o.id === program.logits.id) return { ptr: this.logits, shape, dtype: 'f32' };
          return { ptr: this.splitArena ? this.splitArena.get(b.offset)! : this.arena + BigInt(2 * b.offset), shape, dtype: this.storage };
        }
      }
    };
  }

  private context(inputs: DeviceTensor[], outputs: DeviceTensor[], attrs: Attrs, step: DeviceStep): CudaOpContext {
    return {
      inputs,
      outputs,
      attrs,
      step,
      device: this.device,
      launch: (decl, launch, args) => this.launchDecl(decl, launch, args),
      maxActiveClusters: (decl, launch) => this.maxActiveClusters(decl, launch),
      constant: (key, make) => this.constant(key, make),
      counters: (n) => this.counters(n),
      scratch: (bytes) => this.scratch(bytes),
      tensorMap2d: (t, box, swizzle) => this.tensorMap2d(t, box, swizzle),
      tensorMap: (t, shape, box, swizzle) => this.tensorMap(t, shape, box, swizzle),
      gemmChoice: (M) => chooseGemm(this.kernelChoices, M),
      attentionChoice: (hd) => chooseAttention(this.kernelChoices, hd),
    };
  }

  /**
   * A TMA tensor map of a row-major 2-D bf16/f16/f32 tensor (what launchers get as
   * CudaOpContext.tensorMap2d), cached by all it encodes: pointer, shape, dtype, box and swizzle.
   * A map is a function of its key alone, so an entry cannot be stale: a tensor freed (by a
   * PreparedOp's dispose, say) and another allocated at the same address gets a cached map only
   * if its shape and dtype are the same too, and then it is the map it would be encoded with now.
   * The cache is cleared when the arena or the KV pool is reallocated only to drop dead entries.
   * The bytes returned are shared: pass them to a launch, do not modify them.
   */
  tensorMap2d(t: DeviceTensor, box: [rows: number, cols: number], swizzle: TensorMapSwizzle): Uint8Array {
    if (t.shape.length !== 2 || t.dtype === 'i32') throw new Error(`tensorMap2d: a tensor map needs a 2-D bf16, f16 or f32 matrix, not [${t.shape.join(', ')}] ${t.dtype}`);
    return this.tensorMap(t, t.shape, box, swizzle);
  }

  /**
   * A TMA tensor map of a bf16/f16/f32 tensor seen as the row-major `shape` (outermost first; the
   * same number of elements as the tensor: a reshape, as the KV pool [2, N, bs, KV, hd] is seen
   * as [2 N bs, KV, hd]), with a box given outermost first too. Cached as tensorMap2d's maps are.
   */
  tensorMap(t: DeviceTensor, shape: readonly number[], box: readonly number[], swizzle: TensorMapSwizzle): Uint8Array {
    const key = `${t.ptr}:${t.shape.join('x')}:${t.dtype}:${shape.join('x')}:${box.join('x')}:${swizzle}`;
    let map = this.tensorMaps.get(key);
    if (!map) {
      if (t.dtype === 'i32') throw new Error(`tensorMap: a tensor map needs a bf16, f16 or f32 tensor, not [${t.shape.join(', ')}] ${t.dtype}`);
      const count = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
      if (count(shape) !== count(t.shape) || shape.length !== box.length)
        throw new Error(`tensorMap: view [${shape.join(', ')}] with box [${box.join(', ')}] does not reshape [${t.shape.join(', ')}] ${t.dtype}`);
      const dims = [...shape].reverse();
      const strideBytes: number[] = [];
      for (let i = 1, stride = elementBytes(t.dtype); i < dims.length; i++) strideBytes.push((stride *= dims[i - 1]));
      map = this.driver.encodeTensorMap({ dtype: t.dtype, address: t.ptr, dims, strideBytes, box: [...box].reverse(), swizzle });
      if (this.tensorMaps.size >= TENSOR_MAP_CACHE_ENTRIES) this.tensorMaps.delete(this.tensorMaps.keys().next().value!);
      this.tensorMaps.set(key, map);
    }
    return map;
  }

  async execute(batch: StepBatch): Promise<Float32Array> {
    this.enqueueStep(batch);
    return this.readLogits(batch.numLogitRows);
  }

  /**
   * Runs the step and samples its logit rows on the device (kernels/sampling.cu): rows[i] samples
   * logit row i. Only the tokens, and the logprobs a row asks for, come back to the host.
   */
  async executeSampled(batch: StepBatch, rows: readonly SampleContext[]): Promise<SampleResult[]> {
    if (rows.length !== batch.numLogitRows) throw new Error(`executeSampled: ${rows.length} sampling rows for ${batch.numLogitRows} logit rows`);
    const packed = packSamplingRows(rows);
    this.enqueueStep(batch);
    return this.sampleOnDevice(this.logits, this.requireProgram().vocabSize, rows, packed);
  }

  /**
   * Samples rows of host logits (f32 [rows, vocab]) on the device with the kernel the engine uses:
   * for the conformance suite, which compares it with the host sampler.
   */
  async sampleLogits(logits: Float32Array, vocab: number, rows: readonly SampleContext[]): Promise<SampleResult[]> {
    if (logits.length !== rows.length * vocab) throw new Error(`sampleLogits: ${logits.length} logits for ${rows.length} rows of ${vocab}`);
    const packed = packSamplingRows(rows);
    const buf = this.alloc(Math.max(4, logits.byteLength));
    try {
      this.driver.copyToDeviceAsync(buf, logits, logits.byteLength, this.stream);
      return this.sampleOnDevice(buf, vocab, rows, packed);
    } finally {
      this.driver.synchronize(this.stream);
      this.release(buf);
    }
  }

  /** Queues the sampling kernel behind what is on the stream: one upload, one launch, one download. */
  private sampleOnDevice(logits: DevPtr, vocab: number, rows: readonly SampleContext[], packed: PackedSampling): SampleResult[] {
    if (rows.length === 0) {
      this.stepEnded();
      this.driver.synchronize(this.stream);
      this.stepTimed();
      return [];
    }
    const align = (n: number) => Math.ceil(n / 256) * 256;
    const sizes = samplingOutputBytes(rows.length, packed.maxTopN);
    const idsAt = align(packed.params.byteLength);
    const countsAt = idsAt + align(packed.ids.byteLength);
    const inBytes = countsAt + packed.counts.byteLength;
    const logprobsAt = align(sizes.tokens);
    const topIdsAt = logprobsAt + align(sizes.logprobs);
    const topLogprobsAt = topIdsAt + align(sizes.topIds);
    const outBytes = topLogprobsAt + sizes.topLogprobs;
    const input = (this.samplingIn = this.staged(this.samplingIn, inBytes));
    const output = (this.samplingOut = this.staged(this.samplingOut, outBytes));
    new Uint8Array(input.host.buffer, 0, packed.params.byteLength).set(new Uint8Array(packed.params));
    new Int32Array(input.host.buffer, idsAt, packed.ids.length).set(packed.ids);
    new Int32Array(input.host.buffer, countsAt, packed.counts.length).set(packed.counts);
    const at = (t: StagedBuffer, offset: number) => t.device + BigInt(offset);
    this.driver.currentOp = 'sampling';
    // Queued behind the step on the same stream: one upload, one launch, one download.
    this.driver.copyToDeviceAsync(input.device, input.host.ptr, inBytes, this.stream);
    launchSampling((decl, launch, args) => this.launchDecl(decl, launch, args), {
      logits,
      vocab,
      rows: rows.length,
      params: input.device,
      ids: at(input, idsAt),
      counts: at(input, countsAt),
      outTokens: output.device,
      outLogprobs: at(output, logprobsAt),
      outTopIds: at(output, topIdsAt),
      outTopLogprobs: at(output, topLogprobsAt),
      maxTopN: packed.maxTopN,
      scratch: (bytes) => this.scratch(bytes),
      smCount: this.device.multiprocessors,
    });
    this.driver.copyToHostAsync(output.host.ptr, output.device, outBytes, this.stream);
    this.stepEnded();
    this.driver.synchronize(this.stream);
    this.stepTimed();
    this.driver.currentOp = null;
    const host = output.host.buffer;
    const n = rows.length * packed.maxTopN;
    return readSamplingResults(rows, {
      tokens: new Int32Array(host, 0, rows.length),
      logprobs: new Float32Array(host, logprobsAt, rows.length),
      topIds: new Int32Array(host, topIdsAt, n),
      topLogprobs: new Float32Array(host, topLogprobsAt, n),
    }, packed.maxTopN);
  }

  /**
   * Sampling's buffers sized at load for the largest step, so decode never allocates: per row its
   * record, its distinct prompt+output ids and distinct output ids with their counts (each at most
   * min(context, vocab)), and the outputs with 20 top logprobs, up to 64 MiB (long contexts at
   * large batch would ask for more than penalties ever use; staged() grows the buffer between steps
   * in the rare step that needs more).
   */
  private allocateSamplingBuffers(program: Program, limits: LoadLimits): void {
    const rows = Math.max(program.maxLogitRows, bucketOf(Math.max(limits.maxNumSeqs, 1)));
    const idsPerRow = 2 * Math.min(limits.maxModelLen, program.vocabSize);
    const align = (n: number) => Math.ceil(n / 256) * 256;
    const inBytes = Math.min(align(rows * ROW_BYTES) + 2 * align(4 * rows * idsPerRow), 64 * 2 ** 20);
    const out = samplingOutputBytes(rows, MAX_TOP_N);
    const outBytes = align(out.tokens) + align(out.logprobs) + align(out.topIds) + out.topLogprobs;
    this.samplingIn = this.staged(this.samplingIn, inBytes);
    this.samplingOut = this.staged(this.samplingOut, outBytes);
  }

  /** `buf` if it holds `bytes`, else a larger one (the old one freed after the stream drains). */
  private staged(buf: StagedBuffer | null, bytes: number): StagedBuffer {
    if (buf && buf.bytes >= bytes) return buf;
    const size = Math.max(bytes, 2 * (buf?.bytes ?? 0), 64 * 1024);
    if (buf) {
      this.driver.synchronize(this.stream);
      this.release(buf.device);
      this.driver.freeHost(buf.host.ptr);
    }
    return { device: this.alloc(size), host: this.driver.mallocHost(size), bytes: size };
  }

  /** Enqueues one step: eager for prefill and mixed steps, a CUDA graph for decode. */
  private enqueueStep(batch: StepBatch): void {
    const program = this.requireProgram();
    if (batch.numTokens > program.maxTokens) throw new Error(`step has ${batch.numTokens} tokens; the program was planned for ${program.maxTokens}`);
    const { maxContextLen, maxQueryLen } = stepExtent(batch);
    const decode = maxQueryLen === 1 && batch.numLogitRows === batch.numSeqs && batch.numSeqs <= BATCH_BUCKETS[BATCH_BUCKETS.length - 1];
    this.stepStarted();
    if (decode) return this.enqueueDecode(batch, maxContextLen);
    const step: DeviceStep = { numTokens: batch.numTokens, numSeqs: batch.numSeqs, numLogitRows: batch.numLogitRows, blockTableWidth: batch.blockTableWidth, maxContextLen, maxQueryLen };
    this.stageStep(batch, batch.blockTableWidth);
    this.driver.copyToDeviceAsync(this.stepDevice, this.stepHost!.ptr, this.stepLayout.bytes, this.stream);
    this.enqueue(step);
  }

  /** A decode step padded to its bucket and replayed from a CUDA graph. */
  private enqueueDecode(batch: StepBatch, maxContextLen: number): void {
    const limits = this.limits!;
    const rows = bucketOf(batch.numSeqs);
    const context = Math.min(2 ** Math.ceil(Math.log2(Math.max(maxContextLen, 256))), limits.maxModelLen);
    const width = Math.min(Math.ceil(context / limits.kvBlockSize), this.stepLayout.maxWidth);
    const padded = padDecode(batch, rows, width);
    this.stageStep(padded, width);
    this.driver.copyToDeviceAsync(this.stepDevice, this.stepHost!.ptr, this.stepLayout.bytes, this.stream);
    const step: DeviceStep = { numTokens: rows, numSeqs: rows, numLogitRows: rows, blockTableWidth: width, maxContextLen: context, maxQueryLen: 1 };
    const key = `${rows}:${context}`;
    const graph = this.graphs.get(key);
    if (graph === undefined) {
      this.enqueue(step); // warm-up: sizes scratch, makes constants
      this.graphs.set(key, 'eager-once');
    } else if (graph === 'eager-once') {
      this.capturing = true;
      this.driver.beginCapture(this.stream);
      const before = this.launches;
      try {
        this.enqueue(step);
      } finally {
        this.capturing = false;
      }
      const exec = this.driver.endCapture(this.stream);
      this.graphs.set(key, exec);
      this.graphLaunches.set(key, this.launches - before);
      this.driver.launchGraph(exec, this.stream);
    } else {
      this.driver.launchGraph(graph, this.stream);
      this.stepReplayed = this.graphLaunches.get(key) ?? 0;
    }
  }

  private async readLogits(rows: number): Promise<Float32Array> {
    const vocab = this.requireProgram().vocabSize;
    const bytes = 4 * rows * vocab;
    this.driver.copyToHostAsync(this.logitsHost!.ptr, this.logits, bytes, this.stream);
    this.stepEnded();
    this.driver.synchronize(this.stream);
    this.stepTimed();
    return new Float32Array(this.logitsHost!.buffer, 0, rows * vocab).slice();
  }

  memory(): MemoryReport {
    return { weightBytes: this.weightBytes, activationBytes: this.activationBytes, kvCacheBytes: this.numBlocks * (this.program ? this.kvBytesPerBlock() : 0) };
  }

  /** Uploads, poisons outputs with NaN, runs one op's launcher, downloads (conformance). */
  async runOp(op: OpName, attrs: Attrs, inputs: HostTensor[], outputShapes: number[][], step: StepBatch): Promise<HostTensor[]> {
    const prepared = this.prepareOp(op, attrs, inputs, outputShapes, step);
    try {
      prepared.poison();
      prepared.enqueue();
      this.driver.synchronize(this.stream);
      return prepared.download();
    } finally {
      prepared.dispose();
    }
  }

  /**
   * One op outside any Program, its tensors on the device until dispose(): for the conformance
   * suite (runOp) and the kernel benchmark, which enqueues it many times. Float inputs are stored
   * in the storage type, bf16 or attrs.storageDtype 'f16' (or filled on the device with uniform
   * random values); outputs are of the storage type unless attrs.outputDtype is 'f32'; a state
   * output is its state input, updated in place.
   */
  prepareOp(op: OpName, attrs: Attrs, inputs: readonly OpInput[], outputShapes: number[][], step: StepBatch): PreparedOp {
    const spec = OPS[op];
    const launcher = CUDA_OPS[op];
    if (!launcher) throw new Error(`${op} runs at load time on the CUDA backend, not as a step op`);
    const temps: DevPtr[] = [];
    const storage: StorageDType = attrs.storageDtype === 'f16' ? 'f16' : 'bf16';
    const tensor = (shape: number[], dtype: DeviceTensor['dtype']): DeviceTensor => {
      const bytes = elementBytes(dtype) * shape.reduce((a, d) => a * d, 1);
      const ptr = this.alloc(Math.max(bytes, 4));
      temps.push(ptr);
      return { ptr, shape, dtype };
    };
    const bytesOf = (t: DeviceTensor) => elementBytes(t.dtype) * t.shape.reduce((a, d) => a * d, 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      for (const p of temps) this.release(p);
    };
    try {
      const devInputs = inputs.map((t): DeviceTensor => {
        if ('uniform' in t) {
          const d = tensor(t.shape, storage);
          this.fillOnDevice(d, { kind: 'uniform', ...t.uniform });
          return d;
        }
        if (t.data instanceof Int32Array) {
          const d = tensor(t.shape, 'i32');
          this.driver.copyToDevice(d.ptr, t.data);
          return d;
        }
        const d = tensor(t.shape, storage);
        this.driver.copyToDevice(d.ptr, toStorage(storage, t.data));
        return d;
      });
      const stateIndex = inputs.findIndex((t) => t.shape.length === 5);
      const devOutputs = outputShapes.map((shape, i): DeviceTensor => {
        if (spec.stateOutputs?.includes(i)) return devInputs[stateIndex];
        return tensor(shape, attrs.outputDtype === 'f32' ? 'f32' : storage);
      });
      const { maxContextLen, maxQueryLen } = stepExtent(step);
      const devStep: DeviceStep = { numTokens: step.numTokens, numSeqs: step.numSeqs, numLogitRows: step.numLogitRows, blockTableWidth: step.blockTableWidth, maxContextLen, maxQueryLen };
      const fresh = devOutputs.filter((_, i) => !spec.stateOutputs?.includes(i));
      return {
        inputs: devInputs,
        outputs: devOutputs,
        enqueue: () => {
          if (released) throw new Error(`${op}: enqueued after dispose`);
          this.scratchUsed = 0;
          this.driver.currentOp = op;
          launcher(this.context(devInputs, devOutputs, attrs, devStep));
          this.driver.currentOp = null;
        },
        poison: () => {
          for (const t of fresh) this.driver.memset32Async(t.ptr, NAN_WORD[t.dtype], Math.ceil(bytesOf(t) / 4), this.stream);
        },
        download: () => {
          this.driver.synchronize(this.stream);
          return devOutputs.map((t) => {
            const n = t.shape.reduce((a, d) => a * d, 1);
            const out = new Float32Array(n);
            if (t.dtype === 'f32') this.driver.copyToHost(out, t.ptr);
            else {
              const bits = new Uint16Array(n);
              this.driver.copyToHost(bits, t.ptr);
              fromStorage(t.dtype as StorageDType, bits, out);
            }
            return { data: out, shape: t.shape };
          });
        },
        dispose: () => {
          this.driver.synchronize(this.stream);
          release();
        },
      };
    } catch (err) {
      release();
      throw err;
    }
  }

  /**
   * Times work enqueued on the backend's stream with an event pair per run: `warmup` untimed runs,
   * then `runs` timed ones; enqueue(i) gets the run's index (to rotate among input sets). Returns
   * each run's milliseconds.
   */
  timeOnStream(enqueue: (i: number) => void, warmup: number, runs: number): number[] {
    const events = Array.from({ length: runs + 1 }, () => this.driver.createEvent());
    try {
      for (let i = 0; i < warmup; i++) enqueue(i);
      this.driver.synchronize(this.stream);
      // Events between back-to-back runs: each run's time is the gap between its two events.
      this.driver.record(events[0], this.stream);
      for (let r = 0; r < runs; r++) {
        enqueue(warmup + r);
        this.driver.record(events[r + 1], this.stream);
      }
      this.driver.synchronize(this.stream);
      return Array.from({ length: runs }, (_, r) => this.driver.elapsedMs(events[r], events[r + 1]));
    } finally {
      for (const e of events) this.driver.destroyEvent(e);
    }
  }

  /** The stream every kernel of this backend runs on (for a library enqueuing beside them). */
  get streamHandle(): Handle {
    return this.stream;
  }

  /** A device buffer outside any Program (the benchmark's workspaces); free it with freeBuffer. */
  allocBuffer(bytes: number): DevPtr {
    return this.alloc(bytes);
  }

  freeBuffer(ptr: DevPtr): void {
    this.driver.synchronize(this.stream);
    this.release(ptr);
  }

  /** Waits for the stream and copies host data into a device buffer. */
  writeBuffer(dst: DevPtr, src: ArrayBufferView): void {
    this.driver.synchronize(this.stream);
    this.driver.copyToDevice(dst, src);
  }

  /** Launches a declared kernel outside any op, on the backend's stream (kernel labs and probes). */
  launchKernel(decl: KernelDecl, launch: Launch, args: Record<string, ArgValue>): void {
    this.launchDecl(decl, launch, args);
  }

  /** Waits for the stream and copies a device buffer to the host. */
  readBuffer(dst: ArrayBufferView, src: DevPtr): void {
    this.driver.synchronize(this.stream);
    this.driver.copyToHost(dst, src);
  }

  memInfo(): { freeBytes: number; totalBytes: number } {
    return this.driver.memInfo();
  }

  private destroyGraphs(): void {
    for (const g of this.graphs.values()) if (g !== 'eager-once') this.driver.destroyGraph(g);
    this.graphs.clear();
    this.graphLaunches.clear();
  }

  async dispose(): Promise<void> {
    try {
      this.driver.synchronize(this.stream);
    } finally {
      this.destroyGraphs();
      this.profiler.timeSteps(false);
      for (const a of [...this.allocations]) this.release(a.ptr);
      if (this.stepHost) this.driver.freeHost(this.stepHost.ptr);
      if (this.logitsHost) this.driver.freeHost(this.logitsHost.ptr);
      for (const b of [this.samplingIn, this.samplingOut]) if (b) this.driver.freeHost(b.host.ptr);
      this.stepHost = this.logitsHost = this.samplingIn = this.samplingOut = null;
      this.weights.clear();
      this.kv.clear();
      this.constants.clear();
      this.counterArea = 0n;
      this.tensorMaps.clear();
      this.program = null;
    }
  }

  private requireProgram(): Program {
    if (!this.program) throw new Error('the CUDA backend has no program loaded');
    return this.program;
  }
}

/**
 * The most bytes the tensors that only feed load-time transforms (checkpoint tensors a merged,
 * paired or norm-scaled weight is made from, and those steps between) hold at once during a load
 * in `weights`' order, when each is freed right after the last transform that reads it (as
 * CudaBackend.load and CpuBackend.load do). `used`: the weights the Program's calls read, which
 * stay. `elementBytes`: 2 on the GPU (bf16, fp16), 4 on the CPU.
 */
export function loadTransientBytes(weights: Program['weights'], used: ReadonlySet<string>, elementBytes: number): number {
  const lastReader = lastTransformReaders(weights);
  const alive = new Map<string, number>();
  let live = 0, peak = 0;
  for (const [i, w] of weights.entries()) {
    if (!used.has(w.name)) {
      const bytes = elementBytes * w.shape.reduce((a, d) => a * d, 1);
      alive.set(w.name, bytes);
      live += bytes;
    }
    peak = Math.max(peak, live);
    if (!('tensor' in w.source))
      for (const name of new Set(w.source.inputs))
        if (lastReader.get(name) === i && alive.has(name)) {
          live -= alive.get(name)!;
          alive.delete(name);
        }
  }
  return peak;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

/** The longest context and the longest query of any sequence in a step. */
function stepExtent(batch: StepBatch): { maxContextLen: number; maxQueryLen: number } {
  let maxContextLen = 0, maxQueryLen = 0;
  for (let b = 0; b < batch.numSeqs; b++) {
    maxContextLen = Math.max(maxContextLen, batch.contextLens[b]);
    maxQueryLen = Math.max(maxQueryLen, batch.queryStart[b + 1] - batch.queryStart[b]);
  }
  return { maxContextLen, maxQueryLen };
}

function bucketOf(n: number): number {
  return BATCH_BUCKETS.find((b) => b >= n) ?? n;
}

/**
 * A decode batch padded to `rows` sequences: each pad row is a one-token sequence whose token
 * writes nowhere (slot -1) and attends to one cached token of block 0, so it computes finite
 * garbage that nothing reads.
 */
function padDecode(batch: StepBatch, rows: number, width: number): StepBatch {
  const pad = (src: Int32Array, fill: number, n = rows) => {
    const out = new Int32Array(n).fill(fill);
    out.set(src.subarray(0, Math.min(src.length, n)));
    return out;
  };
  const queryStart = new Int32Array(rows + 1);
  for (let i = 0; i <= rows; i++) queryStart[i] = i;
  const blockTables = new Int32Array(rows * width);
  for (let b = 0; b < batch.numSeqs; b++) blockTables.set(batch.blockTables.subarray(b * batch.blockTableWidth, b * batch.blockTableWidth + Math.min(width, batch.blockTableWidth)), b * width);
  return {
    numTokens: rows,
    numSeqs: rows,
    numLogitRows: rows,
    tokenIds: pad(batch.tokenIds, 0),
    positions: pad(batch.positions, 0),
    slotMapping: pad(batch.slotMapping, -1),
    queryStart,
    contextLens: pad(batch.contextLens, 1),
    blockTables,
    blockTableWidth: width,
    logitsIndices: Int32Array.from({ length: rows }, (_, i) => i),
  };
}

/**
 * TESSERA_GEMM and TESSERA_ATTENTION pick kernel variants (ops/gemm.ts, ops/attention.ts),
 * TESSERA_ARENA the activations' layout, and TESSERA_PDL=0 turns launch overlap off; a value they
 * do not know is the user's mistake, said in one sentence before anything is loaded.
 */
function checkVariantEnv(): void {
  const known: Array<[string, readonly string[]]> = [
    ['TESSERA_GEMM', ['auto', ...GEMM_VARIANTS]],
    ['TESSERA_ATTENTION', ['auto', ...ATTENTION_VARIANTS]],
    ['TESSERA_ARENA', ['one', 'split']],
    ['TESSERA_PDL', ['0', '1']],
  ];
  for (const [name, values] of known) {
    const v = process.env[name];
    if (v !== undefined && !values.includes(v))
      throw new TesseraError(`${name} must be ${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}, not "${v}".`, 'invalid_input');
  }
}
