"""The no-zoom evaluation engine answers from the global view in the trained tokenization; results merge."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from cof_edge.actions import answer_letter
from cof_edge.data import render_sample
from cof_training.evaluate import DirectAnswerEngine, merge, plot
from cof_training.tiny import build_small_tokenizer


class _Session:
    def __init__(self, backend):
        self.backend, self.k = backend, 0

    def forward(self, token_ids, positions, image_embeds):
        b = self.backend
        b.fed.extend(int(t) for t in token_ids)
        logits = np.full(b.vocab, -1e9, dtype=np.float32)
        logits[b.script[min(self.k, len(b.script) - 1)]] = 0.0
        self.k += 1
        return logits


class _Backend:
    name = "scripted"
    max_context = None
    cache_id = "scripted"

    def __init__(self, tokenizer, text):
        self.tokenizer, self.vocab = tokenizer, tokenizer.get_vocab_size()
        self.script, self.fed = tokenizer.encode(text).ids, []

    def encode_view(self, source, view):
        return np.zeros((1, 1), dtype=np.float32)

    def encode_image(self, image):
        return np.zeros((1, 1), dtype=np.float32)

    def new_session(self):
        return _Session(self)


def test_direct_answer_engine_takes_the_answer_path_instead_of_a_zoom():
    tok = build_small_tokenizer()
    sample = render_sample(2, 0, native_size=(960, 540))
    # the model wants to zoom, but ranks C highest when made to answer
    backend = _Backend(tok, '<think>small</think> <answer>C</answer>')
    result = DirectAnswerEngine(backend).ask(sample.image, sample.text, max_zooms=0)
    assert result.stop_reason == "answer" and answer_letter(result.answer) == "C" and result.zooms == 0
    zoomer = _Backend(tok, '<think>small</think> <tool_call>\n{"name": "image_zoom_in_tool", "arguments": '
                           '{"bbox_2d": [1, 2, 3, 4]}}\n</tool_call>')
    result = DirectAnswerEngine(zoomer).ask(sample.image, sample.text, max_zooms=0)
    assert result.stop_reason == "answer" and answer_letter(result.answer) in "ABCD" and result.zooms == 0
    assert "<tool_call>" not in result.steps[0].text


def test_zoom_hits_count_only_crops_that_hold_the_whole_target():
    from types import SimpleNamespace

    from cof_training.evaluate import crops_hold

    def result(*regions):
        return SimpleNamespace(steps=[SimpleNamespace(crop_region=r) for r in regions])

    target = [100.0, 50.0, 140.0, 90.0]
    assert crops_hold(result(None, (0, 0, 200, 100), None), target)
    assert crops_hold(result((300, 0, 400, 100), (90, 40, 140, 95)), target)       # the second crop holds it
    assert not crops_hold(result((0, 0, 139, 100)), target)                        # cut at the right edge
    assert not crops_hold(result(None), target)


def test_merge_and_plot(tmp_path):
    base = {"resolutions": [224, 3840], "n_per_resolution": 5, "avg_zooms": {}, "by_category": {},
            "methods": {"no_zoom": None, "sft": None, "rl": None, "full_res": None}}
    a = json.loads(json.dumps(base)); a["methods"]["sft"] = [30.0, 80.0]; a["avg_zooms"]["sft"] = [1, 1]
    b = json.loads(json.dumps(base)); b["methods"]["no_zoom"] = [30.0, 35.0]; b["avg_zooms"]["no_zoom"] = [0, 0]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    merged = merge([tmp_path / "a.json", tmp_path / "b.json"])
    assert merged["methods"]["sft"] == [30.0, 80.0] and merged["methods"]["no_zoom"] == [30.0, 35.0]
    assert merged["methods"]["rl"] is None
    plot(merged, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000
    # one method split across processes by resolution: the rows join, in resolution order
    high = json.loads(json.dumps(base)); high["resolutions"] = [1024, 3840]
    high["methods"]["rl"] = [50.0, 60.0]; high["skipped"] = {"full_res": {"3840": "too many tokens"}}
    high["by_category"] = {"rl": {"direct_attributes": [40.0, 70.0]}}
    low = json.loads(json.dumps(base)); low["resolutions"] = [224, 448]
    low["methods"]["rl"] = [20.0, 30.0]; low["by_category"] = {"rl": {"direct_attributes": [10.0, 15.0]}}
    (tmp_path / "high.json").write_text(json.dumps(high))
    (tmp_path / "low.json").write_text(json.dumps(low))
    joined = merge([tmp_path / "high.json", tmp_path / "low.json", tmp_path / "b.json"])
    assert joined["resolutions"] == [224, 448, 1024, 3840]
    assert joined["methods"]["rl"] == [20.0, 30.0, 50.0, 60.0]
    assert joined["methods"]["no_zoom"] == [30.0, None, None, 35.0]
    assert joined["by_category"]["rl"]["direct_attributes"] == [10.0, 15.0, 40.0, 70.0]
    assert joined["skipped"] == {"full_res": {"3840": "too many tokens"}}
    assert list(joined["methods"]) == ["no_zoom", "sft", "rl", "full_res"]
    plot(joined, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_full_resolution_pass_is_one_view_of_the_native_pixels():
    from cof_edge.geometry import global_view
    from cof_edge.options import AskOptions, full_resolution_pass

    options = AskOptions()  # a 256-token global view by default
    overrides, tokens, skip = full_resolution_pass((1920, 1080), options)
    assert overrides["max_zooms"] == 0 and skip is None
    view = global_view((1920, 1080), options.global_min_pixels, overrides["global_max_pixels"])
    width, height = view.size
    assert abs(width - 1920) <= 28 and abs(height - 1080) <= 28 and view.visual_tokens > 2500
    assert tokens == view.visual_tokens
    assert full_resolution_pass((1920, 1080), options, max_tokens=tokens)[2] is None
    assert full_resolution_pass((1920, 1080), options, max_tokens=tokens - 1)[2] == (
        f"one {tokens}-token view is over --max-full-res-tokens {tokens - 1}")
    tiny, _, _ = full_resolution_pass((50, 40), options)  # never under the minimum view
    assert tiny["global_max_pixels"] == options.global_min_pixels


def test_evaluate_runs_rl_from_its_own_checkpoint_and_skips_oversized_full_res_views(tiny_models, tmp_path):
    from cof_training.evaluate import evaluate

    model = tiny_models["small"]
    with pytest.raises(ValueError, match="--rl-model"):
        evaluate(model, ["rl"], n=1, resolutions=(224,), log=None)
    lines, partials = [], []
    result = evaluate(model, ["full_res", "rl"], n=5, resolutions=(224, 1024), max_new_tokens=8, log=lines.append,
                      rl_model=model, max_full_res_tokens=200, checkpoint=partials.append)
    assert len(lines) == 1 and lines[0].startswith("[5/5]") and len(partials) == 1
    assert result["rl_model"] == str(model)
    assert result["methods"]["full_res"][0] is not None and result["methods"]["full_res"][1] is None
    assert "over --max-full-res-tokens 200" in result["skipped"]["full_res"]["1024"]
    assert result["avg_zooms"]["full_res"][0] == 0
    assert all(v is not None for v in result["methods"]["rl"])
    assert result["methods"]["sft"] is None and result["methods"]["no_zoom"] is None
