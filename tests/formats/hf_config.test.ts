import { describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { modelConfigFromJson, parseModelConfig } from '../../src/formats/hf_config.js';

const LLAMA3_8B = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  rope_scaling: { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  vocab_size: 128256,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
};

describe('config.json', () => {
  it('reads a Llama-3.1-8B config', () => {
    const c = modelConfigFromJson(LLAMA3_8B);
    expect(c).toMatchObject({
      architecture: 'llama',
      hiddenSize: 4096,
      numHeads: 32,
      numKvHeads: 8,
      headDim: 128,
      intermediateSize: 14336,
      norm: 'rmsnorm',
      normEps: 1e-5,
      positions: 'rope',
      qkvBias: false,
      oBias: false,
      tieWordEmbeddings: false,
      bosTokenId: 128000,
      eosTokenIds: [128001, 128008, 128009],
      dtype: 'bfloat16',
      slidingWindow: null,
    });
    expect(c.rope).toEqual({
      theta: 500000,
      rotaryDim: 128,
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    });
  });

  it('Qwen2 has q/k/v bias and no o bias; Qwen3 has q/k norm and an explicit head_dim', () => {
    const base = { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 100 };
    const q2 = modelConfigFromJson({ ...base, architectures: ['Qwen2ForCausalLM'] });
    expect([q2.qkvBias, q2.oBias, q2.qkNorm]).toEqual([true, false, false]);
    const q3 = modelConfigFromJson({ ...base, architectures: ['Qwen3ForCausalLM'], head_dim: 32 });
    expect([q3.qkvBias, q3.qkNorm, q3.headDim]).toEqual([false, true, 32]);
  });

  it('Qwen windows only with use_sliding_window, and only from max_window_layers on', () => {
    const base = { architectures: ['Qwen2ForCausalLM'], hidden_size: 64, intermediate_size: 128, num_hidden_layers: 4, num_attention_heads: 4, vocab_size: 100, max_position_embeddings: 1024, sliding_window: 64 };
    expect(modelConfigFromJson({ ...base, use_sliding_window: false, max_window_layers: 1 }).slidingWindow).toBeNull();
    const c = modelConfigFromJson({ ...base, use_sliding_window: true, max_window_layers: 2 });
    expect([c.slidingWindow, c.firstWindowLayer]).toEqual([64, 2]);
  });

  it("Mistral's window is 4096 when the key is absent and none when it is null", () => {
    const base = { architectures: ['MistralForCausalLM'], hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 100, max_position_embeddings: 32768 };
    expect(modelConfigFromJson(base).slidingWindow).toBe(4096);
    expect(modelConfigFromJson({ ...base, sliding_window: null }).slidingWindow).toBeNull();
    expect(modelConfigFromJson({ ...base, sliding_window: 1024 }).slidingWindow).toBe(1024);
  });

  it('reads GPT-2 (LayerNorm with bias, GELU, learned positions, tied)', () => {
    const c = modelConfigFromJson({ architectures: ['GPT2LMHeadModel'], n_embd: 768, n_head: 12, n_layer: 12, n_positions: 1024, vocab_size: 50257, activation_function: 'gelu_new', layer_norm_epsilon: 1e-5, bos_token_id: 50256, eos_token_id: 50256 });
    expect(c).toMatchObject({ architecture: 'gpt2', headDim: 64, intermediateSize: 3072, norm: 'layernorm', activation: 'gelu_tanh', positions: 'learned', rope: null, tieWordEmbeddings: true, qkvBias: true, oBias: true, mlpBias: true, eosTokenIds: [50256] });
  });

  it('names the file and field of every problem', () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...LLAMA3_8B, architectures: ['FalconForCausalLM'] }, /cfg.json: architecture FalconForCausalLM is not supported/],
      [{ ...LLAMA3_8B, architectures: undefined }, /cfg.json: "architectures" must list the model class/],
      [{ ...LLAMA3_8B, hidden_size: undefined }, /cfg.json: the field "hidden_size" is missing/],
      [{ ...LLAMA3_8B, num_key_value_heads: 6 }, /num_attention_heads \(32\) must be a multiple of num_key_value_heads \(6\)/],
      [{ ...LLAMA3_8B, hidden_size: 4001 }, /hidden_size \(4001\) must be a multiple of num_attention_heads \(32\)/],
      [{ ...LLAMA3_8B, vocab_size: -1 }, /"vocab_size" must be an integer >= 1, not -1/],
      [{ ...LLAMA3_8B, rope_scaling: { rope_type: 'yarn', factor: 4 } }, /rope_scaling type "yarn" is not supported/],
      [{ ...LLAMA3_8B, hidden_act: 'relu' }, /hidden_act "relu" is not supported/],
      [{ ...LLAMA3_8B, torch_dtype: 'float8_e4m3fn' }, /cfg.json: torch_dtype "float8_e4m3fn" is not supported/],
      [{ ...LLAMA3_8B, eos_token_id: 'x' }, /"eos_token_id" must be a token id or a list of them/],
    ];
    for (const [raw, re] of cases) {
      const attempt = () => modelConfigFromJson(raw, 'cfg.json');
      expect(attempt).toThrow(TesseraError);
      expect(attempt).toThrow(re);
    }
    expect(() => parseModelConfig('{"a":', 'x/config.json')).toThrow(/x\/config.json is not valid JSON/);
  });
});
