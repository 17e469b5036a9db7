/**
 * Hugging Face config.json -> ModelConfig, the typed description every later layer reads.
 * One parser for the supported families; each field is validated where it is read, and a bad or
 * missing field is named in the error together with the file.
 */
import { TesseraError } from '../errors.js';
import { parseJsonObject } from '../util/files.js';

export type Architecture = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'gpt2';

export const SUPPORTED_ARCHITECTURES: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  GPT2LMHeadModel: 'gpt2',
};

export type RopeScaling =
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  | { type: 'linear'; factor: number };

export interface RopeConfig {
  theta: number;
  /** Leading dims of each head that rotate (rotate-half pairing over these); the rest pass through. */
  rotaryDim: number;
  scaling: RopeScaling | null;
}

export type Activation = 'silu' | 'gelu' | 'gelu_tanh';
export type StorageDType = 'float32' | 'float16' | 'bfloat16';

export interface ModelConfig {
  architecture: Architecture;
  /** The name in config.json's "architectures", e.g. LlamaForCausalLM. */
  hfArchitecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositions: number;
  norm: 'rmsnorm' | 'layernorm';
  normEps: number;
  activation: Activation;
  /** 'rope' rotates q and k; 'learned' adds a position-embedding table (GPT-2). */
  positions: 'rope' | 'learned';
  rope: RopeConfig | null;
  /** Bias on the q, k, v projections (Qwen2, GPT-2, Llama with attention_bias). */
  qkvBias: boolean;
  /** Bias on the attention output projection (GPT-2, Llama with attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  /** RMSNorm over each head of q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  /** Attend only to the last slidingWindow positions (Mistral v0.1); null = full causal. */
  slidingWindow: number | null;
  /** Layers below this index attend fully even with a window (Qwen's max_window_layers). */
  firstWindowLayer: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  dtype: StorageDType;
}

type Json = Record<string, unknown>;

class Fields {
  constructor(
    readonly raw: Json,
    readonly file: string,
  ) {}

  fail(message: string): never {
    throw new TesseraError(`${this.file}: ${message}`, 'invalid_checkpoint');
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  int(key: string, fallback?: number, min = 1): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      this.fail(`the field "${key}" is missing; a ${this.raw.model_type ?? 'model'} config needs it.`);
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
      this.fail(`"${key}" must be an integer >= ${min}, not ${JSON.stringify(v)}.`);
    return v;
  }

  num(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      this.fail(`the field "${key}" is missing.`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) this.fail(`"${key}" must be a positive number, not ${JSON.stringify(v)}.`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(`"${key}" must be true or false, not ${JSON.stringify(v)}.`);
    return v;
  }

  str(key: string): string | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string') this.fail(`"${key}" must be a string, not ${JSON.stringify(v)}.`);
    return v;
  }

  ids(key: string): number[] {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    for (const id of list) if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) this.fail(`"${key}" must be a token id or a list of them, not ${JSON.stringify(v)}.`);
    return list as number[];
  }

  obj(key: string): Fields | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(`"${key}" must be an object, not ${JSON.stringify(v)}.`);
    return new Fields(v as Json, `${this.file} ${key}`);
  }
}

/** Parses the JSON text of a config.json; `file` names it in errors. */
export function parseModelConfig(text: string, file: string): ModelConfig {
  return modelConfigFromJson(parseJsonObject(text, file), file);
}

export function modelConfigFromJson(raw: Json, file = 'config.json'): ModelConfig {
  const f = new Fields(raw, file);
  const archs = raw.architectures as unknown[];
  if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== 'string')
    f.fail('"architectures" must list the model class, e.g. ["LlamaForCausalLM"].');
  const hfArchitecture = archs[0] as string;
  const architecture = SUPPORTED_ARCHITECTURES[hfArchitecture];
  if (!architecture)
    throw new TesseraError(
      `${file}: architecture ${hfArchitecture} is not supported; Tessera runs ${Object.keys(SUPPORTED_ARCHITECTURES).join(', ')}.`,
      'unsupported',
    );
  const dtype = parseDType(f, file);
  return architecture === 'gpt2' ? gpt2Config(f, hfArchitecture, dtype) : llamaFamilyConfig(f, architecture, hfArchitecture, dtype);
}

function parseDType(f: Fields, file: string): StorageDType {
  const name = f.str('torch_dtype') ?? f.str('dtype') ?? 'float32';
  const map: Record<string, StorageDType> = { float32: 'float32', float16: 'float16', bfloat16: 'bfloat16', float: 'float32', half: 'float16' };
  const dtype = map[name];
  if (!dtype) throw new TesseraError(`${file}: torch_dtype "${name}" is not supported; Tessera loads float32, float16 and bfloat16 weights.`, 'unsupported');
  return dtype;
}

function llamaFamilyConfig(f: Fields, architecture: Architecture, hfArchitecture: string, dtype: StorageDType): ModelConfig {
  const hiddenSize = f.int('hidden_size');
  const numHeads = f.int('num_attention_heads');
  const numKvHeads = f.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    f.fail(`num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads}).`);
  if (!f.has('head_dim') && hiddenSize % numHeads !== 0)
    f.fail(`hidden_size (${hiddenSize}) must be a multiple of num_attention_heads (${numHeads}) when head_dim is not given.`);
  const headDim = f.int('head_dim', hiddenSize / numHeads);
  if (headDim % 2 !== 0) f.fail(`head_dim (${headDim}) must be even for rotary embeddings.`);
  const act = f.str('hidden_act') ?? 'silu';
  if (act !== 'silu' && act !== 'swish') throw new TesseraError(`${f.file}: hidden_act "${act}" is not supported for ${hfArchitecture}; Tessera runs silu.`, 'unsupported');
  const partial = f.has('partial_rotary_factor') ? f.num('partial_rotary_factor') : 1;
  const rotaryDim = Math.floor(headDim * partial);
  if (rotaryDim % 2 !== 0 || rotaryDim === 0 || rotaryDim > headDim) f.fail(`partial_rotary_factor (${partial}) gives an invalid rotary dimension ${rotaryDim}.`);
  const attentionBias = f.bool('attention_bias', false);
  const qwen2 = architecture === 'qwen2';
  const maxPositions = f.int('max_position_embeddings', 2048);
  // Mistral always windows (4096 when the key is absent, none when it is null); Qwen windows only
  // when use_sliding_window is set, and then only layers from max_window_layers on.
  const mistral = architecture === 'mistral';
  const useSliding = mistral ? true : f.bool('use_sliding_window', false);
  const window = f.has('sliding_window') ? f.int('sliding_window') : mistral && !('sliding_window' in f.raw) ? 4096 : null;
  const firstWindowLayer = mistral ? 0 : f.int('max_window_layers', 0, 0);
  return {
    architecture,
    hfArchitecture,
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    intermediateSize: f.int('intermediate_size'),
    numLayers: f.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions,
    norm: 'rmsnorm',
    normEps: f.num('rms_norm_eps', 1e-6),
    activation: 'silu',
    positions: 'rope',
    rope: { theta: f.num('rope_theta', 10000), rotaryDim, scaling: parseRopeScaling(f) },
    qkvBias: qwen2 ? true : attentionBias,
    oBias: qwen2 ? false : attentionBias,
    mlpBias: f.bool('mlp_bias', false),
    qkNorm: architecture === 'qwen3',
    slidingWindow: useSliding && window !== null && window < maxPositions ? window : null,
    firstWindowLayer,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    bosTokenId: f.has('bos_token_id') ? f.int('bos_token_id', undefined, 0) : null,
    eosTokenIds: f.ids('eos_token_id'),
    dtype,
  };
}

function parseRopeScaling(f: Fields): RopeScaling | null {
  const s = f.obj('rope_scaling');
  if (!s) return null;
  const type = s.str('rope_type') ?? s.str('type') ?? 'default';
  switch (type) {
    case 'default':
      return null;
    case 'linear':
      return { type: 'linear', factor: s.num('factor') };
    case 'llama3':
      return {
        type: 'llama3',
        factor: s.num('factor'),
        lowFreqFactor: s.num('low_freq_factor'),
        highFreqFactor: s.num('high_freq_factor'),
        originalMaxPositions: s.int('original_max_position_embeddings'),
      };
    default:
      throw new TesseraError(`${f.file}: rope_scaling type "${type}" is not supported; Tessera supports default, linear and llama3.`, 'unsupported');
  }
}

function gpt2Config(f: Fields, hfArchitecture: string, dtype: StorageDType): ModelConfig {
  const hiddenSize = f.int('n_embd');
  const numHeads = f.int('n_head');
  if (hiddenSize % numHeads !== 0) f.fail(`n_embd (${hiddenSize}) must be a multiple of n_head (${numHeads}).`);
  const act = f.str('activation_function') ?? 'gelu_new';
  const activations: Record<string, Activation> = { gelu_new: 'gelu_tanh', gelu_pytorch_tanh: 'gelu_tanh', gelu_fast: 'gelu_tanh', gelu: 'gelu' };
  const activation = activations[act];
  if (!activation) throw new TesseraError(`${f.file}: activation_function "${act}" is not supported for GPT-2; Tessera runs gelu and gelu_new.`, 'unsupported');
  if (f.bool('scale_attn_by_inverse_layer_idx', false) || f.bool('reorder_and_upcast_attn', false))
    throw new TesseraError(`${f.file}: scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn are not supported.`, 'unsupported');
  if (!f.bool('scale_attn_weights', true)) throw new TesseraError(`${f.file}: scale_attn_weights false is not supported.`, 'unsupported');
  return {
    architecture: 'gpt2',
    hfArchitecture,
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    intermediateSize: f.int('n_inner', 4 * hiddenSize),
    numLayers: f.int('n_layer'),
    numHeads,
    numKvHeads: numHeads,
    headDim: hiddenSize / numHeads,
    maxPositions: f.int('n_positions', f.int('n_ctx', 1024)),
    norm: 'layernorm',
    normEps: f.num('layer_norm_epsilon', 1e-5),
    activation,
    positions: 'learned',
    rope: null,
    qkvBias: true,
    oBias: true,
    mlpBias: true,
    qkNorm: false,
    slidingWindow: null,
    firstWindowLayer: 0,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    bosTokenId: f.has('bos_token_id') ? f.int('bos_token_id', undefined, 0) : null,
    eosTokenIds: f.ids('eos_token_id'),
    dtype,
  };
}
