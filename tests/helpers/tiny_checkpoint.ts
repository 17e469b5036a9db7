/**
 * Tiny random Hugging Face checkpoints, one per architecture variant Tessera supports: a
 * config.json in the architecture's own HF format, a model.safetensors with the HF tensor names
 * and layouts (F32), and the byte-level tokenizer of tests/fixtures (264 ids = the vocab size).
 *
 * Weights are seeded normals: matrices std 0.1 (so with hidden 32..64 every projection keeps
 * activations O(1) and attention is far from uniform), norm weights 1 +- 0.1, biases std 0.1.
 */
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeSafetensors, type WritableTensor } from '../../src/formats/safetensors.js';
import { mulberry32 } from './random.js';

export const VARIANTS = ['llama', 'llama3', 'mistral', 'qwen2', 'qwen3', 'gpt2', 'gpt2_bare'] as const;
export type Variant = (typeof VARIANTS)[number];

/** The byte tokenizer's ids: 256 bytes + 8 special tokens. */
export const VOCAB = 264;
const TOKENIZER_DIR = path.join(import.meta.dirname, '../fixtures/byte_tokenizer');


/** Seeded uniforms in [0, 1). */
export const uniform = mulberry32;

/** Seeded standard normals: Box-Muller over uniform(seed). */
export function gaussian(seed: number): () => number {
  const u = uniform(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

export interface TinyCheckpoint {
  variant: Variant;
  /** config.json, exactly as written. */
  config: Record<string, unknown>;
  /** model.safetensors, by HF name (weights and, for gpt2_bare, the attn.bias / masked_bias buffers). */
  tensors: Record<string, WritableTensor>;
}

const COMMON = { torch_dtype: 'float32', transformers_version: '4.46.0', use_cache: true, initializer_range: 0.02, vocab_size: VOCAB };
const BOS_EOS = { bos_token_id: 256, eos_token_id: 257 };

/** HF config.json of each variant. Dims: hidden 64 (Qwen3: 32), 2 layers, 4 heads, 2 KV heads. */
const CONFIGS: Record<Variant, Record<string, unknown>> = {
  // Llama 2 style: default RoPE, tied embeddings.
  llama: {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', ...COMMON, ...BOS_EOS,
    hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
    hidden_act: 'silu', max_position_embeddings: 128, rms_norm_eps: 1e-5, rope_theta: 10000.0, rope_scaling: null,
    attention_bias: false, attention_dropout: 0.0, mlp_bias: false, pretraining_tp: 1, tie_word_embeddings: true,
  },
  // Llama 3.1 style: llama3 rope_scaling, explicit head_dim, separate lm_head, a list of EOS ids.
  // original_max_position_embeddings 64 puts one frequency in each band (kept, blended, divided)
  // for head_dim 16 and theta 5e5: wavelengths 6.3, 32.5, 167, ... against 64/4 and 64/1.
  llama3: {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', ...COMMON, bos_token_id: 256, eos_token_id: [257, 258],
    hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16,
    hidden_act: 'silu', max_position_embeddings: 128, rms_norm_eps: 1e-5, rope_theta: 500000.0,
    rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 64, rope_type: 'llama3' },
    attention_bias: false, attention_dropout: 0.0, mlp_bias: false, pretraining_tp: 1, tie_word_embeddings: false,
  },
  // Mistral v0.1: a sliding window (10) shorter than the test sequences and not a multiple of the KV block.
  mistral: {
    architectures: ['MistralForCausalLM'], model_type: 'mistral', ...COMMON, ...BOS_EOS,
    hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
    hidden_act: 'silu', max_position_embeddings: 128, rms_norm_eps: 1e-5, rope_theta: 10000.0, sliding_window: 10,
    attention_dropout: 0.0, tie_word_embeddings: false,
  },
  // Qwen2: q/k/v biases, tied, linear RoPE scaling (legacy "type" key), and a sliding_window that
  // must be ignored because use_sliding_window is false.
  qwen2: {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', ...COMMON, ...BOS_EOS,
    hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
    hidden_act: 'silu', max_position_embeddings: 128, rms_norm_eps: 1e-6, rope_theta: 1000000.0,
    rope_scaling: { type: 'linear', factor: 2.0 }, use_sliding_window: false, sliding_window: 32, max_window_layers: 2,
    attention_dropout: 0.0, tie_word_embeddings: true,
  },
  // Qwen3: head_dim 16 != hidden/heads = 8 (q_proj [64, 32], o_proj [32, 64]), per-head q/k norm.
  qwen3: {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', ...COMMON, ...BOS_EOS,
    hidden_size: 32, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16,
    hidden_act: 'silu', max_position_embeddings: 128, rms_norm_eps: 1e-6, rope_theta: 1000000, rope_scaling: null,
    attention_bias: false, attention_dropout: 0.0, use_sliding_window: false, sliding_window: null, max_window_layers: 2,
    tie_word_embeddings: true,
  },
  // GPT-2 as GPT2LMHeadModel saves it: "transformer." names, n_inner null (4 * n_embd), gelu_new.
  gpt2: {
    architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', ...COMMON, ...BOS_EOS,
    n_embd: 64, n_head: 4, n_layer: 2, n_positions: 128, n_ctx: 128, n_inner: null, activation_function: 'gelu_new',
    layer_norm_epsilon: 1e-5, attn_pdrop: 0.1, embd_pdrop: 0.1, resid_pdrop: 0.1, scale_attn_weights: true,
    summary_type: 'cls_index', summary_use_proj: true, summary_activation: null, summary_proj_to_labels: true, summary_first_dropout: 0.1,
  },
  // GPT-2 as the original openai-community/gpt2 safetensors: names without "transformer.", the
  // causal-mask buffers h.N.attn.bias / masked_bias beside the weights; here also an explicit
  // n_inner and exact (erf) gelu, to cover that path.
  gpt2_bare: {
    architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', ...COMMON, ...BOS_EOS,
    n_embd: 64, n_head: 4, n_layer: 2, n_positions: 128, n_ctx: 128, n_inner: 96, activation_function: 'gelu',
    layer_norm_epsilon: 1e-5, attn_pdrop: 0.1, embd_pdrop: 0.1, resid_pdrop: 0.1, scale_attn_weights: true,
  },
};

/** The config and random tensors of a variant; the same seed gives the same bits. */
export function tinyCheckpoint(variant: Variant, seed = 1234): TinyCheckpoint {
  const config = CONFIGS[variant];
  const randn = gaussian(seed);
  const tensors: Record<string, WritableTensor> = {};
  const add = (name: string, shape: number[], std: number, mean = 0) => {
    const data = new Float32Array(shape.reduce((a, d) => a * d, 1));
    for (let i = 0; i < data.length; i++) data[i] = mean + std * randn();
    tensors[name] = { dtype: 'F32', shape, data };
  };
  const matrix = (name: string, shape: number[]) => add(name, shape, 0.1);
  const norm = (name: string, dim: number) => add(name, [dim], 0.1, 1);
  const bias = (name: string, dim: number) => add(name, [dim], 0.1);

  if (variant === 'gpt2' || variant === 'gpt2_bare') {
    const d = config.n_embd as number, ff = (config.n_inner as number | null) ?? 4 * d, np = config.n_positions as number;
    const pre = variant === 'gpt2' ? 'transformer.' : '';
    add(`${pre}wte.weight`, [VOCAB, d], 0.3);
    add(`${pre}wpe.weight`, [np, d], 0.1);
    // Conv1D weights are [in, out]: y = x W + b. c_attn fuses q | k | v along out.
    const conv1d = (name: string, inDim: number, outDim: number) => {
      matrix(`${name}.weight`, [inDim, outDim]);
      bias(`${name}.bias`, outDim);
    };
    const layerNorm = (name: string) => {
      norm(`${name}.weight`, d);
      bias(`${name}.bias`, d);
    };
    for (let l = 0; l < (config.n_layer as number); l++) {
      const p = `${pre}h.${l}`;
      layerNorm(`${p}.ln_1`);
      conv1d(`${p}.attn.c_attn`, d, 3 * d);
      conv1d(`${p}.attn.c_proj`, d, d);
      layerNorm(`${p}.ln_2`);
      conv1d(`${p}.mlp.c_fc`, d, ff);
      conv1d(`${p}.mlp.c_proj`, ff, d);
      if (variant === 'gpt2_bare') {
        // The buffers: a lower-triangular [1, 1, P, P] mask and the scalar fill value.
        const mask = new Float32Array(np * np);
        for (let i = 0; i < np; i++) for (let j = 0; j <= i; j++) mask[i * np + j] = 1;
        tensors[`${p}.attn.bias`] = { dtype: 'F32', shape: [1, 1, np, np], data: mask };
        tensors[`${p}.attn.masked_bias`] = { dtype: 'F32', shape: [], data: Float32Array.of(-1e4) };
      }
    }
    layerNorm(`${pre}ln_f`);
    return { variant, config, tensors };
  }

  const d = config.hidden_size as number, nh = config.num_attention_heads as number, nkv = config.num_key_value_heads as number;
  const hd = (config.head_dim as number | undefined) ?? d / nh, ff = config.intermediate_size as number;
  add('model.embed_tokens.weight', [VOCAB, d], 0.3);
  for (let l = 0; l < (config.num_hidden_layers as number); l++) {
    const p = `model.layers.${l}`;
    norm(`${p}.input_layernorm.weight`, d);
    // nn.Linear layout: [out, in].
    for (const [name, out] of [['q_proj', nh * hd], ['k_proj', nkv * hd], ['v_proj', nkv * hd]] as const) {
      matrix(`${p}.self_attn.${name}.weight`, [out, d]);
      if (variant === 'qwen2') bias(`${p}.self_attn.${name}.bias`, out);
    }
    if (variant === 'qwen3') {
      norm(`${p}.self_attn.q_norm.weight`, hd);
      norm(`${p}.self_attn.k_norm.weight`, hd);
    }
    matrix(`${p}.self_attn.o_proj.weight`, [d, nh * hd]);
    norm(`${p}.post_attention_layernorm.weight`, d);
    matrix(`${p}.mlp.gate_proj.weight`, [ff, d]);
    matrix(`${p}.mlp.up_proj.weight`, [ff, d]);
    matrix(`${p}.mlp.down_proj.weight`, [d, ff]);
    // Older Llama checkpoints saved the RoPE buffer; it is not a weight.
    if (variant === 'llama') {
      const inv = Float32Array.from({ length: hd / 2 }, (_, i) => 1 / 10000 ** ((2 * i) / hd));
      tensors[`${p}.self_attn.rotary_emb.inv_freq`] = { dtype: 'F32', shape: [hd / 2], data: inv };
    }
  }
  norm('model.norm.weight', d);
  if (!config.tie_word_embeddings) matrix('lm_head.weight', [VOCAB, d]);
  return { variant, config, tensors };
}

/** Names of the buffers a checkpoint carries beside its weights (not model parameters). */
export function isBuffer(name: string): boolean {
  return /(^|\.)attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$/.test(name);
}

export interface TinyDir {
  dir: string;
  ckpt: TinyCheckpoint;
  remove(): Promise<void>;
}

/** Writes the variant into a fresh temporary directory; call remove() when done. */
export async function writeTinyCheckpoint(variant: Variant, seed = 1234): Promise<TinyDir> {
  const ckpt = tinyCheckpoint(variant, seed);
  const dir = await mkdtemp(path.join(os.tmpdir(), `tessera-${variant}-`));
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(ckpt.config, null, 2));
  await writeSafetensors(path.join(dir, 'model.safetensors'), ckpt.tensors, { format: 'pt' });
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(path.join(TOKENIZER_DIR, file), path.join(dir, file));
  return { dir, ckpt, remove: () => rm(dir, { recursive: true, force: true }) };
}
