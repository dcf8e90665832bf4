"""Synthetic V*-style visual search (DESIGN.md §5): coloured tags carrying small symbols in a cluttered 4K scene.

Every sample is a pure function of (seed, index): sample i never depends on how many samples came before it.
Boxes are `[x1, y1, x2, y2]` in pixel-edge coordinates: a tag drawn on pixel columns x1 .. x2-1 has box x2 = x1 + width,
so a box scales between image sizes by plain multiplication (see `scale_box`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

NATIVE_SIZE = (3840, 2160)  # (width, height)
# The 8 evaluation resolutions, each the LONG side of the resized image.
RESOLUTIONS = (224, 336, 448, 672, 1024, 1920, 2560, 3840)
# LANCZOS is Pillow's sharpest antialiased downscale: the small global view keeps as much of a tag as any filter
# can, so a zoom is needed because the detail is gone, not because the resampler threw it away.
RESAMPLE = Image.Resampling.LANCZOS

ATTRIBUTE = "direct_attributes"  # V*'s category names
SPATIAL = "relative_position"
CATEGORIES = (ATTRIBUTE, SPATIAL)
# V* holds 115 attribute and 76 relative-position questions: about 60/40.
CATEGORY_WEIGHTS = {ATTRIBUTE: 0.6, SPATIAL: 0.4}

# Saturated, bright fills; every distractor colour is dull (see `_dull_colours`), so none comes near these.
TAG_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 30),
    "orange": (255, 140, 0),
    "yellow": (255, 230, 0),
    "green": (20, 180, 50),
    "cyan": (0, 210, 230),
    "blue": (30, 70, 235),
    "purple": (145, 45, 210),
    "pink": (255, 110, 200),
}
SYMBOLS = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "arrow")
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)

ATTRIBUTE_TEMPLATE = "What symbol is on the {colour} tag?"
SPATIAL_TEMPLATE = "Is the {colour1} tag to the left or to the right of the {colour2} tag?"
SPATIAL_OPTIONS = ("left", "right")
PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"

# Sizes at the reference long side of 3840 px; other native sizes scale them proportionally.
REFERENCE_LONG_SIDE = 3840
TAG_WIDTH_RANGE = (40, 120)
TAG_ASPECT_RANGE = (0.75, 1.0)  # height / width
SYMBOL_FRACTION = 0.5  # symbol's bounding square as a fraction of the tag's shorter side
TAG_GAP = 30  # minimum free space between two tags
EDGE_MARGIN = 20  # minimum space between a tag and the image border
MIN_SPATIAL_SEPARATION = 1.5  # horizontal centre distance, in widths of the wider tag of the pair
TAG_COUNT_RANGE = (2, 4)
CLUTTER_SHAPES = 170  # per 3840x2160 of area
DECOY_TAGS = 30  # dull rectangles carrying symbols, per 3840x2160 of area


def _relative_luminance(rgb: tuple[int, int, int]) -> float:
    channels = [c / 255 for c in rgb]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def symbol_ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against `rgb`."""
    luminance = _relative_luminance(rgb)
    return BLACK if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else WHITE


SYMBOL_INK = {name: symbol_ink(rgb) for name, rgb in TAG_COLOURS.items()}


@dataclass
class Tag:
    colour: str
    symbol: str
    box: list[int]  # [x1, y1, x2, y2], original pixels, x2/y2 exclusive

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]


@dataclass
class VSearchSample:
    image: Image.Image  # original, native size
    text: str  # full V*-style prompt: question, option lines, suffix
    question: str  # bare question
    options: list[str]
    label: str  # the answer letter (V*'s field name)
    answer_text: str
    category: str  # ATTRIBUTE or SPATIAL
    target_boxes: list[list[int]]  # tag(s) the question is about: 1 for attribute, 2 for spatial (colour1, colour2)
    target_colours: list[str]
    seed: int
    index: int
    tags: list[Tag] = field(default_factory=list)  # every tag in the scene, targets included

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def format_prompt(question: str, options: Sequence[str]) -> str:
    """V*'s prompt text: the question, `(A) option` lines, then the fixed instruction line."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"need 2..{len(LETTERS)} options, got {len(options)}")
    lines = [question] + [f"({letter}) {option}" for letter, option in zip(LETTERS, options)] + [PROMPT_SUFFIX]
    return "\n".join(lines)


def resize_to_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Resize so the longer side is `long_side`, keeping aspect (short side rounded), with LANCZOS."""
    if long_side <= 0:
        raise ValueError(f"long side must be positive, got {long_side}")
    width, height = image.size
    if width >= height:
        new_size = (long_side, max(1, round(height * long_side / width)))
    else:
        new_size = (max(1, round(width * long_side / height)), long_side)
    if new_size == image.size:
        return image.copy()
    return image.resize(new_size, RESAMPLE)


def scale_box(box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> list[float]:
    """Map a pixel-edge box from an image of `from_size` (w, h) to the same content at `to_size` (w, h)."""
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


# Symbol outlines on a unit square centred at the origin (y down).
def _star_points() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = 0.5 if k % 2 == 0 else 0.2
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


_POLYGONS: dict[str, list[list[tuple[float, float]]]] = {
    "square": [[(-0.4, -0.4), (0.4, -0.4), (0.4, 0.4), (-0.4, 0.4)]],
    "triangle": [[(0.0, -0.5), (0.5, 0.42), (-0.5, 0.42)]],
    "star": [_star_points()],
    "cross": [
        [(-0.5, -0.15), (0.5, -0.15), (0.5, 0.15), (-0.5, 0.15)],
        [(-0.15, -0.5), (0.15, -0.5), (0.15, 0.5), (-0.15, 0.5)],
    ],
    "diamond": [[(0.0, -0.5), (0.38, 0.0), (0.0, 0.5), (-0.38, 0.0)]],
    "heart": [[(-0.48, -0.08), (0.48, -0.08), (0.0, 0.46)]],
    "arrow": [
        [(-0.5, -0.11), (0.06, -0.11), (0.06, 0.11), (-0.5, 0.11)],
        [(0.04, -0.36), (0.5, 0.0), (0.04, 0.36)],
    ],
}
_CIRCLES: dict[str, list[tuple[float, float, float]]] = {  # (cx, cy, radius)
    "circle": [(0.0, 0.0, 0.5)],
    "heart": [(-0.24, -0.2, 0.26), (0.24, -0.2, 0.26)],
}


def draw_symbol(
    draw: ImageDraw.ImageDraw, symbol: str, centre: tuple[float, float], size: float, fill: tuple[int, int, int]
) -> None:
    """Draw `symbol` filled, inside the `size`-px square centred at `centre`."""
    if symbol not in SYMBOLS:
        raise ValueError(f"unknown symbol {symbol!r}; expected one of {SYMBOLS}")
    cx, cy = centre
    for x, y, r in _CIRCLES.get(symbol, []):
        draw.ellipse(
            [cx + (x - r) * size, cy + (y - r) * size, cx + (x + r) * size - 1, cy + (y + r) * size - 1], fill=fill
        )
    for polygon in _POLYGONS.get(symbol, []):
        draw.polygon([(cx + x * size, cy + y * size) for x, y in polygon], fill=fill)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in [0, 1]) to RGB in [0, 255]; hsv has shape (..., 3)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = np.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], axis=-1)
    rgb = v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb * 255


def _dull_colours(rng: np.random.Generator, count: int, value_range=(0.22, 0.62)) -> np.ndarray:
    """Low-saturation, mid-dark colours: each channel stays far from every tag colour (see tests)."""
    hsv = np.stack(
        [rng.random(count), rng.uniform(0.0, 0.33, count), rng.uniform(*value_range, count)], axis=-1
    )
    return np.rint(_hsv_to_rgb(hsv)).astype(np.uint8)


def _render_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Gradient + blotches + optional stripes, composed at quarter size and upsampled; then fine grain."""
    width, height = size
    low_w, low_h = max(8, width // 4), max(8, height // 4)
    colours = _dull_colours(rng, 4).astype(np.float32)
    ys, xs = np.mgrid[0:low_h, 0:low_w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    canvas = colours[0] * (1 - ramp[..., None]) + colours[1] * ramp[..., None]

    grid = rng.random((int(rng.integers(5, 12)), int(rng.integers(8, 20)))).astype(np.float32)
    blotch = np.asarray(Image.fromarray(grid, mode="F").resize((low_w, low_h), Image.Resampling.BICUBIC))
    blotch = np.clip(blotch, 0, 1)[..., None] * 0.6
    canvas = canvas * (1 - blotch) + colours[2] * blotch

    if rng.random() < 0.5:
        stripe_angle = rng.uniform(0, np.pi)
        period = rng.uniform(10, 60) * low_w / 960
        phase = (xs * np.cos(stripe_angle) + ys * np.sin(stripe_angle)) / period
        stripes = (np.sin(2 * np.pi * phase) > rng.uniform(-0.3, 0.6)).astype(np.float32)[..., None] * 0.35
        canvas = canvas * (1 - stripes) + colours[3] * stripes

    low = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), mode="RGB")
    image = low.resize(size, Image.Resampling.BILINEAR)
    # Grey grain at half resolution, the same offset on all channels so it adds texture but no saturation.
    grain = rng.integers(-10, 11, size=((height + 1) // 2, (width + 1) // 2), dtype=np.int16)
    grain = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:height, :width]
    pixels = np.asarray(image, dtype=np.int16) + grain[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _draw_clutter(rng: np.random.Generator, image: Image.Image, scale: float) -> None:
    """Dull shapes, lines and decoy tags (dull rectangles with symbols) all over the scene."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    area_scale = (width * height) / (NATIVE_SIZE[0] * NATIVE_SIZE[1])
    n_shapes = max(1, round(CLUTTER_SHAPES * area_scale))
    colours = _dull_colours(rng, n_shapes)
    for colour in colours:
        fill = tuple(int(c) for c in colour)
        kind = rng.integers(4)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(15, 350, 2) * scale
        if kind == 0:
            draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=fill)
        elif kind == 1:
            draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=fill)
        elif kind == 2:
            n_vertices = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
            radii = rng.uniform(0.3, 0.5, n_vertices) * max(w, h)
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)], fill=fill)
        else:
            angle = rng.uniform(0, np.pi)
            dx, dy = np.cos(angle) * w * 1.5, np.sin(angle) * w * 1.5
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=max(1, round(rng.uniform(3, 12) * scale)))

    n_decoys = max(1, round(DECOY_TAGS * area_scale))
    for colour in _dull_colours(rng, n_decoys):
        fill = tuple(int(c) for c in colour)
        w = rng.uniform(*TAG_WIDTH_RANGE) * scale
        h = w * rng.uniform(*TAG_ASPECT_RANGE)
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        draw.rectangle([x1, y1, x1 + w - 1, y1 + h - 1], fill=fill)
        ink = WHITE if rng.random() < 0.5 else BLACK
        symbol = SYMBOLS[int(rng.integers(len(SYMBOLS)))]
        draw_symbol(draw, symbol, (x1 + w / 2, y1 + h / 2), SYMBOL_FRACTION * min(w, h), ink)


def _boxes_clear(box: list[int], others: list[list[int]], gap: float) -> bool:
    return all(
        box[2] + gap <= o[0] or o[2] + gap <= box[0] or box[3] + gap <= o[1] or o[3] + gap <= box[1] for o in others
    )


def _place_tags(
    rng: np.random.Generator, size: tuple[int, int], count: int, scale: float, spatial_pair: bool
) -> list[list[int]]:
    """Non-overlapping tag boxes inside the image; with `spatial_pair`, boxes 0 and 1 are well apart horizontally."""
    width, height = size
    margin, gap = EDGE_MARGIN * scale, TAG_GAP * scale
    for _ in range(100):
        boxes: list[list[int]] = []
        for i in range(count):
            for _ in range(500):
                w = round(rng.uniform(*TAG_WIDTH_RANGE) * scale)
                h = round(w * rng.uniform(*TAG_ASPECT_RANGE))
                x1 = int(rng.integers(math.ceil(margin), math.floor(width - margin - w) + 1))
                y1 = int(rng.integers(math.ceil(margin), math.floor(height - margin - h) + 1))
                box = [x1, y1, x1 + w, y1 + h]
                if not _boxes_clear(box, boxes, gap):
                    continue
                if spatial_pair and i == 1:
                    first = boxes[0]
                    separation = abs((box[0] + box[2]) - (first[0] + first[2])) / 2
                    if separation < MIN_SPATIAL_SEPARATION * max(w, first[2] - first[0]):
                        continue
                boxes.append(box)
                break
            else:
                break
        if len(boxes) == count:
            return boxes
    raise RuntimeError(f"could not place {count} tags in a {width}x{height} image")


def _category_for(rng: np.random.Generator, categories: Sequence[str]) -> str:
    unknown = [c for c in categories if c not in CATEGORIES]
    if not categories or unknown:
        raise ValueError(f"categories must be a non-empty subset of {CATEGORIES}, got {tuple(categories)}")
    weights = np.array([CATEGORY_WEIGHTS[c] for c in categories])
    return categories[int(rng.choice(len(categories), p=weights / weights.sum()))]


def render_sample(
    seed: int,
    index: int,
    categories: Sequence[str] = CATEGORIES,
    native_size: tuple[int, int] = NATIVE_SIZE,
) -> VSearchSample:
    """Sample `index` of the stream `seed`: scene, question and ground truth, a pure function of its arguments."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    width, height = native_size
    scale = max(width, height) / REFERENCE_LONG_SIDE
    scene_rng, clutter_rng, question_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(3)
    )
    category = _category_for(question_rng, tuple(categories))

    image = _render_background(scene_rng, (width, height))
    _draw_clutter(clutter_rng, image, scale)

    n_tags = int(question_rng.integers(TAG_COUNT_RANGE[0], TAG_COUNT_RANGE[1] + 1))
    colours = [str(c) for c in question_rng.choice(list(TAG_COLOURS), size=n_tags, replace=False)]
    symbols = [str(s) for s in question_rng.choice(SYMBOLS, size=n_tags, replace=False)]
    boxes = _place_tags(question_rng, (width, height), n_tags, scale, spatial_pair=category == SPATIAL)
    tags = [Tag(colour, symbol, box) for colour, symbol, box in zip(colours, symbols, boxes)]

    draw = ImageDraw.Draw(image)
    for tag in tags:
        x1, y1, x2, y2 = tag.box
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=TAG_COLOURS[tag.colour])
        draw_symbol(draw, tag.symbol, tag.centre, SYMBOL_FRACTION * min(x2 - x1, y2 - y1), SYMBOL_INK[tag.colour])

    if category == ATTRIBUTE:
        target = tags[int(question_rng.integers(n_tags))]
        targets = [target]
        question = ATTRIBUTE_TEMPLATE.format(colour=target.colour)
        answer = target.symbol
        # Wrong options prefer the symbols of the other tags in the scene: naming a symbol you can see is not enough.
        in_scene = [t.symbol for t in tags if t is not target]
        elsewhere = [s for s in SYMBOLS if s not in in_scene and s != answer]
        wrong = (in_scene + [str(s) for s in question_rng.permutation(elsewhere)])[:3]
        options = [str(o) for o in question_rng.permutation([answer, *wrong])]
    else:
        first, second = (tags[0], tags[1]) if question_rng.random() < 0.5 else (tags[1], tags[0])
        targets = [first, second]
        question = SPATIAL_TEMPLATE.format(colour1=first.colour, colour2=second.colour)
        answer = "left" if first.centre[0] < second.centre[0] else "right"
        options = [str(o) for o in question_rng.permutation(SPATIAL_OPTIONS)]

    return VSearchSample(
        image=image,
        text=format_prompt(question, options),
        question=question,
        options=options,
        label=LETTERS[options.index(answer)],
        answer_text=answer,
        category=category,
        target_boxes=[list(t.box) for t in targets],
        target_colours=[t.colour for t in targets],
        seed=seed,
        index=index,
        tags=tags,
    )


def generate(
    n: int,
    seed: int = 0,
    categories: Sequence[str] = CATEGORIES,
    native_size: tuple[int, int] = NATIVE_SIZE,
) -> Iterator[VSearchSample]:
    """Samples 0..n-1 of stream `seed`; with both categories, about 60% attribute and 40% spatial (as V*)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    for index in range(n):
        yield render_sample(seed, index, categories, native_size)
