#!/usr/bin/env bash
# One call on the GPU machine (docs/gpu.md says how to carry Node and the dependencies there):
# builds the kernels, makes the Hugging Face fixtures, runs the CUDA tiers of the conformance,
# declaration, golden and end-to-end suites, benchmarks synthetic:llama-3-8b end to end, then
# every kernel against cuBLASLt and the measured ceilings, and PyTorch on the same cases.
# Everything lands under $OUT.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
cd "$(dirname "$0")/../.."
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.memory,memory.total --format=csv,noheader
  nvcc --version | tail -1
  node --version
} > "$OUT/machine.txt" 2>&1
npm run build:kernels > "$OUT/build.txt" 2>&1 && cp build/kernels/resources.json "$OUT/resources.json"
python3 tools/make_hf_fixtures.py --out tests/fixtures/hf >> "$OUT/build.txt" 2>&1 && tar -czf "$OUT/hf_fixtures.tgz" tests/fixtures/hf
npx vitest run tests/conformance tests/cuda tests/e2e tests/golden > "$OUT/tests.txt" 2>&1
{
  for p in 512 2048; do
    node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens "$p" --decode-tokens 128 --runs 5 --json
  done
  TESSERA_GEMM=gemv node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 512 --decode-tokens 128 --runs 5 --json
  TESSERA_GEMM=sm90 node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 2048 --decode-tokens 16 --runs 5 --json
  node bin/tessera.js bench --device cuda --model models/demo --prompt-tokens 128 --decode-tokens 128 --runs 5 --json
  node bin/tessera.js bench --device cuda --model models/demo --prompt-tokens 128 --decode-tokens 128 --runs 5 --json --host-sampling
} > "$OUT/bench.json" 2> "$OUT/bench.err"
mkdir -p "$OUT/choices"
node bin/tessera.js bench kernels --out "$OUT/kernels.json" --write-choices "$OUT/choices" > "$OUT/kernels.txt" 2>&1
python3 bench/torch_kernels.py --out "$OUT/torch_kernels.json" > "$OUT/torch_kernels.txt" 2>&1
echo "done: $(date -u +%FT%TZ)" >> "$OUT/machine.txt"
