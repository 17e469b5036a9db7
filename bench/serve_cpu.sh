#!/usr/bin/env bash
# Serving figures on the CPU for README: `tessera bench serve` (the server started in process, its
# engine in a worker thread) over three workloads, written as one JSON file under bench/results/
# with the machine, the date and each exact command. Run on an otherwise idle machine (it checks
# the load average first); it takes about 6 minutes on 2 cores. The request counts are chosen for
# that: 3 to 8 requests per concurrency-1 run, three times the concurrency at 8 for the demo model,
# one full wave (as many requests as the concurrency) at 64 and for the 1000-token prompts, whose
# prefill runs at about 100-200 tokens/s on this CPU backend.
#   (a) the demo model (256-token context), 120 prompt + 128 output tokens, concurrency 1, 8, 64
#   (b) synthetic:tiny-4k (the demo's shape, 4,096-token context), 1000 + 200 tokens, concurrency 1, 8
#   (c) synthetic:tiny-4k, a 1000-token system prompt shared by every request plus 32 tokens of
#       its own, 32 output tokens, with and without prefix caching
set -euo pipefail
cd "$(dirname "$0")/.."
load=$(cut -d' ' -f1 /proc/loadavg)
if [ "${FORCE:-}" != 1 ] && awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n * 0.75) }'; then
  echo "the load average is $load on $(nproc) cores: wait for the machine to be idle (FORCE=1 runs anyway)" >&2
  exit 1
fi
npm run --silent build
out=bench/results/serve-cpu.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
i=0
run() {
  local name=$1
  shift
  echo "== $name: tessera bench serve $*" >&2
  local start=$SECONDS
  node bin/tessera.js bench serve --device cpu --json "$@" > "$tmp/$(printf %02d $i).json"
  echo "   $((SECONDS - start)) s" >&2
  printf '%s' "$name" > "$tmp/$(printf %02d $i).name"
  i=$((i + 1))
}
demo="--input-len 120 --output-len 128 --range-ratio 0"
run demo-c1 $demo --concurrency 1 --requests 8
run demo-c8 $demo --concurrency 8 --requests 24
run demo-c64 $demo --concurrency 64 --requests 64
long="--model synthetic:tiny-4k --input-len 1000 --output-len 200 --range-ratio 0"
run tiny4k-c1 $long --concurrency 1 --requests 3
run tiny4k-c8 $long --concurrency 8 --requests 8
run tiny4k-shared-prefix --model synthetic:tiny-4k --shared-prefix-tokens 1000 --input-len 32 --output-len 32 --range-ratio 0 \
  --concurrency 4 --requests 12 --compare-prefix-caching
node -e '
const fs = require("fs"), os = require("os");
const dir = process.argv[1];
const runs = fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort().map((f) => ({
  name: fs.readFileSync(dir + "/" + f.replace(/\.json$/, ".name"), "utf8"),
  ...JSON.parse(fs.readFileSync(dir + "/" + f, "utf8")),
}));
const machine = { cpu: os.cpus()[0].model, cores: os.cpus().length, node: process.version, platform: `${os.type()} ${os.release()}`, memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB` };
fs.writeFileSync(process.argv[2], JSON.stringify({ date: new Date().toISOString(), script: "bench/serve_cpu.sh", machine, loadAverageAtStart: Number(process.argv[3]), runs }, null, 1) + "\n");
' "$tmp" "$out" "$load"
echo "wrote $out"
