/**
 * Vitest globalSetup: compiles src/ into dist/ once before any test runs, so the CLI tests can
 * run bin/tessera.js (which imports dist/) against the current source. The build is incremental,
 * so an up-to-date dist/ costs only the compiler's start-up.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';

export default function setup(): void {
  const root = path.resolve(import.meta.dirname, '../..');
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
}
