"""Accuracy per resolution on held-out vsearch questions, run through the runtime (`FocusEngine`, greedy).

    python -m cof_training.evaluate --model training/default_model --n 50 --methods no_zoom sft \
        --out benchmarks/results/accuracy.json

Methods:
* `sft` / `rl`: CoF, the model zooms as it likes (`max_zooms` 2 by default); `rl` runs the checkpoint of
  `--rl-model` (written by `cof_training.rl`), the others `--model`.
* `no_zoom`: the same model answering from the global view only: `max_zooms=0` plus *answer forcing* in greedy
  decoding (`cof_edge.direct_answer.DirectAnswerEngine`): after `</think>` the tokens of ` <answer` (as trained) are forced, then the
  option letter with the highest logit, and `<tool_call>` is banned, so the letter is the model's own best guess
  from the global view (a model trained to zoom would otherwise just end on `max_zooms` with no answer). Its
  `<think>` text is its own.
* `full_res`: the single pass without zoom at the image's native resolution (one view of all its pixels,
  `cof_edge.options.full_resolution_pass`), with the same answer forcing as `no_zoom`. Views of more than
  `--max-full-res-tokens` visual tokens are skipped (null, with the reason under `skipped`): the vision tower's
  full-attention blocks grow with the square of the view.
`zoom_hit_rate` (per method and resolution, %): of the attribute questions the model zoomed on, how many had a crop
holding the whole asked tag: whether the model looks in the right place, apart from whether it reads it right.
The budgets are the model's RECIPE.json `ask_options` (what it was trained with; `FocusEngine.from_pretrained`
reads them). Images: held-out scenes (`--seed`, default 777, different from training's 1000) rendered at 3840x2160
and resized (LANCZOS) to each long side.
Partial results (`--out` of one method) merge into one file with `--merge a.json b.json --out c.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cof_edge import FocusEngine
from cof_edge.actions import answer_letter
from cof_edge.data import RESOLUTIONS, render_sample, resize_to_long_side, scale_box
from cof_edge.data.vsearch import ATTRIBUTE
from cof_edge.direct_answer import DirectAnswerEngine
from cof_edge.options import full_resolution_pass, recipe_ask_options

from .trajectories import region_contains

METHODS = ("no_zoom", "sft", "rl", "full_res")
PER_RESOLUTION = ("methods", "avg_zooms", "zoom_hit_rate")  # result keys holding {method: [value per resolution]}


def evaluate(model_dir, methods, n: int, seed: int = 777, resolutions=RESOLUTIONS, max_zooms: int = 2,
             max_new_tokens: int = 96, threads: int = 1, log=print, checkpoint=None, rl_model=None,
             max_full_res_tokens: int | None = None) -> dict:
    """`checkpoint(partial_result)` is called every 5 questions (the run can be cut and still report)."""
    model_dir = Path(model_dir)
    if "rl" in methods and rl_model is None:
        raise ValueError("the rl method needs the RL checkpoint: --rl-model DIR (written by cof_training.rl)")
    budgets = recipe_ask_options(model_dir)
    engines = {}
    for m in methods:
        cls = FocusEngine if m in ("sft", "rl") else DirectAnswerEngine
        engines[m] = cls.from_pretrained(Path(rl_model) if m == "rl" else model_dir, threads=threads)
    stats = {m: {r: {"correct": 0, "n": 0, "zooms": 0, "by_category": {}, "hits": [0, 0]} for r in resolutions}
             for m in methods}
    skipped = {}
    t0 = time.time()
    for i in range(n):
        sample = render_sample(seed, i)
        for res in resolutions:
            image = resize_to_long_side(sample.image, res)
            for m in methods:
                overrides = {"max_zooms": 0 if m == "no_zoom" else max_zooms}
                if m == "full_res":
                    overrides, _, skip = full_resolution_pass(image.size, engines[m].options, max_full_res_tokens)
                    if skip:
                        skipped.setdefault(m, {})[str(res)] = skip
                        continue
                result = engines[m].ask(image, sample.text, max_new_tokens=max_new_tokens, **overrides)
                ok = answer_letter(result.answer) == sample.label
                s = stats[m][res]
                s["n"] += 1
                s["correct"] += ok
                s["zooms"] += result.zooms
                cat = s["by_category"].setdefault(sample.category, [0, 0])
                cat[0] += ok
                cat[1] += 1
                if sample.category == ATTRIBUTE and result.zooms:
                    target = scale_box(sample.target_boxes[0], sample.image.size, image.size)
                    s["hits"][0] += crops_hold(result, target)
                    s["hits"][1] += 1
        if (i + 1) % 5 == 0:
            partial = summarize(stats, methods, resolutions, i + 1, seed, model_dir, budgets, skipped, rl_model)
            if log:
                log(f"[{i + 1}/{n}] {time.time() - t0:.0f}s {({m: partial['methods'][m] for m in methods})}")
            if checkpoint:
                checkpoint(partial)
    return summarize(stats, methods, resolutions, n, seed, model_dir, budgets, skipped, rl_model)


def crops_hold(result, target) -> bool:
    """Whether one of the question's crops holds the whole `target` box (pixels of the image asked about)."""
    return any(s.crop_region is not None and region_contains(s.crop_region, target) for s in result.steps)


def summarize(stats, methods, resolutions, n, seed, model_dir, budgets, skipped=None, rl_model=None) -> dict:
    """Percentages per method and resolution; None where a resolution was skipped (see `skipped`)."""
    def ratio(part, whole, scale, digits):
        return round(scale * part / whole, digits) if whole else None

    out = {"resolutions": list(resolutions), "methods": {m: None for m in METHODS}, "n_per_resolution": n,
           "eval_seed": seed, "model": str(model_dir), "ask_options": budgets, "avg_zooms": {}, "by_category": {},
           "zoom_hit_rate": {}, "skipped": skipped or {}}
    if rl_model is not None:
        out["rl_model"] = str(rl_model)
    for m in methods:
        per_res = [stats[m][r] for r in resolutions]
        out["methods"][m] = [ratio(s["correct"], s["n"], 100, 1) for s in per_res]
        out["avg_zooms"][m] = [ratio(s["zooms"], s["n"], 1, 2) for s in per_res]
        out["zoom_hit_rate"][m] = [ratio(*s["hits"], 100, 1) for s in per_res]
        out["by_category"][m] = {cat: [ratio(*s["by_category"].get(cat, [0, 0]), 100, 1) for s in per_res]
                                 for cat in ("direct_attributes", "relative_position")}
    return out


def merge(paths) -> dict:
    """Partial result files in one: other methods, or other resolutions of a method (runs split across processes).
    Later files win where they overlap; the first one's other fields (notes, n, seed) are kept."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(parts[0])
    resolutions = sorted({r for part in parts for r in part["resolutions"]})
    tables = {key: {} for key in PER_RESOLUTION}
    categories, skipped = {}, {}
    for part in parts:
        for key in PER_RESOLUTION:
            for m, values in (part.get(key) or {}).items():
                if values is not None:
                    tables[key].setdefault(m, {}).update(zip(part["resolutions"], values))
        for m, cats in (part.get("by_category") or {}).items():
            for cat, values in (cats or {}).items():
                categories.setdefault(m, {}).setdefault(cat, {}).update(zip(part["resolutions"], values))
        for m, reasons in (part.get("skipped") or {}).items():
            skipped.setdefault(m, {}).update(reasons)
        if part.get("rl_model"):
            merged["rl_model"] = part["rl_model"]
    merged["resolutions"] = resolutions
    for key in PER_RESOLUTION:
        merged[key] = {m: [by_res.get(r) for r in resolutions] for m, by_res in tables[key].items()}
    merged["methods"] = {m: merged["methods"].get(m) for m in METHODS}
    merged["by_category"] = {m: {cat: [by_res.get(r) for r in resolutions] for cat, by_res in cats.items()}
                             for m, cats in categories.items()}
    merged["skipped"] = skipped
    return merged


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    xs = list(range(len(result["resolutions"])))
    for m, values in result["methods"].items():
        if values is not None:
            ax.plot(xs, [float("nan") if v is None else v for v in values], marker="o", label=m)
    ax.set_xticks(xs, [str(r) for r in result["resolutions"]])
    ax.set_xlabel("image long side (px)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"vsearch held-out, {result['n_per_resolution']} questions per resolution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cof_training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("training/default_model"))
    p.add_argument("--methods", nargs="+", default=["no_zoom", "sft"], choices=METHODS)
    p.add_argument("--rl-model", type=Path, default=None, help="the RL checkpoint the rl method runs")
    p.add_argument("--max-full-res-tokens", type=int, default=None,
                   help="skip full_res views of more visual tokens (3840x2160 is 10,549; default: none skipped)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    p.add_argument("--max-zooms", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot-only", type=Path, default=None, help="re-plot an existing result file")
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="merge partial result files instead")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = p.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return 0
    if args.merge:
        result = merge(args.merge)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)

        def checkpoint(partial):
            args.out.write_text(json.dumps(partial, indent=2) + "\n", encoding="utf-8")

        result = evaluate(args.model, args.methods, args.n, args.seed, tuple(args.resolutions), args.max_zooms,
                          threads=args.threads, checkpoint=checkpoint, rl_model=args.rl_model,
                          max_full_res_tokens=args.max_full_res_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result["methods"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
