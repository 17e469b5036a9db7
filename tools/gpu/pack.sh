#!/usr/bin/env bash
# Packs what tools/gpu/run.sh needs on the GPU machine (which has no Node.js) into .device/,
# within the 64 MiB a device call carries: node and npm, dist/ and build/ (after building both
# here), and node_modules without what the GPU run does not use: the tokenizer test fixtures
# (@lenml, used only by tests/tokenizer), koffi's prebuilt libraries for other platforms, the
# linters, the OpenAI client (used only by tests/server), and the PTX the declaration checks read
# here (38 MiB). Then, with the device tool:
#   run  carry: [".device"]  timeout_s: 600  command: source .device/setup.sh && OUT=$OUT tools/gpu/run.sh
# (one call: run.sh spends a budget of 540 s on its stages; docs/gpu.md)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
npm run --silent build
npm run --silent build:kernels
excludes=(
  --exclude=node_modules/@lenml
  --exclude=node_modules/openai
  --exclude=node_modules/eslint
  --exclude=node_modules/@eslint
  --exclude=node_modules/@typescript-eslint
  --exclude=node_modules/typescript-eslint
  --exclude=node_modules/.cache
  --exclude='build/kernels/*.ptx'
)
for d in node_modules/koffi/build/koffi/*/; do
  case "$d" in */linux_x64/) ;; *) excludes+=("--exclude=${d%/}") ;; esac
done
# pack.sh records .device/ in .git/info/exclude; a checkout may lack that folder.
mkdir -p "$(git rev-parse --git-dir)/info"
../shared/device/pack.sh "${excludes[@]}" dist build node_modules
