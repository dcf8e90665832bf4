"""The loop itself, on a scripted backend: bounds, repairs and every stop reason, with real tokenization."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from cof_edge.engine import FocusEngine
from cof_edge.options import AskOptions
from cof_edge.protocol import SpecialIds


class ScriptedBackend:
    """Emits the given replies token by token through the engine's greedy decoder."""

    name = "scripted"
    cache_id = "scripted"
    max_context = None

    def __init__(self, tokenizer, replies, close_turns=True):
        self.tokenizer = tokenizer
        special = SpecialIds.from_tokenizer(tokenizer)
        self.scripts = [tokenizer.encode(r, add_special_tokens=False).ids + ([special.im_end] if close_turns else [])
                        for r in replies]
        self.vocab = tokenizer.get_vocab_size()
        self.encoded_sizes = []
        self.fed = []

    def encode_view(self, source, view):
        self.encoded_sizes.append(view.size)
        return np.zeros((view.visual_tokens, 8), np.float32)

    def new_session(self):
        backend = self

        class Session:
            def __init__(self):
                self.queue = []

            def forward(self, token_ids, positions, image_embeds):
                assert positions.shape == (3, len(token_ids))
                backend.fed.append((len(token_ids), len(image_embeds)))
                if len(image_embeds):  # a new turn: start its reply
                    self.queue = list(backend.scripts.pop(0)) if backend.scripts else []
                logits = np.zeros(backend.vocab, np.float32)
                logits[self.queue.pop(0) if self.queue else 0] = 1.0
                return logits

        return Session()


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return Tokenizer.from_file(str(tiny_models["small"] / "tokenizer.json"))


def zoom(box, extra=""):
    return "<think>zoom</think> <tool_call>\n" + json.dumps(
        {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": box}}) + "\n</tool_call>" + extra


IMAGE = np.full((1080, 1920, 3), 127, np.uint8)


def run(tokenizer, replies, image=IMAGE, close_turns=True, **options):
    backend = ScriptedBackend(tokenizer, replies, close_turns)
    engine = FocusEngine(backend, AskOptions(**options) if options else None)
    seen = []
    result = engine.ask(image, "What symbol is on the red tag?", on_step=seen.append)
    assert seen == result.steps
    return result, backend


def test_zoom_then_answer(tokenizer):
    result, backend = run(tokenizer, [zoom([100, 50, 140, 80]), "<think>ok</think> <answer>B</answer>"])
    assert (result.stop_reason, result.answer, result.zooms) == ("answer", "B", 1)
    first, second = result.steps
    assert first.view_region == (0, 0, 1920, 1080) and first.view_size == (588, 336)
    # the box is in the global view's pixels: x scale 1920/588, y scale 1080/336, then 1.5x about the centre
    sx, sy = 1920 / 588, 1080 / 336
    cx, cy, w, h = 120 * sx, 65 * sy, 40 * sx * 1.5, 30 * sy * 1.5
    expected = (int(np.floor(cx - w / 2)), int(np.floor(cy - h / 2)), int(np.ceil(cx + w / 2)), int(np.ceil(cy + h / 2)))
    assert first.crop_region == second.view_region
    assert all(abs(a - b) <= 1 for a, b in zip(first.crop_region, expected))
    assert backend.encoded_sizes[1] == second.view_size
    prefills = [n for n, images in backend.fed if images]
    assert [first.prompt_tokens, second.prompt_tokens] == prefills and result.visual_tokens == first.visual_tokens + second.visual_tokens


def test_max_zooms_bounds_the_chain(tokenizer):
    boxes = [[10 * i, 10, 10 * i + 50, 60] for i in range(1, 6)]
    result, _ = run(tokenizer, [zoom(b) for b in boxes], max_zooms=2)
    assert result.stop_reason == "max_zooms" and result.zooms == 2 and len(result.steps) == 3
    assert "zoom budget of 2" in result.steps[-1].error and result.answer is None


def test_zero_zooms_allowed(tokenizer):
    result, _ = run(tokenizer, [zoom([1, 1, 50, 50])], max_zooms=0)
    assert result.stop_reason == "max_zooms" and len(result.steps) == 1


def test_repeated_box_ends_the_chain(tokenizer):
    result, _ = run(tokenizer, [zoom([100, 100, 200, 200]), zoom([100, 100, 200, 200]), "<answer>A</answer>"])
    assert result.stop_reason == "repeated_box" and result.zooms == 1 and "already shown" in result.steps[-1].error


@pytest.mark.parametrize("reply,reason,error", [
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3]}}</tool_call>',
     "malformed_action", "4 numbers, got 3"),
    ("<tool_call>{oops}</tool_call>", "malformed_action", "not JSON"),
    (zoom([5000, 5000, 6000, 6000]), "bad_box", "outside"),
    ('<grounding>{"bbox_2d": [0.1, 0.1, 0.2, 0.2], "source": "observation_3"}</grounding>', "bad_box",
     "refers to image 3"),
])
def test_failures_are_recorded_not_raised(tokenizer, reply, reason, error):
    result, _ = run(tokenizer, [reply])
    assert result.stop_reason == reason and error in result.steps[-1].error and result.answer is None


def test_repairs_are_in_the_trace(tokenizer):
    result, _ = run(tokenizer, [zoom([300, 200, 100, 1e9]), "<answer>C</answer>"])
    assert result.steps[0].repairs == ("reordered", "clamped") and result.answer == "C"


def test_no_action_and_token_bound(tokenizer):
    result, _ = run(tokenizer, ["<think>hmm</think> D"])
    assert (result.stop_reason, result.answer) == ("no_action", "D")
    result, _ = run(tokenizer, ["<think>" + "long " * 50], max_new_tokens=10, close_turns=False)
    assert result.stop_reason == "max_new_tokens" and result.steps[0].new_tokens == 10


def test_unclosed_zoom_turn_is_closed_before_the_crop(tokenizer):
    """A reply that hit the token bound right after a complete tool call still zooms; <|im_end|> is added."""
    reply = zoom([100, 100, 200, 200])
    n = len(tokenizer.encode(reply, add_special_tokens=False).ids)
    result, backend = run(tokenizer, [reply, "<answer>A</answer>"], close_turns=False, max_new_tokens=n)
    assert result.zooms == 1 and result.answer == "A"
    crop_prompt = result.steps[1].prompt_tokens
    closed, _ = run(tokenizer, [reply, "<answer>A</answer>"], max_new_tokens=n + 1)
    assert crop_prompt == closed.steps[1].prompt_tokens + 1  # the unfed last token and an explicit <|im_end|>


def test_options_are_validated(tokenizer):
    engine = FocusEngine(ScriptedBackend(tokenizer, []))
    with pytest.raises(TypeError, match="unknown option"):
        engine.ask(IMAGE, "q", max_zoom=2)
    with pytest.raises(ValueError, match="max_zooms"):
        AskOptions(max_zooms=-1)
    with pytest.raises(ValueError, match="global_min_pixels"):
        AskOptions(global_min_pixels=10 ** 7)
    with pytest.raises(ValueError, match="enlarge"):
        AskOptions(enlarge=0.5)


def test_step_after_done_raises(tokenizer):
    engine = FocusEngine(ScriptedBackend(tokenizer, ["<answer>A</answer>"]))
    state = engine.start(IMAGE, "q")
    engine.step(state)
    assert state.done
    with pytest.raises(RuntimeError, match="finished"):
        engine.step(state)


def test_result_serialises(tokenizer):
    result, _ = run(tokenizer, [zoom([100, 50, 140, 80]), "<answer>B</answer>"])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["zooms"] == 1 and data["answer"] == "B" and len(data["steps"]) == 2
    assert data["steps"][0]["crop_region"] == list(result.steps[0].crop_region)
    lines = result.chain_lines()
    assert lines[0].startswith("step 0: saw [0,0,1920,1080] at 588x336") and "-> zoom" in lines[0]
    assert lines[-1].startswith("answer: 'B' (answer; 1 zooms")


def test_trace_png_draws_each_crop_numbered(tokenizer, tmp_path):
    from PIL import Image

    from cof_edge.trace_image import COLOURS, save_trace

    result, _ = run(tokenizer, [zoom([100, 50, 140, 80]), zoom([300, 200, 350, 250]), "<answer>B</answer>"])
    path = save_trace(Image.fromarray(IMAGE), result, tmp_path / "t.png")
    drawn = np.asarray(Image.open(path))
    for number, step in enumerate(result.steps[:2]):
        x1, y1, x2, y2 = step.crop_region
        colour = np.array(COLOURS[number])
        assert (drawn[y1 + 1, x1:x2] == colour).all(axis=-1).mean() > 0.9  # the top edge
        assert (drawn[(y1 + y2) // 2, (x1 + x2) // 2] == 127).all()        # the inside is untouched
