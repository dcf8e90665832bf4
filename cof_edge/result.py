"""What a question leaves behind: the answer and one trace record per turn."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .geometry import Region


@dataclass
class StepTrace:
    index: int
    action: str                         # answer | zoom | malformed | none
    text: str                           # the assistant turn as generated
    view_region: Region                 # the region of the original shown this turn
    view_size: tuple[int, int]          # (width, height) it was shown at
    visual_tokens: int
    prompt_tokens: int                  # tokens prefilled this turn (new tokens only; earlier turns stay cached)
    new_tokens: int
    box: tuple[float, ...] | None = None        # the box as the model wrote it
    box_frame: str | None = None
    crop_region: Region | None = None           # where the next view is cut from the original
    repairs: tuple[str, ...] = ()
    error: str | None = None
    cache_hit: bool = False                     # the view's vision embeddings came from the crop cache
    ms: dict[str, float] = field(default_factory=dict)  # vision, prefill, decode, total

    def line(self) -> str:
        """This step on one line, for terminals."""
        x1, y1, x2, y2 = self.view_region
        head = (f"step {self.index}: saw [{x1},{y1},{x2},{y2}] at {self.view_size[0]}x{self.view_size[1]} "
                f"({self.visual_tokens} visual{' cached' if self.cache_hit else ''}, {self.prompt_tokens} prefilled, "
                f"{self.new_tokens} new tokens, {self.ms.get('total', 0.0):.0f} ms)")
        if self.crop_region is not None:
            cx1, cy1, cx2, cy2 = self.crop_region
            tail = f"-> zoom [{cx1},{cy1},{cx2},{cy2}]"
        else:
            tail = f"-> {self.action}"
        if self.repairs:
            tail += f" (repaired: {', '.join(self.repairs)})"
        if self.error:
            tail += f" (error: {self.error})"
        return f"{head} {tail}"


@dataclass
class FocusResult:
    question: str
    image_size: tuple[int, int]
    answer: str | None = None
    stop_reason: str | None = None      # answer | no_action | max_new_tokens | malformed_action | bad_box | max_zooms | repeated_box
                                        # | context_overflow
    steps: list[StepTrace] = field(default_factory=list)

    @property
    def zooms(self) -> int:
        return sum(1 for s in self.steps if s.crop_region is not None)

    @property
    def visual_tokens(self) -> int:
        return sum(s.visual_tokens for s in self.steps)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def new_tokens(self) -> int:
        return sum(s.new_tokens for s in self.steps)

    @property
    def cache_hits(self) -> int:
        return sum(1 for s in self.steps if s.cache_hit)

    @property
    def total_ms(self) -> float:
        return sum(s.ms.get("total", 0.0) for s in self.steps)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(zooms=self.zooms, visual_tokens=self.visual_tokens, prompt_tokens=self.prompt_tokens,
                   new_tokens=self.new_tokens, cache_hits=self.cache_hits, total_ms=round(self.total_ms, 3))
        return out

    def chain_lines(self) -> list[str]:
        """The chain of focus, one line per step, for terminals."""
        lines = [step.line() for step in self.steps]
        lines.append(f"answer: {self.answer!r} ({self.stop_reason}; {self.zooms} zooms, {self.visual_tokens} visual "
                     f"tokens, {self.total_ms:.0f} ms)")
        return lines
