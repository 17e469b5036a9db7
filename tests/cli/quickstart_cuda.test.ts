/**
 * README's quick start on the CUDA backend: `tessera generate` (what `npm start` runs) with
 * `--device auto`, through the real CLI, picks the GPU, says so, and prints the same greedy text
 * as the CPU backend. On the GPU, or without one on the kernel emulator behind the stand-in
 * libcuda (tests/cuda/emu; cudaTarget puts its environment into this process, and the CLI's
 * process inherits it).
 */
import { describe, expect, it } from 'vitest';
import { cudaTarget } from '../cuda/emu/target.js';
import { runCli } from './helpers.js';

const target = cudaTarget();
if (target.skip) console.log(`quick start on CUDA: skipped: ${target.skip}`);

const PROMPT = 'In the beginning';

describe.skipIf(target.skip !== null)(`the quick start on CUDA${target.emulated ? ' (kernel emulator)' : ''}`, () => {
  it('tessera generate --device auto runs on the GPU, says so, and prints the CPU backend\'s greedy text', async () => {
    const args = ['generate', '--temperature', '0', '-n', '24', '--ignore-eos', PROMPT];
    const [gpu, cpu] = await Promise.all([runCli([...args, '--device', 'auto']), runCli([...args, '--device', 'cpu'])]);
    expect(gpu.code, gpu.stderr).toBe(0);
    expect(cpu.code, cpu.stderr).toBe(0);
    // The load summary names the device it chose.
    expect(gpu.stderr).toMatch(/cuda:0/);
    expect(cpu.stderr).not.toMatch(/cuda:0/);
    // The demo model is trained: its greedy choices are far from ties, so 16-bit CUDA and f32 CPU agree.
    expect(gpu.stdout.startsWith(PROMPT)).toBe(true);
    expect(gpu.stdout.length).toBeGreaterThan(PROMPT.length + 8);
    expect(gpu.stdout).toBe(cpu.stdout);
  }, 180_000);
});
