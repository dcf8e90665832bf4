"""Pointing drills: the first turn of a zooming trajectory, labelled on its box's numbers only; scores and warm-up."""

import dataclasses
import json
import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from tokenizers import Tokenizer  # noqa: E402

from cof_edge.protocol import TokenLayout  # noqa: E402
from cof_training.cache import build_cache, read_cache  # noqa: E402
from cof_training.pointing_drills import (box_scores, first_turn, number_token_ids,  # noqa: E402
                                          pointing_example)
from cof_training.presets import get_preset  # noqa: E402
from cof_training.sft import encode_example, image_processor_for  # noqa: E402
from cof_training.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("point")
    preset = get_preset("smoke")
    models = {name: build_tiny_model(root / name, tokenizer=name, spec=preset.spec, seed=0)
              for name in ("small", "small-numbers")}
    return preset, models, build_cache(preset, root / "cache", 0, 3, progress=False)


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
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 7, 7, -100, -100]])
    predicted = torch.tensor([[0, 7, 8, 0, 0], [7, 3, 0, 0, 0]])    # row 0 right twice; row 1 right once of twice
    logits = torch.nn.functional.one_hot(predicted, 10).float() * 5

    def model(**batch):
        return SimpleNamespace(logits=logits, loss=torch.tensor(0.25))

    scores = box_scores(model, {"labels": labels})
    assert scores == {"box_ce": 0.25, "token_accuracy": 0.75, "box_exact": 0.5}


def test_pointing_warm_up_lowers_the_box_loss_and_runs_once_per_work_dir(smoke, tmp_path, monkeypatch):
    from cof_training import pointing_drills
    from cof_training.train_default import pointed_init

    preset, models, cache = smoke
    preset = dataclasses.replace(preset, point_warmup_steps=10, point_batch_size=4, lr=3e-3)
    out, report = pointed_init(models["small"], tmp_path / "pointed", cache, preset, progress=False,
                               held_out_scenes=1)
    zooming = [c for c in read_cache(cache) if len(c.record["turns"]) > 1]
    last = max(c.record["scene"] for c in zooming)
    assert report["steps"] == 10 and report["held_out"] == sum(c.record["scene"] == last for c in zooming) > 0
    assert report["trajectories"] == len(zooming) - report["held_out"] > 0
    assert report["held_out_box_ce"] < report["held_out_box_ce_before"], report
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    monkeypatch.setattr(pointing_drills, "warm_up_pointing", lambda *a, **k: pytest.fail("the warm-up ran twice"))
    assert pointed_init(models["small"], tmp_path / "pointed", cache, preset, progress=False,
                        held_out_scenes=1) == (out, report)
