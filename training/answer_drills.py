"""Answer drills: a zooming trajectory whole, labelled only where its final reply names the crop's symbol and the
option letter; and their teacher-forced scores, with each trajectory's own crop and with crops shuffled between them
(a reply that reads the crop scores higher with its own). training/README.md, "The `cpu-attend` run"."""

from __future__ import annotations

import dataclasses
import re

import torch

from cof_edge.protocol import TokenLayout

from .sft import CoFCollator, encode_example
from .trajectories import Trajectory

SYMBOL = re.compile(r"shows an? (\S+) on")
LETTER = re.compile(r"<answer>\s*([A-Z])")


def last_occurrence(seq: list[int], sub: list[int]) -> int:
    for start in range(len(seq) - len(sub), -1, -1):
        if seq[start:start + len(sub)] == sub:
            return start
    return -1


def answer_targets(layout: TokenLayout, ids: list[int], reply: str) -> tuple[list[int], int]:
    """Where, in a trajectory's `ids`, its final `reply` writes the crop's symbol (all its tokens) and the letter."""
    symbol, letter = SYMBOL.search(reply), LETTER.search(reply)
    if not symbol or not letter:
        raise ValueError(f"an answer drill needs a final reply that names the crop's symbol and a letter: {reply!r}")
    encoding = layout.tokenizer.encode(reply, add_special_tokens=False)
    start = last_occurrence(ids, encoding.ids)
    if start < 0:
        raise ValueError("the final reply's tokens are not in the trajectory's tokens")

    def covering(lo: int, hi: int) -> list[int]:
        return [start + i for i, (a, b) in enumerate(encoding.offsets) if a < hi and b > lo]

    return covering(*symbol.span(1)), covering(*letter.span(1))[0]


def answer_example(layout: TokenLayout, image_processor, traj: Trajectory, system_prompt: str | None = None) -> dict:
    """`sft.encode_example` of a whole zooming trajectory, labels on the final reply's symbol and letter only."""
    example = encode_example(layout, image_processor, traj, system_prompt=system_prompt)
    symbol, letter = answer_targets(layout, example["input_ids"].tolist(), traj.turns[-1])
    labels = torch.full_like(example["labels"], -100)
    labels[symbol + [letter]] = example["input_ids"][symbol + [letter]]
    example["labels"] = labels
    return example


def with_crop_of(traj: Trajectory, other: Trajectory) -> Trajectory:
    """`traj` with `other`'s last crop in place of its own."""
    return dataclasses.replace(traj, images=[*traj.images[:-1], other.images[-1]],
                               views=[*traj.views[:-1], other.views[-1]])


@torch.no_grad()
def answer_scores(model, layout: TokenLayout, image_processor, trajectories: list[Trajectory],
                  system_prompt: str | None = None) -> dict:
    """Teacher-forced argmax accuracy of the symbol's first token and of the letter, over zooming `trajectories`:
    with their own crops, and with each one's crop taken from the next (`*_shuffled_crops`)."""
    pad, scores = CoFCollator(layout.special.end_of_text), {}
    shuffled = [with_crop_of(t, trajectories[(i + 1) % len(trajectories)]) for i, t in enumerate(trajectories)]
    for suffix, group in (("", trajectories), ("_shuffled_crops", shuffled)):
        right = [0, 0]
        for traj in group:
            batch = pad([answer_example(layout, image_processor, traj, system_prompt)])
            ids, labelled = batch["input_ids"][0], (batch.pop("labels")[0] != -100).nonzero().flatten()
            predicted = model(**batch).logits[0].argmax(-1)
            for i, position in enumerate((labelled[0], labelled[-1])):    # the symbol's first token, the letter
                right[i] += int(predicted[position - 1] == ids[position])
        scores[f"symbol{suffix}"], scores[f"letter{suffix}"] = (round(r / len(group), 3) for r in right)
    return scores
