/**
 * Binds a Program's weights to a checkpoint's tensors: every tensor the graph needs must exist
 * (under its name or an alias), with the shape the config implies and a float dtype. Checked
 * before any weight bytes are read, so a wrong file fails fast with one sentence.
 */
import { TesseraError } from '../errors.js';
import type { WeightSource } from '../backend/backend.js';
import type { Checkpoint } from '../formats/checkpoint.js';
import type { TensorInfo } from '../formats/safetensors.js';
import { isIgnorableTensor, weightAliases } from '../graph/models/index.js';
import type { Program } from '../graph/program.js';

const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);

export interface BoundWeights extends WeightSource {
  /** Bytes of the tensors as stored in the checkpoint. */
  storedBytes: number;
  /** Tensors present in the checkpoint that the model does not use (and are not known buffers). */
  unused: string[];
  /** The stored dtype of each tensor the model reads. */
  dtypes: Map<string, string>;
}

export function bindWeights(program: Program, ckpt: Checkpoint): BoundWeights {
  const { config, weights } = ckpt;
  const resolved = new Map<string, TensorInfo>();
  for (const w of program.weights) {
    if (!('tensor' in w.source)) continue;
    const name = w.source.tensor;
    const info = weightAliases(config, name).map((n) => weights.tensors.get(n)).find((t) => t !== undefined);
    if (!info)
      throw new TesseraError(
        `${ckpt.dir}: the weights have no tensor "${name}", which ${config.hfArchitecture} with this config.json needs; is the checkpoint complete?`,
        'invalid_checkpoint',
      );
    if (info.shape.join(',') !== w.shape.join(','))
      throw new TesseraError(
        `${info.file}: tensor "${info.name}" has shape [${info.shape.join(', ')}] but config.json implies [${w.shape.join(', ')}].`,
        'invalid_checkpoint',
      );
    if (!FLOAT_DTYPES.has(info.dtype))
      throw new TesseraError(
        `${info.file}: tensor "${info.name}" is ${info.dtype}; Tessera loads F32, F16 and BF16 weights (quantized checkpoints are not supported).`,
        'unsupported',
      );
    resolved.set(name, info);
  }
  const usedNames = new Set([...resolved.values()].map((t) => t.name));
  const unused = [...weights.tensors.keys()].filter((n) => !usedNames.has(n) && !isIgnorableTensor(config, n));
  let storedBytes = 0;
  const dtypes = new Map<string, string>();
  for (const [name, info] of resolved) {
    storedBytes += info.byteLength;
    dtypes.set(name, info.dtype);
  }
  return {
    storedBytes,
    unused,
    dtypes,
    readF32: (name: string) => {
      const info = resolved.get(name);
      if (!info) throw new Error(`weight ${name} was not bound`);
      return weights.readF32(info.name);
    },
    recipe: weights.recipe ? (name: string) => weights.recipe!(resolved.get(name)?.name ?? name) : undefined,
  };
}
