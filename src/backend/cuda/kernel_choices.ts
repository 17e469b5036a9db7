/**
 * Which kernel variant the engine runs where several compute the same op: a table per GPU model,
 * derived from a `tessera bench kernels` run on that GPU (`--write-choices`) and committed under
 * kernels/choices/, so the choice is measured, recorded and reviewable. Without a table for the
 * GPU the launchers keep their defaults.
 *
 * A table lists, for each M the benchmark measured, the GEMM variant whose summed time over the
 * benchmark's projections was least among the variants that matched cuBLASLt's output; a step's
 * M takes the entry of the largest measured M not above it (the smallest entry below that).
 * For prefill attention it lists, per head dim, the variant (`tiles`, the mma.sync kernel, or
 * the Hopper kernel's rungs `sm90` and `sm90o`) with the least summed time over the benchmark's
 * prefill cases, counting a Hopper rung only where its output matched the mma.sync kernel's on
 * the same inputs.
 * An explicit request (attrs.gemmVariant / attentionVariant, TESSERA_GEMM / TESSERA_ATTENTION)
 * still wins over the table.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { GEMM_VARIANTS, SM90S_UNSPLIT, type GemmVariant } from './ops/gemm.js';

export type GemmChoice = GemmVariant;
const GEMM_CHOICES: readonly GemmChoice[] = GEMM_VARIANTS;
export type AttentionChoice = 'tiles' | 'sm90' | 'sm90o';

export interface KernelChoices {
  /** The GPU model the table was measured on (DeviceProperties.name). */
  gpu: string;
  computeCapability: string;
  driver: string;
  date: string;
  /** The report it was derived from, for the record. */
  source: string;
  /** Ascending M, and the variant chosen at each. */
  gemm: Array<{ m: number; variant: GemmChoice; /** Summed median ms of each variant at this M. */ ms: Partial<Record<GemmChoice, number>> }>;
  /** Prefill attention per head dim (absent in tables written before it was measured). */
  attention?: Array<{ headDim: number; variant: AttentionChoice; ms: Partial<Record<AttentionChoice, number>> }>;
}

/** The file name of a GPU model's table: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3.json". */
export function choicesFileName(gpu: string): string {
  return `${gpu.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')}.json`;
}

/** Where tables live: TESSERA_KERNEL_CHOICES, else kernels/choices in the package. */
export function choicesDir(): string {
  if (process.env.TESSERA_KERNEL_CHOICES) return process.env.TESSERA_KERNEL_CHOICES;
  // The same from src/backend/cuda (sources) and dist/backend/cuda (built).
  return fileURLToPath(new URL('../../../kernels/choices', import.meta.url));
}

/** The table for this GPU model, or null (and why) when there is none or it does not apply. */
export function loadChoices(gpu: string, computeCapability: string, dir = choicesDir()): { choices: KernelChoices | null; note: string } {
  const file = path.join(dir, choicesFileName(gpu));
  if (!existsSync(file)) return { choices: null, note: `no measured kernel choices for ${gpu} (${file}); defaults` };
  let choices: KernelChoices;
  try {
    choices = JSON.parse(readFileSync(file, 'utf8')) as KernelChoices;
  } catch (err) {
    return { choices: null, note: `${file} is not valid JSON (${(err as Error).message.split('\n')[0]}); defaults` };
  }
  const ok = Array.isArray(choices.gemm) && choices.gemm.every((e, i, a) => Number.isInteger(e.m) && e.m >= 1 && GEMM_CHOICES.includes(e.variant) && (i === 0 || a[i - 1].m < e.m));
  if (!ok) return { choices: null, note: `${file} does not hold an ascending gemm table of ${GEMM_CHOICES.join(', ')}; defaults` };
  const attentionOk = choices.attention === undefined || (Array.isArray(choices.attention) && choices.attention.every((e) => Number.isInteger(e.headDim) && ['tiles', 'sm90', 'sm90o'].includes(e.variant)));
  if (!attentionOk) return { choices: null, note: `${file} has an attention table that is not a list of head dims with tiles, sm90 or sm90o; defaults` };
  if (choices.computeCapability !== computeCapability) return { choices: null, note: `${file} was measured on compute capability ${choices.computeCapability}, not ${computeCapability}; defaults` };
  return { choices, note: `kernel choices measured on ${choices.gpu} (${choices.date.slice(0, 10)}, ${path.basename(file)})` };
}

/** The table's GEMM variant for M rows, or null without a table. */
export function chooseGemm(choices: KernelChoices | null, M: number): GemmChoice | null {
  if (!choices || choices.gemm.length === 0) return null;
  let pick = choices.gemm[0];
  for (const e of choices.gemm) if (e.m <= M) pick = e;
  return pick.variant;
}

/** The table's prefill attention variant for this head dim, or null (no table, or not measured). */
export function chooseAttention(choices: KernelChoices | null, headDim: number): AttentionChoice | null {
  return choices?.attention?.find((e) => e.headDim === headDim)?.variant ?? null;
}

/** The tables committed in a directory (for tests and tools). */
export function listChoices(dir = choicesDir()): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
}

/** One GEMM result of a `tessera bench kernels` report, as deriveChoices reads it. */
export interface GemmResult {
  name: string;
  family: string;
  tessera?: { medianMs: number };
  relativeErrorVsCublasLt?: number | null;
  /** Attention's sm90 rung against the mma.sync kernel on the same inputs. */
  relativeErrorVsBase?: number | null;
  skipped?: string;
  error?: string;
}

/**
 * A table from a bench kernels report: per M, the variant with the least summed median time over
 * the projections where every variant ran, counting only results that matched cuBLASLt (relative
 * error under 1e-2). Throws when the report has no usable GEMM result.
 */
export function deriveChoices(report: { date: string; device: Record<string, string | number>; results: GemmResult[] }, source: string): KernelChoices {
  const byM = new Map<number, Map<string, Map<GemmChoice, number>>>();
  // sm90s left out where its plan does not split K: there it is sm90's launch, and takes its time.
  const unsplit = new Set(report.results.filter((r) => r.family === 'gemm' && r.skipped === SM90S_UNSPLIT).map((r) => r.name.replace(/ sm90s$/, ' sm90')));
  for (const r of report.results) {
    if (r.family !== 'gemm' || !r.tessera || r.skipped || r.error) continue;
    if (!(typeof r.relativeErrorVsCublasLt === 'number' && r.relativeErrorVsCublasLt < 1e-2)) continue;
    const m = /^gemm (\S+ \S+) M(\d+) N(\d+) K(\d+)(?: (gemv|sm90(?:pc|[spkc])?))?$/.exec(r.name);
    if (!m) continue;
    const M = Number(m[2]), shape = `${m[1]} N${m[3]} K${m[4]}`, variant = (m[5] ?? 'tiles') as GemmChoice;
    const shapes = byM.get(M) ?? byM.set(M, new Map()).get(M)!;
    const times = shapes.get(shape) ?? shapes.set(shape, new Map()).get(shape)!;
    times.set(variant, r.tessera.medianMs);
    if (variant === 'sm90' && unsplit.has(r.name)) times.set('sm90s', r.tessera.medianMs);
  }
  const gemm: KernelChoices['gemm'] = [];
  for (const M of [...byM.keys()].sort((a, b) => a - b)) {
    const shapes = [...byM.get(M)!.values()];
    // Compare variants only over the shapes every candidate ran on.
    const candidates = GEMM_CHOICES.filter((v) => shapes.every((s) => s.has(v)));
    if (candidates.length === 0) continue;
    const ms: Partial<Record<GemmChoice, number>> = {};
    for (const v of candidates) ms[v] = Number(shapes.reduce((sum, s) => sum + s.get(v)!, 0).toFixed(5));
    const variant = candidates.reduce((best, v) => (ms[v]! < ms[best]! ? v : best));
    gemm.push({ m: M, variant, ms });
  }
  if (gemm.length === 0) throw new Error(`${source}: no GEMM result that matched cuBLASLt; no choices to write`);
  const attention = deriveAttentionChoices(report.results);
  const d = report.device;
  return { gpu: String(d.name), computeCapability: String(d.computeCapability), driver: String(d.driver), date: report.date, source, gemm, ...(attention.length > 0 ? { attention } : {}) };
}

/** Per head dim: tiles against sm90 summed over the prefill cases both ran (sm90 only where it matched tiles). */
function deriveAttentionChoices(results: GemmResult[]): NonNullable<KernelChoices['attention']> {
  const byHd = new Map<number, Map<string, Map<AttentionChoice, number>>>();
  for (const r of results) {
    if (r.family !== 'attention' || !r.tessera || r.skipped || r.error) continue;
    const m = /^attention prefill (.* hd(\d+) (?:causal|full))(?: (sm90o?))?$/.exec(r.name);
    if (!m) continue;
    const variant: AttentionChoice = (m[3] as AttentionChoice | undefined) ?? 'tiles';
    if (variant !== 'tiles' && !(typeof r.relativeErrorVsBase === 'number' && r.relativeErrorVsBase < 1e-2)) continue;
    const hd = Number(m[2]);
    const cases = byHd.get(hd) ?? byHd.set(hd, new Map()).get(hd)!;
    (cases.get(m[1]) ?? cases.set(m[1], new Map()).get(m[1])!).set(variant, r.tessera.medianMs);
  }
  const out: NonNullable<KernelChoices['attention']> = [];
  for (const hd of [...byHd.keys()].sort((a, b) => a - b)) {
    const cases = [...byHd.get(hd)!.values()];
    const candidates = (['tiles', 'sm90', 'sm90o'] as const).filter((v) => cases.every((c) => c.has(v)));
    if (candidates.length === 0) continue;
    const ms: Partial<Record<AttentionChoice, number>> = {};
    for (const v of candidates) ms[v] = Number(cases.reduce((sum, c) => sum + c.get(v)!, 0).toFixed(5));
    out.push({ headDim: hd, variant: candidates.reduce((best, v) => (ms[v]! < ms[best]! ? v : best)), ms });
  }
  return out;
}
