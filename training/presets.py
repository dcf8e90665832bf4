"""Training presets: one dataclass per recipe. `PRESETS[name]` → `Preset`; everything a run needs is here.

* `cpu-default`: the model that ships (training/default_model): a ~1.7M-param Qwen2.5-VL from scratch, small
  tokenizer, full fine-tuning; small views (global <= 448x252 = 144 tokens, crops <= 336x336 = 144 tokens).
* `cpu-drills`: the same with a short system prompt and the retrieval-drill curriculum (training/drills.py).
* `cpu-vision`: `cpu-drills` after vision drills (training/vision_drills.py) on the tower.
* `cpu-grid`: `cpu-vision` with zoom boxes on the merged-token grid (`box_grid` 28).
* `cpu-grid-numbers`: `cpu-grid` with a tokenizer that has 0..999 as single tokens.
* `cpu-point`: `cpu-grid-numbers` with pointing drills (training/pointing_drills.py) before SFT.
* `cpu-attend`: `cpu-point` with supervised attention, pointing first on the fresh decoder.
* `cpu-read`: `cpu-attend` with symbol drills (training/symbol_drills.py) and answer drills before SFT.
* `smoke`: seconds, for tests.
* `gpu-3b` / `gpu-7b`: LoRA on real Qwen2.5-VL checkpoints (documented recipe; needs CUDA, not run here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from cof_edge.geometry import FACTOR
from cof_edge.options import AskOptions
from cof_edge.protocol import SYSTEM_PROMPT

from .tiny import TinySpec


@dataclass
class Budgets:
    """The pixel budgets and system prompt trained with: the runtime must use the same ones (RECIPE.json)."""

    global_min_pixels: int = 112 * 112
    global_max_pixels: int = 448 * 252
    crop_min_pixels: int = 112 * 112
    crop_max_pixels: int = 224 * 224
    system_prompt: str = SYSTEM_PROMPT

    def ask_options(self, **overrides) -> AskOptions:
        return AskOptions(**asdict(self), **overrides)


@dataclass
class Preset:
    name: str
    base_model: str | None = None          # HF dir/id to fine-tune; None: build from scratch with `spec`
    spec: TinySpec | None = None
    tokenizer: str = "small"
    budgets: Budgets = field(default_factory=Budgets)
    # data: vsearch scenes rendered at native 3840x2160, each shown at several resolutions (long side)
    data_seed: int = 1000
    scenes: int = 4000
    resolutions: tuple = (3840, 3840, 2560, 1920, 1024)   # sampled per scene (repeats = weight)
    res_per_scene: int = 2
    all_tag_questions: bool = True       # an attribute question for every tag of a scene, not only the sample's
    box_min_side: float = 16.0
    box_grid: int = 0                    # > 0: zoom boxes on this view-px grid (TrajectoryConfig.box_grid)
    two_zoom_below: float = 0.0
    drills: int = 0                      # text-only retrieval drills per batch (training/drills.py), extra rows
    drill_warmup_steps: int = 0          # drill-only steps before SFT (from-scratch models; the curriculum's stage 1)
    drill_batch_size: int = 32
    vision_warmup_steps: int = 0         # vision-tower steps on per-token tag maps before anything else (vision_drills.py)
    vision_drill_scenes: int = 300       # scenes rendered once for them (each: global views + a crop per tag)
    vision_position_weight: float = 0.0  # > 0: the vision drills also train row/column heads (each token's place)
    vision_symbol_weight: float = 0.0    # > 0: ... and the symbol on legible tags' tokens alone (vision_drills.py)
    vision_legible_side: float = 0.0     # view px from which a tag's symbol is labelled (0: direct_min_side)
    copy_warmup_steps: int = 0           # text-only box copy steps after the retrieval drills (pointing_drills.py)
    point_warmup_steps: int = 0          # pointing-drill steps after them (pointing_drills.py)
    point_first_steps: int = 0           # pointing-drill steps before the text-only stages, on the fresh decoder
    drill_reset_every: int = 0           # > 0: copy and pointing drills restart AdamW every this many steps
    point_attention_weight: float = 0.0  # > 0: pointing drills also train attention onto the box (pointing_drills.py)
    point_batch_size: int = 16
    symbol_warmup_steps: int = 0         # tower steps on tag patches of the crops, after the vision drills
    symbol_scenes: int = 0               # > 0: the symbol drills (stage and joint loss) on crops of this many scenes
                                         # rendered for them, in context (symbol_drills.rendered_tag_crops)
    point_symbol_weight: float = 0.0     # > 0: the first pointing drills also train the symbol drills' loss, times it
    point_symbol_in_context: bool = False  # ... on the tag's tokens in whole crops, not on tag patches alone
    answer_warmup_steps: int = 0         # answer-drill steps after the pointing drills (answer_drills.py)
    answer_attention_weight: float = 0.0  # > 0: answer drills also train attention onto the crop's tag and the option
    answer_reply_weight: float = 1.0     # answer drills add SFT's loss on every reply token, times this
    freeze_tower: bool = False           # True: the stages after the first pointing drills, and SFT, leave the tower
    # optimisation
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    max_steps: int = 2400
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    save_steps: int = 100
    save_total_limit: int = 2
    seed: int = 0
    threads: int = 1
    logging_steps: int = 10
    bf16: bool = False
    gradient_checkpointing: bool = False
    quantization: str | None = None       # "4bit" (QLoRA, bitsandbytes) where CUDA exists
    deepspeed: str | None = None          # path to a DeepSpeed config (CUDA only)

    def to_dict(self) -> dict:
        return asdict(self)


# Localisation needs the text decoder to see *where* an image token is. M-RoPE gives the column axis the lowest
# frequencies: with head_dim 32 and Qwen's rope_theta 1e6 a column step rotates by < 2e-4 rad, so the model cannot
# tell columns apart and never learned to point (hit rate 0/40 at 3840 after 1,938 steps). Text-to-text retrieval
# over ~100 tokens (the question's colour, read from the answer) needs the opposite: pairs that barely rotate.
# rope_theta 500 with mrope_section (2, 4, 10) gives both: column pairs from 0.1 down to 0.003 rad per step, rows
# 0.14-0.46 rad. Zoom boxes are >= 48 view px (one merged token of slack either way) and crops are 336x336, so the
# symbol stays >= 11 px after the wider crop is scaled down.
CPU_DEFAULT = Preset(
    name="cpu-default",
    spec=TinySpec(text_hidden=128, text_layers=4, text_heads=4, text_kv_heads=2, text_intermediate=384,
                  vision_hidden=96, vision_depth=4, vision_heads=2, vision_intermediate=256,
                  fullatt_block_indexes=(1, 3), mrope_section=(2, 4, 10), rope_theta=500.0, logit_std=None,
                  tie_word_embeddings=True),
    budgets=Budgets(crop_max_pixels=336 * 336),
    box_min_side=48.0,
    # 672 and 448 are left out: their global view looks like a 3840 one (the same 448x252), yet the teacher answers
    # them directly (no detail to gain); the model cannot tell them apart. 224 shows a 224x112 view: it can.
    resolutions=(3840, 3840, 2560, 1920, 1024, 224),
)

SMOKE = Preset(
    name="smoke", spec=TinySpec(), scenes=2, resolutions=(3840,), res_per_scene=1, max_steps=3, batch_size=2,
    lr=1e-3, warmup_steps=0, save_steps=2, logging_steps=1, threads=1,
    budgets=Budgets(global_max_pixels=224 * 126, crop_max_pixels=112 * 112),
)

# Real checkpoints (CUDA): LoRA on the language model, vision tower frozen; the CoF release's budgets are larger.
GPU_3B = Preset(
    name="gpu-3b", base_model="Qwen/Qwen2.5-VL-3B-Instruct", tokenizer="qwen", lora=True, lora_r=64, lora_alpha=128,
    budgets=Budgets(global_max_pixels=1280 * FACTOR * FACTOR, crop_max_pixels=1280 * FACTOR * FACTOR),
    scenes=20000, max_steps=2000, batch_size=4, grad_accum=4, lr=1e-4, warmup_steps=50, save_steps=200,
    bf16=True, gradient_checkpointing=True, threads=8, deepspeed="training/configs/zero2.json",
)
GPU_7B = Preset(
    name="gpu-7b", base_model="Qwen/Qwen2.5-VL-7B-Instruct", tokenizer="qwen", lora=True, lora_r=64, lora_alpha=128,
    budgets=Budgets(global_max_pixels=1280 * FACTOR * FACTOR, crop_max_pixels=1280 * FACTOR * FACTOR),
    scenes=20000, max_steps=2000, batch_size=2, grad_accum=8, lr=5e-5, warmup_steps=50, save_steps=200,
    bf16=True, gradient_checkpointing=True, threads=8, quantization="4bit", deepspeed="training/configs/zero2.json",
)

# The retrieval curriculum (training/drills.py) on the cpu-default architecture, with a short system prompt. Copying
# the colour is learned in ~250 drill steps of 32 on short contexts and transfers to whole trajectories (colour CE
# 0.004 after 700 SFT steps; cpu-default: chance, ln 8, after 1,600+). Its box digits and the option letter are not
# learned in 55 minutes, and its zooms (a near-constant box) cost accuracy: not shipped (training/README.md).
# The release's tool prompt is ~260 tokens with the small tokenizer: half the default model's first prompt (so half
# its prefill), and a from-scratch model learns nothing from a constant preamble. Shortening it alone did not teach
# the colour lookup (still at chance after 700 steps); the drills did.
SHORT_SYSTEM_PROMPT = "You are a helpful assistant."

CPU_DRILLS = dataclasses.replace(
    CPU_DEFAULT, name="cpu-drills",
    budgets=dataclasses.replace(CPU_DEFAULT.budgets, system_prompt=SHORT_SYSTEM_PROMPT),
    drill_warmup_steps=1500, drills=8,
)

# The vision curriculum (training/vision_drills.py) before cpu-drills' stages: the tower learns where each colour's
# tag is and what symbol it shows from per-token labels (held-out retrieval of a tag's colour on its own tokens 0.09 ->
# 0.78 in 600 steps), so that a box needs only the language model to point at a token that already says "red tag".
CPU_VISION = dataclasses.replace(CPU_DRILLS, name="cpu-vision", vision_warmup_steps=600, vision_drill_scenes=300)

# cpu-vision with zoom boxes on the merged-token grid (TrajectoryConfig.box_grid): two 28-px cells about the tag, so
# x1 is one of 15 values, one per token column, where cpu-vision's boxes stayed near-constant over 1,449 steps.
CPU_GRID = dataclasses.replace(CPU_VISION, name="cpu-grid", box_grid=28)

# cpu-grid with 0..999 as single tokens (tiny.build_small_tokenizer(whole_numbers=True)): a coordinate is one
# prediction from the token's column or row, not three digits in a row.
CPU_GRID_NUMBERS = dataclasses.replace(CPU_GRID, name="cpu-grid-numbers", tokenizer="small-numbers")

# cpu-grid-numbers with pointing drills (training/pointing_drills.py) before SFT: the box's numbers trained alone,
# from the global view and the teacher-forced first reply, where SFT left one box for every image. Measured: the
# held-out box is still at chance after 2,400 drill steps, even its second corner. After a text-only copy stage
# (AdamW reset every 500 steps) the second corner is learned within 300 pointing steps, the first is still at
# chance after 1,200 (training/README.md).
CPU_POINT = dataclasses.replace(CPU_GRID_NUMBERS, name="cpu-point", point_warmup_steps=600)
# The copy stage (`copy_warmup_steps`) is off in every preset; the tower's position heads (`vision_position_weight`)
# and supervised attention (`point_attention_weight`) are on in cpu-attend only. Without supervised attention the
# position that writes the box's first corner does not look inside the box; with it, from a fresh decoder, the box's
# first row is read but its first column lags and whole boxes stay under 30% (training/README.md). Set them with
# `train_default --set FIELD=VALUE`.

# cpu-point in the order the pointing measurements ask for: the tower also learns each token's place, then pointing
# drills with supervised attention on the fresh decoder (one trained on text first never looks at the image), then
# the text-only retrieval drills, a short pointing refresh (the drills keep the attention, not the box's numbers),
# and SFT (training/README.md, "The `cpu-attend` run").
CPU_ATTEND = dataclasses.replace(CPU_POINT, name="cpu-attend", vision_position_weight=1.0, point_first_steps=3300,
                                 point_attention_weight=1.0, drill_reset_every=100)

# cpu-attend with the two stages that make the reply read the crop: symbol drills on the tower before the decoder
# learns to read it (the whole-view vision drills never taught the symbols; run after pointing, they cost the box),
# and answer drills with supervised attention onto the asked tag and the chosen option, SFT's loss kept, after the
# pointing refresh (training/README.md, "Reading the crop"). The tower trains in its own stages and in the first
# pointing drills (frozen there, the box does not form), then stays as it is, so that the text drills, the answer
# drills and SFT do not move the features that the decoder has learned to read.
CPU_READ = dataclasses.replace(CPU_ATTEND, name="cpu-read", symbol_warmup_steps=5000, answer_warmup_steps=300,
                               answer_attention_weight=1.0, freeze_tower=True)

PRESETS = {p.name: p for p in (CPU_DEFAULT, CPU_DRILLS, CPU_VISION, CPU_GRID, CPU_GRID_NUMBERS, CPU_POINT, CPU_ATTEND,
                               CPU_READ, SMOKE, GPU_3B, GPU_7B)}


def parse_overrides(pairs: list[str]) -> dict:
    """`["copy_warmup_steps=3000", "lr=1e-3"]` → `{"copy_warmup_steps": 3000, "lr": 0.001}`, typed by the field's
    default; for the scalar fields of `Preset` (numbers, strings, booleans, None-able strings)."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set takes FIELD=VALUE with a preset field; got {pair!r}. Fields: {sorted(fields)}")
        default = fields[name].default
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{name} is true or false, got {text!r}")
            out[name] = text.lower() in ("true", "1")
        elif isinstance(default, (int, float)):
            out[name] = type(default)(text)
        elif default is None or isinstance(default, str):
            out[name] = None if text.lower() == "none" else text
        else:
            raise ValueError(f"{name} cannot be set from the command line; define a preset in training/presets.py")
    return out


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
