"""Answer drills: a zooming trajectory labelled on its final reply's symbol and letter only; teacher-forced scores."""

import dataclasses
import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from tokenizers import Tokenizer  # noqa: E402

from cof_edge.protocol import TokenLayout  # noqa: E402
from cof_training.answer_drills import answer_example, answer_scores, with_crop_of  # noqa: E402
from cof_training.cache import read_cache  # noqa: E402
from cof_training.sft import encode_example, image_processor_for  # noqa: E402


@pytest.fixture(scope="module")
def smoke(smoke_run):
    preset, models, cache = smoke_run
    zooming = [t for t in (c.load() for c in read_cache(cache)) if t.zooms]
    assert len(zooming) >= 2
    return preset, models, zooming


@pytest.mark.parametrize("tokenizer", ["small", "small-numbers"])
def test_answer_drills_label_only_the_symbol_and_the_letter(smoke, tokenizer):
    preset, models, zooming = smoke
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


def test_shuffled_crops_take_the_next_trajectorys_last_crop(smoke):
    _, _, zooming = smoke
    a, b = zooming[:2]
    swapped = with_crop_of(a, b)
    assert swapped.images[:-1] == a.images[:-1] and swapped.images[-1] is b.images[-1]
    assert swapped.views[-1] == b.views[-1] and swapped.turns == a.turns


def test_answer_scores_count_teacher_forced_argmax(smoke):
    preset, models, zooming = smoke
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
