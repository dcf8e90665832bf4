"""Fused decoders (onnxruntime-genai's model builder, conformed): token-identical to transformers, same contract."""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'cof-edge[fused]'): "
                                                "the fused decoders are built with its model builder")

from cof_edge.bundle import load_bundle  # noqa: E402
from cof_edge.engine import FocusEngine  # noqa: E402
from cof_export.graphs import graph_signature, non_standard_ops  # noqa: E402
from cof_export.pipeline import ExportConfig, export_bundle  # noqa: E402

from conftest import photo_like, run_chain  # noqa: E402


def timed_at(plain_ms: float, fused_ms: float):
    """A stand-in for `fused.compare_speed`: the keep decision is timed, and a loaded machine (CI beside a training
    run) can flip it; these tests check what the export does with either outcome, the benchmarks measure speed."""
    from cof_export import fused

    timing = lambda ms: fused.DecodeTiming(ms, 1.0, 64, 16)   # noqa: E731
    return lambda plain, candidate, hidden: (timing(plain_ms), timing(fused_ms))


def export_fused(model, out: Path, plain_ms: float, fused_ms: float) -> Path:
    from cof_export import fused

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused, "compare_speed", timed_at(plain_ms, fused_ms))
        export_bundle(model, out, ExportConfig(precisions=("fp32",), fused=True, parity_steps=8))
    return out


@pytest.fixture(scope="module")
def fused_bundle(tiny_models, tmp_path_factory):
    return export_fused(tiny_models["small"], tmp_path_factory.mktemp("fused") / "bundle", 10.0, 5.0)


def test_fused_fp32_variant_is_recorded_gated_and_default(fused_bundle):
    bundle = load_bundle(fused_bundle, verify=True)
    record = bundle.exporter["fused"]["variants"]["fp32-fused"]
    assert record["kept"], record
    assert (record["decode_ms_per_token"], record["plain_decode_ms_per_token"], record["decode_speedup"]) == (5, 10, 2)
    assert bundle.variants["fp32-fused"] == {**bundle.variants["fp32"], "decoder": "decoder.fp32-fused"}
    graph = bundle.graphs["decoder.fp32-fused"]
    assert graph.flavour == "contrib" and graph.precision == "fp32" and graph.kind == "decoder"
    parity = bundle.parity["fp32-fused"]
    assert parity["gate"] == "fp32" and not parity["failures"]
    assert parity["greedy_identical"] and parity["top1_agreement"] == 1.0 and parity["logits_max_abs"] < 1e-4
    assert bundle.default_variant == "fp32-fused"   # only fp32 asked: the cpu default precision, fused


def test_a_fused_decoder_not_measured_faster_is_dropped(tiny_models, tmp_path):
    root = export_fused(tiny_models["small"], tmp_path / "bundle", 10.0, 15.0)
    bundle = load_bundle(root, verify=True)
    record = bundle.exporter["fused"]["variants"]["fp32-fused"]
    assert not record["kept"] and "not faster" in record["reason"]
    assert "fp32-fused" not in bundle.variants and "decoder.fp32-fused" not in bundle.graphs
    assert bundle.default_variant == "fp32" and not list(root.glob("decoder.fp32-fused*"))


def test_compare_speed_times_both_decoders_alike(fused_bundle):
    from cof_export import fused

    bundle = load_bundle(fused_bundle)
    plain, candidate = fused.compare_speed(fused_bundle / bundle.graphs["decoder.fp32"].file,
                                           fused_bundle / bundle.graphs["decoder.fp32-fused"].file,
                                           bundle.text["hidden"], rounds=3)
    assert plain.decode_ms_per_token > 0 and candidate.decode_ms_per_token > 0
    assert (plain.prefill_tokens, plain.decode_tokens) == (candidate.prefill_tokens, candidate.decode_tokens)
    assert candidate.prefill_tokens > 0 and candidate.decode_tokens > 0


def test_fused_decoder_honours_the_decoder_contract(fused_bundle):
    bundle = load_bundle(fused_bundle)
    plain = bundle.graphs["decoder.fp32"]
    fused = bundle.graphs["decoder.fp32-fused"]
    path = fused_bundle / fused.file
    inputs, outputs = graph_signature(path)
    assert (fused.inputs, fused.outputs) == (inputs, outputs)
    assert list(inputs) == list(plain.inputs) and list(outputs) == list(plain.outputs)  # names and order
    for ours, theirs in ((inputs, plain.inputs), (outputs, plain.outputs)):
        for name, (dtype, dims) in ours.items():
            ref_dtype, ref_dims = theirs[name]
            assert dtype == ref_dtype == "float32" or dtype == ref_dtype == "int64", name
            assert len(dims) == len(ref_dims), name
            for dim, ref in zip(dims, ref_dims):   # symbolic where ours is, the same size where ours is fixed
                assert isinstance(dim, str) == isinstance(ref, str), (name, dims, ref_dims)
                if not isinstance(ref, str):
                    assert dim == ref, (name, dims, ref_dims)
    assert inputs["inputs_embeds"][1][:2] == ["batch", "seq"] and inputs["position_ids"][1][0] == 3
    assert outputs["logits"][1] == ["batch", bundle.text["vocab_size"]]    # last token only
    assert "com.microsoft::GroupQueryAttention" in non_standard_ops(path)


def test_fused_bundle_answers_exactly_like_transformers(fused_bundle, tiny_models):
    image = photo_like(517, 333, seed=5)
    runs = {}
    for name, engine in (("ort", FocusEngine.load(fused_bundle, variant="fp32-fused")),
                         ("hf", FocusEngine.from_pretrained(tiny_models["small"]))):
        runs[name] = run_chain(engine, image, max_new_tokens=20)
    assert runs["ort"].token_ids == runs["hf"].token_ids
    assert runs["ort"].result.answer == runs["hf"].result.answer


def test_fused_int8_is_the_builders_fp32_graph_quantized_dynamically(fused_bundle, tiny_models, tmp_path):
    import collections

    import numpy as np
    import onnx

    from cof_export.fused import build_fused_decoder, session

    bundle = load_bundle(fused_bundle)
    text = bundle.text
    out, step = tmp_path / "decoder.int8-fused.onnx", tmp_path / "decoder.int8-fused-step.onnx"
    build_fused_decoder(tiny_models["small"], out, "int8", text["layers"], text["head_dim"], step_out=step)
    nodes = onnx.load(str(out), load_external_data=False).graph.node
    ops = collections.Counter(n.op_type for n in nodes)
    # the layers: quantize_dynamic, not the builder's own (slow to prefill) 8-bit blocks
    assert ops["GroupQueryAttention"] == text["layers"] and ops["MatMulInteger"] == 7 * text["layers"], ops
    # the vocabulary projection (one row per step): weight-only 8-bit blocks, int8 compute
    (head,) = [n for n in nodes if n.op_type == "MatMulNBits"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    assert head.name.startswith("/lm_head/") and attributes["bits"] == 8 and attributes["accuracy_level"] == 4
    assert attributes["N"] == text["vocab_size"] and attributes["block_size"] == 256
    assert graph_signature(out) == graph_signature(fused_bundle / bundle.graphs["decoder.fp32-fused"].file)
    # the step decoder: every MatMul as 8-bit blocks, the same contract
    step_ops = collections.Counter(n.op_type for n in onnx.load(str(step), load_external_data=False).graph.node)
    assert step_ops["MatMulNBits"] == 7 * text["layers"] + 1 and not step_ops["MatMulInteger"], step_ops
    assert graph_signature(step) == graph_signature(out)

    rng = np.random.default_rng(0)
    feeds = {"inputs_embeds": rng.standard_normal((1, 12, text["hidden"]), dtype=np.float32),
             "attention_mask": np.ones((1, 12), np.int64),
             "position_ids": np.broadcast_to(np.arange(12), (3, 1, 12)).copy()}
    feeds.update({f"past_{kind}.{i}": np.zeros((1, text["kv_heads"], 0, text["head_dim"]), np.float32)
                  for i in range(text["layers"]) for kind in ("key", "value")})
    fp32 = session(fused_bundle / bundle.graphs["decoder.fp32-fused"].file).run(None, feeds)[0]
    for graph in (out, step):
        int8 = session(graph).run(None, feeds)[0]
        assert not np.array_equal(int8, fp32)                # quantized for real ...
        assert np.abs(int8 - fp32).max() < 0.05 * np.abs(fp32).max() and int8.argmax() == fp32.argmax()  # ... closely


def test_fused_decoder_writes_kv_in_place_across_buffer_growth(fused_bundle, monkeypatch):
    import numpy as np

    from cof_edge.backends import onnx_backend
    from cof_edge.backends.onnx_backend import OnnxBackend

    bundle = load_bundle(fused_bundle)
    assert bundle.graphs["decoder.fp32-fused"].kv_cache == "in_place"
    assert bundle.graphs["decoder.fp32"].kv_cache == "append"
    monkeypatch.setattr(onnx_backend, "KV_MIN_CAPACITY", 8)
    in_place = OnnxBackend(fused_bundle, variant="fp32-fused").new_session()
    appending_backend = OnnxBackend(fused_bundle, variant="fp32-fused")
    appending_backend.kv_in_place = False          # the same graph, bound the way a plain decoder is
    appending = appending_backend.new_session()
    rng = np.random.default_rng(3)
    start, capacities = 0, []
    for length in (6, 1, 1, 1, 1, 1, 7, 1, 1, 9):   # prompt, decode steps, a zoom turn's chunk, ...: 8 → 16 → 32
        tokens = rng.integers(10, 200, length)
        positions = np.broadcast_to(np.arange(start, start + length), (3, length)).copy()
        ours, theirs = (s.forward(tokens, positions, []) for s in (in_place, appending))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
        start += length
        capacities.append(in_place.capacity)
    assert capacities == [8, 8, 8, 16, 16, 16, 32, 32, 32, 32]
    past = next(iter(in_place.past.values())).numpy()
    assert past.shape[2] == 32 and not past[:, :, start:].any()     # one buffer, written up to the cached length
    assert next(iter(appending.past.values())).numpy().shape[2] == start == 29


class CountingSession:
    """Wraps an ORT session and counts the forwards run through it."""

    def __init__(self, inner):
        self.inner, self.runs = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run_with_iobinding(self, binding):
        self.runs += 1
        return self.inner.run_with_iobinding(binding)


def with_step_graph(fused_bundle, tmp_path, monkeypatch, step_ms: float):
    """A copy of the fused bundle whose fp32-fused variant is offered an 8-bit step graph through the export's own
    `_attach_step_decoder`, timed (monkeypatched) at `step_ms` against the decoder's 10 ms per token."""
    import shutil

    from cof_export import fused
    from cof_export.quantize import QuantSettings, matmuls_8bit

    root = tmp_path / "bundle"
    shutil.copytree(fused_bundle, root)
    bundle = load_bundle(root)
    step_file = "decoder.fp32-fused-step.onnx"
    assert matmuls_8bit(root / bundle.graphs["decoder.fp32-fused"].file, root / step_file,
                        QuantSettings()) == 7 * bundle.text["layers"] + 1
    monkeypatch.setattr(fused, "compare_speed", timed_at(10.0, step_ms))
    record = {}
    fused._attach_step_decoder(root, bundle, "fp32-fused", step_file, bundle.text["hidden"], record)
    return root, bundle, step_file, record["step_decoder"]


def test_step_decoder_runs_the_one_token_steps_on_the_same_kv_buffers(fused_bundle, tmp_path, monkeypatch):
    import numpy as np

    from cof_edge.backends.onnx_backend import OnnxBackend
    from cof_edge.bundle import MANIFEST, BundleError

    root, bundle, _, outcome = with_step_graph(fused_bundle, tmp_path, monkeypatch, step_ms=5.0)
    assert outcome["kept"]
    (root / MANIFEST).write_text(bundle.to_json())
    load_bundle(root, verify=True)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from latency import limits_inputs

    read_per_step = limits_inputs(bundle, root, None, {})["decoder_bytes"]   # what a decode step streams
    assert read_per_step["fp32-fused"] == bundle.graphs["decoder.fp32-fused-step"].bytes
    assert read_per_step["fp32"] == bundle.graphs["decoder.fp32"].bytes

    stepped_backend = OnnxBackend(root, variant="fp32-fused")
    stepped_backend.step_decoder = step_runs = CountingSession(stepped_backend.step_decoder)
    stepped_backend.sessions["decoder"] = prefill_runs = CountingSession(stepped_backend.sessions["decoder"])
    stepped, reference = stepped_backend.new_session(), OnnxBackend(fused_bundle, variant="fp32-fused").new_session()
    rng = np.random.default_rng(4)
    start = 0
    for i, length in enumerate((6, 1, 1, 1, 5, 1)):   # prompt, decode steps, a zoom turn's chunk, a step
        tokens = rng.integers(10, 200, length)
        positions = np.broadcast_to(np.arange(start, start + length), (3, length)).copy()
        ours, theirs = stepped.forward(tokens, positions, []), reference.forward(tokens, positions, [])
        if i == 0:
            np.testing.assert_array_equal(ours, theirs)       # the prefill graph, unchanged
        else:                                                 # 8-bit weights in the steps and the K/V they wrote
            assert not np.array_equal(ours, theirs) and ours.argmax() == theirs.argmax()
            assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()
        start += length
    assert (prefill_runs.runs, step_runs.runs) == (2, 4)
    assert stepped.cached_tokens == start and stepped.capacity == reference.capacity

    bundle.graphs["decoder.fp32-fused-step"].kv_cache = "append"
    with pytest.raises(BundleError, match="same buffers"):
        bundle.check()
    bundle.graphs["decoder.fp32-fused-step"].kv_cache = "in_place"
    bundle.variants["fp32-fused"]["decoder_step"] = "embed.fp32"
    with pytest.raises(BundleError, match="decoder_step graph 'embed.fp32' is not a decoder graph"):
        bundle.check()


@pytest.mark.parametrize("step_ms", [5.0, 15.0])
def test_step_decoder_is_kept_only_when_measured_faster(fused_bundle, tmp_path, monkeypatch, step_ms):
    root, bundle, step_file, outcome = with_step_graph(fused_bundle, tmp_path, monkeypatch, step_ms)
    assert outcome["decode_speedup"] == round(10.0 / step_ms, 3)
    if step_ms < 10.0:
        assert outcome["kept"] and bundle.variants["fp32-fused"]["decoder_step"] == "decoder.fp32-fused-step"
        entry = bundle.graphs["decoder.fp32-fused-step"]
        assert (entry.kind, entry.kv_cache, entry.file) == ("decoder", "in_place", step_file)
        assert outcome["extra_bytes"] == entry.bytes > 0
        bundle.check()
    else:
        assert not outcome["kept"] and "not faster" in outcome["reason"]
        assert "decoder_step" not in bundle.variants["fp32-fused"] and "decoder.fp32-fused-step" not in bundle.graphs
        assert not (root / step_file).exists() and not (root / f"{step_file}.data").exists()
