"""M-RoPE positions on the host, incrementally across turns (DESIGN §3).

Text advances the position by one per token; an image's tokens take (t, row, col) positions from the current
position, and the image advances it by max(t, h, w) of its merged grid, not by its token count.
Equal to transformers' `get_rope_index` on the whole conversation (tested).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import MERGE


class MRopeCursor:
    def __init__(self):
        self.next_position = 0

    def positions(self, token_ids: Sequence[int], image_grids: Sequence[tuple[int, int, int]],
                  image_token_id: int) -> np.ndarray:
        """Positions [3, len(token_ids)] for a segment appended to the conversation; advances the cursor.

        Each run of `image_token_id` is one image, matched in order with `image_grids` (t, h, w in patches).
        """
        ids = np.asarray(token_ids, dtype=np.int64)
        out = np.empty((3, len(ids)), dtype=np.int64)
        grids = iter(image_grids)
        pos, i = self.next_position, 0
        is_image = ids == image_token_id
        while i < len(ids):
            if not is_image[i]:
                j = i
                while j < len(ids) and not is_image[j]:
                    j += 1
                out[:, i:j] = np.arange(pos, pos + (j - i))
                pos += j - i
                i = j
                continue
            try:
                t, h, w = next(grids)
            except StopIteration:
                raise ValueError("more image-token runs than image grids") from None
            gt, gh, gw = t, h // MERGE, w // MERGE
            n = gt * gh * gw
            if not is_image[i:i + n].all() or (i + n < len(ids) and is_image[i + n]):
                raise ValueError(f"image run at {i} does not hold exactly {n} tokens for grid {(t, h, w)}")
            tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
            out[0, i:i + n] = pos + tt.ravel()
            out[1, i:i + n] = pos + hh.ravel()
            out[2, i:i + n] = pos + ww.ravel()
            pos += max(gt, gh, gw)
            i += n
        if next(grids, None) is not None:
            raise ValueError("more image grids than image-token runs")
        self.next_position = pos
        return out
