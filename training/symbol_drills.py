"""Symbol drills: the vision tower learns to tell the eight symbols apart, on the tags of the teacher's crops.

The vision drills' symbol loss is over every token, where "no tag" dominates: a tower with a low symbol loss there
still does not encode which symbol a tag shows (a linear probe on the asked tag's tokens in held-out crops is at the
class prior, training/README.md). A symbol drill is a 56x56 patch (2 x 2 merged tokens) of a zooming trajectory's
last crop, exactly as the runtime renders it, around the asked tag's centre, shifted by up to `jitter` px (the tag
falls anywhere on the token grid in a real crop), labelled with the symbol the teacher's final reply names. A
linear head on the mean of the patch's tokens trains with the tower and is then dropped. The patches are small, so
a step costs ~0.1 s here where a whole-view drill costs ~1 s. `probe_symbols` asks the same of any tower without
moving it: a fresh linear head on its frozen patch features (what a later stage left of the symbols).
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


def tag_surround(traj: Trajectory, jitter: float):
    """The asked tag's surroundings in the last crop, wide enough for a `PATCH` shifted by up to `jitter`, and the
    index of the symbol that the final reply names."""
    symbol = SYMBOL.search(traj.turns[-1])
    if symbol is None or not traj.targets:
        raise ValueError("a symbol drill needs an attribute trajectory that names the symbol, with its `targets` "
                         "(a cache written before they were recorded has none: rebuild it)")
    x1, y1, x2, y2 = traj.views[-1].from_original(traj.targets[0])
    half = PATCH / 2 + jitter
    left, top = round((x1 + x2) / 2 - half), round((y1 + y2) / 2 - half)
    side = round(2 * half)
    return traj.images[-1].crop((left, top, left + side, top + side)), SYMBOLS.index(symbol.group(1))


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


def patch_means(model, batch: dict) -> torch.Tensor:
    """The tower's mean token of each patch in `batch`: (patches, out_hidden)."""
    tokens = image_embeddings(model, batch)
    return tokens.view(len(batch["symbol"]), -1, tokens.shape[-1]).mean(1)


def symbol_logits(model, head: torch.nn.Linear, batch: dict) -> torch.Tensor:
    return head(patch_means(model, batch))


def warm_up_symbols(model, image_processor, train: list, held: list, steps: int, batch_size: int = 64,
                    lr: float = 1e-3, jitter: float = FACTOR / 2, seed: int = 0, progress: bool = True) -> dict:
    """Train `model`'s vision tower on symbol drills. `train` and `held`: loaders of zooming attribute trajectories
    with their `targets`, of different scenes. Returns the held-out symbol accuracy (centred patches) before and
    after, and the wall time."""
    from tqdm.auto import tqdm

    if not train or not held:
        raise ValueError(f"symbol drills need attribute trajectories that zoom, to train on and to hold out; got "
                         f"{len(train)} and {len(held)}")
    t0, rng = time.time(), random.Random(seed)
    train_surrounds = [tag_surround(load(), jitter) for load in tqdm(train, desc="symbol drills: cutting",
                                                                     disable=not progress)]
    held_batch = symbol_batch([tag_surround(load(), jitter) for load in held], image_processor, None)
    head = torch.nn.Linear(model.config.vision_config.out_hidden_size, len(SYMBOLS))

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            right = symbol_logits(model, head, held_batch).argmax(-1) == held_batch["symbol"]
        return round(float(right.float().mean()), 3)

    before = accuracy()
    optimizer = torch.optim.AdamW([*model.model.visual.parameters(), *head.parameters()], lr=lr, weight_decay=0.01)
    model.train()
    bar, running = tqdm(range(steps), desc="symbol drills", disable=not progress), None
    for step in bar:
        batch = symbol_batch(rng.sample(train_surrounds, min(batch_size, len(train_surrounds))), image_processor, rng)
        loss = torch.nn.functional.cross_entropy(symbol_logits(model, head, batch), batch["symbol"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(symbol_ce=f"{running:.3f}")
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "jitter": jitter, "trajectories": len(train),
            "held_out": len(held), "held_out_symbol_accuracy_before": before,
            "held_out_symbol_accuracy": accuracy(), "wall_time_s": round(time.time() - t0, 1)}


def patch_features(model, image_processor, loaders: list, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's mean token of each trajectory's centred patch, and the symbol: (n, out_hidden), (n,)."""
    features, symbols = [], []
    with torch.no_grad():
        for i in range(0, len(loaders), batch_size):
            batch = symbol_batch([tag_surround(load(), 0) for load in loaders[i:i + batch_size]], image_processor, None)
            features.append(patch_means(model, batch))
            symbols.append(batch["symbol"])
    return torch.cat(features), torch.cat(symbols)


def probe_symbols(model, image_processor, train: list, held: list, steps: int = 500, lr: float = 1e-2,
                  seed: int = 0) -> dict:
    """How well the tower as it is tells the symbols apart: a fresh linear head on the (standardised) patch features
    of `train`, fit full-batch, scored on `held` (loaders as for `warm_up_symbols`). The model is not changed."""
    if not train or not held:
        raise ValueError(f"the symbol probe needs attribute trajectories that zoom, to fit on and to hold out; got "
                         f"{len(train)} and {len(held)}")
    was_training = model.training
    model.eval()
    train_x, train_y = patch_features(model, image_processor, train)
    held_x, held_y = patch_features(model, image_processor, held)
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
