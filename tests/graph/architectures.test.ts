/**
 * Every supported architecture, end to end, on tiny random checkpoints in the exact HF format
 * (tests/helpers/tiny_checkpoint.ts):
 *  - structure: the graph asks for exactly the checkpoint's tensors, with the right ops per layer
 *    and the attrs that matter; lowering keeps load-time ops out of the per-step calls and plans
 *    an arena smaller than the sum of its activations without overlapping live buffers;
 *  - numerics: prefill logits at every position and greedy decode over the paged cache (KV blocks
 *    of 4) against an independent float64 forward pass (tests/helpers/naive_reference.ts), the
 *    same greedy tokens through llm.complete, and again with prefill chunked 8 tokens a step.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modelConfigFromJson } from '../../src/formats/hf_config.js';
import type { Graph, Node } from '../../src/graph/ir.js';
import { lower } from '../../src/graph/lower.js';
import { buildModelGraph } from '../../src/graph/models/index.js';
import { OPS } from '../../src/graph/ops.js';
import type { Program } from '../../src/graph/program.js';
import { Tessera } from '../../src/llm.js';
import { resolveSamplingParams } from '../../src/sampling/params.js';
import { BlockManager } from '../../src/scheduler/block_manager.js';
import { Sequence } from '../../src/scheduler/sequence.js';
import { SequenceDriver, argmax } from '../helpers/forward.js';
import { loadNaiveModel, type NaiveModel } from '../helpers/naive_reference.js';
import { VARIANTS, VOCAB, isBuffer, tinyCheckpoint, uniform, writeTinyCheckpoint, type TinyDir, type Variant } from '../helpers/tiny_checkpoint.js';

/**
 * f32 weights, f32 activations: the gap to float64 is rounding only (observed ~1e-6 on logits of
 * magnitude ~1-3), so 1e-4 leaves room and still catches any wrong op, weight or position.
 */
const TOL = 1e-4;
const PROMPT_LEN = 40;
const STEPS = 8;
const KV_BLOCK = 4;

// ---- what each variant must build to, written from the HF configs ----

type OpCounts = Partial<Record<keyof typeof OPS, number>>;
const LLAMA_LAYER: OpCounts = { rmsnorm: 2, matmul: 7, add: 2, rope: 2, kv_write: 1, attention: 1, silu: 1, mul: 1 };
const LLAMA_TOP: OpCounts = { embedding: 1, gather_rows: 1, rmsnorm: 1, matmul: 1 };
// Per layer: c_attn^T, c_proj^T, c_fc^T, mlp.c_proj^T; q/k/v weight and bias slices; q, k, v,
// c_proj, c_fc, mlp.c_proj matmuls; 6 biases + 2 residual adds.
const GPT2_LAYER: OpCounts = { layernorm: 2, transpose: 4, slice_rows: 6, matmul: 6, add: 8, kv_write: 1, attention: 1, gelu: 1 };
const GPT2_TOP: OpCounts = { embedding: 2, add: 1, gather_rows: 1, layernorm: 1, matmul: 1 };

interface Expected {
  family: 'llama' | 'gpt2';
  nh: number;
  nkv: number;
  hd: number;
  eps: number;
  rope: { theta: number; scaling: unknown } | null;
  window: number | null;
  tied: boolean;
  gelu?: 'tanh' | 'none';
  layer: OpCounts;
  /** A few weights spelled out, name -> shape (the full set is compared with the checkpoint). */
  shapes: Record<string, number[]>;
}

const EXPECTED: Record<Variant, Expected> = {
  llama: {
    family: 'llama', nh: 4, nkv: 2, hd: 16, eps: 1e-5, rope: { theta: 10000, scaling: null }, window: null, tied: true, layer: LLAMA_LAYER,
    shapes: { 'model.layers.0.self_attn.q_proj.weight': [64, 64], 'model.layers.1.self_attn.k_proj.weight': [32, 64], 'model.layers.0.mlp.down_proj.weight': [64, 96] },
  },
  llama3: {
    family: 'llama', nh: 4, nkv: 2, hd: 16, eps: 1e-5,
    rope: { theta: 500000, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64 } },
    window: null, tied: false, layer: LLAMA_LAYER, shapes: { 'lm_head.weight': [VOCAB, 64] },
  },
  mistral: {
    family: 'llama', nh: 4, nkv: 2, hd: 16, eps: 1e-5, rope: { theta: 10000, scaling: null }, window: 10, tied: false, layer: LLAMA_LAYER,
    shapes: { 'lm_head.weight': [VOCAB, 64], 'model.layers.0.self_attn.v_proj.weight': [32, 64] },
  },
  qwen2: {
    family: 'llama', nh: 4, nkv: 2, hd: 16, eps: 1e-6, rope: { theta: 1e6, scaling: { type: 'linear', factor: 2 } }, window: null, tied: true,
    layer: { ...LLAMA_LAYER, add: 5 }, // + q, k, v bias
    shapes: { 'model.layers.0.self_attn.q_proj.bias': [64], 'model.layers.1.self_attn.k_proj.bias': [32], 'model.layers.1.self_attn.v_proj.bias': [32] },
  },
  qwen3: {
    family: 'llama', nh: 4, nkv: 2, hd: 16, eps: 1e-6, rope: { theta: 1e6, scaling: null }, window: null, tied: true,
    layer: { ...LLAMA_LAYER, rmsnorm: 4 }, // + q_norm, k_norm
    shapes: {
      'model.layers.0.self_attn.q_proj.weight': [64, 32], 'model.layers.0.self_attn.k_proj.weight': [32, 32], 'model.layers.0.self_attn.o_proj.weight': [32, 64],
      'model.layers.0.self_attn.q_norm.weight': [16], 'model.layers.1.self_attn.k_norm.weight': [16],
    },
  },
  gpt2: {
    family: 'gpt2', nh: 4, nkv: 4, hd: 16, eps: 1e-5, rope: null, window: null, tied: true, gelu: 'tanh', layer: GPT2_LAYER,
    shapes: { 'transformer.h.0.attn.c_attn.weight': [64, 192], 'transformer.h.0.mlp.c_fc.weight': [64, 256], 'transformer.h.1.mlp.c_proj.weight': [256, 64], 'transformer.wpe.weight': [128, 64] },
  },
  gpt2_bare: {
    family: 'gpt2', nh: 4, nkv: 4, hd: 16, eps: 1e-5, rope: null, window: null, tied: true, gelu: 'none', layer: GPT2_LAYER,
    shapes: { 'transformer.h.1.attn.c_attn.bias': [192], 'transformer.h.0.mlp.c_fc.weight': [64, 96], 'transformer.h.0.mlp.c_proj.weight': [96, 64] },
  },
};

function countOps(nodes: Node[]): OpCounts {
  const counts: OpCounts = {};
  for (const n of nodes) counts[n.op] = (counts[n.op] ?? 0) + 1;
  return counts;
}

const producerOp = (g: Graph, value: number): string | undefined => {
  const p = g.value(value).producer;
  return p === null ? undefined : g.node(p).op;
};

/** Every pair of activations whose call ranges intersect must sit in disjoint parts of the arena. */
function overlappingLiveBuffers(program: Program): string[] {
  const span = new Map<number, [number, number]>();
  program.calls.forEach((c, i) => {
    for (const o of c.outputs) if (o.kind === 'activation') span.set(o.id, [i, i]);
    for (const o of c.inputs) if (o.kind === 'activation') span.get(o.id)![1] = i;
  });
  span.get(program.logits.id)![1] = program.calls.length; // read after the last call
  const rows = (r: 'T' | 'S' | number) => (r === 'T' ? program.maxTokens : r === 'S' ? program.maxLogitRows : r);
  // The one sanctioned overlap: an op's in-place output sharing the input it overwrites.
  const inPlace = new Set<string>();
  for (const c of program.calls)
    for (const [o, i] of OPS[c.op].inplace ?? []) {
      const out = c.outputs[o], inp = c.inputs[i];
      if (out.kind === 'activation' && inp.kind === 'activation') inPlace.add(`${Math.min(out.id, inp.id)}:${Math.max(out.id, inp.id)}`);
    }
  const bad: string[] = [];
  const bufs = program.activations;
  for (let a = 0; a < bufs.length; a++) {
    for (let b = a + 1; b < bufs.length; b++) {
      const [sa, ea] = span.get(bufs[a].id)!, [sb, eb] = span.get(bufs[b].id)!;
      if (sa > eb || sb > ea) continue;
      if (inPlace.has(`${Math.min(bufs[a].id, bufs[b].id)}:${Math.max(bufs[a].id, bufs[b].id)}`) && bufs[a].offset === bufs[b].offset) continue;
      const endA = bufs[a].offset + rows(bufs[a].rows) * bufs[a].cols, endB = bufs[b].offset + rows(bufs[b].rows) * bufs[b].cols;
      if (bufs[a].offset < endB && bufs[b].offset < endA) bad.push(`${bufs[a].id} and ${bufs[b].id}`);
    }
  }
  return bad;
}

describe.each(VARIANTS)('%s: graph structure', (variant) => {
  const want = EXPECTED[variant];
  const { config: json, tensors } = tinyCheckpoint(variant);
  const config = modelConfigFromJson(json);
  const graph = buildModelGraph(config, { kvBlockSize: KV_BLOCK });
  const layers = (json.num_hidden_layers ?? json.n_layer) as number;
  const layerPrefix = (l: number) => (want.family === 'llama' ? `model.layers.${l}.` : `transformer.h.${l}.`);
  const nodesOf = (op: string) => graph.nodes.filter((n) => n.op === op);

  it('asks for exactly the tensors of the HF checkpoint, with their shapes', () => {
    const asked = graph.byKind('weight').map((v) => `${v.name} [${v.shape.join(', ')}]`);
    // The un-prefixed GPT-2 files name "h.0..." what the graph calls "transformer.h.0...".
    const stored = Object.entries(tensors)
      .filter(([name]) => !isBuffer(name))
      .map(([name, t]) => `${variant === 'gpt2_bare' ? `transformer.${name}` : name} [${t.shape.join(', ')}]`);
    expect(asked.sort()).toEqual(stored.sort());
    expect(new Set(asked).size).toBe(asked.length);
    for (const [name, shape] of Object.entries(want.shapes)) expect(graph.byKind('weight').find((v) => v.name === name)?.shape, name).toEqual(shape);
    expect(asked.some((s) => s.startsWith('lm_head.weight '))).toBe(!want.tied);
  });

  it('has the same ops in every layer, and the expected ones outside', () => {
    const inLayer = (l: number) => graph.nodes.filter((n) => graph.value(n.outputs[0]).name.startsWith(layerPrefix(l)));
    for (let l = 0; l < layers; l++) expect(countOps(inLayer(l)), `layer ${l}`).toEqual(want.layer);
    const outside = graph.nodes.filter((n) => !/^(model\.layers|transformer\.h)\.\d+\./.test(graph.value(n.outputs[0]).name));
    expect(countOps(outside)).toEqual(want.family === 'llama' ? LLAMA_TOP : GPT2_TOP);
  });

  it('carries the attrs that matter', () => {
    for (const n of nodesOf('attention'))
      expect(n.attrs).toEqual({ numHeads: want.nh, numKvHeads: want.nkv, headDim: want.hd, scale: 1 / Math.sqrt(want.hd), slidingWindow: want.window });
    for (const n of [...nodesOf('rmsnorm'), ...nodesOf('layernorm')]) expect(n.attrs).toEqual({ eps: want.eps });
    if (want.rope) {
      const ropes = nodesOf('rope');
      expect(ropes).toHaveLength(2 * layers);
      const common = { headDim: want.hd, rotaryDim: want.hd, ...want.rope };
      expect(ropes.map((n) => n.attrs).sort((a, b) => (a.numHeads as number) - (b.numHeads as number))).toEqual([
        ...Array<object>(layers).fill({ numHeads: want.nkv, ...common }),
        ...Array<object>(layers).fill({ numHeads: want.nh, ...common }),
      ]);
    }
    if (want.gelu) for (const n of nodesOf('gelu')) expect(n.attrs).toEqual({ approximate: want.gelu });
  });

  it('wires the heads of the architecture: rope (after q/k norm) on q and k only, tied or own lm_head', () => {
    const [logits] = graph.outputs;
    const lmHead = graph.node(graph.value(logits).producer!);
    const embed = want.family === 'llama' ? 'model.embed_tokens.weight' : 'transformer.wte.weight';
    expect(lmHead.op).toBe('matmul');
    expect(graph.value(lmHead.inputs[1]).name).toBe(want.tied ? embed : 'lm_head.weight');
    for (const n of nodesOf('kv_write')) {
      // k is rotated, v is not; in GPT-2 neither.
      expect(producerOp(graph, n.inputs[0])).toBe(want.rope ? 'rope' : 'add');
      expect(producerOp(graph, n.inputs[1])).toBe(variant === 'qwen2' || !want.rope ? 'add' : 'matmul');
    }
    for (const n of nodesOf('attention')) expect(producerOp(graph, n.inputs[0])).toBe(want.rope ? 'rope' : 'add');
    // Qwen3 normalizes each head before RoPE; the others rotate the projection (+ bias) directly.
    const ropeInput = variant === 'qwen3' ? 'rmsnorm' : variant === 'qwen2' ? 'add' : 'matmul';
    for (const n of nodesOf('rope')) expect(producerOp(graph, n.inputs[0])).toBe(ropeInput);
  });

  it('lowers to per-step calls without load-time ops and plans a reusing arena', () => {
    const program = lower(graph, { maxTokens: 64, maxLogitRows: 8 });
    const loadNodes = graph.nodes.filter((n) => OPS[n.op].category === 'load');
    expect(program.calls.filter((c) => OPS[c.op].category === 'load')).toEqual([]);
    expect(program.calls).toHaveLength(graph.nodes.length - loadNodes.length);
    // Load-time ops only for GPT-2, and there as weight specs evaluated once at load.
    const derived = program.weights.filter((w) => 'op' in w.source);
    expect(countOps(loadNodes)).toEqual(want.family === 'gpt2' ? { transpose: 4 * layers, slice_rows: 6 * layers } : {});
    expect(derived.map((w) => w.name).sort()).toEqual(loadNodes.map((n) => graph.value(n.outputs[0]).name).sort());
    const seen = new Set<string>();
    for (const w of program.weights) {
      if ('op' in w.source) for (const i of w.source.inputs) expect(seen.has(i), `${w.name} after ${i}`).toBe(true);
      seen.add(w.name);
    }
    expect(program.states).toEqual(
      Array.from({ length: layers }, (_, l) => ({ name: `kv.${l}`, layer: l, blockSize: KV_BLOCK, numKvHeads: want.nkv, headDim: want.hd })),
    );
    expect(program.vocabSize).toBe(VOCAB);
    expect(program.arenaSize).toBeLessThan(program.activationTotal);
    expect(overlappingLiveBuffers(program)).toEqual([]);
  });
});

// ---- numerics ----

function randomPrompt(seed: number, length: number): number[] {
  const u = uniform(seed);
  return Array.from({ length }, () => Math.floor(u() * 256));
}

/** max |a - b| over rows of a flat f32 [rows, V] against float64 rows. */
function maxDiff(got: Float32Array, want: Float64Array[], v: number): number {
  expect(got.length).toBe(want.length * v);
  let m = 0;
  want.forEach((row, r) => row.forEach((x, i) => (m = Math.max(m, Math.abs(got[r * v + i] - x)))));
  return m;
}

/** top-1 minus top-2: how far a greedy choice is from a tie. */
function margin(row: Float64Array): number {
  const sorted = [...row].sort((a, b) => b - a);
  return sorted[0] - sorted[1];
}

describe.each(VARIANTS)('%s: Tessera (cpu) vs the naive float64 reference', (variant) => {
  const prompt = randomPrompt(VARIANTS.indexOf(variant) + 1, PROMPT_LEN);
  const prompt2 = randomPrompt(100 + VARIANTS.indexOf(variant), 23);
  let tiny: TinyDir;
  let ref: NaiveModel;
  let greedy: { tokens: number[]; logits: Float64Array[] };
  let greedy2: number[];
  let llm: Tessera;
  const observed: Record<string, number> = {};

  beforeAll(async () => {
    tiny = await writeTinyCheckpoint(variant);
    ref = await loadNaiveModel(tiny.dir);
    // STEPS + 1 tokens: the last is what the logits after the 8th decode step choose.
    greedy = ref.greedy(prompt, STEPS + 1);
    greedy2 = ref.greedy(prompt2, STEPS).tokens;
    llm = await Tessera.load(tiny.dir, { device: 'cpu', kvBlockSize: KV_BLOCK, maxLogitRows: 128 });
  });
  afterAll(async () => {
    await llm?.close();
    await tiny?.remove();
    // TESSERA_REPORT_DIFFS=1 prints the largest logit differences seen, for reports.
    if (process.env.TESSERA_REPORT_DIFFS) console.log(variant, observed);
  });

  it('binds every checkpoint tensor (the buffers are known and ignored)', () => {
    expect(llm.info.unusedTensors).toEqual([]);
    expect(llm.runner.vocabSize).toBe(ref.vocab);
  });

  it('greedy choices of the reference are far from ties, so token checks are meaningful', () => {
    for (let i = 0; i <= STEPS; i++) expect(margin(greedy.logits[PROMPT_LEN - 1 + i]), `step ${i}`).toBeGreaterThan(10 * TOL);
  });

  it(`prefill logits at every position and ${STEPS} greedy decode steps match within ${TOL}`, async () => {
    const v = ref.vocab;
    const driver = new SequenceDriver(llm, prompt);
    const prefill = await driver.prefill();
    let worst = maxDiff(prefill, greedy.logits.slice(0, PROMPT_LEN), v);
    expect(worst, 'prefill').toBeLessThanOrEqual(TOL);
    let logits = prefill.subarray(prefill.length - v);
    for (let i = 0; i < STEPS; i++) {
      const token = argmax(logits);
      expect(token, `greedy token ${i}`).toBe(greedy.tokens[i]);
      logits = await driver.decode(token);
      const d = maxDiff(logits, [greedy.logits[PROMPT_LEN + i]], v);
      expect(d, `decode step ${i}`).toBeLessThanOrEqual(TOL);
      worst = Math.max(worst, d);
    }
    expect(argmax(logits)).toBe(greedy.tokens[STEPS]);
    observed.paged = worst;
  });

  it('llm.complete generates the reference greedy tokens', async () => {
    const result = await llm.complete(prompt, { temperature: 0, maxTokens: STEPS, ignoreEos: true });
    expect(result.tokenIds).toEqual(greedy.tokens.slice(0, STEPS));
    expect(result.usage).toEqual({ promptTokens: PROMPT_LEN, completionTokens: STEPS, cachedPromptTokens: 0 });
  });

  describe('with prefill chunked to 8 tokens a step', () => {
    let chunked: Tessera;
    beforeAll(async () => {
      chunked = await Tessera.load(tiny.dir, { device: 'cpu', kvBlockSize: KV_BLOCK, maxNumSeqs: 2, maxNumBatchedTokens: 8, maxLogitRows: 8 });
    });
    afterAll(async () => {
      await chunked?.close();
    });

    it('plans the program for 8 tokens a step', () => {
      expect(chunked.runner.program.maxTokens).toBe(8);
    });

    it('logits of each chunk match the reference (earlier chunks read from the cache)', async () => {
      const v = ref.vocab;
      const seq = new Sequence(0, 'chunked', prompt, resolveSamplingParams({ temperature: 0 }));
      const blocks = new BlockManager(chunked.info.kvCacheBlocks, KV_BLOCK);
      blocks.grow([], 7 * KV_BLOCK); // start past block 0, so block ids differ from positions
      const got = new Float32Array(PROMPT_LEN * v);
      for (let start = 0; start < PROMPT_LEN; start += 8) {
        const n = Math.min(8, PROMPT_LEN - start);
        expect(blocks.grow(seq.blockTable, start + n)).toBe(true);
        got.set(await chunked.runner.backend.execute(chunked.runner.prepare([{ seq, numNewTokens: n, sample: true }], true)), start * v);
        seq.numComputedTokens += n;
      }
      const d = maxDiff(got, greedy.logits.slice(0, PROMPT_LEN), v);
      expect(d).toBeLessThanOrEqual(TOL);
      observed.chunked = d;
    });

    it('generates the same greedy tokens, alone and beside a second request', async () => {
      const opts = { temperature: 0, maxTokens: STEPS, ignoreEos: true };
      expect((await chunked.complete(prompt, opts)).tokenIds).toEqual(greedy.tokens.slice(0, STEPS));
      // Two requests share steps: one's decode rides with the other's prefill chunk.
      const [a, b] = await Promise.all([chunked.complete(prompt, opts), chunked.complete(prompt2, opts)]);
      expect(a.tokenIds).toEqual(greedy.tokens.slice(0, STEPS));
      expect(b.tokenIds).toEqual(greedy2);
    });
  });
});
