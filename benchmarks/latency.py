"""Benchmark: latency, tokens and memory per question at each resolution, CoF on ONNX Runtime against what users
would otherwise run.

    python benchmarks/latency.py [--quick] [--bundle DIR --model HF_DIR] [--no-big | --reuse-big] [--questions N]
                                 [--repeats N]
                                 [--resolutions 224 ... 3840] [--threads N] [--out DIR] [--tag NAME]

Questions: vsearch scenes (seed 4242) rendered at 3840x2160 and resized (LANCZOS) to each long side of
`cof_edge.data.RESOLUTIONS`. Methods, per model:
* `ort_<variant>`: CoF on ONNX Runtime, every variant of the bundle (fp32, int8, int4, and the fused decoders);
* `transformers`: CoF on the reference path (`FocusEngine.from_pretrained(hf_dir)`), the bundle's budgets;
* `full_res`: one pass without zoom, the whole image at its native resolution as one view (`global_max_pixels` =
  its pixel count, `max_zooms` 0), on the bundle's default variant. The vision graph's full attention runs in
  bounded memory (query blocks), but its time grows with the square of the view: views over
  `--max-full-res-tokens` visual tokens are skipped (null, with the reason; 3840x2160 is 10,549 tokens);
* `global_only`: the global view only (`max_zooms` 0), the bundle's default variant.
Models: the default trained model (the shipped bundle + training/default_model) and a ~300M random config (speed
only; built and exported once into .cache/bench/qwen300m). A random model never stops early: its turns are capped
at `--random-max-new-tokens` (32) and the output says so. `--reuse-big` keeps the ~300M rows of the existing
results file instead (after retraining the default model: those random weights never change); the report says so.

Each method runs in its own subprocess (peak resident memory = VmHWM, read after each resolution; resolutions run
in increasing order, so it is the peak up to that resolution). Per resolution: one warm-up question, then
`--repeats` rounds over `--questions` questions with the crop cache cleared before each (every view encoded);
medians and p10/p90 of per-question ms, split into preprocessing, vision (net of preprocessing), prefill, decode;
decode ms per token (preprocessing = the backend's `pixel_inputs`: cof_edge.preprocess on ORT, the HF image
processor on transformers, whose PIL crop-and-resize stays in vision); visual, prefilled and new tokens; zooms; then each question once more on a warm crop cache
(hits and ms). Last, on the ~300M model's int8 graph, `decode_probe.py` (`--probe-rounds`): bandwidth and decode
measured side by side, its median fraction being the summary's `decode_bound_fraction` (the ratio against the
bandwidth measured at the start stays as `decode_bound_fraction_unpaired`).
Writes `latency[-TAG].json` + `latency[-TAG]_ms.png` / `latency[-TAG]_tokens.png` under `--out`.
The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DEFAULT_BUNDLE, DEFAULT_MODEL, LATENCY_SEED, RESULTS,  # noqa: E402
                    last_json_line, load_json, machine, progress, rss_mb, say, spread)

import limits as limits_mod  # noqa: E402

from cof_edge.atomic import atomic_write_json  # noqa: E402
from cof_edge.data import RESOLUTIONS  # noqa: E402
from cof_edge.options import full_resolution_pass  # noqa: E402

VARIANTS = ("fp32", "int8", "int4", "fp16", "fp32-fused", "int8-fused", "int4-fused")
QUICK_RESOLUTIONS = (224, 1024, 3840)
BIG_SPEC = dict(text_hidden=1024, text_layers=12, text_heads=16, text_kv_heads=4, text_intermediate=2816,
                mrope_section=(8, 12, 12), vision_hidden=256, vision_depth=4, vision_heads=4,
                vision_intermediate=512, tie_word_embeddings=True)
BUDGET_KEYS = ("global_min_pixels", "global_max_pixels", "crop_min_pixels", "crop_max_pixels")


# -- the worker: one method of one model, in its own process ------------------------------------------------------

def _make_engine(spec: dict):
    from cof_edge import FocusEngine
    from cof_edge.crop_cache import CropCache

    method, threads = spec["method"], spec.get("threads")
    bundle_engine = FocusEngine.load(spec["bundle"], variant=spec["variant"], threads=threads)
    if method == "transformers":
        engine = FocusEngine.from_pretrained(spec["hf"], threads=threads, options=bundle_engine.options)
        del bundle_engine
    else:
        engine = bundle_engine
    engine.crop_cache = CropCache()
    return engine


def _timed_preprocess(backend, sink: list):
    """Wraps the backend's preprocessing (crop + resize + normalize + patchify) to record its ms per call."""
    inner = backend.pixel_inputs

    def pixel_inputs(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        sink.append((time.perf_counter() - t0) * 1000)
        return out

    backend.pixel_inputs = pixel_inputs


def _question_record(result, wall_ms: float, pre_ms: float) -> dict:
    steps = result.steps
    vision = sum(s.ms.get("vision", 0.0) for s in steps)
    decode = sum(s.ms.get("decode", 0.0) for s in steps)
    decode_calls = sum(max(0, s.new_tokens - 1) for s in steps)  # the first token of a turn comes from prefill
    return {"ms": wall_ms, "preprocess": pre_ms, "vision": max(0.0, vision - pre_ms),
            "prefill": sum(s.ms.get("prefill", 0.0) for s in steps), "decode": decode,
            "decode_per_token": decode / decode_calls if decode_calls else None,
            "visual_tokens": result.visual_tokens, "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens, "total_tokens": result.prompt_tokens + result.new_tokens,
            "zooms": result.zooms, "steps": len(steps), "cache_hits": result.cache_hits,
            "stop_reason": result.stop_reason,
            "views": [[s.visual_tokens, s.ms.get("vision", 0.0), s.cache_hit] for s in steps]}


def run_worker(spec: dict) -> dict:
    from cof_edge.data import render_sample, resize_to_long_side

    started = time.perf_counter()
    samples = [render_sample(LATENCY_SEED, i) for i in range(spec["questions"])]
    base = rss_mb()
    t0 = time.perf_counter()
    engine = _make_engine(spec)
    load_s = time.perf_counter() - t0
    loaded = rss_mb()
    pre_sink: list[float] = []
    _timed_preprocess(engine.backend, pre_sink)
    method = spec["method"]
    overrides = {"max_new_tokens": spec["max_new_tokens"]}
    if method in ("full_res", "global_only"):
        overrides["max_zooms"] = 0
    out = {"method": method, "variant": spec["variant"], "load_s": round(load_s, 2),
           "rss_before_load_mb": base["rss_mb"], "rss_after_load_mb": loaded["rss_mb"], "resolutions": {}}

    def ask(image, text, extra):
        pre_sink.clear()
        t = time.perf_counter()
        result = engine.ask(image, text, **{**overrides, **extra})
        return result, (time.perf_counter() - t) * 1000, sum(pre_sink)

    for res in progress(spec["resolutions"], desc=f"{spec['model']}:{method}"):
        images = [resize_to_long_side(s.image, res) for s in samples]
        extra = {}
        if method == "full_res":
            extra, tokens, skip = full_resolution_pass(images[0].size, engine.options, spec["max_full_res_tokens"])
            if skip:
                out["resolutions"][str(res)] = {"image": list(images[0].size), "visual_tokens_single_pass": tokens,
                                                "skipped": skip}
                continue
        engine.crop_cache.clear()
        ask(images[0], samples[0].text, extra)  # warm-up: ORT's first run on a new shape is slow
        records = []
        for _ in range(spec["repeats"]):
            for image, sample in zip(images, samples):
                engine.crop_cache.clear()
                result, wall, pre = ask(image, sample.text, extra)
                records.append(_question_record(result, wall, pre))
        warm = []
        for image, sample in zip(images, samples):  # the crop cache still holds the last round's views
            engine.crop_cache.clear()
            ask(image, sample.text, extra)
            result, wall, pre = ask(image, sample.text, extra)
            warm.append((wall, result.cache_hits, len(result.steps)))
        out["resolutions"][str(res)] = summarize_records(records, images[0].size, warm, rss_mb()["peak_rss_mb"])
    out["peak_rss_mb"] = rss_mb()["peak_rss_mb"]
    out["worker_s"] = round(time.perf_counter() - started, 1)
    return out


def summarize_records(records: list[dict], size, warm, peak_rss) -> dict:
    def mean(key):
        return round(sum(r[key] for r in records) / len(records), 2)

    per_view = collections.defaultdict(list)
    for r in records:
        for tokens, vision_ms, hit in r["views"]:
            if not hit:
                per_view[tokens].append(vision_ms)
    return {
        "image": list(size), "questions_timed": len(records),
        "ms": spread([r["ms"] for r in records], 2),
        "stages_ms": {k: spread([r[k] for r in records], 2) for k in ("preprocess", "vision", "prefill", "decode")},
        "decode_ms_per_token": spread([r["decode_per_token"] for r in records if r["decode_per_token"]], 3),
        "visual_tokens": mean("visual_tokens"), "prompt_tokens": mean("prompt_tokens"),
        "new_tokens": mean("new_tokens"), "total_tokens": mean("total_tokens"), "zooms": mean("zooms"),
        "steps": mean("steps"), "cache_hits_cold": mean("cache_hits"),
        "stop_reasons": dict(collections.Counter(r["stop_reason"] for r in records)),
        "vision_ms_per_view": {str(t): round(sorted(v)[len(v) // 2], 3) for t, v in sorted(per_view.items())},
        "warm_cache": {"ms": spread([w[0] for w in warm], 2),
                       "hits_per_question": round(sum(w[1] for w in warm) / len(warm), 2),
                       "steps_per_question": round(sum(w[2] for w in warm) / len(warm), 2)},
        "peak_rss_mb": peak_rss,
    }


# -- the driver ---------------------------------------------------------------------------------------------------

def ensure_big_model(root: Path, budgets: dict) -> tuple[Path, Path]:
    """The ~300M random Qwen2.5-VL (benchmarks/export.py's full config), built and exported once into `root`."""
    model_dir, bundle_dir = root / "model", root / "bundle"
    for partial in root.glob(".bundle.partial-*"):  # another process is exporting it: wait for that one
        pid = partial.name.rsplit("-", 1)[-1]
        while pid.isdigit() and Path(f"/proc/{pid}").exists() and not (bundle_dir / "cof.json").is_file():
            say(f"waiting for the export in process {pid} to finish")
            time.sleep(15)
    if (bundle_dir / "cof.json").is_file() and (model_dir / "config.json").is_file():
        return model_dir, bundle_dir
    from cof_export.pipeline import ExportConfig, export_bundle
    from cof_training.tiny import TinySpec, build_tiny_model

    say(f"building and exporting the ~300M random model into {root} (once; later runs reuse it)")
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, tokenizer="qwen", spec=TinySpec(**BIG_SPEC), seed=0)
    t0 = time.perf_counter()
    export_bundle(model_dir, bundle_dir, ExportConfig(precisions=("fp32", "int8", "int4"), force=True, parity_steps=4,
                                                      budgets={k: budgets[k] for k in BUDGET_KEYS if k in budgets}),
                  progress=lambda stage: say(f"[{time.perf_counter() - t0:7.1f}s] export: {stage}"))
    return model_dir, bundle_dir


def snapshot_model(hf_dir: Path, dest: Path) -> Path:
    """A copy of an HF directory (training may rewrite training/default_model while we read it)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(hf_dir, dest)
    return dest


def weights_match(bundle_dir: Path, hf_dir: Path) -> bool | None:
    """Whether the bundle was exported from this checkpoint: its fp32 embedding table equals the checkpoint's.
    None when it cannot be told (no safetensors, an int8 embedding, several shards)."""
    try:
        import numpy as np
        from safetensors.numpy import load_file

        from cof_edge.bundle import load_bundle

        bundle = load_bundle(bundle_dir)
        entry = bundle.variant(bundle.default_variant)["embed"]
        data_files = list(getattr(entry, "data_files", {}) or {})
        if entry.precision != "fp32" or len(data_files) != 1:
            return None
        table = np.fromfile(bundle_dir / data_files[0], dtype=np.float32)
        files = sorted(hf_dir.glob("*.safetensors"))
        if len(files) != 1:
            return None
        tensors = load_file(str(files[0]))
        name = next((k for k in tensors if k.endswith("embed_tokens.weight")), None)
        if name is None:
            return None
        ref = tensors[name].astype(np.float32).ravel()
        return bool(table.size == ref.size and np.array_equal(table, ref))
    except Exception:  # noqa: BLE001 - best effort, recorded as unknown
        return None


def model_methods(bundle, quick: bool, only: list[str] | None) -> list[tuple[str, str]]:
    variants = [v for v in VARIANTS if v in bundle.variants]
    methods = [(f"ort_{v}", v) for v in variants] + [("transformers", bundle.default_variant),
                                                    ("full_res", bundle.default_variant),
                                                    ("global_only", bundle.default_variant)]
    if only:
        methods = [m for m in methods if m[0] in only]
    return methods


def run_subprocess(spec: dict, in_process: bool) -> dict:
    if in_process:
        return run_worker(spec)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                          stderr=None, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        return {"method": spec["method"], "variant": spec["variant"],
                "error": f"worker exited with {proc.returncode}: {proc.stdout[-500:]}"}
    return last_json_line(proc.stdout)


def limits_inputs(bundle, bundle_dir: Path, hf_dir: Path | None, methods: dict) -> dict:
    """What limits.py needs to bound this model: decoder bytes per variant, text and vision geometry, and the
    measured decode ms/token and vision ms per view size (ORT variants, at the highest resolution measured)."""
    vcfg = dict(bundle.vision)
    hf_config = load_json(hf_dir / "config.json") if hf_dir else None
    if hf_config and "vision_config" in hf_config:
        v = hf_config["vision_config"]
        vcfg.update(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"], depth=v["depth"],
                    out_hidden_size=v.get("out_hidden_size", v["hidden_size"]))
    decode, vision, context = {}, {}, []
    for name, m in methods.items():
        if not name.startswith("ort_") or "resolutions" not in m:
            continue
        variant = name[4:]
        per_token = [r["decode_ms_per_token"]["median"] for r in m["resolutions"].values()
                     if r.get("decode_ms_per_token")]
        if per_token:
            decode[variant] = sorted(per_token)[len(per_token) // 2]
        context += [r["total_tokens"] for r in m["resolutions"].values() if "total_tokens" in r]
        views = {}
        for r in m["resolutions"].values():
            views.update(r.get("vision_ms_per_view", {}))
        vision[variant] = views
    steps = {v: bundle.variant(v).get("decoder_step", bundle.variant(v)["decoder"]) for v in bundle.variants}
    return {"decoder_bytes": {v: graph.bytes for v, graph in steps.items()},   # what one decode step reads
            "text": dict(bundle.text), "vision_config": vcfg if "intermediate_size" in vcfg else None,
            "decode_ms_per_token": decode, "vision_ms_per_view": vision,
            "decode_context_tokens": round(sum(context) / len(context)) if context else 0}


def bench_model(name: str, bundle_dir: Path, hf_dir: Path | None, args, random_weights: bool) -> dict:
    from cof_edge.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    max_new = args.random_max_new_tokens if random_weights else bundle.budgets.get("max_new_tokens", 256)
    if args.max_new_tokens:
        max_new = args.max_new_tokens
    methods = model_methods(bundle, args.quick, args.methods)
    if hf_dir is None:
        methods = [m for m in methods if m[0] != "transformers"]
    say(f"{name}: {len(methods)} methods × {len(args.resolutions)} resolutions × {args.questions} questions × "
        f"{args.repeats} repeats (max_new_tokens {max_new}{', random weights' if random_weights else ''})")
    results = {}
    for method, variant in methods:
        spec = {"model": name, "method": "transformers" if method == "transformers" else
                ("cof" if method.startswith("ort_") else method), "variant": variant, "bundle": str(bundle_dir),
                "hf": str(hf_dir) if hf_dir else None, "resolutions": list(args.resolutions),
                "questions": args.questions, "repeats": args.repeats, "max_new_tokens": max_new,
                "threads": args.threads, "max_full_res_tokens": args.max_full_res_tokens}
        t0 = time.perf_counter()
        results[method] = run_subprocess(spec, args.in_process)
        say(f"  {name}:{method} done in {time.perf_counter() - t0:.0f}s"
            + (f" ERROR {results[method]['error']}" if "error" in results[method] else ""))
    return {
        "bundle": str(bundle_dir), "hf": str(hf_dir) if hf_dir else None,
        "random_weights": random_weights, "max_new_tokens": max_new,
        "max_new_tokens_note": (f"random weights never stop early: every turn is capped at {max_new} new tokens"
                                if random_weights else f"every turn is capped at {max_new} new tokens"
                                + ("" if max_new >= bundle.budgets.get("max_new_tokens", 256)
                                   else " (below the bundle's own bound: --max-new-tokens)")),
        "params_m": (round(sum(f.stat().st_size for f in hf_dir.glob("*.safetensors")) / 4e6, 1)
                     if hf_dir else None),  # fp32 checkpoints: bytes / 4
        "default_variant": bundle.default_variant, "budgets": dict(bundle.budgets),
        "weights_match": weights_match(bundle_dir, hf_dir) if hf_dir else None,
        "methods": results,
        "limits_inputs": limits_inputs(bundle, bundle_dir, hf_dir, results),
    }


def run_decode_probe(model: dict, variant: str, args) -> dict:
    """decode_probe.py on the headline model's bundle at its measured mean context, in its own process."""
    command = [sys.executable, str(Path(__file__).with_name("decode_probe.py")), "--bundle", model["bundle"],
               "--variant", variant, "--context", str(model["limits_inputs"]["decode_context_tokens"] or 512),
               "--rounds", str(args.probe_rounds)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        return {"error": f"decode_probe.py exited with {proc.returncode}: {proc.stdout[-500:]}"}
    return last_json_line(proc.stdout)


def _median_at(model: dict, method: str, res: int, key: str = "ms"):
    entry = model["methods"].get(method, {}).get("resolutions", {}).get(str(res), {})
    value = entry.get(key)
    return value.get("median") if isinstance(value, dict) else value


def headline(models: dict, resolutions) -> dict:
    """The int8-vs-transformers model: the ~300M one if it ran (the issue's target), else the default."""
    name = "qwen300m" if "qwen300m" in models else next(iter(models))
    model = models[name]
    methods = model["methods"]
    # the cpu target's int8 runtime graph: the fused decoder where the bundle has one (on the random model its
    # parity gate is a coin toss on flat logits, so the bundle's default does not say which one users get)
    ran = [v for v in ("int8-fused", "int8") if f"ort_{v}" in methods and "error" not in methods[f"ort_{v}"]]
    int8_variant = ran[0] if ran else "int8"
    ratios = {}
    for res in resolutions:
        t, q = _median_at(model, "transformers", res), _median_at(model, f"ort_{int8_variant}", res)
        if t and q:
            ratios[str(res)] = round(t / q, 3)
    speedup = round(statistics.median(ratios.values()), 3) if ratios else None
    decode = {}
    for res in resolutions:
        t = _median_at(model, "transformers", res, "decode_ms_per_token")
        q = _median_at(model, f"ort_{int8_variant}", res, "decode_ms_per_token")
        if t and q:
            decode[str(res)] = round(t / q, 3)
    return {"model": name, "int8_variant": int8_variant, "speedup_by_resolution": ratios,
            "int8_vs_transformers_speedup": speedup,
            "decode_speedup_by_resolution": decode, "present": [m for m in methods if "error" not in methods[m]]}


def token_ratio(models: dict, res: int = 3840) -> dict:
    """CoF's visual tokens against the single full-resolution pass, on the trained model (it zooms as trained)."""
    name = next(iter(models))  # the trained (first) model, never the random one
    model = models[name]
    cof = _median_at(model, f"ort_{model['default_variant']}", res, "visual_tokens")
    full = model["methods"].get("full_res", {}).get("resolutions", {}).get(str(res), {})
    full_tokens = full.get("visual_tokens", full.get("visual_tokens_single_pass"))
    return {"model": name, "cof_visual_tokens": cof, "full_res_visual_tokens": full_tokens,
            "ratio": round(cof / full_tokens, 4) if cof and full_tokens else None}


def accuracy_delta(results_dir: Path, res: int = 3840, tag: str = "") -> dict:
    """CoF minus full-res accuracy at 3840 (points), from accuracy_bundle[-TAG].json, else the training's
    accuracy.json."""
    sources = [("accuracy_bundle.json", ("cof",)), ("accuracy.json", ("rl", "sft", "cof"))]
    if tag:
        sources.insert(0, (f"accuracy_bundle-{tag}.json", ("cof",)))
    for name, cof_keys in sources:
        data = load_json(results_dir / name)
        if not data or res not in data.get("resolutions", []):
            continue
        i = data["resolutions"].index(res)
        full = (data["methods"].get("full_res") or [None] * (i + 1))[i]
        for key in cof_keys:
            values = data["methods"].get(key)
            if values and values[i] is not None and full is not None:
                return {"source": name, "method": key, "delta": round(values[i] - full, 2)}
    return {"source": None, "method": None, "delta": None}


def plot(result: dict, prefix: Path) -> list[str]:
    """latency (ms/question) and tokens (visual) vs resolution, one line per model × method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plots (pip install 'cof-edge[bench]')")
        return []
    written = []
    for key, ylabel, suffix in (("ms", "ms per question (median)", "_ms"),
                                ("visual_tokens", "visual tokens per question", "_tokens")):
        fig, axes = plt.subplots(1, len(result["models"]), figsize=(6.5 * len(result["models"]), 4.2), dpi=110,
                                 squeeze=False)
        for ax, (name, model) in zip(axes[0], result["models"].items()):
            for method, m in model["methods"].items():
                if "resolutions" not in m:
                    continue
                xs, ys = [], []
                for i, res in enumerate(result["resolutions"]):
                    v = _median_at(model, method, res, key)
                    if v is None and key == "visual_tokens":
                        v = m["resolutions"].get(str(res), {}).get("visual_tokens_single_pass")
                    if v is not None:
                        xs.append(i)
                        ys.append(v)
                if ys:
                    ax.plot(xs, ys, marker="o", label=method)
            ax.set_xticks(range(len(result["resolutions"])), [str(r) for r in result["resolutions"]])
            ax.set_yscale("log")
            ax.set_xlabel("image long side (px)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name}{' (random weights)' if model['random_weights'] else ''}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = prefix.with_name(prefix.name + suffix + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="default model only, resolutions 224/1024/3840, 1 question, 1 repeat (same JSON keys)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the HF checkpoint the bundle came from")
    parser.add_argument("--name", default="default", help="the model's name in the results")
    parser.add_argument("--no-big", action="store_true", help="skip the ~300M random model")
    parser.add_argument("--reuse-big", action="store_true",
                        help="take the ~300M model's rows from the existing results file instead of rerunning them "
                             "(its random weights never change; for a rerun after retraining the default model)")
    parser.add_argument("--big-dir", type=Path, default=CACHE / "qwen300m")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--big-resolutions", type=int, nargs="+", default=None,
                        help="resolutions for the ~300M model (default: the same)")
    parser.add_argument("--big-methods", nargs="+", default=None,
                        help="methods for the ~300M model (default: all but full_res, whose 1920+ px passes take "
                             "minutes per question on a CPU; its visual tokens are the same as the default model's)")
    parser.add_argument("--questions", type=int, default=None, help="questions per resolution (default 3; quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 2; quick 1)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these (ort_int8, transformers, full_res, ...)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (ORT and torch)")
    parser.add_argument("--random-max-new-tokens", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap every model's turns at this (quick: 32, so that a slow reference stays short)")
    parser.add_argument("--max-full-res-tokens", type=int, default=3000,
                        help="skip full_res views of more visual tokens (time grows with their square; "
                             "3840x2160 = 10549 tokens takes ~1 min on the default model here)")
    parser.add_argument("--probe-rounds", type=int, default=7,
                        help="rounds of decode_probe.py (bandwidth, then decode, side by side) on the ~300M model's "
                             "int8 graph, whose median fraction is the headline decode_bound_fraction; 0: none")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per method (memory not isolated)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="writes latency-TAG.json instead of latency.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out = run_worker(json.loads(args.worker))
        print(json.dumps(out))
        return out
    args.resolutions = tuple(args.resolutions or (QUICK_RESOLUTIONS if args.quick else RESOLUTIONS))
    args.questions = args.questions or (1 if args.quick else 3)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.quick and args.max_new_tokens is None:
        args.max_new_tokens = 32
    started = time.perf_counter()
    host = machine()
    limits = limits_mod.measure(quick=True, threads=args.threads)

    from cof_edge.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    hf = args.model if (args.model / "config.json").is_file() else None
    if hf is not None and hf.resolve() == DEFAULT_MODEL.resolve():
        hf = snapshot_model(hf, CACHE / "default_model_snapshot")
    models = {args.name: bench_model(args.name, args.bundle, hf, args, bool(bundle.exporter.get("random_weights")))}
    previous = args.out / f"latency{'-' + args.tag if args.tag else ''}.json"
    if args.reuse_big and not args.quick and not args.no_big:
        earlier = json.loads(previous.read_text()).get("models", {}) if previous.is_file() else {}
        if "qwen300m" not in earlier:
            raise SystemExit(f"--reuse-big: {previous} has no ~300M model rows to reuse; run without it")
        models["qwen300m"] = earlier["qwen300m"]
        models["qwen300m"]["reused"] = "rows from an earlier run of this benchmark (its random weights are fixed)"
    elif not args.quick and not args.no_big:
        model_dir, big_bundle = ensure_big_model(args.big_dir, dict(bundle.budgets))
        big_args = argparse.Namespace(**vars(args))
        big_args.resolutions = tuple(args.big_resolutions or args.resolutions)
        big_args.methods = args.big_methods or [m for m in (args.methods or [f"ort_{v}" for v in VARIANTS]
                                                             + ["transformers", "global_only"]) if m != "full_res"]
        models["qwen300m"] = bench_model("qwen300m", big_bundle, model_dir, big_args, True)
        models["qwen300m"]["spec"] = BIG_SPEC

    head = headline(models, args.resolutions)
    tokens = token_ratio(models)
    accuracy = accuracy_delta(args.out, tag=args.tag)
    result = {"mode": "quick" if args.quick else "full", "machine": host, "limits": limits,
              "resolutions": list(args.resolutions), "questions": args.questions, "repeats": args.repeats,
              "seed": LATENCY_SEED, "threads": args.threads, "memory_isolated": not args.in_process,
              "models": models, "headline": head, "visual_tokens_3840": tokens, "accuracy_3840": accuracy}
    result["roofline"] = limits_mod.roofline(limits, result)
    derived = limits_mod.derive(result, limits, result["roofline"]["gbs"])
    result["bounds"] = derived
    unpaired_fraction = limits_mod.headline_decode_fraction(derived, result)
    if head["model"] == "qwen300m" and args.probe_rounds:
        result["decode_probe"] = run_decode_probe(models["qwen300m"], head["int8_variant"], args)
    decode_fraction = limits_mod.headline_decode_fraction(derived, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    name = f"latency{'-' + args.tag if args.tag else ''}"
    atomic_write_json(args.out / f"{name}.json", result)
    plots = plot(result, args.out / name)
    say(f"wrote {args.out / (name + '.json')} and {len(plots)} plots")
    summary = {
        "mode": result["mode"], "models": list(models), "resolutions": list(args.resolutions),
        "headline_model": head["model"], "int8_variant": head["int8_variant"],
        "int8_vs_transformers_speedup": head["int8_vs_transformers_speedup"],
        "visual_token_ratio_3840": tokens["ratio"],
        "accuracy_delta_vs_full_res_3840": accuracy["delta"],
        "decode_bound_fraction": decode_fraction,
        "decode_bound_fraction_unpaired": unpaired_fraction,
        "random_weights": {k: m["random_weights"] for k, m in models.items()},
        "max_new_tokens": {k: m["max_new_tokens"] for k, m in models.items()},
        "weights_match": {k: m["weights_match"] for k, m in models.items()},
        "errors": [f"{k}:{meth}" for k, m in models.items() for meth, r in m["methods"].items() if "error" in r],
        "seconds": result["seconds"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
