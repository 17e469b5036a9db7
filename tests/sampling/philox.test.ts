import { describe, expect, it } from 'vitest';
import { philox4x32, uniform } from '../../src/sampling/philox.js';

describe('philox4x32-10', () => {
  // Known-answer vectors of the Random123 distribution (kat_vectors): counter, key -> output.
  it.each([
    [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
    [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]],
    [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]],
  ])('matches the published vector for counter %j key %j', (ctr, key, expected) => {
    expect(philox4x32(key[0], key[1], ctr[0], ctr[1], ctr[2], ctr[3])).toEqual(expected);
  });

  it('gives uniforms in [0, 1) with the right mean and no repeats across streams', () => {
    const xs = Array.from({ length: 20000 }, (_, i) => uniform(12345, 0, i));
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...xs)).toBeLessThan(1);
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.01);
    expect(uniform(12345, 1, 0)).not.toBe(uniform(12345, 0, 0));
    expect(uniform(12346, 0, 0)).not.toBe(uniform(12345, 0, 0));
    expect(uniform(2 ** 40 + 5, 0, 3)).toBe(uniform(2 ** 40 + 5, 0, 3));
    expect(uniform(2 ** 40 + 5, 0, 3)).not.toBe(uniform(5, 0, 3));
  });
});
