"""The reference backend: greedy tokens equal transformers' generate(), KV reuse across zoom turns."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

from cof_edge.engine import FocusEngine  # noqa: E402
from cof_edge.mrope import MRopeCursor  # noqa: E402
from cof_edge.protocol import SYSTEM_PROMPT, crop_turn_prompt, opening_prompt  # noqa: E402

from conftest import QUESTION, ScriptedEngine, photo_like, run_chain, zoom_reply  # noqa: E402


@pytest.fixture(scope="module")
def engines(tiny_models):
    return {name: FocusEngine.from_pretrained(path) for name, path in tiny_models.items()}


def pixels(engine, state):
    processor = engine.backend.image_processor
    views = [state.source.view(v) for v in state.views]
    out = processor(images=views, do_resize=False, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def reference_generate(engine, state, prompt_ids, max_new_tokens):
    model = engine.backend.model
    pixel_values, grids = pixels(engine, state)
    ids = torch.tensor([prompt_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                         image_grid_thw=grids, mm_token_type_ids=(ids == model.config.image_token_id).int(),
                         max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=sorted(engine.layout.special.stop_ids))
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("tokenizer", ["qwen", "small"])
@pytest.mark.parametrize("size", [(333, 517), (640, 480), (1001, 203)])
def test_first_turn_tokens_equal_generate(engines, tokenizer, size):
    engine = engines[tokenizer]
    image = photo_like(size[1], size[0], seed=size[0])
    state = engine.start(image, QUESTION, max_new_tokens=24)
    trace = engine.step(state)
    prompt_len = trace.prompt_tokens
    ours = state.token_ids[prompt_len:]
    assert len(ours) == trace.new_tokens > 0
    assert ours == reference_generate(engine, state, state.token_ids[:prompt_len], 24)


@pytest.mark.parametrize("tokenizer", ["qwen", "small"])
def test_two_zooms_prefill_only_new_tokens_and_cache_equals_uncached(engines, tokenizer):
    base = engines[tokenizer]
    engine = ScriptedEngine(base.backend, [zoom_reply([100, 80, 180, 140]), zoom_reply([300, 200, 340, 230]),
                                           "<think>It is a star.</think> <answer>B</answer>"])
    image = photo_like(700, 900, seed=3)
    result = engine.ask(image, QUESTION, max_zooms=2)
    assert result.stop_reason == "answer" and result.answer == "B" and result.zooms == 2
    layout, steps = engine.layout, result.steps
    assert steps[0].prompt_tokens == len(layout.encode(opening_prompt(QUESTION), [steps[0].visual_tokens]))
    for step in steps[1:]:
        # the previous reply's <|im_end|> (sampled, not yet fed) + the crop turn; nothing earlier again
        assert step.prompt_tokens == 1 + len(layout.encode(crop_turn_prompt(), [step.visual_tokens]))
    assert steps[1].view_region == steps[0].crop_region and steps[2].view_region == steps[1].crop_region

    # Run the same chain again, keeping the state, to compare the cache with one uncached forward pass.
    engine.replies = [zoom_reply([100, 80, 180, 140]), zoom_reply([300, 200, 340, 230]), "<answer>B</answer>"]
    state = run_chain(engine, image, max_zooms=2)
    session = state.session
    assert session.cached_tokens == len(state.token_ids) - 1 == sum(s.prompt_tokens for s in state.result.steps) \
        + sum(s.new_tokens - 1 for s in state.result.steps)
    model = engine.backend.model
    ids = torch.tensor([state.token_ids[:-1]])
    pixel_values, grids = pixels(engine, state)
    with torch.inference_mode():
        full = model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grids,
                     mm_token_type_ids=(ids == model.config.image_token_id).int()).logits[0, -1].numpy()
    np.testing.assert_allclose(engine.last_logits, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tokenizer", ["qwen", "small"])
def test_greedy_turn_after_a_zoom_equals_generate_on_the_whole_conversation(engines, tokenizer):
    base = engines[tokenizer]
    engine = ScriptedEngine(base.backend, [zoom_reply([50, 40, 120, 90]), None])
    image = photo_like(555, 777, seed=5)
    state = engine.start(image, QUESTION, max_new_tokens=16)
    engine.step(state)
    second = engine.step(state)
    ours = state.token_ids[-second.new_tokens:]
    prompt = state.token_ids[:-second.new_tokens]
    assert ours == reference_generate(engine, state, prompt, 16)


def test_mrope_positions_equal_get_rope_index(engines):
    engine = engines["qwen"]
    engine.replies = []
    layout = engine.layout
    segments = [(opening_prompt(QUESTION), (1, 18, 24)), (crop_turn_prompt(), (1, 8, 30)), (crop_turn_prompt(), (1, 12, 4))]
    cursor, ids, ours = MRopeCursor(), [], []
    for text, grid in segments:
        seg = layout.encode("<think>x</think>" + text if ids else text, [grid[1] * grid[2] // 4])
        ours.append(cursor.positions(seg, [grid], layout.special.image_pad))
        ids += seg
    model = engine.backend.model
    input_ids = torch.tensor([ids])
    reference, _ = model.model.get_rope_index(input_ids, (input_ids == model.config.image_token_id).int(),
                                              image_grid_thw=torch.tensor([g for _, g in segments]))
    np.testing.assert_array_equal(np.concatenate(ours, axis=1), reference[:, 0].numpy())


@pytest.mark.parametrize("size", [(57, 33), (640, 480), (3840, 2160)])
def test_views_equal_what_the_hf_processor_makes_of_the_original(engines, size):
    """Our global view (PIL bicubic at the smart-resize size) is the HF processor's own resize, pixel for pixel."""
    engine = engines["small"]
    image = photo_like(size[1], size[0], seed=1)
    state = engine.start(image, QUESTION)
    options = state.options
    ours, grid = engine.backend.pixel_inputs(state.source.view(state.next_view))
    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": options.global_min_pixels,
                                               "longest_edge": options.global_max_pixels})
    reference = processor(images=[state.source.image], return_tensors="pt")
    assert grid.tolist() == reference["image_grid_thw"].tolist()
    torch.testing.assert_close(ours, reference["pixel_values"], atol=0, rtol=0)


def test_from_pretrained_takes_the_budgets_the_checkpoint_was_trained_with(tiny_models, tmp_path):
    """RECIPE.json's budgets and system prompt become the engine's options and the exported bundle's."""
    import json
    import shutil

    from cof_export.default_bundle import trained_budgets

    model = tmp_path / "model"
    shutil.copytree(tiny_models["small"], model)
    defaults = FocusEngine.from_pretrained(model).options  # no recipe: the defaults
    assert defaults.global_max_pixels == 256 * 28 * 28 and defaults.system_prompt == SYSTEM_PROMPT
    budgets = {"global_min_pixels": 112 * 112, "global_max_pixels": 448 * 252, "crop_min_pixels": 112 * 112,
               "crop_max_pixels": 336 * 336, "system_prompt": "Zoom in when the answer is small."}
    (model / "RECIPE.json").write_text(json.dumps({"ask_options": budgets}))
    engine = FocusEngine.from_pretrained(model)
    assert {k: getattr(engine.options, k) for k in budgets} == budgets
    assert trained_budgets(model) == budgets
    image = photo_like(1080, 1920)
    result = engine.ask(image, QUESTION, max_zooms=0, max_new_tokens=2)
    step = result.steps[0]
    assert step.view_size == (448, 252)
    opening = opening_prompt(QUESTION, budgets["system_prompt"])
    assert step.prompt_tokens == len(engine.layout.encode(opening, [step.visual_tokens]))
    assert step.prompt_tokens < len(engine.layout.encode(opening_prompt(QUESTION), [step.visual_tokens])) - 200
