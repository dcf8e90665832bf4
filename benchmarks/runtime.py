"""Benchmark: one CoF question at 3840x2160, end to end, on ONNX Runtime (fp32, int8) vs transformers.

    python benchmarks/runtime.py [--quick] [--bundle DIR] [--model DIR] [--questions N] [--repeats N]

The same model runs on every backend: the bundle's ONNX graphs and the HF checkpoint it was exported from
(default: the shipped default bundle and training/default_model). Per backend: median ms per question with the
crop cache off (every view encoded), and the zooms and visual tokens it used. For the crop cache: the same
questions asked twice on one engine, miss vs hit. Visual tokens: CoF (global view + crops) against one
full-resolution pass over the 3840x2160 image. The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cof_edge import FocusEngine
from cof_edge.bundle import load_bundle
from cof_edge.crop_cache import CropCache
from cof_edge.data import render_sample
from cof_edge.options import full_resolution_pass

REPO = Path(__file__).resolve().parent.parent


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def time_questions(engine, samples, repeats: int) -> tuple[float, list]:
    """Median ms per question over repeats (after one warm-up question), and the last results."""
    engine.ask(samples[0].image, samples[0].text)
    times, results = [], []
    for _ in range(repeats):
        results = []
        for sample in samples:
            t0 = time.perf_counter()
            results.append(engine.ask(sample.image, sample.text))
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer questions and repeats (under a minute)")
    parser.add_argument("--bundle", type=Path, default=REPO / "cof_edge" / "default_bundle")
    parser.add_argument("--model", type=Path, default=REPO / "training" / "default_model")
    parser.add_argument("--questions", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    questions = args.questions or (2 if args.quick else 6)
    repeats = args.repeats or (1 if args.quick else 3)
    bundle = load_bundle(args.bundle)
    samples = [render_sample(seed=4242, index=i) for i in range(questions)]
    say(f"{questions} questions at {samples[0].image.width}x{samples[0].image.height}, {repeats} repeats")

    engines = {f"ort_{variant}": lambda v=variant: FocusEngine.load(args.bundle, variant=v, threads=args.threads)
               for variant in ("fp32", "int8", "int8-fused") if variant in bundle.variants}
    engines["transformers"] = lambda: FocusEngine.from_pretrained(args.model, threads=args.threads,
                                                                  options=FocusEngine.load(args.bundle).options)
    ms, zooms, tokens = {}, {}, {}
    for name, make in engines.items():
        engine = make()
        engine.crop_cache = CropCache(0)  # every view encoded: the cost of a new question
        ms[name], results = time_questions(engine, samples, repeats)
        zooms[name] = statistics.mean(r.zooms for r in results)
        tokens[name] = statistics.mean(r.visual_tokens for r in results)
        say(f"{name:>16}: {ms[name]:8.1f} ms/question, {zooms[name]:.2f} zooms, {tokens[name]:.0f} visual tokens")

    cached = FocusEngine.load(args.bundle, threads=args.threads)
    miss_ms, _ = time_questions(cached, samples, 1)
    cached.crop_cache.clear()
    for sample in samples:
        cached.ask(sample.image, sample.text)
    hit_times = []
    for sample in samples:
        t0 = time.perf_counter()
        result = cached.ask(sample.image, sample.text)
        hit_times.append((time.perf_counter() - t0) * 1000)
        assert result.cache_hits == len(result.steps)
    hit_ms = statistics.median(hit_times)
    say(f"crop cache ({bundle.default_variant}): miss {miss_ms:.1f} ms, hit {hit_ms:.1f} ms per question")

    width, height = samples[0].image.size
    _, full_res_tokens, _ = full_resolution_pass((width, height), cached.options)
    cof_tokens = tokens[f"ort_{bundle.default_variant}"] if f"ort_{bundle.default_variant}" in tokens \
        else tokens["ort_int8"]
    summary = {
        "questions": questions, "repeats": repeats, "image": [width, height],
        "bundle_default_variant": bundle.default_variant, "random_weights": bundle.exporter.get("random_weights"),
        "ms_per_question": {k: round(v, 2) for k, v in ms.items()},
        "zooms_per_question": zooms,
        "ort_int8_vs_transformers": round(ms["transformers"] / ms["ort_int8"], 3),
        "ort_fp32_vs_transformers": round(ms["transformers"] / ms["ort_fp32"], 3),
        "cache_miss_ms": round(miss_ms, 2), "cache_hit_ms": round(hit_ms, 2),
        "cache_hit_over_miss": round(hit_ms / miss_ms, 3),
        "cof_visual_tokens": cof_tokens, "full_res_visual_tokens": full_res_tokens,
        "visual_token_ratio_3840": round(cof_tokens / full_res_tokens, 4),
    }
    if "ort_int8-fused" in ms:
        summary["ort_int8_fused_vs_transformers"] = round(ms["transformers"] / ms["ort_int8-fused"], 3)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
