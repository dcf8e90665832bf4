"""The CoF release's SFT data (LLaMA-Factory multimodal conversations) → our trajectories, trained the same way.

Input, one JSON list (or JSONL) of::

    {"messages": [{"role": "system"?, ...}, {"role": "user", "content": "<image>...question..."},
                  {"role": "assistant", "content": "<think>...</think> <tool_call>{...bbox_2d...}</tool_call>"},
                  {"role": "user", "content": "<image>..."}, {"role": "assistant", "content": "...<answer>X</answer>"}],
     "images": ["path/original.jpg", "path/crop1.jpg", ...]}

Conversion, so that the conversation is exactly what our runtime feeds:
* the question is the first user message with `<image>` tags, a leading `Question: ` and the CoF format instruction
  removed; user texts are then re-rendered by `cof_edge.protocol` (system prompt, format instruction, chat layout);
* image 0 is the original; the global view is `global_view` at our budgets. In the release, boxes are in the pixel
  frame of the image their model saw (the original smart-resized to <= 3840² pixels: `source_frame="resized"`,
  or give `"original"`); each box is mapped to our global view's frame and the tool call rewritten with integers;
* crops are re-cut from the original by the runtime (`plan_crop` + `render_view`), not taken from the crop files,
  so the pixels are the runtime's; the later image paths are only checked to exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cof_edge.actions import ActionKind, parse_action
from cof_edge.geometry import global_view, plan_crop, smart_resize
from cof_edge.images import load_image, render_view
from cof_edge.options import AskOptions
from cof_edge.protocol import FORMAT_INSTRUCTION

from .trajectories import Trajectory

_TOOL_CALL = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)
RELEASE_MAX_PIXELS = 3840 * 3840  # the CoF release's smart_resize budget for the image the model saw
RELEASE_MIN_PIXELS = 112 * 112


def read_rows(path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8").strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def question_text(content: str) -> str:
    text = content.replace("<image>", "").strip()
    text = text.replace(FORMAT_INSTRUCTION.strip(), "").strip()
    return text[len("Question:"):].strip() if text.startswith("Question:") else text


def _rewrite_call(turn: str, box: list[int], label: str | None) -> str:
    args = {"bbox_2d": box, **({"label": label} if label else {})}
    call = "<tool_call>\n" + json.dumps({"name": "image_zoom_in_tool", "arguments": args}) + "\n</tool_call>"
    return _TOOL_CALL.sub(lambda _: call, turn, count=1)


def convert_row(row: dict, image_root=None, options: AskOptions | None = None,
                source_frame: str = "resized") -> Trajectory:
    """One LLaMA-Factory row → a `Trajectory` at `options`' budgets (see module docstring)."""
    options = options or AskOptions()
    root = Path(image_root) if image_root else Path(".")
    messages = [m for m in row["messages"] if m["role"] != "system"]
    users = [m for m in messages if m["role"] == "user"]
    turns = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    if not users or not turns or messages[0]["role"] != "user":
        raise ValueError("a row needs a first user message and at least one assistant message")
    paths = [p if Path(p).is_absolute() else root / p for p in row.get("images", [])]
    if not paths:
        raise ValueError("a row needs its images list (image 0 = the original)")
    original = load_image(paths[0])
    view = global_view(original.size, options.global_min_pixels, options.global_max_pixels)
    w, h = original.size
    if source_frame == "resized":
        sh, sw = smart_resize(h, w, RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS)
    elif source_frame == "original":
        sw, sh = w, h
    else:
        raise ValueError(f"source_frame must be 'resized' or 'original', not {source_frame!r}")
    views, images, out_turns, boxes = [view], [render_view(original, view)], [], []
    for i, turn in enumerate(turns):
        action = parse_action(turn)
        if action.kind is ActionKind.ZOOM and i + 1 < len(turns):
            b = action.box
            mapped = [b[0] * view.size[0] / sw, b[1] * view.size[1] / sh, b[2] * view.size[0] / sw,
                      b[3] * view.size[1] / sh]
            box = [int(round(v)) for v in mapped]
            plan = plan_crop(box, view, original.size, options.crop_settings)
            views.append(plan.view)
            images.append(render_view(original, plan.view))
            boxes.append(box)
            turn = _rewrite_call(turn, box, action.label)
        elif i + 1 < len(turns):
            raise ValueError(f"assistant turn {i} is followed by another turn but holds no zoom action")
        out_turns.append(turn)
    answer = parse_action(out_turns[-1]).answer or ""
    return Trajectory(text=question_text(users[0]["content"]), turns=out_turns, views=views, images=images,
                      label=answer, category=row.get("category", ""), boxes=boxes)


def to_cache(rows_path, out_dir, image_root=None, options: AskOptions | None = None,
             source_frame: str = "resized") -> int:
    """Writes converted rows as a trajectory cache (training/cache.py layout) for `train_default --cache`."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for k, row in enumerate(read_rows(rows_path)):
        traj = convert_row(row, image_root, options, source_frame)
        names = []
        for j, img in enumerate(traj.images):
            name = f"images/lf{k}_{j}.png"
            img.save(out / name)
            names.append(name)
        lines.append(json.dumps(dict(scene=k, resolution=max(traj.views[0].region[2:]), text=traj.text,
                                     turns=traj.turns, label=traj.label, category=traj.category, images=names,
                                     views=[[list(v.region), list(v.size)] for v in traj.views])))
    (out / f"records-lf-{len(lines):06d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)
