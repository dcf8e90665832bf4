"""Fuzzes the action parser and the crop geometry together: model-like text in, a recorded outcome out.

    python scripts/fuzz.py [--cases 100000] [--seed 0]

Each case mutates a valid action (tool call, box tokens, grounding, answer) at the character and token level, or
builds token soup, then runs `parse_action` and, for zooms, `plan_crop` on a random image and view. A crop
error is a recorded outcome; any other exception is a bug. Exits 1 and prints the failing input if one occurs.
The last line is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback

from cof_edge.actions import ActionKind, BoxFrame, parse_action
from cof_edge.geometry import CropError, CropSettings, View, global_view, plan_crop

PIECES = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>", "<|box_start|>",
          "<|box_end|>", "<grounding>", "</grounding>", '{"name": "image_zoom_in_tool", "arguments": ',
          '"bbox_2d": ', '"source": "observation_1"', "[", "]", "{", "}", ",", ":", "(", ")", "NaN", "Infinity",
          "-", "1e9", "1e400", "0", "3.5", "-7", "999999999999", '"', "\\", "\n", " ", "label", "null", "true"]
NUMBERS = [0, 1, -1, 0.5, 1e9, -1e9, 1e-9, 3.0, 27.999, 28, 1e308, 7, 640, 1080]


def valid_action(rng: random.Random) -> str:
    box = [rng.choice(NUMBERS) if rng.random() < 0.3 else round(rng.uniform(-100, 2000), rng.choice([0, 1, 3]))
           for _ in range(rng.choice([4, 4, 4, 3, 5, 0]))]
    kind = rng.randrange(5)
    if kind == 0:
        args = {"bbox_2d": box}
        if rng.random() < 0.3:
            args["label"] = rng.choice(["tag", 5, None])
        return "<think>x</think> <tool_call>\n" + json.dumps({"name": "image_zoom_in_tool", "arguments": args}) + \
            "\n</tool_call>"
    if kind == 1:
        return "<|box_start|>[" + ",".join(str(v) for v in box) + "]<|box_end|>"
    if kind == 2:
        return "<grounding>" + json.dumps({"bbox_2d": box, "source": rng.choice(
            ["original_image", "observation_0", "observation_3", "elsewhere", 7])}) + "</grounding>"
    if kind == 3:
        return "<answer>" + rng.choice(["A", "(B) star", "", "</answer>"]) + "</answer>"
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        op = rng.randrange(3)
        at = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(at, len(chars) - 1)]
        elif op == 1:
            chars.insert(at, rng.choice(PIECES + list("0123456789.,-[]{}\"")))
        elif chars:
            chars[min(at, len(chars) - 1)] = chr(rng.randrange(32, 0x3000))
    return "".join(chars)


def one_case(rng: random.Random) -> str:
    text = mutate(rng, valid_action(rng))
    action = parse_action(text, tool_frame=rng.choice(list(BoxFrame)))
    if action.kind is ActionKind.ZOOM:
        width, height = rng.randint(1, 6000), rng.randint(1, 6000)
        if max(width, height) / min(width, height) > 150:
            width = height = rng.randint(1, 3000)
        shown = global_view((width, height), 56 * 56, rng.choice([50176, 200704, 1003520]))
        if rng.random() < 0.3:  # a crop view as the frame
            x1, y1 = rng.randrange(width), rng.randrange(height)
            shown = View(region=(x1, y1, rng.randint(x1 + 1, width), rng.randint(y1 + 1, height)), size=shown.size)
        settings = CropSettings(enlarge=rng.choice([1.0, 1.5, 3.0]), min_side=rng.choice([1, 56, 10000]),
                                snap=rng.choice([0, 28]))
        try:
            plan = plan_crop(action.box, shown, (width, height), settings, frame=action.frame.value)
        except CropError:
            return "crop_error"
        x1, y1, x2, y2 = plan.view.region
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (plan, width, height)
        assert plan.view.size[0] % 28 == 0 and plan.view.size[1] % 28 == 0
        return "zoom"
    if action.kind is ActionKind.MALFORMED:
        assert action.error
    return action.kind.value


def run(cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    for index in range(cases):
        state = rng.getstate()
        try:
            outcome = one_case(rng)
        except Exception:  # noqa: BLE001 - any exception here is the bug being looked for
            rng.setstate(state)
            text = mutate(rng, valid_action(rng))
            print(f"case {index} raised on input {text!r}:\n{traceback.format_exc()}", file=sys.stderr)
            return {"cases": index + 1, "uncaught": 1, "outcomes": outcomes}
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {"cases": cases, "uncaught": 0, "outcomes": outcomes,
            "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = run(args.cases, args.seed)
    print(json.dumps(summary))
    return 1 if summary["uncaught"] else 0


if __name__ == "__main__":
    sys.exit(main())
