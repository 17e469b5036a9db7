/** tessera info: what a model is and what it needs, without loading its weights. */
import { Tessera } from '../llm.js';
import { MODEL_HELP, MODEL_OPTIONS, modelOptions, parse } from './args.js';
import { formatBytes } from './progress.js';

const HELP = `Usage: tessera info [options]

Prints the architecture, parameters, dtypes and memory a model needs (weights are not read).

  --json                         machine-readable output

${MODEL_HELP}`;

export async function info(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...MODEL_OPTIONS, json: { type: 'boolean' } }, 'info');
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const { dir, opts } = modelOptions(values);
  const i = await Tessera.inspect(dir, opts);
  if (values.json) {
    console.log(JSON.stringify(i, null, 2));
    return 0;
  }
  const c = i.config;
  const rope = c.rope ? `rope theta ${c.rope.theta}${c.rope.scaling ? `, ${c.rope.scaling.type} scaling x${c.rope.scaling.factor}` : ''}` : 'learned positions';
  const lines: Array<[string, string]> = [
    ['model', i.dir],
    ['architecture', `${c.hfArchitecture} (${c.architecture})`],
    ['parameters', `${i.numParameters.toLocaleString('en-US')} (${(i.numParameters / 1e6).toFixed(2)}M)`],
    ['stored dtypes', Object.entries(i.dtypes).map(([d, n]) => `${d} x${n}`).join(', ')],
    ['layers', `${c.numLayers}, hidden ${c.hiddenSize}, mlp ${c.intermediateSize} (${c.activation})`],
    ['attention', `${c.numHeads} heads, ${c.numKvHeads} kv heads, head dim ${c.headDim}${c.slidingWindow ? `, sliding window ${c.slidingWindow}` : ''}${c.qkNorm ? ', q/k norm' : ''}`],
    ['positions', `${rope}; context ${c.maxPositions}`],
    ['norm', `${c.norm}, eps ${c.normEps}`],
    ['vocabulary', `${c.vocabSize}${c.tieWordEmbeddings ? ', tied embeddings' : ''}`],
    ['device', i.device],
    ['compute dtype', i.computeDtype],
    ['weights', formatBytes(i.memory.weightBytes)],
    ['KV cache', `${formatBytes(i.kvBytesPerToken)} per token; ${i.kvCacheBlocks} blocks of ${i.kvBlockSize} = ${formatBytes(i.memory.kvCacheBytes)}`],
    ['activations', `${formatBytes(i.memory.activationBytes)} arena for ${i.maxNumBatchedTokens} tokens per step`],
    ['memory needed', formatBytes(i.memory.weightBytes + i.memory.kvCacheBytes + i.memory.activationBytes)],
  ];
  if (i.kernelChoices) lines.push(['kernels', i.kernelChoices]);
  if (i.launchOverlap) lines.push(['launches', i.launchOverlap]);
  if (i.unusedTensors.length) lines.push(['unused tensors', `${i.unusedTensors.length} (${i.unusedTensors.slice(0, 3).join(', ')}${i.unusedTensors.length > 3 ? ', ...' : ''})`]);
  const w = Math.max(...lines.map(([k]) => k.length));
  for (const [k, v] of lines) console.log(`${k.padEnd(w)}  ${v}`);
  return 0;
}
