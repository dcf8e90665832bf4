"""The benchmark scripts run end to end in a tiny mode on a tiny bundle, print their JSON summary last, write their
result files, and report.py regenerates the README section deterministically (on copies, never the real files)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def run(script: str, *args, timeout: int = 120) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


@pytest.fixture(scope="module")
def results(tmp_path_factory, bundles, tiny_models):
    """One tiny run of each script into one results directory."""
    out = tmp_path_factory.mktemp("bench-results")
    bundle, model = bundles["small"], tiny_models["small"]
    summaries = {
        "accuracy": run("accuracy.py", "--quick", "--bundle", bundle, "--n", 1, "--resolutions", 224, 448,
                        "--max-new-tokens", 8, "--threads", 1, "--out", out),
        "latency": run("latency.py", "--quick", "--bundle", bundle, "--model", model, "--resolutions", 224, 448,
                       "--methods", "ort_fp32", "ort_int8", "transformers", "full_res", "global_only",
                       "--max-new-tokens", 8, "--threads", 1, "--out", out),
        "limits": run("limits.py", "--quick", "--out", out),
    }
    return out, summaries


def test_latency_summary_and_files(results):
    out, summaries = results
    summary = summaries["latency"]
    for key in ("int8_vs_transformers_speedup", "visual_token_ratio_3840", "accuracy_delta_vs_full_res_3840",
                "decode_bound_fraction", "random_weights", "max_new_tokens", "errors"):
        assert key in summary
    assert summary["errors"] == []
    assert summary["int8_vs_transformers_speedup"] > 0
    assert summary["max_new_tokens"]["default"] == 8
    data = json.loads((out / "latency.json").read_text())
    assert {"cpu", "cores", "memory_gb", "versions"} <= set(data["machine"])
    model = data["models"]["default"]
    assert set(model["methods"]) == {"ort_fp32", "ort_int8", "transformers", "full_res", "global_only"}
    entry = model["methods"]["ort_int8"]["resolutions"]["448"]
    assert set(entry["stages_ms"]) == {"preprocess", "vision", "prefill", "decode"}
    assert entry["ms"]["p10"] <= entry["ms"]["median"] <= entry["ms"]["p90"]
    assert entry["peak_rss_mb"] > 0 and entry["warm_cache"]["hits_per_question"] >= 1
    full = model["methods"]["full_res"]["resolutions"]["448"]
    assert full["zooms"] == 0 and full["steps"] == 1 and full["visual_tokens"] > 0  # one pass at native size
    assert (out / "latency_ms.png").stat().st_size > 0 and (out / "latency_tokens.png").stat().st_size > 0


def test_accuracy_summary_and_files(results):
    out, summaries = results
    summary = summaries["accuracy"]
    assert summary["resolutions"] == [224, 448]
    assert set(summary["methods"]) == {"cof", "no_zoom", "full_res"}
    data = json.loads((out / "accuracy_bundle.json").read_text())
    assert data["n_per_resolution"] == 1
    assert set(data["by_category"]["cof"]) == {"direct_attributes", "relative_position"}
    assert all(0 <= v <= 100 for v in data["methods"]["cof"])
    assert (out / "accuracy_bundle.png").stat().st_size > 0


def test_limits_summary_and_files(results):
    out, summaries = results
    summary = summaries["limits"]
    assert summary["read_gbs"] > 0 and summary["fp32_gflops"] > 0
    data = json.loads((out / "limits.json").read_text())
    assert "default" in data["models"]  # bounds derived from the latency run in the same directory
    decode = data["models"]["default"]["decode"]
    assert decode and all(e["bound_ms"] > 0 and e["fraction"] > 0 for e in decode.values())


def test_bandwidth_bound_is_the_best_kernel_on_one_core_or_all(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import limits

    result = limits.measure_bandwidth(mb=8, repeats=1, cores=2)
    per_kernel = {k: v for k, v in result.items() if "_gbs" in k and k != "bound_gbs"}
    assert set(per_kernel) == {f"{kernel}_gbs{suffix}" for kernel in ("read", "copy", "dot")
                               for suffix in ("", "_all_cores")}
    assert result["cores"] == 2 and result["bound_gbs"] == max(per_kernel.values()) > 0
    one_core = limits.measure_bandwidth(mb=8, repeats=1, cores=1)
    assert not any(k.endswith("_all_cores") for k in one_core)


def test_decode_bounds_never_sit_below_a_decoder_that_streamed_faster(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import limits

    text = {"layers": 2, "kv_heads": 1, "head_dim": 4}          # KV at 100 tokens: 2*2*1*4*100*4 = 6,400 bytes
    inputs = {"text": text, "decode_context_tokens": 100,
              "decoder_bytes": {"fp32": 20_000_000 - 6_400, "int8": 5_000_000 - 6_400},
              "decode_ms_per_token": {"fp32": 0.5, "int8": 0.25}}  # 40 GB/s and 20 GB/s
    latency = {"models": {"m": {"limits_inputs": inputs}}}
    measured = {"bandwidth": {"read_gbs": 10.0, "bound_gbs": 25.0}, "gemm": {"fp32_gflops": 100.0}}
    assert limits.roofline(measured, latency) == {"gbs": 40.0, "source": "decoder m fp32"}
    decode = limits.derive(latency, measured)["m"]["decode"]
    assert decode["fp32"]["fraction"] == 1.0 and decode["int8"]["fraction"] == 0.5
    assert decode["int8"]["bytes_per_token"] == 5_000_000 and decode["int8"]["bound_ms"] == 0.125
    faster = {**measured, "bandwidth": {"read_gbs": 10.0, "bound_gbs": 50.0}}
    assert limits.roofline(faster, latency) == {"gbs": 50.0, "source": "numpy kernels"}
    assert limits.derive(latency, faster)["m"]["decode"]["fp32"]["fraction"] == 0.8


def test_report_regenerates_readme_deterministically(results, tmp_path):
    out, _ = results
    results_copy = tmp_path / "results"
    shutil.copytree(out, results_copy)
    training = {"resolutions": [224, 448], "methods": {"no_zoom": [25.0, 30.0], "sft": [40.0, 45.0], "rl": None,
                                                       "full_res": None}, "n_per_resolution": 4,
                "zoom_hit_rate": {"no_zoom": [None, None], "sft": [None, 62.5]}}
    (results_copy / "accuracy.json").write_text(json.dumps(training))
    readme = tmp_path / "README.md"
    original = (REPO / "README.md").read_text()
    readme.write_text(original)
    first = run("report.py", "--results", results_copy, "--readme", readme)
    assert first["changed"] is True
    text = readme.read_text()
    head, rest = text.split("<!-- bench:start -->")
    section, tail = rest.split("<!-- bench:end -->")
    assert head == original.split("<!-- bench:start -->")[0] and tail == original.split("<!-- bench:end -->")[1]
    for needle in ("### Latency", "ms per question", "Targets (issue #4)", "### Machine limits",
                   "### Accuracy per resolution (accuracy_bundle.json", "### Accuracy per resolution (accuracy.json",
                   "| sft | 40.0 | 45.0 |", "zoom hit rate", "| sft | – | 62.5 |"):
        assert needle in section, needle
    second = run("report.py", "--results", results_copy, "--readme", readme, "--no-plots")
    assert second["changed"] is False and readme.read_text() == text
    assert run("report.py", "--results", results_copy, "--readme", readme, "--check")["stale"] is False


def test_latency_reuses_the_300m_rows_only_when_asked_and_present(results, bundles, tiny_models, tmp_path):
    out, _ = results
    previous = json.loads((out / "latency.json").read_text())
    big = dict(previous["models"]["default"], random_weights=True)
    previous["models"] = {"qwen300m": big}
    (tmp_path / "latency.json").write_text(json.dumps(previous))
    args = ["--bundle", bundles["small"], "--model", tiny_models["small"], "--resolutions", 224, "--methods",
            "ort_int8", "transformers", "--questions", 1, "--repeats", 1, "--max-new-tokens", 8, "--threads", 1]
    summary = run("latency.py", *args, "--reuse-big", "--probe-rounds", 2, "--out", tmp_path)
    assert summary["models"] == ["default", "qwen300m"] and summary["headline_model"] == "qwen300m"
    data = json.loads((tmp_path / "latency.json").read_text())
    probe = data["decode_probe"]
    assert "error" not in probe, probe["error"]   # the headline model's int8 graph, bandwidth and decode side by side
    assert probe["bundle"] == big["bundle"] and probe["variant"] == summary["int8_variant"]
    assert probe["context"] == big["limits_inputs"]["decode_context_tokens"] and len(probe["rounds"]) == 2
    assert summary["decode_bound_fraction"] == probe["fraction"] > 0
    assert summary["decode_bound_fraction_unpaired"] > 0
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    run("report.py", "--results", tmp_path, "--readme", readme, "--no-plots")
    text = readme.read_text()
    row = f"| decode ≥ 70% of the memory-bandwidth bound | {probe['fraction']:.3f} (paired probe: median of 2"
    assert row in text
    assert "| 2 | " in text.split("Decode probe (`decode_probe.py`")[1]   # one row per round
    assert data["models"]["qwen300m"]["methods"] == big["methods"] and "earlier run" in data["models"]["qwen300m"]["reused"]
    assert set(data["models"]["default"]["methods"]) == {"ort_int8", "transformers"}   # rerun, not copied
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, str(BENCH / "latency.py"), *map(str, args), "--reuse-big", "--out", empty],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no ~300M model rows to reuse" in proc.stderr


def test_decode_probe_pairs_each_round_with_its_own_bandwidth(bundles, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import decode_probe
    import limits

    speeds = iter([10.0, 40.0])
    monkeypatch.setattr(decode_probe, "measure_bandwidth", lambda mb, repeats: {"bound_gbs": next(speeds)})
    result = decode_probe.probe(bundles["small"], variant="int8", threads=1, context=40, tokens=4, rounds=2)
    from cof_edge.bundle import load_bundle

    bundle = load_bundle(bundles["small"])
    graph = bundle.variant("int8")["decoder"]
    assert result["decode_graph"] == graph.file
    assert result["bytes_per_token"] == graph.bytes + limits.kv_bytes(bundle.text, 42)
    for gbs, entry in zip((10.0, 40.0), result["rounds"]):
        assert entry["bandwidth_gbs"] == gbs and entry["ms_per_token"] > 0
        bound_ms = result["bytes_per_token"] / (gbs * 1e9) * 1e3
        assert entry["bound_ms"] == pytest.approx(bound_ms, rel=1e-3)
        assert entry["fraction"] == pytest.approx(bound_ms / entry["ms_per_token"], abs=1e-4)  # rounded to 4 places
    assert result["fraction"] == round((result["rounds"][0]["fraction"] + result["rounds"][1]["fraction"]) / 2, 4)


def test_the_paired_probe_is_the_headline_decode_fraction(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import limits
    import report

    latency = {"headline": {"model": "m", "int8_variant": "int8"}}
    derived = {"m": {"decode": {"int8": {"fraction": 0.4}}}}
    assert limits.headline_decode_fraction(derived, latency) == 0.4
    assert report.decode_fraction({**latency, "bounds": derived}, None) == 0.4
    latency["decode_probe"] = {"fraction": 0.8}
    assert limits.headline_decode_fraction(derived, latency) == 0.8
    assert report.decode_fraction({**latency, "bounds": derived}, {"models": derived}) == 0.8


def test_report_takes_the_accuracy_row_from_the_accuracy_results_as_they_are_now(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    stored = {"accuracy_3840": {"source": "accuracy_bundle.json", "method": "cof", "delta": 20.0}}
    assert report.with_current_accuracy(stored, tmp_path, tmp_path / "latency.json") == stored  # nothing newer
    (tmp_path / "accuracy_bundle.json").write_text(json.dumps(
        {"resolutions": [1024, 3840], "methods": {"cof": [30.0, 50.0], "full_res": [40.0, 10.0]}}))
    assert report.with_current_accuracy(stored, tmp_path, tmp_path / "latency.json")["accuracy_3840"] == \
        {"source": "accuracy_bundle.json", "method": "cof", "delta": 40.0}
    tagged = report.with_current_accuracy(stored, tmp_path, tmp_path / "latency-x.json")
    assert tagged["accuracy_3840"]["delta"] == 40.0   # no accuracy_bundle-x.json: the untagged file
