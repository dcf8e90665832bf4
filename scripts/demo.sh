#!/usr/bin/env bash
# Sets up ./.venv with the lean runtime (numpy, pillow, tokenizers, onnxruntime; no torch) and runs `cof-edge demo`
# on a generated 4K scene with the bundle that ships inside the package. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh lean
exec .venv/bin/cof-edge demo "$@"
