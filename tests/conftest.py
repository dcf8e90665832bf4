import json

import numpy as np
import pytest

from cof_edge.engine import FocusEngine
from cof_edge.generate import teacher_force

QUESTION = "What symbol is on the red tag?\n(A) circle\n(B) star\n(C) heart\n(D) arrow\n" \
           "Answer with the option's letter from the given choices directly."


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random Qwen2.5-VL checkpoints, one per tokenizer, built once per test session."""
    pytest.importorskip("torch")
    from cof_training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {name: build_tiny_model(root / name, tokenizer=name, seed=0) for name in ("qwen", "small")}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke preset, a tiny model of its spec per small tokenizer, and a 3-scene trajectory cache."""
    from cof_training.cache import build_cache
    from cof_training.presets import get_preset
    from cof_training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("smoke_run")
    preset = get_preset("smoke")
    models = {name: build_tiny_model(root / name, tokenizer=name, spec=preset.spec, seed=0)
              for name in ("small", "small-numbers")}
    return preset, models, build_cache(preset, root / "cache", 0, 3, progress=False)


@pytest.fixture(scope="session")
def smoke_zooming(smoke_run):
    """`smoke_run`'s preset and models, and its cache's zooming trajectories, loaded."""
    from cof_training.cache import read_cache

    preset, models, cache = smoke_run
    zooming = [t for t in (c.load() for c in read_cache(cache)) if t.zooms]
    assert len(zooming) >= 2
    return preset, models, zooming


BUNDLE_PRECISIONS = {"small": ("fp32", "int8", "int4", "fp16"), "qwen": ("fp32", "int8")}


@pytest.fixture(scope="session")
def bundles(tiny_models, tmp_path_factory):
    """The tiny models exported with cof-export (forced: random int4 weights miss the int4 gate).

    Without the fused decoders, which tests/test_export_fused.py covers with its own export.
    """
    from cof_export.pipeline import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("bundles")
    for name, precisions in BUNDLE_PRECISIONS.items():
        export_bundle(tiny_models[name], root / name, ExportConfig(precisions=precisions, force=True, fused=False))
    return {name: root / name for name in BUNDLE_PRECISIONS}


@pytest.fixture(scope="session", params=["qwen", "small"])
def tiny_model(request, tiny_models):
    return tiny_models[request.param]


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, noise and a few sharp-edged blocks: an image with both flat and busy regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / max(width, 1) * 200, yy / max(height, 1) * 200, (xx + yy) % 97 * 2], axis=-1)
    image = base + rng.normal(0, 12, (height, width, 3))
    for _ in range(4):
        y, x = rng.integers(0, height), rng.integers(0, width)
        image[y:y + height // 5, x:x + width // 5] = rng.integers(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def run_chain(engine, image, question=QUESTION, **options):
    """A whole question through `step()`, keeping the state (token ids, session) that `ask()` hides."""
    state = engine.start(image, question, **options)
    while not state.done:
        engine.step(state)
    return state


def zoom_reply(box):
    call = {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": box, "label": "red tag"}}
    return f"<think>The tag is small; zoom in.</think> <tool_call>\n{json.dumps(call)}\n</tool_call>"


class ScriptedEngine(FocusEngine):
    """Replies given as text are teacher-forced through the real model; None means decode greedily."""

    def __init__(self, backend, replies, **kw):
        super().__init__(backend, **kw)
        self.replies = list(replies)
        self.last_logits = None

    def respond(self, state, logits):
        reply = self.replies.pop(0)
        if reply is None:
            return super().respond(state, logits)
        tokens = self.layout.encode(reply) + [self.layout.special.im_end]
        self.last_logits = teacher_force(state.session, state.cursor, tokens)
        return tokens
