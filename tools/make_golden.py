"""Record the demo model's reference outputs for Tessera's golden tests.

Loads the exported Hugging Face directory (bf16 weights, widened to f32) into the plain
PyTorch Llama of demo_model.py, which shares no code with Tessera, and records for each
prompt: the token ids, the logits at every prompt position, and 32 greedy steps (the
token chosen and the full logits it was chosen from). The logits go to golden.safetensors
(F32), everything else to golden.json.

  python3 tools/make_golden.py --model models/demo --out tests/fixtures/demo
"""
import argparse
import json
import os

import torch

from demo_model import ASSISTANT, BOS, USER, LlamaForCausalLM, encode_bytes, load_safetensors, save_safetensors

# (name, text given to Tessera's tokenizer or chat template, the ids it must produce)
PROMPTS = [
    ("plain", {"text": "In the beginning"}, [BOS] + encode_bytes("In the beginning")),
    ("verse", {"text": "John 3:16 "}, [BOS] + encode_bytes("John 3:16 ")),
    ("said", {"text": "And God said"}, [BOS] + encode_bytes("And God said")),
    ("chat", {"messages": [{"role": "user", "content": "Psalms 23:1"}]}, [BOS, USER] + encode_bytes("Psalms 23:1\n") + [ASSISTANT]),
]
STEPS = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--out", default="tests/fixtures/demo")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(load_safetensors(os.path.join(args.model, "model.safetensors")), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()

    os.makedirs(args.out, exist_ok=True)
    tensors, cases = {}, []
    with torch.no_grad():
        for name, prompt, ids in PROMPTS:
            seq = list(ids)
            prompt_logits = model(torch.tensor([seq]))[0]  # [P, V]
            step_logits, generated = [], []
            for _ in range(STEPS):
                last = model(torch.tensor([seq]))[0, -1]
                token = int(last.argmax())
                step_logits.append(last)
                generated.append(token)
                seq.append(token)
            tensors[f"{name}.prompt_logits"] = prompt_logits
            tensors[f"{name}.step_logits"] = torch.stack(step_logits)
            margin = [float((l.topk(2).values[0] - l.topk(2).values[1])) for l in step_logits]
            cases.append({"name": name, **prompt, "prompt_ids": ids, "greedy_ids": generated,
                          "greedy_text": bytes(t for t in generated if t < 256).decode("utf-8", "replace"),
                          "min_top2_margin": round(min(margin), 5)})
            print(name, repr(cases[-1]["greedy_text"]), "min top-2 margin", cases[-1]["min_top2_margin"])
    save_safetensors(os.path.join(args.out, "golden.safetensors"), tensors, "F32")
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({"model": args.model, "steps": STEPS, "torch": torch.__version__,
                   "reference": "tools/demo_model.py, bf16 weights widened to f32, f32 compute", "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
