"""ONNX Runtime execution providers: CPU, CUDA, TensorRT, with the options the bundle recorded at export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger("cof_edge")

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


def shape_string(shapes: dict[str, list[int]]) -> str:
    """ORT TensorRT EP's profile syntax: `name:1x2x3,other:4x5`."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def tensorrt_options(recorded: dict, kind: str, bundle_dir: Path) -> dict:
    """TensorRT EP options for one graph kind: the common options plus that graph's profile shapes."""
    options = dict(recorded.get("common", {}))
    if "trt_engine_cache_path" in options:
        options["trt_engine_cache_path"] = str(Path(bundle_dir) / options["trt_engine_cache_path"])
    profile = recorded.get("profiles", {}).get(kind)
    if profile:
        options.update({f"trt_profile_{level}_shapes": shape_string(profile[level]) for level in ("min", "opt", "max")})
    return options


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested provider names that this onnxruntime has, in order; CPU when none is left.

    Unavailable ones are dropped with one log line saying what runs instead.
    """
    unknown = [name for name in requested if name not in PROVIDER_NAMES]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}; choose from {sorted(PROVIDER_NAMES)}")
    chosen = [name for name in requested if PROVIDER_NAMES[name] in available]
    missing = [name for name in requested if name not in chosen]
    if not chosen:
        chosen = ["cpu"]
    if missing:
        log.warning("cof-edge: provider(s) %s not available in this onnxruntime (it has %s); running on %s",
                    ", ".join(missing), ", ".join(sorted(available)), ", ".join(chosen))
    return chosen


def session_providers(chosen: Sequence[str], recorded: dict, kind: str, bundle_dir: Path) -> list:
    """The `providers=` argument of `ort.InferenceSession` for one graph."""
    providers = []
    for name in chosen:
        if name == "tensorrt":
            options = tensorrt_options(recorded.get("tensorrt", {}), kind, bundle_dir)
        else:
            options = recorded.get(name, {})
        providers.append((PROVIDER_NAMES[name], options) if options else PROVIDER_NAMES[name])
    return providers
