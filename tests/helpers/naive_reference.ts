/**
 * A deliberately naive float64 forward pass of each supported architecture, written from the
 * Hugging Face modeling code (modeling_llama / mistral / qwen2 / qwen3 / gpt2), sharing nothing
 * with src/graph or src/backend: it reads config.json itself and the tensors through
 * SafetensorsFile, and runs plain causal attention over the whole sequence (no cache, no
 * paging). Rows are Float64Array vectors; a sequence of T tokens is an array of T rows.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { SafetensorsFile } from '../../src/formats/safetensors.js';

type Rows = Float64Array[];
type Json = Record<string, unknown>;

export interface NaiveModel {
  vocab: number;
  /** Logits [T][V] at every position of `tokens`. */
  forward(tokens: readonly number[]): Rows;
  /**
   * `steps` greedy tokens after `prompt` (argmax, ties to the lowest id), recomputing the whole
   * sequence each step; `logits` are those of the last forward: rows for prompt + tokens[0..steps-2].
   */
  greedy(prompt: readonly number[], steps: number): { tokens: number[]; logits: Rows };
}

export async function loadNaiveModel(dir: string): Promise<NaiveModel> {
  const cfg = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as Json;
  const file = await SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  const w = new Map<string, Float64Array>();
  try {
    for (const name of file.tensors.keys()) w.set(name, Float64Array.from(await file.readF32(name)));
  } finally {
    await file.close();
  }
  const get = (name: string): Float64Array => {
    const t = w.get(name);
    if (!t) throw new Error(`naive reference: no tensor ${name}`);
    return t;
  };
  const arch = (cfg.architectures as string[])[0];
  const forward = arch === 'GPT2LMHeadModel' ? gpt2(cfg, get, w.has('transformer.wte.weight') ? 'transformer.' : '') : llamaFamily(cfg, arch, get);
  const vocab = cfg.vocab_size as number;
  return {
    vocab,
    forward,
    greedy(prompt, steps) {
      const seq = [...prompt];
      let logits: Rows = [];
      for (let s = 0; s < steps; s++) {
        logits = forward(seq);
        seq.push(argmax(logits[logits.length - 1]));
      }
      return { tokens: seq.slice(prompt.length), logits };
    },
  };
}

export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

// ---- building blocks ----

/** nn.Linear: y = x W^T (+ b), W [out, in]. */
function linear(x: Rows, weight: Float64Array, bias: Float64Array | null): Rows {
  const inDim = x[0].length, outDim = weight.length / inDim;
  return x.map((r) => {
    const y = new Float64Array(outDim);
    for (let o = 0; o < outDim; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inDim; i++) s += r[i] * weight[o * inDim + i];
      y[o] = s;
    }
    return y;
  });
}

/** GPT-2 Conv1D: y = x W + b, W [in, out]. */
function conv1d(x: Rows, weight: Float64Array, bias: Float64Array): Rows {
  const inDim = x[0].length, outDim = bias.length;
  return x.map((r) => {
    const y = Float64Array.from(bias);
    for (let i = 0; i < inDim; i++) for (let o = 0; o < outDim; o++) y[o] += r[i] * weight[i * outDim + o];
    return y;
  });
}

/** RMSNorm over each consecutive group of weight.length elements (the row, or one head). */
function rmsNorm(r: Float64Array, weight: Float64Array, eps: number): Float64Array {
  const g = weight.length, y = new Float64Array(r.length);
  for (let base = 0; base < r.length; base += g) {
    let ss = 0;
    for (let i = 0; i < g; i++) ss += r[base + i] ** 2;
    const inv = 1 / Math.sqrt(ss / g + eps);
    for (let i = 0; i < g; i++) y[base + i] = weight[i] * (r[base + i] * inv);
  }
  return y;
}

function layerNorm(r: Float64Array, weight: Float64Array, bias: Float64Array, eps: number): Float64Array {
  const n = r.length;
  const mean = r.reduce((a, v) => a + v, 0) / n;
  const variance = r.reduce((a, v) => a + (v - mean) ** 2, 0) / n;
  return r.map((v, i) => ((v - mean) / Math.sqrt(variance + eps)) * weight[i] + bias[i]);
}

const addRows = (a: Rows, b: Rows): Rows => a.map((r, t) => r.map((v, i) => v + b[t][i]));

/**
 * softmax(q k^T * scale + mask) v per head over the whole sequence. Head h reads kv head
 * floor(h / (H / KV)) (repeat_kv); token t sees j <= t, and with a window only t - j < window.
 */
function causalAttention(q: Rows, k: Rows, v: Rows, nh: number, nkv: number, hd: number, window: number | null): Rows {
  const group = nh / nkv, scale = 1 / Math.sqrt(hd);
  return q.map((qr, t) => {
    const out = new Float64Array(nh * hd);
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / group);
      const visible: number[] = [];
      for (let j = 0; j <= t; j++) if (window === null || t - j < window) visible.push(j);
      const scores = visible.map((j) => {
        let s = 0;
        for (let d = 0; d < hd; d++) s += qr[h * hd + d] * k[j][kvh * hd + d];
        return s * scale;
      });
      const max = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - max));
      const sum = e.reduce((a, x) => a + x, 0);
      visible.forEach((j, n) => {
        for (let d = 0; d < hd; d++) out[h * hd + d] += (e[n] / sum) * v[j][kvh * hd + d];
      });
    }
    return out;
  });
}

/** rotate_half RoPE on every head of each row: x * cos + rotate_half(x) * sin, emb = cat(freqs, freqs). */
function applyRope(x: Rows, heads: number, hd: number, invFreq: number[]): Rows {
  const half = hd / 2;
  return x.map((r, pos) => {
    const y = new Float64Array(r.length);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const a = r[h * hd + i], b = r[h * hd + i + half];
        const c = Math.cos(pos * invFreq[i]), s = Math.sin(pos * invFreq[i]);
        y[h * hd + i] = a * c - b * s; // rotate_half(x)[i] = -x[i + half]
        y[h * hd + i + half] = b * c + a * s; // rotate_half(x)[i + half] = x[i]
      }
    }
    return y;
  });
}

/** inv_freq of modeling_rope_utils: default, linear and llama3 (_compute_llama3_parameters). */
function ropeInvFreq(cfg: Json, dim: number): number[] {
  const base = (cfg.rope_theta as number | undefined) ?? 10000;
  const inv = Array.from({ length: dim / 2 }, (_, i) => 1 / base ** ((2 * i) / dim));
  const s = cfg.rope_scaling as Json | null | undefined;
  const type = s ? ((s.rope_type ?? s.type) as string) : 'default';
  if (type === 'default') return inv;
  const factor = s!.factor as number;
  if (type === 'linear') return inv.map((f) => f / factor);
  if (type !== 'llama3') throw new Error(`naive reference: rope type ${type}`);
  const low = s!.low_freq_factor as number, high = s!.high_freq_factor as number, old = s!.original_max_position_embeddings as number;
  const lowFreqWavelen = old / low, highFreqWavelen = old / high;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / factor;
    const smooth = (old / wavelen - low) / (high - low);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

const silu = (x: number) => x / (1 + Math.exp(-x));

// ---- architectures ----

/** LlamaForCausalLM and its relatives: pre-norm decoder, RoPE, GQA, SwiGLU MLP. */
function llamaFamily(cfg: Json, arch: string, get: (name: string) => Float64Array): (tokens: readonly number[]) => Rows {
  const d = cfg.hidden_size as number, nh = cfg.num_attention_heads as number;
  const nkv = (cfg.num_key_value_heads as number | undefined) ?? nh;
  const hd = (cfg.head_dim as number | undefined) ?? d / nh;
  const eps = (cfg.rms_norm_eps as number | undefined) ?? 1e-6;
  const qwen2 = arch === 'Qwen2ForCausalLM', qwen3 = arch === 'Qwen3ForCausalLM';
  // Qwen2 has q/k/v biases and none on o_proj; Llama has attention_bias on all four.
  const qkvBias = qwen2 || cfg.attention_bias === true, oBias = !qwen2 && cfg.attention_bias === true;
  const mlpBias = cfg.mlp_bias === true;
  if (cfg.use_sliding_window === true) throw new Error('naive reference: Qwen sliding-window layers are not modelled');
  const window = arch === 'MistralForCausalLM' ? ((cfg.sliding_window as number | null | undefined) ?? null) : null;
  const invFreq = ropeInvFreq(cfg, hd);
  const embed = get('model.embed_tokens.weight');
  const lmHead = cfg.tie_word_embeddings === true ? embed : get('lm_head.weight');
  const lin = (x: Rows, name: string, bias: boolean) => linear(x, get(`${name}.weight`), bias ? get(`${name}.bias`) : null);

  return (tokens) => {
    let h: Rows = tokens.map((id) => embed.slice(id * d, (id + 1) * d));
    for (let l = 0; l < (cfg.num_hidden_layers as number); l++) {
      const p = `model.layers.${l}`;
      const x = h.map((r) => rmsNorm(r, get(`${p}.input_layernorm.weight`), eps));
      let q = lin(x, `${p}.self_attn.q_proj`, qkvBias);
      let k = lin(x, `${p}.self_attn.k_proj`, qkvBias);
      const v = lin(x, `${p}.self_attn.v_proj`, qkvBias);
      if (qwen3) {
        // Qwen3: RMSNorm over each head of q and k (weight [head_dim]), before RoPE.
        q = q.map((r) => rmsNorm(r, get(`${p}.self_attn.q_norm.weight`), eps));
        k = k.map((r) => rmsNorm(r, get(`${p}.self_attn.k_norm.weight`), eps));
      }
      const attn = causalAttention(applyRope(q, nh, hd, invFreq), applyRope(k, nkv, hd, invFreq), v, nh, nkv, hd, window);
      h = addRows(h, lin(attn, `${p}.self_attn.o_proj`, oBias));
      const x2 = h.map((r) => rmsNorm(r, get(`${p}.post_attention_layernorm.weight`), eps));
      const gate = lin(x2, `${p}.mlp.gate_proj`, mlpBias), up = lin(x2, `${p}.mlp.up_proj`, mlpBias);
      h = addRows(h, lin(gate.map((g, t) => g.map((gv, i) => silu(gv) * up[t][i])), `${p}.mlp.down_proj`, mlpBias));
    }
    return linear(h.map((r) => rmsNorm(r, get('model.norm.weight'), eps)), lmHead, null);
  };
}

/** GPT2LMHeadModel: learned positions, LayerNorm, fused Conv1D c_attn, GELU MLP, tied lm_head. */
function gpt2(cfg: Json, get: (name: string) => Float64Array, pre: string): (tokens: readonly number[]) => Rows {
  const d = cfg.n_embd as number, nh = cfg.n_head as number, hd = d / nh;
  const eps = (cfg.layer_norm_epsilon as number | undefined) ?? 1e-5;
  const act = (cfg.activation_function as string | undefined) ?? 'gelu_new';
  const gelu =
    act === 'gelu'
      ? (x: number) => 0.5 * x * (1 + erf(x / Math.SQRT2))
      : (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  const wte = get(`${pre}wte.weight`), wpe = get(`${pre}wpe.weight`);
  const ln = (x: Rows, name: string) => x.map((r) => layerNorm(r, get(`${pre}${name}.weight`), get(`${pre}${name}.bias`), eps));
  const conv = (x: Rows, name: string) => conv1d(x, get(`${pre}${name}.weight`), get(`${pre}${name}.bias`));

  return (tokens) => {
    let h: Rows = tokens.map((id, pos) => wte.slice(id * d, (id + 1) * d).map((v, i) => v + wpe[pos * d + i]));
    for (let l = 0; l < (cfg.n_layer as number); l++) {
      const qkv = conv(ln(h, `h.${l}.ln_1`), `h.${l}.attn.c_attn`); // [T, 3D] = q | k | v
      const part = (i: number) => qkv.map((r) => r.slice(i * d, (i + 1) * d));
      h = addRows(h, conv(causalAttention(part(0), part(1), part(2), nh, nh, hd, null), `h.${l}.attn.c_proj`));
      h = addRows(h, conv(conv(ln(h, `h.${l}.ln_2`), `h.${l}.mlp.c_fc`).map((r) => r.map(gelu)), `h.${l}.mlp.c_proj`));
    }
    return linear(ln(h, 'ln_f'), wte, null);
  };
}

/**
 * erf in double precision: its Maclaurin series for |x| < 3 (terms stay below e^9, so about
 * 1e-13 absolute), else 1 - erfc from the asymptotic series (four terms: below 1e-7 at x = 3).
 */
function erf(x: number): number {
  const ax = Math.abs(x);
  let r: number;
  if (ax < 3) {
    let term = ax, sum = ax;
    for (let n = 1; Math.abs(term) > 1e-17; n++) {
      term *= (-ax * ax) / n;
      sum += term / (2 * n + 1);
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    const z2 = ax * ax;
    r = 1 - (Math.exp(-z2) / (ax * Math.sqrt(Math.PI))) * (1 - 1 / (2 * z2) + 3 / (4 * z2 * z2) - 15 / (8 * z2 ** 3));
  }
  return x < 0 ? -r : r;
}
