"""CoF trajectories: annotated questions → multi-turn zoom conversations in the runtime's exact protocol.

A trajectory is what the runtime would feed the model if the model behaved as the teacher below: the global view
(`cof_edge.geometry.global_view` at the trajectory's `AskOptions` budgets), then, per zoom, the crop the runtime cuts
for the written box (`plan_crop` + `render_view`), with the text of `cof_edge.protocol`. So training sees byte-for-byte
the token ids and pixels that `FocusEngine` produces at inference (tested in tests/test_training_trajectories.py).

The teacher policy (adaptive, `TrajectoryConfig`):
* attribute questions (read the symbol on one tag):
  - answer directly when the tag's short side in the global view is >= `direct_min_side` px (the symbol, half the
    tag, is then legible), or when the original holds less than `min_detail_gain` original px per view px (a zoom
    would add no detail: low-resolution images);
  - else one zoom on the tag; or, when the tag is tinier than `two_zoom_below` view px, two zooms: first a region
    `region_factor` times the tag box, then the tag. Every box is in the GLOBAL view's pixel frame (CoF release).
* spatial questions (is tag 1 left or right of tag 2): only the tags' colours and positions matter. Answer directly
  when both tags are >= `visible_side` px in the global view; else one box covering both if that crop still shows
  each tag at >= `visible_side` px; else two zooms, one per tag (question order).
The zoom box is the target's box in the global frame, grown about its centre to `box_min_side` px (a tiny model
localises to a few pixels, not one), rounded outward to integers; a test checks the runtime's crop contains it.

`think` texts are short templates. The answer turn of a zoom names what the crop shows, then the letter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from PIL import Image

from cof_edge.geometry import View, global_view, plan_crop
from cof_edge.images import load_image, render_view
from cof_edge.options import AskOptions
from cof_edge.protocol import IM_END, TokenLayout, crop_turn_prompt, opening_prompt

ATTRIBUTE = "direct_attributes"
SPATIAL = "relative_position"


@dataclass(frozen=True)
class TrajectoryConfig:
    options: AskOptions = field(default_factory=AskOptions)  # budgets + crop geometry: what the runtime will use
    direct_min_side: float = 28.0    # view px: a tag this large shows its symbol in the global view
    two_zoom_below: float = 0.0      # view px: tags smaller than this get a region zoom first (0: never)
    region_factor: float = 4.0
    box_min_side: float = 16.0       # view px: zoom boxes are grown to at least this about their centre
    box_grid: int = 0                # view px: > 0 snaps box edges to this grid (28: merged visual tokens)
    visible_side: float = 3.0        # view px: a tag this large shows its colour (enough for spatial questions)
    min_detail_gain: float = 1.5     # original px per global-view px below which zooming adds nothing
    label_in_call: bool = True       # write "label": "<colour> tag" in the tool call

    def __post_init__(self):
        if self.box_min_side <= 0 or self.region_factor < 1 or self.box_grid < 0:
            raise ValueError("box_min_side must be > 0, region_factor >= 1 and box_grid >= 0")


@dataclass
class Trajectory:
    text: str                         # the V*-style question text (question, options, suffix)
    turns: list[str]                  # assistant turns, each without <|im_end|>
    views: list[View]                 # global view, then one per zoom
    images: list[Image.Image]         # the rendered views, exactly as the runtime renders them
    label: str
    category: str = ""
    boxes: list[list[int]] = field(default_factory=list)  # the boxes written, global-view frame
    targets: list[list[float]] = field(default_factory=list)  # the asked tags' boxes, in the image's pixels

    @property
    def zooms(self) -> int:
        return len(self.turns) - 1


def zoom_call(box, label: str | None = None) -> str:
    args = {"bbox_2d": [int(v) for v in box]}
    if label:
        args["label"] = label
    return "<tool_call>\n" + json.dumps({"name": "image_zoom_in_tool", "arguments": args}) + "\n</tool_call>"


def zoom_turn(think: str, box, label: str | None = None) -> str:
    return f"<think>{think}</think> {zoom_call(box, label)}"


def answer_turn(think: str, letter: str) -> str:
    return f"<think>{think}</think> <answer>{letter}</answer>"


def view_box(target, view: View, min_side: float, grid: int = 0) -> list[int]:
    """The target box (original px) in `view`'s pixel frame, grown to `min_side`, rounded outward, clamped.

    `grid` > 0: the box spans whole `grid` cells (ceil(side / grid) of them), placed on the cell boundaries nearest
    to centring it, so each coordinate takes one of W / grid values: one per merged-token column or row when `grid`
    is 28, the mapping a small model can learn from a token's position (an arbitrary pixel box it did not).
    """
    x1, y1, x2, y2 = view.from_original(tuple(float(v) for v in target))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = max(x2 - x1, min_side), max(y2 - y1, min_side)
    W, H = view.size

    def span(centre, side, limit):
        return _grid_span(centre, side, limit, grid) if grid > 0 else _span(centre, side, limit)

    bx1, bx2 = span(cx, w, W)
    by1, by2 = span(cy, h, H)
    return [bx1, by1, bx2, by2]


def _span(centre: float, span: float, limit: int) -> tuple[int, int]:
    span = min(span, float(limit))
    lo = min(max(centre - span / 2, 0.0), limit - span)
    return max(0, math.floor(lo)), min(limit, math.ceil(lo + span))


def _grid_span(centre: float, span: float, limit: int, grid: int) -> tuple[int, int]:
    cells, last = max(1, math.ceil(span / grid)), max(0, (limit - 1) // grid)
    cells = min(cells, last + 1)
    first = min(max(round(centre / grid - cells / 2), 0), last + 1 - cells)
    return first * grid, min(limit, (first + cells) * grid)


def region_contains(region, box) -> bool:
    """Whether `region` (x1, y1, x2, y2) holds the whole `box`."""
    return region[0] <= box[0] and region[1] <= box[1] and region[2] >= box[2] and region[3] >= box[3]


def _short_side(box, view: View) -> float:
    x1, y1, x2, y2 = view.from_original(tuple(float(v) for v in box))
    return min(x2 - x1, y2 - y1)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _union(boxes):
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


class _Builder:
    def __init__(self, original: Image.Image, cfg: TrajectoryConfig):
        self.original, self.cfg = original, cfg
        opts = cfg.options
        self.view = global_view(original.size, opts.global_min_pixels, opts.global_max_pixels)
        self.views, self.images, self.turns, self.boxes = [self.view], [render_view(original, self.view)], [], []

    def zoom(self, think: str, targets, label: str | None) -> View:
        W, H = self.original.size
        targets = [[max(0.0, t[0]), max(0.0, t[1]), min(float(W), t[2]), min(float(H), t[3])] for t in targets]
        union = _union(targets)

        def place(min_side: float):
            box = view_box(union, self.view, min_side, self.cfg.box_grid)
            return box, plan_crop(box, self.view, self.original.size, self.cfg.options.crop_settings)

        box, plan = place(self.cfg.box_min_side)
        for target in targets:  # the runtime's crop must hold every target; grow the box until it does
            grow = self.cfg.box_min_side
            while not region_contains(plan.view.region, target) and grow < 4 * max(self.view.size):
                grow *= 1.5
                box, plan = place(grow)
        self.turns.append(zoom_turn(think, box, label if self.cfg.label_in_call else None))
        self.boxes.append(box)
        self.views.append(plan.view)
        self.images.append(render_view(self.original, plan.view))
        return plan.view

    def answer(self, think: str, letter: str) -> None:
        self.turns.append(answer_turn(think, letter))


def build_trajectory(image, text: str, label: str, category: str, target_boxes, target_colours=None,
                     answer_text: str | None = None, cfg: TrajectoryConfig | None = None) -> Trajectory:
    """One question → one trajectory. `target_boxes` are in `image`'s pixels (the image the runtime gets)."""
    cfg = cfg or TrajectoryConfig()
    original = load_image(image)
    b = _Builder(original, cfg)
    colours = list(target_colours or [f"target {i + 1}" for i in range(len(target_boxes))])
    gain = max(original.size[0] / b.view.size[0], original.size[1] / b.view.size[1])
    if category == SPATIAL and len(target_boxes) == 2:
        _spatial(b, cfg, target_boxes, colours, label, answer_text, gain)
    else:
        _attribute(b, cfg, target_boxes[0], colours[0], label, answer_text, gain)
    return Trajectory(text=text, turns=b.turns, views=b.views, images=b.images, label=label, category=category,
                      boxes=b.boxes, targets=[[float(v) for v in box] for box in target_boxes])


def _attribute(b: _Builder, cfg: TrajectoryConfig, target, colour, label, answer_text, gain) -> None:
    seen = _article(answer_text) if answer_text else "the answer"
    side = _short_side(target, b.view)
    if side >= cfg.direct_min_side:
        return b.answer(f"The {colour} tag is large enough: it shows {seen}.", label)
    if gain < cfg.min_detail_gain:
        return b.answer(f"The image has no finer detail to zoom into; the {colour} tag may show {seen}.", label)
    if side < cfg.two_zoom_below:
        x1, y1, x2, y2 = target
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * cfg.region_factor / 2
        b.zoom(f"The {colour} tag is tiny. I will zoom in on its region first.",
               [[cx - half, cy - half, cx + half, cy + half]], None)
        b.zoom(f"The {colour} tag is here. I will zoom in on it.", [target], f"{colour} tag")
    else:
        b.zoom(f"The {colour} tag is too small to read. I will zoom in on it.", [target], f"{colour} tag")
    b.answer(f"The zoomed view shows {seen} on the {colour} tag.", label)


def _spatial(b: _Builder, cfg: TrajectoryConfig, targets, colours, label, answer_text, gain) -> None:
    relation = answer_text or "as shown"
    final = f"The {colours[0]} tag is to the {relation} of the {colours[1]} tag."
    if min(_short_side(t, b.view) for t in targets) >= cfg.visible_side or gain < cfg.min_detail_gain:
        return b.answer(final, label)
    both = _union(targets)
    box = view_box(both, b.view, cfg.box_min_side, cfg.box_grid)
    crop = plan_crop(box, b.view, b.original.size, cfg.options.crop_settings).view
    if min(_short_side(t, crop) for t in targets) >= cfg.visible_side:
        b.zoom(f"The {colours[0]} and {colours[1]} tags are small. I will zoom in on both.", targets, None)
    else:
        for colour, target in zip(colours, targets):
            b.zoom(f"I will zoom in on the {colour} tag.", [target], f"{colour} tag")
    b.answer(final, label)


def from_vsearch(sample, resolution: int | None = None, cfg: TrajectoryConfig | None = None) -> Trajectory:
    """A `cof_edge.data.VSearchSample`, optionally resized to `resolution` (long side), as a trajectory."""
    from cof_edge.data import resize_to_long_side, scale_box

    image, boxes = sample.image, sample.target_boxes
    if resolution is not None and resolution != max(sample.image.size):
        image = resize_to_long_side(sample.image, resolution)
        boxes = [scale_box(b, sample.image.size, image.size) for b in boxes]
    return build_trajectory(image, sample.text, sample.label, sample.category, boxes, sample.target_colours,
                            sample.answer_text, cfg)


# --------------------------------------------------------------------------------------------- token layout


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]                      # -100 everywhere but the assistant turns (their <|im_end|> included)
    image_grids: list[tuple[int, int, int]]


def encode_turns(layout: TokenLayout, text: str, turns, views, system_prompt: str | None = None) -> Encoded:
    """Token ids segment by segment, exactly as `FocusEngine` feeds them (opening, reply, <|im_end|> + crop turn, ...).

    A reply's ids are the tokenizer's encoding of its text: what a model trained on them emits greedily.
    """
    if len(views) != len(turns):
        raise ValueError(f"{len(turns)} turns need {len(turns)} views, got {len(views)}")
    opening = opening_prompt(text) if system_prompt is None else opening_prompt(text, system_prompt)
    ids = layout.encode(opening, [views[0].visual_tokens])
    labels = [-100] * len(ids)
    im_end = layout.special.im_end
    for i, turn in enumerate(turns):
        reply = layout.encode(turn) + [im_end]
        ids += reply
        labels += reply
        if i + 1 < len(turns):
            prompt = layout.encode(crop_turn_prompt(), [views[i + 1].visual_tokens])
            ids += prompt
            labels += [-100] * len(prompt)
    grids = [(1, v.size[1] // 14, v.size[0] // 14) for v in views]
    return Encoded(ids, labels, grids)


def encode_trajectory(layout: TokenLayout, traj: Trajectory, system_prompt: str | None = None) -> Encoded:
    return encode_turns(layout, traj.text, traj.turns, traj.views, system_prompt)


def conversation_text(traj: Trajectory) -> str:
    """The whole conversation as protocol text (equal to `render_conversation`, up to its final newline)."""
    from cof_edge.protocol import render_conversation

    return render_conversation(traj.text, traj.turns).removesuffix("\n")


__all__ = ["TrajectoryConfig", "Trajectory", "build_trajectory", "from_vsearch", "encode_trajectory", "encode_turns",
           "Encoded", "zoom_turn", "answer_turn", "view_box", "conversation_text", "IM_END"]
