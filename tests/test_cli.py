"""`cof-edge` on a tiny random model: the loop runs to its bound, prints a trace, writes JSON and a PNG."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cof_edge.cli import main
from cof_edge.data import read_vstar


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (301, 517, 3), dtype=np.uint8)).save(path)
    return path


def test_ask_prints_the_chain(tiny_models, image_path, tmp_path, capsys):
    trace = tmp_path / "trace.png"
    code = main(["ask", "--model", str(tiny_models["small"]), "--image", str(image_path), "--question",
                 "What symbol is on the red tag?", "--max-new-tokens", "12", "--trace", str(trace)])
    out = capsys.readouterr().out
    assert code == 0
    assert "step 0: saw [0,0,517,301]" in out and "12 new tokens" in out
    assert "answer:" in out and "(max_new_tokens;" in out  # a random model runs into its token bound
    with Image.open(trace) as written:
        assert written.size == (517, 301)


def test_ask_json(tiny_models, image_path, capsys):
    code = main(["ask", "--model", str(tiny_models["qwen"]), "--image", str(image_path), "--question", "Where?",
                 "--max-new-tokens", "5", "--json", "--global-max-pixels", str(64 * 28 * 28)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["steps"][0]["new_tokens"] == 5 and data["visual_tokens"] <= 64
    assert data["stop_reason"] in {"max_new_tokens", "no_action", "malformed_action"}


def test_errors_are_clear(tmp_path, image_path, capsys, monkeypatch):
    assert main(["ask", "--model", str(tmp_path), "--image", str(image_path), "--question", "q"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["ask", "--bundle", str(tmp_path), "--image", str(image_path), "--question", "q"]) == 2
    assert "cof.json is missing (make one with cof-export)" in capsys.readouterr().err
    monkeypatch.setattr("cof_edge.cli.DEFAULT_BUNDLE", tmp_path / "gone")
    assert main(["demo"]) == 2
    assert "the default bundle is missing from this install" in capsys.readouterr().err


def test_demo_runs_the_shipped_bundle_without_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "scene: generated 3840x2160" in out and "step 0: saw [0,0,3840,2160]" in out and "expected:" in out
    with Image.open(tmp_path / "cof-demo.png") as written:
        assert written.size == (1920, 1080)


def test_demo_runs_a_generated_4k_scene(tiny_models, tmp_path, capsys):
    out_png = tmp_path / "demo.png"
    assert main(["demo", "--model", str(tiny_models["small"]), "--max-new-tokens", "8", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "3840x2160" in out and "tiny RANDOM model" in out and "expected:" in out
    with Image.open(out_png) as written:
        assert written.size == (1920, 1080)


def test_data_vsearch_writes_a_vstar_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cof_edge.cli", "data", "vsearch", "--n", "3", "--out",
                           str(tmp_path / "vs"), "--seed", "7", "--resolution", "448"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    items = read_vstar(tmp_path / "vs")
    assert len(items) == 3 and all(item.image_path.is_file() for item in items)
    with Image.open(items[0].image_path) as image:
        assert max(image.size) == 448
