"""cof-export: bundles that run in the lean runtime, parity-gated, standard ops, dynamic dims, atomic writes."""

import json
from pathlib import Path
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

from cof_edge.bundle import BundleError, load_bundle  # noqa: E402
from cof_edge.engine import FocusEngine  # noqa: E402
from cof_export import parity  # noqa: E402
from cof_export.graphs import non_standard_ops  # noqa: E402
from cof_export.pipeline import ExportConfig, ParityError, export_bundle  # noqa: E402

from conftest import photo_like, run_chain  # noqa: E402

from conftest import BUNDLE_PRECISIONS as PRECISIONS  # noqa: E402


@pytest.mark.parametrize("tokenizer", ["small", "qwen"])
def test_parity_record(bundles, tokenizer):
    bundle = load_bundle(bundles[tokenizer], verify=True)
    fp32 = bundle.parity["fp32"]
    assert fp32["greedy_identical"] and fp32["top1_agreement"] == 1.0 and not fp32["failures"]
    assert fp32["logits_max_abs"] < 1e-4 and fp32["image_embeds_max_abs"] < 1e-5
    assert bundle.parity["int8"]["top1_agreement"] >= 0.99 and not bundle.parity["int8"]["failures"]
    assert {p["view_size"][0] % 112 for p in fp32["probes"]} != {0}  # a probe has partial attention windows
    for variant in PRECISIONS[tokenizer]:
        record = bundle.parity[variant]
        assert record["gate"] == variant and all(p["steps"] == 16 for p in record["probes"])
        assert {"image_embeds_max_abs", "logits_max_abs", "top1_agreement", "greedy_identical"} <= set(record)
    assert bundle.default_variant == "int8"
    assert bundle.forced == any(bundle.parity[v]["failures"] for v in bundle.parity)


@pytest.mark.parametrize("tokenizer", ["small", "qwen"])
@pytest.mark.parametrize("size", [(333, 517), (1001, 203), (640, 480)])
def test_fp32_bundle_answers_exactly_like_transformers(bundles, tiny_models, tokenizer, size):
    image = photo_like(size[1], size[0], seed=size[1])
    runs = {}
    for name, engine in (("ort", FocusEngine.load(bundles[tokenizer], variant="fp32")),
                         ("hf", FocusEngine.from_pretrained(tiny_models[tokenizer]))):
        runs[name] = run_chain(engine, image, max_new_tokens=20)
    assert runs["ort"].token_ids == runs["hf"].token_ids
    assert runs["ort"].result.answer == runs["hf"].result.answer
    assert [s.crop_region for s in runs["ort"].result.steps] == [s.crop_region for s in runs["hf"].result.steps]


def test_only_standard_ops_except_declared_contrib_graphs(bundles):
    bundle = load_bundle(bundles["small"])
    for graph in bundle.graphs.values():
        found = non_standard_ops(bundles["small"] / graph.file)
        if graph.precision == "int4":
            assert graph.flavour == "contrib" and found == ["com.microsoft::MatMulNBits"]
        else:
            assert graph.flavour == "standard" and found == [], (graph.file, found)


def test_no_dynamic_dim_was_specialised(bundles):
    bundle = load_bundle(bundles["small"])
    decoder = bundle.graphs["decoder.fp32"].inputs
    assert decoder["inputs_embeds"][1][:2] == ["batch", "seq"]
    assert decoder["attention_mask"][1] == ["batch", "total"]
    assert decoder["position_ids"][1] == [3, "batch", "seq"]
    assert decoder["past_key.0"][1][0] == "batch" and decoder["past_key.0"][1][2] == "past"
    assert bundle.graphs["embed.fp32"].inputs["input_ids"][1] == ["batch", "seq"]
    vision = bundle.graphs["vision.fp32"].inputs
    assert vision["pixel_patches"][1][0] == "num_patches" and vision["window_gather"][1][0] == "num_windows"
    # and the graph really runs at batch 1 and 3, with and without past
    text = bundle.text
    session = ort.InferenceSession(str(bundles["small"] / "decoder.fp32.onnx"))
    for batch, seq, past in ((1, 1, 0), (3, 4, 6)):
        feeds = {"inputs_embeds": np.zeros((batch, seq, text["hidden"]), np.float32),
                 "attention_mask": np.ones((batch, past + seq), np.int64),
                 "position_ids": np.zeros((3, batch, seq), np.int64)}
        feeds.update({f"past_{k}.{i}": np.zeros((batch, text["kv_heads"], past, text["head_dim"]), np.float32)
                      for i in range(text["layers"]) for k in ("key", "value")})
        logits, present = session.run(None, feeds)[:2]
        assert logits.shape == (batch, text["vocab_size"]) and present.shape[2] == past + seq


def test_tensorrt_profiles_and_provider_options_are_recorded(bundles):
    bundle = load_bundle(bundles["small"])
    trt = bundle.providers["tensorrt"]
    vision = trt["profiles"]["vision"]
    assert vision["min"]["pixel_patches"][0] <= vision["opt"]["pixel_patches"][0] <= vision["max"]["pixel_patches"][0]
    assert vision["max"]["pixel_patches"][0] * 196 >= bundle.budgets["crop_max_pixels"] - 784
    decoder = trt["profiles"]["decoder"]
    assert decoder["min"]["past_key.0"][2] == 0 and decoder["max"]["attention_mask"][1] >= decoder["opt"]["attention_mask"][1]
    assert trt["common"]["trt_engine_cache_enable"] is True and "cuda" in bundle.providers


def test_tensorrt_build_says_what_is_missing(bundles):
    from cof_export.tensorrt import build_engines

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the engine build itself needs a GPU run")
    except ImportError:
        pass
    with pytest.raises(SystemExit, match="TensorRT Python package"):
        build_engines(bundles["small"])


def test_parity_gate_blocks_a_bad_bundle(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.THRESHOLDS, "fp32", parity.Thresholds(None, 0.0, 1.0, True))
    out = tmp_path / "gated"
    with pytest.raises(ParityError, match="logits_max_abs"):
        export_bundle(tiny_models["small"], out, ExportConfig(precisions=("fp32",), parity_steps=4, fused=False))
    assert not out.exists() and not list(tmp_path.glob(".gated.partial-*"))


def test_killed_export_leaves_the_old_bundle_intact(bundles, tiny_models, tmp_path):
    out = tmp_path / "bundle"
    old = load_bundle(bundles["small"])
    subprocess.run(["cp", "-r", str(bundles["small"]), str(out)], check=True)
    proc = subprocess.Popen([sys.executable, "-m", "cof_export.cli", "--model", str(tiny_models["small"]),
                             "--out", str(out), "--precision", "fp32", "--no-fused"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".bundle.partial-*/*.onnx")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".bundle.partial-*/*.onnx")), "the export never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivor = load_bundle(out, verify=True)
    assert survivor.bundle_id == old.bundle_id and sorted(survivor.variants) == sorted(old.variants)
    # the next export clears what the killed one left behind
    export_bundle(tiny_models["small"], out, ExportConfig(precisions=("fp32",), parity_steps=2, fused=False))
    assert not list(tmp_path.glob(".bundle.partial-*")) and sorted(load_bundle(out).variants) == ["fp32"]


def test_bundle_errors_name_the_file_and_what_to_do(bundles, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(bundles["small"]), str(broken)], check=True)
    (broken / "decoder.int8.onnx.data").write_bytes(b"\0" * 10)
    with pytest.raises(BundleError, match="decoder.int8.onnx.data .*sha256.*re-copy or re-export"):
        load_bundle(broken, verify=True)
    (broken / "vision.fp32.onnx").unlink()
    with pytest.raises(BundleError, match="vision.fp32.onnx is missing"):
        load_bundle(broken)
    manifest = json.loads((broken / "cof.json").read_text())
    manifest["format_version"] = 99
    (broken / "cof.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(broken)
    manifest["format_version"] = 1
    manifest["graphs"]["embed.fp32"]["file"] = "../../etc/passwd"
    (broken / "cof.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle directory"):
        load_bundle(broken)
    manifest["graphs"]["embed.fp32"]["file"] = "embed.fp32.onnx"
    manifest["graphs"]["decoder.fp32"]["kv_cache"] = "ring"
    (broken / "cof.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="decoder.fp32.onnx: unknown kv_cache 'ring'"):
        load_bundle(broken)
    manifest["graphs"]["decoder.fp32"]["paged"] = True
    (broken / "cof.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="graph 'decoder.fp32' has unknown fields \\['paged'\\].*upgrade cof-edge"):
        load_bundle(broken)


def test_full_ask_on_a_bundle_without_torch(bundles):
    """The lean runtime: a complete ask() on a bundle in an interpreter where torch cannot be imported."""
    from test_lean_runtime import run_python

    done = run_python(f"""
        import numpy as np
        from cof_edge import FocusEngine
        engine = FocusEngine.load({str(bundles['small'])!r})
        result = engine.ask(np.full((300, 500, 3), 90, np.uint8), "What symbol is on the red tag?", max_new_tokens=6)
        assert result.steps[0].new_tokens == 6, result
        assert not any(m.split(".")[0] in {{"torch", "transformers"}} for m in sys.modules)
        print("ok", result.stop_reason, engine.backend.variant)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "ok" and done.stdout.split()[-1] == "int8"


def test_truncated_or_mismatched_graphs_are_named(bundles, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(bundles["small"]), str(broken)], check=True)
    graph = broken / "decoder.int8.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    with pytest.raises(BundleError, match="decoder.int8.onnx could not be loaded by onnxruntime.*truncated or corrupt"):
        FocusEngine.load(broken)
    subprocess.run(["cp", str(bundles["small"] / "decoder.int8.onnx"), str(graph)], check=True)
    manifest = json.loads((broken / "cof.json").read_text())
    manifest["graphs"]["embed.fp32"]["inputs"] = {"token_ids": ["int64", ["batch", "seq"]]}
    (broken / "cof.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="embed.fp32.onnx: its inputs .* do not match cof.json"):
        FocusEngine.load(broken)


def test_provider_fallback_and_kv_placement(caplog):
    from cof_edge.backends.onnx_backend import kv_device
    from cof_edge.providers import choose_providers, session_providers, tensorrt_options

    with caplog.at_level("WARNING", logger="cof_edge"):
        chosen = choose_providers(["tensorrt", "cuda", "cpu"], ["CPUExecutionProvider"])
    assert chosen == ["cpu"] and len(caplog.records) == 1
    assert "tensorrt, cuda not available" in caplog.text and "running on cpu" in caplog.text
    with pytest.raises(ValueError, match="unknown provider"):
        choose_providers(["npu"], ["CPUExecutionProvider"])
    assert choose_providers(["cuda", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["cuda", "cpu"]
    # the binding plan: KV stays on the GPU when a GPU provider runs the decoder, else in host memory
    assert kv_device(["cuda", "cpu"]) == "cuda" and kv_device(["tensorrt", "cuda"]) == "cuda"
    assert kv_device(["cpu"]) == "cpu"
    recorded = {"cuda": {"arena_extend_strategy": "kSameAsRequested"},
                "tensorrt": {"common": {"trt_fp16_enable": True, "trt_engine_cache_path": "trt_cache"},
                             "profiles": {"vision": {"min": {"pixel_patches": [64, 1176]},
                                                     "opt": {"pixel_patches": [256, 1176]},
                                                     "max": {"pixel_patches": [1024, 1176]}}}}}
    providers = session_providers(["tensorrt", "cuda", "cpu"], recorded, "vision", Path("/b"))
    trt_name, trt = providers[0]
    assert trt_name == "TensorrtExecutionProvider" and trt["trt_engine_cache_path"] == "/b/trt_cache"
    assert trt["trt_profile_min_shapes"] == "pixel_patches:64x1176" and trt["trt_fp16_enable"] is True
    assert providers[1] == ("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})
    assert providers[2] == "CPUExecutionProvider"
    assert tensorrt_options({}, "decoder", Path("/b")) == {}
