/**
 * tessera bench: prefill and decode throughput of the engine, measured end to end through the
 * scheduler, runner and backend (what a user gets), median over runs after a warm-up.
 */
import os from 'node:os';
import { TesseraError } from '../errors.js';
import { resolveSamplingParams } from '../sampling/params.js';
import { uniform } from '../sampling/philox.js';
import { MODEL_HELP, MODEL_OPTIONS, numberFlag, parse, modelOptions } from './args.js';
import { benchServe } from './bench_serve.js';
import { loadForCli } from './load.js';

const HELP = `Usage: tessera bench [options]
       tessera bench serve [options]   load-test an OpenAI-compatible server (--help for its options)

Measures prefill and decode tokens/s: BATCH sequences of PROMPT random tokens each, then
DECODE greedy tokens each (EOS ignored). Reports the median of RUNS runs after one warm-up.

      --prompt-tokens N          prompt length (default 128)
      --decode-tokens N          tokens generated per sequence (default 128)
      --batch N                  concurrent sequences (default 1)
      --runs N                   measured runs (default 5)
      --json                     machine-readable output

${MODEL_HELP}`;

interface RunResult {
  prefillSeconds: number;
  decodeSeconds: number;
  decodeSteps: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export async function bench(argv: string[]): Promise<number> {
  if (argv[0] === 'serve') return benchServe(argv.slice(1));
  const { values } = parse(
    argv,
    {
      ...MODEL_OPTIONS,
      'prompt-tokens': { type: 'string' },
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
  const { dir, opts } = modelOptions(values);
  if (opts.maxNumSeqs === undefined) opts.maxNumSeqs = Math.max(batch, 1);
  const { llm, reportLoad } = await loadForCli(dir, opts, values.json === true);
  reportLoad();
  try {
    const { engine } = llm;
    const maxLen = llm.info.maxModelLen;
    if (promptTokens + decodeTokens > maxLen)
      throw new TesseraError(`--prompt-tokens + --decode-tokens (${promptTokens + decodeTokens}) exceed the context of ${maxLen} tokens.`, 'invalid_input');
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
      const started = new Set<string>();
      while (engine.hasUnfinished) {
        const outputs = await engine.step();
        for (const o of outputs) started.add(`${o.requestId}`);
        if (!tPrefill && started.size === batch) tPrefill = performance.now();
        else if (tPrefill) decodeSteps++;
      }
      const t1 = performance.now();
      return { prefillSeconds: (tPrefill - t0) / 1000, decodeSeconds: (t1 - tPrefill) / 1000, decodeSteps };
    };
    await runOnce();
    const results: RunResult[] = [];
    for (let r = 0; r < runs; r++) results.push(await runOnce());
    const prefill = median(results.map((r) => (batch * promptTokens) / r.prefillSeconds));
    const decode = median(results.map((r) => (batch * (decodeTokens - 1)) / r.decodeSeconds));
    const stepMs = median(results.map((r) => (r.decodeSeconds * 1000) / Math.max(1, r.decodeSteps)));
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
      prefillTokensPerSecond: Number(prefill.toFixed(1)),
      decodeTokensPerSecond: Number(decode.toFixed(1)),
      decodeStepMs: Number(stepMs.toFixed(3)),
      fused: opts.fuse !== false,
      kernelsPerStep: llm.runner.program.calls.length,
      date: new Date().toISOString(),
    };
    if (values.json) console.log(JSON.stringify(report, null, 2));
    else {
      console.log(`${report.architecture} ${(report.parameters / 1e6).toFixed(2)}M on ${report.device}, ${report.cpu}, Node ${report.node}`);
      console.log(`batch ${batch}, ${promptTokens} prompt + ${decodeTokens} decode tokens, median of ${runs} runs`);
      console.log(`prefill  ${report.prefillTokensPerSecond.toFixed(1).padStart(9)} tokens/s`);
      console.log(`decode   ${report.decodeTokensPerSecond.toFixed(1).padStart(9)} tokens/s  (${report.decodeStepMs.toFixed(2)} ms per step, ${report.kernelsPerStep} kernels per step${report.fused ? '' : ', unfused'})`);
    }
    return 0;
  } finally {
    await llm.close();
  }
}
