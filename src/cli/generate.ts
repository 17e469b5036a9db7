/** tessera generate: stream the continuation of a prompt to stdout. */
import { MODEL_HELP, MODEL_OPTIONS, SAMPLING_FLAG_NAMES, SAMPLING_HELP, SAMPLING_OPTIONS, modelOptions, parse, samplingOptions } from './args.js';
import { resolveSamplingParams } from '../sampling/params.js';
import { loadForCli } from './load.js';

const HELP = `Usage: tessera generate [PROMPT] [options]

Streams the model's continuation of PROMPT (default "In the beginning") to stdout.

  -p, --prompt TEXT              the prompt (instead of the positional argument)
  -q, --quiet                    no load summary or timing on stderr

${MODEL_HELP}

${SAMPLING_HELP}`;

export async function generate(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    { ...MODEL_OPTIONS, ...SAMPLING_OPTIONS, prompt: { type: 'string', short: 'p' }, quiet: { type: 'boolean', short: 'q' } },
    'generate',
  );
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const prompt = (values.prompt as string | undefined) ?? (positionals.length ? positionals.join(' ') : 'In the beginning');
  const { dir, opts } = modelOptions(values);
  const quiet = values.quiet === true;
  const sampling = samplingOptions(values);
  resolveSamplingParams(sampling, SAMPLING_FLAG_NAMES); // flags checked before the model loads
  const { llm, reportLoad } = await loadForCli(dir, opts, quiet);
  try {
    const params = llm.samplingParams(sampling, SAMPLING_FLAG_NAMES);
    const t0 = performance.now();
    let tFirst = 0;
    let usage = { promptTokens: 0, completionTokens: 0 };
    let finish = '';
    const stream = llm.generate(prompt, params); // refuses a prompt too long for the context
    reportLoad();
    process.stdout.write(prompt);
    for await (const chunk of stream) {
      if (!tFirst && chunk.tokenIds.length) tFirst = performance.now();
      process.stdout.write(chunk.text);
      if (chunk.usage) usage = chunk.usage;
      if (chunk.finishReason) finish = chunk.finishReason;
    }
    process.stdout.write('\n');
    if (!quiet) {
      const t1 = performance.now();
      const decodeTps = usage.completionTokens > 1 ? ((usage.completionTokens - 1) / (t1 - tFirst)) * 1000 : 0;
      console.error(
        `tessera: ${usage.promptTokens} prompt + ${usage.completionTokens} generated tokens (${finish}); ` +
          `first token ${(tFirst - t0).toFixed(0)} ms, decode ${decodeTps.toFixed(1)} tokens/s`,
      );
    }
    return 0;
  } finally {
    await llm.close();
  }
}
