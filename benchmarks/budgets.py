"""Budget sweep: accuracy against visual tokens for pixel budgets and crop snapping, on one bundle.

    python benchmarks/budgets.py [--quick] [--bundle DIR] [--questions N] [--out benchmarks/results/budgets.json]

Held-out vsearch questions at 3840x2160 (a seed training never used); for each setting: accuracy (answer letter
against the label), mean visual tokens, zooms and ms per question; plus crop-cache hits when the same questions
are asked twice with and without snapping crops to the 28-px grid. The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cof_edge import FocusEngine
from cof_edge.actions import answer_letter
from cof_edge.atomic import atomic_write_json
from cof_edge.data import render_sample

REPO = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 777_000
SETTINGS = {  # name: AskOptions overrides (the bundle's own budgets are the "trained" row)
    "trained": {},
    "global_448": {"global_max_pixels": 448 * 448},
    "crop_336": {"crop_max_pixels": 336 * 336},
    "snap_28": {"snap_crops": 28},
}


def evaluate(engine, samples, overrides) -> dict:
    correct, tokens, zooms, times = 0, [], [], []
    for sample in samples:
        t0 = time.perf_counter()
        result = engine.ask(sample.image, sample.text, **overrides)
        times.append((time.perf_counter() - t0) * 1000)
        correct += answer_letter(result.answer) == sample.label
        tokens.append(result.visual_tokens)
        zooms.append(result.zooms)
    return {"accuracy": round(100 * correct / len(samples), 1), "visual_tokens": round(statistics.mean(tokens), 1),
            "zooms": round(statistics.mean(zooms), 2), "ms": round(statistics.median(times), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bundle", type=Path, default=REPO / "cof_edge" / "default_bundle")
    parser.add_argument("--questions", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "budgets.json")
    args = parser.parse_args(argv)
    n = args.questions or (6 if args.quick else 60)
    samples = [render_sample(seed=HELD_OUT_SEED, index=i) for i in range(n)]
    engine = FocusEngine.load(args.bundle)
    rows = {}
    for name, overrides in SETTINGS.items():
        rows[name] = evaluate(engine, samples, overrides)
        print(f"{name:>12}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
    summary = {"questions": n, "image": list(samples[0].image.size), "bundle_budgets": {k: getattr(engine.options, k) for k in ("global_max_pixels", "crop_max_pixels",
                                                                              "max_zooms")},
               "settings": rows,
               "snap_accuracy_delta": round(rows["snap_28"]["accuracy"] - rows["trained"]["accuracy"], 1)}
    atomic_write_json(args.out, summary)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
