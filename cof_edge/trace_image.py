"""The chain of focus drawn on the image: every crop's region, numbered in the order it was taken."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .result import FocusResult

COLOURS = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (0, 220, 120), (220, 80, 255), (255, 140, 0)]


def draw_trace(original: Image.Image, result: FocusResult, max_side: int = 1920) -> Image.Image:
    scale = min(1.0, max_side / max(original.size))
    size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
    canvas = original.convert("RGB").resize(size, Image.Resampling.BILINEAR) if scale < 1 else original.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, size[0] // 60))
    width = max(2, size[0] // 400)
    crops = [s.crop_region for s in result.steps if s.crop_region is not None]
    for number, region in enumerate(crops, start=1):
        colour = COLOURS[(number - 1) % len(COLOURS)]
        box = [round(v * scale) for v in region]
        draw.rectangle(box, outline=colour, width=width)
        label = str(number)
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
        y = box[1] - (bottom - top) - 2 * width if box[1] - (bottom - top) - 2 * width >= 0 else box[3] + width
        draw.rectangle([box[0], y, box[0] + (right - left) + 2 * width, y + (bottom - top) + 2 * width], fill=colour)
        draw.text((box[0] + width, y + width - (top - box[1])), label, fill=(0, 0, 0), font=font)
    answer = result.answer if result.answer is None or len(result.answer) <= 40 else result.answer[:40] + "…"
    caption = f"answer: {answer!r} ({result.stop_reason}, {len(crops)} zooms)"
    draw.text((width * 2, size[1] - font.size - width * 2), caption, fill=(255, 255, 255), font=font,
              stroke_width=max(1, width // 2), stroke_fill=(0, 0, 0))
    return canvas


def save_trace(original: Image.Image, result: FocusResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_trace(original, result).save(path)
    return path
