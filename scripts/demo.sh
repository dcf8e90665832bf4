#!/usr/bin/env bash
# Sets up ./.venv and runs `cof-edge demo` on a generated 4K scene; extra arguments go to the demo.
# No trained default model ships yet, so this builds a tiny random Qwen2.5-VL once (and says so when it runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
model=.cache/tiny-random
if [ ! -f "$model/config.json" ]; then
    .venv/bin/python -m cof_training.tiny --out "$model" --tokenizer small
fi
exec .venv/bin/cof-edge demo --model "$model" "$@"
