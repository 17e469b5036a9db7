#!/usr/bin/env python3
"""Hugging Face transformers baseline for `tessera bench serve`, on a GPU.

Builds a Llama-3-8B-shaped model (the numbers of Tessera's synthetic:llama-3-8b preset, that is
Meta-Llama-3-8B's config.json) with random bf16 weights directly on the GPU (nothing is
downloaded), then runs the serving workloads of `tessera bench serve` as static batches through
`model.generate`: 128 prompt + 128 output tokens and 1000 + 200, at batch 1, 8, 64 and 256 (the
concurrencies). Prompts are random token ids; EOS is ignored by min_new_tokens = max_new_tokens,
greedy. For each it measures

  * time to first token: a generate() of max_new_tokens=1 (prefill plus one sampled token),
  * end-to-end time of the whole batch, from which output tokens/s (batch * output / time),
    requests/s, and the decode rate after the first token.

A static batch has no queueing and every request finishes together, so these are the best case
of a server that runs the batch as one (no continuous batching). A shape that does not fit in GPU
memory is reported as out of memory and the run goes on (on an 80 GB H100, 1000 + 200 at batch 256
needs about 15 GiB of weights, 38 GiB of KV cache and some 20 GiB of prefill activations, so it
may not fit; it does on an H200). Every shape runs once untimed, then --runs times timed (default
1); the whole run takes a few minutes. Writes JSON with the GPU, driver, torch,
transformers and CUDA versions and the date:

    python3 bench/hf_batched_generate.py --out $OUT/hf.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Less fragmentation for the large batches; set before torch initializes CUDA.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

# src/formats/synthetic.ts, preset 'llama-3-8b' (Meta-Llama-3-8B's config.json).
LLAMA_3_8B = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    torch_dtype="bfloat16",
)

WORKLOADS = {"128x128": (128, 128), "1000x200": (1000, 200)}
BATCHES = [1, 8, 64, 256]


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except Exception:  # no nvidia-smi: leave it out
        return None


def build_model() -> LlamaForCausalLM:
    """Random weights (transformers' own init: normal, std 0.02), made on the GPU in bf16."""
    config = LlamaConfig(**LLAMA_3_8B)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    gen = model.generation_config
    gen.do_sample = False
    gen.temperature = None
    gen.top_p = None
    gen.top_k = None
    gen.pad_token_id = config.eos_token_id
    return model


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.inference_mode()
def generate(model: LlamaForCausalLM, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # EOS is suppressed until then: exactly new_tokens each
        do_sample=False,
        pad_token_id=model.config.eos_token_id,
    )
    if out.shape != (ids.shape[0], ids.shape[1] + new_tokens):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(ids.shape[0], ids.shape[1] + new_tokens)}")
    return out


def run_one(model: LlamaForCausalLM, batch: int, input_len: int, output_len: int, runs: int, seed: int) -> dict:
    g = torch.Generator(device="cuda")
    g.manual_seed(seed + 1000 * batch + input_len)
    ids = torch.randint(0, model.config.vocab_size, (batch, input_len), device="cuda", generator=g)
    torch.cuda.reset_peak_memory_stats()
    generate(model, ids, 1)  # warm-up of this shape: kernels, cuBLAS heuristics, the allocator
    ttfts, totals = [], []
    for _ in range(runs):
        ttfts.append(timed(lambda: generate(model, ids, 1)))
        totals.append(timed(lambda: generate(model, ids, output_len)))
    ttft = statistics.median(ttfts)
    total = statistics.median(totals)
    return {
        "batch": batch,
        "inputLen": input_len,
        "outputLen": output_len,
        "runs": runs,
        "ttftMs": round(ttft * 1000, 2),
        "e2eMs": round(total * 1000, 2),
        "requestsPerS": round(batch / total, 3),
        "outputTokensPerS": round(batch * output_len / total, 1),
        "inputTokensPerS": round(batch * input_len / total, 1),
        # Tokens after the first, over the time after the first (prefill excluded).
        "decodeTokensPerS": round(batch * (output_len - 1) / max(total - ttft, 1e-9), 1) if output_len > 1 else None,
        "interTokenMs": round((total - ttft) * 1000 / max(output_len - 1, 1), 3),
        "peakMemoryGiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "ttftRunsMs": [round(t * 1000, 2) for t in ttfts],
        "e2eRunsMs": [round(t * 1000, 2) for t in totals],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the JSON")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes (the concurrencies)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per shape after one warm-up; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("hf_batched_generate.py: no CUDA GPU is visible to torch.", file=sys.stderr)
        return 1
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w}; the workloads are {', '.join(WORKLOADS)}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    t0 = time.perf_counter()
    model = build_model()
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    params = sum(t.numel() for t in model.parameters())
    print(f"built {params / 1e9:.2f}B-parameter Llama-3-8B shape in {build_s:.1f}s on {torch.cuda.get_device_name(0)}", flush=True)
    generate(model, torch.randint(0, 1000, (1, 16), device="cuda"), 4)  # CUDA and library warm-up

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {
            "gpu": torch.cuda.get_device_name(0),
            "gpuMemoryGiB": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "driver": driver_version(),
            "cuda": torch.version.cuda,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "model": {
            "shape": "synthetic:llama-3-8b (Meta-Llama-3-8B config), random weights",
            "parameters": params,
            "dtype": "bfloat16",
            "attention": getattr(model.config, "_attn_implementation", None),
            "buildSeconds": round(build_s, 1),
            "config": LLAMA_3_8B,
        },
        "method": "static batches through model.generate, greedy, min_new_tokens = max_new_tokens; "
        "TTFT = a generate() of 1 new token; tokens/s = batch * output / end-to-end time; one untimed warm-up per shape",
        "results": [],
    }
    for name in workloads:
        input_len, output_len = WORKLOADS[name]
        for batch in batches:
            entry: dict = {"workload": name, "batch": batch, "inputLen": input_len, "outputLen": output_len}
            try:
                entry.update(run_one(model, batch, input_len, output_len, args.runs, args.seed))
                print(
                    f"{name:>9} batch {batch:>3}: TTFT {entry['ttftMs']:9.1f} ms  E2E {entry['e2eMs']:9.1f} ms  "
                    f"{entry['outputTokensPerS']:9.1f} output tok/s  peak {entry['peakMemoryGiB']} GiB",
                    flush=True,
                )
            except torch.cuda.OutOfMemoryError as err:
                entry["error"] = "out of memory"
                entry["detail"] = str(err).split("\n")[0][:300]
                print(f"{name:>9} batch {batch:>3}: out of memory", flush=True)
            report["results"].append(entry)
            gc.collect()
            torch.cuda.empty_cache()
            # Written after every shape, so a run cut short still leaves its figures.
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
