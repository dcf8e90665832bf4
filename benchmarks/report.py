"""Regenerate the benchmark tables (README) and plots from the committed results, without running any model.

    python benchmarks/report.py [--results benchmarks/results] [--readme README.md] [--no-plots] [--check]

Reads `latency*.json`, `limits.json`, `accuracy_bundle*.json` (benchmarks/latency.py, limits.py, accuracy.py) and
the training's `accuracy.json` (training/evaluate.py) if present; writes the markdown between
`<!-- bench:start -->` and `<!-- bench:end -->` in the README (only that section changes; the output depends on the
JSON alone, so a rerun is byte-identical) and redraws `latency*_ms.png`, `latency*_tokens.png` and
`accuracy_bundle*.png`. The accuracy target's row reads the accuracy results as they are now, not the delta a
latency run stored (accuracy.py may run after it). `--check` writes nothing and exits 1 when the README section is
stale.
The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, fmt, load_json, say  # noqa: E402

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
TARGETS = {"speedup": 3.0, "token_ratio": 1 / 8, "decode_fraction": 0.7}


def _res_header(resolutions) -> list[str]:
    cols = ["method"] + [str(r) for r in resolutions]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _entry(model: dict, method: str, res) -> dict:
    return model["methods"].get(method, {}).get("resolutions", {}).get(str(res), {})


def _median(entry: dict, key: str):
    value = entry.get(key)
    return value.get("median") if isinstance(value, dict) else value


def _verdict(ok) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def latency_section(name: str, data: dict, limits: dict | None) -> list[str]:
    out = []
    res = data["resolutions"]
    mach = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in mach["versions"].items() if v and k != "cof-edge")
    out += [f"### Latency ({name}, {data['mode']} run)", "",
            f"Measured {mach['date_utc']} on {mach['cpu']}, {mach['cores']} cores, {mach['memory_gb']} GB "
            f"({versions}); load average at start {mach['load_average_at_start']}"
            + (f"; {data['threads']} intra-op thread(s)" if data.get("threads") else "") + ". "
            f"{data['questions']} question(s) per resolution (vsearch seed {data['seed']}), {data['repeats']} timed "
            f"round(s) after a warm-up, crop cache cleared before each question; medians, [p10–p90].", ""]
    for model_name, model in data["models"].items():
        notes = [model["max_new_tokens_note"]]
        if model.get("random_weights"):
            notes.append("random weights: speed only")
        if model.get("reused"):
            notes.append(model["reused"])
        if model.get("weights_match") is False:
            notes.append("**the bundle was exported from another checkpoint than the HF directory timed beside it**, so "
                         "the two paths ran different chains: compare per-token stage costs, not whole questions")
        out += [f"**{model_name}** (`{Path(model['bundle']).name}`, default variant `{model['default_variant']}`; "
                + "; ".join(notes) + ")", "", "ms per question:", ""]
        out += _res_header(res)
        for method, m in model["methods"].items():
            if "error" in m:
                out.append(_row([method] + ["error"] * len(res)))
                continue
            cells = []
            for r in res:
                e = _entry(model, method, r)
                if "skipped" in e:
                    cells.append("skipped")
                elif e.get("ms"):
                    cells.append(f"{e['ms']['median']:.0f} [{e['ms']['p10']:.0f}–{e['ms']['p90']:.0f}]")
                else:
                    cells.append("–")
            out.append(_row([method] + cells))
        out += ["", "visual tokens per question (CoF: global view + crops; full_res: one pass):", ""]
        out += _res_header(res)
        for method, m in model["methods"].items():
            if "error" in m:
                continue
            cells = []
            for r in res:
                e = _entry(model, method, r)
                v = e.get("visual_tokens", e.get("visual_tokens_single_pass"))
                cells.append(fmt(v, 0) if v is not None else "–")
            out.append(_row([method] + cells))
        top = max(res)
        out += ["", f"stages at {top} px (ms per question, medians; vision is net of preprocessing):", "",
                "| method | preprocess | vision | prefill | decode | decode ms/token | visual tok | total tok | zooms "
                "| warm-cache ms (hits/q) | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, m in model["methods"].items():
            e = _entry(model, method, top)
            if "error" in m or not e.get("ms"):
                continue
            st = e["stages_ms"]
            warm = e["warm_cache"]
            out.append(_row([method] + [fmt(_median(st, k) if st.get(k) else None, 1) for k in
                                        ("preprocess", "vision", "prefill", "decode")]
                            + [fmt(_median(e, "decode_ms_per_token"), 2), fmt(e["visual_tokens"], 0),
                               fmt(e["total_tokens"], 0), fmt(e["zooms"], 2),
                               f"{fmt(_median(warm, 'ms'), 0)} ({fmt(warm['hits_per_question'], 1)})",
                               fmt(e["peak_rss_mb"], 0)]))
        out.append("")
    head, tok, acc = data["headline"], data["visual_tokens_3840"], data["accuracy_3840"]
    fraction = decode_fraction(data, limits)
    speed_ok = None if head["int8_vs_transformers_speedup"] is None or head["model"] != "qwen300m" else \
        head["int8_vs_transformers_speedup"] >= TARGETS["speedup"]
    token_ok = None if tok["ratio"] is None else tok["ratio"] <= TARGETS["token_ratio"]
    acc_ok = None if acc["delta"] is None else acc["delta"] >= 0
    out += ["Targets (issue #4):", "",
            "| target | measured | verdict |", "|---|---|---|",
            _row(["int8 ≥ 3× faster than transformers on the ~300M config",
                  f"{fmt(head['int8_vs_transformers_speedup'], 2)}× (`{head['model']}`, `ort_{head['int8_variant']}`; "
                  f"median over resolutions of the per-question ratio"
                  + ("" if head["model"] == "qwen300m" else "; not the ~300M config") + ")", _verdict(speed_ok)]),
            _row(["≤ 1/8 of the full-resolution visual tokens at 3840",
                  f"{fmt(tok['ratio'], 4)} ({fmt(tok['cof_visual_tokens'], 0)} vs {fmt(tok['full_res_visual_tokens'], 0)}, "
                  f"`{tok['model']}`)", _verdict(token_ok)]),
            _row(["… with accuracy no lower than full resolution at 3840",
                  f"{fmt(acc['delta'], 1)} points ({acc['source'] or 'no accuracy result with full_res at 3840'})",
                  _verdict(acc_ok)]),
            _row(["decode ≥ 70% of the memory-bandwidth bound", f"{fmt(fraction, 3)}" + _probe_span(data),
                  _verdict(None if fraction is None else fraction >= TARGETS["decode_fraction"])]), ""]
    return out + decode_probe_section(data.get("decode_probe"))


def _probe_span(latency: dict) -> str:
    probe = latency.get("decode_probe") or {}
    if not probe.get("fraction"):
        return ""
    fractions = [e["fraction"] for e in probe["rounds"]]
    return (f" (paired probe: median of {len(fractions)} rounds, {fmt(min(fractions), 3)}–{fmt(max(fractions), 3)}, "
            "below)")


def decode_probe_section(probe: dict | None) -> list[str]:
    if not probe:
        return []
    if "error" in probe:
        return [f"Decode probe: failed ({probe['error'][:200]}).", ""]
    out = [f"Decode probe (`decode_probe.py`, `{probe['variant']}`, {probe['context']} tokens cached, "
           f"{fmt(probe['bytes_per_token'] / 2**20, 1)} MB read per step): each round measures the memory "
           "bandwidth (the best numpy kernel) and then the runtime's decode steps right after it, so both see the "
           "same machine; the target's fraction is the median of the rounds.", "",
           "| round | bandwidth GB/s | bound ms | measured ms/token | streamed GB/s | fraction |",
           "|---|---|---|---|---|---|"]
    for i, e in enumerate(probe["rounds"], 1):
        out.append(_row([str(i), fmt(e["bandwidth_gbs"], 2), fmt(e["bound_ms"], 2), fmt(e["ms_per_token"], 2),
                         fmt(e["streamed_gbs"], 1), fmt(e["fraction"], 3)]))
    return out + [""]


def decode_fraction(latency: dict, limits: dict | None):
    """The headline decode fraction: the paired probe's, else limits.json's, else the latency run's own."""
    import limits as limits_mod

    return (limits_mod.headline_decode_fraction((limits or {}).get("models"), latency)
            or limits_mod.headline_decode_fraction(latency.get("bounds"), latency))


def limits_section(limits: dict) -> list[str]:
    out = ["### Machine limits (limits.json)", "",
           f"{limits['machine']['cpu']}, {limits['machine']['cores']} cores"
           + (f" ({', '.join(limits['machine']['isa'])})" if limits["machine"].get("isa") else "")
           + f" ({limits['mode']} run, "
           f"{limits['machine']['date_utc']}): memory bandwidth {limits['bandwidth'].get('bound_gbs')} GB/s, the best "
           f"of read {limits['bandwidth']['read_gbs']}, copy {limits['bandwidth']['copy_gbs']} and dot "
           f"{limits['bandwidth'].get('dot_gbs')} GB/s on one core"
           + (f" and {limits['bandwidth']['read_gbs_all_cores']}, {limits['bandwidth']['copy_gbs_all_cores']} and "
              f"{limits['bandwidth']['dot_gbs_all_cores']} GB/s on all {limits['bandwidth']['cores']}"
              if "dot_gbs_all_cores" in limits["bandwidth"] else "")
           + f" (numpy); float32 GEMM {limits['gemm']['fp32_gflops']} "
           f"GFLOP/s (numpy)"
           + (f"; int8 MatMulInteger {limits['ort_int8']['int8_gops']} GOP/s (onnxruntime)"
              if limits.get("ort_int8") else "") + ".", "",
           "Decode bound = (weight bytes of the graph that runs decode steps, the step decoder where a variant "
           "has one, + KV bytes at the mean context) / bandwidth; fraction = bound / measured ms per token "
           "(1.0 = at the roofline). The bandwidth is the best numpy kernel's, or the fastest "
           "decoder's of the latency run where that one streamed faster (a bound below what a decoder reads would "
           "flatter every fraction): here "
           + (f"{limits['roofline']['gbs']} GB/s ({limits['roofline']['source']})." if limits.get("roofline")
              else f"{limits['bandwidth'].get('bound_gbs')} GB/s (numpy kernels)."), "",
           "| model | variant | MB read per token | bound ms | measured ms | fraction |", "|---|---|---|---|---|---|"]
    for model, d in limits.get("models", {}).items():
        for variant, e in d["decode"].items():
            out.append(_row([model, variant, fmt(e["bytes_per_token"] / 2**20, 2), fmt(e["bound_ms"], 3),
                             fmt(e["measured_ms"], 3), fmt(e["fraction"], 3)]))
    rows = []
    for model, d in limits.get("models", {}).items():
        for variant, views in d["vision"].items():
            for tokens, e in sorted(views.items(), key=lambda kv: int(kv[0]))[-1:]:  # the largest view measured
                rows.append(_row([model, variant, tokens, fmt(e["gflop"], 2), fmt(e["bound_ms"], 1),
                                  fmt(e["measured_ms"], 1), fmt(e["fraction"], 3)]))
    if rows:
        out += ["", "Vision bound = FLOPs of one view / float32 GEMM throughput (the largest view measured; all views "
                "in limits.json):", "",
                "| model | variant | view tokens | GFLOP | bound ms | measured ms | fraction |",
                "|---|---|---|---|---|---|---|"] + rows
    return out + [""]


def accuracy_section(name: str, data: dict, training: bool) -> list[str]:
    res = data["resolutions"]
    if training:
        rl = f" (rl: {data['rl_model']})" if data.get("rl_model") else ""
        head = (f"### Accuracy per resolution ({name}, training/evaluate.py: {data.get('model', '?')}{rl}, "
                f"{data.get('n_per_resolution')} questions per resolution, seed {data.get('eval_seed', '?')})")
    else:
        head = f"### Accuracy per resolution ({name}, {data.get('mode', '?')} run: {data.get('title', '')})"
    out = [head, "", "accuracy (%):", ""] + _res_header(res)
    for method, values in data["methods"].items():
        if values is None:
            continue
        out.append(_row([method] + [fmt(v, 1) for v in values]))
    for method, cats in sorted((data.get("by_category") or {}).items()):
        for cat, values in sorted(cats.items()):
            if values and any(v is not None for v in values):
                out.append(_row([f"{method} · {cat}"] + [fmt(v, 1) for v in values]))
    zooms = data.get("avg_zooms") or {}
    if zooms:
        out += ["", "zooms per question:", ""] + _res_header(res)
        for method, values in zooms.items():
            if values is not None:
                out.append(_row([method] + [fmt(v, 2) for v in values]))
    hits = {m: v for m, v in (data.get("zoom_hit_rate") or {}).items() if v and any(x is not None for x in v)}
    if hits:
        out += ["", "zoom hit rate (%: attribute questions with a zoom whose crop holds the whole asked tag):", ""]
        out += _res_header(res) + [_row([m] + [fmt(x, 1) for x in v]) for m, v in hits.items()]
    skipped = data.get("skipped") or {}
    for method, by_res in sorted(skipped.items()):
        for r, reason in sorted(by_res.items(), key=lambda kv: int(kv[0])):
            out.append(f"\n`{method}` at {r}: skipped: {reason}.")
    return out + [""]


def build(results: Path) -> tuple[str, dict]:
    lines = ["(generated by `python benchmarks/report.py` from `benchmarks/results/`; do not edit by hand)", ""]
    found: dict = {}
    limits = load_json(results / "limits.json")
    latency_files = sorted(results.glob("latency*.json"), key=lambda p: (p.name != "latency.json", p.name))
    for path in latency_files:
        data = load_json(path)
        if data and "models" in data:
            lines += latency_section(path.name, with_current_accuracy(data, results, path), limits)
            found.setdefault("latency", []).append(path.name)
    if limits:
        lines += limits_section(limits)
        found["limits"] = "limits.json"
    for path in sorted(results.glob("accuracy_bundle*.json"), key=lambda p: (p.name != "accuracy_bundle.json", p.name)):
        data = load_json(path)
        if data and "methods" in data:
            lines += accuracy_section(path.name, data, training=False)
            found.setdefault("accuracy_bundle", []).append(path.name)
    training = load_json(results / "accuracy.json")
    if training and "methods" in training:
        lines += accuracy_section("accuracy.json", training, training=True)
        found["accuracy"] = "accuracy.json"
    plots = sorted(p.name for p in results.glob("*.png"))
    if plots:
        lines += ["Plots: " + ", ".join(f"[`{p}`](benchmarks/results/{p})" for p in plots), ""]
    if len(lines) == 2:
        lines.append("(no results yet: run `python benchmarks/latency.py`, `accuracy.py`, `limits.py`)")
    return "\n".join(lines).rstrip() + "\n", found


def with_current_accuracy(data: dict, results: Path, path: Path) -> dict:
    """The latency run's accuracy row from the accuracy results as they are now: accuracy.py may have run after
    latency.py, which stored the delta it found then."""
    import latency

    tag = path.stem[len("latency-"):] if path.stem.startswith("latency-") else ""
    current = latency.accuracy_delta(results, tag=tag)
    return {**data, "accuracy_3840": current} if current["delta"] is not None else data


def replace_section(readme: str, body: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"the README has no {START} … {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}{END}{tail}"


def redraw(results: Path) -> list[str]:
    import accuracy
    import latency

    written = []
    for path in sorted(results.glob("latency*.json")):
        data = load_json(path)
        if data and "models" in data:
            written += latency.plot(data, path.with_suffix(""))
    for path in sorted(results.glob("accuracy_bundle*.json")):
        data = load_json(path)
        if data and "methods" in data:
            p = accuracy.plot(data, path.with_suffix(".png"))
            written += [p] if p else []
    return written


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README section is stale; write nothing")
    args = parser.parse_args(argv)
    body, found = build(args.results)
    readme = args.readme.read_text(encoding="utf-8")
    updated = replace_section(readme, body)
    stale = updated != readme
    plots = []
    if args.check:
        summary = {"readme": str(args.readme), "stale": stale, "inputs": found, "plots": []}
        print(json.dumps(summary))
        if stale:
            raise SystemExit(1)
        return summary
    if stale:
        from cof_edge.atomic import atomic_write_bytes

        atomic_write_bytes(args.readme, updated.encode("utf-8"))
    if not args.no_plots:
        plots = [Path(p).name for p in redraw(args.results)]
    say(f"README section {'updated' if stale else 'unchanged'}; {len(plots)} plots")
    summary = {"readme": str(args.readme), "changed": stale, "section_lines": body.count("\n"), "inputs": found,
               "plots": plots}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
