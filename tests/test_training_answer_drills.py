"""Answer drills: a zooming trajectory labelled on its final reply's symbol and letter only; teacher-forced scores."""

import dataclasses
import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from tokenizers import Tokenizer  # noqa: E402

from cof_edge.protocol import TokenLayout  # noqa: E402
from cof_training.answer_drills import answer_example, answer_scores, with_crop_of  # noqa: E402
from cof_training.sft import CoFCollator, encode_example, image_processor_for  # noqa: E402


@pytest.mark.parametrize("tokenizer", ["small", "small-numbers"])
def test_answer_drills_label_only_the_symbol_and_the_letter(smoke_zooming, tokenizer):
    preset, models, zooming = smoke_zooming
    layout = TokenLayout(Tokenizer.from_file(str(models[tokenizer] / "tokenizer.json")))
    improc = image_processor_for(models[tokenizer])
    for traj in zooming:
        example = answer_example(layout, improc, traj, preset.budgets.system_prompt)
        whole = encode_example(layout, improc, traj, system_prompt=preset.budgets.system_prompt)
        assert torch.equal(example["input_ids"], whole["input_ids"])
        labelled = [t for t in example["labels"].tolist() if t != -100]
        symbol = re.search(r"shows an? (\S+) on", traj.turns[-1]).group(1)
        assert layout.decode(labelled[:-1]).strip() == symbol
        assert layout.decode(labelled[-1:]).strip(" <>") == traj.label
    with pytest.raises(ValueError, match="symbol"):
        answer_example(layout, improc, with_reply(zooming[0], "<think>It is red.</think> <answer>A</answer>"))


def with_reply(traj, reply):
    return dataclasses.replace(traj, turns=[*traj.turns[:-1], reply])


def test_shuffled_crops_take_the_next_trajectorys_last_crop(smoke_zooming):
    _, _, zooming = smoke_zooming
    a, b = zooming[:2]
    swapped = with_crop_of(a, b)
    assert swapped.images[:-1] == a.images[:-1] and swapped.images[-1] is b.images[-1]
    assert swapped.views[-1] == b.views[-1] and swapped.turns == a.turns


def test_answer_scores_count_teacher_forced_argmax(smoke_zooming):
    preset, models, zooming = smoke_zooming
    layout = TokenLayout(Tokenizer.from_file(str(models["small"] / "tokenizer.json")))
    improc = image_processor_for(models["small"])
    vocab = layout.tokenizer.get_vocab_size()

    def model_predicting(next_token):
        def model(input_ids, **_):
            logits = torch.zeros(*input_ids.shape, vocab)
            for p in range(input_ids.shape[1]):
                logits[0, p, next_token(input_ids[0], p)] = 1.0
            return SimpleNamespace(logits=logits)
        return model

    def oracle(ids, p):
        return int(ids[p + 1]) if p + 1 < len(ids) else 0

    keys = {"symbol", "letter", "symbol_shuffled_crops", "letter_shuffled_crops"}
    right = answer_scores(model_predicting(oracle), layout, improc, zooming, preset.budgets.system_prompt)
    assert right == dict.fromkeys(keys, 1.0)
    wrong = answer_scores(model_predicting(lambda ids, p: 0), layout, improc, zooming, preset.budgets.system_prompt)
    assert wrong == dict.fromkeys(keys, 0.0)


def test_the_cache_keeps_the_asked_tags_boxes_and_the_crop_holds_them(smoke_zooming):
    _, _, zooming = smoke_zooming
    for traj in zooming:
        assert len(traj.targets) == 1
        x1, y1, x2, y2 = traj.targets[0]
        region = traj.views[-1].region
        assert region[0] <= x1 < x2 <= region[2] and region[1] <= y1 < y2 <= region[3]


def test_tag_cells_are_the_tokens_under_the_tag():
    from cof_training.vision_drills import tag_cells

    assert tag_cells((28, 28, 84, 84), (336, 336)).nonzero()[0].tolist() == [13, 14, 25, 26]
    assert tag_cells((60, 2, 70, 12), (336, 336)).nonzero()[0].tolist() == [2]    # inside one token: its centre's
    assert not tag_cells((400, 0, 420, 20), (336, 336)).any()


def test_answer_attention_targets_point_at_the_tag_in_the_crop_and_the_chosen_option(smoke_zooming):
    import json

    preset, models, zooming = smoke_zooming
    layout = TokenLayout(Tokenizer.from_file(str(models["small"] / "tokenizer.json")))
    improc = image_processor_for(models["small"])
    image_token = json.loads((models["small"] / "config.json").read_text())["image_token_id"]
    for traj in zooming:
        example = answer_example(layout, improc, traj, preset.budgets.system_prompt, image_token)
        ids, labelled = example["input_ids"], (example["labels"] != -100).nonzero().flatten().tolist()
        (symbol_query, tag_keys), (letter_query, option_keys) = example["attention_targets"]
        assert symbol_query + 1 == labelled[0] and letter_query + 1 == labelled[-1]
        symbol = re.search(r"shows an? (\S+) on", traj.turns[-1]).group(1)
        assert layout.decode(ids[option_keys].tolist()).strip() == symbol
        assert f"({traj.label}) {symbol}" in traj.text
        view, (x1, y1, x2, y2) = traj.views[-1], traj.targets[0]
        cx, cy = view.from_original((x1, y1, x2, y2))[0::2], view.from_original((x1, y1, x2, y2))[1::2]
        centre = int(sum(cy) / 2 // 28) * (view.size[0] // 28) + int(sum(cx) / 2 // 28)
        last_view = (ids == image_token).nonzero().flatten()[-(view.size[0] // 28) * (view.size[1] // 28):]
        assert int(last_view[centre]) in tag_keys and set(tag_keys) <= set(last_view.tolist())
        sft = encode_example(layout, improc, traj, system_prompt=preset.budgets.system_prompt)
        assert torch.equal(example["reply_labels"], sft["labels"])
    with pytest.raises(ValueError, match="targets"):
        answer_example(layout, improc, dataclasses.replace(zooming[0], targets=[]), None, image_token)


def test_answer_attention_loss_is_minus_log_the_mass_on_the_targets():
    from cof_training.answer_drills import answer_attention_loss

    uniform = [torch.full((1, 3, 6, 10), 0.1) for _ in range(2)]
    targets = [[(4, [1, 2]), (5, [7])]]
    loss = answer_attention_loss(targets, uniform, (range(2), range(1, 2)), heads=(1, 2))
    assert loss.item() == pytest.approx((2 * -torch.log(torch.tensor(0.2)) - torch.log(torch.tensor(0.1))).item() / 3,
                                        rel=1e-4)
    on_target = torch.zeros(1, 3, 6, 10)
    on_target[0, 1, 4, 1] = on_target[0, 2, 5, 7] = 1.0
    assert answer_attention_loss(targets, [on_target] * 2, (range(2), range(1, 2)), heads=(1, 2)).item() < 1e-5
    with pytest.raises(ValueError, match="no drill"):
        answer_attention_loss([[(4, []), (5, [])]], uniform, (range(2), range(2)), heads=(1, 2))


def test_answer_warm_up_with_supervised_attention_trains_and_reports(smoke_zooming):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_training.answer_drills import warm_up_answers

    preset, models, zooming = smoke_zooming
    layout = TokenLayout(Tokenizer.from_file(str(models["small"] / "tokenizer.json")))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32)
    before = {k: v.clone() for k, v in model.named_parameters()}
    loaders = [lambda t=t: t for t in zooming]
    report = warm_up_answers(model, layout, image_processor_for(models["small"]), loaders[1:], loaders[:1], 2, 2, 1e-3,
                             preset.budgets.system_prompt, attention_weight=1.0, reply_weight=1.0, progress=False)
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters() if k.startswith("model.language"))
    depth = model.config.text_config.num_hidden_layers
    for key in ("held_out_symbol_attention", "held_out_letter_attention_before"):
        assert len(report[key]) == depth and all(0.0 <= v <= 1.0 for v in report[key])
    assert report["steps"] == 2 and report["attention_weight"] == 1.0 and report["reply_weight"] == 1.0
    assert 0.0 <= report["held_out_symbol"] <= 1.0
    assert model.config._attn_implementation != "eager"


def test_answer_drills_add_sfts_loss_times_the_reply_weight(smoke_zooming, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_training import answer_drills

    preset, models, zooming = smoke_zooming
    layout = TokenLayout(Tokenizer.from_file(str(models["small"] / "tokenizer.json")))
    improc = image_processor_for(models["small"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(models["small"], dtype=torch.float32).eval()
    loaders = [lambda t=t: t for t in zooming]
    objectives = {}

    def capture(model, batch, train, steps, batch_size, lr, seed, desc, progress, reset_every=0, loss=None):
        with torch.no_grad():
            objectives[weight] = loss(model, batch(train[:2])).item()

    monkeypatch.setattr(answer_drills, "drill_loop", capture)
    for weight in (0.0, 2.0):
        answer_drills.warm_up_answers(model, layout, improc, loaders[1:], loaders[:1], 1, 2, 1e-3,
                                      preset.budgets.system_prompt, reply_weight=weight, progress=False)
    pad = CoFCollator(layout.special.end_of_text)
    sft = pad([encode_example(layout, improc, load(), system_prompt=preset.budgets.system_prompt)
               for load in loaders[1:3]])
    with torch.no_grad():
        sft_loss = model(**sft).loss.item()
    assert objectives[2.0] - objectives[0.0] == pytest.approx(2.0 * sft_loss, rel=1e-4)
