#!/usr/bin/env bash
# Sets up ./.venv and runs `cof-edge demo`; extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
exec .venv/bin/cof-edge demo "$@"
