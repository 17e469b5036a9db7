/**
 * A Hugging Face model directory: config.json, safetensors weights (single or sharded), and the
 * optional generation_config.json. Every problem is reported as one sentence naming the path.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { TesseraError } from '../errors.js';
import type { SamplingParams } from '../sampling/params.js';
import { parseModelConfig, type ModelConfig } from './hf_config.js';
import { SafetensorsCheckpoint, type TensorInfo } from './safetensors.js';
import { SyntheticWeights, isSynthetic, syntheticConfig } from './synthetic.js';
import { fsError, parseJsonObject, readOptionalTextFile } from '../util/files.js';

export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  /** Sampling defaults from generation_config.json (HF semantics: do_sample false = greedy). */
  generationDefaults: Partial<SamplingParams>;
  weights: WeightStore;
}

/** Where a checkpoint's tensors come from: safetensors files, or a synthetic model's recipe. */
export interface WeightStore {
  readonly tensors: Map<string, TensorInfo>;
  readonly totalBytes: number;
  readF32(name: string, dst?: Float32Array): Promise<Float32Array>;
  /** Synthetic stores only: how to make a tensor instead of reading it. */
  recipe?(name: string): { kind: 'ones' } | { kind: 'uniform'; seed: number; bound: number };
  close(): Promise<void>;
}

export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  if (isSynthetic(dir)) {
    const config = syntheticConfig(dir);
    return { dir, config, generationDefaults: {}, weights: new SyntheticWeights(dir, config) };
  }
  try {
    if (!(await stat(dir)).isDirectory()) throw new TesseraError(`${dir} is not a directory; --model takes a Hugging Face model directory.`, 'invalid_checkpoint');
  } catch (err) {
    throw fsError(`The model directory ${dir}`, err);
  }
  const configPath = path.join(dir, 'config.json');
  const configText = await readOptionalTextFile(configPath);
  if (configText === null) throw new TesseraError(`${dir} has no config.json; is it a Hugging Face model directory?`, 'invalid_checkpoint');
  const config = parseModelConfig(configText, configPath);
  const gen = await readGenerationConfig(path.join(dir, 'generation_config.json'));
  const weights = await SafetensorsCheckpoint.open(dir);
  return { dir, config, generationDefaults: gen, weights };
}

/** Sampling defaults; the EOS ids it lists are read by the tokenizer, with those of the other files. */
async function readGenerationConfig(file: string): Promise<Partial<SamplingParams>> {
  const text = await readOptionalTextFile(file);
  if (text === null) return {};
  const raw = parseJsonObject(text, file);
  const num = (k: string): number | undefined => (typeof raw[k] === 'number' ? (raw[k] as number) : undefined);
  const defaults: Partial<SamplingParams> = {};
  if (raw.do_sample === false) defaults.temperature = 0;
  else if (raw.do_sample === true) {
    defaults.temperature = num('temperature') ?? 1;
    if (num('top_p') !== undefined) defaults.topP = num('top_p');
    if (num('top_k') !== undefined) defaults.topK = num('top_k');
    if (num('min_p') !== undefined) defaults.minP = num('min_p');
  }
  if (num('repetition_penalty') !== undefined) defaults.repetitionPenalty = num('repetition_penalty');
  if (num('max_new_tokens') !== undefined) defaults.maxTokens = num('max_new_tokens');
  return defaults;
}
