"""Synthetic visual search and the V* on-disk layout."""

from .vsearch import (
    CATEGORIES,
    RESOLUTIONS,
    SYMBOLS,
    TAG_COLOURS,
    Tag,
    VSearchSample,
    format_prompt,
    generate,
    render_sample,
    resize_to_long_side,
    scale_box,
)
from .vstar import VStarItem, parse_options, read_vstar, run_vsearch_cli, write_vstar

__all__ = [
    "CATEGORIES",
    "RESOLUTIONS",
    "SYMBOLS",
    "TAG_COLOURS",
    "Tag",
    "VSearchSample",
    "VStarItem",
    "format_prompt",
    "generate",
    "parse_options",
    "read_vstar",
    "render_sample",
    "resize_to_long_side",
    "run_vsearch_cli",
    "scale_box",
    "write_vstar",
]
