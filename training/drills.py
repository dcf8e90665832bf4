"""Retrieval drills: short text-only examples for the two lookups every CoF answer needs.

A CoF answer copies the question's colour into its `<think>` text (which tag to zoom on) and maps the symbol it saw
to its option letter (`(B) star` → `B`). Both are attention from the answer to one question token. In a full
trajectory that token is one of ~260-770 (system prompt, 144-token views, format instruction), and a small model
trained from scratch stays at chance on both for 1,600+ steps: the gradient that would grow the attention is
spread over the whole context. A drill is the same question and the same final reply without the system turn and
the views (the question-to-reply distance unchanged, ~110 tokens), with the loss on the colour words and the option
letter only, the reply's other tokens being what the views tell. Mixed into every SFT batch (`Preset.drills`).
"""

from __future__ import annotations

import random
import time

import torch

from cof_edge.data.vsearch import LETTERS, TAG_COLOURS
from cof_edge.protocol import IM_END, IM_START, TokenLayout, first_user_text

from .trajectories import Trajectory


def drill_text(traj: Trajectory) -> tuple[str, str]:
    """(prompt, reply): the first user turn without its image, and the trajectory's final reply."""
    return f"{IM_START}user\n{first_user_text(traj.text)}{IM_END}\n{IM_START}assistant\n", traj.turns[-1]


def lookup_token_ids(layout: TokenLayout) -> frozenset[int]:
    """Ids of the colour words and option letters as the reply spells them (`" red"`, `">B"` in `<answer>B`)."""
    ids = set()
    for colour in TAG_COLOURS:
        ids.update(layout.tokenizer.encode(f" {colour}", add_special_tokens=False).ids[-1:])
    head = layout.tokenizer.encode("<answer", add_special_tokens=False).ids
    for letter in LETTERS:
        ids.update(layout.tokenizer.encode(f"<answer>{letter}", add_special_tokens=False).ids[len(head):][:1])
    return frozenset(ids)


def drill_example(layout: TokenLayout, traj: Trajectory, lookup_ids: frozenset[int]) -> dict:
    """Tensors like `sft.encode_example`'s, without pixels: labels on the reply's lookup tokens only."""
    prompt, reply = drill_text(traj)
    prompt_ids = layout.encode(prompt)
    reply_ids = layout.encode(reply)
    ids = prompt_ids + reply_ids
    labels = [-100] * len(prompt_ids) + [t if t in lookup_ids else -100 for t in reply_ids]
    positions = torch.arange(len(ids)).expand(3, -1).clone()   # text only: M-RoPE's three axes are equal
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": positions}


def lookup_loss(model, batch: dict) -> float:
    """Mean cross-entropy of a drill batch's labelled (lookup) tokens."""
    with torch.no_grad():
        return float(model(**batch).loss)


def drill_loop(model, batch, train: list, steps: int, batch_size: int, lr: float, seed: int, desc: str,
               progress: bool = True, reset_every: int = 0, loss=None, extra_parameters: list = ()) -> None:
    """The drills' training loop: AdamW on `batch(loaders)` of `batch_size` loaders sampled from `train` (seeded
    `seed` + 1), `steps` times; the running loss on the progress bar. `reset_every` > 0 starts a fresh AdamW every
    that many steps: its moments reset, which is what took the box copy off its plateau (training/README.md).
    `loss(model, batch)` replaces the model's own loss; `extra_parameters` (a loss's own head) train with the
    model's."""
    from tqdm.auto import tqdm

    rng = random.Random(seed + 1)
    model.train()
    bar, running = tqdm(range(steps), desc=desc, disable=not progress), None
    for step in bar:
        if step == 0 or (reset_every and step % reset_every == 0):
            optimizer = torch.optim.AdamW([*model.parameters(), *extra_parameters], lr=lr, weight_decay=0.01)
        drills = batch(rng.sample(train, min(batch_size, len(train))))
        objective = loss(model, drills) if loss else model(**drills).loss
        objective.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = objective.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.3f}")


def warm_up(model, layout: TokenLayout, trajectories, steps: int, batch_size: int, lr: float, seed: int = 0,
            held_out: int = 64, progress: bool = True) -> dict:
    """Train `model` on drills only (the short-context stage of the curriculum), before SFT on whole trajectories.

    `trajectories` is a list of zero-argument loaders (`CachedTrajectory.load`). Returns the held-out lookup loss
    before and after, and the wall time.
    """
    from .sft import CoFCollator

    lookup_ids, pad = lookup_token_ids(layout), CoFCollator(layout.special.end_of_text)
    items = list(trajectories)
    random.Random(seed).shuffle(items)
    held, train = items[:held_out], items[held_out:]
    if not train:
        raise ValueError(f"drill warm-up needs more than {held_out} trajectories, got {len(items)}")

    def batch(loaders):
        return pad([drill_example(layout, load(), lookup_ids) for load in loaders])

    held_batch, t0 = batch(held), time.time()
    before = lookup_loss(model.eval(), held_batch)
    drill_loop(model, batch, train, steps, batch_size, lr, seed, "drill warm-up", progress)
    after = lookup_loss(model.eval(), held_batch)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "held_out_lookup_ce_before": round(before, 3),
            "held_out_lookup_ce_after": round(after, 3), "wall_time_s": round(time.time() - t0, 1)}
