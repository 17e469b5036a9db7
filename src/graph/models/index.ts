/** The architectures Tessera builds, each written once as a graph. */
import type { ModelConfig } from '../../formats/hf_config.js';
import type { Graph } from '../ir.js';
import { buildGpt2 } from './gpt2.js';
import { buildLlama } from './llama.js';

export interface BuildOptions {
  /** Tokens per KV-cache block. */
  kvBlockSize: number;
}

export function buildModelGraph(config: ModelConfig, opts: BuildOptions): Graph {
  switch (config.architecture) {
    case 'llama':
    case 'mistral':
    case 'qwen2':
    case 'qwen3':
      return buildLlama(config, opts);
    case 'gpt2':
      return buildGpt2(config, opts);
  }
}

/**
 * Other names a checkpoint may use for a tensor the graph names `name`: GPT-2 checkpoints
 * saved from GPT2Model rather than GPT2LMHeadModel lack the "transformer." prefix.
 */
export function weightAliases(config: ModelConfig, name: string): string[] {
  if (config.architecture === 'gpt2' && name.startsWith('transformer.')) return [name, name.slice('transformer.'.length)];
  return [name];
}

/**
 * Checkpoint tensors that are known and unused (buffers saved beside the weights): not an error.
 * GPT-2 checkpoints carry the causal-mask buffers attn.bias and attn.masked_bias.
 */
export function isIgnorableTensor(config: ModelConfig, name: string): boolean {
  if (config.architecture === 'gpt2') return /(^|\.)attn\.(bias|masked_bias)$/.test(name);
  return /rotary_emb\.inv_freq$/.test(name);
}
