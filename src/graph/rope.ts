/**
 * Rotary-embedding frequencies, shared by every backend: inv_freq[i] = theta^(-2i / rotaryDim)
 * for i < rotaryDim / 2, adjusted by the checkpoint's scaling. Computed in f32 as the reference
 * implementations do, so angles match theirs to the last bit of f32 rounding.
 */
import type { RopeScaling } from '../formats/hf_config.js';
import type { Attrs } from './ir.js';

export interface RopeAttrs {
  rotaryDim: number;
  theta: number;
  scaling: RopeScaling | null;
}

export function ropeAttrs(attrs: Attrs): RopeAttrs {
  return {
    rotaryDim: attrs.rotaryDim as number,
    theta: attrs.theta as number,
    scaling: (attrs.scaling as unknown as RopeScaling | null) ?? null,
  };
}

export function ropeInvFreq({ rotaryDim, theta, scaling }: RopeAttrs): Float32Array {
  const half = rotaryDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / rotaryDim)));
  if (scaling?.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = inv[i] / scaling.factor;
  } else if (scaling?.type === 'llama3') {
    // Long wavelengths are slowed by `factor`, short ones kept, and the band between blended.
    const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions } = scaling;
    const lowFreqWavelen = originalMaxPositions / lowFreqFactor;
    const highFreqWavelen = originalMaxPositions / highFreqFactor;
    for (let i = 0; i < half; i++) {
      const freq = inv[i];
      const wavelen = (2 * Math.PI) / freq;
      if (wavelen < highFreqWavelen) continue;
      if (wavelen > lowFreqWavelen) {
        inv[i] = freq / factor;
      } else {
        const smooth = (originalMaxPositions / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        inv[i] = (1 - smooth) * (freq / factor) + smooth * freq;
      }
    }
  }
  return inv;
}
