"""TensorRT: optimization profiles computed from the bundle's budgets, ORT provider options, and engine builds.

Profiles are plain arithmetic (tested everywhere). Engines are built with the TensorRT Python API only where
`tensorrt` imports and a CUDA GPU is present; elsewhere `build_engines` stops with a message naming what is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

from cof_edge.geometry import FACTOR, PATCH

PROMPT_TEXT_TOKENS = 400      # system prompt with the tool schema + question + format instruction, generously
CROP_TURN_TEXT_TOKENS = 64    # markup + format instruction around each crop
TRT_CACHE_DIR = "trt_cache"


def _patches(pixels: int) -> int:
    return max(4, (pixels // (PATCH * PATCH)) // 4 * 4)


def max_windows(max_pixels: int, window_patches: int = 8, max_aspect: int = 200) -> int:
    """The most 8x8-patch windows any image within `max_pixels` can need (thin images need the most)."""
    best, side = 1, FACTOR
    while side * FACTOR <= max_pixels:
        other = (max_pixels // side) // FACTOR * FACTOR
        if other >= FACTOR and max(side, other) / min(side, other) <= max_aspect:
            h, w = side // PATCH, other // PATCH
            best = max(best, math.ceil(h / window_patches) * math.ceil(w / window_patches))
        side += FACTOR
    return best


def max_context_tokens(budgets: dict) -> int:
    """Upper bound of one question's conversation: prompt, global view, every crop turn and every reply."""
    zooms = budgets["max_zooms"]
    return (PROMPT_TEXT_TOKENS + budgets["global_max_pixels"] // (FACTOR * FACTOR)
            + zooms * (CROP_TURN_TEXT_TOKENS + budgets["crop_max_pixels"] // (FACTOR * FACTOR))
            + (zooms + 1) * budgets["max_new_tokens"])


def profiles(budgets: dict, text: dict) -> dict:
    """min/opt/max input shapes per graph kind, for TensorRT optimization profiles."""
    low = min(budgets["global_min_pixels"], budgets["crop_min_pixels"])
    high = max(budgets["global_max_pixels"], budgets["crop_max_pixels"])
    patches = (_patches(low), _patches(budgets["global_max_pixels"]), _patches(high))
    windows = (1, max(1, patches[1] // 64), max_windows(high))
    context = max_context_tokens(budgets)
    prefill_opt = PROMPT_TEXT_TOKENS + budgets["global_max_pixels"] // (FACTOR * FACTOR)
    # One profile tuned for the first prefill (past 0); decode steps (seq 1) and later turns stay within it.
    seq, past, total = (1, prefill_opt, context), (0, 0, context), (1, prefill_opt, context)
    kv = text["kv_heads"], text["head_dim"]

    def shapes(i: int) -> dict:
        decoder = {"inputs_embeds": [1, seq[i], text["hidden"]], "attention_mask": [1, total[i]],
                   "position_ids": [3, 1, seq[i]]}
        for layer in range(text["layers"]):
            for kind in ("key", "value"):
                decoder[f"past_{kind}.{layer}"] = [1, kv[0], past[i], kv[1]]
        return {"vision": {"pixel_patches": [patches[i], 1176], "position_ids": [patches[i], 2],
                           "window_gather": [windows[i], 64], "window_mask": [windows[i], 64],
                           "window_scatter": [patches[i]], "segment_ids": [patches[i]]},
                "embed": {"input_ids": [1, seq[i]]},
                "decoder": decoder}

    by_level = {level: shapes(i) for i, level in enumerate(("min", "opt", "max"))}
    return {kind: {level: by_level[level][kind] for level in by_level} for kind in ("vision", "embed", "decoder")}


def provider_options(target: str, bundle_dir: Path, graphs: dict, budgets: dict, text: dict | None = None) -> dict:
    """Options the runtime passes to the CUDA and TensorRT execution providers (paths relative to the bundle)."""
    options = {"cuda": {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}}
    if text is None:
        return options
    options["tensorrt"] = {
        "common": {"trt_engine_cache_enable": True, "trt_engine_cache_path": TRT_CACHE_DIR,
                   "trt_fp16_enable": target in ("cuda", "tensorrt"), "trt_max_workspace_size": 2 << 30},
        "profiles": profiles(budgets, text),
    }
    return options


def build_engines(bundle_dir: Path, variant: str | None = None) -> dict[str, Path]:
    """Builds a serialized TensorRT engine per graph of a variant, with the bundle's profiles; GPU only."""
    try:
        import tensorrt as trt
    except ImportError:
        raise SystemExit("--target tensorrt needs the TensorRT Python package (NVIDIA's wheels or JetPack): it is "
                         "not importable here. The bundle's ONNX graphs and TensorRT provider options were still "
                         "written; onnxruntime-gpu's TensorRT provider can build engines on the device.") from None
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise SystemExit("--target tensorrt needs a CUDA GPU and driver (libcuda.so.1 not found)") from None
    from cof_edge.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    trt_options = bundle.providers["tensorrt"]
    logger = trt.Logger(trt.Logger.WARNING)
    built = {}
    for kind, entry in bundle.variant(variant).items():
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(Path(bundle_dir) / entry.file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {entry.file}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, trt_options["common"]["trt_max_workspace_size"])
        if trt_options["common"]["trt_fp16_enable"]:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shapes = trt_options["profiles"][kind]
        for name in shapes["min"]:
            profile.set_shape(name, shapes["min"][name], shapes["opt"][name], shapes["max"][name])
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {entry.file}")
        path = Path(bundle_dir) / TRT_CACHE_DIR / f"{Path(entry.file).stem}.engine"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(engine)
        built[kind] = path
    return built
