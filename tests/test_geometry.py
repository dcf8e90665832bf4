import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from cof_edge.geometry import (CropError, CropSettings, View, global_view, plan_crop, smart_resize,
                               visual_tokens)


def test_smart_resize_matches_transformers():
    hf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").smart_resize
    rng = random.Random(0)
    for _ in range(3000):
        h, w = rng.randint(28, 4000), rng.randint(28, 4000)
        lo, hi = rng.choice([(56 * 56, 1003520), (112 * 112, 3840 * 3840), (112 * 112, 200704), (3136, 50176)])
        assert smart_resize(h, w, lo, hi) == hf(h, w, 28, lo, hi)


@pytest.mark.parametrize("size,tokens", [((224, 224), 64), ((448, 448), 256), ((1024, 1024), 1369),
                                         ((1920, 1080), 2691), ((3840, 2160), 10549)])
def test_visual_token_counts_from_design(size, tokens):
    view = global_view(size, 56 * 56, 3840 * 3840)
    assert view.visual_tokens == tokens == visual_tokens(view.size[1], view.size[0])


def test_default_budget_at_4k():
    assert global_view((3840, 2160), 56 * 56, 1003520).visual_tokens == 1222


@pytest.mark.parametrize("view_size", [(448, 252), (1036, 588), (3836, 2156), (224, 112)])
def test_boxes_map_exactly_across_views(view_size):
    original = (3840, 2160)
    box = (1234.0, 567.0, 1300.0, 640.0)
    view = View(region=(0, 0, *original), size=view_size)
    shown = view.from_original(box)
    back = view.to_original(shown)
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9) for a, b in zip(back, box))
    # The same box written in any view lands on the same crop of the original.
    plan = plan_crop(shown, view, original, CropSettings(enlarge=1.0, min_side=1))
    assert plan.view.region == (1234, 567, 1300, 640) and plan.repairs == ()


def test_crop_views_map_through_their_region():
    crop = View(region=(1000, 500, 1400, 700), size=(800, 400))  # shown at 2x
    assert crop.to_original((0, 0, 800, 400)) == (1000, 500, 1400, 700)
    assert crop.to_original((400, 200, 600, 300)) == (1200, 600, 1300, 650)


def test_enlarge_about_centre_and_budget():
    view = View(region=(0, 0, 3840, 2160), size=(3840, 2160))
    plan = plan_crop((1000, 1000, 1100, 1040), view, (3840, 2160), CropSettings())
    assert plan.view.region == (975, 990, 1125, 1050)  # 150x60 about (1050, 1020)
    w, h = plan.view.size
    assert w % 28 == 0 and h % 28 == 0 and CropSettings().min_pixels <= w * h <= CropSettings().max_pixels
    assert abs(w / h - 150 / 60) < 0.5


def test_enlargement_is_shifted_inside_at_edges():
    view = View(region=(0, 0, 640, 480), size=(640, 480))
    plan = plan_crop((0, 0, 100, 100), view, (640, 480), CropSettings())
    assert plan.view.region == (0, 0, 150, 150)
    plan = plan_crop((600, 400, 640, 480), view, (640, 480), CropSettings())
    assert plan.view.region[2] == 640 and plan.view.region[3] == 480


@pytest.mark.parametrize("box,repairs,region", [
    ((300, 300, 200, 200), ("reordered",), (175, 175, 325, 325)),
    ((-50, -50, 100, 100), ("clamped",), (0, 0, 150, 150)),
    ((0, 0, 1e9, 1e9), ("clamped",), (0, 0, 640, 480)),
    ((320, 240, 320, 240), ("zero_area",), (292, 212, 348, 268)),
    ((320, 240, 330, 250), ("min_size",), (297, 217, 353, 273)),
])
def test_repairs_are_recorded(box, repairs, region):
    view = View(region=(0, 0, 640, 480), size=(640, 480))
    plan = plan_crop(box, view, (640, 480), CropSettings())
    assert plan.repairs == repairs
    assert plan.view.region == region


@pytest.mark.parametrize("box", [(700, 10, 900, 100), (-100, -100, -1, -1), (10, 481, 20, 500)])
def test_boxes_outside_the_image_are_errors(box):
    view = View(region=(0, 0, 640, 480), size=(640, 480))
    with pytest.raises(CropError, match="outside"):
        plan_crop(box, view, (640, 480), CropSettings())


def test_other_frames():
    view = View(region=(0, 0, 3840, 2160), size=(448, 252))
    normalized = plan_crop((0.25, 0.5, 0.5, 0.75), view, (3840, 2160), CropSettings(enlarge=1.0), frame="normalized")
    rel = plan_crop((250, 500, 500, 750), view, (3840, 2160), CropSettings(enlarge=1.0), frame="relative_1000")
    assert normalized.view.region == rel.view.region == (960, 1080, 1920, 1620)


def test_tiny_images_crop_to_their_size():
    view = global_view((57, 33), 56 * 56, 1003520)
    plan = plan_crop((0, 0, 5, 5), view, (57, 33), CropSettings())
    x1, y1, x2, y2 = plan.view.region
    assert 0 <= x1 < x2 <= 57 and 0 <= y1 < y2 <= 33 and y2 - y1 == 33


@settings(max_examples=2000, deadline=None)
@given(st.tuples(*[st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)] * 4),
       st.integers(1, 5000), st.integers(1, 5000), st.sampled_from(["pixels", "normalized", "relative_1000"]))
def test_crop_plans_are_always_inside_or_rejected(box, width, height, frame):
    if max(width, height) / min(width, height) > 150:
        return
    view = global_view((width, height), 56 * 56, 200704)
    try:
        plan = plan_crop(box, view, (width, height), CropSettings())
    except CropError:
        return
    x1, y1, x2, y2 = plan.view.region
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    w, h = plan.view.size
    assert w % 28 == 0 and h % 28 == 0
