"""Vision drills: teach a from-scratch vision tower where the tags are, before it has to serve a language model.

A CoF box needs the asked colour's tag to stand out among the global view's tokens, and the answer after a zoom
needs the tag's symbol to be readable from the crop's tokens. Trained by the language-model loss alone, the default
model's tower learns neither: a linear probe on its image embeddings finds the asked colour's token in 5 of 37
held-out scenes (training/README.md). A drill is one view, exactly as the runtime renders it (the global view at a
training resolution, or the teacher's crop around a tag, jittered), labelled per merged token with the colour and
the symbol of the tag there, or "none". Two linear heads on the tower's output (the embeddings the language model
reads) are trained with it and then dropped: the tower is left with colour and symbol as linear features.

With `position_weight` > 0 two more heads predict each merged token's row and column in its view. A box's first
corner is a token's grid position written as a number, and the decoder reads an attended token's value, which RoPE
leaves without position: the pointing drills learn the copied second corner but leave the first at chance
(training/README.md). These heads put the position into the embeddings the decoder attends to.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from cof_edge.data import render_sample, resize_to_long_side, scale_box
from cof_edge.data.vsearch import SYMBOLS, TAG_COLOURS
from cof_edge.geometry import FACTOR, View, global_view, plan_crop
from cof_edge.images import render_view

from .cache import trajectory_config
from .trajectories import view_box

COLOURS = tuple(TAG_COLOURS)
NONE_COLOUR, NONE_SYMBOL, IGNORE = len(COLOURS), len(SYMBOLS), -100
MAX_GRID = 32  # rows or columns of merged tokens in one view: 16 x 9 for the largest global view, 12 x 12 crops


@dataclass
class TagMap:
    image: object                 # PIL view, as the runtime feeds it
    colour: np.ndarray            # [tokens] colour index per merged token (raster order), NONE_COLOUR where no tag
    symbol: np.ndarray            # [tokens] symbol index, NONE_SYMBOL where no tag, IGNORE where too small to read


def tag_cells(box, size: tuple[int, int]) -> np.ndarray:
    """Which merged tokens (raster order) of a view of `size` show a tag whose box, in that view's pixels, is `box`:
    the token its centre is in, and those whose centre is in the box."""
    cols, rows = size[0] // FACTOR, size[1] // FACTOR
    inside = np.zeros((rows, cols), dtype=bool)
    x1, y1, x2, y2 = box
    if x2 <= 0 or y2 <= 0 or x1 >= size[0] or y1 >= size[1]:
        return inside.reshape(-1)
    centres_x, centres_y = (np.arange(cols) + 0.5) * FACTOR, (np.arange(rows) + 0.5) * FACTOR
    inside[np.ix_((centres_y >= y1) & (centres_y < y2), (centres_x >= x1) & (centres_x < x2))] = True
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if 0 <= cx < size[0] and 0 <= cy < size[1]:
        inside[int(cy // FACTOR), int(cx // FACTOR)] = True
    return inside.reshape(-1)


def tag_map(original, view: View, tags, legible_side: float) -> TagMap:
    """Per merged token of `view`: the tag whose centre is in it, or whose box holds the token's centre."""
    cols, rows = view.size[0] // FACTOR, view.size[1] // FACTOR
    colour = np.full(rows * cols, NONE_COLOUR, dtype=np.int64)
    symbol = np.full(rows * cols, NONE_SYMBOL, dtype=np.int64)
    for tag in tags:
        x1, y1, x2, y2 = view.from_original(tag.box)
        flat = tag_cells((x1, y1, x2, y2), view.size)
        colour[flat] = COLOURS.index(tag.colour)
        symbol[flat] = SYMBOLS.index(tag.symbol) if min(x2 - x1, y2 - y1) >= legible_side else IGNORE
    return TagMap(render_view(original, view), colour, symbol)


def scene_views(preset, index: int, rng: random.Random, crops_per_tag: int = 1, global_views: bool = True,
                data_seed: int | None = None):
    """Scene `index` (stream `data_seed`, default the preset's) at `preset.res_per_scene` training resolutions: per
    resolution the image and its tags, the global view (if `global_views`), and `crops_per_tag` jittered teacher
    crops around each tag (the box off by up to half a merged token, as a model's boxes are), as
    (image, view, tags). Budgets, box size and the no-zoom rule are the trajectory teacher's
    (`cache.trajectory_config`)."""
    sample = render_sample(preset.data_seed if data_seed is None else data_seed, index)
    cfg = trajectory_config(preset)
    options = cfg.options
    for resolution in rng.sample(list(preset.resolutions), min(preset.res_per_scene, len(preset.resolutions))):
        image = sample.image if resolution == max(sample.image.size) else resize_to_long_side(sample.image, resolution)
        tags = [dataclasses.replace(t, box=scale_box(t.box, sample.image.size, image.size)) for t in sample.tags]
        shown = global_view(image.size, options.global_min_pixels, options.global_max_pixels)
        if global_views:
            yield image, shown, tags
        if max(image.size[0] / shown.size[0], image.size[1] / shown.size[1]) < cfg.min_detail_gain:
            continue  # no detail to gain: the teacher never zooms here
        for tag in tags:
            for _ in range(crops_per_tag):
                box = view_box(tag.box, shown, cfg.box_min_side, cfg.box_grid)
                jitter = [rng.uniform(-FACTOR / 2, FACTOR / 2) for _ in range(2)]
                box = [box[0] + jitter[0], box[1] + jitter[1], box[2] + jitter[0], box[3] + jitter[1]]
                yield image, plan_crop(box, shown, image.size, options.crop_settings).view, tags


def scene_tag_maps(preset, index: int, rng: random.Random, legible_side: float | None = None) -> list[TagMap]:
    """`tag_map` of each of `scene_views`: the global views and one crop per tag; tags are legible from
    `legible_side` view px (default the teacher's `direct_min_side`)."""
    legible_side = trajectory_config(preset).direct_min_side if legible_side is None else legible_side
    return [tag_map(image, view, tags, legible_side) for image, view, tags in scene_views(preset, index, rng)]


def grid_positions(image) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each merged token of a view (raster order, as the tower emits them)."""
    cols, rows = image.size[0] // FACTOR, image.size[1] // FACTOR
    if max(rows, cols) > MAX_GRID:
        raise ValueError(f"a {image.size} view has {rows} x {cols} merged tokens; the position heads know {MAX_GRID}")
    row, col = np.divmod(np.arange(rows * cols), cols)
    return row, col


def _batch(maps: list[TagMap], image_processor, position: bool = False) -> dict:
    out = image_processor(images=[m.image for m in maps], do_resize=False, return_tensors="pt")
    batch = {"pixel_values": out["pixel_values"], "grid": out["image_grid_thw"],
             "colour": torch.from_numpy(np.concatenate([m.colour for m in maps])),
             "symbol": torch.from_numpy(np.concatenate([m.symbol for m in maps]))}
    if position:
        rows, cols = zip(*(grid_positions(m.image) for m in maps))
        batch["row"], batch["col"] = torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))
    return batch


def legible_tag_tokens(batch: dict) -> torch.Tensor:
    """Which tokens of a drill batch are on a tag whose symbol is labelled (legible)."""
    return (batch["symbol"] >= 0) & (batch["symbol"] < NONE_SYMBOL)


class TagHeads(torch.nn.Module):
    """Linear heads on the tower's output: colour and symbol, and with `position` the token's row and column."""

    def __init__(self, hidden: int, position: bool = False):
        super().__init__()
        self.colour = torch.nn.Linear(hidden, NONE_COLOUR + 1)
        self.symbol = torch.nn.Linear(hidden, NONE_SYMBOL + 1)
        self.row = torch.nn.Linear(hidden, MAX_GRID) if position else None
        self.col = torch.nn.Linear(hidden, MAX_GRID) if position else None

    def losses(self, embeds: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        ce = torch.nn.functional.cross_entropy
        on_tag = legible_tag_tokens(batch)
        out = {"colour": ce(self.colour(embeds), batch["colour"]),
               "symbol": ce(self.symbol(embeds), batch["symbol"], ignore_index=IGNORE),
               "tag_symbol": ce(self.symbol(embeds[on_tag]), batch["symbol"][on_tag]) if on_tag.any()
               else embeds.sum() * 0.0}
        if self.row is not None:
            out["row"], out["col"] = ce(self.row(embeds), batch["row"]), ce(self.col(embeds), batch["col"])
        return out


def image_embeddings(model, batch: dict) -> torch.Tensor:
    features = model.model.get_image_features(batch["pixel_values"], batch["grid"], return_dict=True)
    return torch.cat(list(features.pooler_output))


def held_out_scores(model, heads: TagHeads, batch: dict, maps: list[TagMap]) -> dict:
    """One forward over the held-out views: the heads' cross-entropies, the colour retrieval (the share of tags whose
    colour scores highest on one of the tag's own tokens), the share of tokens on a legible tag whose symbol is
    predicted exactly (`symbol_on_tags`) and, with position heads, the share of tag tokens whose row and column are
    both predicted exactly."""
    with torch.no_grad():
        embeds = image_embeddings(model, batch)
        out = {f"{name}_ce": float(loss) for name, loss in heads.losses(embeds, batch).items()}
        scores = heads.colour(embeds).split([len(m.colour) for m in maps])
        on_tag = legible_tag_tokens(batch)
        right = (heads.symbol(embeds).argmax(-1) == batch["symbol"])[on_tag]
        out["symbol_on_tags"] = round(float(right.float().mean()), 3) if on_tag.any() else None    # none legible
        if heads.row is not None:
            on_tag = batch["colour"] != NONE_COLOUR
            placed = (heads.row(embeds).argmax(-1) == batch["row"]) & (heads.col(embeds).argmax(-1) == batch["col"])
            out["tag_position"] = float(placed[on_tag].float().mean())
    hits = total = 0
    for view_scores, m in zip(scores, maps):
        for k in set(m.colour.tolist()) - {NONE_COLOUR}:
            total += 1
            hits += int(m.colour[int(view_scores[:, k].argmax())] == k)
    return {"retrieval": hits / max(total, 1), **out}


def warm_up_vision(model, image_processor, preset, steps: int, batch_size: int = 16, lr: float = 2e-3,
                   scenes: int = 300, held_out_scenes: int = 20, seed: int = 0, position_weight: float = 0.0,
                   symbol_weight: float = 0.0, legible_side: float | None = None, progress: bool = True) -> dict:
    """Train `model`'s vision tower on tag maps of `scenes` training scenes (rendered once, up front); with
    `position_weight` > 0 the row and column heads' losses join, scaled by it. The symbol loss is over every token,
    where "no tag" dominates; `symbol_weight` > 0 adds it over the legible tags' tokens alone, scaled by it (tags of
    at least `legible_side` view px, default the teacher's `direct_min_side`).

    Returns the held-out colour retrieval (and tag position) and losses before and after, and the wall time.
    """
    from tqdm.auto import tqdm

    rng, t0 = random.Random(seed), time.time()
    maps = []
    for index in tqdm(range(scenes + held_out_scenes), desc="vision drills: rendering", disable=not progress):
        maps.extend((index, m) for m in scene_tag_maps(preset, index, rng, legible_side))
    held = [m for i, m in maps if i >= scenes]
    train = [m for i, m in maps if i < scenes]
    position = position_weight > 0
    held_batch = _batch(held, image_processor, position)
    heads = TagHeads(model.config.text_config.hidden_size, position=position)
    params = list(model.model.visual.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 *
                                                 (1 + np.cos(np.pi * min(s, steps) / steps)))
    before = held_out_scores(model.eval(), heads, held_batch, held)
    model.train()
    bar, running = tqdm(range(steps), desc="vision drills", disable=not progress), None
    for step in bar:
        batch = _batch(rng.sample(train, min(batch_size, len(train))), image_processor, position)
        losses = heads.losses(image_embeddings(model, batch), batch)
        weights = {"row": position_weight, "col": position_weight, "tag_symbol": symbol_weight}
        sum(loss * weights.get(name, 1.0) for name, loss in losses.items()).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        values = {name: loss.item() for name, loss in losses.items()}
        running = values if running is None else {k: 0.95 * running[k] + 0.05 * v for k, v in values.items()}
        if step % 20 == 0:
            bar.set_postfix({f"{k}_ce": f"{v:.3f}" for k, v in running.items()})
    after = held_out_scores(model.eval(), heads, held_batch, held)
    report = {"steps": steps, "batch_size": batch_size, "lr": lr, "scenes": scenes, "views": len(train),
              "held_out_views": len(held), "held_out_colour_retrieval_before": round(before["retrieval"], 3),
              "held_out_colour_retrieval_after": round(after["retrieval"], 3),
              "held_out_colour_ce_before": round(before["colour_ce"], 3),
              "held_out_colour_ce": round(after["colour_ce"], 3), "held_out_symbol_ce": round(after["symbol_ce"], 3),
              "symbol_weight": symbol_weight, "legible_side": legible_side,
              "held_out_symbol_on_tags_before": before["symbol_on_tags"],
              "held_out_symbol_on_tags": after["symbol_on_tags"]}
    if heads.row is not None:
        report.update(position_weight=position_weight, held_out_tag_position_before=round(before["tag_position"], 3),
                      held_out_tag_position_after=round(after["tag_position"], 3),
                      held_out_position_ce_before=round(before["row_ce"] + before["col_ce"], 3),
                      held_out_position_ce=round(after["row_ce"] + after["col_ce"], 3))
    return {**report, "wall_time_s": round(time.time() - t0, 1)}
