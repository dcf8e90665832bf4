#!/usr/bin/env bash
# Creates ./.venv (once) and installs cof-edge into it with the given extras, e.g. `dev` or `export`.
# torch is installed first, pinned to the 2.13.0 CPU wheel, so that no extra can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel >/dev/null
if [ -n "$extras" ] && [ "$extras" != "lean" ]; then
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        "${pip[@]}" install "torch==2.13.0"
    fi
    "${pip[@]}" install -e ".[$extras]"
else
    "${pip[@]}" install -e .
fi
