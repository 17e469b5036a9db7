#!/usr/bin/env python3
"""PyTorch side of the kernel benchmark: the cases of bench/kernel_shapes.json, timed through PyTorch.

Families (all on fresh random data, bf16 unless the device lacks it):

  ceilings           device-to-device copy of 1 GiB (bytes read + written per second) and the best
                     large bf16 matrix product (torch.matmul at gemm.ceiling, NN and NT layouts);
  gemm               F.linear(x[M,K], w[N,K]) = x w^T for every projection x M (and in float16
                     for the gemm.f16 cases, on a GPU); for the gemm.residual cases x w^T + r as
                     torch.addmm (r as the GEMM's C) and as F.linear then add; for the gemm.glu
                     cases silu(gate) * up of z = F.linear(x, w_gate_up), for the gemm.rms
                     cases F.linear(rmsnorm(x) * g, w), and for the gemm.rope cases
                     F.linear(x, w_qkv) then rope_kv_write into a paged cache, each eager and
                     under torch.compile;
  attention_prefill  F.scaled_dot_product_attention on [B, H, S, D] with GQA, under each SDPA
                     backend (flash, efficient, cudnn, math) and an explicit matmul/softmax version;
  attention_decode   the same with one query per sequence over a contiguous (not paged) KV cache;
  memory_bound       rmsnorm, add_rmsnorm, add_layernorm, silu_mul and rope_kv_write, eager and
                     under torch.compile.

Each case runs once and is checked (finite output; relative error against a float32/float64
reference), then is warmed up and timed: CUDA events around every call, median of --runs calls,
rotating among enough input sets that the sets together exceed twice the L2 cache. One failing
case or backend is recorded as {"error": ...} and the run goes on. Writes one JSON object and
prints a table (fastest variant per case) last.

On the GPU machine:

    python3 bench/torch_kernels.py --out $OUT/torch_kernels.json

End-to-end check of every path that is not CUDA-only, on a CPU and tiny shapes:

    python3 bench/torch_kernels.py --device cpu --smoke --runs 3 --out /tmp/torch_smoke.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_SHAPES = Path(__file__).resolve().with_name("kernel_shapes.json")
FAMILIES = ("gemm", "attention_prefill", "attention_decode", "memory_bound")
EPS = 1e-5  # rms_norm_eps of Llama 3
H100_L2_BYTES = 50 * MiB  # used when the device does not report its L2 size

# Tiny cases for --smoke: the same structure as kernel_shapes.json, small enough for a CPU.
SMOKE_SHAPES = {
    "gemm": {
        "m": [1, 4],
        "projections": [
            {"model": "smoke", "name": "qkv", "n": 48, "k": 32},
            {"model": "smoke", "name": "gate_up", "n": 64, "k": 32},
            {"model": "smoke", "name": "down", "n": 32, "k": 64},
        ],
        "ceiling": {"m": 128, "n": 128, "k": 128},
    },
    "attention": {
        "prefill": [
            {"heads": 4, "kvHeads": 2, "headDim": 16, "batch": 2, "seqlen": 32, "causal": True},
            {"heads": 4, "kvHeads": 2, "headDim": 16, "batch": 1, "seqlen": 16, "causal": False},
            {"heads": 2, "kvHeads": 2, "headDim": 8, "batch": 1, "seqlen": 16, "causal": True},
        ],
        "decode": [
            {"heads": 4, "kvHeads": 2, "headDim": 16, "batch": 2, "context": 32},
            {"heads": 4, "kvHeads": 1, "headDim": 16, "batch": 1, "context": 24},
        ],
        "kvBlockSize": 4,
    },
    "memoryBound": {
        "rows": [4, 8],
        "hidden": [32, 64],
        "ops": ["rmsnorm", "add_rmsnorm", "add_layernorm", "silu_mul", "rope_kv_write"],
        "rope": {"heads": 4, "kvHeads": 2, "headDim": 16, "kvBlockSize": 4},
    },
}


# ----------------------------------------------------------------------------------------------
# The memory-bound ops, written the way Hugging Face Llama writes them. Plain functions, so that
# torch.compile sees the same code that runs eagerly.

def _wide(x: torch.Tensor) -> torch.Tensor:
    """f32 for 16-bit inputs; the reference runs in float64 and stays there."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def rmsnorm(x, w):
    # HF LlamaRMSNorm: normalize in f32, cast back, then scale by the weight in the input dtype.
    xf = _wide(x)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
    return w * y.to(x.dtype)


def add_rmsnorm(x, residual, w):
    s = x + residual
    return s, rmsnorm(s, w)


def add_layernorm(x, residual, w, b):
    s = x + residual
    return s, F.layer_norm(s, (s.shape[-1],), w, b, EPS)


def silu_mul(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)  # [rows, 2 hidden] as gate | up
    return F.silu(gate) * up


def rope_kv_write(q, k, v, positions, slots, cos_table, sin_table, k_cache, v_cache):
    """Rotate-half rope on q [R, Hq D] and k [R, Hkv D]; k and v go to the paged cache
    [blocks, blockSize, Hkv, D] at `slots` (flat slot = block * blockSize + offset). Returns q."""
    rows, half = q.shape[0], cos_table.shape[1]
    d = 2 * half
    kv_heads = k_cache.shape[2]
    cos = cos_table[positions].unsqueeze(1)  # [R, 1, D/2], f32 table rows
    sin = sin_table[positions].unsqueeze(1)

    def rotate(x):
        xf = _wide(x.view(rows, -1, d))
        x1, x2 = xf[..., :half], xf[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    q_out = rotate(q).view(rows, -1)
    k_cache.view(-1, kv_heads, d).index_copy_(0, slots, rotate(k))
    v_cache.view(-1, kv_heads, d).index_copy_(0, slots, v.view(rows, kv_heads, d))
    return q_out


def explicit_attention(q, k, v, mask, scale):
    """Attention as two matmuls and a softmax, GQA without copying K/V: the G query heads that share
    a KV head are stacked as G*S rows. mask [G*S, Sk] is True where a score is dropped."""
    b, h, s, d = q.shape
    kv = k.shape[1]
    scores = torch.matmul(q.reshape(b, kv, (h // kv) * s, d), k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(p, v).reshape(b, h, s, d)


def causal_mask(group, s, sk, device, row0=0, row1=None):
    """Rows row0..row1 of the [group*s, sk] mask: query row r is position r % s of the last s keys."""
    row1 = group * s if row1 is None else row1
    qpos = torch.arange(row0, row1, device=device) % s + (sk - s)
    return torch.arange(sk, device=device)[None, :] > qpos[:, None]


def attention_reference(q, k, v, causal, dtype, budget):
    """Attention in `dtype`, in chunks of (batch, KV head) pairs and query rows so that the scores
    of one chunk stay under `budget` bytes."""
    b, h, s, d = q.shape
    kv, sk = k.shape[1], k.shape[2]
    g = h // kv
    pairs, rows = b * kv, g * s
    qg, kg, vg = q.reshape(pairs, rows, d), k.reshape(pairs, sk, d), v.reshape(pairs, sk, d)
    esize = torch.empty((), dtype=dtype).element_size()
    out = torch.empty(pairs, rows, d, dtype=dtype, device=q.device)
    per_pair = (3 * rows * sk + 2 * sk * d + 2 * rows * d) * esize
    pair_step = max(1, budget // per_pair)
    row_step = rows if pair_step > 1 else max(1, budget // (3 * sk * esize))
    scale = 1.0 / math.sqrt(d)
    for p0 in range(0, pairs, pair_step):
        p1 = min(pairs, p0 + pair_step)
        kk, vv = kg[p0:p1].to(dtype), vg[p0:p1].to(dtype)
        for r0 in range(0, rows, row_step):
            r1 = min(rows, r0 + row_step)
            sc = torch.matmul(qg[p0:p1, r0:r1].to(dtype), kk.transpose(-1, -2)) * scale
            if causal:
                sc.masked_fill_(causal_mask(g, s, sk, q.device, r0, r1), float("-inf"))
            out[p0:p1, r0:r1] = torch.matmul(torch.softmax(sc, dim=-1), vv)
    return out.reshape(b, h, s, d)


# ----------------------------------------------------------------------------------------------
# Environment

def run_cmd(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip()
    except Exception:  # absent tool or no GPU: leave it out
        return None


def nvidia_smi_clocks() -> dict | None:
    fields = ["clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem"]
    out = run_cmd(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if not out:
        return None
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(fields, values)) if len(values) == len(fields) else {"raw": out}


def gpu_info(device: torch.device) -> dict | None:
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    l2 = getattr(p, "L2_cache_size", None)
    return {
        "name": p.name,
        "compute_capability": f"{p.major}.{p.minor}",
        "sm_count": p.multi_processor_count,
        "memory_bytes": p.total_memory,
        "l2_bytes": l2 if l2 else None,
    }


def driver_info(device: torch.device) -> dict | None:
    if device.type != "cuda":
        return None
    smi = run_cmd(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    api = None
    get = getattr(torch._C, "_cuda_getDriverVersion", None)
    if get is not None:
        try:
            api = get()
        except Exception:
            api = None
    if smi is None and api is None:
        return None
    return {"nvidia_smi": smi.splitlines()[0] if smi else None, "cuda_driver_api": api}


def pick_dtype(device: torch.device, wanted: str) -> tuple[torch.dtype, str | None]:
    """bf16 where every op of this benchmark has a bf16 kernel on the device, else float32."""
    if wanted == "float32":
        return torch.float32, "float32: asked for with --dtype"
    try:
        x = torch.randn(4, 16, device=device, dtype=torch.bfloat16)
        w = torch.randn(8, 16, device=device, dtype=torch.bfloat16)
        F.linear(x, w)
        torch.matmul(x, x.t())
        torch.softmax(x, -1, dtype=torch.float32)
        F.layer_norm(x, (16,), x[0], x[1], EPS)
        F.silu(x) * x
        torch.rsqrt(x.float().pow(2).mean(-1))
        x.view(-1, 4).index_copy_(0, torch.tensor([1, 0], device=device), x.view(-1, 4)[:2].clone())
        return torch.bfloat16, None
    except Exception as e:
        if wanted == "bfloat16":
            raise
        return torch.float32, f"float32: bf16 kernels missing on {device} in torch {torch.__version__} ({e})"


def matmul_flag(name: str):
    try:  # older torch raises on unknown names instead of AttributeError
        return getattr(torch.backends.cuda.matmul, name)
    except Exception:
        return None


def clean_json(x):
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return x


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def as_list(res) -> list[torch.Tensor]:
    return list(res) if isinstance(res, (tuple, list)) else [res]


def upcast(args, dtype):
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def short(msg: str, limit: int = 1500) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[:limit] + " ..."


class CheckError(RuntimeError):
    pass


class Refused(RuntimeError):
    """A backend that declined a case in every GQA mode tried."""


# ----------------------------------------------------------------------------------------------
# Measurement

class Bench:
    def __init__(self, args):
        self.args = args
        device = torch.device(args.device)
        if device.type == "cuda" and device.index is None:
            # Several torch.cuda calls (set_device, mem_get_info) want an explicit index.
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(device)
            if matmul_flag("allow_tf32"):  # off by default; the float32 references must be true float32
                torch.backends.cuda.matmul.allow_tf32 = False
        self.smoke = args.smoke
        self.runs, self.warmup = args.runs, args.warmup
        self.dtype, self.dtype_note = pick_dtype(self.device, args.dtype)
        self.esize = torch.empty((), dtype=self.dtype).element_size()
        self.tol = 2e-2 if self.esize == 2 else 1e-4
        # References: float64 on a CPU, float32 (tf32 off) for the large GPU matmuls.
        self.ref_dtype = torch.float32 if self.cuda else torch.float64
        self.ref_budget = GiB if self.cuda else 64 * MiB
        # MATH and the explicit version materialize S x S scores; the smoke run lowers the limit
        # so that the skip path runs too.
        self.scores_max_seqlen = 16 if self.smoke else 4096
        if args.l2_bytes:
            self.l2_bytes, self.l2_source = args.l2_bytes, "--l2-bytes"
        elif self.cuda:
            l2 = getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 0)
            self.l2_bytes, self.l2_source = (l2, "device") if l2 else (H100_L2_BYTES, "assumed (H100)")
        else:
            self.l2_bytes, self.l2_source = 256 * 1024, "assumed (CPU)"
        self.graphs = self.cuda and not args.no_graphs
        self.attn = None  # what SDPA offers, from sdpa_support()
        self.copy_gb_s = None
        self.gemm_tflops = None
        self.broken = None
        self.t0 = time.perf_counter()

    # -- small helpers
    def log(self, msg: str):
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def randn(self, shape, scale: float = 1.0, dtype=None) -> torch.Tensor:
        t = torch.randn(shape, device=self.device, dtype=dtype or self.dtype)
        return t.mul_(scale) if scale != 1.0 else t

    def memory_budget(self) -> int:
        if self.cuda:
            return int(0.4 * torch.cuda.mem_get_info(self.device)[0])
        return 512 * MiB

    def sets_for(self, bytes_per_call: int, bytes_per_set: int) -> int:
        """Enough input sets that the bytes touched between two uses of a set exceed 2 x L2."""
        wanted = 2 * self.l2_bytes // max(1, bytes_per_call) + 1
        room = self.memory_budget() // max(1, bytes_per_set)
        return int(max(1, min(wanted, room, 4096)))

    def method(self, sets: int) -> dict:
        return {"runs": self.runs, "warmup": self.warmup, "sets": sets}

    def pct_copy(self, gb_s):
        return round(100 * gb_s / self.copy_gb_s, 1) if gb_s and self.copy_gb_s else None

    def pct_gemm(self, tflops):
        return round(100 * tflops / self.gemm_tflops, 1) if tflops and self.gemm_tflops else None

    # -- timing
    def time_calls(self, fn, sets) -> dict:
        n = len(sets)
        for i in range(self.warmup):
            fn(*sets[i % n])
        self.sync()
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
            for i in range(self.runs):
                args = sets[(self.warmup + i) % n]
                starts[i].record()
                fn(*args)
                ends[i].record()
            torch.cuda.synchronize(self.device)  # also raises any asynchronous CUDA error
            times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        else:
            times = []
            for i in range(self.runs):
                args = sets[(self.warmup + i) % n]
                t = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        return {
            "ms": round(statistics.median(times), 6),
            "ms_min": round(times[0], 6),
            "ms_q1": round(q[0], 6),
            "ms_q3": round(q[2], 6),
            "ms_max": round(times[-1], 6),
        }

    def time_graph(self, fn, sets) -> dict:
        """Device time without the host in it: `calls` calls (cycling the sets) captured in one CUDA
        graph, each replay timed with events and divided by `calls`. For ops whose kernels are
        shorter than their launches, where per-call events also count the gaps between launches."""
        n = len(sets)
        calls = max(n, 10)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # capture wants lazily created state (workspaces) made first
            for i in range(3):
                fn(*sets[i % n])
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.sync()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(*sets[i % n])
        graph.replay()
        self.sync()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        for i in range(self.runs):
            starts[i].record()
            graph.replay()
            ends[i].record()
        torch.cuda.synchronize(self.device)
        times = sorted(st.elapsed_time(en) / calls for st, en in zip(starts, ends))
        del graph
        return {"ms_graph": round(statistics.median(times), 6), "ms_graph_min": round(times[0], 6),
                "graph_calls": calls}

    def check(self, outs, refs) -> dict:
        for o in outs:
            if not bool(torch.isfinite(o).all()):
                raise CheckError("check failed: output has NaN or infinite values")
        if refs is None:
            return {"finite": True}
        num = den = 0.0
        for o, r in zip(outs, refs):
            num += float((o.to(r.dtype) - r).double().norm()) ** 2
            den += float(r.double().norm()) ** 2
        rel = math.sqrt(num / den) if den > 0 else float("inf")
        if not rel <= self.tol:
            raise CheckError(f"check failed: relative error {rel:.3g} > {self.tol:g}")
        return {"finite": True, "rel_err": float(f"{rel:.3g}"), "tol": self.tol,
                "ref_dtype": str(refs[0].dtype).replace("torch.", "")}

    def measure(self, fn, sets, refs=None, outputs=None, prepare=None, graph=False) -> dict:
        """One checked call on set 0 (for torch.compile: the compile), then warm-up and timing;
        with `graph` (CUDA only), graph-replay timing as well."""
        args0 = sets[0]
        if prepare is not None:
            prepare(args0)
        self.sync()
        t = time.perf_counter()
        res = fn(*args0)
        self.sync()
        first_s = time.perf_counter() - t
        outs = outputs(res, args0) if outputs else as_list(res)
        chk = self.check(outs, refs)
        del res, outs
        timing = self.time_calls(fn, sets)
        if graph and self.cuda and self.graphs:
            try:
                timing.update(self.time_graph(fn, sets))
            except Exception as e:  # the per-call figures stand without it
                timing["graph_error"] = short(f"{type(e).__name__}: {e}", 600)
                self.cleanup()
        return {**timing, "first_call_s": round(first_s, 4), "check": chk}

    def cleanup(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def guard(self, fn) -> dict:
        """Runs one case or variant; an exception becomes {"error": ...}."""
        if self.broken:
            return {"error": f"skipped: the CUDA context failed earlier ({self.broken})"}
        try:
            return fn()
        except Exception as e:  # any failure of one case is data, not the end of the run
            msg = short(f"{type(e).__name__}: {e}")
            if self.cuda:
                try:
                    torch.cuda.synchronize(self.device)
                except Exception as e2:
                    self.broken = short(f"{type(e2).__name__}: {e2}", 300)
            return {"error": msg}
        finally:
            self.cleanup()


# ----------------------------------------------------------------------------------------------
# Ceilings

def run_ceilings(b: Bench, shapes: dict) -> dict:
    out = {}

    def copy():
        nbytes = 8 * MiB if b.smoke else GiB
        src = b.randn(nbytes // b.esize)
        dst = torch.empty_like(src)
        moved = 2 * nbytes
        res = b.measure(lambda d, s: d.copy_(s), [(dst, src)])
        gb_s = moved / (res["ms"] * 1e-3) / 1e9
        b.copy_gb_s = gb_s
        return {"op": "dst.copy_(src)", "bytes_per_copy": nbytes, "bytes_moved": moved,
                "bytes_formula": "2 * nbytes (read + write)", **res, "gb_s": sig(gb_s),
                "gb_s_best": sig(moved / (res["ms_min"] * 1e-3) / 1e9), "method": b.method(1)}

    def gemm():
        c = shapes["gemm"]["ceiling"]
        m, n, k = c["m"], c["n"], c["k"]
        flops = 2 * m * n * k
        rec = {"op": "torch.matmul", "m": m, "n": n, "k": k, "dtype": str(b.dtype).replace("torch.", ""),
               "flops": flops, "layouts": {}}
        a = b.randn((m, k))
        bnk = b.randn((n, k), 1 / math.sqrt(k))
        bkn = b.randn((k, n), 1 / math.sqrt(k))
        layouts = {"nn": (lambda x, y: torch.matmul(x, y), bkn),
                   "nt": (lambda x, y: torch.matmul(x, y.t()), bnk)}
        for name, (fn, w) in layouts.items():
            def one(fn=fn, w=w):
                r = b.measure(fn, [(a, w)])
                r["tflops"] = sig(flops / (r["ms"] * 1e-3) / 1e12)
                r["tflops_best"] = sig(flops / (r["ms_min"] * 1e-3) / 1e12)
                return r
            rec["layouts"][name] = b.guard(one)
        best = [v["tflops"] for v in rec["layouts"].values() if "tflops" in v]
        if not best:
            raise RuntimeError("no layout of the ceiling GEMM ran")
        b.gemm_tflops = max(best)
        rec["tflops"] = b.gemm_tflops
        rec["note"] = "tflops: median of the faster layout; the percentages of other cases use it"
        rec["method"] = b.method(1)
        return rec

    out["copy"] = b.guard(copy)
    b.log(f"ceiling copy: {out['copy'].get('gb_s', out['copy'].get('error'))} GB/s")
    out["gemm"] = b.guard(gemm)
    b.log(f"ceiling gemm: {out['gemm'].get('tflops', out['gemm'].get('error'))} TFLOP/s")
    return out


# ----------------------------------------------------------------------------------------------
# GEMM

def gemm_cases(b: Bench, shapes: dict):
    g = shapes["gemm"]
    for p in g["projections"]:
        for m in g["m"]:
            yield ({"model": p["model"], "name": p["name"], "m": m, "n": p["n"], "k": p["k"]},
                   lambda p=p, m=m: run_gemm(b, p, m))
    # The fp16 cases (gemm.f16): the same product with float16 operands, where the device has it.
    f16 = g.get("f16")
    if f16 and b.cuda:
        for p in g["projections"]:
            if p["model"] not in f16["models"]:
                continue
            for m in f16["m"]:
                yield ({"model": p["model"], "name": p["name"], "m": m, "n": p["n"], "k": p["k"], "dtype": "float16"},
                       lambda p=p, m=m: run_gemm(b, p, m, torch.float16))
    # The epilogue cases, each a subset of the projections at its own M: gemm.residual, y = x w^T
    # + r as Tessera's matmul_add computes it; gemm.glu, silu(x w_gate^T) * (x w_up^T) as its
    # matmul_glu; gemm.rms, F.linear(rmsnorm(x, g), w) as its matmul with rmsEps; gemm.rope,
    # F.linear then rope_kv_write as its matmul_rope_kv (heads as memoryBound.rope).
    rope = shapes["memoryBound"]["rope"]
    for key, run in (("residual", lambda p, m: run_gemm_residual(b, p, m)),
                     ("glu", lambda p, m: run_gemm_glu(b, p, m)),
                     ("rms", lambda p, m: run_gemm_glu(b, p, m, rms=True)),
                     ("rope", lambda p, m: run_gemm_rope(b, p, m, rope))):
        sel = g.get(key)
        if not sel:
            continue
        for p in g["projections"]:
            if p["model"] not in sel["models"] or p["name"] not in sel["names"]:
                continue
            if key == "rope" and p["n"] != (rope["heads"] + 2 * rope["kvHeads"]) * rope["headDim"]:
                continue
            for m in sel["m"]:
                yield ({"model": p["model"], "name": p["name"], "m": m, "n": p["n"], "k": p["k"], key: True},
                       lambda p=p, m=m, run=run: run(p, m))


def gemm_rates(b: Bench, r: dict, flops: float, nbytes: float) -> dict:
    """A GEMM variant's timing r with its TFLOP/s, GB/s and both as percentages of the ceilings."""
    tflops = flops / (r["ms"] * 1e-3) / 1e12
    gb_s = nbytes / (r["ms"] * 1e-3) / 1e9
    r.update(tflops=sig(tflops), gb_s=sig(gb_s),
             pct_gemm_ceiling=b.pct_gemm(tflops), pct_copy_ceiling=b.pct_copy(gb_s))
    return r


def run_gemm(b: Bench, p: dict, m: int, dtype=None) -> dict:
    n, k = p["n"], p["k"]
    dtype = dtype or b.dtype
    e = torch.empty((), dtype=dtype).element_size()
    flops = 2 * m * n * k
    nbytes = e * (m * k + n * k + m * n)
    rec = {"model": p["model"], "name": p["name"], "m": m, "n": n, "k": k,
           "dtype": str(dtype).replace("torch.", ""), "op": "F.linear(x[M,K], w[N,K]) = x w^T",
           "flops": flops, "bytes": nbytes, "bytes_formula": f"e*(M*K + N*K + M*N), e={e}"}

    def body():
        sets_n = b.sets_for(nbytes, e * (m * k + n * k))
        rec["method"] = b.method(sets_n)
        # Unit-variance outputs: x ~ N(0, 1), w ~ N(0, 1/K).
        sets = [(b.randn((m, k), dtype=dtype), b.randn((n, k), 1 / math.sqrt(k), dtype=dtype)) for _ in range(sets_n)]
        rows = min(m, 64)  # the reference covers the first rows only: enough to catch a wrong result
        x0, w0 = sets[0]
        refs = [F.linear(x0[:rows].to(b.ref_dtype), w0.to(b.ref_dtype))]
        r = b.measure(F.linear, sets, refs=refs, outputs=lambda y, a: [y[:rows]])
        del refs
        return gemm_rates(b, r, flops, nbytes)

    rec["variants"] = {"linear": b.guard(body)}
    return finish(rec)


def run_gemm_residual(b: Bench, p: dict, m: int) -> dict:
    """y = x w^T + r two ways: torch.addmm (the residual as the GEMM's C, beta = 1, one call) and
    F.linear followed by an add (two kernels, the product written and read back)."""
    n, k = p["n"], p["k"]
    dtype = b.dtype
    e = torch.empty((), dtype=dtype).element_size()
    flops = 2 * m * n * k
    nbytes = e * (m * k + n * k + 2 * m * n)
    rec = {"model": p["model"], "name": p["name"], "m": m, "n": n, "k": k, "residual": True,
           "dtype": str(dtype).replace("torch.", ""), "op": "x[M,K] w[N,K]^T + r[M,N]",
           "flops": flops, "bytes": nbytes, "bytes_formula": f"e*(M*K + N*K + 2*M*N), e={e}"}
    state = {}

    def make_sets():
        if "sets" not in state:
            sets_n = b.sets_for(nbytes, e * (m * k + n * k + m * n))
            state["n"] = sets_n
            state["sets"] = [(b.randn((m, k), dtype=dtype), b.randn((n, k), 1 / math.sqrt(k), dtype=dtype),
                              b.randn((m, n), dtype=dtype)) for _ in range(sets_n)]
            rows = min(m, 64)
            x0, w0, r0 = state["sets"][0]
            state["rows"] = rows
            state["refs"] = [F.linear(x0[:rows].to(b.ref_dtype), w0.to(b.ref_dtype)) + r0[:rows].to(b.ref_dtype)]
        return state

    def variant(fn):
        def body():
            st = make_sets()
            r = b.measure(fn, st["sets"], refs=st["refs"], outputs=lambda y, a: [y[:st["rows"]]])
            r["method"] = b.method(st["n"])
            return gemm_rates(b, r, flops, nbytes)
        return body

    rec["variants"] = {
        "addmm": b.guard(variant(lambda x, w, r: torch.addmm(r, x, w.t()))),
        "linear_add": b.guard(variant(lambda x, w, r: F.linear(x, w) + r)),
    }
    state.clear()
    return finish(rec)


def compile_variant(b: Bench, compiled) -> dict:
    """The torch.compile variant's record: compiled() run under b.guard, or why it was not."""
    if not hasattr(torch, "compile"):
        return {"error": f"not available in torch {torch.__version__}"}
    if b.args.no_compile:
        return {"skipped": "--no-compile"}
    return b.guard(compiled)


def eager_and_compiled(b: Bench, fn, make_sets, flops: float, nbytes: float) -> dict:
    """An epilogue case's two variants: fn eager and under torch.compile, over make_sets()'s input
    sets ({"n", "sets", "rows", "refs"}: the check covers the output's first `rows` rows)."""
    def figures(r, st):
        r["method"] = b.method(st["n"])
        return gemm_rates(b, r, flops, nbytes)

    def eager():
        st = make_sets()
        return figures(b.measure(fn, st["sets"], refs=st["refs"], outputs=lambda y, a: [y[:st["rows"]]]), st)

    def compiled():
        import torch._dynamo

        torch._dynamo.reset()
        st = make_sets()
        cfn = torch.compile(fn, dynamic=False, fullgraph=True)
        r = b.measure(cfn, st["sets"], refs=st["refs"], outputs=lambda y, a: [y[:st["rows"]]])
        r["compile_s"] = r.pop("first_call_s")
        return figures(r, st)

    return {"eager": b.guard(eager), "compile": compile_variant(b, compiled)}


def run_gemm_glu(b: Bench, p: dict, m: int, rms: bool = False) -> dict:
    """Two epilogues Tessera has and cuBLAS has not, as a Llama layer runs them in PyTorch, eager
    and under torch.compile (which fuses the pointwise part):
      glu (rms False): y = silu(z[:, :I]) * z[:, I:], z = x w^T (w the gate and up rows stacked,
        N = 2I): F.linear then the activation and the product;
      rms: y = F.linear(rmsnorm(x) * g, w): the norm (HF LlamaRMSNorm) then the product."""
    n, k = p["n"], p["k"]
    inner = n // 2
    dtype = b.dtype
    e = torch.empty((), dtype=dtype).element_size()
    flops = 2 * m * n * k
    out_cols = n if rms else inner
    nbytes = e * (m * k + n * k + m * out_cols)
    rec = {"model": p["model"], "name": p["name"], "m": m, "n": n, "k": k, ("rms" if rms else "glu"): True,
           "dtype": str(dtype).replace("torch.", ""),
           "op": "F.linear(rmsnorm(x) * g, w)" if rms else "silu(x w_gate^T) * x w_up^T",
           "flops": flops, "bytes": nbytes,
           "bytes_formula": f"e*(M*K + N*K + M*N), e={e}" if rms else f"e*(M*K + N*K + M*N/2), e={e}"}
    state = {}

    def fn(x, w, g=None):
        if rms:
            return F.linear(rmsnorm(x, g), w)
        z = F.linear(x, w)
        return F.silu(z[:, :inner]) * z[:, inner:]

    def make_sets():
        if "sets" not in state:
            sets_n = b.sets_for(nbytes, e * (m * k + n * k))
            state["n"] = sets_n
            state["sets"] = [(b.randn((m, k), dtype=dtype), b.randn((n, k), 1 / math.sqrt(k), dtype=dtype))
                             + ((1 + 0.1 * b.randn((k,), dtype=dtype),) if rms else ()) for _ in range(sets_n)]
            rows = min(m, 64)
            first = state["sets"][0]
            state["rows"] = rows
            state["refs"] = [fn(first[0][:rows].to(b.ref_dtype), *[t.to(b.ref_dtype) for t in first[1:]])]
        return state

    rec["variants"] = eager_and_compiled(b, fn, make_sets, flops, nbytes)
    state.clear()
    return finish(rec)


def run_gemm_rope(b: Bench, p: dict, m: int, rope: dict) -> dict:
    """The q/k/v projection, RoPE and the KV-cache write, as a Llama layer runs them in PyTorch
    (what Tessera's matmul_rope_kv does in one kernel): z = F.linear(x, w), split into q, k, v;
    q and k rotated (rotate-half, theta 500000), k and v copied into a paged cache at the rows'
    slots. Eager and under torch.compile. The check covers q's first rows."""
    n, k = p["n"], p["k"]
    hq, hkv, d, bs = rope["heads"], rope["kvHeads"], rope["headDim"], rope["kvBlockSize"]
    dtype = b.dtype
    e = torch.empty((), dtype=dtype).element_size()
    flops = 2 * m * n * k
    nbytes = e * (m * k + n * k + m * n) + 8 * m
    rec = {"model": p["model"], "name": p["name"], "m": m, "n": n, "k": k, "rope": True,
           "dtype": str(dtype).replace("torch.", ""),
           "op": "F.linear(x, w_qkv), rope on q and k, k and v into the paged cache",
           "flops": flops, "bytes": nbytes, "bytes_formula": f"e*(M*K + N*K + M*N) + 8*M, e={e}"}
    max_pos = 64 if b.smoke else 8192
    blocks = -(-m // bs) + 1
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=b.device, dtype=torch.float32) / d))
    angles = torch.arange(max_pos, device=b.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos_t, sin_t = angles.cos(), angles.sin()
    state = {}

    def fn(x, w, positions, slots, k_cache, v_cache):
        z = F.linear(x, w)
        q, kk, v = z.split([hq * d, hkv * d, hkv * d], dim=1)
        return rope_kv_write(q, kk, v, positions, slots, cos_t, sin_t, k_cache, v_cache)

    def make_sets():
        if "sets" not in state:
            sets_n = b.sets_for(nbytes, e * (m * k + n * k))
            state["n"] = sets_n
            k_cache = torch.zeros((blocks, bs, hkv, d), device=b.device, dtype=dtype)
            v_cache = torch.zeros_like(k_cache)
            state["sets"] = [(b.randn((m, k), dtype=dtype), b.randn((n, k), 1 / math.sqrt(k), dtype=dtype),
                              torch.randint(0, max_pos, (m,), device=b.device),
                              torch.randperm(blocks * bs, device=b.device)[:m], k_cache, v_cache)
                             for _ in range(sets_n)]
            rows = min(m, 64)
            x0, w0, pos0, slots0 = state["sets"][0][:4]
            kr = torch.zeros((blocks, bs, hkv, d), device=b.device, dtype=b.ref_dtype)
            state["rows"] = rows
            state["refs"] = [fn(x0[:rows].to(b.ref_dtype), w0.to(b.ref_dtype), pos0[:rows], slots0[:rows], kr,
                                torch.zeros_like(kr))]
        return state

    rec["variants"] = eager_and_compiled(b, fn, make_sets, flops, nbytes)
    state.clear()
    return finish(rec)


# ----------------------------------------------------------------------------------------------
# Attention

SDPA_BACKENDS = [("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_efficient", "EFFICIENT_ATTENTION"),
                 ("sdpa_cudnn", "CUDNN_ATTENTION"), ("sdpa_math", "MATH")]


def sdpa_support(b: Bench) -> dict:
    """What this torch offers: SDPA itself, the backend selector, enable_gqa."""
    info = {"sdpa": hasattr(F, "scaled_dot_product_attention"), "backends": {}, "enable_gqa": False}
    if not info["sdpa"]:
        return info
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        info["sdpa_kernel"] = sdpa_kernel
        for name, attr in SDPA_BACKENDS:
            if hasattr(SDPBackend, attr):
                info["backends"][name] = getattr(SDPBackend, attr)
    except ImportError:
        info["sdpa_kernel"] = None
        info["backends"]["sdpa_default"] = None  # no selector: whatever SDPA picks
    try:
        q = b.randn((1, 4, 2, 8))
        kv = b.randn((1, 2, 2, 8))
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        info["enable_gqa"] = True
    except TypeError:
        pass
    except Exception as e:
        info["enable_gqa_probe_error"] = short(str(e), 300)
        info["enable_gqa"] = True  # the keyword exists; a backend may still refuse it
    return info


def attention_cases(b: Bench, shapes: dict, kind: str):
    for c in shapes["attention"][kind]:
        yield dict(c), lambda c=c: run_attention(b, c, kind)


def run_attention(b: Bench, c: dict, kind: str) -> dict:
    decode = kind == "decode"
    bsz, h, kv, d = c["batch"], c["heads"], c["kvHeads"], c["headDim"]
    s = 1 if decode else c["seqlen"]
    sk = c["context"] if decode else c["seqlen"]
    causal = False if decode else bool(c["causal"])
    g = h // kv
    e = b.esize
    flops = 4 * bsz * h * s * sk * d
    if causal:
        flops //= 2
    q_bytes = e * bsz * h * s * d
    kv_bytes = 2 * e * bsz * kv * sk * d
    nbytes = 2 * q_bytes + kv_bytes  # q read, o written, k and v read
    rec = dict(c)
    if decode:
        flops_formula = "4*B*H*context*D"
        bytes_formula = f"e*(2*B*H*D + 2*B*kvH*context*D): q read, o written, k and v read; e={e}"
    else:
        flops_formula = "4*B*H*S^2*D" + (", halved for causal" if causal else "")
        bytes_formula = f"e*(2*B*H*S*D + 2*B*kvH*S*D): q read, o written, k and v read; e={e}"
    rec.update(dtype=str(b.dtype).replace("torch.", ""), flops=flops, flops_formula=flops_formula,
               bytes=nbytes, bytes_formula=bytes_formula,
               layout=f"q [B, H, {'1' if decode else 'S'}, D], k/v [B, kvH, {'context' if decode else 'S'}, D], "
                      "contiguous")
    if decode:
        rec.update(kv_bytes=kv_bytes, kv_bytes_formula=f"2*B*kvH*context*D*e, e={e}",
                   kv_cache="contiguous [B, kvH, context, D] per sequence, not paged", causal=False)
    sup = b.attn
    variants = {}

    def build():
        sets_n = b.sets_for(nbytes, nbytes)
        rec["method"] = b.method(sets_n)
        sets = [(b.randn((bsz, h, s, d)), b.randn((bsz, kv, sk, d)), b.randn((bsz, kv, sk, d)))
                for _ in range(sets_n)]
        q0, k0, v0 = sets[0]
        refs = [attention_reference(q0, k0, v0, causal, b.ref_dtype, b.ref_budget)]
        return sets, refs

    built = b.guard(lambda: {"value": build()})
    if "error" in built:
        rec["error"] = built["error"]
        return rec
    sets, refs = built["value"]
    too_long = s > b.scores_max_seqlen

    def figures(r, kv_actual=None):
        sec = r["ms"] * 1e-3
        tflops = flops / sec / 1e12
        r["tflops"] = sig(tflops)
        r["pct_gemm_ceiling"] = b.pct_gemm(tflops)
        if decode:
            gb_s = kv_bytes / sec / 1e9
            r["kv_gb_s"] = sig(gb_s)
            r["pct_copy_ceiling"] = b.pct_copy(gb_s)
            if "ms_graph" in r:
                gb_g = kv_bytes / (r["ms_graph"] * 1e-3) / 1e9
                r.update(kv_gb_s_graph=sig(gb_g), pct_copy_ceiling_graph=b.pct_copy(gb_g))
            if kv_actual:
                r["kv_bytes_read"] = kv_actual
        else:
            r["gb_s"] = sig(nbytes / sec / 1e9)
        return r

    def sdpa_variant(backend):
        """enable_gqa first where it exists; if the backend refuses it, K/V expanded to H heads."""
        modes = ((["enable_gqa"] if sup["enable_gqa"] else []) + ["expanded"]) if g > 1 else ["mha"]
        ctx = (lambda: sup["sdpa_kernel"]([backend])) if sup.get("sdpa_kernel") else contextlib.nullcontext
        refused = []
        for mode in modes:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    run_sets = sets
                    kw = {"is_causal": causal}
                    if mode == "enable_gqa":
                        kw["enable_gqa"] = True
                    if mode == "expanded":
                        run_sets = [(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1))
                                    for q, k, v in sets]
                    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw)  # noqa: E731
                    with ctx():
                        r = b.measure(fn, run_sets, refs=refs, graph=decode)
                    r["gqa"] = mode
                    if refused:
                        r["gqa_note"] = "; ".join(refused)
                    return figures(r, kv_bytes * g if mode == "expanded" and decode else None)
                except Exception as ex:
                    why = short(f"{type(ex).__name__}: {ex}", 600)
                    notes = sorted({short(str(w.message), 300) for w in caught})
                    refused.append(f"{mode}: {why}" + (f" [{' | '.join(notes)}]" if notes else ""))
                finally:
                    run_sets = None
                    gc.collect()
        raise Refused("; ".join(refused))

    for name, _ in SDPA_BACKENDS:
        if name not in b.args.sdpa_backends:
            variants[name] = {"skipped": "left out by --sdpa-backends"}
        elif not sup["sdpa"]:
            variants[name] = {"error": f"not available in torch {torch.__version__}"}
        elif name not in sup["backends"]:
            variants[name] = {"error": f"backend not in torch {torch.__version__}"}
        elif name == "sdpa_math" and too_long:
            variants[name] = {"skipped": f"S={s} > {b.scores_max_seqlen}: materializes S x S scores"}
        else:
            variants[name] = b.guard(lambda be=sup["backends"][name]: sdpa_variant(be))
    if "sdpa_default" in sup["backends"]:
        variants["sdpa_default"] = b.guard(lambda: sdpa_variant(None))

    def explicit():
        mask = causal_mask(g, s, sk, b.device) if causal else None
        scale = 1.0 / math.sqrt(d)
        r = b.measure(lambda q, k, v: explicit_attention(q, k, v, mask, scale), sets, refs=refs,
                      graph=decode)
        r["gqa"] = "grouped rows (no K/V copy)"
        return figures(r)

    if too_long:
        variants["explicit"] = {"skipped": f"S={s} > {b.scores_max_seqlen}: materializes S x S scores"}
    else:
        variants["explicit"] = b.guard(explicit)
    rec["variants"] = variants
    finish(rec)
    sdpa_timed = {k: v for k, v in variants.items() if k.startswith("sdpa_") and "ms" in v}
    rec["fastest_sdpa"] = min(sdpa_timed, key=lambda k: sdpa_timed[k]["ms"]) if sdpa_timed else None
    return rec


# ----------------------------------------------------------------------------------------------
# Memory-bound ops

def memory_cases(b: Bench, shapes: dict):
    mb = shapes["memoryBound"]
    for op in mb["ops"]:
        for rows in mb["rows"]:
            for hidden in mb["hidden"]:
                rope = None
                if op == "rope_kv_write":
                    rope = rope_heads(mb["rope"], hidden)
                    if rope is None:
                        continue
                yield ({"op": op, "rows": rows, "hidden": hidden},
                       lambda op=op, rows=rows, hidden=hidden, rope=rope: run_memory(b, op, rows, hidden, rope))


def rope_heads(rope: dict, hidden: int) -> dict | None:
    """Heads for rope_kv_write at one hidden size, as the Tessera side derives them: hidden / headDim
    query heads, and KV heads in memoryBound.rope's ratio. None where hidden is not whole heads."""
    d = rope["headDim"]
    if hidden % d:
        return None
    heads = hidden // d
    kv = max(1, round(heads * rope["kvHeads"] / rope["heads"]))
    return {"heads": heads, "kvHeads": kv, "headDim": d, "kvBlockSize": rope["kvBlockSize"]}


def memory_op(b: Bench, op: str, rows: int, hidden: int, rope: dict | None):
    """(function, input-set maker, shared inputs, bytes, formula, outputs, prepare, extra fields)"""
    e = b.esize
    R = rows
    if op == "rmsnorm":
        w = b.randn((hidden,), 0.1).add_(1.0)
        return (rmsnorm, lambda: (b.randn((R, hidden)),), (w,), e * (2 * R * hidden + hidden),
                f"e*(2*rows*hidden + hidden): x read, y written, w read; e={e}", None, None, {})
    if op == "add_rmsnorm":
        w = b.randn((hidden,), 0.1).add_(1.0)
        return (add_rmsnorm, lambda: (b.randn((R, hidden)), b.randn((R, hidden))), (w,),
                e * (4 * R * hidden + hidden),
                f"e*(4*rows*hidden + hidden): x, residual read; sum, y written; w read; e={e}", None, None, {})
    if op == "add_layernorm":
        w = b.randn((hidden,), 0.1).add_(1.0)
        bias = b.randn((hidden,), 0.1)
        return (add_layernorm, lambda: (b.randn((R, hidden)), b.randn((R, hidden))), (w, bias),
                e * (4 * R * hidden + 2 * hidden),
                f"e*(4*rows*hidden + 2*hidden): x, residual read; sum, y written; w, b read; e={e}", None, None, {})
    if op == "silu_mul":
        return (silu_mul, lambda: (b.randn((R, 2 * hidden)),), (), e * 3 * R * hidden,
                f"e*3*rows*hidden: gate|up [rows, 2 hidden] read, y [rows, hidden] written; e={e}", None, None, {})
    if op == "rope_kv_write":
        hq, hkv, d, bs = rope["heads"], rope["kvHeads"], rope["headDim"], rope["kvBlockSize"]
        max_pos = 64 if b.smoke else 8192
        blocks = -(-R // bs) + 1  # room for the rows plus one block, as on the Tessera side
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=b.device, dtype=torch.float32) / d))
        angles = torch.arange(max_pos, device=b.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        cos_t, sin_t = angles.cos(), angles.sin()  # [max_pos, D/2] f32
        k_cache = torch.empty((blocks, bs, hkv, d), device=b.device, dtype=b.dtype)
        v_cache = torch.empty_like(k_cache)

        def make():
            return (b.randn((R, hq * d)), b.randn((R, hkv * d)), b.randn((R, hkv * d)),
                    torch.randint(0, max_pos, (R,), device=b.device),
                    torch.randperm(blocks * bs, device=b.device)[:R])

        def outputs(q_out, a):
            slots = a[4]
            return [q_out, a[7].view(-1, hkv, d)[slots], a[8].view(-1, hkv, d)[slots]]

        def prepare(a):  # unwritten slots stay NaN, so a missed or misplaced write fails the check
            a[7].fill_(float("nan"))
            a[8].fill_(float("nan"))

        nbytes = 2 * e * R * d * (hq + 2 * hkv) + 2 * R * (d // 2) * 4 + 2 * R * 8
        formula = (f"2*e*rows*D*(Hq + 2*Hkv) + 2*rows*(D/2)*4 + 2*rows*8: q, k, v read; q_out, k, v written "
                   f"(k, v into the cache); the cos and sin rows (f32) of each token; positions and "
                   f"slots (int64); e={e}")
        extra = {"heads": hq, "kvHeads": hkv, "headDim": d, "kvBlockSize": bs, "cache_slots": blocks * bs,
                 "tables": f"cos, sin [{max_pos}, {d // 2}] f32, rotate-half, theta 500000",
                 "write": "index_copy_ into the flat slot view of the cache"}
        return (rope_kv_write, make, (cos_t, sin_t, k_cache, v_cache), nbytes, formula, outputs, prepare,
                extra)
    raise ValueError(f"unknown memory-bound op {op!r}")


def run_memory(b: Bench, op: str, rows: int, hidden: int, rope: dict | None) -> dict:
    rec = {"op": op, "rows": rows, "hidden": hidden, "dtype": str(b.dtype).replace("torch.", "")}

    def build():
        fn, make, shared, nbytes, formula, outputs, prepare, extra = memory_op(b, op, rows, hidden, rope)
        rec.update(extra)
        rec.update(bytes=nbytes, bytes_formula=formula)
        first = make()
        sets_n = b.sets_for(nbytes, sum(t.numel() * t.element_size() for t in first))
        rec["method"] = b.method(sets_n)
        sets = [first + shared] + [make() + shared for _ in range(sets_n - 1)]
        if prepare is not None:
            prepare(sets[0])
        ref_args = upcast(sets[0], torch.float64)
        refs = outputs(fn(*ref_args), ref_args) if outputs else as_list(fn(*ref_args))
        return fn, sets, refs, nbytes, outputs, prepare

    built = b.guard(lambda: {"value": build()})
    if "error" in built:
        rec["error"] = built["error"]
        return rec
    fn, sets, refs, nbytes, outputs, prepare = built["value"]

    def figures(r):
        gb_s = nbytes / (r["ms"] * 1e-3) / 1e9
        r.update(gb_s=sig(gb_s), pct_copy_ceiling=b.pct_copy(gb_s))
        if "ms_graph" in r:
            gb_g = nbytes / (r["ms_graph"] * 1e-3) / 1e9
            r.update(gb_s_graph=sig(gb_g), pct_copy_ceiling_graph=b.pct_copy(gb_g))
        return r

    variants = {"eager": b.guard(lambda: figures(b.measure(fn, sets, refs, outputs, prepare, graph=True)))}

    def compiled():
        import torch._dynamo

        torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no dynamic-shape kernels
        cfn = torch.compile(fn, dynamic=False, fullgraph=True)
        r = b.measure(cfn, sets, refs, outputs, prepare, graph=True)
        r["compile_s"] = r.pop("first_call_s")  # the first call compiles; it is not in the timings
        return figures(r)

    variants["compile"] = compile_variant(b, compiled)
    rec["variants"] = variants
    return finish(rec)


# ----------------------------------------------------------------------------------------------
# Output

def finish(rec: dict) -> dict:
    timed = {k: v for k, v in rec.get("variants", {}).items() if "ms" in v}
    rec["fastest"] = min(timed, key=lambda k: timed[k]["ms"]) if timed else None
    return rec


def case_label(family: str, r: dict) -> str:
    if family == "gemm":
        return f"{r['model']} {r['name']} M={r['m']}"
    if family == "attention_prefill":
        return (f"B={r['batch']} S={r['seqlen']} H={r['heads']}/{r['kvHeads']} D={r['headDim']}"
                f"{' causal' if r['causal'] else ''}")
    if family == "attention_decode":
        return f"B={r['batch']} ctx={r['context']} H={r['heads']}/{r['kvHeads']} D={r['headDim']}"
    return f"{r['op']} {r['rows']}x{r['hidden']}"


def cell(x, fmt: str, width: int) -> str:
    return format(format(x, fmt) if x is not None else "", f">{width}")


def table(result: dict) -> str:
    """One line per case, its fastest variant: ms per call (events), ms per call from graph replay,
    TFLOP/s, GB/s (decode: KV bytes), % of the GEMM and copy ceilings."""
    lines = [f"{'fam':<4} {'case':<30} {'fastest':<9} {'ms':>8} {'ms graph':>8} {'TF/s':>6} {'GB/s':>5} "
             f"{'%mm':>4} {'%bw':>4}"]
    ce = result["ceilings"]
    if "gb_s" in ce.get("copy", {}):
        c = ce["copy"]
        label = f"copy {c['bytes_per_copy'] // MiB} MiB"
        lines.append(f"{'ceil':<4} {label:<30} {'copy_':<9} {cell(c['ms'], '.4f', 8)} {'':>8} {'':>6} "
                     f"{cell(c['gb_s'], '.0f', 5)}")
    if "tflops" in ce.get("gemm", {}):
        g = ce["gemm"]
        label = f"matmul {g['m']}x{g['n']}x{g['k']}"
        lines.append(f"{'ceil':<4} {label:<30} {'matmul':<9} {'':>8} {'':>8} {cell(g['tflops'], '.1f', 6)}")
    tags = {"gemm": "gemm", "attention_prefill": "pref", "attention_decode": "dec", "memory_bound": "mem"}
    for family in FAMILIES:
        for r in result.get(family) or []:
            label = case_label(family, r)
            best = r.get("fastest")
            if not best:
                why = r.get("error") or "; ".join(
                    f"{k}: {v.get('error') or v.get('skipped')}" for k, v in r.get("variants", {}).items())
                lines.append(f"{tags[family]:<4} {label:<30} no result: {why[:80]}")
                continue
            v = r["variants"][best]
            lines.append(
                f"{tags[family]:<4} {label:<30} {best.removeprefix('sdpa_'):<9} {cell(v['ms'], '.4f', 8)} "
                f"{cell(v.get('ms_graph'), '.4f', 8)} {cell(v.get('tflops'), '.1f', 6)} "
                f"{cell(v.get('gb_s', v.get('kv_gb_s')), '.0f', 5)} {cell(v.get('pct_gemm_ceiling'), '.0f', 4)} "
                f"{cell(v.get('pct_copy_ceiling'), '.0f', 4)}")
    return "\n".join(lines)


def write_json(path: str | None, result: dict):
    text = json.dumps(clean_json(result), indent=1, allow_nan=False)
    if path is None:
        return text
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)  # a run cut short still leaves a whole file behind
    return text


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=str(DEFAULT_SHAPES), help="case list (default: bench/kernel_shapes.json)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: stdout)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes in place of the shapes file")
    ap.add_argument("--runs", type=int, default=30, help="timed calls per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    ap.add_argument("--no-graphs", action="store_true",
                    help="leave out the CUDA-graph timings of the decode and memory-bound variants")
    ap.add_argument("--l2-bytes", type=int, default=0, help="cache size for the input rotation (default: device)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="auto: bf16 unless the device lacks bf16 kernels for these ops")
    ap.add_argument("--sdpa-backends", default=",".join(n for n, _ in SDPA_BACKENDS),
                    help="comma-separated SDPA variants to run (others are recorded as skipped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=None,
                    help="start no case after this many seconds (the GPU call's budget); the JSON says "
                         "where it stopped. Families run in the order --families gives them")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    if args.time_limit is not None and not args.time_limit >= 0:
        ap.error("--time-limit takes seconds, 0 or more")
    fams = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        ap.error(f"unknown families {bad}; choose from {FAMILIES}")
    args.families = fams
    args.sdpa_backends = {x.strip() for x in args.sdpa_backends.split(",") if x.strip()}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --smoke for a CPU check", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and args.runs < 20:
        print(f"note: --runs {args.runs} is under the 20 the method asks for", file=sys.stderr)
    torch.manual_seed(args.seed)
    with open(args.shapes) as f:
        shapes = json.load(f)
    if args.smoke:
        shapes = SMOKE_SHAPES

    b = Bench(args)
    triton_version = None
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        pass
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "device": str(b.device),
        "smoke": args.smoke,
        "shapes": "built-in smoke shapes" if args.smoke else str(args.shapes),
        "gpu": gpu_info(b.device),
        "cpu": None if b.cuda else {"machine": platform.machine(), "cores": os.cpu_count()},
        "driver": driver_info(b.device),
        "clocks": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "method": {
            "timer": "CUDA events around each call" if b.cuda else "time.perf_counter around each call",
            "statistic": "median of the timed calls (ms); min, quartiles and max alongside",
            "runs": b.runs, "warmup": b.warmup,
            "rotation": "input sets cycled call by call; sets = floor(2 * L2 / bytes per call) + 1, "
                        "capped by 40% of free memory",
            "l2_bytes": b.l2_bytes, "l2_source": b.l2_source,
            "data": f"fresh torch.randn(...) * scale in {str(b.dtype).replace('torch.', '')}",
            "dtype_note": b.dtype_note,
            "check": "one call on set 0 before warm-up: every output finite, relative error "
                     "||out - ref|| / ||ref|| under the case's tol, against a reference in "
                     + ("float32 with tf32 off (GEMM: first 64 rows; attention: chunked), float64 for "
                        "memory-bound ops" if b.cuda else "float64"),
            "bf16_reduced_precision_reduction": matmul_flag("allow_bf16_reduced_precision_reduction"),
            "allow_tf32": matmul_flag("allow_tf32"),
            "graph": "decode and memory-bound variants also: ms_graph = one CUDA graph of graph_calls "
                     "calls (cycling the sets) replayed --runs times, median replay time / graph_calls; "
                     "device time without launch gaps" if b.graphs else None,
            "compile": "torch.compile(fn, dynamic=False, fullgraph=True), default mode, "
                       "torch._dynamo.reset() before each case; compile time left out of the timings",
        },
        "ceilings": {},
    }
    if b.cuda:
        result["clocks"] = {"before": nvidia_smi_clocks()}
    for fam in FAMILIES:
        result[fam] = [] if fam in args.families else None

    b.log(f"torch {torch.__version__} on {b.device}, dtype {b.dtype}, runs {b.runs}, warmup {b.warmup}")
    result["ceilings"] = run_ceilings(b, shapes)
    if b.cuda:
        result["clocks"]["after_ceilings"] = nvidia_smi_clocks()
    if args.out:
        write_json(args.out, result)

    b.attn = sdpa_support(b)
    result["attention_support"] = {
        "sdpa": b.attn["sdpa"],
        "backends": sorted(b.attn["backends"]),
        "enable_gqa": b.attn["enable_gqa"],
        "gqa": "enable_gqa=True where the backend takes it, else K/V expanded to H heads (per variant: 'gqa')"
               if b.attn["enable_gqa"] else "K/V expanded to H heads with repeat_interleave",
        **({"enable_gqa_probe_error": b.attn["enable_gqa_probe_error"]}
           if "enable_gqa_probe_error" in b.attn else {}),
    }

    makers = {
        "gemm": lambda: gemm_cases(b, shapes),
        "attention_prefill": lambda: attention_cases(b, shapes, "prefill"),
        "attention_decode": lambda: attention_cases(b, shapes, "decode"),
        "memory_bound": lambda: memory_cases(b, shapes),
    }
    result["stopped"] = None
    for fam in args.families:
        for fields, case in makers[fam]():
            if args.time_limit is not None and time.perf_counter() - b.t0 > args.time_limit:
                result["stopped"] = (f"--time-limit {args.time_limit:g} s reached; not run from "
                                     f"{fam} {case_label(fam, fields)} on")
                break
            b.cleanup()
            try:
                rec = case()
            except Exception as e:  # a case that fails outside its own guards
                rec = {**fields, "error": short(f"{type(e).__name__}: {e}")}
            result[fam].append(rec)
            best = rec.get("fastest")
            b.log(f"{fam} {case_label(fam, rec)}: "
                  + (f"{best} {rec['variants'][best]['ms']:.4f} ms" if best else "no variant ran"))
            if args.out:
                write_json(args.out, result)
        if result["stopped"]:
            b.log(f"stopped: {result['stopped']}")
            break

    if b.cuda:
        result["clocks"]["after"] = nvidia_smi_clocks()
        if all(v is None for v in result["clocks"].values()):
            result["clocks"] = None
    result["complete"] = result["stopped"] is None
    result["elapsed_s"] = round(time.perf_counter() - b.t0, 1)
    text = write_json(args.out, result)
    if args.out is None:
        print(text)
    # The table goes last (to stderr when stdout carries the JSON).
    print(table(result), file=sys.stderr if args.out is None else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
