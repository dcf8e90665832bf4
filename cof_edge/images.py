"""Getting pixels in and views out: decoding stays in Pillow; the engine works on upright RGB images."""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .geometry import View

RESAMPLE = Image.Resampling.BICUBIC  # what the HF Qwen2-VL image processor resizes with


def load_image(image) -> Image.Image:
    """A path, PIL image or HxWx3 (or HxW) uint8 array → an upright RGB PIL image (EXIF rotation applied)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"array images must be uint8 HxW, HxWx1, HxWx3 or HxWx4; got {image.dtype} {image.shape}")
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image)
    elif isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
    else:
        raise TypeError(f"image must be a path, a PIL image or a uint8 array, not {type(image).__name__}")
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if "A" in image.mode or image.mode == "P" else image.convert("RGB")
    return image


def render_view(original: Image.Image, view: View) -> Image.Image:
    """Cuts `view.region` from the original pixels and resizes it to `view.size`."""
    region = original if view.region == (0, 0, *original.size) else original.crop(view.region)
    return region.resize(view.size, RESAMPLE)


class SourceImage:
    """The original image of a question: PIL for drawing and cropping, its pixels and a content digest, once."""

    def __init__(self, image: Image.Image):
        self.image = image

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @cached_property
    def pixels(self) -> np.ndarray:
        """uint8 [H, W, 3], C-contiguous."""
        return np.ascontiguousarray(np.asarray(self.image, dtype=np.uint8))

    @cached_property
    def digest(self) -> str:
        pixels = self.pixels
        return hashlib.blake2b(pixels.data, digest_size=16, person=b"cof-edge-img").hexdigest() + \
            f"-{pixels.shape[1]}x{pixels.shape[0]}"

    def view(self, view: View) -> Image.Image:
        return render_view(self.image, view)
