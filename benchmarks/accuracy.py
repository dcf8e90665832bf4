"""Benchmark: accuracy per resolution of a bundle, CoF against the no-zoom and full-resolution baselines.

    python benchmarks/accuracy.py [--quick] [--bundle DIR] [--variant V] [--vstar DIR | --n N --seed S]
                                  [--resolutions ...] [--max-zooms N] [--out DIR] [--tag NAME]

Lean: cof_edge only (ONNX Runtime, no torch). Questions: a V*-layout directory (`--vstar`, read with
`cof_edge.data.read_vstar`; the real V* bench works too), or held-out vsearch scenes generated from `--seed` (777,
the stream training/evaluate.py scores; training renders from 1000), at 3840x2160. Every image is resized (LANCZOS)
to each long side of `--resolutions`. Methods:
* `cof`: the zoom loop with the bundle's budgets (`max_zooms` 2 unless told);
* `no_zoom`: the global view only (`max_zooms` 0), with answer forcing (`cof_edge.direct_answer`, as
  training/evaluate.py does): no `<tool_call>`, and after `</think>` the answer path as trained, then the option
  letter the model ranks highest, so the letter is its best guess from the global view;
* `full_res`: one view of the whole image at its native resolution (`global_max_pixels` = its pixel count), no
  zoom, the same answer forcing. Skipped (null, with the reason) for views over `--max-full-res-tokens` (the
  vision graph's full attention runs in bounded memory, but its time grows with the square of the view).
Scored with `cof_edge.actions.answer_letter` against the label; split by category (attribute / spatial).
Writes `accuracy_bundle[-TAG].json` and `.png` under `--out` (atomically, also every few questions as it goes).
The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_BUNDLE, EVAL_SEED, RESULTS, machine, progress, say  # noqa: E402

from cof_edge import FocusEngine  # noqa: E402
from cof_edge.actions import answer_letter  # noqa: E402
from cof_edge.atomic import atomic_write_json  # noqa: E402
from cof_edge.direct_answer import DirectAnswerEngine  # noqa: E402
from cof_edge.data import CATEGORIES, RESOLUTIONS, read_vstar, render_sample, resize_to_long_side  # noqa: E402
from cof_edge.options import full_resolution_pass  # noqa: E402

METHODS = ("cof", "no_zoom", "full_res")
QUICK_RESOLUTIONS = (224, 1024, 3840)


def questions(args):
    """One loader per question: () -> (image, text, label, category); images load when asked for."""
    if args.vstar:
        items = read_vstar(args.vstar)
        items = items[: args.n] if args.n else items
        return [lambda item=item: (item.load_image(), item.text, item.label, item.category) for item in items]

    def generated(i):
        sample = render_sample(args.seed, i)
        return sample.image, sample.text, sample.label, sample.category

    return [lambda i=i: generated(i) for i in range(args.n)]


class Tally:
    def __init__(self, methods, resolutions):
        self.methods, self.resolutions = methods, resolutions
        self.correct = {m: collections.Counter() for m in methods}
        self.n = {m: collections.Counter() for m in methods}
        self.zooms = {m: collections.Counter() for m in methods}
        self.tokens = {m: collections.Counter() for m in methods}
        self.cat = {m: collections.defaultdict(lambda: [0, 0]) for m in methods}
        self.skipped = {m: {} for m in methods}
        self.stop = {m: collections.Counter() for m in methods}

    def add(self, method, res, category, ok, result):
        self.correct[method][res] += ok
        self.n[method][res] += 1
        self.zooms[method][res] += result.zooms
        self.tokens[method][res] += result.visual_tokens
        entry = self.cat[method][(category, res)]
        entry[0] += ok
        entry[1] += 1
        self.stop[method][result.stop_reason] += 1

    def table(self) -> dict:
        def per_res(counter, denominator, scale):
            return [round(scale * counter[r] / denominator[r], 2 if scale == 1 else 1) if denominator[r] else None
                    for r in self.resolutions]

        return {
            "methods": {m: per_res(self.correct[m], self.n[m], 100) for m in self.methods},
            "by_category": {m: {c: [round(100 * self.cat[m][(c, r)][0] / self.cat[m][(c, r)][1], 1)
                                    if self.cat[m][(c, r)][1] else None for r in self.resolutions]
                                for c in CATEGORIES} for m in self.methods},
            "n_by_category": {c: max((self.cat[m][(c, r)][1] for m in self.methods for r in self.resolutions),
                                     default=0) for c in CATEGORIES},
            "avg_zooms": {m: per_res(self.zooms[m], self.n[m], 1) for m in self.methods},
            "visual_tokens": {m: per_res(self.tokens[m], self.n[m], 1) for m in self.methods},
            "stop_reasons": {m: dict(self.stop[m]) for m in self.methods},
            "skipped": {m: v for m, v in self.skipped.items() if v},
        }


def plot(result: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plot (pip install 'cof-edge[bench]')")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = list(range(len(result["resolutions"])))
    for method, values in result["methods"].items():
        if values and any(v is not None for v in values):
            pts = [(x, v) for x, v in zip(xs, values) if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xticks(xs, [str(r) for r in result["resolutions"]])
    ax.set_xlabel("image long side (px)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    title = result.get("title") or f"{result['n_per_resolution']} questions per resolution"
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def title_of(result: dict) -> str:
    weights = " (random weights)" if result.get("random_weights") else ""
    return (f"{Path(result['bundle']).name} {result['variant']}{weights}: {result['source']}, "
            f"{result['n_per_resolution']} questions per resolution")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 questions, resolutions 224/1024/3840 (same JSON keys)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--variant", default=None, help="bundle variant (default: the bundle's default)")
    parser.add_argument("--vstar", type=Path, default=None, help="a V*-layout directory (default: generated vsearch)")
    parser.add_argument("--n", type=int, default=None, help="questions (default 50; quick 2; --vstar: all)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="vsearch stream of the held-out questions")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-zooms", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=96, help="per turn (as training/evaluate.py)")
    parser.add_argument("--recipe", type=Path, default=None,
                        help="a RECIPE.json whose ask_options (budgets) replace the bundle's")
    parser.add_argument("--max-full-res-tokens", type=int, default=None,
                        help="skip full_res views of more visual tokens (default: none skipped)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="writes accuracy_bundle-TAG.json")
    args = parser.parse_args(argv)
    if args.n is None and not args.vstar:
        args.n = 2 if args.quick else 50
    resolutions = tuple(args.resolutions or (QUICK_RESOLUTIONS if args.quick else RESOLUTIONS))
    started = time.perf_counter()

    cof = FocusEngine.load(args.bundle, variant=args.variant, threads=args.threads)
    budgets = {}
    if args.recipe:
        budgets = {k: v for k, v in json.loads(args.recipe.read_text())["ask_options"].items()}
        cof.options = cof.options.with_overrides(**budgets)
    direct = DirectAnswerEngine(cof.backend, cof.options, crop_cache=cof.crop_cache)
    bundle = cof.backend.bundle
    items = questions(args)
    source = f"V* layout {args.vstar}" if args.vstar else f"vsearch held-out (seed {args.seed})"
    say(f"accuracy: {len(items)} questions × {len(resolutions)} resolutions × {args.methods} on {args.bundle} "
        f"({cof.backend.variant})")
    tally = Tally(args.methods, resolutions)
    name = f"accuracy_bundle{'-' + args.tag if args.tag else ''}"
    base = {"mode": "quick" if args.quick else "full", "bundle": str(args.bundle), "variant": cof.backend.variant,
            "random_weights": bool(bundle.exporter.get("random_weights")), "source": source,
            "seed": None if args.vstar else args.seed, "resolutions": list(resolutions),
            "max_zooms": args.max_zooms, "max_new_tokens": args.max_new_tokens,
            "options": {k: getattr(cof.options, k) for k in ("global_min_pixels", "global_max_pixels",
                                                              "crop_min_pixels", "crop_max_pixels")},
            "recipe": str(args.recipe) if args.recipe else None, "machine": machine()}

    def snapshot(done: int) -> dict:
        result = {**base, **tally.table(), "n_per_resolution": done}
        result["title"] = title_of(result)
        return result

    top_size = None
    for done, load in enumerate(progress(items, desc="accuracy"), start=1):
        original, text, label, category = load()
        for res in resolutions:
            image = resize_to_long_side(original, res)
            if res == max(resolutions):
                top_size = image.size
            for method in args.methods:
                if method == "cof":
                    result = cof.ask(image, text, max_zooms=args.max_zooms, max_new_tokens=args.max_new_tokens)
                else:
                    extra = {"max_zooms": 0}
                    if method == "full_res":
                        extra, _, skip = full_resolution_pass(image.size, cof.options, args.max_full_res_tokens)
                        if skip:
                            tally.skipped[method][str(res)] = skip
                            continue
                    result = direct.ask(image, text, max_new_tokens=args.max_new_tokens, **extra)
                tally.add(method, res, category, answer_letter(result.answer) == label, result)
        if done % 5 == 0:
            atomic_write_json(args.out / f"{name}.json", snapshot(done))
    result = snapshot(len(items))
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(args.out / f"{name}.json", result)
    plot(result, args.out / f"{name}.png")

    def at(method, res):
        values = result["methods"].get(method)
        return values[resolutions.index(res)] if values and res in resolutions else None

    top = max(resolutions)
    cof_top, full_top = at("cof", top), at("full_res", top)
    tok_cof = (result["visual_tokens"].get("cof") or [None])[-1]
    full_tokens = (result["visual_tokens"].get("full_res") or [None])[-1] or (
        full_resolution_pass(top_size, cof.options)[1] if top_size else None)
    summary = {
        "mode": base["mode"], "n_per_resolution": len(items), "resolutions": list(resolutions),
        "methods": result["methods"], "top_resolution": top,
        "cof_minus_no_zoom_top": round(cof_top - at("no_zoom", top), 2)
        if cof_top is not None and at("no_zoom", top) is not None else None,
        "cof_minus_full_res_top": round(cof_top - full_top, 2) if cof_top is not None and full_top is not None else None,
        "visual_token_ratio_top": round(tok_cof / full_tokens, 4) if tok_cof and full_tokens else None,
        "skipped": {m: sorted(v, key=int) for m, v in result["skipped"].items()},
        "random_weights": base["random_weights"], "seconds": result["seconds"],
    }
    say(f"wrote {args.out / (name + '.json')}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
