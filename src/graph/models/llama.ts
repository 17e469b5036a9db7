/**
 * The Llama family as a graph: Llama 2/3, Mistral (sliding window), Qwen2 (q/k/v bias) and
 * Qwen3 (RMSNorm over each head of q and k). Pre-norm decoder: per layer
 *   h += o_proj(attention(rope(q), rope(k), v));  h += down(silu(gate(x)) * up(x))
 * Weight names are those of the Hugging Face checkpoints.
 */
import type { ModelConfig } from '../../formats/hf_config.js';
import { GraphBuilder, type Graph } from '../ir.js';
import type { BuildOptions } from './index.js';

export function buildLlama(c: ModelConfig, opts: BuildOptions): Graph {
  const g = new GraphBuilder();
  const { hiddenSize: d, numHeads: nh, numKvHeads: nkv, headDim: hd, intermediateSize: ff } = c;
  const eps = c.normEps;
  const rope = c.rope!;

  const linear = (x: number, name: string, outDim: number, inDim: number, bias: boolean): number => {
    const y = g.op('matmul', [x, g.weight(`${name}.weight`, [outDim, inDim])], {}, name);
    return bias ? g.op('add', [y, g.weight(`${name}.bias`, [outDim])], {}, `${name}+bias`) : y;
  };
  const rmsnorm = (x: number, weight: string, dim: number, label: string): number =>
    g.op('rmsnorm', [x, g.weight(weight, [dim])], { eps }, label);
  const ropeAttrs = (heads: number) => ({
    numHeads: heads,
    headDim: hd,
    rotaryDim: rope.rotaryDim,
    theta: rope.theta,
    scaling: rope.scaling ? { ...rope.scaling } : null,
  });

  const positions = g.input('positions');
  const slots = g.input('slotMapping');
  const attnInputs = [g.input('queryStart'), g.input('contextLens'), g.input('blockTables')];
  const embedTable = g.weight('model.embed_tokens.weight', [c.vocabSize, d]);
  let h = g.op('embedding', [g.input('tokenIds'), embedTable], {}, 'embed');

  for (let l = 0; l < c.numLayers; l++) {
    g.layer(l);
    const p = `model.layers.${l}`;
    const x = rmsnorm(h, `${p}.input_layernorm.weight`, d, `${p}.input_layernorm`);
    let q = linear(x, `${p}.self_attn.q_proj`, nh * hd, d, c.qkvBias);
    let k = linear(x, `${p}.self_attn.k_proj`, nkv * hd, d, c.qkvBias);
    const v = linear(x, `${p}.self_attn.v_proj`, nkv * hd, d, c.qkvBias);
    if (c.qkNorm) {
      q = rmsnorm(q, `${p}.self_attn.q_norm.weight`, hd, `${p}.self_attn.q_norm`);
      k = rmsnorm(k, `${p}.self_attn.k_norm.weight`, hd, `${p}.self_attn.k_norm`);
    }
    q = g.op('rope', [q, positions], ropeAttrs(nh), `${p}.rope_q`);
    k = g.op('rope', [k, positions], ropeAttrs(nkv), `${p}.rope_k`);
    const cache = g.op('kv_write', [k, v, g.kvCache(l, opts.kvBlockSize, nkv, hd), slots], {}, `${p}.kv_write`);
    const attn = g.op(
      'attention',
      [q, cache, ...attnInputs],
      { numHeads: nh, numKvHeads: nkv, headDim: hd, scale: 1 / Math.sqrt(hd), slidingWindow: l >= c.firstWindowLayer ? c.slidingWindow : null },
      `${p}.attention`,
    );
    h = g.op('add', [h, linear(attn, `${p}.self_attn.o_proj`, d, nh * hd, c.oBias)], {}, `${p}.residual_attn`);

    const x2 = rmsnorm(h, `${p}.post_attention_layernorm.weight`, d, `${p}.post_attention_layernorm`);
    const gate = linear(x2, `${p}.mlp.gate_proj`, ff, d, c.mlpBias);
    const up = linear(x2, `${p}.mlp.up_proj`, ff, d, c.mlpBias);
    const act = g.op('mul', [g.op('silu', [gate], {}, `${p}.mlp.silu`), up], {}, `${p}.mlp.act`);
    h = g.op('add', [h, linear(act, `${p}.mlp.down_proj`, d, ff, c.mlpBias)], {}, `${p}.residual_mlp`);
  }

  g.layer(null);
  // Only the rows that sample need the final norm and the vocabulary projection.
  const last = g.op('gather_rows', [h, g.input('logitsIndices')], {}, 'last_rows');
  const normed = rmsnorm(last, 'model.norm.weight', d, 'model.norm');
  const lmHead = c.tieWordEmbeddings ? embedTable : g.weight('lm_head.weight', [c.vocabSize, d]);
  g.output(g.op('matmul', [normed, lmHead], {}, 'lm_head'));
  return g.graph;
}
