/**
 * Synthetic checkpoints: `synthetic:<preset>` is a model of a published shape with random
 * weights made on the fly, deterministic per tensor name, and no files. Benchmarks use them to
 * measure a Llama-3-8B-shaped model without downloading one, or a long-context model on the CPU;
 * their text is noise. They tokenize with the demo model's byte-level tokenizer.
 */
import { TesseraError } from '../errors.js';
import { uniform } from '../sampling/philox.js';
import { modelConfigFromJson, type ModelConfig } from './hf_config.js';
import type { SafetensorsDType, TensorInfo } from './safetensors.js';

const PRESETS: Record<string, Record<string, unknown>> = {
  // Meta-Llama-3-8B's config.json shape.
  'llama-3-8b': {
    architectures: ['LlamaForCausalLM'],
    vocab_size: 128256,
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  // The demo model's shape with a 4,096-token context: long prompts on the CPU.
  'tiny-4k': {
    architectures: ['LlamaForCausalLM'],
    vocab_size: 264,
    hidden_size: 256,
    intermediate_size: 768,
    num_hidden_layers: 4,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

export const SYNTHETIC_PREFIX = 'synthetic:';

export function isSynthetic(dir: string): boolean {
  return dir.startsWith(SYNTHETIC_PREFIX);
}

export function syntheticConfig(spec: string): ModelConfig {
  const name = spec.slice(SYNTHETIC_PREFIX.length);
  const raw = PRESETS[name];
  if (!raw) throw new TesseraError(`${spec} is not a synthetic model; the presets are ${Object.keys(PRESETS).map((p) => SYNTHETIC_PREFIX + p).join(', ')}.`, 'invalid_input');
  return modelConfigFromJson(raw, spec);
}

/** Every tensor a Hugging Face checkpoint of this config holds, by name and shape. */
function tensorShapes(c: ModelConfig): Array<[string, number[]]> {
  const d = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, f = c.intermediateSize;
  const shapes: Array<[string, number[]]> = [['model.embed_tokens.weight', [c.vocabSize, d]]];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    shapes.push(
      [`${p}.input_layernorm.weight`, [d]],
      [`${p}.self_attn.q_proj.weight`, [q, d]],
      [`${p}.self_attn.k_proj.weight`, [kv, d]],
      [`${p}.self_attn.v_proj.weight`, [kv, d]],
      [`${p}.self_attn.o_proj.weight`, [d, q]],
      [`${p}.post_attention_layernorm.weight`, [d]],
      [`${p}.mlp.gate_proj.weight`, [f, d]],
      [`${p}.mlp.up_proj.weight`, [f, d]],
      [`${p}.mlp.down_proj.weight`, [d, f]],
    );
  }
  shapes.push(['model.norm.weight', [d]]);
  if (!c.tieWordEmbeddings) shapes.push(['lm_head.weight', [c.vocabSize, d]]);
  return shapes;
}

/** A stable 32-bit seed per tensor name. */
function nameSeed(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * The weights of a synthetic checkpoint: norms are 1, every matrix is uniform with standard
 * deviation 0.02 (std * sqrt(3) bounds), drawn from Philox keyed by the tensor's name.
 */
export class SyntheticWeights {
  readonly tensors = new Map<string, TensorInfo>();
  readonly totalBytes: number;

  constructor(readonly spec: string, config: ModelConfig) {
    let total = 0;
    for (const [name, shape] of tensorShapes(config)) {
      const byteLength = 2 * shape.reduce((a, b) => a * b, 1);
      this.tensors.set(name, { name, dtype: 'BF16' as SafetensorsDType, shape, file: spec, byteOffset: 0, byteLength });
      total += byteLength;
    }
    this.totalBytes = total;
  }

  /** How a backend can make the tensor itself (on the device) instead of reading it. */
  recipe(name: string): { kind: 'ones' } | { kind: 'uniform'; seed: number; bound: number } {
    const info = this.tensors.get(name);
    if (!info) throw new TesseraError(`${this.spec} has no tensor "${name}".`, 'invalid_checkpoint');
    // The bound as an f32: the device fill multiplies in f32, so the host's copy (readF32) must too
    // for both to round to the same bf16 values.
    return info.shape.length === 1 ? { kind: 'ones' } : { kind: 'uniform', seed: nameSeed(name), bound: Math.fround(0.02 * Math.sqrt(3)) };
  }

  async readF32(name: string, dst?: Float32Array): Promise<Float32Array> {
    const info = this.tensors.get(name)!;
    const n = info.shape.reduce((a, b) => a * b, 1);
    const out = dst ?? new Float32Array(n);
    const r = this.recipe(name);
    if (r.kind === 'ones') out.fill(1);
    else for (let i = 0; i < n; i++) out[i] = (2 * uniform(r.seed, 0, i) - 1) * r.bound;
    return out;
  }

  async close(): Promise<void> {}
}
