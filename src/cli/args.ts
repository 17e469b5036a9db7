/** Command-line options shared by the commands: the model, the engine settings, sampling. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { DeviceChoice } from '../backend/select.js';
import { TesseraError } from '../errors.js';
import type { TesseraOptions } from '../llm.js';
import type { SamplingParams } from '../sampling/params.js';

export const MODEL_OPTIONS = {
  model: { type: 'string', short: 'm' },
  device: { type: 'string' },
  'kv-block-size': { type: 'string' },
  'max-num-seqs': { type: 'string' },
  'max-num-batched-tokens': { type: 'string' },
  'max-model-len': { type: 'string' },
  'kv-cache-memory': { type: 'string' },
  'gpu-memory-utilization': { type: 'string' },
  dtype: { type: 'string' },
  'no-fuse': { type: 'boolean' },
  'no-prefix-caching': { type: 'boolean' },
  'host-sampling': { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

export const SAMPLING_OPTIONS = {
  'max-tokens': { type: 'string', short: 'n' },
  temperature: { type: 'string', short: 't' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'min-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  'presence-penalty': { type: 'string' },
  'frequency-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  'ignore-eos': { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

type Values = Record<string, string | boolean | string[] | undefined>;

export function parse(argv: string[], options: NonNullable<ParseArgsConfig['options']>, command: string): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
    return { values: values as Values, positionals };
  } catch (err) {
    const message = (err as Error).message;
    const ambiguous = /^Option '(--[\w-]+)' argument is ambiguous/.exec(message);
    if (ambiguous)
      throw new TesseraError(`${ambiguous[1]} got a value that starts with "-"; write ${ambiguous[1]}=VALUE if you mean it.`, 'invalid_input');
    const first = message.split('\n')[0].replace(/\.$/, '');
    throw new TesseraError(`${first} (tessera ${command} --help lists the options).`, 'invalid_input');
  }
}

export function numberFlag(values: Values, flag: string, integer = false): number | undefined {
  const raw = values[flag];
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(v) || (integer && !Number.isInteger(v)))
    throw new TesseraError(`--${flag} takes ${integer ? 'a whole number' : 'a number'}, not "${String(raw)}".`, 'invalid_input');
  return v;
}

/** A fraction in (0, 1]. */
export function fractionFlag(values: Values, flag: string): number | undefined {
  const v = numberFlag(values, flag);
  if (v !== undefined && !(v > 0 && v <= 1)) throw new TesseraError(`--${flag} must be greater than 0 and at most 1, not ${v}.`, 'invalid_input');
  return v;
}

/** Byte sizes such as 512MiB, 2GiB, 1e9. */
export function bytesFlag(values: Values, flag: string): number | undefined {
  const raw = values[flag];
  if (raw === undefined) return undefined;
  const m = /^\s*([\d.]+(?:e\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$/i.exec(String(raw));
  const scale: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, kb: 1e3, mb: 1e6, gb: 1e9 };
  if (!m) throw new TesseraError(`--${flag} takes a size such as 512MiB or 2GiB, not "${String(raw)}".`, 'invalid_input');
  return Math.floor(Number(m[1]) * scale[(m[2] ?? 'b').toLowerCase()]);
}

/** --dtype auto|bfloat16|float16 (also bf16, fp16, half, as the common spellings). */
function dtypeFlag(values: Values): 'auto' | 'bfloat16' | 'float16' | undefined {
  const raw = values.dtype as string | undefined;
  if (raw === undefined) return undefined;
  const names: Record<string, 'auto' | 'bfloat16' | 'float16'> = { auto: 'auto', bfloat16: 'bfloat16', bf16: 'bfloat16', float16: 'float16', fp16: 'float16', half: 'float16' };
  const dtype = names[raw.toLowerCase()];
  if (!dtype) throw new TesseraError(`--dtype must be auto, bfloat16 or float16, not "${raw}".`, 'invalid_input');
  return dtype;
}

export function modelOptions(values: Values): { dir: string | undefined; opts: TesseraOptions } {
  const device = (values.device as string | undefined) ?? 'auto';
  if (!['auto', 'cpu', 'cuda'].includes(device)) throw new TesseraError(`--device must be auto, cpu or cuda, not "${device}".`, 'invalid_input');
  return {
    dir: values.model as string | undefined,
    opts: {
      device: device as DeviceChoice,
      kvBlockSize: numberFlag(values, 'kv-block-size', true),
      maxNumSeqs: numberFlag(values, 'max-num-seqs', true),
      maxNumBatchedTokens: numberFlag(values, 'max-num-batched-tokens', true),
      maxModelLen: numberFlag(values, 'max-model-len', true),
      kvCacheBytes: bytesFlag(values, 'kv-cache-memory'),
      gpuMemoryUtilization: fractionFlag(values, 'gpu-memory-utilization'),
      dtype: dtypeFlag(values),
      fuse: values['no-fuse'] !== true,
      prefixCaching: values['no-prefix-caching'] !== true,
      deviceSampling: values['host-sampling'] !== true,
    },
  };
}

/** Sampling flags as given (undefined where absent, so the checkpoint's defaults apply). */
export function samplingOptions(values: Values): Partial<SamplingParams> {
  return {
    maxTokens: numberFlag(values, 'max-tokens', true),
    temperature: numberFlag(values, 'temperature'),
    topK: numberFlag(values, 'top-k', true),
    topP: numberFlag(values, 'top-p'),
    minP: numberFlag(values, 'min-p'),
    repetitionPenalty: numberFlag(values, 'repetition-penalty'),
    presencePenalty: numberFlag(values, 'presence-penalty'),
    frequencyPenalty: numberFlag(values, 'frequency-penalty'),
    seed: numberFlag(values, 'seed', true),
    stop: values.stop as string[] | undefined,
    ignoreEos: values['ignore-eos'] as boolean | undefined,
  };
}

/** Maps our sampling field names to the flags, for validation messages. */
export const SAMPLING_FLAG_NAMES: Partial<Record<keyof SamplingParams, string>> = {
  maxTokens: '--max-tokens',
  temperature: '--temperature',
  topK: '--top-k',
  topP: '--top-p',
  minP: '--min-p',
  repetitionPenalty: '--repetition-penalty',
  presencePenalty: '--presence-penalty',
  frequencyPenalty: '--frequency-penalty',
  seed: '--seed',
  stop: '--stop',
};

export const MODEL_HELP = `Model and engine:
  -m, --model DIR                Hugging Face model directory (default: the demo model)
      --device auto|cpu|cuda     where to run (default auto)
      --max-model-len N          context length (default: the model's)
      --max-num-seqs N           sequences per step (default 32)
      --max-num-batched-tokens N tokens per step; longer prompts prefill in chunks (default 1024)
      --kv-block-size N          tokens per KV-cache block (default 16)
      --kv-cache-memory SIZE     memory for the KV cache, e.g. 512MiB
      --gpu-memory-utilization X share of GPU memory for weights, activations and KV (default 0.9)
      --dtype auto|bfloat16|float16  GPU storage type (default auto: float16 for float16
                                 checkpoints, else bfloat16); the CPU computes in float32
      --no-fuse                  run the graph unfused (for comparison)
      --no-prefix-caching        recompute shared prompt prefixes (for comparison)
      --host-sampling            sample on the host even on a GPU (for comparison)`;

export const SAMPLING_HELP = `Sampling (defaults from the model's generation_config.json):
  -n, --max-tokens N             output tokens at most
  -t, --temperature X            0 = greedy
      --top-k N  --top-p X  --min-p X
      --repetition-penalty X  --presence-penalty X  --frequency-penalty X
      --seed N                   reproducible sampling
      --stop STR                 stop string (repeatable)
      --ignore-eos               keep going past the end-of-sequence token`;
