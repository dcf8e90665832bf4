"""Host-side precompute for the vision graph (``vision.onnx``): numpy only, never torch.

The stock Qwen2.5-VL vision tower computes its rotary positions, window permutation and attention segments in
Python from ``grid_thw`` (``.tolist()``, loops, ``repeat_interleave``), which does not trace into a static graph.
The exported graph (``cof_export.vision``) takes them as inputs instead; this module computes them, vectorised,
from the grid alone. It runs once per view (global image or crop), so it must be cheap: a 4K global view is ~10k
patches and takes well under a millisecond per call here.

Token order
-----------
The graph keeps the patches in the image processor's order throughout (merge-block major: the 4 patches of one
merged token are consecutive, merged tokens row-major per frame, frames in order), so its output needs no
reverse permutation. Windowed layers *gather* each window's tokens into a padded ``[num_windows, 64]`` layout,
run attention there with a key mask, and gather back with the inverse map ``window_scatter``. Within a window the
valid tokens are packed first, in exactly the order Hugging Face's ``get_vision_window_index`` visits them
(merged tokens row-major inside the window, 4 patches each), so the valid entries of ``window_gather`` read
row by row are HF's ``window_index`` expanded to patches. Padding slots point at token 0 and are masked out.

Graph inputs (``vision_inputs`` returns exactly these, besides ``pixel_patches`` [num_patches, 1176] float32)
------------------------------------------------------------------------------------------------------------
* ``position_ids``  int64 [num_patches, 2]: (row, col) of each patch in its frame's patch grid (HF
  ``get_vision_position_ids``); the graph turns them into the 2-D rotary cos/sin with the model's own inv_freq.
* ``window_gather`` int64 [num_windows, window_tokens]: token index for each slot of each padded window.
* ``window_mask``   bool  [num_windows, window_tokens]: True where the slot holds a real token (a prefix).
* ``window_scatter`` int64 [num_patches]: where each token sits in the flattened padded layout
  (``window * window_tokens + slot``); ``window_gather.flat[window_scatter] == arange(num_patches)``.
* ``segment_ids``   int64 [num_patches]: which image/frame each patch belongs to (HF's ``cu_seqlens``, one
  segment per frame); full-attention layers attend only within a segment (block-diagonal mask).

``window_tokens`` = (window_size / patch_size)^2 = 64 for Qwen2.5-VL (8x8 patches = 4x4 merged tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import numpy as np

INPUT_NAMES = ("pixel_patches", "position_ids", "window_gather", "window_mask", "window_scatter", "segment_ids")
OUTPUT_NAME = "image_embeds"


@dataclass(frozen=True)
class VisionGeometry:
    """The vision tower's geometry, as recorded in the bundle's cof.json ("vision" section)."""

    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    head_dim: int = 80
    num_heads: int = 16
    in_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
        unit = self.patch_size * self.spatial_merge_size
        if self.patch_size < 1 or self.spatial_merge_size < 1 or self.temporal_patch_size < 1:
            raise ValueError(f"bad vision geometry {self}")
        if self.window_size < unit or self.window_size % unit:
            raise ValueError(f"window_size {self.window_size} must be a positive multiple of "
                             f"patch_size * spatial_merge_size = {unit}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VisionGeometry":
        """Reads the known keys of a dict (cof.json's vision section or a HF vision_config dict); others are
        ignored. ``head_dim`` may be absent when ``hidden_size`` and ``num_heads`` are present."""
        names = {f.name for f in fields(cls)}
        kw = {k: d[k] for k in names if k in d}
        if "head_dim" not in kw and "hidden_size" in d and "num_heads" in d:
            kw["head_dim"] = int(d["hidden_size"]) // int(d["num_heads"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fullatt_block_indexes"] = list(self.fullatt_block_indexes)
        out["window_tokens"] = self.window_tokens
        out["patch_dim"] = self.patch_dim
        return out

    @property
    def merge_unit(self) -> int:
        """Patches per merged (LLM) token: 4."""
        return self.spatial_merge_size ** 2

    @property
    def merged_window(self) -> int:
        """Window side in merged tokens: 112 / 14 / 2 = 4."""
        return self.window_size // self.patch_size // self.spatial_merge_size

    @property
    def window_tokens(self) -> int:
        """Patches per (padded) attention window: (112 / 14)^2 = 64."""
        return (self.merged_window * self.spatial_merge_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Values per pixel patch row: 3 * 2 * 14 * 14 = 1176."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


def _grids(grid_thw) -> np.ndarray:
    g = np.asarray(grid_thw, dtype=np.int64)
    if g.ndim == 1:
        g = g[None]
    if g.ndim != 2 or g.shape[1] != 3 or g.shape[0] == 0:
        raise ValueError(f"grid_thw must be [n, 3], got shape {g.shape}")
    return g


def _check_grid(t: int, h: int, w: int, geometry: VisionGeometry) -> None:
    m = geometry.spatial_merge_size
    if t < 1 or h < m or w < m or h % m or w % m:
        raise ValueError(f"grid (t={t}, h={h}, w={w}) must be positive with h, w multiples of {m}")


@dataclass
class WindowLayout:
    """Everything derived from the grid, in HF's terms and in the graph's padded layout."""

    position_ids: np.ndarray      # int64 [N, 2]
    window_index: np.ndarray      # int64 [N / 4]: HF get_vision_window_index's permutation (merged tokens)
    reverse_index: np.ndarray     # int64 [N / 4]: argsort(window_index), its inverse
    cu_window_seqlens: np.ndarray  # int32 [num_windows + 1]: HF's cumulative window lengths (patches)
    cu_seqlens: np.ndarray        # int32 [num_segments + 1]: HF's cumulative per-frame lengths (patches)
    window_gather: np.ndarray     # int64 [num_windows, window_tokens]
    window_mask: np.ndarray       # bool  [num_windows, window_tokens]
    window_scatter: np.ndarray    # int64 [N]
    segment_ids: np.ndarray       # int64 [N]

    def graph_inputs(self) -> dict[str, np.ndarray]:
        return {"position_ids": self.position_ids, "window_gather": self.window_gather,
                "window_mask": self.window_mask, "window_scatter": self.window_scatter,
                "segment_ids": self.segment_ids}


def window_layout(grid_thw, geometry: VisionGeometry | Mapping[str, Any] | None = None) -> WindowLayout:
    """All host-side tensors for ``grid_thw`` ([n, 3] or [3]: frames, patch rows, patch cols per image)."""
    geo = _geometry(geometry)
    grids = _grids(grid_thw)
    m, ws, unit, wt = geo.spatial_merge_size, geo.merged_window, geo.merge_unit, geo.window_tokens

    pos, rev, scatter, seg, wlens, seglens = [], [], [], [], [], []
    token_base = 0   # merged tokens before this frame
    window_base = 0  # windows before this frame
    segment = 0
    # Offsets of the m*m patches of a merged token: (row, col) inside the block, row-major (processor order).
    dr, dc = np.divmod(np.arange(unit, dtype=np.int64), m)
    for t, h, w in grids.tolist():
        _check_grid(t, h, w, geo)
        lh, lw = h // m, w // m
        nwh, nww = -(-lh // ws), -(-lw // ws)
        r, c = np.divmod(np.arange(lh * lw, dtype=np.int64), lw)          # merged token -> (row, col)
        wr, wc = r // ws, c // ws
        win = wr * nww + wc                                               # window of each merged token
        rows_in = np.minimum(ws, lh - np.arange(nwh) * ws)                # valid rows per window row
        cols_in = np.minimum(ws, lw - np.arange(nww) * ws)                # valid cols per window col
        slot = (r % ws) * cols_in[wc] + (c % ws)                          # packed, row-major inside the window
        sizes = (rows_in[:, None] * cols_in[None, :]).reshape(-1)         # merged tokens per window
        start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        frame_rev = start[win] + slot                                     # position of token in window order
        # Patch-level position ids (processor order) and padded-layout positions, for every frame.
        hpos = (r[:, None] * m + dr[None, :]).reshape(-1)
        wpos = (c[:, None] * m + dc[None, :]).reshape(-1)
        frame_scatter = ((win * wt + slot * unit)[:, None] + np.arange(unit)[None, :]).reshape(-1)
        n_frame = lh * lw
        for f in range(t):
            pos.append(np.stack([hpos, wpos], axis=1))
            rev.append(frame_rev + token_base)
            scatter.append(frame_scatter + window_base * wt)
            seg.append(np.full(n_frame * unit, segment, dtype=np.int64))
            wlens.append(sizes * unit)
            seglens.append(n_frame * unit)
            token_base += n_frame
            window_base += nwh * nww
            segment += 1

    position_ids = np.concatenate(pos).astype(np.int64, copy=False)
    reverse_index = np.concatenate(rev)
    window_index = np.empty_like(reverse_index)
    window_index[reverse_index] = np.arange(reverse_index.size, dtype=np.int64)
    window_scatter = np.concatenate(scatter)
    n = window_scatter.size
    window_gather = np.zeros(window_base * wt, dtype=np.int64)
    window_gather[window_scatter] = np.arange(n, dtype=np.int64)
    window_mask = np.zeros(window_base * wt, dtype=bool)
    window_mask[window_scatter] = True
    cu_window = np.concatenate(([0], np.cumsum(np.concatenate(wlens)))).astype(np.int32)
    cu_seq = np.concatenate(([0], np.cumsum(seglens))).astype(np.int32)
    return WindowLayout(
        position_ids=position_ids,
        window_index=window_index,
        reverse_index=reverse_index,
        cu_window_seqlens=cu_window,
        cu_seqlens=cu_seq,
        window_gather=window_gather.reshape(window_base, wt),
        window_mask=window_mask.reshape(window_base, wt),
        window_scatter=window_scatter,
        segment_ids=np.concatenate(seg),
    )


def _geometry(geometry) -> VisionGeometry:
    if geometry is None:
        return VisionGeometry()
    if isinstance(geometry, VisionGeometry):
        return geometry
    return VisionGeometry.from_dict(geometry)


def vision_inputs(grid_thw, geometry: VisionGeometry | Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The vision graph's non-pixel inputs, by name: position_ids, window_gather, window_mask, window_scatter,
    segment_ids (see the module docstring for dtypes and shapes)."""
    return window_layout(grid_thw, geometry).graph_inputs()


def num_patches(grid_thw) -> int:
    g = _grids(grid_thw)
    return int((g[:, 0] * g[:, 1] * g[:, 2]).sum())


def num_windows(grid_thw, geometry: VisionGeometry | Mapping[str, Any] | None = None) -> int:
    geo = _geometry(geometry)
    total = 0
    for t, h, w in _grids(grid_thw).tolist():
        lh, lw = h // geo.spatial_merge_size, w // geo.spatial_merge_size
        total += t * -(-lh // geo.merged_window) * -(-lw // geo.merged_window)
    return total


def feed(pixel_patches: np.ndarray, grid_thw, geometry: VisionGeometry | Mapping[str, Any] | None = None
         ) -> dict[str, np.ndarray]:
    """The full input dict for an ORT session: pixel patches (as float32) + ``vision_inputs``."""
    pixels = np.ascontiguousarray(pixel_patches, dtype=np.float32)
    n = num_patches(grid_thw)
    if pixels.ndim != 2 or pixels.shape[0] != n:
        raise ValueError(f"pixel_patches has shape {pixels.shape}, grid_thw needs {n} rows")
    return {"pixel_patches": pixels, **vision_inputs(grid_thw, geometry)}


def split_embeds(embeds: np.ndarray, grid_thw: Iterable, geometry=None) -> list[np.ndarray]:
    """Splits the graph's output rows per image (t*h*w / merge_unit rows each)."""
    geo = _geometry(geometry)
    g = _grids(grid_thw)
    counts = (g[:, 0] * g[:, 1] * g[:, 2]) // geo.merge_unit
    return np.split(embeds, np.cumsum(counts)[:-1])
