#!/usr/bin/env bash
# Nsight Compute on the kernels whose distance to their targets the perf notes must explain
# (issue 6: a gap "measured, explained from the profile"): run.sh's `profile` stage, for a call of
# its own (STAGES=profile) once the default stages have run. For each line of profile_cases.tsv,
# `tessera bench kernels` runs the case(s) its filter selects under ncu, which profiles one launch
# (the second) of the named kernel with the sections that place the time: speed of light, memory
# and compute workloads, occupancy, launch statistics and warp states. Clocks are left as they
# are (--clock-control none, as the device notes ask). Per line: <name>.csv (ncu's details page),
# <name>.log, and the bench report of the same run; a line that fails says so and the next runs.
# Usage: profile.sh OUTDIR  (NCU names another ncu; KERNELS_TSV another case list)
set -uo pipefail
out=${1:?usage: profile.sh OUTDIR}/ncu
mkdir -p "$out"
NCU=${NCU:-ncu}
cd "$(dirname "$0")/../.."
while IFS=$'\t' read -r name family filter kernel; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  "$NCU" --clock-control none --target-processes all -k "regex:${kernel}" --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section WarpStateStats --csv --page details \
    node bin/tessera.js bench kernels --family "$family" --filter "$filter" --exclude ' f16' --runs 20 --warmup 1 \
    --out "$out/$name.bench.json" > "$out/$name.csv" 2> "$out/$name.log"
  echo "$name: exit $? ($(grep -c . "$out/$name.csv") csv lines)"
done < "${KERNELS_TSV:-tools/gpu/profile_cases.tsv}"
