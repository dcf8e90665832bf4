"""Symbol drills: 56x56 patches of the crops around the asked tag, labelled with its symbol; the tower trains alone."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cof_edge.data.vsearch import SYMBOLS  # noqa: E402
from cof_training.sft import image_processor_for  # noqa: E402
from cof_training.symbol_drills import (  # noqa: E402
    PATCH, SymbolLoss, crop_batch, patch_means, probe_symbols, rendered_tag_crops, symbol_batch, symbol_items,
    tag_surround, tag_tokens, warm_up_symbols)


def test_a_centred_patch_is_the_crop_around_the_asked_tag_labelled_with_its_symbol(smoke_zooming):
    _, models, zooming = smoke_zooming
    model_dir = models["small"]
    for traj in zooming:
        surround, symbol = tag_surround(traj, jitter=8)
        assert surround.size == (PATCH + 16, PATCH + 16)
        assert SYMBOLS[symbol] == re.search(r"shows an? (\S+) on", traj.turns[-1]).group(1)
        x1, y1, x2, y2 = traj.views[-1].from_original(traj.targets[0])
        left, top = round((x1 + x2) / 2 - PATCH / 2), round((y1 + y2) / 2 - PATCH / 2)
        expected = np.asarray(traj.images[-1].crop((left, top, left + PATCH, top + PATCH)))
        centred = np.asarray(surround.crop((8, 8, 8 + PATCH, 8 + PATCH)))
        assert np.array_equal(centred, expected)
    batch = symbol_batch([tag_surround(t, 8) for t in zooming], image_processor_for(model_dir), None)
    assert batch["grid"].tolist() == [[1, 4, 4]] * len(zooming)
    with pytest.raises(ValueError, match="targets"):
        tag_surround(type(zooming[0])(text="", turns=["<answer>A</answer>"], views=[], images=[], label="A"), 8)


def test_symbol_warm_up_trains_the_tower_only(smoke_zooming):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, models, zooming = smoke_zooming
    model_dir = models["small"]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.named_parameters()}
    loaders = [lambda t=t: t for t in zooming]
    report = warm_up_symbols(model, image_processor_for(model_dir), symbol_items(loaders[1:], progress=False),
                             loaders[:1], steps=3, batch_size=4, progress=False)
    changed = {k for k, v in model.named_parameters() if not torch.equal(before[k], v)}
    assert changed and all(".visual." in k for k in changed), sorted(changed)[:5]
    assert report["steps"] == 3 and 0.0 <= report["held_out_symbol_accuracy"] <= 1.0
    assert report["held_out_symbol_accuracy_before"] in (0.0, 1.0)         # one held-out patch
    assert not report["in_context"] and report["drills"] == len(zooming) - 1
    once = {k: v.clone() for k, v in model.named_parameters()}
    in_context = warm_up_symbols(model, image_processor_for(model_dir), symbol_items(loaders, True, progress=False),
                                 loaders[:1], steps=2, batch_size=2, in_context=True, progress=False)
    assert in_context["in_context"] and in_context["held_out_symbol_accuracy_before"] in (0.0, 1.0)
    changed = {k for k, v in model.named_parameters() if not torch.equal(once[k], v)}
    assert changed and all(".visual." in k for k in changed), sorted(changed)[:5]


def test_the_symbol_probe_fits_a_fresh_head_on_the_tower_as_it_is(smoke_zooming):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, models, zooming = smoke_zooming
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaders = [lambda t=t: t for t in zooming]
    symbols = [tag_surround(t, 0)[1] for t in zooming]
    report = probe_symbols(model, image_processor_for(models["small"]), loaders, loaders[:1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    assert report["train"] == len(zooming) and report["held_out"] == 1 and report["held_out_prior"] == 1.0
    # a few distinct patches in a 96-wide feature space: a linear head separates them, the held-out one included
    assert len(set(symbols)) > 1 and report["train_accuracy"] == report["held_out_accuracy"] == 1.0
    in_context = probe_symbols(model, image_processor_for(models["small"]), loaders, loaders[:1], in_context=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    assert in_context["train"] == len(zooming) and in_context["train_accuracy"] == 1.0
    with pytest.raises(ValueError, match="to fit on and to hold out; got 0 and 1"):
        probe_symbols(model, image_processor_for(models["small"]), [], loaders[:1])


def test_in_context_the_tag_tokens_are_the_crops_merged_tokens_about_the_tag(smoke_zooming):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_edge.geometry import FACTOR
    from cof_training.vision_drills import image_embeddings

    _, models, zooming = smoke_zooming
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32).eval()
    processor = image_processor_for(models["small"])
    items = [tag_tokens(traj) for traj in zooming[:2]]
    for traj, (crop, tokens, symbol) in zip(zooming, items):
        assert crop is traj.images[-1] and symbol == tag_surround(traj, 0)[1] and 1 <= len(tokens) <= 4
        x1, y1, x2, y2 = traj.views[-1].from_original(traj.targets[0])
        cols = crop.size[0] // FACTOR
        cells = {(i % cols, i // cols) for i in tokens}
        assert (int((x1 + x2) / 2 // FACTOR), int((y1 + y2) / 2 // FACTOR)) in cells      # the centre's own token
        columns, rows = {c for c, _ in cells}, {r for _, r in cells}
        assert max(columns) - min(columns) <= 1 and max(rows) - min(rows) <= 1
    with torch.no_grad():
        together = patch_means(model, crop_batch(items, processor))
        for row, item in enumerate(items):       # a batch of crops: each crop's tag tokens, as alone
            alone = crop_batch([item], processor)
            expected = image_embeddings(model, alone)[item[1]].mean(0)
            assert torch.allclose(together[row], expected, atol=1e-5)
    assert together.shape == (2, model.config.vision_config.out_hidden_size)


@pytest.mark.parametrize("in_context", [False, True])
def test_the_symbol_loss_trains_its_head_and_the_tower_alone(smoke_zooming, in_context):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, models, zooming = smoke_zooming
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32)
    processor = image_processor_for(models["small"])
    items = symbol_items([lambda t=t: t for t in zooming], in_context, progress=False)
    objective = SymbolLoss(model, processor, items, batch_size=2, in_context=in_context)
    loss = objective(model)
    loss.backward()
    moved = {k for k, v in model.named_parameters() if v.grad is not None and bool(v.grad.abs().sum() > 0)}
    assert float(loss) > 0 and moved and all(".visual." in k for k in moved), sorted(moved)[:5]
    assert bool(objective.head.weight.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="to train on; got none"):
        SymbolLoss(model, processor, [])


def test_rendered_crops_are_the_runtimes_teacher_crops_with_a_drill_per_legible_tag_in_them():
    from cof_edge.data import render_sample
    from cof_edge.data.vsearch import TAG_COLOURS
    from cof_edge.geometry import FACTOR
    from cof_training.presets import get_preset
    from cof_training.symbol_drills import RENDERED_STREAM

    preset = get_preset("cpu-read")
    items = rendered_tag_crops(preset, 2, crops_per_tag=2, progress=False)
    scenes = [render_sample(preset.data_seed + RENDERED_STREAM, index) for index in range(2)]
    crops = {id(crop) for crop, _, _ in items}
    assert len(items) > len(crops) > 0                      # a crop often holds the asked tag's neighbours too
    for crop, tokens, symbol in items:
        assert max(crop.size) <= 364 and crop.size[0] * crop.size[1] <= preset.budgets.crop_max_pixels
        tag = next(t for scene in scenes for t in scene.tags if SYMBOLS[symbol] == t.symbol
                   and _shows(crop, tokens, TAG_COLOURS[t.colour], FACTOR))
        assert tag and 1 <= len(tokens) <= 4
    assert {SYMBOLS[s] for _, _, s in items} <= {t.symbol for scene in scenes for t in scene.tags}
    assert rendered_tag_crops(preset, 2, crops_per_tag=2, progress=False)[0][1:] == items[0][1:]   # seeded


def _shows(crop, tokens: list[int], rgb, factor: int) -> bool:
    """Whether the merged tokens `tokens` of `crop` hold at least 20 pixels of the tag colour `rgb`."""
    pixels, cols = np.asarray(crop.convert("RGB")).astype(int), crop.size[0] // factor
    count = 0
    for token in tokens:
        row, col = divmod(token, cols)
        block = pixels[row * factor:(row + 1) * factor, col * factor:(col + 1) * factor]
        count += int((np.abs(block - np.array(rgb)).max(-1) <= 3).sum())
    return count >= 20
