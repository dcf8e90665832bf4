"""The small protocol every model backend implements; the engine owns the loop, positions and tokens."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image


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

    def encode_image(self, image: Image.Image) -> Any:
        """Vision embeddings of an RGB image whose sides are multiples of 28 ([tokens, hidden])."""
        ...

    def new_session(self) -> Session: ...


def load_backend(name: str, model_path, **kwargs) -> Backend:
    """Backends are imported only when chosen: `transformers` imports torch, the others never do."""
    if name == "transformers":
        from .transformers_backend import TransformersBackend
        return TransformersBackend(model_path, **kwargs)
    raise ValueError(f"unknown backend {name!r}; available: 'transformers'")
