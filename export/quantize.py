"""Precisions: each scheme writes its weights with onnxruntime's own tools and says how the result is run.

- int8: `quantize_dynamic` (MatMul weights, and the embedding Gather), standard ONNX ops; CPU. The fused int8
  decoder (export/fused.py) has its vocabulary projection as 8-bit `MatMulNBits` (`vocab_projection_8bit`), and its
  one-token step decoder every MatMul (`matmuls_8bit`).
- int4: weight-only `MatMulNBits` (block size configurable), an onnxruntime contrib op; CPU and CUDA.
- fp16: `convert_float_to_float16` with LayerNorm/RMSNorm, RoPE (Cos/Sin) and Softmax paths kept in fp32, where
  fp16 overflows; inputs and outputs stay fp32. For GPU targets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from .subgraphs import subgraphs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantSettings:
    int4_block_size: int = 32
    int4_accuracy_level: int | None = 4   # int8 compute for MatMulNBits on CPU
    int8_per_channel: bool = True
    # quantize_dynamic's int8 Gather is per-tensor: on our probes it moved top-1 (0.91 vs 1.0 with fp32 embeddings),
    # so the embedding table stays fp32 unless asked; it is a lookup (memory), not compute.
    int8_embeddings: bool = False
    # Fused int8 decoders: weight-only 8-bit blocks along K for the vocabulary projection and the step decoder.
    int8_block_size: int = 256


@dataclass(frozen=True)
class Scheme:
    name: str
    write: Callable[[Path, Path, str, QuantSettings], None] | None  # (fp32 graph, out, kind, settings)
    flavour: str            # standard: ONNX-domain ops only; contrib: needs onnxruntime
    runs_on: tuple[str, ...]


# Ops whose fp16 arithmetic overflows or loses too much in norms, rotary embeddings and attention probabilities.
FP16_KEEP_FP32 = ["Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div", "Cos", "Sin", "Softmax", "Range",
                  "LayerNormalization", "SimplifiedLayerNormalization", "Erf", "Exp"]


def _int8(source: Path, out: Path, kind: str, settings: QuantSettings) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["Gather"] if kind == "embed" else ["MatMul"]
    quantize_dynamic(str(source), str(out), op_types_to_quantize=ops, per_channel=settings.int8_per_channel,
                     weight_type=QuantType.QInt8, use_external_data_format=True,
                     extra_options={"EnableSubgraph": False, "MatMulConstBOnly": True})


def _int4(source: Path, out: Path, kind: str, settings: QuantSettings) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=settings.int4_block_size,
                                     is_symmetric=True, accuracy_level=settings.int4_accuracy_level,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    _save(quantizer.model.model, out)


def _fp16(source: Path, out: Path, kind: str, settings: QuantSettings) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    _save(_move_casts_into_subgraphs(model), out)


def _move_casts_into_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`convert_float_to_float16` appends the Casts around kept-fp32 nodes to the MAIN graph even when the node sits
    in a Scan/Loop/If body (the vision graph's chunked full attention), which ORT rejects: move each such Cast into
    the body that produces its input, then restore topological order there."""
    main = model.graph
    main_names = ({i.name for i in main.input} | {t.name for t in main.initializer}
                  | {o for n in main.node for o in n.output})
    owners = {}
    for g in subgraphs(main):
        owners.update({o: g for n in g.node for o in n.output})
        owners.update({i.name: g for i in g.input})
    keep = []
    for node in main.node:
        source = node.input[0] if node.input else ""
        if node.op_type == "Cast" and source not in main_names and source in owners:
            owners[source].node.append(node)
        else:
            keep.append(node)
    del main.node[:]
    main.node.extend(keep)
    for g in subgraphs(main):
        _topological_sort(g)
    return model


def _topological_sort(graph: onnx.GraphProto) -> None:
    local = {o for n in graph.node for o in n.output}
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(not i or i not in local or i in ready for i in n.input)]
        for n in pending:
            if n not in rest:
                ordered.append(n)
                ready.update(n.output)
        if len(rest) == len(pending):
            raise ValueError(f"graph {graph.name!r} has a cycle")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _save(model: onnx.ModelProto, out: Path) -> None:
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
              location=out.name + ".data", size_threshold=1024)


SCHEMES = {
    "fp32": Scheme("fp32", None, "standard", ("cpu", "cuda", "tensorrt")),
    "int8": Scheme("int8", _int8, "standard", ("cpu",)),
    "int4": Scheme("int4", _int4, "contrib", ("cpu", "cuda")),
    "fp16": Scheme("fp16", _fp16, "standard", ("cuda", "tensorrt")),
}

def converted_kinds(precision: str, settings: QuantSettings) -> tuple[str, ...]:
    """The text graphs a decoder precision converts; the vision encoder's precision is chosen apart (fp32/fp16)."""
    if precision == "fp32":
        return ()
    if precision == "int8":
        return ("embed", "decoder") if settings.int8_embeddings else ("decoder",)
    if precision == "int4":
        return ("decoder",)
    return ("embed", "decoder")


VOCAB_PROJECTION = "/lm_head/"   # onnxruntime-genai's builder names the vocabulary projection's MatMul so


def matmuls_8bit(source: Path, out: Path, settings: QuantSettings, prefix: str = "") -> int:
    """Writes `source` with its MatMuls named `prefix`* (all, by default) as weight-only 8-bit `MatMulNBits`
    (symmetric blocks of `int8_block_size` along K, int8 compute: accuracy level 4) and every other MatMul left
    float; returns how many it converted. At one row per call 8-bit MatMulNBits streams the weights faster than
    quantize_dynamic's DynamicQuantizeMatMul; at hundreds of rows (prefill) it is 1.5-1.9x slower."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"]
    chosen = [name for name in matmuls if name.startswith(prefix)]
    if chosen:
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=settings.int8_block_size, is_symmetric=True,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",),
                                         nodes_to_exclude=[name for name in matmuls if name not in chosen])
        quantizer.process()
        model = quantizer.model.model
    _save(model, out)
    return len(chosen)


def vocab_projection_8bit(source: Path, out: Path, settings: QuantSettings) -> None:
    """Writes `source` with only its vocabulary projection as 8-bit `MatMulNBits` (`matmuls_8bit`), the rest left
    float for `quantize_dynamic`. For fused decoders, whose builder prunes the projection to the last position: it
    multiplies one row per step, prefill or decode (qwen300m's 155 MB projection here, one thread: 5.2 vs 9.3 ms;
    whole decode step at a 530-token context: 17.0 vs 22.8 ms/token)."""
    if not matmuls_8bit(source, out, settings, prefix=VOCAB_PROJECTION):
        raise ValueError(f"{source} has no MatMul named {VOCAB_PROJECTION}*: not an onnxruntime-genai decoder graph")


def quantize_graph(precision: str, source: Path, out: Path, kind: str, settings: QuantSettings) -> None:
    scheme = SCHEMES[precision]
    if scheme.write is None:
        raise ValueError(f"{precision} is the export precision itself; nothing to quantize")
    scheme.write(source, out, kind, settings)
