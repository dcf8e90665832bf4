"""`export_bundle`: a Hugging Face Qwen2.5-VL checkpoint becomes a parity-checked cof-edge bundle.

Stages: load → export fp32 graphs (embed, vision, decoder) → quantize the requested precisions → write cof.json
and tokenizer.json → parity gate per variant → atomic swap into place. Everything is written into a temporary
sibling directory first, so an interrupted export leaves no half bundle behind and an existing bundle intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from cof_edge.bundle import MANIFEST, Bundle, GraphEntry, file_sha256, load_bundle
from cof_edge.options import AskOptions
from cof_edge.protocol import SpecialIds

from . import fused, parity
from .graphs import TextGeometry, export_decoder, export_embed, graph_signature, non_standard_ops
from .quantize import SCHEMES, QuantSettings, converted_kinds, quantize_graph
from .tensorrt import provider_options
from .vision import export_vision

BUDGET_FIELDS = ("global_min_pixels", "global_max_pixels", "crop_min_pixels", "crop_max_pixels", "max_zooms",
                 "max_new_tokens", "system_prompt")
BUDGETS_FILE = "cof_budgets.json"  # optional, beside a checkpoint: the budgets its model was trained with


class ParityError(RuntimeError):
    """A variant missed its precision's parity thresholds; nothing was written (use force to write it marked)."""


@dataclass
class ExportConfig:
    precisions: tuple[str, ...] = ("fp32", "int8")
    vision_precision: str | None = None    # fp32 | fp16; default by target: fp32 on cpu, fp16 on GPU targets
    target: str = "cpu"                     # cpu | cuda | tensorrt
    force: bool = False
    parity_steps: int = 16
    quant: QuantSettings = field(default_factory=QuantSettings)
    budgets: dict[str, int | str] = field(default_factory=dict)   # overrides of the checkpoint's / AskOptions' budgets
    default_variant: str | None = None
    fused: bool = True                      # cpu target: also build ORT-fused decoders (export/fused.py), kept if faster
    step_decoder: bool = True               # with int8-fused: a one-token step decoder beside it, kept if faster

    def __post_init__(self):
        unknown = [p for p in self.precisions if p not in SCHEMES]
        if unknown:
            raise ValueError(f"unknown precision(s) {unknown}; choose from {sorted(SCHEMES)}")
        if self.target not in ("cpu", "cuda", "tensorrt"):
            raise ValueError(f"unknown target {self.target!r}; choose cpu, cuda or tensorrt")
        if self.vision_precision is None:
            self.vision_precision = "fp32" if self.target == "cpu" else "fp16"
        if self.vision_precision not in ("fp32", "fp16"):
            raise ValueError(f"the vision encoder exports as fp32 or fp16, not {self.vision_precision!r}")
        if "fp32" not in self.precisions:
            self.precisions = ("fp32", *self.precisions)  # the reference every other precision is gated against
        unknown_budgets = sorted(set(self.budgets) - set(BUDGET_FIELDS))
        if unknown_budgets:
            raise ValueError(f"unknown budget(s) {unknown_budgets}; known: {BUDGET_FIELDS}")


def export_bundle(model_dir: str | Path, out_dir: str | Path, config: ExportConfig | None = None,
                  progress=None) -> Bundle:
    """Writes the bundle to `out_dir` (atomically) and returns its manifest. `progress(stage)` is told each stage."""
    import torch

    from cof_edge.backends.onnx_backend import OnnxBackend
    from cof_edge.backends.transformers_backend import TransformersBackend

    config = config or ExportConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    say = progress or (lambda stage: None)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    _remove_stale_partials(out_dir)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    try:
        say("load checkpoint")
        reference = TransformersBackend(model_dir)
        model = reference.model
        say("export fp32 graphs")
        graphs = _export_fp32(model, staging)
        conversions = [(kind, p) for p in config.precisions for kind in converted_kinds(p, config.quant)]
        if config.vision_precision != "fp32":
            conversions.append(("vision", config.vision_precision))
        for kind, precision in conversions:
            say(f"quantize {kind} {precision}")
            graph_id = f"{kind}.{precision}"
            quantize_graph(precision, staging / graphs[f"{kind}.fp32"].file, staging / f"{graph_id}.onnx", kind,
                           config.quant)
            graphs[graph_id] = _entry(staging, f"{graph_id}.onnx", kind, precision)
        # A variant is named by its decoder precision; the vision encoder's precision is chosen apart.
        variants = {p: {"embed": f"embed.{p}" if "embed" in converted_kinds(p, config.quant) else "embed.fp32",
                        "vision": f"vision.{config.vision_precision}",
                        "decoder": f"decoder.{p}"} for p in config.precisions}
        shutil.copyfile(model_dir / "tokenizer.json", staging / "tokenizer.json")
        budgets, text = _budgets(model_dir, config), vars(TextGeometry.from_model(model)).copy()
        bundle = Bundle(model_name=model_dir.name, special_tokens=_special_tokens(reference),
                        chat_template=_chat_template(model_dir), budgets=budgets,
                        vision=graphs.pop("_vision_geometry"), text=text,
                        graphs={k: v for k, v in graphs.items()}, variants=variants,
                        default_variant=config.default_variant or _default_variant(config),
                        providers=provider_options(config.target, staging, graphs, budgets, text),
                        exporter={"torch": torch.__version__, "onnx": onnx.__version__, "opset": 20,
                                  "target": config.target, "vision_precision": config.vision_precision,
                                  "random_weights": (model_dir / "tiny_spec.json").is_file(),
                                  "quant": vars(config.quant)})
        bundle.check()
        (staging / MANIFEST).write_text(bundle.to_json())
        missed = {}
        for variant in variants:
            say(f"parity {variant}")
            candidate = OnnxBackend(staging, variant=variant)
            measured = parity.compare(reference, candidate, steps=config.parity_steps)
            gate = _gate_precision(bundle, variant)
            measured["gate"] = gate
            measured["thresholds"] = parity.thresholds_record(gate)
            measured["failures"] = parity.failures(measured, gate)
            bundle.parity[variant] = measured
            if measured["failures"]:
                missed[variant] = measured["failures"]
        if missed and not config.force:
            raise ParityError(f"parity gate failed, nothing written: {missed} (use --force to write it anyway, "
                              f"marked as forced in {MANIFEST})")
        if config.fused and config.target == "cpu":  # fused decoders: kept only when faster and gated (fused.py)
            missed.update(fused.add_fused_variants(model_dir, staging, bundle, reference, config, say))
        bundle.forced = bool(missed)
        bundle.exporter["seconds"] = round(time.perf_counter() - started, 2)
        (staging / MANIFEST).write_text(bundle.to_json())
        load_bundle(staging, verify=True)
        say("write")
        _swap_into_place(staging, out_dir)
        return bundle
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_fp32(model, staging: Path) -> dict:
    export_embed(model, staging / "embed.fp32.onnx")
    info = export_vision(model, staging / "vision.fp32.onnx")
    export_decoder(model, staging / "decoder.fp32.onnx")
    graphs = {f"{kind}.fp32": _entry(staging, f"{kind}.fp32.onnx", kind, "fp32")
              for kind in ("embed", "vision", "decoder")}
    graphs["_vision_geometry"] = info.geometry
    return graphs


def _entry(root: Path, file: str, kind: str, precision: str, kv_cache: str = "append") -> GraphEntry:
    path = root / file
    data_files = {name: file_sha256(root / name) for name in external_data_files(path)}
    for name in [file, *data_files]:
        os.chmod(root / name, 0o644)
    inputs, outputs = graph_signature(path)
    flavour = "standard" if not non_standard_ops(path) else "contrib"
    size = path.stat().st_size + sum((root / name).stat().st_size for name in data_files)
    return GraphEntry(file=file, kind=kind, precision=precision, sha256=file_sha256(path), bytes=size,
                      data_files=data_files, flavour=flavour, inputs=inputs, outputs=outputs, kv_cache=kv_cache)


def external_data_files(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations |= {entry.value for entry in tensor.external_data if entry.key == "location"}
    return sorted(locations)


def _special_tokens(reference) -> dict[str, int]:
    return vars(SpecialIds.from_tokenizer(reference.tokenizer)).copy()


def _chat_template(model_dir: Path) -> str:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("chat_template", "") or ""
    return ""


def _budgets(model_dir: Path, config: ExportConfig) -> dict[str, int | str]:
    defaults = AskOptions()
    budgets = {name: getattr(defaults, name) for name in BUDGET_FIELDS}
    if (model_dir / BUDGETS_FILE).is_file():
        trained = json.loads((model_dir / BUDGETS_FILE).read_text())
        budgets.update({k: v for k, v in trained.items() if k in BUDGET_FIELDS})
    budgets.update(config.budgets)
    AskOptions(**budgets)  # validates
    return budgets


def _gate_precision(bundle: Bundle, variant: str) -> str:
    """A variant is held to the thresholds of its least exact graph (fp32 < fp16 < int8 < int4)."""
    order = ("fp32", "fp16", "int8", "int4")
    return max((graph.precision for graph in bundle.variant(variant).values()), key=order.index)


def _default_variant(config: ExportConfig) -> str:
    preference = {"cpu": ("int8", "fp32"), "cuda": ("fp16", "int4", "fp32"), "tensorrt": ("fp16", "fp32")}
    return next(p for p in preference[config.target] if p in config.precisions)


def _remove_stale_partials(out_dir: Path) -> None:
    """Staging directories left by exports that were killed (their process is gone)."""
    for leftover in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replaces out_dir by staging; at every instant one complete bundle sits at out_dir (or none before)."""
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a cof-edge bundle: choose another --out")
    previous = out_dir.parent / f".{out_dir.name}.previous-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, previous)
    os.replace(staging, out_dir)
    shutil.rmtree(previous, ignore_errors=True)
