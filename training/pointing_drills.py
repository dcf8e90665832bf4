"""Pointing drills: the first turn of a zooming trajectory, with the loss on the zoom box's numbers only.

After vision drills the tower marks each tag's colour on its own tokens (83% held-out retrieval), and after retrieval
drills the reply copies the question's colour, yet SFT on whole trajectories still writes one box for every image
(`cpu-grid-numbers`: `(0, 0, 56, 56)` for 16 of 16 probes, training/README.md). Writing the box is attention from
the box's number tokens to the one visual token whose colour the `<think>` text names, then reading that token's
row or column: the cross-modal analogue of the retrieval drills' text lookup, and like it, its gradient is spread
over every other reply token in SFT. A drill is the trajectory's global view, question and first reply (teacher
forced: the colour is named, the call written up to its box), labelled on the box's number tokens only.

Copy drills are the first reply alone, as text, labelled on the second corner: the text-only stage that lets the
pointing drills learn that corner. `box_attention` says where the position that writes the box looks;
`box_attention_loss` trains it to look inside the box (supervised attention): unlike the box loss's, its gradient
onto the box's keys does not shrink with the attention the box already gets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from cof_edge.geometry import FACTOR
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


def box_values(positions: list[int]) -> list[list[int]]:
    """`box_positions` grouped into the box's values: a value's number tokens are adjacent, a separator splits them."""
    values: list[list[int]] = []
    for position in positions:
        if values and position == values[-1][-1] + 1:
            values[-1].append(position)
        else:
            values.append([position])
    return values


def value_number(layout: TokenLayout, tokens) -> int | None:
    """A box value's number tokens read as the number they spell; None if they do not spell one."""
    text = "".join(layout.tokenizer.decode([int(token)]).strip() for token in tokens)
    return int(text) if text.isdigit() else None


def copy_example(layout: TokenLayout, traj: Trajectory, numbers: frozenset[int]) -> dict:
    """Text only: the first reply of a zooming trajectory alone, labels on its box's second corner. The teacher
    writes that corner as the first plus the box's side, so it is a copy from the text, learned before pointing."""
    ids = layout.encode(traj.turns[0])
    labels = [-100] * len(ids)
    for value in box_values(box_positions(layout, ids, ids, numbers))[2:]:
        for position in value:
            labels[position] = ids[position]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.arange(len(ids)).expand(3, -1).clone()}


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


def box_scores(model, batch: dict, layout: TokenLayout | None = None) -> dict:
    """Teacher-forced scores of a drill batch: the box tokens' cross-entropy, the share of them predicted exactly
    (argmax), the share of drills whose whole box is, and per labelled value in order (x1, y1, x2, y2 for a
    pointing drill; x2, y2 for a copy drill) the share of drills that have it right. With `layout`, also per value
    the share within one visual token (`FACTOR` px) of the teacher's, the predicted tokens read as a number."""
    with torch.no_grad():
        out = model(**batch)
    predicted = out.logits[:, :-1].argmax(-1)
    target = batch["labels"][:, 1:]
    labelled = target != -100
    right = (predicted == target) & labelled
    whole = (right.sum(1) == labelled.sum(1)) & labelled.any(1)
    rows = [box_values(labelled[row].nonzero().flatten().tolist()) for row in range(target.shape[0])]
    scores = {"box_ce": round(float(out.loss), 3),
              "token_accuracy": round(float(right.sum() / labelled.sum().clamp(min=1)), 3),
              "box_exact": round(float(whole.sum() / labelled.any(1).sum().clamp(min=1)), 3),
              "value_accuracy": _per_value([[bool(right[row, value].all()) for value in values]
                                            for row, values in enumerate(rows)])}
    if layout is not None:
        near = [[(guess := value_number(layout, predicted[row, value])) is not None
                 and abs(guess - value_number(layout, target[row, value])) <= FACTOR for value in values]
                for row, values in enumerate(rows)]
        scores["value_within_token"] = _per_value(near)
    return scores


def _per_value(rows: list[list[bool]]) -> list[float]:
    """Per value index, the share of rows (that have that value) where it is true."""
    width = max((len(r) for r in rows), default=0)
    per_value = [[r[i] for r in rows if len(r) > i] for i in range(width)]
    return [round(sum(v) / len(v), 3) for v in per_value]


def box_targets(model, layout: TokenLayout, batch: dict, row: int = 0) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Row `row` of a (padded) pointing batch: the positions that write each box value's first token, the positions
    of the image's tokens, and which of those lie inside the teacher's box (merged token centre in the box)."""
    ids, labels = batch["input_ids"][row], batch["labels"][row]
    values = box_values((labels != -100).nonzero().flatten().tolist())
    x1, y1, x2, y2 = (value_number(layout, ids[value]) for value in values)
    image = (ids == model.config.image_token_id).nonzero().flatten()
    cols = int(batch["image_grid_thw"][row, 2]) // model.config.vision_config.spatial_merge_size
    centres = [((i % cols + 0.5) * FACTOR, (i // cols + 0.5) * FACTOR) for i in range(len(image))]
    inside = torch.tensor([x1 <= cx < x2 and y1 <= cy < y2 for cx, cy in centres], dtype=torch.bool)
    return [value[0] - 1 for value in values], image, inside


def box_attention_loss(model, layout: TokenLayout, batch: dict, attentions, layers, head: int = 0) -> torch.Tensor:
    """Supervised attention: the mean over drills, box values and `layers` of −log(the mass that head `head` puts on
    the box's image tokens from the position that writes the value). `attentions`: the model's, per layer
    [batch, heads, query, key]."""
    terms = []
    for row in range(batch["input_ids"].shape[0]):
        writers, image, inside = box_targets(model, layout, batch, row)
        if inside.any():
            terms += [-torch.log(attentions[layer][row, head][writers][:, image[inside]].sum(-1) + 1e-6).mean()
                      for layer in layers]
    if not terms:
        raise ValueError("no drill in the batch has image tokens inside its box")
    return torch.stack(terms).mean()


def box_attention(model, layout: TokenLayout, examples: list[dict]) -> dict:
    """Where the position that writes the box's first value looks, over teacher-forced pointing drills: per decoder
    layer, the attention mass its heads put on the image's tokens (mean over heads), and the largest share of one
    head's image mass that falls on the tokens inside the teacher's box (`uniform_box_share` if spread evenly). A
    box can only be read from the image if some head both looks at it and looks inside the box."""
    pad, image_mass, box_share, uniform = CoFCollator(layout.special.end_of_text), [], [], []
    with eager_attention(model), torch.no_grad():
        for example in examples:
            batch = pad([example])
            attentions = model(**batch, output_attentions=True).attentions
            writers, image, inside = box_targets(model, layout, batch)
            uniform.append(float(inside.float().mean()))
            on_image = [a[0, :, writers[0], image] for a in attentions]    # [heads, image tokens] per layer
            image_mass.append([float(a.sum(-1).mean()) for a in on_image])
            box_share.append([float((a[:, inside].sum(-1) / a.sum(-1).clamp(min=1e-9)).max()) for a in on_image])
    return {"image_mass": [round(sum(v) / len(v), 3) for v in zip(*image_mass)],
            "box_share": [round(sum(v) / len(v), 3) for v in zip(*box_share)],
            "uniform_box_share": round(sum(uniform) / len(uniform), 3)}


@contextlib.contextmanager
def eager_attention(model):
    """The eager attention kernel while inside: the only one that returns attention weights."""
    previous = model.config._attn_implementation or "sdpa"
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def _box_drills(model, layout: TokenLayout, example, desc: str, train: list, held: list, steps: int,
                batch_size: int, lr: float, seed: int, reset_every: int, progress: bool, diagnose=None,
                loss=None, extra_parameters: list = ()) -> dict:
    """`drill_loop` on `example(trajectory)` batches (with `loss`, if given); the held-out box scores (and
    `diagnose(model, held examples)`) before and after, and the wall time."""
    if not train or not held:
        raise ValueError(f"{desc} need zooming trajectories to train on and to hold out; got {len(train)} and "
                         f"{len(held)}")
    pad = CoFCollator(layout.special.end_of_text)

    def batch(loaders):
        return pad([example(load()) for load in loaders])

    def scores() -> dict:
        return {**box_scores(model.eval(), held_batch, layout), **(diagnose(model, held_examples) if diagnose else {})}

    held_examples, t0 = [example(load()) for load in held], time.time()
    held_batch = pad(held_examples)
    before = scores()
    drill_loop(model, batch, train, steps, batch_size, lr, seed, desc, progress, reset_every=reset_every, loss=loss,
               extra_parameters=extra_parameters)
    after = scores()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "reset_every": reset_every,
            "trajectories": len(train), "held_out": len(held),
            **{f"held_out_{k}_before": v for k, v in before.items()}, **{f"held_out_{k}": v for k, v in after.items()},
            "wall_time_s": round(time.time() - t0, 1)}


def warm_up_copy(model, layout: TokenLayout, train: list, held: list, steps: int, batch_size: int, lr: float,
                 seed: int = 0, reset_every: int = 0, progress: bool = True) -> dict:
    """Train `model` on copy drills (`copy_example`); `train` and `held` as for `warm_up_pointing`."""
    numbers = number_token_ids(layout)
    return _box_drills(model, layout, lambda traj: copy_example(layout, traj, numbers), "copy drills", train, held,
                       steps, batch_size, lr, seed, reset_every, progress)


def warm_up_pointing(model, layout: TokenLayout, image_processor, train: list, held: list, steps: int,
                     batch_size: int, lr: float, system_prompt: str | None = None, seed: int = 0,
                     reset_every: int = 0, attention_weight: float = 0.0, symbol_items: list = (),
                     symbol_weight: float = 0.0, symbol_in_context: bool = False, progress: bool = True) -> dict:
    """Train `model` (tower and decoder) on pointing drills. `train` and `held`: zero-argument loaders
    (`CachedTrajectory.load`) of zooming trajectories, of different scenes (a scene's tags are where they are at
    every resolution and in every question). `attention_weight` > 0 adds `box_attention_loss` (head 0 of every
    decoder layer but the first) times it, run with eager attention. `symbol_weight` > 0 adds the symbol drills'
    loss (`symbol_drills.SymbolLoss` on `symbol_items`, `symbol_drills.symbol_items`) times it, so that the tower
    learns the box's features without losing the symbols (`symbol_in_context`: the items are whole crops, `batch_size`
    of them a step, the tag's tokens as the reply reads them; else 64 tag patches alone). Returns the held-out box
    scores and `box_attention` before and after, the wall time and the weights."""
    from .symbol_drills import SymbolLoss, drills_per_step

    numbers = number_token_ids(layout)
    layers = range(1, model.config.text_config.num_hidden_layers)
    symbols = SymbolLoss(model, image_processor, symbol_items, drills_per_step(symbol_in_context, batch_size),
                         seed=seed, in_context=symbol_in_context) if symbol_weight else None

    def objective(model, batch):
        if attention_weight:
            out = model(**batch, output_attentions=True)
            loss = out.loss + attention_weight * box_attention_loss(model, layout, batch, out.attentions, layers)
        else:
            loss = model(**batch).loss
        return loss + symbol_weight * symbols(model) if symbols else loss

    with eager_attention(model) if attention_weight else contextlib.nullcontext():
        report = _box_drills(model, layout,
                             lambda traj: pointing_example(layout, image_processor, traj, numbers, system_prompt),
                             "pointing drills", train, held, steps, batch_size, lr, seed, reset_every, progress,
                             diagnose=lambda m, examples: box_attention(m, layout, examples[:16]),
                             loss=objective if attention_weight or symbols else None,
                             extra_parameters=list(symbols.head.parameters()) if symbols else [])
    return {**report, "attention_weight": attention_weight, "symbol_weight": symbol_weight,
            "symbol_in_context": symbol_in_context}
