"""Synthetic visual search: determinism, ground truth recoverable from the pixels, exact vocabulary and templates."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cof_edge.data.vsearch import (
    ATTRIBUTE,
    LETTERS,
    NATIVE_SIZE,
    PROMPT_SUFFIX,
    RESOLUTIONS,
    SPATIAL,
    SYMBOL_FRACTION,
    SYMBOL_INK,
    SYMBOLS,
    TAG_COLOURS,
    draw_symbol,
    format_prompt,
    generate,
    render_sample,
    resize_to_long_side,
    scale_box,
    symbol_ink,
)

ATTRIBUTE_QUESTION = re.compile(r"^What symbol is on the (\w+) tag\?$")
SPATIAL_QUESTION = re.compile(r"^Is the (\w+) tag to the left or to the right of the (\w+) tag\?$")
SMALL_NATIVE = (960, 540)  # for statistics over many samples: same layout logic, 1/16 of the pixels


@pytest.fixture(scope="module")
def scenes_4k():
    """Four native 4K scenes, two of each category, rendered once for the whole module."""
    attribute = list(generate(2, seed=11, categories=(ATTRIBUTE,)))
    spatial = list(generate(2, seed=12, categories=(SPATIAL,)))
    return attribute + spatial


@pytest.fixture(scope="module")
def small_samples():
    return list(generate(240, seed=5, native_size=SMALL_NATIVE))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def distance_to(array: np.ndarray, colour) -> np.ndarray:
    return np.linalg.norm(array.astype(np.float64) - np.asarray(colour, dtype=np.float64), axis=-1)


def ring(array: np.ndarray, x1: int, y1: int, x2: int, y2: int, width: int) -> np.ndarray:
    """The pixels in a band `width` px wide just outside [x1, x2) x [y1, y2), clipped to the image."""
    height, image_width = array.shape[:2]
    outer = np.zeros((height, image_width), dtype=bool)
    outer[max(0, y1 - width) : y2 + width, max(0, x1 - width) : x2 + width] = True
    outer[y1:y2, x1:x2] = False
    return array[outer]


# --- determinism ---------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_samples(scenes_4k):
    again = render_sample(11, 1, categories=(ATTRIBUTE,))
    original = scenes_4k[1]
    assert again.image.tobytes() == original.image.tobytes()
    assert (again.text, again.label, again.target_boxes) == (original.text, original.label, original.target_boxes)


def test_sample_does_not_depend_on_run_length():
    alone = render_sample(3, 4, native_size=SMALL_NATIVE)
    in_run = list(generate(6, seed=3, native_size=SMALL_NATIVE))[4]
    assert alone.image.tobytes() == in_run.image.tobytes()
    assert alone.text == in_run.text and alone.tags == in_run.tags and alone.index == in_run.index == 4


def test_different_seed_or_index_gives_different_samples():
    base = render_sample(0, 0, native_size=SMALL_NATIVE)
    other_seed = render_sample(1, 0, native_size=SMALL_NATIVE)
    other_index = render_sample(0, 1, native_size=SMALL_NATIVE)
    assert base.image.tobytes() != other_seed.image.tobytes()
    assert base.image.tobytes() != other_index.image.tobytes()
    assert base.tags != other_seed.tags


def test_negative_seed_and_unknown_category_are_rejected():
    with pytest.raises(ValueError):
        render_sample(-1, 0)
    with pytest.raises(ValueError):
        render_sample(0, 0, categories=("colour",))


# --- the pixels hold the answer ------------------------------------------------------------------------------------


def test_tags_sit_exactly_where_their_boxes_say_in_the_original(scenes_4k):
    for sample in scenes_4k:
        array = pixels(sample.image)
        assert sample.image.size == NATIVE_SIZE
        for tag in sample.tags:
            x1, y1, x2, y2 = tag.box
            exact = np.all(array == TAG_COLOURS[tag.colour], axis=-1)
            inside = exact[y1:y2, x1:x2].mean()
            assert inside >= 0.7, (tag, inside)
            # every pixel of this exact colour in the whole scene belongs to this one tag
            assert exact.sum() == exact[y1:y2, x1:x2].sum(), tag
            # the tag's edges are where the box says: its outer rows/columns are tag colour, the band outside not
            assert exact[y1, x1:x2].all() and exact[y2 - 1, x1:x2].all()
            assert exact[y1:y2, x1].all() and exact[y1:y2, x2 - 1].all()
            assert not ring(exact[..., None], x1, y1, x2, y2, 2).any()


def test_nothing_but_the_tags_comes_near_a_tag_colour(scenes_4k):
    for sample in scenes_4k:
        array = pixels(sample.image)
        outside = np.ones(array.shape[:2], dtype=bool)
        for tag in sample.tags:
            x1, y1, x2, y2 = tag.box
            outside[y1:y2, x1:x2] = False
        background = array[::2, ::2][outside[::2, ::2]]
        for name, colour in TAG_COLOURS.items():
            assert distance_to(background, colour).min() >= 60, name


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_target_tags_are_at_their_scaled_boxes_at_every_resolution(scenes_4k, resolution):
    for sample in scenes_4k:
        resized = resize_to_long_side(sample.image, resolution)
        array = pixels(resized)
        for box, colour_name in zip(sample.target_boxes, sample.target_colours):
            colour = TAG_COLOURS[colour_name]
            sx1, sy1, sx2, sy2 = scale_box(box, sample.image.size, resized.size)
            x1, y1, x2, y2 = int(np.floor(sx1)), int(np.floor(sy1)), int(np.ceil(sx2)), int(np.ceil(sy2))
            footprint = array[y1:y2, x1:x2].reshape(-1, 3)
            # even a 2-px tag leaves one pixel near its colour, nearer than to any other tag colour
            best = footprint[distance_to(footprint, colour).argmin()]
            assert distance_to(best, colour) <= 80, (resolution, colour_name)
            for other_name, other in TAG_COLOURS.items():
                if other_name != colour_name:
                    assert distance_to(best, other) > distance_to(best, colour), (resolution, colour_name, other_name)
            # and nothing just outside the scaled box looks like the tag
            assert distance_to(ring(array, x1, y1, x2, y2, 3), colour).min() > 60, (resolution, colour_name)
            # LANCZOS blurs ~2 px at the edges and around the symbol: a big tag is still mostly its colour inside
            if min(sx2 - sx1, sy2 - sy1) >= 16:
                inner = array[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3)
                assert (distance_to(inner, colour) <= 40).mean() >= 0.5, (resolution, colour_name)


def symbol_mask(symbol: str, size: tuple[int, int], centre, symbol_size) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    draw_symbol(ImageDraw.Draw(canvas), symbol, centre, symbol_size, 255)
    return np.asarray(canvas) > 0


def test_each_tag_carries_its_symbol_in_the_contrasting_ink(scenes_4k):
    for sample in scenes_4k:
        array = pixels(sample.image)
        for tag in sample.tags:
            x1, y1, x2, y2 = tag.box
            ink = np.all(array[y1:y2, x1:x2] == SYMBOL_INK[tag.colour], axis=-1)
            assert ink.sum() >= 60, tag  # a visible symbol, not a stray pixel
            local_centre = ((x2 - x1) / 2, (y2 - y1) / 2)
            symbol_size = SYMBOL_FRACTION * min(x2 - x1, y2 - y1)
            ious = {}
            for symbol in SYMBOLS:
                drawn = symbol_mask(symbol, (x2 - x1, y2 - y1), local_centre, symbol_size)
                ious[symbol] = (drawn & ink).sum() / (drawn | ink).sum()
            ranked = sorted(ious, key=ious.get, reverse=True)
            assert ranked[0] == tag.symbol and ious[tag.symbol] >= 0.95, (tag, ious)
            assert ious[ranked[1]] <= 0.85, (tag, ious)  # a circle fills 80% of a square's outline


def test_symbols_are_distinct_shapes():
    masks = {s: symbol_mask(s, (48, 48), (24, 24), 40) for s in SYMBOLS}
    for a in SYMBOLS:
        assert masks[a].sum() > 200, a
        for b in SYMBOLS:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)


def test_symbol_ink_contrasts_with_the_tag():
    assert symbol_ink((255, 230, 0)) == (0, 0, 0)
    assert symbol_ink((30, 70, 235)) == (255, 255, 255)
    assert SYMBOL_INK["yellow"] == (0, 0, 0) and SYMBOL_INK["blue"] == (255, 255, 255)


def test_attribute_answers_name_the_symbol_of_the_asked_tag(scenes_4k):
    for sample in [s for s in scenes_4k if s.category == ATTRIBUTE]:
        (colour,) = ATTRIBUTE_QUESTION.match(sample.question).groups()
        (tag,) = [t for t in sample.tags if t.colour == colour]
        assert sample.target_colours == [colour] and sample.target_boxes == [tag.box]
        assert sample.answer_text == tag.symbol == sample.options[LETTERS.index(sample.label)]


def test_spatial_answers_match_the_box_centres(scenes_4k, small_samples):
    spatial = [s for s in scenes_4k + small_samples if s.category == SPATIAL]
    assert len(spatial) >= 40
    for sample in spatial:
        first, second = SPATIAL_QUESTION.match(sample.question).groups()
        assert sample.target_colours == [first, second]
        by_colour = {t.colour: t for t in sample.tags}
        assert sample.target_boxes == [by_colour[first].box, by_colour[second].box]
        (ax1, _, ax2, _), (bx1, _, bx2, _) = sample.target_boxes
        centre_gap = (bx1 + bx2) / 2 - (ax1 + ax2) / 2
        assert abs(centre_gap) >= 1.5 * max(ax2 - ax1, bx2 - bx1)
        assert sample.answer_text == ("left" if centre_gap > 0 else "right")
        assert sample.options[LETTERS.index(sample.label)] == sample.answer_text


# --- vocabulary, layout, templates ---------------------------------------------------------------------------------


def test_vocabulary_is_the_designs():
    assert list(TAG_COLOURS) == ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    assert SYMBOLS == ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "arrow")
    assert len(set(TAG_COLOURS.values())) == 8
    assert PROMPT_SUFFIX == "Answer with the option's letter from the given choices directly."


def test_tag_layout_rules_hold(scenes_4k, small_samples):
    for sample in scenes_4k + small_samples:
        width, height = sample.image.size
        colours = [t.colour for t in sample.tags]
        assert 2 <= len(sample.tags) <= 4 and len(set(colours)) == len(colours)
        for i, tag in enumerate(sample.tags):
            x1, y1, x2, y2 = tag.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            for other in sample.tags[i + 1 :]:
                ox1, oy1, ox2, oy2 = other.box
                assert x2 <= ox1 or ox2 <= x1 or y2 <= oy1 or oy2 <= y1, (tag, other)
    for sample in scenes_4k:  # sizes are specified at the native 3840x2160
        assert all(40 <= t.width <= 120 for t in sample.tags)


def test_questions_follow_the_templates_exactly(scenes_4k, small_samples):
    for sample in scenes_4k + small_samples:
        assert sample.text == format_prompt(sample.question, sample.options)
        lines = sample.text.split("\n")
        assert lines[0] == sample.question and lines[-1] == PROMPT_SUFFIX
        assert lines[1:-1] == [f"({LETTERS[i]}) {option}" for i, option in enumerate(sample.options)]
        assert len(set(sample.options)) == len(sample.options)
        assert sample.options[LETTERS.index(sample.label)] == sample.answer_text
        if sample.category == ATTRIBUTE:
            assert ATTRIBUTE_QUESTION.match(sample.question).group(1) in TAG_COLOURS
            assert len(sample.options) == 4 and set(sample.options) <= set(SYMBOLS)
            assert len(sample.target_boxes) == 1
        else:
            first, second = SPATIAL_QUESTION.match(sample.question).groups()
            assert first != second and {first, second} <= set(TAG_COLOURS)
            assert sorted(sample.options) == ["left", "right"] and len(sample.target_boxes) == 2


def test_default_mix_is_about_v_stars(small_samples):
    categories = Counter(s.category for s in small_samples)
    assert 0.5 <= categories[ATTRIBUTE] / len(small_samples) <= 0.7
    letters = Counter(s.label for s in small_samples if s.category == ATTRIBUTE)
    assert set(letters) == set("ABCD")  # the answer is not always in one place
    spatial_answers = Counter(s.answer_text for s in small_samples if s.category == SPATIAL)
    assert set(spatial_answers) == {"left", "right"}


def test_single_category_generation():
    assert all(s.category == SPATIAL for s in generate(6, seed=2, categories=(SPATIAL,), native_size=SMALL_NATIVE))


# --- resolutions and boxes -----------------------------------------------------------------------------------------


def test_resize_to_long_side_keeps_aspect():
    image = Image.new("RGB", NATIVE_SIZE)
    sizes = [resize_to_long_side(image, r).size for r in RESOLUTIONS]
    assert sizes == [(224, 126), (336, 189), (448, 252), (672, 378), (1024, 576), (1920, 1080), (2560, 1440),
                     (3840, 2160)]
    assert resize_to_long_side(Image.new("RGB", (1000, 3000)), 300).size == (100, 300)
    same = resize_to_long_side(image, 3840)
    assert same.size == NATIVE_SIZE and same is not image


def test_scale_box_maps_between_sizes():
    assert scale_box([384, 216, 768, 432], (3840, 2160), (224, 126)) == pytest.approx([22.4, 12.6, 44.8, 25.2])
    there = scale_box([100, 50, 220, 130], (3840, 2160), (448, 252))
    assert scale_box(there, (448, 252), (3840, 2160)) == pytest.approx([100, 50, 220, 130])


def test_format_prompt_rejects_bad_option_counts():
    with pytest.raises(ValueError):
        format_prompt("q?", ["only"])
    with pytest.raises(ValueError):
        format_prompt("q?", list("abcde"))
