"""The text-side graphs: `embed` (input_ids → inputs_embeds) and `decoder` (KV cache in, last-token logits out).

Wrapper modules around the transformers model, exported with `torch.onnx.export(dynamo=True)` at opset 20.
A size-1 dimension is silently specialised by the exporter, so the examples use batch 2 and distinct sizes, and
`assert_dynamic` checks the written graph (DESIGN §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch.export import Dim
from transformers import DynamicCache

from .subgraphs import all_nodes

OPSET = 20
STANDARD_DOMAINS = {"", "ai.onnx"}


@dataclass(frozen=True)
class TextGeometry:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    mrope_section: list[int]
    rope_theta: float
    max_position_embeddings: int

    @classmethod
    def from_model(cls, model) -> "TextGeometry":
        cfg = model.config.text_config
        rope = getattr(cfg, "rope_parameters", None) or {}
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads,
                   kv_heads=cfg.num_key_value_heads, head_dim=head_dim, vocab_size=cfg.vocab_size,
                   mrope_section=list(rope.get("mrope_section", [])), rope_theta=float(rope.get("rope_theta", 0.0)),
                   max_position_embeddings=int(cfg.max_position_embeddings))

    def kv_names(self, prefix: str) -> list[str]:
        return [f"{prefix}_{kind}.{layer}" for layer in range(self.layers) for kind in ("key", "value")]


class EmbedWrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class DecoderWrapper(torch.nn.Module):
    """inputs_embeds [B,S,H], attention_mask [B,P+S], position_ids [3,B,S], past K/V → logits [B,V], present K/V."""

    def __init__(self, model):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.text_config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, cache=cache, use_cache=True)
        # A MatMul (not Gemm) so that the int8 and int4 quantizers take the vocabulary projection too.
        logits = torch.matmul(out.last_hidden_state[:, -1], self.lm_head.weight.t())
        presents = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (logits, *presents)


def export_embed(model, path: Path) -> None:
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.long)
    batch, seq = Dim("batch", min=1, max=1024), Dim("seq", min=1, max=1 << 20)
    _export(EmbedWrapper(model), (ids,), path, ["input_ids"], ["inputs_embeds"],
            {"input_ids": {0: batch, 1: seq}})
    assert_dynamic(path, {"input_ids": [0, 1]})


def export_decoder(model, path: Path) -> None:
    geo = TextGeometry.from_model(model)
    batch_size, seq_len, past_len = 2, 5, 3
    dtype = next(model.parameters()).dtype
    embeds = torch.randn(batch_size, seq_len, geo.hidden, dtype=dtype)
    mask = torch.ones(batch_size, past_len + seq_len, dtype=torch.long)
    positions = torch.arange(past_len, past_len + seq_len).view(1, 1, -1).expand(3, batch_size, -1).contiguous()
    past = tuple(torch.randn(batch_size, geo.kv_heads, past_len, geo.head_dim, dtype=dtype)
                 for _ in range(2 * geo.layers))
    batch, seq, past_dim = Dim("batch", min=1, max=1024), Dim("seq", min=1, max=1 << 20), Dim("past", min=0, max=1 << 20)
    shapes = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: Dim.AUTO},
              "position_ids": {1: batch, 2: seq}, "past": tuple({0: batch, 2: past_dim} for _ in past)}
    names_in = ["inputs_embeds", "attention_mask", "position_ids", *geo.kv_names("past")]
    names_out = ["logits", *geo.kv_names("present")]
    _export(DecoderWrapper(model), (embeds, mask, positions, *past), path, names_in, names_out, shapes)
    _rename_dim(path, "attention_mask", 1, "total")
    dynamic = {"inputs_embeds": [0, 1], "attention_mask": [0, 1], "position_ids": [1, 2]}
    dynamic.update({name: [0, 2] for name in geo.kv_names("past")})
    assert_dynamic(path, dynamic)


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> None:
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(str(path), external_data=True)


def _rename_dim(path: Path, input_name: str, axis: int, new_name: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name == input_name:
            dim = value.type.tensor_type.shape.dim[axis]
            old = dim.dim_param
            dim.dim_param = new_name
            break
    else:
        raise KeyError(input_name)
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if old and dim.dim_param == old:
                dim.dim_param = new_name
    onnx.save(model, str(path))


def _model(model_or_path) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return onnx.load(str(model_or_path), load_external_data=False)


def graph_signature(model_or_path) -> tuple[dict[str, list], dict[str, list]]:
    """{name: [dtype, dims]} for the graph's inputs and outputs; symbolic dims as their names."""
    model = _model(model_or_path)

    def describe(values):
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            out[value.name] = [onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, dims]
        return out

    return describe(model.graph.input), describe(model.graph.output)


def assert_dynamic(path: Path, expected: dict[str, list[int]]) -> None:
    """Fails if an axis that must stay dynamic was specialised to the example's size at export."""
    inputs, _ = graph_signature(path)
    for name, axes in expected.items():
        dims = inputs[name][1]
        fixed = [axis for axis in axes if not isinstance(dims[axis], str)]
        if fixed:
            raise AssertionError(f"{path.name}: input {name} has fixed dims at axes {fixed} ({dims}); "
                                 f"the exporter specialised them")


def non_standard_ops(model_or_path) -> list[str]:
    """Ops outside the standard ONNX domain (TensorRT's parser takes only standard ops)."""
    model = _model(model_or_path)
    found = {f"{node.domain}::{node.op_type}" for node in all_nodes(model.graph) if node.domain not in STANDARD_DOMAINS}
    for function in model.functions:
        found |= {f"{node.domain}::{node.op_type}" for node in function.node if node.domain not in STANDARD_DOMAINS}
    return sorted(found)
