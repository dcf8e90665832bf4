import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random Qwen2.5-VL checkpoints, one per tokenizer, built once per test session."""
    pytest.importorskip("torch")
    from cof_training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {name: build_tiny_model(root / name, tokenizer=name, seed=0) for name in ("qwen", "small")}


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
