"""Train Tessera's demo model: a 3.2M-parameter byte-level Llama on the King James Bible.

Data: the public-domain KJV text from Debian's bible-kjv-text package, read through its
`bible` program (package bible-kjv). Each verse becomes one line, "Genesis 1:1 In the
beginning ...". 15% of training sequences are chat turns rendered through the checkpoint's
own chat template (user: a verse reference, assistant: the verse), so `tessera chat` has a
template that means something.

Output: a standard Hugging Face directory (config.json, model.safetensors in bf16,
tokenizer.json, tokenizer_config.json, generation_config.json) plus training.json (recipe,
loss curve, final losses). Run make_golden.py afterwards for the test fixtures.

  apt-get install python3-torch bible-kjv libopenblas0-pthread
  python3 tools/train_demo.py --out models/demo          # about 50 minutes on 2 cores
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import time

import torch
import torch.nn.functional as F

from demo_model import (ASSISTANT, BOS, EOS, SPECIAL, USER, VOCAB_SIZE, LlamaForCausalLM,
                        bytes_to_unicode, encode_bytes, save_safetensors)

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "torch_dtype": "bfloat16",
}

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ raise_exception('roles are system, user and assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def read_kjv() -> list[tuple[str, str]]:
    """[(reference, text)] for every verse, in canonical order."""
    raw = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    verses, chapter = [], None
    for line in raw.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^\s+(\d+) (.*)$", line)
        if m and chapter:
            verses.append((f"{chapter}:{m.group(1)}", m.group(2).strip()))
        else:
            chapter = line.strip()  # "Genesis 1", "1 Samuel 3"
    return verses


def chat_example(ref: str, text: str) -> list[int]:
    return [BOS, USER] + encode_bytes(ref + "\n") + [ASSISTANT] + encode_bytes(text) + [EOS] + encode_bytes("\n")


class Batches:
    def __init__(self, verses, seq_len, chat_fraction, rng):
        self.verses, self.seq_len, self.chat_fraction, self.rng = verses, seq_len, chat_fraction, rng
        self.stream = torch.tensor(encode_bytes("".join(f"{r} {t}\n" for r, t in verses)), dtype=torch.long)

    def sample(self) -> torch.Tensor:  # [seq_len + 1]
        n = self.seq_len + 1
        if self.rng.random() < self.chat_fraction:
            ids = []
            while len(ids) < n:
                ids += chat_example(*self.verses[self.rng.randrange(len(self.verses))])
            return torch.tensor(ids[:n], dtype=torch.long)
        start = self.rng.randrange(len(self.stream) - n)
        return torch.cat([torch.tensor([BOS]), self.stream[start : start + n - 1]])

    def batch(self, size: int):
        rows = torch.stack([self.sample() for _ in range(size)])
        return rows[:, :-1], rows[:, 1:]


def init_weights(model: LlamaForCausalLM, num_layers: int):
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, mean=0.0, std=std)


@torch.no_grad()
def evaluate(model, batches, iters=8, size=16) -> float:
    model.eval()
    losses = []
    for _ in range(iters):
        x, y = batches.batch(size)
        losses.append(F.cross_entropy(model(x).reshape(-1, VOCAB_SIZE), y.reshape(-1)).item())
    model.train()
    return sum(losses) / len(losses)


def write_tokenizer(out: str):
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    specials = dict(SPECIAL)
    for i in range(len(SPECIAL) + 256, VOCAB_SIZE):
        specials[i] = f"<|reserved_{i - 256 - len(SPECIAL)}|>"
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in sorted(specials.items())]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": True,
        "model_max_length": CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, ensure_ascii=False, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/demo")
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--chat-fraction", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    verses = read_kjv()
    # Every 40th chapter is held out for validation.
    chapters = sorted({r.rsplit(":", 1)[0] for r, _ in verses}, key=[r.rsplit(":", 1)[0] for r, _ in verses].index)
    held = {c for i, c in enumerate(chapters) if i % 40 == 0}
    train = Batches([v for v in verses if v[0].rsplit(":", 1)[0] not in held], args.seq_len, args.chat_fraction, rng)
    val = Batches([v for v in verses if v[0].rsplit(":", 1)[0] in held], args.seq_len, 0.0, random.Random(7))

    model = LlamaForCausalLM(CONFIG)
    init_weights(model, CONFIG["num_hidden_layers"])
    num_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    print(f"{len(verses)} verses, {len(train.stream) / 1e6:.2f} MB train text, {num_params / 1e6:.2f}M parameters", flush=True)

    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        if step <= args.warmup:
            lr = args.lr * step / args.warmup
        else:
            p = (step - args.warmup) / max(1, args.steps - args.warmup)
            lr = args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * p))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = train.batch(args.batch)
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB_SIZE), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps:
            point = {"step": step, "tokens": step * args.batch * args.seq_len, "lr": round(lr, 6),
                     "train_loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
            if step % 200 == 0 or step == args.steps:
                point["val_loss"] = round(evaluate(model, val), 4)
            curve.append(point)
            print(json.dumps(point), flush=True)

    final_val = evaluate(model, val, iters=32)
    # Export exactly what Tessera loads. Weights are stored in bf16; the reference for the
    # golden fixtures is this same model with those bf16 weights, computed in f32.
    state = {k: v for k, v in model.state_dict().items()}
    save_safetensors(os.path.join(args.out, "model.safetensors"), state, "BF16")
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": True, "temperature": 0.8, "top_p": 0.95,
                   "max_new_tokens": 200}, f, indent=1)
    write_tokenizer(args.out)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"recipe": vars(args), "config": CONFIG, "parameters": num_params,
                   "data": "King James Bible, Debian bible-kjv-text 4.38, one verse per line; every 40th chapter held out",
                   "train_bytes": len(train.stream), "val_bytes": len(val.stream),
                   "final_train_loss": curve[-1]["train_loss"], "final_val_loss": round(final_val, 4),
                   "seconds": round(time.time() - t0, 1), "threads": args.threads, "torch": torch.__version__,
                   "curve": curve}, f, indent=1)
    print(f"done: val loss {final_val:.4f} ({final_val / math.log(2):.3f} bits/byte) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
