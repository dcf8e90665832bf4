"""The lean runtime on ONNX Runtime: ORT ≡ transformers through zoom chains, KV reuse, crop cache, threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cof_edge.crop_cache import CropCache
from cof_edge.engine import FocusEngine
from cof_edge.protocol import crop_turn_prompt, opening_prompt

from conftest import QUESTION, ScriptedEngine, photo_like, run_chain, zoom_reply

ZOOMS = [zoom_reply([100, 80, 180, 140]), zoom_reply([300, 200, 340, 230])]


@pytest.mark.parametrize("tokenizer", ["small", "qwen"])
@pytest.mark.parametrize("size", [(900, 700), (517, 301), (1333, 777)])
def test_ort_equals_transformers_through_zoom_turns(bundles, tiny_models, tokenizer, size):
    """Two teacher-forced zooms, then a greedy turn on the two crops: same tokens and crops on both backends."""
    pytest.importorskip("torch")
    image = photo_like(size[1], size[0], seed=size[0])
    ort_engine = FocusEngine.load(bundles[tokenizer], variant="fp32")
    hf_engine = FocusEngine.from_pretrained(tiny_models[tokenizer])
    states = [run_chain(ScriptedEngine(engine.backend, [*ZOOMS, None]), image, max_new_tokens=12, max_zooms=2)
              for engine in (ort_engine, hf_engine)]
    ort_state, hf_state = states
    assert [s.crop_region for s in ort_state.result.steps] == [s.crop_region for s in hf_state.result.steps]
    assert [s.view_size for s in ort_state.result.steps] == [s.view_size for s in hf_state.result.steps]
    assert ort_state.result.zooms == 2 and ort_state.token_ids == hf_state.token_ids
    assert ort_state.result.answer == hf_state.result.answer


def test_two_zoom_question_prefills_only_new_tokens_on_ort(bundles):
    engine = ScriptedEngine(FocusEngine.load(bundles["small"]).backend, [*ZOOMS, "<answer>B</answer>"])
    state = run_chain(engine, photo_like(700, 900, seed=3), max_zooms=2)
    steps, layout = state.result.steps, engine.layout
    assert steps[0].prompt_tokens == len(layout.encode(opening_prompt(QUESTION), [steps[0].visual_tokens]))
    for step in steps[1:]:
        assert step.prompt_tokens == 1 + len(layout.encode(crop_turn_prompt(), [step.visual_tokens]))
    assert state.session.cached_tokens == len(state.token_ids) - 1
    assert state.result.answer == "B"


def test_second_identical_ask_hits_the_crop_cache_for_every_view(bundles):
    engine = ScriptedEngine(FocusEngine.load(bundles["small"]).backend, [*ZOOMS, "<answer>B</answer>"] * 2)
    image = photo_like(700, 900, seed=4)
    first = run_chain(engine, image, max_zooms=2).result
    calls = []
    original = engine.backend.encode_view
    engine.backend.encode_view = lambda *a: calls.append(a) or original(*a)
    second = run_chain(engine, image.copy(), max_zooms=2).result
    assert [s.cache_hit for s in first.steps] == [False] * 3
    assert [s.cache_hit for s in second.steps] == [True] * 3 and calls == []
    stats = engine.crop_cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (3, 3, 3)
    assert second.to_dict()["cache_hits"] == 3


def test_snapping_aligns_crops_to_the_grid(bundles):
    engine = ScriptedEngine(FocusEngine.load(bundles["small"]).backend, [ZOOMS[0], "<answer>A</answer>"])
    state = run_chain(engine, photo_like(700, 900, seed=4), snap_crops=28)
    region = state.result.steps[0].crop_region
    assert all(v % 28 == 0 for v in region[:2]) and all(v % 28 == 0 or v in (900, 700) for v in region[2:])


def test_cache_evicts_least_recent_and_respects_its_bound():
    cache = CropCache(max_bytes=3 * 400)
    for key in "abc":
        cache.put(key, np.zeros(100, np.float32))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("d", np.zeros(100, np.float32))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    cache.put("huge", np.zeros(1000, np.float32))
    assert cache.get("huge") is None and cache.stats().entries == 3 and cache.stats().bytes == 1200
    assert cache.stats().evictions == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 300)), max_size=60), st.integers(0, 2000))
def test_cache_never_exceeds_its_byte_bound(operations, bound):
    cache = CropCache(max_bytes=bound)
    for key, size in operations:
        cache.put(key, np.zeros(size, np.uint8))
        stats = cache.stats()
        assert stats.bytes <= bound and stats.bytes == sum(v.nbytes for v, _ in cache._entries.values())


def test_cache_under_contention():
    cache = CropCache(max_bytes=50_000)

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(500):
            key = int(rng.integers(0, 64))
            value = cache.get(key)
            if value is None:
                cache.put(key, np.full(int(rng.integers(1, 2000)), key, np.uint8))
            else:
                assert (value == key).all()
            assert cache.stats().bytes <= 50_000

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * 500 and stats.bytes <= 50_000


def test_eight_threads_give_the_sequential_results(bundles):
    engine = FocusEngine.load(bundles["small"])
    images = [photo_like(200 + 37 * i, 300 + 23 * i, seed=i) for i in range(10)]
    sequential = [engine.ask(image, QUESTION, max_new_tokens=6).to_dict() for image in images]
    engine.crop_cache.clear()

    def ask_all(_):
        return [engine.ask(image, QUESTION, max_new_tokens=6).to_dict() for image in images]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask_all, range(8)))

    def stable(result):
        return (result["answer"], result["stop_reason"], [(s["text"], s["crop_region"]) for s in result["steps"]])

    for run in results:
        assert [stable(r) for r in run] == [stable(r) for r in sequential]
    stats = engine.crop_cache.stats()
    assert stats.hits + stats.misses == 80 and stats.misses >= 10
