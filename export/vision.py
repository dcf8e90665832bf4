"""The Qwen2.5-VL vision tower as one dynamic ONNX graph (``vision.onnx``).

The stock tower (``model.model.visual``) cannot be traced as is: it derives its window permutation, rotary
positions and attention segments from ``grid_thw`` in Python, and its eager/SDPA attention splits the sequence
with ``torch.split(..., cu_seqlens.tolist())`` per window / per image. ``VisionExportWrapper`` reuses every HF
submodule (patch_embed, rotary_pos_emb, each block's norms / qkv / proj / mlp, the merger) and replaces only the
data-dependent parts:

* the host (``cof_edge.vision_host``, numpy) computes position ids, the padded window layout and segment ids;
* windowed layers gather each window's tokens into ``[num_windows, 64]`` (8x8 patches), run attention with a key
  mask (partial windows at the right/bottom edges are padded), and gather back (``window_scatter``);
* full-attention layers run over all patches with a block-diagonal mask (``segment_ids`` equal), so several
  images/frames can share one call exactly as HF's ``cu_seqlens`` splits them; the queries go a block at a time
  through an ONNX ``Scan`` (see below), so no [N, N] tensor is ever built.

Tokens stay in the processor's order throughout (the windows are gathered from it), so the merged output needs no
reverse permutation: row i of ``image_embeds`` is HF's ``pooler_output`` row i.

Graph contract (opset 20, default ONNX domain only)::

    pixel_patches  float32 [num_patches, 1176]
    position_ids   int64   [num_patches, 2]
    window_gather  int64   [num_windows, 64]
    window_mask    bool    [num_windows, 64]
    window_scatter int64   [num_patches]
    segment_ids    int64   [num_patches]
    -> image_embeds float32 [num_tokens, out_hidden]      (num_tokens = num_patches / 4)

The patch dim is exported as the derived dimension ``4 * num_tokens`` (the merger's reshape needs the patch count
to be a multiple of the merge unit; a free ``num_patches`` dim fails that guard); the exporter writes it as
``4*num_tokens`` and ``_rename_dims`` renames it ``num_patches`` (and the output's dim ``num_tokens``).
The window dim is free.

Full-attention memory is bounded for any N: ``_full_attention`` pads the N queries to K * R rows (repeating the
last query), K = ceil(heads * N^2 / ATTENTION_CHUNK_ELEMENTS) and R = ceil(N / K) both computed in the graph from
N, and runs a ``Scan`` over the K blocks. Each step builds its own [R, N] mask from ``segment_ids``, [heads, R, N]
scores, softmax, times V: ~2^24 fp32 scores (64 MB; at least one row, heads * N) whatever N is, freed before the
next step. Small views (heads * N^2 <= 2^24: N <= 2896 with 2 heads, 1024 with 16) are one block, as before, and
the result is exact either way (softmax rows stay whole). The unchunked graph held several [heads, N, N] fp32
tensors: ~14 GB each at 3840x2160 (42,196 patches, 2 heads), ~1.6 GB for a 5k-patch view of the 7B tower (16
heads); the chunked one runs the default model's tower on that 3840x2160 image with ~0.75 GB of peak RSS growth.
The exporter turns ``torch._higher_order_ops.scan`` into ``Scan`` (default domain). Its body is a subgraph, so a
graph rewrite must descend into it: ORT's ``convert_float_to_float16`` appends the Casts around a blocked Softmax
to the main graph, and they must be moved into the body.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch._higher_order_ops import scan

from cof_edge.vision_host import INPUT_NAMES, OUTPUT_NAME, VisionGeometry, feed, vision_inputs

from .graphs import STANDARD_DOMAINS, graph_signature, non_standard_ops
from .subgraphs import all_nodes

GEOMETRY_METADATA_KEY = "cof.vision_geometry"

# Example grids used to trace: two images (so segment ids vary), partial windows on both axes, and every dynamic
# dim distinct from each other and from the static ones (size-1 and coinciding dims get specialised).
EXAMPLE_GRIDS = ((1, 18, 26), (1, 10, 6))
# Full-attention layers hold about this many fp32 scores at once (heads * query rows * patches): 64 MB per
# tensor. Measured at 20,736 patches (2 heads): 2^23 / 2^24 / 2^25 grew peak RSS by 374 / 488 / 755 MB, with run
# times within noise of each other.
ATTENTION_CHUNK_ELEMENTS = 1 << 24


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class VisionExportWrapper(nn.Module):
    """forward(pixel_patches, position_ids, window_gather, window_mask, window_scatter, segment_ids) ->
    image_embeds [num_patches / 4, out_hidden], computed with the HF tower's own submodules."""

    def __init__(self, visual: nn.Module, chunk_elements: int = ATTENTION_CHUNK_ELEMENTS):
        super().__init__()
        self.visual = visual
        cfg = visual.config
        self.num_heads = int(cfg.num_heads)
        self.hidden = int(cfg.hidden_size)
        self.head_dim = self.hidden // self.num_heads
        self.full_layers = frozenset(int(i) for i in cfg.fullatt_block_indexes)
        self.geometry = geometry_from_config(cfg)
        self.chunk_elements = int(chunk_elements)

    def forward(self, pixel_patches, position_ids, window_gather, window_mask, window_scatter, segment_ids):
        v = self.visual
        x = v.patch_embed(pixel_patches)                                      # [N, C]
        cos, sin = v.rotary_pos_emb(x, position_ids)                          # [N, head_dim] each
        cos, sin = cos[:, None, :].float(), sin[:, None, :].float()          # broadcast over heads
        # Masks: True = may attend. Windowed: key slot holds a real token. Full: same image/frame (built per block
        # of queries inside _full_attention, never as an [N, N] tensor).
        window_keys = window_mask[:, None, None, :]                           # [W, 1, 1, 64]
        for i, blk in enumerate(v.blocks):
            h = blk.norm1(x)
            if i in self.full_layers:
                a = self._full_attention(blk.attn, h, cos, sin, segment_ids)
            else:
                a = self._window_attention(blk.attn, h, cos, sin, window_gather, window_keys, window_scatter)
            x = x + a
            x = x + blk.mlp(blk.norm2(x))
        return v.merger(x)                                                    # [N / 4, out_hidden]

    def _qkv(self, attn, h, cos, sin):
        n = h.shape[0]
        q, k, v = attn.qkv(h).reshape(n, 3, self.num_heads, self.head_dim).unbind(1)   # [N, H, D] each
        dtype = q.dtype
        qf, kf = q.float(), k.float()
        q = (qf * cos + _rotate_half(qf) * sin).to(dtype)
        k = (kf * cos + _rotate_half(kf) * sin).to(dtype)
        return q, k, v

    @staticmethod
    def _attend(q, k_t, v, allowed, scale):
        """softmax(q k^T * scale, masked) v with k_t = k^T: [..., Q, D] x [..., D, K] x [..., K, D]."""
        scores = torch.matmul(q, k_t) * scale
        # One Where, no Not. Every query keeps >= 1 key: no all -inf rows.
        scores = torch.where(allowed, scores, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, v)

    def _full_attention(self, attn, h, cos, sin, segment_ids):
        """Exact attention over all N patches (block-diagonal by segment), K blocks of R query rows at a time
        (an ONNX Scan whose trip count K is computed from N in the graph): each step holds [H, R, N] scores /
        probs and an [R, N] mask, where K = ceil(H N^2 / chunk_elements) and R = ceil(N / K), so H * R * N stays
        under chunk_elements + H * N for any N. The queries are padded to K * R rows by repeating the last one
        (a real query: no all-masked row, no NaN); the padded rows are dropped."""
        n = h.shape[0]
        heads, dim = self.num_heads, self.head_dim
        q, k, v = self._qkv(attn, h, cos, sin)                                        # [N, H, D] each
        chunks = (heads * n * n + self.chunk_elements - 1) // self.chunk_elements    # K
        rows = (n + chunks - 1) // chunks                                             # R
        idx = torch.arange(chunks * rows, device=h.device).clamp_max(n - 1)
        q_blocks = q.index_select(0, idx).reshape(chunks, rows, heads, dim).permute(0, 2, 1, 3)  # [K, H, R, D]
        seg_blocks = segment_ids.index_select(0, idx).reshape(chunks, rows)                      # [K, R]
        k_t = k.permute(1, 2, 0)                                                      # [H, D, N], once per layer
        v = v.transpose(0, 1)                                                         # [H, N, D]

        def step(carry, block):
            q_c, seg_c = block
            allowed = (seg_c[:, None] == segment_ids[None, :])[None]                  # [1, R, N]
            return carry.clone(), self._attend(q_c, k_t, v, allowed, attn.scaling)    # [H, R, D]

        carry = torch.zeros((), dtype=q.dtype, device=h.device)                      # scan wants one; unused
        _, o = scan(step, carry, (q_blocks, seg_blocks))                              # [K, H, R, D]
        o = o.permute(0, 2, 1, 3).reshape(chunks * rows, self.hidden)[:n]
        return attn.proj(o)

    def _window_attention(self, attn, h, cos, sin, window_gather, window_keys, window_scatter):
        q, k, v = self._qkv(attn, h, cos, sin)
        n_win, n_slot = window_gather.shape
        qkv = torch.stack((q, k, v), dim=1)                                  # [N, 3, H, D]
        qkv = qkv.index_select(0, window_gather.reshape(-1))                 # one Gather: [W*64, 3, H, D]
        qkv = qkv.reshape(n_win, n_slot, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                       # [W, H, 64, D]
        o = self._attend(q, k.transpose(-1, -2), v, window_keys, attn.scaling)      # [W, H, 64, D]
        o = o.permute(0, 2, 1, 3).reshape(n_win * n_slot, self.hidden)       # padded layout, flat
        return attn.proj(o.index_select(0, window_scatter))                  # back to token order [N, C]


def geometry_from_config(vision_config) -> VisionGeometry:
    c = vision_config
    return VisionGeometry(
        patch_size=int(c.patch_size),
        spatial_merge_size=int(c.spatial_merge_size),
        temporal_patch_size=int(c.temporal_patch_size),
        window_size=int(c.window_size),
        fullatt_block_indexes=tuple(int(i) for i in c.fullatt_block_indexes),
        head_dim=int(c.hidden_size) // int(c.num_heads),
        num_heads=int(c.num_heads),
        in_channels=int(getattr(c, "in_channels", 3)),
    )


def vision_tower(model_or_dir) -> nn.Module:
    """The HF vision tower from a checkpoint directory, a Qwen2_5_VLForConditionalGeneration / Qwen2_5_VLModel,
    or the tower itself."""
    if isinstance(model_or_dir, (str, Path)):
        from transformers import Qwen2_5_VLForConditionalGeneration

        model_or_dir = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_or_dir), dtype=torch.float32)
    m = model_or_dir
    for attr in ("model", "visual"):
        if hasattr(m, "visual") or not hasattr(m, attr):
            break
        m = getattr(m, attr)
    visual = getattr(m, "visual", m)
    if not hasattr(visual, "blocks") or not hasattr(visual, "merger"):
        raise TypeError(f"no Qwen2.5-VL vision tower in {type(model_or_dir).__name__}")
    return visual.eval()


def example_inputs(geometry: VisionGeometry, grids=EXAMPLE_GRIDS, seed: int = 0) -> tuple[torch.Tensor, ...]:
    n = sum(t * h * w for t, h, w in grids)
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((n, geometry.patch_dim)).astype(np.float32)
    host = vision_inputs(np.array(grids), geometry)
    return (torch.from_numpy(pixels),) + tuple(torch.from_numpy(host[name]) for name in INPUT_NAMES[1:])


@dataclass
class VisionExportInfo:
    path: Path
    input_names: list[str]
    input_dtypes: dict[str, str]
    input_shapes: dict[str, list]       # ints for static dims, strings for symbolic ones
    output_name: str
    output_dtype: str
    output_shape: list
    geometry: dict[str, Any]            # for cof.json's vision section
    opset: int
    exporter: str
    export_seconds: float
    file_bytes: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path.name, "inputs": {n: {"dtype": self.input_dtypes[n], "shape": self.input_shapes[n]}
                                                   for n in self.input_names},
                "output": {"name": self.output_name, "dtype": self.output_dtype, "shape": self.output_shape},
                "opset": self.opset, "exporter": self.exporter, "geometry": self.geometry}


def non_default_domain_nodes(model) -> list[str]:
    """Ops outside the default ONNX domain, and any local function left un-inlined."""
    return non_standard_ops(model) + [f"function {f.domain}::{f.name}" for f in model.functions]


def check_contract(model, geometry: VisionGeometry) -> None:
    """Raises if the exported graph does not have the contract's names, dtypes and symbolic dims."""
    inputs, outputs = graph_signature(model)
    expected = {
        "pixel_patches": ("float32", ["P", geometry.patch_dim]),
        "position_ids": ("int64", ["P", 2]),
        "window_gather": ("int64", ["W", geometry.window_tokens]),
        "window_mask": ("bool", ["W", geometry.window_tokens]),
        "window_scatter": ("int64", ["P"]),
        "segment_ids": ("int64", ["P"]),
    }
    if list(inputs) != list(INPUT_NAMES):
        raise AssertionError(f"graph inputs {list(inputs)} != {list(INPUT_NAMES)}")
    symbols: dict[str, str] = {}
    for name, (dtype, dims) in expected.items():
        got_dtype, got_dims = inputs[name]
        if got_dtype != dtype or len(got_dims) != len(dims):
            raise AssertionError(f"{name}: {got_dtype} {got_dims}, expected {dtype} rank {len(dims)}")
        for want, got in zip(dims, got_dims):
            if isinstance(want, str):
                if not isinstance(got, str) or not got:
                    raise AssertionError(f"{name}: dim {got!r} should be symbolic ({want}); it was specialised")
                if symbols.setdefault(want, got) != got:
                    raise AssertionError(f"{name}: dim {got!r} differs from {symbols[want]!r} for {want}")
            elif got != want:
                raise AssertionError(f"{name}: dim {got!r} != {want}")
    if symbols["P"] == symbols["W"]:
        raise AssertionError("patches and windows share one symbolic dim")
    if list(outputs) != [OUTPUT_NAME]:
        raise AssertionError(f"graph outputs {list(outputs)} != [{OUTPUT_NAME}]")
    dtype, dims = outputs[OUTPUT_NAME]
    if dtype != "float32" or len(dims) != 2 or not isinstance(dims[0], str) or not isinstance(dims[1], int):
        raise AssertionError(f"{OUTPUT_NAME}: {dtype} {dims}, expected float32 [symbolic, out_hidden]")
    bad = non_default_domain_nodes(model)
    if bad:
        raise AssertionError(f"nodes outside the default ONNX domain: {sorted(set(bad))[:10]}")


def export_vision(model_dir_or_model, out_path: Path, opset: int = 20, check: bool = True,
                  external_data: bool | None = None,
                  chunk_elements: int = ATTENTION_CHUNK_ELEMENTS) -> VisionExportInfo:
    """Exports the vision tower to ``out_path`` (torch.onnx dynamo exporter) and checks the graph contract.
    ``external_data``: weights in ``<out_path>.data`` beside the graph; None = only when over ~1.8 GB.
    ``chunk_elements``: the full-attention layers' score budget (``VisionExportWrapper``), baked into the graph."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    visual = vision_tower(model_dir_or_model)
    if next(visual.parameters()).dtype != torch.float32:
        visual = visual.float()
    wrapper = VisionExportWrapper(visual, chunk_elements=chunk_elements).eval()
    geo = wrapper.geometry
    args = example_inputs(geo)

    num_tokens = torch.export.Dim("num_tokens", min=1)
    patches = geo.merge_unit * num_tokens
    windows = torch.export.Dim("num_windows", min=1)
    # Keyed AND ordered as the forward's parameters: torch.onnx names the graph's axes by walking this dict in
    # order against the graph inputs (out of order, window dims silently get the patch dim's name).
    axes = {"pixel_patches": patches, "position_ids": patches, "window_gather": windows, "window_mask": windows,
            "window_scatter": patches, "segment_ids": patches}
    dynamic_shapes = {name: {0: axes[name]} for name in INPUT_NAMES}
    param_bytes = sum(p.numel() * p.element_size() for p in visual.parameters())
    external = param_bytes > 1_800_000_000 if external_data is None else bool(external_data)  # protobuf: 2 GB
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], optimize=True, verbose=False,
        )
    program.save(str(out_path), external_data=external)
    seconds = time.perf_counter() - t0

    model = onnx.load(str(out_path), load_external_data=False)
    notes = []
    if model.functions:  # inline any local functions so only default-domain nodes remain
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)
        notes.append("inlined local functions")
    if _decompose_gelu(model):
        notes.append("Gelu (opset 20) rewritten as Div/Erf/Add/Mul for parsers without opset-20 Gelu")
    _drop_unused_initializers(model)  # the exporter leaves one behind with the Scan (ORT warns on every load)
    _rename_dims(model)
    meta = {p.key: p.value for p in model.metadata_props}
    meta[GEOMETRY_METADATA_KEY] = json.dumps(geo.to_dict(), sort_keys=True)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    # Weights were not loaded: external initializers keep pointing at the .data file program.save wrote.
    onnx.save(model, str(out_path))
    if check:
        onnx.checker.check_model(str(out_path)) if external else onnx.checker.check_model(model)
        check_contract(model, geo)

    inputs, outputs = graph_signature(model)
    size = out_path.stat().st_size
    if external and (out_path.parent / (out_path.name + ".data")).exists():
        size += (out_path.parent / (out_path.name + ".data")).stat().st_size
    out_hidden = int(visual.config.out_hidden_size)
    geometry = geo.to_dict()
    geometry.update(hidden_size=int(visual.config.hidden_size), out_hidden_size=out_hidden,
                    depth=len(visual.blocks))
    return VisionExportInfo(
        path=out_path,
        input_names=list(inputs),
        input_dtypes={k: v[0] for k, v in inputs.items()},
        input_shapes={k: v[1] for k, v in inputs.items()},
        output_name=OUTPUT_NAME,
        output_dtype=outputs[OUTPUT_NAME][0],
        output_shape=outputs[OUTPUT_NAME][1],
        geometry=geometry,
        opset=opset,
        exporter=f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        export_seconds=seconds,
        file_bytes=size,
        notes=notes,
    )


def _decompose_gelu(model) -> int:
    """Rewrites every Gelu node (an opset-20 op; TensorRT 8.x parsers do not know it) into elementwise ops:
    approximate='none': 0.5 * x * (1 + Erf(x / sqrt(2))); 'tanh': 0.5 * x * (1 + Tanh(c * (x + 0.044715 x^3))).
    Returns the number of nodes rewritten."""
    from onnx import TensorProto, helper

    graph = model.graph
    new_nodes, count = [], 0
    consts = {}

    def const(value: float) -> str:
        if value not in consts:
            name = f"cof_gelu_const_{len(consts)}"
            graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
            consts[value] = name
        return consts[value]

    for node in graph.node:
        if node.op_type != "Gelu" or node.domain not in STANDARD_DOMAINS:
            new_nodes.append(node)
            continue
        count += 1
        approx = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
        x, y, p = node.input[0], node.output[0], f"{node.name or 'gelu'}_{count}"
        if approx == "tanh":
            new_nodes += [
                helper.make_node("Mul", [x, x], [p + "_x2"]),
                helper.make_node("Mul", [p + "_x2", x], [p + "_x3"]),
                helper.make_node("Mul", [p + "_x3", const(0.044715)], [p + "_c3"]),
                helper.make_node("Add", [x, p + "_c3"], [p + "_in"]),
                helper.make_node("Mul", [p + "_in", const(math.sqrt(2.0 / math.pi))], [p + "_s"]),
                helper.make_node("Tanh", [p + "_s"], [p + "_e"]),
            ]
        else:
            new_nodes += [
                helper.make_node("Div", [x, const(math.sqrt(2.0))], [p + "_s"]),
                helper.make_node("Erf", [p + "_s"], [p + "_e"]),
            ]
        new_nodes += [
            helper.make_node("Add", [p + "_e", const(1.0)], [p + "_1pe"]),
            helper.make_node("Mul", [x, p + "_1pe"], [p + "_xm"]),
            helper.make_node("Mul", [p + "_xm", const(0.5)], [y]),
        ]
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count


def _drop_unused_initializers(model) -> int:
    """Removes main-graph initializers that no node reads, subgraphs included (bodies read outer-scope names)."""
    graph = model.graph
    used = {name for node in all_nodes(graph) for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def _rename_dims(model) -> None:
    """Gives the symbolic dims readable names: the exporter writes derived dims as expressions (e.g.
    '4*num_tokens'); the output's token dim may come out as an expression of it too."""
    # The patch dim: whatever symbol pixel_patches carries; token dim: whatever image_embeds carries.
    patch_sym = model.graph.input[0].type.tensor_type.shape.dim[0]
    out_sym = model.graph.output[0].type.tensor_type.shape.dim[0]
    rename = {}
    if patch_sym.HasField("dim_param"):
        rename[patch_sym.dim_param] = "num_patches"
    if out_sym.HasField("dim_param") and out_sym.dim_param not in rename:
        rename[out_sym.dim_param] = "num_tokens"
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def session_geometry(session) -> VisionGeometry | None:
    meta = session.get_modelmeta().custom_metadata_map
    if GEOMETRY_METADATA_KEY not in meta:
        return None
    return VisionGeometry.from_dict(json.loads(meta[GEOMETRY_METADATA_KEY]))


def make_session(path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_vision_onnx(path_or_session, pixel_values, grid_thw, geometry=None, threads: int | None = None) -> np.ndarray:
    """Runs vision.onnx with onnxruntime on ``pixel_values`` [N, 1176] (all images concatenated, processor order)
    and ``grid_thw`` [n, 3]; returns image_embeds [N / 4, out_hidden] (float32). Geometry defaults to the one
    stored in the graph's metadata."""
    session = path_or_session if hasattr(path_or_session, "run") else make_session(path_or_session, threads)
    if geometry is None:
        geometry = session_geometry(session)
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.detach().cpu().numpy()
    if isinstance(grid_thw, torch.Tensor):
        grid_thw = grid_thw.detach().cpu().numpy()
    (out,) = session.run([OUTPUT_NAME], feed(pixel_values, grid_thw, geometry))
    return out


__all__ = [
    "VisionExportWrapper", "VisionExportInfo", "export_vision", "run_vision_onnx", "make_session",
    "session_geometry", "check_contract", "non_default_domain_nodes", "vision_tower",
    "geometry_from_config", "example_inputs", "EXAMPLE_GRIDS", "GEOMETRY_METADATA_KEY",
]
