"""Pointing drills: the first turn of a zooming trajectory, with the loss on the zoom box's numbers only.

After vision drills the tower marks each tag's colour on its own tokens (83% held-out retrieval), and after retrieval
drills the reply copies the question's colour, yet SFT on whole trajectories still writes one box for every image
(`cpu-grid-numbers`: `(0, 0, 56, 56)` for 16 of 16 probes, training/README.md). Writing the box is attention from
the box's number tokens to the one visual token whose colour the `<think>` text names, then reading that token's
row or column: the cross-modal analogue of the retrieval drills' text lookup, and like it, its gradient is spread
over every other reply token in SFT. A drill is the trajectory's global view, question and first reply (teacher
forced: the colour is named, the call written up to its box), labelled on the box's number tokens only.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from cof_edge.protocol import TokenLayout

from .drills import drill_loop
from .sft import CoFCollator, encode_example
from .trajectories import Trajectory


def number_token_ids(layout: TokenLayout) -> frozenset[int]:
    """Ids of the tokens that are digits only (a leading space allowed): a box coordinate is written with them."""
    vocab = layout.tokenizer.get_vocab_size()
    return frozenset(i for i in range(vocab) if layout.tokenizer.decode([i]).strip().isdigit())


def box_positions(layout: TokenLayout, ids: list[int], labels: list[int], numbers: frozenset[int]) -> list[int]:
    """Positions of the number tokens inside the first `[...]` of the labelled (reply) tokens: the `bbox_2d` list of
    the zoom call (the `2` of `bbox_2d` itself is a number token too, before the bracket)."""
    out, inside = [], False
    for position, (token, label) in enumerate(zip(ids, labels)):
        if label == -100:
            continue
        text = layout.tokenizer.decode([token])
        if inside and token in numbers:
            out.append(position)
        if "]" in text and inside:
            break
        inside = inside or "[" in text
    return out


def first_turn(traj: Trajectory) -> Trajectory:
    """The trajectory up to its first reply: the global view only."""
    return dataclasses.replace(traj, turns=traj.turns[:1], views=traj.views[:1], images=traj.images[:1],
                               boxes=traj.boxes[:1])


def pointing_example(layout: TokenLayout, image_processor, traj: Trajectory, numbers: frozenset[int],
                     system_prompt: str | None = None) -> dict:
    """`sft.encode_example` of the first turn of a zooming trajectory, labels on the box's number tokens only."""
    if not traj.zooms:
        raise ValueError("a pointing drill needs a trajectory that zooms (its first reply writes a box)")
    example = encode_example(layout, image_processor, first_turn(traj), system_prompt=system_prompt)
    labels = torch.full_like(example["labels"], -100)
    box = box_positions(layout, example["input_ids"].tolist(), example["labels"].tolist(), numbers)
    labels[box] = example["input_ids"][box]
    example["labels"] = labels
    return example


def box_scores(model, batch: dict) -> dict:
    """Teacher-forced scores of a drill batch: the box tokens' cross-entropy, the share of them predicted exactly
    (argmax), and the share of drills whose whole box is."""
    with torch.no_grad():
        out = model(**batch)
    predicted = out.logits[:, :-1].argmax(-1)
    target = batch["labels"][:, 1:]
    labelled = target != -100
    right = (predicted == target) & labelled
    whole = (right.sum(1) == labelled.sum(1)) & labelled.any(1)
    return {"box_ce": float(out.loss), "token_accuracy": float(right.sum() / labelled.sum().clamp(min=1)),
            "box_exact": float(whole.sum() / labelled.any(1).sum().clamp(min=1))}


def warm_up_pointing(model, layout: TokenLayout, image_processor, train: list, held: list, steps: int,
                     batch_size: int, lr: float, system_prompt: str | None = None, seed: int = 0,
                     progress: bool = True) -> dict:
    """Train `model` (tower and decoder) on pointing drills. `train` and `held`: zero-argument loaders
    (`CachedTrajectory.load`) of zooming trajectories, of different scenes (a scene's tags are where they are at
    every resolution and in every question). Returns the held-out box scores before and after, and the wall time."""
    numbers, pad = number_token_ids(layout), CoFCollator(layout.special.end_of_text)
    if not train or not held:
        raise ValueError(f"pointing drills need zooming trajectories to train on and to hold out; "
                         f"got {len(train)} and {len(held)}")

    def batch(loaders):
        return pad([pointing_example(layout, image_processor, load(), numbers, system_prompt) for load in loaders])

    held_batch, t0 = batch(held), time.time()
    before = box_scores(model.eval(), held_batch)
    drill_loop(model, batch, train, steps, batch_size, lr, seed, "pointing drills", progress)
    after = box_scores(model.eval(), held_batch)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "trajectories": len(train), "held_out": len(held),
            **{f"held_out_{k}_before": round(v, 3) for k, v in before.items()},
            **{f"held_out_{k}": round(v, 3) for k, v in after.items()},
            "wall_time_s": round(time.time() - t0, 1)}
