/**
 * tessera check: the GPU backend against the CPU backend on a real model, op by op.
 *
 * The conformance suite tests each kernel alone at chosen shapes; this runs a model's own Program
 * (its fused ops, planned arena, in-place sums, KV cache) on the GPU, one prefill and a few greedy
 * decode steps, and after every op runs the same op on the CPU backend with the inputs the GPU op
 * was given, downloaded from the device. Each op is judged on its own inputs, so errors do not
 * compound down the layers, and the first op out of tolerance is the kernel (or the plan) to look
 * at. Slow by design: every op's inputs, weights included, cross to the host.
 */
import type { Backend, CheckedCall, HostTensor, StepBatch } from '../backend/backend.js';
import { CpuBackend } from '../backend/cpu/backend.js';
import { TesseraError } from '../errors.js';
import type { Tessera } from '../llm.js';
import { resolveSamplingParams } from '../sampling/params.js';
import { argmax } from '../sampling/sampler.js';
import { BlockManager } from '../scheduler/block_manager.js';
import { Sequence } from '../scheduler/sequence.js';
import { MODEL_HELP, MODEL_OPTIONS, modelOptions, numberFlag, parse } from './args.js';
import { loadForCli } from './load.js';

const DEFAULT_PROMPT = 'The quick brown fox jumps over the lazy dog.';
/** The KV pool tessera check asks for unless --kv-cache-memory says otherwise. */
const CHECK_KV_BYTES = 64 * 2 ** 20;

/**
 * Largest error allowed, by the storage type on the GPU, of an element against its own magnitude
 * plus the output's RMS: 8 units of the type's rounding (bf16 keeps 8 significant bits, fp16 11).
 * Both sides start from the same stored inputs, so what differs is the GPU's rounding of its
 * output (relative to the element) and of intermediates such as attention's probabilities, and
 * the order of its f32 sums (relative to the output's scale, hence the RMS); a kernel bug (a
 * wrong index, a missed tile, a stale buffer, the wrong activation) is off by the values
 * themselves. Measured on the emulator over every architecture's tiny checkpoint and the demo
 * model: at most 5.8e-3 in bf16 and 4.7e-4 in fp16 (attention), under a fifth of the bound.
 */
export const CHECK_TOLERANCE: Record<'bf16' | 'f16', number> = { bf16: 2 ** -5, f16: 2 ** -8 };

function tolText(): string {
  return `${CHECK_TOLERANCE.bf16} for bf16 storage and ${CHECK_TOLERANCE.f16} for fp16`;
}

const HELP = `Usage: tessera check [options] [PROMPT]

Runs the model on the GPU one op at a time: a prefill of PROMPT and greedy decode steps, for a
batch of sequences of different lengths (PROMPT and shorter suffixes of it). After each op it
runs the same op on the CPU backend with the inputs the GPU op read, and compares the outputs.
Exits 1 if an op is out of tolerance, naming the first such op.

  --decode-steps N               decode steps after the prefill (default 4)
  --seqs N                       sequences in the batch (default 2)
  --verbose                      a line for every op of every step
  --json                         the whole report as JSON

Tolerance: for every element, |GPU - CPU| / (|CPU| + the RMS of the CPU's output) at most
${tolText()}; any NaN or infinity where the CPU has a finite value fails.

${MODEL_HELP}`;

/** One output of one op of one step, compared. */
export interface OpCheck {
  step: string;
  index: number;
  label: string;
  op: string;
  output: number;
  shape: number[];
  dtype: string;
  maxAbsError: number;
  maxAbsRef: number;
  /** The largest |GPU - CPU| / (|CPU| + RMS of the CPU's output) over the elements. */
  relError: number;
  /** Elements non-finite on the GPU where the CPU's are finite. */
  nonFinite: number;
  ok: boolean;
}

export interface CheckReport {
  device: string;
  storage: 'bf16' | 'f16';
  tolerance: number;
  /** Each sequence's prompt length. */
  promptTokens: number[];
  /** Each step: the batch's tokens, the outputs checked, the worst, and each sequence's next token. */
  steps: Array<{ step: string; tokens: number; checks: number; worst: OpCheck | null; next: number[] }>;
  /** Per op: outputs checked and the worst of them. */
  ops: Array<{ op: string; checks: number; worst: OpCheck }>;
  failures: OpCheck[];
  ok: boolean;
}

/** Compares one GPU output with the CPU's. */
export function compareOutput(gpu: HostTensor, cpu: HostTensor, tolerance: number): Pick<OpCheck, 'maxAbsError' | 'maxAbsRef' | 'relError' | 'nonFinite' | 'ok'> {
  if (gpu.data.length !== cpu.data.length) throw new Error(`output sizes differ: GPU ${gpu.data.length}, CPU ${cpu.data.length}`);
  let maxAbsRef = 0, sumSq = 0, n = 0;
  for (const c of cpu.data) {
    if (!Number.isFinite(c)) continue; // the CPU's own NaN (a cache slot never written, on both sides)
    maxAbsRef = Math.max(maxAbsRef, Math.abs(c));
    sumSq += c * c;
    n++;
  }
  const rms = n > 0 ? Math.sqrt(sumSq / n) : 0;
  let maxAbsError = 0, relError = 0, nonFinite = 0;
  for (let i = 0; i < gpu.data.length; i++) {
    const g = gpu.data[i], c = cpu.data[i];
    if (!Number.isFinite(c)) continue;
    if (!Number.isFinite(g)) {
      nonFinite++;
      continue;
    }
    const e = Math.abs(g - c);
    if (e === 0) continue;
    maxAbsError = Math.max(maxAbsError, e);
    const scale = Math.abs(c) + rms;
    relError = Math.max(relError, scale > 0 ? e / scale : Infinity);
  }
  return { maxAbsError, maxAbsRef, relError, nonFinite, ok: nonFinite === 0 && relError <= tolerance };
}

/**
 * Runs the prefill of each prompt of `prompts` (one batch: sequences of different lengths, as the
 * engine batches them) and `decodeSteps` greedy decode steps of all of them together, through the
 * backend's executeChecked, each op checked against the CPU backend. The engine must be idle:
 * this drives the model below the scheduler, with block tables of its own over the KV pool.
 */
export async function checkModel(
  llm: Tessera,
  prompts: number[][],
  decodeSteps: number,
  on: { step?: (s: CheckReport['steps'][number]) => void; check?: (c: OpCheck) => void } = {},
): Promise<CheckReport> {
  const backend: Backend = llm.runner.backend;
  if (!backend.executeChecked) throw notOnGpu(llm.info.deviceReason);
  const storage: 'bf16' | 'f16' = llm.info.computeDtype === 'float16' ? 'f16' : 'bf16';
  const tolerance = CHECK_TOLERANCE[storage];
  const cpu = new CpuBackend();
  const seqs = prompts.map((ids, i) => new Sequence(i, `check-${i}`, ids, resolveSamplingParams({ temperature: 0 })));
  const blocks = new BlockManager(llm.info.kvCacheBlocks, llm.info.kvBlockSize);
  const report: CheckReport = { device: llm.info.deviceReason, storage, tolerance, promptTokens: prompts.map((p) => p.length), steps: [], ops: [], failures: [], ok: true };
  const byOp = new Map<string, { checks: number; worst: OpCheck }>();
  const vocab = llm.runner.vocabSize;

  /** One step of every sequence (numNewTokens each); the greedy next token of each. */
  async function step(name: string, numNewTokens: (seq: Sequence) => number): Promise<number[]> {
    for (const seq of seqs)
      if (!blocks.grow(seq.blockTable, seq.numTokens))
        throw new TesseraError(`the KV cache (${llm.info.kvCacheBlocks} blocks of ${llm.info.kvBlockSize}) cannot hold ${seqs.map((q) => q.numTokens).join(' + ')} tokens; give it more with --kv-cache-memory.`, 'invalid_input');
    const batch: StepBatch = llm.runner.prepare(seqs.map((seq) => ({ seq, numNewTokens: numNewTokens(seq), sample: true })));
    let worst: OpCheck | null = null, checks = 0;
    const logits = await backend.executeChecked!(batch, async (call: CheckedCall) => {
      const ref = await cpu.runOp(call.op, call.attrs, call.inputs, call.outputs.map((t) => t.shape), batch);
      call.outputs.forEach((got, output) => {
        if (!(got.data instanceof Float32Array)) return;
        const c: OpCheck = { step: name, index: call.index, label: call.label, op: call.op, output, shape: got.shape, dtype: call.outputDtypes[output], ...compareOutput(got, ref[output], tolerance) };
        checks++;
        on.check?.(c);
        if (!worst || c.relError > worst.relError || (!c.ok && worst.ok)) worst = c;
        const o = byOp.get(c.op);
        if (!o) byOp.set(c.op, { checks: 1, worst: c });
        else {
          o.checks++;
          if (c.relError > o.worst.relError || (!c.ok && o.worst.ok)) o.worst = c;
        }
        if (!c.ok) report.failures.push(c);
      });
    });
    // The next tokens: greedy on the GPU's logits, a row per sequence.
    const tokens = seqs.map((_, r) => argmax(logits.subarray(r * vocab, (r + 1) * vocab)));
    const s = { step: name, tokens: batch.numTokens, checks, worst, next: tokens };
    report.steps.push(s);
    on.step?.(s);
    return tokens;
  }

  let next = await step('prefill', (seq) => seq.numTokens);
  for (const seq of seqs) seq.numComputedTokens = seq.numTokens;
  for (let i = 1; i <= decodeSteps; i++) {
    seqs.forEach((seq, r) => seq.appendToken(next[r]));
    next = await step(`decode ${i}`, () => 1);
    for (const seq of seqs) seq.numComputedTokens++;
  }
  for (const seq of seqs) blocks.release(seq.blockTable);
  report.ops = [...byOp.entries()].map(([op, o]) => ({ op, ...o })).sort((a, b) => b.worst.relError - a.worst.relError);
  report.ok = report.failures.length === 0;
  return report;
}

/**
 * The batch tessera check runs: the prompt, and for --seqs N > 1 its suffixes dropping a few more
 * tokens each, so the sequences' lengths differ (at least one token each).
 */
export function checkPrompts(ids: number[], seqs: number): number[][] {
  return Array.from({ length: seqs }, (_, i) => ids.slice(Math.min(ids.length - 1, 3 * i)));
}

function notOnGpu(device: string): TesseraError {
  return new TesseraError(`tessera check compares a GPU backend with the CPU backend; this model runs on ${device}. Run it where there is a GPU (--device cuda).`, 'invalid_input');
}

const fmt = (x: number) => (Number.isFinite(x) ? x.toExponential(2) : String(x));
const where = (c: OpCheck) => `${c.step} #${c.index} ${c.label} (${c.op}${c.output > 0 ? ` output ${c.output}` : ''}, [${c.shape.join(', ')}] ${c.dtype})`;

export async function check(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...MODEL_OPTIONS, 'decode-steps': { type: 'string' }, seqs: { type: 'string' }, verbose: { type: 'boolean' }, json: { type: 'boolean' } }, 'check');
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length > 1) throw new TesseraError(`tessera check takes one prompt, not ${positionals.length} (quote it).`, 'invalid_input');
  const decodeSteps = numberFlag(values, 'decode-steps', true) ?? 4;
  if (decodeSteps < 0 || decodeSteps > 256) throw new TesseraError(`--decode-steps must be 0 to 256, not ${decodeSteps}.`, 'invalid_input');
  const numSeqs = numberFlag(values, 'seqs', true) ?? 2;
  if (numSeqs < 1 || numSeqs > 16) throw new TesseraError(`--seqs must be 1 to 16, not ${numSeqs}.`, 'invalid_input');
  const { dir, opts } = modelOptions(values);
  const prompt = positionals[0] ?? DEFAULT_PROMPT;
  if (opts.device === 'cpu') throw notOnGpu('cpu (asked for)');
  // One sequence, and a small KV pool unless asked for more: each attention op downloads its
  // layer's whole cache.
  const { llm, reportLoad } = await loadForCli(dir, { ...opts, maxNumSeqs: opts.maxNumSeqs ?? numSeqs, kvCacheBytes: opts.kvCacheBytes ?? CHECK_KV_BYTES }, !!values.json);
  try {
    if (!llm.runner.backend.executeChecked) throw notOnGpu(llm.info.deviceReason);
    const ids = llm.tokenizer.encode(prompt, { addSpecialTokens: true });
    if (ids.length === 0) throw new TesseraError('the prompt has no tokens.', 'invalid_input');
    if (ids.length + decodeSteps > llm.info.maxModelLen)
      throw new TesseraError(`the prompt (${ids.length} tokens) and ${decodeSteps} decode steps do not fit the model length of ${llm.info.maxModelLen}.`, 'invalid_input');
    reportLoad();
    const prompts = checkPrompts(ids, numSeqs);
    if (!values.json)
      console.error(
        `tessera check: every op on ${llm.info.deviceReason} against the CPU backend on the same inputs (${prompts.length === 1 ? 'a sequence' : `${prompts.length} sequences`} of ${prompts.map((p) => p.length).join(', ')} prompt tokens, ${decodeSteps} decode steps)`,
      );
    const verbose = !!values.verbose && !values.json;
    const report = await checkModel(llm, prompts, decodeSteps, {
      step: (s) => {
        if (values.json) return;
        const w = s.worst;
        console.log(`${s.step.padEnd(10)} ${String(s.tokens).padStart(5)} tokens ${String(s.checks).padStart(4)} outputs  worst ${w ? `${fmt(w.relError)} at ${where(w)}` : '-'}`);
      },
      check: verbose ? (c) => console.log(`  ${c.ok ? 'ok  ' : 'FAIL'} ${fmt(c.relError).padStart(9)}  ${where(c)}${c.nonFinite ? `, ${c.nonFinite} non-finite` : ''}`) : undefined,
    });
    if (values.json) {
      console.log(JSON.stringify(report, null, 2));
      return report.ok ? 0 : 1;
    }
    console.log('\nper op, the worst output (|GPU - CPU| / (|CPU| + its RMS)):');
    for (const o of report.ops) console.log(`  ${o.op.padEnd(16)} ${String(o.checks).padStart(5)} outputs  ${fmt(o.worst.relError).padStart(9)}  ${o.worst.ok ? 'ok' : 'FAIL'}  ${where(o.worst)}`);
    if (report.ok) {
      console.log(`\nall ${report.ops.reduce((n, o) => n + o.checks, 0)} outputs within tolerance (${report.tolerance}, ${report.storage})`);
      return 0;
    }
    const first = report.failures[0];
    console.log(
      `\n${report.failures.length} outputs out of tolerance (${report.tolerance}, ${report.storage}); the first: ${where(first)}: error ${fmt(first.relError)}, ` +
        `largest |GPU - CPU| ${fmt(first.maxAbsError)} where max |CPU| is ${fmt(first.maxAbsRef)}${first.nonFinite ? `, ${first.nonFinite} non-finite` : ''}`,
    );
    return 1;
  } finally {
    await llm.close();
  }
}
