"""Symbol drills: the vision tower learns to tell the eight symbols apart, on the tags of the teacher's crops.

The vision drills' symbol loss is over every token, where "no tag" dominates: a tower with a low symbol loss there
still does not encode which symbol a tag shows (a linear probe on the asked tag's tokens in held-out crops is at the
class prior, training/README.md). A symbol drill is a 56x56 patch (2 x 2 merged tokens) of a zooming trajectory's
last crop, exactly as the runtime renders it, around the asked tag's centre, shifted by up to `jitter` px (the tag
falls anywhere on the token grid in a real crop), labelled with the symbol the teacher's final reply names. A
linear head on the mean of the patch's tokens trains with the tower and is then dropped. The patches are small, so
a step costs ~0.1 s here where a whole-view drill costs ~1 s. `probe_symbols` asks the same of any tower without
moving it: a fresh linear head on its frozen patch features (what a later stage left of the symbols).
`SymbolLoss` is the drills' objective alone, so that a stage that trains the tower for something else (the first
pointing drills, `Preset.point_symbol_weight`) can add it to its own loss and keep the symbols.

In context (`tag_tokens`): the whole crop, the head on the tag's merged tokens, which the tower's full-attention
blocks have mixed with the rest of the crop, as the reply reads them. The cache holds one such drill per zooming
attribute question (2,576 in the 600-scene cache: a tower overfits them), so `rendered_tag_crops` renders scenes of
their own, every tag of each crop a drill (`Preset.symbol_scenes`).
"""

from __future__ import annotations

import dataclasses
import random
import time

import torch

from cof_edge.data.vsearch import SYMBOLS
from cof_edge.geometry import FACTOR
from cof_edge.images import render_view

from .answer_drills import SYMBOL
from .trajectories import Trajectory
from .vision_drills import image_embeddings, scene_views

PATCH = 2 * FACTOR
PATCHES_PER_STEP = 64
RENDERED_STREAM = 500     # rendered_tag_crops' scenes: data stream preset.data_seed + this


def asked_tag(traj: Trajectory) -> tuple[float, float, int]:
    """The asked tag's centre in the last crop's pixels, and the index of the symbol that the final reply names."""
    symbol = SYMBOL.search(traj.turns[-1])
    if symbol is None or not traj.targets:
        raise ValueError("a symbol drill needs an attribute trajectory that names the symbol, with its `targets` "
                         "(a cache written before they were recorded has none: rebuild it)")
    x1, y1, x2, y2 = traj.views[-1].from_original(traj.targets[0])
    return (x1 + x2) / 2, (y1 + y2) / 2, SYMBOLS.index(symbol.group(1))


def tag_surround(traj: Trajectory, jitter: float):
    """The asked tag's surroundings in the last crop, wide enough for a `PATCH` shifted by up to `jitter`, and the
    index of the symbol that the final reply names."""
    x, y, symbol = asked_tag(traj)
    half = PATCH / 2 + jitter
    left, top = round(x - half), round(y - half)
    side = round(2 * half)
    return traj.images[-1].crop((left, top, left + side, top + side)), symbol


def symbol_batch(surrounds: list, image_processor, rng: random.Random | None) -> dict:
    """A `PATCH` from each surround: at a random shift (`rng`), or at its centre (None)."""
    patches, symbols = [], []
    for image, symbol in surrounds:
        slack = image.size[0] - PATCH
        dx, dy = (rng.randint(0, slack), rng.randint(0, slack)) if rng else (slack // 2, slack // 2)
        patches.append(image.crop((dx, dy, dx + PATCH, dy + PATCH)))
        symbols.append(symbol)
    out = image_processor(images=patches, do_resize=False, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "grid": out["image_grid_thw"], "symbol": torch.tensor(symbols)}


def centre_tokens(x: float, y: float, size: tuple[int, int]) -> list[int]:
    """The merged tokens (raster order) of a view of `size` within one token of (x, y) on both axes: the `PATCH`
    about it."""
    cols, rows = size[0] // FACTOR, size[1] // FACTOR
    return [row * cols + col for row in range(rows) for col in range(cols)
            if abs((col + 0.5) * FACTOR - x) < FACTOR and abs((row + 0.5) * FACTOR - y) < FACTOR]


def tag_tokens(traj: Trajectory) -> tuple:
    """The last crop as the runtime renders it, the indices of its merged tokens under the asked tag
    (`centre_tokens`), and the symbol's index."""
    x, y, symbol = asked_tag(traj)
    crop = traj.images[-1]
    return crop, centre_tokens(x, y, crop.size), symbol


def rendered_tag_crops(preset, scenes: int, crops_per_tag: int = 2, legible_side: float = 16.0, seed: int = 0,
                       progress: bool = True) -> list[tuple]:
    """In-context symbol drills without the cache: `scenes` scenes of their own stream (`RENDERED_STREAM` past
    `preset.data_seed`, so none is a training, held-out or evaluation scene), each at every zooming resolution of
    `preset.resolutions`, `crops_per_tag` jittered teacher crops around each tag as the runtime renders them
    (`vision_drills.scene_views`). An item (as `tag_tokens`) per tag of at least `legible_side` crop px whose centre
    is in a crop: a crop often shows the asked tag's neighbours, and each is a drill of its own."""
    from tqdm.auto import tqdm

    resolutions = tuple(dict.fromkeys(preset.resolutions))
    every_resolution = dataclasses.replace(preset, resolutions=resolutions, res_per_scene=len(resolutions))
    rng, items = random.Random(seed), []
    for index in tqdm(range(scenes), desc="symbol drills: rendering", disable=not progress):
        for image, view, tags in scene_views(every_resolution, index, rng, crops_per_tag, global_views=False,
                                             data_seed=preset.data_seed + RENDERED_STREAM):
            crop = render_view(image, view)
            for tag in tags:
                x1, y1, x2, y2 = view.from_original(tag.box)
                x, y = (x1 + x2) / 2, (y1 + y2) / 2
                if 0 <= x < view.size[0] and 0 <= y < view.size[1] and min(x2 - x1, y2 - y1) >= legible_side:
                    items.append((crop, centre_tokens(x, y, view.size), SYMBOLS.index(tag.symbol)))
    return items


def crop_batch(items: list, image_processor) -> dict:
    """Whole crops (`tag_tokens` items): the tower sees the tag in its context, as the reply does."""
    out = image_processor(images=[crop for crop, _, _ in items], do_resize=False, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "grid": out["image_grid_thw"],
            "tokens": [tokens for _, tokens, _ in items], "symbol": torch.tensor([symbol for _, _, symbol in items])}


def patch_means(model, batch: dict) -> torch.Tensor:
    """The tower's mean token of each patch in `batch` (`symbol_batch`), or of each crop's tag tokens (`crop_batch`):
    (items, out_hidden)."""
    tokens = image_embeddings(model, batch)
    if "tokens" in batch:
        merged = model.config.vision_config.spatial_merge_size ** 2
        per_image = tokens.split((batch["grid"].prod(-1) // merged).tolist())
        return torch.stack([image[index].mean(0) for image, index in zip(per_image, batch["tokens"])])
    return tokens.view(len(batch["symbol"]), -1, tokens.shape[-1]).mean(1)


def symbol_logits(model, head: torch.nn.Linear, batch: dict) -> torch.Tensor:
    return head(patch_means(model, batch))


def symbol_items(train: list, in_context: bool = False, jitter: float = FACTOR / 2, progress: bool = True) -> list:
    """The symbol drills of `train` (loaders of zooming attribute trajectories): the asked tag's surroundings for a
    patch shifted by up to `jitter` px (`tag_surround`), or `in_context` its tokens in the whole crop (`tag_tokens`)."""
    from tqdm.auto import tqdm

    cut = tag_tokens if in_context else (lambda traj: tag_surround(traj, jitter))
    return [cut(load()) for load in tqdm(train, desc="symbol drills: cutting", disable=not progress)]


def drills_per_step(in_context: bool, crops: int) -> int:
    """A symbol-drill step's batch: `crops` whole crops in context (a crop costs as much as a pointing drill's
    view), else `PATCHES_PER_STEP` patches (a patch is 1/36 of a crop)."""
    return crops if in_context else PATCHES_PER_STEP


def centred_batch(loaders: list, image_processor, in_context: bool) -> dict:
    """The symbol drills of `loaders` as scored: centred patches, or `in_context` the whole crops."""
    items = symbol_items(loaders, in_context, jitter=0, progress=False)
    return crop_batch(items, image_processor) if in_context else symbol_batch(items, image_processor, None)


class SymbolLoss:
    """The symbol drills' objective, to train alone or as a term of another stage's loss: cross-entropy of a fresh
    linear head (`head`, to be optimised with the tower) on `batch_size` of `items` (`symbol_items`), sampled (and
    patches shifted) with `random.Random(seed)`, at each call. `in_context`: the items are whole crops
    (`tag_tokens`, `rendered_tag_crops`), the head on the tag's tokens, as the reply reads them."""

    def __init__(self, model, image_processor, items: list, batch_size: int = PATCHES_PER_STEP, seed: int = 0,
                 in_context: bool = False):
        if not items:
            raise ValueError("the symbol loss needs attribute trajectories that zoom, to train on; got none")
        self.items, self.image_processor, self.batch_size = items, image_processor, batch_size
        self.rng, self.in_context = random.Random(seed), in_context
        self.head = torch.nn.Linear(model.config.vision_config.out_hidden_size, len(SYMBOLS))

    def __call__(self, model) -> torch.Tensor:
        items = self.rng.sample(self.items, min(self.batch_size, len(self.items)))
        batch = crop_batch(items, self.image_processor) if self.in_context else symbol_batch(
            items, self.image_processor, self.rng)
        return torch.nn.functional.cross_entropy(symbol_logits(model, self.head, batch), batch["symbol"])


def warm_up_symbols(model, image_processor, items: list, held: list, steps: int,
                    batch_size: int = PATCHES_PER_STEP,
                    lr: float = 1e-3, seed: int = 0, in_context: bool = False, progress: bool = True) -> dict:
    """Train `model`'s vision tower on symbol drills: `items` (`symbol_items`; `in_context`: whole crops). `held`:
    loaders of zooming attribute trajectories of other scenes, scored as trained (centred patches, or the tag's
    tokens in the crop). Returns the held-out symbol accuracy before and after, and the wall time."""
    from tqdm.auto import tqdm

    if not items or not held:
        raise ValueError(f"symbol drills need attribute trajectories that zoom, to train on and to hold out; got "
                         f"{len(items)} and {len(held)}")
    t0 = time.time()
    objective = SymbolLoss(model, image_processor, items, batch_size, seed, in_context)
    held_batch = centred_batch(held, image_processor, in_context)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            right = symbol_logits(model, objective.head, held_batch).argmax(-1) == held_batch["symbol"]
        return round(float(right.float().mean()), 3)

    before = accuracy()
    optimizer = torch.optim.AdamW([*model.model.visual.parameters(), *objective.head.parameters()], lr=lr,
                                  weight_decay=0.01)
    model.train()
    bar, running = tqdm(range(steps), desc="symbol drills", disable=not progress), None
    for step in bar:
        loss = objective(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(symbol_ce=f"{running:.3f}")
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "in_context": in_context, "drills": len(items),
            "held_out": len(held), "held_out_symbol_accuracy_before": before,
            "held_out_symbol_accuracy": accuracy(), "wall_time_s": round(time.time() - t0, 1)}


def patch_features(model, image_processor, loaders: list, batch_size: int = 64,
                   in_context: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's mean token of each trajectory's centred patch (`in_context`: of its tag's tokens in the whole
    crop), and the symbol: (n, out_hidden), (n,)."""
    features, symbols = [], []
    with torch.no_grad():
        for i in range(0, len(loaders), batch_size):
            batch = centred_batch(loaders[i:i + batch_size], image_processor, in_context)
            features.append(patch_means(model, batch))
            symbols.append(batch["symbol"])
    return torch.cat(features), torch.cat(symbols)


def probe_symbols(model, image_processor, train: list, held: list, steps: int = 500, lr: float = 1e-2,
                  seed: int = 0, in_context: bool = False) -> dict:
    """How well the tower as it is tells the symbols apart: a fresh linear head on the (standardised) patch features
    of `train` (`in_context`: the tag's tokens in the whole crop, what the reply reads), fit full-batch, scored on
    `held` (loaders as for `warm_up_symbols`). The model is not changed."""
    if not train or not held:
        raise ValueError(f"the symbol probe needs attribute trajectories that zoom, to fit on and to hold out; got "
                         f"{len(train)} and {len(held)}")
    was_training = model.training
    model.eval()
    train_x, train_y = patch_features(model, image_processor, train, in_context=in_context)
    held_x, held_y = patch_features(model, image_processor, held, in_context=in_context)
    model.train(was_training)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, held_x = (train_x - mean) / std, (held_x - mean) / std
    head = torch.nn.Linear(train_x.shape[1], len(SYMBOLS))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head.reset_parameters()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(steps):
        torch.nn.functional.cross_entropy(head(train_x), train_y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        def accuracy(x, y):
            return round(float((head(x).argmax(-1) == y).float().mean()), 3)

        return {"train": len(train_y), "held_out": len(held_y), "train_accuracy": accuracy(train_x, train_y),
                "held_out_accuracy": accuracy(held_x, held_y),
                "held_out_prior": round(float(torch.bincount(held_y).max()) / len(held_y), 3)}
