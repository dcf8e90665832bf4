"""Crop geometry: view sizes, boxes between frames, the crop plan. Pure Python; no image data here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PATCH = 14
MERGE = 2
FACTOR = PATCH * MERGE  # one visual token per 28x28 pixels
MAX_ASPECT = 200


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule: (height, width) rounded to multiples of `factor`, area within [min, max]."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT}: crop or pad the image first")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def visual_tokens(height: int, width: int) -> int:
    """Tokens the vision tower emits for an image already sized to multiples of 28."""
    return (height // FACTOR) * (width // FACTOR)


Box = tuple[float, float, float, float]
Region = tuple[int, int, int, int]  # integer pixel box in the original, x2/y2 exclusive


@dataclass(frozen=True)
class View:
    """An image as shown to the model: `region` of the original, resized to `size` (width, height)."""

    region: Region
    size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.region
        return (x2 - x1) / self.size[0], (y2 - y1) / self.size[1]

    @property
    def visual_tokens(self) -> int:
        return visual_tokens(self.size[1], self.size[0])

    def to_original(self, box: Box) -> Box:
        sx, sy = self.scale
        x1, y1 = self.region[:2]
        return (x1 + box[0] * sx, y1 + box[1] * sy, x1 + box[2] * sx, y1 + box[3] * sy)

    def from_original(self, box: Box) -> Box:
        sx, sy = self.scale
        x1, y1 = self.region[:2]
        return ((box[0] - x1) / sx, (box[1] - y1) / sy, (box[2] - x1) / sx, (box[3] - y1) / sy)


def global_view(image_size: tuple[int, int], min_pixels: int, max_pixels: int) -> View:
    width, height = image_size
    h, w = smart_resize(height, width, min_pixels, max_pixels)
    return View(region=(0, 0, width, height), size=(w, h))


@dataclass(frozen=True)
class CropSettings:
    enlarge: float = 1.5        # the CoF release enlarges every box 1.5x about its centre
    upscale: float = 2.0        # and shows the crop at 2x before fitting it to the pixel budget
    min_side: int = 56          # original pixels; smaller boxes (zero-area ones too) grow to this about their centre
    min_pixels: int = 112 * 112
    max_pixels: int = 256 * FACTOR * FACTOR
    snap: int = 0               # align crops outward to this grid of the original (0: off); raises cache hits

    def __post_init__(self):
        if not self.enlarge >= 1.0:
            raise ValueError(f"enlarge must be >= 1, got {self.enlarge}")
        if not self.upscale > 0:
            raise ValueError(f"upscale must be > 0, got {self.upscale}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.snap < 0:
            raise ValueError(f"snap must be >= 0, got {self.snap}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")


@dataclass(frozen=True)
class CropPlan:
    """Where to cut (in original pixels) and at what size to show the crop, plus every repair applied."""

    view: View
    box_in_original: Box  # the model's box mapped to the original, before enlargement
    repairs: tuple[str, ...] = field(default=())


class CropError(ValueError):
    """A box that no repair can turn into a crop (e.g. entirely outside the image)."""


def box_to_view_pixels(box: Box, frame: str, view_size: tuple[int, int]) -> Box:
    w, h = view_size
    if frame == "pixels":
        return box
    if frame == "normalized":
        return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)
    if frame == "relative_1000":
        return (box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000)
    raise ValueError(f"unknown box frame {frame!r}")


def plan_crop(box: Box, shown: View, image_size: tuple[int, int], settings: CropSettings,
              frame: str = "pixels") -> CropPlan:
    """Maps a box given in the frame of the `shown` view to a crop of the original image and its view size.

    Repairs, each recorded: reordered corners, clamping to the image, zero-area and tiny boxes grown to
    `min_side`. A box with no overlap with the image raises `CropError`.
    """
    width, height = image_size
    repairs: list[str] = []
    x1, y1, x2, y2 = box_to_view_pixels(tuple(float(v) for v in box), frame, shown.size)
    if x1 > x2 or y1 > y2:
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        repairs.append("reordered")
    ox1, oy1, ox2, oy2 = shown.to_original((x1, y1, x2, y2))
    if ox1 >= width or oy1 >= height or ox2 <= 0 or oy2 <= 0:
        raise CropError(f"box {_fmt(box)} lies outside the {width}x{height} image")
    clamped = (max(0.0, ox1), max(0.0, oy1), min(float(width), ox2), min(float(height), oy2))
    if clamped != (ox1, oy1, ox2, oy2):
        repairs.append("clamped")
    mapped = clamped
    if mapped[2] - mapped[0] <= 0 or mapped[3] - mapped[1] <= 0:
        repairs.append("zero_area")
    region = _grow(mapped, settings.enlarge, settings.min_side, width, height, repairs)
    if settings.snap:
        region = _snap(region, settings.snap, width, height)
    crop_w, crop_h = region[2] - region[0], region[3] - region[1]
    try:
        view_h, view_w = smart_resize(max(1, round(crop_h * settings.upscale)), max(1, round(crop_w * settings.upscale)),
                                      settings.min_pixels, settings.max_pixels)
    except ValueError as exc:
        raise CropError(f"crop {region} cannot be shown: {exc}") from None
    return CropPlan(view=View(region=region, size=(view_w, view_h)), box_in_original=mapped, repairs=tuple(repairs))


def _grow(box: Box, enlarge: float, min_side: int, width: int, height: int, repairs: list[str]) -> Region:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = (box[2] - box[0]) * enlarge, (box[3] - box[1]) * enlarge
    if bw < min_side or bh < min_side:
        if "zero_area" not in repairs:
            repairs.append("min_size")
        bw, bh = max(bw, min_side), max(bh, min_side)
    x1, x2 = _fit_span(cx, bw, width)
    y1, y2 = _fit_span(cy, bh, height)
    return (x1, y1, x2, y2)


def _snap(region: Region, grid: int, width: int, height: int) -> Region:
    x1, y1, x2, y2 = region
    return (x1 // grid * grid, y1 // grid * grid, min(width, -(-x2 // grid) * grid), min(height, -(-y2 // grid) * grid))


def _fit_span(centre: float, span: float, limit: int) -> tuple[int, int]:
    """Integer [lo, hi) of about `span` around `centre`, inside [0, limit]; shifted (not shrunk) at the edges."""
    span = min(span, float(limit))
    lo = centre - span / 2
    lo = min(max(lo, 0.0), limit - span)
    # Tolerate float noise from mapping between frames: 640.0000000001 is 640, not 641.
    lo_i, hi_i = math.floor(lo + 1e-6), math.ceil(lo + span - 1e-6)
    return max(0, lo_i), min(limit, max(hi_i, lo_i + 1))


def _fmt(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"
