/**
 * NVIDIA cuBLASLt through koffi: the vendor GEMM that kernel benchmarks compare ours against, run
 * in the same process, on the same primary context (cuBLASLt's runtime picks up the context the
 * driver bridge made current) and on the same streams. Only the matmul path is bound.
 *
 * Our GEMM is y[M,N] = x[M,K] w[N,K]^T, all row-major. cuBLASLt is column-major, where a
 * row-major [R,C] matrix reads as its C x R transpose, so we ask it for y^T (N x M) = w x^T:
 * A = w as K x N (ld K) with TRANSA = T, B = x as K x M (ld K) with TRANSB = N, C = D = y as
 * N x M (ld N); cuBLASLt's m, n, k are our N, M, K. Accumulation and scaling are f32, alpha = 1,
 * beta = 0 (1 with a C matrix: y = x w^T + c), with host scalars (the default pointer mode).
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { TesseraError } from '../../errors.js';
import type { DevPtr, Handle } from './driver.js';

export type LtDType = 'bf16' | 'f16' | 'f32';

export interface LtGemmShape {
  m: number;
  n: number;
  k: number;
  in: 'bf16' | 'f16';
  out: LtDType;
}

/** One algorithm the heuristic proposed, as it describes it. */
export interface LtAlgo {
  /** Workspace it needs (at most the plan's workspaceBytes). */
  workspaceBytes: number;
  /** cuBLASLt's device-utilisation estimate (1.0 fills the GPU once). */
  wavesCount: number;
}

export interface LtPlan {
  readonly shape: LtGemmShape;
  /** The workspace offered to the heuristic; matmul passes this much. */
  readonly workspaceBytes: number;
  /** Usable algorithms, best first; matmul's `algo` indexes them. */
  readonly algoCount: number;
  readonly algos: readonly LtAlgo[];
}

// library_types.h (cudaDataType_t)
const CUDA_R_32F = 0;
const CUDA_R_16F = 2;
const CUDA_R_16BF = 14;
// cublas_api.h (cublasComputeType_t)
const CUBLAS_COMPUTE_32F = 68;
// cublas_api.h (cublasOperation_t)
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
// cublasLt.h (cublasLtMatmulDescAttributes_t); both values are int32_t
const CUBLASLT_MATMUL_DESC_TRANSA = 3;
const CUBLASLT_MATMUL_DESC_TRANSB = 4;
// cublasLt.h (cublasLtMatmulPreferenceAttributes_t); the value is uint64_t
const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
// cublasLt.h: cublasLtMatmulAlgo_t is uint64_t data[8]
const ALGO_BYTES = 64;
// cublasLt.h: cublasLtMatmulHeuristicResult_t is { cublasLtMatmulAlgo_t algo; size_t workspaceSize;
// cublasStatus_t state; float wavesCount; int reserved[4]; }: 64 + 8 + 4 + 4 + 16 bytes
export const HEURISTIC_RESULT_LAYOUT = { bytes: 96, algo: 0, workspaceSize: 64, state: 72, wavesCount: 76 } as const;

// cublas_api.h (cublasStatus_t)
const CUBLAS_STATUS: Record<number, string> = {
  0: 'CUBLAS_STATUS_SUCCESS',
  1: 'CUBLAS_STATUS_NOT_INITIALIZED',
  3: 'CUBLAS_STATUS_ALLOC_FAILED',
  7: 'CUBLAS_STATUS_INVALID_VALUE',
  8: 'CUBLAS_STATUS_ARCH_MISMATCH',
  11: 'CUBLAS_STATUS_MAPPING_ERROR',
  13: 'CUBLAS_STATUS_EXECUTION_FAILED',
  14: 'CUBLAS_STATUS_INTERNAL_ERROR',
  15: 'CUBLAS_STATUS_NOT_SUPPORTED',
  16: 'CUBLAS_STATUS_LICENSE_ERROR',
};

const DATA_TYPE: Record<LtDType, number> = { bf16: CUDA_R_16BF, f16: CUDA_R_16F, f32: CUDA_R_32F };
const MAX_ALGOS = 64;

export class CublasLtError extends TesseraError {
  constructor(
    readonly call: string,
    readonly status: number,
    readonly statusName: string,
    readonly shape: string | null,
  ) {
    super(`cuBLASLt ${call} failed with ${statusName} (${status})${shape ? ` for ${shape}` : ''}.`, 'device');
    this.name = 'CublasLtError';
  }
}

/** "MxNxK in->out", as errors name a problem. */
export function describeShape(s: LtGemmShape): string {
  return `${s.m}x${s.n}x${s.k} ${s.in}->${s.out}`;
}

// Pointers to device memory are passed as uint64_t, which the 64-bit calling conventions pass as
// they pass void *; the stream is the driver bridge's CUstream handle.
const SIGNATURES = {
  cublasLtGetVersion: 'size_t cublasLtGetVersion()',
  cublasLtCreate: 'int cublasLtCreate(_Out_ LtHandle *handle)',
  cublasLtDestroy: 'int cublasLtDestroy(LtHandle handle)',
  cublasLtMatmulDescCreate: 'int cublasLtMatmulDescCreate(_Out_ LtMatmulDesc *desc, int computeType, int scaleType)',
  cublasLtMatmulDescDestroy: 'int cublasLtMatmulDescDestroy(LtMatmulDesc desc)',
  cublasLtMatmulDescSetAttribute: 'int cublasLtMatmulDescSetAttribute(LtMatmulDesc desc, int attr, const void *buf, size_t size)',
  cublasLtMatrixLayoutCreate: 'int cublasLtMatrixLayoutCreate(_Out_ LtMatrixLayout *layout, int type, uint64_t rows, uint64_t cols, int64_t ld)',
  cublasLtMatrixLayoutDestroy: 'int cublasLtMatrixLayoutDestroy(LtMatrixLayout layout)',
  cublasLtMatmulPreferenceCreate: 'int cublasLtMatmulPreferenceCreate(_Out_ LtMatmulPreference *pref)',
  cublasLtMatmulPreferenceDestroy: 'int cublasLtMatmulPreferenceDestroy(LtMatmulPreference pref)',
  cublasLtMatmulPreferenceSetAttribute: 'int cublasLtMatmulPreferenceSetAttribute(LtMatmulPreference pref, int attr, const void *buf, size_t size)',
  cublasLtMatmulAlgoGetHeuristic:
    'int cublasLtMatmulAlgoGetHeuristic(LtHandle handle, LtMatmulDesc desc, LtMatrixLayout a, LtMatrixLayout b, LtMatrixLayout c, LtMatrixLayout d, LtMatmulPreference pref, int requested, _Out_ void *results, _Out_ int *count)',
  cublasLtMatmul:
    'int cublasLtMatmul(LtHandle handle, LtMatmulDesc desc, const void *alpha, uint64_t A, LtMatrixLayout a, uint64_t B, LtMatrixLayout b, const void *beta, uint64_t C, LtMatrixLayout c, uint64_t D, LtMatrixLayout d, const void *algo, uint64_t workspace, size_t workspaceBytes, void *stream)',
} as const;

type Fn = (...args: unknown[]) => number;
type Bound = Record<keyof typeof SIGNATURES, Fn>;

/** A plan's cuBLASLt objects, out of the caller's sight. */
interface PlanState {
  desc: Handle;
  /** A, B, C/D layouts (C and D share one: same type and shape). */
  layouts: Handle[];
  /** Each usable algorithm's 64 bytes, as cublasLtMatmul takes them. */
  algos: Uint8Array[];
  text: string;
}

/** Where PyTorch's wheels put cuBLASLt, relative to a site-packages directory. */
const WHEEL_PATHS = ['nvidia/cu13/lib/libcublasLt.so.13', 'nvidia/cublas/lib/libcublasLt.so.13', 'nvidia/cublas/lib/libcublasLt.so.12'];

function listDir(dir: string, keep: (name: string) => boolean): string[] {
  try {
    return readdirSync(dir)
      .filter(keep)
      .sort()
      .map((name) => path.join(dir, name));
  } catch {
    return [];
  }
}

/** System and virtual-environment site-packages directories (Debian's dist-packages too). */
function sitePackages(): string[] {
  const dirs: string[] = [];
  const python = (name: string) => name.startsWith('python3');
  for (const root of ['/usr/lib', '/usr/local/lib'])
    for (const py of listDir(root, python)) dirs.push(path.join(py, 'site-packages'), path.join(py, 'dist-packages'));
  for (const opt of listDir('/opt', () => true))
    for (const py of listDir(path.join(opt, '.venv', 'lib'), python)) dirs.push(path.join(py, 'site-packages'));
  return dirs;
}

/** Library names tried in order: system names, the toolkit, then wheel copies that exist. */
function libraryCandidates(): { names: string[]; searched: string } {
  if (process.platform === 'win32') return { names: ['cublasLt64_13.dll', 'cublasLt64_12.dll'], searched: '' };
  const names = ['libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so', '/usr/local/cuda/lib64/libcublasLt.so.13', '/usr/local/cuda/lib64/libcublasLt.so.12'];
  for (const dir of sitePackages()) for (const rel of WHEEL_PATHS) if (existsSync(path.join(dir, rel))) names.push(path.join(dir, rel));
  return { names: [...new Set(names)], searched: '/usr/lib/python3*, /usr/local/lib/python3* and /opt/*/.venv site-packages' };
}

/** The file the dynamic linker mapped for a library loaded by its bare name (Linux), else the name. */
function resolveLoaded(name: string): string {
  if (path.isAbsolute(name) || process.platform !== 'linux') return name;
  try {
    for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
      const slash = line.indexOf('/');
      if (slash >= 0 && path.basename(line.slice(slash)).startsWith(name)) return line.slice(slash);
    }
  } catch {
    // no /proc: report the name
  }
  return name;
}

let handleTypesDeclared = false;

/** cuBLASLt, loaded and with a handle; or why not, in one sentence. */
export function loadCublasLt(): { lt: CublasLt } | { reason: string } {
  const override = process.env.TESSERA_CUBLASLT;
  const { names, searched } = override ? { names: [override], searched: '' } : libraryCandidates();
  let lib: koffi.IKoffiLib | null = null;
  let loaded = '';
  const errors: string[] = [];
  for (const name of names) {
    try {
      lib = koffi.load(name);
      loaded = name;
      break;
    } catch (err) {
      errors.push((err as Error).message.split('\n')[0]);
    }
  }
  if (!lib) {
    // A file that exists but fails to load (a missing dependency, a wrong architecture) says more
    // than the names that were not found.
    const telling = errors.find((e) => !/no such file/i.test(e)) ?? errors[errors.length - 1];
    if (override) return { reason: `TESSERA_CUBLASLT=${override} could not be loaded (${telling}).` };
    return { reason: `no cuBLASLt library could be loaded (tried ${names.join(', ')}${searched ? `, after looking in ${searched}` : ''}: ${telling}).` };
  }
  try {
    return { lt: new CublasLt(lib, resolveLoaded(loaded)) };
  } catch (err) {
    return { reason: `cuBLASLt (${loaded}) could not be used: ${(err as Error).message}` };
  }
}

export class CublasLt {
  readonly version: number;
  readonly libraryPath: string;
  private readonly fn: Bound;
  private handle: Handle;
  private readonly plans = new WeakMap<LtPlan, PlanState>();
  private readonly live = new Set<LtPlan>();
  // Host scalars, read by cublasLtMatmul before it returns.
  private readonly alpha = new Float32Array([1]);
  private readonly beta = new Float32Array([0]);
  private readonly one = new Float32Array([1]);

  constructor(lib: koffi.IKoffiLib, libraryPath: string) {
    // koffi's type names are global: declare the handle types once per process.
    if (!handleTypesDeclared) {
      for (const t of ['LtHandle', 'LtMatmulDesc', 'LtMatrixLayout', 'LtMatmulPreference']) koffi.pointer(t, koffi.opaque());
      handleTypesDeclared = true;
    }
    const fn = {} as Bound;
    for (const [name, sig] of Object.entries(SIGNATURES)) fn[name as keyof Bound] = lib.func(sig) as unknown as Fn;
    this.fn = fn;
    this.libraryPath = libraryPath;
    this.version = Number(fn.cublasLtGetVersion());
    this.handle = this.outHandle('cublasLtCreate', null);
  }

  private check(call: string, status: number, shape: string | null): void {
    if (status !== 0) throw new CublasLtError(call, status, CUBLAS_STATUS[status] ?? 'an unknown cublasStatus_t', shape);
  }

  private outHandle(call: keyof Bound, shape: string | null, ...args: unknown[]): Handle {
    const out: [Handle] = [null];
    this.check(call, this.fn[call](out, ...args), shape);
    return out[0];
  }

  private requireHandle(): Handle {
    if (this.handle === null) throw new Error('cuBLASLt was used after dispose()');
    return this.handle;
  }

  /**
   * Plans y[M,N] = x[M,K] w[N,K]^T in our row-major layout: descriptors, and the heuristic's best
   * `maxAlgos` algorithms that fit in `workspaceBytes` of workspace.
   */
  plan(shape: LtGemmShape, workspaceBytes: number, maxAlgos = 1): LtPlan {
    const handle = this.requireHandle();
    const text = describeShape(shape);
    for (const dim of [shape.m, shape.n, shape.k])
      if (!Number.isSafeInteger(dim) || dim <= 0) throw new Error(`cuBLASLt plan: m, n and k must be positive integers (got ${text})`);
    if (!['bf16', 'f16'].includes(shape.in) || !['bf16', 'f16', 'f32'].includes(shape.out)) throw new Error(`cuBLASLt plan: unsupported data types (got ${text})`);
    if (!Number.isSafeInteger(workspaceBytes) || workspaceBytes < 0) throw new Error(`cuBLASLt plan: workspaceBytes must be a non-negative integer (got ${workspaceBytes} for ${text})`);
    if (!Number.isInteger(maxAlgos) || maxAlgos < 1 || maxAlgos > MAX_ALGOS) throw new Error(`cuBLASLt plan: maxAlgos must be an integer from 1 to ${MAX_ALGOS} (got ${maxAlgos} for ${text})`);
    const { m: M, n: N, k: K } = shape;
    const inType = DATA_TYPE[shape.in], outType = DATA_TYPE[shape.out];

    const made: Array<[keyof Bound, Handle]> = [];
    const make = (create: keyof Bound, destroy: keyof Bound, ...args: unknown[]): Handle => {
      const h = this.outHandle(create, text, ...args);
      made.push([destroy, h]);
      return h;
    };
    try {
      const desc = make('cublasLtMatmulDescCreate', 'cublasLtMatmulDescDestroy', CUBLAS_COMPUTE_32F, CUDA_R_32F);
      const setOp = (attr: number, op: number) => this.check('cublasLtMatmulDescSetAttribute', this.fn.cublasLtMatmulDescSetAttribute(desc, attr, new Int32Array([op]), 4), text);
      setOp(CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
      setOp(CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
      const layout = (type: number, rows: number, cols: number, ld: number) =>
        make('cublasLtMatrixLayoutCreate', 'cublasLtMatrixLayoutDestroy', type, BigInt(rows), BigInt(cols), BigInt(ld));
      const a = layout(inType, K, N, K);
      const b = layout(inType, K, M, K);
      const cd = layout(outType, N, M, N);

      const pref = make('cublasLtMatmulPreferenceCreate', 'cublasLtMatmulPreferenceDestroy');
      this.check(
        'cublasLtMatmulPreferenceSetAttribute',
        this.fn.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, new BigUint64Array([BigInt(workspaceBytes)]), 8),
        text,
      );
      const R = HEURISTIC_RESULT_LAYOUT;
      const results = new Uint8Array(maxAlgos * R.bytes);
      const count = [0];
      this.check('cublasLtMatmulAlgoGetHeuristic', this.fn.cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, cd, cd, pref, maxAlgos, results, count), text);
      // The preference only steers the heuristic; matmul does not need it.
      made.pop();
      this.check('cublasLtMatmulPreferenceDestroy', this.fn.cublasLtMatmulPreferenceDestroy(pref), text);

      const view = new DataView(results.buffer);
      const algos: Uint8Array[] = [];
      const info: LtAlgo[] = [];
      for (let i = 0; i < Math.min(count[0], maxAlgos); i++) {
        const at = i * R.bytes;
        if (view.getInt32(at + R.state, true) !== 0) continue; // a result whose state is not SUCCESS is unusable
        algos.push(results.slice(at + R.algo, at + R.algo + ALGO_BYTES));
        info.push({ workspaceBytes: Number(view.getBigUint64(at + R.workspaceSize, true)), wavesCount: view.getFloat32(at + R.wavesCount, true) });
      }
      if (algos.length === 0) throw new TesseraError(`cuBLASLt has no algorithm for ${text} within ${workspaceBytes} bytes of workspace.`, 'unsupported');

      const plan: LtPlan = { shape: { ...shape }, workspaceBytes, algoCount: algos.length, algos: info };
      this.plans.set(plan, { desc, layouts: [a, b, cd], algos, text });
      this.live.add(plan);
      return plan;
    } catch (err) {
      for (const [destroy, h] of made.reverse()) this.fn[destroy](h);
      throw err;
    }
  }

  /**
   * Enqueues y = x w^T on `stream` with the plan's algorithm `algo` (0 = the heuristic's first);
   * with `c` (a [M, N] matrix of y's type), y = x w^T + c: cuBLASLt's C with beta = 1, how a
   * residual add rides in its epilogue.
   */
  matmul(plan: LtPlan, y: DevPtr, x: DevPtr, w: DevPtr, workspace: DevPtr, stream: Handle, algo = 0, c: DevPtr | null = null): void {
    const handle = this.requireHandle();
    const state = this.plans.get(plan);
    if (!state) throw new Error(`cuBLASLt matmul: the plan for ${describeShape(plan.shape)} was destroyed or is not from this instance`);
    if (!Number.isInteger(algo) || algo < 0 || algo >= state.algos.length) throw new Error(`cuBLASLt matmul: algo ${algo} is not one of the plan's ${state.algos.length} for ${state.text}`);
    const [a, b, cd] = state.layouts;
    this.check(
      'cublasLtMatmul',
      this.fn.cublasLtMatmul(handle, state.desc, this.alpha, w, a, x, b, c === null ? this.beta : this.one, c ?? y, cd, y, cd, state.algos[algo], workspace, plan.workspaceBytes, stream),
      state.text,
    );
  }

  destroy(plan: LtPlan): void {
    const state = this.plans.get(plan);
    if (!state) return;
    this.plans.delete(plan);
    this.live.delete(plan);
    this.check('cublasLtMatmulDescDestroy', this.fn.cublasLtMatmulDescDestroy(state.desc), state.text);
    for (const layout of state.layouts) this.check('cublasLtMatrixLayoutDestroy', this.fn.cublasLtMatrixLayoutDestroy(layout), state.text);
  }

  /** Destroys the plans still alive, then the handle. */
  dispose(): void {
    if (this.handle === null) return;
    for (const plan of [...this.live]) this.destroy(plan);
    const handle = this.handle;
    this.handle = null;
    this.check('cublasLtDestroy', this.fn.cublasLtDestroy(handle), null);
  }
}
