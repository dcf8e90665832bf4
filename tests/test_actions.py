import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from cof_edge.actions import ActionKind, BoxFrame, answer_letter, extract_answer, parse_action


def tool_call(box, name="image_zoom_in_tool", label=None):
    arguments = {"bbox_2d": box} if label is None else {"bbox_2d": box, "label": label}
    return f"<think>look closer</think> <tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_tool_call_round_trip():
    action = parse_action(tool_call([10, 20.5, 300, 400], label="red tag"))
    assert action.kind is ActionKind.ZOOM
    assert action.box == (10.0, 20.5, 300.0, 400.0)
    assert action.frame is BoxFrame.PIXELS and action.dialect == "tool_call" and action.label == "red tag"
    assert action.source_image is None


def test_tool_frame_is_configurable():
    action = parse_action(tool_call([100, 200, 300, 400]), tool_frame=BoxFrame.RELATIVE_1000)
    assert action.frame is BoxFrame.RELATIVE_1000


@pytest.mark.parametrize("text,box", [
    ("<|box_start|>[1,2,3,4]<|box_end|><|image_zoomin|>", (1, 2, 3, 4)),
    ("<|object_ref_start|>tag<|object_ref_end|><|box_start|>(15,25),(35,45)<|box_end|>", (15, 25, 35, 45)),
    ("<|box_start|>[1.5, -2, 3e2, 4]<|box_end|>", (1.5, -2, 300, 4)),
])
def test_box_token_dialect(text, box):
    action = parse_action(text)
    assert action.kind is ActionKind.ZOOM and action.dialect == "box_tokens"
    assert action.box == tuple(float(v) for v in box) and action.frame is BoxFrame.PIXELS


def test_grounding_dialect_is_normalized_with_source():
    action = parse_action('<grounding>{"bbox_2d": [0.1, 0.2, 0.5, 0.6], "source": "observation_2"}</grounding>')
    assert action.kind is ActionKind.ZOOM and action.frame is BoxFrame.NORMALIZED
    assert action.box == (0.1, 0.2, 0.5, 0.6) and action.source_image == 2
    original = parse_action('<grounding>{"bbox_2d": [0, 0, 1, 1], "source": "original_image"}</grounding>')
    assert original.source_image == 0


def test_answer_and_tool_call_precedence():
    assert parse_action("<think>x</think> <answer> (B) cross </answer>").answer == "(B) cross"
    both = parse_action(tool_call([1, 2, 3, 4]) + "<answer>A</answer>")
    assert both.kind is ActionKind.ZOOM  # as in the CoF release's loop


@pytest.mark.parametrize("text,error", [
    ("<tool_call>{not json}</tool_call>", "not JSON"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3]}}</tool_call>', "4 numbers, got 3"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [NaN, 2, 3, 4]}}</tool_call>', "non-finite"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, "a", 3, 4]}}</tool_call>', "not all numbers"),
    ('<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>', "unknown tool"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {}}</tool_call>', "no arguments.bbox_2d"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2', "unterminated"),
    ("<tool_call>[1, 2, 3, 4]</tool_call>", "not a JSON object"),
    ("<|box_start|>[1,2,inf,4]<|box_end|>", "non-finite"),
    ("<|box_start|>[1,2]<|box_end|>", "got 2"),
])
def test_malformed_actions_are_recorded(text, error):
    action = parse_action(text)
    assert action.kind is ActionKind.MALFORMED
    assert error in action.error


def test_lenient_json_reads_the_box_and_says_so():
    action = parse_action('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4],}}</tool_call>')
    assert action.kind is ActionKind.ZOOM and action.box == (1, 2, 3, 4) and "lenient_json" in action.notes


def test_huge_and_inverted_boxes_parse_and_are_left_to_geometry():
    action = parse_action(tool_call([1e9, 5, 0, 1e9]))
    assert action.kind is ActionKind.ZOOM and action.box == (1e9, 5, 0, 1e9)


def test_no_action():
    assert parse_action("I am not sure").kind is ActionKind.NONE
    assert parse_action("").kind is ActionKind.NONE


def test_answer_extraction():
    assert extract_answer("<think>hm</think><answer>B</answer>") == "B"
    assert extract_answer("<think>hm</think> C") == "C"
    assert extract_answer("<think>only thinking</think>") is None
    assert [answer_letter(a) for a in ["B", "(C) star", "D. heart", "A)", "maybe", None, "Blue"]] == \
        ["B", "C", "D", "A", None, None, None]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(list('<>/|{}[]()",:.-+0123456789eEnaif ') + [
    "<tool_call>", "</tool_call>", "<answer>", "</answer>", "<|box_start|>", "<|box_end|>", "<grounding>",
    "</grounding>", '"bbox_2d"', '"name"', '"image_zoom_in_tool"', '"arguments"', "NaN", "1e999", "source",
    '"observation_1"']), max_size=60).map("".join))
def test_parser_never_raises(text):
    action = parse_action(text)
    assert action.kind in ActionKind
    if action.kind is ActionKind.ZOOM:
        assert len(action.box) == 4 and all(math.isfinite(v) for v in action.box)
    if action.kind is ActionKind.MALFORMED:
        assert action.error


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=4, max_size=4))
def test_tool_call_round_trips_any_finite_box(box):
    action = parse_action(tool_call(box))
    assert action.kind is ActionKind.ZOOM and action.box == tuple(box)
    tokens = parse_action("<|box_start|>[" + ",".join(repr(v) for v in box) + "]<|box_end|>")
    assert tokens.box == tuple(box)
