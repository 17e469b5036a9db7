#!/usr/bin/env bash
# One call on the GPU machine, within a time budget (docs/gpu.md: a task has 15 minutes of device
# time, the machine's start included, so the whole run must fit one call of at most 10 minutes).
# tools/gpu/pack.sh carries Node, the dependencies and the kernel build there.
#
# Stages, in order of what they tell (STAGES picks and orders them; default all):
#   tests    the CUDA tiers of the conformance suite (bf16, fp16), device sampling and the demo
#            model against its PyTorch reference: every kernel but the Hopper ones; after a
#            kernel fault (which ends the process's CUDA context: the suite skips the rest and
#            logs the op in faults.tsv) it runs again without that op, while time is left
#   probes   the sm90 layout probes (one wgmma per descriptor kind, no pipeline) and the cluster
#            probe (multicast TMA and arrivals on a peer's barrier, alone)
#   sm90     the Hopper GEMM and attention conformance cases (apart: a hang there is cut by its
#            own timeout, and a fault does not take the other results with it), again past a
#            fault as above
#   e2e      tiny checkpoints of every architecture and transformers' logits for them
#            (tools/make_hf_fixtures.py), then tests/e2e on CUDA and the CPU, then tessera
#            check's op-by-op report on the demo model (check_demo_*.json)
#   bench    tessera bench on synthetic:llama-3-8b (decode, prefill 512 and 2048, the host's
#            share, % of copy bandwidth) and on the demo model, with the default kernels
#   kernels  tessera bench kernels: every kernel beside cuBLASLt and the ceilings measured in
#            the same run; the run goes on past a kernel fault or hang (--resume) while time is
#            left; a Hopper kernel that failed the sm90 stage is left out (--skip-kernels; all
#            of them when that stage hung); then the choices
#   tuned    tessera bench on synthetic:llama-3-8b again, with the choices the kernels stage made
#   torch    bench/torch_kernels.py: PyTorch on the same cases (attention and the memory-bound
#            ops first: cuBLASLt, which torch.matmul calls, is already in the kernels stage)
#   profile  not in the default list, for a call of its own (STAGES=profile): Nsight Compute on
#            one launch of each kernel tools/gpu/profile_cases.tsv names (tools/gpu/profile.sh),
#            what the notes need to explain a gap to a target from the profile
# Each stage runs under `timeout`, the smaller of its own cap and the time left of BUDGET
# (seconds, default 540: a device call of timeout_s 600); a stage that would get less than its
# minimum is skipped and says so. machine.txt (the GPU, driver, clocks, then one line a stage:
# exit status, seconds taken, the test counts) and results.tgz (everything under $OUT/results,
# packed again after every stage, so a call cut short still returns what it finished) come back.
# KERNEL_SHAPES names another case list for the kernels stage (tests/cuda/gpu_run.test.ts runs
# this script against the stand-in libcuda with a small one).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
cd "$(dirname "$0")/../.."
R="$OUT/results"
mkdir -p "$R/choices"
BUDGET=${BUDGET:-540}
stages="${STAGES:-tests probes sm90 e2e bench kernels tuned torch}"
t0=$SECONDS
left() { echo $((BUDGET - (SECONDS - t0))); }
note() { echo "$(date -u +%T) +$((SECONDS - t0))s $*" >> "$OUT/machine.txt"; }
save() {
  tar -czf "$OUT/results.tgz.tmp" -C "$OUT" results && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
  note "$1"
}
# The test counts of a vitest log, or nothing.
counts() { sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | grep -E '^ +Tests ' | tail -1 | tr -s ' ' | sed 's/^ //'; }
# Plain logs: they are read as text once they come back. The GPU runs the GPU tiers here: no
# kernel emulator (tests/cuda/emu) is built, which would cost device time.
export NO_COLOR=1 FORCE_COLOR=0 TESSERA_EMULATOR=0
# stage NAME CAP MIN CMD...: runs CMD, its output in $R/NAME.txt, under a timeout of CAP or the
# time left, whichever is less (then SIGKILL 5 s later: a process stuck in a driver call may not
# answer SIGTERM); skipped, with status 99, when less than MIN seconds are left.
stage() {
  local name=$1 cap=$2 min=$3
  shift 3
  local l
  l=$(left)
  if ((l < min)); then
    note "$name: skipped, ${l} s of the ${BUDGET} s budget left (it needs ${min})"
    return 99
  fi
  local t=$((cap < l ? cap : l)) s=$SECONDS rc
  timeout -k 5 "$t" "$@" >> "$R/$name.txt" 2>&1
  rc=$?
  save "$name: exit $rc in $((SECONDS - s)) s (limit $t s) $(counts "$R/$name.txt")"
  return $rc
}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.memory,memory.total --format=csv,noheader
  nvcc --version | tail -1
  node --version
  echo "budget ${BUDGET} s; stages: ${stages}"
} > "$OUT/machine.txt" 2>&1
# pack.sh built the kernels just before packing (same nvcc 13): reuse them unless REBUILD=1, to
# keep the call's minutes for running them.
if [ "${REBUILD:-0}" = 1 ] || [ ! -f dist/kernels/tessera.fatbin ] || [ ! -f build/kernels/resources.json ]; then
  stage build 240 60 npm run build:kernels
else
  echo "kernels: the carried build (dist/kernels/tessera.fatbin, $(stat -c %s dist/kernels/tessera.fatbin) bytes)" > "$R/build.txt"
fi
[ -f build/kernels/resources.json ] && cp build/kernels/resources.json "$R/resources.json"
export TESSERA_FAULT_LOG="$R/faults.tsv"
faults() { if [ -f "$TESSERA_FAULT_LOG" ]; then wc -l < "$TESSERA_FAULT_LOG"; else echo 0; fi; }
# conformance NAME CAP MIN REST FILE...: vitest over FILE... for the tests whose full name matches
# REST, never the CPU tier (CI's); after a kernel fault, again without the ops that faulted so
# far, while new faults come and time is left. Returns the last run's status.
conformance() {
  local name=$1 cap=$2 min=$3 rest=$4 excl="" seen rc ops
  shift 4
  while :; do
    seen=$(faults)
    stage "$name" "$cap" "$min" npx vitest run "$@" -t "^(?!cpu \(f32\))${excl}${rest}"
    rc=$?
    (($(faults) > seen)) || return $rc
    ops=$(cut -f2 "$TESSERA_FAULT_LOG" | sort -u | paste -sd'|')
    excl="(?!.* (${ops}) )"
    note "$name: again without ${ops//|/, } (a kernel fault there lost the CUDA context)"
  done
}
# The Hopper kernels the sm90 stage failed, as bench kernels names them ("matmul sm90"): every
# failing case's op, and sm90o, sm90s, sm90p, sm90k, sm90c or sm90pc where the case name says so
# (a failed sm90 leaves out sm90s too: bench kernels runs the same kernel for both; sm90p, sm90k,
# sm90c and sm90pc have entries of their own).
sm90_failed() {
  sed 's/\x1b\[[0-9;]*m//g' "$R/sm90.txt" | grep -E '^ *FAIL .* > .* > .*sm90' |
    awk -F' > ' '{ print $(NF-1), ($NF ~ /sm90o/ ? "sm90o" : $NF ~ /sm90s/ ? "sm90s" : $NF ~ /sm90pc/ ? "sm90pc" : $NF ~ /sm90p/ ? "sm90p" : $NF ~ /sm90k/ ? "sm90k" : $NF ~ /sm90c/ ? "sm90c" : "sm90") }' | sort -u | paste -sd,
}
skip_kernels=""
for s in $stages; do
  case $s in
    tests) conformance tests 240 30 '(?!.*sm90)' tests/conformance tests/golden/demo_cuda.test.ts ;;
    probes) stage probes 60 15 npx vitest run tests/cuda/sm90_probe.test.ts ;;
    sm90)
      conformance sm90 150 20 '.*sm90' tests/conformance
      rc=$?
      if ((rc == 124 || rc == 137 || rc == 99)); then
        skip_kernels="matmul sm90,matmul_add sm90,matmul sm90p,matmul_add sm90p,matmul sm90k,matmul_add sm90k,matmul sm90c,matmul_add sm90c,matmul sm90pc,matmul_add sm90pc,attention sm90,attention sm90o"
      elif ((rc != 0)); then
        skip_kernels=$(sm90_failed)
        [ -n "$skip_kernels" ] || skip_kernels="matmul sm90,matmul_add sm90,matmul sm90p,matmul_add sm90p,matmul sm90k,matmul_add sm90k,matmul sm90c,matmul_add sm90c,matmul sm90pc,matmul_add sm90pc,attention sm90,attention sm90o"
      fi
      ;;
    e2e)
      # Then tessera check's report on the demo model (every op on the GPU against the CPU backend
      # on its own inputs), bf16 and fp16, for the record; tests/e2e has already judged it.
      stage e2e 150 40 bash -c 'python3 tools/make_hf_fixtures.py --out tests/fixtures/hf && tar -czf "$0/hf_fixtures.tgz" tests/fixtures/hf && npx vitest run tests/e2e
        rc=$?
        node bin/tessera.js check --json > "$0/check_demo_bf16.json"
        node bin/tessera.js check --dtype float16 --json > "$0/check_demo_f16.json"
        exit $rc' "$R"
      ;;
    bench)
      stage bench 150 60 bash -c '
        node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 512 --decode-tokens 128 --prefill-tokens 512,2048 --runs 5 --json > "$0/bench.json" &&
        node bin/tessera.js bench --device cuda --model models/demo --prompt-tokens 128 --decode-tokens 128 --runs 5 --json >> "$0/bench.json"' "$R"
      ;;
    kernels)
      # Past a fault (exit 3) or a hang (killed: 124, 137) the run resumes from its report while
      # time is left, leaving out the kernel that faulted; the tuned and torch stages keep 150 s.
      exclude=()
      [ -n "$skip_kernels" ] && exclude=(--skip-kernels "$skip_kernels") && note "kernels: left out, as the sm90 stage failed them: ${skip_kernels}"
      resume=()
      while :; do
        cap=$(($(left) - 150))
        ((cap >= 60)) || { note "kernels: skipped, $(left) s left (it needs 60 beside the 150 kept for tuned and torch)"; break; }
        stage kernels "$cap" 60 node bin/tessera.js bench kernels --shapes "${KERNEL_SHAPES:-bench/kernel_shapes.json}" --out "$R/kernels.json" --time-limit $((cap - 30)) "${exclude[@]}" "${resume[@]}"
        rc=$?
        [[ $rc == 3 || $rc == 124 || $rc == 137 ]] && [ -f "$R/kernels.json" ] || break
        resume=(--resume "$R/kernels.json")
      done
      [ -f "$R/kernels.json" ] && stage choices 30 5 node bin/tessera.js bench kernels --choices-from "$R/kernels.json" --write-choices "$R/choices"
      ;;
    tuned)
      if compgen -G "$R/choices/*.json" > /dev/null; then
        stage tuned 90 45 env TESSERA_KERNEL_CHOICES="$R/choices" bash -c '
          node bin/tessera.js bench --device cuda --model synthetic:llama-3-8b --prompt-tokens 512 --decode-tokens 128 --prefill-tokens 512,2048 --runs 5 --json > "$0/bench_tuned.json"' "$R"
      else
        note "tuned: skipped, no kernel choices were written"
      fi
      ;;
    torch)
      l=$(left)
      stage torch "$l" 45 python3 bench/torch_kernels.py --out "$R/torch_kernels.json" --time-limit $((l - 30)) \
        --families attention_prefill,attention_decode,memory_bound,gemm
      ;;
    profile) stage profile "$(left)" 60 bash tools/gpu/profile.sh "$R" ;;
    *) note "unknown stage $s (tests probes sm90 e2e bench kernels tuned torch profile)" ;;
  esac
done
save "done: $(date -u +%FT%TZ), $((SECONDS - t0)) s of ${BUDGET}"
