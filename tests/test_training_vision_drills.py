"""Vision drills: per-token tag labels are where the tags are; the warm-up trains the tower only, once per work dir."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from PIL import Image

from cof_edge.data.vsearch import SYMBOLS, Tag
from cof_edge.geometry import View
from cof_training.presets import get_preset
from cof_training.tiny import build_tiny_model
from cof_training.vision_drills import COLOURS, IGNORE, NONE_COLOUR, NONE_SYMBOL, grid_positions, tag_map
from cof_training.vision_drills import warm_up_vision as real_warm_up


def test_tag_map_labels_the_tokens_under_each_tag():
    original = Image.new("RGB", (224, 112))
    view = View(region=(0, 0, 224, 112), size=(112, 56))             # 4 x 2 merged tokens, half scale
    small = Tag("red", "star", [0, 0, 40, 40])                          # 20x20 view px: colour only
    large = Tag("blue", "heart", [112, 0, 224, 112])                    # 56x56 view px: the right half
    m = tag_map(original, view, [small, large], legible_side=28)
    assert m.image.size == (112, 56)
    red, blue, heart = COLOURS.index("red"), COLOURS.index("blue"), SYMBOLS.index("heart")
    assert m.colour.reshape(2, 4).tolist() == [[red, NONE_COLOUR, blue, blue], [NONE_COLOUR, NONE_COLOUR, blue, blue]]
    assert m.symbol.reshape(2, 4).tolist() == [[IGNORE, NONE_SYMBOL, heart, heart],
                                               [NONE_SYMBOL, NONE_SYMBOL, heart, heart]]
    crop = View(region=(112, 0, 224, 112), size=(56, 56))               # a crop of the right half, full scale
    assert tag_map(original, crop, [small, large], legible_side=28).colour.tolist() == [blue] * 4


def test_vision_warm_up_trains_the_tower_only_and_runs_once_per_work_dir(tmp_path, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_training import vision_drills
    from cof_training.train_default import vision_drilled_init

    preset = dataclasses.replace(get_preset("smoke"), vision_warmup_steps=12, vision_drill_scenes=3, lr=3e-3)
    model_dir = build_tiny_model(tmp_path / "model", tokenizer="small", spec=preset.spec, seed=0)
    monkeypatch.setattr(vision_drills, "warm_up_vision",
                        lambda *a, **k: real_warm_up(*a, **{**k, "held_out_scenes": 1, "batch_size": 4}))
    out, report = vision_drilled_init(model_dir, tmp_path / "vision", preset, progress=False)
    assert report["steps"] == 12 and report["views"] > 0 and report["held_out_views"] > 0
    assert report["held_out_colour_ce"] < report["held_out_colour_ce_before"], report
    before = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).state_dict()
    after = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".visual." in k or k.startswith("visual.") for k in changed), sorted(changed)[:5]
    assert (out / "tokenizer.json").is_file()
    monkeypatch.setattr(vision_drills, "warm_up_vision", lambda *a, **k: pytest.fail("the warm-up ran twice"))
    assert vision_drilled_init(model_dir, tmp_path / "vision", preset, progress=False) == (out, report)


def test_grid_positions_follow_the_towers_raster_order():
    row, col = grid_positions(Image.new("RGB", (112, 84)))              # 4 columns x 3 rows of merged tokens
    assert row.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert col.tolist() == [0, 1, 2, 3] * 3
    with pytest.raises(ValueError, match="position heads"):
        grid_positions(Image.new("RGB", (28 * 33, 28)))


def test_vision_warm_up_with_position_heads_learns_rows_and_columns(tmp_path):
    from cof_training.sft import image_processor_for

    preset = dataclasses.replace(get_preset("smoke"), lr=3e-3)
    model_dir = build_tiny_model(tmp_path / "model", tokenizer="small", spec=preset.spec, seed=0)
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    report = real_warm_up(model, image_processor_for(model_dir), preset, 30, batch_size=4, lr=3e-3, scenes=3,
                          held_out_scenes=1, position_weight=1.0, progress=False)
    assert report["position_weight"] == 1.0
    assert report["held_out_position_ce"] < report["held_out_position_ce_before"] - 0.5, report
    assert 0.0 <= report["held_out_tag_position_after"] <= 1.0
    plain = real_warm_up(model, image_processor_for(model_dir), preset, 1, batch_size=4, scenes=3, held_out_scenes=1,
                         progress=False)
    assert "held_out_position_ce" not in plain


def test_the_tag_symbol_loss_and_score_count_only_tokens_on_legible_tags():
    from cof_training.vision_drills import TagHeads, held_out_scores

    heads = TagHeads(4)
    with torch.no_grad():
        heads.symbol.weight.zero_()
        heads.symbol.bias.zero_()
        heads.symbol.bias[2] = 5.0                                      # always predicts symbol 2
    embeds = torch.randn(5, 4)
    batch = {"colour": torch.tensor([0, 0, NONE_COLOUR, 1, 1]), "symbol": torch.tensor([2, 3, NONE_SYMBOL, IGNORE, 2])}
    losses = heads.losses(embeds, batch)
    logits = heads.symbol(embeds)
    expected = torch.nn.functional.cross_entropy(logits[[0, 1, 4]], batch["symbol"][[0, 1, 4]])
    assert losses["tag_symbol"].item() == pytest.approx(expected.item(), rel=1e-5)

    class Tower:                                                        # held_out_scores reads the tower's embeddings
        model = type("M", (), {"get_image_features": lambda *a, **k: type("F", (), {"pooler_output": [embeds]})})

    maps = [type("Map", (), {"colour": batch["colour"].numpy()})]
    scores = held_out_scores(Tower, heads, {**batch, "pixel_values": None, "grid": None}, maps)
    assert scores["symbol_on_tags"] == pytest.approx(2 / 3, abs=1e-3)
    no_legible = {**batch, "symbol": torch.tensor([NONE_SYMBOL, IGNORE, NONE_SYMBOL, IGNORE, NONE_SYMBOL])}
    no_legible_scores = held_out_scores(Tower, heads, {**no_legible, "pixel_values": None, "grid": None}, maps)
    assert no_legible_scores["symbol_on_tags"] is None
    assert heads.losses(embeds, no_legible)["tag_symbol"].item() == 0.0
