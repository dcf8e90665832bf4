"""Fused decoders (onnxruntime-genai's model builder, conformed): token-identical to transformers, same contract."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'cof-edge[fused]'): "
                                                "the fused decoders are built with its model builder")

from cof_edge.bundle import load_bundle  # noqa: E402
from cof_edge.engine import FocusEngine  # noqa: E402
from cof_export.graphs import graph_signature, non_standard_ops  # noqa: E402
from cof_export.pipeline import ExportConfig, export_bundle  # noqa: E402

from conftest import photo_like, run_chain  # noqa: E402


@pytest.fixture(scope="module")
def fused_bundle(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "bundle"
    export_bundle(tiny_models["small"], out, ExportConfig(precisions=("fp32",), fused=True, parity_steps=8))
    return out


def test_fused_fp32_variant_is_recorded_gated_and_default(fused_bundle):
    bundle = load_bundle(fused_bundle, verify=True)
    record = bundle.exporter["fused"]["variants"]["fp32-fused"]
    assert record["kept"], record
    assert record["decode_ms_per_token"] < record["plain_decode_ms_per_token"]
    assert bundle.variants["fp32-fused"] == {**bundle.variants["fp32"], "decoder": "decoder.fp32-fused"}
    graph = bundle.graphs["decoder.fp32-fused"]
    assert graph.flavour == "contrib" and graph.precision == "fp32" and graph.kind == "decoder"
    parity = bundle.parity["fp32-fused"]
    assert parity["gate"] == "fp32" and not parity["failures"]
    assert parity["greedy_identical"] and parity["top1_agreement"] == 1.0 and parity["logits_max_abs"] < 1e-4
    assert bundle.default_variant == "fp32-fused"   # only fp32 asked: the cpu default precision, fused


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
