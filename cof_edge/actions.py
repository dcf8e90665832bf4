"""Parsing one assistant turn into an action: an answer, a zoom box, or a recorded failure. Never raises.

Dialects read (DESIGN §2), each with the coordinate frame it states:
- CoF tool call: `<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>`
  (absolute pixels of the shown image; `BoxFrame` can be overridden for tools that use other frames);
- Qwen grounding tokens, CoF v1: `<|box_start|>[x1,y1,x2,y2]<|box_end|>` or `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`;
- Mini-o3: `<grounding>{"bbox_2d": [...], "source": "original_image" | "observation_i"}</grounding>` (normalized 0-1).
A tool call wins over an answer in the same turn, as in the CoF release's loop.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field

from .protocol import ZOOM_TOOL_NAME


class BoxFrame(str, enum.Enum):
    PIXELS = "pixels"          # absolute pixels of the referenced image as shown to the model
    NORMALIZED = "normalized"  # 0..1 of the referenced image
    RELATIVE_1000 = "relative_1000"  # 0..1000 of the referenced image (Qwen2-VL, Qwen3-VL)


class ActionKind(str, enum.Enum):
    ANSWER = "answer"
    ZOOM = "zoom"
    MALFORMED = "malformed"  # an action was attempted but cannot be read
    NONE = "none"            # neither an answer nor an action (e.g. ran out of tokens)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    text: str
    answer: str | None = None
    box: tuple[float, float, float, float] | None = None
    frame: BoxFrame = BoxFrame.PIXELS
    source_image: int | None = None  # which shown image the box refers to; None: the first (global) view
    dialect: str | None = None
    label: str | None = None
    error: str | None = None
    notes: tuple[str, ...] = field(default=())


_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_BOX_TOKENS = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.DOTALL)
_GROUNDING = re.compile(r"<grounding>(.*?)(?:</grounding>|$)", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)", re.IGNORECASE)
_BBOX_FIELD = re.compile(r'"bbox_2d"\s*:\s*\[([^\]]*)\]', re.DOTALL)
_OBSERVATION = re.compile(r"observation_(\d+)")
_OPTION_LETTER = re.compile(r"^\s*\(?([A-Z])\)?(?:[\s.):,]|$)")


def parse_action(text: str, tool_frame: BoxFrame = BoxFrame.PIXELS) -> Action:
    """Reads one assistant turn. `tool_frame` is the frame of `bbox_2d` in tool calls (the CoF release: pixels)."""
    if not isinstance(text, str):
        return Action(ActionKind.MALFORMED, str(text), error="turn text is not a string")
    tool = _TOOL_CALL.search(text)
    if tool:
        return _parse_tool_call(text, tool, tool_frame)
    answer = _ANSWER.search(text)
    if answer:
        return Action(ActionKind.ANSWER, text, answer=answer.group(1).strip(), dialect="answer_tag")
    box = _BOX_TOKENS.search(text)
    if box:
        return _box_action(text, box.group(1), BoxFrame.PIXELS, "box_tokens")
    grounding = _GROUNDING.search(text)
    if grounding:
        return _parse_grounding(text, grounding)
    if "<tool_call>" in text or "<|box_start|>" in text:
        return Action(ActionKind.MALFORMED, text, error="unterminated action")
    return Action(ActionKind.NONE, text)


def _parse_tool_call(text: str, match: re.Match, frame: BoxFrame) -> Action:
    body = match.group(1).strip()
    if not match.group(0).endswith("</tool_call>"):
        return Action(ActionKind.MALFORMED, text, dialect="tool_call", error="unterminated <tool_call>")
    notes: list[str] = []
    try:
        call = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        # Small models often get the JSON almost right: read the bbox_2d field by itself, and record that.
        field_match = _BBOX_FIELD.search(body)
        if not field_match:
            return Action(ActionKind.MALFORMED, text, dialect="tool_call", error=f"tool call is not JSON ({exc.msg})")
        return _box_action(text, field_match.group(1), frame, "tool_call", notes=("lenient_json",))
    if not isinstance(call, dict):
        return Action(ActionKind.MALFORMED, text, dialect="tool_call", error="tool call is not a JSON object")
    name = call.get("name")
    if name != ZOOM_TOOL_NAME:
        return Action(ActionKind.MALFORMED, text, dialect="tool_call", error=f"unknown tool {name!r}")
    arguments = call.get("arguments")
    if isinstance(arguments, str):  # some models JSON-encode the arguments twice
        try:
            arguments = json.loads(arguments)
            notes.append("arguments_as_string")
        except json.JSONDecodeError:
            arguments = None
    if not isinstance(arguments, dict) or "bbox_2d" not in arguments:
        return Action(ActionKind.MALFORMED, text, dialect="tool_call", error="tool call has no arguments.bbox_2d")
    label = arguments.get("label")
    return _box_action(text, arguments["bbox_2d"], frame, "tool_call",
                       label=label if isinstance(label, str) else None, notes=tuple(notes))


def _parse_grounding(text: str, match: re.Match) -> Action:
    if not match.group(0).endswith("</grounding>"):
        return Action(ActionKind.MALFORMED, text, dialect="grounding", error="unterminated <grounding>")
    try:
        body = json.loads(match.group(1).strip())
    except (json.JSONDecodeError, RecursionError) as exc:
        return Action(ActionKind.MALFORMED, text, dialect="grounding", error=f"grounding is not JSON ({exc.msg})")
    if not isinstance(body, dict) or "bbox_2d" not in body:
        return Action(ActionKind.MALFORMED, text, dialect="grounding", error="grounding has no bbox_2d")
    source = body.get("source", "original_image")
    observation = _OBSERVATION.fullmatch(source) if isinstance(source, str) else None
    if source == "original_image":
        source_image = 0
    elif observation:
        source_image = int(observation.group(1))
    else:
        return Action(ActionKind.MALFORMED, text, dialect="grounding", error=f"unknown grounding source {source!r}")
    return _box_action(text, body["bbox_2d"], BoxFrame.NORMALIZED, "grounding", source_image=source_image)


def _box_action(text: str, raw, frame: BoxFrame, dialect: str, *, label: str | None = None,
                source_image: int | None = None, notes: tuple[str, ...] = ()) -> Action:
    numbers, error = _read_numbers(raw)
    if error:
        return Action(ActionKind.MALFORMED, text, dialect=dialect, error=error)
    return Action(ActionKind.ZOOM, text, box=tuple(numbers), frame=frame, source_image=source_image,
                  dialect=dialect, label=label, notes=notes)


def _read_numbers(raw) -> tuple[list[float], str | None]:
    if isinstance(raw, str):
        values = [float(tok) for tok in _NUMBER.findall(raw)]
    elif isinstance(raw, (list, tuple)):
        flat = [v for item in raw for v in (item if isinstance(item, (list, tuple)) else [item])]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            return [], "box coordinates are not all numbers"
        values = [float(v) for v in flat]
    else:
        return [], "box is not a list of numbers"
    if len(values) != 4:
        return [], f"box needs 4 numbers, got {len(values)}"
    if not all(math.isfinite(v) for v in values):
        return [], "box has a non-finite coordinate"
    return values, None


def extract_answer(text: str) -> str | None:
    """The final answer of a turn: the `<answer>` content, else the text after any `<think>` block."""
    match = _ANSWER.search(text)
    if match:
        return match.group(1).strip()
    tail = text.rsplit("</think>", 1)[-1].strip()
    return tail or None


def answer_letter(answer: str | None) -> str | None:
    """The option letter an answer starts with: `B`, `(B)`, `B. cross` → `B`; anything else → None."""
    if not answer:
        return None
    match = _OPTION_LETTER.match(answer)
    return match.group(1) if match else None
