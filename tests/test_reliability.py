"""Bad input gets a specific error or a recorded outcome; nothing unsafe is loaded; nothing reaches the network."""

import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer

from cof_edge.engine import FocusEngine
from cof_edge.images import ImageError, SourceImage, load_image
from cof_edge.geometry import global_view

REPO = Path(__file__).resolve().parent.parent


def test_zero_byte_non_image_truncated_and_corrupt_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        load_image(tmp_path / "notes.jpg")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    corrupt = bytearray(buffer.getvalue())
    corrupt[100:140] = b"\xff" * 40
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    with pytest.raises(ImageError, match="truncated or corrupt|cannot|could not"):
        load_image(tmp_path / "corrupt.png")
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "missing.png")


def test_pixel_limit_refuses_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 MP of zeros: a small file, a huge decode
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"12000x12000 = 144,000,000 pixels, over the limit of 1,000,000 "
                                         r"\(AskOptions.max_image_pixels\)"):
        load_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="max_image_pixels"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9_999)


@pytest.mark.parametrize("mode,make,expected", [
    ("L", lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
    ("LA", lambda: Image.new("LA", (4, 4), (77, 0)), (255, 255, 255)),        # transparent → white
    ("P", lambda: _palette_image(), (10, 200, 30)),
    ("RGBA", lambda: Image.new("RGBA", (4, 4), (200, 0, 0, 128)), (227, 127, 127)),  # over white
    ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ("I;16", lambda: Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)), (100, 100, 100)),
    ("F", lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), (128, 128, 128)),
])
def test_modes_become_rgb(mode, make, expected):
    image = make()
    assert image.mode == mode
    rgb = load_image(image)
    assert rgb.mode == "RGB" and tuple(int(v) for v in np.asarray(rgb)[1, 1]) == pytest.approx(expected, abs=1)


def _palette_image():
    image = Image.new("P", (4, 4), 3)
    image.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    return image


def test_exif_rotation_gives_the_upright_image(tmp_path):
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:10, :20] = (255, 0, 0)  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert upright.shape == (200, 100, 3)
    assert upright[:20, -10:, 0].mean() > 200 and upright[-20:, :10, 0].mean() < 50  # now top-right


def test_huge_images_keep_one_full_size_copy(tmp_path):
    """Loading a 48 MP image and making its global view grows peak memory by about two copies, not several."""
    path = tmp_path / "huge.png"
    Image.new("RGB", (8000, 6000), (30, 60, 90)).save(path)
    code = textwrap.dedent(f"""
        import resource
        from cof_edge.images import SourceImage, load_image
        from cof_edge.geometry import global_view
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        source = SourceImage(load_image({str(path)!r}))
        view = source.view(global_view(source.size, 12544, 200704))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024 / (8000 * 6000 * 3))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    copies = float(done.stdout)
    assert copies < 2.6, f"peak memory grew by {copies:.2f} image copies"


def test_views_cut_from_pixels_equal_pil_crops():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (301, 517, 3), dtype=np.uint8))
    source = SourceImage(image)
    view = global_view(source.size, 12544, 50176)
    assert np.array_equal(np.asarray(source.view(view)), np.asarray(image.resize(view.size, Image.Resampling.BICUBIC)))


def test_context_overflow_is_a_recorded_outcome(tiny_models):
    from test_engine import IMAGE, ScriptedBackend, zoom

    tokenizer = Tokenizer.from_file(str(tiny_models["small"] / "tokenizer.json"))
    backend = ScriptedBackend(tokenizer, [zoom([100, 100, 200, 200]), "<answer>A</answer>"])
    engine = FocusEngine(backend)
    first = engine.start(IMAGE, "q")
    engine.step(first)
    used = len(first.token_ids)
    # room for the first turn, not for the crop turn
    result = FocusEngine(ScriptedBackend(tokenizer, [zoom([100, 100, 200, 200])])).ask(
        IMAGE, "q", max_context_tokens=used + 5)
    assert result.stop_reason == "context_overflow" and result.answer is None
    assert "over the context limit" in result.steps[-1].error and result.zooms == 1
    # a budget smaller than the prompt: no turn runs at all
    tiny = FocusEngine(ScriptedBackend(tokenizer, ["<answer>A</answer>"])).ask(IMAGE, "q", max_context_tokens=10)
    assert tiny.stop_reason == "context_overflow" and tiny.steps[0].prompt_tokens == 0
    # a reply is cut where the context ends
    prompt = first.result.steps[0].prompt_tokens
    bounded = FocusEngine(ScriptedBackend(tokenizer, ["<think>" + "word " * 200])).ask(
        IMAGE, "q", max_context_tokens=prompt + 40, max_new_tokens=500)
    assert bounded.steps[0].new_tokens == 40 and bounded.stop_reason == "max_new_tokens"


def test_no_pickle_no_remote_code_no_unsafe_torch_load():
    offenders = []
    for path in [*REPO.glob("cof_edge/**/*.py"), *REPO.glob("export/**/*.py"), *REPO.glob("training/**/*.py"),
                 *REPO.glob("benchmarks/**/*.py"), *REPO.glob("scripts/**/*.py")]:
        text = path.read_text()
        if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M):
            offenders.append(f"{path}: pickle")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{path}: trust_remote_code")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
    assert offenders == []


def test_runtime_never_touches_the_network(bundles):
    from test_lean_runtime import run_python

    done = run_python(f"""
        import socket
        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import numpy as np
        from cof_edge import FocusEngine
        result = FocusEngine.load({str(bundles['small'])!r}).ask(np.zeros((64, 96, 3), np.uint8), "q", max_new_tokens=3)
        print("ok", result.stop_reason)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_fuzz_sample_has_no_uncaught_exceptions():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz.py"), "--cases", "5000", "--seed", "7"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert summary["uncaught"] == 0 and summary["cases"] == 5000
    assert min(summary["outcomes"].get(k, 0) for k in ("zoom", "malformed", "crop_error", "answer", "none")) > 0
