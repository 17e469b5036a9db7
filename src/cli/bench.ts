/**
 * tessera bench: prefill and decode throughput of the engine, measured end to end through the
 * scheduler, runner and backend (what a user gets), median over runs after a warm-up.
 */
import os from 'node:os';
import { TesseraError } from '../errors.js';
import { resolveSamplingParams } from '../sampling/params.js';
import { uniform } from '../sampling/philox.js';
import { MODEL_HELP, MODEL_OPTIONS, numberFlag, parse, modelOptions } from './args.js';
import { benchKernels } from './bench_kernels.js';
import { benchServe } from './bench_serve.js';
import { loadForCli } from './load.js';
import { median } from '../util/stats.js';

const HELP = `Usage: tessera bench [options]
       tessera bench serve [options]   load-test an OpenAI-compatible server (--help for its options)
       tessera bench kernels [options] time each CUDA kernel against cuBLASLt and the measured ceilings

Measures prefill and decode tokens/s: BATCH sequences of PROMPT random tokens each, then
DECODE greedy tokens each (EOS ignored). Reports the median of RUNS runs after one warm-up,
and beside it the roofline of decode: the weight bytes each step reads per second against the
copy bandwidth measured in the same run, and the host's share of a decode step (the part of
its wall time the device was not working on it). On a GPU that launches kernels overlapped
(programmatic dependent launch, sm_90), the decode runs are made again without it, for the
ratio. Unless --max-num-batched-tokens is given, a
step holds the whole batch of prompts (up to 8192 tokens), so prefill is measured unchunked.

      --prompt-tokens N          prompt length (default 128)
      --prefill-tokens N,N,...   also time prefill alone at these prompt lengths (e.g. 512,2048)
      --decode-tokens N          tokens generated per sequence (default 128)
      --batch N                  concurrent sequences (default 1)
      --runs N                   measured runs (default 5)
      --json                     machine-readable output

${MODEL_HELP}`;

interface RunResult {
  prefillSeconds: number;
  decodeSeconds: number;
  decodeSteps: number;
  /** Kernel launches of each decode step (a GPU backend's count), empty elsewhere. */
  stepLaunches: number[];
  /** Wall and device milliseconds of each decode step (device: null when not timed). */
  stepWallMs: number[];
  stepDeviceMs: number[];
}

export async function bench(argv: string[]): Promise<number> {
  if (argv[0] === 'serve') return benchServe(argv.slice(1));
  if (argv[0] === 'kernels') return benchKernels(argv.slice(1));
  const { values } = parse(
    argv,
    {
      ...MODEL_OPTIONS,
      'prompt-tokens': { type: 'string' },
      'prefill-tokens': { type: 'string' },
      'decode-tokens': { type: 'string' },
      batch: { type: 'string' },
      runs: { type: 'string' },
      json: { type: 'boolean' },
    },
    'bench',
  );
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const promptTokens = numberFlag(values, 'prompt-tokens', true) ?? 128;
  const decodeTokens = numberFlag(values, 'decode-tokens', true) ?? 128;
  const batch = numberFlag(values, 'batch', true) ?? 1;
  const runs = numberFlag(values, 'runs', true) ?? 5;
  for (const [flag, v] of [['prompt-tokens', promptTokens], ['decode-tokens', decodeTokens], ['batch', batch], ['runs', runs]] as const)
    if (v < 1) throw new TesseraError(`--${flag} must be at least 1.`, 'invalid_input');
  const prefillLengths = ((values['prefill-tokens'] as string | undefined) ?? '')
    .split(',')
    .filter((x) => x.trim() !== '')
    .map((x) => {
      const n = Number(x);
      if (!Number.isSafeInteger(n) || n < 1) throw new TesseraError(`--prefill-tokens takes whole numbers of at least 1 separated by commas, not "${values['prefill-tokens'] as string}".`, 'invalid_input');
      return n;
    });
  const { dir, opts } = modelOptions(values);
  if (opts.maxNumSeqs === undefined) opts.maxNumSeqs = Math.max(batch, 1);
  if (opts.maxNumBatchedTokens === undefined) opts.maxNumBatchedTokens = Math.max(1024, Math.min(batch * Math.max(promptTokens, ...prefillLengths), 8192));
  const { llm, reportLoad } = await loadForCli(dir, opts, values.json === true);
  reportLoad();
  try {
    const { engine } = llm;
    const profiler = llm.runner.backend.profiler;
    const maxLen = llm.info.maxModelLen;
    if (promptTokens + decodeTokens > maxLen)
      throw new TesseraError(`--prompt-tokens + --decode-tokens (${promptTokens + decodeTokens}) exceed the context of ${maxLen} tokens.`, 'invalid_input');
    for (const n of prefillLengths) if (n + 1 > maxLen) throw new TesseraError(`--prefill-tokens ${n} exceeds the context of ${maxLen} tokens.`, 'invalid_input');
    const params = resolveSamplingParams({ temperature: 0, maxTokens: decodeTokens, ignoreEos: true });
    const vocab = llm.config.vocabSize;
    let requestNo = 0;
    const runOnce = async (): Promise<RunResult> => {
      const ids: string[] = [];
      for (let b = 0; b < batch; b++) {
        const requestId = `bench-${requestNo++}`;
        const promptIds = Array.from({ length: promptTokens }, (_, i) => Math.floor(uniform(requestNo, b, i) * vocab));
        engine.addRequest({ requestId, promptIds, params });
        ids.push(requestId);
      }
      const t0 = performance.now();
      let tPrefill = 0;
      let decodeSteps = 0;
      const stepWallMs: number[] = [], stepDeviceMs: number[] = [], stepLaunches: number[] = [];
      const started = new Set<string>();
      while (engine.hasUnfinished) {
        const ts = performance.now();
        const outputs = await engine.step();
        const te = performance.now();
        for (const o of outputs) started.add(`${o.requestId}`);
        if (!tPrefill && started.size === batch) tPrefill = te;
        else if (tPrefill) {
          decodeSteps++;
          stepWallMs.push(te - ts);
          const device = profiler.lastStepMs();
          if (device !== null) stepDeviceMs.push(device);
          const launches = profiler.lastStepLaunches?.() ?? null;
          if (launches !== null) stepLaunches.push(launches);
        }
      }
      const t1 = performance.now();
      return { prefillSeconds: (tPrefill - t0) / 1000, decodeSeconds: (t1 - tPrefill) / 1000, decodeSteps, stepWallMs, stepDeviceMs, stepLaunches };
    };
    profiler.timeSteps(true);
    await runOnce();
    const results: RunResult[] = [];
    for (let r = 0; r < runs; r++) results.push(await runOnce());
    // The same runs again without launch overlap (programmatic dependent launch) where it is on:
    // the baseline for what it buys, measured in this process on the same GPU.
    const overlap = profiler.launchOverlap?.() ?? null;
    let withoutOverlap: RunResult[] | null = null;
    if (overlap?.on && profiler.setLaunchOverlap) {
      profiler.setLaunchOverlap(false);
      try {
        await runOnce();
        withoutOverlap = [];
        for (let r = 0; r < runs; r++) withoutOverlap.push(await runOnce());
      } finally {
        profiler.setLaunchOverlap(true);
      }
    }
    profiler.timeSteps(false);
    // Prefill alone at each asked length: batch prompts, one sampled token each, warm-up first.
    const prefillOnly = async (length: number): Promise<number> => {
      const one = resolveSamplingParams({ temperature: 0, maxTokens: 1, ignoreEos: true });
      for (let b = 0; b < batch; b++) {
        requestNo++;
        engine.addRequest({ requestId: `bench-${requestNo}`, promptIds: Array.from({ length }, (_, i) => Math.floor(uniform(requestNo, b, i) * vocab)), params: one });
      }
      const t0 = performance.now();
      while (engine.hasUnfinished) await engine.step();
      return (batch * length) / ((performance.now() - t0) / 1000);
    };
    const prefill = [] as Array<{ promptTokens: number; tokensPerSecond: number }>;
    for (const length of prefillLengths) {
      await prefillOnly(length);
      const rates: number[] = [];
      for (let r = 0; r < runs; r++) rates.push(await prefillOnly(length));
      prefill.push({ promptTokens: length, tokensPerSecond: Number(median(rates).toFixed(1)) });
    }
    // The copy the roofline is measured against: 1 GiB each way on a GPU, 256 MiB on the CPU.
    const copyBytesPerSecond = profiler.copyBandwidth(llm.runner.backend.name === 'cuda' ? 2 ** 30 : 2 ** 28, 20);
    const prefillRate = median(results.map((r) => (batch * promptTokens) / r.prefillSeconds));
    const decodeRate = (rs: RunResult[]) => median(rs.map((r) => (batch * (decodeTokens - 1)) / r.decodeSeconds));
    const decode = decodeRate(results);
    const decodeWithout = withoutOverlap ? decodeRate(withoutOverlap) : null;
    const deviceWithout = withoutOverlap?.flatMap((r) => r.stepDeviceMs) ?? [];
    const stepMs = median(results.map((r) => (r.decodeSeconds * 1000) / Math.max(1, r.decodeSteps)));
    const allWall = results.flatMap((r) => r.stepWallMs), allDevice = results.flatMap((r) => r.stepDeviceMs);
    const deviceStepMs = allDevice.length ? median(allDevice) : null;
    // Host share: the median over steps of 1 - device time / wall time.
    const hostShare = allDevice.length === allWall.length && allWall.length ? median(allWall.map((w, i) => Math.max(0, 1 - allDevice[i] / w))) : null;
    const weightBytes = llm.runner.backend.memory().weightBytes;
    const weightBytesPerSecond = weightBytes / (stepMs / 1000);
    const round = (x: number, digits: number) => Number(x.toFixed(digits));
    const report = {
      model: llm.info.dir,
      architecture: llm.config.hfArchitecture,
      parameters: llm.info.numParameters,
      device: llm.info.device,
      cpu: os.cpus()[0]?.model ?? 'unknown',
      node: process.version,
      promptTokens,
      decodeTokens,
      batch,
      runs,
      prefillTokensPerSecond: Number(prefillRate.toFixed(1)),
      /** Prefill alone at each --prefill-tokens length (batch prompts, median of the runs). */
      prefillByLength: prefill,
      decodeTokensPerSecond: Number(decode.toFixed(1)),
      decodeStepMs: Number(stepMs.toFixed(3)),
      /** Device time of a decode step (event pair around it), median; null on the CPU. */
      decodeStepDeviceMs: deviceStepMs === null ? null : round(deviceStepMs, 3),
      hostShareOfDecodeStep: hostShare === null ? null : round(hostShare, 4),
      /** Launch overlap (programmatic dependent launch): on, or why it is off; null on the CPU. */
      launchOverlap: overlap?.note ?? null,
      /** Decode with launch overlap turned off in the same process, where it was on: the baseline it answers to. */
      decodeTokensPerSecondWithoutOverlap: decodeWithout === null ? null : Number(decodeWithout.toFixed(1)),
      decodeStepDeviceMsWithoutOverlap: deviceWithout.length ? round(median(deviceWithout), 3) : null,
      overlapSpeedup: decodeWithout === null ? null : round(decode / decodeWithout, 3),
      weightBytes,
      /** Weight bytes a decode step reads (all of them, once), per second of step wall time. */
      weightReadGBs: round(weightBytesPerSecond / 1e9, 1),
      copyBandwidthGBs: round(copyBytesPerSecond / 1e9, 1),
      weightReadPercentOfCopy: round((100 * weightBytesPerSecond) / copyBytesPerSecond, 1),
      sampling: engine.deviceSampling ? 'device' : 'host',
      /** The GEMM variant asked for (TESSERA_GEMM); auto is the measured table, else the launcher's default. */
      gemmVariant: process.env.TESSERA_GEMM ?? 'auto',
      /** The prefill attention variant asked for (TESSERA_ATTENTION), likewise. */
      attentionVariant: process.env.TESSERA_ATTENTION ?? 'auto',
      kernelChoices: llm.info.kernelChoices,
      deviceInfo: profiler.device(),
      fused: opts.fuse !== false,
      kernelsPerStep: llm.runner.program.calls.length,
      /** Kernel launches a decode step made (the graph's, split-K merges and sampling included), median; null on the CPU. */
      launchesPerDecodeStep: results.some((r) => r.stepLaunches.length) ? median(results.flatMap((r) => r.stepLaunches)) : null,
      date: new Date().toISOString(),
    };
    if (values.json) console.log(JSON.stringify(report, null, 2));
    else {
      console.log(`${report.architecture} ${(report.parameters / 1e6).toFixed(2)}M on ${report.device}, ${report.cpu}, Node ${report.node}`);
      console.log(`batch ${batch}, ${promptTokens} prompt + ${decodeTokens} decode tokens, median of ${runs} runs`);
      console.log(`prefill  ${report.prefillTokensPerSecond.toFixed(1).padStart(9)} tokens/s`);
      for (const p of report.prefillByLength) console.log(`prefill  ${p.tokensPerSecond.toFixed(1).padStart(9)} tokens/s at ${p.promptTokens} tokens alone`);
      const launched = report.launchesPerDecodeStep === null ? '' : `, ${report.launchesPerDecodeStep} launches`;
      console.log(`decode   ${report.decodeTokensPerSecond.toFixed(1).padStart(9)} tokens/s  (${report.decodeStepMs.toFixed(2)} ms per step, ${report.kernelsPerStep} kernels per step${launched}${report.fused ? '' : ', unfused'})`);
      const host = report.hostShareOfDecodeStep === null ? '' : `; device ${report.decodeStepDeviceMs!.toFixed(2)} ms per step, host share ${(100 * report.hostShareOfDecodeStep).toFixed(1)}%`;
      if (report.decodeTokensPerSecondWithoutOverlap !== null)
        console.log(`overlap  ${report.decodeTokensPerSecondWithoutOverlap.toFixed(1).padStart(9)} tokens/s decode without launch overlap: ${report.overlapSpeedup!.toFixed(3)}x with it`);
      else if (report.launchOverlap !== null) console.log(`overlap  ${report.launchOverlap}`);
      console.log(`weights  ${report.weightReadGBs.toFixed(1).padStart(9)} GB/s read by decode = ${report.weightReadPercentOfCopy.toFixed(1)}% of the ${report.copyBandwidthGBs.toFixed(1)} GB/s copy bandwidth${host}`);
    }
    return 0;
  } finally {
    await llm.close();
  }
}
