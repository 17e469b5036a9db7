"""Tiny random checkpoints of every supported architecture, with Hugging Face transformers'
logits and greedy tokens, for Tessera's end-to-end tests (tests/e2e/hf_fixtures.test.ts).

Runs where transformers and PyTorch are installed (the GPU machine has both; no network is
needed): for each architecture it builds a small model from a transformers config with a fixed
seed, saves it with save_pretrained (safetensors, bf16), copies the byte-level tokenizer of the
demo model, and records for a fixed prompt the f32 logits of the bf16 weights at every position
and 16 greedy tokens. Weights are scaled so the greedy choices are well clear of ties (the top-2
margin is printed and recorded), so bf16 kernels on the GPU must give the same tokens.

  python3 tools/make_hf_fixtures.py --out tests/fixtures/hf
"""
import argparse
import json
import os
import shutil

import torch
import transformers as tf

VOCAB = 264
COMMON = dict(vocab_size=VOCAB, bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)

ARCHS = {
    "llama": lambda: tf.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=256, rope_theta=10000.0, **COMMON),
    "llama3": lambda: tf.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                     max_position_embeddings=1024, rope_theta=500000.0,
                                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 64}, **COMMON),
    "mistral": lambda: tf.MistralConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256, sliding_window=12, **COMMON),
    "qwen2": lambda: tf.Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=256, **COMMON),
    "qwen3": lambda: tf.Qwen3Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=32, max_position_embeddings=256, **COMMON),
    "gpt2": lambda: tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=VOCAB, bos_token_id=256, eos_token_id=257),
}
MODELS = {"llama": tf.LlamaForCausalLM, "llama3": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM,
          "qwen2": tf.Qwen2ForCausalLM, "qwen3": tf.Qwen3ForCausalLM, "gpt2": tf.GPT2LMHeadModel}
PROMPT = [256] + list(b"In the beginning God created the heaven")
STEPS = 16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/hf")
    ap.add_argument("--demo", default="models/demo")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    summary = {"transformers": tf.__version__, "torch": torch.__version__, "device": device, "models": {}}
    for name, make_config in ARCHS.items():
        torch.manual_seed(1234)
        config = make_config()
        config.attn_implementation = "eager"
        model = MODELS[name](config)
        # Larger output weights make the greedy choice clear of ties at bf16 precision.
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(8.0)
        model = model.to(torch.bfloat16)
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.demo, f), os.path.join(out, f))
        ref = model.float().to(device).eval()
        ids = torch.tensor([PROMPT], device=device)
        with torch.no_grad():
            prompt_logits = ref(ids).logits[0].float().cpu()
            seq, steps, margins = list(PROMPT), [], []
            for _ in range(STEPS):
                logits = ref(torch.tensor([seq], device=device)).logits[0, -1].float().cpu()
                top2 = logits.topk(2).values
                margins.append(float(top2[0] - top2[1]))
                token = int(logits.argmax())
                steps.append(token)
                seq.append(token)
        torch.save({"prompt_logits": prompt_logits}, os.path.join(out, "reference.pt"))
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump({"prompt_ids": PROMPT, "greedy_ids": steps, "min_top2_margin": min(margins),
                       "prompt_logits": [[round(float(x), 5) for x in row] for row in prompt_logits.tolist()]}, f)
        summary["models"][name] = {"min_top2_margin": min(margins), "greedy": steps}
        print(name, "min top-2 margin", round(min(margins), 4))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
