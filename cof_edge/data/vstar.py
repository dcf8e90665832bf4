"""V* bench's on-disk layout: `test_questions.jsonl` plus one image folder per category.

A line of V*'s own file looks like
`{"image": "direct_attributes/sa_4690.jpg", "text": "...\\n(A) blue\\n...", "category": "direct_attributes",
"question_id": 0, "label": "A"}`. Our synthetic data is written in the same layout, with our extra fields
(options, answer_text, target_boxes, ...) beside V*'s in the same JSON object, so one reader serves both.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..atomic import atomic_write_bytes
from .vsearch import CATEGORIES, PROMPT_SUFFIX, VSearchSample, generate, resize_to_long_side, scale_box

QUESTIONS_FILE = "test_questions.jsonl"
VSTAR_FIELDS = ("image", "text", "category", "question_id", "label")
# PNG keeps the tags' exact colours and their small symbols intact (JPEG q95 was no smaller on these scenes);
# level 3 is within 12% of level 6's size at about 60% of its time.
PNG_COMPRESS_LEVEL = 3
BOX_DECIMALS = 2

_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s?(.*)$")


@dataclass
class VStarItem:
    question_id: Any  # int in V*; kept as found
    image_path: Path  # absolute: the bench directory joined with `image`
    text: str
    label: str | None  # the answer letter; some copies of V* leave it out
    category: str
    image: str = ""  # the path as written in the jsonl, relative to the bench directory
    extras: dict[str, Any] = field(default_factory=dict)  # every other field of the line

    @property
    def question(self) -> str:
        return parse_options(self.text)[0]

    @property
    def options(self) -> list[str]:
        """Our recorded options when present, else those parsed from the text (real V*)."""
        if "options" in self.extras:
            return list(self.extras["options"])
        return parse_options(self.text)[1]

    @property
    def answer_text(self) -> str | None:
        if "answer_text" in self.extras:
            return self.extras["answer_text"]
        options = self.options
        if self.label is None or not options:
            return None
        position = ord(self.label) - ord("A")
        return options[position] if 0 <= position < len(options) else None

    @property
    def target_boxes(self) -> list[list[float]] | None:
        """Boxes in the pixels of the image on disk, when recorded (synthetic data only)."""
        boxes = self.extras.get("target_boxes")
        return None if boxes is None else [list(box) for box in boxes]

    def load_image(self) -> Image.Image:
        with Image.open(self.image_path) as image:
            return image.convert("RGB")


def parse_options(text: str) -> tuple[str, list[str]]:
    """Split V* text into the bare question and its options; the instruction line is dropped."""
    lines = text.strip().split("\n")
    question_lines: list[str] = []
    options: list[str] = []
    for line in lines:
        match = _OPTION_LINE.match(line.strip())
        if match:
            options.append(match.group(2).strip())
        elif line.strip() == PROMPT_SUFFIX:
            continue
        elif not options:
            question_lines.append(line)
    return "\n".join(question_lines).strip(), options


def _rounded_box(box: Iterable[float]) -> list[float]:
    return [round(float(v), BOX_DECIMALS) for v in box]


def _record_for(sample: VSearchSample, question_id: int, image_relpath: str, image_size: tuple[int, int]) -> dict:
    original_size = sample.image.size

    def to_written(box: list[int]) -> list[float]:
        return _rounded_box(scale_box(box, original_size, image_size))

    return {
        # V*'s own fields first
        "image": image_relpath,
        "text": sample.text,
        "category": sample.category,
        "question_id": question_id,
        "label": sample.label,
        # ours
        "question": sample.question,
        "options": list(sample.options),
        "answer_text": sample.answer_text,
        "target_boxes": [to_written(box) for box in sample.target_boxes],
        "target_colours": list(sample.target_colours),
        "tags": [{"colour": t.colour, "symbol": t.symbol, "box": to_written(t.box)} for t in sample.tags],
        "image_size": list(image_size),
        "original_size": list(original_size),
        "original_target_boxes": [list(box) for box in sample.target_boxes],
        "seed": sample.seed,
        "index": sample.index,
    }


def write_vstar(
    samples: Iterable[VSearchSample],
    out_dir: str | os.PathLike,
    resolution: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write samples in V*'s layout under `out_dir`; returns the directory.

    `resolution` is an optional long side: images are resized to it and boxes scaled to match (`original_size`
    and `original_target_boxes` keep the native frame). Files are written one by one, each atomically; an existing
    directory is written into, and nothing in it is deleted. `progress(count)` is called after each sample.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for question_id, sample in enumerate(samples):
        if sample.category not in CATEGORIES:
            raise ValueError(f"sample {sample.index} has unknown category {sample.category!r}")
        image = sample.image if resolution is None else resize_to_long_side(sample.image, resolution)
        image_relpath = f"{sample.category}/vsearch_s{sample.seed}_{sample.index:06d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        atomic_write_bytes(out / image_relpath, buffer.getvalue())
        record = _record_for(sample, question_id, image_relpath, image.size)
        if resolution is not None:
            record["resolution"] = resolution
        lines.append(json.dumps(record, ensure_ascii=False))
        if progress is not None:
            progress(question_id + 1)
    atomic_write_bytes(out / QUESTIONS_FILE, ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    return out


def read_vstar(path: str | os.PathLike) -> list[VStarItem]:
    """Read a V* bench directory (ours or the real one); `path` may also be the jsonl file itself."""
    path = Path(path)
    questions = path if path.is_file() else path / QUESTIONS_FILE
    root = questions.parent
    if not questions.is_file():
        raise FileNotFoundError(f"no {QUESTIONS_FILE} in {path}")
    items: list[VStarItem] = []
    with questions.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{questions}:{line_number}: not valid JSON: {error}") from None
            missing = [key for key in ("image", "text") if key not in record]
            if missing:
                raise ValueError(f"{questions}:{line_number}: missing field(s) {missing}")
            image = record["image"]
            extras = {key: value for key, value in record.items() if key not in VSTAR_FIELDS}
            items.append(
                VStarItem(
                    question_id=record.get("question_id", len(items)),
                    image_path=root / image,
                    text=record["text"],
                    label=record.get("label"),
                    # V* files its images under one folder per category: the folder names it when the field is absent.
                    category=record.get("category") or Path(image).parts[0],
                    image=image,
                    extras=extras,
                )
            )
    return items


def run_vsearch_cli(n: int, out: str, seed: int = 0, resolution: int | None = None) -> Path:
    """Generate `n` samples of stream `seed` and write them in V*'s layout, reporting progress on stderr."""

    def report(count: int) -> None:
        if count % 10 == 0 or count == n:
            print(f"vsearch: {count}/{n} samples written", file=sys.stderr, flush=True)

    out_dir = write_vstar(generate(n, seed=seed), out, resolution=resolution, progress=report)
    print(f"vsearch: wrote {n} questions to {out_dir / QUESTIONS_FILE}", file=sys.stderr, flush=True)
    return out_dir
