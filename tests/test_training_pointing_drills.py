"""Pointing drills: the first turn of a zooming trajectory, labelled on its box's numbers only; scores and warm-up."""

import dataclasses
import json
import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from tokenizers import Tokenizer  # noqa: E402

from cof_edge.protocol import TokenLayout  # noqa: E402
from cof_training.cache import read_cache  # noqa: E402
from cof_training.pointing_drills import (box_attention, box_attention_loss, box_scores, copy_example,  # noqa: E402
                                          first_turn, number_token_ids, pointing_example)
from cof_training.sft import CoFCollator  # noqa: E402
from cof_training.sft import encode_example, image_processor_for  # noqa: E402


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run


def _first_box(traj) -> list[int]:
    return json.loads(re.search(r'"bbox_2d": (\[[^\]]*\])', traj.turns[0]).group(1))


@pytest.mark.parametrize("tokenizer", ["small", "small-numbers"])
def test_pointing_drills_label_only_the_first_box_numbers(smoke, tokenizer):
    preset, models, cache = smoke
    layout = TokenLayout(Tokenizer.from_file(str(models[tokenizer] / "tokenizer.json")))
    improc = image_processor_for(models[tokenizer])
    numbers = number_token_ids(layout)
    zooming = [t for t in (c.load() for c in read_cache(cache)) if t.zooms]
    assert zooming
    for traj in zooming:
        example = pointing_example(layout, improc, traj, numbers, preset.budgets.system_prompt)
        whole = encode_example(layout, improc, first_turn(traj), system_prompt=preset.budgets.system_prompt)
        assert torch.equal(example["input_ids"], whole["input_ids"]) and example["image_grid_thw"].shape[0] == 1
        labelled = [t for t in example["labels"].tolist() if t != -100]
        box = _first_box(traj)
        assert "".join(layout.tokenizer.decode([t]).strip() for t in labelled) == "".join(map(str, box))
        if tokenizer == "small-numbers":
            assert [int(layout.tokenizer.decode([t])) for t in labelled] == box   # one token per coordinate
    answering = [t for t in (c.load() for c in read_cache(cache)) if not t.zooms]
    for traj in answering[:1]:
        with pytest.raises(ValueError, match="zooms"):
            pointing_example(layout, improc, traj, numbers)


def test_box_scores_count_exact_boxes():
    # two drills of 5 positions; labels sit one position after the logits that predict them
    # row 0: two one-token values, both right; row 1: one two-token value, half right
    labels = torch.tensor([[-100, 7, -100, 8, -100], [-100, 7, 7, -100, -100]])
    predicted = torch.tensor([[7, 0, 8, 0, 0], [7, 3, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(predicted, 10).float() * 5

    def model(**batch):
        return SimpleNamespace(logits=logits, loss=torch.tensor(0.25))

    scores = box_scores(model, {"labels": labels})
    assert scores == {"box_ce": 0.25, "token_accuracy": 0.75, "box_exact": 0.5, "value_accuracy": [0.5, 1.0]}


def test_box_scores_read_values_within_one_visual_token():
    # token id t reads "t0"; row 0: 70 right, 90 for 80 (near); row 1: "7030" for "7070" (40 px off: far)
    labels = torch.tensor([[-100, 7, -100, 8, -100], [-100, 7, 7, -100, -100]])
    predicted = torch.tensor([[7, 0, 9, 0, 0], [7, 3, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(predicted, 10).float() * 5
    layout = SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: f"{ids[0]}0"))

    def model(**batch):
        return SimpleNamespace(logits=logits, loss=torch.tensor(0.25))

    scores = box_scores(model, {"labels": labels}, layout)
    assert scores["value_accuracy"] == [0.5, 0.0] and scores["value_within_token"] == [0.5, 1.0]


def test_pointing_warm_up_lowers_the_box_loss_and_runs_once_per_work_dir(smoke, tmp_path, monkeypatch):
    from cof_training import pointing_drills
    from cof_training.train_default import pointed_init

    preset, models, cache = smoke
    preset = dataclasses.replace(preset, point_warmup_steps=10, point_batch_size=4, lr=3e-3, point_attention_weight=0.5)
    out, report = pointed_init(models["small"], tmp_path / "pointed", cache, preset, progress=False,
                               held_out_scenes=1)
    assert report["attention_weight"] == 0.5
    zooming = [c for c in read_cache(cache) if len(c.record["turns"]) > 1]
    last = max(c.record["scene"] for c in zooming)
    assert report["steps"] == 10 and report["held_out"] == sum(c.record["scene"] == last for c in zooming) > 0
    assert report["trajectories"] == len(zooming) - report["held_out"] > 0
    assert report["held_out_box_ce"] < report["held_out_box_ce_before"], report
    layers = preset.spec.text_layers
    assert len(report["held_out_image_mass"]) == len(report["held_out_box_share"]) == layers
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    monkeypatch.setattr(pointing_drills, "warm_up_pointing", lambda *a, **k: pytest.fail("the warm-up ran twice"))
    assert pointed_init(models["small"], tmp_path / "pointed", cache, preset, progress=False,
                        held_out_scenes=1) == (out, report)


def test_point_first_runs_on_the_fresh_decoder_before_the_text_stages(smoke, tmp_path, monkeypatch):
    import cof_training.train_default as train_default
    from cof_training import answer_drills, pointing_drills, symbol_drills

    _, _, cache = smoke
    work, stages, pointing_steps, answer_drilled, probed = tmp_path / "work", [], [], [], []

    def recording_warmed_init(init, out, stage, train, frozen_tower=False):
        stages.append((stage, init.name, frozen_tower))
        report = train(None, work / "init") if stage.startswith(("point", "answer", "symbol")) else None
        if stage.startswith("point"):
            probed.append((stage, report))
        out.mkdir(parents=True, exist_ok=True)
        return out, {"stage": stage}

    def recording_answers(model, layout, processor, train, held, steps, *a, **k):
        answer_drilled.append((steps, {load().category for load in train + held}))

    monkeypatch.setattr(train_default, "warmed_init", recording_warmed_init)
    monkeypatch.setattr(pointing_drills, "warm_up_pointing",
                        lambda model, layout, processor, train, held, steps, *a, **k: pointing_steps.append(steps) or {})
    monkeypatch.setattr(symbol_drills, "probe_symbols", lambda model, processor, train, held, in_context=False:
                        {"held_out": len(held), "train": len(train), "in_context": in_context})
    monkeypatch.setattr(answer_drills, "warm_up_answers", recording_answers)
    monkeypatch.setattr(symbol_drills, "warm_up_symbols",
                        lambda model, processor, train, held, steps, batch_size, **k: recording_answers(
                            model, None, processor, train, held, steps))
    assert train_default.main(["--preset", "smoke", "--work-dir", str(work), "--cache", str(cache), "--warm-up-only",
                               "--no-progress", "--set", "point_first_steps=5", "--set", "drill_warmup_steps=3",
                               "--set", "point_warmup_steps=7", "--set", "symbol_warmup_steps=2",
                               "--set", "answer_warmup_steps=4", "--set", "freeze_tower=true"]) == 0
    assert stages == [("symbol_warmup", "init", False), ("point_first", "init-symbols", False),
                      ("drill_warmup", "init-pointed-first", True), ("point_warmup", "init-drilled", True),
                      ("answer_warmup", "init-pointed", True)]
    assert pointing_steps == [5, 7]
    zooming_attribute = [c for c in read_cache(cache) if len(c.record["turns"]) > 1
                         and c.record["category"] == "direct_attributes"]
    probe = {"held_out": len(zooming_attribute), "train": 0}
    assert probed == [("point_first", {"tower_symbol_probe": {**probe, "in_context": False},
                                       "tower_symbol_probe_in_context": {**probe, "in_context": True}}),
                      ("point_warmup", {})]                       # the smoke cache's scenes are all held out
    assert answer_drilled == [(2, {"direct_attributes"}), (4, {"direct_attributes"})]


def test_pointing_drills_with_the_symbol_loss_train_its_head_and_move_the_tower_with_it(smoke, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_training import symbol_drills
    from cof_training.pointing_drills import warm_up_pointing

    _, models, cache = smoke
    layout = TokenLayout(Tokenizer.from_file(str(models["small"] / "tokenizer.json")))
    processor, heads = image_processor_for(models["small"]), []
    zooming = [c.load for c in read_cache(cache) if len(c.record["turns"]) > 1]

    class RecordedSymbolLoss(symbol_drills.SymbolLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            heads.append((self.head, self.head.weight.detach().clone()))

    monkeypatch.setattr(symbol_drills, "SymbolLoss", RecordedSymbolLoss)

    def tower_after(symbol_weight: float) -> tuple[dict, dict]:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32)
        report = warm_up_pointing(model, layout, processor, zooming[1:], zooming[:1], 3, 2, 3e-3,
                                  symbol_items=symbol_drills.symbol_items(zooming, progress=False),
                                  symbol_weight=symbol_weight, progress=False)
        return report, {k: v.detach().clone() for k, v in model.model.visual.named_parameters()}

    plain_report, plain = tower_after(0.0)
    assert not heads and plain_report["symbol_weight"] == 0.0
    assert all(torch.equal(plain[k], v) for k, v in tower_after(0.0)[1].items())     # the drills are deterministic
    joint_report, joint = tower_after(1.0)
    (head, head_before), = heads
    assert joint_report["symbol_weight"] == 1.0 and not torch.equal(head.weight, head_before)
    assert any(not torch.equal(plain[k], joint[k]) for k in plain)


def _stub_split_and_stages(monkeypatch, work):
    """`train_default` with a two-word symbol split, and stages that run their `train` at once, saving nothing."""
    import cof_training.train_default as train_default

    monkeypatch.setattr(train_default, "symbol_split", lambda cache: (["train"], ["held"]))
    monkeypatch.setattr(train_default, "warmed_init", lambda init, out, stage, train, frozen_tower=False:
                        (out, train(None, work / "init")))


def test_point_first_with_the_symbol_loss_trains_and_probes_on_the_symbol_split(smoke, tmp_path, monkeypatch):
    import cof_training.train_default as train_default
    from cof_training import pointing_drills, symbol_drills

    _, _, cache = smoke
    work, pointed, probed = tmp_path / "work", [], []
    _stub_split_and_stages(monkeypatch, work)
    monkeypatch.setattr(symbol_drills, "symbol_items", lambda train, in_context, progress: [(train, in_context)])
    monkeypatch.setattr(pointing_drills, "warm_up_pointing", lambda *a, **k: pointed.append(
        (a[5], k["symbol_items"], k["symbol_weight"], k["symbol_in_context"])) or {})
    monkeypatch.setattr(symbol_drills, "probe_symbols", lambda model, processor, train, held, in_context=False:
                        probed.append((train, held, in_context)) or {})
    assert train_default.main(["--preset", "smoke", "--work-dir", str(work), "--cache", str(cache), "--warm-up-only",
                               "--no-progress", "--set", "point_first_steps=5", "--set", "point_symbol_weight=0.5",
                               "--set", "point_symbol_in_context=true"]) == 0
    assert pointed == [(5, [(["train"], True)], 0.5, True)]
    assert probed == [(["train"], ["held"], False), (["train"], ["held"], True)]


def test_rendered_symbol_drills_are_rendered_once_and_train_every_tower_stage_in_context(smoke, tmp_path, monkeypatch):
    import cof_training.train_default as train_default
    from cof_training import pointing_drills, symbol_drills

    _, _, cache = smoke
    work, rendered, trained = tmp_path / "work", [], []
    _stub_split_and_stages(monkeypatch, work)
    monkeypatch.setattr(train_default, "_RENDERED_SYMBOL_DRILLS", {})      # no crops from another test's run
    monkeypatch.setattr(symbol_drills, "rendered_tag_crops", lambda preset, scenes, seed, progress: rendered.append(
        scenes) or [("crop", [0], 1)] * scenes)
    monkeypatch.setattr(symbol_drills, "warm_up_symbols", lambda model, processor, items, held, steps, batch_size,
                        **k: trained.append(("symbols", len(items), held, batch_size, k["in_context"])) or {})
    monkeypatch.setattr(pointing_drills, "warm_up_pointing", lambda *a, **k: trained.append(
        ("pointing", len(k["symbol_items"]), k["symbol_in_context"])) or {})
    monkeypatch.setattr(symbol_drills, "probe_symbols", lambda *a, **k: {})
    assert train_default.main(["--preset", "smoke", "--work-dir", str(work), "--cache", str(cache), "--warm-up-only",
                               "--no-progress", "--set", "symbol_warmup_steps=3", "--set", "symbol_scenes=7",
                               "--set", "point_first_steps=5", "--set", "point_symbol_weight=1"]) == 0
    assert rendered == [7]
    assert trained == [("symbols", 7, ["held"], 16, True), ("pointing", 7, True)]     # 16 crops a step, as pointing


def test_a_frozen_tower_stays_as_it_was_while_the_decoder_learns(smoke, tmp_path):
    from safetensors.torch import load_file

    from cof_training.train_default import pointed_init

    preset, models, cache = smoke
    preset = dataclasses.replace(preset, point_warmup_steps=3, point_batch_size=2, lr=3e-3)
    out, _ = pointed_init(models["small"], tmp_path / "pointed", cache, preset, progress=False, held_out_scenes=1,
                          frozen_tower=True)
    before, after = load_file(models["small"] / "model.safetensors"), load_file(out / "model.safetensors")
    tower = [k for k in before if ".visual." in k or k.startswith("visual.")]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in tower)


@pytest.mark.parametrize("tokenizer", ["small", "small-numbers"])
def test_copy_drills_are_the_first_reply_alone_labelled_on_the_second_corner(smoke, tokenizer):
    _, models, cache = smoke
    layout = TokenLayout(Tokenizer.from_file(str(models[tokenizer] / "tokenizer.json")))
    numbers = number_token_ids(layout)
    for traj in [t for t in (c.load() for c in read_cache(cache)) if t.zooms]:
        example = copy_example(layout, traj, numbers)
        assert example["input_ids"].tolist() == layout.encode(traj.turns[0]) and "pixel_values" not in example
        labelled = [t for t in example["labels"].tolist() if t != -100]
        x2, y2 = _first_box(traj)[2:]
        assert "".join(layout.tokenizer.decode([t]).strip() for t in labelled) == f"{x2}{y2}"


def test_drill_loop_restarts_adamw_every_reset_steps(monkeypatch):
    from cof_training import drills

    made = []
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: made.append(1) or real(*a, **k))

    class Squared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(2, 1)

        def forward(self, input):
            return SimpleNamespace(loss=self.inner(input).pow(2).mean())

    def batch(items):
        return {"input": torch.ones(len(items), 2)}

    drills.drill_loop(Squared(), batch, [0, 1, 2], steps=5, batch_size=2, lr=1e-2, seed=0, desc="t", progress=False,
                      reset_every=2)
    assert len(made) == 3                       # steps 0, 2 and 4
    made.clear()
    drills.drill_loop(Squared(), batch, [0, 1, 2], steps=5, batch_size=2, lr=1e-2, seed=0, desc="t", progress=False)
    assert len(made) == 1


def test_copy_warm_up_lowers_the_copy_loss_and_runs_once_per_work_dir(smoke, tmp_path, monkeypatch):
    from cof_training import pointing_drills
    from cof_training.train_default import copied_init

    preset, models, cache = smoke
    preset = dataclasses.replace(preset, copy_warmup_steps=10, point_batch_size=4, lr=3e-3, drill_reset_every=5)
    out, report = copied_init(models["small"], tmp_path / "copied", cache, preset, progress=False, held_out_scenes=1)
    assert report["steps"] == 10 and report["reset_every"] == 5 and report["held_out"] > 0
    assert report["held_out_box_ce"] < report["held_out_box_ce_before"], report
    assert len(report["held_out_value_accuracy"]) == 2            # x2 and y2
    monkeypatch.setattr(pointing_drills, "warm_up_copy", lambda *a, **k: pytest.fail("the warm-up ran twice"))
    assert copied_init(models["small"], tmp_path / "copied", cache, preset, progress=False,
                       held_out_scenes=1) == (out, report)


def _attention_stubs(smoke):
    """A pointing drill, and attentions of two layers from the position that writes x1: one inside the box, one on
    the first (text) token."""
    preset, models, cache = smoke
    layout = TokenLayout(Tokenizer.from_file(str(models["small-numbers"] / "tokenizer.json")))
    numbers = number_token_ids(layout)
    traj = next(t for t in (c.load() for c in read_cache(cache)) if t.zooms)
    example = pointing_example(layout, image_processor_for(models["small-numbers"]), traj, numbers)
    x1, y1, x2, y2 = _first_box(traj)
    image_token = layout.special.image_pad
    image = (example["input_ids"] == image_token).nonzero().flatten()
    cols = int(example["image_grid_thw"][0, 2]) // 2
    inside = [image[i] for i in range(len(image)) if x1 <= 28 * (i % cols) + 14 < x2 and y1 <= 28 * (i // cols) + 14 < y2]
    assert inside
    writer = int((example["labels"] != -100).nonzero()[0]) - 1        # the position that predicts x1
    n = len(example["input_ids"])
    looks_inside, looks_at_text = torch.zeros(1, 2, n, n), torch.zeros(1, 2, n, n)
    looks_inside[0, :, writer, inside] = 1 / len(inside)
    looks_at_text[0, :, writer, 0] = 1.0
    config = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2), image_token_id=image_token,
                             _attn_implementation="sdpa")
    return layout, example, image, inside, config, looks_inside, looks_at_text


def test_box_attention_loss_is_low_only_when_the_writer_looks_inside_the_box(smoke):
    layout, example, _, _, config, looks_inside, looks_at_text = _attention_stubs(smoke)
    batch = CoFCollator(layout.special.end_of_text)([example])
    model = SimpleNamespace(config=config)
    labelled = (example["labels"] != -100).nonzero().flatten().tolist()
    writers = [position - 1 for position in labelled]      # every value's writer looks where x1's does
    looks_inside[0, :, writers] = looks_inside[0, :, writers[:1]]
    looks_at_text[0, :, writers] = looks_at_text[0, :, writers[:1]]
    attentions = (looks_at_text, looks_inside)
    assert float(box_attention_loss(model, layout, batch, attentions, layers=[1])) == pytest.approx(0.0, abs=1e-5)
    assert float(box_attention_loss(model, layout, batch, attentions, layers=[0])) == pytest.approx(13.8155, abs=1e-3)
    assert float(box_attention_loss(model, layout, batch, attentions, layers=[0, 1], head=1)) == pytest.approx(
        13.8155 / 2, abs=1e-3)


def test_box_attention_reports_image_mass_and_the_share_inside_the_box(smoke):
    layout, example, image, inside, config, looks_inside, looks_at_text = _attention_stubs(smoke)
    switched = []

    class Stub:
        def __init__(self):
            self.config = config

        def set_attn_implementation(self, name):
            switched.append(name)

        def __call__(self, **batch):
            assert batch["output_attentions"]
            return SimpleNamespace(attentions=(looks_inside, looks_at_text))

    model = Stub()
    report = box_attention(model, layout, [example])
    assert report["image_mass"] == [1.0, 0.0] and report["box_share"] == [1.0, 0.0]
    assert report["uniform_box_share"] == round(len(inside) / len(image), 3)
    assert switched == ["eager", "sdpa"]


@pytest.mark.parametrize("weight", [0.0, 5.0])
def test_supervised_attention_moves_the_writers_heads_onto_the_box(smoke, weight):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_training.pointing_drills import warm_up_pointing
    from cof_training.train_default import zooming_split

    preset, models, cache = smoke
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32)
    layout = TokenLayout(Tokenizer.from_file(str(models["small"] / "tokenizer.json")))
    report = warm_up_pointing(model, layout, image_processor_for(models["small"]), *zooming_split(cache, 1, 64),
                              steps=15, batch_size=4, lr=3e-3, attention_weight=weight, progress=False)
    supervised = range(1, preset.spec.text_layers)                    # head 0 of every layer but the first
    before, after = report["held_out_box_share_before"], report["held_out_box_share"]
    moved = sum(after[i] for i in supervised) > 5 * sum(before[i] for i in supervised)
    assert moved == (weight > 0), report
    assert model.config._attn_implementation == "sdpa"
