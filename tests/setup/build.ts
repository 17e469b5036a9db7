/**
 * Vitest globalSetup: compiles src/ into dist/ once before any test runs, so the CLI tests can
 * run bin/tessera.js (which imports dist/) against the current source. The build is incremental,
 * so an up-to-date dist/ costs only the compiler's start-up. Then builds the kernel emulator
 * (tests/cuda/emu) into its cache, so that the test files that run on it, in parallel, find it
 * built rather than each building it (not with TESSERA_EMULATOR=0, as on the GPU machine); a
 * failure here is reported by tests/cuda/emulator.test.ts.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { buildEmulator } from '../cuda/emu/build.js';

export default function setup(): void {
  const root = path.resolve(import.meta.dirname, '../..');
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
  if (process.env.TESSERA_EMULATOR === '0') return;
  try {
    buildEmulator();
  } catch {
    // tests/cuda/emulator.test.ts builds it again and fails with the compiler's message.
  }
}
