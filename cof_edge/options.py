"""Per-question settings: pixel budgets, zoom and token bounds, crop geometry. Overridable per `ask()`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .actions import BoxFrame
from .geometry import FACTOR, CropSettings, global_view
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .protocol import SYSTEM_PROMPT


@dataclass(frozen=True)
class AskOptions:
    global_min_pixels: int = 112 * 112
    global_max_pixels: int = 256 * FACTOR * FACTOR   # 256 visual tokens for the global view
    crop_min_pixels: int = 112 * 112
    crop_max_pixels: int = 256 * FACTOR * FACTOR     # 256 visual tokens per crop
    max_zooms: int = 3
    max_new_tokens: int = 256                        # per turn
    enlarge: float = 1.5
    crop_upscale: float = 2.0
    min_crop_side: int = 56
    snap_crops: int = 0                              # align crops to this pixel grid of the original (0: off)
    box_frame: BoxFrame = BoxFrame.PIXELS            # frame of bbox_2d in tool calls
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger inputs are refused before decoding
    max_context_tokens: int | None = None            # conversation bound; None: the model's own context length
    stop_on_repeated_box: bool = True
    system_prompt: str = SYSTEM_PROMPT               # the CoF release's tool prompt; a model may be trained on another

    def __post_init__(self):
        for name in ("global_min_pixels", "global_max_pixels", "crop_min_pixels", "crop_max_pixels", "max_new_tokens",
                     "max_image_pixels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.global_min_pixels > self.global_max_pixels:
            raise ValueError(f"global_min_pixels ({self.global_min_pixels}) exceeds global_max_pixels "
                             f"({self.global_max_pixels})")
        if self.max_context_tokens is not None and self.max_context_tokens <= 0:
            raise ValueError(f"max_context_tokens must be positive or None, got {self.max_context_tokens!r}")
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt must be a string, got {type(self.system_prompt).__name__}")
        if not isinstance(self.max_zooms, int) or self.max_zooms < 0:
            raise ValueError(f"max_zooms must be an integer >= 0, got {self.max_zooms!r}")
        object.__setattr__(self, "box_frame", BoxFrame(self.box_frame))
        self.crop_settings  # validates the crop fields

    @property
    def crop_settings(self) -> CropSettings:
        return CropSettings(enlarge=self.enlarge, upscale=self.crop_upscale, min_side=self.min_crop_side,
                            min_pixels=self.crop_min_pixels, max_pixels=self.crop_max_pixels, snap=self.snap_crops)

    def with_overrides(self, **overrides) -> "AskOptions":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides) if overrides else self


def full_resolution_pass(image_size: tuple[int, int], options: AskOptions,
                         max_tokens: int | None = None) -> tuple[dict, int, str | None]:
    """The single pass without zoom at the image's native resolution (one view of all its pixels, the baseline CoF
    is measured against): its `ask()` overrides, its visual tokens, and why it is skipped when those are over
    `max_tokens` (None: run it)."""
    width, height = image_size
    overrides = {"global_max_pixels": max(width * height, options.global_min_pixels), "max_zooms": 0}
    tokens = global_view(image_size, options.global_min_pixels, overrides["global_max_pixels"]).visual_tokens
    too_many = max_tokens is not None and tokens > max_tokens
    return overrides, tokens, f"one {tokens}-token view is over --max-full-res-tokens {max_tokens}" if too_many else None


def recipe_ask_options(model_dir) -> dict:
    """The option values a `cof_training` checkpoint was trained with (its RECIPE.json `ask_options`); {} if none."""
    recipe = Path(model_dir) / "RECIPE.json"
    return json.loads(recipe.read_text(encoding="utf-8")).get("ask_options", {}) if recipe.is_file() else {}


def trained_options(model_dir) -> AskOptions:
    """`AskOptions` with the checkpoint's trained values (`recipe_ask_options`); the defaults for the rest."""
    return AskOptions().with_overrides(**recipe_ask_options(model_dir))
