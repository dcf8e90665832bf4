"""Getting pixels in and views out: decoding stays in Pillow; the engine works on upright RGB images."""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .geometry import View

RESAMPLE = Image.Resampling.BICUBIC  # what the HF Qwen2-VL image processor resizes with


DEFAULT_MAX_IMAGE_PIXELS = 150_000_000  # a 15000x10000 photo; raise `max_image_pixels` for more


class ImageError(ValueError):
    """An input that is not a usable image; the message names it and says what to do."""


def load_image(image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """A path, PIL image or uint8 array → an upright RGB PIL image.

    EXIF rotation is applied (boxes refer to the upright image); alpha is composited over white, as the HF image
    processor does; 16-bit and float modes are scaled to 8 bits. Images over `max_pixels` are refused before
    their pixels are decoded (decompression bombs).
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open_file(Path(image), max_pixels)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ImageError(f"array images must be uint8 HxW, HxWx1, HxWx3 or HxWx4; got {image.dtype} {image.shape}")
        _check_size(image.shape[1], image.shape[0], max_pixels, "array")
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image)
    elif isinstance(image, Image.Image):
        _check_size(image.width, image.height, max_pixels, "image")
        image = ImageOps.exif_transpose(image)
    else:
        raise TypeError(f"image must be a path, a PIL image or a uint8 array, not {type(image).__name__}")
    return to_rgb(image)


def _open_file(path: Path, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked instead
            with Image.open(path) as opened:  # reads the header only
                _check_size(opened.width, opened.height, max_pixels, str(path))
                opened.load()
                return ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError:
        raise ImageError(f"{path} is larger than Pillow's own decompression-bomb limit; refused") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{path} could not be decoded ({exc}): the file is truncated or corrupt") from None


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                         f"(AskOptions.max_image_pixels): raise the limit if the image is trusted")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 if image.mode == "F" and values.max(initial=0) <= 1.0 else \
            (1 / 257 if image.mode != "F" and values.max(initial=0) > 255 else 1.0)
        return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def render_view(original: Image.Image, view: View) -> Image.Image:
    """Cuts `view.region` from the original pixels and resizes it to `view.size`."""
    region = original if view.region == (0, 0, *original.size) else original.crop(view.region)
    return region.resize(view.size, RESAMPLE)


class SourceImage:
    """The original image of a question, held once as uint8 pixels [H, W, 3], with a content digest.

    Only one full-size copy stays alive (huge images must not cost several); views are cut from the pixels.
    """

    def __init__(self, image: Image.Image):
        self.size = image.size
        self.pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)

    @property
    def image(self) -> Image.Image:
        """A PIL copy of the whole image, for drawing."""
        return Image.fromarray(self.pixels)

    @cached_property
    def digest(self) -> str:
        return hashlib.blake2b(np.ascontiguousarray(self.pixels).data, digest_size=16,
                               person=b"cof-edge-img").hexdigest() + f"-{self.size[0]}x{self.size[1]}"

    def view(self, view: View) -> Image.Image:
        x1, y1, x2, y2 = view.region
        return Image.fromarray(self.pixels[y1:y2, x1:x2]).resize(view.size, RESAMPLE)
