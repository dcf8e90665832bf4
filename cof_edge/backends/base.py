"""The small protocol every model backend implements; the engine owns the loop, positions and tokens."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from ..geometry import View
from ..images import SourceImage


class Session(Protocol):
    """One conversation's KV cache. `forward` appends tokens to it and returns the last position's logits."""

    def forward(self, token_ids: np.ndarray, positions: np.ndarray, image_embeds: Sequence[Any]) -> np.ndarray:
        """token_ids [S] int64, positions [3, S] (M-RoPE), one embedding per image-token run in the segment.

        Returns float32 logits [vocab] for the segment's last token. Nothing fed before is fed again.
        """
        ...


class Backend(Protocol):
    name: str
    tokenizer: Any  # tokenizers.Tokenizer
    # Optional: `cache_id` (str) names the vision weights in crop-cache keys (default: the backend object's id);
    # `max_context` (int) is the model's context length, which bounds each question (default: unbounded).

    def encode_view(self, source: SourceImage, view: View) -> Any:
        """Vision embeddings [tokens, hidden] of `view.region` of the source image, shown at `view.size`."""
        ...

    def new_session(self) -> Session: ...


def load_backend(name: str, model_path, **kwargs) -> Backend:
    """Backends are imported only when chosen: `transformers` imports torch, `onnxruntime` never does."""
    if name == "transformers":
        from .transformers_backend import TransformersBackend
        return TransformersBackend(model_path, **kwargs)
    if name == "onnxruntime":
        from .onnx_backend import OnnxBackend
        return OnnxBackend(model_path, **kwargs)
    raise ValueError(f"unknown backend {name!r}; available: 'transformers', 'onnxruntime'")
