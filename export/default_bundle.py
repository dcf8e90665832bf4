"""Rebuilds the bundle that ships inside the package (`cof_edge/default_bundle`), run by `cof-edge demo`.

    python -m cof_export.default_bundle [--model DIR]

DIR defaults to the trained default model (`training/default_model`) when it exists; otherwise a tiny random
model is built, and the bundle records `random_weights` so the demo says its answers are noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cof_edge.options import recipe_ask_options

from .pipeline import BUDGET_FIELDS, ExportConfig, export_bundle

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "cof_edge" / "default_bundle"
TRAINED = REPO / "training" / "default_model"


def trained_budgets(model: Path) -> dict[str, int | str]:
    """The budgets and system prompt the model was trained with (its RECIPE.json), which the runtime must use too."""
    return {k: v for k, v in recipe_ask_options(model).items() if k in BUDGET_FIELDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cof_export.default_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=TRAINED if (TRAINED / "config.json").is_file() else None)
    parser.add_argument("--out", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from cof_training.tiny import build_tiny_model

            model = build_tiny_model(Path(scratch) / "tiny-random", tokenizer="small", seed=0)
            print("no trained default model found: exporting a tiny RANDOM model", file=sys.stderr)
        # no step decoder: its second copy of the decoder weights would break the ~25 MB cap
        config = ExportConfig(precisions=("fp32", "int8"), budgets=trained_budgets(model), step_decoder=False)
        bundle = export_bundle(model, args.out, config,
                               progress=lambda stage: print(f"[default bundle] {stage}", file=sys.stderr))
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"{args.out}: {size / 1e6:.1f} MB, variants {sorted(bundle.variants)}, default {bundle.default_variant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
