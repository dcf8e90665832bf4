"""Per-question state: the original image, the views shown so far, the session and what is still unfed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .geometry import View
from .images import SourceImage
from .mrope import MRopeCursor
from .options import AskOptions
from .result import FocusResult


@dataclass
class FocusState:
    question: str
    source: SourceImage
    options: AskOptions
    session: Any
    result: FocusResult
    next_view: View                                    # what the next turn shows
    views: list[View] = field(default_factory=list)    # shown so far, in order (index = image number)
    cursor: MRopeCursor = field(default_factory=MRopeCursor)
    token_ids: list[int] = field(default_factory=list)  # the whole conversation so far, prompts and replies
    unfed: list[int] = field(default_factory=list)     # sampled but not yet in the cache (the last stop token)
    turn_closed: bool = True                            # did the last reply end with a stop token
    turn_token_limit: int = 0                           # new tokens this turn may take (max_new_tokens, or less
                                                        # when the context is nearly full)
    done: bool = False
