"""Image preprocessing for the Qwen2-VL / Qwen2.5-VL vision tower: crop, resize, normalize, patchify.

`preprocess(image_u8, out_hw, box=None)` returns exactly what transformers' `Qwen2VLImageProcessorPil`
returns for the (cropped) image resized to `out_hw`: `pixel_values` float32 [N, 1176] and the grid
(t, h, w) = (1, out_h / 14, out_w / 14). Each row is one 14x14 patch, laid out (C=3, T=2, 14, 14) with
the single frame repeated along T, rows ordered (h/28, w/28, 2, 2) as HF's spatial merge expects.

Two backends give identical results:
- "native": the C++ extension `cof_edge._preprocess` (cpp_ext/preprocess.cpp), multi-threaded, GIL
  released, a bit-exact port of Pillow's uint8 BICUBIC resampler.
- "numpy": Pillow's own `Image.resize(..., BICUBIC)` on the cropped region plus numpy normalize and
  patchify (the reference; used when the extension is not built).

The active backend is `BACKEND`; force one with `backend=` or the env var COF_EDGE_PREPROCESS
(`native`, `numpy` or `auto`). This module never imports torch or transformers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .geometry import smart_resize

__all__ = [
    "BACKEND",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "PATCH_DIM",
    "native_available",
    "native_import_error",
    "normalize_lut",
    "preprocess",
    "resize_u8",
    "target_hw",
]

log = logging.getLogger(__name__)

PATCH = 14
MERGE = 2
TEMPORAL = 2
FACTOR = PATCH * MERGE
PATCH_DIM = 3 * TEMPORAL * PATCH * PATCH  # 1176
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
RESCALE = 1 / 255
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280

BUILD_HINT = (
    "cof_edge: native preprocessing extension not available ({err}); using the numpy/Pillow fallback "
    "(same outputs, ~10x slower at 4K). Build it with a C++17 compiler: `pip install -e .` "
    "(or `python setup.py build_ext --inplace` in the repository)."
)

try:
    from . import _preprocess as _native  # type: ignore[attr-defined]

    _NATIVE_ERROR: str | None = None
except ImportError as exc:  # not built, or built for another interpreter
    _native = None
    _NATIVE_ERROR = f"{type(exc).__name__}: {exc}"

_warned = False


def _pillow_pass_order() -> int:
    """Which pass order the installed Pillow uses for BICUBIC resizes that need both passes.

    Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many pixels
    as the width (older Pillow always runs the horizontal pass first); the two orders round to uint8 at
    different points, so the native resampler must follow the installed Pillow. Probed once on a tiny
    image: 1 = the rule above, 0 = always horizontal first.
    """
    rng = np.random.default_rng(12345)
    im = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    bicubic = Image.Resampling.BICUBIC
    ref = np.asarray(im.resize((9, 4), bicubic))  # dy = 8 > 2 * dx = 2: vertical first under the rule
    h_first = np.asarray(im.resize((9, 12), bicubic).resize((9, 4), bicubic))
    v_first = np.asarray(im.resize((10, 4), bicubic).resize((9, 4), bicubic))
    if np.array_equal(ref, h_first) and not np.array_equal(ref, v_first):
        return 0
    return 1


_PASS_ORDER = _pillow_pass_order()


def native_available() -> bool:
    return _native is not None


def native_import_error() -> str | None:
    """Why the extension did not import (None when it did)."""
    return _NATIVE_ERROR


def _resolve_backend(requested: str | None) -> str:
    choice = (requested or os.environ.get("COF_EDGE_PREPROCESS") or "auto").strip().lower()
    if choice not in ("auto", "native", "numpy"):
        raise ValueError(f"preprocess backend must be 'auto', 'native' or 'numpy', got {choice!r}")
    if choice == "native" and _native is None:
        raise RuntimeError(BUILD_HINT.format(err=_NATIVE_ERROR))
    if choice == "auto":
        return "native" if _native is not None else "numpy"
    return choice


def _initial_backend() -> str:
    try:
        return _resolve_backend(None)
    except ValueError as exc:  # a bad env value must not break the import
        log.warning("cof_edge: ignoring COF_EDGE_PREPROCESS: %s", exc)
        return "native" if _native is not None else "numpy"
    except RuntimeError:  # COF_EDGE_PREPROCESS=native without the extension: fail on use, not import
        return "native"


# The backend `preprocess()` uses when none is passed (env var COF_EDGE_PREPROCESS at import time).
BACKEND: str = _initial_backend()


def _warn_fallback_once(backend: str | None) -> None:
    """One log line on the first fallback, unless numpy was asked for explicitly."""
    global _warned
    choice = (backend or os.environ.get("COF_EDGE_PREPROCESS") or "auto").strip().lower()
    if not _warned and _native is None and choice != "numpy":
        _warned = True
        log.warning(BUILD_HINT.format(err=_NATIVE_ERROR))


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def normalize_lut(mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD) -> np.ndarray:
    """float32 [3, 256]: the value HF produces for each uint8 level and channel.

    Same arithmetic as transformers: `uint8.astype(float64) * (1/255)` cast to float32, then
    `(x - mean) / std` in float32, so a table lookup reproduces it bit for bit.
    """
    levels = (np.arange(256, dtype=np.float64) * RESCALE).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray((levels[None, :] - m) / s, dtype=np.float32)


_LUT = normalize_lut()


def target_hw(
    height: int, width: int, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """(height, width) the processor resizes an image of this size to (smart_resize, multiples of 28)."""
    return smart_resize(height, width, min_pixels, max_pixels)


def _check_image(image_u8: np.ndarray) -> np.ndarray:
    if not isinstance(image_u8, np.ndarray):
        raise TypeError(f"image must be a numpy array (decode with Pillow first), got {type(image_u8).__name__}")
    if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[2] != 3:
        raise ValueError(f"image must be uint8 H x W x 3 (RGB), got {image_u8.dtype} {image_u8.shape}")
    if image_u8.shape[0] == 0 or image_u8.shape[1] == 0:
        raise ValueError(f"image is empty: {image_u8.shape}")
    return np.ascontiguousarray(image_u8)


def _check_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    if box is None:
        return 0, 0, width, height
    if len(box) != 4:
        raise ValueError(f"box must be (x1, y1, x2, y2), got {box!r}")
    vals = []
    for v in box:
        if isinstance(v, (float, np.floating)) and float(v) != int(v):
            raise ValueError(f"box must hold integer pixel coordinates, got {box!r}")
        vals.append(int(v))
    x1, y1, x2, y2 = vals
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(f"box {tuple(vals)} is empty or outside the {width}x{height} image")
    return x1, y1, x2, y2


def _check_out_hw(out_hw, multiple: int) -> tuple[int, int]:
    out_h, out_w = (int(v) for v in out_hw)
    if out_h <= 0 or out_w <= 0 or out_h % multiple or out_w % multiple:
        raise ValueError(f"out_hw must be positive multiples of {multiple}, got {tuple(out_hw)}")
    return out_h, out_w


def _pil_resize(crop: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The reference: what HF's PIL backend does (`PIL.Image.resize(..., BICUBIC)`, reducing_gap None)."""
    if crop.shape[0] == out_h and crop.shape[1] == out_w:
        return crop
    img = Image.fromarray(np.ascontiguousarray(crop))
    return np.asarray(img.resize((out_w, out_h), resample=Image.Resampling.BICUBIC))


def _patchify_numpy(resized: np.ndarray, out: np.ndarray) -> None:
    """Normalize (LUT, bit-exact with HF) and write HF's patch layout into out [N, 1176]."""
    out_h, out_w = resized.shape[:2]
    normed = _LUT[np.arange(3)[None, None, :], resized]  # (H, W, 3) float32
    gh2, gw2 = out_h // FACTOR, out_w // FACTOR
    # (bh, mh, ph, bw, mw, pw, c) -> (bh, bw, mh, mw, c, ph, pw)
    x = normed.reshape(gh2, MERGE, PATCH, gw2, MERGE, PATCH, 3).transpose(0, 3, 1, 4, 6, 2, 5)
    view = out.reshape(gh2, gw2, MERGE, MERGE, 3, TEMPORAL, PATCH, PATCH)
    view[...] = x[:, :, :, :, :, None, :, :]


def _out_buffer(out: np.ndarray | None, n: int) -> np.ndarray:
    if out is None:
        return np.empty((n, PATCH_DIM), dtype=np.float32)
    if out.dtype != np.float32 or out.shape != (n, PATCH_DIM) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, PATCH_DIM)}")
    return out


def resize_u8(
    image_u8: np.ndarray,
    out_hw: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
    *,
    backend: str | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Crop (x1, y1, x2, y2; x2/y2 exclusive) and resize to out_hw with Pillow-exact BICUBIC: uint8 [H, W, 3]."""
    image = _check_image(image_u8)
    x1, y1, x2, y2 = _check_box(box, image.shape[0], image.shape[1])
    out_h, out_w = _check_out_hw(out_hw, 1)
    which = _resolve_backend(backend)
    if which == "native":
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        _native.run(image, image.shape[0], image.shape[1], x1, y1, x2, y2, out_h, out_w, None, out,
                    threads or _default_threads(), _PASS_ORDER)
        return out
    _warn_fallback_once(backend)
    return np.array(_pil_resize(image[y1:y2, x1:x2], out_h, out_w), copy=True)


def preprocess(
    image_u8: np.ndarray,
    out_hw: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
    *,
    threads: int | None = None,
    backend: str | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Crop, resize, rescale, normalize and patchify one RGB image for the vision tower.

    image_u8: uint8 [H, W, 3] RGB (decode with Pillow). out_hw: (height, width), multiples of 28
    (compute it with `target_hw` / `geometry.smart_resize`). box: optional integer crop
    (x1, y1, x2, y2) in image pixels, x2/y2 exclusive; the crop is resized on its own (like giving HF
    the cropped array). threads: worker threads for the native backend (default: available cores, <= 8).
    backend: "native" | "numpy" | "auto" (default: `BACKEND`). out: optional preallocated float32
    [N, 1176] buffer to fill.

    Returns (pixel_values float32 [N, 1176], (1, out_h / 14, out_w / 14)), identical to
    `Qwen2VLImageProcessorPil` on the cropped image with that target size.
    """
    image = _check_image(image_u8)
    x1, y1, x2, y2 = _check_box(box, image.shape[0], image.shape[1])
    out_h, out_w = _check_out_hw(out_hw, FACTOR)
    gh, gw = out_h // PATCH, out_w // PATCH
    result = _out_buffer(out, gh * gw)
    which = _resolve_backend(backend) if backend is not None else BACKEND
    if which == "native" and _native is None:
        raise RuntimeError(BUILD_HINT.format(err=_NATIVE_ERROR))
    if which == "native":
        _native.run(image, image.shape[0], image.shape[1], x1, y1, x2, y2, out_h, out_w, _LUT, result,
                    threads or _default_threads(), _PASS_ORDER)
    else:
        _warn_fallback_once(backend)
        _patchify_numpy(_pil_resize(image[y1:y2, x1:x2], out_h, out_w), result)
    return result, (1, gh, gw)
