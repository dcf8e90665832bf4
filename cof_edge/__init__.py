"""cof-edge: Chain-of-Focus adaptive zoom reasoning, lean runtime (numpy, pillow, tokenizers, onnxruntime)."""

from .actions import Action, ActionKind, BoxFrame, parse_action
from .engine import FocusEngine
from .options import AskOptions
from .result import FocusResult, StepTrace

__version__ = "0.1.0"
__all__ = ["Action", "ActionKind", "AskOptions", "BoxFrame", "FocusEngine", "FocusResult", "StepTrace",
           "parse_action"]
