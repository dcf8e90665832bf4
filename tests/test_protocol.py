"""The protocol text equals the Qwen2.5-VL chat template, and token layout is segment-safe."""

import pytest
from tokenizers import Tokenizer

from cof_edge.protocol import (IMAGE_PAD, SYSTEM_PROMPT, TokenLayout, chat_messages, crop_turn_prompt,
                               opening_prompt, render_conversation)

pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

QUESTION = "Is the red tag to the left or to the right of the blue tag?\n(A) left\n(B) right\n" \
           "Answer with the option's letter from the given choices directly."
TURNS = ['<think>Find the red tag.</think> <tool_call>\n{"name": "image_zoom_in_tool", "arguments": '
         '{"bbox_2d": [10, 20, 30, 40]}}\n</tool_call>',
         '<think>Now the blue one.</think> <tool_call>\n{"name": "image_zoom_in_tool", "arguments": '
         '{"bbox_2d": [50, 60, 70, 80]}}\n</tool_call>',
         "<think>Red is left of blue.</think> <answer>A</answer>"]


@pytest.mark.parametrize("n_turns", [1, 2, 3])
def test_rendered_conversation_equals_chat_template(tiny_model, n_turns):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    turns = TURNS[:n_turns]
    messages = chat_messages(QUESTION, turns, images=[None] * n_turns)
    reference = tokenizer.apply_chat_template(messages, tokenize=False)
    assert render_conversation(QUESTION, turns) == reference
    # And the prompt the runtime sends before the next reply (a crop follows the last zoom).
    if n_turns < 3:
        with_next = chat_messages(QUESTION, turns, images=[None] * (n_turns + 1))
        reference = tokenizer.apply_chat_template(with_next, tokenize=False, add_generation_prompt=True)
        assert render_conversation(QUESTION, turns, add_generation_prompt=True) == reference


def test_runtime_segments_concatenate_to_the_conversation():
    text = opening_prompt(QUESTION) + TURNS[0] + "<|im_end|>" + crop_turn_prompt() + TURNS[1] + "<|im_end|>" \
        + crop_turn_prompt() + TURNS[2] + "<|im_end|>\n"
    assert text == render_conversation(QUESTION, TURNS)
    assert SYSTEM_PROMPT.startswith("You are a helpful assistant.\n\n# Tools") and "image_zoom_in_tool" in SYSTEM_PROMPT


def test_segment_wise_tokens_equal_whole_text_tokens(tiny_model):
    """Tokenizing turn by turn (what the runtime does) gives the same ids as tokenizing the whole text."""
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    layout = TokenLayout(tokenizer)
    counts = [64, 36, 20]
    segments = [layout.encode(opening_prompt(QUESTION), counts[:1])]
    for i, turn in enumerate(TURNS):
        segments.append(layout.encode(turn) + [layout.special.im_end])
        if i < 2:
            segments.append(layout.encode(crop_turn_prompt(), counts[i + 1:i + 2]))
    whole_text = render_conversation(QUESTION, TURNS).rstrip("\n")
    for count in counts:
        whole_text = whole_text.replace(IMAGE_PAD, "<|placeholder|>" * count, 1)
    whole = tokenizer.encode(whole_text.replace("<|placeholder|>", IMAGE_PAD), add_special_tokens=False).ids
    assert [t for seg in segments for t in seg] == whole


def test_layout_rejects_mismatched_image_counts(tiny_model):
    layout = TokenLayout(Tokenizer.from_file(str(tiny_model / "tokenizer.json")))
    with pytest.raises(ValueError, match="1 image slots but 0 images"):
        layout.encode(opening_prompt("q"), [])
