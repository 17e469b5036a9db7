/**
 * GPT-2 as a graph: learned positions, LayerNorm with bias, GELU, biases everywhere, and
 * Conv1D weights stored [in, out]. The fused c_attn weight [D, 3D] is transposed and split
 * into q, k and v once at load (load-time ops), so the per-step graph has the same shape as
 * the Llama family's and the same passes apply.
 */
import type { ModelConfig } from '../../formats/hf_config.js';
import { GraphBuilder, type Graph } from '../ir.js';
import type { BuildOptions } from './index.js';

export function buildGpt2(c: ModelConfig, opts: BuildOptions): Graph {
  const g = new GraphBuilder();
  const { hiddenSize: d, numHeads: nh, headDim: hd, intermediateSize: ff } = c;
  const eps = c.normEps;

  // Conv1D: y = x W + b with W [in, out]; as nn.Linear layout that is W^T [out, in].
  const conv1d = (x: number, name: string, inDim: number, outDim: number): number => {
    const w = g.op('transpose', [g.weight(`${name}.weight`, [inDim, outDim])], {}, `${name}.weight^T`);
    const y = g.op('matmul', [x, w], {}, name);
    return g.op('add', [y, g.weight(`${name}.bias`, [outDim])], {}, `${name}+bias`);
  };
  const layernorm = (x: number, name: string): number =>
    g.op('layernorm', [x, g.weight(`${name}.weight`, [d]), g.weight(`${name}.bias`, [d])], { eps }, name);

  const slots = g.input('slotMapping');
  const attnInputs = [g.input('queryStart'), g.input('contextLens'), g.input('blockTables')];
  const wte = g.weight('transformer.wte.weight', [c.vocabSize, d]);
  const tok = g.op('embedding', [g.input('tokenIds'), wte], {}, 'wte');
  const pos = g.op('embedding', [g.input('positions'), g.weight('transformer.wpe.weight', [c.maxPositions, d])], {}, 'wpe');
  let h = g.op('add', [tok, pos], {}, 'embed');

  for (let l = 0; l < c.numLayers; l++) {
    g.layer(l);
    const p = `transformer.h.${l}`;
    const x = layernorm(h, `${p}.ln_1`);
    const cAttnT = g.op('transpose', [g.weight(`${p}.attn.c_attn.weight`, [d, 3 * d])], {}, `${p}.attn.c_attn.weight^T`);
    const cAttnBias = g.weight(`${p}.attn.c_attn.bias`, [3 * d]);
    const [q, k, v] = ['q', 'k', 'v'].map((part, i) => {
      const w = g.op('slice_rows', [cAttnT], { start: i * d, count: d }, `${p}.attn.${part}.weight`);
      const b = g.op('slice_rows', [cAttnBias], { start: i * d, count: d }, `${p}.attn.${part}.bias`);
      return g.op('add', [g.op('matmul', [x, w], {}, `${p}.attn.${part}`), b], {}, `${p}.attn.${part}+bias`);
    });
    const cache = g.op('kv_write', [k, v, g.kvCache(l, opts.kvBlockSize, nh, hd), slots], {}, `${p}.kv_write`);
    const attn = g.op(
      'attention',
      [q, cache, ...attnInputs],
      { numHeads: nh, numKvHeads: nh, headDim: hd, scale: 1 / Math.sqrt(hd), slidingWindow: null },
      `${p}.attention`,
    );
    h = g.op('add', [h, conv1d(attn, `${p}.attn.c_proj`, d, d)], {}, `${p}.residual_attn`);
    const x2 = layernorm(h, `${p}.ln_2`);
    const act = g.op('gelu', [conv1d(x2, `${p}.mlp.c_fc`, d, ff)], { approximate: c.activation === 'gelu' ? 'none' : 'tanh' }, `${p}.mlp.gelu`);
    h = g.op('add', [h, conv1d(act, `${p}.mlp.c_proj`, ff, d)], {}, `${p}.residual_mlp`);
  }

  g.layer(null);
  const last = g.op('gather_rows', [h, g.input('logitsIndices')], {}, 'last_rows');
  const normed = layernorm(last, 'transformer.ln_f');
  const lmHead = c.tieWordEmbeddings ? wte : g.weight('lm_head.weight', [c.vocabSize, d]);
  g.output(g.op('matmul', [normed, lmHead], {}, 'lm_head'));
  return g.graph;
}
