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
"""

from __future__ import annotations

import random
import time

import torch

from cof_edge.data.vsearch import SYMBOLS
from cof_edge.geometry import FACTOR

from .answer_drills import SYMBOL
from .trajectories import Trajectory
from .vision_drills import image_embeddings

PATCH = 2 * FACTOR


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


def tag_tokens(traj: Trajectory) -> tuple:
    """The last crop as the runtime renders it, the indices of its merged tokens under the asked tag (those within
    one token of its centre on both axes: the `PATCH` about it), and the symbol's index."""
    x, y, symbol = asked_tag(traj)
    crop = traj.images[-1]
    cols, rows = crop.size[0] // FACTOR, crop.size[1] // FACTOR
    tokens = [row * cols + col for row in range(rows) for col in range(cols)
              if abs((col + 0.5) * FACTOR - x) < FACTOR and abs((row + 0.5) * FACTOR - y) < FACTOR]
    return crop, tokens, symbol


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


class SymbolLoss:
    """The symbol drills' objective, to train alone or as a term of another stage's loss: cross-entropy of a fresh
    linear head (`head`, to be optimised with the tower) on `batch_size` patches of `train`'s crops, sampled and
    shifted by up to `jitter` px with `random.Random(seed)`, at each call. `in_context`: on `batch_size` whole crops
    instead, the head on the tag's tokens (`tag_tokens`), as the reply reads them."""

    def __init__(self, model, image_processor, train: list, batch_size: int = 64, jitter: float = FACTOR / 2,
                 seed: int = 0, progress: bool = True, in_context: bool = False):
        from tqdm.auto import tqdm

        if not train:
            raise ValueError("the symbol loss needs attribute trajectories that zoom, to train on; got none")
        cut = tag_tokens if in_context else (lambda traj: tag_surround(traj, jitter))
        self.items = [cut(load()) for load in tqdm(train, desc="symbol drills: cutting", disable=not progress)]
        self.image_processor, self.batch_size, self.rng = image_processor, batch_size, random.Random(seed)
        self.in_context = in_context
        self.head = torch.nn.Linear(model.config.vision_config.out_hidden_size, len(SYMBOLS))

    def __call__(self, model) -> torch.Tensor:
        items = self.rng.sample(self.items, min(self.batch_size, len(self.items)))
        batch = crop_batch(items, self.image_processor) if self.in_context else symbol_batch(
            items, self.image_processor, self.rng)
        return torch.nn.functional.cross_entropy(symbol_logits(model, self.head, batch), batch["symbol"])


def warm_up_symbols(model, image_processor, train: list, held: list, steps: int, batch_size: int = 64,
                    lr: float = 1e-3, jitter: float = FACTOR / 2, seed: int = 0, progress: bool = True) -> dict:
    """Train `model`'s vision tower on symbol drills. `train` and `held`: loaders of zooming attribute trajectories
    with their `targets`, of different scenes. Returns the held-out symbol accuracy (centred patches) before and
    after, and the wall time."""
    from tqdm.auto import tqdm

    if not train or not held:
        raise ValueError(f"symbol drills need attribute trajectories that zoom, to train on and to hold out; got "
                         f"{len(train)} and {len(held)}")
    t0 = time.time()
    objective = SymbolLoss(model, image_processor, train, batch_size, jitter, seed, progress)
    held_batch = symbol_batch([tag_surround(load(), jitter) for load in held], image_processor, None)

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
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "jitter": jitter, "trajectories": len(train),
            "held_out": len(held), "held_out_symbol_accuracy_before": before,
            "held_out_symbol_accuracy": accuracy(), "wall_time_s": round(time.time() - t0, 1)}


def patch_features(model, image_processor, loaders: list, batch_size: int = 64,
                   in_context: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's mean token of each trajectory's centred patch (`in_context`: of its tag's tokens in the whole
    crop), and the symbol: (n, out_hidden), (n,)."""
    features, symbols = [], []
    with torch.no_grad():
        for i in range(0, len(loaders), batch_size):
            trajs = [load() for load in loaders[i:i + batch_size]]
            batch = (crop_batch([tag_tokens(t) for t in trajs], image_processor) if in_context
                     else symbol_batch([tag_surround(t, 0) for t in trajs], image_processor, None))
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
