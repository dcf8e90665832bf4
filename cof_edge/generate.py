"""Prefill and greedy decoding over a backend session, with host-side M-RoPE positions."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .mrope import MRopeCursor


def prefill(session, cursor: MRopeCursor, token_ids: Sequence[int], grids: Sequence[tuple[int, int, int]],
            image_embeds: Sequence[Any], image_token_id: int) -> np.ndarray:
    positions = cursor.positions(token_ids, grids, image_token_id)
    return session.forward(np.asarray(token_ids, dtype=np.int64), positions, image_embeds)


def decode_one_token(session, cursor: MRopeCursor, token: int) -> np.ndarray:
    positions = cursor.positions([token], (), image_token_id=-1)
    return session.forward(np.asarray([token], dtype=np.int64), positions, ())


def decode_greedy(session, cursor: MRopeCursor, logits: np.ndarray, max_new_tokens: int,
                  stop_ids: frozenset[int]) -> list[int]:
    """Greedy tokens until a stop id or the bound. The last token returned is not fed to the session."""
    tokens = [int(np.argmax(logits))]
    while tokens[-1] not in stop_ids and len(tokens) < max_new_tokens:
        logits = decode_one_token(session, cursor, tokens[-1])
        tokens.append(int(np.argmax(logits)))
    return tokens


def teacher_force(session, cursor: MRopeCursor, tokens: Sequence[int]) -> np.ndarray | None:
    """Feeds a given reply as if it had been decoded: every token but the last enters the cache."""
    logits = None
    for token in tokens[:-1]:
        logits = decode_one_token(session, cursor, int(token))
    return logits
