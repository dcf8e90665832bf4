"""Answer drills: a zooming trajectory whole, labelled only where its final reply names the crop's symbol and the
option letter; and their teacher-forced scores, with each trajectory's own crop and with crops shuffled between them
(a reply that reads the crop scores higher with its own). training/README.md, "The `cpu-attend` run".

In a crop the asked tag is one to a few of 144 merged tokens, beside other tags: naming its symbol is a retrieval
into the crop, and the letter is one into the question's options (the symbol's option text carries its letter).
As for the box (pointing_drills.py), the gradient of the answer's tokens alone does not grow either attention, so
`answer_attention_loss` supervises it: from the position that writes the symbol onto the asked tag's tokens in the
last view, and from the one that writes the letter onto the chosen option's text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import torch

from cof_edge.protocol import TokenLayout, first_user_text

from .drills import drill_loop
from .pointing_drills import eager_attention
from .sft import CoFCollator, encode_example
from .trajectories import Trajectory
from .vision_drills import tag_cells

SYMBOL = re.compile(r"shows an? (\S+) on")
LETTER = re.compile(r"<answer>\s*([A-Z])")


def last_occurrence(seq: list[int], sub: list[int]) -> int:
    for start in range(len(seq) - len(sub), -1, -1):
        if seq[start:start + len(sub)] == sub:
            return start
    return -1


def text_positions(layout: TokenLayout, ids: list[int], text: str, spans: list[tuple[int, int]]) -> list[list[int]]:
    """Where `text` (tokenized alone) last occurs in `ids`: per character span, the positions of the tokens over it."""
    encoding = layout.tokenizer.encode(text, add_special_tokens=False)
    start = last_occurrence(ids, encoding.ids)
    if start < 0:
        raise ValueError(f"the tokens of {text[:40]!r} are not in the trajectory's tokens")
    return [[start + i for i, (a, b) in enumerate(encoding.offsets) if a < hi and b > lo] for lo, hi in spans]


def answer_targets(layout: TokenLayout, ids: list[int], reply: str) -> tuple[list[int], int]:
    """Where, in a trajectory's `ids`, its final `reply` writes the crop's symbol (all its tokens) and the letter."""
    symbol, letter = SYMBOL.search(reply), LETTER.search(reply)
    if not symbol or not letter:
        raise ValueError(f"an answer drill needs a final reply that names the crop's symbol and a letter: {reply!r}")
    symbol_positions, letter_positions = text_positions(layout, ids, reply, [symbol.span(1), letter.span(1)])
    return symbol_positions, letter_positions[0]


def option_positions(layout: TokenLayout, ids: list[int], question: str, letter: str) -> list[int]:
    """The positions of option `letter`'s text (`(B) star` → `star`) in the question's user turn."""
    text = first_user_text(question)
    option = re.search(rf"^\({letter}\) (.+)$", text, re.MULTILINE)
    if not option:
        raise ValueError(f"the question has no option ({letter})")
    return text_positions(layout, ids, text, [option.span(1)])[0]


def crop_tag_positions(ids: torch.Tensor, traj: Trajectory, image_token_id: int) -> list[int]:
    """The positions of the last view's merged tokens that show the asked tag (`traj.targets[0]`)."""
    view = traj.views[-1]
    cells = torch.from_numpy(tag_cells(view.from_original(traj.targets[0]), view.size))
    last_view = (ids == image_token_id).nonzero().flatten()[-len(cells):]
    return last_view[cells].tolist()


def answer_example(layout: TokenLayout, image_processor, traj: Trajectory, system_prompt: str | None = None,
                   image_token_id: int | None = None) -> dict:
    """`sft.encode_example` of a whole zooming trajectory, labels on the final reply's symbol and letter only;
    SFT's labels (every assistant token) kept as `reply_labels`. With `image_token_id` (the model's), also
    `attention_targets`: (the position that writes the symbol, the asked tag's positions in the crop) and (the one
    that writes the letter, the chosen option's text positions)."""
    example = encode_example(layout, image_processor, traj, system_prompt=system_prompt)
    ids = example["input_ids"].tolist()
    symbol, letter = answer_targets(layout, ids, traj.turns[-1])
    example["reply_labels"] = example["labels"]
    example["labels"] = torch.full_like(example["labels"], -100)
    example["labels"][symbol + [letter]] = example["input_ids"][symbol + [letter]]
    if image_token_id is not None:
        if not traj.targets:
            raise ValueError("answer attention needs the asked tag's box (`targets`): rebuild the cache")
        example["attention_targets"] = [
            (symbol[0] - 1, crop_tag_positions(example["input_ids"], traj, image_token_id)),
            (letter - 1, option_positions(layout, ids, traj.text, traj.label))]
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


def answer_attention_loss(targets: list, attentions, layer_sets, heads) -> torch.Tensor:
    """Supervised attention: the mean of −log(attention mass on the keys) over drills, over each target of
    `answer_example`'s `attention_targets` (symbol, letter), read from its own head (`heads`) in its `layer_sets`."""
    terms = [-torch.log(attentions[layer][row, head, query, keys].sum() + 1e-6)
             for row, pairs in enumerate(targets) for (query, keys), layers, head in zip(pairs, layer_sets, heads)
             if keys for layer in layers]
    if not terms:
        raise ValueError("no drill in the batch has attention targets")
    return torch.stack(terms).mean()


@torch.no_grad()
def answer_attention(model, examples: list[dict], pad) -> dict:
    """Per target (symbol, letter) and decoder layer: the attention mass on its keys, from its query position, of
    the head that puts the most there (mean over `examples`, eager attention)."""
    mass = {"symbol": [], "letter": []}
    with eager_attention(model):
        for example in examples:
            attentions = model(**pad([example]), output_attentions=True).attentions
            for name, (query, keys) in zip(mass, example["attention_targets"]):
                mass[name].append([float(a[0, :, query, keys].sum(-1).max()) for a in attentions])
    return {f"{name}_attention": [round(sum(v) / len(v), 3) for v in zip(*rows)] for name, rows in mass.items()}


def warm_up_answers(model, layout: TokenLayout, image_processor, train: list, held: list, steps: int,
                    batch_size: int, lr: float, system_prompt: str | None = None, seed: int = 0,
                    reset_every: int = 0, attention_weight: float = 0.0, reply_weight: float = 0.0,
                    heads=(1, 2), progress: bool = True) -> dict:
    """Train `model` on answer drills. `train` and `held`: loaders of zooming attribute trajectories with their
    `targets`, of different scenes. The loss is on the symbol and the letter; `reply_weight` > 0 adds SFT's loss on
    every reply token times it (on the answer alone the model learns to write symbols and letters everywhere).
    `attention_weight` > 0 adds `answer_attention_loss` times it: the symbol's query in every decoder layer but the
    first, the letter's in the upper half (the option's text must first have taken in its letter), with eager
    attention. Returns the held-out `answer_scores` and `answer_attention` before and after, and the wall time."""
    if not train or not held:
        raise ValueError(f"answer drills need attribute trajectories that zoom, to train on and to hold out; got "
                         f"{len(train)} and {len(held)}")
    pad, image_token = CoFCollator(layout.special.end_of_text), model.config.image_token_id
    depth = model.config.text_config.num_hidden_layers
    layer_sets = (range(1, depth), range(depth // 2, depth))

    def batch(loaders):
        examples = [answer_example(layout, image_processor, load(), system_prompt, image_token) for load in loaders]
        padded = pad(examples)
        reply = torch.full_like(padded["labels"], -100)
        for row, example in enumerate(examples):
            reply[row, :len(example["reply_labels"])] = example["reply_labels"]
        return {**padded, "reply_labels": reply, "attention_targets": [e["attention_targets"] for e in examples]}

    def objective(model, batch):
        targets, reply = batch.pop("attention_targets"), batch.pop("reply_labels")
        out = model(**batch, output_attentions=bool(attention_weight))
        loss = out.loss
        if reply_weight:
            loss = loss + reply_weight * torch.nn.functional.cross_entropy(
                out.logits[:, :-1].flatten(0, 1), reply[:, 1:].flatten(), ignore_index=-100)
        if attention_weight:
            loss = loss + attention_weight * answer_attention_loss(targets, out.attentions, layer_sets, heads)
        return loss

    held_trajectories, t0 = [load() for load in held], time.time()
    held_examples = [answer_example(layout, image_processor, t, system_prompt, image_token)
                     for t in held_trajectories[:16]]

    def scores() -> dict:
        model.eval()
        return {**answer_scores(model, layout, image_processor, held_trajectories, system_prompt),
                **answer_attention(model, held_examples, pad)}

    before = scores()
    with eager_attention(model) if attention_weight else contextlib.nullcontext():
        drill_loop(model, batch, train, steps, batch_size, lr, seed, "answer drills", progress,
                   reset_every=reset_every, loss=objective)
    after = scores()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "reset_every": reset_every,
            "attention_weight": attention_weight, "reply_weight": reply_weight,
            "trajectories": len(train), "held_out": len(held),
            **{f"held_out_{k}_before": v for k, v in before.items()}, **{f"held_out_{k}": v for k, v in after.items()},
            "wall_time_s": round(time.time() - t0, 1)}
