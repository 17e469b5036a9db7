#!/usr/bin/env bash
# CPU figures of the demo model for README and docs: prefill/decode tokens/s at batch 1 and 8,
# fused and unfused (--no-fuse), as JSON under bench/results/. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build
out=bench/results/cpu-demo.json
tmp=$(mktemp -d)
i=0
for batch in 1 8; do
  for fuse in "" "--no-fuse"; do
    node bin/tessera.js bench --device cpu --prompt-tokens 128 --decode-tokens 128 --batch "$batch" --runs 7 --json $fuse > "$tmp/$i.json"
    i=$((i + 1))
  done
done
node -e '
const fs = require("fs"), os = require("os");
const dir = process.argv[1];
const runs = fs.readdirSync(dir).sort().map((f) => JSON.parse(fs.readFileSync(dir + "/" + f, "utf8")));
const machine = { cpu: os.cpus()[0].model, cores: os.cpus().length, node: process.version, platform: `${os.type()} ${os.release()}` };
fs.writeFileSync(process.argv[2], JSON.stringify({ date: new Date().toISOString(), machine, runs }, null, 1) + "\n");
' "$tmp" "$out"
rm -rf "$tmp"
echo "wrote $out"
