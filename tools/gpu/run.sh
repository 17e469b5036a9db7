#!/usr/bin/env bash
# One call on the GPU machine (docs/gpu.md: tools/gpu/pack.sh carries Node and the dependencies
# there): uses the carried kernel build (REBUILD=1: builds again), makes the Hugging Face fixtures, runs the CUDA tiers of the
# conformance, declaration, golden and end-to-end suites, benchmarks synthetic:llama-3-8b end to
# end, then every kernel against cuBLASLt and the measured ceilings, and PyTorch on the same cases.
#
# A call brings back at most 8 files, so everything goes into $OUT/results/ and is packed into
# $OUT/results.tgz after every stage (a call cut short still returns what it finished); the
# summary, machine.txt, comes back beside it. STAGES (default "tests bench kernels torch") runs
# a part, for splitting the work over two calls.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
cd "$(dirname "$0")/../.."
R="$OUT/results"
mkdir -p "$R/choices"
stages=" ${STAGES:-tests bench kernels torch} "
save() {
  tar -czf "$OUT/results.tgz.tmp" -C "$OUT" results && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
  echo "$(date -u +%T) $1" >> "$OUT/machine.txt"
}
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.memory,memory.total --format=csv,noheader
  nvcc --version | tail -1
  node --version
} > "$OUT/machine.txt" 2>&1
# pack.sh built the kernels just before packing (same nvcc 13): reuse them unless REBUILD=1, to
# keep the call's minutes for running them.
if [ "${REBUILD:-0}" = 1 ] || [ ! -f dist/kernels/tessera.fatbin ] || [ ! -f build/kernels/resources.json ]; then
  npm run build:kernels > "$R/build.txt" 2>&1
  built=$?
else
  echo "kernels: the carried build (dist/kernels/tessera.fatbin, $(stat -c %s dist/kernels/tessera.fatbin) bytes)" > "$R/build.txt"
  built=0
fi
[ "$built" -eq 0 ] && cp build/kernels/resources.json "$R/resources.json"
save "kernels built: exit $built"
if [[ $stages == *" tests "* ]]; then
  python3 tools/make_hf_fixtures.py --out tests/fixtures/hf >> "$R/build.txt" 2>&1 && tar -czf "$R/hf_fixtures.tgz" tests/fixtures/hf
  # The Hopper kernels run last and on their own (layout probes first): a hang there is cut by
  # its timeout without costing the other results. Test names carry "sm90" where they run them.
  timeout 420 npx vitest run tests/conformance tests/cuda tests/e2e tests/golden -t '^(?!.*sm90)' > "$R/tests.txt" 2>&1
  save "tests: exit $? $(grep -E '^ +Tests ' "$R/tests.txt" | tail -1 | tr -s ' ')"
  timeout 60 npx vitest run tests/cuda/sm90_probe.test.ts > "$R/tests_sm90_probe.txt" 2>&1
  save "sm90 probes: exit $? $(grep -E '^ +Tests ' "$R/tests_sm90_probe.txt" | tail -1 | tr -s ' ')"
  timeout 180 npx vitest run tests/conformance tests/cuda -t 'sm90' > "$R/tests_sm90.txt" 2>&1
  save "sm90 tests: exit $? $(grep -E '^ +Tests ' "$R/tests_sm90.txt" | tail -1 | tr -s ' ')"
fi
if [[ $stages == *" bench "* ]]; then
  {
    node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 512 --decode-tokens 128 --prefill-tokens 512,2048 --runs 5 --json
    TESSERA_GEMM=gemv node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 512 --decode-tokens 128 --runs 5 --json
    TESSERA_GEMM=sm90 node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 2048 --decode-tokens 16 --runs 5 --json
    TESSERA_GEMM=sm90 TESSERA_ATTENTION=sm90o timeout 120 node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 2048 --decode-tokens 16 --prefill-tokens 512,2048 --runs 5 --json
    node bin/tessera.js bench --device cuda --model models/demo --prompt-tokens 128 --decode-tokens 128 --runs 5 --json
    node bin/tessera.js bench --device cuda --model models/demo --prompt-tokens 128 --decode-tokens 128 --runs 5 --json --host-sampling
  } > "$R/bench.json" 2> "$R/bench.err"
  save "bench: $(grep -c decodeTokensPerSecond "$R/bench.json") runs"
fi
if [[ $stages == *" kernels "* ]]; then
  # The report is rewritten after every case, so a run cut by the timeout keeps what it measured;
  # the choices come from whatever the report holds.
  timeout 480 node bin/tessera.js bench kernels --out "$R/kernels.json" > "$R/kernels.txt" 2>&1
  save "bench kernels: exit $?"
  node bin/tessera.js bench kernels --choices-from "$R/kernels.json" --write-choices "$R/choices" >> "$R/kernels.txt" 2>&1
  save "kernel choices: exit $?"
fi
if [[ $stages == *" torch "* ]]; then
  python3 bench/torch_kernels.py --out "$R/torch_kernels.json" > "$R/torch_kernels.txt" 2>&1
  save "torch kernels: exit $?"
fi
echo "done: $(date -u +%FT%TZ)" >> "$OUT/machine.txt"
