"""vision.onnx: host precompute (cof_edge.vision_host) vs HF, one dynamic graph vs the HF tower, graph contract."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402
from transformers.vision_utils import (  # noqa: E402
    get_vision_cu_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)

from cof_edge import vision_host  # noqa: E402
from cof_edge.vision_host import INPUT_NAMES, VisionGeometry, feed, vision_inputs, window_layout  # noqa: E402
from cof_export.subgraphs import all_nodes  # noqa: E402
from cof_export.vision import (  # noqa: E402
    ATTENTION_CHUNK_ELEMENTS,
    GEOMETRY_METADATA_KEY,
    VisionExportWrapper,
    check_contract,
    export_vision,
    make_session,
    non_default_domain_nodes,
    run_vision_onnx,
)
from cof_training.tiny import build_tiny_model  # noqa: E402

GEO = VisionGeometry(fullatt_block_indexes=(1, 3), head_dim=16, num_heads=2)
# (width, height) in pixels, multiples of 28. All but 224x224 have partial windows (sides not multiples of 112).
SIZES = [(28, 56), (140, 84), (252, 364), (476, 308), (812, 588), (224, 224)]
TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    model_dir = build_tiny_model(root / "tiny", tokenizer="small", seed=0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    info = export_vision(model, root / "out" / "vision.onnx")
    session = make_session(info.path, threads=1)
    proc = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    return {"model": model, "visual": model.model.visual, "info": info, "session": session, "proc": proc,
            "onnx": onnx.load(str(info.path))}


def _pixels(proc, width, height, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    batch = proc(images=[Image.fromarray(arr)], do_resize=False, return_tensors="pt")
    return batch["pixel_values"], batch["image_grid_thw"]


def _reference(visual, pixel_values, grid_thw) -> np.ndarray:
    with torch.no_grad():
        return visual(pixel_values, grid_thw=grid_thw).pooler_output.numpy()


# ---------------------------------------------------------------- host precompute (numpy) vs HF's Python

HOST_GRIDS = [
    [[1, 4, 2]], [[1, 6, 10]], [[1, 26, 18]], [[1, 22, 34]], [[1, 42, 58]], [[1, 16, 16]], [[1, 8, 32]],
    [[2, 10, 6]], [[1, 16, 8], [3, 6, 10], [1, 2, 2]], [[1, 78, 138]],
]


@pytest.mark.parametrize("grids", HOST_GRIDS, ids=lambda g: "+".join("x".join(map(str, x)) for x in g))
def test_host_matches_hf_window_index_positions_and_seqlens(grids):
    g = torch.tensor(grids)
    layout = window_layout(grids, GEO)
    window_index, cu_window = get_vision_window_index(g, spatial_merge_size=2, window_size=112, patch_size=14)
    np.testing.assert_array_equal(layout.window_index, window_index.numpy())
    np.testing.assert_array_equal(layout.reverse_index, torch.argsort(window_index).numpy())
    np.testing.assert_array_equal(layout.cu_window_seqlens, cu_window.numpy())
    np.testing.assert_array_equal(layout.position_ids, get_vision_position_ids(g, 2).numpy())
    np.testing.assert_array_equal(layout.cu_seqlens, get_vision_cu_seqlens(g).numpy())

    # The padded layout is HF's window order: valid slots read row by row = window_index expanded to patches,
    # each window row holds exactly one HF window (packed first), and scatter inverts gather.
    n = int((g[:, 0] * g[:, 1] * g[:, 2]).sum())
    expanded = (window_index.numpy()[:, None] * 4 + np.arange(4)).reshape(-1)
    np.testing.assert_array_equal(layout.window_gather[layout.window_mask], expanded)
    np.testing.assert_array_equal(layout.window_mask.sum(1), np.diff(cu_window.numpy()))
    assert (layout.window_mask[:, :-1] >= layout.window_mask[:, 1:]).all(), "valid slots must be a prefix"
    np.testing.assert_array_equal(layout.window_gather.reshape(-1)[layout.window_scatter], np.arange(n))
    assert layout.window_gather.shape == (vision_host.num_windows(grids, GEO), 64)
    # Full attention: one segment per frame, as cu_seqlens.
    np.testing.assert_array_equal(np.searchsorted(layout.cu_seqlens, np.arange(n), side="right") - 1,
                                  layout.segment_ids)


def test_host_rotary_matches_hf_rot_pos_emb(exported):
    """The graph turns position_ids into cos/sin with the HF module: same positions -> same embedding."""
    visual = exported["visual"]
    grid = torch.tensor([[1, 22, 34]])
    ours = torch.from_numpy(vision_inputs(grid.numpy(), GEO)["position_ids"])
    x = torch.zeros(int(grid.prod()), 32)
    for a, b in zip(visual.rotary_pos_emb(x, ours), visual.rotary_pos_emb(x, get_vision_position_ids(grid, 2))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_host_inputs_dtypes_shapes_and_validation():
    grids = np.array([[1, 18, 26], [1, 10, 6]])
    inputs = vision_inputs(grids, GEO.to_dict())  # a cof.json-style dict works too
    n, w = 528, 14
    assert {k: (v.dtype, v.shape) for k, v in inputs.items()} == {
        "position_ids": (np.dtype(np.int64), (n, 2)),
        "window_gather": (np.dtype(np.int64), (w, 64)),
        "window_mask": (np.dtype(bool), (w, 64)),
        "window_scatter": (np.dtype(np.int64), (n,)),
        "segment_ids": (np.dtype(np.int64), (n,)),
    }
    assert list(inputs) == list(vision_host.INPUT_NAMES[1:])
    with pytest.raises(ValueError):
        vision_inputs([[1, 5, 6]], GEO)  # odd grid side: not a whole merged token
    with pytest.raises(ValueError):
        feed(np.zeros((10, 1176), np.float32), [[1, 4, 4]], GEO)  # wrong row count
    with pytest.raises(ValueError):
        VisionGeometry(window_size=100)


def test_geometry_from_hf_config_dict(exported):
    d = exported["model"].config.vision_config.to_dict()
    geo = VisionGeometry.from_dict(d)
    assert geo == GEO
    assert geo.window_tokens == 64 and geo.merged_window == 4 and geo.patch_dim == 1176
    assert VisionGeometry.from_dict(json.loads(json.dumps(geo.to_dict()))) == geo


def test_vision_host_is_numpy_only():
    tree = ast.parse(Path(vision_host.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "dataclasses", "typing", "numpy"}, imported


# ---------------------------------------------------------------- one dynamic graph vs the HF tower

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_onnx_matches_hf_tower(exported, size):
    pixel_values, grid_thw = _pixels(exported["proc"], *size)
    ref = _reference(exported["visual"], pixel_values, grid_thw)
    out = run_vision_onnx(exported["session"], pixel_values, grid_thw)
    assert out.shape == ref.shape == (int(grid_thw.prod()) // 4, 64)
    assert np.abs(out - ref).max() <= TOL


def test_onnx_matches_hf_tower_several_images_and_frames(exported):
    """Several images in one call (block-diagonal full attention per image) and a 2-frame grid (per frame)."""
    proc, visual = exported["proc"], exported["visual"]
    parts = [_pixels(proc, 140, 84, seed=1), _pixels(proc, 252, 364, seed=2), _pixels(proc, 56, 56, seed=3)]
    pixel_values = torch.cat([p for p, _ in parts])
    grid_thw = torch.cat([g for _, g in parts])
    ref = _reference(visual, pixel_values, grid_thw)
    out = run_vision_onnx(exported["session"], pixel_values, grid_thw)
    assert np.abs(out - ref).max() <= TOL
    # Each image's rows equal that image encoded alone (no attention leaks across images).
    for (p, g), rows in zip(parts, vision_host.split_embeds(out, grid_thw.numpy())):
        assert np.abs(rows - _reference(visual, p, g)).max() <= TOL

    video = torch.from_numpy(np.random.default_rng(4).standard_normal((2 * 10 * 18, 1176)).astype(np.float32))
    grid = torch.tensor([[2, 10, 18]])
    assert np.abs(run_vision_onnx(exported["session"], video, grid) - _reference(visual, video, grid)).max() <= TOL


def test_window_padding_is_masked(exported):
    """Padding slots must not matter (whatever they point at) and the key mask must: the graph really windows."""
    pixel_values, grid_thw = _pixels(exported["proc"], 252, 364, seed=5)  # partial windows on both axes
    session = exported["session"]
    base = feed(pixel_values.numpy(), grid_thw.numpy())
    ref = session.run(None, base)[0]

    moved = dict(base)
    gather = base["window_gather"].copy()
    pad = ~base["window_mask"]
    gather[pad] = np.random.default_rng(0).integers(0, pixel_values.shape[0], int(pad.sum()))
    moved["window_gather"] = gather
    np.testing.assert_allclose(session.run(None, moved)[0], ref, rtol=0, atol=1e-6)

    unmasked = dict(base)
    unmasked["window_mask"] = np.ones_like(base["window_mask"])
    assert np.abs(session.run(None, unmasked)[0] - ref).max() > 1e-3

    one_segment = dict(base)
    one_segment["segment_ids"] = np.arange(pixel_values.shape[0], dtype=np.int64)  # attend to self only
    assert np.abs(session.run(None, one_segment)[0] - ref).max() > 1e-3


@pytest.mark.parametrize("chunk_elements", [ATTENTION_CHUNK_ELEMENTS, 20_000, 3_000, 1_000])
def test_chunked_full_attention_matches_hf(exported, chunk_elements):
    """The wrapper's full attention, a block of queries at a time, gives HF's result for any number of blocks
    (here 1, 4, 24 and 71 blocks over 188 patches, the queries padded by 0, 0, 4 and 25 rows), with block edges
    cutting through images and frames."""
    visual = exported["visual"]
    grids = np.array([[1, 10, 6], [2, 6, 10], [1, 4, 2]])
    n = int(np.prod(grids, axis=1).sum())
    pixels = torch.from_numpy(np.random.default_rng(8).standard_normal((n, 1176)).astype(np.float32))
    host = vision_inputs(grids, GEO)
    wrapper = VisionExportWrapper(visual, chunk_elements=chunk_elements).eval()
    with torch.no_grad():
        out = wrapper(pixels, *(torch.from_numpy(host[name]) for name in INPUT_NAMES[1:])).numpy()
    assert np.abs(out - _reference(visual, pixels, torch.from_numpy(grids))).max() <= TOL


_PEAK_RSS_RUN = """
import sys, numpy as np, onnxruntime as ort

def status(field):  # bytes
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
inputs = dict(np.load(sys.argv[2]))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
(out,) = session.run(None, inputs)
np.save(sys.argv[3], out)
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak RSS with Linux's /proc")
def test_full_attention_memory_is_bounded(exported, tmp_path):
    """~20k patches in one call (three images, one of them two frames): the graph's peak memory growth stays far
    under one [heads, N, N] fp32 score tensor (what the unchunked full-attention layers held, several times
    over), and the embeddings still equal HF's."""
    grids = np.array([[1, 128, 136], [1, 38, 42], [2, 16, 22]])
    n = int(np.prod(grids, axis=1).sum())                                      # 19,708 patches
    pixels = np.random.default_rng(7).standard_normal((n, 1176)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", **feed(pixels, grids, GEO))
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS_RUN, str(exported["info"].path),
                          str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    growth = int(run.stdout.split()[-1])
    dense_scores = GEO.num_heads * n * n * 4                                  # 3.1 GB
    assert growth < dense_scores / 4, f"peak RSS grew {growth / 2**20:.0f} MiB running {n} patches"
    ref = _reference(exported["visual"], torch.from_numpy(pixels), torch.from_numpy(grids))
    assert np.abs(np.load(tmp_path / "out.npy") - ref).max() <= TOL


def test_fp16_conversion_runs(exported, tmp_path):
    """onnxruntime's convert_float_to_float16 puts the Casts around the Scan body's Softmax into the main graph;
    cof_export moves them into the body, or ORT rejects the graph."""
    from cof_export.quantize import QuantSettings, quantize_graph

    out = tmp_path / "vision.fp16.onnx"
    quantize_graph("fp16", exported["info"].path, out, "vision", QuantSettings())
    pixel_values, grid_thw = _pixels(exported["proc"], 252, 364, seed=9)
    ref = _reference(exported["visual"], pixel_values, grid_thw)
    got = run_vision_onnx(make_session(out, threads=1), pixel_values, grid_thw)
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()


# ---------------------------------------------------------------- graph contract

def test_graph_inputs_and_output_are_symbolic(exported):
    model = exported["onnx"]
    dims = {vi.name: vi.type.tensor_type.shape.dim for vi in model.graph.input}
    assert list(dims) == ["pixel_patches", "position_ids", "window_gather", "window_mask", "window_scatter",
                          "segment_ids"]
    patch_dims = [dims[n][0] for n in ("pixel_patches", "position_ids", "window_scatter", "segment_ids")]
    window_dims = [dims[n][0] for n in ("window_gather", "window_mask")]
    for d in patch_dims + window_dims:
        assert d.HasField("dim_param") and d.dim_param and not d.HasField("dim_value")
    assert {d.dim_param for d in patch_dims} == {"num_patches"}
    assert {d.dim_param for d in window_dims} == {"num_windows"}
    assert dims["pixel_patches"][1].dim_value == 1176 and dims["window_gather"][1].dim_value == 64
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    assert types == {"pixel_patches": onnx.TensorProto.FLOAT, "position_ids": onnx.TensorProto.INT64,
                     "window_gather": onnx.TensorProto.INT64, "window_mask": onnx.TensorProto.BOOL,
                     "window_scatter": onnx.TensorProto.INT64, "segment_ids": onnx.TensorProto.INT64}
    (out,) = model.graph.output
    assert out.name == "image_embeds" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    odims = out.type.tensor_type.shape.dim
    assert odims[0].dim_param == "num_tokens" and odims[1].dim_value == 64
    info = exported["info"]
    assert info.input_shapes["pixel_patches"] == ["num_patches", 1176]
    assert info.output_shape == ["num_tokens", 64] and info.opset == 20
    assert any(o.domain in ("", "ai.onnx") and o.version == 20 for o in model.opset_import)


def test_check_contract_catches_a_specialised_dim(exported):
    model = copy.deepcopy(exported["onnx"])
    check_contract(model, GEO)  # the real graph passes
    d = model.graph.input[3].type.tensor_type.shape.dim[0]  # window_mask's windows dim
    d.dim_value = 14
    with pytest.raises(AssertionError, match="specialised"):
        check_contract(model, GEO)


def test_only_default_onnx_domain(exported):
    model = exported["onnx"]
    bad = [(n.domain, n.op_type) for n in all_nodes(model.graph) if n.domain not in ("", "ai.onnx")]
    assert not bad, bad
    assert not model.functions
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    ops = {n.op_type for n in all_nodes(model.graph)}
    assert "Gelu" not in ops and "GatherND" not in ops and "Erf" in ops  # TensorRT-8-parsable forms
    assert non_default_domain_nodes(model) == []
    onnx.checker.check_model(model)


def test_geometry_is_stored_in_the_graph(exported):
    meta = {p.key: p.value for p in exported["onnx"].metadata_props}
    assert VisionGeometry.from_dict(json.loads(meta[GEOMETRY_METADATA_KEY])) == GEO
    geo = exported["info"].geometry
    assert geo["fullatt_block_indexes"] == [1, 3] and geo["out_hidden_size"] == 64 and geo["window_tokens"] == 64


def test_external_data_export_runs(exported, tmp_path):
    """The 7B tower (~2.7 GB fp32) is saved with its weights beside the graph: that path must load and match."""
    info = export_vision(exported["model"], tmp_path / "vision.onnx", external_data=True)
    param_bytes = sum(p.numel() * 4 for p in exported["visual"].parameters())
    assert (tmp_path / "vision.onnx.data").stat().st_size >= param_bytes // 2  # the big matrices live there
    pixel_values, grid_thw = _pixels(exported["proc"], 140, 84, seed=6)
    out = run_vision_onnx(info.path, pixel_values, grid_thw, threads=1)
    assert np.abs(out - _reference(exported["visual"], pixel_values, grid_thw)).max() <= TOL
