"""Native vs numpy vs transformers image preprocessing: layout, Pillow-exact resampling, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cof_edge import preprocess as pp
from cof_edge.geometry import smart_resize

MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280

needs_native = pytest.mark.skipif(not pp.native_available(), reason=f"extension not built: {pp.native_import_error()}")


# ----------------------------------------------------------------------------------------------- images
def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients + noise + sharp-edged rectangles (saturating at 0 and 255 in places)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    img = np.stack([260 * x - 10 * y, 128 + 127 * np.sin(9 * x + 5 * y), 255 * (1 - y) * x], axis=-1)
    img = img + rng.normal(0, 20, size=(h, w, 3)).astype(np.float32)
    for _ in range(8):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y0 : y0 + max(1, h // 5), x0 : x0 + max(1, w // 7)] = rng.choice([0, 255], 3)
    img[:, w // 2 : w // 2 + 1] = 255  # one-pixel line: maximal ringing for bicubic
    return np.clip(img, 0, 255).astype(np.uint8)


def flat_colour(h: int, w: int, seed: int) -> np.ndarray:
    """Synthetic UI-like image: a flat background and flat rectangles."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(5):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y0 : y0 + int(rng.integers(1, h + 1)), x0 : x0 + int(rng.integers(1, w + 1))] = rng.integers(
            0, 256, 3, dtype=np.uint8
        )
    return img


# (height, width, kind, crop box or None). From 57x33 to 3840x2160, odd sizes, portrait and landscape.
CASES = [
    (33, 57, "photo", None),  # upscaled to the 56x84 minimum
    (57, 33, "flat", None),
    (101, 399, "photo", None),
    (448, 448, "flat", None),  # no resize at all
    (517, 389, "photo", None),
    (719, 1283, "photo", (13, 7, 1201, 700)),
    (1001, 999, "flat", (0, 0, 999, 1001)),  # box = whole image
    (1080, 1920, "photo", None),
    (1365, 2047, "flat", (1000, 333, 2047, 1365)),  # crop touching the bottom-right corner
    (2048, 1365, "photo", None),  # portrait, downscaled
    (2160, 3840, "photo", None),
    (2160, 3840, "photo", (1711, 977, 1751, 1007)),  # a 40x30 zoom crop, upscaled
    (2160, 3840, "flat", (0, 1080, 1920, 2160)),
    (3000, 1000, "photo", None),  # tall: Pillow >= 13 runs the vertical pass first (multi-threaded here)
    (2160, 3840, "photo", (100, 0, 700, 2160)),  # tall crop, vertical pass first
]


def make(h, w, kind, seed=0):
    return photo_like(h, w, seed) if kind == "photo" else flat_colour(h, w, seed)


def crop_hw(h, w, box):
    if box is None:
        return h, w
    x1, y1, x2, y2 = box
    return y2 - y1, x2 - x1


def case_id(case):
    h, w, kind, box = case
    return f"{w}x{h}-{kind}" + ("" if box is None else "-crop" + "_".join(map(str, box)))


@pytest.fixture(scope="module")
def hf_processor():
    mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    return mod.Qwen2VLImageProcessorPil(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})


# ----------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_with_hf_pil_processor(case, hf_processor):
    """numpy fallback and native extension both give HF's pixel_values bit for bit (tolerance 0)."""
    h, w, kind, box = case
    img = make(h, w, kind)
    ch, cw = crop_hw(h, w, box)
    out_hw = smart_resize(ch, cw, MIN_PIXELS, MAX_PIXELS)
    crop = img if box is None else img[box[1] : box[3], box[0] : box[2]]
    ref = hf_processor(images=[crop], return_tensors="np")
    assert ref["image_grid_thw"].tolist() == [[1, out_hw[0] // 14, out_hw[1] // 14]]
    ref_vals = ref["pixel_values"]

    vals, grid = pp.preprocess(img, out_hw, box, backend="numpy")
    assert grid == (1, out_hw[0] // 14, out_hw[1] // 14)
    assert vals.dtype == np.float32 and vals.shape == ref_vals.shape == (grid[1] * grid[2], 1176)
    np.testing.assert_array_equal(vals, ref_vals)
    if pp.native_available():
        nat, grid_n = pp.preprocess(img, out_hw, box, backend="native")
        assert grid_n == grid
        assert float(np.abs(nat - ref_vals).max()) == 0.0
        np.testing.assert_array_equal(nat, ref_vals)


@needs_native
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_native_resize_matches_pillow_exactly(case):
    """The uint8 resized pixels equal PIL.Image.resize(BICUBIC) on the cropped array (tolerance 0 levels)."""
    h, w, kind, box = case
    img = make(h, w, kind, seed=1)
    ch, cw = crop_hw(h, w, box)
    crop = img if box is None else img[box[1] : box[3], box[0] : box[2]]
    for out_hw in {smart_resize(ch, cw, MIN_PIXELS, MAX_PIXELS), (max(1, ch // 3), cw), (ch, cw * 2 + 1)}:
        ref = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(out_hw[::-1], Image.Resampling.BICUBIC))
        got = pp.resize_u8(img, out_hw, box, backend="native")
        assert got.shape == ref.shape
        assert int(np.abs(got.astype(np.int16) - ref).max()) == 0, out_hw


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    oh=st.integers(1, 120),
    ow=st.integers(1, 120),
    data=st.data(),
)
def test_native_resize_property(h, w, oh, ow, data):
    """Any size, any box, up or down on each axis: identical to Pillow."""
    img = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x1 = data.draw(st.integers(0, w - 1))
    y1 = data.draw(st.integers(0, h - 1))
    x2 = data.draw(st.integers(x1 + 1, w))
    y2 = data.draw(st.integers(y1 + 1, h))
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(img[y1:y2, x1:x2])).resize((ow, oh), Image.Resampling.BICUBIC))
    got = pp.resize_u8(img, (oh, ow), (x1, y1, x2, y2), backend="native", threads=2)
    np.testing.assert_array_equal(got, ref)


@needs_native
@pytest.mark.parametrize("order", [0, 1])
def test_native_follows_either_pillow_pass_order(order):
    """Pillow >= 13 runs the vertical pass first when the height shrinks > 2x more pixels than the width;
    older Pillow always goes horizontal first. Both orders are reproduced exactly (order = native arg)."""
    img = photo_like(517, 389, 5)
    bicubic = Image.Resampling.BICUBIC
    im = Image.fromarray(img)
    for oh, ow in [(504, 392), (140, 300), (200, 380)]:  # height shrinks a lot more than the width
        if order == 1:
            ref = np.asarray(im.resize((389, oh), bicubic).resize((ow, oh), bicubic))
        else:
            ref = np.asarray(im.resize((ow, 517), bicubic).resize((ow, oh), bicubic))
        got = np.empty((oh, ow, 3), np.uint8)
        pp._native.run(img, 517, 389, 0, 0, 389, 517, oh, ow, None, got, 2, order)
        np.testing.assert_array_equal(got, ref)
    assert pp._PASS_ORDER in (0, 1)


@needs_native
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_kernel_variant_is_exact(isa):
    """The portable kernels (what ARM builds use) and each x86 variant give Pillow's pixels: odd and tiny
    widths (partial tap groups, row ends inside a vector), many taps, single-tap weights of 1.0 (the
    largest weight digits), both pass orders, and a large patch output (written with streaming stores)."""
    r = _run(
        """
        import numpy as np
        from PIL import Image
        from cof_edge import preprocess as pp
        rng = np.random.default_rng(7)
        for h, w, oh, ow in [(97, 203, 56, 84), (203, 97, 84, 56), (33, 57, 100, 140), (400, 300, 150, 290),
                             (1, 1, 5, 7), (5, 3, 2, 100), (2, 17, 31, 2), (61, 1000, 9, 13), (1000, 61, 13, 9),
                             (9, 4000, 9, 131), (37, 19, 37, 38), (300, 4, 299, 1)]:
            for img in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                        np.where(rng.random((h, w, 1)) < 0.5, 0, 255).astype(np.uint8).repeat(3, axis=2)):
                ref = np.asarray(Image.fromarray(img).resize((ow, oh), Image.Resampling.BICUBIC))
                assert np.array_equal(pp.resize_u8(img, (oh, ow), threads=2), ref), (h, w, oh, ow)
        img = rng.integers(0, 256, (1100, 1900, 3), dtype=np.uint8)
        for box in [None, (3, 5, 1900, 1100)]:
            out_hw = pp.target_hw(1100, 1900, 56 * 56, 28 * 28 * 1280)
            assert np.array_equal(pp.preprocess(img, out_hw, box, backend="native", threads=2)[0],
                                  pp.preprocess(img, out_hw, box, backend="numpy")[0]), box
        print(pp._native.ISA)
        """,
        COF_EDGE_PREPROCESS_ISA=isa,
    )
    assert r.returncode == 0, r.stderr
    # A CPU without the requested instructions falls back to a narrower variant (never a wrong one).
    assert r.stdout.strip() in {"generic": ["generic"], "avx2": ["avx2", "generic"],
                                "avx512": ["avx512", "avx2", "generic"]}[isa]


# ----------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=needs_native)])
def test_patch_layout_matches_hf_definition(backend):
    """Independent of transformers: row ((bh*W2 + bw)*2 + mh)*2 + mw, columns (c, t, ph, pw), t repeated."""
    h, w = 56, 84
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([y * 4 % 256, x * 3 % 256, (x + 7 * y) % 256], axis=-1).astype(np.uint8)
    vals, grid = pp.preprocess(img, (h, w), backend=backend)
    lut = pp.normalize_lut()
    normed = lut[np.arange(3)[None, None, :], img]  # (h, w, 3)
    assert grid == (1, 4, 6)
    w2 = w // 28
    for bh in range(h // 28):
        for bw in range(w2):
            for mh in range(2):
                for mw in range(2):
                    row = ((bh * w2 + bw) * 2 + mh) * 2 + mw
                    ys = slice((bh * 2 + mh) * 14, (bh * 2 + mh) * 14 + 14)
                    xs = slice((bw * 2 + mw) * 14, (bw * 2 + mw) * 14 + 14)
                    want = normed[ys, xs].transpose(2, 0, 1)  # (c, ph, pw)
                    got = vals[row].reshape(3, 2, 14, 14)
                    np.testing.assert_array_equal(got[:, 0], want)
                    np.testing.assert_array_equal(got[:, 1], want)


def test_normalize_lut_is_hf_arithmetic():
    v = np.arange(256, dtype=np.uint8)
    want = ((v.astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(pp.IMAGE_MEAN[1])) / np.float32(
        pp.IMAGE_STD[1]
    )
    np.testing.assert_array_equal(pp.normalize_lut()[1], want)
    assert pp.normalize_lut().dtype == np.float32 and pp.normalize_lut().shape == (3, 256)


# ----------------------------------------------------------------------------------------------- native API
@needs_native
def test_threads_out_buffer_and_views_give_identical_results():
    for h, w in [(2100, 700), (1081, 1917)]:  # vertical-first and horizontal-first pass orders
        img = photo_like(h, w, 3)
        out_hw = smart_resize(h, w, MIN_PIXELS, MAX_PIXELS)
        ref, _ = pp.preprocess(img, out_hw, backend="numpy")
        for threads in (1, 2, 3, 8):
            got, _ = pp.preprocess(img, out_hw, backend="native", threads=threads)
            np.testing.assert_array_equal(got, ref)
    buf = np.full_like(ref, np.nan)
    got, _ = pp.preprocess(img, out_hw, backend="native", out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, ref)
    # A strided view is accepted (copied to contiguous) and gives the same as the copy.
    big = np.zeros((h + 40, w + 50, 3), np.uint8)
    big[10 : 10 + h, 20 : 20 + w] = img
    view = big[10 : 10 + h, 20 : 20 + w]
    np.testing.assert_array_equal(pp.preprocess(view, out_hw, backend="native")[0], ref)


@needs_native
def test_concurrent_calls_are_independent():
    imgs = [photo_like(300 + 17 * i, 500 - 13 * i, i) for i in range(4)]
    hws = [smart_resize(im.shape[0], im.shape[1], MIN_PIXELS, MAX_PIXELS) for im in imgs]
    refs = [pp.preprocess(im, hw, backend="numpy")[0] for im, hw in zip(imgs, hws)]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda a: pp.preprocess(a[0], a[1], backend="native", threads=2)[0], zip(imgs * 3, hws * 3)))
    for i, got in enumerate(outs):
        np.testing.assert_array_equal(got, refs[i % 4])


@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=needs_native)])
def test_input_validation(backend):
    img = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(ValueError):
        pp.preprocess(img, (56, 70), backend=backend)  # not a multiple of 28
    with pytest.raises(ValueError):
        pp.preprocess(img.astype(np.float32), (56, 84), backend=backend)
    with pytest.raises(ValueError):
        pp.preprocess(img[..., :2], (56, 84), backend=backend)
    with pytest.raises(ValueError):
        pp.preprocess(img, (56, 84), (10, 10, 10, 20), backend=backend)  # empty box
    with pytest.raises(ValueError):
        pp.preprocess(img, (56, 84), (0, 0, 81, 60), backend=backend)  # outside the image
    with pytest.raises(ValueError):
        pp.preprocess(img, (56, 84), backend=backend, out=np.empty((24, 1176), np.float64))
    with pytest.raises(ValueError):
        pp.preprocess(img, (56, 84), backend="cuda")


# ----------------------------------------------------------------------------------------------- dispatch
def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "COF_EDGE_PREPROCESS"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_env_var_forces_numpy_and_no_torch_import():
    r = _run(
        """
        import sys, numpy as np
        from cof_edge import preprocess as pp
        v, g = pp.preprocess(np.zeros((40, 50, 3), np.uint8), (56, 56))
        print(pp.BACKEND, g, 'torch' in sys.modules, 'transformers' in sys.modules)
        """,
        COF_EDGE_PREPROCESS="numpy",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "(1,", "4,", "4)", "False", "False"]
    assert "native preprocessing extension not available" not in r.stderr  # forced, not a fallback


def test_missing_extension_falls_back_and_logs_once():
    r = _run(
        """
        import sys, logging, numpy as np
        sys.modules['cof_edge._preprocess'] = None  # as if it was never built
        logging.basicConfig(level=logging.WARNING)
        from cof_edge import preprocess as pp
        img = np.zeros((40, 50, 3), np.uint8)
        pp.preprocess(img, (56, 56)); pp.preprocess(img, (56, 56)); pp.resize_u8(img, (20, 20))
        print(pp.BACKEND, pp.native_available())
        try:
            pp.preprocess(img, (56, 56), backend='native')
        except RuntimeError as e:
            print('native refused')
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "False", "native", "refused"]
    warnings = [line for line in r.stderr.splitlines() if "native preprocessing extension not available" in line]
    assert len(warnings) == 1, r.stderr
    assert "pip install -e ." in warnings[0] and "build_ext --inplace" in warnings[0]


def test_env_forcing_native_without_extension_fails_on_use_not_import():
    r = _run(
        """
        import sys, numpy as np
        sys.modules['cof_edge._preprocess'] = None
        from cof_edge import preprocess as pp
        print(pp.BACKEND)
        try:
            pp.preprocess(np.zeros((40, 50, 3), np.uint8), (56, 56))
        except RuntimeError as e:
            print('refused', 'build_ext --inplace' in str(e))
        """,
        COF_EDGE_PREPROCESS="native",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["native", "refused", "True"]


@needs_native
def test_default_backend_is_native_when_built():
    if os.environ.get("COF_EDGE_PREPROCESS", "auto").lower() in ("", "auto"):
        assert pp.BACKEND == "native"


def test_extension_is_built_in_ci():
    """In CI (CI=true) the C++ extension must have been built and be the active backend."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("not in CI")
    assert pp.native_available(), f"cof_edge._preprocess did not build/import: {pp.native_import_error()}"
    assert pp.BACKEND == "native"
